// attention.cu — flash-style attention on the GPU (fp32 or bf16 storage, fp32 math), forward and backward.
//
// The same algorithm as csrc/attention.cpp (see its header for the math), in its simplest GPU form:
//   forward:  one thread per query row, a block of BR rows shares each BC-key tile of K and V staged in shared
//             memory; online softmax in registers; writes O and LSE (the T x T matrix never exists).
//   backward: (1) Delta_i = dO_i . O_i; (2) dQ: one thread per query row, recomputes P = exp(s q k - LSE);
//             (3) dK, dV: one thread per key row, walks the query tiles. No atomics: each output row has one owner.
// This is the readable version (no tensor cores, one row per thread): correct everywhere, far from FlashAttention-2
// speed. Head dims 32, 64, 128 are compiled; others fall back (Python side) to another backend.
#include "common.cuh"

namespace mlk_cuda {

constexpr int BR = 64;  // query rows per block (one per thread)
constexpr int BC = 32;  // keys per shared-memory tile

__device__ __forceinline__ bool visible(int64_t i, int64_t j, int64_t Tk, int64_t off, int causal, const bool* kpm) {
  return j < Tk && (!causal || j <= i + off) && (kpm == nullptr || kpm[j]);
}

template <typename T, int D>
__device__ __forceinline__ void stage_tile(const T* src, int64_t j0, int64_t rows, float (*dst)[D]) {
  for (int e = threadIdx.x; e < BC * D; e += blockDim.x) {
    const int c = e / D, d = e % D;
    dst[c][d] = j0 + c < rows ? to_f(src[(j0 + c) * D + d]) : 0.f;
  }
}

template <typename T, int D>
__global__ void attn_fwd_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                T* __restrict__ o, float* __restrict__ lse, int64_t H, int64_t Tq, int64_t Tk,
                                int causal, const bool* __restrict__ kpm, float scale) {
  __shared__ float Ks[BC][D], Vs[BC][D];
  const int64_t bh = blockIdx.y, i = (int64_t)blockIdx.x * BR + threadIdx.x, off = Tk - Tq;
  const T *qh = q + bh * Tq * D, *kh = k + bh * Tk * D, *vh = v + bh * Tk * D;
  const bool* kb = kpm ? kpm + (bh / H) * Tk : nullptr;
  float qr[D], acc[D];
  for (int d = 0; d < D; ++d) qr[d] = i < Tq ? to_f(qh[i * D + d]) * scale : 0.f, acc[d] = 0.f;
  float m = -INFINITY, l = 0.f;
  int64_t jend = Tk;
  if (causal) jend = min(Tk, (int64_t)blockIdx.x * BR + BR + off);
  for (int64_t j0 = 0; j0 < jend; j0 += BC) {
    stage_tile<T, D>(kh, j0, Tk, Ks);
    stage_tile<T, D>(vh, j0, Tk, Vs);
    __syncthreads();
    float s[BC], mt = -INFINITY;
    for (int c = 0; c < BC; ++c) {
      float dot = 0.f;
      for (int d = 0; d < D; ++d) dot += qr[d] * Ks[c][d];
      s[c] = (i < Tq && visible(i, j0 + c, Tk, off, causal, kb)) ? dot : -INFINITY;
      mt = fmaxf(mt, s[c]);
    }
    const float mnew = fmaxf(m, mt);
    if (mnew != -INFINITY) {
      const float alpha = __expf(m - mnew);
      l *= alpha;
      for (int d = 0; d < D; ++d) acc[d] *= alpha;
      for (int c = 0; c < BC; ++c) {
        const float p = __expf(s[c] - mnew);
        l += p;
        for (int d = 0; d < D; ++d) acc[d] += p * Vs[c][d];
      }
      m = mnew;
    }
    __syncthreads();
  }
  if (i < Tq) {
    const float inv = l > 0.f ? 1.f / l : 0.f;
    for (int d = 0; d < D; ++d) o[(bh * Tq + i) * D + d] = from_f<T>(acc[d] * inv);
    lse[bh * Tq + i] = l > 0.f ? m + logf(l) : INFINITY;
  }
}

template <typename T, int D>
__global__ void attn_delta_kernel(const T* __restrict__ o, const T* __restrict__ dout, float* __restrict__ delta,
                                  int64_t n) {
  const int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= n) return;
  float s = 0.f;
  for (int d = 0; d < D; ++d) s += to_f(o[r * D + d]) * to_f(dout[r * D + d]);
  delta[r] = s;
}

