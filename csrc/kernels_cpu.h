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
void adamw_kernel(float*, const float*, float*, float*, int64_t, float, float, float, float, float, float, float);
void adamw_kernel(double*, const double*, double*, double*, int64_t, double, double, double, double, double, double,
               double);
void stream_kernel(float*, const float*, float*, float*, int64_t);
}  // namespace mlk
