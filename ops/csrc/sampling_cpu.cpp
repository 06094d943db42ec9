// CPU kernels and Python bindings of the deformable sampling operators: a batched,
// vectorised path for 8/16/32/64 channels per head/group (every InternImage and BEVFormer
// configuration) below, the per-point functions of sampling.h (shared with the CUDA launchers)
// for other channel counts, and the ATen parallel_for (OpenMP) launchers.
//
// Forward: one task per range of queries (output pixels), all heads/groups.
// Backward, without atomics:
//   ms_deform_attn: one task per (batch, group of heads); the value gradient of a head is only
//     touched by that head's queries, so every gradient element has one writer and no extra
//     memory is needed. A task takes all heads when the batch alone balances the threads
//     (whole pixels read and written: ~1.4x faster than a head per task), else the fewest
//     head groups that do.
//   dcnv3: output pixels split into one contiguous range per thread (sequential reads of
//     offset/mask/grad_out). Batched path: each range owns the band of input rows from its
//     first output row to the next range's and adds into grad_input directly; the points whose
//     kernel reaches outside the band (a few rows at each boundary) are kept in a list and
//     added after all ranges. Per-point path: the first range accumulates into grad_input,
//     the others into per-thread buffers summed at the end. (Splitting by (batch, group)
//     instead reads offset/mask with a stride and measured 2-3x slower.)
// Large outputs are allocated with a transparent-huge-page hint (new_output).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#if defined(__linux__)
#include <sys/mman.h>  // madvise
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

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

#include "sampling_cpu_batched.h"  // the batched path (SAMPLING_CPU_BATCHED where built)

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

// Calls fn(std::integral_constant<int, kC>) with kC = channels for the channel counts of the
// batched path (when every tensor has fewer than 2^31 elements: its offsets are 32-bit) and
// kC = 0 (per-point path, runtime channel count) otherwise.
template <typename Fn>
void dispatch_channels(int64_t channels, int64_t max_numel, Fn&& fn) {
#ifdef SAMPLING_CPU_BATCHED
  if (max_numel < (int64_t(1) << 31)) {
    switch (channels) {
      case 8: return fn(std::integral_constant<int, 8>{});
      case 16: return fn(std::integral_constant<int, 16>{});
      case 32: return fn(std::integral_constant<int, 32>{});
      case 64: return fn(std::integral_constant<int, 64>{});
      default: break;
    }
  }
#endif
  return fn(std::integral_constant<int, 0>{});
}

int64_t max_numel(std::initializer_list<at::Tensor> ts) {
  int64_t n = 0;
  for (const auto& t : ts) n = std::max(n, t.numel());
  return n;
}

// A new CPU tensor; from 8 MiB on, its memory is advised for transparent huge pages (Linux,
// used where THP is in "madvise" or "always" mode). The first-touch page faults of fresh
// memory are a large part of these operators' time: on the measured VM, 2 MiB pages halved
// the time to write 130 MB of new memory and made the decoder-sized backward 3x faster.
at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
#ifdef MADV_HUGEPAGE
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t end = begin + static_cast<uintptr_t>(t.nbytes());
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1), last = end & ~(kHuge - 1);
  if (t.nbytes() >= (size_t(8) << 20) && last > first) {
    madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);  // a hint; errors ignored
  }
