// Batched, vectorised CPU path of the deformable sampling operators (included by
// sampling_cpu.cpp inside namespace bevformer_ops; needs sampling.h and the standard headers
// it includes first).
#pragma once

// =============================================================================================
// Batched path (compilers with GCC vector extensions: GCC, Clang) for 8, 16, 32 and 64
// channels per head/group; other channel counts, other compilers and tensors of 2^31 elements
// or more use the per-point functions of sampling.h (shared with CUDA). The arithmetic is
// theirs, reorganised for SIMD:
//   1. setup, vectorised over a batch of about 256 points (all heads of a few queries / all
//      groups of a few output pixels): pixel coordinates -> four corner offsets, clamped into
//      the image, and four corner weights that are zero for corners outside it (so the loops
//      over channels have no branches); for the backward also the coefficients that turn the
//      four corner dot products <grad_out, value[corner]> into the weight and position
//      gradients;
//   2. gather (forward) or scatter (backward) over the channels in whole vectors of the widest
//      registers (64 bytes with AVX-512, 32 with AVX, 16 otherwise), prefetching the backward's
//      rows;
//   3. backward only: the four dot products of kLanes / 4 points are summed across their lanes
//      together (a transposed reduction: log2(kLanes) shuffle levels for kLanes sums), then
//      the weight and position gradients of the whole batch are formed in one vector loop.
// Measured on one AVX-512 core against the per-point functions: forward up to 2.3x faster
// (1.1x for BEVFormer's spatial cross-attention), backward 1.8-4x (ops/README.md,
// "Performance (CPU)").
// =============================================================================================
#if defined(__GNUC__)  // GCC and Clang (vector extensions); other compilers: per-point path
#define SAMPLING_CPU_BATCHED 1

