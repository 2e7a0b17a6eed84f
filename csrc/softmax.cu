// softmax.cu — fused scaled (+causal) softmax on the GPU, forward and backward; fp32 or bf16 storage.
//
// Version notes (each adds one idea; the CPU reference is minillm/kernels/reference.py):
//   one block of 256 threads per row; sweep 1 the max of s x, sweep 2 the sum of exp(s x - max),
//   sweep 3 writes exp(s x - max) / sum. The row is read three times but from L2 after the first.
//   Backward: dx = s y (dy - <y, dy>), one block per row, two sweeps.
#include "common.cuh"

namespace mlk_cuda {

template <typename T>
__global__ void softmax_fwd_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t S, int64_t Tq, float scale,
                                   int causal) {
  const int64_t row = blockIdx.x;
  const T* xr = x + row * S;
  T* yr = y + row * S;
  int64_t n = S;  // kept columns
  if (causal) {
    n = row % Tq + S - Tq + 1;
    n = n < 0 ? 0 : (n > S ? S : n);
  }
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, to_f(xr[j]) * scale);
  m = block_reduce<true>(m);
  float s = 0.f;
  if (m != -INFINITY)
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) s += __expf(to_f(xr[j]) * scale - m);
  s = block_reduce<false>(s);
  const float inv = s > 0.f ? 1.f / s : 0.f;
  for (int64_t j = threadIdx.x; j < S; j += blockDim.x)
    yr[j] = from_f<T>(j < n && s > 0.f ? __expf(to_f(xr[j]) * scale - m) * inv : 0.f);  // all masked: 0
}

template <typename T>
__global__ void softmax_bwd_kernel(const T* __restrict__ y, const T* __restrict__ dy, T* __restrict__ dx, int64_t S,
                                   float scale) {
  const int64_t row = blockIdx.x;
  const T *yr = y + row * S, *dyr = dy + row * S;
  T* dxr = dx + row * S;
  float dot = 0.f;
  for (int64_t j = threadIdx.x; j < S; j += blockDim.x) dot += to_f(yr[j]) * to_f(dyr[j]);
  dot = block_reduce<false>(dot);
  for (int64_t j = threadIdx.x; j < S; j += blockDim.x)
    dxr[j] = from_f<T>(scale * to_f(yr[j]) * (to_f(dyr[j]) - dot));
}

}  // namespace mlk_cuda

using namespace mlk_cuda;

int mlk_softmax_fwd(const void* x, void* y, int64_t rows, int64_t S, int64_t Tq, float scale, int causal, int dtype,
                    cudaStream_t stream) {
  if (rows == 0) return 0;
  const int threads = S >= 1024 ? 256 : (S >= 256 ? 128 : 32);
  if (dtype == MLK_BF16)
    softmax_fwd_kernel<__nv_bfloat16><<<rows, threads, 0, stream>>>(
        (const __nv_bfloat16*)x, (__nv_bfloat16*)y, S, Tq, scale, causal);
  else
    softmax_fwd_kernel<float><<<rows, threads, 0, stream>>>((const float*)x, (float*)y, S, Tq, scale, causal);
  return (int)cudaGetLastError();
}

int mlk_softmax_bwd(const void* y, const void* dy, void* dx, int64_t rows, int64_t S, float scale, int dtype,
                    cudaStream_t stream) {
  if (rows == 0) return 0;
  const int threads = S >= 1024 ? 256 : (S >= 256 ? 128 : 32);
  if (dtype == MLK_BF16)
    softmax_bwd_kernel<__nv_bfloat16><<<rows, threads, 0, stream>>>(
        (const __nv_bfloat16*)y, (const __nv_bfloat16*)dy, (__nv_bfloat16*)dx, S, scale);
  else
    softmax_bwd_kernel<float><<<rows, threads, 0, stream>>>((const float*)y, (const float*)dy, (float*)dx, S, scale);
  return (int)cudaGetLastError();
}