// dQ_i = s sum_j dS_ij k_j,  dS_ij = P_ij (dO_i . v_j - Delta_i)
template <typename T, int D>
__global__ void attn_dq_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                               const T* __restrict__ dout, const float* __restrict__ lse,
                               const float* __restrict__ delta, T* __restrict__ dq, int64_t H, int64_t Tq,
                               int64_t Tk, int causal, const bool* __restrict__ kpm, float scale) {
  __shared__ float Ks[BC][D], Vs[BC][D];
  const int64_t bh = blockIdx.y, i = (int64_t)blockIdx.x * BR + threadIdx.x, off = Tk - Tq;
  const T *qh = q + bh * Tq * D, *kh = k + bh * Tk * D, *vh = v + bh * Tk * D, *doh = dout + bh * Tq * D;
  const bool* kb = kpm ? kpm + (bh / H) * Tk : nullptr;
  float qr[D], dor[D], acc[D];
  for (int d = 0; d < D; ++d) {
    qr[d] = i < Tq ? to_f(qh[i * D + d]) * scale : 0.f;
    dor[d] = i < Tq ? to_f(doh[i * D + d]) : 0.f;
    acc[d] = 0.f;
  }
  const float li = i < Tq ? lse[bh * Tq + i] : INFINITY, di = i < Tq ? delta[bh * Tq + i] : 0.f;
  int64_t jend = Tk;
  if (causal) jend = min(Tk, (int64_t)blockIdx.x * BR + BR + off);
  for (int64_t j0 = 0; j0 < jend; j0 += BC) {
    stage_tile<T, D>(kh, j0, Tk, Ks);
    stage_tile<T, D>(vh, j0, Tk, Vs);
    __syncthreads();
    for (int c = 0; c < BC; ++c) {
      if (i >= Tq || !visible(i, j0 + c, Tk, off, causal, kb)) continue;
      float s = 0.f, dp = 0.f;
      for (int d = 0; d < D; ++d) s += qr[d] * Ks[c][d], dp += dor[d] * Vs[c][d];
      const float ds = __expf(s - li) * (dp - di);
      for (int d = 0; d < D; ++d) acc[d] += ds * Ks[c][d];
    }
    __syncthreads();
  }
  if (i < Tq)
    for (int d = 0; d < D; ++d) dq[(bh * Tq + i) * D + d] = from_f<T>(acc[d] * scale);
}

// dV_j = sum_i P_ij dO_i,  dK_j = s sum_i dS_ij q_i: one thread per key row, query tiles staged in shared memory.
template <typename T, int D>
__global__ void attn_dkdv_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                 const T* __restrict__ dout, const float* __restrict__ lse,
                                 const float* __restrict__ delta, T* __restrict__ dk, T* __restrict__ dv, int64_t H,
                                 int64_t Tq, int64_t Tk, int causal, const bool* __restrict__ kpm, float scale) {
  __shared__ float Qs[BC][D], dOs[BC][D], Ls[BC], Ds[BC];
  const int64_t bh = blockIdx.y, j = (int64_t)blockIdx.x * BR + threadIdx.x, off = Tk - Tq;
  const T *qh = q + bh * Tq * D, *kh = k + bh * Tk * D, *vh = v + bh * Tk * D, *doh = dout + bh * Tq * D;
  const bool* kb = kpm ? kpm + (bh / H) * Tk : nullptr;
  float kr[D], vr[D], dka[D], dva[D];
  for (int d = 0; d < D; ++d) {
    kr[d] = j < Tk ? to_f(kh[j * D + d]) * scale : 0.f;
    vr[d] = j < Tk ? to_f(vh[j * D + d]) : 0.f;
    dka[d] = dva[d] = 0.f;
  }
  int64_t istart = 0;
  if (causal) istart = max((int64_t)0, (int64_t)blockIdx.x * BR - off) / BC * BC;  // earlier rows see none
  for (int64_t i0 = istart; i0 < Tq; i0 += BC) {
    stage_tile<T, D>(qh, i0, Tq, Qs);
    stage_tile<T, D>(doh, i0, Tq, dOs);
    for (int c = threadIdx.x; c < BC; c += blockDim.x) {
      Ls[c] = i0 + c < Tq ? lse[bh * Tq + i0 + c] : INFINITY;
      Ds[c] = i0 + c < Tq ? delta[bh * Tq + i0 + c] : 0.f;
    }
    __syncthreads();
    for (int c = 0; c < BC; ++c) {
      if (j >= Tk || i0 + c >= Tq || !visible(i0 + c, j, Tk, off, causal, kb)) continue;
      float s = 0.f, dp = 0.f;
      for (int d = 0; d < D; ++d) s += Qs[c][d] * kr[d], dp += dOs[c][d] * vr[d];
      const float p = __expf(s - Ls[c]), ds = p * (dp - Ds[c]);
      for (int d = 0; d < D; ++d) dva[d] += p * dOs[c][d], dka[d] += ds * Qs[c][d];
    }
    __syncthreads();
  }
  if (j < Tk)
    for (int d = 0; d < D; ++d) {
      dk[(bh * Tk + j) * D + d] = from_f<T>(dka[d] * scale);
      dv[(bh * Tk + j) * D + d] = from_f<T>(dva[d]);
    }
}