namespace cpu {

#define SAMPLING_CPU_INLINE inline __attribute__((always_inline))

// Widest vector the target has registers for: AVX-512 64 bytes, AVX 32, otherwise 16 (SSE,
// NEON). Wider GCC vectors would be split by the compiler, often badly.
#if defined(__AVX512F__)
constexpr int kMaxVectorBytes = 64;
#elif defined(__AVX__)
constexpr int kMaxVectorBytes = 32;
#else
constexpr int kMaxVectorBytes = 16;
#endif

template <typename T, int kBytes>
struct VecTypes;
#define SAMPLING_VEC_TYPES(T, I, BYTES)                    \
  template <>                                              \
  struct VecTypes<T, BYTES> {                              \
    typedef T V __attribute__((vector_size(BYTES)));       \
    typedef I Mask __attribute__((vector_size(BYTES)));    \
  };
SAMPLING_VEC_TYPES(float, int32_t, 16)
SAMPLING_VEC_TYPES(float, int32_t, 32)
SAMPLING_VEC_TYPES(float, int32_t, 64)
SAMPLING_VEC_TYPES(double, int64_t, 16)
SAMPLING_VEC_TYPES(double, int64_t, 32)
SAMPLING_VEC_TYPES(double, int64_t, 64)
#undef SAMPLING_VEC_TYPES

// A row of kC channels as kN vectors of kLanes elements.
template <typename T, int kC>
struct Row {
  static constexpr int kRowBytes = kC * static_cast<int>(sizeof(T));
  static constexpr int kBytes = kRowBytes < kMaxVectorBytes ? kRowBytes : kMaxVectorBytes;
  static_assert(kRowBytes >= 16 && (kC & (kC - 1)) == 0, "rows of 2^n channels, >= 16 bytes");
  using V = typename VecTypes<T, kBytes>::V;
  using Mask = typename VecTypes<T, kBytes>::Mask;
  static constexpr int kLanes = kBytes / static_cast<int>(sizeof(T));
  static constexpr int kN = kC / kLanes;
  static SAMPLING_CPU_INLINE V load(const T* p) {
    V v;
    __builtin_memcpy(&v, p, sizeof(V));
    return v;
  }
  static SAMPLING_CPU_INLINE void store(T* p, const V& v) { __builtin_memcpy(p, &v, sizeof(V)); }
};

// Transposed lane reduction: v[0..kLanes) -> v[0][j] = sum of the lanes of v[j]. One level
// folds pairs (a, b) whose lanes hold blocks of `block` partial sums into blocks of block / 2:
// output blocks first take a's blocks, then b's (so the final order is v's order).
constexpr int fold_source(int lane, int block, int lanes, bool high) {
  const int half = block / 2, out_block = lane / half, in_a = lanes / block;
  return (out_block < in_a ? out_block * block : lanes + (out_block - in_a) * block) +
         lane % half + (high ? half : 0);
}

template <typename R, int kBlock, bool kHigh, int... I>
SAMPLING_CPU_INLINE typename R::V fold_pick(typename R::V a, typename R::V b,
                                            std::integer_sequence<int, I...>) {
#if defined(__clang__)
  return __builtin_shufflevector(a, b, fold_source(I, kBlock, R::kLanes, kHigh)...);
#else
  return __builtin_shuffle(a, b, typename R::Mask{fold_source(I, kBlock, R::kLanes, kHigh)...});
#endif
}

template <typename R, int kBlock>
SAMPLING_CPU_INLINE void fold_lanes(typename R::V* v) {
  if constexpr (kBlock > 1) {
    using Seq = std::make_integer_sequence<int, R::kLanes>;
    for (int i = 0; i < kBlock / 2; ++i) {
      v[i] = fold_pick<R, kBlock, false>(v[2 * i], v[2 * i + 1], Seq{}) +
             fold_pick<R, kBlock, true>(v[2 * i], v[2 * i + 1], Seq{});
    }
    fold_lanes<R, kBlock / 2>(v);
  }
}

// Points between a prefetch of the backward and the use of its rows (measured: 16-24 best).
constexpr int kPrefetch = 16;

// Per-thread scratch for a batch of up to `capacity` points (structure of arrays). Element
// offsets are 32-bit: the launchers use this path only for tensors of fewer than 2^31 elements.
template <typename T>
struct Batch {
  // corner k of point u: element offset off[k][u] (clamped into the image, image base
  // included) and weight w[k][u] = weight * bilinear weight, zero when the corner is outside.
  int32_t* off[4];
  T* w[4];
  // backward: grad_out row of the point; gradient coefficients of the corner dot products
  // d_k = <grad_out row, value row at corner k>: d_weight = sum_k cv[k] d_k,
  // d_x = sum_k bx[k] d_k, d_y = sum_k by[k] d_k (position gradients in the caller's units).
  int32_t* grow;
  T* cv[4];
  T* bx[4];
  T* by[4];
  T* dot;  // d_k of point u at dot[4 * u + k]
  std::vector<int32_t> ints;
  std::vector<T> reals;

  Batch(int capacity, bool grad) {
    // room for padding to whole groups and for the prefetches past the end (zero offsets)
    const int64_t n = (capacity + kPrefetch + 16) & ~int64_t(15);
    ints.resize(n * (grad ? 5 : 4));
    reals.resize(n * (grad ? 20 : 4));
    for (int k = 0; k < 4; ++k) {
      off[k] = ints.data() + k * n;
      w[k] = reals.data() + k * n;
      cv[k] = grad ? reals.data() + (4 + k) * n : nullptr;
      bx[k] = grad ? reals.data() + (8 + k) * n : nullptr;
      by[k] = grad ? reals.data() + (12 + k) * n : nullptr;
    }
    grow = grad ? ints.data() + 4 * n : nullptr;
    dot = grad ? reals.data() + 16 * n : nullptr;
  }
};

// Per-point constants of a batch of `units` consecutive queries (ms_deform_attn: heads x
// levels x points each) or output pixels of one row (dcnv3: groups x taps each), n0 points per
// unit, u = unit * n0 + v. The pixel coordinates of point u are
//   x = (T(ix + col[u]) - cx) + (tx[u] + p[2u]) * kx[u],  y = oy + (ty[u] + p[2u + 1]) * ky[u]
// with p the batch's sampling locations / offsets and (ix, cx, oy) per batch (the official
// kernels' order of operations); its image is th[u] x tw[u] pixels from element
// img0 + base[u] (img0 per batch); its grad_out row starts at row0 + grow[u].
template <typename T>
struct Table {
  int n0 = 0, n = 0;
  std::vector<T> tx, ty, kx, ky;
  std::vector<int> th, tw, col;
  std::vector<int32_t> base, grow;

