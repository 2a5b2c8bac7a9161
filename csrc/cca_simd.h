// The vector type of the CPU kernels: Vec<T> holds Vec<T>::size values of T.
//
// The kernels (cca_cpu_kernels.h) are written once, over Vec<T>; this header is
// the only place that says which instructions a build uses.  The width is fixed
// when the library is compiled, by the ISA level it is compiled for
// (ccnet_edu/ops/_build.py picks the widest level the CPU runs):
//
//   compiled with         Vec<float>       Vec<double>     instructions
//   -march=x86-64-v4      __m512, 16       __m512d, 8      AVX-512
//   -march=x86-64-v3      __m256,  8       __m256d, 4      AVX2 + FMA
//   anything else         16 bytes:        16 bytes:       GCC/Clang vector types
//                         4 floats         2 doubles       (SSE2, NEON)
//
// Every operation is one IEEE operation per lane (no approximate reciprocal, no
// fast-math), and fma is one fused instruction in the x86-64-v3 and -v4 builds,
// so a lane computes the same bits in those two builds; only the number of lanes
// side by side differs.  The 16-byte build rounds a * b + c twice where the CPU
// has no fused multiply-add (baseline x86-64, see the portable section below), so
// its bits can differ from theirs by rounding error.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if (defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && \
     defined(__AVX512VL__)) ||                                                  \
    (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

namespace ccnet_edu {
namespace simd {

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define CCA_SIMD_AVX512 1
inline constexpr const char* kInstructions = "AVX-512";
#elif defined(__AVX2__) && defined(__FMA__)
#define CCA_SIMD_AVX2 1
inline constexpr const char* kInstructions = "AVX2+FMA";
#else
#define CCA_SIMD_PORTABLE 1
inline constexpr const char* kInstructions = "portable C++";
#endif

template <typename T>
struct Vec;

// ------------------------------------------------------------------ AVX-512
#if defined(CCA_SIMD_AVX512)

// The first n of 16 (or 8) lanes.
inline __mmask16 first_lanes16(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
inline __mmask8 first_lanes8(int n) { return static_cast<__mmask8>((1u << n) - 1u); }

template <>
struct Vec<float> {
  static constexpr int size = 16;
  __m512 v;
  static Vec zero() { return {_mm512_setzero_ps()}; }
  static Vec broadcast(float x) { return {_mm512_set1_ps(x)}; }
  static Vec load(const float* p) { return {_mm512_loadu_ps(p)}; }
  // p[0..n) in the first n lanes (0 <= n <= size), `fill` in the others; reads only p[0..n).
  static Vec load_first(const float* p, int n, float fill = 0.0f) {
    return {_mm512_mask_loadu_ps(_mm512_set1_ps(fill), first_lanes16(n), p)};
  }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  void store_first(float* p, int n) const { _mm512_mask_storeu_ps(p, first_lanes16(n), v); }
};

template <>
struct Vec<double> {
  static constexpr int size = 8;
  __m512d v;
  static Vec zero() { return {_mm512_setzero_pd()}; }
  static Vec broadcast(double x) { return {_mm512_set1_pd(x)}; }
  static Vec load(const double* p) { return {_mm512_loadu_pd(p)}; }
  static Vec load_first(const double* p, int n, double fill = 0.0) {
    return {_mm512_mask_loadu_pd(_mm512_set1_pd(fill), first_lanes8(n), p)};
  }
  void store(double* p) const { _mm512_storeu_pd(p, v); }
  void store_first(double* p, int n) const { _mm512_mask_storeu_pd(p, first_lanes8(n), v); }
};

// a * b + c, rounded once.
inline Vec<float> fma(Vec<float> a, Vec<float> b, Vec<float> c) {
  return {_mm512_fmadd_ps(a.v, b.v, c.v)};
}
inline Vec<double> fma(Vec<double> a, Vec<double> b, Vec<double> c) {
  return {_mm512_fmadd_pd(a.v, b.v, c.v)};
}
inline Vec<float> operator+(Vec<float> a, Vec<float> b) { return {_mm512_add_ps(a.v, b.v)}; }
inline Vec<double> operator+(Vec<double> a, Vec<double> b) { return {_mm512_add_pd(a.v, b.v)}; }
inline Vec<float> operator-(Vec<float> a, Vec<float> b) { return {_mm512_sub_ps(a.v, b.v)}; }
inline Vec<double> operator-(Vec<double> a, Vec<double> b) { return {_mm512_sub_pd(a.v, b.v)}; }
inline Vec<float> operator*(Vec<float> a, Vec<float> b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline Vec<double> operator*(Vec<double> a, Vec<double> b) { return {_mm512_mul_pd(a.v, b.v)}; }
// max(a, b) and min(a, b) per lane; b when either is NaN (the x86 rule, the same in
// every x86 build).
inline Vec<float> max(Vec<float> a, Vec<float> b) { return {_mm512_max_ps(a.v, b.v)}; }
inline Vec<double> max(Vec<double> a, Vec<double> b) { return {_mm512_max_pd(a.v, b.v)}; }
inline Vec<float> min(Vec<float> a, Vec<float> b) { return {_mm512_min_ps(a.v, b.v)}; }
inline Vec<float> floor(Vec<float> a) {
  return {_mm512_roundscale_ps(a.v, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC)};
}
// 2^n for whole numbers n in [-126, 127], built in the exponent bits.
inline Vec<float> pow2(Vec<float> n) {
  const __m512i biased = _mm512_add_epi32(_mm512_cvtps_epi32(n.v), _mm512_set1_epi32(127));
  return {_mm512_castsi512_ps(_mm512_slli_epi32(biased, 23))};
}
// The first n lanes of a, zero in the others.
inline Vec<float> keep_first(Vec<float> a, int n) {
  return {_mm512_maskz_mov_ps(first_lanes16(n), a.v)};
}
inline Vec<double> keep_first(Vec<double> a, int n) {
  return {_mm512_maskz_mov_pd(first_lanes8(n), a.v)};
}

// Interleave the first halves, and the second halves, of a and b:
// zip_low(a, b) = a0 b0 a1 b1 ..., zip_high(a, b) = a(s/2) b(s/2) ...
inline Vec<float> zip_low(Vec<float> a, Vec<float> b) {
  const __m512i index = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  return {_mm512_permutex2var_ps(a.v, index, b.v)};
}
inline Vec<float> zip_high(Vec<float> a, Vec<float> b) {
  const __m512i index =
      _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  return {_mm512_permutex2var_ps(a.v, index, b.v)};
}
inline Vec<double> zip_low(Vec<double> a, Vec<double> b) {
  const __m512i index = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11);
  return {_mm512_permutex2var_pd(a.v, index, b.v)};
}
inline Vec<double> zip_high(Vec<double> a, Vec<double> b) {
  const __m512i index = _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
  return {_mm512_permutex2var_pd(a.v, index, b.v)};
}

// The compiler may not look through v: a multiply that made v is not fused into a
// later add (-ffp-contract=fast would allow that, and might do it in one build
// and not in another).
inline Vec<float> opaque(Vec<float> a) {
  __asm__("" : "+v"(a.v));
  return a;
}

// ------------------------------------------------------------------ AVX2
#elif defined(CCA_SIMD_AVX2)

// Lane i all ones for i < n: the mask of maskload/maskstore.
inline __m256i first_lanes32(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline __m256i first_lanes64(int n) {
  return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
}

template <>
struct Vec<float> {
  static constexpr int size = 8;
  __m256 v;
  static Vec zero() { return {_mm256_setzero_ps()}; }
  static Vec broadcast(float x) { return {_mm256_set1_ps(x)}; }
  static Vec load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static Vec load_first(const float* p, int n, float fill = 0.0f) {
    const __m256i mask = first_lanes32(n);
    return {_mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(p, mask),
                             _mm256_castsi256_ps(mask))};
  }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  void store_first(float* p, int n) const { _mm256_maskstore_ps(p, first_lanes32(n), v); }
};

template <>
struct Vec<double> {
  static constexpr int size = 4;
  __m256d v;
  static Vec zero() { return {_mm256_setzero_pd()}; }
  static Vec broadcast(double x) { return {_mm256_set1_pd(x)}; }
  static Vec load(const double* p) { return {_mm256_loadu_pd(p)}; }
  static Vec load_first(const double* p, int n, double fill = 0.0) {
    const __m256i mask = first_lanes64(n);
    return {_mm256_blendv_pd(_mm256_set1_pd(fill), _mm256_maskload_pd(p, mask),
                             _mm256_castsi256_pd(mask))};
  }
  void store(double* p) const { _mm256_storeu_pd(p, v); }
  void store_first(double* p, int n) const { _mm256_maskstore_pd(p, first_lanes64(n), v); }
};

inline Vec<float> fma(Vec<float> a, Vec<float> b, Vec<float> c) {
  return {_mm256_fmadd_ps(a.v, b.v, c.v)};
}
inline Vec<double> fma(Vec<double> a, Vec<double> b, Vec<double> c) {
  return {_mm256_fmadd_pd(a.v, b.v, c.v)};
}
inline Vec<float> operator+(Vec<float> a, Vec<float> b) { return {_mm256_add_ps(a.v, b.v)}; }
inline Vec<double> operator+(Vec<double> a, Vec<double> b) { return {_mm256_add_pd(a.v, b.v)}; }
inline Vec<float> operator-(Vec<float> a, Vec<float> b) { return {_mm256_sub_ps(a.v, b.v)}; }
inline Vec<double> operator-(Vec<double> a, Vec<double> b) { return {_mm256_sub_pd(a.v, b.v)}; }
inline Vec<float> operator*(Vec<float> a, Vec<float> b) { return {_mm256_mul_ps(a.v, b.v)}; }
inline Vec<double> operator*(Vec<double> a, Vec<double> b) { return {_mm256_mul_pd(a.v, b.v)}; }
inline Vec<float> max(Vec<float> a, Vec<float> b) { return {_mm256_max_ps(a.v, b.v)}; }
inline Vec<double> max(Vec<double> a, Vec<double> b) { return {_mm256_max_pd(a.v, b.v)}; }
inline Vec<float> min(Vec<float> a, Vec<float> b) { return {_mm256_min_ps(a.v, b.v)}; }
inline Vec<float> floor(Vec<float> a) { return {_mm256_floor_ps(a.v)}; }
inline Vec<float> pow2(Vec<float> n) {
  const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(n.v), _mm256_set1_epi32(127));
  return {_mm256_castsi256_ps(_mm256_slli_epi32(biased, 23))};
}
inline Vec<float> keep_first(Vec<float> a, int n) {
  return {_mm256_and_ps(a.v, _mm256_castsi256_ps(first_lanes32(n)))};
}
inline Vec<double> keep_first(Vec<double> a, int n) {
  return {_mm256_and_pd(a.v, _mm256_castsi256_pd(first_lanes64(n)))};
}

// unpacklo/hi interleave within each 128-bit half; permute2f128 puts the halves in order.
inline Vec<float> zip_low(Vec<float> a, Vec<float> b) {
  return {_mm256_permute2f128_ps(_mm256_unpacklo_ps(a.v, b.v), _mm256_unpackhi_ps(a.v, b.v), 0x20)};
}
inline Vec<float> zip_high(Vec<float> a, Vec<float> b) {
  return {_mm256_permute2f128_ps(_mm256_unpacklo_ps(a.v, b.v), _mm256_unpackhi_ps(a.v, b.v), 0x31)};
}
inline Vec<double> zip_low(Vec<double> a, Vec<double> b) {
  return {_mm256_permute2f128_pd(_mm256_unpacklo_pd(a.v, b.v), _mm256_unpackhi_pd(a.v, b.v), 0x20)};
}
inline Vec<double> zip_high(Vec<double> a, Vec<double> b) {
  return {_mm256_permute2f128_pd(_mm256_unpacklo_pd(a.v, b.v), _mm256_unpackhi_pd(a.v, b.v), 0x31)};
}

inline Vec<float> opaque(Vec<float> a) {
  __asm__("" : "+x"(a.v));
  return a;
}

// ------------------------------------------------------------------ portable
#else

// 16 bytes of T as a GCC/Clang vector type: plain C++ arithmetic on it compiles to
// SSE2 on x86-64 and to NEON on aarch64.  a * b + c is one fused operation where
// the CPU has one (-ffp-contract=fast: aarch64), two roundings where it has none
// (baseline x86-64), so this build's bits can differ from the x86-64-v3 and -v4
// builds, which use explicit FMA instructions.
template <typename T>
struct Vec {
  static constexpr int size = 16 / sizeof(T);
  typedef T Native __attribute__((vector_size(16)));
  Native v;
  static Vec zero() { return broadcast(T(0)); }
  static Vec broadcast(T x) {
    Vec r;
    for (int l = 0; l < size; ++l) r.v[l] = x;
    return r;
  }
  static Vec load(const T* p) {
    Vec r;
    std::memcpy(&r.v, p, sizeof(r.v));
    return r;
  }
  static Vec load_first(const T* p, int n, T fill = T(0)) {
    Vec r = broadcast(fill);
    for (int l = 0; l < n; ++l) r.v[l] = p[l];
    return r;
  }
  void store(T* p) const { std::memcpy(p, &v, sizeof(v)); }
  void store_first(T* p, int n) const {
    for (int l = 0; l < n; ++l) p[l] = v[l];
  }
};

template <typename T>
inline Vec<T> fma(Vec<T> a, Vec<T> b, Vec<T> c) {
  return {a.v * b.v + c.v};
}
template <typename T>
inline Vec<T> operator+(Vec<T> a, Vec<T> b) { return {a.v + b.v}; }
template <typename T>
inline Vec<T> operator-(Vec<T> a, Vec<T> b) { return {a.v - b.v}; }
template <typename T>
inline Vec<T> operator*(Vec<T> a, Vec<T> b) { return {a.v * b.v}; }
template <typename T>
inline Vec<T> max(Vec<T> a, Vec<T> b) {
  for (int l = 0; l < Vec<T>::size; ++l) a.v[l] = a.v[l] > b.v[l] ? a.v[l] : b.v[l];
  return a;
}
template <typename T>
inline Vec<T> min(Vec<T> a, Vec<T> b) {
  for (int l = 0; l < Vec<T>::size; ++l) a.v[l] = a.v[l] < b.v[l] ? a.v[l] : b.v[l];
  return a;
}
inline Vec<float> floor(Vec<float> a) {
  for (int l = 0; l < Vec<float>::size; ++l) a.v[l] = std::floor(a.v[l]);
  return a;
}
inline Vec<float> pow2(Vec<float> n) {
  Vec<float> r;
  for (int l = 0; l < Vec<float>::size; ++l) {
    const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n.v[l]) + 127) << 23;
    float f;
    std::memcpy(&f, &bits, sizeof(bits));
    r.v[l] = f;
  }
  return r;
}
template <typename T>
inline Vec<T> keep_first(Vec<T> a, int n) {
  for (int l = n; l < Vec<T>::size; ++l) a.v[l] = T(0);
  return a;
}
template <typename T>
inline Vec<T> zip_low(Vec<T> a, Vec<T> b) {
  Vec<T> r;
  for (int l = 0; l < Vec<T>::size / 2; ++l) r.v[2 * l] = a.v[l], r.v[2 * l + 1] = b.v[l];
  return r;
}
template <typename T>
inline Vec<T> zip_high(Vec<T> a, Vec<T> b) {
  constexpr int h = Vec<T>::size / 2;
  Vec<T> r;
  for (int l = 0; l < h; ++l) r.v[2 * l] = a.v[h + l], r.v[2 * l + 1] = b.v[h + l];
  return r;
}
// The portable build makes no promise of identical bits with the others.
inline Vec<float> opaque(Vec<float> a) { return a; }

#endif

// ------------------------------------------------------------ written once

// exp(x) for float, one sequence of operations for every build (its fma is one
// fused instruction in the x86-64-v3 and -v4 builds, a * b + c rounded twice in
// the 16-byte build on baseline x86-64): the classic Cephes expf.  x = n ln 2 + r
// with |r| <= ln 2 / 2 (ln 2 split in two so that n ln 2 is exact), e^r by a
// degree-5 polynomial in r, 2^n built in the exponent bits; about 1 ulp.  x is
// clamped to the range whose result is a normal float; max and min with x
// second keep a NaN x NaN.
inline Vec<float> exp(Vec<float> x) {
  using V = Vec<float>;
  x = max(V::broadcast(-87.3365447505531f), min(V::broadcast(88.3762626647949f), x));
  const V n = floor(fma(x, V::broadcast(1.44269504088896341f), V::broadcast(0.5f)));
  V r = fma(n, V::broadcast(-0.693359375f), x);
  r = fma(n, V::broadcast(2.12194440e-4f), r);
  V p = V::broadcast(1.9875691500E-4f);
  p = fma(p, r, V::broadcast(1.3981999507E-3f));
  p = fma(p, r, V::broadcast(8.3334519073E-3f));
  p = fma(p, r, V::broadcast(4.1665795894E-2f));
  p = fma(p, r, V::broadcast(1.6666665459E-1f));
  p = fma(p, r, V::broadcast(5.0000001201E-1f));
  p = fma(p, r * r, r + V::broadcast(1.0f));
  return p * pow2(n);
}

// exp(x) for double: the C library's exp, lane by lane (one function for every
// build; double is the checking dtype here, not the fast one).
inline Vec<double> exp(Vec<double> x) {
  double lanes[Vec<double>::size];
  x.store(lanes);
  for (double& l : lanes) l = std::exp(l);
  return Vec<double>::load(lanes);
}
inline Vec<double> opaque(Vec<double> a) { return a; }  // exp(double) ends in no multiply

// Transpose a square block held in Vec<T>::size vectors, row r in rows[r]:
// log2(size) rounds of interleaving row i with row i + size / 2.  Each round
// rotates the bits of (row, column) left by one, so after log2(size) rounds
// row and column have traded places.  (For 2 x 2, zip_low(a, b) = (a0, b0) and
// zip_high(a, b) = (a1, b1) are the columns.)
template <typename T>
inline void transpose_in_registers(Vec<T> (&rows)[Vec<T>::size]) {
  constexpr int s = Vec<T>::size;
#pragma GCC unroll 4
  for (int step = 1; step < s; step *= 2) {
    Vec<T> next[s];
#pragma GCC unroll 16
    for (int i = 0; i < s / 2; ++i) {
      next[2 * i] = zip_low(rows[i], rows[i + s / 2]);
      next[2 * i + 1] = zip_high(rows[i], rows[i + s / 2]);
    }
#pragma GCC unroll 16
    for (int i = 0; i < s; ++i) rows[i] = next[i];
  }
}

}  // namespace simd
}  // namespace ccnet_edu
