// The Ghost module's cheap half and its concatenation in one pass over memory.
//
// out[:, :m] = a (or scale * a + shift: a ghostified conv's BN on the intrinsic half) and
// out[:, m:m+g] = act(depthwise_kxk(a[:, :g]) + bias), all channels_last, float32 or
// bfloat16 maps (filters, bias, scale and shift in float32, accumulation in float32).
// Runtimes compute these as three ops (depthwise conv, activation fused or not, concat),
// each a full pass over the maps; here every output pixel is written once, while the k rows
// of `a` it reads are still in cache. Channels are innermost, so the tap loop vectorises.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX512BF16__)
#include <immintrin.h>
#endif

namespace {

struct Shape {
  int64_t N, M, H, W, G, K, P, C;
};

// The taps of the output pixel (n, h, w) that fall inside the map (zero padding adds
// nothing): pointers to their input pixel and to their filter row.
template <typename T>
int64_t inside_taps(const Shape& d, const T* xp, const float* tp, int64_t n, int64_t h,
                    int64_t w, std::vector<const T*>& sources,
                    std::vector<const float*>& filters) {
  int64_t count = 0;
  for (int64_t kh = 0; kh < d.K; ++kh) {
    const int64_t ih = h + kh - d.P;
    if (ih < 0 || ih >= d.H) continue;
    for (int64_t kw = 0; kw < d.K; ++kw) {
      const int64_t iw = w + kw - d.P;
      if (iw < 0 || iw >= d.W) continue;
      sources[count] = xp + ((n * d.H + ih) * d.W + iw) * d.M;
      filters[count++] = tp + (kh * d.K + kw) * d.G;
    }
  }
  return count;
}

// Any channel count and type: plain loops (the compiler vectorises the float ones).
template <typename T>
void generic(const Shape& d, const T* xp, const float* tp, const float* bp, const float* scp,
             const float* shp, bool relu, T* op) {
  at::parallel_for(0, d.N * d.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<const T*> sources(d.K * d.K);
    std::vector<const float*> filters(d.K * d.K);
    std::vector<float> acc(d.G);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / d.H, h = row % d.H;
      for (int64_t w = 0; w < d.W; ++w) {
        const T* src = xp + ((n * d.H + h) * d.W + w) * d.M;
        T* dst = op + ((n * d.H + h) * d.W + w) * d.C;
        if (scp != nullptr) {
          for (int64_t c = 0; c < d.M; ++c)
            dst[c] = static_cast<T>(static_cast<float>(src[c]) * scp[c] + shp[c]);
        } else {
          std::memcpy(dst, src, d.M * sizeof(T));
        }
        std::copy(bp, bp + d.G, acc.begin());
        const int64_t taps = inside_taps(d, xp, tp, n, h, w, sources, filters);
        for (int64_t i = 0; i < taps; ++i) {
          const T* s = sources[i];
          const float* t = filters[i];
#pragma GCC ivdep
          for (int64_t c = 0; c < d.G; ++c) acc[c] += static_cast<float>(s[c]) * t[c];
        }
        for (int64_t c = 0; c < d.G; ++c)
          dst[d.M + c] = static_cast<T>(relu ? std::max(acc[c], 0.0f) : acc[c]);
      }
    }
  });
}

// 16 channels per register, the last block masked. Streaming (non-temporal) stores where
// every pixel's channels start on a 64-byte line (multiples of 16 channels): a plain store
// to a fresh output first reads its cache line from memory; the output is written once and
// read by the next layer much later, so skipping that read cuts the traffic by a third
// (read a, write out; not read a, read out, write out).
#ifdef __AVX512F__
inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
}

inline void store_fp32(float* p, __m512 v, __mmask16 k, bool stream) {
  if (stream) {
    _mm512_stream_ps(p, v);
  } else {
    _mm512_mask_storeu_ps(p, k, v);
  }
}

