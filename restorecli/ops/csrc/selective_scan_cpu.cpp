// Selective scan on the CPU: forward and backward of
//   h_t = exp(dt_t * A) * h_{t-1} + dt_t * u_t * B_t,   y_t = <C_t, h_t> + D * u_t,
// with dt = softplus(delta + delta_bias) (optional softplus, torch threshold 20).
//
// Plain C++17 with a C ABI, loaded through ctypes: it includes no torch headers, so it
// builds in seconds and does not depend on the torch ABI.
//
// Layout and parallel plan:
//  * u, delta, y and their gradients are (batch, dim, L); A is (dim, N);
//    B and C are pre-transposed by the caller to (batch, G, L, N), so a time step reads
//    N consecutive values.
//  * Work unit = up to W channels of one (batch, group). The W channels are the SIMD
//    lanes: the recurrence is sequential in t but independent across channels, so
//    vectorising over channels keeps every vector instruction busy whatever N is.
//    Time tiles of T steps are transposed into thread-local [t][lane] buffers.
//  * exp and log1p are our own branch-free versions so the compiler can vectorise them
//    (libm calls would stay scalar without -ffast-math, which we avoid because it
//    changes the numerics of the whole process on some toolchains).
//  * The forward optionally stores the state at the end of each tile ("checkpoints");
//    the backward walks the tiles in reverse, recomputes the states of one tile from
//    its checkpoint and runs the adjoint recurrence. Gradients of B and C are shared
//    by all channels of a group, so each thread accumulates into its own slice of the
//    caller's (threads, batch, G, L, N) buffers, which the caller sums: no data races.
//
// Ordered variant ("oscan"): the G groups are scan directions over one H x W map. Instead of
// G permuted (batch, dim, L) copies, the kernel reads step t of direction g at raster position
// order[g][t] of channels-last arrays and writes y back at that position, so the model never
// materialises the permuted sequences:
//  * x (batch, L, inner) holds u for every direction (dim = G * inner, group g = direction g);
//  * proj (batch, L, P) holds per position and direction g, at g * (R + 2N): the low-rank
//    step input dt_low (R values), then B (N), then C (N) -- the output of one x_proj GEMM;
//  * delta = dt_w (dim, R) . dt_low is computed in the kernel (the dt_proj GEMM, fused);
//  * y is (batch, L, G, inner). A time step of 16 channels is then one contiguous 64-byte
//    row instead of a strided transpose. dx, the gradient of x, is (batch, L, inner): the
//    directions of one image and channel chunk run on one worker, the first storing its
//    d loss / d u and the others adding theirs (no (batch, L, G, inner) copy to sum later).
// The backward sums the gradients of dt_low, B and C (shared by a direction's channels)
// into per-thread (threads, batch, L, P) buffers, like dB/dC of the plain layout.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <new>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#if defined(__GNUC__) || defined(__clang__)
#define RCS_PRAGMA(x) _Pragma(#x)
#define RCS_SIMD RCS_PRAGMA(omp simd)
#else
#define RCS_SIMD
#endif

#if defined(_WIN32)
#define RCS_EXPORT extern "C" __declspec(dllexport)
#else
#define RCS_EXPORT extern "C" __attribute__((visibility("default")))
#endif

namespace {

constexpr int W = 16;  // lanes (channels) per work unit: one AVX-512 float vector
constexpr int kAbiVersion = 5;

// ---------------------------------------------------------------------------------------
// Vectorisable math. float versions are approximations with < 2 ulp error; the double
// versions call libm (they exist for gradient checks, not for speed).

inline float bits_as_float(uint32_t i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}

inline uint32_t float_as_bits(float f) {
  uint32_t i;
  std::memcpy(&i, &f, sizeof i);
  return i;
}

// Relative-error fit of 2^f on [0, 1], degree 6, highest power first (max error 8e-8 in
// float).
constexpr float kExp2Poly[7] = {2.1702255e-4f, 1.2439688e-3f, 9.6788406e-3f, 5.5483341e-2f,
                                2.4022983e-1f, 6.9314700e-1f, 1.0f};

// 2^y. Saturates outside [-126, 127]: very negative arguments give about 1e-38 instead
// of 0 (harmless as a decay factor), overflow gives about 1.7e38. NaN stays NaN.
// kHigh = false skips the upper clamp for callers whose argument is never positive.
template <bool kHigh = true>
inline float exp2_approx(float y) {
  y = y < -126.0f ? -126.0f : y;
  if (kHigh) y = y > 127.0f ? 127.0f : y;
  const float fl = std::floor(y);
  const float f = y - fl;  // in [0, 1)
  float p = kExp2Poly[0];
  for (int k = 1; k < 7; ++k) p = p * f + kExp2Poly[k];
  // p is in [1, 2): adding n to its exponent field multiplies it by 2^n.
  const uint32_t n = static_cast<uint32_t>(static_cast<int32_t>(fl));
  return bits_as_float(float_as_bits(p) + (n << 23));
}

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
// ln 2 = kLn2Hi + kLn2Lo, kLn2Hi with few mantissa bits so n * kLn2Hi is exact.
constexpr float kLn2Hi = 0.693359375f;
constexpr float kLn2Lo = -2.12194440e-4f;

// exp(x) for x <= 0 (all our callers pass -|x|). Unlike exp2(x * log2 e), the reduction
// x - n ln 2 is done in two exact-ish steps, so the error stays ~1 ulp for large |x|
// (the rounding of x * log2 e alone would cost |x| * 6e-8 relative).
inline float exp_neg_approx(float x) {
  x = x < -86.0f ? -86.0f : x;  // keeps 2^n normal below
  const float fl = std::floor(x * kLog2e);
  const float r = (x - fl * kLn2Hi) - fl * kLn2Lo;  // in about [0, ln 2)
  const float f = r * kLog2e;
  float p = kExp2Poly[0];
  for (int k = 1; k < 7; ++k) p = p * f + kExp2Poly[k];
  const uint32_t n = static_cast<uint32_t>(static_cast<int32_t>(fl));
  return bits_as_float(float_as_bits(p) + (n << 23));
}

// log(1 + z) for z in [0, 1]: log(m) = 2 atanh(s), s = (m - 1) / (m + 1), after
// reducing 1 + z to m in [0.707, 1.414]; the small-z branch uses z itself (exact).
inline float log1p_unit(float z) {
  const bool hi = z > 0.41421356f;
  const float f = hi ? (z - 1.0f) * 0.5f : z;  // m - 1
  const float s = f / (2.0f + f);
  const float s2 = s * s;
  float r = 2.0f / 9.0f;
  r = r * s2 + 2.0f / 7.0f;
  r = r * s2 + 2.0f / 5.0f;
  r = r * s2 + 2.0f / 3.0f;
  r = r * s2;
  return (hi ? kLn2 : 0.0f) + s * (2.0f + r);
}

// softplus with torch's default threshold (x > 20 returns x).
inline float softplus(float x) {
  const float sp = std::max(x, 0.0f) + log1p_unit(exp_neg_approx(-std::fabs(x)));
  return x > 20.0f ? x : sp;
}

// d softplus / dx = sigmoid(x), and exactly 1 above the threshold (as torch).
inline float softplus_grad(float x) {
  const float e = exp_neg_approx(-std::fabs(x));
  const float s = (x >= 0.0f ? 1.0f : e) / (1.0f + e);
  return x > 20.0f ? 1.0f : s;
}

#if defined(__AVX512F__)
// AVX-512 versions of the float math above, used by the hot loops (the generic code is
// vectorised by the compiler but pays for clamps and a division).

// 2^y on 16 lanes: the same polynomial, with vscalefps doing the exponent (IEEE underflow
// to 0 and overflow to inf, no clamps).
inline __m512 exp2_avx512(__m512 y) {
  const __m512 fl = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(y, fl);
  __m512 p = _mm512_set1_ps(kExp2Poly[0]);
  for (int k = 1; k < 7; ++k) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2Poly[k]));
  return _mm512_scalef_ps(p, fl);
}

// exp(x) for x <= 0 with the two-step reduction of exp_neg_approx().
inline __m512 exp_neg_avx512(__m512 x) {
  const __m512 fl = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                         _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(fl, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(fl, _mm512_set1_ps(kLn2Lo), r);
  const __m512 f = _mm512_mul_ps(r, _mm512_set1_ps(kLog2e));
  __m512 p = _mm512_set1_ps(kExp2Poly[0]);
  for (int k = 1; k < 7; ++k) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2Poly[k]));
  return _mm512_scalef_ps(p, fl);
}

// 1 / x: 14-bit estimate refined by one Newton step (about 1 ulp; vdivps is far slower).
inline __m512 recip_avx512(__m512 x) {
  const __m512 r = _mm512_rcp14_ps(x);
  return _mm512_mul_ps(r, _mm512_fnmadd_ps(x, r, _mm512_set1_ps(2.0f)));
}

// softplus (threshold 20) with the formulas of softplus()/log1p_unit(); with grad, also
// its derivative (softplus_grad()).
inline __m512 softplus_avx512(__m512 x, __m512* grad) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 two = _mm512_set1_ps(2.0f);
  const __m512 e = exp_neg_avx512(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(x)));
  const __mmask16 hi = _mm512_cmp_ps_mask(e, _mm512_set1_ps(0.41421356f), _CMP_GT_OQ);
  const __m512 f = _mm512_mask_mul_ps(e, hi, _mm512_sub_ps(e, one), _mm512_set1_ps(0.5f));
  const __m512 s = _mm512_mul_ps(f, recip_avx512(_mm512_add_ps(two, f)));
  const __m512 s2 = _mm512_mul_ps(s, s);
  __m512 r = _mm512_set1_ps(2.0f / 9.0f);
  r = _mm512_fmadd_ps(r, s2, _mm512_set1_ps(2.0f / 7.0f));
  r = _mm512_fmadd_ps(r, s2, _mm512_set1_ps(2.0f / 5.0f));
  r = _mm512_fmadd_ps(r, s2, _mm512_set1_ps(2.0f / 3.0f));
  __m512 log1p_e = _mm512_mul_ps(s, _mm512_fmadd_ps(r, s2, two));
  log1p_e = _mm512_mask_add_ps(log1p_e, hi, log1p_e, _mm512_set1_ps(kLn2));
  const __m512 sp = _mm512_add_ps(_mm512_max_ps(x, _mm512_setzero_ps()), log1p_e);
  const __mmask16 big = _mm512_cmp_ps_mask(x, _mm512_set1_ps(20.0f), _CMP_GT_OQ);
  if (grad) {
    const __mmask16 pos = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GE_OQ);
    const __m512 sig = _mm512_mul_ps(_mm512_mask_blend_ps(pos, e, one), recip_avx512(_mm512_add_ps(one, e)));
    *grad = _mm512_mask_blend_ps(big, sig, one);
  }
  return _mm512_mask_blend_ps(big, sp, x);
}
#endif

template <bool kHigh = true>
inline double exp2_approx(double y) {
  return std::exp2(y);
}
inline double softplus(double x) { return x > 20.0 ? x : std::log1p(std::exp(x)); }
inline double softplus_grad(double x) { return x > 20.0 ? 1.0 : 1.0 / (1.0 + std::exp(-x)); }

template <typename T>
constexpr T log2e() {
  return static_cast<T>(1.4426950408889634);
}

// ---------------------------------------------------------------------------------------
// 64-byte aligned scratch buffer (one per thread and call).

template <typename T>
class Scratch {
 public:
  explicit Scratch(size_t n)
      : n_(n), p_(static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64)))) {
    std::fill(p_, p_ + n_, T(0));
  }
  ~Scratch() { ::operator delete(p_, std::align_val_t(64)); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* data() { return p_; }
  void zero() { std::fill(p_, p_ + n_, T(0)); }

 private:
  size_t n_;
  T* p_;
};

// ---------------------------------------------------------------------------------------

template <typename T>
struct Problem {
  const T* u;
  const T* delta;
  const T* A;
  const T* B;  // (batch, G, L, N)
  const T* C;  // (batch, G, L, N)
  const T* D;  // (dim) or null
  const T* bias;  // (dim) or null
  bool softplus;
  int64_t batch, dim, L, N, G, tile;
  int64_t per_group, blocks_per_group, tiles;
  int64_t blocks_per_unit = 1;  // channel blocks one work unit runs (sharing its step rows)

  int64_t chunks() const { return (blocks_per_group + blocks_per_unit - 1) / blocks_per_unit; }
  int64_t units() const { return batch * G * chunks(); }
};

// The ordered variant's arrays (see the header comment); dim = G * inner, per_group = inner.
template <typename T>
struct Ordered {
  const int64_t* order;  // (batch or 1, G, L) raster positions
  int64_t order_bstride;  // G * L, or 0 when every image uses the same orders
  const T* x;  // (batch, L, inner)
  const T* proj;  // (batch, L, P)
  int64_t P, R;
  const T* dt_w;  // (dim, R)
  T* y;  // (batch, L, G, inner) forward output
  T* y_sum;  // (batch, dim) forward output: sums of y over the steps (for SSA's pooled mean)
  const T* dy_shift;  // (batch, dim) or null: added to every step's dy (the mean's gradient)
  T* dx;  // (batch, L, inner) backward output, summed over the directions (see the header)
  T* dproj;  // (threads, batch, L, P), zeroed by the caller
  T* ddt_w;  // (batch, dim, R) per-image partial sums
  const T* dy;  // (batch, L, G, inner), or (batch, L, inner) with dy_scale
  // (batch, dim) or null: dy is then the gradient of the gated sum of the directions, shared
  // by all of them, and direction g's own gradient is dy * dy_scale[g] (+ dy_shift): the
  // (batch, L, G, inner) gradient is never written (see merge_norm_gate_backward).
  const T* dy_scale = nullptr;

  // Row length and first column of direction g's dy values in a dy row.
  int64_t dy_row(int64_t G, int64_t inner) const { return dy_scale ? inner : G * inner; }
  int64_t dy_col(int64_t g, int64_t inner) const { return dy_scale ? 0 : g * inner; }

  const int64_t* orders_of(int64_t b, int64_t g, int64_t L) const {
    return order + b * order_bstride + g * L;
  }
};

