// The GPU's executor for the line kernels (cca_lines.h): WMMA on tensor cores.
//
//   float16, bfloat16  HMMA 16x16x16, float accumulators: products of the rounded
//                      inputs are exact, sums are float32.
//   float32            3xTF32: each operand x = big + small, big = tf32(x),
//                      small = tf32(x - big), and a b ~ small_a big_b + big_a small_b +
//                      big_a big_b (the small_a small_b term, ~2^-22 relative, is
//                      dropped): three HMMA 16x16x8 TF32 per step, float accumulators,
//                      about float32's precision at the tensor cores' rate.
//
// Only nvcc compiles this file (cca_cuda_lines.cu); no torch headers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <type_traits>

#include "cca_lines.h"

namespace ccnet_edu {
namespace lines {

template <>
struct Elem<float> {
  __device__ static float to_float(float x) { return x; }
  __device__ static float from_float(float x) { return x; }
};
template <>
struct Elem<__half> {
  __device__ static float to_float(__half x) { return __half2float(x); }
  __device__ static __half from_float(float x) { return __float2half_rn(x); }
};
template <>
struct Elem<__nv_bfloat16> {
  __device__ static float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  __device__ static __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
};

template <class L>
struct Wmma {
  using type = nvcuda::wmma::row_major;
};
template <>
struct Wmma<ColMajor> {
  using type = nvcuda::wmma::col_major;
};

// The reduction step of one tensor-core product: 16 for 16-bit inputs, 8 for TF32.
template <class T>
struct MmaK {
  static constexpr int value = 16;
};
template <>
struct MmaK<float> {
  static constexpr int value = 8;
};

struct GpuExec {
  template <class T>
  using Acc = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, MmaK<T>::value, float>;

  // A thread holds its own part of its warp's accumulators: one copy.
  template <class X>
  struct PerWarp {
    X x;
    __device__ X& operator()(int) { return x; }
  };

  template <class F>
  __device__ void threads(F&& f) const {
    f(static_cast<int>(threadIdx.x));
    __syncthreads();
  }
  template <class F>
  __device__ void warps(F&& f) const {
    f(static_cast<int>(threadIdx.x / 32));
    __syncthreads();
  }

  template <class F>
  __device__ void zero(F& c) const {
    nvcuda::wmma::fill_fragment(c, 0.f);
  }
  template <class F>
  __device__ void load(F& c, const float* src, int ld) const {
    nvcuda::wmma::load_matrix_sync(c, src, ld, nvcuda::wmma::mem_row_major);
  }
  template <class F>
  __device__ void store(float* dst, int ld, const F& c) const {
    nvcuda::wmma::store_matrix_sync(dst, c, ld, nvcuda::wmma::mem_row_major);
  }

  // c[n] += A (16 x k) B_n (k x 16) for n < nvalid, B_n the n-th 16 columns of B:
  // each step's A fragment is loaded (and split) once for all the n.
  template <class LA, class LB, class F, int N, class T>
  __device__ void mma_tiles(F (&c)[N], int nvalid, const T* a, int lda, const T* b, int ldb,
                            int k) const {
    namespace wmma = nvcuda::wmma;
    using A = typename Wmma<LA>::type;
    using B = typename Wmma<LB>::type;
    if constexpr (std::is_same<T, float>::value) {
      for (int k0 = 0; k0 < k; k0 += 8) {
        wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, A> a_big, a_small;
        wmma::load_matrix_sync(a_big, a + a_step<LA>(k0, lda), lda);
        split_tf32(a_big, a_small);
#pragma unroll
        for (int n = 0; n < N; ++n) {
          if (n >= nvalid) break;
          wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, B> b_big, b_small;
          wmma::load_matrix_sync(b_big, b + b_step<LB>(k0, ldb) + b_tile<LB>(n, ldb), ldb);
          split_tf32(b_big, b_small);
          // the small terms first, the big one last
          wmma::mma_sync(c[n], a_small, b_big, c[n]);
          wmma::mma_sync(c[n], a_big, b_small, c[n]);
          wmma::mma_sync(c[n], a_big, b_big, c[n]);
        }
      }
    } else {
      for (int k0 = 0; k0 < k; k0 += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, A> fa;
        load_fragment<LA, false>(fa, a + a_step<LA>(k0, lda), lda);
#pragma unroll
        for (int n = 0; n < N; ++n) {
          if (n >= nvalid) break;
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, B> fb;
          load_fragment<LB, true>(fb, b + b_step<LB>(k0, ldb) + b_tile<LB>(n, ldb), ldb);
          wmma::mma_sync(c[n], fa, fb, c[n]);
        }
      }
    }
  }