void vector_fp32(const Shape& d, const float* xp, const float* tp, const float* bp,
                 const float* scp, const float* shp, bool relu, bool stream, float* op) {
  at::parallel_for(0, d.N * d.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<const float*> sources(d.K * d.K), filters(d.K * d.K);
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / d.H, h = row % d.H;
      for (int64_t w = 0; w < d.W; ++w) {
        const float* src = xp + ((n * d.H + h) * d.W + w) * d.M;
        float* dst = op + ((n * d.H + h) * d.W + w) * d.C;
        for (int64_t c = 0; c < d.M; c += 16) {
          const __mmask16 k = tail_mask(d.M - c);
          __m512 v = _mm512_maskz_loadu_ps(k, src + c);
          if (scp != nullptr)
            v = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(k, scp + c),
                                _mm512_maskz_loadu_ps(k, shp + c));
          store_fp32(dst + c, v, k, stream);
        }
        const int64_t taps = inside_taps(d, xp, tp, n, h, w, sources, filters);
        for (int64_t c = 0; c < d.G; c += 16) {
          const __mmask16 k = tail_mask(d.G - c);
          __m512 acc = _mm512_maskz_loadu_ps(k, bp + c);
          for (int64_t i = 0; i < taps; ++i)
            acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, sources[i] + c),
                                  _mm512_maskz_loadu_ps(k, filters[i] + c), acc);
          if (relu) acc = _mm512_max_ps(acc, zero);
          store_fp32(dst + d.M + c, acc, k, stream);
        }
      }
    }
    if (stream) _mm_sfence();  // streaming stores are weakly ordered: visible on return
  });
}
#endif

#ifdef __AVX512BF16__
inline __m512 load_bf16(const at::BFloat16* p, __mmask16 k) {  // bf16 -> fp32: a shift
  const __m256i raw = _mm256_maskz_loadu_epi16(k, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

inline void store_bf16_bits(at::BFloat16* p, __m256i bits, __mmask16 k, bool stream) {
  if (stream) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), bits);
  } else {
    _mm256_mask_storeu_epi16(p, k, bits);
  }
}

inline void store_bf16(at::BFloat16* p, __m512 v, __mmask16 k, bool stream) {
  store_bf16_bits(p, (__m256i)_mm512_cvtneps_pbh(v), k, stream);  // round to nearest even
}

void vector_bf16(const Shape& d, const at::BFloat16* xp, const float* tp, const float* bp,
                 const float* scp, const float* shp, bool relu, bool stream,
                 at::BFloat16* op) {
  at::parallel_for(0, d.N * d.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<const at::BFloat16*> sources(d.K * d.K);
    std::vector<const float*> filters(d.K * d.K);
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / d.H, h = row % d.H;
      for (int64_t w = 0; w < d.W; ++w) {
        const at::BFloat16* src = xp + ((n * d.H + h) * d.W + w) * d.M;
        at::BFloat16* dst = op + ((n * d.H + h) * d.W + w) * d.C;
        for (int64_t c = 0; c < d.M; c += 16) {
          const __mmask16 k = tail_mask(d.M - c);
          if (scp != nullptr) {
            store_bf16(dst + c,
                       _mm512_fmadd_ps(load_bf16(src + c, k), _mm512_maskz_loadu_ps(k, scp + c),
                                       _mm512_maskz_loadu_ps(k, shp + c)),
                       k, stream);
          } else {  // an exact copy of the bits
            store_bf16_bits(dst + c, _mm256_maskz_loadu_epi16(k, src + c), k, stream);
          }
        }
        const int64_t taps = inside_taps(d, xp, tp, n, h, w, sources, filters);
        for (int64_t c = 0; c < d.G; c += 16) {
          const __mmask16 k = tail_mask(d.G - c);
          __m512 acc = _mm512_maskz_loadu_ps(k, bp + c);
          for (int64_t i = 0; i < taps; ++i)
            acc = _mm512_fmadd_ps(load_bf16(sources[i] + c, k),
                                  _mm512_maskz_loadu_ps(k, filters[i] + c), acc);
          if (relu) acc = _mm512_max_ps(acc, zero);
          store_bf16(dst + d.M + c, acc, k, stream);
        }
      }
    }
    if (stream) _mm_sfence();
  });
}
#endif

}  // namespace

