// attention.cpp — flash-style attention on CPU: forward with online softmax, backward from the saved LSE.
//
// Forward (Dao et al. 2022, "FlashAttention", Alg. 1; Milakov & Gimelshein 2018 for the online softmax):
//   for a block of BR queries, walk the keys in blocks of BC, never holding more than a BR x BC tile:
//     S = s Q K_blk^T + mask;  m' = max(m, rowmax S);  P = exp(S - m')
//     l = l exp(m - m') + rowsum P;  O = O exp(m - m') + P V_blk;  m = m'
//   at the end O /= l and LSE = m + log l (saved for the backward; +inf for a fully masked row -> O = 0).
// Backward (FlashAttention-2, Alg. 2), per key block, recomputing P = exp(s Q K^T + mask - LSE):
//   dV += P^T dO;  dP = dO V^T;  dS = P * (dP - Delta), Delta_i = dO_i . O_i;  dQ += s dS K;  dK += s dS^T Q
// Masks: causal with a KV-cache offset (query i sees keys j <= i + Tk - Tq) and a key padding mask (B, Tk).
// Memory: O(BR x BC + T x D) per task, never T x T. Every matrix product below is the one micro-kernel
// `mk4`: 4 rows of C (+)= A (4 x K) B (K x NV*L), the A values broadcast, B rows loaded as vectors.
#include <algorithm>
#include <vector>

#include "kernels_cpu.h"
#include "simd.h"

namespace mlk {

constexpr int64_t BR = 64, BC = 64;  // query and key tile sizes (multiples of 4 and of the lane count)

template <typename T, int NV>
MLK_INLINE void mk4(const T* A, int64_t lda, int64_t K, const T* B, int64_t ldb, T* C, int64_t ldc) {
  typedef typename Vec<T>::V V;
  constexpr int L = Vec<T>::L;
  V acc[4][NV];
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < NV; ++c) acc[r][c] = load<V>(C + r * ldc + c * L);
  for (int64_t k = 0; k < K; ++k) {
    V b[NV];
    for (int c = 0; c < NV; ++c) b[c] = load<V>(B + k * ldb + c * L);
    for (int r = 0; r < 4; ++r) {
      const V a = splat<V>(A[r * lda + k]);
      for (int c = 0; c < NV; ++c) acc[r][c] += a * b[c];
    }
  }
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < NV; ++c) store(C + r * ldc + c * L, acc[r][c]);
}

// C (M x N) += A (M x K) B (K x N); M a multiple of 4, N a multiple of L, all row-major with leading dims.
template <typename T>
MLK_INLINE void gemm_acc(const T* A, int64_t lda, int64_t M, int64_t K, const T* B, int64_t ldb, int64_t N, T* C,
                         int64_t ldc) {
  constexpr int L = Vec<T>::L;
  for (int64_t r = 0; r < M; r += 4)
    for (int64_t n = 0; n < N; n += 4 * L) {
      const T* a = A + r * lda;
      const T* b = B + n;
      T* c = C + r * ldc + n;
      switch (std::min<int64_t>(4, (N - n) / L)) {
        case 4: mk4<T, 4>(a, lda, K, b, ldb, c, ldc); break;
        case 3: mk4<T, 3>(a, lda, K, b, ldb, c, ldc); break;
        case 2: mk4<T, 2>(a, lda, K, b, ldb, c, ldc); break;
        default: mk4<T, 1>(a, lda, K, b, ldb, c, ldc); break;
      }
    }
}

// Copy rows [r0, r0+rows) of X (ld D) into dst (BR-or-BC rows x ldd), zero padding, times `scale`.
template <typename T>
MLK_INLINE void copy_rows(const T* X, int64_t r0, int64_t nrows, int64_t D, T* dst, int64_t rows, int64_t ldd) {
  std::fill(dst, dst + rows * ldd, T(0));
  for (int64_t r = 0; r < rows && r0 + r < nrows; ++r) std::copy(X + (r0 + r) * D, X + (r0 + r + 1) * D, dst + r * ldd);
}
// dst (D x BC) = X[j0 : j0+BC]^T, zero padding.
template <typename T>
MLK_INLINE void copy_transposed(const T* X, int64_t j0, int64_t nrows, int64_t D, T* dst) {
  std::fill(dst, dst + D * BC, T(0));
  for (int64_t c = 0; c < BC && j0 + c < nrows; ++c)
    for (int64_t d = 0; d < D; ++d) dst[d * BC + c] = X[(j0 + c) * D + d];
}

