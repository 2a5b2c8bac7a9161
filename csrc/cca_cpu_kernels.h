// The micro-kernels of the CPU operator, written once over simd::Vec<T>.
//
// Four kernels do all the work of cca_cpu.cpp:
//   line_product      out (+)= a b        a (rows x depth), b (depth x cols)
//   softmax           energies -> affinities of one pixel, in place
//   softmax_backward  dL/dA -> dL/dE of one pixel, in place
//   copy              dst = src between two layouts (a transpose when one holds
//                     pixels x channels and the other channels x pixels)
// Plain C++ over the vector type of cca_simd.h, no torch: the same text is
// compiled for AVX-512, for AVX2 and for plain C++, and the ISA only decides how
// many outputs are computed side by side.
//
// Identical bits in the x86-64-v3 and x86-64-v4 builds.  Each output of
// line_product is one chain of fused multiply-adds over k = 0, 1, ..., depth - 1,
// started from zero (then added to out when accumulating): the tile shape or the
// vector width changes which outputs share a register, never the chain.  The sums
// and maxima of the softmax run over 16 lanes in a fixed order (see SixteenLanes),
// and exp is the same sequence of IEEE operations in both builds.  The 16-byte
// build on baseline x86-64 has no fused multiply-add: it rounds each a * b + c
// twice and agrees with the others to rounding error, not bit for bit.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <new>
#include <type_traits>

#include "cca_simd.h"

namespace ccnet_edu {
namespace cpu {

using simd::Vec;

// ------------------------------------------------------------------ views

// A matrix in memory: element (r, c) at data[r * row_stride + c * col_stride].
// The kernels take their operands as these instead of a pointer and four ints
// each; transposed() is the same memory read the other way round.
template <typename T>
struct Matrix {
  T* data;
  int64_t rows, cols;
  int64_t row_stride, col_stride;

  T& operator()(int64_t r, int64_t c) const { return data[r * row_stride + c * col_stride]; }
  T* row(int64_t r) const { return data + r * row_stride; }
  Matrix transposed() const { return {data, cols, rows, col_stride, row_stride}; }
  // Columns [first, first + count).
  Matrix columns(int64_t first, int64_t count) const {
    return {data + first * col_stride, rows, count, row_stride, col_stride};
  }
  operator Matrix<const T>() const
    requires(!std::is_const_v<T>)
  {
    return {data, rows, cols, row_stride, col_stride};
  }
};

// The operands' element type is read off the output alone: a Matrix<T> is then
// taken where a Matrix<const T> is expected, as a T* is where a const T* is.
template <typename T>
using In = Matrix<const std::type_identity_t<T>>;

// A (rows x cols) matrix with rows stored one after another (row stride cols).
template <typename T>
Matrix<T> dense_matrix(T* data, int64_t rows, int64_t cols) {
  return {data, rows, cols, cols, 1};
}

// Per-thread scratch that grows on demand, aligned to a cache line (64 bytes) so
// that the tile's full-width loads from it never straddle two lines.
template <typename T>
class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { ::operator delete[](data_, std::align_val_t(64)); }
  T* get(int64_t n) {
    if (n > capacity_) {
      ::operator delete[](data_, std::align_val_t(64));
      data_ = static_cast<T*>(::operator new[](n * sizeof(T), std::align_val_t(64)));
      capacity_ = n;
    }
    return data_;
  }

