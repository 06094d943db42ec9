// CUDA launchers of the deformable sampling operators; the arithmetic lives in sampling.h,
// shared with the CPU launchers, and the forward kernels in sampling_kernels.cuh, shared with
// the TensorRT plugins (ops/tensorrt). One thread per output element (query, head/group,
// channel). fp32/fp16/bf16 (and fp64) inputs; accumulation in at::opmath_type (fp32 for half
// types). Backward accumulates the value/input, location/offset and weight/mask gradients with
// atomicAdd into opmath buffers (position and weight gradients summed over a group's channels
// in registers first, see SegmentPut), then casts to the input dtype.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <ATen/ATen.h>

#include <tuple>

#include "sampling.h"
#include "sampling_kernels.cuh"

namespace bevformer_ops {

namespace {

template <typename T>
struct AtomicAdd {
  __device__ __forceinline__ void operator()(T* p, T v) const { atomicAdd(p, v); }
};

// Adds a position/weight gradient that all channels of one (query, head) or (pixel, group)
// contribute to the same address. When the channel count is a power of two up to 32, the
// channels are `seg` consecutive lanes of one warp (threads are laid out channel-fastest and
// 32 is a multiple of seg): their values are summed with warp shuffles and one lane adds the
// sum, instead of seg contended atomics on one address. Otherwise seg = 1 (plain atomics).
template <typename T>
struct SegmentPut {
  T* ptr;
  unsigned lanes;  // the warp's lanes with work (every lane calls this the same number of times)
  int seg;
  int lane_in_seg;
  __device__ __forceinline__ void operator()(int64_t i, T v) const {
    for (int o = seg >> 1; o > 0; o >>= 1) v += __shfl_xor_sync(lanes, v, o);
    if (lane_in_seg == 0 && v != T(0)) atomicAdd(ptr + i, v);
  }
};

__device__ __forceinline__ int segment_width(int64_t channels) {
  return (channels <= 32 && (channels & (channels - 1)) == 0) ? static_cast<int>(channels) : 1;
}

template <typename scalar_t>
__global__ void msda_backward_kernel(int64_t n, const scalar_t* value, const int64_t* shapes,
                                     const int64_t* starts, const scalar_t* loc,
                                     const scalar_t* attn, const scalar_t* grad_out, int64_t S,
                                     int64_t Q, int64_t M, int64_t C, int64_t L, int64_t P,
                                     at::opmath_type<scalar_t>* grad_value,
                                     at::opmath_type<scalar_t>* grad_loc,
                                     at::opmath_type<scalar_t>* grad_attn) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const unsigned lanes = __ballot_sync(0xffffffffu, idx < n);  // before any lane leaves
  if (idx >= n) return;
  const int c = static_cast<int>(idx % C);
  const int64_t m = (idx / C) % M, q = (idx / (C * M)) % Q, b = idx / (C * M * Q);
  const acc_t g = static_cast<acc_t>(grad_out[idx]);
  const int seg = segment_width(C);
  const int lane_in_seg = seg > 1 ? c : 0;
  msda_backward_one<0, scalar_t, acc_t, acc_t>(
      value, shapes, starts, loc, attn, b, q, m, S, Q, M, C, L, P, c, c + 1, &g, grad_value,
      AtomicAdd<acc_t>{}, SegmentPut<acc_t>{grad_loc, lanes, seg, lane_in_seg},
      SegmentPut<acc_t>{grad_attn, lanes, seg, lane_in_seg});
}

template <typename scalar_t>
__global__ void dcnv3_backward_kernel(int64_t n, const scalar_t* input, const scalar_t* offset,
                                      const scalar_t* mask, Dcnv3Geometry gm,
                                      const scalar_t* grad_out,
                                      at::opmath_type<scalar_t>* grad_input,
                                      at::opmath_type<scalar_t>* grad_offset,
                                      at::opmath_type<scalar_t>* grad_mask) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const unsigned lanes = __ballot_sync(0xffffffffu, idx < n);  // before any lane leaves
  if (idx >= n) return;
  const Dcnv3Element e = dcnv3_element(idx, gm);
  const acc_t gval = static_cast<acc_t>(grad_out[idx]);
  const int seg = segment_width(gm.group_channels);
  const int lane_in_seg = seg > 1 ? e.c : 0;
  dcnv3_backward_one<0, scalar_t, acc_t, acc_t>(
      input, offset, mask, gm, e.nb, e.ho, e.wo, e.g, e.c, e.c + 1, &gval, grad_input,
      AtomicAdd<acc_t>{},
      SegmentPut<acc_t>{grad_offset, lanes, seg, lane_in_seg},
      SegmentPut<acc_t>{grad_mask, lanes, seg, lane_in_seg});
}

