// The portable operator: the element bodies of cca_common.h run by a launcher.
//
//   Launch(n, f) runs f(idx) for every idx in [0, n)
//     CPU  : at::parallel_for over idx            (cca_cpu.cpp, CpuLaunch)
//     CUDA : one thread per idx, grid-stride loop  (cca_cuda.cu, CudaLaunch)
//
// Everything that is not "where do the threads come from" lives here, so the
// GPU's portable operator is this file plus a launch configuration, and the CPU
// tests of the portable operator check its arithmetic and orchestration.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <optional>
#include <tuple>

#include "cca_common.h"

namespace ccnet_edu {

// ------------------------------------------------------------ shared helpers

inline void check_inputs(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value) {
  TORCH_CHECK(query.dim() == 4 && key.dim() == 4 && value.dim() == 4,
              "criss_cross_attention: query, key and value must be (B, C, H, W), got ",
              query.sizes(), ", ", key.sizes(), ", ", value.sizes());
  TORCH_CHECK(query.sizes() == key.sizes(), "criss_cross_attention: query ", query.sizes(),
              " and key ", key.sizes(), " must have the same shape");
  TORCH_CHECK(value.size(0) == query.size(0) && value.size(2) == query.size(2) &&
                  value.size(3) == query.size(3),
              "criss_cross_attention: value ", value.sizes(), " must share B, H, W with query ",
              query.sizes());
  TORCH_CHECK(query.size(2) >= 1 && query.size(3) >= 1,
              "criss_cross_attention: the map must have H >= 1 and W >= 1, got H = ",
              query.size(2), ", W = ", query.size(3));
  TORCH_CHECK(at::isFloatingType(query.scalar_type()),
              "criss_cross_attention: query, key and value must be float16, bfloat16, float32 or "
              "float64, got ", query.scalar_type());
  TORCH_CHECK(query.scalar_type() == key.scalar_type() &&
                  query.scalar_type() == value.scalar_type(),
              "criss_cross_attention: query, key and value must share one dtype, got ",
              query.scalar_type(), ", ", key.scalar_type(), " and ", value.scalar_type());
  TORCH_CHECK(query.device() == key.device() && query.device() == value.device(),
              "criss_cross_attention: query, key and value must be on one device, got ",
              query.device(), ", ", key.device(), " and ", value.device());
}

// The backward's extra inputs: grad_out like value; attention (and grad_attention, when
// given) (B, H, W, H+W-1); all of query's dtype and device.
inline void check_backward(const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_att,
                           const at::Tensor& attention, const at::Tensor& query,
                           const at::Tensor& value) {
  const int64_t B = query.size(0), H = query.size(2), W = query.size(3);
  const auto expect_attention = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.dim() == 4 && t.size(0) == B && t.size(1) == H && t.size(2) == W &&
                    t.size(3) == H + W - 1,
                "criss_cross_attention_backward: ", name, " must be (B, H, W, H+W-1) = (", B,
                ", ", H, ", ", W, ", ", H + W - 1, "), got ", t.sizes());
  };
  const auto expect_like_query = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.scalar_type() == query.scalar_type(), "criss_cross_attention_backward: ", name,
                " must have the dtype of query (", query.scalar_type(), "), got ",
                t.scalar_type());
    TORCH_CHECK(t.device() == query.device(), "criss_cross_attention_backward: ", name,
                " must be on the device of query (", query.device(), "), got ", t.device());
  };
  expect_attention(attention, "attention");
  expect_like_query(attention, "attention");
  TORCH_CHECK(grad_out.sizes() == value.sizes(), "criss_cross_attention_backward: grad_out ",
              grad_out.sizes(), " must have the shape of value ", value.sizes());
  expect_like_query(grad_out, "grad_out");
  if (grad_att.has_value() && grad_att->defined()) {
    expect_attention(*grad_att, "grad_attention");
    expect_like_query(*grad_att, "grad_attention");
  }
}

// The accumulation dtype of scalar_t as a tensor option (float, or double for
// double), read off the type the dispatch chose, never recomputed at run time.
template <typename scalar_t>
inline constexpr at::ScalarType acc_dtype() {
  return c10::CppTypeToScalarType<acc_t<scalar_t>>::value;
}

// (B, C, H, W) view whose memory is (B, H, W, C): per-pixel vectors are contiguous.
inline at::Tensor channels_last(const at::Tensor& x) {
  return x.contiguous(at::MemoryFormat::ChannelsLast);
}

inline at::Tensor empty_channels_last(const at::Tensor& like, int64_t channels,
                                      at::ScalarType dtype) {
  return at::empty({like.size(0), channels, like.size(2), like.size(3)},
                   like.options().dtype(dtype).memory_format(at::MemoryFormat::ChannelsLast));
}

// grad as a new tensor with the dtype and the layout (strides) of input.
inline at::Tensor in_layout_of(const at::Tensor& grad, const at::Tensor& input) {
  return at::empty_like(input).copy_(grad);
}

// --------------------------------------------------------- element functors
// Plain structs (no lambdas) so that nvcc needs no extended-lambda flag.

template <typename T, typename scalar_t>
struct SlotDot {
  T* dot;
  const scalar_t* a;
  const scalar_t* b;
  int64_t n, B, H, W;
  C10_HOST_DEVICE void operator()(int64_t idx) const { slot_dot_body(idx, dot, a, b, n, B, H, W); }
};

template <typename T>
struct Softmax {
  T* e;
  int64_t L;
  C10_HOST_DEVICE void operator()(int64_t u) const { softmax_row(e + u * L, L); }
};

