// simd.h — the small vector toolkit the CPU kernels share.
//
// We write vector code with GCC/Clang vector extensions (`T __attribute__((vector_size(64)))`: 16 floats
// or 8 doubles) instead of intrinsics, so one source compiles for any x86/ARM target. Speed without
// -march=native comes from function multi-versioning: kernels marked MLK_CLONES are compiled three
// times (AVX-512, AVX2+FMA, baseline) and the loader picks the best one for the CPU at run time.
//
// exp: exp(x) = 2^n * exp(r), n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2], exp(r) by a
// degree-6 polynomial (Cephes expf, ~1 ulp); 2^n is built by writing n + 127 into the exponent bits.
// Doubles (used for gradcheck) call std::exp lane by lane: exactness matters more than speed there.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define MLK_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MLK_CLONES
#endif
#define MLK_INLINE inline __attribute__((always_inline))

namespace mlk {

template <typename T>
struct Vec {
  typedef T V __attribute__((vector_size(64)));  // one 512-bit register's worth of T
  static constexpr int L = 64 / sizeof(T);        // lanes: 16 floats, 8 doubles
};

template <typename V, typename T>
MLK_INLINE V load(const T* p) { V v; std::memcpy(&v, p, sizeof(V)); return v; }
template <typename V, typename T>
MLK_INLINE void store(T* p, V v) { std::memcpy(p, &v, sizeof(V)); }
template <typename V, typename T>
MLK_INLINE V splat(T x) { return V{} + x; }
template <typename V>
MLK_INLINE V vmax(V a, V b) { return a > b ? a : b; }

template <typename T, typename V>
MLK_INLINE T hsum(V v) {
  T s = 0;
  for (int i = 0; i < Vec<T>::L; ++i) s += v[i];
  return s;
}
template <typename T, typename V>
MLK_INLINE T hmax(V v) {
  T m = v[0];
  for (int i = 1; i < Vec<T>::L; ++i) m = v[i] > m ? v[i] : m;
  return m;
}

// Vector exp. -inf (a masked score) gives exactly 0.
MLK_INLINE Vec<float>::V vexp(Vec<float>::V x) {
  typedef Vec<float>::V V;
  typedef int32_t VI __attribute__((vector_size(64)));
  const V zero_below = x < -87.0f ? splat<V>(0.0f) : splat<V>(1.0f);
  x = x < -87.0f ? splat<V>(-87.0f) : x;
  x = x > 88.0f ? splat<V>(88.0f) : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer held in the low bits
  V t = x * 1.44269504088896341f + magic;
  V n = t - magic;                                   // round(x / ln 2)
  V r = x - n * 0.693359375f + n * 2.12194440e-4f;   // x - n ln 2 in two steps (Cody-Waite)
  V y = splat<V>(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  VI bits = ((VI)t - (VI)splat<V>(magic) + 127) << 23;  // 2^n as float bits
  return y * (V)bits * zero_below;
}

MLK_INLINE Vec<double>::V vexp(Vec<double>::V x) {
  for (int i = 0; i < Vec<double>::L; ++i) x[i] = std::exp(x[i]);
  return x;
}

MLK_INLINE float sexp(float x) { Vec<float>::V v = splat<Vec<float>::V>(x); return vexp(v)[0]; }
MLK_INLINE double sexp(double x) { return std::exp(x); }

// Load n < L elements, filling the rest with `fill`; store the first n lanes.
template <typename V, typename T>
MLK_INLINE V load_part(const T* p, int64_t n, T fill) {
  V v = splat<V>(fill);
  for (int64_t i = 0; i < n; ++i) v[i] = p[i];
  return v;
}
template <typename V, typename T>
MLK_INLINE void store_part(T* p, V v, int64_t n) {
  for (int64_t i = 0; i < n; ++i) p[i] = v[i];
}

}  // namespace mlk
