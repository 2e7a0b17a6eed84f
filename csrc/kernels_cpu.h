// kernels_cpu.h — the plain C++ interface of the CPU kernels (raw pointers, one thread per call).
#pragma once
#include <cstdint>

namespace mlk {
struct AttnShape {  // q (BH, Tq, D), k/v (BH, Tk, D); kpm (B, Tk) true = keep, or null
  int64_t BH, H, Tq, Tk, D;
  bool causal;
  const bool* kpm;
};
void softmax_fwd_kernel(const float*, float*, int64_t, int64_t, int64_t, int64_t, float, bool);
void softmax_fwd_kernel(const double*, double*, int64_t, int64_t, int64_t, int64_t, double, bool);
void softmax_bwd_kernel(const float*, const float*, float*, int64_t, int64_t, int64_t, float);
void softmax_bwd_kernel(const double*, const double*, double*, int64_t, int64_t, int64_t, double);
void attn_fwd_kernel(const float*, const float*, const float*, float*, float*, const AttnShape&, int64_t, int64_t);
void attn_fwd_kernel(const double*, const double*, const double*, double*, double*, const AttnShape&, int64_t, int64_t);
void attn_bwd_kernel(const float*, const float*, const float*, const float*, const float*, const float*, float*,
                  float*, float*, const AttnShape&, int64_t, int64_t);
void attn_bwd_kernel(const double*, const double*, const double*, const double*, const double*, const double*,
                  double*, double*, double*, const AttnShape&, int64_t, int64_t);
int64_t attn_num_q_tiles(int64_t Tq);
// One AdamW step's constants for one tensor, computed in double and rounded once (see adamw.cpp).
template <typename T>
struct AdamwCoef {
  T decay, one_minus_beta1, beta2, one_minus_beta2, eps, step_size, inv_bc2_sqrt;
};
void adamw_kernel(float*, const float*, float*, float*, int64_t, const AdamwCoef<float>&);
void adamw_kernel(double*, const double*, double*, double*, int64_t, const AdamwCoef<double>&);
void stream_kernel(float*, const float*, float*, float*, int64_t);
}  // namespace mlk
