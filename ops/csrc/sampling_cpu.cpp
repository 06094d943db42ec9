// CPU launchers (ATen parallel_for, OpenMP) and Python bindings of the deformable sampling
// operators; the arithmetic lives in sampling.h, shared with the CUDA launchers.
//
// Forward: one task per query (output pixel) with all heads/groups, channels innermost (SIMD,
// compile-time channel counts for 8/16/32/64 so the channel loops unroll).
// Backward, without atomics:
//   ms_deform_attn: one task per (batch, head); the value gradient of a head is only touched
//     by that head's queries, so every gradient element has one writer and no extra memory
//     is needed.
//   dcnv3: output pixels split into one contiguous range per thread (sequential reads of
//     offset/mask/grad_out); the first range accumulates into grad_input, the others into
//     per-thread buffers that are summed at the end. (Splitting by (batch, group) instead
//     needs no buffers but reads offset/mask with a stride and measured 2-3x slower.)
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <tuple>
#include <type_traits>

#include "sampling.h"

namespace bevformer_ops {

#ifdef WITH_CUDA
at::Tensor msda_forward_cuda(const at::Tensor& value, const at::Tensor& shapes,
                             const at::Tensor& starts, const at::Tensor& loc,
                             const at::Tensor& attn);
std::tuple<at::Tensor, at::Tensor, at::Tensor> msda_backward_cuda(
    const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& starts,
    const at::Tensor& loc, const at::Tensor& attn, const at::Tensor& grad_out);
at::Tensor dcnv3_forward_cuda(const at::Tensor& input, const at::Tensor& offset,
                              const at::Tensor& mask, const Dcnv3Geometry& gm);
std::tuple<at::Tensor, at::Tensor, at::Tensor> dcnv3_backward_cuda(
    const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
    const Dcnv3Geometry& gm, const at::Tensor& grad_out);
#endif

namespace {

template <typename T>
struct PlainAdd {
  inline void operator()(T* p, T v) const { *p += v; }
};

template <typename T>
struct Store {
  T* ptr;
  inline void operator()(int64_t i, T v) const { ptr[i] = v; }
};

constexpr int64_t kBlock = 16;  // output pixels per DCNv3 work block

// (batch, row, column) of the output pixels [i0, i1) of a block, computed once per block.
struct BlockCoords {
  int64_t n[kBlock], ho[kBlock], wo[kBlock];
  BlockCoords(int64_t i0, int64_t i1, int64_t HW, int64_t W) {
    for (int64_t i = i0; i < i1; ++i) {
      n[i - i0] = i / HW;
      ho[i - i0] = (i % HW) / W;
      wo[i - i0] = i % W;
    }
  }
};

// Calls fn(std::integral_constant<int, kC>) with kC = channels for the common channel counts
// (the channel loops then unroll completely) and kC = 0 (runtime count) otherwise.
template <typename Fn>
void dispatch_channels(int64_t channels, Fn&& fn) {
  switch (channels) {
    case 8: return fn(std::integral_constant<int, 8>{});
    case 16: return fn(std::integral_constant<int, 16>{});
    case 32: return fn(std::integral_constant<int, 32>{});
    case 64: return fn(std::integral_constant<int, 64>{});
    default: return fn(std::integral_constant<int, 0>{});
  }
}

void check_inputs(std::initializer_list<at::Tensor> ts) {
  for (const auto& t : ts) {
    TORCH_CHECK(t.is_contiguous(), "bevformer_ops: expected contiguous tensors");
  }
}

// ----------------------------------------------------------------------------- ms_deform_attn

at::Tensor msda_forward_cpu(const at::Tensor& value, const at::Tensor& shapes,
                            const at::Tensor& starts, const at::Tensor& loc,
                            const at::Tensor& attn) {
  check_inputs({value, shapes, starts, loc, attn});
  const int64_t B = value.size(0), S = value.size(1), M = value.size(2), C = value.size(3);
  const int64_t Q = loc.size(1), L = loc.size(3), P = loc.size(4);
  // Every output element is written exactly once below (no separate zero-fill pass).
  auto out = at::empty({B, Q, M * C}, value.options());
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "msda_forward_cpu", [&] {
    const scalar_t* v = value.data_ptr<scalar_t>();
    const int64_t* sh = shapes.data_ptr<int64_t>();
    const int64_t* st = starts.data_ptr<int64_t>();
    const scalar_t* lc = loc.data_ptr<scalar_t>();
    const scalar_t* at = attn.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    dispatch_channels(C, [&](auto kc) {
      constexpr int kC = decltype(kc)::value;
      at::parallel_for(0, B * Q, 16, [&](int64_t begin, int64_t end) {
        for (int64_t bq = begin; bq < end; ++bq) {
          const int64_t b = bq / Q, q = bq % Q;
          for (int64_t m = 0; m < M; ++m) {
            scalar_t* dst = o + (bq * M + m) * C;
            if constexpr (kC > 0) {
              scalar_t acc[kC > 0 ? kC : 1] = {};  // accumulate in registers, store once
              msda_forward_one<kC, scalar_t, scalar_t>(v, sh, st, lc, at, b, q, m, S, Q, M, C, L,
                                                       P, 0, kC, acc);
              for (int c = 0; c < kC; ++c) dst[c] = acc[c];
            } else {
              std::fill(dst, dst + C, scalar_t(0));
              msda_forward_one<kC, scalar_t, scalar_t>(v, sh, st, lc, at, b, q, m, S, Q, M, C, L,
                                                       P, 0, static_cast<int>(C), dst);
            }
          }
        }
      });
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> msda_backward_cpu(
    const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& starts,
    const at::Tensor& loc, const at::Tensor& attn, const at::Tensor& grad_out) {
  check_inputs({value, shapes, starts, loc, attn, grad_out});
  const int64_t B = value.size(0), S = value.size(1), M = value.size(2), C = value.size(3);
  const int64_t Q = loc.size(1), L = loc.size(3), P = loc.size(4);
  auto grad_value = at::empty_like(value);  // zeroed by the owning (batch, head) task below
  auto grad_loc = at::empty_like(loc);
  auto grad_attn = at::empty_like(attn);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "msda_backward_cpu", [&] {
    const scalar_t* v = value.data_ptr<scalar_t>();
    const int64_t* sh = shapes.data_ptr<int64_t>();
    const int64_t* st = starts.data_ptr<int64_t>();
    const scalar_t* lc = loc.data_ptr<scalar_t>();
    const scalar_t* at = attn.data_ptr<scalar_t>();
    const scalar_t* go = grad_out.data_ptr<scalar_t>();
    scalar_t* gv = grad_value.data_ptr<scalar_t>();
    const Store<scalar_t> put_loc{grad_loc.data_ptr<scalar_t>()};
    const Store<scalar_t> put_attn{grad_attn.data_ptr<scalar_t>()};
    dispatch_channels(C, [&](auto kc) {
      constexpr int kC = decltype(kc)::value;
      at::parallel_for(0, B * M, 1, [&](int64_t begin, int64_t end) {
        for (int64_t bm = begin; bm < end; ++bm) {
          const int64_t b = bm / M, m = bm % M;
          for (int64_t i = 0; i < S; ++i) {
            scalar_t* row = gv + ((b * S + i) * M + m) * C;
            std::fill(row, row + C, scalar_t(0));
          }
          for (int64_t q = 0; q < Q; ++q) {
            msda_backward_one<kC, scalar_t, scalar_t, scalar_t>(
                v, sh, st, lc, at, b, q, m, S, Q, M, C, L, P, 0, static_cast<int>(C),
                go + ((b * Q + q) * M + m) * C, gv, PlainAdd<scalar_t>{}, put_loc, put_attn);
          }
        }
      });
    });
  });
  return {grad_value, grad_loc, grad_attn};
}

// ------------------------------------------------------------------------------------- dcnv3

at::Tensor dcnv3_forward_cpu(const at::Tensor& input, const at::Tensor& offset,
                             const at::Tensor& mask, const Dcnv3Geometry& gm) {
  check_inputs({input, offset, mask});
  const int64_t N = input.size(0), G = gm.group, Cg = gm.group_channels;
  const int64_t HW = gm.height_out * gm.width_out;
  // Every output element is written exactly once below (no separate zero-fill pass).
  auto out = at::empty({N, gm.height_out, gm.width_out, G * Cg}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "dcnv3_forward_cpu", [&] {
    const scalar_t* x = input.data_ptr<scalar_t>();
    const scalar_t* of = offset.data_ptr<scalar_t>();
    const scalar_t* mk = mask.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    dispatch_channels(Cg, [&](auto kc) {
      constexpr int kC = decltype(kc)::value;
      // Blocks of kBlock consecutive output pixels, group-major inside a block: the taps of
      // one group over a block touch a few KiB of input, which stays in L1/L2 even when a
      // pixel holds many groups (InternImage-XL: 48 groups x 16 channels = 3 KiB per pixel).
      const int64_t total = N * HW, blocks = (total + kBlock - 1) / kBlock;
      at::parallel_for(0, blocks, 4, [&](int64_t begin, int64_t end) {
        for (int64_t blk = begin; blk < end; ++blk) {
          const int64_t i0 = blk * kBlock, i1 = std::min(total, i0 + kBlock);
          const BlockCoords bc(i0, i1, HW, gm.width_out);
          for (int64_t g = 0; g < G; ++g) {
            for (int64_t i = i0; i < i1; ++i) {
              const int64_t n = bc.n[i - i0], ho = bc.ho[i - i0], wo = bc.wo[i - i0];
              scalar_t* dst = o + (i * G + g) * Cg;
              if constexpr (kC > 0) {
                scalar_t acc[kC > 0 ? kC : 1] = {};  // accumulate in registers, store once
                dcnv3_forward_one<kC, scalar_t, scalar_t>(x, of, mk, gm, n, ho, wo, g, 0, kC,
                                                          acc);
                for (int c = 0; c < kC; ++c) dst[c] = acc[c];
              } else {
                std::fill(dst, dst + Cg, scalar_t(0));
                dcnv3_forward_one<kC, scalar_t, scalar_t>(x, of, mk, gm, n, ho, wo, g, 0,
                                                          static_cast<int>(Cg), dst);
              }
            }
          }
        }
      });
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dcnv3_backward_cpu(
    const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
    const Dcnv3Geometry& gm, const at::Tensor& grad_out) {
  check_inputs({input, offset, mask, grad_out});
  const int64_t N = input.size(0), G = gm.group, Cg = gm.group_channels;
  const int64_t HW = gm.height_out * gm.width_out;
  auto grad_input = at::empty_like(input);  // zeroed by its owning thread below
  auto grad_offset = at::empty_like(offset);
  auto grad_mask = at::empty_like(mask);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "dcnv3_backward_cpu", [&] {
    const scalar_t* x = input.data_ptr<scalar_t>();
    const scalar_t* of = offset.data_ptr<scalar_t>();
    const scalar_t* mk = mask.data_ptr<scalar_t>();
    const scalar_t* go = grad_out.data_ptr<scalar_t>();
    scalar_t* gx = grad_input.data_ptr<scalar_t>();
    const Store<scalar_t> put_off{grad_offset.data_ptr<scalar_t>()};
    const Store<scalar_t> put_mask{grad_mask.data_ptr<scalar_t>()};
    // Output pixels are split into `chunks` contiguous ranges (reads stay sequential); chunk 0
    // accumulates into grad_input, chunk t > 0 into its own buffer, summed at the end.
    const int64_t total = N * HW;
    const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(),
                                                                  total / 256));
    at::Tensor buffers;
    if (chunks > 1) buffers = at::empty({chunks - 1, input.numel()}, input.options());
    scalar_t* bufs = chunks > 1 ? buffers.data_ptr<scalar_t>() : nullptr;
    dispatch_channels(Cg, [&](auto kc) {
      constexpr int kC = decltype(kc)::value;
      at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          scalar_t* target = t == 0 ? gx : bufs + (t - 1) * input.numel();
          std::fill(target, target + input.numel(), scalar_t(0));  // first touch by its owner
          const int64_t first = total * t / chunks, last = total * (t + 1) / chunks;
          for (int64_t i0 = first; i0 < last; i0 += kBlock) {  // blocks as in the forward
            const int64_t i1 = std::min(last, i0 + kBlock);
            const BlockCoords bc(i0, i1, HW, gm.width_out);
            for (int64_t g = 0; g < G; ++g) {
              for (int64_t i = i0; i < i1; ++i) {
                const int64_t n = bc.n[i - i0], ho = bc.ho[i - i0], wo = bc.wo[i - i0];
                dcnv3_backward_one<kC, scalar_t, scalar_t, scalar_t>(
                    x, of, mk, gm, n, ho, wo, g, 0, static_cast<int>(Cg),
                    go + (i * G + g) * Cg, target, PlainAdd<scalar_t>{}, put_off, put_mask);
              }
            }
          }
        }
      });
    });
    if (chunks > 1) {
      const int64_t numel = input.numel();
      at::parallel_for(0, numel, 1 << 14, [&](int64_t begin, int64_t end) {
        for (int64_t t = 0; t < chunks - 1; ++t) {
          const scalar_t* b = bufs + t * numel;
          SAMPLING_SIMD
          for (int64_t k = begin; k < end; ++k) gx[k] += b[k];
        }
      });
    }
  });
  return {grad_input, grad_offset, grad_mask};
}

Dcnv3Geometry make_geometry(const at::Tensor& input, const at::Tensor& offset, int64_t kernel_h,
                            int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h,
                            int64_t pad_w, int64_t dilation_h, int64_t dilation_w, int64_t group,
                            int64_t group_channels, double offset_scale, bool remove_center) {
  Dcnv3Geometry gm;
  gm.kernel_h = static_cast<int>(kernel_h);
  gm.kernel_w = static_cast<int>(kernel_w);
  gm.stride_h = static_cast<int>(stride_h);
  gm.stride_w = static_cast<int>(stride_w);
  gm.pad_h = static_cast<int>(pad_h);
  gm.pad_w = static_cast<int>(pad_w);
  gm.dilation_h = static_cast<int>(dilation_h);
  gm.dilation_w = static_cast<int>(dilation_w);
  gm.group = static_cast<int>(group);
  gm.group_channels = static_cast<int>(group_channels);
  gm.remove_center = remove_center ? 1 : 0;
  gm.height_in = input.size(1);
  gm.width_in = input.size(2);
  gm.height_out = offset.size(1);
  gm.width_out = offset.size(2);
  gm.offset_scale = offset_scale;
  return gm;
}

// ------------------------------------------------------------------------- device dispatch

at::Tensor msda_forward(const at::Tensor& value, const at::Tensor& shapes,
                        const at::Tensor& starts, const at::Tensor& loc, const at::Tensor& attn) {
  if (value.is_cuda()) {
#ifdef WITH_CUDA
    return msda_forward_cuda(value, shapes, starts, loc, attn);
#else
    TORCH_CHECK(false, "bevformer_ops was built without CUDA; rebuild with CUDA available");
#endif
  }
  return msda_forward_cpu(value, shapes, starts, loc, attn);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> msda_backward(
    const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& starts,
    const at::Tensor& loc, const at::Tensor& attn, const at::Tensor& grad_out) {
  if (value.is_cuda()) {
#ifdef WITH_CUDA
    return msda_backward_cuda(value, shapes, starts, loc, attn, grad_out);
#else
    TORCH_CHECK(false, "bevformer_ops was built without CUDA; rebuild with CUDA available");
#endif
  }
  return msda_backward_cpu(value, shapes, starts, loc, attn, grad_out);
}

at::Tensor dcnv3_forward(const at::Tensor& input, const at::Tensor& offset,
                         const at::Tensor& mask, int64_t kernel_h, int64_t kernel_w,
                         int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                         int64_t dilation_h, int64_t dilation_w, int64_t group,
                         int64_t group_channels, double offset_scale, bool remove_center) {
  const auto gm = make_geometry(input, offset, kernel_h, kernel_w, stride_h, stride_w, pad_h,
                                pad_w, dilation_h, dilation_w, group, group_channels,
                                offset_scale, remove_center);
  if (input.is_cuda()) {
#ifdef WITH_CUDA
    return dcnv3_forward_cuda(input, offset, mask, gm);
#else
    TORCH_CHECK(false, "bevformer_ops was built without CUDA; rebuild with CUDA available");
#endif
  }
  return dcnv3_forward_cpu(input, offset, mask, gm);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dcnv3_backward(
    const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask, int64_t kernel_h,
    int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t group, int64_t group_channels,
    double offset_scale, bool remove_center, const at::Tensor& grad_out) {
  const auto gm = make_geometry(input, offset, kernel_h, kernel_w, stride_h, stride_w, pad_h,
                                pad_w, dilation_h, dilation_w, group, group_channels,
                                offset_scale, remove_center);
  if (input.is_cuda()) {
#ifdef WITH_CUDA
    return dcnv3_backward_cuda(input, offset, mask, gm, grad_out);
#else
    TORCH_CHECK(false, "bevformer_ops was built without CUDA; rebuild with CUDA available");
#endif
  }
  return dcnv3_backward_cpu(input, offset, mask, gm, grad_out);
}

}  // namespace

}  // namespace bevformer_ops

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Deformable sampling kernels: multi-scale deformable attention and DCNv3";
  m.def("msda_forward", &bevformer_ops::msda_forward);
  m.def("msda_backward", &bevformer_ops::msda_backward);
  m.def("dcnv3_forward", &bevformer_ops::dcnv3_forward);
  m.def("dcnv3_backward", &bevformer_ops::dcnv3_backward);
#ifdef WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