torch::Tensor run(torch::Tensor a, torch::Tensor weight, torch::Tensor bias,
                  torch::Tensor scale, torch::Tensor shift, bool relu, bool vector) {
  const auto type = a.scalar_type();
  TORCH_CHECK(a.dim() == 4 && (type == torch::kFloat || type == torch::kBFloat16) &&
                  a.device().is_cpu(),
              "cheap_cat: intrinsic maps must be a float32 or bfloat16 (N, C, H, W) CPU tensor");
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == 1 && weight.size(2) == weight.size(3) &&
                  weight.size(2) % 2 == 1,
              "cheap_cat: weight must be (g, 1, k, k) with k odd");
  const auto x = a.contiguous(at::MemoryFormat::ChannelsLast);
  Shape d;
  d.N = x.size(0), d.M = x.size(1), d.H = x.size(2), d.W = x.size(3);
  d.G = weight.size(0), d.K = weight.size(2), d.P = d.K / 2, d.C = d.M + d.G;
  TORCH_CHECK(d.G >= 1 && d.G <= d.M, "cheap_cat: 1 <= ghosts <= intrinsic maps");
  TORCH_CHECK(bias.numel() == d.G, "cheap_cat: one bias per ghost");
  const bool affine = scale.numel() > 0;  // empty scale and shift: a plain copy
  TORCH_CHECK(!affine || (scale.numel() == d.M && shift.numel() == d.M),
              "cheap_cat: scale and shift are empty or one value per intrinsic map");
  const auto f32 = [](const torch::Tensor& t) { return t.to(torch::kFloat).contiguous(); };
  const auto taps = f32(weight.reshape({d.G, d.K * d.K}).t());  // (k*k, g)
  const auto b = f32(bias);
  const auto sc = affine ? f32(scale) : scale;
  const auto sh = affine ? f32(shift) : shift;
  const float* tp = taps.data_ptr<float>();
  const float* bp = b.data_ptr<float>();
  const float* scp = affine ? sc.data_ptr<float>() : nullptr;
  const float* shp = affine ? sh.data_ptr<float>() : nullptr;
  auto out = at::empty({d.N, d.C, d.H, d.W},
                       x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const bool aligned = reinterpret_cast<std::uintptr_t>(out.data_ptr()) % 64 == 0;
  const bool stream = d.M % 16 == 0 && d.G % 16 == 0 && aligned;  // whole 64-byte lines
  if (type == torch::kFloat) {
#ifdef __AVX512F__
    if (vector) {
      vector_fp32(d, x.data_ptr<float>(), tp, bp, scp, shp, relu, stream, out.data_ptr<float>());
      return out;
    }
#endif
    generic(d, x.data_ptr<float>(), tp, bp, scp, shp, relu, out.data_ptr<float>());
    return out;
  }
  const auto* xb = x.data_ptr<at::BFloat16>();
  auto* ob = out.data_ptr<at::BFloat16>();
#ifdef __AVX512BF16__
  if (vector) {
    vector_bf16(d, xb, tp, bp, scp, shp, relu, stream, ob);
    return out;
  }
#endif
  generic(d, xb, tp, bp, scp, shp, relu, ob);
  return out;
}

torch::Tensor cheap_cat(torch::Tensor a, torch::Tensor weight, torch::Tensor bias,
                        torch::Tensor scale, torch::Tensor shift, bool relu) {
  return run(a, weight, bias, scale, shift, relu, true);
}

// The portable loops alone, whatever the CPU: what CPUs without AVX-512 run (tests).
torch::Tensor cheap_cat_portable(torch::Tensor a, torch::Tensor weight, torch::Tensor bias,
                                 torch::Tensor scale, torch::Tensor shift, bool relu) {
  return run(a, weight, bias, scale, shift, relu, false);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("cheap_cat", &cheap_cat, "Ghost cheap op + concat, channels_last float32 / bfloat16");
  m.def("cheap_cat_portable", &cheap_cat_portable, "the same without CPU-specific code");
}