 private:
  T* data_ = nullptr;
  int64_t capacity_ = 0;
};

// ------------------------------------------------------------- line_product

// The register tile: kTileRows x kTileVectors vectors of outputs stay in
// registers while k runs; per k, kTileVectors loads of b, kTileRows broadcasts of
// a and kTileRows * kTileVectors FMAs.  With 16 vector registers (AVX2) that is
// 6 x 2 (12 accumulators, 2 for b, 1 for a); AVX-512 has 32: 6 x 4.
#if defined(CCA_SIMD_AVX512)
inline constexpr int kTileRows = 6, kTileVectors = 4;
#else
inline constexpr int kTileRows = 6, kTileVectors = 2;
#endif

// The multiply-add of `depth` steps into an R x NV block of outputs:
//   out[r * out_row + x] (+)= sum_k a[r * a_row + k * a_col] * panel[k * panel_row + x]
// for r < R and x < NV * size; only the first `width` columns are stored.  The
// panel holds NV full vectors per row (zero padded past the matrix), so every
// load is a full one.
template <int R, int NV, typename T>
inline void tile(T* out, int64_t out_row, const T* a, int64_t a_row, int64_t a_col,
                 const T* panel, int64_t panel_row, int64_t depth, int64_t width,
                 bool accumulate) {
  using V = Vec<T>;
  V acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int x = 0; x < NV; ++x) acc[r][x] = V::zero();
  for (int64_t k = 0; k < depth; ++k) {
    V b[NV];
#pragma GCC unroll 8
    for (int x = 0; x < NV; ++x) b[x] = V::load(panel + k * panel_row + x * V::size);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const V a_rk = V::broadcast(a[r * a_row + k * a_col]);
#pragma GCC unroll 8
      for (int x = 0; x < NV; ++x) acc[r][x] = simd::fma(a_rk, b[x], acc[r][x]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int x = 0; x < NV; ++x) {
      T* o = out + r * out_row + x * V::size;
      const int64_t n = std::min<int64_t>(V::size, width - x * V::size);
      if (n == V::size)
        (accumulate ? V::load(o) + acc[r][x] : acc[r][x]).store(o);
      else if (n > 0)
        (accumulate ? V::load_first(o, static_cast<int>(n)) + acc[r][x] : acc[r][x])
            .store_first(o, static_cast<int>(n));
    }
}

// Template arguments from a run-time count: f(std::integral_constant<int, n>) for
// 1 <= n <= 8.
template <typename F>
inline void with_count(int n, F&& f) {
  switch (n) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 7: return f(std::integral_constant<int, 7>{});
    default: return f(std::integral_constant<int, 8>{});
  }
}

template <typename T>
bool overlap(const Matrix<T>& x, const In<T>& y) {
  const auto last = [](const auto& m) {
    return m.data + (m.rows - 1) * m.row_stride + (m.cols - 1) * m.col_stride;
  };
  return x.data <= last(y) && y.data <= last(x);
}

template <bool kAdd = false, typename T>
void copy(Matrix<T> dst, In<T> src);