// S (BR x BC) = s * S + mask, for the query tile at i0 and key tile at j0 of head bh.
template <typename T>
MLK_INLINE void scale_and_mask(T* S, const AttnShape& sh, int64_t bh, int64_t i0, int64_t j0, T scale) {
  typedef typename Vec<T>::V V;
  constexpr int L = Vec<T>::L;
  const T ninf = -std::numeric_limits<T>::infinity();
  alignas(64) T bias[BC];
  const bool* kpm = sh.kpm ? sh.kpm + (bh / sh.H) * sh.Tk : nullptr;
  for (int64_t c = 0; c < BC; ++c) bias[c] = (j0 + c < sh.Tk && (!kpm || kpm[j0 + c])) ? T(0) : ninf;
  const int64_t off = sh.Tk - sh.Tq;
  for (int64_t r = 0; r < BR; ++r) {
    T* s = S + r * BC;
    for (int64_t c = 0; c < BC; c += L) store(s + c, load<V>(s + c) * scale + load<V>(bias + c));
    if (sh.causal) {
      const int64_t keep = i0 + r + off - j0 + 1;  // columns c < keep are visible to this row
      for (int64_t c = std::max<int64_t>(keep, 0); c < BC; ++c) s[c] = ninf;
    }
  }
}

template <typename T>
MLK_INLINE void attn_fwd_task(const T* q, const T* k, const T* v, T* o, T* lse, const AttnShape& sh, int64_t bh,
                              int64_t i0, T* work) {
  typedef typename Vec<T>::V V;
  constexpr int L = Vec<T>::L;
  const int64_t D = sh.D, Dp = (D + L - 1) / L * L;
  const T scale = T(1) / std::sqrt(T(D)), ninf = -std::numeric_limits<T>::infinity();
  T *Qp = work, *Kt = Qp + BR * Dp, *Vp = Kt + D * BC, *S = Vp + BC * Dp, *O = S + BR * BC;
  T m[BR], l[BR];
  const T* qh = q + bh * sh.Tq * D;
  const T* kh = k + bh * sh.Tk * D;
  const T* vh = v + bh * sh.Tk * D;
  copy_rows(qh, i0, sh.Tq, D, Qp, BR, Dp);  // (BR, Dp)
  std::fill(O, O + BR * Dp, T(0));
  for (int r = 0; r < BR; ++r) m[r] = ninf, l[r] = 0;
  int64_t jend = sh.Tk;
  if (sh.causal) jend = std::min(sh.Tk, i0 + BR - 1 + (sh.Tk - sh.Tq) + 1);  // last key the last row sees
  for (int64_t j0 = 0; j0 < jend; j0 += BC) {
    copy_transposed(kh, j0, sh.Tk, D, Kt);  // (D, BC)
    copy_rows(vh, j0, sh.Tk, D, Vp, BC, Dp);  // (BC, Dp)
    std::fill(S, S + BR * BC, T(0));
    gemm_acc(Qp, Dp, BR, D, Kt, BC, BC, S, BC);  // S = Q K^T   (BR, BC)
    scale_and_mask(S, sh, bh, i0, j0, scale);
    for (int64_t r = 0; r < BR; ++r) {  // online softmax, row by row
      T* s = S + r * BC;
      V mv = splat<V>(ninf);
      for (int64_t c = 0; c < BC; c += L) mv = vmax(mv, load<V>(s + c));
      const T mnew = std::max(m[r], hmax<T>(mv));
      if (mnew == ninf) {  // nothing visible yet in this row
        std::fill(s, s + BC, T(0));
        continue;
      }
      const T alpha = sexp(m[r] - mnew);
      V sum = splat<V>(T(0));
      for (int64_t c = 0; c < BC; c += L) {
        V p = vexp(load<V>(s + c) - mnew);
        store(s + c, p);
        sum += p;
      }
      l[r] = l[r] * alpha + hsum<T>(sum);
      m[r] = mnew;
      if (alpha != T(1))
        for (int64_t d = 0; d < Dp; d += L) store(O + r * Dp + d, load<V>(O + r * Dp + d) * alpha);
    }
    gemm_acc(S, BC, BR, BC, Vp, Dp, Dp, O, Dp);  // O += P V   (BR, Dp)
  }
  for (int64_t r = 0; r < BR && i0 + r < sh.Tq; ++r) {
    const T inv = l[r] > 0 ? T(1) / l[r] : T(0);
    T* orow = o + (bh * sh.Tq + i0 + r) * D;
    for (int64_t d = 0; d < D; ++d) orow[d] = O[r * Dp + d] * inv;
    lse[bh * sh.Tq + i0 + r] = l[r] > 0 ? m[r] + std::log(l[r]) : std::numeric_limits<T>::infinity();
  }
}

