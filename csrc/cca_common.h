// Criss-cross attention: the arithmetic of the portable kernels, shared by the
// CPU and the CUDA build.
//
// Every function here is C10_HOST_DEVICE: g++ compiles it into the CPU
// operator and nvcc compiles the same text into the GPU's portable kernels, so a
// test on the CPU runs the arithmetic those GPU kernels run (same index math, same
// float accumulation, same order of summation).  The fast paths have kernels of
// their own: cca_cpu_kernels.h on the CPU, the tiled kernels of cca_lines.h on the GPU.
//
// Layout (channels-last, the op converts its inputs once):
//   query, key  (B, H, W, C')   value, out  (B, H, W, C)
//   attention   (B, H, W, L)    L = H + W - 1 slots per pixel u = (i, j):
//     slot l <  W : the row,    position (i, l)            (centre included)
//     slot l >= W : the column, position (i', j), i' != i, in increasing order
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define CCA_UNROLL _Pragma("unroll")
#else
#define CCA_UNROLL _Pragma("GCC unroll 16")
#endif

namespace ccnet_edu {

// Accumulate in float for float, half and bfloat16 (and in double for double):
// a sum of a few hundred half products would lose most of its digits.
template <typename scalar_t>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename scalar_t>
using acc_t = typename AccType<scalar_t>::type;

// ---------------------------------------------------------------- index math

// Flat index of pixel (b, i, j) in a (B, H, W, ...) channels-last tensor.
C10_HOST_DEVICE inline int64_t pixel(int64_t b, int64_t i, int64_t j, int64_t H, int64_t W) {
  return (b * H + i) * W + j;
}

// Column slot n (0 <= n < H-1) of a pixel in row i points at row i': the
// centre i' == i is skipped because the row part already holds it.
C10_HOST_DEVICE inline int64_t column_row(int64_t n, int64_t i) { return n + (n >= i ? 1 : 0); }

// The inverse: row i' != i sits in column slot n of a pixel in row i.
C10_HOST_DEVICE inline int64_t column_slot(int64_t i_other, int64_t i) {
  return i_other - (i_other > i ? 1 : 0);
}

// The pixel that slot l of pixel (b, i, j) looks at.
C10_HOST_DEVICE inline int64_t slot_pixel(int64_t b, int64_t i, int64_t j, int64_t l, int64_t H,
                                          int64_t W) {
  return l < W ? pixel(b, i, l, H, W) : pixel(b, column_row(l - W, i), j, H, W);
}

// ---------------------------------------------------------------- arithmetic

C10_HOST_DEVICE inline float cca_exp(float x) { return ::expf(x); }
C10_HOST_DEVICE inline double cca_exp(double x) { return ::exp(x); }

// The one multiply-accumulate every contraction of the operator is made of:
//
//   acc[r][x] += sum_{k < n} a[r * a_r + k * a_k] * b[k * b_k + x]
//
// energies (a = query, b = key), aggregation (a = attention, b = value) and all
// the gradients are this with different pointers and strides.  The portable kernels
// (the GPU's and the CPU's) call it with 1 x 1, one output element per thread;
// the fast CPU path computes the same contraction with the vector register tiles
// of cca_cpu_kernels.h (line_product), each output a chain over k in this order.
template <int R, int X, typename T, typename a_t, typename b_t>
C10_HOST_DEVICE inline void tile_fma(T (&acc)[R][X], const a_t* a, int64_t a_r, int64_t a_k,
                                     const b_t* b, int64_t b_k, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    T bk[X];
    CCA_UNROLL
    for (int x = 0; x < X; ++x) bk[x] = static_cast<T>(b[k * b_k + x]);
    CCA_UNROLL
    for (int r = 0; r < R; ++r) {
      const T ar = static_cast<T>(a[r * a_r + k * a_k]);
      CCA_UNROLL
      for (int x = 0; x < X; ++x) acc[r][x] += ar * bk[x];
    }
  }
}

// Softmax over the L energies of one pixel, in place: energy -> affinity.
// Subtracting the maximum keeps exp() finite for any energy.
template <typename T>
C10_HOST_DEVICE inline void softmax_row(T* e, int64_t n) {
  T m = e[0];
  for (int64_t l = 1; l < n; ++l) m = e[l] > m ? e[l] : m;
  T sum = 0;
  for (int64_t l = 0; l < n; ++l) {
    e[l] = cca_exp(e[l] - m);
    sum += e[l];
  }
  const T inv = T(1) / sum;
  for (int64_t l = 0; l < n; ++l) e[l] *= inv;
}