#endif
  return t;
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
  auto out = new_output({B, Q, M * C}, value.options());
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "msda_forward_cpu", [&] {
    const scalar_t* v = value.data_ptr<scalar_t>();
    const int64_t* sh = shapes.data_ptr<int64_t>();
    const int64_t* st = starts.data_ptr<int64_t>();
    const scalar_t* lc = loc.data_ptr<scalar_t>();
    const scalar_t* at = attn.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    dispatch_channels(C, max_numel({value, loc, out}), [&](auto kc) {
      constexpr int kC = decltype(kc)::value;
      at::parallel_for(0, B * Q, 16, [&](int64_t begin, int64_t end) {
        if constexpr (kC > 0) {
#ifdef SAMPLING_CPU_BATCHED
          cpu::msda_forward_rows<scalar_t, kC>(v, sh, st, lc, at, S, Q, M, L, P, begin, end, o);
#endif
        } else {
          for (int64_t bq = begin; bq < end; ++bq) {
            for (int64_t m = 0; m < M; ++m) {
              scalar_t* dst = o + (bq * M + m) * C;
              std::fill(dst, dst + C, scalar_t(0));
              msda_forward_one<0, scalar_t, scalar_t>(v, sh, st, lc, at, bq / Q, bq % Q, m, S, Q,
                                                      M, C, L, P, 0, static_cast<int>(C), dst);
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
  auto grad_value = new_output(value.sizes(), value.options());  // zeroed below
  auto grad_loc = new_output(loc.sizes(), loc.options());
  auto grad_attn = new_output(attn.sizes(), attn.options());
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
    dispatch_channels(C, max_numel({value, loc, grad_out}), [&](auto kc) {
      constexpr int kC = decltype(kc)::value;
      // Tasks: (batch, group of heads). All heads in one task read and write whole pixels
      // (measured ~1.4x faster than one or four of eight heads); heads are split into the
      // fewest groups that balance the threads (a multiple of the thread count, or at least
      // four tasks per thread). The per-point path keeps one head per task.
      const int64_t threads = at::get_num_threads();
      int64_t groups = M;
      if constexpr (kC > 0) {
        for (int64_t g = 1; g <= M; ++g) {
          if (M % g == 0 && ((B * g) % threads == 0 || B * g >= 4 * threads)) {
            groups = g;
            break;
          }
        }
      }
      const int64_t heads = M / groups;
      if (heads < M) grad_value.zero_();  // strided slices: one contiguous (parallel) fill
      at::parallel_for(0, B * groups, 1, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          const int64_t b = t / groups, m0 = (t % groups) * heads, m1 = m0 + heads;
          if (heads == M) {  // first touch of value[b] by its owner
            std::fill(gv + b * S * M * C, gv + (b + 1) * S * M * C, scalar_t(0));
          }
          if constexpr (kC > 0) {
#ifdef SAMPLING_CPU_BATCHED
            cpu::msda_backward_heads<scalar_t, kC>(v, sh, st, lc, at, go, S, Q, M, L, P, b, m0,
                                                   m1, gv, grad_loc.data_ptr<scalar_t>(),
                                                   grad_attn.data_ptr<scalar_t>());
#endif
          } else {
            for (int64_t m = m0; m < m1; ++m) {
              for (int64_t q = 0; q < Q; ++q) {
                msda_backward_one<0, scalar_t, scalar_t, scalar_t>(
                    v, sh, st, lc, at, b, q, m, S, Q, M, C, L, P, 0, static_cast<int>(C),
                    go + ((b * Q + q) * M + m) * C, gv, PlainAdd<scalar_t>{}, put_loc, put_attn);
              }
            }
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
  auto out = new_output({N, gm.height_out, gm.width_out, G * Cg}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "dcnv3_forward_cpu", [&] {
    const scalar_t* x = input.data_ptr<scalar_t>();
    const scalar_t* of = offset.data_ptr<scalar_t>();
    const scalar_t* mk = mask.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    dispatch_channels(Cg, max_numel({input, offset, out}), [&](auto kc) {
      constexpr int kC = decltype(kc)::value;
      const int64_t total = N * HW;
      if constexpr (kC > 0) {
#ifdef SAMPLING_CPU_BATCHED
        at::parallel_for(0, total, 64, [&](int64_t begin, int64_t end) {
          cpu::dcnv3_forward_pixels<scalar_t, kC>(x, of, mk, gm, begin, end, o);
        });
#endif
      } else {
        // Blocks of kBlock consecutive output pixels, group-major inside a block: the taps of
        // one group over a block touch a few KiB of input, which stays in L1/L2.
        const int64_t blocks = (total + kBlock - 1) / kBlock;
        at::parallel_for(0, blocks, 4, [&](int64_t begin, int64_t end) {
          for (int64_t blk = begin; blk < end; ++blk) {
            const int64_t i0 = blk * kBlock, i1 = std::min(total, i0 + kBlock);
            const BlockCoords bc(i0, i1, HW, gm.width_out);
            for (int64_t g = 0; g < G; ++g) {
              for (int64_t i = i0; i < i1; ++i) {
                scalar_t* dst = o + (i * G + g) * Cg;
                std::fill(dst, dst + Cg, scalar_t(0));
                dcnv3_forward_one<0, scalar_t, scalar_t>(x, of, mk, gm, bc.n[i - i0],
                                                         bc.ho[i - i0], bc.wo[i - i0], g, 0,
                                                         static_cast<int>(Cg), dst);
              }
            }
          }
        });
      }
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
  auto grad_input = new_output(input.sizes(), input.options());  // zeroed by its owners below
  auto grad_offset = new_output(offset.sizes(), offset.options());
  auto grad_mask = new_output(mask.sizes(), mask.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "dcnv3_backward_cpu", [&] {
    const scalar_t* x = input.data_ptr<scalar_t>();
    const scalar_t* of = offset.data_ptr<scalar_t>();
    const scalar_t* mk = mask.data_ptr<scalar_t>();
    const scalar_t* go = grad_out.data_ptr<scalar_t>();
    scalar_t* gx = grad_input.data_ptr<scalar_t>();
    const Store<scalar_t> put_off{grad_offset.data_ptr<scalar_t>()};
    const Store<scalar_t> put_mask{grad_mask.data_ptr<scalar_t>()};
    // Output pixels are split into `chunks` contiguous ranges, one per thread (reads stay
    // sequential).
    const int64_t total = N * HW;
    const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(),
                                                                  total / 256));
    dispatch_channels(Cg, max_numel({input, offset, grad_out}), [&](auto kc) {
      constexpr int kC = decltype(kc)::value;
      if constexpr (kC > 0) {
#ifdef SAMPLING_CPU_BATCHED
        // Chunk t owns the band of input rows from the first input row of its first output
        // row to that of the next chunk, zeroes it and adds into it directly; points with a
        // corner outside its band are deferred and added after all chunks (few: those whose
        // kernel reaches across a band boundary).
        const int64_t row_elems = gm.width_in * G * Cg;
        const int cy = (gm.dilation_h * (gm.kernel_h - 1)) / 2;
        auto band_start = [&](int64_t t) -> int64_t {  // flat input row (n * H_in + y)
          if (t == 0) return 0;
          if (t == chunks) return N * gm.height_in;
          const int64_t i = total * t / chunks, n = i / HW, ho = (i % HW) / gm.width_out;
          const int64_t y = ho * gm.stride_h - gm.pad_h + cy;
          return n * gm.height_in + std::min<int64_t>(std::max<int64_t>(y, 0), gm.height_in);
        };
        std::vector<cpu::Deferred<scalar_t>> deferred(chunks);
        at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
          for (int64_t t = begin; t < end; ++t) {
            const int64_t lo = band_start(t) * row_elems, hi = band_start(t + 1) * row_elems;
            std::fill(gx + lo, gx + hi, scalar_t(0));  // first touch by its owner
            deferred[t].lo = static_cast<int32_t>(lo);
            deferred[t].hi = static_cast<int32_t>(hi);
            cpu::dcnv3_backward_pixels<scalar_t, kC>(
                x, of, mk, go, gm, total * t / chunks, total * (t + 1) / chunks, gx,
                grad_offset.data_ptr<scalar_t>(), grad_mask.data_ptr<scalar_t>(), deferred[t]);
          }
        });
        for (const auto& d : deferred) cpu::scatter_deferred<scalar_t, kC>(go, gx, d);
#endif
      } else {
        // chunk 0 accumulates into grad_input, chunk t > 0 into its own buffer, summed at the
        // end
        at::Tensor buffers;
        if (chunks > 1) buffers = at::empty({chunks - 1, input.numel()}, input.options());
        scalar_t* bufs = chunks > 1 ? buffers.data_ptr<scalar_t>() : nullptr;
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
                  dcnv3_backward_one<0, scalar_t, scalar_t, scalar_t>(
                      x, of, mk, gm, bc.n[i - i0], bc.ho[i - i0], bc.wo[i - i0], g, 0,
                      static_cast<int>(Cg), go + (i * G + g) * Cg, target,
                      PlainAdd<scalar_t>{}, put_off, put_mask);
                }
              }
            }
          }
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
      }
    });
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