template <typename T>
int64_t attn_fwd_work(int64_t D) {
  const int64_t L = Vec<T>::L, Dp = (D + L - 1) / L * L;
  return BR * Dp + D * BC + BC * Dp + BR * BC + BR * Dp;
}

// Forward for tasks [t0, t1): task t = (bh, query tile). Single-threaded; ops.cpp splits tasks over threads.
template <typename T>
MLK_INLINE void attn_fwd_range(const T* q, const T* k, const T* v, T* o, T* lse, const AttnShape& sh, int64_t t0,
                               int64_t t1) {
  std::vector<T> work(attn_fwd_work<T>(sh.D) + 16);
  const int64_t nqb = (sh.Tq + BR - 1) / BR;
  for (int64_t t = t0; t < t1; ++t) attn_fwd_task(q, k, v, o, lse, sh, t / nqb, (t % nqb) * BR, work.data());
}

template <typename T>
MLK_INLINE void transpose_tile(const T* X, T* Xt) {  // (BR, BC) -> (BC, BR)
  for (int64_t r = 0; r < BR; ++r)
    for (int64_t c = 0; c < BC; ++c) Xt[c * BR + r] = X[r * BC + c];
}

// Backward for heads [h0, h1). One task per head: it owns dK, dV and a (Tq, Dp) dQ accumulator.
template <typename T>
MLK_INLINE void attn_bwd_range(const T* q, const T* k, const T* v, const T* o, const T* dout, const T* lse, T* dq,
                               T* dk, T* dv, const AttnShape& sh, int64_t h0, int64_t h1) {
  typedef typename Vec<T>::V V;
  constexpr int L = Vec<T>::L;
  const int64_t D = sh.D, Dp = (D + L - 1) / L * L, Tq = sh.Tq, Tk = sh.Tk;
  const int64_t TqP = (Tq + BR - 1) / BR * BR, off = Tk - Tq;
  const T scale = T(1) / std::sqrt(T(D));
  std::vector<T> buf(TqP * Dp + TqP + 3 * D * BC + 0 + BC * Dp * 3 + BR * Dp * 2 + 4 * BR * BC + 16);
  T *dQa = buf.data(), *Delta = dQa + TqP * Dp, *Kt = Delta + TqP, *Vt = Kt + D * BC, *Kp = Vt + D * BC;
  T *dKa = Kp + BC * Dp, *dVa = dKa + BC * Dp, *Qp = dVa + BC * Dp, *dOp = Qp + BR * Dp;
  T *P = dOp + BR * Dp, *dS = P + BR * BC, *Pt = dS + BR * BC, *dSt = Pt + BR * BC;
  T lse_b[BR];
  for (int64_t bh = h0; bh < h1; ++bh) {
    const T *qh = q + bh * Tq * D, *kh = k + bh * Tk * D, *vh = v + bh * Tk * D;
    const T *oh = o + bh * Tq * D, *doh = dout + bh * Tq * D, *lh = lse + bh * Tq;
    std::fill(dQa, dQa + TqP * Dp, T(0));
    for (int64_t i = 0; i < TqP; ++i) {
      T s = 0;
      if (i < Tq)
        for (int64_t d = 0; d < D; ++d) s += doh[i * D + d] * oh[i * D + d];
      Delta[i] = s;
    }
    for (int64_t j0 = 0; j0 < Tk; j0 += BC) {
      copy_transposed(kh, j0, Tk, D, Kt);   // (D, BC)
      copy_transposed(vh, j0, Tk, D, Vt);   // (D, BC)
      copy_rows(kh, j0, Tk, D, Kp, BC, Dp);  // (BC, Dp)
      std::fill(dKa, dKa + 2 * BC * Dp, T(0));  // dKa and dVa
      int64_t istart = 0;
      if (sh.causal) istart = std::max<int64_t>(0, j0 - off) / BR * BR;  // earlier rows see none of these keys
      for (int64_t i0 = istart; i0 < Tq; i0 += BR) {
        copy_rows(qh, i0, Tq, D, Qp, BR, Dp);
        copy_rows(doh, i0, Tq, D, dOp, BR, Dp);
        for (int64_t r = 0; r < BR; ++r) lse_b[r] = i0 + r < Tq ? lh[i0 + r] : std::numeric_limits<T>::infinity();
        std::fill(P, P + 2 * BR * BC, T(0));  // P and dS (dS holds dP first)
        gemm_acc(Qp, Dp, BR, D, Kt, BC, BC, P, BC);  // S = Q K^T
        scale_and_mask(P, sh, bh, i0, j0, scale);
        gemm_acc(dOp, Dp, BR, D, Vt, BC, BC, dS, BC);  // dP = dO V^T
        for (int64_t r = 0; r < BR; ++r) {
          const V lr = splat<V>(lse_b[r]), dl = splat<V>(Delta[i0 + r]);
          for (int64_t c = 0; c < BC; c += L) {
            V p = vexp(load<V>(P + r * BC + c) - lr);  // P = exp(S - LSE), 0 where masked
            store(P + r * BC + c, p);
            store(dS + r * BC + c, p * (load<V>(dS + r * BC + c) - dl) * scale);  // s * dS
          }
        }
        transpose_tile(P, Pt);
        transpose_tile(dS, dSt);
        gemm_acc(Pt, BR, BC, BR, dOp, Dp, Dp, dVa, Dp);              // dV += P^T dO
        gemm_acc(dS, BC, BR, BC, Kp, Dp, Dp, dQa + i0 * Dp, Dp);     // dQ += s dS K
        gemm_acc(dSt, BR, BC, BR, Qp, Dp, Dp, dKa, Dp);              // dK += s dS^T Q
      }
      for (int64_t c = 0; c < BC && j0 + c < Tk; ++c)
        for (int64_t d = 0; d < D; ++d) {
          dk[(bh * Tk + j0 + c) * D + d] = dKa[c * Dp + d];
          dv[(bh * Tk + j0 + c) * D + d] = dVa[c * Dp + d];
        }
    }
    for (int64_t i = 0; i < Tq; ++i)
      for (int64_t d = 0; d < D; ++d) dq[(bh * Tq + i) * D + d] = dQa[i * Dp + d];
  }
}

