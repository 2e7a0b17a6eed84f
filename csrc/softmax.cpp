// softmax.cpp — fused scaled (+causal) softmax over the last dimension, forward and backward, on CPU.
//
//   y_j = exp(s x_j - m) / sum_k exp(s x_k - m),   m = max_k s x_k          (the max trick: no overflow)
//   causal: row i of a (T, S) matrix keeps columns j <= i + S - T (the last T of S positions)
//   backward: dx_j = s y_j (dy_j - sum_k y_k dy_k)                          (Jacobian of softmax, times s)
//
// One kernel does scale -> mask -> max -> exp -> sum -> normalise in three sweeps over a row that sits
// in L1, instead of four full tensors' worth of memory traffic. Masked columns are never exponentiated.
// The caller (ops.cpp) splits rows across threads; each function here is single-threaded.
#include "simd.h"

namespace mlk {

template <typename T>
MLK_INLINE void softmax_rows(const T* x, T* y, int64_t r0, int64_t r1, int64_t S, int64_t Tq, T scale,
                             bool causal) {
  typedef typename Vec<T>::V V;
  constexpr int L = Vec<T>::L;
  const T ninf = -std::numeric_limits<T>::infinity();
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = x + r * S;
    T* yr = y + r * S;
    int64_t n = S;  // number of kept columns in this row
    if (causal) {
      int64_t i = r % Tq;
      n = i + S - Tq + 1;
      n = n < 0 ? 0 : (n > S ? S : n);
    }
    // sweep 1: the row max of s x
    V mv = splat<V>(ninf);
    int64_t j = 0;
    for (; j + L <= n; j += L) mv = vmax(mv, load<V>(xr + j) * scale);
    if (j < n) mv = vmax(mv, load_part<V>(xr + j, n - j, ninf) * scale);
    T m = hmax<T>(mv);
    if (m == ninf) {  // every column masked: the row is all zeros (matches the reference)
      for (int64_t c = 0; c < S; ++c) yr[c] = 0;
      continue;
    }
    // sweep 2: e = exp(s x - m) into y, and its sum
    V sv = splat<V>(T(0));
    const V mm = splat<V>(m);
    for (j = 0; j + L <= n; j += L) {
      V e = vexp(load<V>(xr + j) * scale - mm);
      store(yr + j, e);
      sv += e;
    }
    if (j < n) {
      V e = vexp(load_part<V>(xr + j, n - j, ninf) * scale - mm);  // padded lanes give exp(-inf) = 0
      store_part(yr + j, e, n - j);
      sv += e;
    }
    // sweep 3: normalise; masked columns are 0
    const V inv = splat<V>(T(1) / hsum<T>(sv));
    for (j = 0; j + L <= n; j += L) store(yr + j, load<V>(yr + j) * inv);
    for (; j < n; ++j) yr[j] *= inv[0];
    for (; j < S; ++j) yr[j] = 0;
  }
}

template <typename T>
MLK_INLINE void softmax_bwd_rows(const T* y, const T* dy, T* dx, int64_t r0, int64_t r1, int64_t S, T scale) {
  typedef typename Vec<T>::V V;
  constexpr int L = Vec<T>::L;
  for (int64_t r = r0; r < r1; ++r) {
    const T* yr = y + r * S;
    const T* dyr = dy + r * S;
    T* dxr = dx + r * S;
    V acc = splat<V>(T(0));
    int64_t j = 0;
    for (; j + L <= S; j += L) acc += load<V>(yr + j) * load<V>(dyr + j);
    T dot = hsum<T>(acc);
    for (; j < S; ++j) dot += yr[j] * dyr[j];
    const V d = splat<V>(dot);
    for (j = 0; j + L <= S; j += L) store(dxr + j, load<V>(yr + j) * (load<V>(dyr + j) - d) * scale);
    for (; j < S; ++j) dxr[j] = yr[j] * (dyr[j] - dot) * scale;
  }
}

MLK_CLONES void softmax_fwd_kernel(const float* x, float* y, int64_t r0, int64_t r1, int64_t S, int64_t Tq,
                                float scale, bool causal) {
  softmax_rows<float>(x, y, r0, r1, S, Tq, scale, causal);
}
void softmax_fwd_kernel(const double* x, double* y, int64_t r0, int64_t r1, int64_t S, int64_t Tq, double scale,
                     bool causal) {
  softmax_rows<double>(x, y, r0, r1, S, Tq, scale, causal);
}
MLK_CLONES void softmax_bwd_kernel(const float* y, const float* dy, float* dx, int64_t r0, int64_t r1, int64_t S,
                                float scale) {
  softmax_bwd_rows<float>(y, dy, dx, r0, r1, S, scale);
}
void softmax_bwd_kernel(const double* y, const double* dy, double* dx, int64_t r0, int64_t r1, int64_t S,
                     double scale) {
  softmax_bwd_rows<double>(y, dy, dx, r0, r1, S, scale);
}

}  // namespace mlk
