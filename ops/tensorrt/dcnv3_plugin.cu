// bevformer::DCNv3 plugin (shapes and fields in dcnv3_plugin.h); the kernel is the torch
// extension's dcnv3_forward_kernel (ops/csrc/sampling_kernels.cuh).
#include "dcnv3_plugin.h"

#include <exception>
#include <string>

#include "sampling_kernels.cuh"

namespace bevformer_trt {

namespace {

constexpr char const* kName = "DCNv3";

using IntMember = int32_t Dcnv3Attributes::*;

struct IntField {
  char const* name;
  IntMember member;
};

// The integer fields in the order of the ONNX node's attributes; offset_scale follows.
constexpr IntField kIntFields[] = {
    {"kernel_h", &Dcnv3Attributes::kernel_h},
    {"kernel_w", &Dcnv3Attributes::kernel_w},
    {"stride_h", &Dcnv3Attributes::stride_h},
    {"stride_w", &Dcnv3Attributes::stride_w},
    {"pad_h", &Dcnv3Attributes::pad_h},
    {"pad_w", &Dcnv3Attributes::pad_w},
    {"dilation_h", &Dcnv3Attributes::dilation_h},
    {"dilation_w", &Dcnv3Attributes::dilation_w},
    {"group", &Dcnv3Attributes::group},
    {"group_channels", &Dcnv3Attributes::group_channels},
    {"remove_center", &Dcnv3Attributes::remove_center},
};
constexpr char const* kOffsetScale = "offset_scale";

// Logs why the attributes are unusable; true when they are usable.
bool validate(Dcnv3Attributes const& a) {
  std::string err;
  if (a.kernel_h < 1 || a.kernel_w < 1 || a.stride_h < 1 || a.stride_w < 1 ||
      a.dilation_h < 1 || a.dilation_w < 1 || a.group < 1 || a.group_channels < 1) {
    err = "kernel, stride, dilation, group and group_channels must be >= 1";
  } else if (a.pad_h < 0 || a.pad_w < 0) {
    err = "pad_h and pad_w must be >= 0";
  } else if (a.remove_center != 0 && a.remove_center != 1) {
    err = "remove_center must be 0 or 1";
  } else if (a.remove_center == 1 && (a.kernel_h != a.kernel_w || a.kernel_h % 2 == 0)) {
    err = "remove_center needs a square odd kernel";
  }
  if (err.empty()) return true;
  log_error(kName, err + " (got kernel " + std::to_string(a.kernel_h) + "x" +
                       std::to_string(a.kernel_w) + ", stride " + std::to_string(a.stride_h) +
                       "x" + std::to_string(a.stride_w) + ", pad " + std::to_string(a.pad_h) +
                       "x" + std::to_string(a.pad_w) + ", dilation " +
                       std::to_string(a.dilation_h) + "x" + std::to_string(a.dilation_w) +
                       ", group " + std::to_string(a.group) + ", group_channels " +
                       std::to_string(a.group_channels) + ", remove_center " +
                       std::to_string(a.remove_center) + ")");
  return false;
}

// H_out (or W_out) from H_in, the usual convolution formula; -1 when H_in is unknown.
int64_t output_size(int64_t in, int32_t kernel, int32_t stride, int32_t pad, int32_t dilation) {
  if (in < 0) return -1;
  return (in + 2 * pad - (static_cast<int64_t>(dilation) * (kernel - 1) + 1)) / stride + 1;
}

}  // namespace

// ------------------------------------------------------------------------------------ plugin

Dcnv3Plugin::Dcnv3Plugin(Dcnv3Attributes const& attrs) : attrs_(attrs) {
  for (IntField const& f : kIntFields) {
    fields_.emplace_back(f.name, &(attrs_.*f.member), nvinfer1::PluginFieldType::kINT32, 1);
  }
  fields_.emplace_back(kOffsetScale, &attrs_.offset_scale, nvinfer1::PluginFieldType::kFLOAT32,
                       1);
  fc_.nbFields = static_cast<int32_t>(fields_.size());
  fc_.fields = fields_.data();
}

nvinfer1::IPluginV3* Dcnv3Plugin::clone() noexcept {
  try {
    return new Dcnv3Plugin(attrs_);
  } catch (std::exception const& e) {
    log_error(kName, std::string("clone failed: ") + e.what());
    return nullptr;
  }
}

char const* Dcnv3Plugin::getPluginName() const noexcept { return kName; }

int32_t Dcnv3Plugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in,
                                     int32_t nbInputs,
                                     nvinfer1::DynamicPluginTensorDesc const* /*out*/,
                                     int32_t nbOutputs) noexcept {
  if (nbInputs != 3 || nbOutputs != 1) {
    log_error(kName, "expected 3 inputs (input, offset, mask) and 1 output, got " +
                         std::to_string(nbInputs) + " and " + std::to_string(nbOutputs));
    return 1;
  }
  nvinfer1::Dims const& x = in[0].desc.dims;
  nvinfer1::Dims const& off = in[1].desc.dims;
  nvinfer1::Dims const& msk = in[2].desc.dims;
  if (x.nbDims != 4 || off.nbDims != 4 || msk.nbDims != 4) {
    log_error(kName, "input, offset and mask must be 4-D (NHWC), got " + to_string(x) + ", " +
                         to_string(off) + " and " + to_string(msk));
    return 1;
  }
  int64_t const G = attrs_.group, K = attrs_.points();
  int64_t const h_out = output_size(x.d[1], attrs_.kernel_h, attrs_.stride_h, attrs_.pad_h,
                                    attrs_.dilation_h);
  int64_t const w_out = output_size(x.d[2], attrs_.kernel_w, attrs_.stride_w, attrs_.pad_w,
                                    attrs_.dilation_w);
  bool bad = known_and_not(x.d[3], G * attrs_.group_channels) ||
             known_and_not(off.d[3], G * K * 2) || known_and_not(msk.d[3], G * K) ||
             (x.d[1] >= 0 && h_out < 1) || (x.d[2] >= 0 && w_out < 1);
  for (nvinfer1::Dims const* d : {&off, &msk}) {
    bad = bad || known_and_not(d->d[0], x.d[0]) || known_and_not(d->d[1], h_out) ||
          known_and_not(d->d[2], w_out);
  }
  if (bad) {
    log_error(kName, "expected input [N, H_in, W_in, " +
                         std::to_string(G * attrs_.group_channels) + "], offset [N, H_out, " +
                         "W_out, " + std::to_string(G * K * 2) + "], mask [N, H_out, W_out, " +
                         std::to_string(G * K) + "] with H_out = " + std::to_string(h_out) +
                         ", W_out = " + std::to_string(w_out) + " >= 1 (from H_in, W_in and " +
                         "the node's group, group_channels, kernel, stride, pad, dilation), " +
                         "got input " + to_string(x) + ", offset " + to_string(off) + ", mask " +
                         to_string(msk) + "; check the export");
    return 1;
  }
  return 0;
}

