// TensorRT plugin bevformer::MultiScaleDeformableAttention (version "1"): the multi-scale
// deformable attention core of Deformable DETR (arXiv:2010.04159), forward only, with the
// semantics of ops/ms_deform_attn.py (mmcv multi_scale_deformable_attn_pytorch) and the
// kernel msda_forward_kernel of ops/csrc/sampling_kernels.cuh. No fields.
//
//   inputs   value               [B, S, M, C]        S = sum_l h_l * w_l
//            spatial_shapes      [L, 2] int64/int32  (h_l, w_l)
//            level_start_index   [L]    int64/int32  (same type as spatial_shapes)
//            sampling_locations  [B, Q, M, L, P, 2]  (x, y) in [0, 1], pixel centres at
//                                                    (i + 0.5) / w
//            attention_weights   [B, Q, M, L, P]
//   output                       [B, Q, M*C]
//
// All tensors linear (row-major); value, locations, weights and output share one floating
// type: float32, float16 or bfloat16 (accumulation in float32). int32 shapes are widened to
// int64 in the workspace before the kernel.
#pragma once

#include "common.h"

namespace bevformer_trt {

class MsdaPlugin : public PluginBase {
 public:
  MsdaPlugin() = default;

  // IPluginV3
  nvinfer1::IPluginV3* clone() noexcept override;

  // IPluginV3OneCore
  char const* getPluginName() const noexcept override;

  // IPluginV3OneBuild
  int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* out,
                          int32_t nbOutputs) noexcept override;
  int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                          nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs,
                          nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& exprBuilder) noexcept override;
  bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut,
                                 int32_t nbInputs, int32_t nbOutputs) noexcept override;
  size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* outputs,
                          int32_t nbOutputs) const noexcept override;

  // IPluginV3OneRuntime
  int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
                  nvinfer1::PluginTensorDesc const* outputDesc, void const* const* inputs,
                  void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

 private:
  nvinfer1::PluginFieldCollection fc_{0, nullptr};
};

class MsdaPluginCreator : public CreatorBase {
 public:
  MsdaPluginCreator();
  nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;
};

}  // namespace bevformer_trt
