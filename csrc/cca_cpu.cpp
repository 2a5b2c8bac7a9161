// Criss-cross attention on the CPU, and the operator's registration.
//
// The fast CPU path organises the work around the two kinds of lines of the
// map: every row i and every column j is a small matrix product, computed with
// the register tile of cca_common.h (tile_fma<6, 16>) while the line's data
// sits in L1/L2.  A few parallel sweeps per direction, each writing disjoint
// pixels, so no atomics and no per-thread copies of the outputs:
//   forward : columns (column energies) -> rows (row energies, softmax) ->
//             columns (column aggregation) -> rows (row aggregation)
//   backward: rows (row dA, row part of dV) -> columns (column dA, softmax
//             backward, column parts of dQ, dK, dV) -> rows (row parts of dQ, dK)
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
// accumulators to the stack, which costs a factor of ~3 here.  Written as a
// loop over __m256 acc[6][2] it spills as well: forward and backward 1.4x
// slower (both builds timed alternately in one process), hence the unrolling.
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
// A leftover single row (97 = 16 x 6 + 1): two accumulators per half of the
// tile would be two FMA chains, bound by the FMA latency; even and odd k go to
// separate accumulators, four chains, summed at the end.
template <>
inline void run_tile<1, 16, float, float, float>(float* out, int64_t o_r, bool add,
                                                 const float* a, int64_t a_r, int64_t a_k,
                                                 const float* b, int64_t b_k, int64_t n) {
  (void)o_r, (void)a_r;
  __m256 c0 = _mm256_setzero_ps(), c1 = _mm256_setzero_ps(), d0 = _mm256_setzero_ps(),
         d1 = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 2 <= n; k += 2) {
    const __m256 ar = _mm256_broadcast_ss(a + k * a_k), as = _mm256_broadcast_ss(a + (k + 1) * a_k);
    c0 = _mm256_fmadd_ps(ar, _mm256_loadu_ps(b + k * b_k), c0);
    c1 = _mm256_fmadd_ps(ar, _mm256_loadu_ps(b + k * b_k + 8), c1);
    d0 = _mm256_fmadd_ps(as, _mm256_loadu_ps(b + (k + 1) * b_k), d0);
    d1 = _mm256_fmadd_ps(as, _mm256_loadu_ps(b + (k + 1) * b_k + 8), d1);
  }
  if (k < n) {
    const __m256 ar = _mm256_broadcast_ss(a + k * a_k);
    c0 = _mm256_fmadd_ps(ar, _mm256_loadu_ps(b + k * b_k), c0);
    c1 = _mm256_fmadd_ps(ar, _mm256_loadu_ps(b + k * b_k + 8), c1);
  }
  c0 = _mm256_add_ps(c0, d0);
  c1 = _mm256_add_ps(c1, d1);
  _mm256_storeu_ps(out, add ? _mm256_add_ps(_mm256_loadu_ps(out), c0) : c0);
  _mm256_storeu_ps(out + 8, add ? _mm256_add_ps(_mm256_loadu_ps(out + 8), c1) : c1);
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

// One leftover output column (cols % 16 of them: W = 97 leaves one) when a's rows
// are contiguous: out[r * o_r] (+)= a_r . b_col.  The (R, 1) tile would run R
// scalar multiply-add chains of length n, each bound by the FMA latency.  Here
// b's column is copied out once and every row is a dot product over eight lanes
// (different summation order from the tile, same float accumulation).
template <typename T, typename a_t, typename b_t>
void tail_column(T* out, int64_t o_r, bool add, const a_t* a, int64_t a_r, const b_t* b,
                 int64_t b_k, int64_t rows, int64_t n) {
  thread_local std::vector<T> column;
  if (column.size() < static_cast<size_t>(n)) column.resize(n);
  for (int64_t k = 0; k < n; ++k) column[k] = static_cast<T>(b[k * b_k]);
  const int64_t n8 = n - n % 8;
  for (int64_t r = 0; r < rows; ++r) {
    const a_t* ar = a + r * a_r;
    T lanes[8] = {};
    for (int64_t k = 0; k < n8; k += 8)
      for (int l = 0; l < 8; ++l) lanes[l] += static_cast<T>(ar[k + l]) * column[k + l];
    T sum = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    for (int64_t k = n8; k < n; ++k) sum += static_cast<T>(ar[k]) * column[k];
    out[r * o_r] = add ? out[r * o_r] + sum : sum;
  }
}

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
    if (a_k == 1 && n >= 32) {  // see tail_column
      tail_column(out + x, o_r, add, a, a_r, b + x, b_k, rows, n);
      continue;
    }
    int64_t r = 0;
    for (; r + R <= rows; r += R)
      run_tile<R, 1>(out + r * o_r + x, o_r, add, a + r * a_r, a_r, a_k, b + x, b_k, n);
    for (; r < rows; ++r)
      run_tile<1, 1>(out + r * o_r + x, o_r, add, a + r * a_r, a_r, a_k, b + x, b_k, n);
  }
}