// out (+)= a b: out (rows x cols), a (rows x depth) and b (depth x cols) in any
// layout (a transposed matrix too); b may be out itself (column_aggregate reads
// value parked in out).  Every row and column product of the operator goes
// through here.
//
// The tile writes rows of out; an out whose columns are contiguous instead (a
// row of an NCHW gradient, seen as (W x C)) is computed as out^T = b^T a^T.  The
// bits are the same either way: fma(a, b, acc) == fma(b, a, acc), and k runs in
// the same order.  Any other out is computed into scratch and copied.
//
// The tile broadcasts a[r][k] for k = 0, 1, ...  Where a's k steps are a multiple
// of 1 KiB apart (a row of an NCHW gradient, (W x C) with channels H * W apart,
// when H * W is a multiple of 256), every k is a cache line of its own, and all
// of them fall into at most 4 of L1's 64 sets: they do not stay in L1 from one
// row block to the next, and each column block walks them all again.  When more
// than eight column blocks would (more than 128 float columns with AVX2, 512 with
// AVX-512), a is first copied into dense rows: one transposing pass over a, the
// same values, so the same bits.
//
// Column blocks of kTileVectors vectors outside, row blocks of kTileRows inside:
// the block's (depth x block) panel of b stays in L1 while every row block of a
// streams past it.  The panel is copied into scratch first
//   * when b's rows are not contiguous (it is transposed on the way);
//   * when the block is the last, narrower one (zero padded to whole vectors);
//   * when several row blocks read it: in place its rows sit b.row_stride
//     apart, a multiple of 2 KiB for the value and gradient lines (C = 512, or
//     W * C for a column), so all of them fall into the same few L1 sets and
//     evict each other;
//   * when b is out: the block is read before its outputs overwrite it (and no
//     output depends on another block of b).
// The rows below the last full tile are one or two shorter tiles over the same
// panel.
template <typename T>
void line_product(Matrix<T> out, In<T> a, In<T> b, bool accumulate) {
  using V = Vec<T>;
  constexpr int R = kTileRows, block = kTileVectors * V::size;
  if (out.col_stride != 1 && out.row_stride == 1)
    return line_product(out.transposed(), b.transposed(), a.transposed(), accumulate);
  if (out.col_stride != 1) {  // neither: through a dense scratch matrix
    thread_local Scratch<T> result;
    const auto dense = Matrix<T>{result.get(out.rows * out.cols), out.rows, out.cols, out.cols, 1};
    line_product(dense, a, b, false);
    return accumulate ? copy<true>(out, dense) : copy(out, dense);
  }
  const int64_t rows = out.rows, cols = out.cols, depth = a.cols;
  if (rows == 0 || cols == 0) return;
  const int64_t k_step = a.col_stride * int64_t(sizeof(T));
  if (k_step != 0 && k_step % 1024 == 0 && depth > 1 && cols > 8 * block) {
    thread_local Scratch<T> rows_of_a;
    const auto dense = dense_matrix(rows_of_a.get(rows * depth), rows, depth);
    copy(dense, a);
    return line_product(out, In<T>(dense), b, accumulate);
  }
  const bool always_pack = b.col_stride != 1 || overlap(out, b);
  // Full tiles of R rows, then the last R + rows % R rows (see below).
  const int64_t full_tiles_end = rows < R ? 0 : rows - R - rows % R;
  thread_local Scratch<T> scratch;
  for (int64_t x = 0; x < cols; x += block) {
    const int64_t width = std::min<int64_t>(block, cols - x);
    const int vectors = static_cast<int>((width + V::size - 1) / V::size);
    const T* panel = b.data + x * b.col_stride;
    int64_t panel_row = b.row_stride;
    if (always_pack || width < block || (rows >= 2 * R && b.row_stride != block)) {
      T* packed = scratch.get(depth * block);
      copy(Matrix<T>{packed, depth, width, block, 1}, b.columns(x, width));
      for (int64_t k = 0; k < depth; ++k)
        for (int64_t c = width; c < vectors * V::size; ++c) packed[k * block + c] = T(0);
      panel = packed;
      panel_row = block;
    }
    with_count(vectors, [&](auto nv) {
      constexpr int NV = decltype(nv)::value;
      const auto rows_from = [&](int64_t r, auto n) {
        tile<decltype(n)::value, NV>(out.row(r) + x, out.row_stride, a.row(r), a.row_stride,
                                     a.col_stride, panel, panel_row, depth, width, accumulate);
      };
      for (int64_t r = 0; r < full_tiles_end; r += R)
        rows_from(r, std::integral_constant<int, R>{});
      // The last rows, fewer than 2R: one tile of one or two rows would be one or two
      // FMA chains per vector, bound by the FMA latency; two tiles of about half of
      // them keep enough chains in flight.
      const int last = static_cast<int>(rows - full_tiles_end);
      if (last > R) {
        with_count(last - last / 2, [&](auto n) { rows_from(full_tiles_end, n); });
        with_count(last / 2, [&](auto n) { rows_from(rows - last / 2, n); });
      } else if (last > 0) {
        with_count(last, [&](auto n) { rows_from(full_tiles_end, n); });
      }
    });
  }
}

// ------------------------------------------------------------------ softmax

