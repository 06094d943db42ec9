// Shared kernel body of the deformable sampling operators (CPU and CUDA).
//
// Every function here is an inline function usable from host and device code. The CPU
// launcher (sampling_cpu.cpp, OpenMP) calls them with a full channel range [c0, c1) and the
// CUDA launcher (sampling_cuda.cu) with one channel per thread, so the arithmetic is written
// once. Both operators reduce to the same primitive: bilinear sampling of a [h, w] image whose
// pixels are `pix_stride` elements apart, with zeros outside the image.
//
//   ms_deform_attn (Deformable DETR, arXiv:2010.04159): value [B, S, H, C], one image per
//     (batch, level, head), pixel stride H*C; location (x, y) in [0, 1] -> pixel
//     coordinates (x*w - 0.5, y*h - 0.5) (grid_sample, align_corners=False).
//   dcnv3 (InternImage, arXiv:2211.05778): input [N, H_in, W_in, G*Cg], one image per
//     (batch, group), pixel stride G*Cg; location = regular kernel grid + offsets, in pixels
//     (InternImage classification/ops_dcnv3/src/cuda/dcnv3_im2col_cuda.cuh).
#pragma once

#include <cmath>
#include <cstdint>

// SAMPLING_SIMD marks channel loops without reductions as vectorisable on the CPU; loops with
// channel reductions are vectorised by the compiler (the CPU build allows reassociation).
#if defined(__CUDACC__) || defined(__HIPCC__)
#define SAMPLING_HD __host__ __device__ __forceinline__
#define SAMPLING_SIMD
#else
#define SAMPLING_HD inline
#define SAMPLING_SIMD _Pragma("omp simd")
#endif

