// The tiled criss-cross kernels (cca_lines.h on cca_lines_cuda.h's executor), for
// float32, float16 and bfloat16.  No torch headers: tests/test_cuda_static.py
// compiles this very file for sm_80 and sm_90 and reads the compiler's report
// (no spills, no stack frame) and the machine code (the tensor-core instructions).
#include "cca_cuda_lines.h"
#include "cca_lines_cuda.h"

namespace ccnet_edu {
namespace lines {
namespace {

template <class T>
cudaError_t forward_as(const RawArgs& args, cudaStream_t stream) {
  GpuLaunch launch{stream};
  run_forward(launch, make_params<T>(args), args.l2_bytes);
  return launch.error;
}

template <class T>
cudaError_t backward_as(const RawArgs& args, cudaStream_t stream) {
  GpuLaunch launch{stream};
  run_backward(launch, make_params<T>(args), args.l2_bytes);
  return launch.error;
}

}  // namespace

cudaError_t forward(const RawArgs& args, cudaStream_t stream) {
  switch (args.dtype) {
    case kFloat32: return forward_as<float>(args, stream);
    case kFloat16: return forward_as<__half>(args, stream);
    case kBFloat16: return forward_as<__nv_bfloat16>(args, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t backward(const RawArgs& args, cudaStream_t stream) {
  switch (args.dtype) {
    case kFloat32: return backward_as<float>(args, stream);
    case kFloat16: return backward_as<__half>(args, stream);
    case kBFloat16: return backward_as<__nv_bfloat16>(args, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace lines
}  // namespace ccnet_edu
