// adamw.cu — multi-tensor fused AdamW on the GPU (fp32 parameters and state).
//
// Same update as csrc/adamw.cpp (torch.optim.AdamW's formula). The tensor list is passed *by value* in the
// kernel arguments (pointers and sizes for up to MAX_T tensors per launch, like apex/torch's multi_tensor_apply),
// so one launch covers many tensors: blockIdx.y picks the tensor, a grid-stride loop over blockIdx.x covers it
// with float4 loads when the pointers are 16-byte aligned. 28 bytes move per parameter; nothing else does.
#include "common.cuh"

namespace mlk_cuda {

constexpr int MAX_T = 32;

struct TensorBatch {
  float* p[MAX_T];
  const float* g[MAX_T];
  float* m[MAX_T];
  float* v[MAX_T];
  int64_t n[MAX_T];
  float step_size[MAX_T];
  float bc2_sqrt[MAX_T];
};

// b1c = 1 - beta1, b2c = 1 - beta2 and decay = 1 - lr wd come from the host, computed in double (see adamw.cpp).
__device__ __forceinline__ void adamw_elem(float& p, float g, float& m, float& v, float decay, float b1c, float b2,
                                           float b2c, float eps, float step_size, float bc2_sqrt) {
  m = m + b1c * (g - m);
  v = v * b2 + b2c * g * g;
  p = p * decay - step_size * (m / (sqrtf(v) / bc2_sqrt + eps));
}

__global__ void adamw_kernel(TensorBatch tb, float decay, float b1c, float b2, float b2c, float eps) {
  const int t = blockIdx.y;
  float* __restrict__ p = tb.p[t];
  const float* __restrict__ g = tb.g[t];
  float* __restrict__ m = tb.m[t];
  float* __restrict__ v = tb.v[t];
  const int64_t n = tb.n[t];
  const float ss = tb.step_size[t], bc = tb.bc2_sqrt[t];
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  const bool aligned = ((uintptr_t)p | (uintptr_t)g | (uintptr_t)m | (uintptr_t)v) % 16 == 0;
  int64_t start = 0;
  if (aligned) {  // vectorised body: 4 floats per load
    const int64_t n4 = n / 4;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += stride) {
      float4 P = reinterpret_cast<float4*>(p)[i], G = reinterpret_cast<const float4*>(g)[i];
      float4 M = reinterpret_cast<float4*>(m)[i], V = reinterpret_cast<float4*>(v)[i];
      adamw_elem(P.x, G.x, M.x, V.x, decay, b1c, b2, b2c, eps, ss, bc);
      adamw_elem(P.y, G.y, M.y, V.y, decay, b1c, b2, b2c, eps, ss, bc);
      adamw_elem(P.z, G.z, M.z, V.z, decay, b1c, b2, b2c, eps, ss, bc);
      adamw_elem(P.w, G.w, M.w, V.w, decay, b1c, b2, b2c, eps, ss, bc);
      reinterpret_cast<float4*>(p)[i] = P;
      reinterpret_cast<float4*>(m)[i] = M;
      reinterpret_cast<float4*>(v)[i] = V;
    }
    start = n4 * 4;
  }
  for (int64_t i = start + (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    float P = p[i], M = m[i], V = v[i];
    adamw_elem(P, g[i], M, V, decay, b1c, b2, b2c, eps, ss, bc);
    p[i] = P, m[i] = M, v[i] = V;
  }
}

}  // namespace mlk_cuda

using namespace mlk_cuda;

int mlk_adamw(float* const* p, const float* const* g, float* const* m, float* const* v, const int64_t* numel,
              const float* step_size, const float* bc2_sqrt, int n, float decay, float one_minus_beta1,
              float beta2, float one_minus_beta2, float eps, cudaStream_t stream) {
  for (int t0 = 0; t0 < n; t0 += MAX_T) {
    TensorBatch tb;
    const int cnt = n - t0 < MAX_T ? n - t0 : MAX_T;
    int64_t biggest = 1;
    for (int t = 0; t < cnt; ++t) {
      tb.p[t] = p[t0 + t], tb.g[t] = g[t0 + t], tb.m[t] = m[t0 + t], tb.v[t] = v[t0 + t];
      tb.n[t] = numel[t0 + t], tb.step_size[t] = step_size[t0 + t], tb.bc2_sqrt[t] = bc2_sqrt[t0 + t];
      biggest = numel[t0 + t] > biggest ? numel[t0 + t] : biggest;
    }
    const int threads = 256;
    int64_t blocks = (biggest / 4 + threads - 1) / threads;
    blocks = blocks < 1 ? 1 : (blocks > 1024 ? 1024 : blocks);
    adamw_kernel<<<dim3((unsigned)blocks, (unsigned)cnt), threads, 0, stream>>>(tb, decay, one_minus_beta1, beta2,
                                                                                 one_minus_beta2, eps);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return (int)err;
  }
  return 0;
}
