// Shared plugin pieces declared in common.h.
#include "common.h"

#include <atomic>
#include <cstdio>
#include <utility>

namespace bevformer_trt {

namespace {
std::atomic<nvinfer1::ILoggerFinder*> g_logger_finder{nullptr};
}  // namespace

void set_logger_finder(nvinfer1::ILoggerFinder* finder) { g_logger_finder.store(finder); }

void log_error(char const* plugin, std::string const& message) {
  std::string const text = std::string("bevformer TensorRT plugin ") + plugin + ": " + message;
  nvinfer1::ILoggerFinder* finder = g_logger_finder.load();
  nvinfer1::ILogger* logger = finder != nullptr ? finder->findLogger() : nullptr;
  if (logger != nullptr) {
    logger->log(nvinfer1::ILogger::Severity::kERROR, text.c_str());
  } else {
    std::fprintf(stderr, "[E] %s\n", text.c_str());
  }
}

// ------------------------------------------------------------------------------- FieldReader

nvinfer1::PluginField const* FieldReader::find(char const* plugin, char const* name) const {
  for (int32_t i = 0; fc_ != nullptr && i < fc_->nbFields; ++i) {
    nvinfer1::PluginField const& f = fc_->fields[i];
    if (f.name == nullptr || std::string(f.name) != name) continue;
    if (f.data == nullptr || f.length != 1) {
      log_error(plugin, std::string("field '") + name + "' must hold one value, got " +
                            std::to_string(f.length) + "; pass it as a scalar node attribute");
      return nullptr;
    }
    return &f;
  }
  log_error(plugin, std::string("field '") + name +
                        "' is missing; the node needs every attribute listed in ops/README.md");
  return nullptr;
}

bool FieldReader::read_int(char const* plugin, char const* name, int32_t& out) const {
  nvinfer1::PluginField const* f = find(plugin, name);
  if (f == nullptr) return false;
  switch (f->type) {
    case nvinfer1::PluginFieldType::kINT8:
      out = *static_cast<int8_t const*>(f->data);
      return true;
    case nvinfer1::PluginFieldType::kINT16:
      out = *static_cast<int16_t const*>(f->data);
      return true;
    case nvinfer1::PluginFieldType::kINT32:
      out = *static_cast<int32_t const*>(f->data);
      return true;
    case nvinfer1::PluginFieldType::kINT64:
      out = static_cast<int32_t>(*static_cast<int64_t const*>(f->data));
      return true;
    default:
      log_error(plugin, std::string("field '") + name + "' must be an integer (kINT32), got type " +
                            std::to_string(static_cast<int32_t>(f->type)));
      return false;
  }
}

bool FieldReader::read_float(char const* plugin, char const* name, float& out) const {
  nvinfer1::PluginField const* f = find(plugin, name);
  if (f == nullptr) return false;
  switch (f->type) {
    case nvinfer1::PluginFieldType::kFLOAT16:
      out = __half2float(*static_cast<__half const*>(f->data));
      return true;
    case nvinfer1::PluginFieldType::kFLOAT32:
      out = *static_cast<float const*>(f->data);
      return true;
    case nvinfer1::PluginFieldType::kFLOAT64:
      out = static_cast<float>(*static_cast<double const*>(f->data));
      return true;
    default:
      log_error(plugin, std::string("field '") + name + "' must be a float (kFLOAT32), got type " +
                            std::to_string(static_cast<int32_t>(f->type)));
      return false;
  }
}

// -------------------------------------------------------------------------------- PluginBase

nvinfer1::IPluginCapability* PluginBase::getCapabilityInterface(
    nvinfer1::PluginCapabilityType type) noexcept {
  switch (type) {
    case nvinfer1::PluginCapabilityType::kCORE:
      return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD:
      return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME:
      return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
  }
  return nullptr;
}

int32_t PluginBase::getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
                                       nvinfer1::DataType const* inputTypes,
                                       int32_t nbInputs) const noexcept {
  if (nbOutputs != 1 || nbInputs < 1) return 1;
  outputTypes[0] = inputTypes[0];
  return 0;
}

int32_t PluginBase::onShapeChange(nvinfer1::PluginTensorDesc const* /*in*/, int32_t /*nbInputs*/,
                                  nvinfer1::PluginTensorDesc const* /*out*/,
                                  int32_t /*nbOutputs*/) noexcept {
  return 0;  // shapes are read from the descriptors in enqueue
}

nvinfer1::IPluginV3* PluginBase::attachToContext(
    nvinfer1::IPluginResourceContext* /*context*/) noexcept {
  return clone();  // no per-context resources
}

// ------------------------------------------------------------------------------- CreatorBase

CreatorBase::CreatorBase(char const* name, std::vector<nvinfer1::PluginField> fields)
    : name_(name), fields_(std::move(fields)) {
  fc_.nbFields = static_cast<int32_t>(fields_.size());
  fc_.fields = fields_.data();
}

}  // namespace bevformer_trt
