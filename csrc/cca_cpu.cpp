// Criss-cross attention on the CPU, and the operator's registration.
//
// Every step of the operator, forward and backward, is a small matrix product
// over one line of the map -- a row i or a column j -- computed while that
// line's data sits in L1/L2.  A line of a (B, C, H, W) map is a matrix of pixel
// vectors: X_i is row i, (W x C), and X_j is column j, (H x C).  Of the H + W - 1
// attention slots of a pixel, the row slots of row i form a (W x W) matrix A_i,
// and the column slots of column j an (H x H) matrix A_j with a zero diagonal
// (the centre belongs to the row).  The work is a few parallel sweeps over the
// lines; each sweep writes disjoint pixels, so there are no atomics on the
// outputs and no per-thread copies of them.  The threads take a sweep's lines a
// chunk at a time (parallel_lines).
//
//   forward                       per line
//   1 column_energies  columns j  E_j  = Q_j K_j^T               (H x H)
//   2 row_energies     rows i     E_i  = Q_i K_i^T               (W x W)
//     softmax          the pixels of row i, all H + W - 1 energies known: A = softmax(E)
//   3 column_aggregate columns j  O_j  = A_j V_j                 (H x C)
//   4 row_aggregate    rows i     O_i += A_i V_i                 (W x C)
//
//   backward  (dX = dL/dX; dA arrives from out, plus grad_attention when given)
//   1 row_gradients_of_attention   rows i     dA_i = dO_i V_i^T,  dV_i = A_i^T dO_i
//   2 column_gradients             columns j  dA_j = dO_j V_j^T;
//       softmax_backward           the pixels of column j: dE = A (dA - sum A dA);
//                                             dQ_j = dE_j K_j,  dK_j = dE_j^T Q_j,
//                                             dV_j += A_j^T dO_j
//   3 row_gradients                rows i     dQ_i += dE_i K_i,  dK_i += dE_i^T Q_i
//
// Each product is line_product() and each layout change copy(), the kernels of
// cca_cpu_kernels.h; cca_simd.h says which vector instructions they compile to.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <string>
#include <tuple>
#include <vector>

#include "cca_common.h"
#include "cca_cpu_kernels.h"
#include "cca_cpu_phases.h"
#include "cca_portable.h"

namespace ccnet_edu {
namespace {

using cpu::dense_matrix;
using cpu::Matrix;
using phases::Laps;

// ------------------------------------------------------------------- views

// A (B, C, H, W) feature map read or written through its strides, so the sweeps
// work in the caller's layout (NCHW from a convolution, channels-last, a crop)
// without whole-tensor copies.
template <typename T>
struct FeatureMap {
  T* data;
  int64_t channels, height, width;
  int64_t batch_stride, channel_stride, row_stride, col_stride;

  // Row i of image b: (W x C), pixel j by channel c.
  Matrix<T> row(int64_t b, int64_t i) const {
    return {data + b * batch_stride + i * row_stride, width, channels, col_stride, channel_stride};
  }
  // Column j of image b: (H x C), pixel i by channel c.
  Matrix<T> column(int64_t b, int64_t j) const {
    return {data + b * batch_stride + j * col_stride, height, channels, row_stride, channel_stride};
  }
  bool channels_contiguous() const { return channel_stride == 1; }
};

template <typename T>
FeatureMap<T> feature_map(const at::Tensor& t) {
  return {t.data_ptr<std::remove_const_t<T>>(), t.size(1), t.size(2), t.size(3),
          t.stride(0),  t.stride(1),           t.stride(2), t.stride(3)};
}

// The slots of every pixel, (B, H, W, L) with L = H + W - 1 (energies, then
// attention): slot l < W of pixel (i, j) is pixel (i, l) of its row, slot
// W + n is pixel (column_row(n, i), j) of its column.
template <typename T>
struct Slots {
  T* data;
  int64_t height, width;