// Sums and maxima over a line of n values in one order whatever the vector
// width: value l goes to running lane l % 16, in increasing l (the last 16 are
// padded with the identity, so every build does the same operations on every
// lane), and the 16 lanes are then combined by one tree: lane j with lane j + 8,
// then j + 4, j + 2, j + 1.  16 / size vectors hold the lanes.
template <typename T>
struct SixteenLanes {
  static constexpr int kVectors = 16 / Vec<T>::size;
  static_assert(kVectors * Vec<T>::size == 16, "Vec<T>::size must divide 16");
  Vec<T> lane[kVectors];

  // f(vector index v, offset of its first value from the chunk, number of values
  // of it inside the line) for each vector of the chunk that starts at l.
  template <typename F>
  static void chunk(int64_t l, int64_t n, F&& f) {
    for (int v = 0; v < kVectors; ++v) {
      const int64_t first = l + v * Vec<T>::size;
      f(v, first, static_cast<int>(std::clamp<int64_t>(n - first, 0, Vec<T>::size)));
    }
  }

  template <typename Op>
  T combine(Op op) const {
    T t[16];
    for (int v = 0; v < kVectors; ++v) lane[v].store(t + v * Vec<T>::size);
    for (int half = 8; half >= 1; half /= 2)
      for (int j = 0; j < half; ++j) t[j] = op(t[j], t[j + half]);
    return t[0];
  }
};

// Softmax over the n energies of one pixel, in place: energy -> affinity.
// Subtracting the maximum keeps exp() finite for any energy.
template <typename T>
void softmax(T* e, int64_t n) {
  using V = Vec<T>;
  using Lanes = SixteenLanes<T>;
  const T lowest = -std::numeric_limits<T>::infinity();
  Lanes running;
  for (V& lane : running.lane) lane = V::broadcast(lowest);
  for (int64_t l = 0; l < n; l += 16)
    Lanes::chunk(l, n, [&](int v, int64_t first, int count) {
      const V x = count == V::size ? V::load(e + first) : V::load_first(e + first, count, lowest);
      running.lane[v] = simd::max(x, running.lane[v]);
    });
  const V m = V::broadcast(running.combine([](T a, T b) { return a > b ? a : b; }));

  Lanes sum;
  for (V& lane : sum.lane) lane = V::zero();
  for (int64_t l = 0; l < n; l += 16)
    Lanes::chunk(l, n, [&](int v, int64_t first, int count) {
      if (count == V::size) {
        const V p = simd::opaque(simd::exp(V::load(e + first) - m));
        p.store(e + first);
        sum.lane[v] = sum.lane[v] + p;
      } else {  // lanes past the line add zero, in every build
        const V x = V::load_first(e + first, count);
        const V p = simd::keep_first(simd::opaque(simd::exp(x - m)), count);
        p.store_first(e + first, count);
        sum.lane[v] = sum.lane[v] + p;
      }
    });
  const V inverse = V::broadcast(T(1) / sum.combine([](T a, T b) { return a + b; }));
  int64_t l = 0;
  for (; l + V::size <= n; l += V::size) (V::load(e + l) * inverse).store(e + l);
  if (l < n) {
    const int count = static_cast<int>(n - l);
    (V::load_first(e + l, count) * inverse).store_first(e + l, count);
  }
}

// Backward of the softmax of one pixel, in place on grad:
//   dE_l = A_l (dA_l - sum_m A_m dA_m).
template <typename T>
void softmax_backward(const T* attention, T* grad, int64_t n) {
  using V = Vec<T>;
  using Lanes = SixteenLanes<T>;
  Lanes dot;
  for (V& lane : dot.lane) lane = V::zero();
  for (int64_t l = 0; l < n; l += 16)
    Lanes::chunk(l, n, [&](int v, int64_t first, int count) {
      const bool full = count == V::size;
      const V a = full ? V::load(attention + first) : V::load_first(attention + first, count);
      const V g = full ? V::load(grad + first) : V::load_first(grad + first, count);
      dot.lane[v] = simd::fma(a, g, dot.lane[v]);
    });
  const V total = V::broadcast(dot.combine([](T a, T b) { return a + b; }));
  int64_t l = 0;
  for (; l + V::size <= n; l += V::size)
    (V::load(attention + l) * (V::load(grad + l) - total)).store(grad + l);
  if (l < n) {
    const int count = static_cast<int>(n - l);
    (V::load_first(attention + l, count) * (V::load_first(grad + l, count) - total))
        .store_first(grad + l, count);
  }
}