// Runs f(unit, thread_index) for every unit on `threads` threads (dynamic schedule).
// Returns false if any call threw (for example std::bad_alloc).
template <typename F>
bool parallel_units(int64_t units, int threads, F f) {
  threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, units)));
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  auto worker = [&](int tid) {
    try {
      for (int64_t unit = next++; unit < units && !failed; unit = next++) f(unit, tid);
    } catch (...) {
      failed = true;
    }
  };
  std::vector<std::thread> pool;
  try {
    pool.reserve(threads - 1);
    for (int t = 1; t < threads; ++t) pool.emplace_back(worker, t);
  } catch (...) {
    failed = true;  // could not start a thread: the others still finish the work
  }
  worker(0);
  for (auto& th : pool) th.join();
  return !failed;
}

// Per-unit lane setup shared by forward and backward.
template <typename T>
struct Lanes {
  int64_t b, g, d0, nl;  // batch, group, first channel, lanes in use
};

template <typename T>
Lanes<T> lanes_of(const Problem<T>& p, int64_t b, int64_t g, int64_t blk) {
  Lanes<T> l;
  l.b = b;
  l.g = g;
  l.d0 = g * p.per_group + blk * W;
  l.nl = std::min<int64_t>(W, p.per_group - blk * W);
  return l;
}

// The channel blocks [first, first + count) of one (batch, group) that a work unit runs.
struct UnitBlocks {
  int64_t b, g, first, count;
};

template <typename T>
UnitBlocks blocks_of(const Problem<T>& p, int64_t unit) {
  const int64_t chunk = unit % p.chunks();
  const int64_t bg = unit / p.chunks();
  const int64_t first = chunk * p.blocks_per_unit;
  return {bg / p.G, bg % p.G, first, std::min(p.blocks_per_unit, p.blocks_per_group - first)};
}

#if defined(__AVX512F__)
// Transposes a 16 x 16 float block: row i = src[i * src_stride + 0..15] becomes column i
// of dst, i.e. dst[j * dst_stride + i] = src[i * src_stride + j]. 64 in-register shuffles
// instead of 256 scalar loads and stores.
inline void transpose16(const float* src, int64_t src_stride, float* dst, int64_t dst_stride) {
  __m512 r[16];
  __m512 q[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * src_stride);
  for (int i = 0; i < 16; i += 2) {  // per 128-bit lane: (r_i, r_i+1) pairs of columns
    q[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    q[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int g = 0; g < 4; ++g) {  // rows 4g..4g+3, column 4L+k of lane L in r[4g + k]
    const __m512d lo01 = _mm512_castps_pd(q[4 * g]), lo23 = _mm512_castps_pd(q[4 * g + 2]);
    const __m512d hi01 = _mm512_castps_pd(q[4 * g + 1]), hi23 = _mm512_castps_pd(q[4 * g + 3]);
    r[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo01, lo23));
    r[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo01, lo23));
    r[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(hi01, hi23));
    r[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(hi01, hi23));
  }
  for (int k = 0; k < 4; ++k) {  // 4 x 4 transpose of 128-bit lanes across the row groups
    const __m512 u0 = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x44);
    const __m512 u1 = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xEE);
    const __m512 u2 = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x44);
    const __m512 u3 = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xEE);
    _mm512_storeu_ps(dst + (0 + k) * dst_stride, _mm512_shuffle_f32x4(u0, u2, 0x88));
    _mm512_storeu_ps(dst + (4 + k) * dst_stride, _mm512_shuffle_f32x4(u0, u2, 0xDD));
    _mm512_storeu_ps(dst + (8 + k) * dst_stride, _mm512_shuffle_f32x4(u1, u3, 0x88));
    _mm512_storeu_ps(dst + (12 + k) * dst_stride, _mm512_shuffle_f32x4(u1, u3, 0xDD));
  }
}
#endif

// Number of leading steps of a tile that a full 16 x 16 block transpose can move (0 when
// the block has padding lanes or there is no AVX-512).
template <typename T>
int64_t blocked_steps(const Lanes<T>& l, int64_t tl) {
#if defined(__AVX512F__)
  if (std::is_same_v<T, float> && l.nl == W) return tl - tl % 16;
#endif
  (void)l;
  (void)tl;
  return 0;
}

// Copies rows [d0, d0+nl) x [t0, t0+tl) of a (batch, dim, L) array into dst[t][lane].
template <typename T>
void gather_tile(const T* src, const Problem<T>& p, const Lanes<T>& l, int64_t t0, int64_t tl,
                 T* dst) {
  const T* rows = src + ((l.b * p.dim) + l.d0) * p.L + t0;
  const int64_t done = blocked_steps(l, tl);
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    for (int64_t t = 0; t < done; t += 16) transpose16(rows + t, p.L, dst + t * W, W);
  }
#endif
  for (int64_t c = 0; c < l.nl; ++c) {
    for (int64_t t = done; t < tl; ++t) dst[t * W + c] = rows[c * p.L + t];
  }
}

// The inverse of gather_tile: src[t][lane] into rows [d0, d0+nl) x [t0, t0+tl).
template <typename T>
void scatter_tile(const T* src, const Problem<T>& p, const Lanes<T>& l, int64_t t0, int64_t tl,
                  T* dst) {
  T* rows = dst + ((l.b * p.dim) + l.d0) * p.L + t0;
  const int64_t done = blocked_steps(l, tl);
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    for (int64_t t = 0; t < done; t += 16) transpose16(src + t * W, W, rows + t, p.L);
  }
#endif
  for (int64_t c = 0; c < l.nl; ++c) {
    for (int64_t t = done; t < tl; ++t) rows[c * p.L + t] = src[t * W + c];
  }
}

// dt = softplus(delta + bias) (or without softplus) and dt*u for one tile; with kGrad
// also d dt / d delta (the softplus derivative, or 1) for the backward.
template <typename T, bool kSoftplus, bool kGrad>
void tile_dt_impl(int64_t tl, const T* __restrict raw, const T* __restrict ut,
                  const T* __restrict bias_l, T* __restrict dtt, T* __restrict dtu,
                  T* __restrict dsp) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float> && kSoftplus) {
    const __m512 bias = _mm512_load_ps(bias_l);
    for (int64_t t = 0; t < tl; ++t) {
      __m512 grad;
      const __m512 dt = softplus_avx512(_mm512_add_ps(_mm512_load_ps(raw + t * W), bias), kGrad ? &grad : nullptr);
      _mm512_store_ps(dtt + t * W, dt);
      _mm512_store_ps(dtu + t * W, _mm512_mul_ps(dt, _mm512_load_ps(ut + t * W)));
      if (kGrad) _mm512_store_ps(dsp + t * W, grad);
    }
    return;
  }
#endif
  for (int64_t t = 0; t < tl; ++t) {
    RCS_SIMD
    for (int c = 0; c < W; ++c) {
      const T x = raw[t * W + c] + bias_l[c];
      const T dt = kSoftplus ? softplus(x) : x;
      dtt[t * W + c] = dt;
      dtu[t * W + c] = dt * ut[t * W + c];
      if (kGrad) dsp[t * W + c] = kSoftplus ? softplus_grad(x) : T(1);
    }
  }
}

template <typename T>
void tile_dt(const Problem<T>& p, int64_t tl, const T* raw, const T* ut, const T* bias_l, T* dtt,
             T* dtu, T* dsp = nullptr) {
  if (p.softplus) {
    if (dsp) tile_dt_impl<T, true, true>(tl, raw, ut, bias_l, dtt, dtu, dsp);
    else tile_dt_impl<T, true, false>(tl, raw, ut, bias_l, dtt, dtu, dsp);
  } else {
    if (dsp) tile_dt_impl<T, false, true>(tl, raw, ut, bias_l, dtt, dtu, dsp);
    else tile_dt_impl<T, false, false>(tl, raw, ut, bias_l, dtt, dtu, dsp);
  }
}

// Loads the per-lane constants of a unit: A (natural and pre-scaled by log2 e), D, bias.
// Returns whether dt * A <= 0 for every step (softplus makes dt >= 0; Mamba's A < 0).
template <typename T>
bool load_lane_constants(const Problem<T>& p, const Lanes<T>& l, T* A_l, T* A2_l, T* D_l,
                         T* bias_l) {
  const int64_t N = p.N;
  bool decay = p.softplus;
  for (int64_t c = 0; c < W; ++c) {
    const bool on = c < l.nl;
    const int64_t d = l.d0 + c;
    for (int64_t n = 0; n < N; ++n) {
      const T a = on ? p.A[d * N + n] : T(0);  // padding lanes: A = 0 keeps h = 0
      A_l[n * W + c] = a;
      A2_l[n * W + c] = a * log2e<T>();
      decay = decay && a <= T(0);
    }
    D_l[c] = (on && p.D) ? p.D[d] : T(0);
    bias_l[c] = (on && p.bias) ? p.bias[d] : T(0);
  }
  return decay;
}

#if defined(__AVX512F__)
constexpr bool kAvx512 = true;

// tile_forward for float with W = 16 lanes in one register (see tile_forward).
template <int NN, bool kRecord>
void tile_forward_avx512(int64_t N_runtime, int64_t tl, const float* __restrict Bg,
                         const float* __restrict Cg, const float* __restrict dtt,
                         const float* __restrict dtu, const float* __restrict ut,
                         const float* __restrict A2_l, const float* __restrict D_l,
                         float* __restrict h, float* __restrict yt, float* __restrict hs,
                         float* __restrict as) {
  static_assert(W == 16, "one __m512 per lane group");
  const int64_t N = NN > 0 ? NN : N_runtime;
  const __m512 d_l = _mm512_load_ps(D_l);
  for (int64_t t = 0; t < tl; ++t) {
    const float* Bt = Bg + t * N;
    const float* Ct = Cg + t * N;
    const __m512 dt = _mm512_load_ps(dtt + t * W);
    const __m512 du = _mm512_load_ps(dtu + t * W);
    // Two accumulators for y halve its serial dependency chain over n.
    __m512 y = _mm512_mul_ps(d_l, _mm512_load_ps(ut + t * W));
    __m512 y_odd = _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int64_t n = 0; n < N; ++n) {
      const __m512 a = exp2_avx512(_mm512_mul_ps(dt, _mm512_load_ps(A2_l + n * W)));
      const __m512 hv =
          _mm512_fmadd_ps(a, _mm512_load_ps(h + n * W), _mm512_mul_ps(du, _mm512_set1_ps(Bt[n])));
      _mm512_store_ps(h + n * W, hv);
      if (n & 1) {
        y_odd = _mm512_fmadd_ps(hv, _mm512_set1_ps(Ct[n]), y_odd);
      } else {
        y = _mm512_fmadd_ps(hv, _mm512_set1_ps(Ct[n]), y);
      }
      if (kRecord) {
        _mm512_store_ps(as + (t * N + n) * W, a);
        _mm512_store_ps(hs + (t * N + n) * W, hv);
      }
    }
    if (!kRecord) _mm512_store_ps(yt + t * W, _mm512_add_ps(y, y_odd));
  }
}
#else
constexpr bool kAvx512 = false;
#endif

// One tile of the forward recurrence. NN > 0 fixes N at compile time (unrolled inner
// loop); NN == 0 reads it from p. kRecord = false writes y; kRecord = true instead keeps
// the state and decay of every step (hs, as) for the backward. kDecay: dt * A <= 0 is
// known (softplus and A <= 0, as in Mamba), so exp needs no overflow clamp.
template <typename T, int NN, bool kRecord, bool kDecay>
void tile_forward(const Problem<T>& p, int64_t tl, const T* __restrict Bg,
                  const T* __restrict Cg, const T* __restrict dtt, const T* __restrict dtu,
                  const T* __restrict ut, const T* __restrict A2_l, const T* __restrict D_l,
                  T* __restrict h, T* __restrict yt, T* __restrict hs, T* __restrict as) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    tile_forward_avx512<NN, kRecord>(p.N, tl, Bg, Cg, dtt, dtu, ut, A2_l, D_l, h, yt, hs, as);
    return;
  }
#endif
  const int64_t N = NN > 0 ? NN : p.N;
  for (int64_t t = 0; t < tl; ++t) {
    const T* Bt = Bg + t * N;
    const T* Ct = Cg + t * N;
    alignas(64) T y[W];
    RCS_SIMD
    for (int c = 0; c < W; ++c) y[c] = D_l[c] * ut[t * W + c];
    for (int64_t n = 0; n < N; ++n) {
      const T bn = Bt[n];
      const T cn = Ct[n];
      T* hn = h + n * W;
      const T* a2 = A2_l + n * W;
      RCS_SIMD
      for (int c = 0; c < W; ++c) {
        const T a = exp2_approx<!kDecay>(dtt[t * W + c] * a2[c]);
        const T hv = a * hn[c] + dtu[t * W + c] * bn;
        hn[c] = hv;
        y[c] += hv * cn;
        if (kRecord) {
          as[(t * N + n) * W + c] = a;
          hs[(t * N + n) * W + c] = hv;
        }
      }
    }
    if (!kRecord) {
      RCS_SIMD
      for (int c = 0; c < W; ++c) yt[t * W + c] = y[c];
    }
  }
}

// ---------------------------------------------------------------------------------------
// Ordered access (see the header comment): one tile's steps read from and written to raster
// positions of channels-last arrays.

// Per-unit view of the ordered arrays: the unit's orders, its first channel within the
// direction, and the offset of its direction's [dt_low | B | C] block in a proj row.
template <typename T>
struct OrderedUnit {
  const int64_t* ord;
  int64_t c0, off;
};

template <typename T>
OrderedUnit<T> ordered_unit(const Problem<T>& p, const Ordered<T>& o, const Lanes<T>& l) {
  return {o.orders_of(l.b, l.g, p.L), l.d0 - l.g * p.per_group, l.g * (o.R + 2 * p.N)};
}

// Per-block state of a work unit, block after block in one scratch buffer. Every slot starts
// with the block's constants -- A and A * log2 e ([n][lane] each), D and bias ([lane]) and,
// ordered, the dt_proj rows ([r][lane]) -- followed by `extra` values of state the forward or
// the backward keeps per block. Scratch is zeroed, so the extra state starts at 0.
template <typename T>
class BlockSlots {
 public:
  BlockSlots(int64_t blocks, int64_t N, int64_t R, int64_t extra)
      : N_(N), R_(R), stride_(W * (2 * N + 2 + R) + extra), buf_(stride_ * blocks) {}
  T* A(int64_t j) { return at(j); }
  T* A2(int64_t j) { return at(j) + N_ * W; }
  T* D(int64_t j) { return at(j) + 2 * N_ * W; }
  T* bias(int64_t j) { return at(j) + (2 * N_ + 1) * W; }
  T* dt_w(int64_t j) { return at(j) + (2 * N_ + 2) * W; }
  T* extra(int64_t j) { return at(j) + (2 * N_ + 2 + R_) * W; }

