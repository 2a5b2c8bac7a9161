// Criss-cross attention on CUDA: which kernels run, and their torch-side plumbing.
//
//   criss_cross_attention[_backward]           the tiled line kernels (cca_lines.h,
//       launched by cca_cuda_lines.cu) for float32, float16 and bfloat16 with C' <= 128,
//       reading NCHW or channels-last inputs in place: query, key and value in the
//       query's layout (one in another layout, or in neither, is copied into it), and
//       grad_out in its own, NCHW or channels-last (one in neither is copied to NCHW);
//       the portable kernels for anything else (float64, a wider C', or a device that
//       gives one block less shared memory than one of the tiled passes needs).
//   This library (this file and cca_cuda_lines.cu, built together) needs compute
//   capability 8.0 or later: the tiled kernels use TF32 and bfloat16 tensor-core
//   fragments, which CUDA's mma.h defines only from sm_80 on, so a build for an older
//   GPU fails, and there neither the tiled nor the portable kernels are available.
//   portable_criss_cross_attention[_backward]  the portable element bodies (cca_common.h,
//       cca_portable.h), one thread per output element: the oracle the tiled kernels
//       are tested against on a GPU, and chapter 04's teaching kernel.
//
// CCNET_EDU_CUDA_POISON=1 fills every output and scratch buffer with NaN before the
// tiled kernels run (tests/test_gpu.py): an element that no kernel writes stays NaN.
// CCNET_EDU_CUDA_L2_BYTES=<n> plans the tiled passes for an L2 of n bytes instead of the
// device's (0: all maps and channels in one pass), read at every call, so that
// tests/test_gpu.py can compare the plans' bits.
//
// Only c10's CUDA headers: ATen/cuda/CUDAContext.h pulls in cuBLAS/cuSPARSE
// headers, which a minimal CUDA toolkit does not ship and this op does not use.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <unordered_map>

#include "cca_cuda_lines.h"
#include "cca_portable.h"

