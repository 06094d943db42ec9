// CUDA forward kernels of the deformable sampling operators, shared by the torch extension
// (sampling_cuda.cu) and the TensorRT plugins (ops/tensorrt). No ATen dependency: the scalar
// type and the accumulate type are template parameters (the extension passes
// at::opmath_type<scalar_t>, the plugins float for float/half/bfloat16). The arithmetic is in
// sampling.h; here one thread computes one output element (one channel of one query and head,
// or of one output pixel and group).
//
//   msda_forward_kernel  (Deformable DETR, arXiv:2010.04159; ops/ms_deform_attn.py)
//     value [B, S, M, C], shapes [L, 2] int64 (h, w), starts [L] int64,
//     loc [B, Q, M, L, P, 2] (x, y) in [0, 1], attn [B, Q, M, L, P] -> out [B, Q, M*C]
//   dcnv3_forward_kernel (InternImage, arXiv:2211.05778; ops/dcnv3.py; the semantics of
//     InternImage classification/ops_dcnv3/src/cuda/dcnv3_im2col_cuda.cuh)
//     input [N, H_in, W_in, G*Cg], offset [N, H_out, W_out, G*K*2], mask [N, H_out, W_out, G*K]
//     -> out [N, H_out, W_out, G*Cg]
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "sampling.h"

namespace bevformer_ops {

constexpr int kThreads = 256;  // threads per block of every sampling kernel

inline int64_t num_blocks(int64_t n) { return (n + kThreads - 1) / kThreads; }

// n = B*Q*M*C threads, thread idx = ((b * Q + q) * M + m) * C + c, the flat index of out.
template <typename scalar_t, typename acc_t>
__global__ void msda_forward_kernel(int64_t n, const scalar_t* value, const int64_t* shapes,
                                    const int64_t* starts, const scalar_t* loc,
                                    const scalar_t* attn, int64_t S, int64_t Q, int64_t M,
                                    int64_t C, int64_t L, int64_t P, scalar_t* out) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= n) return;
  const int c = static_cast<int>(idx % C);
  const int64_t m = (idx / C) % M, q = (idx / (C * M)) % Q, b = idx / (C * M * Q);
  acc_t acc = 0;
  msda_forward_one<0, scalar_t, acc_t>(value, shapes, starts, loc, attn, b, q, m, S, Q, M, C, L,
                                       P, c, c + 1, &acc);
  out[idx] = static_cast<scalar_t>(acc);
}

// Output element of DCNv3 thread idx = (((nb * H_out + ho) * W_out + wo) * G + g) * Cg + c,
// the flat index of out [N, H_out, W_out, G*Cg] (forward and backward kernels).
struct Dcnv3Element {
  int64_t nb, ho, wo, g;
  int c;
};

__device__ __forceinline__ Dcnv3Element dcnv3_element(int64_t idx, const Dcnv3Geometry& gm) {
  const int64_t Cg = gm.group_channels;
  const int64_t pix = idx / (Cg * gm.group);
  return {pix / (gm.width_out * gm.height_out), (pix / gm.width_out) % gm.height_out,
          pix % gm.width_out, (idx / Cg) % gm.group, static_cast<int>(idx % Cg)};
}

// n = N*H_out*W_out*G*Cg threads, one per output element (dcnv3_element).
template <typename scalar_t, typename acc_t>
__global__ void dcnv3_forward_kernel(int64_t n, const scalar_t* input, const scalar_t* offset,
                                     const scalar_t* mask, Dcnv3Geometry gm, scalar_t* out) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= n) return;
  const Dcnv3Element e = dcnv3_element(idx, gm);
  acc_t acc = 0;
  dcnv3_forward_one<0, scalar_t, acc_t>(input, offset, mask, gm, e.nb, e.ho, e.wo, e.g, e.c,
                                        e.c + 1, &acc);
  out[idx] = static_cast<scalar_t>(acc);
}

// Launches msda_forward_kernel on `stream` for out [B, Q, M*C] (n = B*Q*M*C > 0 elements).
// The caller checks cudaGetLastError().
template <typename scalar_t, typename acc_t>
void launch_msda_forward(const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                         const scalar_t* loc, const scalar_t* attn, int64_t B, int64_t S,
                         int64_t Q, int64_t M, int64_t C, int64_t L, int64_t P, scalar_t* out,
                         cudaStream_t stream) {
  const int64_t n = B * Q * M * C;
  msda_forward_kernel<scalar_t, acc_t><<<num_blocks(n), kThreads, 0, stream>>>(
      n, value, shapes, starts, loc, attn, S, Q, M, C, L, P, out);
}

// Launches dcnv3_forward_kernel on `stream` for out [N, H_out, W_out, G*Cg] (N > 0 images; the
// geometry holds the rest). The caller checks cudaGetLastError().
template <typename scalar_t, typename acc_t>
void launch_dcnv3_forward(const scalar_t* input, const scalar_t* offset, const scalar_t* mask,
                          const Dcnv3Geometry& gm, int64_t N, scalar_t* out,
                          cudaStream_t stream) {
  const int64_t n = N * gm.height_out * gm.width_out * gm.group * gm.group_channels;
  dcnv3_forward_kernel<scalar_t, acc_t><<<num_blocks(n), kThreads, 0, stream>>>(
      n, input, offset, mask, gm, out);
}

}  // namespace bevformer_ops