int32_t Dcnv3Plugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                                     nvinfer1::DimsExprs const* /*shapeInputs*/,
                                     int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
                                     int32_t nbOutputs,
                                     nvinfer1::IExprBuilder& exprBuilder) noexcept {
  if (nbInputs != 3 || nbOutputs != 1 || inputs[0].nbDims != 4) {
    log_error(kName, "expected inputs (input [N, H_in, W_in, G*Cg], offset, mask) and 1 output");
    return 1;
  }
  using Op = nvinfer1::DimensionOperation;
  // size_out = floor((size_in + 2*pad - dilation*(kernel-1) - 1) / stride) + 1
  auto size_out = [&](nvinfer1::IDimensionExpr const& in, int32_t kernel, int32_t stride,
                      int32_t pad, int32_t dilation) {
    int64_t const shift = 2 * static_cast<int64_t>(pad) - static_cast<int64_t>(dilation) *
                                                              (kernel - 1) - 1;
    nvinfer1::IDimensionExpr const* num =
        exprBuilder.operation(Op::kSUM, in, *exprBuilder.constant(shift));
    nvinfer1::IDimensionExpr const* quot =
        exprBuilder.operation(Op::kFLOOR_DIV, *num, *exprBuilder.constant(stride));
    return exprBuilder.operation(Op::kSUM, *quot, *exprBuilder.constant(1));
  };
  outputs[0].nbDims = 4;
  outputs[0].d[0] = inputs[0].d[0];
  outputs[0].d[1] = size_out(*inputs[0].d[1], attrs_.kernel_h, attrs_.stride_h, attrs_.pad_h,
                             attrs_.dilation_h);
  outputs[0].d[2] = size_out(*inputs[0].d[2], attrs_.kernel_w, attrs_.stride_w, attrs_.pad_w,
                             attrs_.dilation_w);
  outputs[0].d[3] = inputs[0].d[3];
  return 0;
}

