// Fused causal attention for XLA's CPU backend, called from JAX through the XLA FFI: float32
// forward and backward, and a bfloat16 forward (AMX) where the compiler targets it.
//
// Why: XLA:CPU runs the pure-JAX blockwise kernel (attention.py, `chunked`) as separate ops, one
// per block product, so each [B, H, block, block] score tile leaves cache between ops. Here one
// query tile is a unit of work whose tiles (64 x 64 float32, 16 KiB each) stay in L1/L2 from QK^T
// through softmax to PV -- the same algorithm as `chunked` (FlashAttention-2: online softmax
// forward, log-sum-exp residual, recomputing backward), fused.
//
// Layouts (row-major): q, o, do, dq [B, T, H, D]; k, v, dk, dv [B, T, K, D] (K kv heads divide H;
// query head h reads kv head h / (H / K)); segment_ids [B, T] int32; lse [B, H, T] float32.
// Masks: causal; same segment; with window W > 0 also q - kv < W. Logits are scale * q.k.
// Work is split over XLA's intra-op thread pool: forward by (batch, kv head, query tile) with
// AVX-512 (by (batch, head, query tile) without), backward by (batch, kv head).
//
// Three forwards, picked at compile time (-march=native): AVX-512 float32; AVX2 float32 (the
// fallback, 256-bit vectors); bfloat16 on AMX tiles (YarnFlashAttentionForwardBf16, which reports
// unimplemented elsewhere; YarnFlashAttentionNativeBf16 says which). With AVX-512, a cached
// forward (YarnFlashAttentionForwardCached) serves chunked prefill: a chunk's queries at positions
// offset.. against a KV cache [B*K, S, D], float32 or bfloat16, read where it lies.
#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__AMX_TILE__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kTile = 64;          // query and key rows per tile
constexpr float kNeg = -1e30f;     // finite "minus infinity", as attention.py's _NEG
typedef float v8 __attribute__((vector_size(32)));

inline v8 load8(const float* p) { v8 r; std::memcpy(&r, p, sizeof r); return r; }
inline void store8(float* p, v8 x) { std::memcpy(p, &x, sizeof x); }
typedef int32_t v8i __attribute__((vector_size(32)));
inline v8 splat(float x) { return v8{x, x, x, x, x, x, x, x}; }

// exp(x) for 8 lanes (Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2, degree-6 polynomial in r, then
// 2^n through the exponent bits); relative error ~2 ulp, inputs clamped to [-87.3, 88.7] so
// exp(-1e30) is a tiny positive number that the callers' masks replace by 0.
inline v8 exp8(v8 x) {
  x = x < splat(88.7f) ? x : splat(88.7f);
  x = x > splat(-87.3f) ? x : splat(-87.3f);
  const v8 magic = splat(12582912.0f);  // 1.5 * 2^23: adding and subtracting it rounds to nearest
  v8 n = (x * splat(1.44269504088896341f) + magic) - magic;
  v8 r = x - n * splat(0.693359375f);
  r = r - n * splat(-2.12194440e-4f);
  v8 p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  p = p * r * r + r + splat(1.0f);
  v8i bits = (__builtin_convertvector(n, v8i) + 127) << 23;
  v8 scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline float hmax8(v8 x) {
  float m = x[0];
  for (int i = 1; i < 8; ++i) m = std::max(m, x[i]);
  return m;
}
inline float hsum8(v8 x) {
  return ((x[0] + x[1]) + (x[2] + x[3])) + ((x[4] + x[5]) + (x[6] + x[7]));
}

// Rows i..i+R-1, columns j..j+15 of C (+)= A B: 2R accumulators held in registers over the
// contraction; each step loads two vectors of B and broadcasts R elements of A.
template <int R, bool kTransA>
inline void gemm_block(int i, int j, int kc, const float* a, int lda, const float* b, int ldb, float* c, int ldc,
                       bool accumulate) {
  v8 acc0[R], acc1[R];
  for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = splat(0.0f);
  const float* bp = b + j;
  for (int p = 0; p < kc; ++p, bp += ldb) {
    const v8 b0 = load8(bp), b1 = load8(bp + 8);
    for (int r = 0; r < R; ++r) {
      const v8 x = splat(kTransA ? a[p * lda + i + r] : a[(i + r) * lda + p]);
      acc0[r] += x * b0;
      acc1[r] += x * b1;
    }
  }
  for (int r = 0; r < R; ++r) {
    float* cp = c + (i + r) * ldc + j;
    store8(cp, accumulate ? load8(cp) + acc0[r] : acc0[r]);
    store8(cp + 8, accumulate ? load8(cp + 8) + acc1[r] : acc1[r]);
  }
}

// C[m x n] (+)= A[m x kc] * B[kc x n]; rows of B and C at strides ldb, ldc; n % 16 == 0. A is
// row-major at stride lda, or with kTransA stored transposed ([kc x m] at stride lda), which the
// backward pass uses for P^T dO and dS^T Q without copying. Blocks of 6 x 16 (12 accumulators of
// AVX2's 16 registers) ran at 84 GFLOP/s on one core of the development machine for 64^3 tiles,
// 4 x 16 at 63.
template <bool kTransA>
void gemm(int m, int n, int kc, const float* a, int lda, const float* b, int ldb, float* c, int ldc,
          bool accumulate) {
  int i = 0;
  for (; i + 6 <= m; i += 6)
    for (int j = 0; j < n; j += 16) gemm_block<6, kTransA>(i, j, kc, a, lda, b, ldb, c, ldc, accumulate);
  for (; i + 4 <= m; i += 4)
    for (int j = 0; j < n; j += 16) gemm_block<4, kTransA>(i, j, kc, a, lda, b, ldb, c, ldc, accumulate);
  for (; i < m; ++i)
    for (int j = 0; j < n; j += 16) gemm_block<1, kTransA>(i, j, kc, a, lda, b, ldb, c, ldc, accumulate);
}

// dst[cols x rows] = src[rows x cols]^T (src at stride lds); missing rows (rows < kTile) read as 0.
void transpose(int rows, int cols, const float* src, int lds, float* dst, int ldd, int pad_rows) {
  for (int r = 0; r < pad_rows; ++r)
    for (int c = 0; c < cols; ++c) dst[c * ldd + r] = r < rows ? src[r * lds + c] : 0.0f;
}

// Runs fn(0..n-1) on XLA's intra-op pool plus the calling thread, returning when all are done.
template <typename Fn>
void parallel_for(ffi::ThreadPool& pool, int64_t n, Fn fn) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto state = std::make_shared<State>();
  auto worker = [state, n, &fn]() {
    for (int64_t i; (i = state->next.fetch_add(1)) < n;) {
      fn(i);
      state->done.fetch_add(1);
    }
  };
  int64_t helpers = std::min<int64_t>(pool.num_threads(), n) - 1;
  // Helpers that start after the work is claimed exit at once; fn is only touched before `done`
  // reaches n, which the caller waits for, so the reference stays valid.
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([worker]() { worker(); });
  worker();
  while (state->done.load() < n) std::this_thread::yield();
}

struct Dims {
  int64_t b, t, h, kh, d;
};