// dst[x * d_x + r * d_r] (=, or += with kAdd) src[r * s_r + x * s_x] for r < rows,
// x < cols: every layout change of the operator (a line of pixel vectors into a
// (C, line) panel, an NCHW row into (W, C), a finished row back into NCHW) is
// this with other strides.  float with d_r = s_x = 1 goes 8 x 8 blocks at a
// time through AVX2 registers; everything else element by element, x outer so
// that r walks along memory on both sides when it can.
template <bool kAdd = false, typename T, typename S>
void transpose(T* dst, int64_t d_x, int64_t d_r, const S* src, int64_t s_r, int64_t s_x,
               int64_t rows, int64_t cols) {
  for (int64_t x = 0; x < cols; ++x)
    for (int64_t r = 0; r < rows; ++r) {
      const T value = static_cast<T>(src[r * s_r + x * s_x]);
      dst[x * d_x + r * d_r] = kAdd ? dst[x * d_x + r * d_r] + value : value;
    }
}

#if defined(__AVX2__) && defined(__FMA__)
// dst + x * d_x holds column x (8 values, r = 0..7) of the 8 rows src + r * s_r.
template <bool kAdd>
inline void transpose8x8(float* dst, int64_t d_x, const float* src, int64_t s_r) {
  __m256 t[8], u[8];
  for (int r = 0; r < 8; r += 2) {
    const __m256 a = _mm256_loadu_ps(src + r * s_r), b = _mm256_loadu_ps(src + (r + 1) * s_r);
    t[r] = _mm256_unpacklo_ps(a, b);      // a0 b0 a1 b1 | a4 b4 a5 b5
    t[r + 1] = _mm256_unpackhi_ps(a, b);  // a2 b2 a3 b3 | a6 b6 a7 b7
  }
  for (int h = 0; h < 2; ++h) {  // rows 0-3 (t[0..3]) and 4-7 (t[4..7])
    u[4 * h + 0] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int x = 0; x < 8; ++x) {  // u[x % 4] holds columns x and x + 4 of rows 0-3
    const __m256 column = _mm256_permute2f128_ps(u[x % 4], u[4 + x % 4], x < 4 ? 0x20 : 0x31);
    float* o = dst + x * d_x;
    _mm256_storeu_ps(o, kAdd ? _mm256_add_ps(_mm256_loadu_ps(o), column) : column);
  }
}

template <bool kAdd = false>
void transpose(float* dst, int64_t d_x, int64_t d_r, const float* src, int64_t s_r, int64_t s_x,
               int64_t rows, int64_t cols) {
  if (d_r != 1 || s_x != 1) return transpose<kAdd, float, float>(dst, d_x, d_r, src, s_r, s_x, rows, cols);
  const int64_t r8 = rows - rows % 8, x8 = cols - cols % 8;
  for (int64_t r = 0; r < r8; r += 8)
    for (int64_t x = 0; x < x8; x += 8) transpose8x8<kAdd>(dst + x * d_x + r, d_x, src + r * s_r + x, s_r);
  if (x8 < cols)  // the last columns, all rows
    transpose<kAdd, float, float>(dst + x8 * d_x, d_x, 1, src + x8, s_r, 1, rows, cols - x8);
  if (r8 < rows)  // the last rows, the columns done above
    transpose<kAdd, float, float>(dst + r8, d_x, 1, src + r8 * s_r, s_r, 1, rows - r8, x8);
}
#endif

