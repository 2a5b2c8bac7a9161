// Criss-cross attention as line problems: the index and tiling arithmetic of the
// GPU's tiled kernels (cca_lines.h), on its own.
//
// Every row and every column of the map is a small dense attention problem: a
// row of W pixels attends over its W pixels, a column of H pixels over its H
// pixels with the centre left out (the row holds it).  A pixel's softmax spans
// its row and its column, so each half keeps its own running maximum m and sum
// s = sum exp(e - m), and the two halves are joined through their log-sum-exp
// (merge_lse below), as FlashAttention joins the splits of a split-KV pass.
//
// Nothing here needs torch or the CUDA toolkit: nvcc compiles it into the
// kernels and g++ into the CPU emulation of those kernels that the tests run
// (cca_lines_emulate.cpp), so the CPU checks the index math the GPU runs.
//
// Layout: query, key (B, C', H, W), value, out (B, C, H, W) and the gradients in
// their given layout, NCHW or channels-last (B, H, W, C), contiguous; attention
// (B, H, W, L)
//   L = H + W - 1 slots per pixel: the row first (W slots, centre included),
//   then the column without the centre (H - 1 slots, increasing row).
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define CCA_HD __host__ __device__
#define CCA_DEV __device__
#define CCA_LINES_UNROLL _Pragma("unroll")
#else
#define CCA_HD
#define CCA_DEV
#define CCA_LINES_UNROLL _Pragma("GCC unroll 16")
#endif

namespace ccnet_edu {
namespace lines {

// ------------------------------------------------------------- the tile sizes

constexpr int kWarps = 4;                // warps per CTA
constexpr int kThreads = 32 * kWarps;    // 128 threads
constexpr int kFrag = 16;                // the tensor cores' 16 x 16 output tile
constexpr int kRows = kFrag * kWarps;    // 64 rows (queries or keys) per CTA: 16 per warp
constexpr int kTile = 64;                // positions per step along the reduction over the line
constexpr int kChunk = 128;              // value channels per CTA (forward out, grad_value)
constexpr int kChunkFrags = kChunk / kFrag;  // 8 accumulator tiles per warp
constexpr int kLineProbs = 128;          // the longest line whose weights an aggregation CTA keeps
constexpr int kBwdChunk = 64;            // value channels per step of dA = dout . value
constexpr int kMaxDaSlices = 8;          // the most slices the backward accumulates dA over
constexpr int kMaxQk = 128;              // the widest C' the tiled kernels take
constexpr int kQkFrags = kMaxQk / kFrag;     // up to 8 accumulator tiles per warp for grad q/k
// The most dynamic shared memory one CTA may ask for is the device's
// (cudaDevAttrMaxSharedMemoryPerBlockOptin), which the launcher reads and passes to
// tiled_supported: 163 KB on compute capability 8.0, 99 KB on 8.6 and 8.9, 227 KB on
// 9.0 (CUDA C++ Programming Guide, "Compute Capabilities").  The CPU emulation runs
// as on an sm_90 device unless told another limit.
constexpr int64_t kSm90Smem = 227 * 1024;

static_assert(kTile == kRows, "the elementwise phases walk a kRows x kTile tile");

CCA_HD inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
CCA_HD inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// ----------------------------------------------------------------- the lines

enum Dir : int { kRow = 0, kCol = 1 };

// The map and its channels.
struct Problem {
  int64_t B, H, W;
  int64_t cqk, cv;  // C' (query/key channels) and C (value channels)
  // The slice [v0, v_end()) of the value channels that the one-direction passes cover
  // (run_forward and run_backward take the channels slice by slice); v1 = 0: all.
  int64_t v0 = 0, v1 = 0;
  // Whether a gradients launch holds the grad key and grad query CTAs (besides the grad
  // value CTAs of its slice): the first slice's in v2's order, the last launches' in the
  // order that accumulates dA slice by slice (run_backward).
  bool qk_grads = true;

  CCA_HD int64_t v_end() const { return v1 > 0 ? v1 : cv; }

  CCA_HD int64_t pixels() const { return B * H * W; }
  CCA_HD int64_t slots() const { return H + W - 1; }
  // B*H rows of length W; B*W columns of length H.
  CCA_HD int64_t lines(int dir) const { return dir == kRow ? B * H : B * W; }
  CCA_HD int length(int dir) const { return static_cast<int>(dir == kRow ? W : H); }
  // A column of one pixel holds only its (masked) centre: no column half at all.
  CCA_HD bool has(int dir) const { return dir == kRow || H > 1; }
  // C' padded to whole 16-channel steps of the tensor cores (zeros beyond C').
  CCA_HD int cqk_pad() const { return static_cast<int>(round_up(cqk, kFrag)); }
};

// One row or column: position t of the line is a pixel of the map.
struct Line {
  int dir;
  int64_t b, index;  // batch, and the row i (kRow) or the column j (kCol)
  int P;             // length: W for a row, H for a column
  int64_t H, W;

