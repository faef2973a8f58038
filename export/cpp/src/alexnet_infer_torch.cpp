// Runs an AOTInductor package (.pt2, `alexnet-deploy export --formats aoti`) or a TorchScript
// module (`--formats torchscript`) with libtorch, chosen by the file's extension.
#include <ATen/Parallel.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/cuda.h>
#include <torch/script.h>
#include <torch/version.h>

#include "infer_common.hpp"

namespace {

using alexnet::Backend;
using alexnet::Options;

// First line of a libtorch error (the rest is a C++ stack trace, useless to a user).
std::string first_line(const std::exception& e) {
  std::string msg = e.what();
  const auto nl = msg.find('\n');
  return nl == std::string::npos ? msg : msg.substr(0, nl);
}

std::string libtorch() {
  return "libtorch " + std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
         std::to_string(TORCH_VERSION_PATCH);
}

c10::Device parse_device(const std::string& name) {
  if (name == "cpu") return c10::Device(c10::kCPU);
  if (name.rfind("cuda", 0) == 0) {
    if (!torch::cuda::is_available())
      throw alexnet::UsageError("--device " + name + ": no CUDA device is visible to libtorch");
    return c10::Device(name);
  }
  throw alexnet::UsageError("--device must be cpu or cuda[:N], got '" + name + "'");
}

// Takes the batch without copying (from_blob), moves it to the device, returns logits on the CPU.
class TorchBackend : public Backend {
 public:
  explicit TorchBackend(c10::Device device) : device_(device) {}

  std::vector<float> run(const npy::Array& batch, std::vector<int64_t>& out_shape) override {
    c10::InferenceMode guard;
    auto x = torch::from_blob(const_cast<float*>(batch.data.data()), batch.shape, torch::kFloat32).to(device_);
    at::Tensor y;
    try {
      y = forward(x).to(torch::kCPU, torch::kFloat32).contiguous();
    } catch (const c10::Error& e) {
      throw std::runtime_error("inference failed: " + first_line(e));
    }
    out_shape.assign(y.sizes().begin(), y.sizes().end());
    return std::vector<float>(y.data_ptr<float>(), y.data_ptr<float>() + y.numel());
  }

 protected:
  virtual at::Tensor forward(const at::Tensor& x) = 0;
  c10::Device device_;
};

class AotiBackend : public TorchBackend {
 public:
  AotiBackend(const std::string& path, c10::Device device) : TorchBackend(device) {
    try {
      loader_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path);
      metadata_ = loader_->get_metadata();
    } catch (const std::exception& e) {
      throw std::runtime_error("cannot load AOTInductor package " + path + ": " + first_line(e) +
                               " (export --formats aoti writes one; a torch-export .pt2 runs from Python only)");
    }
  }
  std::string describe() const override {
    return libtorch() + " AOTInductor package on " + device_.str();
  }
  std::map<std::string, std::string> metadata() override {
    return {metadata_.begin(), metadata_.end()};
  }

 protected:
  at::Tensor forward(const at::Tensor& x) override { return loader_->run({x}).at(0); }

 private:
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader_;
  std::unordered_map<std::string, std::string> metadata_;
};

class TorchScriptBackend : public TorchBackend {
 public:
  TorchScriptBackend(const std::string& path, c10::Device device) : TorchBackend(device) {
    // The exporter stores the model card as an extra file; ask for every name it might use.
    for (const char* name : {"card.json", "card"}) extra_[name] = "";
    try {
      module_ = torch::jit::load(path, device, extra_);
    } catch (const std::exception& e) {
      throw std::runtime_error("cannot load TorchScript module " + path + ": " + first_line(e));
    }
    module_.eval();
  }
  std::string describe() const override { return libtorch() + " TorchScript on " + device_.str(); }
  std::map<std::string, std::string> metadata() override {
    std::map<std::string, std::string> out;
    for (const auto& [k, v] : extra_)
      if (!v.empty()) out["card"] = v;
    return out;
  }

 protected:
  at::Tensor forward(const at::Tensor& x) override {
    torch::jit::IValue y = module_.forward({x});
    if (y.isTuple()) y = y.toTupleRef().elements().at(0);  // some traced modules return (logits,)
    return y.toTensor();
  }

 private:
  torch::jit::script::Module module_;
  torch::jit::ExtraFilesMap extra_;
};

std::unique_ptr<Backend> load(const Options& o) {
  if (o.threads > 0) at::set_num_threads(o.threads);
  const c10::Device device = parse_device(o.device);
  const std::string ext = alexnet::fs::path(o.model).extension().string();
  if (ext == ".pt2") return std::make_unique<AotiBackend>(o.model, device);
  return std::make_unique<TorchScriptBackend>(o.model, device);
}

}  // namespace

int main(int argc, char** argv) {
  const alexnet::Program program{
      "alexnet_infer_torch",
      "Runs an exported AlexNet with libtorch: an AOTInductor package or a TorchScript module.",
      "an AOTInductor package (*.pt2) or a TorchScript module (any other extension, e.g. *.pt)",
      "cpu or cuda[:N]; a .pt2 package runs on the device it was compiled for",
      "cpu",
  };
  return alexnet::run_program(argc, argv, program, load);
}
