// C entry points of the CPU emulation of the tiled GPU kernels, for the tests.
//
// tests/test_cuda_emulation.py compiles this file alone with g++ (no torch, no
// CUDA) into a shared library and calls it through ctypes on torch tensors'
// memory: the passes of cca_lines.h, run by cca_lines_host.h's executor, against
// the float64 reference.  The scratch buffers (statistics, dA, D) start as NaN.
//
//   shape: {B, C', C, H, W}; tensors contiguous, of dtype 0 float32, 1 float16,
//   2 bfloat16 (the bits, as torch stores them); attention (B, H, W, L), out
//   channels-last (B, H, W, C), the others too, or NCHW with flag 4 (grad_out: 8).
//   flags: 1 runs each pass's CTAs in decreasing order, 2 lands the asynchronous
//   copies when issued instead of at their wait (cca_lines_host.h), 4 NCHW, 8 grad_out
//   NCHW.
//   l2_bytes: the L2 the passes are grouped for (maps and slices, plan_passes);
//   0: all at once.
//   Returns 0, -1 when the tiled kernels do not take the problem (on an sm_90
//   device: kSm90Smem), -2 when a CTA ended with asynchronous copies in flight.
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
int run(bool backward, const lines::RawArgs& args, int flags) {
  lines::HostLaunch launch;
  launch.reverse = (flags & 1) != 0;
  launch.early = (flags & 2) != 0;
  if (backward)
    lines::run_backward(launch, lines::make_params<T>(args), args.l2_bytes);
  else
    lines::run_forward(launch, lines::make_params<T>(args), args.l2_bytes);
  return launch.stray == 0 ? 0 : -2;
}

// The launches a pass order makes, without running them: per launch {pass, direction
// (-1 for a launch over rows and columns), grid, maps, v0, v_end, qk_grads} into `out`,
// as long as `capacity` records last.
struct RecordLaunch {
  int64_t* out;
  int64_t capacity, count = 0;
  template <class T>
  void operator()(int pass, int64_t grid, const lines::Params<T>& prm) {
    if (count < capacity) {
      int64_t* r = out + 7 * count;
      r[0] = pass;
      r[1] = pass == lines::kStats || pass == lines::kBwdDa ? -1 : prm.dir;  // -1: both
      r[2] = grid;
      r[3] = prm.p.B;
      r[4] = prm.p.v0;
      r[5] = prm.p.v_end();
      r[6] = prm.p.qk_grads ? 1 : 0;
    }
    ++count;
  }
};

template <class T>
void record_order(RecordLaunch& record, const lines::RawArgs& args, bool backward) {
  if (backward)
    lines::run_backward(record, lines::make_params<T>(args), args.l2_bytes);
  else
    lines::run_forward(record, lines::make_params<T>(args), args.l2_bytes);
}

int dispatch(bool backward, const lines::RawArgs& args, int flags) {
  switch (args.dtype) {
    case lines::kFloat32: return run<float>(backward, args, flags);
    case lines::kFloat16: return run<lines::HostHalf>(backward, args, flags);
    default: return run<lines::HostBFloat16>(backward, args, flags);
  }
}

}  // namespace

extern "C" {

// Whether the tiled kernels take the problem on a device whose CTAs may have at most
// smem_limit bytes of dynamic shared memory.
int cca_lines_supported(const int64_t* shape, int dtype, int64_t smem_limit) {
  return lines::tiled_supported(problem(shape), dtype, smem_limit) ? 1 : 0;
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

// The groups of the passes: {maps per group, channels per slice, slices, fits, sliced_da}.
void cca_lines_plan(const int64_t* shape, int dtype, int backward, int64_t l2_bytes,
                    int64_t* plan) {
  const lines::Plan p =
      lines::plan_passes(problem(shape), lines::dtype_bytes(dtype), backward != 0, l2_bytes);
  plan[0] = p.maps;
  plan[1] = p.width;
  plan[2] = p.slices;
  plan[3] = p.fits ? 1 : 0;
  plan[4] = p.sliced_da ? 1 : 0;
}

// The launches of the forward (backward = 0) or the backward at an L2 of l2_bytes: writes
// at most `capacity` records of 7 (RecordLaunch) and returns how many launches there are.
int64_t cca_lines_launches(const int64_t* shape, int dtype, int backward, int64_t l2_bytes,
                           int64_t* out, int64_t capacity) {
  lines::RawArgs a{};
  a.p = problem(shape);
  a.dtype = dtype;
  a.l2_bytes = l2_bytes;
  RecordLaunch record{out, capacity};
  switch (dtype) {  // the plan depends on the element size
    case lines::kFloat32: record_order<float>(record, a, backward != 0); break;
    case lines::kFloat16: record_order<lines::HostHalf>(record, a, backward != 0); break;
    default: record_order<lines::HostBFloat16>(record, a, backward != 0); break;
  }
  return record.count;
}

float cca_lines_merge_lse(float m_row, float s_row, float m_col, float s_col) {
  return lines::merge_lse(m_row, s_row, m_col, s_col);
}

int cca_lines_forward(int dtype, const int64_t* shape, const void* q, const void* k,
                      const void* v, void* out, void* att, int flags, int64_t l2_bytes) {
  const lines::Problem p = problem(shape);
  if (!lines::tiled_supported(p, dtype, lines::kSm90Smem)) return -1;
  std::vector<float> stats(static_cast<size_t>(4 * p.pixels()), NAN);
  lines::RawArgs a{};
  a.p = p;
  a.dtype = dtype;
  a.l2_bytes = l2_bytes;
  a.nchw = (flags & 4) != 0;
  a.q = q;
  a.k = k;
  a.v = v;
  a.out = out;
  a.att = att;
  a.stats = stats.data();
  return dispatch(false, a, flags);
}

int cca_lines_backward(int dtype, const int64_t* shape, const void* grad_out,
                       const void* grad_att, const void* att, const void* q, const void* k,
                       const void* v, void* grad_q, void* grad_k, void* grad_v, int flags,
                       int64_t l2_bytes) {
  const lines::Problem p = problem(shape);
  if (!lines::tiled_supported(p, dtype, lines::kSm90Smem)) return -1;
  std::vector<float> g(static_cast<size_t>(p.pixels() * p.slots()), NAN);
  std::vector<float> dpart(static_cast<size_t>(2 * p.pixels()), NAN);
  lines::RawArgs a{};
  a.p = p;
  a.dtype = dtype;
  a.l2_bytes = l2_bytes;
  a.nchw = (flags & 4) != 0;
  a.go_nchw = (flags & 8) != 0;
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
  return dispatch(true, a, flags);
}

}  // extern "C"
