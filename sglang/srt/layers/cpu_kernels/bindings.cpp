// The Python module of the CPU kernels: one binding per kernel (sources in this folder).

#include "kernels.h"

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