 private:
  T* at(int64_t j) { return buf_.data() + j * stride_; }
  int64_t N_, R_, stride_;
  Scratch<T> buf_;
};

// A backward unit's BlockSlots: after the constants, per block, the adjoint dh and dA sums
// ([n][lane] each), dD and dbias sums ([lane]), dt_proj gradient sums ([r][lane]), the dy
// shift and the dy scale ([lane] each).
template <typename T>
class BackwardSlots : public BlockSlots<T> {
 public:
  BackwardSlots(int64_t blocks, int64_t N, int64_t R)
      : BlockSlots<T>(blocks, N, R, W * (2 * N + 4 + R)), N_(N), R_(R) {}
  T* dh(int64_t j) { return this->extra(j); }
  T* dA(int64_t j) { return this->extra(j) + N_ * W; }
  T* dD(int64_t j) { return this->extra(j) + 2 * N_ * W; }
  T* dbias(int64_t j) { return this->extra(j) + (2 * N_ + 1) * W; }
  T* dtw(int64_t j) { return this->extra(j) + (2 * N_ + 2) * W; }
  T* shift(int64_t j) { return this->extra(j) + (2 * N_ + 2 + R_) * W; }
  T* scale(int64_t j) { return this->extra(j) + (2 * N_ + 3 + R_) * W; }

 private:
  int64_t N_, R_;
};

// Loads every block's constants; returns whether dt * A <= 0 holds for all of them.
template <typename T, bool kOrdered>
bool load_block_constants(const Problem<T>& p, const Ordered<T>* o, const UnitBlocks& ub,
                          BlockSlots<T>& bs) {
  bool decay = true;
  for (int64_t j = 0; j < ub.count; ++j) {
    const Lanes<T> l = lanes_of(p, ub.b, ub.g, ub.first + j);
    decay = load_lane_constants(p, l, bs.A(j), bs.A2(j), bs.D(j), bs.bias(j)) && decay;
    if constexpr (kOrdered) load_dt_weight(*o, l, bs.dt_w(j));
  }
  return decay;
}

// Copies nl values into a [lane] row and zeroes its padding lanes (a unit's tile buffers are
// shared by its blocks, and padding lanes must add nothing to the sums over lanes).
template <typename T>
inline void load_lanes(const T* __restrict src, int64_t nl, T* __restrict dst) {
  if (nl == W) {
    std::memcpy(dst, src, W * sizeof(T));
  } else {
    for (int64_t c = 0; c < W; ++c) dst[c] = c < nl ? src[c] : T(0);
  }
}

// Copies the nl used lanes of a [lane] row out.
template <typename T>
inline void store_lanes(const T* __restrict src, int64_t nl, T* __restrict dst) {
  if (nl == W) {
    std::memcpy(dst, src, W * sizeof(T));
  } else {
    for (int64_t c = 0; c < nl; ++c) dst[c] = src[c];
  }
}

// Reads the step rows of steps [t0, t0+tl) of one direction: dt_low into dlow[t][r], B and C
// into Bt/Ct[t][n] (shared by every channel block of the direction).
template <typename T>
void gather_ordered_steps(const Problem<T>& p, const Ordered<T>& o, const Lanes<T>& l,
                          const OrderedUnit<T>& ou, int64_t t0, int64_t tl, T* dlow, T* Bt, T* Ct) {
  const int64_t N = p.N, R = o.R;
  for (int64_t t = 0; t < tl; ++t) {
    const T* pr = o.proj + (l.b * p.L + ou.ord[t0 + t]) * o.P + ou.off;
    for (int64_t r = 0; r < R; ++r) dlow[t * R + r] = pr[r];
    for (int64_t n = 0; n < N; ++n) {
      Bt[t * N + n] = pr[R + n];
      Ct[t * N + n] = pr[R + N + n];
    }
  }
}

// Reads one channel block's values of steps [t0, t0+tl) into dst[t][lane]: from the
// (batch, L, inner) input when per_direction is false, else from a (batch, L, G, inner)
// array; padding lanes are zeroed.
template <typename T>
void gather_ordered_lanes(const Problem<T>& p, const Lanes<T>& l, const OrderedUnit<T>& ou,
                          int64_t t0, int64_t tl, const T* src, bool per_direction, T* dst) {
  const int64_t row = per_direction ? p.G * p.per_group : p.per_group;
  const int64_t col = (per_direction ? l.g * p.per_group : 0) + ou.c0;
  for (int64_t t = 0; t < tl; ++t) {
    load_lanes(src + (l.b * p.L + ou.ord[t0 + t]) * row + col, l.nl, dst + t * W);
  }
}

// Software prefetch of the map rows a unit will touch in steps [t0, t0+tl): for each step,
// `width` values from column `col` of a row of `row` values at the step's raster position.
// The rows are scattered, so the hardware prefetchers miss them; without this the loads and
// stores of the map rows took most of the forward's time (measured with perf). kWrite
// prefetches for a store.
template <bool kWrite, typename T>
void prefetch_rows(const int64_t* ord, int64_t base_row, int64_t t0, int64_t tl, const T* base,
                   int64_t row, int64_t col, int64_t width) {
  constexpr int64_t kLine = 64 / sizeof(T);
  for (int64_t t = 0; t < tl; ++t) {
    const T* first = base + (base_row + ord[t0 + t]) * row + col;
    for (int64_t v = 0; v < width; v += kLine) __builtin_prefetch(first + v, kWrite ? 1 : 0, 3);
    __builtin_prefetch(first + width - 1, kWrite ? 1 : 0, 3);
  }
}

// Prefetches the rows of the next tile of an ordered unit: x (and, in the backward, dy), the
// proj block and the output rows.
template <typename T>
void prefetch_ordered_tile(const Problem<T>& p, const Ordered<T>& o, const UnitBlocks& ub,
                           const OrderedUnit<T>& ou0, int64_t t0, int64_t tl, bool backward) {
  if (tl <= 0) return;
  const int64_t inner = p.per_group;
  const int64_t col = ub.first * W;
  const int64_t width = std::min<int64_t>(ub.count * W, inner - col);
  const int64_t br = ub.b * p.L;
  prefetch_rows<false>(ou0.ord, br, t0, tl, o.x, inner, col, width);
  prefetch_rows<false>(ou0.ord, br, t0, tl, o.proj, o.P, ou0.off, o.R + 2 * p.N);
  if (backward) {
    prefetch_rows<false>(ou0.ord, br, t0, tl, o.dy, o.dy_row(p.G, inner), o.dy_col(ub.g, inner) + col, width);
    prefetch_rows<true>(ou0.ord, br, t0, tl, o.dx, inner, col, width);
  } else {
    prefetch_rows<true>(ou0.ord, br, t0, tl, o.y, p.G * inner, ub.g * inner + col, width);
  }
}

// Writes src[t][lane] to the unit's channels of a (batch, L, G, inner) array.
template <typename T>
void scatter_ordered_tile(const Problem<T>& p, const Lanes<T>& l, const OrderedUnit<T>& ou,
                          int64_t t0, int64_t tl, const T* src, T* dst) {
  for (int64_t t = 0; t < tl; ++t) {
    const int64_t pos = l.b * p.L + ou.ord[t0 + t];
    store_lanes(src + t * W, l.nl, dst + (pos * p.G + l.g) * p.per_group + ou.c0);
  }
}

// Writes (first direction) or adds (the others) src[t][lane] to the unit's channels of the
// (batch, L, inner) gradient dx.
template <typename T>
void scatter_dx_tile(const Problem<T>& p, const Lanes<T>& l, const OrderedUnit<T>& ou, int64_t t0,
                     int64_t tl, const T* src, T* dx) {
  for (int64_t t = 0; t < tl; ++t) {
    T* dst = dx + (l.b * p.L + ou.ord[t0 + t]) * p.per_group + ou.c0;
    const T* row = src + t * W;
    if (l.g == 0) {
      store_lanes(row, l.nl, dst);
    } else {
      for (int64_t c = 0; c < l.nl; ++c) dst[c] += row[c];
    }
  }
}

// The fused dt_proj: raw[t][c] = sum_r dt_w_l[r][c] * dlow[t][r].
template <typename T>
void tile_delta(int64_t tl, int64_t R, const T* __restrict dtw_l, const T* __restrict dlow,
                T* __restrict raw) {
  for (int64_t t = 0; t < tl; ++t) {
    alignas(64) T acc[W] = {};
    for (int64_t r = 0; r < R; ++r) {
      const T s = dlow[t * R + r];
      RCS_SIMD
      for (int c = 0; c < W; ++c) acc[c] += dtw_l[r * W + c] * s;
    }
    RCS_SIMD
    for (int c = 0; c < W; ++c) raw[t * W + c] = acc[c];
  }
}

// Loads the unit's dt_proj rows as dtw_l[r][lane] (padding lanes 0).
template <typename T>
void load_dt_weight(const Ordered<T>& o, const Lanes<T>& l, T* dtw_l) {
  for (int64_t c = 0; c < l.nl; ++c) {
    for (int64_t r = 0; r < o.R; ++r) dtw_l[r * W + c] = o.dt_w[(l.d0 + c) * o.R + r];
  }
}

#if defined(__AVX512F__)
// Steps ahead of the current one whose map rows the ordered loops prefetch. Scan orders jump
// between image rows, which the hardware prefetchers do not follow; prefetching a whole tile
// ahead evicted lines before their use. 8 and 16 steps measured alike, 32 slower, none
// (hardware prefetch only) 40% slower at 256 x 256 (docs/benchmarks.md).
constexpr int64_t kRowPrefetch = 8;

// Prefetches `count` consecutive floats from `first` (kWrite: for a store).
template <int kWrite>
inline void prefetch_span(const float* first, int64_t count) {
  for (int64_t v = 0; v < count; v += W) __builtin_prefetch(first + v, kWrite, 3);
  __builtin_prefetch(first + count - 1, kWrite, 3);
}

// The fused dt_proj of block j at one step: bias + sum_r dt_w[r] * dt_low[r] (dt_low = pr[0..R)).
inline __m512 delta_raw(BlockSlots<float>& bs, int64_t j, const float* pr, int64_t R) {
  const float* dtw = bs.dt_w(j);
  __m512 raw = _mm512_load_ps(bs.bias(j));
  for (int64_t r = 0; r < R; ++r) raw = _mm512_fmadd_ps(_mm512_load_ps(dtw + r * W), _mm512_set1_ps(pr[r]), raw);
  return raw;
}

// The ordered forward for N = 1, float, in one pass with everything in registers: every
// channel block of a unit at each step, in groups of up to kRowGroup blocks. A step's blocks
// share its order lookup and its dt_low, B and C broadcasts, touch the whole map row at once,
// and give the core independent softplus/exp chains to overlap. (Block after block, each
// step waited on its predecessor's chain; the staged tile path writes five [t][lane] buffers
// between its stages. This pass measured 1.6x faster than either at 256 x 256.)
constexpr int64_t kRowGroup = 8;

// The channel blocks [g0, g0 + nb) of a unit that the row kernels run together: their first
// column, the lanes they span and the lanes in use of the last block.
struct RowGroup {
  int64_t g0, nb, col, lanes;
  __mmask16 last;
};

inline RowGroup row_group(const Problem<float>& p, const UnitBlocks& ub, int64_t g0) {
  RowGroup rg;
  rg.g0 = g0;
  rg.nb = std::min(kRowGroup, ub.count - g0);
  rg.col = (ub.first + g0) * W;
  rg.lanes = std::min<int64_t>(rg.nb * W, p.per_group - rg.col);
  const int64_t rem = rg.lanes - (rg.nb - 1) * W;
  rg.last = rem >= W ? __mmask16(0xFFFF) : __mmask16((1u << rem) - 1);
  return rg;
}

void ordered_rows_n1_avx512(const Problem<float>& p, const Ordered<float>& o, const UnitBlocks& ub,
                            const OrderedUnit<float>& ou0, int64_t t0, int64_t tl,
                            BlockSlots<float>& bs) {
  const int64_t R = o.R;
  const int64_t inner = p.per_group;
  const int64_t yrow = p.G * inner;
  const float* pb = o.proj + ub.b * p.L * o.P + ou0.off;
  const int64_t* ord = ou0.ord + t0;
  const int64_t avail = p.L - t0;
  for (int64_t g0 = 0; g0 < ub.count; g0 += kRowGroup) {
    const RowGroup rg = row_group(p, ub, g0);
    const int64_t nb = rg.nb;
    const float* xb = o.x + ub.b * p.L * inner + rg.col;
    float* yb = o.y + ub.b * p.L * yrow + ub.g * inner + rg.col;
    alignas(64) float h[kRowGroup * W], sum[kRowGroup * W];
    for (int64_t j = 0; j < nb; ++j) {
      std::memcpy(h + j * W, bs.extra(g0 + j), W * sizeof(float));
      std::memcpy(sum + j * W, bs.extra(g0 + j) + W, W * sizeof(float));
    }
    for (int64_t t = 0; t < tl; ++t) {
      if (t + kRowPrefetch < avail) {
        const int64_t ahead = ord[t + kRowPrefetch];
        prefetch_span<0>(xb + ahead * inner, rg.lanes);
        prefetch_span<1>(yb + ahead * yrow, rg.lanes);
        prefetch_span<0>(pb + ahead * o.P, R + 2);
      }
      const int64_t pos = ord[t];
      const float* pr = pb + pos * o.P;
      const float* xr = xb + pos * inner;
      float* yr = yb + pos * yrow;
      const __m512 b_in = _mm512_set1_ps(pr[R]);
      const __m512 c_out = _mm512_set1_ps(pr[R + 1]);
      for (int64_t j = 0; j < nb; ++j) {
        const __mmask16 mask = j + 1 < nb ? __mmask16(0xFFFF) : rg.last;
        const __m512 u = _mm512_maskz_loadu_ps(mask, xr + j * W);
        const __m512 raw = delta_raw(bs, g0 + j, pr, R);
        const __m512 dt = softplus_avx512(raw, nullptr);
        const __m512 a = exp2_avx512(_mm512_mul_ps(dt, _mm512_load_ps(bs.A2(g0 + j))));
        const __m512 hv = _mm512_fmadd_ps(a, _mm512_load_ps(h + j * W),
                                          _mm512_mul_ps(_mm512_mul_ps(dt, u), b_in));
        _mm512_store_ps(h + j * W, hv);
        const __m512 y = _mm512_fmadd_ps(hv, c_out, _mm512_mul_ps(_mm512_load_ps(bs.D(g0 + j)), u));
        _mm512_mask_storeu_ps(yr + j * W, mask, y);
        _mm512_store_ps(sum + j * W, _mm512_add_ps(_mm512_load_ps(sum + j * W), y));
      }
    }
    for (int64_t j = 0; j < nb; ++j) {
      std::memcpy(bs.extra(g0 + j), h + j * W, W * sizeof(float));
      std::memcpy(bs.extra(g0 + j) + W, sum + j * W, W * sizeof(float));
    }
  }
}
#endif

