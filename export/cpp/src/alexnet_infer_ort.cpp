// Runs the exported ONNX file with ONNX Runtime's C++ API on the CPU. The model card comes
// from the ONNX metadata_props (custom metadata map) or manifest.json.
#include <onnxruntime_cxx_api.h>

#include "infer_common.hpp"

namespace {

using alexnet::Backend;
using alexnet::Options;

class OrtBackend : public Backend {
 public:
  explicit OrtBackend(const Options& o) : env_(ORT_LOGGING_LEVEL_WARNING, "alexnet_infer_ort") {
    Ort::SessionOptions so;
    so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
    if (o.threads > 0) so.SetIntraOpNumThreads(o.threads);
    try {
      session_ = std::make_unique<Ort::Session>(env_, o.model.c_str(), so);
    } catch (const Ort::Exception& e) {
      throw std::runtime_error("cannot load " + o.model + " with ONNX Runtime: " + e.what());
    }
    if (session_->GetInputCount() != 1 || session_->GetOutputCount() != 1)
      throw std::runtime_error(o.model + " must have one input and one output");
    input_name_ = session_->GetInputNameAllocated(0, allocator_).get();
    output_name_ = session_->GetOutputNameAllocated(0, allocator_).get();
  }

  std::string describe() const override { return "ONNX Runtime " + std::string(OrtGetApiBase()->GetVersionString()) + " on CPU"; }

  std::map<std::string, std::string> metadata() override {
    std::map<std::string, std::string> out;
    const Ort::ModelMetadata meta = session_->GetModelMetadata();
    for (const char* key : {"card", "model_card", "classes", "mean", "std"}) {
      Ort::AllocatedStringPtr value = meta.LookupCustomMetadataMapAllocated(key, allocator_);
      if (value) out[key] = value.get();
    }
    return out;
  }

  std::vector<float> run(const npy::Array& batch, std::vector<int64_t>& out_shape) override {
    const Ort::MemoryInfo mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    Ort::Value x = Ort::Value::CreateTensor<float>(mem, const_cast<float*>(batch.data.data()), batch.data.size(),
                                                   batch.shape.data(), batch.shape.size());
    const char* in_names[] = {input_name_.c_str()};
    const char* out_names[] = {output_name_.c_str()};
    std::vector<Ort::Value> y;
    try {
      y = session_->Run(Ort::RunOptions{nullptr}, in_names, &x, 1, out_names, 1);
    } catch (const Ort::Exception& e) {
      throw std::runtime_error(std::string("inference failed: ") + e.what());
    }
    const auto info = y.at(0).GetTensorTypeAndShapeInfo();
    if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
      throw std::runtime_error("the model's output is not float32");
    out_shape = info.GetShape();
    const float* p = y[0].GetTensorData<float>();
    return std::vector<float>(p, p + info.GetElementCount());
  }

 private:
  Ort::Env env_;
  Ort::AllocatorWithDefaultOptions allocator_;
  std::unique_ptr<Ort::Session> session_;
  std::string input_name_, output_name_;
};

std::unique_ptr<Backend> load(const Options& o) { return std::make_unique<OrtBackend>(o); }

}  // namespace

int main(int argc, char** argv) {
  const alexnet::Program program{
      "alexnet_infer_ort",
      "Runs the exported AlexNet ONNX file with ONNX Runtime on the CPU.",
      "an ONNX file (*.onnx)",
      nullptr,
      "",
  };
  return alexnet::run_program(argc, argv, program, load);
}