  int64_t count() const { return height + width - 1; }
  T* pixel(int64_t b, int64_t i, int64_t j) const {
    return data + ccnet_edu::pixel(b, i, j, height, width) * count();
  }
  // The row slots of row i: (W x W), pixel j by slot j2.
  Matrix<T> row_part(int64_t b, int64_t i) const {
    return {pixel(b, i, 0), width, width, count(), 1};
  }
  // The column slots of column j: (H x H - 1), pixel i by slot n.
  Matrix<T> column_part(int64_t b, int64_t j) const {
    return {pixel(b, 0, j) + width, height, height - 1, width * count(), 1};
  }
};

template <typename T>
Slots<T> slots(const at::Tensor& t) {
  return {t.data_ptr<std::remove_const_t<T>>(), t.size(1), t.size(2)};
}

// The row slots alone, (B, H, W, W): the backward keeps the row half of dA (then of
// dE) here between its sweeps; the column half lives only in the column sweep.
template <typename T>
struct RowSlots {
  T* data;
  int64_t height, width;

  T* pixel(int64_t b, int64_t i, int64_t j) const {
    return data + ccnet_edu::pixel(b, i, j, height, width) * width;
  }
  // Row i: (W x W), pixel j by slot j2.
  Matrix<T> row(int64_t b, int64_t i) const { return dense_matrix(pixel(b, i, 0), width, width); }
};

// ------------------------------------------------------- the column slots

// The column slots of a column as the dense (H x H) matrix A_j, zero on the
// diagonal: dense(i, i2) = slots(i, slot of row i2).  Row i is two runs of
// consecutive slots around the zero: rows i2 < i sit in slots i2, rows i2 > i
// from slot i on.
template <typename T>
void column_slots_to_dense(Matrix<T> dense, cpu::In<T> slots) {
  const int64_t H = dense.rows;
  for (int64_t i = 0; i < H; ++i) {
    const T* from = slots.row(i);
    T* to = dense.row(i);
    std::copy(from, from + i, to);
    to[i] = T(0);
    std::copy(from + i, from + H - 1, to + i + 1);
  }
}

// The inverse: the off-diagonal entries of a dense (H x H) matrix into the slots.
template <typename T>
void dense_to_column_slots(Matrix<T> slots, cpu::In<T> dense) {
  const int64_t H = dense.rows;
  for (int64_t i = 0; i < H; ++i) {
    const T* from = dense.row(i);
    T* to = slots.row(i);
    std::copy(from, from + i, to);
    std::copy(from + i + 1, from + H, to + i);
  }
}

// Lines per task: enough multiply-adds per task (~2^18) that a small map runs on
// one thread instead of paying a parallel region per sweep.
inline int64_t line_grain(int64_t fmas_per_line) {
  return std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, fmas_per_line));
}

// A thread's next chunk is the lines left over this many times the number of
// threads (see parallel_lines).
constexpr int64_t kShareDivisor = 4;

// f(begin, end) over the lines [0, n) of a sweep, on torch's threads: each thread
// takes the next chunk of lines from a shared counter whenever it is free, instead
// of one fixed share each.  On a machine whose cores are shared, a thread that the
// system holds up then leaves its unclaimed chunks to the others, and the sweep does
// not wait for its whole share at the end.  The chunks shrink as the sweep goes on
// (guided scheduling): each is the lines left / (kShareDivisor * tasks), at least
// `grain` lines, rounded up to a multiple of `align`.  The first is a quarter of a
// thread's share, so a held-up thread delays the sweep by no more than that, and
// the last ones, which the other threads wait for at the end, are a line (or an
// `align` group) each.  Which thread computes a line changes none of its bits.  A
// map of at most `grain` lines, one thread, or a call from inside a parallel region
// runs f(0, n) on the calling thread.
template <typename F>
void parallel_lines(int64_t n, int64_t grain, int64_t align, const F& f) {
  const int64_t threads = at::get_num_threads();
  if (n <= 0) return;
  if (n <= grain || threads == 1 || at::in_parallel_region()) return f(int64_t(0), n);
  const int64_t tasks = std::min(threads, (n + grain - 1) / grain);
  const int64_t shares = kShareDivisor * tasks;
  const auto chunk_at = [&](int64_t begin) {
    const int64_t chunk = std::max(grain, (n - begin + shares - 1) / shares);
    return (chunk + align - 1) / align * align;
  };
  std::atomic<int64_t> next{0};
  at::parallel_for(0, tasks, 1, [&](int64_t, int64_t) {
    int64_t begin = next.load();
    for (;;) {
      if (begin >= n) return;
      const int64_t end = std::min(n, begin + chunk_at(begin));
      if (next.compare_exchange_weak(begin, end)) {  // else begin is the counter now
        f(begin, end);
        begin = next.load();
      }
    }
  });
}