MLK_CLONES void attn_fwd_kernel(const float* q, const float* k, const float* v, float* o, float* lse,
                             const AttnShape& sh, int64_t t0, int64_t t1) {
  attn_fwd_range<float>(q, k, v, o, lse, sh, t0, t1);
}
void attn_fwd_kernel(const double* q, const double* k, const double* v, double* o, double* lse, const AttnShape& sh,
                  int64_t t0, int64_t t1) {
  attn_fwd_range<double>(q, k, v, o, lse, sh, t0, t1);
}
MLK_CLONES void attn_bwd_kernel(const float* q, const float* k, const float* v, const float* o, const float* dout,
                             const float* lse, float* dq, float* dk, float* dv, const AttnShape& sh, int64_t h0,
                             int64_t h1) {
  attn_bwd_range<float>(q, k, v, o, dout, lse, dq, dk, dv, sh, h0, h1);
}
void attn_bwd_kernel(const double* q, const double* k, const double* v, const double* o, const double* dout,
                  const double* lse, double* dq, double* dk, double* dv, const AttnShape& sh, int64_t h0,
                  int64_t h1) {
  attn_bwd_range<double>(q, k, v, o, dout, lse, dq, dk, dv, sh, h0, h1);
}
int64_t attn_num_q_tiles(int64_t Tq) { return (Tq + BR - 1) / BR; }

}  // namespace mlk