// The state at the end of tile k, for the backward's recomputation (ckpt may be null).
template <typename T>
void store_checkpoint(const Problem<T>& p, const Lanes<T>& l, int64_t k, const T* h, T* ckpt) {
  if (!ckpt) return;
  for (int64_t c = 0; c < l.nl; ++c) {
    T* dst = ckpt + (((l.b * p.dim) + l.d0 + c) * p.tiles + k) * p.N;
    for (int64_t n = 0; n < p.N; ++n) dst[n] = h[n * W + c];
  }
}

// One work unit of the forward: channel blocks [first, first + count) of one (batch, group),
// tile by tile; inside a tile the blocks run one after the other, so the tile's step rows
// (and, ordered, the map rows it touches) are read from memory once and then from cache.
template <typename T, int NN, bool kOrdered>
void forward_unit(const Problem<T>& p, const Ordered<T>* o, int64_t unit, T* y, T* ckpt) {
  const int64_t N = NN > 0 ? NN : p.N;
  const int64_t TT = p.tile;
  const int64_t R = kOrdered ? o->R : 0;
  const UnitBlocks ub = blocks_of(p, unit);
  // Per block, after the constants: the state h ([n][lane]) and the sum of y ([lane]).
  BlockSlots<T> bs(ub.count, N, R, W * (N + 1));
  Scratch<T> buf(W * 5 * TT + TT * (R + 2 * N) * kOrdered);
  T* ut = buf.data();
  T* raw = ut + TT * W;
  T* dtt = raw + TT * W;
  T* dtu = dtt + TT * W;
  T* yt = dtu + TT * W;
  T* dlow = yt + TT * W;  // ordered only: the tile's dt_low, B and C
  T* Bbuf = dlow + TT * R;
  T* Cbuf = Bbuf + TT * N;
  const bool decay = load_block_constants<T, kOrdered>(p, o, ub, bs);
  const Lanes<T> l0 = lanes_of(p, ub.b, ub.g, ub.first);
  const OrderedUnit<T> ou0 = kOrdered ? ordered_unit(p, *o, l0) : OrderedUnit<T>{};
  const T* Bb = kOrdered ? nullptr : p.B + (ub.b * p.G + ub.g) * p.L * N;
  const T* Cb = kOrdered ? nullptr : p.C + (ub.b * p.G + ub.g) * p.L * N;
  // One pass for N = 1; with more states the staged tile path measured faster (its separate
  // gather of the step rows keeps their loads out of the long per-step recurrence).
  const bool one_pass = kOrdered && kAvx512 && std::is_same_v<T, float> && p.softplus && N == 1;
  for (int64_t k = 0; k < p.tiles; ++k) {
    const int64_t t0 = k * TT;
    const int64_t tl = std::min(TT, p.L - t0);
    const T* Bt0 = kOrdered ? Bbuf : Bb + t0 * N;
    const T* Ct0 = kOrdered ? Cbuf : Cb + t0 * N;
    if constexpr (kOrdered) {
      if (!one_pass) {
        gather_ordered_steps(p, *o, l0, ou0, t0, tl, dlow, Bbuf, Cbuf);
        prefetch_ordered_tile(p, *o, ub, ou0, t0 + TT, std::min(TT, p.L - t0 - TT), false);
      }
    }
#if defined(__AVX512F__)
    if constexpr (kOrdered && std::is_same_v<T, float> && NN == 1) {
      if (one_pass) {
        ordered_rows_n1_avx512(p, *o, ub, ou0, t0, tl, bs);
        for (int64_t j = 0; j < ub.count; ++j) {
          store_checkpoint(p, lanes_of(p, ub.b, ub.g, ub.first + j), k, bs.extra(j), ckpt);
        }
        continue;
      }
    }
#endif
    for (int64_t j = 0; j < ub.count; ++j) {
      const Lanes<T> l = lanes_of(p, ub.b, ub.g, ub.first + j);
      const T* A2_l = bs.A2(j);
      T* h = bs.extra(j);
      T* ysum = h + N * W;
      const T* D_l = bs.D(j);
      const T* bias_l = bs.bias(j);
      OrderedUnit<T> ou{};
      if constexpr (kOrdered) {
        ou = ordered_unit(p, *o, l);
        gather_ordered_lanes(p, l, ou, t0, tl, o->x, false, ut);
        tile_delta(tl, R, bs.dt_w(j), dlow, raw);
      } else {
        gather_tile(p.u, p, l, t0, tl, ut);
        gather_tile(p.delta, p, l, t0, tl, raw);
      }
      tile_dt(p, tl, raw, ut, bias_l, dtt, dtu);
      if (decay) {
        tile_forward<T, NN, false, true>(p, tl, Bt0, Ct0, dtt, dtu, ut, A2_l, D_l, h, yt, nullptr, nullptr);
      } else {
        tile_forward<T, NN, false, false>(p, tl, Bt0, Ct0, dtt, dtu, ut, A2_l, D_l, h, yt, nullptr, nullptr);
      }
      if constexpr (kOrdered) {
        scatter_ordered_tile(p, l, ou, t0, tl, yt, y);
        for (int64_t t = 0; t < tl; ++t) {
          RCS_SIMD
          for (int c = 0; c < W; ++c) ysum[c] += yt[t * W + c];
        }
      } else {
        scatter_tile(yt, p, l, t0, tl, y);
      }
      store_checkpoint(p, l, k, h, ckpt);
    }
  }
  if constexpr (kOrdered) {
    for (int64_t j = 0; j < ub.count; ++j) {
      const Lanes<T> l = lanes_of(p, ub.b, ub.g, ub.first + j);
      const T* ysum = bs.extra(j) + N * W;
      for (int64_t c = 0; c < l.nl; ++c) o->y_sum[l.b * p.dim + l.d0 + c] = ysum[c];
    }
  }
}

struct Grads {
  void* du;
  void* ddelta;
  void* dA;
  void* dB;  // (threads, batch, G, L, N), zero-initialised by the caller
  void* dC;
  void* dD;  // or null
  void* dbias;  // or null
};

