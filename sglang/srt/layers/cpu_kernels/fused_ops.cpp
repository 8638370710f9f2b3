// Row-wise ops of a decoder layer fused into one pass each (CPU): RMSNorm with the residual add
// before it, SiLU-and-mul, rotary embedding of q and k, and the KV-pool store.
//
// Each computes in float32 and rounds where the torch ops it replaces round (layers/norm.py,
// activation.py, rotary.py), so results agree with them to the last bit or within one unit of
// the storage dtype (the float sums may be ordered differently). One call instead of the 5-15
// small torch ops each replaces: at one decode row the per-op overhead, not the arithmetic, is
// the cost. Rows are split over at::parallel_for, the thread pool of PyTorch's own CPU ops.

#include <ATen/Parallel.h>

#include "kernels.h"

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

using sgl::load;
using sgl::round_trip;
using sgl::store;

template <typename T>
void rms_rows(const T* x, const T* residual, const T* w, T* out, T* sum_out, int64_t rows,
              int64_t dim, float eps) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * dim;
      T* o = out + r * dim;
      float ss = 0.f;
      if (residual != nullptr) {  // s = x + residual, rounded to T, is the new residual
        const T* rr = residual + r * dim;
        T* s = sum_out + r * dim;
        for (int64_t d = 0; d < dim; ++d) {
          const float v = round_trip<T>(load<T>(xr[d]) + load<T>(rr[d]));
          s[d] = store<T>(v);
          ss += v * v;
        }
        xr = s;
      } else {
        for (int64_t d = 0; d < dim; ++d) {
          const float v = load<T>(xr[d]);
          ss += v * v;
        }
      }
      const float inv = 1.f / std::sqrt(ss / static_cast<float>(dim) + eps);
      for (int64_t d = 0; d < dim; ++d)
        o[d] = store<T>(load<T>(w[d]) * round_trip<T>(load<T>(xr[d]) * inv));
    }
  });
}

template <typename T>
void silu_mul_rows(const T* x, T* out, int64_t rows, int64_t inter) {
  at::parallel_for(0, rows, 4, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* gate = x + r * 2 * inter;
      const T* up = gate + inter;
      T* o = out + r * inter;
      for (int64_t i = 0; i < inter; ++i) {
        const float g = load<T>(gate[i]);
        const float silu = round_trip<T>(g / (1.f + sgl::exp_approx(-g)));
        o[i] = store<T>(silu * load<T>(up[i]));
      }
    }
  });
}

template <typename T>
void rotary_rows(const T* qkv, const T* cos, const T* sin, const int64_t* positions, T* out,
                 int64_t tokens, int64_t heads, int64_t dim, int64_t row_stride) {
  const int64_t half = dim / 2;
  at::parallel_for(0, tokens, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const T* c = cos + positions[t] * dim;
      const T* s = sin + positions[t] * dim;
      for (int64_t h = 0; h < heads; ++h) {
        const T* x = qkv + t * row_stride + h * dim;
        T* o = out + (t * heads + h) * dim;
        for (int64_t d = 0; d < dim; ++d) {  // x * cos + roll(x, D / 2) * sin
          const float rolled = load<T>(x[d < half ? d + half : d - half]);
          const float a = round_trip<T>(load<T>(x[d]) * load<T>(c[d]));
          o[d] = store<T>(a + rolled * load<T>(s[d]));
        }
      }
    }
  });
}

}  // namespace

#define DISPATCH(dtype, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(torch::kBFloat16, torch::kHalf, dtype, name, __VA_ARGS__)

// x [T, D], w [D] -> norm(x) [T, D]
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor w, double eps) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 1 && x.size(1) == w.size(0), "rms_norm: shapes");
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "rms_norm: x and weight: one dtype");
  x = x.contiguous();
  w = w.contiguous();
  auto out = torch::empty_like(x);
  DISPATCH(x.scalar_type(), "rms_norm", [&] {
    rms_rows<scalar_t>(x.data_ptr<scalar_t>(), nullptr, w.data_ptr<scalar_t>(),
                       out.data_ptr<scalar_t>(), nullptr, x.size(0), x.size(1),
                       static_cast<float>(eps));
  });
  return out;
}