at::ScalarType opmath_dtype(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

}  // namespace

at::Tensor msda_forward_cuda(const at::Tensor& value, const at::Tensor& shapes,
                             const at::Tensor& starts, const at::Tensor& loc,
                             const at::Tensor& attn) {
  const c10::cuda::CUDAGuard guard(value.device());
  const int64_t B = value.size(0), S = value.size(1), M = value.size(2), C = value.size(3);
  const int64_t Q = loc.size(1), L = loc.size(3), P = loc.size(4);
  auto out = at::empty({B, Q, M * C}, value.options());
  const int64_t n = out.numel();
  if (n == 0) return out.zero_();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(),
                                  "msda_forward_cuda", [&] {
    launch_msda_forward<scalar_t, at::opmath_type<scalar_t>>(
        value.data_ptr<scalar_t>(), shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(),
        loc.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(), B, S, Q, M, C, L, P,
        out.data_ptr<scalar_t>(), stream);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> msda_backward_cuda(
    const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& starts,
    const at::Tensor& loc, const at::Tensor& attn, const at::Tensor& grad_out) {
  const c10::cuda::CUDAGuard guard(value.device());
  const int64_t S = value.size(1), M = value.size(2), C = value.size(3);
  const int64_t Q = loc.size(1), L = loc.size(3), P = loc.size(4);
  const auto acc = value.options().dtype(opmath_dtype(value.scalar_type()));
  auto grad_value = at::zeros(value.sizes(), acc);
  auto grad_loc = at::zeros(loc.sizes(), acc);
  auto grad_attn = at::zeros(attn.sizes(), acc);
  const int64_t n = grad_out.numel();
  if (n > 0) {
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(),
                                    "msda_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      msda_backward_kernel<scalar_t><<<num_blocks(n), kThreads, 0, stream>>>(
          n, value.data_ptr<scalar_t>(), shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(),
          loc.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(), grad_out.data_ptr<scalar_t>(), S,
          Q, M, C, L, P, grad_value.data_ptr<acc_t>(), grad_loc.data_ptr<acc_t>(),
          grad_attn.data_ptr<acc_t>());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {grad_value.to(value.scalar_type()), grad_loc.to(loc.scalar_type()),
          grad_attn.to(attn.scalar_type())};
}

at::Tensor dcnv3_forward_cuda(const at::Tensor& input, const at::Tensor& offset,
                              const at::Tensor& mask, const Dcnv3Geometry& gm) {
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t N = input.size(0);
  auto out = at::empty({N, gm.height_out, gm.width_out,
                        static_cast<int64_t>(gm.group) * gm.group_channels},
                       input.options());
  const int64_t n = out.numel();
  if (n == 0) return out.zero_();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "dcnv3_forward_cuda", [&] {
    launch_dcnv3_forward<scalar_t, at::opmath_type<scalar_t>>(
        input.data_ptr<scalar_t>(), offset.data_ptr<scalar_t>(), mask.data_ptr<scalar_t>(), gm,
        N, out.data_ptr<scalar_t>(), stream);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dcnv3_backward_cuda(
    const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
    const Dcnv3Geometry& gm, const at::Tensor& grad_out) {
  const c10::cuda::CUDAGuard guard(input.device());
  const auto acc = input.options().dtype(opmath_dtype(input.scalar_type()));
  auto grad_input = at::zeros(input.sizes(), acc);
  auto grad_offset = at::zeros(offset.sizes(), acc);
  auto grad_mask = at::zeros(mask.sizes(), acc);
  const int64_t n = grad_out.numel();
  if (n > 0) {
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                    "dcnv3_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      dcnv3_backward_kernel<scalar_t><<<num_blocks(n), kThreads, 0, stream>>>(
          n, input.data_ptr<scalar_t>(), offset.data_ptr<scalar_t>(), mask.data_ptr<scalar_t>(),
          gm, grad_out.data_ptr<scalar_t>(), grad_input.data_ptr<acc_t>(),
          grad_offset.data_ptr<acc_t>(), grad_mask.data_ptr<acc_t>());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {grad_input.to(input.scalar_type()), grad_offset.to(offset.scalar_type()),
          grad_mask.to(mask.scalar_type())};
}

}  // namespace bevformer_ops