inline bool visible(int64_t tq, int64_t tk, int32_t sq, int32_t sk, int64_t window) {
  return tk <= tq && sq == sk && (window <= 0 || tq - tk < window);
}

// The kv tiles [lo, hi] a query tile [q0, q0 + kTile) can see.
inline void kv_tiles(int64_t q0, int64_t qn, int64_t window, int64_t* lo, int64_t* hi) {
  *hi = (q0 + qn - 1) / kTile;
  *lo = window > 0 ? std::max<int64_t>(0, q0 - (window - 1)) / kTile : 0;
}

// Whether every (query, key) of a tile pair is visible: the key tile is whole and entirely before
// the query tile, inside the window, and all of both tiles is one segment (the common case,
// which then skips the per-element mask).
inline bool fully_visible(int64_t q0, int qn, int64_t k0, int kn, const int32_t* seg, int64_t window) {
  if (kn < kTile || k0 + kn - 1 > q0) return false;
  if (window > 0 && (q0 + qn - 1) - k0 >= window) return false;
  const int32_t s0 = seg[k0];
  for (int64_t t = k0; t < k0 + kn; ++t) if (seg[t] != s0) return false;
  for (int64_t t = q0; t < q0 + qn; ++t) if (seg[t] != s0) return false;
  return true;
}

#if defined(__AVX512F__)
// ------------------------------------------------------------------------------------------------
// Forward with AVX-512. One unit of work is (batch, kv head, query tile) holding all G query heads
// of that kv head, stacked as G * qn rows, so each key/value tile is read once per group. K and V
// are first repacked per kv tile (keys transposed to [d, kTile], values [kTile, d], zero past the
// sequence's end), so tile loads are contiguous whatever the head count (rows of the original
// layout are H * d apart, which maps every row of a tile to a few L1 sets for large H * d).
// Within a unit, each block of kRows query rows takes QK^T against one kv tile with all kRows x 64
// scores in registers (24 of the 32 zmm), the online softmax over a 1.5 KiB buffer (in L1), and
// adds P V into its output rows with the rescale folded into the accumulators' first load.
// ------------------------------------------------------------------------------------------------

constexpr int kRows = 6;
#define YARN_INLINE inline __attribute__((always_inline))

// 2^x for 16 lanes, x <= 0 (Cephes' exp2f: x = n + f, |f| <= 1/2, 2^f = 1 + f P(f) of degree 6,
// relative error ~2e-7, then scalef by 2^n). The forward works in base 2 (queries pre-scaled by
// log2(e)), which saves exp's multiply and its two-part ln 2 reduction. The clamp keeps results
// normal (no denormal assists) and 2^(-1e30) finite for the callers' masks to zero.
YARN_INLINE __m512 exp2_16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-126.0f));
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);
  __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

constexpr float kLog2e = 1.44269504088896341f, kLn2 = 0.693147180559945309f;

// Which keys of one kv tile a query row sees, as four 16-key masks (causal, window, segment);
// keys past the sequence's end are after every query, so causality masks them.
struct KeyTile {
  __m512i pos[4], seg[4];
  KeyTile(int64_t k0, int kn, const int32_t* seg_ids) {
    for (int c = 0; c < 4; ++c) {
      pos[c] = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(k0 + 16 * c)),
                                _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
      const int valid = std::max(0, std::min(16, kn - 16 * c));
      seg[c] = _mm512_maskz_loadu_epi32(static_cast<__mmask16>((1u << valid) - 1), seg_ids + k0 + 16 * c);
    }
  }
  YARN_INLINE void masks(int32_t tq, int32_t sq, int64_t window, __mmask16 out[4]) const {
    const __m512i t = _mm512_set1_epi32(tq), s = _mm512_set1_epi32(sq);
    const __m512i first = _mm512_set1_epi32(window > 0 ? static_cast<int32_t>(tq - window) : INT32_MIN);
    for (int c = 0; c < 4; ++c)
      out[c] = _mm512_cmple_epi32_mask(pos[c], t) & _mm512_cmpeq_epi32_mask(seg[c], s) &
               _mm512_cmpgt_epi32_mask(pos[c], first);
  }
};

// Online softmax (base 2) of one row's 64 scores (already scaled), in place: masked scores drop
// out, the running max m moves, p = 2^(s - m) replaces s, its partial sums go to sum_row (16
// lanes), and the rescale exponent m_old - m_new to *diff.
template <bool kMasked>
YARN_INLINE void softmax_row(float* row, const __mmask16 mask[4], float* m, float* diff, float* sum_row) {
  __m512 s[4];
  for (int c = 0; c < 4; ++c) {
    s[c] = _mm512_loadu_ps(row + 16 * c);
    if (kMasked) s[c] = _mm512_mask_mov_ps(_mm512_set1_ps(kNeg), mask[c], s[c]);
  }
  const __m512 tile_max = _mm512_max_ps(_mm512_max_ps(s[0], s[1]), _mm512_max_ps(s[2], s[3]));
  const float mx = std::max(*m, _mm512_reduce_max_ps(tile_max));
  *diff = *m - mx;
  *m = mx;
  const __m512 mv = _mm512_set1_ps(mx);
  __m512 sum = _mm512_setzero_ps();
  for (int c = 0; c < 4; ++c) {
    __m512 p = exp2_16(_mm512_sub_ps(s[c], mv));
    if (kMasked) p = _mm512_maskz_mov_ps(mask[c], p);
    _mm512_storeu_ps(row + 16 * c, p);
    sum = _mm512_add_ps(sum, p);
  }
  _mm512_storeu_ps(sum_row, sum);
}

// Running sums l (16 lanes a row) and the rows' rescale factors from their exponents.
template <int R>
YARN_INLINE void rescale_sums(const float* diff, const float* sums, float* l, float* corr) {
  _mm512_storeu_ps(corr, exp2_16(_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << R) - 1), diff)));
  for (int r = 0; r < R; ++r)
    _mm512_storeu_ps(l + 16 * r, _mm512_fmadd_ps(_mm512_loadu_ps(l + 16 * r), _mm512_set1_ps(corr[r]),
                                                 _mm512_loadu_ps(sums + 16 * r)));
}

