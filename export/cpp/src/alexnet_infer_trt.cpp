// Runs a serialized TensorRT engine (`alexnet-deploy export --formats tensorrt --device cuda`)
// with TensorRT's C++ API (10.x: named I/O tensors, setInputShape, setTensorAddress, enqueueV3).
// An engine runs only with the TensorRT version and the GPU model it was built with.
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include "infer_common.hpp"

namespace {

using alexnet::Backend;
using alexnet::Options;

void check_cuda(cudaError_t status, const std::string& what) {
  if (status != cudaSuccess) throw std::runtime_error(what + ": " + cudaGetErrorString(status));
}

// TensorRT reports failures through the logger; keep the last error to explain a false return.
class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, nvinfer1::AsciiChar const* msg) noexcept override {
    if (severity <= Severity::kERROR) last_error = msg ? msg : "";
    if (severity <= Severity::kWARNING) std::fprintf(stderr, "[TensorRT] %s\n", msg ? msg : "");
  }
  std::string last_error;
};

Logger& logger() {
  static Logger instance;  // must outlive every runtime, engine and context
  return instance;
}

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr_) cudaFree(ptr_);
  }
  void* reserve(size_t bytes) {
    if (bytes > bytes_) {
      if (ptr_) cudaFree(ptr_);
      ptr_ = nullptr;
      check_cuda(cudaMalloc(&ptr_, bytes), "cudaMalloc of " + std::to_string(bytes) + " bytes");
      bytes_ = bytes;
    }
    return ptr_;
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

std::vector<int64_t> to_vector(const nvinfer1::Dims& d) {
  return std::vector<int64_t>(d.d, d.d + std::max(d.nbDims, 0));
}

int parse_device(const std::string& name) {
  std::string index = name.rfind("cuda:", 0) == 0 ? name.substr(5) : name == "cuda" ? "0" : name;
  try {
    size_t used = 0;
    const int i = std::stoi(index, &used);
    if (used == index.size() && i >= 0) return i;
  } catch (const std::logic_error&) {
  }
  throw alexnet::UsageError("--device must be a CUDA device index (0, 1, ...) or cuda:N, got '" + name + "'");
}

class TrtBackend : public Backend {
 public:
  explicit TrtBackend(const Options& o) {
    const int device = parse_device(o.device);
    check_cuda(cudaSetDevice(device), "cannot use CUDA device " + std::to_string(device));
    cudaDeviceProp prop{};
    check_cuda(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
    gpu_ = prop.name;

    const std::string blob = alexnet::read_text(o.model);
    runtime_.reset(nvinfer1::createInferRuntime(logger()));
    if (!runtime_) throw std::runtime_error("cannot create the TensorRT runtime: " + logger().last_error);
    engine_.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
    if (!engine_)
      throw std::runtime_error("cannot deserialize TensorRT engine " + o.model + ": " + logger().last_error +
                               " (an engine runs only with the TensorRT version and GPU it was built with)");
    for (int32_t i = 0; i < engine_->getNbIOTensors(); ++i) {
      const char* name = engine_->getIOTensorName(i);
      auto& slot = engine_->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT ? inputs_ : outputs_;
      slot.emplace_back(name);
      if (engine_->getTensorDataType(name) != nvinfer1::DataType::kFLOAT)
        throw std::runtime_error("engine tensor '" + std::string(name) +
                                 "' is not float32; this program feeds and reads float32 (fp16 engines "
                                 "from alexnet-deploy keep float32 inputs and outputs)");
    }
    if (inputs_.size() != 1 || outputs_.size() != 1)
      throw std::runtime_error("engine has " + std::to_string(inputs_.size()) + " inputs and " +
                               std::to_string(outputs_.size()) + " outputs; expected one of each");
    context_.reset(engine_->createExecutionContext());
    if (!context_) throw std::runtime_error("cannot create an execution context: " + logger().last_error);
    check_cuda(cudaStreamCreate(&stream_), "cudaStreamCreate");
  }

  ~TrtBackend() override {
    if (stream_) cudaStreamDestroy(stream_);
  }

  std::string describe() const override {
    const int32_t v = getInferLibVersion();  // major * 10000 + minor * 100 + patch
    return "TensorRT " + std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." +
           std::to_string(v % 100) + " on " + gpu_ + " (time per batch includes host<->device copies)";
  }

  std::vector<float> run(const npy::Array& batch, std::vector<int64_t>& out_shape) override {
    const char* in = inputs_[0].c_str();
    const char* out = outputs_[0].c_str();
    set_shape(batch.shape);
    const nvinfer1::Dims od = context_->getTensorShape(out);
    out_shape = to_vector(od);
    int64_t count = 1;
    for (int64_t d : out_shape) count *= d;
    if (od.nbDims < 1 || count <= 0) throw std::runtime_error("engine reports output shape " + alexnet::shape_str(out_shape));

    const size_t in_bytes = batch.data.size() * sizeof(float);
    const size_t out_bytes = static_cast<size_t>(count) * sizeof(float);
    void* d_in = input_.reserve(in_bytes);
    void* d_out = output_.reserve(out_bytes);
    check_cuda(cudaMemcpyAsync(d_in, batch.data.data(), in_bytes, cudaMemcpyHostToDevice, stream_), "copy to device");
    if (!context_->setTensorAddress(in, d_in) || !context_->setTensorAddress(out, d_out))
      throw std::runtime_error("setTensorAddress failed: " + logger().last_error);
    if (!context_->enqueueV3(stream_)) throw std::runtime_error("enqueueV3 failed: " + logger().last_error);
    std::vector<float> logits(static_cast<size_t>(count));
    check_cuda(cudaMemcpyAsync(logits.data(), d_out, out_bytes, cudaMemcpyDeviceToHost, stream_), "copy to host");
    check_cuda(cudaStreamSynchronize(stream_), "inference");
    return logits;
  }

 private:
  // The engine's optimisation profile 0 bounds the batch; say so instead of failing inside TensorRT.
  void set_shape(const std::vector<int64_t>& shape) {
    const char* in = inputs_[0].c_str();
    const auto declared = to_vector(engine_->getTensorShape(in));
    const auto lo = to_vector(engine_->getProfileShape(in, 0, nvinfer1::OptProfileSelector::kMIN));
    const auto hi = to_vector(engine_->getProfileShape(in, 0, nvinfer1::OptProfileSelector::kMAX));
    if (declared.size() != shape.size())
      throw alexnet::UsageError("the engine's input has shape " + alexnet::shape_str(declared) + "; got " +
                                alexnet::shape_str(shape));
    for (size_t i = 0; i < shape.size(); ++i) {
      const bool fixed_mismatch = declared[i] >= 0 && declared[i] != shape[i];
      const bool out_of_profile = declared[i] < 0 && lo.size() == shape.size() &&
                                  (shape[i] < lo[i] || shape[i] > hi[i]);
      if (fixed_mismatch || out_of_profile)
        throw alexnet::UsageError("input shape " + alexnet::shape_str(shape) + " is outside the engine's range " +
                                  alexnet::shape_str(lo.empty() ? declared : lo) + " .. " +
                                  alexnet::shape_str(hi.empty() ? declared : hi));
    }
    nvinfer1::Dims dims{};
    dims.nbDims = static_cast<int32_t>(shape.size());
    for (size_t i = 0; i < shape.size(); ++i) dims.d[i] = shape[i];
    if (!context_->setInputShape(in, dims))
      throw alexnet::UsageError("TensorRT refused input shape " + alexnet::shape_str(shape) + ": " + logger().last_error);
  }

  std::string gpu_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;  // members are destroyed in reverse: context first
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  std::vector<std::string> inputs_, outputs_;
  DeviceBuffer input_, output_;
  cudaStream_t stream_ = nullptr;
};

std::unique_ptr<Backend> load(const Options& o) { return std::make_unique<TrtBackend>(o); }

}  // namespace

int main(int argc, char** argv) {
  const alexnet::Program program{
      "alexnet_infer_trt",
      "Runs an exported AlexNet TensorRT engine on an NVIDIA GPU.",
      "a serialized TensorRT engine (*.engine / *.plan) built by alexnet-deploy export",
      "a CUDA device index or cuda:N",
      "0",
  };
  return alexnet::run_program(argc, argv, program, load);
}
