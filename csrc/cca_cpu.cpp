// Criss-cross attention on the CPU, and the operator's registration.
//
// The fast CPU path organises the work around the two kinds of lines of the
// map: every row i and every column j is a small matrix product, computed with
// the register tile of cca_common.h (tile_fma<6, 16>) while the line's data
// sits in L1/L2.  Three parallel sweeps per direction, each writing disjoint
// pixels, so no atomics and no per-thread copies of the outputs:
//   forward : columns (column energies) -> rows (row energies, softmax,
//             row aggregation) -> columns (column aggregation)
//   backward: columns (column dA) -> rows (row dA, softmax backward, row parts
//             of dQ, dK, dV) -> columns (column parts of dQ, dK, dV)
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif
#include <vector>

#include "cca_common.h"
#include "cca_portable.h"

namespace ccnet_edu {
namespace {

// ------------------------------------------------------------- tile drivers

template <int R, int X, typename T, typename a_t, typename b_t>
inline void run_tile(T* out, int64_t o_r, bool add, const a_t* a, int64_t a_r, int64_t a_k,
                     const b_t* b, int64_t b_k, int64_t n) {
  T acc[R][X];
  for (int r = 0; r < R; ++r)
    for (int x = 0; x < X; ++x) acc[r][x] = T(0);
  tile_fma<R, X>(acc, a, a_r, a_k, b, b_k, n);
  for (int r = 0; r < R; ++r)
    for (int x = 0; x < X; ++x) out[r * o_r + x] = add ? out[r * o_r + x] + acc[r][x] : acc[r][x];
}

#if defined(__AVX2__) && defined(__FMA__)
// tile_fma<6, 16> for float, spelled in AVX2 intrinsics: the same 96 FMAs per k
// in the same order (acc[r][x] = fma(a[r, k], b[k, x], acc[r][x])), but with
// the 12 accumulators pinned in ymm registers and a[r, k] broadcast straight
// from memory. g++ vectorises the generic template too, but spills the
// accumulators to the stack, which costs a factor of ~3 here.
template <>
inline void run_tile<6, 16, float, float, float>(float* out, int64_t o_r, bool add,
                                                 const float* a, int64_t a_r, int64_t a_k,
                                                 const float* b, int64_t b_k, int64_t n) {
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps(),
         c11 = _mm256_setzero_ps(), c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps(),
         c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps(), c40 = _mm256_setzero_ps(),
         c41 = _mm256_setzero_ps(), c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
  for (int64_t k = 0; k < n; ++k) {
    const __m256 b0 = _mm256_loadu_ps(b + k * b_k), b1 = _mm256_loadu_ps(b + k * b_k + 8);
    const float* ak = a + k * a_k;
    __m256 ar = _mm256_broadcast_ss(ak);
    c00 = _mm256_fmadd_ps(ar, b0, c00);
    c01 = _mm256_fmadd_ps(ar, b1, c01);
    ar = _mm256_broadcast_ss(ak + a_r);
    c10 = _mm256_fmadd_ps(ar, b0, c10);
    c11 = _mm256_fmadd_ps(ar, b1, c11);
    ar = _mm256_broadcast_ss(ak + 2 * a_r);
    c20 = _mm256_fmadd_ps(ar, b0, c20);
    c21 = _mm256_fmadd_ps(ar, b1, c21);
    ar = _mm256_broadcast_ss(ak + 3 * a_r);
    c30 = _mm256_fmadd_ps(ar, b0, c30);
    c31 = _mm256_fmadd_ps(ar, b1, c31);
    ar = _mm256_broadcast_ss(ak + 4 * a_r);
    c40 = _mm256_fmadd_ps(ar, b0, c40);
    c41 = _mm256_fmadd_ps(ar, b1, c41);
    ar = _mm256_broadcast_ss(ak + 5 * a_r);
    c50 = _mm256_fmadd_ps(ar, b0, c50);
    c51 = _mm256_fmadd_ps(ar, b1, c51);
  }
  const __m256 acc[6][2] = {{c00, c01}, {c10, c11}, {c20, c21},
                            {c30, c31}, {c40, c41}, {c50, c51}};
  for (int r = 0; r < 6; ++r)
    for (int h = 0; h < 2; ++h) {
      float* o = out + r * o_r + 8 * h;
      _mm256_storeu_ps(o, add ? _mm256_add_ps(_mm256_loadu_ps(o), acc[r][h]) : acc[r][h]);
    }
}
#endif

// ------------------------------------------------------------ softmax

// The softmax of the forward runs over H + W - 1 energies per pixel, one expf
// each: ~1.8 M calls at 97 x 97, ~8% of the forward through libm.  For float
// the CPU computes it eight lanes at a time with the classic Cephes exp
// (range reduction by ln 2, degree-5 polynomial, 2^n built in the exponent
// bits; ~1 ulp, well inside the tests' float tolerance).  Other types use the
// shared scalar softmax_row of cca_common.h.
template <typename T>
inline void softmax_line(T* e, int64_t n) {
  softmax_row(e, n);
}

#if defined(__AVX2__) && defined(__FMA__)
inline __m256 exp256(__m256 x) {
  // min/max with x as the second operand: a NaN energy stays NaN (minps
  // returns its second operand when either is NaN).
  x = _mm256_max_ps(_mm256_set1_ps(-87.3365447505531f), _mm256_min_ps(_mm256_set1_ps(88.3762626647949f), x));
  // x = n ln2 + r, |r| <= ln2 / 2; ln 2 split in two so n * ln2 is exact.
  const __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f),
                                                   _mm256_set1_ps(0.5f)));
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500E-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i pow2n = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(pow2n));
}

inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

template <>
inline void softmax_line<float>(float* e, int64_t n) {
  const int64_t n8 = n - n % 8;
  float m = e[0];
  for (int64_t l = n8; l < n; ++l) m = e[l] > m ? e[l] : m;
  if (n8 > 0) {
    __m256 mv = _mm256_loadu_ps(e);
    for (int64_t l = 8; l < n8; l += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(e + l));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    m = std::max(m, _mm_cvtss_f32(h));
  }
  const __m256 mv = _mm256_set1_ps(m);
  __m256 sv = _mm256_setzero_ps();
  for (int64_t l = 0; l < n8; l += 8) {
    const __m256 x = exp256(_mm256_sub_ps(_mm256_loadu_ps(e + l), mv));
    _mm256_storeu_ps(e + l, x);
    sv = _mm256_add_ps(sv, x);
  }
  float sum = hsum256(sv);
  for (int64_t l = n8; l < n; ++l) {
    e[l] = cca_exp(e[l] - m);
    sum += e[l];
  }
  const float inv = 1.0f / sum;
  const __m256 iv = _mm256_set1_ps(inv);
  for (int64_t l = 0; l < n8; l += 8) _mm256_storeu_ps(e + l, _mm256_mul_ps(_mm256_loadu_ps(e + l), iv));
  for (int64_t l = n8; l < n; ++l) e[l] *= inv;
}
#endif

// out[r * o_r + x] (+)= sum_k a[r * a_r + k * a_k] * b[k * b_k + x]   for r < rows, x < cols.
// Column blocks outside, row blocks inside: the (n x 16) panel of b stays in L1
// while every row block of a streams past it.
//
// The panel is packed first (n rows of 16 contiguous values) whenever several
// row blocks will read it: in place its rows sit b_k apart, and b_k is a
// multiple of 2 KiB for the value and gradient lines (C = 512, or W * C for a
// column), so all n rows of the panel fall into the same couple of L1 sets and
// evict each other -- every tile then re-reads its panel from L2.
template <typename T, typename a_t, typename b_t>
void line_matmul(T* out, int64_t o_r, bool add, const a_t* a, int64_t a_r, int64_t a_k,
                 const b_t* b, int64_t b_k, int64_t rows, int64_t cols, int64_t n) {
  constexpr int R = 6, X = 16;
  thread_local std::vector<b_t> panel;
  const bool pack = rows >= 2 * R && b_k != X;
  if (pack && panel.size() < static_cast<size_t>(n * X)) panel.resize(n * X);
  int64_t x = 0;
  for (; x + X <= cols; x += X) {
    const b_t* bx = b + x;
    int64_t bx_k = b_k;
    if (pack) {
      for (int64_t k = 0; k < n; ++k)
        for (int c = 0; c < X; ++c) panel[k * X + c] = b[k * b_k + x + c];  // 16: no memmove call
      bx = panel.data();
      bx_k = X;
    }
    int64_t r = 0;
    for (; r + R <= rows; r += R)
      run_tile<R, X>(out + r * o_r + x, o_r, add, a + r * a_r, a_r, a_k, bx, bx_k, n);
    for (; r < rows; ++r)
      run_tile<1, X>(out + r * o_r + x, o_r, add, a + r * a_r, a_r, a_k, bx, bx_k, n);
  }
  for (; x < cols; ++x) {
    int64_t r = 0;
    for (; r + R <= rows; r += R)
      run_tile<R, 1>(out + r * o_r + x, o_r, add, a + r * a_r, a_r, a_k, b + x, b_k, n);
    for (; r < rows; ++r)
      run_tile<1, 1>(out + r * o_r + x, o_r, add, a + r * a_r, a_r, a_k, b + x, b_k, n);
  }
}