// o[R rows, NV * 16 columns at stride d] = o * corr + p[R x kTile] v[kTile x ...] (v at stride d).
template <int R, int NV>
YARN_INLINE void pv_block(const float* p, const float* v, int d, const float* corr, float* o) {
  __m512 acc[R][NV];
  for (int r = 0; r < R; ++r) {
    const __m512 cr = _mm512_set1_ps(corr[r]);
    for (int c = 0; c < NV; ++c) acc[r][c] = _mm512_mul_ps(_mm512_loadu_ps(o + r * d + 16 * c), cr);
  }
  for (int n = 0; n < kTile; ++n, v += d) {
    __m512 b[NV];
    for (int c = 0; c < NV; ++c) b[c] = _mm512_loadu_ps(v + 16 * c);
    for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(p[r * kTile + n]);
      for (int c = 0; c < NV; ++c) acc[r][c] = _mm512_fmadd_ps(a, b[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NV; ++c) _mm512_storeu_ps(o + r * d + 16 * c, acc[r][c]);
}

template <int R>
__attribute__((noinline)) void pv_rows(const float* p, const float* v, int d, const float* corr, float* o) {
  int j = 0;
  for (; j + 64 <= d; j += 64) pv_block<R, 4>(p, v + j, d, corr, o + j);
  switch ((d - j) / 16) {
    case 3: pv_block<R, 3>(p, v + j, d, corr, o + j); break;
    case 2: pv_block<R, 2>(p, v + j, d, corr, o + j); break;
    case 1: pv_block<R, 1>(p, v + j, d, corr, o + j); break;
  }
}

// Per-unit rows: scaled queries, unnormalised outputs, running max and sums, positions, segments.
struct Rows {
  float *q, *o, *m, *l;
  int32_t *pos, *seg;
};

// s[R x kTile] = q[R x d] kt[d x kTile] (q at stride d): per step 4 loads and R broadcasts feed
// 4R FMAs. Out of line (and pv_rows too), so each loop gets the whole register file.
template <int R>
__attribute__((noinline)) void qk_block(const float* q, int d, const float* kt, float* s) {
  __m512 acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int k = 0; k < d; ++k, kt += kTile) {
    __m512 b[4];
    for (int c = 0; c < 4; ++c) b[c] = _mm512_loadu_ps(kt + 16 * c);
    for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(q[r * d + k]);
      for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_fmadd_ps(a, b[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < 4; ++c) _mm512_storeu_ps(s + r * kTile + 16 * c, acc[r][c]);
}

// Rows [i, i + R) of a unit against one kv tile (kt [d, kTile], v [kTile, d]).
template <int R, bool kMasked>
void fwd_rows_f32(const Rows& u, int i, int d, const float* kt, const float* v, const KeyTile& keys,
                  int64_t window) {
  alignas(64) float p[R * kTile], sums[R * 16], diff[16], corr[16];
  qk_block<R>(u.q + i * d, d, kt, p);
  __mmask16 mask[4];
  for (int r = 0; r < R; ++r) {
    if (kMasked) keys.masks(u.pos[i + r], u.seg[i + r], window, mask);
    softmax_row<kMasked>(p + r * kTile, mask, u.m + i + r, diff + r, sums + 16 * r);
  }
  rescale_sums<R>(diff, sums, u.l + 16 * i, corr);
  pv_rows<R>(p, v, d, corr, u.o + i * d);
}

template <bool kMasked>
void fwd_tile_f32(const Rows& u, int rows, int d, const float* kt, const float* v, const KeyTile& keys,
                  int64_t window) {
  int i = 0;
  for (; i + kRows <= rows; i += kRows) fwd_rows_f32<kRows, kMasked>(u, i, d, kt, v, keys, window);
  switch (rows - i) {
    case 5: fwd_rows_f32<5, kMasked>(u, i, d, kt, v, keys, window); break;
    case 4: fwd_rows_f32<4, kMasked>(u, i, d, kt, v, keys, window); break;
    case 3: fwd_rows_f32<3, kMasked>(u, i, d, kt, v, keys, window); break;
    case 2: fwd_rows_f32<2, kMasked>(u, i, d, kt, v, keys, window); break;
    case 1: fwd_rows_f32<1, kMasked>(u, i, d, kt, v, keys, window); break;
  }
}

// Grows-only scratch per thread: units allocate nothing after a thread's first.
template <typename T>
T* scratch(size_t n) {
  thread_local std::vector<T> buffer;
  if (buffer.size() < n) buffer.resize(n);
  return buffer.data();
}

// Where the key and value rows of one (batch, kv head) lie: the model's layout [B, T, K, D], or a
// KV cache's [B*K, T, D] (heads first, as model.init_cache lays it out); float32 or bfloat16 bits.
template <typename T>
struct KvView {
  const T *k, *v;
  int64_t t, kh, d;
  bool heads_first;
  int64_t start(int64_t b, int64_t kvh, int64_t pos) const {
    return heads_first ? ((b * kh + kvh) * t + pos) * d : ((b * t + pos) * kh + kvh) * d;
  }
  int64_t row() const { return heads_first ? d : kh * d; }
};

inline float to_f32(float x) { return x; }
inline float to_f32(uint16_t bits) {
  const uint32_t wide = uint32_t{bits} << 16;
  float x;
  std::memcpy(&x, &wide, sizeof x);
  return x;
}

// One kv tile in float32 (kn rows at stride `row`, zero past kn): keys transposed kt [d, kTile],
// values vt [kTile, d].
template <typename T>
void pack_tile_f32(const T* ks, const T* vs, int64_t row, int kn, int d, float* kt, float* vt) {
  for (int r = 0; r < kTile; ++r)
    for (int c = 0; c < d; ++c) {
      kt[c * kTile + r] = r < kn ? to_f32(ks[r * row + c]) : 0.0f;
      vt[r * d + c] = r < kn ? to_f32(vs[r * row + c]) : 0.0f;
    }
}

// Queries q [B, Tq, H, D] at positions offset .. offset + Tq - 1 of the keys' sequence; out has
// q's layout, lse is [B, H, Tq].
struct QueryView {
  const float* q;
  float* out;
  float* lse;
  int64_t b, tq, h, offset;
};

// The forward over any query/key views: keys up to the last query's position are packed per kv
// tile (keys past it are never visible), segment ids are [B, kv.t].
template <typename T>
void forward_f32(ffi::ThreadPool& pool, const QueryView& qv, const KvView<T>& kv, const int32_t* sp, float scale,
                 int64_t window) {
  const int64_t tk = qv.offset + qv.tq, ktiles = (tk + kTile - 1) / kTile, qtiles = (qv.tq + kTile - 1) / kTile;
  const int64_t groups = qv.h / kv.kh;
  const int d = static_cast<int>(kv.d);
  const int64_t tile_size = static_cast<int64_t>(kTile) * d;

  // [B, K, tiles] x (kt [d, kTile], v [kTile, d]): as large as the visible keys and values together.
  std::unique_ptr<float[]> packed(new float[qv.b * kv.kh * ktiles * 2 * tile_size]);
  parallel_for(pool, qv.b * kv.kh * ktiles, [&](int64_t item) {
    const int64_t j = item % ktiles, kvh = (item / ktiles) % kv.kh, b = item / (ktiles * kv.kh);
    const int64_t k0 = j * kTile, first = kv.start(b, kvh, k0);
    float* kt = packed.get() + item * 2 * tile_size;
    pack_tile_f32(kv.k + first, kv.v + first, kv.row(), static_cast<int>(std::min<int64_t>(kTile, tk - k0)), d,
                  kt, kt + tile_size);
  });

  // Units in decreasing query tile order: the causally longest first, so no thread is left with
  // a long unit at the end.
  parallel_for(pool, qv.b * kv.kh * qtiles, [&](int64_t item) {
    const int64_t qt = qtiles - 1 - item / (qv.b * kv.kh), kvh = item % kv.kh, b = (item / kv.kh) % qv.b;
    const int64_t q0 = qv.offset + qt * kTile;  // positions in the keys' sequence
    const int qn = static_cast<int>(std::min<int64_t>(kTile, qv.tq - qt * kTile));
    const int rows = static_cast<int>(groups) * qn;
    const int32_t* seg = sp + b * kv.t;
    const float qscale = scale * kLog2e;
    float* buf = scratch<float>(static_cast<size_t>(rows) * (2 * d + 17));
    int32_t* ibuf = scratch<int32_t>(2 * static_cast<size_t>(rows));
    const Rows u{buf, buf + rows * d, buf + 2 * rows * d, buf + 2 * rows * d + rows, ibuf, ibuf + rows};
    for (int r = 0; r < rows; ++r) {
      const int64_t g = r / qn, t = q0 + r % qn;
      const float* src = qv.q + ((b * qv.tq + t - qv.offset) * qv.h + kvh * groups + g) * d;
      for (int c = 0; c < d; ++c) u.q[r * d + c] = src[c] * qscale;
      u.m[r] = kNeg;
      u.pos[r] = static_cast<int32_t>(t);
      u.seg[r] = seg[t];
    }
    std::fill(u.o, u.o + rows * d, 0.0f);
    std::fill(u.l, u.l + rows * 16, 0.0f);
    int64_t lo, hi;
    kv_tiles(q0, qn, window, &lo, &hi);
    for (int64_t j = lo; j <= hi; ++j) {
      const int64_t k0 = j * kTile;
      const int kn = static_cast<int>(std::min<int64_t>(kTile, tk - k0));
      const float* kt = packed.get() + ((b * kv.kh + kvh) * ktiles + j) * 2 * tile_size;
      const KeyTile keys(k0, kn, seg);
      if (fully_visible(q0, qn, k0, kn, seg, window))
        fwd_tile_f32<false>(u, rows, d, kt, kt + tile_size, keys, window);
      else
        fwd_tile_f32<true>(u, rows, d, kt, kt + tile_size, keys, window);
    }
    for (int r = 0; r < rows; ++r) {
      const int64_t g = r / qn, t = q0 + r % qn - qv.offset, h = kvh * groups + g;
      const float sum = _mm512_reduce_add_ps(_mm512_loadu_ps(u.l + 16 * r));
      const float lr = sum == 0.0f ? 1.0f : sum;
      float* dst = qv.out + ((b * qv.tq + t) * qv.h + h) * d;
      for (int c = 0; c < d; ++c) dst[c] = u.o[r * d + c] / lr;
      qv.lse[(b * qv.h + h) * qv.tq + t] = u.m[r] * kLn2 + std::log(lr);
    }
  });
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                   ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::S32> segment_ids, float scale, int64_t window,
                   ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> lse) {
  auto qd = q.dimensions(), kd = k.dimensions();
  if (qd[3] % 16 || kd[1] != qd[1] || qd[2] % kd[2])
    return ffi::Error::InvalidArgument("flash_attention_cpu: head dim must be a multiple of 16, "
                                       "k/v as long as q, kv heads dividing heads");
  forward_f32(pool, QueryView{q.typed_data(), out->typed_data(), lse->typed_data(), qd[0], qd[1], qd[2], 0},
              KvView<float>{k.typed_data(), v.typed_data(), kd[1], kd[2], kd[3], false}, segment_ids.typed_data(),
              scale, window);
  return ffi::Error::Success();
}

// Chunked prefill (model.Decoder.prefill): the queries q [B, Tq, H, D] of a chunk at positions
// offset .. offset + Tq - 1 attend to a KV cache k, v [B*K, S, D] (float32 or bfloat16, read in
// place) that already holds the keys and values of positions 0 .. offset + Tq - 1; segment ids
// [B, S]. Output float32 in q's layout, lse [B, H, Tq].
ffi::Error ForwardCached(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                         ffi::Buffer<ffi::S32> segment_ids, ffi::Buffer<ffi::S32> offset, float scale,
                         int64_t window, ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> lse) {
  auto qd = q.dimensions(), kd = k.dimensions();
  const int64_t b = qd[0], tq = qd[1], h = qd[2], d = qd[3];
  const int64_t start = offset.typed_data()[0];
  const auto type = k.element_type();
  auto vd = v.dimensions();
  if (kd.size() != 3 || vd.size() != 3 || !std::equal(kd.begin(), kd.end(), vd.begin()) || v.element_type() != type ||
      (type != ffi::DataType::F32 && type != ffi::DataType::BF16))
    return ffi::Error::InvalidArgument("flash_attention_cpu (cached): k and v must be [B*K, S, D] buffers of one "
                                       "dtype, float32 or bfloat16");
  if (d % 16 || kd[2] != d || kd[0] % b || h % (kd[0] / b) || segment_ids.dimensions()[1] != kd[1])
    return ffi::Error::InvalidArgument("flash_attention_cpu (cached): head dim must be a multiple of 16 and match "
                                       "the cache's, kv heads dividing heads, segment ids [B, S]");
  if (start < 0 || start + tq > kd[1])
    return ffi::Error::InvalidArgument("flash_attention_cpu (cached): the chunk must lie inside the cache");
  const QueryView qv{q.typed_data(), out->typed_data(), lse->typed_data(), b, tq, h, start};
  if (type == ffi::DataType::F32)
    forward_f32(pool, qv, KvView<float>{static_cast<const float*>(k.untyped_data()),
                                        static_cast<const float*>(v.untyped_data()), kd[1], kd[0] / b, d, true},
                segment_ids.typed_data(), scale, window);
  else
    forward_f32(pool, qv, KvView<uint16_t>{static_cast<const uint16_t*>(k.untyped_data()),
                                           static_cast<const uint16_t*>(v.untyped_data()), kd[1], kd[0] / b, d, true},
                segment_ids.typed_data(), scale, window);
  return ffi::Error::Success();
}

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && defined(__AVX512DQ__)
#define YARN_FLASH_AMX 1
// ------------------------------------------------------------------------------------------------
// bfloat16 forward on AMX: Q K^T and P V as bf16 tile products with float32 accumulation, the
// online softmax in float32 on AVX-512, P rounded to bf16 for P V. Same units of work, packing
// and row stacking as the float32 forward, with 16-row blocks (one AMX tile of rows): per block
// and kv tile, S [16 x 64] leaves the tiles for the softmax, and P V accumulates into the output
// rows through 4 tiles of 16 x 16 floats.
// ------------------------------------------------------------------------------------------------

// Linux lends a process the tile state only on request (arch_prctl, once per process); where it is
// refused (old kernel, hypervisor), native_bf16() is false and Python keeps the float32 path.
bool amx_permitted() {
  static const bool ok = [] {
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
}

// Palette 1, all 8 tiles 16 rows x 64 bytes: C 16 x 16 floats, A 16 x 32 bf16, B 16 x 16 pairs.
void configure_tiles() {
  struct alignas(64) {
    uint8_t palette = 1, start_row = 0, reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
  } config;
  static_assert(sizeof(config) == 64, "tile config is 64 bytes");
  for (int t = 0; t < 8; ++t) {
    config.colsb[t] = 64;
    config.rows[t] = 16;
  }
  _tile_loadconfig(&config);
}

// 2^x for 16 lanes, x <= 0, to bf16's precision: x = floor(x) + f, 2^f on [0, 1) by a degree-3
// polynomial (relative error ~1e-4, under bf16's rounding of P), scalef by 2^floor(x); reduce
// takes f in one instruction. Clamped as exp2_16.
YARN_INLINE __m512 exp2_16_coarse(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-126.0f));
  const __m512 f = _mm512_reduce_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 p = _mm512_set1_ps(7.70588992492136e-2f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.276446503971844e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.951231022182701e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, x);
}

// Keys of one tile as the B operand of Q K^T: [dp / 2, kTile] 32-bit words, each dims 2i, 2i + 1 of
// one key (dp: d rounded up to 32, the contraction of one tile product); values as the B operand
// of P V: [kTile / 2, d] words, each keys 2i, 2i + 1 of one dim. Zero past the sequence's end.
void pack_tile_bf16(const uint16_t* k, const uint16_t* v, int64_t row, int kn, int d, int dp, uint32_t* kb,
                    uint32_t* vb) {
  for (int i = 0; i < dp / 2; ++i)
    for (int n = 0; n < kTile; ++n)
      kb[i * kTile + n] = n < kn && 2 * i < d ? k[n * row + 2 * i] | uint32_t{k[n * row + 2 * i + 1]} << 16 : 0;
  for (int i = 0; i < kTile / 2; ++i)
    for (int c = 0; c < d; ++c) {
      const uint32_t lo = 2 * i < kn ? v[2 * i * row + c] : 0, hi = 2 * i + 1 < kn ? v[(2 * i + 1) * row + c] : 0;
      vb[i * d + c] = lo | hi << 16;
    }
}

// s[16 x kTile] = q[16 x dp] (bf16 at stride dp) K^T: tiles 0-3 accumulate 16 keys each, 4 holds
// the queries, 5-7 take turns with the keys.
void qk_amx(const uint16_t* q, int dp, const uint32_t* kb, float* s) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int c = 0; c < dp; c += 32, kb += 16 * kTile) {
    _tile_loadd(4, q + c, dp * 2);
    _tile_loadd(5, kb, kTile * 4);
    _tile_dpbf16ps(0, 4, 5);
    _tile_loadd(6, kb + 16, kTile * 4);
    _tile_dpbf16ps(1, 4, 6);
    _tile_loadd(7, kb + 32, kTile * 4);
    _tile_dpbf16ps(2, 4, 7);
    _tile_loadd(5, kb + 48, kTile * 4);
    _tile_dpbf16ps(3, 4, 5);
  }
  _tile_stored(0, s, kTile * 4);
  _tile_stored(1, s + 16, kTile * 4);
  _tile_stored(2, s + 32, kTile * 4);
  _tile_stored(3, s + 48, kTile * 4);
}