// The column slots of column j as a dense (H, H) matrix with a zero diagonal:
// dense[i * H + i2] = w[pixel (i, j), slot of row i2].  The centre belongs to the
// row part, so its zero adds nothing to the column products.  Row i of it is two
// runs of consecutive slots with the zero between them: rows i2 < i sit in slots
// i2, rows i2 > i from slot column_slot(i + 1, i) on.  Two copies, not a loop
// over column_slot: 2.2 instead of 14-18 us per 97 x 97 column, measured alone
// (the forward builds one per column, the backward two).
template <typename T, typename w_t>
void dense_column(T* dense, const w_t* w_col, int64_t row_stride, int64_t H, int64_t W) {
  for (int64_t i = 0; i < H; ++i) {
    const w_t* slots = w_col + i * row_stride + W;
    T* row = dense + i * H;
    std::copy(slots, slots + i, row);
    row[i] = T(0);
    std::copy(slots + column_slot(i + 1, i), slots + H - 1, row + i + 1);
  }
}

// Lines per task: enough multiply-adds per task (~2^18) that a small map runs on
// one thread instead of paying a parallel region per sweep.
inline int64_t line_grain(int64_t fmas_per_line) {
  return std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, fmas_per_line));
}

// x as a channels-last tensor: x itself when it is one, else a copy made row by
// row with transpose(), 8 x 8 register blocks for float (at::contiguous goes
// through a generic strided copy).
at::Tensor channels_last_cpu(const at::Tensor& x) {
  if (x.is_contiguous(at::MemoryFormat::ChannelsLast)) return x;
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  auto y = empty_channels_last(x, C, x.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "cca_channels_last", [&] {
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    scalar_t* dst = y.data_ptr<scalar_t>();
    const int64_t sb = x.stride(0), sc = x.stride(1), si = x.stride(2), sj = x.stride(3);
    at::parallel_for(0, B * H, line_grain(W * C), [&](int64_t begin, int64_t end) {
      for (int64_t line = begin; line < end; ++line)
        transpose(dst + line * W * C, C, 1, src + (line / H) * sb + (line % H) * si, sc, sj, C, W);
    });
  });
  return y;
}

// -------------------------------------------------------------- forward

// The strides of a (B, C, H, W) tensor: the sweeps read value and grad_out, and
// write the gradients, through them, so they work in the caller's layout (NCHW
// from a convolution, say) without whole-tensor transposed copies.
struct Strides {
  int64_t b, c, i, j;
  explicit Strides(const at::Tensor& t) : b(t.stride(0)), c(t.stride(1)), i(t.stride(2)), j(t.stride(3)) {}
  int64_t at(int64_t bb, int64_t i_, int64_t j_) const { return bb * b + i_ * i + j_ * j; }
};