// The dtype the kernels compute in: double for double, float for float, half
// and bfloat16 (whose values float holds exactly).
at::ScalarType compute_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// query and key (one shape and dtype) in the compute dtype, channels-last: each
// itself when it is one, else a copy made row by row with copy() (at::contiguous
// goes through a generic strided copy); the copies of both in one parallel sweep.
std::array<at::Tensor, 2> channels_last_cpu(const at::Tensor& query, const at::Tensor& key) {
  const auto compute = compute_dtype(query.scalar_type());
  const std::array<at::Tensor, 2> in{query.to(compute), key.to(compute)};
  std::array<at::Tensor, 2> out = in;
  std::vector<int> copies;  // which of the two need a copy
  for (int k = 0; k < 2; ++k)
    if (!in[k].is_contiguous(at::MemoryFormat::ChannelsLast)) {
      out[k] = empty_channels_last(in[k], in[k].size(1), compute);
      copies.push_back(k);
    }
  if (copies.empty()) return out;
  AT_DISPATCH_FLOATING_TYPES(compute, "cca_channels_last", [&] {
    const int64_t B = query.size(0), H = query.size(2), C = query.size(1), W = query.size(3);
    const int64_t rows = B * H, n = static_cast<int64_t>(copies.size()) * rows;
    parallel_lines(n, line_grain(W * C), 1, [&](int64_t begin, int64_t end) {
      for (int64_t line = begin; line < end; ++line) {
        const int k = copies[line / rows];
        const int64_t b = line % rows / H, i = line % H;
        const auto to = feature_map<scalar_t>(out[k]);
        cpu::copy(to.row(b, i), feature_map<const scalar_t>(in[k]).row(b, i));
      }
    });
  });
  return out;
}

// ------------------------------------------------------------------ forward

template <typename T>
struct Forward {
  FeatureMap<const T> query, key;  // (B, C', H, W), channels-last
  FeatureMap<const T> value;       // (B, C, H, W), any layout
  Slots<T> attention;              // (B, H, W, L): energies, then affinities
  FeatureMap<T> out;               // (B, C, H, W), channels-last
  int64_t batch;
};

// 1. E_j = Q_j K_j^T for every column; the off-diagonal entries are the column slots.
template <typename T>
void column_energies(const Forward<T>& f) {
  const int64_t H = f.query.height, W = f.query.width, Ck = f.query.channels;
  parallel_lines(f.batch * W, line_grain(H * H * Ck), 1, [&](int64_t begin, int64_t end) {
    Laps laps;
    std::vector<T> energy(H * H);
    for (int64_t line = begin; line < end; ++line) {
      const int64_t b = line / W, j = line % W;
      const auto energy_j = dense_matrix(energy.data(), H, H);
      cpu::line_product(energy_j, f.query.column(b, j), f.key.column(b, j).transposed(), false);
      laps.lap(phases::kForwardEnergies);
      dense_to_column_slots(f.attention.column_part(b, j), energy_j);
      laps.lap(phases::kForwardLayout);
    }
  });
}

// 2. E_i = Q_i K_i^T for every row; then every pixel of the row has all its
// energies, and softmax turns them into affinities.  A value whose channels are
// not contiguous (NCHW) has its row i copied channels-last into row i of out,
// where column_aggregate reads it (see forward_lines).
template <typename T>
void row_energies_and_softmax(const Forward<T>& f) {
  const int64_t H = f.query.height, W = f.query.width, Ck = f.query.channels;
  const int64_t L = f.attention.count();
  const bool park_value = !f.value.channels_contiguous();
  parallel_lines(f.batch * H, line_grain(W * W * Ck), 1, [&](int64_t begin, int64_t end) {
    Laps laps;
    for (int64_t line = begin; line < end; ++line) {
      const int64_t b = line / H, i = line % H;
      cpu::line_product(f.attention.row_part(b, i), f.query.row(b, i),
                        f.key.row(b, i).transposed(), false);
      laps.lap(phases::kForwardEnergies);
      for (int64_t j = 0; j < W; ++j) cpu::softmax(f.attention.pixel(b, i, j), L);
      laps.lap(phases::kForwardSoftmax);
      if (park_value) cpu::copy(f.out.row(b, i), f.value.row(b, i));
      laps.lap(phases::kForwardLayout);
    }
  });
}