#if defined(__AVX512F__)
// Sums of 16 vectors: lane i of the result = sum of the 16 lanes of v[i]. A transpose with
// the additions folded into each stage (45 operations instead of 16 serial reductions).
inline __m512 sum16(__m512* v) {
  __m512 a[8];
  for (int i = 0; i < 8; ++i) {
    a[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                         _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  }
  __m512 b[4];
  for (int i = 0; i < 4; ++i) {
    const __m512d x = _mm512_castps_pd(a[2 * i]), y = _mm512_castps_pd(a[2 * i + 1]);
    b[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  // b[g], 128-bit lane L: partial sums of rows 4g..4g+3 over columns 4L..4L+3.
  const __m512 c0 =
      _mm512_add_ps(_mm512_shuffle_f32x4(b[0], b[1], 0x44), _mm512_shuffle_f32x4(b[0], b[1], 0xEE));
  const __m512 c1 =
      _mm512_add_ps(_mm512_shuffle_f32x4(b[2], b[3], 0x44), _mm512_shuffle_f32x4(b[2], b[3], 0xEE));
  return _mm512_add_ps(_mm512_shuffle_f32x4(c0, c1, 0x88), _mm512_shuffle_f32x4(c0, c1, 0xDD));
}
#endif

// Sums over lanes of products of rows of two [.][lane] buffers: row r = (q, m) with
// q = r / M, m = r % M reads a + (a_q * q + a_m * m) * W and b + (b_q * q + b_m * m) * W, and
// out[r] += sum over lanes c of a_row[c] * b_row[c]. Used for the gradients shared by all
// channels of a group: dB/dC (rows (t, n) of [t][n][lane] against [t][lane]) and dt_low
// (rows (t, r) of [t][lane] against [r][lane]).
template <typename T>
void lane_dot(const T* __restrict a, int64_t a_q, int64_t a_m, const T* __restrict b, int64_t b_q,
              int64_t b_m, int64_t rows, int64_t M, T* __restrict out) {
  int64_t r = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    int64_t q = 0, m = 0;  // r = q * M + m, advanced without divisions
    for (; r + 16 <= rows; r += 16) {
      __m512 v[16];
      for (int k = 0; k < 16; ++k) {
        v[k] = _mm512_mul_ps(_mm512_load_ps(a + (a_q * q + a_m * m) * W),
                             _mm512_load_ps(b + (b_q * q + b_m * m) * W));
        if (++m == M) {
          m = 0;
          ++q;
        }
      }
      _mm512_storeu_ps(out + r, _mm512_add_ps(_mm512_loadu_ps(out + r), sum16(v)));
    }
  }
#endif
  for (; r < rows; ++r) {
    const int64_t q = r / M, m = r % M;
    const T* ar = a + (a_q * q + a_m * m) * W;
    const T* br = b + (b_q * q + b_m * m) * W;
    T sum = 0;
    for (int c = 0; c < W; ++c) sum += ar[c] * br[c];
    out[r] += sum;
  }
}

// out[t * N + n] += sum over lanes of a[t][n][lane] * b[t][lane].
template <typename T>
void lane_dot_rows(const T* a, const T* b, int64_t tl, int64_t N, T* out) {
  lane_dot(a, N, 1, b, 1, 0, tl * N, N, out);
}

// out[t * R + r] += sum over lanes of a[t][lane] * b[r][lane].
template <typename T>
void lane_dot_outer(const T* a, const T* b, int64_t tl, int64_t R, T* out) {
  lane_dot(a, 1, 0, b, 0, 1, tl * R, R, out);
}

#if defined(__AVX512F__)
// out[r] = sum over lanes of rows[r][lane], 16 rows per sum16.
inline void lane_sums(const float* __restrict rows, int64_t count, float* __restrict out) {
  int64_t r = 0;
  for (; r + 16 <= count; r += 16) {
    __m512 v[16];
    for (int k = 0; k < 16; ++k) v[k] = _mm512_load_ps(rows + (r + k) * W);
    _mm512_storeu_ps(out + r, sum16(v));
  }
  for (; r < count; ++r) out[r] = _mm512_reduce_add_ps(_mm512_load_ps(rows + r * W));
}

// Scratch of ordered_rows_n1_backward per tile of TT steps: four [t][block][lane] records
// of the recomputed forward and, per step, the R + 2 lane vectors of the shared gradients
// and their sums, and the steps' dt_low ([t][r]).
inline int64_t rows_n1_backward_scratch(int64_t TT, int64_t R) {
  return 4 * TT * kRowGroup * W + TT * (R + 2) * W + TT * (R + 2) + TT * R;
}

// The Δ-projection gradients of a tile for ordered_rows_n1_backward: with gdt[t][j][lane]
// (d loss / d raw for block g0 + j), dt_w's sums += sum_t gdt * dlow[t][r] and
// shared[t][r][lane] += sum_j gdt * dt_w[j][r][lane]. Loops keep one accumulator per
// (block, r) or (t, r) in a register: arrays of accumulators indexed by a runtime R stayed
// in memory (measured 3x slower).
inline void rows_dt_proj_grads(int64_t tl, int64_t nb, int64_t R, int64_t g0, const float* gdt,
                               const float* dlow, BackwardSlots<float>& bs, float* shared) {
  const int64_t Q = R + 2;
  for (int64_t j = 0; j < nb; ++j) {
    float* dtw_acc = bs.dtw(g0 + j);
    for (int64_t r = 0; r < R; ++r) {
      __m512 even = _mm512_load_ps(dtw_acc + r * W), odd = _mm512_setzero_ps();
      int64_t t = 0;
      for (; t + 1 < tl; t += 2) {
        even = _mm512_fmadd_ps(_mm512_load_ps(gdt + (t * kRowGroup + j) * W), _mm512_set1_ps(dlow[t * R + r]), even);
        odd = _mm512_fmadd_ps(_mm512_load_ps(gdt + ((t + 1) * kRowGroup + j) * W),
                              _mm512_set1_ps(dlow[(t + 1) * R + r]), odd);
      }
      if (t < tl) even = _mm512_fmadd_ps(_mm512_load_ps(gdt + (t * kRowGroup + j) * W), _mm512_set1_ps(dlow[t * R + r]), even);
      _mm512_store_ps(dtw_acc + r * W, _mm512_add_ps(even, odd));
    }
  }
  for (int64_t t = 0; t < tl; ++t) {
    float* sh = shared + t * Q * W;
    for (int64_t r = 0; r < R; ++r) {
      __m512 acc = _mm512_load_ps(sh + r * W);
      for (int64_t j = 0; j < nb; ++j) {
        acc = _mm512_fmadd_ps(_mm512_load_ps(gdt + (t * kRowGroup + j) * W), _mm512_load_ps(bs.dt_w(g0 + j) + r * W), acc);
      }
      _mm512_store_ps(sh + r * W, acc);
    }
  }
}

// The ordered backward of one tile for N = 1, float: the counterpart of
// ordered_rows_n1_avx512. Pass 1 recomputes the tile's steps from the state at its start and
// records dt, d dt / d raw, the decay and the previous state; pass 2 runs the adjoint
// recurrence backwards through the steps, every block of the group at each step, and sums
// the gradients of dt_low, B and C (shared by the direction's channels) over blocks and then
// lanes before adding them to the step's proj row.
void ordered_rows_n1_backward(const Problem<float>& p, const Ordered<float>& o, const UnitBlocks& ub,
                              const OrderedUnit<float>& ou0, int64_t k, int64_t t0, int64_t tl,
                              const float* ckpt, BackwardSlots<float>& bs, float* dproj,
                              float* scratch) {
  const int64_t R = o.R;
  const int64_t Q = R + 2;  // shared gradients per step: dt_low (R), B, C
  const int64_t inner = p.per_group;
  const int64_t TT = p.tile;
  const float* pb = o.proj + ub.b * p.L * o.P + ou0.off;
  float* dpb = dproj + ub.b * p.L * o.P + ou0.off;
  const int64_t* ord = ou0.ord + t0;
  float* rec_dt = scratch;
  float* rec_dsp = rec_dt + TT * kRowGroup * W;
  float* rec_a = rec_dsp + TT * kRowGroup * W;
  float* rec_hp = rec_a + TT * kRowGroup * W;
  float* shared = rec_hp + TT * kRowGroup * W;  // [t][q][lane]
  float* sums = shared + TT * Q * W;  // [t][q]
  float* dlow = sums + TT * Q;  // [t][r]
  std::fill(shared, shared + tl * Q * W, 0.0f);
  for (int64_t t = 0; t < tl; ++t) std::memcpy(dlow + t * R, pb + ord[t] * o.P, R * sizeof(float));
  for (int64_t g0 = 0; g0 < ub.count; g0 += kRowGroup) {
    const RowGroup rg = row_group(p, ub, g0);
    const int64_t nb = rg.nb;
    const float* xb = o.x + ub.b * p.L * inner + rg.col;
    const int64_t dy_row = o.dy_row(p.G, inner);
    const float* dyb = o.dy + ub.b * p.L * dy_row + o.dy_col(ub.g, inner) + rg.col;
    float* dxb = o.dx + ub.b * p.L * inner + rg.col;  // summed over directions: see the header
    const bool first_direction = ub.g == 0;
    // Pass 1: the tile's forward from its checkpoint.
    alignas(64) float h[kRowGroup * W];
    for (int64_t j = 0; j < nb; ++j) {
      const Lanes<float> l = lanes_of(p, ub.b, ub.g, ub.first + g0 + j);
      for (int64_t c = 0; c < W; ++c) {
        h[j * W + c] = (k > 0 && c < l.nl) ? ckpt[((l.b * p.dim) + l.d0 + c) * p.tiles + k - 1] : 0.0f;
      }
    }
    for (int64_t t = 0; t < tl; ++t) {
      if (t + kRowPrefetch < tl) {
        const int64_t ahead = ord[t + kRowPrefetch];
        prefetch_span<0>(xb + ahead * inner, rg.lanes);
        prefetch_span<0>(pb + ahead * o.P, Q);
      }
      const int64_t pos = ord[t];
      const float* pr = pb + pos * o.P;
      const float* xr = xb + pos * inner;
      const __m512 b_in = _mm512_set1_ps(pr[R]);
      for (int64_t j = 0; j < nb; ++j) {
        const __mmask16 mask = j + 1 < nb ? __mmask16(0xFFFF) : rg.last;
        const __m512 u = _mm512_maskz_loadu_ps(mask, xr + j * W);
        const __m512 raw = delta_raw(bs, g0 + j, pr, R);
        __m512 dsp;
        const __m512 dt = softplus_avx512(raw, &dsp);
        const __m512 a = exp2_avx512(_mm512_mul_ps(dt, _mm512_load_ps(bs.A2(g0 + j))));
        const __m512 hp = _mm512_load_ps(h + j * W);
        const int64_t at = (t * kRowGroup + j) * W;
        _mm512_store_ps(rec_dt + at, dt);
        _mm512_store_ps(rec_dsp + at, dsp);
        _mm512_store_ps(rec_a + at, a);
        _mm512_store_ps(rec_hp + at, hp);
        _mm512_store_ps(h + j * W, _mm512_fmadd_ps(a, hp, _mm512_mul_ps(_mm512_mul_ps(dt, u), b_in)));
      }
    }
    // Pass 2: the adjoint recurrence, last step first.
    for (int64_t t = tl - 1; t >= 0; --t) {
      if (t >= kRowPrefetch) {
        const int64_t ahead = ord[t - kRowPrefetch];
        prefetch_span<0>(dyb + ahead * dy_row, rg.lanes);
        prefetch_span<1>(dxb + ahead * inner, rg.lanes);
        prefetch_span<1>(dpb + ahead * o.P, Q);
      }
      const int64_t pos = ord[t];
      const float* pr = pb + pos * o.P;
      const float* xr = xb + pos * inner;
      const float* dyr = dyb + pos * dy_row;
      float* dxr = dxb + pos * inner;
      const __m512 b_in = _mm512_set1_ps(pr[R]);
      const __m512 c_out = _mm512_set1_ps(pr[R + 1]);
      float* sh = shared + t * Q * W;
      __m512 d_b = _mm512_load_ps(sh + R * W);
      __m512 d_c = _mm512_load_ps(sh + (R + 1) * W);
      for (int64_t j = 0; j < nb; ++j) {
        const __mmask16 mask = j + 1 < nb ? __mmask16(0xFFFF) : rg.last;
        const int64_t at = (t * kRowGroup + j) * W;
        const __m512 dt = _mm512_load_ps(rec_dt + at);
        const __m512 a = _mm512_load_ps(rec_a + at);
        const __m512 hp = _mm512_load_ps(rec_hp + at);
        const __m512 u = _mm512_maskz_loadu_ps(mask, xr + j * W);
        const __m512 dy = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, dyr + j * W), _mm512_load_ps(bs.scale(g0 + j)),
                                          _mm512_load_ps(bs.shift(g0 + j)));
        const __m512 dtu = _mm512_mul_ps(dt, u);
        float* dh = bs.dh(g0 + j);
        const __m512 g = _mm512_fmadd_ps(c_out, dy, _mm512_load_ps(dh));  // d loss / d h_t
        const __m512 g_dtu = _mm512_mul_ps(g, b_in);
        const __m512 q = _mm512_mul_ps(_mm512_mul_ps(g, hp), a);  // d loss / d (dt * A)
        float* dA = bs.dA(g0 + j);
        _mm512_store_ps(dA, _mm512_fmadd_ps(q, dt, _mm512_load_ps(dA)));
        _mm512_store_ps(dh, _mm512_mul_ps(g, a));
        const __m512 g_dt = _mm512_fmadd_ps(g_dtu, u, _mm512_mul_ps(q, _mm512_load_ps(bs.A(g0 + j))));
        const __m512 gdt = _mm512_mul_ps(g_dt, _mm512_load_ps(rec_dsp + at));  // d loss / d raw
        const __m512 du = _mm512_fmadd_ps(g_dtu, dt, _mm512_mul_ps(_mm512_load_ps(bs.D(g0 + j)), dy));
        _mm512_mask_storeu_ps(dxr + j * W, mask,
                              first_direction ? du : _mm512_add_ps(du, _mm512_maskz_loadu_ps(mask, dxr + j * W)));
        float* dD = bs.dD(g0 + j);
        _mm512_store_ps(dD, _mm512_fmadd_ps(dy, u, _mm512_load_ps(dD)));
        float* dbias = bs.dbias(g0 + j);
        _mm512_store_ps(dbias, _mm512_add_ps(_mm512_load_ps(dbias), gdt));
        _mm512_store_ps(rec_dsp + at, gdt);  // read above; the dt_proj sums below take gdt
        d_b = _mm512_fmadd_ps(g, dtu, d_b);
        // h_t = a * h_{t-1} + dt * u * B, the state that C reads.
        d_c = _mm512_fmadd_ps(_mm512_fmadd_ps(a, hp, _mm512_mul_ps(dtu, b_in)), dy, d_c);
      }
      _mm512_store_ps(sh + R * W, d_b);
      _mm512_store_ps(sh + (R + 1) * W, d_c);
    }
    // The dt_proj gradients, over the tile: dt_w's (sum over steps of gdt x dt_low) and
    // dt_low's (sum over the group's blocks of gdt x dt_w rows), in registers rather than as
    // per-step read-modify-writes.
    rows_dt_proj_grads(tl, nb, R, g0, rec_dsp, dlow, bs, shared);
  }
  lane_sums(shared, tl * Q, sums);
  for (int64_t t = 0; t < tl; ++t) {
    float* dp = dpb + ord[t] * o.P;
    for (int64_t q = 0; q < Q; ++q) dp[q] += sums[t * Q + q];
  }
}
#endif

// One work unit of the backward (blocks as in forward_unit), tiles in reverse order.
template <typename T, int NN, bool kOrdered>
void backward_unit(const Problem<T>& p, const Ordered<T>* o, int64_t unit, int tid, const T* ckpt,
                   const T* dy, const Grads& gr) {
  const int64_t N = NN > 0 ? NN : p.N;
  const int64_t TT = p.tile;
  const int64_t R = kOrdered ? o->R : 0;
  const UnitBlocks ub = blocks_of(p, unit);
  BackwardSlots<T> bs(ub.count, N, R);
  const bool rows = kOrdered && kAvx512 && std::is_same_v<T, float> && p.softplus && N == 1;
  Scratch<T> buf(W * (2 * N + 8 * TT + 2 * TT * N) + TT * (2 * R + 4 * N) * kOrdered);
#if defined(__AVX512F__)
  Scratch<T> rows_buf(rows ? rows_n1_backward_scratch(TT, R) : 0);
#endif
  T* h0 = buf.data();  // state before the tile
  T* h = h0 + N * W;  // running state of the recomputation
  T* ut = h + N * W;
  T* raw = ut + TT * W;
  T* dtt = raw + TT * W;
  T* dtu = dtt + TT * W;
  T* dyt = dtu + TT * W;
  T* dut = dyt + TT * W;
  T* ddt = dut + TT * W;
  T* dsp = ddt + TT * W;  // d dt / d delta
  T* hs = dsp + TT * W;  // state after each step of the tile, [t][n][lane]
  T* as = hs + TT * N * W;  // decay exp(dt * A) of each step, [t][n][lane]; then d loss / d h
  // Ordered only: the tile's dt_low, B, C and the gradients of the three ([t][r], [t][n]),
  // summed over the unit's blocks before they are added at the steps' raster positions.
  T* dlow = as + TT * N * W;
  T* Bbuf = dlow + TT * R;
  T* Cbuf = Bbuf + TT * N;
  T* dlow_g = Cbuf + TT * N;
  T* dBt = dlow_g + TT * R;
  T* dCt = dBt + TT * N;
  const bool decay = load_block_constants<T, kOrdered>(p, o, ub, bs);
  for (int64_t j = 0; j < ub.count && kOrdered; ++j) {
    const Lanes<T> l = lanes_of(p, ub.b, ub.g, ub.first + j);
    for (int64_t c = 0; c < W; ++c) {
      const bool on = c < l.nl;
      bs.shift(j)[c] = on && o->dy_shift ? o->dy_shift[l.b * p.dim + l.d0 + c] : T(0);
      bs.scale(j)[c] = on && o->dy_scale ? o->dy_scale[l.b * p.dim + l.d0 + c] : T(1);
    }
  }
  const Lanes<T> l0 = lanes_of(p, ub.b, ub.g, ub.first);
  const OrderedUnit<T> ou0 = kOrdered ? ordered_unit(p, *o, l0) : OrderedUnit<T>{};
  T* dproj = kOrdered ? o->dproj + static_cast<int64_t>(tid) * p.batch * p.L * o->P : nullptr;
  const int64_t gofs = (ub.b * p.G + ub.g) * p.L * N;
  const int64_t part = static_cast<int64_t>(tid) * p.batch * p.G * p.L * N;
  const T* Bb = kOrdered ? nullptr : p.B + gofs;
  const T* Cb = kOrdered ? nullptr : p.C + gofs;
  T* dBb = kOrdered ? nullptr : static_cast<T*>(gr.dB) + part + gofs;
  T* dCb = kOrdered ? nullptr : static_cast<T*>(gr.dC) + part + gofs;
  for (int64_t k = p.tiles - 1; k >= 0; --k) {
    const int64_t t0 = k * TT;
    const int64_t tl = std::min(TT, p.L - t0);
    const T* Bt0 = kOrdered ? Bbuf : Bb + t0 * N;
    const T* Ct0 = kOrdered ? Cbuf : Cb + t0 * N;
#if defined(__AVX512F__)
    if constexpr (kOrdered && std::is_same_v<T, float> && NN == 1) {
      if (rows) {
        ordered_rows_n1_backward(p, *o, ub, ou0, k, t0, tl, ckpt, bs, dproj, rows_buf.data());
        continue;
      }
    }
#endif
    if constexpr (kOrdered) {
      gather_ordered_steps(p, *o, l0, ou0, t0, tl, dlow, Bbuf, Cbuf);
      std::fill(dlow_g, dlow_g + TT * (R + 2 * N), T(0));
      prefetch_ordered_tile(p, *o, ub, ou0, t0 - TT, std::min(TT, t0), true);
    }
    for (int64_t j = 0; j < ub.count; ++j) {
      const Lanes<T> l = lanes_of(p, ub.b, ub.g, ub.first + j);
      const T* A_l = bs.A(j);
      const T* A2_l = bs.A2(j);
      T* dh = bs.dh(j);
      T* dA_acc = bs.dA(j);
      const T* D_l = bs.D(j);
      const T* bias_l = bs.bias(j);
      T* dD_acc = bs.dD(j);
      T* dbias_acc = bs.dbias(j);
      const T* dtw_l = bs.dt_w(j);
      T* dtw_acc = bs.dtw(j);
      OrderedUnit<T> ou{};
      if constexpr (kOrdered) {
        ou = ordered_unit(p, *o, l);
        gather_ordered_lanes(p, l, ou, t0, tl, o->x, false, ut);
        gather_ordered_lanes(p, l, ou, t0, tl, o->dy, o->dy_scale == nullptr, dyt);
        if (o->dy_shift || o->dy_scale) {
          const T* shift = bs.shift(j);
          const T* scale = bs.scale(j);
          for (int64_t t = 0; t < tl; ++t) {
            RCS_SIMD
            for (int c = 0; c < W; ++c) dyt[t * W + c] = dyt[t * W + c] * scale[c] + shift[c];
          }
        }
        tile_delta(tl, R, dtw_l, dlow, raw);
      } else {
        gather_tile(p.u, p, l, t0, tl, ut);
        gather_tile(p.delta, p, l, t0, tl, raw);
        gather_tile(dy, p, l, t0, tl, dyt);
      }
      tile_dt(p, tl, raw, ut, bias_l, dtt, dtu, dsp);
      for (int64_t c = 0; c < W; ++c) {
        for (int64_t n = 0; n < N; ++n) {
          const T v = (k > 0 && c < l.nl)
                          ? ckpt[(((l.b * p.dim) + l.d0 + c) * p.tiles + k - 1) * N + n]
                          : T(0);
          h0[n * W + c] = v;
          h[n * W + c] = v;
        }
      }
      if (decay) {
        tile_forward<T, NN, true, true>(p, tl, Bt0, Ct0, dtt, dtu, ut, A2_l, D_l, h, nullptr, hs, as);
      } else {
        tile_forward<T, NN, true, false>(p, tl, Bt0, Ct0, dtt, dtu, ut, A2_l, D_l, h, nullptr, hs, as);
      }
      for (int64_t t = tl - 1; t >= 0; --t) {
        const T* Bt = Bt0 + t * N;
        const T* Ct = Ct0 + t * N;
        const T* hprev_t = t > 0 ? hs + (t - 1) * N * W : h0;
        alignas(64) T g_dtu[W];  // d loss / d (dt * u)
        alignas(64) T g_dt[W];  // d loss / d dt through the decay exp(dt * A)
        RCS_SIMD
        for (int c = 0; c < W; ++c) {
          g_dtu[c] = 0;
          g_dt[c] = 0;
        }
        for (int64_t n = 0; n < N; ++n) {
          const T bn = Bt[n];
          const T cn = Ct[n];
          T* an = as + (t * N + n) * W;
          const T* hp = hprev_t + n * W;
          const T* A_n = A_l + n * W;
          T* dhn = dh + n * W;
          T* dAn = dA_acc + n * W;
          RCS_SIMD
          for (int c = 0; c < W; ++c) {
            const T a = an[c];
            const T g = dhn[c] + cn * dyt[t * W + c];  // d loss / d h_t
            g_dtu[c] += g * bn;
            const T q = g * hp[c] * a;  // d loss / d (dt * A)
            g_dt[c] += q * A_n[c];
            dAn[c] += q * dtt[t * W + c];
            dhn[c] = g * a;
            an[c] = g;  // the decay is no longer needed: keep g for the dB sums below
          }
        }
        RCS_SIMD
        for (int c = 0; c < W; ++c) {
          const T dyv = dyt[t * W + c];
          const T uv = ut[t * W + c];
          const T gdt = (g_dt[c] + g_dtu[c] * uv) * dsp[t * W + c];
          dut[t * W + c] = g_dtu[c] * dtt[t * W + c] + D_l[c] * dyv;
          ddt[t * W + c] = gdt;
          dD_acc[c] += dyv * uv;
          dbias_acc[c] += gdt;
        }
      }
      // dC[t][n] += sum over lanes of h_t[n] * dy_t and dB[t][n] += sum of g_t[n] * dt_t u_t;
      // (t, n) rows are contiguous in the (L, N) layout, so reduce them in batches.
      if constexpr (kOrdered) {
        lane_dot_rows(hs, dyt, tl, N, dCt);
        lane_dot_rows(as, dtu, tl, N, dBt);
        lane_dot_outer(ddt, dtw_l, tl, R, dlow_g);
        for (int64_t t = 0; t < tl; ++t) {
          for (int64_t r = 0; r < R; ++r) {
            const T s = dlow[t * R + r];
            RCS_SIMD
            for (int c = 0; c < W; ++c) dtw_acc[r * W + c] += ddt[t * W + c] * s;
          }
        }
        scatter_dx_tile(p, l, ou, t0, tl, dut, o->dx);
      } else {
        lane_dot_rows(hs, dyt, tl, N, dCb + t0 * N);
        lane_dot_rows(as, dtu, tl, N, dBb + t0 * N);
        scatter_tile(dut, p, l, t0, tl, static_cast<T*>(gr.du));
        scatter_tile(ddt, p, l, t0, tl, static_cast<T*>(gr.ddelta));
      }
    }
    if constexpr (kOrdered) {
      for (int64_t t = 0; t < tl; ++t) {
        T* dp = dproj + (ub.b * p.L + ou0.ord[t0 + t]) * o->P + ou0.off;
        for (int64_t r = 0; r < R; ++r) dp[r] += dlow_g[t * R + r];
        for (int64_t n = 0; n < N; ++n) {
          dp[R + n] += dBt[t * N + n];
          dp[R + N + n] += dCt[t * N + n];
        }
      }
    }
  }
  for (int64_t j = 0; j < ub.count; ++j) {
    const Lanes<T> l = lanes_of(p, ub.b, ub.g, ub.first + j);
    const T* dA_acc = bs.dA(j);
    const T* dD_acc = bs.dD(j);
    const T* dbias_acc = bs.dbias(j);
    const T* dtw_acc = bs.dtw(j);
    for (int64_t c = 0; c < l.nl; ++c) {
      const int64_t d = l.d0 + c;
      for (int64_t n = 0; n < N; ++n) static_cast<T*>(gr.dA)[(l.b * p.dim + d) * N + n] = dA_acc[n * W + c];
      if (gr.dD) static_cast<T*>(gr.dD)[l.b * p.dim + d] = dD_acc[c];
      if (gr.dbias) static_cast<T*>(gr.dbias)[l.b * p.dim + d] = dbias_acc[c];
      if constexpr (kOrdered) {
        for (int64_t r = 0; r < R; ++r) o->ddt_w[(l.b * p.dim + d) * R + r] = dtw_acc[r * W + c];
      }
    }
  }
}