  // Flat pixel index (b, i, j) of position t, and its index i W + j in its map.
  CCA_HD int64_t pixel(int t) const { return b * H * W + hw(t); }
  CCA_HD int64_t hw(int t) const { return dir == kRow ? index * W + t : int64_t(t) * W + index; }
  // Where channel c of position t lies in a tensor of `channels` channels, NCHW or
  // channels-last, contiguous.
  CCA_HD int64_t at(int t, int64_t c, int64_t channels, bool nchw) const {
    return nchw ? (b * channels + c) * H * W + hw(t) : pixel(t) * channels + c;
  }
  // The column leaves its centre out: the row half already holds the pixel itself.
  CCA_HD bool masked(int t, int s) const { return dir == kCol && s == t; }
  // The attention slot in which query t keeps key s (s != t on a column).
  CCA_HD int64_t slot(int t, int s) const {
    return dir == kRow ? s : W + s - (s > t ? 1 : 0);
  }
  // Whether query t sees key s at all (inside the line, not the column's centre).
  CCA_HD bool sees(int t, int s) const { return t < P && s < P && !masked(t, s); }
};

CCA_HD inline Line make_line(const Problem& p, int dir, int64_t line) {
  Line l;
  l.dir = dir;
  l.H = p.H;
  l.W = p.W;
  l.P = p.length(dir);
  const int64_t per_batch = dir == kRow ? p.H : p.W;
  l.b = line / per_batch;
  l.index = line % per_batch;
  return l;
}

// ------------------------------------------------------------ the work items
// Consecutive CTAs share one line, so that its keys and values are read from
// DRAM once and from L2 by the line's other CTAs.

CCA_HD inline int64_t blocks_per_line(int P) { return ceil_div(P, kRows); }
// The CTAs of kChunk value channels of the slice.
CCA_HD inline int64_t value_chunks(const Problem& p) { return ceil_div(p.v_end() - p.v0, kChunk); }

struct Work {
  int dir;
  int64_t line;
  int block;  // which kRows rows of the line (queries, or keys for grad key/value)
  int chunk;  // which kChunk value channels (forward out, grad value); whole_line: 0, all
  int kind;   // the backward's three products (Kind)
};

// Kernels that take rows and columns in one launch (the statistics, dA): row
// lines first, then column lines (none when H == 1).
CCA_HD inline int64_t both_grid(const Problem& p) {
  int64_t n = p.lines(kRow) * blocks_per_line(p.length(kRow));
  if (p.has(kCol)) n += p.lines(kCol) * blocks_per_line(p.length(kCol));
  return n;
}

CCA_HD inline Work decode_both(const Problem& p, int64_t id) {
  Work w{};
  const int64_t rows = p.lines(kRow) * blocks_per_line(p.length(kRow));
  w.dir = id < rows ? kRow : kCol;
  if (w.dir == kCol) id -= rows;
  const int64_t per = blocks_per_line(p.length(w.dir));
  w.line = id / per;
  w.block = static_cast<int>(id % per);
  return w;
}

// Whether an aggregation CTA covers all the chunks of the slice: it computes its
// queries' energies and exponentials once, keeps the weights of the whole line
// (at most kLineProbs positions) in shared memory and sweeps the chunks over them.
// Longer lines, or a slice of one chunk: one CTA per chunk, each computing them.
CCA_HD inline bool whole_line(const Problem& p, int dir) {
  return value_chunks(p) > 1 && round_up(p.length(dir), kTile) <= kLineProbs;
}
CCA_HD inline int64_t agg_chunk_ctas(const Problem& p, int dir) {
  return whole_line(p, dir) ? 1 : value_chunks(p);
}

// The forward's aggregation, one direction per launch: line x query block x chunk
// (or all the slice's chunks: whole_line).
CCA_HD inline int64_t agg_grid(const Problem& p, int dir) {
  return p.lines(dir) * blocks_per_line(p.length(dir)) * agg_chunk_ctas(p, dir);
}

CCA_HD inline Work decode_agg(const Problem& p, int dir, int64_t id) {
  Work w{};
  w.dir = dir;
  const int64_t chunks = agg_chunk_ctas(p, dir), per = blocks_per_line(p.length(dir)) * chunks;
  w.line = id / per;
  const int64_t r = id % per;
  w.block = static_cast<int>(r / chunks);
  w.chunk = static_cast<int>(r % chunks);
  return w;
}

// The backward's gradients, one direction per launch.  Per line: grad value
// (each key block x each value chunk of the slice), grad key (each key block), grad
// query (each query block), these two where p.qk_grads; each item sums
// over the whole line, in a fixed order, and writes its own rows, so the result is
// deterministic and needs no atomics.
enum Kind : int { kGradValue = 0, kGradKey = 1, kGradQuery = 2 };

CCA_HD inline int64_t grads_per_line(const Problem& p, int dir) {
  const int64_t nb = blocks_per_line(p.length(dir));
  return nb * value_chunks(p) + (p.qk_grads ? nb + nb : 0);
}

CCA_HD inline int64_t grads_grid(const Problem& p, int dir) {
  return p.lines(dir) * grads_per_line(p, dir);
}

CCA_HD inline Work decode_grads(const Problem& p, int dir, int64_t id) {
  Work w{};
  w.dir = dir;
  const int64_t nb = blocks_per_line(p.length(dir)), chunks = value_chunks(p);
  const int64_t per = grads_per_line(p, dir);
  w.line = id / per;
  int64_t r = id % per;
  if (r < nb * chunks) {
    w.kind = kGradValue;
    w.block = static_cast<int>(r / chunks);
    w.chunk = static_cast<int>(r % chunks);
  } else if ((r -= nb * chunks) < nb) {
    w.kind = kGradKey;
    w.block = static_cast<int>(r);
  } else {
    w.kind = kGradQuery;
    w.block = static_cast<int>(r - nb);
  }
  return w;
}

// ------------------------------------------------------ maps and slices in L2
// A pixel's output is the sum of its row's and its column's parts, so the column
// pass reads again what the row pass read (query, key, a slice of value) and adds to
// what it wrote (out).  The passes therefore run a group of maps at a time, and
// within it a slice of the value channels at a time (each slice computes the
// energies again), the group and the slice chosen so that what the column pass
// reads again fits half of the L2 (ccnet_edu.roofline.v2_slices counts the same):
//   forward   per pixel: query, key (2 C'), value and out of the slice (2 c)
//   backward  per pixel: query, key, grad query, grad key (4 C'), grad out and grad
//             value of the slice (2 c), D (a float)
// When not even a kFrag-channel slice of one map fits, one slice of everything.

struct Plan {
  int64_t maps;    // maps per group
  int64_t width;   // value channels per slice (a multiple of kFrag, or C)
  int64_t slices;  // slices per group
  bool fits;
  bool sliced_da;  // the backward accumulates dA slice by slice (below)
};

CCA_HD inline int64_t reused_bytes(const Problem& p, int elem_bytes, bool backward,
                                   int64_t width) {
  const int64_t hw = p.H * p.W;
  return backward ? hw * (elem_bytes * (4 * p.cqk + 2 * width) + 4)
                  : hw * elem_bytes * (2 * p.cqk + 2 * width);
}

// The backward can do better where one map's attention and its float32 dA fit the L2
// beside a slice: per slice, one launch over rows and columns adds the slice's
// dout V^T to dA (the first slice writes it, the last adds grad_attention and
// computes D), then the slice's grad value launches (rows, columns); after the last
// slice, the grad key and grad query launches.  Grad out and value are then read from
// DRAM once, the attention once, and dA stays in the L2 (written back once), if it
// holds per pixel
//   during a slice          the attention (L), dA and D (4 L + 8 bytes), and the
//                           slice's grad out, value and grad value (3 c)
//   during the last launches the attention, dA and D, and query, key and their
//                           gradients (4 C')
// Slices are whole kBwdChunk steps of dA's reduction (the last one the rest): over the
// slices, each key tile's accumulators then receive the same tensor-core steps, in the
// same channel order, as in one launch over all the channels, each slice starting from
// the sums the previous one stored, so the bits are the same (whole kBwdChunk steps are
// the sufficient condition chosen, not the only one).  At most kMaxDaSlices slices (3
// launches each): a bound on the launches, chosen without a GPU timing; past it, v2's
// order (in float32 at 97 x 97 on a 50 MiB L2, at any C > 512).
CCA_HD inline int64_t sliced_da_bytes(const Problem& p, int elem_bytes, int64_t width) {
  const int64_t hw = p.H * p.W, L = p.slots();
  const int64_t kept = elem_bytes * L + 4 * L + 8;
  const int64_t slice = elem_bytes * 3 * width, last = elem_bytes * 4 * p.cqk;
  return hw * (kept + (slice > last ? slice : last));
}

// l2_bytes <= 0: all maps and all channels at once.
CCA_HD inline Plan plan_passes(const Problem& p, int elem_bytes, bool backward,
                               int64_t l2_bytes) {
  Plan plan{p.B, p.cv, 1, false, false};
  if (l2_bytes <= 0) return plan;
  const int64_t budget = l2_bytes / 2;
  if (backward) {
    for (int64_t n = 1; n <= kMaxDaSlices; ++n) {
      int64_t width = round_up(ceil_div(p.cv, n), kBwdChunk);
      if (width > p.cv) width = p.cv;
      if (sliced_da_bytes(p, elem_bytes, width) <= budget) {
        plan.width = width;
        plan.slices = ceil_div(p.cv, width);
        plan.fits = plan.sliced_da = true;
        const int64_t maps = budget / sliced_da_bytes(p, elem_bytes, p.cv);
        plan.maps = plan.slices > 1 ? 1 : maps < p.B ? maps : p.B;
        return plan;
      }
      if (width <= kBwdChunk) break;
    }
  }
  for (int64_t n = 1;; ++n) {
    const int64_t width = round_up(ceil_div(p.cv, n), kFrag);
    if (reused_bytes(p, elem_bytes, backward, width) <= budget) {
      plan.width = width < p.cv ? width : p.cv;
      plan.slices = ceil_div(p.cv, plan.width);
      plan.fits = true;
      break;
    }
    if (width <= kFrag) break;
  }
  if (plan.fits && plan.slices == 1) {
    const int64_t per_map = reused_bytes(p, elem_bytes, backward, p.cv);
    plan.maps = budget / per_map < p.B ? budget / per_map : p.B;
  } else {
    plan.maps = 1;
  }
  if (!plan.fits) {
    plan.width = p.cv;
    plan.slices = 1;
  }
  return plan;
}

// -------------------------------------------------- the log-sum-exp merge
// A half (row or column) of a pixel's cross that holds energies e_1..e_n keeps
//   m = max_l e_l,   s = sum_l exp(e_l - m)     (m = -inf, s = 0 when empty),
// and the whole cross has  lse = log(sum over both halves of exp(e)):
//   M = max(m_row, m_col),  lse = M + log(s_row exp(m_row - M) + s_col exp(m_col - M)).
// The row half always holds the centre, so M is finite.  The attention is then
// exp(e - lse) in either half, with no second pass over the other half.

CCA_HD inline float merge_lse(float m_row, float s_row, float m_col, float s_col) {
  const float m = fmaxf(m_row, m_col);
  return m + logf(s_row * expf(m_row - m) + s_col * expf(m_col - m));
}

// The running (m, s) of a half after one more tile of energies: with the tile's
// largest energy in m_new = max(m_old, tile max), the old sum is rescaled by
// exp(m_old - m_new) before the tile's exp(e - m_new) are added to it.
CCA_HD inline float rescale(float s, float m_old, float m_new) {
  return m_old == -INFINITY ? 0.f : s * expf(m_old - m_new);
}

// ------------------------------------------------------ shared memory layout
// Leading dimensions carry 16 bytes of padding (rows of a tile fall in
// different banks), stay multiples of 16 bytes (16-byte vector stores, and the
// tensor cores' loads), and every region starts on 128 bytes (their 32-byte
// alignment, with room).

CCA_HD inline int pad_ld(int cols, int elem_bytes) { return cols + 16 / elem_bytes; }
CCA_HD inline int64_t align128(int64_t x) { return round_up(x, 128); }

// Offsets (bytes) of the regions of one kernel; `bytes` is the total.
// q2, k2, v2: the second buffers of the regions the asynchronous copies fill while
// the first ones are read.
struct Smem {
  int64_t q, k, v, s, a, o, stat0, stat1, bytes;
  int64_t q2, k2, v2;
  int ldq, ldv, lds, lda, ldo, ldw, ldy;
};

enum Pass : int { kStats = 0, kAgg = 1, kBwdDa = 2, kBwdGrads = 3 };

// elem_bytes: 4 (float32), 2 (float16, bfloat16).
CCA_HD inline Smem smem_layout(int pass, const Problem& p, int elem_bytes) {
  Smem m{};
  const int e = elem_bytes, cqk = p.cqk_pad();
  m.ldq = pad_ld(cqk, e);
  m.lds = pad_ld(kTile, 4);  // float scores
  int64_t at = 0;
  const auto take = [&at](int64_t bytes) {
    const int64_t offset = at;
    at = align128(at + bytes);
    return offset;
  };
  if (pass == kStats) {
    m.q = take(int64_t(kRows) * m.ldq * e);
    m.k = take(int64_t(kTile) * m.ldq * e);
    m.k2 = take(int64_t(kTile) * m.ldq * e);
    m.s = take(int64_t(kRows) * m.lds * 4);
    m.stat0 = take(kRows * 4);  // running max
    m.stat1 = take(kRows * 4);  // running sum
    m.a = take(2 * kRows * 2 * 4);  // each half tile's (max, sum) of each query
  } else if (pass == kAgg) {
    m.ldv = pad_ld(kChunk, e);
    m.ldo = pad_ld(kChunk, 4);
    m.q = take(int64_t(kRows) * m.ldq * e);
    // The weights of a whole line (kLineProbs positions; whole_line) or of one tile.
    // float32: the tensor cores read them from the float scores (3xTF32), written
    // tile by tile at their keys' columns; 16-bit: from a rounded copy.
    if (e == 4) {
      m.lds = pad_ld(kLineProbs, 4);
      m.s = take(int64_t(kRows) * m.lds * 4);
      m.a = m.s;
      m.lda = m.lds;
    } else {
      m.s = take(int64_t(kRows) * m.lds * 4);
      m.lda = pad_ld(kLineProbs, e);
      m.a = take(int64_t(kRows) * m.lda * e);
    }
    m.stat0 = take(kRows * 4);  // log-sum-exp of each query
    // keys + values while the line is swept, then the output tile staged for its store
    const int64_t kv = align128(int64_t(kTile) * m.ldq * e) + int64_t(kTile) * m.ldv * e;
    const int64_t o = int64_t(kRows) * m.ldo * 4;
    m.k = at;
    m.v = at + align128(int64_t(kTile) * m.ldq * e);
    m.o = at;
    take(kv > o ? kv : o);
  } else if (pass == kBwdDa) {
    m.ldv = pad_ld(kBwdChunk, e);
    m.q = take(int64_t(kRows) * m.ldv * e);   // a chunk of grad_out
    m.q2 = take(int64_t(kRows) * m.ldv * e);  // ... and the next one
    m.v = take(int64_t(kTile) * m.ldv * e);   // the same chunk of value
    m.v2 = take(int64_t(kTile) * m.ldv * e);
    m.s = take(int64_t(kRows) * m.lds * 4);
    m.stat0 = take(kRows * 4);  // the running sum_l A dA of each query
    m.a = take(2 * kRows * 4);  // each half tile's sum of each query
  } else {  // kBwdGrads
    const int cols = cqk > kChunk ? cqk : kChunk;
    m.ldw = pad_ld(kTile, e);
    m.ldy = pad_ld(cols, e);
    m.ldo = pad_ld(cols, 4);
    m.a = take(int64_t(kTile) * m.ldw * e);  // weights: attention or dE, (query, key)
    m.stat0 = take(kTile * 4);               // D of each query of the tile
    const int64_t y = int64_t(kTile) * m.ldy * e, o = int64_t(kRows) * m.ldo * 4;
    // grad_out, query or key rows of the tile and of the next; then the result staged
    m.v = at;
    m.v2 = at + align128(y);
    m.o = at;
    take(align128(y) + y > o ? align128(y) + y : o);
  }
  m.bytes = at;
  return m;
}

// --------------------------------------------------------- what the kernels take
// dtype codes shared with the C entry points: 0 float32, 1 float16, 2 bfloat16.
enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

CCA_HD inline int dtype_bytes(int dtype) { return dtype == kFloat32 ? 4 : 2; }

// Whether the tiled kernels take this problem on a device that gives one CTA at most
// smem_limit bytes of dynamic shared memory (else the portable kernels run): every
// pass, forward and backward, must fit, so that a problem whose forward ran tiled is
// never refused by its backward.
CCA_HD inline bool tiled_supported(const Problem& p, int dtype, int64_t smem_limit) {
  if (dtype != kFloat32 && dtype != kFloat16 && dtype != kBFloat16) return false;
  if (p.B < 1 || p.H < 1 || p.W < 1 || p.cqk < 1 || p.cv < 1 || p.cqk > kMaxQk) return false;
  for (int pass = kStats; pass <= kBwdGrads; ++pass)
    if (smem_layout(pass, p, dtype_bytes(dtype)).bytes > smem_limit) return false;
  return true;
}

// 16-byte vector access to rows of C channels at `ptr`: whole vectors per row and
// an aligned base.
CCA_HD inline bool vector_ok(const void* ptr, int64_t channels, int elem_bytes) {
  return (reinterpret_cast<uintptr_t>(ptr) % 16 == 0) && ((channels * elem_bytes) % 16 == 0);
}

}  // namespace lines
}  // namespace ccnet_edu