// o[16 x d] (floats at stride d) += p[16 x kTile] (bf16) V, up to 64 columns (4 tiles) at a time.
void pv_amx(const uint16_t* p, const uint32_t* vb, int d, float* o) {
  const int ld = d * 4;
  for (int j = 0; j < d; j += 64) {
    const int nt = std::min(4, (d - j) / 16);
    _tile_loadd(0, o + j, ld);
    if (nt > 1) _tile_loadd(1, o + j + 16, ld);
    if (nt > 2) _tile_loadd(2, o + j + 32, ld);
    if (nt > 3) _tile_loadd(3, o + j + 48, ld);
    for (int h = 0; h < 2; ++h) {  // keys 0-31, 32-63
      const uint32_t* b = vb + h * 16 * d + j;
      _tile_loadd(4, p + 32 * h, kTile * 2);
      _tile_loadd(5, b, ld);
      _tile_dpbf16ps(0, 4, 5);
      if (nt > 1) { _tile_loadd(6, b + 16, ld); _tile_dpbf16ps(1, 4, 6); }
      if (nt > 2) { _tile_loadd(7, b + 32, ld); _tile_dpbf16ps(2, 4, 7); }
      if (nt > 3) { _tile_loadd(5, b + 48, ld); _tile_dpbf16ps(3, 4, 5); }
    }
    _tile_stored(0, o + j, ld);
    if (nt > 1) _tile_stored(1, o + j + 16, ld);
    if (nt > 2) _tile_stored(2, o + j + 32, ld);
    if (nt > 3) _tile_stored(3, o + j + 48, ld);
  }
}

