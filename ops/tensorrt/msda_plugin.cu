// bevformer::MultiScaleDeformableAttention plugin (shapes in msda_plugin.h); the kernel is the
// torch extension's msda_forward_kernel (ops/csrc/sampling_kernels.cuh).
#include "msda_plugin.h"

#include <exception>
#include <string>

#include "sampling_kernels.cuh"

namespace bevformer_trt {

namespace {

constexpr char const* kName = "MultiScaleDeformableAttention";

// Input indices.
enum : int32_t { kValue = 0, kShapes, kStarts, kLocations, kWeights, kNbInputs };

bool is_index_type(nvinfer1::DataType t) {
  return t == nvinfer1::DataType::kINT64 || t == nvinfer1::DataType::kINT32;
}

// out[i] = a[i] for i < na, out[na + i] = b[i] for i < nb (int32 -> int64).
__global__ void widen_kernel(int32_t const* a, int64_t na, int32_t const* b, int64_t nb,
                             int64_t* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < na) out[i] = a[i];
  if (i < nb) out[na + i] = b[i];
}

}  // namespace

// ------------------------------------------------------------------------------------ plugin

nvinfer1::IPluginV3* MsdaPlugin::clone() noexcept {
  try {
    return new MsdaPlugin();
  } catch (std::exception const& e) {
    log_error(kName, std::string("clone failed: ") + e.what());
    return nullptr;
  }
}

char const* MsdaPlugin::getPluginName() const noexcept { return kName; }

int32_t MsdaPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in,
                                    int32_t nbInputs,
                                    nvinfer1::DynamicPluginTensorDesc const* /*out*/,
                                    int32_t nbOutputs) noexcept {
  if (nbInputs != kNbInputs || nbOutputs != 1) {
    log_error(kName, "expected 5 inputs (value, spatial_shapes, level_start_index, "
                     "sampling_locations, attention_weights) and 1 output, got " +
                         std::to_string(nbInputs) + " and " + std::to_string(nbOutputs));
    return 1;
  }
  nvinfer1::Dims const& v = in[kValue].desc.dims;
  nvinfer1::Dims const& sh = in[kShapes].desc.dims;
  nvinfer1::Dims const& st = in[kStarts].desc.dims;
  nvinfer1::Dims const& loc = in[kLocations].desc.dims;
  nvinfer1::Dims const& w = in[kWeights].desc.dims;
  bool bad = v.nbDims != 4 || sh.nbDims != 2 || st.nbDims != 1 || loc.nbDims != 6 ||
             w.nbDims != 5;
  if (!bad) {
    int64_t const L = sh.d[0];
    bad = known_and_not(sh.d[1], 2) || known_and_not(st.d[0], L) || known_and_not(loc.d[5], 2) ||
          known_and_not(loc.d[0], v.d[0]) || known_and_not(loc.d[2], v.d[2]) ||
          known_and_not(loc.d[3], L);
    for (int32_t i = 0; i < 5; ++i) bad = bad || known_and_not(w.d[i], loc.d[i]);
  }
  if (bad) {
    log_error(kName, "expected value [B, S, M, C], spatial_shapes [L, 2], level_start_index "
                     "[L], sampling_locations [B, Q, M, L, P, 2], attention_weights "
                     "[B, Q, M, L, P], got " + to_string(v) + ", " + to_string(sh) + ", " +
                         to_string(st) + ", " + to_string(loc) + ", " + to_string(w) +
                         "; check the export");
    return 1;
  }
  return 0;
}

int32_t MsdaPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                                    nvinfer1::DimsExprs const* /*shapeInputs*/,
                                    int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
                                    int32_t nbOutputs,
                                    nvinfer1::IExprBuilder& exprBuilder) noexcept {
  if (nbInputs != kNbInputs || nbOutputs != 1 || inputs[kValue].nbDims != 4 ||
      inputs[kLocations].nbDims != 6) {
    log_error(kName, "expected value [B, S, M, C] and sampling_locations [B, Q, M, L, P, 2]");
    return 1;
  }
  // [B, Q, M*C]: B and Q of the locations, M*C of the value
  outputs[0].nbDims = 3;
  outputs[0].d[0] = inputs[kLocations].d[0];
  outputs[0].d[1] = inputs[kLocations].d[1];
  outputs[0].d[2] = exprBuilder.operation(nvinfer1::DimensionOperation::kPROD,
                                          *inputs[kValue].d[2], *inputs[kValue].d[3]);
  return 0;
}

