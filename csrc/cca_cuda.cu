// Criss-cross attention on CUDA: only the launch configuration.
//
// The arithmetic (cca_common.h) and the orchestration (cca_portable.h) are the
// same text the CPU build compiles; this file says how indices map to threads:
// one thread per output element, a grid-stride loop, on the current stream.
// Only c10's CUDA headers: ATen/cuda/CUDAContext.h pulls in cuBLAS/cuSPARSE
// headers, which a minimal CUDA toolkit does not ship and this op does not use.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "cca_portable.h"

namespace ccnet_edu {
namespace {

template <class F>
__global__ void for_each_index(int64_t n, F f) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += stride)
    f(idx);
}

struct CudaLaunch {
  template <class F>
  void operator()(int64_t n, const F& f) const {
    if (n == 0) return;
    constexpr int threads = 256;
    // Enough blocks to fill any current GPU; the grid-stride loop does the rest.
    const int64_t blocks = std::min<int64_t>((n + threads - 1) / threads, 65535);
    for_each_index<<<blocks, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(n, f);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& query, const at::Tensor& key,
                                                const at::Tensor& value) {
  const c10::cuda::CUDAGuard guard(query.device());
  return portable_forward(query, key, value, CudaLaunch{});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_att,
    const at::Tensor& attention, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value) {
  const c10::cuda::CUDAGuard guard(query.device());
  return portable_backward(grad_out, grad_att, attention, query, key, value, CudaLaunch{});
}

}  // namespace
}  // namespace ccnet_edu

TORCH_LIBRARY_IMPL(ccnet_edu, CUDA, m) {
  m.impl("criss_cross_attention", &ccnet_edu::forward_cuda);
  m.impl("criss_cross_attention_backward", &ccnet_edu::backward_cuda);
}