// dst[c * count + t] = src[t * stride + c]: a line of pixel vectors as a (C, count) panel.
template <typename T, typename scalar_t>
void transpose_line(T* dst, const scalar_t* src, int64_t stride, int64_t count, int64_t channels) {
  for (int64_t t = 0; t < count; ++t)
    for (int64_t c = 0; c < channels; ++c) dst[c * count + t] = static_cast<T>(src[t * stride + c]);
}

// Same, from a tensor of any strides: dst[c * count + t] = src[t * pixel_stride + c * channel_stride].
template <typename T, typename scalar_t>
void gather_panel(T* dst, const scalar_t* src, int64_t pixel_stride, int64_t channel_stride,
                  int64_t count, int64_t channels) {
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t t = 0; t < count; ++t)
      dst[c * count + t] = static_cast<T>(src[t * pixel_stride + c * channel_stride]);
}

// dst[t * channels + c] = src[t * pixel_stride + c * channel_stride]: one line of a
// tensor of any strides into channels-last order.  Eight channels at a time, so
// the reads are eight streams along the line (contiguous for NCHW) and every
// write fills 8 consecutive channels.
template <typename scalar_t>
void scatter_row(scalar_t* dst, const scalar_t* src, int64_t pixel_stride,
                 int64_t channel_stride, int64_t count, int64_t channels) {
  int64_t c = 0;
  for (; c + 8 <= channels; c += 8)
    for (int64_t t = 0; t < count; ++t)
      for (int64_t cc = 0; cc < 8; ++cc)
        dst[t * channels + c + cc] = src[t * pixel_stride + (c + cc) * channel_stride];
  for (; c < channels; ++c)
    for (int64_t t = 0; t < count; ++t)
      dst[t * channels + c] = src[t * pixel_stride + c * channel_stride];
}

// The column slots of column j as a dense (H, H) matrix with a zero diagonal:
// dense[i * H + i2] = w[pixel (i, j), slot of row i2].  The centre belongs to the
// row part, so its zero adds nothing to the column products.
template <typename T, typename w_t>
void dense_column(T* dense, const w_t* w_col, int64_t row_stride, int64_t H, int64_t W) {
  for (int64_t i = 0; i < H; ++i)
    for (int64_t i2 = 0; i2 < H; ++i2)
      dense[i * H + i2] =
          i2 == i ? T(0) : static_cast<T>(w_col[i * row_stride + W + column_slot(i2, i)]);
}

// Lines per task: enough multiply-adds per task (~2^18) that a small map runs on
// one thread instead of paying a parallel region per sweep.
inline int64_t line_grain(int64_t fmas_per_line) {
  return std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, fmas_per_line));
}

// -------------------------------------------------------------- forward