bool MsdaPlugin::supportsFormatCombination(int32_t pos,
                                           nvinfer1::DynamicPluginTensorDesc const* inOut,
                                           int32_t /*nbInputs*/,
                                           int32_t /*nbOutputs*/) noexcept {
  nvinfer1::PluginTensorDesc const& d = inOut[pos].desc;
  if (d.format != nvinfer1::TensorFormat::kLINEAR) return false;
  switch (pos) {
    case kValue:
      return is_float_type(d.type);
    case kShapes:
      return is_index_type(d.type);
    case kStarts:
      return d.type == inOut[kShapes].desc.type;
    default:  // locations, weights, output
      return d.type == inOut[kValue].desc.type;
  }
}

size_t MsdaPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs,
                                    int32_t nbInputs,
                                    nvinfer1::DynamicPluginTensorDesc const* /*outputs*/,
                                    int32_t /*nbOutputs*/) const noexcept {
  if (nbInputs != kNbInputs || inputs[kShapes].desc.type != nvinfer1::DataType::kINT32) return 0;
  int64_t const levels = inputs[kShapes].max.d[0];
  return static_cast<size_t>(3 * levels) * sizeof(int64_t);  // shapes [L, 2] and starts [L]
}

int32_t MsdaPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
                            nvinfer1::PluginTensorDesc const* outputDesc,
                            void const* const* inputs, void* const* outputs, void* workspace,
                            cudaStream_t stream) noexcept {
  nvinfer1::Dims const& v = inputDesc[kValue].dims;
  nvinfer1::Dims const& loc = inputDesc[kLocations].dims;
  if (volume(outputDesc[0].dims) == 0) return 0;
  int64_t const B = v.d[0], S = v.d[1], M = v.d[2], C = v.d[3];
  int64_t const Q = loc.d[1], L = loc.d[3], P = loc.d[4];
  auto const* shapes = static_cast<int64_t const*>(inputs[kShapes]);
  auto const* starts = static_cast<int64_t const*>(inputs[kStarts]);
  if (inputDesc[kShapes].type == nvinfer1::DataType::kINT32 && L > 0) {
    auto* wide = static_cast<int64_t*>(workspace);
    widen_kernel<<<bevformer_ops::num_blocks(2 * L), bevformer_ops::kThreads, 0, stream>>>(
        static_cast<int32_t const*>(inputs[kShapes]), 2 * L,
        static_cast<int32_t const*>(inputs[kStarts]), L, wide);
    shapes = wide;
    starts = wide + 2 * L;
  }
  bool const known = dispatch_float_type(inputDesc[kValue].type, [&](auto tag) {
    using T = decltype(tag);
    bevformer_ops::launch_msda_forward<T, acc_t<T>>(
        static_cast<T const*>(inputs[kValue]), shapes, starts,
        static_cast<T const*>(inputs[kLocations]), static_cast<T const*>(inputs[kWeights]), B, S,
        Q, M, C, L, P, static_cast<T*>(outputs[0]), stream);
  });
  if (!known) {
    log_error(kName, "unsupported tensor type " +
                         std::to_string(static_cast<int32_t>(inputDesc[kValue].type)));
    return 1;
  }
  cudaError_t const err = cudaGetLastError();
  if (err != cudaSuccess) {
    log_error(kName, std::string("kernel launch failed: ") + cudaGetErrorString(err));
    return 1;
  }
  return 0;
}

nvinfer1::PluginFieldCollection const* MsdaPlugin::getFieldsToSerialize() noexcept {
  return &fc_;
}

// ----------------------------------------------------------------------------------- creator

MsdaPluginCreator::MsdaPluginCreator() : CreatorBase(kName, {}) {}

nvinfer1::IPluginV3* MsdaPluginCreator::createPlugin(char const* /*name*/,
                                                     nvinfer1::PluginFieldCollection const* /*fc*/,
                                                     nvinfer1::TensorRTPhase /*phase*/) noexcept {
  try {
    return new MsdaPlugin();
  } catch (std::exception const& e) {
    log_error(kName, std::string("createPlugin failed: ") + e.what());
    return nullptr;
  }
}

}  // namespace bevformer_trt