  explicit Table(int points_per_unit) : n0(points_per_unit), n(points_per_unit) {
    for (auto* v : {&tx, &ty, &kx, &ky}) v->assign(n, T(0));
    for (auto* v : {&th, &tw, &col}) v->assign(n, 0);
    base.assign(n, 0);
    grow.assign(n, 0);
  }
  // Repeats the first unit `units` times; unit j has col += j * col_step, grow += j * row_step.
  void replicate(int units, int col_step, int32_t row_step) {
    n = n0 * units;
    for (auto* v : {&tx, &ty, &kx, &ky}) v->resize(n);
    for (auto* v : {&th, &tw, &col}) v->resize(n);
    base.resize(n);
    grow.resize(n);
    for (int u = n0; u < n; ++u) {
      const int j = u / n0, v = u % n0;
      tx[u] = tx[v];
      ty[u] = ty[v];
      kx[u] = kx[v];
      ky[u] = ky[v];
      th[u] = th[v];
      tw[u] = tw[v];
      col[u] = col[v] + j * col_step;
      base[u] = base[v];
      grow[u] = grow[v] + j * row_step;
    }
  }
};

// Setup of points [0, n) of a batch, pixels `ps` elements apart (Table gives the rest).
// Branch-free (the loop is vectorised): points outside (-1, w) x (-1, h) (and NaN) get zero
// weights and coefficients; a corner outside the image gets weight zero and the offset of a
// corner inside.
template <typename T, bool kGrad>
SAMPLING_CPU_INLINE void setup_points(const Batch<T>& bt, const Table<T>& tb, int n,
                                      const T* __restrict__ p, const T* __restrict__ pa, int ix,
                                      T cx, T oy, int32_t img0, int32_t row0, int32_t ps) {
  const T* __restrict__ tx = tb.tx.data();
  const T* __restrict__ ty = tb.ty.data();
  const T* __restrict__ kx = tb.kx.data();
  const T* __restrict__ ky = tb.ky.data();
  const int* __restrict__ th = tb.th.data();
  const int* __restrict__ tw = tb.tw.data();
  const int* __restrict__ tcol = tb.col.data();
  const int32_t* __restrict__ tbase = tb.base.data();
  const int32_t* __restrict__ tgrow = tb.grow.data();
  int32_t* __restrict__ o0 = bt.off[0];
  int32_t* __restrict__ o1 = bt.off[1];
  int32_t* __restrict__ o2 = bt.off[2];
  int32_t* __restrict__ o3 = bt.off[3];
  T* __restrict__ w0 = bt.w[0];
  T* __restrict__ w1 = bt.w[1];
  T* __restrict__ w2 = bt.w[2];
  T* __restrict__ w3 = bt.w[3];
  int32_t* __restrict__ grow = bt.grow;
  T* __restrict__ cv0 = bt.cv[0];
  T* __restrict__ cv1 = bt.cv[1];
  T* __restrict__ cv2 = bt.cv[2];
  T* __restrict__ cv3 = bt.cv[3];
  T* __restrict__ bx0 = bt.bx[0];
  T* __restrict__ bx1 = bt.bx[1];
  T* __restrict__ bx2 = bt.bx[2];
  T* __restrict__ bx3 = bt.bx[3];
  T* __restrict__ by0 = bt.by[0];
  T* __restrict__ by1 = bt.by[1];
  T* __restrict__ by2 = bt.by[2];
  T* __restrict__ by3 = bt.by[3];
  SAMPLING_SIMD
  for (int v = 0; v < n; ++v) {
    const int h = th[v], w = tw[v];
    T x = (static_cast<T>(ix + tcol[v]) - cx) + (tx[v] + p[2 * v]) * kx[v];
    T y = oy + (ty[v] + p[2 * v + 1]) * ky[v];
    const T a = pa[v];
    const bool in = (x > T(-1)) & (y > T(-1)) & (x < T(w)) & (y < T(h));
    x = in ? x : T(0);
    y = in ? y : T(0);
    const T xf = std::floor(x), yf = std::floor(y);
    const int x0 = static_cast<int>(xf), y0 = static_cast<int>(yf);  // in [-1, w - 1]
    const T lx = x - xf, ly = y - yf;
    const int32_t wps = w * ps;
    const int xa = std::max(x0, 0), ya = std::max(y0, 0);
    const int xb = std::min(x0 + 1, w - 1), yb = std::min(y0 + 1, h - 1);
    const int32_t c00 = img0 + tbase[v] + ya * wps + xa * ps;
    const int32_t dx = (xb - xa) * ps, dy = (yb - ya) * wps;  // 0 where a corner is outside
    o0[v] = c00;
    o1[v] = c00 + dx;
    o2[v] = c00 + dy;
    o3[v] = c00 + dx + dy;
    // one-dimensional gates: 1 where that corner column / row is inside the image
    const T ex0 = x0 >= 0 ? T(1) : T(0), ex1 = x0 < w - 1 ? T(1) : T(0);
    const T inside = in ? T(1) : T(0);
    const T ey0 = y0 >= 0 ? inside : T(0), ey1 = y0 < h - 1 ? inside : T(0);
    const T hx = (T(1) - lx) * ex0, wx1 = lx * ex1, hy = (T(1) - ly) * ey0, wy1 = ly * ey1;
    const T c0 = hy * hx, c1 = hy * wx1, c2 = wy1 * hx, c3 = wy1 * wx1;
    w0[v] = a * c0;
    w1[v] = a * c1;
    w2[v] = a * c2;
    w3[v] = a * c3;
    if constexpr (kGrad) {
      grow[v] = row0 + tgrow[v];
      cv0[v] = c0;
      cv1[v] = c1;
      cv2[v] = c2;
      cv3[v] = c3;
      // d x_pix = a (hy (d1 - d0) + ly (d3 - d2)), d y_pix = a (hx (d2 - d0) + lx (d3 - d1)),
      // with d_k = 0 for corners outside (the gate factors ex, ey); times kx, ky
      const T ax = a * kx[v], ay = a * ky[v];
      bx0[v] = -ax * hy * ex0;
      bx1[v] = ax * hy * ex1;
      bx2[v] = -ax * wy1 * ex0;
      bx3[v] = ax * wy1 * ex1;
      by0[v] = -ay * ey0 * hx;
      by1[v] = -ay * ey0 * wx1;
      by2[v] = ay * ey1 * hx;
      by3[v] = ay * ey1 * wx1;
    }
  }
}

// Prefetches the corner rows of point u (u may run up to kPrefetch past the batch: those
// slots hold offsets of earlier batches or zero, addresses inside the image).
template <typename T, int kC>
SAMPLING_CPU_INLINE void prefetch_point(const T* img, const Batch<T>& bt, int u, bool write) {
  constexpr int kBytes = kC * static_cast<int>(sizeof(T));
  for (int k = 0; k < 4; ++k) {
    const char* p = reinterpret_cast<const char*>(img + bt.off[k][u]);
    for (int b = 0; b < kBytes; b += 64) {
      if (write) {
        __builtin_prefetch(p + b, 1, 3);
      } else {
        __builtin_prefetch(p + b, 0, 3);
      }
    }
  }
}

// Forward: out[0, kC) = sum over points [u0, u1) of sum_k w[k] * img[off[k] + c].
template <typename T, int kC>
SAMPLING_CPU_INLINE void gather(const T* __restrict__ img, const Batch<T>& bt, int u0, int u1,
                                T* __restrict__ out) {
  using R = Row<T, kC>;
  typename R::V acc[R::kN] = {};
  for (int u = u0; u < u1; ++u) {
    const T* p0 = img + bt.off[0][u];
    const T* p1 = img + bt.off[1][u];
    const T* p2 = img + bt.off[2][u];
    const T* p3 = img + bt.off[3][u];
    const T w0 = bt.w[0][u], w1 = bt.w[1][u], w2 = bt.w[2][u], w3 = bt.w[3][u];
    for (int n = 0; n < R::kN; ++n) {
      const int c = n * R::kLanes;
      acc[n] += R::load(p0 + c) * w0 + R::load(p1 + c) * w1 + R::load(p2 + c) * w2 +
                R::load(p3 + c) * w3;
    }
  }
  for (int n = 0; n < R::kN; ++n) R::store(out + n * R::kLanes, acc[n]);
}

// Points per transposed reduction: kLanes dot products, four per point (at least one point).
template <typename T, int kC>
constexpr int kGroupPoints = Row<T, kC>::kLanes >= 4 ? Row<T, kC>::kLanes / 4 : 1;

// Rows of the value gradient that a backward task writes directly: element offsets [lo, hi).
// The scatters of a point with a corner outside go to a list (its corner offsets and weights
// and its grad_out row), applied after all tasks by scatter_deferred (dcnv3, whose threads own
// bands of input rows).
template <typename T>
struct Deferred {
  int32_t lo = 0, hi = 0;
  std::vector<int32_t> ints;  // per point: off[0..3], grow
  std::vector<T> reals;       // per point: w[0..3]
};

// Backward over points [0, n) (n a multiple of kGroupPoints; padding points have zero
// weights): grad_img[off[k] + c] += w[k] * gout[grow + c] (or, with a Deferred, to its list
// when a corner is outside [lo, hi)) and dot[4u + k] = <gout row, img row at corner k>.
template <typename T, int kC>
SAMPLING_CPU_INLINE void scatter(const T* __restrict__ img, const T* __restrict__ gout,
                                 T* __restrict__ grad_img, const Batch<T>& bt, int n,
                                 Deferred<T>* deferred) {
  using R = Row<T, kC>;
  using V = typename R::V;
  constexpr int kGroup = kGroupPoints<T, kC>;
  constexpr int kDots = 4 * kGroup;  // a multiple of kLanes
  for (int u0 = 0; u0 < n; u0 += kGroup) {
    V d[kDots];
    for (int r = 0; r < kGroup; ++r) {
      const int u = u0 + r;
      // the backward's random accesses miss the caches more than the forward's (twice the
      // working set): prefetch the rows of the point kPrefetch ahead
      prefetch_point<T, kC>(img, bt, u + kPrefetch, false);
      prefetch_point<T, kC>(grad_img, bt, u + kPrefetch, true);
      const T* g = gout + bt.grow[u];
      V gv[R::kN];
      for (int i = 0; i < R::kN; ++i) gv[i] = R::load(g + i * R::kLanes);
      for (int k = 0; k < 4; ++k) {
        const T* v = img + bt.off[k][u];
        V acc = R::load(v) * gv[0];
        for (int i = 1; i < R::kN; ++i) acc += R::load(v + i * R::kLanes) * gv[i];
        d[4 * r + k] = acc;
      }
      // corner 0 has the smallest offset, corner 3 the largest
      if (deferred != nullptr && (bt.off[0][u] < deferred->lo || bt.off[3][u] >= deferred->hi)) {
        for (int k = 0; k < 4; ++k) deferred->ints.push_back(bt.off[k][u]);
        deferred->ints.push_back(bt.grow[u]);
        for (int k = 0; k < 4; ++k) deferred->reals.push_back(bt.w[k][u]);
        continue;
      }
      for (int k = 0; k < 4; ++k) {
        T* gi = grad_img + bt.off[k][u];
        const T wk = bt.w[k][u];
        for (int i = 0; i < R::kN; ++i) {
          R::store(gi + i * R::kLanes, R::load(gi + i * R::kLanes) + gv[i] * wk);
        }
      }
    }
    for (int j = 0; j < kDots; j += R::kLanes) {
      fold_lanes<R, R::kLanes>(d + j);
      R::store(bt.dot + 4 * u0 + j, d[j]);
    }
  }
}

// The scatters that scatter() deferred.
template <typename T, int kC>
void scatter_deferred(const T* __restrict__ gout, T* __restrict__ grad_img,
                      const Deferred<T>& deferred) {
  using R = Row<T, kC>;
  for (size_t e = 0; e < deferred.reals.size() / 4; ++e) {
    const int32_t* ints = deferred.ints.data() + 5 * e;
    const T* g = gout + ints[4];
    for (int k = 0; k < 4; ++k) {
      T* gi = grad_img + ints[k];
      const T wk = deferred.reals[4 * e + k];
      for (int i = 0; i < R::kN; ++i) {
        R::store(gi + i * R::kLanes,
                 R::load(gi + i * R::kLanes) + R::load(g + i * R::kLanes) * wk);
      }
    }
  }
}

// Pads points [n, round_up(n, kGroupPoints)) with copies of point n - 1 with zero weights.
template <typename T, int kC>
SAMPLING_CPU_INLINE int pad_batch(const Batch<T>& bt, int n) {
  constexpr int kGroup = kGroupPoints<T, kC>;
  const int padded = (n + kGroup - 1) / kGroup * kGroup;
  for (int u = n; u < padded; ++u) {
    for (int k = 0; k < 4; ++k) {
      bt.off[k][u] = bt.off[k][n - 1];
      bt.w[k][u] = T(0);
    }
    bt.grow[u] = bt.grow[n - 1];
  }
  return padded;
}

// Weight and position gradients of points [0, n): grad_w[u], grad_xy[2u], grad_xy[2u + 1].
template <typename T>
SAMPLING_CPU_INLINE void finish(const Batch<T>& bt, int n, T* __restrict__ grad_w,
                                T* __restrict__ grad_xy) {
  const T* __restrict__ d = bt.dot;
  SAMPLING_SIMD
  for (int u = 0; u < n; ++u) {
    const T d0 = d[4 * u], d1 = d[4 * u + 1], d2 = d[4 * u + 2], d3 = d[4 * u + 3];
    grad_w[u] = bt.cv[0][u] * d0 + bt.cv[1][u] * d1 + bt.cv[2][u] * d2 + bt.cv[3][u] * d3;
    grad_xy[2 * u] = bt.bx[0][u] * d0 + bt.bx[1][u] * d1 + bt.bx[2][u] * d2 + bt.bx[3][u] * d3;
    grad_xy[2 * u + 1] =
        bt.by[0][u] * d0 + bt.by[1][u] * d1 + bt.by[2][u] * d2 + bt.by[3][u] * d3;
  }
}

// ------------------------------------------------------------------------ ms_deform_attn

// Points of about this many per batch (a few KiB of scratch, stays in L1).
constexpr int kBatchPoints = 256;

// Table of `units` consecutive queries, heads [m0, m1) each: u = unit * n0 + (m - m0) * L * P
// + l * P + p with x = -0.5 + loc_x * w_l in level l of head m (value [B, S, M, C]).
template <typename T>
Table<T> msda_table(const int64_t* shapes, const int64_t* starts, int64_t M, int64_t C,
                    int64_t L, int64_t P, int64_t m0, int64_t m1, int units) {
  Table<T> tb(static_cast<int>((m1 - m0) * L * P));
  for (int u = 0; u < tb.n0; ++u) {
    const int64_t m = m0 + u / (L * P), l = (u / P) % L;
    tb.th[u] = static_cast<int>(shapes[2 * l]);
    tb.tw[u] = static_cast<int>(shapes[2 * l + 1]);
    tb.kx[u] = static_cast<T>(tb.tw[u]);
    tb.ky[u] = static_cast<T>(tb.th[u]);
    tb.base[u] = static_cast<int32_t>((starts[l] * M + m) * C);
    tb.grow[u] = static_cast<int32_t>(m * C);
  }
  tb.replicate(units, 0, static_cast<int32_t>(M * C));
  return tb;
}

// Queries / output pixels per batch: about kBatchPoints points, at least one.
inline int units_per_batch(int64_t points_per_unit) {
  const int64_t units = kBatchPoints / std::max<int64_t>(points_per_unit, 1);
  return static_cast<int>(std::max<int64_t>(1, units));
}

// Forward for the (batch, query) rows [begin, end) of out [B*Q, M*C], all heads.
template <typename T, int kC>
void msda_forward_rows(const T* value, const int64_t* shapes, const int64_t* starts,
                       const T* loc, const T* attn, int64_t S, int64_t Q, int64_t M, int64_t L,
                       int64_t P, int64_t begin, int64_t end, T* out) {
  constexpr int64_t C = kC;
  const int64_t n0 = M * L * P, per_head = L * P;
  const int units = units_per_batch(n0);
  const Table<T> tb = msda_table<T>(shapes, starts, M, C, L, P, 0, M, units);
  Batch<T> bt(tb.n, false);
  for (int64_t bq0 = begin; bq0 < end;) {
    const int64_t b = bq0 / Q, bq1 = std::min({end, bq0 + units, (b + 1) * Q});
    setup_points<T, false>(bt, tb, static_cast<int>((bq1 - bq0) * n0), loc + bq0 * n0 * 2,
                           attn + bq0 * n0, 0, T(0.5), T(-0.5),
                           static_cast<int32_t>(b * S * M * C), 0, static_cast<int32_t>(M * C));
    for (int64_t bq = bq0; bq < bq1; ++bq) {
      for (int64_t m = 0; m < M; ++m) {
        const int u0 = static_cast<int>((bq - bq0) * n0 + m * per_head);
        gather<T, kC>(value, bt, u0, u0 + static_cast<int>(per_head), out + (bq * M + m) * C);
      }
    }
    bq0 = bq1;
  }
}

// Backward of the heads [m0, m1) of batch element b over all queries: adds into grad_value
// (only value[b, :, m0:m1] is written: the caller's tasks own disjoint slices) and writes
// grad_loc / grad_attn of those (b, q, m).
template <typename T, int kC>
void msda_backward_heads(const T* value, const int64_t* shapes, const int64_t* starts,
                         const T* loc, const T* attn, const T* grad_out, int64_t S, int64_t Q,
                         int64_t M, int64_t L, int64_t P, int64_t b, int64_t m0, int64_t m1,
                         T* grad_value, T* grad_loc, T* grad_attn) {
  constexpr int64_t C = kC;
  const int64_t n0 = (m1 - m0) * L * P;
  // the points of several queries are contiguous in loc/attn only when all heads are taken
  const int units = (m1 - m0 == M) ? units_per_batch(n0) : 1;
  const Table<T> tb = msda_table<T>(shapes, starts, M, C, L, P, m0, m1, units);
  Batch<T> bt(tb.n, true);
  const int32_t img0 = static_cast<int32_t>(b * S * M * C);
  for (int64_t q0 = 0; q0 < Q; q0 += units) {
    const int64_t q1 = std::min(Q, q0 + units), bq0 = b * Q + q0;
    const int64_t first = (bq0 * M + m0) * L * P;  // flat index of (b, q0, m0, 0, 0) in attn
    const int n = static_cast<int>((q1 - q0) * n0);
    setup_points<T, true>(bt, tb, n, loc + 2 * first, attn + first, 0, T(0.5), T(-0.5), img0,
                          static_cast<int32_t>(bq0 * M * C), static_cast<int32_t>(M * C));
    const int padded = pad_batch<T, kC>(bt, n);
    scatter<T, kC>(value, grad_out, grad_value, bt, padded, nullptr);
    finish<T>(bt, n, grad_attn + first, grad_loc + 2 * first);
  }
}

// ------------------------------------------------------------------------------------ dcnv3

// Table of `units` consecutive output pixels of one row, u = unit * G * K + g * K + p (tap
// p = i * kernel_h + j): x = (T(wo * stride_w - pad_w + cx) - cx * s) + (i * dilation_w +
// offset_x) * s in group g of the input (the official kernel's order of operations).
template <typename T>
Table<T> dcnv3_table(const Dcnv3Geometry& gm, int units) {
  std::vector<int> px, py;
  const int ci = gm.kernel_w / 2, cj = gm.kernel_h / 2;
  for (int i = 0; i < gm.kernel_w; ++i) {
    for (int j = 0; j < gm.kernel_h; ++j) {
      if (gm.remove_center && i == ci && j == cj) continue;
      px.push_back(i * gm.dilation_w);
      py.push_back(j * gm.dilation_h);
    }
  }
  const int K = static_cast<int>(px.size());
  Table<T> tb(gm.group * K);
  for (int u = 0; u < tb.n0; ++u) {
    const int g = u / K, p = u % K;
    tb.tx[u] = static_cast<T>(px[p]);
    tb.ty[u] = static_cast<T>(py[p]);
    tb.kx[u] = tb.ky[u] = static_cast<T>(gm.offset_scale);
    tb.th[u] = static_cast<int>(gm.height_in);
    tb.tw[u] = static_cast<int>(gm.width_in);
    tb.base[u] = tb.grow[u] = g * gm.group_channels;
  }
  tb.replicate(units, gm.stride_w, gm.group * gm.group_channels);
  return tb;
}

// Calls fn(i0, i1) for runs of at most `units` output pixels within one output row, covering
// the flat pixels [begin, end), after setting up their points.
template <typename T, bool kGrad, typename Fn>
void dcnv3_batches(const Dcnv3Geometry& gm, const Table<T>& tb, int units, const T* offset,
                   const T* mask, int64_t begin, int64_t end, const Batch<T>& bt, Fn&& fn) {
  const int32_t ps = gm.group * gm.group_channels;
  const int cx = (gm.dilation_w * (gm.kernel_w - 1)) / 2;
  const int cy = (gm.dilation_h * (gm.kernel_h - 1)) / 2;
  const T s = static_cast<T>(gm.offset_scale);
  const int64_t hw_out = gm.height_out * gm.width_out;
  for (int64_t i0 = begin; i0 < end;) {
    const int64_t n = i0 / hw_out, ho = (i0 % hw_out) / gm.width_out, wo = i0 % gm.width_out;
    const int64_t i1 = std::min({end, i0 + units, i0 + gm.width_out - wo});
    const T oy = static_cast<T>(ho * gm.stride_h - gm.pad_h + cy) - cy * s;
    setup_points<T, kGrad>(bt, tb, static_cast<int>((i1 - i0) * tb.n0), offset + i0 * tb.n0 * 2,
                           mask + i0 * tb.n0, static_cast<int>(wo * gm.stride_w - gm.pad_w + cx),
                           cx * s, oy, static_cast<int32_t>(n * gm.height_in * gm.width_in * ps),
                           static_cast<int32_t>(i0 * ps), ps);
    fn(i0, i1);
    i0 = i1;
  }
}

// Forward for output pixels [begin, end) (flat over (n, ho, wo)), all groups.
template <typename T, int kC>
void dcnv3_forward_pixels(const T* input, const T* offset, const T* mask,
                          const Dcnv3Geometry& gm, int64_t begin, int64_t end, T* out) {
  const int K = gm.kernel_h * gm.kernel_w - gm.remove_center, n0 = gm.group * K;
  const int units = units_per_batch(n0);
  const Table<T> tb = dcnv3_table<T>(gm, units);
  Batch<T> bt(tb.n, false);
  dcnv3_batches<T, false>(gm, tb, units, offset, mask, begin, end, bt, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      for (int g = 0; g < gm.group; ++g) {
        const int u0 = static_cast<int>((i - i0) * n0) + g * K;
        gather<T, kC>(input, bt, u0, u0 + K, out + (i * gm.group + g) * kC);
      }
    }
  });
}