// x, residual [T, D], w [D] -> (norm(x + residual), x + residual)
std::vector<torch::Tensor> add_rms_norm(torch::Tensor x, torch::Tensor residual, torch::Tensor w,
                                        double eps) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 1 && x.size(1) == w.size(0), "add_rms_norm: shapes");
  TORCH_CHECK(x.sizes() == residual.sizes(), "add_rms_norm: x and residual: one shape");
  TORCH_CHECK(x.scalar_type() == w.scalar_type() && x.scalar_type() == residual.scalar_type(),
              "add_rms_norm: x, residual and weight: one dtype");
  x = x.contiguous();
  residual = residual.contiguous();
  w = w.contiguous();
  auto out = torch::empty_like(x);
  auto sum = torch::empty_like(x);
  DISPATCH(x.scalar_type(), "add_rms_norm", [&] {
    rms_rows<scalar_t>(x.data_ptr<scalar_t>(), residual.data_ptr<scalar_t>(),
                       w.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), sum.data_ptr<scalar_t>(),
                       x.size(0), x.size(1), static_cast<float>(eps));
  });
  return {out, sum};
}

// x [T, 2 I] = [gate | up] -> silu(gate) * up [T, I]
torch::Tensor silu_and_mul(torch::Tensor x) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) % 2 == 0, "silu_and_mul: x [T, 2 I]");
  x = x.contiguous();
  const int64_t inter = x.size(1) / 2;
  auto out = torch::empty({x.size(0), inter}, x.options());
  DISPATCH(x.scalar_type(), "silu_and_mul", [&] {
    silu_mul_rows<scalar_t>(x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), x.size(0), inter);
  });
  return out;
}

// qkv [T, W] (rows may be a strided view); the first `heads` heads of width D are rotated:
// cos, sin [P, D] tables (sin holding [-sin | sin]), positions [T] -> [T, heads, D]
torch::Tensor rotary(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin,
                     torch::Tensor positions, int64_t heads, int64_t dim) {
  TORCH_CHECK(qkv.dim() == 2 && qkv.stride(1) == 1 && qkv.size(1) >= heads * dim,
              "rotary: qkv [T, W] with unit column stride");
  TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && cos.size(1) == dim && dim % 2 == 0,
              "rotary: tables [P, D]");
  TORCH_CHECK(qkv.scalar_type() == cos.scalar_type() && cos.scalar_type() == sin.scalar_type(),
              "rotary: qkv and tables: one dtype");
  auto pos = positions.to(torch::kInt64).contiguous();
  const int64_t tokens = qkv.size(0);
  auto out = torch::empty({tokens, heads, dim}, qkv.options());
  DISPATCH(qkv.scalar_type(), "rotary", [&] {
    rotary_rows<scalar_t>(qkv.data_ptr<scalar_t>(), cos.data_ptr<scalar_t>(),
                          sin.data_ptr<scalar_t>(), pos.data_ptr<int64_t>(),
                          out.data_ptr<scalar_t>(), tokens, heads, dim, qkv.stride(0));
  });
  return out;
}