// The online softmax of rows [i, i + 16) of a unit from s (raw Q K^T; c = |scale| * log2(e), the
// queries' signs flipped for a negative scale) into p (bf16), rescaling those rows' outputs where
// their max moved. Maxima stay in raw units, so scaling folds into one fused s * c - m * c.
template <bool kMasked>
void softmax_bf16(const float* s, float c, const Rows& u, int i, int d, const KeyTile& keys, int64_t window,
                  uint16_t* p) {
  alignas(64) float diff[16], corr[16], sums[16 * 16];
  const __m512 cv = _mm512_set1_ps(c);
  __mmask16 mask[4];
  bool moved = false;
  for (int r = 0; r < 16; ++r) {
    const float* row = s + r * kTile;
    __m512 x[4];
    for (int q = 0; q < 4; ++q) x[q] = _mm512_loadu_ps(row + 16 * q);
    if (kMasked) {
      keys.masks(u.pos[i + r], u.seg[i + r], window, mask);
      for (int q = 0; q < 4; ++q) x[q] = _mm512_mask_mov_ps(_mm512_set1_ps(kNeg), mask[q], x[q]);
    }
    const __m512 mx = _mm512_max_ps(_mm512_max_ps(x[0], x[1]), _mm512_max_ps(x[2], x[3]));
    // Most tiles leave a row's max where it was: a compare skips the reduction and the rescale.
    // (Letting the max lag behind, so that p may exceed 1, costs accuracy in bf16: the dominant
    // key's p = 1 is exact, any other value is rounded.)
    const float m_old = u.m[i + r];
    float m_new = m_old;
    if (_mm512_cmp_ps_mask(mx, _mm512_set1_ps(m_old), _CMP_GT_OQ)) {
      m_new = _mm512_reduce_max_ps(mx);
      moved = true;
    }
    diff[r] = (m_old - m_new) * c;
    u.m[i + r] = m_new;
    const __m512 mv = _mm512_set1_ps(m_new * c);
    __m512 e[4], sum = _mm512_setzero_ps();
    for (int q = 0; q < 4; ++q) {
      e[q] = exp2_16_coarse(_mm512_fmsub_ps(x[q], cv, mv));
      if (kMasked) e[q] = _mm512_maskz_mov_ps(mask[q], e[q]);
      sum = _mm512_add_ps(sum, e[q]);
    }
    _mm512_storeu_ps(sums + 16 * r, sum);
    _mm512_storeu_si512(p + r * kTile, (__m512i)_mm512_cvtne2ps_pbh(e[1], e[0]));
    _mm512_storeu_si512(p + r * kTile + 32, (__m512i)_mm512_cvtne2ps_pbh(e[3], e[2]));
  }
  if (!moved) {
    for (int r = 0; r < 16; ++r) {
      float* l = u.l + 16 * (i + r);
      _mm512_storeu_ps(l, _mm512_add_ps(_mm512_loadu_ps(l), _mm512_loadu_ps(sums + 16 * r)));
    }
    return;
  }
  rescale_sums<16>(diff, sums, u.l + 16 * i, corr);
  for (int r = 0; r < 16; ++r) {
    if (diff[r] == 0.0f) continue;
    const __m512 cr = _mm512_set1_ps(corr[r]);
    float* o = u.o + (i + r) * d;
    for (int q = 0; q < d; q += 16) _mm512_storeu_ps(o + q, _mm512_mul_ps(_mm512_loadu_ps(o + q), cr));
  }
}

