// TensorRT plugin bevformer::DCNv3 (version "1"): the DCNv3 core of InternImage
// (arXiv:2211.05778), forward only, with the semantics of ops/dcnv3.py
// (bevformer_ops::dcnv3, InternImage classification/ops_dcnv3 DCNv3Function) and the kernel
// dcnv3_forward_kernel of ops/csrc/sampling_kernels.cuh. K = kernel_h * kernel_w, minus 1 with
// remove_center.
//
//   inputs   input  [N, H_in, W_in, G*Cg]    NHWC
//            offset [N, H_out, W_out, G*K*2] ((g*K) + p)*2 + {0: x, 1: y}, in pixels
//            mask   [N, H_out, W_out, G*K]   g*K + p
//   output          [N, H_out, W_out, G*Cg]  H_out = (H_in + 2*pad_h - (dilation_h*(kernel_h-1)
//                                            + 1)) / stride_h + 1 (floor), W_out alike
//   fields   kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
//            group (G), group_channels (Cg), remove_center (0/1): int32; offset_scale: float32
//
// All tensors linear (row-major), one floating type for inputs and output: float32, float16
// or bfloat16 (accumulation in float32).
#pragma once

#include <vector>

#include "common.h"

namespace bevformer_trt {

struct Dcnv3Attributes {
  int32_t kernel_h = 0, kernel_w = 0, stride_h = 0, stride_w = 0, pad_h = 0, pad_w = 0;
  int32_t dilation_h = 0, dilation_w = 0, group = 0, group_channels = 0, remove_center = 0;
  float offset_scale = 1.0F;

  // Sampling points per group and output pixel (K).
  int32_t points() const { return kernel_h * kernel_w - remove_center; }
};

class Dcnv3Plugin : public PluginBase {
 public:
  explicit Dcnv3Plugin(Dcnv3Attributes const& attrs);

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

  // IPluginV3OneRuntime
  int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
                  nvinfer1::PluginTensorDesc const* outputDesc, void const* const* inputs,
                  void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

 private:
  Dcnv3Attributes attrs_;
  std::vector<nvinfer1::PluginField> fields_;  // point into attrs_
  nvinfer1::PluginFieldCollection fc_{};
};

class Dcnv3PluginCreator : public CreatorBase {
 public:
  Dcnv3PluginCreator();
  // nullptr (with the reason logged) when a field is missing or out of range.
  nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;
};

}  // namespace bevformer_trt