namespace bevformer_ops {

template <typename acc_t>
SAMPLING_HD acc_t floor_(acc_t v) {
#if defined(__CUDA_ARCH__)
  return floor(v);
#else
  return std::floor(v);
#endif
}

// A bilinear sample at pixel coordinates (x, y) (pixel centres at integers) of an image with h
// rows, w columns and pixels `pix_stride` elements apart. Corner k = 0..3 is (y0, x0),
// (y0, x0+1), (y0+1, x0), (y0+1, x0+1); `interior` means all four lie inside the image, and
// then `off` is the element offset of corner 0.
template <typename acc_t>
struct Sample {
  int x0, y0;
  acc_t lx, ly;
  bool interior;
  int64_t off;
};

// Returns false when (x, y) lies outside (-1, w) x (-1, h): every corner is outside and the
// sample is zero (the same test as the official kernels).
template <typename acc_t>
SAMPLING_HD bool bilinear_setup(acc_t x, acc_t y, int h, int w, int64_t pix_stride,
                                Sample<acc_t>& s) {
  if (!(x > acc_t(-1) && y > acc_t(-1) && x < acc_t(w) && y < acc_t(h))) return false;
  const acc_t xf = floor_(x), yf = floor_(y);
  s.x0 = static_cast<int>(xf);
  s.y0 = static_cast<int>(yf);
  s.lx = x - xf;
  s.ly = y - yf;
  s.interior = s.x0 >= 0 && s.y0 >= 0 && s.x0 + 1 < w && s.y0 + 1 < h;
  s.off = (static_cast<int64_t>(s.y0) * w + s.x0) * pix_stride;
  return true;
}

// Element offset of corner k, or -1 when it lies outside the image.
template <typename acc_t>
SAMPLING_HD int64_t corner_offset(const Sample<acc_t>& s, int k, int h, int w,
                                  int64_t pix_stride) {
  const int xk = s.x0 + (k & 1), yk = s.y0 + (k >> 1);
  if (xk < 0 || yk < 0 || xk >= w || yk >= h) return -1;
  return (static_cast<int64_t>(yk) * w + xk) * pix_stride;
}

// Channel loops run over n = c1 - c0 channels, or over the compile-time count kC when kC > 0
// (the CPU launchers instantiate the common channel counts so the loops unroll completely).
//
// out[c - c0] += weight * bilinear(img)[c] for c in [c0, c1) (out points at channel c0).
template <int kC, typename scalar_t, typename acc_t>
SAMPLING_HD void sample_accumulate(const scalar_t* __restrict__ img, const Sample<acc_t>& s,
                                   int h, int w, int64_t pix_stride, acc_t weight, int c0,
                                   int c1, acc_t* __restrict__ out) {
  const int n = kC > 0 ? kC : c1 - c0;
  const acc_t hx = acc_t(1) - s.lx, hy = acc_t(1) - s.ly;
  const acc_t cw[4] = {weight * hy * hx, weight * hy * s.lx, weight * s.ly * hx,
                       weight * s.ly * s.lx};
  if (s.interior) {
    // The common case: one pass over the channels for all four corners.
    const scalar_t* __restrict__ v0 = img + s.off + c0;
    const scalar_t* __restrict__ v1 = v0 + pix_stride;
    const scalar_t* __restrict__ v2 = v0 + w * pix_stride;
    const scalar_t* __restrict__ v3 = v2 + pix_stride;
    SAMPLING_SIMD
    for (int c = 0; c < n; ++c) {
      out[c] += cw[0] * static_cast<acc_t>(v0[c]) + cw[1] * static_cast<acc_t>(v1[c]) +
                cw[2] * static_cast<acc_t>(v2[c]) + cw[3] * static_cast<acc_t>(v3[c]);
    }
    return;
  }
  for (int k = 0; k < 4; ++k) {
    const int64_t off = corner_offset(s, k, h, w, pix_stride);
    if (off < 0) continue;
    const scalar_t* __restrict__ v = img + off + c0;
    const acc_t wk = cw[k];
    SAMPLING_SIMD
    for (int c = 0; c < n; ++c) out[c] += wk * static_cast<acc_t>(v[c]);
  }
}

// Gradient contributions of one bilinear sample s = weight * bilinear(img)[c], c in [c0, c1),
// given the output gradient gout[c - c0] (gout points at channel c0):
//   grad_img[corner + c] += weight * w_k * gout        (through AddOp, plain or atomic)
//   d_weight = sum_c gout * bilinear(img)[c]
//   d_x, d_y = sum_c gout * weight * d bilinear / d(x, y)   (pixel coordinates).
template <int kC, typename scalar_t, typename acc_t, typename grad_t, typename AddOp>
SAMPLING_HD void sample_backward(const scalar_t* __restrict__ img, const Sample<acc_t>& s,
                                 int h, int w, int64_t pix_stride, acc_t weight, int c0, int c1,
                                 const acc_t* __restrict__ gout, grad_t* __restrict__ grad_img,
                                 AddOp add, acc_t& d_weight, acc_t& d_x, acc_t& d_y) {
  const int n = kC > 0 ? kC : c1 - c0;
  const acc_t lx = s.lx, ly = s.ly, hx = acc_t(1) - lx, hy = acc_t(1) - ly;
  const acc_t cw[4] = {hy * hx, hy * lx, ly * hx, ly * lx};
  if (s.interior) {
    // One pass over the channels: per channel the sampled value and its x/y derivatives.
    const scalar_t* __restrict__ v0 = img + s.off + c0;
    const scalar_t* __restrict__ v1 = v0 + pix_stride;
    const scalar_t* __restrict__ v2 = v0 + w * pix_stride;
    const scalar_t* __restrict__ v3 = v2 + pix_stride;
    grad_t* __restrict__ g0 = grad_img + s.off + c0;
    grad_t* __restrict__ g1 = g0 + pix_stride;
    grad_t* __restrict__ g2 = g0 + w * pix_stride;
    grad_t* __restrict__ g3 = g2 + pix_stride;
    const acc_t w0 = weight * cw[0], w1 = weight * cw[1], w2 = weight * cw[2],
                w3 = weight * cw[3];
    acc_t dv = 0, dx = 0, dy = 0;
    for (int c = 0; c < n; ++c) {
      const acc_t g = gout[c];
      const acc_t a0 = static_cast<acc_t>(v0[c]), a1 = static_cast<acc_t>(v1[c]);
      const acc_t a2 = static_cast<acc_t>(v2[c]), a3 = static_cast<acc_t>(v3[c]);
      dv += g * (cw[0] * a0 + cw[1] * a1 + cw[2] * a2 + cw[3] * a3);
      dx += g * (hy * (a1 - a0) + ly * (a3 - a2));
      dy += g * (hx * (a2 - a0) + lx * (a3 - a1));
      add(g0 + c, w0 * g);
      add(g1 + c, w1 * g);
      add(g2 + c, w2 * g);
      add(g3 + c, w3 * g);
    }
    d_weight = dv;
    d_x = weight * dx;
    d_y = weight * dy;
    return;
  }
  acc_t dot[4] = {0, 0, 0, 0};
  for (int k = 0; k < 4; ++k) {
    const int64_t off = corner_offset(s, k, h, w, pix_stride);
    if (off < 0) continue;
    const scalar_t* __restrict__ v = img + off + c0;
    grad_t* __restrict__ gv = grad_img + off + c0;
    const acc_t wk = weight * cw[k];
    acc_t d = 0;
    for (int c = 0; c < n; ++c) {
      const acc_t g = gout[c];
      d += g * static_cast<acc_t>(v[c]);
      add(gv + c, wk * g);
    }
    dot[k] = d;
  }
  d_weight = cw[0] * dot[0] + cw[1] * dot[1] + cw[2] * dot[2] + cw[3] * dot[3];
  d_x = weight * (hy * (dot[1] - dot[0]) + ly * (dot[3] - dot[2]));
  d_y = weight * (hx * (dot[2] - dot[0]) + lx * (dot[3] - dot[1]));
}

// ---------------------------------------------------------------------------------------------
// Multi-scale deformable attention, one (batch b, query q, head m) and channels [c0, c1).
//   value [B, S, M, C], shapes [L, 2] (h, w), starts [L], loc [B, Q, M, L, P, 2],
//   attn [B, Q, M, L, P], out [C] slice of [B, Q, M*C].
// ---------------------------------------------------------------------------------------------
template <int kC, typename scalar_t, typename acc_t>
SAMPLING_HD void msda_forward_one(const scalar_t* __restrict__ value,
                                  const int64_t* __restrict__ shapes,
                                  const int64_t* __restrict__ starts,
                                  const scalar_t* __restrict__ loc,
                                  const scalar_t* __restrict__ attn, int64_t b, int64_t q,
                                  int64_t m, int64_t S, int64_t Q, int64_t M, int64_t C,
                                  int64_t L, int64_t P, int c0, int c1, acc_t* __restrict__ out) {
  const int64_t pix_stride = M * C;
  const int64_t lp0 = ((b * Q + q) * M + m) * L * P;  // index of (b, q, m, 0, 0)
  for (int64_t l = 0; l < L; ++l) {
    const int h = static_cast<int>(shapes[2 * l]), w = static_cast<int>(shapes[2 * l + 1]);
    const scalar_t* img = value + ((b * S + starts[l]) * M + m) * C;
    for (int64_t p = 0; p < P; ++p) {
      const int64_t i = lp0 + l * P + p;
      const acc_t x = static_cast<acc_t>(loc[2 * i]) * w - acc_t(0.5);
      const acc_t y = static_cast<acc_t>(loc[2 * i + 1]) * h - acc_t(0.5);
      Sample<acc_t> sm;
      if (!bilinear_setup<acc_t>(x, y, h, w, pix_stride, sm)) continue;
      sample_accumulate<kC, scalar_t, acc_t>(img, sm, h, w, pix_stride,
                                             static_cast<acc_t>(attn[i]), c0, c1, out);
    }
  }
}

// Backward of msda_forward_one. gout holds the output gradient for channels [c0, c1).
// Writes (CPU, full channel range) or adds (CUDA, through GradOut) the gradients of loc and
// attn for this (b, q, m), and adds the value gradient through AddOp.
template <int kC, typename scalar_t, typename acc_t, typename grad_t, typename AddOp,
          typename GradOut>
SAMPLING_HD void msda_backward_one(const scalar_t* __restrict__ value,
                                   const int64_t* __restrict__ shapes,
                                   const int64_t* __restrict__ starts,
                                   const scalar_t* __restrict__ loc,
                                   const scalar_t* __restrict__ attn, int64_t b, int64_t q,
                                   int64_t m, int64_t S, int64_t Q, int64_t M, int64_t C,
                                   int64_t L, int64_t P, int c0, int c1,
                                   const acc_t* __restrict__ gout, grad_t* __restrict__ grad_value,
                                   AddOp add, GradOut put_loc, GradOut put_attn) {
  const int64_t pix_stride = M * C;
  const int64_t lp0 = ((b * Q + q) * M + m) * L * P;
  for (int64_t l = 0; l < L; ++l) {
    const int h = static_cast<int>(shapes[2 * l]), w = static_cast<int>(shapes[2 * l + 1]);
    const int64_t base = ((b * S + starts[l]) * M + m) * C;
    for (int64_t p = 0; p < P; ++p) {
      const int64_t i = lp0 + l * P + p;
      const acc_t x = static_cast<acc_t>(loc[2 * i]) * w - acc_t(0.5);
      const acc_t y = static_cast<acc_t>(loc[2 * i + 1]) * h - acc_t(0.5);
      Sample<acc_t> sm;
      acc_t d_attn = 0, d_x = 0, d_y = 0;
      if (bilinear_setup<acc_t>(x, y, h, w, pix_stride, sm)) {
        sample_backward<kC, scalar_t, acc_t, grad_t, AddOp>(
            value + base, sm, h, w, pix_stride, static_cast<acc_t>(attn[i]), c0, c1, gout,
            grad_value + base, add, d_attn, d_x, d_y);
      }
      put_attn(i, d_attn);
      put_loc(2 * i, d_x * w);  // d x_pix / d loc_x = w
      put_loc(2 * i + 1, d_y * h);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// DCNv3 core, one (batch n, output row ho, output column wo, group g), channels [c0, c1).
//   input [N, H_in, W_in, G*Cg], offset [N, H_out, W_out, G*K*2], mask [N, H_out, W_out, G*K].
// ---------------------------------------------------------------------------------------------
struct Dcnv3Geometry {
  int kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int group, group_channels, remove_center;
  int64_t height_in, width_in, height_out, width_out;
  double offset_scale;
};

// Calls fn(p, x, y) for every kernel tap p of output pixel (ho, wo), with (x, y) the sampling
// point in input pixel coordinates (tap order p = i * kernel_h + j, i over x, j over y).
template <typename scalar_t, typename acc_t, typename Fn>
SAMPLING_HD void dcnv3_for_each_tap(const Dcnv3Geometry& gm, const scalar_t* __restrict__ off,
                                    int64_t ho, int64_t wo, Fn fn) {
  const int cx = (gm.dilation_w * (gm.kernel_w - 1)) / 2;
  const int cy = (gm.dilation_h * (gm.kernel_h - 1)) / 2;
  const acc_t s = static_cast<acc_t>(gm.offset_scale);
  const acc_t x0 = static_cast<acc_t>(wo * gm.stride_w - gm.pad_w + cx) - cx * s;
  const acc_t y0 = static_cast<acc_t>(ho * gm.stride_h - gm.pad_h + cy) - cy * s;
  const int ci = gm.kernel_w / 2, cj = gm.kernel_h / 2;
  int p = 0;
  for (int i = 0; i < gm.kernel_w; ++i) {
    for (int j = 0; j < gm.kernel_h; ++j) {
      if (gm.remove_center && i == ci && j == cj) continue;
      const acc_t x = x0 + (i * gm.dilation_w + static_cast<acc_t>(off[2 * p])) * s;
      const acc_t y = y0 + (j * gm.dilation_h + static_cast<acc_t>(off[2 * p + 1])) * s;
      fn(p, x, y);
      ++p;
    }
  }
}

template <int kC, typename scalar_t, typename acc_t>
SAMPLING_HD void dcnv3_forward_one(const scalar_t* __restrict__ input,
                                   const scalar_t* __restrict__ offset,
                                   const scalar_t* __restrict__ mask, const Dcnv3Geometry& gm,
                                   int64_t n, int64_t ho, int64_t wo, int64_t g, int c0, int c1,
                                   acc_t* __restrict__ out) {
  const int64_t K = static_cast<int64_t>(gm.kernel_h) * gm.kernel_w - gm.remove_center;
  const int64_t pix_stride = static_cast<int64_t>(gm.group) * gm.group_channels;
  const int64_t qi = (n * gm.height_out + ho) * gm.width_out + wo;  // output pixel index
  const scalar_t* img = input + n * gm.height_in * gm.width_in * pix_stride + g * gm.group_channels;
  const scalar_t* off = offset + (qi * gm.group + g) * K * 2;
  const scalar_t* msk = mask + (qi * gm.group + g) * K;
  const int h = static_cast<int>(gm.height_in), w = static_cast<int>(gm.width_in);
  dcnv3_for_each_tap<scalar_t, acc_t>(gm, off, ho, wo, [&](int p, acc_t x, acc_t y) {
    Sample<acc_t> sm;
    if (!bilinear_setup<acc_t>(x, y, h, w, pix_stride, sm)) return;
    sample_accumulate<kC, scalar_t, acc_t>(img, sm, h, w, pix_stride,
                                           static_cast<acc_t>(msk[p]), c0, c1, out);
  });
}

// Backward of dcnv3_forward_one; gradient of offset/mask entry i goes to put_off / put_mask
// with i the flat index into offset / mask.
template <int kC, typename scalar_t, typename acc_t, typename grad_t, typename AddOp,
          typename GradOut>
SAMPLING_HD void dcnv3_backward_one(const scalar_t* __restrict__ input,
                                    const scalar_t* __restrict__ offset,
                                    const scalar_t* __restrict__ mask, const Dcnv3Geometry& gm,
                                    int64_t n, int64_t ho, int64_t wo, int64_t g, int c0, int c1,
                                    const acc_t* __restrict__ gout,
                                    grad_t* __restrict__ grad_input, AddOp add,
                                    GradOut put_off, GradOut put_mask) {
  const int64_t K = static_cast<int64_t>(gm.kernel_h) * gm.kernel_w - gm.remove_center;
  const int64_t pix_stride = static_cast<int64_t>(gm.group) * gm.group_channels;
  const int64_t qi = (n * gm.height_out + ho) * gm.width_out + wo;
  const int64_t base = n * gm.height_in * gm.width_in * pix_stride + g * gm.group_channels;
  const int64_t off0 = (qi * gm.group + g) * K;  // index of (n, ho, wo, g, 0) in mask
  const scalar_t* msk = mask + off0;
  const acc_t s = static_cast<acc_t>(gm.offset_scale);
  const int h = static_cast<int>(gm.height_in), w = static_cast<int>(gm.width_in);
  dcnv3_for_each_tap<scalar_t, acc_t>(gm, offset + off0 * 2, ho, wo, [&](int p, acc_t x,
                                                                          acc_t y) {
    Sample<acc_t> sm;
    acc_t d_mask = 0, d_x = 0, d_y = 0;
    if (bilinear_setup<acc_t>(x, y, h, w, pix_stride, sm)) {
      sample_backward<kC, scalar_t, acc_t, grad_t, AddOp>(
          input + base, sm, h, w, pix_stride, static_cast<acc_t>(msk[p]), c0, c1, gout,
          grad_input + base, add, d_mask, d_x, d_y);
    }
    put_mask(off0 + p, d_mask);
    put_off(2 * (off0 + p), d_x * s);  // d x_pix / d offset_x = offset_scale
    put_off(2 * (off0 + p) + 1, d_y * s);
  });
}

}  // namespace bevformer_ops