ffi::Error ForwardBf16(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16> q, ffi::Buffer<ffi::BF16> k,
                       ffi::Buffer<ffi::BF16> v, ffi::Buffer<ffi::S32> segment_ids, float scale, int64_t window,
                       ffi::ResultBuffer<ffi::BF16> out, ffi::ResultBuffer<ffi::F32> lse) {
  auto qd = q.dimensions(), kd = k.dimensions();
  const Dims dm{qd[0], qd[1], qd[2], kd[2], qd[3]};
  if (dm.d % 16 || kd[1] != dm.t || dm.h % dm.kh)
    return ffi::Error::InvalidArgument("flash_attention_cpu: head dim must be a multiple of 16, "
                                       "k/v as long as q, kv heads dividing heads");
  if (!amx_permitted())
    return ffi::Error(ffi::ErrorCode::kUnimplemented, "flash_attention_cpu: the OS refused AMX tiles");
  const int64_t tiles = (dm.t + kTile - 1) / kTile, groups = dm.h / dm.kh;
  const int d = static_cast<int>(dm.d), dp = (d + 31) / 32 * 32;
  const int64_t kvrow = dm.kh * d, ksize = static_cast<int64_t>(dp / 2) * kTile, vsize = kTile / 2 * d;
  const uint16_t *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  const int32_t* sp = segment_ids.typed_data();
  uint16_t* op = out->typed_data();
  float* lp = lse->typed_data();

  std::unique_ptr<uint32_t[]> packed(new uint32_t[dm.b * dm.kh * tiles * (ksize + vsize)]);
  parallel_for(pool, dm.b * dm.kh * tiles, [&](int64_t item) {
    const int64_t j = item % tiles, kvh = (item / tiles) % dm.kh, b = item / (tiles * dm.kh);
    const int64_t k0 = j * kTile, offset = (b * dm.t + k0) * kvrow + kvh * d;
    uint32_t* kb = packed.get() + item * (ksize + vsize);
    pack_tile_bf16(kp + offset, vp + offset, kvrow, static_cast<int>(std::min<int64_t>(kTile, dm.t - k0)), d, dp,
                   kb, kb + ksize);
  });

  parallel_for(pool, dm.b * dm.kh * tiles, [&](int64_t item) {
    const int64_t qt = tiles - 1 - item / (dm.b * dm.kh), kvh = item % dm.kh, b = (item / dm.kh) % dm.b;
    const int64_t q0 = qt * kTile;
    const int qn = static_cast<int>(std::min<int64_t>(kTile, dm.t - q0));
    const int rows = static_cast<int>(groups) * qn, padded = (rows + 15) / 16 * 16;
    const int32_t* seg = sp + b * dm.t;
    float* buf = scratch<float>(static_cast<size_t>(padded) * (d + 17) + 2 * 16 * kTile);
    int32_t* ibuf = scratch<int32_t>(2 * static_cast<size_t>(padded));
    uint16_t* qb = scratch<uint16_t>(static_cast<size_t>(padded) * dp + 2 * 16 * kTile);
    uint16_t* pb = qb + padded * dp;  // 2 x [16, kTile] probabilities of a block (bf16)
    const Rows u{nullptr, buf, buf + padded * d, buf + padded * (d + 1), ibuf, ibuf + padded};
    float* s = buf + padded * (d + 17);  // 2 x [16, kTile] scores of a block
    const uint16_t sign = scale < 0 ? 0x8000 : 0;
    for (int r = 0; r < padded; ++r) {
      const int64_t t = r < rows ? q0 + r % qn : q0;
      uint16_t* dst = qb + r * dp;
      const uint16_t* src = r < rows ? qp + ((b * dm.t + t) * dm.h + kvh * groups + r / qn) * d : nullptr;
      for (int c = 0; c < dp; ++c) dst[c] = src && c < d ? src[c] ^ sign : 0;
      u.m[r] = kNeg;
      u.pos[r] = static_cast<int32_t>(t);
      u.seg[r] = seg[t];
    }
    std::fill(u.o, u.o + padded * d, 0.0f);
    std::fill(u.l, u.l + padded * 16, 0.0f);
    const float c = std::abs(scale) * kLog2e;
    configure_tiles();
    int64_t lo, hi;
    kv_tiles(q0, qn, window, &lo, &hi);
    for (int64_t j = lo; j <= hi; ++j) {
      const int64_t k0 = j * kTile;
      const int kn = static_cast<int>(std::min<int64_t>(kTile, dm.t - k0));
      const uint32_t* kb = packed.get() + ((b * dm.kh + kvh) * tiles + j) * (ksize + vsize);
      const KeyTile keys(k0, kn, seg);
      const bool full = fully_visible(q0, qn, k0, kn, seg, window);
      // One block ahead: the tile unit computes the next block's scores while the vector units
      // run this block's softmax (scores and probabilities double-buffered).
      qk_amx(qb, dp, kb, s);
      for (int i = 0, n = 0; i < padded; i += 16, n ^= 1) {
        float* sn = s + n * 16 * kTile;
        uint16_t* pn = pb + n * 16 * kTile;
        if (i + 16 < padded) qk_amx(qb + (i + 16) * dp, dp, kb, s + (n ^ 1) * 16 * kTile);
        if (full)
          softmax_bf16<false>(sn, c, u, i, d, keys, window, pn);
        else
          softmax_bf16<true>(sn, c, u, i, d, keys, window, pn);
        pv_amx(pn, kb + ksize, d, u.o + i * d);
      }
    }
    _tile_release();
    for (int r = 0; r < rows; ++r) {
      const int64_t t = q0 + r % qn, h = kvh * groups + r / qn;
      const float sum = _mm512_reduce_add_ps(_mm512_loadu_ps(u.l + 16 * r));
      const __m512 inv = _mm512_set1_ps(1.0f / (sum == 0.0f ? 1.0f : sum));
      uint16_t* dst = op + ((b * dm.t + t) * dm.h + h) * d;
      for (int c = 0; c < d; c += 16)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + c),
                            (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_loadu_ps(u.o + r * d + c), inv)));
      lp[(b * dm.h + h) * dm.t + t] = u.m[r] * c * kLn2 + std::log(sum == 0.0f ? 1.0f : sum);
    }
  });
  return ffi::Error::Success();
}
#endif  // AMX

#else  // !__AVX512F__

