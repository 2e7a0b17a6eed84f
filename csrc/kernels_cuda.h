// kernels_cuda.h — the plain launcher API of the CUDA kernels (no torch types, so the .cu files compile with
// nvcc alone). Pointers are device pointers; `dtype` is MLK_F32 or MLK_BF16 (compute is always fp32);
// every launcher returns a cudaError_t (0 = success) and runs on `stream`.
#pragma once
#include <cstdint>
#include <cuda_runtime_api.h>

enum { MLK_F32 = 0, MLK_BF16 = 1 };

// y = softmax(scale * x) over rows of length S; causal keeps column j <= (row % Tq) + S - Tq.
int mlk_softmax_fwd(const void* x, void* y, int64_t rows, int64_t S, int64_t Tq, float scale, int causal, int dtype,
                    cudaStream_t stream);
// dx = scale * y * (dy - <y, dy>)
int mlk_softmax_bwd(const void* y, const void* dy, void* dx, int64_t rows, int64_t S, float scale, int dtype,
                    cudaStream_t stream);

// Flash-style attention. q (BH, Tq, D), k/v (BH, Tk, D), o (BH, Tq, D), lse (BH, Tq) fp32; kpm (B, Tk) or null,
// with b = bh / H. D must be 32, 64 or 128 (mlk_attn_supports_head_dim).
int mlk_attn_supports_head_dim(int64_t D);
int mlk_attn_fwd(const void* q, const void* k, const void* v, void* o, float* lse, int64_t BH, int64_t H, int64_t Tq,
                 int64_t Tk, int64_t D, int causal, const bool* kpm, int dtype, cudaStream_t stream);
// delta (BH, Tq) fp32 is scratch the caller allocates.
int mlk_attn_bwd(const void* q, const void* k, const void* v, const void* o, const void* dout, const float* lse,
                 float* delta, void* dq, void* dk, void* dv, int64_t BH, int64_t H, int64_t Tq, int64_t Tk, int64_t D,
                 int causal, const bool* kpm, int dtype, cudaStream_t stream);

// One AdamW step over n fp32 tensors (multi-tensor: a few launches for the whole list). step_size[i] =
// lr / (1 - b1^t_i) and bc2_sqrt[i] = sqrt(1 - b2^t_i) are computed on the host (steps live on the CPU), and so
// are decay = 1 - lr wd and 1 - beta, in double: 1 - 0.999f in float is 1.3e-5 away from 0.001.
int mlk_adamw(float* const* p, const float* const* g, float* const* m, float* const* v, const int64_t* numel,
              const float* step_size, const float* bc2_sqrt, int n, float decay, float one_minus_beta1,
              float beta2, float one_minus_beta2, float eps, cudaStream_t stream);
