// Criss-cross attention on tiles of rows and columns: the kernel bodies.
//
// Each body is the work of one CTA of 4 warps, written against an executor `Ex`
// that supplies the few things a GPU and a CPU do differently:
//
//   ex.threads(f)   every thread t runs f(t), then all wait at a barrier
//   ex.warps(f)     every warp w runs f(w) (warp-wide matrix products), then a barrier
//   ex.mma_tiles<LA, LB>(acc, n, a, lda, b, ldb, k)
//                   acc[i] (16x16) += A (16xk) B_i (kx16) for i < n, B_i the i-th 16 columns
//                   of B; float accumulators; LA, LB: RowMajor or ColMajor operands
//   ex.zero(acc), ex.store(dst, ld, acc), ex.load(acc, src, ld)
//                   an accumulator tile: zeroed, to float shared memory, from it
//   ex.copy16(dst, src), ex.zero16(dst)      one 16-byte vector
//   ex.async_phase(f)  every thread t runs f(t), which may issue asynchronous 16-byte
//                   copies from global to shared memory (ex.copy16_async), and closes
//                   them as one group; no barrier
//   ex.async_wait<N>()  waits until at most the N latest groups are in flight, then a
//                   barrier: what the older groups copied is in shared memory for all
//   Ex::PerWarp<X>  what a warp keeps in registers across phases (its accumulators)
//
// The tiles of the line stream through shared memory by asynchronous copies
// (cp.async, sm_80 and later), so that loads can stay in flight while the CTA
// computes.  The statistics and dA passes have a second buffer for each operand they
// stream: the next tile is issued before the current one is multiplied.  The gradients
// pass does so for the rows it multiplies (grad out, query or key); its weights tile (A,
// or dE from A and dA) is built with ordinary loads in one buffer after the previous
// product, with no copy of it in flight during the products.
// The aggregation has one buffer for keys and one for values, and issues the next
// tile of each once the current one has been read: in agg_body (one chunk per CTA)
// a key copy overlaps the exp and the product, a value copy the next energies; in
// agg_line_body the next key tile overlaps only the exp, and each value tile is
// waited for right after it is issued (no value copy in flight during O += A V).
//
// cca_lines_cuda.h is the GPU's executor (WMMA on tensor cores: float16/bfloat16
// inputs, and float32 as 3xTF32), cca_lines_host.h a CPU emulation of it (the same
// phases in order, thread by thread and warp by warp, every product in float
// arithmetic), so the CPU tests run these bodies (cca_lines_emulate.cpp).
//
// The passes, with P the line's length, per line and a pixel u of it:
//   forward  1  statistics  rows and columns: E = Q K^T tile by tile, each half's running
//                           max m and sum s per query (no values read)
//            2  aggregate   rows, then columns: lse(u) = merge of the two halves, then per key
//                           tile A = exp(E - lse) (written out once), O += A V; the column
//                           pass adds its half to the row pass's output.  A line of at most
//                           kLineProbs positions: A of the whole line kept, every chunk of
//                           the slice swept over it (each energy and exp once per slice)
//   backward 1  dA          rows and columns: dA = dout V^T (+ grad_attention), kept in a
//                           float buffer, and each half's partial D = sum_l A dA; over a
//                           slice of the channels at a time where the plan says so, each
//                           slice continuing the float sums the previous one left there
//            2  gradients   rows, then columns: dE = A (dA - D) on the fly;
//                           grad_value = A^T dout, grad_key = dE^T Q, grad_query = dE K
// Every CTA writes its own rows; the column passes add to the row passes' results
// in a later launch: no atomics, the same bits on every run.  The passes run a group
// of maps and a slice of the value channels at a time (run_forward, run_backward), so
// that what a column pass reads again is still in the L2.
//
// Precision.  Energies, softmax statistics, dA and D are float32 (float accumulators on
// the tensor cores; exp and log in float).  float32 inputs: every product 3xTF32, about
// float32's rounding.  float16/bfloat16 inputs: the weights (A, and dE in the backward)
// are rounded to the input type to enter the tensor cores, as in FlashAttention, and the
// row half of out and of each gradient is stored in the output type before the column
// half is added: two roundings of the output type instead of one.
#pragma once

#include "cca_tiling.h"

