// What the kernel sources of this folder share: the kernels' signatures (bound in
// bindings.cpp, chained in decode_layers.cpp), and the float conversions and exp they compute with.

#pragma once

#include <torch/extension.h>

#include <cmath>
#include <cstdint>
#include <cstring>
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

namespace sgl {

// storage dtype <-> float (bfloat16 by bit operations, which gcc vectorizes)
template <typename T>
inline float load(T x) {
  return static_cast<float>(x);
}
template <>
inline float load<at::BFloat16>(at::BFloat16 x) {
  uint32_t u = static_cast<uint32_t>(x.x) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

template <typename T>
inline T store(float f) {
  return static_cast<T>(f);
}
template <>
inline at::BFloat16 store<at::BFloat16>(float f) {  // round to nearest even, NaN kept quiet
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  at::BFloat16 r;
  r.x = (f != f) ? static_cast<uint16_t>(0x7fc0)
                 : static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  return r;
}

template <typename T>
inline float round_trip(float f) {  // f rounded to T and back
  return load<T>(store<T>(f));
}

// exp: Cody-Waite range reduction and a degree-6 polynomial (< 2 ulp in float32, far below a
// bfloat16 ulp); plain arithmetic so that loops over it vectorize.
inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

}  // namespace sgl
