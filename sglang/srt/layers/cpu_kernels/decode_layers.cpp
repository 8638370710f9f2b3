// A Llama-family decoder's DECODE pass in one call (CPU): every layer's norm, projections,
// rotary, KV store, attention and MLP, run from C++ so that a one-row step is not spent in
// Python between its ~25 kernels per layer.
//
// The kernels are the ones the Python layers call, in the same order on the same operands, so
// the results are the same to the bit: the fused row ops and the paged decode attention of this
// folder, and for each projection the ATen op that layers/linear.py picked for this batch size
// (its "route": see linear_route there). A plan is built per batch size by
// model_executor/cpu_decode.py.

#include <ATen/core/dispatch/Dispatcher.h>

#include "kernels.h"

#include <string>
#include <vector>

namespace {

// The route kinds of layers/linear.py (ROUTE_* there).
enum RouteKind : int64_t { kInt4 = 0, kInt8 = 1, kBf16 = 2, kDequant = 3, kDense = 4, kPacked = 5 };

// oneDNN's packed-weight linear (torch.ops.mkldnn._linear_pointwise), through the dispatcher
torch::Tensor packed_linear(const torch::Tensor& x, const torch::Tensor& packed,
                            const c10::optional<torch::Tensor>& bias) {
  static const c10::OperatorHandle op =
      c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  torch::jit::Stack stack;
  stack.emplace_back(x);
  stack.emplace_back(packed);
  stack.emplace_back(bias.has_value() ? c10::IValue(*bias) : c10::IValue());
  stack.emplace_back(std::string("none"));
  stack.emplace_back(c10::List<c10::optional<at::Scalar>>());
  stack.emplace_back(std::string(""));
  op.callBoxed(&stack);
  return stack[0].toTensor();
}

struct Route {
  int64_t kind;
  std::vector<torch::Tensor> operands;
  int64_t group;
  c10::optional<torch::Tensor> bias;

  torch::Tensor operator()(const torch::Tensor& x) const {
    const auto bf16 = torch::kBFloat16;
    torch::Tensor y;
    switch (kind) {
      case kInt4:
        y = at::_weight_int4pack_mm_for_cpu(x.to(bf16), operands[0], group, operands[1]).to(x.scalar_type());
        break;
      case kInt8:
        y = at::_weight_int8pack_mm(x.to(bf16), operands[0], operands[1]).to(x.scalar_type());
        break;
      case kBf16:
        y = at::linear(x.to(bf16), operands[0]).to(x.scalar_type());
        break;
      case kDequant: {
        const auto& w = operands[0];
        y = at::linear(x.to(bf16).to(w.scalar_type()), w).to(bf16).to(x.scalar_type());
        break;
      }
      case kPacked:
        return packed_linear(x, operands[0], bias);
      case kDense: {
        const auto& w = operands[0];
        if (w.scalar_type() != x.scalar_type()) {
          c10::optional<torch::Tensor> b;
          if (bias.has_value()) b = bias->to(w.scalar_type());
          return at::linear(x.to(w.scalar_type()), w, b).to(x.scalar_type());
        }
        return at::linear(x, w, bias);
      }
      default:
        TORCH_CHECK(false, "decode plan: unknown route kind ", kind);
    }
    return bias.has_value() ? y + *bias : y;
  }
};

struct Layer {
  torch::Tensor input_norm, post_norm, k_buf, v_buf;
  Route qkv, o, gate_up, down;
};

Route to_route(const pybind11::tuple& t) {
  TORCH_CHECK(t.size() == 4, "decode plan: a route is (kind, operands, group, bias)");
  Route r;
  r.kind = t[0].cast<int64_t>();
  r.operands = t[1].cast<std::vector<torch::Tensor>>();
  r.group = t[2].cast<int64_t>();
  if (!t[3].is_none()) r.bias = t[3].cast<torch::Tensor>();
  return r;
}

class DecodePlan {
 public:
  // layers: per layer (input_norm, post_norm, k_buf, v_buf, qkv, o, gate_up, down) with the
  // four projections as routes; rope tables [P, D]; heads of q and of k/v; the norms' eps.
  DecodePlan(const std::vector<pybind11::tuple>& layers, torch::Tensor final_norm,
             torch::Tensor cos, torch::Tensor sin, int64_t heads, int64_t kv_heads,
             int64_t head_dim, double eps, double scale)
      : final_norm_(final_norm), cos_(cos), sin_(sin), heads_(heads), kv_heads_(kv_heads),
        head_dim_(head_dim), eps_(eps), scale_(scale) {
    for (const auto& t : layers) {
      TORCH_CHECK(t.size() == 8, "decode plan: a layer is 8 entries");
      Layer l;
      l.input_norm = t[0].cast<torch::Tensor>();
      l.post_norm = t[1].cast<torch::Tensor>();
      l.k_buf = t[2].cast<torch::Tensor>();
      l.v_buf = t[3].cast<torch::Tensor>();
      l.qkv = to_route(t[4].cast<pybind11::tuple>());
      l.o = to_route(t[5].cast<pybind11::tuple>());
      l.gate_up = to_route(t[6].cast<pybind11::tuple>());
      l.down = to_route(t[7].cast<pybind11::tuple>());
      layers_.push_back(std::move(l));
    }
  }

