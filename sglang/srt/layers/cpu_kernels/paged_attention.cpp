// Decode attention over the paged KV pool, read in place (CPU).
//
// For each request b and query head: the K and V rows of the request's tokens are found through
// req_to_token[req_pool_indices[b], 0 .. seq_lens[b]) and read where they lie in the pool; the
// head is scored against every K row of its KV head, softmax in float32, then V is
// accumulated. Work is split over (request, query head) pairs with at::parallel_for, the same
// thread pool as PyTorch's own CPU ops (per KV head, one request's few heads would leave
// threads idle).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

template <typename T>
inline float to_float(T x) {
  return static_cast<float>(x);
}
template <>
inline float to_float<at::BFloat16>(at::BFloat16 x) {  // a shift, which gcc vectorizes
  uint32_t u = static_cast<uint32_t>(x.x) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// exp on the softmax's (x - max) <= 0: range reduction and a degree-6 polynomial, < 2 ulp in
// float32; plain arithmetic so that the loop vectorizes.
inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
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

// One task per (request, query head): K/V rows of its KV head are read where they lie.
template <typename T>
void decode_kernel(const T* q, const T* k, const T* v, const int64_t* req_to_token,
                   const int64_t* rows, const int64_t* lens, T* out, int64_t batch,
                   int64_t heads, int64_t kv_heads, int64_t dim, int64_t row_stride,
                   int64_t slot_stride, float scale) {
  const int64_t group = heads / kv_heads;
  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(dim), acc(dim), scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / heads, head = task % heads, h = head / group;
      const int64_t len = lens[b];
      const int64_t* slots = req_to_token + rows[b] * row_stride;
      const T* qh = q + (b * heads + head) * dim;
      for (int64_t d = 0; d < dim; ++d) qf[d] = to_float<T>(qh[d]) * scale;
      scores.resize(len);
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t t = 0; t < len; ++t) {  // scores = q . K
        const T* kr = k + slots[t] * slot_stride + h * dim;
        float s = 0.f;
        for (int64_t d = 0; d < dim; ++d) s += qf[d] * to_float<T>(kr[d]);
        scores[t] = s;
        mx = s > mx ? s : mx;
      }
      float sum = 0.f;  // softmax
      for (int64_t t = 0; t < len; ++t) {
        const float e = exp_nonpositive(scores[t] - mx);
        scores[t] = e;
        sum += e;
      }
      const float inv = 1.f / sum;
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t t = 0; t < len; ++t) {  // out = P V
        const T* vr = v + slots[t] * slot_stride + h * dim;
        const float p = scores[t] * inv;
        for (int64_t d = 0; d < dim; ++d) acc[d] += p * to_float<T>(vr[d]);
      }
      T* o = out + (b * heads + head) * dim;
      for (int64_t d = 0; d < dim; ++d) o[d] = static_cast<T>(acc[d]);
    }
  });
}

}  // namespace

// q [B, H, D]; k_buf, v_buf [S, Hkv, D] (same dtype as q); req_to_token [R, C] int64;
// req_pool_indices, seq_lens [B] int64. Returns [B, H * D].
torch::Tensor paged_decode_attention(torch::Tensor q, torch::Tensor k_buf, torch::Tensor v_buf,
                                     torch::Tensor req_to_token, torch::Tensor req_pool_indices,
                                     torch::Tensor seq_lens, double scale) {
  TORCH_CHECK(q.dim() == 3 && k_buf.dim() == 3 && v_buf.dim() == 3, "q, k, v: 3-d tensors");
  TORCH_CHECK(q.scalar_type() == k_buf.scalar_type() && k_buf.scalar_type() == v_buf.scalar_type(),
              "q, k_buf, v_buf: one dtype");
  TORCH_CHECK(req_to_token.scalar_type() == torch::kInt64, "req_to_token: int64");
  TORCH_CHECK(k_buf.is_contiguous() && v_buf.is_contiguous() && req_to_token.is_contiguous(),
              "k_buf, v_buf, req_to_token: contiguous");
  q = q.contiguous();
  auto rows = req_pool_indices.to(torch::kInt64).contiguous();
  auto lens = seq_lens.to(torch::kInt64).contiguous();
  const int64_t batch = q.size(0), heads = q.size(1), dim = q.size(2), kv_heads = k_buf.size(1);
  TORCH_CHECK(k_buf.size(2) == dim && heads % kv_heads == 0, "head shapes do not match");
  auto out = torch::empty({batch, heads * dim}, q.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(torch::kBFloat16, torch::kHalf, q.scalar_type(), "paged_decode", [&] {
    decode_kernel<scalar_t>(q.data_ptr<scalar_t>(), k_buf.data_ptr<scalar_t>(),
                            v_buf.data_ptr<scalar_t>(), req_to_token.data_ptr<int64_t>(),
                            rows.data_ptr<int64_t>(), lens.data_ptr<int64_t>(),
                            out.data_ptr<scalar_t>(), batch, heads, kv_heads, dim,
                            req_to_token.stride(0), k_buf.stride(0), static_cast<float>(scale));
  });
  return out;
}