// v is the channels-last value the sweeps read.  When the caller's value is not
// channels-last, v_src (with strides sv) is that value and v is an empty buffer
// of the same size: the row sweep fills each row of v from v_src right before
// it uses it, so the row is transposed while it is in L2 and read from there,
// instead of a separate whole-tensor copy (~15% of the forward) that goes
// through memory twice.  The column sweep then reads the finished v.
template <typename scalar_t>
void forward_lines(const scalar_t* q, const scalar_t* k, const scalar_t* v_src, const int64_t* sv,
                   scalar_t* v, acc_t<scalar_t>* att, acc_t<scalar_t>* out, int64_t B, int64_t H,
                   int64_t W, int64_t Ck, int64_t Cv) {
  using T = acc_t<scalar_t>;
  const int64_t L = H + W - 1;

  // Column energies: e[i, i2] = q(i, j) . k(i2, j), kept for i2 != i.
  at::parallel_for(0, B * W, line_grain(H * H * Ck), [&](int64_t begin, int64_t end) {
    std::vector<T> kt(Ck * H), e(H * H);
    for (int64_t line = begin; line < end; ++line) {
      const int64_t b = line / W, j = line % W;
      transpose_line(kt.data(), k + pixel(b, 0, j, H, W) * Ck, W * Ck, H, Ck);  // (C', H)
      line_matmul(e.data(), H, false, q + pixel(b, 0, j, H, W) * Ck, W * Ck, 1, kt.data(), H, H,
                  H, Ck);                                                        // (H, H)
      for (int64_t i = 0; i < H; ++i)
        for (int64_t n = 0; n + 1 < H; ++n)
          att[pixel(b, i, j, H, W) * L + W + n] = e[i * H + column_row(n, i)];
    }
  });

  // Rows: row energies, then every pixel of the row has all L energies:
  // softmax, and the row half of the aggregation while the row is in cache.
  at::parallel_for(0, B * H, line_grain(W * W * (Ck + Cv)), [&](int64_t begin, int64_t end) {
    std::vector<T> kt(Ck * W);
    for (int64_t line = begin; line < end; ++line) {
      const int64_t row = pixel(line / H, line % H, 0, H, W);
      transpose_line(kt.data(), k + row * Ck, Ck, W, Ck);  // (C', W)
      line_matmul(att + row * L, L, false, q + row * Ck, Ck, 1, kt.data(), W, W, W, Ck);
      for (int64_t j = 0; j < W; ++j) softmax_line(att + (row + j) * L, L);
      if (v_src != nullptr)  // this row of the channels-last value, see above
        scatter_row(v + row * Cv, v_src + (line / H) * sv[0] + (line % H) * sv[2], sv[3], sv[1],
                    W, Cv);
      // out(i, j) = sum_j2 A[(i, j), j2] v(i, j2)
      line_matmul(out + row * Cv, Cv, false, att + row * L, L, 1, v + row * Cv, Cv, W, Cv, W);
    }
  });

  // Columns: out(i, j) += sum_{i2 != i} A[(i, j), slot of i2] v(i2, j)
  at::parallel_for(0, B * W, line_grain(H * H * Cv), [&](int64_t begin, int64_t end) {
    std::vector<T> dense(H * H);
    for (int64_t line = begin; line < end; ++line) {
      const int64_t col = pixel(line / W, 0, line % W, H, W);
      dense_column(dense.data(), att + col * L, W * L, H, W);
      line_matmul(out + col * Cv, W * Cv, true, dense.data(), H, 1, v + col * Cv, W * Cv, H, Cv,
                  H);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& query_in,
                                               const at::Tensor& key_in,
                                               const at::Tensor& value_in) {
  check_inputs(query_in, key_in, value_in);
  const auto query = channels_last(query_in), key = channels_last(key_in);
  const auto& value_src = value_in;
  // A value that is channels-last already is read in place; any other is
  // transposed row by row inside the row sweep (see forward_lines).
  const bool in_place = value_src.is_contiguous(at::MemoryFormat::ChannelsLast);
  const auto value = in_place ? value_src
                              : empty_channels_last(value_src, value_src.size(1),
                                                    value_src.scalar_type());
  const int64_t sv[4] = {value_src.stride(0), value_src.stride(1), value_src.stride(2),
                         value_src.stride(3)};
  const int64_t B = query.size(0), Ck = query.size(1), Cv = value.size(1);
  const int64_t H = query.size(2), W = query.size(3), L = H + W - 1;
  const auto dtype = query.scalar_type(), acc = acc_scalar_type(dtype);
  auto att = at::empty({B, H, W, L}, query.options().dtype(acc));
  auto out = empty_channels_last(value, Cv, acc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "cca_forward_cpu", [&] {
    using T = acc_t<scalar_t>;
    forward_lines<scalar_t>(query.const_data_ptr<scalar_t>(), key.const_data_ptr<scalar_t>(),
                            in_place ? nullptr : value_src.const_data_ptr<scalar_t>(), sv,
                            value.data_ptr<scalar_t>(),
                            att.data_ptr<T>(), out.data_ptr<T>(), B, H, W, Ck, Cv);
  });
  return {out.to(dtype), att.to(dtype)};
}

// -------------------------------------------------------------- backward

// value is read through its own strides (sv = its B, C, H, W strides): it only
// enters as transposed (C, line) panels, so the backward needs no channels-last
// copy of it -- one full-size buffer less at the memory peak of training.
template <typename scalar_t>
void backward_lines(const scalar_t* go, const scalar_t* ga, const scalar_t* att,
                    const scalar_t* q, const scalar_t* k, const scalar_t* v,
                    const int64_t* sv, acc_t<scalar_t>* g,
                    acc_t<scalar_t>* dq, acc_t<scalar_t>* dk, acc_t<scalar_t>* dv, int64_t B,
                    int64_t H, int64_t W, int64_t Ck, int64_t Cv) {
  using T = acc_t<scalar_t>;
  const int64_t L = H + W - 1;

  // Column half of dA: g[(i, j), slot of i2] = dout(i, j) . v(i2, j)
  at::parallel_for(0, B * W, line_grain(H * H * Cv), [&](int64_t begin, int64_t end) {
    std::vector<T> vt(Cv * H), e(H * H);
    for (int64_t line = begin; line < end; ++line) {
      const int64_t b = line / W, j = line % W, col = pixel(b, 0, j, H, W);
      gather_panel(vt.data(), v + b * sv[0] + j * sv[3], sv[2], sv[1], H, Cv);  // (C, H)
      line_matmul(e.data(), H, false, go + col * Cv, W * Cv, 1, vt.data(), H, H, H, Cv);
      for (int64_t i = 0; i < H; ++i)
        for (int64_t n = 0; n + 1 < H; ++n)
          g[pixel(b, i, j, H, W) * L + W + n] = e[i * H + column_row(n, i)];
    }
  });

  // Rows: row half of dA, softmax backward (g becomes dE), row parts of the gradients.
  at::parallel_for(0, B * H, line_grain(W * W * (2 * Ck + 2 * Cv)), [&](int64_t begin, int64_t end) {
    std::vector<T> vt(Cv * W);
    for (int64_t line = begin; line < end; ++line) {
      const int64_t row = pixel(line / H, line % H, 0, H, W);
      const scalar_t* v_row = v + (line / H) * sv[0] + (line % H) * sv[2];
      gather_panel(vt.data(), v_row, sv[3], sv[1], W, Cv);  // (C, W)
      line_matmul(g + row * L, L, false, go + row * Cv, Cv, 1, vt.data(), W, W, W, Cv);
      for (int64_t u = row; u < row + W; ++u) {
        if (ga != nullptr)
          for (int64_t l = 0; l < L; ++l) g[u * L + l] += static_cast<T>(ga[u * L + l]);
        softmax_backward_row(att + u * L, g + u * L, L);
      }
      // dq(i, j) = sum_j2 dE[(i, j), j2] k(i, j2)
      line_matmul(dq + row * Ck, Ck, false, g + row * L, L, 1, k + row * Ck, Ck, W, Ck, W);
      // dk(i, j2) = sum_j dE[(i, j), j2] q(i, j)       (a transposed: a_r = 1, a_k = L)
      line_matmul(dk + row * Ck, Ck, false, g + row * L, 1, L, q + row * Ck, Ck, W, Ck, W);
      // dv(i, j2) = sum_j A[(i, j), j2] dout(i, j)
      line_matmul(dv + row * Cv, Cv, false, att + row * L, 1, L, go + row * Cv, Cv, W, Cv, W);
    }
  });

  // Columns: the column parts, through dense (H, H) matrices with a zero diagonal.
  at::parallel_for(0, B * W, line_grain(H * H * (2 * Ck + Cv)), [&](int64_t begin, int64_t end) {
    std::vector<T> de(H * H), da(H * H);
    for (int64_t line = begin; line < end; ++line) {
      const int64_t col = pixel(line / W, 0, line % W, H, W);
      dense_column(de.data(), g + col * L, W * L, H, W);
      dense_column(da.data(), att + col * L, W * L, H, W);
      line_matmul(dq + col * Ck, W * Ck, true, de.data(), H, 1, k + col * Ck, W * Ck, H, Ck, H);
      line_matmul(dk + col * Ck, W * Ck, true, de.data(), 1, H, q + col * Ck, W * Ck, H, Ck, H);
      line_matmul(dv + col * Cv, W * Cv, true, da.data(), 1, H, go + col * Cv, W * Cv, H, Cv, H);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& grad_out_in, const std::optional<at::Tensor>& grad_att_in,
    const at::Tensor& attention_in, const at::Tensor& query_in, const at::Tensor& key_in,
    const at::Tensor& value_in) {
  check_inputs(query_in, key_in, value_in);
  const auto query = channels_last(query_in), key = channels_last(key_in),
             grad_out = channels_last(grad_out_in);
  const auto& value = value_in;  // read through its strides, see backward_lines
  const int64_t B = query.size(0), Ck = query.size(1), Cv = value.size(1);
  const int64_t H = query.size(2), W = query.size(3), L = H + W - 1;
  const auto dtype = query.scalar_type(), acc = acc_scalar_type(dtype);
  check_backward(grad_out, attention_in, query, value);
  const int64_t sv[4] = {value.stride(0), value.stride(1), value.stride(2), value.stride(3)};
  const auto attention = attention_in.to(dtype).contiguous();
  at::Tensor grad_att;
  if (grad_att_in.has_value() && grad_att_in->defined())
    grad_att = grad_att_in->to(dtype).contiguous();

  auto g = at::empty({B, H, W, L}, query.options().dtype(acc));
  auto grad_query = empty_channels_last(query, Ck, acc);
  auto grad_key = empty_channels_last(query, Ck, acc);
  auto grad_value = empty_channels_last(value, Cv, acc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "cca_backward_cpu", [&] {
    using T = acc_t<scalar_t>;
    backward_lines<scalar_t>(
        grad_out.const_data_ptr<scalar_t>(),
        grad_att.defined() ? grad_att.const_data_ptr<scalar_t>() : nullptr,
        attention.const_data_ptr<scalar_t>(), query.const_data_ptr<scalar_t>(),
        key.const_data_ptr<scalar_t>(), value.const_data_ptr<scalar_t>(), sv, g.data_ptr<T>(),
        grad_query.data_ptr<T>(), grad_key.data_ptr<T>(), grad_value.data_ptr<T>(), B, H, W, Ck,
        Cv);
  });
  return {grad_query.to(dtype), grad_key.to(dtype), grad_value.to(dtype)};
}

// ------------------------------------------------- the portable path on CPU

struct CpuLaunch {
  template <class F>
  void operator()(int64_t n, const F& f) const {
    at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t idx = begin; idx < end; ++idx) f(idx);
    });
  }
};

std::tuple<at::Tensor, at::Tensor> portable_forward_cpu(const at::Tensor& query,
                                                        const at::Tensor& key,
                                                        const at::Tensor& value) {
  return portable_forward(query, key, value, CpuLaunch{});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> portable_backward_cpu(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_att,
    const at::Tensor& attention, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value) {
  return portable_backward(grad_out, grad_att, attention, query, key, value, CpuLaunch{});
}

}  // namespace
}  // namespace ccnet_edu

// The schemas.  Autograd and the fake (meta) kernels are registered from
// Python (ccnet_edu/ops/__init__.py) with torch.library.
TORCH_LIBRARY(ccnet_edu, m) {
  m.def("criss_cross_attention(Tensor query, Tensor key, Tensor value) -> (Tensor, Tensor)");
  m.def(
      "criss_cross_attention_backward(Tensor grad_out, Tensor? grad_attention, "
      "Tensor attention, Tensor query, Tensor key, Tensor value) -> (Tensor, Tensor, Tensor)");
  // What the CUDA build runs, executed on the CPU (for tests; no autograd).
  m.def("portable_criss_cross_attention(Tensor query, Tensor key, Tensor value) -> (Tensor, Tensor)");
  m.def(
      "portable_criss_cross_attention_backward(Tensor grad_out, Tensor? grad_attention, "
      "Tensor attention, Tensor query, Tensor key, Tensor value) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(ccnet_edu, CPU, m) {
  m.impl("criss_cross_attention", &ccnet_edu::forward_cpu);
  m.impl("criss_cross_attention_backward", &ccnet_edu::backward_cpu);
  m.impl("portable_criss_cross_attention", &ccnet_edu::portable_forward_cpu);
  m.impl("portable_criss_cross_attention_backward", &ccnet_edu::portable_backward_cpu);
}