// S[qn x kTile] of one tile pair, masked to kNeg (queries q0.., keys k0..).
void masked_scores(const float* qs, int lda, const float* kt, float* s, int64_t q0, int qn, int64_t k0, int kn,
                   const int32_t* seg, int64_t window, int d) {
  gemm<false>(qn, kTile, d, qs, lda, kt, kTile, s, kTile, false);
  if (fully_visible(q0, qn, k0, kn, seg, window)) return;
  for (int r = 0; r < qn; ++r) {
    const int64_t tq = q0 + r;
    for (int c = 0; c < kTile; ++c)
      if (c >= kn || !visible(tq, k0 + c, seg[tq], seg[k0 + c], window)) s[r * kTile + c] = kNeg;
  }
}


ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                   ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::S32> segment_ids, float scale, int64_t window,
                   ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> lse) {
  auto qd = q.dimensions(), kd = k.dimensions();
  const Dims dm{qd[0], qd[1], qd[2], kd[2], qd[3]};
  if (dm.d % 16 || kd[1] != dm.t || dm.h % dm.kh)
    return ffi::Error::InvalidArgument("flash_attention_cpu: head dim must be a multiple of 16, "
                                       "k/v as long as q, kv heads dividing heads");
  const int64_t tiles = (dm.t + kTile - 1) / kTile;
  const int d = static_cast<int>(dm.d);
  const float* qp = q.typed_data();
  const float* kp = k.typed_data();
  const float* vp = v.typed_data();
  const int32_t* sp = segment_ids.typed_data();
  float* op = out->typed_data();
  float* lp = lse->typed_data();
  parallel_for(pool, dm.b * dm.h * tiles, [&](int64_t item) {
    const int64_t qt = item % tiles, h = (item / tiles) % dm.h, b = item / (tiles * dm.h);
    const int64_t kvh = h / (dm.h / dm.kh);
    const int64_t q0 = qt * kTile;
    const int qn = static_cast<int>(std::min<int64_t>(kTile, dm.t - q0));
    const int32_t* seg = sp + b * dm.t;
    std::vector<float> buf(static_cast<size_t>(kTile) * (3 * d + kTile) + 3 * kTile);
    float* qs = buf.data();             // [kTile, d] scaled queries
    float* acc = qs + kTile * d;        // [kTile, d] unnormalised output
    float* kt = acc + kTile * d;        // [d, kTile] keys, transposed
    float* s = kt + kTile * d;          // [kTile, kTile] scores, then probabilities
    float* m = s + kTile * kTile;       // running row max
    float* l = m + kTile;               // running row sum
    for (int r = 0; r < qn; ++r) {
      const float* src = qp + ((b * dm.t + q0 + r) * dm.h + h) * d;
      for (int c = 0; c < d; ++c) qs[r * d + c] = src[c] * scale;
      m[r] = kNeg;
      l[r] = 0.0f;
    }
    std::fill(acc, acc + kTile * d, 0.0f);
    int64_t lo, hi;
    kv_tiles(q0, qn, window, &lo, &hi);
    const int64_t row = dm.kh * d;  // stride between consecutive positions of one kv head
    for (int64_t j = lo; j <= hi; ++j) {
      const int64_t k0 = j * kTile;
      const int kn = static_cast<int>(std::min<int64_t>(kTile, dm.t - k0));
      const float* kbase = kp + ((b * dm.t + k0) * dm.kh + kvh) * d;
      const float* vbase = vp + ((b * dm.t + k0) * dm.kh + kvh) * d;
      transpose(kn, d, kbase, row, kt, kTile, kTile);
      masked_scores(qs, d, kt, s, q0, qn, k0, kn, seg, window, d);
      for (int r = 0; r < qn; ++r) {
        float* sr = s + r * kTile;
        v8 vmax = splat(m[r]);
        for (int c = 0; c < kTile; c += 8) { v8 x = load8(sr + c); vmax = x > vmax ? x : vmax; }
        const float mx = hmax8(vmax);
        v8 vsum = splat(0.0f);
        for (int c = 0; c < kTile; c += 8) {
          v8 x = load8(sr + c);
          v8 p = x > splat(0.5f * kNeg) ? exp8(x - splat(mx)) : splat(0.0f);
          store8(sr + c, p);
          vsum += p;
        }
        const float sum = hsum8(vsum);
        const float corr = std::exp(m[r] - mx);
        m[r] = mx;
        l[r] = l[r] * corr + sum;
        float* ar = acc + r * d;
        for (int c = 0; c < d; ++c) ar[c] *= corr;
      }
      gemm<false>(qn, d, kn, s, kTile, vbase, static_cast<int>(row), acc, d, true);
    }
    for (int r = 0; r < qn; ++r) {
      const float lr = l[r] == 0.0f ? 1.0f : l[r];
      float* dst = op + ((b * dm.t + q0 + r) * dm.h + h) * d;
      for (int c = 0; c < d; ++c) dst[c] = acc[r * d + c] / lr;
      lp[(b * dm.h + h) * dm.t + q0 + r] = m[r] + std::log(lr);
    }
  });
  return ffi::Error::Success();
}

#endif  // __AVX512F__