// Backward for output pixels [begin, end): adds into grad_input where the rows are in
// [deferred.lo, deferred.hi) (the caller's threads own disjoint bands of input rows) and
// defers the other scatters to `deferred`; writes grad_offset / grad_mask of those pixels.
template <typename T, int kC>
void dcnv3_backward_pixels(const T* input, const T* offset, const T* mask, const T* grad_out,
                           const Dcnv3Geometry& gm, int64_t begin, int64_t end, T* grad_input,
                           T* grad_offset, T* grad_mask, Deferred<T>& deferred) {
  const int K = gm.kernel_h * gm.kernel_w - gm.remove_center, n0 = gm.group * K;
  const int units = units_per_batch(n0);
  const Table<T> tb = dcnv3_table<T>(gm, units);
  Batch<T> bt(tb.n, true);
  dcnv3_batches<T, true>(gm, tb, units, offset, mask, begin, end, bt, [&](int64_t i0, int64_t i1) {
    const int n = static_cast<int>((i1 - i0) * n0);
    const int padded = pad_batch<T, kC>(bt, n);
    scatter<T, kC>(input, grad_out, grad_input, bt, padded, &deferred);
    finish<T>(bt, n, grad_mask + i0 * n0, grad_offset + 2 * i0 * n0);
  });
}

}  // namespace cpu

#endif  // batched path