template <typename T, int D>
int fwd(const void* q, const void* k, const void* v, void* o, float* lse, int64_t BH, int64_t H, int64_t Tq,
        int64_t Tk, int causal, const bool* kpm, cudaStream_t st) {
  dim3 grid((unsigned)((Tq + BR - 1) / BR), (unsigned)BH);
  attn_fwd_kernel<T, D><<<grid, BR, 0, st>>>((const T*)q, (const T*)k, (const T*)v, (T*)o, lse, H, Tq, Tk, causal,
                                             kpm, rsqrtf((float)D));
  return (int)cudaGetLastError();
}

template <typename T, int D>
int bwd(const void* q, const void* k, const void* v, const void* o, const void* dout, const float* lse, float* delta,
        void* dq, void* dk, void* dv, int64_t BH, int64_t H, int64_t Tq, int64_t Tk, int causal, const bool* kpm,
        cudaStream_t st) {
  const float scale = rsqrtf((float)D);
  const int64_t n = BH * Tq;
  attn_delta_kernel<T, D><<<(unsigned)((n + 255) / 256), 256, 0, st>>>((const T*)o, (const T*)dout, delta, n);
  dim3 gq((unsigned)((Tq + BR - 1) / BR), (unsigned)BH), gk((unsigned)((Tk + BR - 1) / BR), (unsigned)BH);
  attn_dq_kernel<T, D><<<gq, BR, 0, st>>>((const T*)q, (const T*)k, (const T*)v, (const T*)dout, lse, delta, (T*)dq,
                                          H, Tq, Tk, causal, kpm, scale);
  attn_dkdv_kernel<T, D><<<gk, BR, 0, st>>>((const T*)q, (const T*)k, (const T*)v, (const T*)dout, lse, delta,
                                            (T*)dk, (T*)dv, H, Tq, Tk, causal, kpm, scale);
  return (int)cudaGetLastError();
}

}  // namespace mlk_cuda

using namespace mlk_cuda;

int mlk_attn_supports_head_dim(int64_t D) { return D == 32 || D == 64 || D == 128; }

#define MLK_DISPATCH(DT, HD, CALL)                                                              \
  do {                                                                                          \
    if ((DT) == MLK_BF16) {                                                                     \
      if ((HD) == 32) { using T = __nv_bfloat16; constexpr int D = 32; return CALL; }          \
      if ((HD) == 64) { using T = __nv_bfloat16; constexpr int D = 64; return CALL; }          \
      if ((HD) == 128) { using T = __nv_bfloat16; constexpr int D = 128; return CALL; }        \
    } else {                                                                                    \
      if ((HD) == 32) { using T = float; constexpr int D = 32; return CALL; }                  \
      if ((HD) == 64) { using T = float; constexpr int D = 64; return CALL; }                  \
      if ((HD) == 128) { using T = float; constexpr int D = 128; return CALL; }                \
    }                                                                                           \
    return (int)cudaErrorInvalidValue;                                                          \
  } while (0)

int mlk_attn_fwd(const void* q, const void* k, const void* v, void* o, float* lse, int64_t BH, int64_t H, int64_t Tq,
                 int64_t Tk, int64_t D, int causal, const bool* kpm, int dtype, cudaStream_t stream) {
  if (BH == 0 || Tq == 0) return 0;
  MLK_DISPATCH(dtype, D, (fwd<T, D>(q, k, v, o, lse, BH, H, Tq, Tk, causal, kpm, stream)));
}

int mlk_attn_bwd(const void* q, const void* k, const void* v, const void* o, const void* dout, const float* lse,
                 float* delta, void* dq, void* dk, void* dv, int64_t BH, int64_t H, int64_t Tq, int64_t Tk, int64_t D,
                 int causal, const bool* kpm, int dtype, cudaStream_t stream) {
  if (BH == 0 || Tq == 0 || Tk == 0) return 0;  // the caller zero-fills the gradients
  MLK_DISPATCH(dtype, D, (bwd<T, D>(q, k, v, o, dout, lse, delta, dq, dk, dv, BH, H, Tq, Tk, causal, kpm, stream)));
}
