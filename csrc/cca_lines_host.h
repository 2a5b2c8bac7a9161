// A CPU emulation of the GPU's executor (cca_lines_cuda.h), for the tests.
//
// The kernel bodies of cca_lines.h run unchanged: a threads phase is a loop over
// the CTA's 128 threads, a warps phase a loop over its 4 warps, a CTA a call of
// the body; the passes run in the GPU's order.  What the tensor cores do is done
// in float arithmetic on the same operands: 16-bit inputs as they are (their
// products are exact in float), float32 split into TF32 big and small parts with
// the GPU's rounding (cvt.rna.tf32.f32: nearest, ties away from zero) and summed
// as its three products.  Shared memory starts every CTA filled with NaN, so a
// read of anything no phase wrote shows in the result.
//
// Only g++ compiles this (cca_lines_emulate.cpp); no torch, no CUDA.
#pragma once

#include <stdint.h>
#include <string.h>

#include <type_traits>
#include <vector>

#include "cca_lines.h"

namespace ccnet_edu {
namespace lines {

// Storage of the 16-bit types: the bits, as torch and CUDA keep them.
struct HostHalf {
  uint16_t bits;
};
struct HostBFloat16 {
  uint16_t bits;
};

inline uint32_t float_bits(float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  return u;
}
inline float bits_float(uint32_t u) {
  float x;
  memcpy(&x, &u, 4);
  return x;
}

template <>
struct Elem<float> {
  static float to_float(float x) { return x; }
  static float from_float(float x) { return x; }
};
template <>
struct Elem<HostHalf> {  // the compiler's IEEE binary16: round to nearest even
  static float to_float(HostHalf x) {
    _Float16 h;
    memcpy(&h, &x.bits, 2);
    return static_cast<float>(h);
  }
  static HostHalf from_float(float x) {
    const _Float16 h = static_cast<_Float16>(x);
    HostHalf r;
    memcpy(&r.bits, &h, 2);
    return r;
  }
};
template <>
struct Elem<HostBFloat16> {  // the top 16 bits of a float, round to nearest even
  static float to_float(HostBFloat16 x) { return bits_float(uint32_t(x.bits) << 16); }
  static HostBFloat16 from_float(float x) {
    uint32_t u = float_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return HostBFloat16{0x7fc0};  // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return HostBFloat16{static_cast<uint16_t>(u >> 16)};
  }
};

// cvt.rna.tf32.f32: keep 10 mantissa bits, round to nearest with ties away from zero.
inline float to_tf32(float x) {
  const uint32_t u = float_bits(x);
  if ((u & 0x7f800000u) == 0x7f800000u) return x;  // inf, NaN
  return bits_float((u + 0x1000u) & 0xffffe000u);
}

struct HostExec {
  template <class T>
  struct Acc {
    float x[16][16];
  };

  // The emulation runs a CTA's warps one after another: one copy per warp.
  template <class X>
  struct PerWarp {
    X x[kWarps];
    X& operator()(int w) { return x[w]; }
  };

  template <class F>
  void threads(F&& f) const {
    for (int t = 0; t < kThreads; ++t) f(t);
  }
  template <class F>
  void warps(F&& f) const {
    for (int w = 0; w < kWarps; ++w) f(w);
  }

  template <class F>
  void zero(F& c) const {
    memset(c.x, 0, sizeof(c.x));
  }
  template <class F>
  void load(F& c, const float* src, int ld) const {
    for (int i = 0; i < 16; ++i)
      for (int j = 0; j < 16; ++j) c.x[i][j] = src[i * ld + j];
  }
  template <class F>
  void store(float* dst, int ld, const F& c) const {
    for (int i = 0; i < 16; ++i)
      for (int j = 0; j < 16; ++j) dst[i * ld + j] = c.x[i][j];
  }