template <typename T, typename scalar_t>
struct SoftmaxBackward {
  const scalar_t* att;
  T* g;                      // in: dL/dA from out, out: dL/dEnergy
  const scalar_t* grad_att;  // dL/dA from the attention output, may be null
  int64_t L;
  C10_HOST_DEVICE void operator()(int64_t u) const {
    if (grad_att != nullptr)
      for (int64_t l = 0; l < L; ++l) g[u * L + l] += static_cast<T>(grad_att[u * L + l]);
    softmax_backward_row(att + u * L, g + u * L, L);
  }
};

template <typename T, typename w_t, typename scalar_t>
struct Gather {
  T* out;
  const w_t* w;
  const scalar_t* src;
  int64_t n, B, H, W;
  C10_HOST_DEVICE void operator()(int64_t idx) const {
    gather_body(idx, out, w, src, n, B, H, W);
  }
};

template <typename T, typename w_t, typename scalar_t>
struct Scatter {
  T* out;
  const w_t* w;
  const scalar_t* src;
  int64_t n, B, H, W;
  C10_HOST_DEVICE void operator()(int64_t idx) const {
    scatter_body(idx, out, w, src, n, B, H, W);
  }
};

// ------------------------------------------------------------- the operator

template <class Launch>
std::tuple<at::Tensor, at::Tensor> portable_forward(const at::Tensor& query_in,
                                                    const at::Tensor& key_in,
                                                    const at::Tensor& value_in, Launch launch) {
  check_inputs(query_in, key_in, value_in);
  const auto query = channels_last(query_in), key = channels_last(key_in),
             value = channels_last(value_in);
  const int64_t B = query.size(0), Ck = query.size(1), Cv = value.size(1);
  const int64_t H = query.size(2), W = query.size(3), L = H + W - 1, N = B * H * W;
  const auto dtype = query.scalar_type();

  at::Tensor att, out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "cca_portable_forward", [&] {
    using T = acc_t<scalar_t>;
    att = at::empty({B, H, W, L}, query.options().dtype(acc_dtype<scalar_t>()));  // (B, H, W, L)
    out = empty_channels_last(value, Cv, acc_dtype<scalar_t>());                   // (B, C, H, W)
    T* a = att.data_ptr<T>();
    launch(N * L, SlotDot<T, scalar_t>{a, query.const_data_ptr<scalar_t>(),
                                       key.const_data_ptr<scalar_t>(), Ck, B, H, W});
    launch(N, Softmax<T>{a, L});
    launch(N * Cv, Gather<T, T, scalar_t>{out.data_ptr<T>(), a, value.const_data_ptr<scalar_t>(),
                                          Cv, B, H, W});
  });
  return {out.to(dtype), att.to(dtype)};
}

template <class Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor> portable_backward(
    const at::Tensor& grad_out_in, const std::optional<at::Tensor>& grad_att_in,
    const at::Tensor& attention_in, const at::Tensor& query_in, const at::Tensor& key_in,
    const at::Tensor& value_in, Launch launch) {
  check_inputs(query_in, key_in, value_in);
  check_backward(grad_out_in, grad_att_in, attention_in, query_in, value_in);
  const auto query = channels_last(query_in), key = channels_last(key_in),
             value = channels_last(value_in), grad_out = channels_last(grad_out_in);
  const auto attention = attention_in.to(query.scalar_type()).contiguous();
  const int64_t B = query.size(0), Ck = query.size(1), Cv = value.size(1);
  const int64_t H = query.size(2), W = query.size(3), L = H + W - 1, N = B * H * W;
  const auto dtype = query.scalar_type();
  at::Tensor grad_att;
  if (grad_att_in.has_value() && grad_att_in->defined())
    grad_att = grad_att_in->to(dtype).contiguous();

  at::Tensor g, grad_query, grad_key, grad_value;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "cca_portable_backward", [&] {
    using T = acc_t<scalar_t>;
    constexpr auto acc = acc_dtype<scalar_t>();
    g = at::empty({B, H, W, L}, query.options().dtype(acc));  // dA, then dE
    grad_query = empty_channels_last(query, Ck, acc);
    grad_key = empty_channels_last(query, Ck, acc);
    grad_value = empty_channels_last(value, Cv, acc);
    T* gp = g.data_ptr<T>();
    const scalar_t* att = attention.const_data_ptr<scalar_t>();
    const scalar_t* q = query.const_data_ptr<scalar_t>();
    const scalar_t* k = key.const_data_ptr<scalar_t>();
    const scalar_t* v = value.const_data_ptr<scalar_t>();
    const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
    const scalar_t* ga = grad_att.defined() ? grad_att.const_data_ptr<scalar_t>() : nullptr;
    launch(N * L, SlotDot<T, scalar_t>{gp, go, v, Cv, B, H, W});          // dA = dout . value
    launch(N, SoftmaxBackward<T, scalar_t>{att, gp, ga, L});              // dE
    launch(N * Ck, Gather<T, T, scalar_t>{grad_query.data_ptr<T>(), gp, k, Ck, B, H, W});
    launch(N * Ck, Scatter<T, T, scalar_t>{grad_key.data_ptr<T>(), gp, q, Ck, B, H, W});
    launch(N * Cv, Scatter<T, scalar_t, scalar_t>{grad_value.data_ptr<T>(), att, go, Cv, B, H, W});
  });
  // In the layouts of the inputs, as the fake kernel and the CPU operator give them.
  return {in_layout_of(grad_query, query_in), in_layout_of(grad_key, key_in),
          in_layout_of(grad_value, value_in)};
}

}  // namespace ccnet_edu
