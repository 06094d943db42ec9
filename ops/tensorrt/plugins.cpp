// Entry points of libbevformer_trt_plugins.so, the names TensorRT looks up when it loads a
// plugin library (IPluginRegistry::loadLibrary, trtexec --dynamicPlugins, the ONNX parser's
// plugin libraries; see samples/trtexec/README.md of the TensorRT repository):
//   setLoggerFinder(ILoggerFinder*)   the logger of the calling builder/engine
//   getCreators(int32_t& n)           the plugin creators of the library
// Creators: DCNv3 and MultiScaleDeformableAttention, version "1", namespace "".
#include <cstdint>

#include "common.h"
#include "dcnv3_plugin.h"
#include "msda_plugin.h"

// The library is compiled with hidden visibility; these two are its only exported functions.
#define BEVFORMER_TRT_EXPORT __attribute__((visibility("default")))

extern "C" BEVFORMER_TRT_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
  bevformer_trt::set_logger_finder(finder);
}

extern "C" BEVFORMER_TRT_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(
    int32_t& nbCreators) {
  static bevformer_trt::Dcnv3PluginCreator dcnv3;
  static bevformer_trt::MsdaPluginCreator msda;
  static nvinfer1::IPluginCreatorInterface* const creators[] = {&dcnv3, &msda};
  nbCreators = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
  return creators;
}