  template <class LA, class LB, class F, int N, class T>
  void mma_tiles(F (&c)[N], int nvalid, const T* a, int lda, const T* b, int ldb, int k) const {
    constexpr bool kTf32 = std::is_same<T, float>::value;
    constexpr int kStep = kTf32 ? 8 : 16;
    const auto at = [&](int m, int kk) {  // A(m, kk)
      return Elem<T>::to_float(IsRowMajor<LA>::value ? a[m * lda + kk] : a[m + kk * lda]);
    };
    for (int n = 0; n < N && n < nvalid; ++n) {
      const T* bn = b + b_tile<LB>(n, ldb);
      const auto bt = [&](int kk, int j) {  // B_n(kk, j)
        return Elem<T>::to_float(IsRowMajor<LB>::value ? bn[kk * ldb + j] : bn[kk + j * ldb]);
      };
      for (int k0 = 0; k0 < k; k0 += kStep)
        for (int i = 0; i < 16; ++i)
          for (int j = 0; j < 16; ++j) {
            if (kTf32) {  // the three products, each summed over the step, small ones first
              float small_big = 0.f, big_small = 0.f, big_big = 0.f;
              for (int kk = k0; kk < k0 + kStep; ++kk) {
                const float x = at(i, kk), y = bt(kk, j);
                const float xb = to_tf32(x), yb = to_tf32(y);
                const float xs = to_tf32(x - xb), ys = to_tf32(y - yb);
                small_big += xs * yb;
                big_small += xb * ys;
                big_big += xb * yb;
              }
              c[n].x[i][j] = ((c[n].x[i][j] + small_big) + big_small) + big_big;
            } else {
              float sum = 0.f;
              for (int kk = k0; kk < k0 + kStep; ++kk) sum += at(i, kk) * bt(kk, j);
              c[n].x[i][j] += sum;
            }
          }
    }
  }

  static void copy16(void* dst, const void* src) { memcpy(dst, src, 16); }
  static void zero16(void* dst) { memset(dst, 0, 16); }

  // Asynchronous copies.  A GPU's land at some time between their issue and the wait
  // that covers them; the emulation lands them at one end or the other: at the wait
  // (late: a read before its wait reads the NaN that shared memory starts with) or at
  // the issue (early: a copy into a buffer that is still being read overwrites it).
  // Both must give the same bits.
  struct Copy {
    unsigned char* dst;
    unsigned char bytes[16];
    size_t size;
  };
  bool early = false;
  mutable std::vector<Copy> open;
  mutable std::vector<std::vector<Copy>> groups;

  template <class F>
  void async_phase(F&& f) const {
    for (int t = 0; t < kThreads; ++t) f(t);
    groups.push_back(open);
    open.clear();
  }
  template <int N>
  void async_wait() const {
    while (groups.size() > static_cast<size_t>(N)) {
      for (const Copy& c : groups.front()) memcpy(c.dst, c.bytes, c.size);
      groups.erase(groups.begin());
    }
  }
  void copy_async(void* dst, const void* src, size_t size) const {
    if (early) {
      memcpy(dst, src, size);
      return;
    }
    Copy c;
    c.dst = static_cast<unsigned char*>(dst);
    c.size = size;
    memcpy(c.bytes, src, size);
    open.push_back(c);
  }
  void copy16_async(void* dst, const void* src) const { copy_async(dst, src, 16); }
  void copy4_async(void* dst, const void* src) const { copy_async(dst, src, 4); }
  // Copies a CTA left in flight when it ends (none, when the body is right).
  size_t in_flight() const {
    size_t n = open.size();
    for (const auto& g : groups) n += g.size();
    return n;
  }
};

// Runs the CTAs of a pass one by one, in increasing order or (reverse) in
// decreasing order: the result must not depend on it; early: asynchronous copies land
// when issued, else at their wait (HostExec).  `stray` counts the copies CTAs left in
// flight (a body that forgot a wait).
struct HostLaunch {
  bool reverse = false;
  bool early = false;
  int64_t stray = 0;

  template <class T>
  void operator()(int pass, int64_t grid, const Params<T>& prm) {
    const int64_t bytes = smem_layout(pass, prm.p, sizeof(T)).bytes;
    std::vector<unsigned char> buffer(static_cast<size_t>(bytes) + 128);
    unsigned char* smem = buffer.data();
    smem += (128 - reinterpret_cast<uintptr_t>(smem) % 128) % 128;
    HostExec ex;
    ex.early = early;
    for (int64_t n = 0; n < grid; ++n) {
      const int64_t id = reverse ? grid - 1 - n : n;
      memset(smem, 0xff, static_cast<size_t>(bytes));  // NaN in every element type
      switch (pass) {
        case kStats: stats_body(ex, prm, id, smem); break;
        case kAgg: agg_body(ex, prm, id, smem); break;
        case kBwdDa: bwd_da_body(ex, prm, id, smem); break;
        default: bwd_grads_body(ex, prm, id, smem); break;
      }
      stray += static_cast<int64_t>(ex.in_flight());
      ex.open.clear();
      ex.groups.clear();
    }
  }
};

}  // namespace lines
}  // namespace ccnet_edu