  // x [B, hidden] (the embedded input ids) -> the final norm's output [B, hidden]
  torch::Tensor forward(torch::Tensor x, torch::Tensor positions, torch::Tensor out_cache_loc,
                        torch::Tensor req_to_token, torch::Tensor req_pool_indices,
                        torch::Tensor seq_lens) const {
    pybind11::gil_scoped_release no_gil;
    const int64_t batch = x.size(0), rotated = heads_ + kv_heads_;
    torch::Tensor residual;
    for (size_t i = 0; i < layers_.size(); ++i) {
      const Layer& l = layers_[i];
      torch::Tensor h;
      if (i == 0) {
        h = rms_norm(x, l.input_norm, eps_);
        residual = x;
      } else {
        auto pair = add_rms_norm(x, residual, l.input_norm, eps_);
        h = pair[0];
        residual = pair[1];
      }
      const torch::Tensor qkv = l.qkv(h);  // [B, (H + 2 Hkv) D]
      const torch::Tensor qk = rotary(qkv, cos_, sin_, positions, rotated, head_dim_);
      const torch::Tensor q = qk.narrow(1, 0, heads_);
      const torch::Tensor k = qk.narrow(1, heads_, kv_heads_);
      const torch::Tensor v =
          qkv.narrow(1, rotated * head_dim_, kv_heads_ * head_dim_).view({batch, kv_heads_, head_dim_});
      store_kv(l.k_buf, l.v_buf, out_cache_loc, k, v);
      const torch::Tensor attn = paged_decode_attention(q, l.k_buf, l.v_buf, req_to_token,
                                                        req_pool_indices, seq_lens, scale_);
      auto pair = add_rms_norm(l.o(attn), residual, l.post_norm, eps_);
      residual = pair[1];
      x = l.down(silu_and_mul(l.gate_up(pair[0])));
    }
    return add_rms_norm(x, residual, final_norm_, eps_)[0];
  }

 private:
  std::vector<Layer> layers_;
  torch::Tensor final_norm_, cos_, sin_;
  int64_t heads_, kv_heads_, head_dim_;
  double eps_, scale_;
};

}  // namespace

void register_decode_plan(pybind11::module_& m) {
  pybind11::class_<DecodePlan>(m, "DecodePlan")
      .def(pybind11::init<const std::vector<pybind11::tuple>&, torch::Tensor, torch::Tensor,
                          torch::Tensor, int64_t, int64_t, int64_t, double, double>())
      .def("forward", &DecodePlan::forward);
}