template <typename T>
Problem<T> make_problem(const T* u, const T* delta, const T* A, const T* B, const T* C,
                        const T* D, const T* bias, int softplus, int64_t batch, int64_t dim,
                        int64_t L, int64_t N, int64_t G, int64_t tile) {
  Problem<T> p{u, delta, A, B, C, D, bias, softplus != 0, batch, dim, L, N, G, tile, 0, 0, 0};
  p.per_group = dim / G;
  p.blocks_per_group = (p.per_group + W - 1) / W;
  p.tiles = (L + tile - 1) / tile;
  return p;
}

bool valid(int64_t batch, int64_t dim, int64_t L, int64_t N, int64_t G, int64_t tile) {
  return batch >= 0 && dim > 0 && L >= 0 && N > 0 && G > 0 && dim % G == 0 && tile > 0;
}

// Ordered units run all channel blocks of one direction (sharing the rows they read), split
// only as far as needed to give every thread work. (Smaller units that keep their blocks'
// state within L1 measured slower: 53 against 39 ms for Di = 360, N = 16 at 64².)
// The ordered backward runs the directions of an (image, chunk) on one worker (dx is summed
// over them), so only the images count as separate groups there.
template <typename T>
void set_blocks_per_unit(Problem<T>& p, int threads, bool directions_together) {
  const int64_t groups = directions_together ? p.batch : p.batch * p.G;
  const int64_t want = std::max<int64_t>(1, (2 * threads + groups - 1) / std::max<int64_t>(groups, 1));
  const int64_t chunks = std::min(p.blocks_per_group, want);
  p.blocks_per_unit = (p.blocks_per_group + chunks - 1) / chunks;
}

// The problem of an ordered scan (dim = G * inner, no u/delta/B/C arrays); false for sizes the
// caller should have rejected.
template <typename T>
bool ordered_problem(const T* A, const T* D, const T* bias, int softplus, int64_t batch,
                     int64_t inner, int64_t L, int64_t N, int64_t G, int64_t tile, int64_t P,
                     int64_t R, int64_t order_bstride, int threads, bool backward, Problem<T>* out) {
  if (!valid(batch, G * inner, L, N, G, tile) || R <= 0 || P < G * (R + 2 * N) ||
      (order_bstride != 0 && order_bstride != G * L)) {
    return false;
  }
  *out = make_problem<T>(nullptr, nullptr, A, nullptr, nullptr, D, bias, softplus, batch,
                         G * inner, L, N, G, tile);
  set_blocks_per_unit(*out, threads, backward);
  return true;
}

// Runs a unit function for every unit, with N fixed at compile time for the common sizes.
template <typename T, typename F>
int run_units(const Problem<T>& p, int threads, F unit_fn, int64_t units = -1) {
  auto run = [&](auto nn) {
    return parallel_units(units < 0 ? p.units() : units, threads,
                          [&](int64_t unit, int tid) { unit_fn(nn, unit, tid); });
  };
  bool ok;
  if (p.N == 1) ok = run(std::integral_constant<int, 1>{});
  else if (p.N == 16) ok = run(std::integral_constant<int, 16>{});
  else ok = run(std::integral_constant<int, 0>{});
  return ok ? 0 : 1;
}

template <typename T, bool kOrdered>
int forward(const Problem<T>& p, const Ordered<T>* o, T* y, T* ckpt, int threads) {
  return run_units(p, threads, [&](auto nn, int64_t unit, int) {
    forward_unit<T, decltype(nn)::value, kOrdered>(p, o, unit, y, ckpt);
  });
}

// dA, dD and dbias (and the ordered variant's dt_proj gradient) are written per (batch,
// channel) -- shapes (batch, dim, N), (batch, dim), (batch, dim), (batch, dim, R) -- so that
// no two units write the same element; the caller sums over batch.
template <typename T, bool kOrdered>
int backward(const Problem<T>& p, const Ordered<T>* o, const T* ckpt, const T* dy,
             const Grads& gr, int threads) {
  if constexpr (kOrdered) {
    // One work item per (image, chunk): its directions in order, the first storing dx.
    const int64_t chunks = p.chunks();
    return run_units(
        p, threads,
        [&](auto nn, int64_t item, int tid) {
          const int64_t b = item / chunks, chunk = item % chunks;
          for (int64_t g = 0; g < p.G; ++g) {
            backward_unit<T, decltype(nn)::value, true>(p, o, (b * p.G + g) * chunks + chunk, tid, ckpt, dy, gr);
          }
        },
        p.batch * chunks);
  }
  return run_units(p, threads, [&](auto nn, int64_t unit, int tid) {
    backward_unit<T, decltype(nn)::value, kOrdered>(p, o, unit, tid, ckpt, dy, gr);
  });
}

// ---------------------------------------------------------------------------------------
// Weighted merge of the directions of an ordered scan (MaIR's SSA):
//   out[b, l, d] = sum_k g[b, k, d] * y[b, l, k, d],
// and its backward dy = dout (x) g, dg = sum_l dout * y, in one pass over y. Rows (b, l) are
// split into contiguous ranges over threads; dg is summed per thread into (threads, batch, K, inner).

template <typename T>
int merge_forward(const T* y, const T* g, int64_t batch, int64_t L, int64_t K, int64_t inner,
                  T* out, int threads) {
  const int64_t rows = batch * L;
  const int64_t chunk = 256;
  const int64_t units = (rows + chunk - 1) / chunk;
  const bool ok = parallel_units(units, threads, [&](int64_t unit, int) {
    for (int64_t row = unit * chunk; row < std::min(rows, (unit + 1) * chunk); ++row) {
      const T* gb = g + (row / L) * K * inner;
      const T* yr = y + row * K * inner;
      T* o = out + row * inner;
      RCS_SIMD
      for (int64_t d = 0; d < inner; ++d) o[d] = gb[d] * yr[d];
      for (int64_t k = 1; k < K; ++k) {
        RCS_SIMD
        for (int64_t d = 0; d < inner; ++d) o[d] += gb[k * inner + d] * yr[k * inner + d];
      }
    }
  });
  return ok ? 0 : 1;
}

template <typename T>
int merge_backward(const T* y, const T* g, const T* dout, int64_t batch, int64_t L, int64_t K,
                   int64_t inner, T* dy, T* dg_part, int threads) {
  const int64_t rows = batch * L;
  const int64_t chunk = 256;
  const int64_t units = (rows + chunk - 1) / chunk;
  const bool ok = parallel_units(units, threads, [&](int64_t unit, int tid) {
    T* dg_t = dg_part + static_cast<int64_t>(tid) * batch * K * inner;
    for (int64_t row = unit * chunk; row < std::min(rows, (unit + 1) * chunk); ++row) {
      const int64_t gofs = (row / L) * K * inner;
      const T* yr = y + row * K * inner;
      const T* dr = dout + row * inner;
      T* dyr = dy + row * K * inner;
      for (int64_t k = 0; k < K; ++k) {
        const T* gk = g + gofs + k * inner;
        T* dgk = dg_t + gofs + k * inner;
        RCS_SIMD
        for (int64_t d = 0; d < inner; ++d) {
          dyr[k * inner + d] = dr[d] * gk[d];
          dgk[d] += dr[d] * yr[k * inner + d];
        }
      }
    }
  });
  return ok ? 0 : 1;
}


// ---------------------------------------------------------------------------------------
// Inference epilogues of the Mamba block on runs of positions (forward only, no autograd;
// restorecli/ops/block_epilogue.py holds their PyTorch formulations, which are the
// reference): one pass over each position instead of four to six PyTorch operations, each
// of which reads and writes the whole run.

inline float sigmoid(float x) {
  const float e = exp_neg_approx(-std::fabs(x));
  return (x >= 0.0f ? 1.0f : e) / (1.0f + e);
}
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// out = (v - mean(v)) / sqrt(var(v) + eps) * w + b over one row of n values (biased variance,
// two passes, as torch's layer_norm).
template <typename T>
inline void normalise_row(const T* __restrict v, int64_t n, const T* __restrict w, const T* __restrict b,
                          T eps, T* __restrict out) {
  T sum = 0;
  RCS_PRAGMA(omp simd reduction(+ : sum))
  for (int64_t c = 0; c < n; ++c) sum += v[c];
  const T mean = sum / static_cast<T>(n);
  T sq = 0;
  RCS_PRAGMA(omp simd reduction(+ : sq))
  for (int64_t c = 0; c < n; ++c) sq += (v[c] - mean) * (v[c] - mean);
  const T rstd = T(1) / std::sqrt(sq / static_cast<T>(n) + eps);
  RCS_SIMD
  for (int64_t c = 0; c < n; ++c) out[c] = (v[c] - mean) * rstd * w[c] + b[c];
}

constexpr int64_t kEpilogueRows = 64;  // rows per parallel work unit

#if defined(__AVX512F__)
// Rows of up to kMaxRowVectors * 16 values in registers (wider rows take the generic loops,
// which the compiler did not vectorise: 4x slower).
constexpr int64_t kMaxRowVectors = 16;

