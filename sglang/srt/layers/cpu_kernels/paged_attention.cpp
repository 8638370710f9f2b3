// Decode attention over the paged KV pool, read in place (CPU).
//
// For each request b and KV head h: the K and V rows of the request's tokens are found through
// req_to_token[req_pool_indices[b], 0 .. seq_lens[b]) and read where they lie in the pool; the
// query heads of h are scored against every K row, softmax in float32, then V is accumulated.
// Work is split with at::parallel_for (the thread pool of PyTorch's own CPU ops) over (request,
// KV head) pairs, or over (request, query head) pairs when there are too few of those.

#include <ATen/Parallel.h>

#include "kernels.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

// One task per (request, KV head) when there are enough of them to keep the threads busy: the
// task's query heads share each read of a K/V row. With few requests (one stream has 3 KV heads
// for 2+ threads), one task per (request, query head) instead.
template <typename T>
void decode_kernel(const T* q, const T* k, const T* v, const int64_t* req_to_token,
                   const int64_t* rows, const int64_t* lens, T* out, int64_t batch,
                   int64_t heads, int64_t kv_heads, int64_t dim, int64_t row_stride,
                   int64_t slot_stride, float scale) {
  const int64_t group = heads / kv_heads;
  const bool per_query_head = batch * kv_heads < 4 * at::get_num_threads();
  const int64_t split = per_query_head ? group : 1, width = group / split;
  at::parallel_for(0, batch * kv_heads * split, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(width * dim), acc(width * dim), scores, mx(width), sum(width);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (kv_heads * split), h = (task / split) % kv_heads;
      const int64_t first = h * group + (task % split) * width;  // its first query head
      const int64_t len = lens[b];
      const int64_t* slots = req_to_token + rows[b] * row_stride;
      for (int64_t g = 0; g < width; ++g) {
        const T* qh = q + (b * heads + first + g) * dim;
        for (int64_t d = 0; d < dim; ++d) qf[g * dim + d] = sgl::load<T>(qh[d]) * scale;
      }
      scores.resize(width * len);
      std::fill(mx.begin(), mx.end(), -std::numeric_limits<float>::infinity());
      for (int64_t t = 0; t < len; ++t) {  // scores = q . K
        const T* kr = k + slots[t] * slot_stride + h * dim;
        for (int64_t g = 0; g < width; ++g) {
          const float* qg = qf.data() + g * dim;
          float s = 0.f;
          for (int64_t d = 0; d < dim; ++d) s += qg[d] * sgl::load<T>(kr[d]);
          scores[g * len + t] = s;
          mx[g] = s > mx[g] ? s : mx[g];
        }
      }
      for (int64_t g = 0; g < width; ++g) {  // softmax numerators and their sums
        float* sg = scores.data() + g * len;
        float total = 0.f;
        for (int64_t t = 0; t < len; ++t) {
          const float e = sgl::exp_approx(sg[t] - mx[g]);
          sg[t] = e;
          total += e;
        }
        sum[g] = total;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t t = 0; t < len; ++t) {  // out = P V
        const T* vr = v + slots[t] * slot_stride + h * dim;
        for (int64_t g = 0; g < width; ++g) {
          const float p = scores[g * len + t] / sum[g];
          float* ag = acc.data() + g * dim;
          for (int64_t d = 0; d < dim; ++d) ag[d] += p * sgl::load<T>(vr[d]);
        }
      }
      for (int64_t g = 0; g < width; ++g) {
        T* o = out + (b * heads + first + g) * dim;
        for (int64_t d = 0; d < dim; ++d) o[d] = static_cast<T>(acc[g * dim + d]);
      }
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