namespace ccnet_edu {
namespace lines {

// Operand layouts of a warp's matrix product, as WMMA names them.
struct RowMajor {};
struct ColMajor {};

template <class L>
struct IsRowMajor {
  static constexpr bool value = false;
};
template <>
struct IsRowMajor<RowMajor> {
  static constexpr bool value = true;
};

// Where step k0 of a product's reduction starts: A is 16 x k (the reduction runs
// along its columns), B is k x 16 (along its rows).
template <class L>
CCA_HD constexpr int64_t a_step(int k0, int ld) {
  return IsRowMajor<L>::value ? k0 : int64_t(k0) * ld;
}
template <class L>
CCA_HD constexpr int64_t b_step(int k0, int ld) {
  return IsRowMajor<L>::value ? int64_t(k0) * ld : k0;
}
// Where B's n-th 16 columns start.
template <class L>
CCA_HD constexpr int64_t b_tile(int n, int ld) {
  return IsRowMajor<L>::value ? int64_t(16) * n : int64_t(16) * n * ld;
}

// to_float / from_float of an element type, per compiler (the executors define them).
template <class T>
struct Elem;

// Everything a pass reads and writes.  q, k, v and the gradients are all NCHW (nchw)
// or all channels-last, contiguous (cca_tiling.h, Line::at); out is channels-last (the
// operator's contract), grad_out either (go_nchw).
template <class T>
struct Params {
  Problem p;
  int dir;  // the direction of a one-direction pass (aggregate, gradients)
  const T* q;
  const T* k;
  const T* v;
  T* out;         // (B, H, W, C)
  T* att;         // (B, H, W, L): written by the forward
  float* stats;   // (2, N, 2): (m, s) of each pixel's row half [0] and column half [1]
  const T* grad_out;
  const T* grad_att;  // may be null
  const T* att_in;    // the forward's attention, read by the backward
  float* g;           // (N, L): dA
  float* dpart;       // (2, N): sum_l A dA over each half
  T* grad_q;
  T* grad_k;
  T* grad_v;
  bool vec_qk;   // 16-byte vectors for query, key, grad_query, grad_key (channels-last)
  bool vec_v;    // ... for value, grad_value
  bool vec_out;  // ... for out
  bool vec_go;   // ... for grad_out
  bool nchw;     // NCHW: read and written element by element, positions across threads
  bool go_nchw;  // grad_out's own layout: NCHW or channels-last, as it arrives
};

// A warp's accumulator tiles: N tiles of 16 x 16 side by side.
template <class Ex, class T, int N>
struct AccTiles {
  typename Ex::template Acc<T> f[N];
};

// ------------------------------------------------------------ tile transfers
// Called from within a threads phase by every thread (tid).

// dst[r][c] = src(position row0 + r of the line)[c0 + c] for r < kRows, c < cols, of a
// tensor of `channels` channels; zero outside the line and at channels >= `bound`.
// Called in an async_phase.  Channels-last: 16-byte vectors by asynchronous copies,
// or (rows of C not a whole number of vectors) elements.  NCHW: element by element,
// consecutive threads on consecutive positions (contiguous along a row); float32 by
// 4-byte asynchronous copies.  Zeros and the other elements by ordinary stores, seen
// after the wait's barrier all the same.
template <class Ex, class T>
CCA_DEV inline void load_rows(const Ex& ex, int tid, T* dst, int ld, const T* src,
                              int64_t channels, int64_t bound, const Line& line, int row0,
                              int64_t c0, int cols, bool vec, bool nchw) {
  constexpr int V = 16 / sizeof(T);
  if (nchw) {
    for (int e = tid; e < kRows * cols; e += kThreads) {
      const int r = e % kRows, c = e / kRows, t = row0 + r;
      T* d = dst + r * ld + c;
      if (t < line.P && c0 + c < bound) {
        const T* from = src + line.at(t, c0 + c, channels, true);
        if (sizeof(T) == 4)
          ex.copy4_async(d, from);
        else
          *d = *from;
      } else {
        *d = Elem<T>::from_float(0.f);
      }
    }
  } else if (vec) {  // channels, bound, c0, cols multiples of V: a vector is all in or all out
    const int per_row = cols / V;
    for (int e = tid; e < kRows * per_row; e += kThreads) {
      const int r = e / per_row, c = (e % per_row) * V, t = row0 + r;
      T* d = dst + r * ld + c;
      if (t < line.P && c0 + c < bound)
        ex.copy16_async(d, src + line.at(t, c0 + c, channels, false));
      else
        ex.zero16(d);
    }
  } else {
    for (int e = tid; e < kRows * cols; e += kThreads) {
      const int r = e / cols, c = e % cols, t = row0 + r;
      dst[r * ld + c] = (t < line.P && c0 + c < bound)
                            ? src[line.at(t, c0 + c, channels, false)]
                            : Elem<T>::from_float(0.f);
    }
  }
}

// dst(position row0 + r)[c0 + c] (+)= os[r][c] for the line's positions and c < cols.
template <class Ex, class T>
CCA_DEV inline void store_rows(const Ex& ex, int tid, T* dst, int64_t channels, const Line& line,
                               int row0, int64_t c0, int cols, const float* os, int ldo,
                               bool accumulate, bool vec, bool nchw) {
  constexpr int V = 16 / sizeof(T);
  if (nchw) {  // consecutive threads on consecutive positions
    for (int e = tid; e < kRows * cols; e += kThreads) {
      const int r = e % kRows, c = e / kRows, t = row0 + r;
      if (t >= line.P) continue;
      T* d = dst + line.at(t, c0 + c, channels, true);
      const float before = accumulate ? Elem<T>::to_float(*d) : 0.f;
      *d = Elem<T>::from_float(before + os[r * ldo + c]);
    }
  } else if (vec) {  // cols is a multiple of V here (channels and c0 are)
    const int per_row = cols / V;
    for (int e = tid; e < kRows * per_row; e += kThreads) {
      const int r = e / per_row, c = (e % per_row) * V, t = row0 + r;
      if (t >= line.P) continue;
      T* d = dst + line.at(t, c0 + c, channels, false);
      alignas(16) T buf[V];
      if (accumulate) ex.copy16(buf, d);
      CCA_LINES_UNROLL
      for (int x = 0; x < V; ++x) {
        const float before = accumulate ? Elem<T>::to_float(buf[x]) : 0.f;
        buf[x] = Elem<T>::from_float(before + os[r * ldo + c + x]);
      }
      ex.copy16(d, buf);
    }
  } else {
    for (int e = tid; e < kRows * cols; e += kThreads) {
      const int r = e / cols, c = e % cols, t = row0 + r;
      if (t >= line.P) continue;
      T* d = dst + line.at(t, c0 + c, channels, false);
      const float before = accumulate ? Elem<T>::to_float(*d) : 0.f;
      *d = Elem<T>::from_float(before + os[r * ldo + c]);
    }
  }
}

// ------------------------------------------------------------- warp products

// Tiles of 16 that hold at least one of the `count` positions from `first` on.
CCA_HD inline int live_tiles(int64_t count, int max_tiles) {
  const int64_t n = count <= 0 ? 0 : ceil_div(count, kFrag);
  return static_cast<int>(n < max_tiles ? n : max_tiles);
}

// Warp w's 16 queries against the kTile keys of the tile: E = Q K^T into ss (float).
// Key tiles past the line's end are skipped (their scores are never read).
template <class Ex, class T>
CCA_DEV inline void energies(const Ex& ex, int warp, float* ss, int lds, const T* qs,
                             const T* ks, int ldq, int cqk, int row0, int key0, int P) {
  if (row0 + kFrag * warp >= P) return;  // no query of this warp is on the line
  constexpr int kN = kTile / kFrag;
  const int live = live_tiles(P - key0, kN);
  AccTiles<Ex, T, kN> acc;
  CCA_LINES_UNROLL
  for (int n = 0; n < kN; ++n) ex.zero(acc.f[n]);
  // K^T (C' x keys) is the key tile (keys x C') read column-major.
  ex.template mma_tiles<RowMajor, ColMajor>(acc.f, live, qs + kFrag * warp * ldq, ldq, ks, ldq,
                                            cqk);
  CCA_LINES_UNROLL
  for (int n = 0; n < kN; ++n)
    if (n < live) ex.store(ss + kFrag * warp * lds + kFrag * n, lds, acc.f[n]);
}

template <class Ex, class T, int N>
CCA_DEV inline void zero_tiles(const Ex& ex, AccTiles<Ex, T, N>& acc) {
  CCA_LINES_UNROLL
  for (int n = 0; n < N; ++n) ex.zero(acc.f[n]);
}

// Warp w's rows of the accumulators from os (float, ldo), all N tiles.
template <class Ex, class T, int N>
CCA_DEV inline void load_tiles(const Ex& ex, int warp, const float* os, int ldo,
                               AccTiles<Ex, T, N>& acc) {
  CCA_LINES_UNROLL
  for (int n = 0; n < N; ++n) ex.load(acc.f[n], os + kFrag * warp * ldo + kFrag * n, ldo);
}

// Warp w's rows of the accumulators into os (float, ldo): tiles n with 16 n < cols.
template <class Ex, class T, int N>
CCA_DEV inline void store_tiles(const Ex& ex, int warp, float* os, int ldo,
                                const AccTiles<Ex, T, N>& acc, int cols) {
  CCA_LINES_UNROLL
  for (int n = 0; n < N; ++n)
    if (kFrag * n < cols) ex.store(os + kFrag * warp * ldo + kFrag * n, ldo, acc.f[n]);
}

// ------------------------------------------------------------ pass: statistics

template <class Ex, class T>
CCA_DEV void stats_body(const Ex& ex, const Params<T>& prm, int64_t id, unsigned char* smem) {
  const Problem& p = prm.p;
  const Work w = decode_both(p, id);
  const Line line = make_line(p, w.dir, w.line);
  const Smem m = smem_layout(kStats, p, sizeof(T));
  T* qs = reinterpret_cast<T*>(smem + m.q);
  // the two key buffers (selected, not indexed: an indexed array would go to local memory)
  const auto kbuf = [&](int b) { return reinterpret_cast<T*>(smem + (b ? m.k2 : m.k)); };
  float* ss = reinterpret_cast<float*>(smem + m.s);
  float* run_max = reinterpret_cast<float*>(smem + m.stat0);
  float* run_sum = reinterpret_cast<float*>(smem + m.stat1);
  float* part = reinterpret_cast<float*>(smem + m.a);  // (half, query): (max, sum)
  const int row0 = w.block * kRows, cqk = p.cqk_pad();
  constexpr int kHalf = kTile / 2;

  ex.async_phase([&](int tid) {  // the queries and the first key tile
    load_rows(ex, tid, qs, m.ldq, prm.q, p.cqk, p.cqk, line, row0, 0, cqk, prm.vec_qk, prm.nchw);
    load_rows(ex, tid, kbuf(0), m.ldq, prm.k, p.cqk, p.cqk, line, 0, 0, cqk, prm.vec_qk,
              prm.nchw);
    if (tid < kRows) {
      run_max[tid] = -INFINITY;
      run_sum[tid] = 0.f;
    }
  });
  for (int key0 = 0, i = 0; key0 < line.P; key0 += kTile, ++i) {
    const T* ks = kbuf(i & 1);
    ex.async_phase([&](int tid) {  // the next key tile, into the other buffer
      if (key0 + kTile < line.P)
        load_rows(ex, tid, kbuf((i + 1) & 1), m.ldq, prm.k, p.cqk, p.cqk, line, key0 + kTile, 0,
                        cqk, prm.vec_qk, prm.nchw);
    });
    ex.template async_wait<1>();
    ex.warps([&](int warp) {
      energies(ex, warp, ss, m.lds, qs, ks, m.ldq, cqk, row0, key0, line.P);
    });
    ex.threads([&](int tid) {  // two threads per query, half of the tile's keys each
      const int r = tid % kRows, h = tid / kRows, t = row0 + r;
      float half_max = -INFINITY, half_sum = 0.f;
      if (t < line.P) {
        const float* e = ss + r * m.lds + h * kHalf;
        // key (j + r) mod kHalf at step j: the threads of a warp in different banks
        for (int j = 0; j < kHalf; ++j) {
          const int s = (j + r) % kHalf;
          if (line.sees(t, key0 + h * kHalf + s)) half_max = fmaxf(half_max, e[s]);
        }
        if (half_max != -INFINITY)
          for (int j = 0; j < kHalf; ++j) {
            const int s = (j + r) % kHalf;
            if (line.sees(t, key0 + h * kHalf + s)) half_sum += expf(e[s] - half_max);
          }
      }
      part[(h * kRows + r) * 2] = half_max;
      part[(h * kRows + r) * 2 + 1] = half_sum;
    });
    ex.threads([&](int tid) {  // one thread per query folds the two halves into (m, s)
      const int t = row0 + tid;
      if (tid >= kRows || t >= line.P) return;
      const float* lo = part + tid * 2;
      const float* hi = part + (kRows + tid) * 2;
      const float tile_max = fmaxf(lo[0], hi[0]);
      if (tile_max == -INFINITY) return;  // the query sees no key of this tile
      const float m_new = fmaxf(run_max[tid], tile_max);
      run_sum[tid] = rescale(run_sum[tid], run_max[tid], m_new) + rescale(lo[1], lo[0], m_new) +
                     rescale(hi[1], hi[0], m_new);
      run_max[tid] = m_new;
    });
  }
  ex.template async_wait<0>();
  ex.threads([&](int tid) {
    const int t = row0 + tid;
    if (tid >= kRows || t >= line.P) return;
    float* st = prm.stats + (w.dir * p.pixels() + line.pixel(t)) * 2;
    st[0] = run_max[tid];
    st[1] = run_sum[tid];
  });
}

// ------------------------------------------------------------- pass: aggregate

// Each query's log-sum-exp over its whole cross, from the statistics of its halves.
template <class T>
CCA_DEV inline void load_lse(const Params<T>& prm, const Line& line, int row0, int tid,
                             float* lse) {
  const Problem& p = prm.p;
  const int t = row0 + tid;
  if (tid >= kRows) return;
  float l = 0.f;
  if (t < line.P) {
    const float* row = prm.stats + line.pixel(t) * 2;
    const float* col = row + 2 * p.pixels();
    l = p.has(kCol) ? merge_lse(row[0], row[1], col[0], col[1]) : row[0] + logf(row[1]);
  }
  lse[tid] = l;
}

// whole_line: one CTA for all the chunks of the slice.  First the weights of its
// queries over the whole line, tile by tile (A = exp(E - lse), written to the
// attention once), kept in shared memory; then each chunk's O = A V, tile by tile.
// Each energy and exponential once per slice, the same products in the same order
// as the CTAs of one chunk each (the same bits).
// The aggregation's regions of shared memory (smem_layout(kAgg)).
template <class T>
struct AggSmem {
  Smem m;
  T* qs;       // the queries
  T* ks;       // a key tile
  T* vs;       // a value tile
  float* ss;   // the scores
  T* as;       // the weights the tensor cores read (float32: the scores' own storage)
  float* lse;  // each query's log-sum-exp
  float* os;   // the output staged for its store (aliases ks, vs)
  CCA_DEV AggSmem(const Problem& p, unsigned char* smem)
      : m(smem_layout(kAgg, p, sizeof(T))),
        qs(reinterpret_cast<T*>(smem + m.q)),
        ks(reinterpret_cast<T*>(smem + m.k)),
        vs(reinterpret_cast<T*>(smem + m.v)),
        ss(reinterpret_cast<float*>(smem + m.s)),
        as(reinterpret_cast<T*>(smem + m.a)),
        lse(reinterpret_cast<float*>(smem + m.stat0)),
        os(reinterpret_cast<float*>(smem + m.o)) {}
};

template <class Ex, class T>
CCA_DEV void agg_line_body(const Ex& ex, const Params<T>& prm, const Work& w, const Line& line,
                           unsigned char* smem) {
  const Problem& p = prm.p;
  const AggSmem<T> sm(p, smem);
  const Smem& m = sm.m;
  constexpr bool kRounded = sizeof(T) == 2;  // 16-bit: the weights are rounded for the MMA
  const int row0 = w.block * kRows, cqk = p.cqk_pad();
  const int64_t L = p.slots(), chunks = value_chunks(p);
  const bool write_att = p.v0 == 0;  // the first slice's CTAs write the attention
  typename Ex::template PerWarp<AccTiles<Ex, T, kChunkFrags>> acc;
  const auto load_values = [&](int tid, int key0, int64_t c0) {
    load_rows(ex, tid, sm.vs, m.ldv, prm.v, p.cv, p.v_end(), line, key0, c0, kChunk, prm.vec_v,
              prm.nchw);
  };

  ex.async_phase([&](int tid) {  // the queries and the first key tile; each query's lse
    load_rows(ex, tid, sm.qs, m.ldq, prm.q, p.cqk, p.cqk, line, row0, 0, cqk, prm.vec_qk, prm.nchw);
    load_rows(ex, tid, sm.ks, m.ldq, prm.k, p.cqk, p.cqk, line, 0, 0, cqk, prm.vec_qk, prm.nchw);
    load_lse(prm, line, row0, tid, sm.lse);
  });
  for (int key0 = 0; key0 < line.P; key0 += kTile) {
    ex.template async_wait<0>();  // the key tile
    ex.warps([&](int warp) {  // float32: the scores land at their keys' columns
      energies(ex, warp, kRounded ? sm.ss : sm.ss + key0, m.lds, sm.qs, sm.ks, m.ldq, cqk, row0,
               key0, line.P);
    });
    ex.async_phase([&](int tid) {  // the next key tile, or the first chunk's first values
      if (key0 + kTile < line.P)
        load_rows(ex, tid, sm.ks, m.ldq, prm.k, p.cqk, p.cqk, line, key0 + kTile, 0, cqk,
                  prm.vec_qk, prm.nchw);
      else
        load_values(tid, 0, p.v0);
    });
    ex.threads([&](int tid) {  // A = exp(E - lse) for the tile's keys
      for (int e = tid; e < kRows * kTile; e += kThreads) {
        const int r = e / kTile, s = e % kTile, t = row0 + r, key = key0 + s;
        float* score = sm.ss + r * m.lds + (kRounded ? s : key0 + s);
        float a = 0.f;
        if (line.sees(t, key)) {
          a = expf(*score - sm.lse[r]);
          if (write_att) prm.att[line.pixel(t) * L + line.slot(t, key)] = Elem<T>::from_float(a);
        }
        if (kRounded)
          sm.as[r * m.lda + key0 + s] = Elem<T>::from_float(a);
        else
          *score = a;
      }
    });
  }
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const int64_t c0 = p.v0 + chunk * kChunk;
    const int cols = static_cast<int>(p.v_end() - c0 < kChunk ? p.v_end() - c0 : kChunk);
    ex.warps([&](int warp) { zero_tiles(ex, acc(warp)); });
    for (int key0 = 0; key0 < line.P; key0 += kTile) {
      ex.template async_wait<0>();  // the value tile
      ex.warps([&](int warp) {  // O += A V
        if (row0 + kFrag * warp >= line.P) return;
        ex.template mma_tiles<RowMajor, RowMajor>(acc(warp).f, live_tiles(cols, kChunkFrags),
                                                  sm.as + kFrag * warp * m.lda + key0, m.lda, sm.vs,
                                                  m.ldv, kTile);
      });
      ex.async_phase([&](int tid) {
        if (key0 + kTile < line.P) load_values(tid, key0 + kTile, c0);
      });
    }
    ex.template async_wait<0>();  // nothing in flight before os reuses the tiles' space
    ex.warps([&](int warp) { store_tiles(ex, warp, sm.os, m.ldo, acc(warp), cols); });
    ex.threads([&](int tid) {
      store_rows(ex, tid, prm.out, p.cv, line, row0, c0, cols, sm.os, m.ldo, w.dir == kCol,
                 prm.vec_out, false);
    });
    ex.async_phase([&](int tid) {  // the next chunk's first values
      if (chunk + 1 < chunks) load_values(tid, 0, c0 + kChunk);
    });
  }
  ex.template async_wait<0>();
}

template <class Ex, class T>
CCA_DEV void agg_body(const Ex& ex, const Params<T>& prm, int64_t id, unsigned char* smem) {
  const Problem& p = prm.p;
  const Work w = decode_agg(p, prm.dir, id);
  const Line line = make_line(p, w.dir, w.line);
  if (whole_line(p, w.dir)) {
    agg_line_body(ex, prm, w, line, smem);
    return;
  }
  const AggSmem<T> sm(p, smem);
  const Smem& m = sm.m;
  constexpr bool kRounded = sizeof(T) == 2;  // 16-bit: the weights are rounded for the MMA
  const int row0 = w.block * kRows, cqk = p.cqk_pad();
  const int64_t c0 = p.v0 + int64_t(w.chunk) * kChunk, L = p.slots();
  const int cols = static_cast<int>(p.v_end() - c0 < kChunk ? p.v_end() - c0 : kChunk);
  const bool write_att = c0 == 0;  // one CTA per query block writes its attention
  typename Ex::template PerWarp<AccTiles<Ex, T, kChunkFrags>> acc;

  // One buffer each for keys and values: the next key tile is issued as soon as the
  // energies have read the current one, the next value tile as soon as the product
  // has read the current one; each waits only for its own group.
  ex.async_phase([&](int tid) {  // the queries and the first key tile; each query's lse
    load_rows(ex, tid, sm.qs, m.ldq, prm.q, p.cqk, p.cqk, line, row0, 0, cqk, prm.vec_qk, prm.nchw);
    load_rows(ex, tid, sm.ks, m.ldq, prm.k, p.cqk, p.cqk, line, 0, 0, cqk, prm.vec_qk, prm.nchw);
    load_lse(prm, line, row0, tid, sm.lse);
  });
  ex.async_phase([&](int tid) {  // the first value tile
    load_rows(ex, tid, sm.vs, m.ldv, prm.v, p.cv, p.v_end(), line, 0, c0, kChunk, prm.vec_v,
              prm.nchw);
  });
  ex.warps([&](int warp) { zero_tiles(ex, acc(warp)); });
  for (int key0 = 0; key0 < line.P; key0 += kTile) {
    const bool more = key0 + kTile < line.P;
    ex.template async_wait<1>();  // the key tile (its value tile may still be in flight)
    ex.warps([&](int warp) {
      energies(ex, warp, sm.ss, m.lds, sm.qs, sm.ks, m.ldq, cqk, row0, key0, line.P);
    });
    ex.async_phase([&](int tid) {
      if (more)
        load_rows(ex, tid, sm.ks, m.ldq, prm.k, p.cqk, p.cqk, line, key0 + kTile, 0, cqk,
                        prm.vec_qk, prm.nchw);
    });
    ex.threads([&](int tid) {  // A = exp(E - lse): the softmax over the whole cross
      for (int e = tid; e < kRows * kTile; e += kThreads) {
        const int r = e / kTile, s = e % kTile, t = row0 + r, key = key0 + s;
        float a = 0.f;
        if (line.sees(t, key)) {
          a = expf(sm.ss[r * m.lds + s] - sm.lse[r]);
          if (write_att) prm.att[line.pixel(t) * L + line.slot(t, key)] = Elem<T>::from_float(a);
        }
        if (kRounded)
          sm.as[r * m.lda + s] = Elem<T>::from_float(a);
        else
          sm.ss[r * m.lds + s] = a;
      }
    });
    ex.template async_wait<1>();  // the value tile (the next key tile may be in flight)
    ex.warps([&](int warp) {  // O += A V
      if (row0 + kFrag * warp >= line.P) return;
      ex.template mma_tiles<RowMajor, RowMajor>(acc(warp).f, live_tiles(cols, kChunkFrags),
                                                sm.as + kFrag * warp * m.lda, m.lda, sm.vs, m.ldv,
                                                kTile);
    });
    ex.async_phase([&](int tid) {
      if (more)
        load_rows(ex, tid, sm.vs, m.ldv, prm.v, p.cv, p.v_end(), line, key0 + kTile, c0, kChunk,
                        prm.vec_v, prm.nchw);
    });
  }
  ex.template async_wait<0>();  // nothing in flight before os reuses the tiles' space
  ex.warps([&](int warp) { store_tiles(ex, warp, sm.os, m.ldo, acc(warp), cols); });
  ex.threads([&](int tid) {
    store_rows(ex, tid, prm.out, p.cv, line, row0, c0, cols, sm.os, m.ldo, w.dir == kCol,
               prm.vec_out, false);
  });
}

// ------------------------------------------------------------ pass: dA and D

template <class Ex, class T>
CCA_DEV void bwd_da_body(const Ex& ex, const Params<T>& prm, int64_t id, unsigned char* smem) {
  const Problem& p = prm.p;
  const Work w = decode_both(p, id);
  const Line line = make_line(p, w.dir, w.line);
  const Smem m = smem_layout(kBwdDa, p, sizeof(T));
  const auto gbuf = [&](int b) { return reinterpret_cast<T*>(smem + (b ? m.q2 : m.q)); };
  const auto vbuf = [&](int b) { return reinterpret_cast<T*>(smem + (b ? m.v2 : m.v)); };
  float* ss = reinterpret_cast<float*>(smem + m.s);
  float* dsum = reinterpret_cast<float*>(smem + m.stat0);
  float* part = reinterpret_cast<float*>(smem + m.a);  // (half, query): sum of A dA
  const int row0 = w.block * kRows;
  const int64_t L = p.slots();
  // The slice [v0, v_end) of the channels (run_backward): the first slice starts dA
  // from zero, a later one from what the previous slice left in prm.g; the last one
  // adds grad_attention and computes D.
  const int64_t chunks = ceil_div(p.v_end() - p.v0, kBwdChunk);
  const bool first = p.v0 == 0, last = p.v_end() == p.cv;
  constexpr int kHalf = kTile / 2;
  typename Ex::template PerWarp<AccTiles<Ex, T, kTile / kFrag>> acc;

  // Step i multiplies chunk i % chunks of grad_out and of the values of key tile
  // i / chunks; step i + 1's chunks load into the other buffers meanwhile.
  const auto load_step = [&](int tid, int64_t step, int buf) {
    const int key0 = static_cast<int>(step / chunks) * kTile;
    const int64_t c0 = p.v0 + (step % chunks) * kBwdChunk;
    load_rows(ex, tid, gbuf(buf), m.ldv, prm.grad_out, p.cv, p.v_end(), line, row0, c0,
              kBwdChunk, prm.vec_go, prm.go_nchw);
    load_rows(ex, tid, vbuf(buf), m.ldv, prm.v, p.cv, p.v_end(), line, key0, c0, kBwdChunk,
              prm.vec_v, prm.nchw);
  };
  const int64_t steps = ceil_div(line.P, kTile) * chunks;
  ex.async_phase([&](int tid) {
    load_step(tid, 0, 0);
    if (tid < kRows) dsum[tid] = 0.f;
  });
  for (int64_t step = 0; step < steps; ++step) {
    const int key0 = static_cast<int>(step / chunks) * kTile;
    const int buf = static_cast<int>(step & 1);
    if (step % chunks == 0) {
      if (first) {
        ex.warps([&](int warp) { zero_tiles(ex, acc(warp)); });
      } else {  // the accumulators as the previous slice left them
        ex.threads([&](int tid) {
          for (int e = tid; e < kRows * kTile; e += kThreads) {
            const int r = e / kTile, s = e % kTile, t = row0 + r, key = key0 + s;
            ss[r * m.lds + s] = line.sees(t, key) ? prm.g[line.pixel(t) * L + line.slot(t, key)]
                                                  : 0.f;
          }
        });
        ex.warps([&](int warp) { load_tiles(ex, warp, ss, m.lds, acc(warp)); });
      }
    }
    ex.async_phase([&](int tid) {
      if (step + 1 < steps) load_step(tid, step + 1, buf ^ 1);
    });
    ex.template async_wait<1>();
    ex.warps([&](int warp) {  // dA = dout V^T over the channels
      if (row0 + kFrag * warp >= line.P) return;
      ex.template mma_tiles<RowMajor, ColMajor>(
          acc(warp).f, live_tiles(line.P - key0, kTile / kFrag), gbuf(buf) + kFrag * warp * m.ldv,
          m.ldv, vbuf(buf), m.ldv, kBwdChunk);
    });
    if (step % chunks != chunks - 1) continue;
    ex.warps([&](int warp) {
      if (row0 + kFrag * warp < line.P) store_tiles(ex, warp, ss, m.lds, acc(warp), kTile);
    });
    ex.threads([&](int tid) {  // + grad_attention; keep dA; A dA for D
      for (int e = tid; e < kRows * kTile; e += kThreads) {
        const int r = e / kTile, s = e % kTile, t = row0 + r, key = key0 + s;
        float prod = 0.f;
        if (line.sees(t, key)) {
          const int64_t at = line.pixel(t) * L + line.slot(t, key);
          float da = ss[r * m.lds + s];
          if (last && prm.grad_att != nullptr) da += Elem<T>::to_float(prm.grad_att[at]);
          prm.g[at] = da;
          if (last) prod = Elem<T>::to_float(prm.att_in[at]) * da;
        }
        ss[r * m.lds + s] = prod;
      }
    });
    if (!last) continue;
    ex.threads([&](int tid) {  // two threads per query, half of the keys each, in a
      // fixed order (deterministic): key (j + r) mod kHalf at step j, threads of a warp
      // in different banks
      const int r = tid % kRows, h = tid / kRows;
      const float* prod = ss + r * m.lds + h * kHalf;
      float sum = 0.f;
      for (int j = 0; j < kHalf; ++j) sum += prod[(j + r) % kHalf];
      part[h * kRows + r] = sum;
    });
    ex.threads([&](int tid) {
      if (tid < kRows) dsum[tid] += part[tid] + part[kRows + tid];
    });
  }
  ex.template async_wait<0>();
  if (!last) return;
  ex.threads([&](int tid) {
    const int t = row0 + tid;
    if (tid < kRows && t < line.P) prm.dpart[w.dir * p.pixels() + line.pixel(t)] = dsum[tid];
  });
}

// ---------------------------------------------------------- pass: gradients

template <class Ex, class T>
CCA_DEV void bwd_grads_body(const Ex& ex, const Params<T>& prm, int64_t id,
                            unsigned char* smem) {
  const Problem& p = prm.p;
  const Work w = decode_grads(p, prm.dir, id);
  const Line line = make_line(p, w.dir, w.line);
  const Smem m = smem_layout(kBwdGrads, p, sizeof(T));
  T* ws = reinterpret_cast<T*>(smem + m.a);  // (query, key) weights of the tile
  float* dq = reinterpret_cast<float*>(smem + m.stat0);
  const auto ybuf = [&](int b) { return reinterpret_cast<T*>(smem + (b ? m.v2 : m.v)); };
  float* os = reinterpret_cast<float*>(smem + m.o);  // aliases ybuf after the sweep
  const int64_t N = p.pixels(), L = p.slots();
  const int row0 = w.block * kRows;  // keys (grad value, grad key) or queries (grad query)
  const bool by_key = w.kind != kGradQuery;
  // grad_value = A^T dout, grad_key = dE^T query, grad_query = dE key
  const T* ysrc = w.kind == kGradValue ? prm.grad_out : w.kind == kGradKey ? prm.q : prm.k;
  T* dst = w.kind == kGradValue ? prm.grad_v : w.kind == kGradKey ? prm.grad_k : prm.grad_q;
  const int64_t channels = w.kind == kGradValue ? p.cv : p.cqk;
  const int64_t bound = w.kind == kGradValue ? p.v_end() : p.cqk;  // the slice's end
  const int64_t c0 = w.kind == kGradValue ? p.v0 + int64_t(w.chunk) * kChunk : 0;
  const int ycols = w.kind == kGradValue ? kChunk : p.cqk_pad();
  const int cols = static_cast<int>(bound - c0 < ycols ? bound - c0 : ycols);
  const bool vec = w.kind == kGradValue ? prm.vec_v : prm.vec_qk;  // of dst
  // of ysrc: grad_out in its own layout
  const bool yvec = w.kind == kGradValue ? prm.vec_go : prm.vec_qk;
  const bool ynchw = w.kind == kGradValue ? prm.go_nchw : prm.nchw;
  typename Ex::template PerWarp<AccTiles<Ex, T, kChunkFrags>> acc;
  static_assert(kQkFrags <= kChunkFrags, "grad q/k fit the value accumulators");

  ex.async_phase([&](int tid) {  // the first tile of rows; the next while one is used
    load_rows(ex, tid, ybuf(0), m.ldy, ysrc, channels, bound, line, 0, c0, ycols, yvec, ynchw);
  });
  ex.warps([&](int warp) { zero_tiles(ex, acc(warp)); });
  for (int pos0 = 0, i = 0; pos0 < line.P; pos0 += kTile, ++i) {  // queries (by key) or keys
    const int q0 = by_key ? pos0 : row0, k0 = by_key ? row0 : pos0;
    const T* ys = ybuf(i & 1);
    ex.async_phase([&](int tid) {
      if (pos0 + kTile < line.P)
        load_rows(ex, tid, ybuf((i + 1) & 1), m.ldy, ysrc, channels, bound, line, pos0 + kTile,
                        c0, ycols, yvec, ynchw);
    });
    if (w.kind != kGradValue) {
      ex.threads([&](int tid) {  // D = the two halves' sum_l A dA
        const int t = q0 + tid;
        if (tid >= kTile) return;
        float d = 0.f;
        if (t < line.P) {
          const int64_t u = line.pixel(t);
          d = prm.dpart[u] + (p.has(kCol) ? prm.dpart[N + u] : 0.f);
        }
        dq[tid] = d;
      });
    }
    ex.threads([&](int tid) {
      for (int e = tid; e < kTile * kTile; e += kThreads) {
        const int qq = e / kTile, kk = e % kTile, t = q0 + qq, key = k0 + kk;
        float x = 0.f;
        if (line.sees(t, key)) {
          const int64_t at = line.pixel(t) * L + line.slot(t, key);
          const float a = Elem<T>::to_float(prm.att_in[at]);
          x = w.kind == kGradValue ? a : a * (prm.g[at] - dq[qq]);  // A, or dE
        }
        ws[qq * m.ldw + kk] = Elem<T>::from_float(x);
      }
    });
    ex.template async_wait<1>();  // this tile's rows (the next tile's may be in flight)
    ex.warps([&](int warp) {
      if (row0 + kFrag * warp >= line.P) return;
      const int live = live_tiles(cols, kChunkFrags);
      if (by_key)  // (keys x queries): the weights read column-major
        ex.template mma_tiles<ColMajor, RowMajor>(acc(warp).f, live, ws + kFrag * warp, m.ldw, ys,
                                                  m.ldy, kTile);
      else
        ex.template mma_tiles<RowMajor, RowMajor>(acc(warp).f, live, ws + kFrag * warp * m.ldw,
                                                  m.ldw, ys, m.ldy, kTile);
    });
  }
  ex.template async_wait<0>();
  ex.warps([&](int warp) { store_tiles(ex, warp, os, m.ldo, acc(warp), cols); });
  ex.threads([&](int tid) {
    store_rows(ex, tid, dst, channels, line, row0, c0, cols, os, m.ldo, w.dir == kCol, vec,
               prm.nchw);
  });
}

// ------------------------------------------------------------ the pass order
// `launch(pass, grid, params)` runs one pass over `grid` CTAs; the passes run in
// this order (a GPU stream, or the emulation's loop), each seeing all of the
// previous ones' writes.  A group of maps at a time, and in it a slice of the value
// channels at a time (plan_passes), so that the column passes' second reads hit the
// L2; the scratch buffers are reused from group to group.

// The params of maps [b0, b0 + maps): the same tensors from map b0 on.
template <class T>
Params<T> at_maps(Params<T> prm, int64_t b0, int64_t maps) {
  const int64_t hw = prm.p.H * prm.p.W, at = b0 * hw * prm.p.slots();
  const int64_t qk = b0 * hw * prm.p.cqk, v = b0 * hw * prm.p.cv;
  const auto shift = [](auto* ptr, int64_t by) { return ptr == nullptr ? ptr : ptr + by; };
  prm.p.B = maps;
  prm.q = shift(prm.q, qk);
  prm.k = shift(prm.k, qk);
  prm.v = shift(prm.v, v);
  prm.out = shift(prm.out, v);
  prm.att = shift(prm.att, at);
  prm.grad_out = shift(prm.grad_out, v);
  prm.grad_att = shift(prm.grad_att, at);
  prm.att_in = shift(prm.att_in, at);
  prm.grad_q = shift(prm.grad_q, qk);
  prm.grad_k = shift(prm.grad_k, qk);
  prm.grad_v = shift(prm.grad_v, v);
  return prm;
}

// One pass over the maps, a group at a time (plan_passes): `whole` once per group over rows and
// columns together (the statistics, or dA), then `sliced` per slice of the value channels, rows
// then columns, with its grid from `grid` (agg_grid or grads_grid).
template <class Launch, class T>
void run_passes(Launch& launch, const Params<T>& all, int64_t l2_bytes, bool backward, Pass whole,
                Pass sliced, int64_t (*grid)(const Problem&, int)) {
  const Plan plan = plan_passes(all.p, sizeof(T), backward, l2_bytes);
  for (int64_t b0 = 0; b0 < all.p.B; b0 += plan.maps) {
    Params<T> prm = at_maps(all, b0, all.p.B - b0 < plan.maps ? all.p.B - b0 : plan.maps);
    launch(whole, both_grid(prm.p), prm);
    for (int64_t v0 = 0; v0 < all.p.cv; v0 += plan.width) {
      prm.p.v0 = v0;
      prm.p.v1 = v0 + plan.width < all.p.cv ? v0 + plan.width : all.p.cv;
      prm.p.qk_grads = v0 == 0;
      prm.dir = kRow;
      launch(sliced, grid(prm.p, kRow), prm);
      if (prm.p.has(kCol)) {
        prm.dir = kCol;
        launch(sliced, grid(prm.p, kCol), prm);
      }
    }
  }
}

template <class Launch, class T>
void run_forward(Launch& launch, const Params<T>& all, int64_t l2_bytes) {
  run_passes(launch, all, l2_bytes, false, kStats, kAgg, agg_grid);
}

// The backward: where the plan accumulates dA slice by slice (plan_passes), per group
// and per slice a dA launch over rows and columns, then the slice's grad value launches
// (rows, then columns); after the last slice the grad key and grad query launches.
// Else v2's order: one dA launch over all the channels, then per slice the gradient
// launches (grad key and grad query with the first slice).
template <class Launch, class T>
void run_backward(Launch& launch, const Params<T>& all, int64_t l2_bytes) {
  const Plan plan = plan_passes(all.p, sizeof(T), true, l2_bytes);
  if (!plan.sliced_da) {
    run_passes(launch, all, l2_bytes, true, kBwdDa, kBwdGrads, grads_grid);
    return;
  }
  const auto both_directions = [&launch](Params<T>& prm) {
    prm.dir = kRow;
    launch(kBwdGrads, grads_grid(prm.p, kRow), prm);
    if (prm.p.has(kCol)) {
      prm.dir = kCol;
      launch(kBwdGrads, grads_grid(prm.p, kCol), prm);
    }
  };
  for (int64_t b0 = 0; b0 < all.p.B; b0 += plan.maps) {
    Params<T> prm = at_maps(all, b0, all.p.B - b0 < plan.maps ? all.p.B - b0 : plan.maps);
    prm.p.qk_grads = false;
    for (int64_t v0 = 0; v0 < all.p.cv; v0 += plan.width) {
      prm.p.v0 = v0;
      prm.p.v1 = v0 + plan.width < all.p.cv ? v0 + plan.width : all.p.cv;
      launch(kBwdDa, both_grid(prm.p), prm);
      both_directions(prm);  // grad value of the slice
    }
    prm.p.v0 = prm.p.v1 = all.p.cv;  // no value channels: grad key and grad query only
    prm.p.qk_grads = true;
    both_directions(prm);
  }
}

// ------------------------------------------------ the untyped entry arguments
// What the torch side (cca_cuda.cu) and the emulation's C entry points pass.

struct RawArgs {
  Problem p;
  int dtype;         // DType
  int64_t l2_bytes;  // the L2 the passes are grouped for (plan_passes); <= 0: no groups
  bool nchw;         // the layout of q, k, v and the gradients (Params)
  bool go_nchw;      // ... and of grad_out
  const void* q;
  const void* k;
  const void* v;
  void* out;
  void* att;
  float* stats;
  const void* grad_out;
  const void* grad_att;
  const void* att_in;
  float* g;
  float* dpart;
  void* grad_q;
  void* grad_k;
  void* grad_v;
};

template <class T>
inline Params<T> make_params(const RawArgs& a) {
  Params<T> prm{};
  prm.p = a.p;
  prm.q = static_cast<const T*>(a.q);
  prm.k = static_cast<const T*>(a.k);
  prm.v = static_cast<const T*>(a.v);
  prm.out = static_cast<T*>(a.out);
  prm.att = static_cast<T*>(a.att);
  prm.stats = a.stats;
  prm.grad_out = static_cast<const T*>(a.grad_out);
  prm.grad_att = static_cast<const T*>(a.grad_att);
  prm.att_in = static_cast<const T*>(a.att_in);
  prm.g = a.g;
  prm.dpart = a.dpart;
  prm.grad_q = static_cast<T*>(a.grad_q);
  prm.grad_k = static_cast<T*>(a.grad_k);
  prm.grad_v = static_cast<T*>(a.grad_v);
  const int e = sizeof(T);
  prm.nchw = a.nchw;
  prm.go_nchw = a.go_nchw;
  const auto ok = [e](const void* ptr, int64_t channels) {
    return ptr == nullptr || vector_ok(ptr, channels, e);
  };
  prm.vec_out = ok(a.out, a.p.cv);
  prm.vec_qk = !a.nchw && ok(a.q, a.p.cqk) && ok(a.k, a.p.cqk) && ok(a.grad_q, a.p.cqk) &&
               ok(a.grad_k, a.p.cqk);
  prm.vec_v = !a.nchw && ok(a.v, a.p.cv) && ok(a.grad_v, a.p.cv);
  prm.vec_go = !a.go_nchw && ok(a.grad_out, a.p.cv);
  return prm;
}

}  // namespace lines
}  // namespace ccnet_edu