inline __mmask16 tail_mask(int64_t n, int64_t v) {
  const int64_t left = n - v * W;
  return left >= W ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
}

// Centres a row held in nv vectors (lanes past n zero) and divides it by its standard
// deviation (biased, + eps), in place: the normalised row of a LayerNorm before its affine
// part (lanes past n stay zero). Returns 1 / std in every lane.
inline __m512 standardise_vectors(__m512* v, int64_t nv, int64_t n, float eps) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < nv; ++i) acc = _mm512_add_ps(acc, v[i]);
  const __m512 mean = _mm512_set1_ps(_mm512_reduce_add_ps(acc) / static_cast<float>(n));
  acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < nv; ++i) {
    v[i] = _mm512_maskz_sub_ps(tail_mask(n, i), v[i], mean);
    acc = _mm512_fmadd_ps(v[i], v[i], acc);
  }
  const __m512 rstd = _mm512_set1_ps(1.0f / std::sqrt(_mm512_reduce_add_ps(acc) / static_cast<float>(n) + eps));
  for (int64_t i = 0; i < nv; ++i) v[i] = _mm512_mul_ps(v[i], rstd);
  return rstd;
}

// LayerNorm of a row held in nv vectors (lanes past n are zero); the result replaces it.
inline void normalise_vectors(__m512* v, int64_t nv, int64_t n, const float* w, const float* b, float eps) {
  standardise_vectors(v, nv, n, eps);
  for (int64_t i = 0; i < nv; ++i) {
    const __mmask16 m = tail_mask(n, i);
    v[i] = _mm512_fmadd_ps(v[i], _mm512_maskz_loadu_ps(m, w + i * W), _mm512_maskz_loadu_ps(m, b + i * W));
  }
}

inline __m512 sigmoid_avx512(__m512 z) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 e = exp_neg_avx512(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(z)));
  const __mmask16 pos = _mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_GE_OQ);
  return _mm512_div_ps(_mm512_mask_blend_ps(pos, e, one), _mm512_add_ps(one, e));
}

inline __m512 silu_avx512(__m512 z) { return _mm512_mul_ps(z, sigmoid_avx512(z)); }

inline void merge_norm_gate_row(const float* yr, const float* g, const float* zr, const float* w,
                                const float* b, float eps, int64_t K, int64_t inner, float* out) {
  const int64_t nv = (inner + W - 1) / W;
  __m512 v[kMaxRowVectors];
  for (int64_t i = 0; i < nv; ++i) {
    const __mmask16 m = tail_mask(inner, i);
    __m512 acc = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, g + i * W), _mm512_maskz_loadu_ps(m, yr + i * W));
    for (int64_t k = 1; k < K; ++k) {
      acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, g + k * inner + i * W),
                            _mm512_maskz_loadu_ps(m, yr + k * inner + i * W), acc);
    }
    v[i] = acc;
  }
  normalise_vectors(v, nv, inner, w, b, eps);
  for (int64_t i = 0; i < nv; ++i) {
    const __mmask16 m = tail_mask(inner, i);
    _mm512_mask_storeu_ps(out + i * W, m, _mm512_mul_ps(v[i], silu_avx512(_mm512_maskz_loadu_ps(m, zr + i * W))));
  }
}

inline void residual_norm_row(const float* xr, const float* skip, const float* mr, const float* w,
                              const float* b, float eps, int64_t C, float* ar, float* out) {
  const int64_t nv = (C + W - 1) / W;
  __m512 v[kMaxRowVectors];
  for (int64_t i = 0; i < nv; ++i) {
    const __mmask16 m = tail_mask(C, i);
    v[i] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, xr + i * W), _mm512_maskz_loadu_ps(m, skip + i * W),
                           _mm512_maskz_loadu_ps(m, mr + i * W));
    _mm512_mask_storeu_ps(ar + i * W, m, v[i]);
  }
  normalise_vectors(v, nv, C, w, b, eps);
  for (int64_t i = 0; i < nv; ++i) _mm512_mask_storeu_ps(out + i * W, tail_mask(C, i), v[i]);
}

// The LayerNorm gradient of its input, in place of e: from e = d loss / d normalised row and
// the normalised row xhat, rstd * (e - mean(e) - xhat * mean(e xhat)). Lanes past n of the
// result are not zero: callers mask their stores.
inline void norm_input_grad(__m512* e, const __m512* xhat, int64_t nv, int64_t n, __m512 rstd) {
  __m512 sum_e = _mm512_setzero_ps(), sum_ex = _mm512_setzero_ps();
  for (int64_t i = 0; i < nv; ++i) {
    sum_e = _mm512_add_ps(sum_e, e[i]);
    sum_ex = _mm512_fmadd_ps(e[i], xhat[i], sum_ex);
  }
  const __m512 mean_e = _mm512_set1_ps(_mm512_reduce_add_ps(sum_e) / static_cast<float>(n));
  const __m512 mean_ex = _mm512_set1_ps(_mm512_reduce_add_ps(sum_ex) / static_cast<float>(n));
  for (int64_t i = 0; i < nv; ++i) {
    e[i] = _mm512_mul_ps(rstd, _mm512_sub_ps(_mm512_sub_ps(e[i], mean_e), _mm512_mul_ps(xhat[i], mean_ex)));
  }
}

// The backward of merge_norm_gate_row for one row, from the row's y, z and output gradient d:
// recomputes the merged row m and its normalisation n = (m - mean) * rstd, then
//   dz = d * (n w + b) * silu'(z),   dw += d * silu(z) * n,   db += d * silu(z),
//   dm = rstd * (e - mean(e) - n * mean(e n)) with e = d * silu(z) * w   (LayerNorm),
//   dy[k] = g[k] * dm (or dm itself into dmr when dmr is not null),   dg[k] += y[k] * dm.
// Lanes past inner are zero in n and e; their dm is not, so stores and the dg sums are masked.
inline void merge_norm_gate_backward_row(const float* yr, const float* g, const float* zr, const float* w,
                                         const float* b, float eps, int64_t K, int64_t inner,
                                         const float* dr, float* dyr, float* dmr, float* dzr, float* dg,
                                         float* dw, float* db) {
  const int64_t nv = (inner + W - 1) / W;
  __m512 n[kMaxRowVectors], e[kMaxRowVectors];
  for (int64_t i = 0; i < nv; ++i) {
    const __mmask16 m = tail_mask(inner, i);
    __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, g + i * W), _mm512_maskz_loadu_ps(m, yr + i * W));
    for (int64_t k = 1; k < K; ++k) {
      v = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, g + k * inner + i * W), _mm512_maskz_loadu_ps(m, yr + k * inner + i * W), v);
    }
    n[i] = v;
  }
  const __m512 rstd = standardise_vectors(n, nv, inner, eps);
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < nv; ++i) {
    const __mmask16 m = tail_mask(inner, i);
    const __m512 z = _mm512_maskz_loadu_ps(m, zr + i * W);
    const __m512 wv = _mm512_maskz_loadu_ps(m, w + i * W);
    const __m512 d = _mm512_maskz_loadu_ps(m, dr + i * W);
    const __m512 sig = sigmoid_avx512(z);
    const __m512 silu = _mm512_mul_ps(z, sig);
    const __m512 ln = _mm512_fmadd_ps(n[i], wv, _mm512_maskz_loadu_ps(m, b + i * W));
    // silu'(z) = sig * (1 + z * (1 - sig))
    const __m512 dsilu = _mm512_mul_ps(sig, _mm512_fmadd_ps(z, _mm512_sub_ps(one, sig), one));
    _mm512_mask_storeu_ps(dzr + i * W, m, _mm512_mul_ps(_mm512_mul_ps(d, ln), dsilu));
    const __m512 dln = _mm512_mul_ps(d, silu);
    _mm512_mask_storeu_ps(dw + i * W, m, _mm512_fmadd_ps(dln, n[i], _mm512_maskz_loadu_ps(m, dw + i * W)));
    _mm512_mask_storeu_ps(db + i * W, m, _mm512_add_ps(dln, _mm512_maskz_loadu_ps(m, db + i * W)));
    e[i] = _mm512_mul_ps(dln, wv);
  }
  norm_input_grad(e, n, nv, inner, rstd);
  for (int64_t i = 0; i < nv; ++i) {
    const __mmask16 m = tail_mask(inner, i);
    const __m512 dm = e[i];
    if (dmr) _mm512_mask_storeu_ps(dmr + i * W, m, dm);
    for (int64_t k = 0; k < K; ++k) {
      const int64_t at = k * inner + i * W;
      if (!dmr) _mm512_mask_storeu_ps(dyr + at, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, g + at), dm));
      _mm512_mask_storeu_ps(dg + at, m, _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, yr + at), dm, _mm512_maskz_loadu_ps(m, dg + at)));
    }
  }
}

// The backward of residual_norm_row for one row, from the row's x, a = x * skip + mixed and
// the gradients da (may be null) and dn of its two outputs, with n = (a - mean) * rstd:
//   dw += dn * n,   db += dn,   ga = da + rstd * (e - mean(e) - n * mean(e n)) with e = dn * w,
//   dmixed = ga,   dx = ga * skip,   dskip += ga * x.
inline void residual_norm_backward_row(const float* xr, const float* skip, const float* ar, const float* w,
                                       float eps, int64_t C, const float* dar, const float* dnr, float* dxr,
                                       float* dmr, float* dskip, float* dw, float* db) {
  const int64_t nv = (C + W - 1) / W;
  __m512 n[kMaxRowVectors], e[kMaxRowVectors];
  for (int64_t i = 0; i < nv; ++i) n[i] = _mm512_maskz_loadu_ps(tail_mask(C, i), ar + i * W);
  const __m512 rstd = standardise_vectors(n, nv, C, eps);
  for (int64_t i = 0; i < nv; ++i) {
    const __mmask16 m = tail_mask(C, i);
    const __m512 dn = _mm512_maskz_loadu_ps(m, dnr + i * W);
    _mm512_mask_storeu_ps(dw + i * W, m, _mm512_fmadd_ps(dn, n[i], _mm512_maskz_loadu_ps(m, dw + i * W)));
    _mm512_mask_storeu_ps(db + i * W, m, _mm512_add_ps(dn, _mm512_maskz_loadu_ps(m, db + i * W)));
    e[i] = _mm512_mul_ps(dn, _mm512_maskz_loadu_ps(m, w + i * W));
  }
  norm_input_grad(e, n, nv, C, rstd);
  for (int64_t i = 0; i < nv; ++i) {
    const __mmask16 m = tail_mask(C, i);
    __m512 ga = e[i];
    if (dar != nullptr) ga = _mm512_add_ps(ga, _mm512_maskz_loadu_ps(m, dar + i * W));
    _mm512_mask_storeu_ps(dmr + i * W, m, ga);
    _mm512_mask_storeu_ps(dxr + i * W, m, _mm512_mul_ps(ga, _mm512_maskz_loadu_ps(m, skip + i * W)));
    _mm512_mask_storeu_ps(dskip + i * W, m,
                          _mm512_fmadd_ps(ga, _mm512_maskz_loadu_ps(m, xr + i * W), _mm512_maskz_loadu_ps(m, dskip + i * W)));
  }
}
#endif

// The mixer's output side: out[r] = LayerNorm(sum_k g[k] * y[r, k]) * silu(z[r]), for rows r
// of y (rows, K, inner) and z (rows, inner) that share the gates g (K, inner).
template <typename T>
int merge_norm_gate(const T* y, const T* g, const T* z, const T* w, const T* b, T eps, int64_t rows,
                    int64_t K, int64_t inner, T* out, int threads) {
  const int64_t units = (rows + kEpilogueRows - 1) / kEpilogueRows;
  const bool ok = parallel_units(units, threads, [&](int64_t unit, int) {
    std::vector<T> merged(inner);
    for (int64_t r = unit * kEpilogueRows; r < std::min(rows, (unit + 1) * kEpilogueRows); ++r) {
#if defined(__AVX512F__)
      if constexpr (std::is_same_v<T, float>) {
        if (inner <= kMaxRowVectors * W) {
          merge_norm_gate_row(y + r * K * inner, g, z + r * inner, w, b, eps, K, inner, out + r * inner);
          continue;
        }
      }
#endif
      const T* yr = y + r * K * inner;
      RCS_SIMD
      for (int64_t d = 0; d < inner; ++d) merged[d] = g[d] * yr[d];
      for (int64_t k = 1; k < K; ++k) {
        RCS_SIMD
        for (int64_t d = 0; d < inner; ++d) merged[d] += g[k * inner + d] * yr[k * inner + d];
      }
      T* o = out + r * inner;
      normalise_row(merged.data(), inner, w, b, eps, o);
      const T* zr = z + r * inner;
      RCS_SIMD
      for (int64_t d = 0; d < inner; ++d) o[d] *= zr[d] * sigmoid(zr[d]);
    }
  });
  return ok ? 0 : 1;
}