// Backward of the softmax, in place on g: dE_l = A_l (dA_l - sum_m A_m dA_m).
template <typename T, typename a_t>
C10_HOST_DEVICE inline void softmax_backward_row(const a_t* att, T* g, int64_t n) {
  T dot = 0;
  for (int64_t l = 0; l < n; ++l) dot += static_cast<T>(att[l]) * g[l];
  for (int64_t l = 0; l < n; ++l) g[l] = static_cast<T>(att[l]) * (g[l] - dot);
}

// ------------------------------------------------------ one element at a time
// The GPU's portable kernels are these bodies, one thread per element; the CPU
// runs them too (the "portable" operator used by the tests), in a parallel loop.

// dot[u, l] = a(u) . b(position of slot l), over n channels:
// the energies (a = query, b = key) and dA (a = grad_out, b = value).
template <typename T, typename scalar_t>
C10_HOST_DEVICE inline void slot_dot_body(int64_t idx, T* dot, const scalar_t* a,
                                          const scalar_t* b, int64_t n, int64_t B, int64_t H,
                                          int64_t W) {
  const int64_t L = H + W - 1;
  const int64_t l = idx % L, u = idx / L;
  const int64_t j = u % W, i = (u / W) % H, bb = u / (W * H);
  T acc[1][1] = {{0}};
  tile_fma<1, 1>(acc, a + u * n, 0, 1, b + slot_pixel(bb, i, j, l, H, W) * n, 1, n);
  dot[idx] = acc[0][0];
}

// out[u, c] = sum_l w[u, l] src(position of slot l)[c]:
// the aggregation (w = attention, src = value) and grad_query (w = dE, src = key).
// Three strided runs: the row, the column above u, the column below u.
template <typename T, typename w_t, typename scalar_t>
C10_HOST_DEVICE inline void gather_body(int64_t idx, T* out, const w_t* w, const scalar_t* src,
                                        int64_t n, int64_t B, int64_t H, int64_t W) {
  const int64_t L = H + W - 1;
  const int64_t c = idx % n, u = idx / n;
  const int64_t j = u % W, i = (u / W) % H, bb = u / (W * H);
  const w_t* wu = w + u * L;
  T acc[1][1] = {{0}};
  tile_fma<1, 1>(acc, wu, 0, 1, src + pixel(bb, i, 0, H, W) * n + c, n, W);
  tile_fma<1, 1>(acc, wu + W, 0, 1, src + pixel(bb, 0, j, H, W) * n + c, W * n, i);
  if (i + 1 < H)
    tile_fma<1, 1>(acc, wu + W + i, 0, 1, src + pixel(bb, i + 1, j, H, W) * n + c, W * n,
                   H - 1 - i);
  out[idx] = acc[0][0];
}

// out[p, c] = sum over the pixels u whose cross contains p of w[u, slot of p] src(u)[c]:
// grad_value (w = attention, src = grad_out) and grad_key (w = dE, src = query).
// The cross is symmetric: u sees p exactly when p sees u.
template <typename T, typename w_t, typename scalar_t>
C10_HOST_DEVICE inline void scatter_body(int64_t idx, T* out, const w_t* w, const scalar_t* src,
                                         int64_t n, int64_t B, int64_t H, int64_t W) {
  const int64_t L = H + W - 1;
  const int64_t c = idx % n, p = idx / n;
  const int64_t pj = p % W, pi = (p / W) % H, bb = p / (W * H);
  T acc[1][1] = {{0}};
  // u = (pi, j) for every j: p is in u's row, slot pj.
  tile_fma<1, 1>(acc, w + pixel(bb, pi, 0, H, W) * L + pj, 0, L,
                 src + pixel(bb, pi, 0, H, W) * n + c, n, W);
  // u = (i, pj), i < pi: p is column slot pi - 1 of u.
  if (pi > 0)
    tile_fma<1, 1>(acc, w + pixel(bb, 0, pj, H, W) * L + W + pi - 1, 0, W * L,
                   src + pixel(bb, 0, pj, H, W) * n + c, W * n, pi);
  // u = (i, pj), i > pi: p is column slot pi of u.
  if (pi + 1 < H)
    tile_fma<1, 1>(acc, w + pixel(bb, pi + 1, pj, H, W) * L + W + pi, 0, W * L,
                   src + pixel(bb, pi + 1, pj, H, W) * n + c, W * n, H - 1 - pi);
  out[idx] = acc[0][0];
}

}  // namespace ccnet_edu
