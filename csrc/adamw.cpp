// adamw.cpp — the fused AdamW update on CPU: one pass over p, g, m, v per element.
//
//   p <- p (1 - lr wd)                                  (decoupled weight decay, Loshchilov & Hutter 2019)
//   m <- m + (1 - b1)(g - m)                            (= b1 m + (1 - b1) g, written as torch's lerp)
//   v <- b2 v + (1 - b2) g^2
//   p <- p - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)        (bias correction, Kingma & Ba)
//
// Unfused, each line is a separate sweep over the tensors: ~11 reads/writes of 4 bytes per parameter.
// Fused, it is 4 reads (p, g, m, v) and 3 writes (p, m, v): 28 bytes per parameter, the memory roof.
// The formula follows torch.optim.AdamW, except that we multiply by 1/sqrt(1 - b2^t) where torch divides by
// sqrt(1 - b2^t): one division fewer per element, at most an ulp of difference per step. Every constant
// (1 - b1, 1 - b2, 1 - lr wd, the bias corrections) is computed in double by the caller and rounded to float
// once, as torch does: 1 - 0.999f in float is 1.3e-5 away from 0.001, which shows up as a 1e-6 error per step.
// A chunk is a contiguous piece of one tensor; ops.cpp hands each thread one contiguous range of the group.
//
// stream_kernel is the yardstick: the same 28 bytes per element (read p, g, m, v; write p, m, v) with no
// arithmetic to speak of. Its speed is the memory roof AdamW can reach on this machine with these threads;
// `minillm bench kernels` times it next to the optimizers and reports AdamW's fraction of it.
#include "kernels_cpu.h"
#include "simd.h"

namespace mlk {

template <typename T>
MLK_INLINE void adamw_chunk(T* __restrict p, const T* __restrict g, T* __restrict m, T* __restrict v, int64_t n,
                            const AdamwCoef<T>& c) {
  const T decay = c.decay, b1c = c.one_minus_beta1, b2 = c.beta2, b2c = c.one_minus_beta2, eps = c.eps;
  const T step_size = c.step_size, inv_bc2 = c.inv_bc2_sqrt;  // copied to locals: registers, not memory, in the loop
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T gi = g[i];
    const T mi = m[i] + b1c * (gi - m[i]);
    const T vi = v[i] * b2 + b2c * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * decay - step_size * (mi / (std::sqrt(vi) * inv_bc2 + eps));
  }
}

MLK_CLONES void adamw_kernel(float* p, const float* g, float* m, float* v, int64_t n, const AdamwCoef<float>& c) {
  adamw_chunk<float>(p, g, m, v, n, c);
}
void adamw_kernel(double* p, const double* g, double* m, double* v, int64_t n, const AdamwCoef<double>& c) {
  adamw_chunk<double>(p, g, m, v, n, c);
}

MLK_CLONES void stream_kernel(float* __restrict p, const float* __restrict g, float* __restrict m,
                              float* __restrict v, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    p[i] += gi;
    m[i] += gi;
    v[i] += gi;
  }
}

}  // namespace mlk