// 3. O_j = A_j V_j for every column (A_j dense, zero diagonal).  V_j is read
// from out when value was parked there; O_j then overwrites it.
template <typename T>
void column_aggregate(const Forward<T>& f) {
  const int64_t H = f.query.height, W = f.query.width, Cv = f.value.channels;
  const bool parked = !f.value.channels_contiguous();
  parallel_lines(f.batch * W, line_grain(H * H * Cv), 1, [&](int64_t begin, int64_t end) {
    Laps laps;
    std::vector<T> dense(H * H);
    for (int64_t line = begin; line < end; ++line) {
      const int64_t b = line / W, j = line % W;
      const auto attention_j = dense_matrix(dense.data(), H, H);
      column_slots_to_dense(attention_j, f.attention.column_part(b, j));
      laps.lap(phases::kForwardLayout);
      const Matrix<const T> value_j = parked ? f.out.column(b, j) : f.value.column(b, j);
      cpu::line_product(f.out.column(b, j), attention_j, value_j, false);
      laps.lap(phases::kForwardAggregation);
    }
  });
}

// 4. O_i += A_i V_i for every row (V_i read in place, in any layout).
template <typename T>
void row_aggregate(const Forward<T>& f) {
  const int64_t H = f.query.height, W = f.query.width, Cv = f.value.channels;
  parallel_lines(f.batch * H, line_grain(W * W * Cv), 1, [&](int64_t begin, int64_t end) {
    Laps laps;
    for (int64_t line = begin; line < end; ++line) {
      const int64_t b = line / H, i = line % H;
      cpu::line_product(f.out.row(b, i), f.attention.row_part(b, i), f.value.row(b, i), true);
    }
    laps.lap(phases::kForwardAggregation);
  });
}

// value is read through its strides.  When its channels are contiguous its
// lines are (pixels x C) matrices in place.  Any other layout (NCHW from a
// convolution) needs them channels-last, and a whole-tensor copy would be a
// (B, H, W, C) buffer of fresh memory on every call (18.4 MiB at the paper's size;
// 64 MiB at 128 x 256, where every page of it costs a page fault).  out is that
// buffer: row_energies_and_softmax parks each row of value in out,
// channels-last; column_aggregate reads column j of it and overwrites it with
// O_j (no other column needs column j's values; line_product reads each block
// of it before writing that block); row_aggregate reads the rows of value in
// place again (line_product transposes them into its panels) and adds A_i V_i.
template <typename T>
void forward_lines(const Forward<T>& f) {
  Laps laps;
  column_energies(f);
  row_energies_and_softmax(f);
  column_aggregate(f);
  row_aggregate(f);
  laps.lap(phases::kForwardSweeps);
}

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& query_in,
                                               const at::Tensor& key_in,
                                               const at::Tensor& value_in) {
  Laps laps;
  check_inputs(query_in, key_in, value_in);
  const auto dtype = query_in.scalar_type(), compute = compute_dtype(dtype);
  const auto query_key = channels_last_cpu(query_in, key_in);
  const at::Tensor &query = query_key[0], &key = query_key[1];
  const auto value = value_in.to(compute);
  const int64_t B = query.size(0), H = query.size(2), W = query.size(3);
  auto attention = at::empty({B, H, W, H + W - 1}, query.options());
  auto out = empty_channels_last(value, value.size(1), compute);
  AT_DISPATCH_FLOATING_TYPES(compute, "cca_forward_cpu", [&] {
    forward_lines(Forward<scalar_t>{feature_map<const scalar_t>(query),
                                    feature_map<const scalar_t>(key),
                                    feature_map<const scalar_t>(value), slots<scalar_t>(attention),
                                    feature_map<scalar_t>(out), B});
  });
  auto result = std::make_tuple(out.to(dtype), attention.to(dtype));
  laps.lap(phases::kForwardCall);
  return result;
}

// ----------------------------------------------------------------- backward

// Columns of an NCHW tensor are gathered in groups of up to kGroup: a column has
// its pixels W apart, so a column at a time would use 4 bytes of every 64-byte
// cache line it loads; a group of 16 uses all of them.
constexpr int64_t kGroup = 16;
// gather_columns reads a group's 64 bytes from every row of one channel plane after
// another (each read two cache lines when the rows are not aligned to them); while
// it transposes one plane it asks for the lines of the plane this many planes
// ahead, so that their loads from memory overlap the work instead of stalling it.
constexpr int64_t kPrefetchPlanes = 2;