// value is read through its strides sv.  When its channels are contiguous
// (channels-last) its rows and columns are (pixels, C) matrices in place.  Any
// other layout (NCHW from a convolution) needs them channels-last, and a
// whole-tensor copy would be a (B, H, W, C) buffer of fresh memory on every
// call (19 MiB at the paper's size; 64 MiB at 128 x 256, where every page of it
// costs a page fault).  out is that buffer: the row sweep parks each row of
// value in out, channels-last; the column sweep copies column j of it into a
// per-thread panel and overwrites it with column j's half of the aggregation
// (no other column needs column j's values); the last row sweep transposes each
// row of value again, in cache, and adds the row half.
template <typename scalar_t>
void forward_lines(const scalar_t* q, const scalar_t* k, const scalar_t* v, const Strides& sv,
                   acc_t<scalar_t>* att, acc_t<scalar_t>* out, int64_t B, int64_t H, int64_t W,
                   int64_t Ck, int64_t Cv) {
  using T = acc_t<scalar_t>;
  const int64_t L = H + W - 1;
  const bool in_place = sv.c == 1;

  // Column energies: e[i, i2] = q(i, j) . k(i2, j), kept for i2 != i.
  at::parallel_for(0, B * W, line_grain(H * H * Ck), [&](int64_t begin, int64_t end) {
    std::vector<T> kt(Ck * H), e(H * H);
    for (int64_t line = begin; line < end; ++line) {
      const int64_t b = line / W, j = line % W;
      transpose(kt.data(), H, 1, k + pixel(b, 0, j, H, W) * Ck, W * Ck, 1, H, Ck);  // (C', H)
      line_matmul(e.data(), H, false, q + pixel(b, 0, j, H, W) * Ck, W * Ck, 1, kt.data(), H, H,
                  H, Ck);                                                        // (H, H)
      for (int64_t i = 0; i < H; ++i)
        for (int64_t n = 0; n + 1 < H; ++n)
          att[pixel(b, i, j, H, W) * L + W + n] = e[i * H + column_row(n, i)];
    }
  });

  // Rows: row energies, then every pixel of the row has all L energies: softmax.
  // And this row of value, channels-last, parked in out for the column sweep.
  at::parallel_for(0, B * H, line_grain(W * W * Ck), [&](int64_t begin, int64_t end) {
    std::vector<T> kt(Ck * W);
    for (int64_t line = begin; line < end; ++line) {
      const int64_t b = line / H, i = line % H, row = pixel(b, i, 0, H, W);
      transpose(kt.data(), W, 1, k + row * Ck, Ck, 1, W, Ck);  // (C', W)
      line_matmul(att + row * L, L, false, q + row * Ck, Ck, 1, kt.data(), W, W, W, Ck);
      for (int64_t j = 0; j < W; ++j) softmax_line(att + (row + j) * L, L);
      if (!in_place) transpose(out + row * Cv, Cv, 1, v + sv.at(b, i, 0), sv.c, sv.j, Cv, W);
    }
  });

  // Columns: out(i, j) = sum_{i2 != i} A[(i, j), slot of i2] v(i2, j)
  at::parallel_for(0, B * W, line_grain(H * H * Cv), [&](int64_t begin, int64_t end) {
    std::vector<T> dense(H * H), panel(in_place ? 0 : H * Cv);
    for (int64_t line = begin; line < end; ++line) {
      const int64_t b = line / W, j = line % W, col = pixel(b, 0, j, H, W);
      dense_column(dense.data(), att + col * L, W * L, H, W);
      if (in_place) {
        line_matmul(out + col * Cv, W * Cv, false, dense.data(), H, 1, v + sv.at(b, 0, j), sv.i,
                    H, Cv, H);
      } else {  // column j of value, (H, C), out of out before the result replaces it
        for (int64_t i = 0; i < H; ++i)
          std::copy(out + (col + i * W) * Cv, out + (col + i * W + 1) * Cv, panel.data() + i * Cv);
        line_matmul(out + col * Cv, W * Cv, false, dense.data(), H, 1, panel.data(), Cv, H, Cv, H);
      }
    }
  });

  // Rows: out(i, j) += sum_j2 A[(i, j), j2] v(i, j2)
  at::parallel_for(0, B * H, line_grain(W * W * Cv), [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> v_buf(in_place ? 0 : W * Cv);
    for (int64_t line = begin; line < end; ++line) {
      const int64_t b = line / H, i = line % H, row = pixel(b, i, 0, H, W);
      const scalar_t* v_row = v + sv.at(b, i, 0);
      int64_t v_k = sv.j;
      if (!in_place) {  // (W, C)
        transpose(v_buf.data(), Cv, 1, v_row, sv.c, sv.j, Cv, W);
        v_row = v_buf.data();
        v_k = Cv;
      }
      line_matmul(out + row * Cv, Cv, true, att + row * L, L, 1, v_row, v_k, W, Cv, W);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& query_in,
                                               const at::Tensor& key_in,
                                               const at::Tensor& value) {
  check_inputs(query_in, key_in, value);
  const auto query = channels_last_cpu(query_in), key = channels_last_cpu(key_in);
  const int64_t B = query.size(0), Ck = query.size(1), Cv = value.size(1);
  const int64_t H = query.size(2), W = query.size(3), L = H + W - 1;
  const auto dtype = query.scalar_type();
  at::Tensor att, out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "cca_forward_cpu", [&] {
    using T = acc_t<scalar_t>;
    att = at::empty({B, H, W, L}, query.options().dtype(acc_dtype<scalar_t>()));
    out = empty_channels_last(value, Cv, acc_dtype<scalar_t>());
    forward_lines<scalar_t>(query.const_data_ptr<scalar_t>(), key.const_data_ptr<scalar_t>(),
                            value.const_data_ptr<scalar_t>(), Strides(value), att.data_ptr<T>(),
                            out.data_ptr<T>(), B, H, W, Ck, Cv);
  });
  return {out.to(dtype), att.to(dtype)};
}

// -------------------------------------------------------------- backward

// Columns are handled in groups of up to kGroup: a column of an NCHW tensor has
// its pixels W apart, so a column at a time would use 4 bytes of every 64-byte
// cache line it loads; a group of 8 uses 32 bytes of every row it visits.
// Measured at 97 x 97 (both built, timed alternately in one process): 16 is no
// faster, and its panels (16 x C x H floats per thread) take twice the memory.
constexpr int64_t kGroup = 8;

// The backward, three sweeps, each writing disjoint pixels (no atomics):
//   rows   : dA's row half, g[(i, j), j2] = dout(i, j) . v(i, j2), and dV's row
//            part (it needs only A and dout), written into grad_value
//   columns: dA's column half, then (dA complete) the softmax backward, dA -> dE,
//            the column parts of dQ, dK (into channels-last buffers) and of dV
//   rows   : the row parts of dQ and dK, added; dV's column parts added into
//            grad_value; dQ, dK copied out
// dout is transposed once, row by row in the first sweep, into go_cl (B, H, W, C):
// the column sweep reads its columns in place (copying NCHW columns into panels
// cost ~14% of the backward) and leaves dV's column parts in it, column by
// column, for the last sweep to add a row at a time.  value's columns are copied
// into per-thread panels, a group of columns at a time.
template <typename scalar_t>
void backward_lines(const scalar_t* go, const Strides& sgo, const scalar_t* ga,
                    const scalar_t* att, const scalar_t* q, const scalar_t* k, const scalar_t* v,
                    const Strides& sv, acc_t<scalar_t>* g, acc_t<scalar_t>* dq_cl,
                    acc_t<scalar_t>* dk_cl, acc_t<scalar_t>* dq, const Strides& sdq,
                    acc_t<scalar_t>* dk, const Strides& sdk, acc_t<scalar_t>* dv,
                    const Strides& sdv, acc_t<scalar_t>* go_cl, acc_t<scalar_t>* scratch,
                    int64_t slots, int64_t B,
                    int64_t H, int64_t W, int64_t Ck, int64_t Cv) {
  using T = acc_t<scalar_t>;
  const int64_t L = H + W - 1;

  // Rows: row half of dA, and the row part of dV, which needs only A and dout.
  at::parallel_for(0, B * H, line_grain(2 * W * W * Cv), [&](int64_t begin, int64_t end) {
    std::vector<T> vt(sv.j == 1 ? 0 : Cv * W), dv_row(W * Cv);
    for (int64_t line = begin; line < end; ++line) {
      const int64_t b = line / H, i = line % H, row = pixel(b, i, 0, H, W);
      T* go_row = go_cl + row * Cv;  // this row of dout, channels-last, kept for the columns
      transpose(go_row, Cv, 1, go + sgo.at(b, i, 0), sgo.c, sgo.j, Cv, W);  // (W, C)
      // dA(i, j)[j2] = dout(i, j) . v(i, j2), v's row as a (C, W) panel: an NCHW
      // row is one already (line_matmul packs it), any other is copied into one.
      if (sv.j == 1) {
        line_matmul(g + row * L, L, false, go_row, Cv, 1, v + sv.at(b, i, 0), sv.c, W, W, Cv);
      } else {
        transpose(vt.data(), W, 1, v + sv.at(b, i, 0), sv.j, sv.c, W, Cv);
        line_matmul(g + row * L, L, false, go_row, Cv, 1, vt.data(), W, W, W, Cv);
      }
      // dv(i, j2) = sum_j A[(i, j), j2] dout(i, j)       (a transposed: a_r = 1, a_k = L)
      line_matmul(dv_row.data(), Cv, false, att + row * L, 1, L, go_row, Cv, W, Cv, W);
      transpose(dv + sdv.at(b, i, 0), sdv.c, sdv.j, dv_row.data(), Cv, 1, W, Cv);
    }
  });

  // Columns, in groups: column half of dA, softmax backward, column parts.
  const int64_t panel = Cv * H;
  at::parallel_for(0, B * W, line_grain(H * H * (2 * Cv + 2 * Ck)), [&](int64_t begin, int64_t end) {
    const int64_t slot = slots == 1 ? 0 : at::get_thread_num();
    TORCH_INTERNAL_ASSERT(slot < slots, "criss_cross_attention_backward: scratch slot");
    T* vt = scratch + slot * kGroup * panel;
    std::vector<T> e(H * H), da(H * H);
    for (int64_t first = begin; first < end;) {
      const int64_t b = first / W, j0 = first % W;
      const int64_t n_cols = std::min({kGroup, end - first, W - j0});
      // Column j0 + jj of v as a (C, H) panel, of dout as (H, C), at jj * panel:
      // each channel plane walked down its rows, 8 x 8 blocks at a time.
      const scalar_t* v0 = v + sv.at(b, 0, j0);
      for (int64_t c = 0; c < Cv; ++c)
        transpose(vt + c * H, panel, 1, v0 + c * sv.c, sv.i, sv.j, H, n_cols);
      for (int64_t jj = 0; jj < n_cols; ++jj) {
        const int64_t j = j0 + jj, col = pixel(b, 0, j, H, W);
        T* go_j = go_cl + col * Cv;  // dout's column j, rows W * C apart
        T* dv_j = vt + jj * panel;   // (H, C), reuses the panel of v once it is read
        line_matmul(e.data(), H, false, go_j, W * Cv, 1, vt + jj * panel, H, H, H, Cv);
        for (int64_t i = 0; i < H; ++i) {
          const int64_t u = col + i * W;
          for (int64_t n = 0; n + 1 < H; ++n) g[u * L + W + n] = e[i * H + column_row(n, i)];
          if (ga != nullptr)
            for (int64_t l = 0; l < L; ++l) g[u * L + l] += static_cast<T>(ga[u * L + l]);
          softmax_backward_row(att + u * L, g + u * L, L);
        }
        dense_column(e.data(), g + col * L, W * L, H, W);  // dE's column slots, (H, H)
        dense_column(da.data(), att + col * L, W * L, H, W);
        line_matmul(dq_cl + col * Ck, W * Ck, false, e.data(), H, 1, k + col * Ck, W * Ck, H, Ck, H);
        line_matmul(dk_cl + col * Ck, W * Ck, false, e.data(), 1, H, q + col * Ck, W * Ck, H, Ck, H);
        line_matmul(dv_j, Cv, false, da.data(), 1, H, go_j, W * Cv, H, Cv, H);
        // dout's column j is not read again: it takes dv's column part, which the
        // last row sweep adds into grad_value a row at a time.
        for (int64_t i = 0; i < H; ++i)
          std::copy(dv_j + i * Cv, dv_j + (i + 1) * Cv, go_j + i * W * Cv);
      }
      first += n_cols;
    }
  });

  // Rows: the row parts of dQ and dK, added to the column parts.
  at::parallel_for(0, B * H, line_grain(2 * W * W * Ck), [&](int64_t begin, int64_t end) {
    for (int64_t line = begin; line < end; ++line) {
      const int64_t b = line / H, i = line % H, row = pixel(b, i, 0, H, W);
      // dq(i, j) += sum_j2 dE[(i, j), j2] k(i, j2)
      line_matmul(dq_cl + row * Ck, Ck, true, g + row * L, L, 1, k + row * Ck, Ck, W, Ck, W);
      // dk(i, j2) += sum_j dE[(i, j), j2] q(i, j)       (a transposed: a_r = 1, a_k = L)
      line_matmul(dk_cl + row * Ck, Ck, true, g + row * L, 1, L, q + row * Ck, Ck, W, Ck, W);
      // The finished row, into the gradients' own layouts.
      transpose<true>(dv + sdv.at(b, i, 0), sdv.c, sdv.j, go_cl + row * Cv, Cv, 1, W, Cv);
      transpose(dq + sdq.at(b, i, 0), sdq.c, sdq.j, dq_cl + row * Ck, Ck, 1, W, Ck);
      transpose(dk + sdk.at(b, i, 0), sdk.c, sdk.j, dk_cl + row * Ck, Ck, 1, W, Ck);
    }
  });
}

// Gradients come back in the layout of the inputs they belong to (empty_like:
// NCHW for NCHW inputs), so autograd does not copy them into it.
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_att_in,
    const at::Tensor& attention_in, const at::Tensor& query_in, const at::Tensor& key_in,
    const at::Tensor& value) {
  check_inputs(query_in, key_in, value);
  check_backward(grad_out, grad_att_in, attention_in, query_in, value);
  const auto query = channels_last_cpu(query_in), key = channels_last_cpu(key_in);
  const int64_t B = query.size(0), Ck = query.size(1), Cv = value.size(1);
  const int64_t H = query.size(2), W = query.size(3), L = H + W - 1;
  const auto dtype = query.scalar_type();
  const auto attention = attention_in.to(dtype).contiguous();
  at::Tensor grad_att;
  if (grad_att_in.has_value() && grad_att_in->defined())
    grad_att = grad_att_in->to(dtype).contiguous();
  // Inside somebody else's parallel region the sweeps run inline, on one thread.
  const int64_t slots = at::in_parallel_region() ? 1 : at::get_num_threads();

  at::Tensor grad_query, grad_key, grad_value;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "cca_backward_cpu", [&] {
    using T = acc_t<scalar_t>;
    const auto acc = query.options().dtype(acc_dtype<scalar_t>());
    auto g = at::empty({B, H, W, L}, acc);  // dA, then dE
    auto dq_cl = empty_channels_last(query, Ck, acc_dtype<scalar_t>());
    auto dk_cl = empty_channels_last(query, Ck, acc_dtype<scalar_t>());
    // The gradients in the layouts of their inputs.
    grad_query = at::empty_like(query_in, acc);
    grad_key = at::empty_like(key_in, acc);
    grad_value = at::empty_like(value, acc);
    // Per thread, the column panels of a group of v; and dout channels-last (see
    // backward_lines).  Torch tensors, so that memory measurements see them.
    auto scratch = at::empty({slots * kGroup * Cv * H}, acc);
    auto go_cl = at::empty({B * H * W * Cv}, acc);
    backward_lines<scalar_t>(
        grad_out.const_data_ptr<scalar_t>(), Strides(grad_out),
        grad_att.defined() ? grad_att.const_data_ptr<scalar_t>() : nullptr,
        attention.const_data_ptr<scalar_t>(), query.const_data_ptr<scalar_t>(),
        key.const_data_ptr<scalar_t>(), value.const_data_ptr<scalar_t>(), Strides(value),
        g.data_ptr<T>(), dq_cl.data_ptr<T>(), dk_cl.data_ptr<T>(), grad_query.data_ptr<T>(),
        Strides(grad_query), grad_key.data_ptr<T>(), Strides(grad_key), grad_value.data_ptr<T>(),
        Strides(grad_value), go_cl.data_ptr<T>(), scratch.data_ptr<T>(), slots, B, H, W, Ck, Cv);
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