// The backward pass (FlashAttention-2): per (batch, kv head), kv tiles outer and query tiles
// inner; each tile pair's probabilities P = exp(S - lse) and dS = P * (dO V^T - delta) are
// recomputed once and feed dV += P^T dO, dK += dS^T Q and dQ += dS K. A unit of work owns every
// query head of its kv head, so dK, dV and dQ are written without races.
ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                    ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::S32> segment_ids, ffi::Buffer<ffi::F32> out,
                    ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> dout, float scale, int64_t window,
                    ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk, ffi::ResultBuffer<ffi::F32> dv) {
  auto qd = q.dimensions(), kd = k.dimensions();
  const Dims dm{qd[0], qd[1], qd[2], kd[2], qd[3]};
  if (dm.d % 16 || kd[1] != dm.t || dm.h % dm.kh)
    return ffi::Error::InvalidArgument("flash_attention_cpu: head dim must be a multiple of 16, "
                                       "k/v as long as q, kv heads dividing heads");
  const int64_t tiles = (dm.t + kTile - 1) / kTile, groups = dm.h / dm.kh;
  const int d = static_cast<int>(dm.d);
  const int qrow = static_cast<int>(dm.h * d), kvrow = static_cast<int>(dm.kh * d);  // position strides
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  const float *op = out.typed_data(), *lp = lse.typed_data(), *gp = dout.typed_data();
  const int32_t* sp = segment_ids.typed_data();
  float *dqp = dq->typed_data(), *dkp = dk->typed_data(), *dvp = dv->typed_data();
  parallel_for(pool, dm.b * dm.kh, [&](int64_t item) {
    const int64_t kvh = item % dm.kh, b = item / dm.kh;
    const int32_t* seg = sp + b * dm.t;
    std::vector<float> buf(static_cast<size_t>(kTile) * (4 * d + 2 * kTile) + groups * dm.t);
    float* kt = buf.data();            // [d, kTile] keys of tile j, transposed
    float* vt = kt + kTile * d;        // [d, kTile] values of tile j, transposed
    float* dk_acc = vt + kTile * d;    // [kTile, d]
    float* dv_acc = dk_acc + kTile * d;
    float* p = dv_acc + kTile * d;     // [kTile, kTile] probabilities
    float* ds = p + kTile * kTile;     // [kTile, kTile] dP, then dS
    float* delta = ds + kTile * kTile;  // [groups, T]: rowsum(dO * O)
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t h = kvh * groups + g;
      for (int64_t t = 0; t < dm.t; ++t) {
        const float* o_row = op + (b * dm.t + t) * qrow + h * d;
        const float* g_row = gp + (b * dm.t + t) * qrow + h * d;
        float acc = 0.0f;
        for (int c = 0; c < d; ++c) acc += o_row[c] * g_row[c];
        delta[g * dm.t + t] = acc;
        std::fill(dqp + (b * dm.t + t) * qrow + h * d, dqp + (b * dm.t + t) * qrow + (h + 1) * d, 0.0f);
      }
    }
    for (int64_t j = 0; j < tiles; ++j) {
      const int64_t k0 = j * kTile;
      const int kn = static_cast<int>(std::min<int64_t>(kTile, dm.t - k0));
      const float* kbase = kp + (b * dm.t + k0) * kvrow + kvh * d;
      const float* vbase = vp + (b * dm.t + k0) * kvrow + kvh * d;
      transpose(kn, d, kbase, kvrow, kt, kTile, kTile);
      transpose(kn, d, vbase, kvrow, vt, kTile, kTile);
      std::fill(dk_acc, dk_acc + 2 * kTile * d, 0.0f);  // dk_acc and dv_acc
      // query tiles that can see kv tile j: from j up to the window's end
      const int64_t last = window > 0 ? std::min<int64_t>(tiles - 1, (k0 + kn - 1 + window - 1) / kTile) : tiles - 1;
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t h = kvh * groups + g;
        for (int64_t i = j; i <= last; ++i) {
          const int64_t q0 = i * kTile;
          const int qn = static_cast<int>(std::min<int64_t>(kTile, dm.t - q0));
          const float* qrows = qp + (b * dm.t + q0) * qrow + h * d;
          const float* grows = gp + (b * dm.t + q0) * qrow + h * d;
          float* dqrows = dqp + (b * dm.t + q0) * qrow + h * d;
          const float* lse_i = lp + (b * dm.h + h) * dm.t + q0;
          const float* delta_i = delta + g * dm.t + q0;
          gemm<false>(qn, kTile, d, qrows, qrow, kt, kTile, p, kTile, false);   // S / scale
          gemm<false>(qn, kTile, d, grows, qrow, vt, kTile, ds, kTile, false);  // dP
          const bool full = fully_visible(q0, qn, k0, kn, seg, window);
          for (int r = 0; r < qn; ++r) {
            float* pr = p + r * kTile;
            float* dr = ds + r * kTile;
            const v8 l = splat(lse_i[r]), dl = splat(delta_i[r]);
            for (int c = 0; c < kTile; c += 8) {
              v8 pv = exp8(load8(pr + c) * splat(scale) - l);
              store8(pr + c, pv);
              store8(dr + c, pv * (load8(dr + c) - dl));
            }
            if (!full) {
              for (int c = 0; c < kTile; ++c)
                if (c >= kn || !visible(q0 + r, k0 + c, seg[q0 + r], seg[k0 + c], window)) pr[c] = dr[c] = 0.0f;
            }
          }
          gemm<true>(kn, d, qn, p, kTile, grows, qrow, dv_acc, d, true);     // dV += P^T dO
          gemm<true>(kn, d, qn, ds, kTile, qrows, qrow, dk_acc, d, true);    // dK += dS^T Q
          gemm<false>(qn, d, kn, ds, kTile, kbase, kvrow, dqrows, qrow, true);  // dQ += dS K
        }
      }
      for (int r = 0; r < kn; ++r) {
        float* dk_row = dkp + (b * dm.t + k0 + r) * kvrow + kvh * d;
        float* dv_row = dvp + (b * dm.t + k0 + r) * kvrow + kvh * d;
        for (int c = 0; c < d; ++c) {
          dk_row[c] = dk_acc[r * d + c] * scale;
          dv_row[c] = dv_acc[r * d + c];
        }
      }
    }
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t h = kvh * groups + g;
      for (int64_t t = 0; t < dm.t; ++t) {
        float* row = dqp + (b * dm.t + t) * qrow + h * d;
        for (int c = 0; c < d; ++c) row[c] *= scale;
      }
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(YarnFlashAttentionForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Attr<float>("scale")
                                  .Attr<int64_t>("window")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(YarnFlashAttentionBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // q
                                  .Arg<ffi::Buffer<ffi::F32>>()  // k
                                  .Arg<ffi::Buffer<ffi::F32>>()  // v
                                  .Arg<ffi::Buffer<ffi::S32>>()  // segment_ids
                                  .Arg<ffi::Buffer<ffi::F32>>()  // out
                                  .Arg<ffi::Buffer<ffi::F32>>()  // lse
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dout
                                  .Attr<float>("scale")
                                  .Attr<int64_t>("window")
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dq
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dk
                                  .Ret<ffi::Buffer<ffi::F32>>());  // dv

#if !defined(YARN_FLASH_AMX)
namespace {
ffi::Error ForwardBf16(ffi::ThreadPool, ffi::Buffer<ffi::BF16>, ffi::Buffer<ffi::BF16>, ffi::Buffer<ffi::BF16>,
                       ffi::Buffer<ffi::S32>, float, int64_t, ffi::ResultBuffer<ffi::BF16>,
                       ffi::ResultBuffer<ffi::F32>) {
  return ffi::Error(ffi::ErrorCode::kUnimplemented,
                    "flash_attention_cpu: built without AMX (no native bfloat16 path)");
}
}  // namespace
#endif

XLA_FFI_DEFINE_HANDLER_SYMBOL(YarnFlashAttentionForwardBf16, ForwardBf16,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Attr<float>("scale")
                                  .Attr<int64_t>("window")
                                  .Ret<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

// Whether YarnFlashAttentionForwardBf16 runs here: built for AMX and granted the tiles.
extern "C" int YarnFlashAttentionNativeBf16() {
#if defined(YARN_FLASH_AMX)
  return amx_permitted();
#else
  return 0;
#endif
}

#if !defined(__AVX512F__)
namespace {
ffi::Error ForwardCached(ffi::ThreadPool, ffi::Buffer<ffi::F32>, ffi::AnyBuffer, ffi::AnyBuffer, ffi::Buffer<ffi::S32>,
                         ffi::Buffer<ffi::S32>, float, int64_t, ffi::ResultBuffer<ffi::F32>,
                         ffi::ResultBuffer<ffi::F32>) {
  return ffi::Error(ffi::ErrorCode::kUnimplemented, "flash_attention_cpu: the cached forward needs AVX-512");
}
}  // namespace
#endif

XLA_FFI_DEFINE_HANDLER_SYMBOL(YarnFlashAttentionForwardCached, ForwardCached,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // q
                                  .Arg<ffi::AnyBuffer>()         // cache k
                                  .Arg<ffi::AnyBuffer>()         // cache v
                                  .Arg<ffi::Buffer<ffi::S32>>()  // segment_ids
                                  .Arg<ffi::Buffer<ffi::S32>>()  // offset (a scalar)
                                  .Attr<float>("scale")
                                  .Attr<int64_t>("window")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

// Whether YarnFlashAttentionForwardCached runs here (the AVX-512 build).
extern "C" int YarnFlashAttentionCached() {
#if defined(__AVX512F__)
  return 1;
#else
  return 0;
#endif
}