bool Dcnv3Plugin::supportsFormatCombination(int32_t pos,
                                            nvinfer1::DynamicPluginTensorDesc const* inOut,
                                            int32_t /*nbInputs*/,
                                            int32_t /*nbOutputs*/) noexcept {
  nvinfer1::PluginTensorDesc const& d = inOut[pos].desc;
  if (d.format != nvinfer1::TensorFormat::kLINEAR) return false;
  if (pos == 0) return is_float_type(d.type);
  return d.type == inOut[0].desc.type;  // offset, mask and output: the type of input
}

int32_t Dcnv3Plugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
                             nvinfer1::PluginTensorDesc const* outputDesc,
                             void const* const* inputs, void* const* outputs,
                             void* /*workspace*/, cudaStream_t stream) noexcept {
  nvinfer1::Dims const& x = inputDesc[0].dims;
  nvinfer1::Dims const& y = outputDesc[0].dims;
  if (volume(y) == 0) return 0;
  bevformer_ops::Dcnv3Geometry gm;
  gm.kernel_h = attrs_.kernel_h;
  gm.kernel_w = attrs_.kernel_w;
  gm.stride_h = attrs_.stride_h;
  gm.stride_w = attrs_.stride_w;
  gm.pad_h = attrs_.pad_h;
  gm.pad_w = attrs_.pad_w;
  gm.dilation_h = attrs_.dilation_h;
  gm.dilation_w = attrs_.dilation_w;
  gm.group = attrs_.group;
  gm.group_channels = attrs_.group_channels;
  gm.remove_center = attrs_.remove_center;
  gm.height_in = x.d[1];
  gm.width_in = x.d[2];
  gm.height_out = y.d[1];
  gm.width_out = y.d[2];
  gm.offset_scale = attrs_.offset_scale;
  bool const known = dispatch_float_type(inputDesc[0].type, [&](auto tag) {
    using T = decltype(tag);
    bevformer_ops::launch_dcnv3_forward<T, acc_t<T>>(
        static_cast<T const*>(inputs[0]), static_cast<T const*>(inputs[1]),
        static_cast<T const*>(inputs[2]), gm, x.d[0], static_cast<T*>(outputs[0]), stream);
  });
  if (!known) {
    log_error(kName, "unsupported tensor type " +
                         std::to_string(static_cast<int32_t>(inputDesc[0].type)));
    return 1;
  }
  cudaError_t const err = cudaGetLastError();
  if (err != cudaSuccess) {
    log_error(kName, std::string("kernel launch failed: ") + cudaGetErrorString(err));
    return 1;
  }
  return 0;
}

nvinfer1::PluginFieldCollection const* Dcnv3Plugin::getFieldsToSerialize() noexcept {
  return &fc_;
}

// ----------------------------------------------------------------------------------- creator

namespace {
std::vector<nvinfer1::PluginField> dcnv3_field_names() {
  std::vector<nvinfer1::PluginField> names;
  for (IntField const& f : kIntFields) {
    names.emplace_back(f.name, nullptr, nvinfer1::PluginFieldType::kINT32, 1);
  }
  names.emplace_back(kOffsetScale, nullptr, nvinfer1::PluginFieldType::kFLOAT32, 1);
  return names;
}
}  // namespace

Dcnv3PluginCreator::Dcnv3PluginCreator() : CreatorBase(kName, dcnv3_field_names()) {}

nvinfer1::IPluginV3* Dcnv3PluginCreator::createPlugin(char const* /*name*/,
                                                      nvinfer1::PluginFieldCollection const* fc,
                                                      nvinfer1::TensorRTPhase /*phase*/) noexcept {
  FieldReader const reader(fc);
  Dcnv3Attributes attrs;
  for (IntField const& f : kIntFields) {
    if (!reader.read_int(kName, f.name, attrs.*f.member)) return nullptr;
  }
  if (!reader.read_float(kName, kOffsetScale, attrs.offset_scale)) return nullptr;
  if (!validate(attrs)) return nullptr;
  try {
    return new Dcnv3Plugin(attrs);
  } catch (std::exception const& e) {
    log_error(kName, std::string("createPlugin failed: ") + e.what());
    return nullptr;
  }
}

}  // namespace bevformer_trt
