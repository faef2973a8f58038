// Runs the ONNX file or the OpenVINO IR (.xml + .bin) that `alexnet-deploy export` writes,
// through OpenVINO's C++ API. The ONNX exporter stores the model card in metadata_props, which
// OpenVINO exposes as rt_info["framework"][key] (and keeps when it saves an IR).
#include <openvino/openvino.hpp>

#include "infer_common.hpp"

namespace {

using alexnet::Backend;
using alexnet::Options;

std::string first_line(const std::exception& e) {
  std::string msg = e.what();
  // OpenVINO prefixes messages with "Exception from src/...:LINE:" lines; keep the last useful one.
  std::istringstream lines(msg);
  std::string line, last;
  while (std::getline(lines, line))
    if (!line.empty() && line.rfind("Exception from", 0) != 0) last = line;
  return last.empty() ? msg : last;
}

// OpenVINO tries every frontend on a file it cannot parse, and some log noise while failing;
// a cheap look at the first byte catches the common case (a wrong or damaged file) first.
void check_looks_like_model(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  const int first = f.get();
  const auto ext = alexnet::fs::path(path).extension();
  // A serialised ONNX ModelProto starts with field 1 (ir_version, varint): byte 0x08.
  if (ext == ".onnx" && first != 0x08)
    throw std::runtime_error("cannot read " + path + ": not an ONNX model (re-export it)");
  if (ext == ".xml" && first != '<')
    throw std::runtime_error("cannot read " + path + ": not an OpenVINO IR .xml file (re-export it)");
}

class OpenVinoBackend : public Backend {
 public:
  explicit OpenVinoBackend(const Options& o) : device_(o.device) {
    check_looks_like_model(o.model);
    try {
      model_ = core_.read_model(o.model);
    } catch (const std::exception& e) {
      throw std::runtime_error("cannot read " + o.model + " with OpenVINO: " + first_line(e));
    }
    if (model_->inputs().size() != 1 || model_->outputs().size() != 1)
      throw std::runtime_error(o.model + " has " + std::to_string(model_->inputs().size()) + " inputs and " +
                               std::to_string(model_->outputs().size()) + " outputs; expected one of each");
    format_ = alexnet::fs::path(o.model).extension() == ".xml" ? "IR" : "ONNX";
    // fp32 stays fp32: CPUs with bf16/fp16 units would otherwise run in lower precision by default.
    config_ = {ov::hint::inference_precision(ov::element::f32)};
    if (o.threads > 0) config_.emplace(ov::inference_num_threads(o.threads));
  }

  std::string describe() const override {
    std::string version = ov::get_openvino_version().buildNumber;  // "2026.4.1-22982-<hash>-releases/..."
    version = version.substr(0, version.find('-'));
    return "OpenVINO " + version + " " + format_ + " on " + device_;
  }

  std::map<std::string, std::string> metadata() override {
    std::map<std::string, std::string> out;
    for (const char* key : {"card", "model_card", "classes", "mean", "std"})
      if (model_->has_rt_info("framework", key)) out[key] = model_->get_rt_info<std::string>("framework", key);
    return out;
  }

  std::vector<float> run(const npy::Array& batch, std::vector<int64_t>& out_shape) override {
    const ov::Shape shape(batch.shape.begin(), batch.shape.end());
    if (!request_ || shape != compiled_shape_) compile_for(shape);
    ov::Tensor input(ov::element::f32, shape, const_cast<float*>(batch.data.data()));
    request_->set_input_tensor(input);
    request_->infer();
    const ov::Tensor out = request_->get_output_tensor();
    if (out.get_element_type() != ov::element::f32)
      throw std::runtime_error("output is " + out.get_element_type().get_type_name() + ", expected f32");
    const ov::Shape s = out.get_shape();
    out_shape.assign(s.begin(), s.end());
    const float* p = out.data<const float>();
    return std::vector<float>(p, p + out.get_size());
  }

 private:
  // Static-batch models are reshaped to the batch's N; C, H and W must already match.
  void compile_for(const ov::Shape& shape) {
    const ov::PartialShape expected = model_->input().get_partial_shape();
    if (expected.rank().is_static() && expected.rank().get_length() != 4)
      throw alexnet::UsageError("the model's input has rank " + std::to_string(expected.rank().get_length()) +
                                "; expected N x C x H x W");
    if (expected.rank().is_static()) {
      for (size_t i = 1; i < 4; ++i)
        if (expected[i].is_static() && static_cast<size_t>(expected[i].get_length()) != shape[i])
          throw alexnet::UsageError("input has shape " + shape.to_string() + " but the model expects " +
                                    expected.to_string());
      if (expected[0].is_static() && static_cast<size_t>(expected[0].get_length()) != shape[0])
        model_->reshape(ov::PartialShape{ov::Dimension(static_cast<int64_t>(shape[0])), expected[1], expected[2],
                                         expected[3]});
      else if (expected[0].is_dynamic() && !expected[0].compatible(static_cast<int64_t>(shape[0])))
        throw alexnet::UsageError("batch of " + std::to_string(shape[0]) + " is outside the model's range " +
                                  expected.to_string());
    }
    try {
      compiled_ = core_.compile_model(model_, device_, config_);
      request_ = compiled_.create_infer_request();
    } catch (const std::exception& e) {
      throw std::runtime_error("cannot compile the model for " + device_ + ": " + first_line(e));
    }
    compiled_shape_ = shape;
  }

  ov::Core core_;
  std::shared_ptr<ov::Model> model_;
  ov::CompiledModel compiled_;
  std::optional<ov::InferRequest> request_;
  ov::Shape compiled_shape_;
  ov::AnyMap config_;
  std::string device_, format_;
};

std::unique_ptr<Backend> load(const Options& o) {
  auto backend = std::make_unique<OpenVinoBackend>(o);
  return backend;
}

}  // namespace

int main(int argc, char** argv) {
  const alexnet::Program program{
      "alexnet_infer_openvino",
      "Runs an exported AlexNet with OpenVINO: the ONNX file or the OpenVINO IR.",
      "an ONNX file (*.onnx) or an OpenVINO IR (*.xml with its *.bin beside it)",
      "an OpenVINO device: CPU, GPU, AUTO, ...",
      "CPU",
  };
  return alexnet::run_program(argc, argv, program, load);
}