template <typename T>
struct Backward {
  FeatureMap<const T> grad_out;                    // dO, any layout
  const T* grad_attention;                         // (B, H, W, L) from attention's output, or null
  Slots<const T> attention;                        // (B, H, W, L)
  FeatureMap<const T> query, key;                  // channels-last
  FeatureMap<const T> value;                       // any layout
  RowSlots<T> grad_energy;  // the row half of dA, turned into dE in place (column_gradients)
  FeatureMap<T> grad_query_cl, grad_key_cl;        // channels-last sums of the two parts
  FeatureMap<T> grad_query, grad_key, grad_value;  // in the layouts of the inputs
  T* panels;            // per thread: column panels, (C x H) each (see column_gradients)
  int64_t panel_slots;  // threads that have a set of panels
  int64_t batch;
};

// What column_gradients gathers into panels: columns of value and of dO whose
// pixels are W apart (NCHW), and the dV_j^T to be added into such a grad_value.
struct Panels {
  bool value, grad_out, grad_value;  // each: its column stride (pixel to pixel) is 1
  // One set of (C x H) panels for value (and for dV^T, which takes value's place
  // once it is read), one for dO.
  int64_t sets() const { return (value || grad_value ? 1 : 0) + (grad_out ? 1 : 0); }
};

// 1. For every row: the row half of dA, dA_i = dO_i V_i^T, and dV_i = A_i^T dO_i,
// which needs only A and dO, written into grad_value.  dO and V are read in place
// (line_product first copies a dO row whose channels lie a multiple of 1 KiB apart into
// dense rows when dA_i spans more than eight column blocks; see line_product).
template <typename T>
void row_gradients_of_attention(const Backward<T>& g) {
  const int64_t H = g.value.height, W = g.value.width, Cv = g.value.channels;
  parallel_lines(g.batch * H, line_grain(2 * W * W * Cv), 1, [&](int64_t begin, int64_t end) {
    Laps laps;
    for (int64_t line = begin; line < end; ++line) {
      const int64_t b = line / H, i = line % H;
      const auto grad_out_i = g.grad_out.row(b, i);  // (W x C)
      cpu::line_product(g.grad_energy.row(b, i), grad_out_i, g.value.row(b, i).transposed(),
                        false);
      laps.lap(phases::kBackwardGradAttention);
      cpu::line_product(g.grad_value.row(b, i), g.attention.row_part(b, i).transposed(),
                        grad_out_i, false);
      laps.lap(phases::kBackwardGradValue);
    }
  });
}

// Columns j0 .. j0 + n_cols of an NCHW map, as (C x H) panels V_j^T at
// panels + jj * panel: each channel plane's (H x n_cols) block, transposed.  With
// kAdd the other way round: the panels added into the map's columns.
template <bool kAdd, typename Map, typename T>
void gather_columns(const Map& map, int64_t b, int64_t j0, int64_t n_cols, T* panels) {
  const int64_t H = map.height, C = map.channels, panel = C * H;
  for (int64_t c = 0; c < C; ++c) {
    if (c + kPrefetchPlanes < C) {
      const auto* ahead = map.column(b, j0).data + (c + kPrefetchPlanes) * map.channel_stride;
      for (int64_t i = 0; i < H; ++i) {
        __builtin_prefetch(ahead + i * map.row_stride, kAdd ? 1 : 0);
        __builtin_prefetch(ahead + i * map.row_stride + n_cols - 1, kAdd ? 1 : 0);
      }
    }
    const Matrix<T> in_panels{panels + c * H, H, n_cols, 1, panel};
    const auto plane = Matrix<std::remove_pointer_t<decltype(map.data)>>{
        map.column(b, j0).data + c * map.channel_stride, H, n_cols, map.row_stride, 1};
    if constexpr (kAdd)
      cpu::copy<true>(plane, in_panels);
    else
      cpu::copy(in_panels, plane);
  }
}