// k_buf, v_buf [S, Hkv, D]; loc [T]; k, v [T, Hkv, D] (any strides, the pool's dtype):
// k_buf[loc[t]] = k[t], v_buf[loc[t]] = v[t]
void store_kv(torch::Tensor k_buf, torch::Tensor v_buf, torch::Tensor loc, torch::Tensor k,
              torch::Tensor v) {
  TORCH_CHECK(k_buf.is_contiguous() && v_buf.is_contiguous(), "store_kv: pools contiguous");
  TORCH_CHECK(k.scalar_type() == k_buf.scalar_type() && v.scalar_type() == v_buf.scalar_type(),
              "store_kv: k, v in the pool's dtype");
  TORCH_CHECK(k.dim() == 3 && v.dim() == 3 && k.size(1) * k.size(2) == k_buf.stride(0) &&
                  v.size(1) * v.size(2) == v_buf.stride(0),
              "store_kv: k, v [T, Hkv, D] as the pool's rows");
  auto slots = loc.to(torch::kInt64).contiguous();
  const int64_t* s = slots.data_ptr<int64_t>();
  const int64_t tokens = slots.numel(), rows = k_buf.size(0);
  const int64_t heads = k.size(1), dim = k.size(2), elem = k.element_size();
  for (int64_t t = 0; t < tokens; ++t) TORCH_CHECK(s[t] >= 0 && s[t] < rows, "store_kv: slot out of range");
  auto* kb = static_cast<char*>(k_buf.data_ptr());
  auto* vb = static_cast<char*>(v_buf.data_ptr());
  const auto* kp = static_cast<const char*>(k.data_ptr());
  const auto* vp = static_cast<const char*>(v.data_ptr());
  const bool k_rows = k.stride(2) == 1 && k.stride(1) == dim;
  const bool v_rows = v.stride(2) == 1 && v.stride(1) == dim;
  for (int64_t t = 0; t < tokens; ++t) {
    for (int pass = 0; pass < 2; ++pass) {
      const torch::Tensor& src = pass == 0 ? k : v;
      const char* sp = pass == 0 ? kp : vp;
      char* dst = (pass == 0 ? kb : vb) + s[t] * heads * dim * elem;
      if (pass == 0 ? k_rows : v_rows) {
        std::memcpy(dst, sp + t * src.stride(0) * elem, heads * dim * elem);
      } else {
        for (int64_t h = 0; h < heads; ++h)
          for (int64_t d = 0; d < dim; ++d)
            std::memcpy(dst + (h * dim + d) * elem,
                        sp + (t * src.stride(0) + h * src.stride(1) + d * src.stride(2)) * elem,
                        elem);
      }
    }
  }
}

// x [B, V] float32 -> [B] int64: the index of each row's largest value, the first where it
// repeats, a NaN counting as the largest (as torch.argmax). Two vectorizable passes per row:
// the maximum, then its first position; torch's CPU argmax carries an index through one pass
// and is several times slower at vocabulary widths.
torch::Tensor argmax_rows(torch::Tensor x) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat, "argmax_rows: x [B, V] float32");
  TORCH_CHECK(x.size(1) > 0, "argmax_rows: empty rows");
  x = x.contiguous();
  const int64_t rows = x.size(0), width = x.size(1);
  auto out = torch::empty({rows}, x.options().dtype(torch::kInt64));
  const float* p = x.data_ptr<float>();
  int64_t* o = out.data_ptr<int64_t>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = p + r * width;
      float mx = row[0];
      bool nan = false;
      int64_t i = 0;
#if defined(__AVX2__)
      __m256 vmax = _mm256_set1_ps(row[0]);
      __m256 vnan = _mm256_setzero_ps();
      for (; i + 8 <= width; i += 8) {
        const __m256 v = _mm256_loadu_ps(row + i);
        vmax = _mm256_max_ps(vmax, v);
        vnan = _mm256_or_ps(vnan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
      }
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, vmax);
      for (float v : lanes) mx = v > mx ? v : mx;
      nan = _mm256_movemask_ps(vnan) != 0;
#endif
      for (; i < width; ++i) {
        mx = row[i] > mx ? row[i] : mx;
        nan |= row[i] != row[i];
      }
      int64_t at = 0;
      if (nan) {
        while (row[at] == row[at]) ++at;
      } else {
        while (row[at] != mx) ++at;
      }
      o[r] = at;
    }
  });
  return out;
}