// The backward of merge_norm_gate over batch * L rows, image i's rows sharing its gates
// g[i] (K, inner): dy (rows, K, inner) and dz (rows, inner) per row, and the sums dg
// (batch, K, inner), dw and db (inner) per thread into dg_part, dw_part, db_part (zeroed by
// the caller, summed over threads by it). See merge_norm_gate_backward_row for the formulas.
// With dm not null, the gradient of the merged rows goes there (rows, inner) and dy is not
// written: an ordered scan's backward reads dm and the gates itself (Ordered::dy_scale).
template <typename T>
int merge_norm_gate_backward(const T* y, const T* g, const T* z, const T* w, const T* b, T eps,
                             int64_t batch, int64_t L, int64_t K, int64_t inner, const T* dout, T* dy,
                             T* dm_out, T* dz, T* dg_part, T* dw_part, T* db_part, int threads) {
  const int64_t rows = batch * L;
  const int64_t units = (rows + kEpilogueRows - 1) / kEpilogueRows;
  const bool ok = parallel_units(units, threads, [&](int64_t unit, int tid) {
    T* dg_t = dg_part + static_cast<int64_t>(tid) * batch * K * inner;
    T* dw_t = dw_part + static_cast<int64_t>(tid) * inner;
    T* db_t = db_part + static_cast<int64_t>(tid) * inner;
    std::vector<T> n(inner), e(inner);
    for (int64_t r = unit * kEpilogueRows; r < std::min(rows, (unit + 1) * kEpilogueRows); ++r) {
      const int64_t image = r / L;
      const T* gr = g + image * K * inner;
      T* dgr = dg_t + image * K * inner;
      const T* yr = y + r * K * inner;
      const T* zr = z + r * inner;
      const T* dr = dout + r * inner;
      T* dyr = dm_out ? nullptr : dy + r * K * inner;
      T* dmr = dm_out ? dm_out + r * inner : nullptr;
      T* dzr = dz + r * inner;
#if defined(__AVX512F__)
      if constexpr (std::is_same_v<T, float>) {
        if (inner <= kMaxRowVectors * W) {
          merge_norm_gate_backward_row(yr, gr, zr, w, b, eps, K, inner, dr, dyr, dmr, dzr, dgr, dw_t, db_t);
          continue;
        }
      }
#endif
      T sum = 0;
      for (int64_t d = 0; d < inner; ++d) {
        T m = 0;
        for (int64_t k = 0; k < K; ++k) m += gr[k * inner + d] * yr[k * inner + d];
        n[d] = m;
        sum += m;
      }
      const T mean = sum / static_cast<T>(inner);
      T sq = 0;
      for (int64_t d = 0; d < inner; ++d) sq += (n[d] - mean) * (n[d] - mean);
      const T rstd = T(1) / std::sqrt(sq / static_cast<T>(inner) + eps);
      T sum_e = 0, sum_en = 0;
      for (int64_t d = 0; d < inner; ++d) {
        n[d] = (n[d] - mean) * rstd;
        const T sig = sigmoid(zr[d]);
        const T dln = dr[d] * zr[d] * sig;
        dzr[d] = dr[d] * (n[d] * w[d] + b[d]) * sig * (T(1) + zr[d] * (T(1) - sig));
        dw_t[d] += dln * n[d];
        db_t[d] += dln;
        e[d] = dln * w[d];
        sum_e += e[d];
        sum_en += e[d] * n[d];
      }
      const T mean_e = sum_e / static_cast<T>(inner), mean_en = sum_en / static_cast<T>(inner);
      for (int64_t d = 0; d < inner; ++d) {
        const T dm = rstd * (e[d] - mean_e - n[d] * mean_en);
        if (dmr) dmr[d] = dm;
        for (int64_t k = 0; k < K; ++k) {
          if (!dmr) dyr[k * inner + d] = gr[k * inner + d] * dm;
          dgr[k * inner + d] += yr[k * inner + d] * dm;
        }
      }
    }
  });
  return ok ? 0 : 1;
}

// The block's residual: a = x * skip + mixed and normed = LayerNorm(a), per row of C values.
template <typename T>
int residual_norm(const T* x, const T* skip, const T* mixed, const T* w, const T* b, T eps,
                  int64_t rows, int64_t C, T* a, T* normed, int threads) {
  const int64_t units = (rows + kEpilogueRows - 1) / kEpilogueRows;
  const bool ok = parallel_units(units, threads, [&](int64_t unit, int) {
    for (int64_t r = unit * kEpilogueRows; r < std::min(rows, (unit + 1) * kEpilogueRows); ++r) {
#if defined(__AVX512F__)
      if constexpr (std::is_same_v<T, float>) {
        if (C <= kMaxRowVectors * W) {
          residual_norm_row(x + r * C, skip, mixed + r * C, w, b, eps, C, a + r * C, normed + r * C);
          continue;
        }
      }
#endif
      const T* xr = x + r * C;
      const T* mr = mixed + r * C;
      T* ar = a + r * C;
      RCS_SIMD
      for (int64_t c = 0; c < C; ++c) ar[c] = xr[c] * skip[c] + mr[c];
      normalise_row(ar, C, w, b, eps, normed + r * C);
    }
  });
  return ok ? 0 : 1;
}

// The backward of residual_norm over rows of C values, from x, the forward's a and the
// gradients da (null: none) and dn of a and normed: dx and dmixed per row, and the sums dskip,
// dw and db (C) per thread into dskip_part, dw_part, db_part (zeroed and summed by the
// caller). See residual_norm_backward_row for the formulas.
template <typename T>
int residual_norm_backward(const T* x, const T* skip, const T* a, const T* w, T eps, int64_t rows, int64_t C,
                           const T* da, const T* dn, T* dx, T* dmixed, T* dskip_part, T* dw_part, T* db_part,
                           int threads) {
  const int64_t units = (rows + kEpilogueRows - 1) / kEpilogueRows;
  const bool ok = parallel_units(units, threads, [&](int64_t unit, int tid) {
    T* dskip_t = dskip_part + static_cast<int64_t>(tid) * C;
    T* dw_t = dw_part + static_cast<int64_t>(tid) * C;
    T* db_t = db_part + static_cast<int64_t>(tid) * C;
    std::vector<T> n(C), e(C);
    for (int64_t r = unit * kEpilogueRows; r < std::min(rows, (unit + 1) * kEpilogueRows); ++r) {
      const T* xr = x + r * C;
      const T* ar = a + r * C;
      const T* dar = da == nullptr ? nullptr : da + r * C;
      const T* dnr = dn + r * C;
#if defined(__AVX512F__)
      if constexpr (std::is_same_v<T, float>) {
        if (C <= kMaxRowVectors * W) {
          residual_norm_backward_row(xr, skip, ar, w, eps, C, dar, dnr, dx + r * C, dmixed + r * C, dskip_t, dw_t, db_t);
          continue;
        }
      }
#endif
      T sum = 0;
      for (int64_t c = 0; c < C; ++c) sum += ar[c];
      const T mean = sum / static_cast<T>(C);
      T sq = 0;
      for (int64_t c = 0; c < C; ++c) sq += (ar[c] - mean) * (ar[c] - mean);
      const T rstd = T(1) / std::sqrt(sq / static_cast<T>(C) + eps);
      T sum_e = 0, sum_en = 0;
      for (int64_t c = 0; c < C; ++c) {
        n[c] = (ar[c] - mean) * rstd;
        dw_t[c] += dnr[c] * n[c];
        db_t[c] += dnr[c];
        e[c] = dnr[c] * w[c];
        sum_e += e[c];
        sum_en += e[c] * n[c];
      }
      const T mean_e = sum_e / static_cast<T>(C), mean_en = sum_en / static_cast<T>(C);
      for (int64_t c = 0; c < C; ++c) {
        const T ga = rstd * (e[c] - mean_e - n[c] * mean_en) + (dar == nullptr ? T(0) : dar[c]);
        dmixed[r * C + c] = ga;
        dx[r * C + c] = ga * skip[c];
        dskip_t[c] += ga * xr[c];
      }
    }
  });
  return ok ? 0 : 1;
}
}  // namespace

// ---------------------------------------------------------------------------------------
// C ABI. Return value: 0 = ok, 1 = a worker failed (e.g. out of memory), 2 = bad sizes.

RCS_EXPORT int rcs_abi_version() { return kAbiVersion; }

RCS_EXPORT int rcs_lanes() { return W; }

#define RCS_DEFINE(SUFFIX, T)                                                                  \
  RCS_EXPORT int rcs_scan_fwd_##SUFFIX(const T* u, const T* delta, const T* A, const T* B,      \
                                       const T* C, const T* D, const T* bias, int softplus,     \
                                       int64_t batch, int64_t dim, int64_t L, int64_t N,        \
                                       int64_t G, int64_t tile, T* y, T* ckpt, int threads) {   \
    if (!valid(batch, dim, L, N, G, tile)) return 2;                                            \
    const auto p = make_problem(u, delta, A, B, C, D, bias, softplus, batch, dim, L, N, G, tile); \
    return forward<T, false>(p, nullptr, y, ckpt, threads);                                     \
  }                                                                                             \
  RCS_EXPORT int rcs_scan_bwd_##SUFFIX(                                                         \
      const T* u, const T* delta, const T* A, const T* B, const T* C, const T* D, const T* bias, \
      int softplus, int64_t batch, int64_t dim, int64_t L, int64_t N, int64_t G, int64_t tile,  \
      const T* ckpt, const T* dy, T* du, T* ddelta, T* dA, T* dB, T* dC, T* dD, T* dbias,       \
      int threads) {                                                                            \
    if (!valid(batch, dim, L, N, G, tile)) return 2;                                            \
    const auto p = make_problem(u, delta, A, B, C, D, bias, softplus, batch, dim, L, N, G, tile); \
    const Grads gr{du, ddelta, dA, dB, dC, dD, dbias};                                          \
    return backward<T, false>(p, nullptr, ckpt, dy, gr, threads);                              \
  }                                                                                             \
  RCS_EXPORT int rcs_oscan_fwd_##SUFFIX(                                                        \
      const int64_t* order, int64_t order_bstride, const T* x, const T* proj, int64_t P,        \
      int64_t R, const T* dt_w, const T* A, const T* D, const T* bias, int softplus,           \
      int64_t batch, int64_t inner, int64_t L, int64_t N, int64_t G, int64_t tile, T* y,       \
      T* y_sum, T* ckpt, int threads) {                                                         \
    Problem<T> p;                                                                               \
    if (!ordered_problem(A, D, bias, softplus, batch, inner, L, N, G, tile, P, R, order_bstride, \
                         threads, false, &p))                                                   \
      return 2;                                                                                 \
    const Ordered<T> o{order, order_bstride, x, proj, P, R, dt_w,                               \
                       y, y_sum, nullptr, nullptr, nullptr, nullptr, nullptr};                  \
    return forward<T, true>(p, &o, y, ckpt, threads);                                          \
  }                                                                                             \
  RCS_EXPORT int rcs_oscan_bwd_##SUFFIX(                                                        \
      const int64_t* order, int64_t order_bstride, const T* x, const T* proj, int64_t P,        \
      int64_t R, const T* dt_w, const T* A, const T* D, const T* bias, int softplus,           \
      int64_t batch, int64_t inner, int64_t L, int64_t N, int64_t G, int64_t tile,             \
      const T* ckpt, const T* dy, const T* dy_shift, const T* dy_scale, T* dx, T* dproj, T* dA,  \
      T* dD, T* dbias, T* ddt_w, int threads) {                                                 \
    Problem<T> p;                                                                               \
    if (!ordered_problem(A, D, bias, softplus, batch, inner, L, N, G, tile, P, R, order_bstride, \
                         threads, true, &p))                                                    \
      return 2;                                                                                 \
    Ordered<T> o{order, order_bstride, x, proj, P, R, dt_w,                                     \
                 nullptr, nullptr, dy_shift, dx, dproj, ddt_w, dy};                             \
    o.dy_scale = dy_scale;                                                                      \
    const Grads gr{dx, nullptr, dA, nullptr, nullptr, dD, dbias};                               \
    return backward<T, true>(p, &o, ckpt, dy, gr, threads);                                    \
  }

RCS_DEFINE(f32, float)
RCS_DEFINE(f64, double)

#define RCS_DEFINE_MERGE(SUFFIX, T)                                                            \
  RCS_EXPORT int rcs_merge_fwd_##SUFFIX(const T* y, const T* g, int64_t batch, int64_t L,      \
                                        int64_t K, int64_t inner, T* out, int threads) {        \
    if (batch < 0 || L < 0 || K < 1 || inner < 1) return 2;                                    \
    return merge_forward<T>(y, g, batch, L, K, inner, out, threads);                           \
  }                                                                                             \
  RCS_EXPORT int rcs_merge_bwd_##SUFFIX(const T* y, const T* g, const T* dout, int64_t batch,  \
                                        int64_t L, int64_t K, int64_t inner, T* dy, T* dg_part, \
                                        int threads) {                                          \
    if (batch < 0 || L < 0 || K < 1 || inner < 1) return 2;                                    \
    return merge_backward<T>(y, g, dout, batch, L, K, inner, dy, dg_part, threads);            \
  }

RCS_DEFINE_MERGE(f32, float)
RCS_DEFINE_MERGE(f64, double)

#define RCS_DEFINE_EPILOGUE(SUFFIX, T)                                                         \
  RCS_EXPORT int rcs_merge_norm_gate_##SUFFIX(const T* y, const T* g, const T* z, const T* w,  \
                                              const T* b, double eps, int64_t rows, int64_t K,  \
                                              int64_t inner, T* out, int threads) {             \
    if (rows < 0 || K < 1 || inner < 1) return 2;                                              \
    return merge_norm_gate<T>(y, g, z, w, b, static_cast<T>(eps), rows, K, inner, out, threads); \
  }                                                                                             \
  RCS_EXPORT int rcs_merge_norm_gate_bwd_##SUFFIX(                                             \
      const T* y, const T* g, const T* z, const T* w, const T* b, double eps, int64_t batch,    \
      int64_t L, int64_t K, int64_t inner, const T* dout, T* dy, T* dm, T* dz, T* dg_part,      \
      T* dw_part, T* db_part, int threads) {                                                   \
    if (batch < 0 || L < 0 || K < 1 || inner < 1 || (dy == nullptr) == (dm == nullptr)) return 2; \
    return merge_norm_gate_backward<T>(y, g, z, w, b, static_cast<T>(eps), batch, L, K, inner, dout, \
                                       dy, dm, dz, dg_part, dw_part, db_part, threads);         \
  }                                                                                             \
  RCS_EXPORT int rcs_residual_norm_##SUFFIX(const T* x, const T* skip, const T* mixed,         \
                                            const T* w, const T* b, double eps, int64_t rows,   \
                                            int64_t C, T* a, T* normed, int threads) {          \
    if (rows < 0 || C < 1) return 2;                                                           \
    return residual_norm<T>(x, skip, mixed, w, b, static_cast<T>(eps), rows, C, a, normed, threads); \
  }                                                                                             \
  RCS_EXPORT int rcs_residual_norm_bwd_##SUFFIX(                                               \
      const T* x, const T* skip, const T* a, const T* w, double eps, int64_t rows, int64_t C,   \
      const T* da, const T* dn, T* dx, T* dmixed, T* dskip_part, T* dw_part, T* db_part,        \
      int threads) {                                                                            \
    if (rows < 0 || C < 1) return 2;                                                           \
    return residual_norm_backward<T>(x, skip, a, w, static_cast<T>(eps), rows, C, da, dn, dx, dmixed, \
                                     dskip_part, dw_part, db_part, threads);                    \
  }

RCS_DEFINE_EPILOGUE(f32, float)
RCS_DEFINE_EPILOGUE(f64, double)