  // A 16 x 16 operand tile of 16-bit elements into its WMMA fragment, from shared memory
  // (L: how the tile is stored; kB: the B operand, else A).  float16: WMMA's own load,
  // which nvcc already turns into ldmatrix (LDSM).  bfloat16: nvcc loads WMMA's fragment
  // with one generic 32-bit load per register (and, for A col-major or B row-major, a
  // MOVM transpose of each), so it is loaded here by one ldmatrix.x4 into the same
  // registers: four 8 x 8 matrices of the stored tile, lane l giving the address of row
  // l % 8 of matrix l / 8, and thread (g, t) = (lane / 4, lane % 4) receiving elements
  // (g, 2t) and (g, 2t + 1) of each (with .trans, of its transpose).  The fragment's four
  // registers, as nvcc's own load fills them (read from its sm_80 and sm_90 machine code),
  // hold the 8 x 8 blocks (m, k) = (0, 0), (8, 0), (0, 8), (8, 8) of A and (k, n) = (0, 0),
  // (8, 0), (0, 8), (8, 8) of B, a thread's two elements adjacent in k, as mma.m16n8k16
  // takes them.  So a row-major tile (stored rows m or k) takes its matrices down the
  // rows first, a col-major one (stored rows k or n) along them first; where k runs down
  // the stored rows (A col-major, B row-major) the matrices are transposed.
  template <class L, bool kB, class F, class T>
  __device__ static void load_fragment(F& f, const T* p, int ld) {
    if constexpr (!std::is_same<T, __nv_bfloat16>::value) {
      nvcuda::wmma::load_matrix_sync(f, p, ld);
    } else {
      constexpr bool kRowMajor = IsRowMajor<L>::value;
      const int lane = static_cast<int>(threadIdx.x % 32), j = lane / 8;
      const int row = lane % 8 + 8 * (kRowMajor ? (j & 1) : (j >> 1));
      const int col = 8 * (kRowMajor ? (j >> 1) : (j & 1));
      const unsigned at =
          static_cast<unsigned>(__cvta_generic_to_shared(p + int64_t(row) * ld + col));
      static_assert(sizeof(f.x) == 16, "a 16 x 16 x 16 bfloat16 fragment: 4 registers");
      unsigned* x = reinterpret_cast<unsigned*>(&f.x[0]);
      if constexpr (kB == kRowMajor)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(x[0]), "=r"(x[1]), "=r"(x[2]), "=r"(x[3])
                     : "r"(at)
                     : "memory");
      else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(x[0]), "=r"(x[1]), "=r"(x[2]), "=r"(x[3])
                     : "r"(at)
                     : "memory");
    }
  }

  // x = big + small, big = tf32(x), small = tf32(x - big), element by element
  // (the two fragments have one layout, whatever it is).
  template <class F>
  __device__ static void split_tf32(F& big, F& small) {
#pragma unroll
    for (int i = 0; i < big.num_elements; ++i) {
      const float x = big.x[i], hi = nvcuda::wmma::__float_to_tf32(x);
      big.x[i] = hi;
      small.x[i] = nvcuda::wmma::__float_to_tf32(x - hi);
    }
  }

  __device__ static void copy16(void* dst, const void* src) {
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
  }

  // Every thread runs f(t), which issues asynchronous copies (copy16_async), then
  // closes its group of copies; no barrier: the copies land while the CTA goes on.
  template <class F>
  __device__ void async_phase(F&& f) const {
    f(static_cast<int>(threadIdx.x));
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
  }
  // Waits until at most N of this thread's latest groups are still in flight, then a
  // barrier: every copy of the older groups, from every thread, is in shared memory.
  template <int N>
  __device__ void async_wait() const {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
    __syncthreads();
  }
  // 16 bytes from global to shared memory without passing through registers
  // (cp.async.cg: cached in L2 only; LDGSTS in the machine code).  Before sm_80, an
  // ordinary load and store (though the library as a whole needs sm_80: the TF32 and
  // bfloat16 fragments, cca_cuda.cu).
  __device__ static void copy16_async(void* dst, const void* src) {
#if __CUDA_ARCH__ >= 800
    const unsigned to = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(to), "l"(src) : "memory");
#else
    copy16(dst, src);
#endif
  }
  // One 4-byte element (a float of an NCHW tensor), asynchronously (cp.async.ca).
  __device__ static void copy4_async(void* dst, const void* src) {
#if __CUDA_ARCH__ >= 800
    const unsigned to = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(to), "l"(src) : "memory");
#else
    *reinterpret_cast<unsigned*>(dst) = *reinterpret_cast<const unsigned*>(src);
#endif
  }
  __device__ static void zero16(void* dst) {
    *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
  }
};

// One CTA of one pass.  At most 2 CTAs of 128 threads per multiprocessor are asked
// for: up to 255 registers a thread, so the accumulators never spill.
template <class T, int kPass>
__global__ void __launch_bounds__(kThreads, 2) lines_kernel(const Params<T> prm) {
  extern __shared__ __align__(128) unsigned char smem[];
  const GpuExec ex;
  const int64_t id = blockIdx.x;
  if constexpr (kPass == kStats)
    stats_body(ex, prm, id, smem);
  else if constexpr (kPass == kAgg)
    agg_body(ex, prm, id, smem);
  else if constexpr (kPass == kBwdDa)
    bwd_da_body(ex, prm, id, smem);
  else
    bwd_grads_body(ex, prm, id, smem);
}

// Launches the passes on a stream and keeps the first error.
struct GpuLaunch {
  cudaStream_t stream;
  cudaError_t error = cudaSuccess;

  template <class T, int kPass>
  void one(int64_t grid, const Params<T>& prm) {
    if (error != cudaSuccess || grid == 0) return;
    if (grid > 0x7fffffff) {
      error = cudaErrorInvalidConfiguration;
      return;
    }
    const int64_t smem = smem_layout(kPass, prm.p, sizeof(T)).bytes;
    const auto kernel = lines_kernel<T, kPass>;
    if (smem > 48 * 1024) {
      error = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   static_cast<int>(smem));
      if (error != cudaSuccess) return;
    }
    kernel<<<static_cast<unsigned>(grid), kThreads, static_cast<size_t>(smem), stream>>>(prm);
    error = cudaGetLastError();
  }

  template <class T>
  void operator()(int pass, int64_t grid, const Params<T>& prm) {
    switch (pass) {
      case kStats: one<T, kStats>(grid, prm); break;
      case kAgg: one<T, kAgg>(grid, prm); break;
      case kBwdDa: one<T, kBwdDa>(grid, prm); break;
      default: one<T, kBwdGrads>(grid, prm); break;
    }
  }
};

}  // namespace lines
}  // namespace ccnet_edu
