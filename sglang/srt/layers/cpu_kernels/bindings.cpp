// The Python module of the CPU kernels: one binding per kernel (sources in this folder).

#include <torch/extension.h>

#include <vector>

torch::Tensor paged_decode_attention(torch::Tensor q, torch::Tensor k_buf, torch::Tensor v_buf,
                                     torch::Tensor req_to_token, torch::Tensor req_pool_indices,
                                     torch::Tensor seq_lens, double scale);
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor w, double eps);
std::vector<torch::Tensor> add_rms_norm(torch::Tensor x, torch::Tensor residual, torch::Tensor w,
                                        double eps);
torch::Tensor silu_and_mul(torch::Tensor x);
torch::Tensor rotary(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin,
                     torch::Tensor positions, int64_t heads, int64_t dim);
torch::Tensor argmax_rows(torch::Tensor x);
void store_kv(torch::Tensor k_buf, torch::Tensor v_buf, torch::Tensor loc, torch::Tensor k,
              torch::Tensor v);
void register_decode_plan(pybind11::module_& m);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_decode_attention", &paged_decode_attention,
        "decode attention reading the paged KV pool in place");
  m.def("rms_norm", &rms_norm, "RMSNorm of each row");
  m.def("add_rms_norm", &add_rms_norm, "(RMSNorm(x + residual), x + residual)");
  m.def("silu_and_mul", &silu_and_mul, "silu(gate) * up of [gate | up] rows");
  m.def("rotary", &rotary, "rotary embedding of the first heads of each row");
  m.def("argmax_rows", &argmax_rows, "first index of each row's maximum (NaN largest)");
  register_decode_plan(m);
  m.def("store_kv", &store_kv, "write k and v rows into the KV pool's slots");
}