// 2. For every column: the column half of dA, dA_j = dO_j V_j^T; then every
// pixel of the column has its whole dA, and the softmax backward turns it into
// dE; the column parts dQ_j = dE_j K_j and dK_j = dE_j^T Q_j (into the
// channels-last sums) and dV_j = A_j^T dO_j, added into grad_value.
//
// A pixel's dA is put together in a buffer of L values that stays in L1, in the
// order of its attention slots (row half from grad_energy, column half from
// row i of the dense dA_j); the softmax backward runs there, and dE goes back to
// the same two places: the row half for row_gradients, the column half into the
// dense dE_j that the column products read (its diagonal, the centre, is zero).
// The dense A_j of dV_j = A_j^T dO_j is filled in the same loop, from the pixels'
// attention that the softmax backward has just read.
//
// Columns of an NCHW value and dO are gathered, a group at a time, into
// per-thread (C x H) panels V_j^T and dO_j^T; other layouts are read in place.
// An NCHW grad_value gets dV_j^T in V_j^T's panel once dA_j has read it, and the
// group's panels are added into its columns at the end.
template <typename T>
void column_gradients(const Backward<T>& g) {
  const int64_t H = g.value.height, W = g.value.width, Cv = g.value.channels;
  const int64_t L = g.attention.count(), panel = Cv * H;
  const Panels gather{g.value.col_stride == 1, g.grad_out.col_stride == 1,
                      g.grad_value.col_stride == 1};
  parallel_lines(g.batch * W, line_grain(H * H * (2 * Cv + 2 * g.query.channels)), kGroup,
                 [&](int64_t begin, int64_t end) {
    Laps laps;
    const int64_t slot = g.panel_slots == 1 ? 0 : at::get_thread_num();
    TORCH_INTERNAL_ASSERT(slot < g.panel_slots, "criss_cross_attention_backward: scratch slot");
    T* first_set = gather.sets() > 0 ? g.panels + slot * gather.sets() * kGroup * panel : nullptr;
    T* value_panels = gather.value || gather.grad_value ? first_set : nullptr;
    T* grad_out_panels =
        gather.grad_out ? first_set + (value_panels ? kGroup * panel : 0) : nullptr;
    std::vector<T> grad_energy_dense(H * H), attention_dense(H * H), pixel_grad(L);
    for (int64_t first = begin; first < end;) {
      const int64_t b = first / W, j0 = first % W;
      const int64_t n_cols = std::min({kGroup, end - first, W - j0});
      if (gather.value) gather_columns<false>(g.value, b, j0, n_cols, value_panels);
      if (gather.grad_out) gather_columns<false>(g.grad_out, b, j0, n_cols, grad_out_panels);
      laps.lap(phases::kBackwardLayout);
      for (int64_t jj = 0; jj < n_cols; ++jj) {
        const int64_t j = j0 + jj;
        const Matrix<const T> value_j_t =  // V_j^T, (C x H)
            gather.value ? dense_matrix<const T>(value_panels + jj * panel, Cv, H)
                         : g.value.column(b, j).transposed();
        const Matrix<const T> grad_out_j =  // dO_j, (H x C)
            gather.grad_out
                ? dense_matrix<const T>(grad_out_panels + jj * panel, Cv, H).transposed()
                : g.grad_out.column(b, j);
        const auto grad_energy_j = dense_matrix(grad_energy_dense.data(), H, H);
        // dA_j (its diagonal, the centre, is the row half's and is dropped)
        cpu::line_product(grad_energy_j, grad_out_j, value_j_t, false);
        laps.lap(phases::kBackwardGradAttention);
        T* grad = pixel_grad.data();
        const auto attention_j = dense_matrix(attention_dense.data(), H, H);
        for (int64_t i = 0; i < H; ++i) {
          T* row_half = g.grad_energy.pixel(b, i, j);
          T* column_half = grad_energy_j.row(i);
          std::copy(row_half, row_half + W, grad);
          std::copy(column_half, column_half + i, grad + W);
          std::copy(column_half + i + 1, column_half + H, grad + W + i);
          if (g.grad_attention != nullptr) {
            const T* extra = g.grad_attention + pixel(b, i, j, H, W) * L;
            for (int64_t l = 0; l < L; ++l) grad[l] += extra[l];
          }
          const T* attention = g.attention.pixel(b, i, j);
          cpu::softmax_backward(attention, grad, L);  // dA -> dE
          std::copy(grad, grad + W, row_half);
          std::copy(grad + W, grad + W + i, column_half);
          column_half[i] = T(0);
          std::copy(grad + W + i, grad + L, column_half + i + 1);
          // Row i of the dense A_j (as column_slots_to_dense), while the pixel is in L1.
          T* attention_row = attention_j.row(i);
          std::copy(attention + W, attention + W + i, attention_row);
          attention_row[i] = T(0);
          std::copy(attention + W + i, attention + L, attention_row + i + 1);
        }
        laps.lap(phases::kBackwardSoftmax);
        cpu::line_product(g.grad_query_cl.column(b, j), grad_energy_j, g.key.column(b, j), false);
        cpu::line_product(g.grad_key_cl.column(b, j), grad_energy_j.transposed(),
                          g.query.column(b, j), false);
        laps.lap(phases::kBackwardGradQueryKey);
        if (gather.grad_value)  // V_j^T has been read: its panel takes dV_j^T
          cpu::line_product(dense_matrix(value_panels + jj * panel, Cv, H).transposed(),
                            attention_j.transposed(), grad_out_j, false);
        else
          cpu::line_product(g.grad_value.column(b, j), attention_j.transposed(), grad_out_j, true);
        laps.lap(phases::kBackwardGradValue);
      }
      if (gather.grad_value) gather_columns<true>(g.grad_value, b, j0, n_cols, value_panels);
      laps.lap(phases::kBackwardLayout);
      first += n_cols;
    }
  });
}