namespace ccnet_edu {
namespace {

// ------------------------------------------------------------ the portable kernels
// One thread per element, a grid-stride loop, on the current stream.

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

std::tuple<at::Tensor, at::Tensor> portable_forward_cuda(const at::Tensor& query,
                                                         const at::Tensor& key,
                                                         const at::Tensor& value) {
  const c10::cuda::CUDAGuard guard(query.device());
  return portable_forward(query, key, value, CudaLaunch{});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> portable_backward_cuda(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_att,
    const at::Tensor& attention, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value) {
  const c10::cuda::CUDAGuard guard(query.device());
  return portable_backward(grad_out, grad_att, attention, query, key, value, CudaLaunch{});
}

// --------------------------------------------------------------- the tiled kernels

bool poison() {
  static const bool on = [] {
    const char* v = std::getenv("CCNET_EDU_CUDA_POISON");
    return v != nullptr && *v != '\0' && std::string(v) != "0";
  }();
  return on;
}

void fill_nan(std::initializer_list<at::Tensor> tensors) {
  for (const auto& t : tensors)
    if (t.defined()) t.fill_(std::numeric_limits<double>::quiet_NaN());
}

int lines_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return lines::kFloat32;
    case at::kHalf: return lines::kFloat16;
    case at::kBFloat16: return lines::kBFloat16;
    default: return -1;
  }
}

// What the tiled kernels need to know of the current device, read once per device:
// its L2, for which the passes are grouped, and the most dynamic shared memory one
// CTA may ask for (opt-in), which decides whether the tiled kernels run at all.
struct DeviceLimits {
  int64_t l2_bytes = 0, smem_per_block = 0;
};

DeviceLimits device_limits() {
  static std::mutex mutex;
  static std::unordered_map<int, DeviceLimits> known;
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  const std::lock_guard<std::mutex> lock(mutex);
  const auto found = known.find(device);
  if (found != known.end()) return found->second;
  int l2 = 0, smem = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  DeviceLimits limits;
  limits.l2_bytes = l2;
  limits.smem_per_block = smem;
  return known.emplace(device, limits).first->second;
}

// The L2 the passes are planned for: the device's, or CCNET_EDU_CUDA_L2_BYTES.
int64_t planned_l2_bytes() {
  const char* v = std::getenv("CCNET_EDU_CUDA_L2_BYTES");
  if (v == nullptr || *v == '\0') return device_limits().l2_bytes;
  char* end = nullptr;
  errno = 0;
  const long long n = std::strtoll(v, &end, 10);
  TORCH_CHECK(end != v && *end == '\0' && errno == 0 && n >= 0,
              "CCNET_EDU_CUDA_L2_BYTES must be a byte count (an integer >= 0), got '", v, "'");
  return static_cast<int64_t>(n);
}

lines::Problem problem_of(const at::Tensor& query, const at::Tensor& value) {
  lines::Problem p;
  p.B = query.size(0);
  p.cqk = query.size(1);
  p.cv = value.size(1);
  p.H = query.size(2);
  p.W = query.size(3);
  return p;
}

// Whether the tiled kernels take these inputs on the current device (check_inputs
// has passed): a dtype they have, C' they take, and every pass's shared memory within
// what the device gives one CTA; otherwise the portable kernels run.
bool tiled(const at::Tensor& query, const at::Tensor& value) {
  const int dtype = lines_dtype(query.scalar_type());
  return dtype >= 0 && lines::tiled_supported(problem_of(query, value), dtype,
                                              device_limits().smem_per_block);
}

// The layout the tiled kernels read in: channels-last when the query already is
// (and is not NCHW-contiguous too), else NCHW; an input in the other layout, or
// neither, is copied into it.
bool reads_nchw(const at::Tensor& query) {
  return query.is_contiguous() || !query.is_contiguous(at::MemoryFormat::ChannelsLast);
}

at::Tensor in_layout(const at::Tensor& x, bool nchw) {
  return nchw ? x.contiguous() : channels_last(x);
}

at::Tensor empty_in_layout(const at::Tensor& like, int64_t channels, at::ScalarType dtype,
                           bool nchw) {
  return nchw ? at::empty({like.size(0), channels, like.size(2), like.size(3)},
                          like.options().dtype(dtype))
              : empty_channels_last(like, channels, dtype);
}

// grad in the layout of input, copied only when the strides differ.
at::Tensor like_input(const at::Tensor& grad, const at::Tensor& input) {
  return grad.strides() == input.strides() ? grad : in_layout_of(grad, input);
}

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& query_in,
                                                const at::Tensor& key_in,
                                                const at::Tensor& value_in) {
  check_inputs(query_in, key_in, value_in);
  const c10::cuda::CUDAGuard guard(query_in.device());
  if (!tiled(query_in, value_in)) return portable_forward(query_in, key_in, value_in, CudaLaunch{});
  const bool nchw = reads_nchw(query_in);
  const auto query = in_layout(query_in, nchw), key = in_layout(key_in, nchw),
             value = in_layout(value_in, nchw);
  const lines::Problem p = problem_of(query, value);
  const auto dtype = query.scalar_type();
  auto out = empty_channels_last(value, p.cv, dtype);                     // (B, C, H, W)
  auto att = at::empty({p.B, p.H, p.W, p.slots()}, query.options());       // (B, H, W, L)
  auto stats = at::empty({2, p.pixels(), 2}, query.options().dtype(at::kFloat));
  if (poison()) fill_nan({out, att, stats});
  lines::RawArgs a{};
  a.p = p;
  a.dtype = lines_dtype(dtype);
  a.l2_bytes = planned_l2_bytes();
  a.nchw = nchw;
  a.q = query.const_data_ptr();
  a.k = key.const_data_ptr();
  a.v = value.const_data_ptr();
  a.out = out.data_ptr();
  a.att = att.data_ptr();
  a.stats = stats.data_ptr<float>();
  C10_CUDA_CHECK(lines::forward(a, c10::cuda::getCurrentCUDAStream()));
  return {out, att};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(
    const at::Tensor& grad_out_in, const std::optional<at::Tensor>& grad_att_in,
    const at::Tensor& attention_in, const at::Tensor& query_in, const at::Tensor& key_in,
    const at::Tensor& value_in) {
  check_inputs(query_in, key_in, value_in);
  check_backward(grad_out_in, grad_att_in, attention_in, query_in, value_in);
  const c10::cuda::CUDAGuard guard(query_in.device());
  if (!tiled(query_in, value_in))
    return portable_backward(grad_out_in, grad_att_in, attention_in, query_in, key_in, value_in,
                             CudaLaunch{});
  // grad_out read in the layout it arrives in, NCHW or channels-last (which one depends
  // on the operations after out); one in neither (an expanded gradient, say) is copied
  // to NCHW.
  const bool nchw = reads_nchw(query_in), go_nchw = reads_nchw(grad_out_in);
  const auto query = in_layout(query_in, nchw), key = in_layout(key_in, nchw),
             value = in_layout(value_in, nchw), grad_out = in_layout(grad_out_in, go_nchw);
  const auto attention = attention_in.contiguous();
  at::Tensor grad_att;
  if (grad_att_in.has_value() && grad_att_in->defined()) grad_att = grad_att_in->contiguous();
  const lines::Problem p = problem_of(query, value);
  const auto dtype = query.scalar_type();
  auto grad_query = empty_in_layout(query, p.cqk, dtype, nchw);
  auto grad_key = empty_in_layout(query, p.cqk, dtype, nchw);
  auto grad_value = empty_in_layout(value, p.cv, dtype, nchw);
  auto g = at::empty({p.pixels(), p.slots()}, query.options().dtype(at::kFloat));  // dA
  auto dpart = at::empty({2, p.pixels()}, query.options().dtype(at::kFloat));      // D halves
  if (poison()) fill_nan({grad_query, grad_key, grad_value, g, dpart});
  lines::RawArgs a{};
  a.p = p;
  a.dtype = lines_dtype(dtype);
  a.l2_bytes = planned_l2_bytes();
  a.nchw = nchw;
  a.go_nchw = go_nchw;
  a.q = query.const_data_ptr();
  a.k = key.const_data_ptr();
  a.v = value.const_data_ptr();
  a.grad_out = grad_out.const_data_ptr();
  a.grad_att = grad_att.defined() ? grad_att.const_data_ptr() : nullptr;
  a.att_in = attention.const_data_ptr();
  a.g = g.data_ptr<float>();
  a.dpart = dpart.data_ptr<float>();
  a.grad_q = grad_query.data_ptr();
  a.grad_k = grad_key.data_ptr();
  a.grad_v = grad_value.data_ptr();
  C10_CUDA_CHECK(lines::backward(a, c10::cuda::getCurrentCUDAStream()));
  // In the layouts of the inputs, as the fake kernel and the CPU operator give them.
  return {like_input(grad_query, query_in), like_input(grad_key, key_in),
          like_input(grad_value, value_in)};
}

}  // namespace
}  // namespace ccnet_edu

TORCH_LIBRARY_IMPL(ccnet_edu, CUDA, m) {
  m.impl("criss_cross_attention", &ccnet_edu::forward_cuda);
  m.impl("criss_cross_attention_backward", &ccnet_edu::backward_cuda);
  m.impl("portable_criss_cross_attention", &ccnet_edu::portable_forward_cuda);
  m.impl("portable_criss_cross_attention_backward", &ccnet_edu::portable_backward_cuda);
}
