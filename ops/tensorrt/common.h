// Pieces shared by the TensorRT plugins of this folder: the accumulate type of each tensor
// type, plugin-field parsing, logging through the logger TensorRT hands to the library, and
// the IPluginV3 / IPluginCreatorV3One boilerplate (one object implements the core, build and
// runtime capabilities, as in the TensorRT developer guide's IPluginV3 examples).
#pragma once

#include <NvInferRuntime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <string>
#include <vector>

namespace bevformer_trt {

// Namespace of every plugin and creator of this library. The ONNX parser looks plugins up by
// node op_type, attribute plugin_version (default "1") and plugin_namespace (default ""), so
// the empty namespace matches nodes that carry no plugin_namespace attribute.
constexpr char const* kPluginNamespace = "";

// Accumulate type of a tensor element type: float for float, half and bfloat16 (the torch
// extension uses at::opmath_type, which is the same).
template <typename T>
struct AccumulateType {
  using type = float;
};
template <>
struct AccumulateType<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccumulateType<T>::type;

// Floating types the kernels run on: float32, float16, bfloat16.
inline bool is_float_type(nvinfer1::DataType t) {
  return t == nvinfer1::DataType::kFLOAT || t == nvinfer1::DataType::kHALF ||
         t == nvinfer1::DataType::kBF16;
}

// Calls fn(T{}) with T the CUDA element type of `t` (float, __half, __nv_bfloat16); returns
// false for any other type.
template <typename Fn>
bool dispatch_float_type(nvinfer1::DataType t, Fn&& fn) {
  switch (t) {
    case nvinfer1::DataType::kFLOAT:
      fn(float{});
      return true;
    case nvinfer1::DataType::kHALF:
      fn(__half{});
      return true;
    case nvinfer1::DataType::kBF16:
      fn(__nv_bfloat16{});
      return true;
    default:
      return false;
  }
}

// Product of dims [begin, end) of a runtime shape (all dims known).
inline int64_t volume(nvinfer1::Dims const& d, int32_t begin = 0, int32_t end = -1) {
  int64_t v = 1;
  for (int32_t i = begin; i < (end < 0 ? d.nbDims : end); ++i) v *= d.d[i];
  return v;
}

// "[1, 8, ?, 16]" (? for a dimension unknown at build time), for messages.
inline std::string to_string(nvinfer1::Dims const& d) {
  std::string s = "[";
  for (int32_t i = 0; i < d.nbDims; ++i) {
    s += (i ? ", " : "") + (d.d[i] < 0 ? std::string("?") : std::to_string(d.d[i]));
  }
  return s + "]";
}

// True when a build-time dimension and its expected value are both known (not -1) and differ.
inline bool known_and_not(int64_t dim, int64_t expected) {
  return dim >= 0 && expected >= 0 && dim != expected;
}

// Logger of the engine or builder that called into the library (set through setLoggerFinder);
// errors go to stderr when TensorRT did not provide one.
void set_logger_finder(nvinfer1::ILoggerFinder* finder);
void log_error(char const* plugin, std::string const& message);

// Reads scalar plugin fields by name. Integer fields may arrive as kINT8/16/32/64 (the ONNX
// parser passes INT attributes as kINT32), floating ones as kFLOAT16/32/64.
class FieldReader {
 public:
  explicit FieldReader(nvinfer1::PluginFieldCollection const* fc) : fc_(fc) {}
  // false (and an error logged for `plugin`) when the field is missing, not a scalar, or of
  // another kind.
  bool read_int(char const* plugin, char const* name, int32_t& out) const;
  bool read_float(char const* plugin, char const* name, float& out) const;

 private:
  nvinfer1::PluginField const* find(char const* plugin, char const* name) const;
  nvinfer1::PluginFieldCollection const* fc_;
};

// One object implementing IPluginV3 and its three capabilities, with one floating output whose
// type is that of input 0. Subclasses provide the operator: name, shapes, formats, enqueue,
// fields and clone.
class PluginBase : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public nvinfer1::IPluginV3OneBuild,
                   public nvinfer1::IPluginV3OneRuntime {
 public:
  ~PluginBase() override = default;

  // IPluginV3
  nvinfer1::IPluginCapability* getCapabilityInterface(
      nvinfer1::PluginCapabilityType type) noexcept override;

  // IPluginV3OneCore
  char const* getPluginVersion() const noexcept override { return "1"; }
  char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

  // IPluginV3OneBuild
  int32_t getNbOutputs() const noexcept override { return 1; }
  int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
                             nvinfer1::DataType const* inputTypes,
                             int32_t nbInputs) const noexcept override;

  // IPluginV3OneRuntime
  int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
                        nvinfer1::PluginTensorDesc const* out,
                        int32_t nbOutputs) noexcept override;
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;

 protected:
  PluginBase() = default;
  PluginBase(PluginBase const&) = delete;
  PluginBase& operator=(PluginBase const&) = delete;
};

// Creator boilerplate: name, version "1", the library namespace and the advertised fields.
class CreatorBase : public nvinfer1::IPluginCreatorV3One {
 public:
  CreatorBase(char const* name, std::vector<nvinfer1::PluginField> fields);
  char const* getPluginName() const noexcept override { return name_; }
  char const* getPluginVersion() const noexcept override { return "1"; }
  char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }
  nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &fc_; }

 private:
  char const* name_;
  std::vector<nvinfer1::PluginField> fields_;
  nvinfer1::PluginFieldCollection fc_;
};

}  // namespace bevformer_trt