// 3. For every row: the row parts dQ_i += dE_i K_i and dK_i += dE_i^T Q_i; dQ and
// dK copied into the layouts of query and key.
template <typename T>
void row_gradients(const Backward<T>& g) {
  const int64_t H = g.value.height, W = g.value.width, Ck = g.query.channels;
  parallel_lines(g.batch * H, line_grain(2 * W * W * Ck), 1, [&](int64_t begin, int64_t end) {
    Laps laps;
    for (int64_t line = begin; line < end; ++line) {
      const int64_t b = line / H, i = line % H;
      const Matrix<const T> grad_energy_i = g.grad_energy.row(b, i);
      cpu::line_product(g.grad_query_cl.row(b, i), grad_energy_i, g.key.row(b, i), true);
      cpu::line_product(g.grad_key_cl.row(b, i), grad_energy_i.transposed(), g.query.row(b, i),
                        true);
      laps.lap(phases::kBackwardGradQueryKey);
      cpu::copy(g.grad_query.row(b, i), g.grad_query_cl.row(b, i));
      cpu::copy(g.grad_key.row(b, i), g.grad_key_cl.row(b, i));
      laps.lap(phases::kBackwardLayout);
    }
  });
}

template <typename T>
void backward_lines(const Backward<T>& g) {
  Laps laps;
  row_gradients_of_attention(g);
  column_gradients(g);
  row_gradients(g);
  laps.lap(phases::kBackwardSweeps);
}

// Gradients come back in the layout of the inputs they belong to (empty_like:
// NCHW for NCHW inputs), so autograd does not copy them into it.
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& grad_out_in, const std::optional<at::Tensor>& grad_attention_in,
    const at::Tensor& attention_in, const at::Tensor& query_in, const at::Tensor& key_in,
    const at::Tensor& value_in) {
  Laps laps;
  check_inputs(query_in, key_in, value_in);
  check_backward(grad_out_in, grad_attention_in, attention_in, query_in, value_in);
  const auto dtype = query_in.scalar_type(), compute = compute_dtype(dtype);
  const auto query_key = channels_last_cpu(query_in, key_in);
  const at::Tensor &query = query_key[0], &key = query_key[1];
  const auto value = value_in.to(compute), grad_out = grad_out_in.to(compute);
  const auto attention = attention_in.to(compute).contiguous();
  at::Tensor grad_attention;
  if (grad_attention_in.has_value() && grad_attention_in->defined())
    grad_attention = grad_attention_in->to(compute).contiguous();
  const int64_t B = query.size(0), Ck = query.size(1), Cv = value.size(1);
  const int64_t H = query.size(2), W = query.size(3), L = H + W - 1;
  // Inside somebody else's parallel region the sweeps run inline, on one thread.
  const int64_t panel_slots = at::in_parallel_region() ? 1 : at::get_num_threads();

  const auto options = query.options();
  auto grad_energy = at::empty({B, H, W, W}, options);
  auto grad_query_cl = empty_channels_last(query, Ck, compute);
  auto grad_key_cl = empty_channels_last(query, Ck, compute);
  auto grad_query = at::empty_like(query_in, options);
  auto grad_key = at::empty_like(key_in, options);
  auto grad_value = at::empty_like(value_in, options);
  const Panels gather{value.stride(3) == 1, grad_out.stride(3) == 1, grad_value.stride(3) == 1};
  // A torch tensor, so that memory measurements see it.
  auto panels = at::empty({panel_slots * gather.sets() * kGroup * Cv * H}, options);
  AT_DISPATCH_FLOATING_TYPES(compute, "cca_backward_cpu", [&] {
    using T = scalar_t;
    backward_lines(Backward<T>{
        feature_map<const T>(grad_out),
        grad_attention.defined() ? grad_attention.const_data_ptr<T>() : nullptr,
        slots<const T>(attention), feature_map<const T>(query), feature_map<const T>(key),
        feature_map<const T>(value), RowSlots<T>{grad_energy.data_ptr<T>(), H, W}, feature_map<T>(grad_query_cl),
        feature_map<T>(grad_key_cl), feature_map<T>(grad_query), feature_map<T>(grad_key),
        feature_map<T>(grad_value), panels.data_ptr<T>(), panel_slots, B});
  });
  auto result = std::make_tuple(grad_query.to(dtype), grad_key.to(dtype), grad_value.to(dtype));
  laps.lap(phases::kBackwardCall);
  return result;
}

