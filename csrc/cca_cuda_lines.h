// The tiled criss-cross kernels' entry points (cca_cuda_lines.cu), for the torch
// side (cca_cuda.cu): raw pointers and a stream, no torch types.
#pragma once

#include <cuda_runtime_api.h>

#include "cca_lines.h"

namespace ccnet_edu {
namespace lines {

// The forward's three passes: out, att and stats (scratch) from q, k, v.
cudaError_t forward(const RawArgs& args, cudaStream_t stream);
// The backward's three passes: grad_q, grad_k, grad_v, g and dpart (scratch) from
// grad_out, grad_att (may be null), att_in, q, k, v.
cudaError_t backward(const RawArgs& args, cudaStream_t stream);

}  // namespace lines
}  // namespace ccnet_edu
