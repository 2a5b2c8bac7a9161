// C entry points of the CPU emulation of the tiled GPU kernels, for the tests.
//
// tests/test_cuda_emulation.py compiles this file alone with g++ (no torch, no
// CUDA) into a shared library and calls it through ctypes on torch tensors'
// memory: the passes of cca_lines.h, run by cca_lines_host.h's executor, against
// the float64 reference.  The scratch buffers (statistics, dA, D) start as NaN.
//
//   shape: {B, C', C, H, W}; tensors channels-last and contiguous, of dtype
//   0 float32, 1 float16, 2 bfloat16 (the bits, as torch stores them).
//   Returns 0, or -1 when the tiled kernels do not take the problem.
#include <math.h>

#include <vector>

#include "cca_lines_host.h"

namespace lines = ccnet_edu::lines;

namespace {

lines::Problem problem(const int64_t* shape) {
  lines::Problem p;
  p.B = shape[0];
  p.cqk = shape[1];
  p.cv = shape[2];
  p.H = shape[3];
  p.W = shape[4];
  return p;
}

template <class T>
void run(bool backward, const lines::RawArgs& args, bool reverse) {
  lines::HostLaunch launch{reverse};
  if (backward)
    lines::run_backward(launch, lines::make_params<T>(args));
  else
    lines::run_forward(launch, lines::make_params<T>(args));
}

void dispatch(bool backward, const lines::RawArgs& args, bool reverse) {
  switch (args.dtype) {
    case lines::kFloat32: run<float>(backward, args, reverse); break;
    case lines::kFloat16: run<lines::HostHalf>(backward, args, reverse); break;
    default: run<lines::HostBFloat16>(backward, args, reverse); break;
  }
}

}  // namespace

extern "C" {

int cca_lines_supported(const int64_t* shape, int dtype) {
  return lines::tiled_supported(problem(shape), dtype) ? 1 : 0;
}

int64_t cca_lines_smem_bytes(int pass, const int64_t* shape, int dtype) {
  return lines::smem_layout(pass, problem(shape), lines::dtype_bytes(dtype)).bytes;
}

// The CTAs of a pass (dir: the direction of the one-direction passes).
int64_t cca_lines_grid(int pass, int dir, const int64_t* shape) {
  const lines::Problem p = problem(shape);
  switch (pass) {
    case lines::kStats:
    case lines::kBwdDa: return lines::both_grid(p);
    case lines::kAgg: return p.has(dir) ? lines::agg_grid(p, dir) : 0;
    default: return p.has(dir) ? lines::grads_grid(p, dir) : 0;
  }
}

// CTA `id` of a pass: {dir, line, block, chunk, kind}.
void cca_lines_decode(int pass, int dir, const int64_t* shape, int64_t id, int64_t* work) {
  const lines::Problem p = problem(shape);
  lines::Work w = pass == lines::kAgg       ? lines::decode_agg(p, dir, id)
                  : pass == lines::kBwdGrads ? lines::decode_grads(p, dir, id)
                                             : lines::decode_both(p, id);
  work[0] = w.dir;
  work[1] = w.line;
  work[2] = w.block;
  work[3] = w.chunk;
  work[4] = w.kind;
}

float cca_lines_merge_lse(float m_row, float s_row, float m_col, float s_col) {
  return lines::merge_lse(m_row, s_row, m_col, s_col);
}

int cca_lines_forward(int dtype, const int64_t* shape, const void* q, const void* k,
                      const void* v, void* out, void* att, int reverse) {
  const lines::Problem p = problem(shape);
  if (!lines::tiled_supported(p, dtype)) return -1;
  std::vector<float> stats(static_cast<size_t>(4 * p.pixels()), NAN);
  lines::RawArgs a{};
  a.p = p;
  a.dtype = dtype;
  a.q = q;
  a.k = k;
  a.v = v;
  a.out = out;
  a.att = att;
  a.stats = stats.data();
  dispatch(false, a, reverse != 0);
  return 0;
}

int cca_lines_backward(int dtype, const int64_t* shape, const void* grad_out,
                       const void* grad_att, const void* att, const void* q, const void* k,
                       const void* v, void* grad_q, void* grad_k, void* grad_v, int reverse) {
  const lines::Problem p = problem(shape);
  if (!lines::tiled_supported(p, dtype)) return -1;
  std::vector<float> g(static_cast<size_t>(p.pixels() * p.slots()), NAN);
  std::vector<float> dpart(static_cast<size_t>(2 * p.pixels()), NAN);
  lines::RawArgs a{};
  a.p = p;
  a.dtype = dtype;
  a.q = q;
  a.k = k;
  a.v = v;
  a.grad_out = grad_out;
  a.grad_att = grad_att;
  a.att_in = att;
  a.g = g.data();
  a.dpart = dpart.data();
  a.grad_q = grad_q;
  a.grad_k = grad_k;
  a.grad_v = grad_v;
  dispatch(true, a, reverse != 0);
  return 0;
}

}  // extern "C"