// ------------------------------------------------------------ phase clocks

// The phase clocks (cca_cpu_phases.h): their sums since the last call, in
// nanoseconds of thread time (float64, one per phase), and the phases' names;
// the sums restart from zero, and the clocks run from now on when `enable`.
std::tuple<at::Tensor, std::vector<std::string>> cpu_phase_times(bool enable) {
  auto times = at::empty({phases::kCount}, at::TensorOptions().dtype(at::kDouble));
  std::vector<std::string> names;
  for (int p = 0; p < phases::kCount; ++p) {
    times[p] = static_cast<double>(phases::totals()[p].exchange(0, std::memory_order_relaxed));
    names.emplace_back(phases::kNames[p]);
  }
  phases::enabled().store(enable, std::memory_order_relaxed);
  return {times, names};
}

// ------------------------------------------------- the portable path on CPU

struct CpuLaunch {
  template <class F>
  void operator()(int64_t n, const F& f) const {
    at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t idx = begin; idx < end; ++idx) f(idx);
    });
  }
};

std::tuple<at::Tensor, at::Tensor> portable_forward_cpu(const at::Tensor& query,
                                                        const at::Tensor& key,
                                                        const at::Tensor& value) {
  return portable_forward(query, key, value, CpuLaunch{});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> portable_backward_cpu(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_att,
    const at::Tensor& attention, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value) {
  return portable_backward(grad_out, grad_att, attention, query, key, value, CpuLaunch{});
}

}  // namespace
}  // namespace ccnet_edu

// The schemas.  Autograd and the fake (meta) kernels are registered from
// Python (ccnet_edu/ops/__init__.py) with torch.library.
TORCH_LIBRARY(ccnet_edu, m) {
  m.def("criss_cross_attention(Tensor query, Tensor key, Tensor value) -> (Tensor, Tensor)");
  m.def(
      "criss_cross_attention_backward(Tensor grad_out, Tensor? grad_attention, "
      "Tensor attention, Tensor query, Tensor key, Tensor value) -> (Tensor, Tensor, Tensor)");
  // No tensor argument to dispatch on: one kernel for every dispatch key.
  m.def("cpu_phase_times(bool enable) -> (Tensor, str[])", &ccnet_edu::cpu_phase_times);
  // What the CUDA build runs, executed on the CPU (for tests; no autograd).
  m.def("portable_criss_cross_attention(Tensor query, Tensor key, Tensor value) -> (Tensor, Tensor)");
  m.def(
      "portable_criss_cross_attention_backward(Tensor grad_out, Tensor? grad_attention, "
      "Tensor attention, Tensor query, Tensor key, Tensor value) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(ccnet_edu, CPU, m) {
  m.impl("criss_cross_attention", &ccnet_edu::forward_cpu);
  m.impl("criss_cross_attention_backward", &ccnet_edu::backward_cpu);
  m.impl("portable_criss_cross_attention", &ccnet_edu::portable_forward_cpu);
  m.impl("portable_criss_cross_attention_backward", &ccnet_edu::portable_backward_cpu);
}