// --------------------------------------------------------------------- copy

// dst row r = src column r for r < rows of a square block of size x size, src's
// columns and dst's rows contiguous (src_col and dst_row apart): loaded as
// vectors, transposed in registers, stored as vectors.  With n_rows < size or
// n_cols < size only that corner is read and written (masked loads and stores).
template <bool kAdd, typename T>
inline void transpose_block(T* dst, int64_t dst_row, const T* src, int64_t src_col, int n_rows,
                            int n_cols) {
  using V = Vec<T>;
  constexpr int s = V::size;
  V block[s];
  if (n_rows == s && n_cols == s) {
#pragma GCC unroll 16
    for (int c = 0; c < s; ++c) block[c] = V::load(src + c * src_col);
    simd::transpose_in_registers(block);
#pragma GCC unroll 16
    for (int r = 0; r < s; ++r) {
      T* to = dst + r * dst_row;
      (kAdd ? V::load(to) + block[r] : block[r]).store(to);
    }
    return;
  }
#pragma GCC unroll 16
  for (int c = 0; c < s; ++c)
    block[c] = c < n_cols ? V::load_first(src + c * src_col, n_rows) : V::zero();
  simd::transpose_in_registers(block);
#pragma GCC unroll 16
  for (int r = 0; r < s; ++r) {
    if (r >= n_rows) break;
    T* to = dst + r * dst_row;
    (kAdd ? V::load_first(to, n_cols) + block[r] : block[r]).store_first(to, n_cols);
  }
}

// dst(r, c) = src(r, c) (or += with kAdd) for r < src.rows, c < src.cols, in any
// pair of layouts.  Every layout change of the operator is this: an NCHW row of
// value into a channels-last (W, C) panel, a line of pixel vectors into a
// (C, line) panel, a finished row back into NCHW.
//   rows contiguous on both sides       -> line by line, vector loads and stores;
//   rows on one side, columns on other  -> a transpose, square blocks of
//                                          size x size through registers;
//   anything else                       -> element by element.
template <bool kAdd, typename T>
void copy(Matrix<T> dst, In<T> src) {
  using V = Vec<T>;
  constexpr int s = V::size;
  if (dst.col_stride != 1 && dst.row_stride == 1) {  // the same copy, seen transposed
    dst = dst.transposed();
    src = src.transposed();
  }
  const int64_t rows = src.rows, cols = src.cols;
  if (dst.col_stride == 1 && src.col_stride == 1) {
    for (int64_t r = 0; r < rows; ++r) {
      const T* from = src.row(r);
      T* to = dst.row(r);
      int64_t c = 0;
      for (; c + s <= cols; c += s)
        (kAdd ? V::load(to + c) + V::load(from + c) : V::load(from + c)).store(to + c);
      if (c < cols) {
        const int n = static_cast<int>(cols - c);
        (kAdd ? V::load_first(to + c, n) + V::load_first(from + c, n) : V::load_first(from + c, n))
            .store_first(to + c, n);
      }
    }
  } else if (dst.col_stride == 1 && src.row_stride == 1) {
    for (int64_t r = 0; r < rows; r += s)
      for (int64_t c = 0; c < cols; c += s)
        transpose_block<kAdd>(dst.row(r) + c, dst.row_stride, &src(r, c), src.col_stride,
                              static_cast<int>(std::min<int64_t>(s, rows - r)),
                              static_cast<int>(std::min<int64_t>(s, cols - c)));
  } else {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) dst(r, c) = kAdd ? dst(r, c) + src(r, c) : src(r, c);
  }
}

}  // namespace cpu
}  // namespace ccnet_edu
