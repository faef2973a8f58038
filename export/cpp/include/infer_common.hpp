// What every alexnet_infer_* program shares: the command line, the model card (class names,
// normalisation, input shape, batch limit), input checks, top-k printing, timing and the
// error policy. A program only implements `Backend` for its runtime.
//
// Error policy: a bad argument or input file exits 2, a model that cannot be loaded or run
// exits 1; either way one "error: ..." line on stderr, never an uncaught exception.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "image_preprocess.hpp"
#include "model_card.hpp"
#include "npy.hpp"

namespace alexnet {

namespace fs = std::filesystem;

struct Options {
  std::string model, classes_file, dump_logits, dump_input;
  std::vector<std::string> inputs;  // image files, or one float32 .npy batch
  std::string device;  // runtime-specific device name; each program documents its choices
  int top = 5, repeat = 10, warmup = 1, threads = 0;
  bool quiet = false;  // no per-image lines (for scripts that only want --dump-logits)
};

// What each program implements for its runtime.
class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string describe() const = 0;  // e.g. "OpenVINO 2026.4 on CPU (ONNX)"
  // Key/value metadata embedded in the artifact ("card" as JSON, or "classes"/"mean"/"std").
  virtual std::map<std::string, std::string> metadata() { return {}; }
  // Runs one batch; returns logits in row-major order and sets out_shape ({N, classes}).
  virtual std::vector<float> run(const npy::Array& batch, std::vector<int64_t>& out_shape) = 0;
};

struct Program {
  const char* name;
  const char* summary;      // one line: what it runs
  const char* model_help;   // which files MODEL may be
  const char* device_help;  // nullptr when the program has no --device
  const char* default_device;
};

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------
inline std::string usage(const Program& p) {
  std::ostringstream o;
  o << "usage: " << p.name << " MODEL INPUT... [options]\n\n"
    << p.summary << "\n\n"
    << "  MODEL                 " << p.model_help << "\n"
    << "  INPUT...              image files (JPEG, PNG, BMP), one batch, preprocessed in C++ as the model card\n"
    << "                        says; or one float32 NCHW .npy batch (alexnet-deploy preprocess ... --out x.npy)\n\n"
    << "options:\n"
    << "  --classes FILE        class names, one per line [default: the card in the artifact or manifest.json]\n"
    << "  --top K               classes printed per image [default: 5]\n"
    << "  --repeat N            timed runs of the batch, and of decoding and preprocessing its images [default: 10]\n"
    << "  --warmup N            untimed runs before timing, at least the first run [default: 1]\n"
    << "  --threads N           intra-op CPU threads [default: the runtime's choice]\n";
  if (p.device_help) o << "  --device D            " << p.device_help << " [default: " << p.default_device << "]\n";
  o << "  --dump-input OUT.npy  write the preprocessed batch (float32, N x C x H x W)\n"
    << "  --dump-logits OUT.npy write the raw logits (float32, N x classes)\n"
    << "  --quiet               print only the timing lines\n"
    << "  -h, --help            show this help\n\n"
    << "exit status: 0 ok, 1 the model could not be loaded or run, 2 bad arguments or input\n";
  return o.str();
}

inline int parse_int(const std::string& flag, const std::string& text, int min) {
  try {
    size_t used = 0;
    const long v = std::stol(text, &used);
    if (used == text.size() && v >= min && v <= 1000000) return static_cast<int>(v);
  } catch (const std::logic_error&) {
  }
  throw UsageError(flag + " needs an integer >= " + std::to_string(min) + ", got '" + text + "'");
}

inline bool is_npy(const std::string& path) { return fs::path(path).extension() == ".npy"; }

// An output path must name a .npy file in a folder that exists, and not be an input.
inline void check_output(const std::string& flag, const std::string& path, const Options& o) {
  if (path.empty()) return;
  if (!is_npy(path)) throw UsageError(flag + " must end in .npy, got " + path);
  const fs::path parent = fs::absolute(path).parent_path();
  if (!fs::is_directory(parent)) throw UsageError(flag + ": folder " + parent.string() + " does not exist");
  if (fs::is_directory(path)) throw UsageError(flag + " " + path + " is a folder; give a file name");
  std::error_code missing;  // a file that does not exist yet is equivalent to nothing
  for (const auto& in : o.inputs)
    if (fs::equivalent(in, path, missing)) throw UsageError(flag + " " + path + " would overwrite an input");
}

// Returns nullopt when --help was asked for (usage already printed).
inline std::optional<Options> parse_args(int argc, char** argv, const Program& p) {
  Options o;
  o.device = p.default_device ? p.default_device : "";
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(a + " needs a value");
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      std::cout << usage(p);
      return std::nullopt;
    } else if (a == "--classes") {
      o.classes_file = next();
    } else if (a == "--top") {
      o.top = parse_int(a, next(), 1);
    } else if (a == "--repeat") {
      o.repeat = parse_int(a, next(), 1);
    } else if (a == "--warmup") {
      o.warmup = parse_int(a, next(), 0);
    } else if (a == "--threads") {
      o.threads = parse_int(a, next(), 1);
    } else if (a == "--device" && p.device_help) {
      o.device = next();
    } else if (a == "--dump-logits") {
      o.dump_logits = next();
    } else if (a == "--dump-input") {
      o.dump_input = next();
    } else if (a == "--quiet") {
      o.quiet = true;
    } else if (a.size() > 1 && a[0] == '-') {
      throw UsageError("unknown option " + a + " (see " + p.name + " --help)");
    } else {
      positional.push_back(a);
    }
  }
  if (positional.size() < 2)
    throw UsageError(std::string("expected MODEL and at least one INPUT (image files or one .npy batch), got ") +
                     std::to_string(positional.size()) + " arguments (see " + p.name + " --help)");
  o.model = positional[0];
  o.inputs.assign(positional.begin() + 1, positional.end());
  if (!fs::exists(o.model)) throw UsageError("model not found: " + o.model);
  for (const auto& in : o.inputs)
    if (!fs::is_regular_file(in)) throw UsageError("input not found: " + in);
  const auto npys = std::count_if(o.inputs.begin(), o.inputs.end(), is_npy);
  if (npys > 0 && o.inputs.size() > 1)
    throw UsageError("give one .npy batch or image files, not both and not several .npy files");
  if (!o.classes_file.empty() && !fs::is_regular_file(o.classes_file))
    throw UsageError("--classes file not found: " + o.classes_file);
  check_output("--dump-logits", o.dump_logits, o);
  check_output("--dump-input", o.dump_input, o);
  if (!o.dump_logits.empty() && !o.dump_input.empty() && fs::absolute(o.dump_logits) == fs::absolute(o.dump_input))
    throw UsageError("--dump-input and --dump-logits name the same file");
  return o;
}

// ---------------------------------------------------------------------------------------------
// Model card (read in model_card.hpp): precedence and --classes
// ---------------------------------------------------------------------------------------------
inline std::vector<std::string> read_class_file(const std::string& path) {
  std::istringstream lines(read_text(path));
  std::vector<std::string> names;
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) names.push_back(line);
  }
  if (names.empty()) throw UsageError("--classes file " + path + " holds no names");
  return names;
}

// Precedence: --classes, then the card embedded in the artifact, then manifest.json.
inline Card resolve_card(const Options& o, Backend& backend) {
  std::optional<Card> embedded = card_from_metadata(backend.metadata(), "metadata of " + o.model);
  std::optional<Card> manifest = card_from_manifest(o.model);
  Card c = embedded ? *embedded : manifest ? *manifest : Card{};
  if (embedded && manifest) {  // only the manifest knows the batch limit; metadata may lack fields
    c.max_batch = manifest->max_batch;
    if (c.chw.empty()) c.chw = manifest->chw;
    if (c.crop <= 0) c.crop = manifest->crop;
    if (c.resize <= 0) c.resize = manifest->resize;
    if (c.classes.empty()) c.classes = manifest->classes;
    if (c.mean.empty()) c.mean = manifest->mean;
    if (c.std.empty()) c.std = manifest->std;
    c.source += " and " + manifest->source;
  }
  if (!o.classes_file.empty()) {
    c.classes = read_class_file(o.classes_file);
    c.source += (c.source.empty() ? "" : ", ") + std::string("classes from ") + o.classes_file;
  }
  return c;
}

// ---------------------------------------------------------------------------------------------
// Input
// ---------------------------------------------------------------------------------------------
inline std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s;
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "x" : "") + std::to_string(shape[i]);
  return s.empty() ? "()" : s;
}

// Read before the model loads, so a bad file is reported at once.
inline npy::Array read_batch(const std::string& path) {
  npy::Array a;
  try {
    a = npy::read_float32(path);
  } catch (const npy::Error& e) {
    throw UsageError(e.what());
  }
  if (a.shape.size() != 4)
    throw UsageError(path + " has shape " + shape_str(a.shape) + "; expected 4 dimensions N x C x H x W");
  if (a.shape[0] < 1) throw UsageError(path + " holds an empty batch");
  return a;
}

// fn(i) for i in [0, n) on up to one thread per core; the first failure in index order is rethrown
// after every thread has finished, so the error names the first bad image of the batch.
template <class Fn>
inline void parallel_for(size_t n, Fn&& fn) {
  const size_t workers = std::min<size_t>(n, std::max(1u, std::thread::hardware_concurrency()));
  std::vector<std::exception_ptr> errors(n);
  auto work = [&](size_t first) {
    for (size_t i = first; i < n; i += workers) {
      try {
        fn(i);
      } catch (...) {
        errors[i] = std::current_exception();
      }
    }
  };
  std::vector<std::thread> threads;
  for (size_t w = 1; w < workers; ++w) threads.emplace_back(work, w);
  work(0);
  for (auto& t : threads) t.join();
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);
}

// Image inputs, decoded before the model loads so a bad file is reported at once; the images of a
// batch are decoded in parallel.
inline std::vector<image::Rgb8> decode_images(const std::vector<std::string>& paths) {
  std::vector<image::Rgb8> out(paths.size());
  const image::WarningSink warn = [](const std::string& m) { std::fprintf(stderr, "warning: %s\n", m.c_str()); };
  try {
    parallel_for(paths.size(), [&](size_t i) { out[i] = image::decode(paths[i], warn); });
  } catch (const image::ImageError& e) {
    throw UsageError(e.what());
  }
  return out;
}

// The card's preprocessing of every image into one N x 3 x crop x crop batch.
inline npy::Array preprocess_images(const std::vector<image::Rgb8>& images, const std::vector<std::string>& paths,
                                    const Card& card, const std::string& model) {
  const std::optional<image::Preprocessing> p = card.preprocessing();
  if (!p)
    throw UsageError("the model card of " + model + " (" + (card.source.empty() ? "none found" : card.source) +
                     ") has no preprocessing (input.resize, crop, mean, std): re-export the model, or pass a "
                     ".npy batch from alexnet-deploy preprocess");
  npy::Array batch;
  batch.shape = {static_cast<int64_t>(images.size()), 3, p->crop, p->crop};
  const size_t per_image = static_cast<size_t>(3) * p->crop * p->crop;
  batch.data.resize(per_image * images.size());
  parallel_for(images.size(), [&](size_t i) {
    try {
      image::preprocess(images[i], *p, batch.data.data() + i * per_image);
    } catch (const image::ImageError& e) {
      throw UsageError(paths[i] + ": " + e.what());
    }
  });
  return batch;
}

inline void check_batch(const npy::Array& a, const std::string& path, const Card& card) {
  if (!card.chw.empty() && !std::equal(card.chw.begin(), card.chw.end(), a.shape.begin() + 1))
    throw UsageError(path + " has shape " + shape_str(a.shape) + "; the model expects N x " +
                     shape_str(card.chw) + " (preprocess with --card pointing at this export)");
  if (card.max_batch > 0 && a.shape[0] > card.max_batch)
    throw UsageError(path + " holds " + std::to_string(a.shape[0]) + " images; this artifact takes at most " +
                     std::to_string(card.max_batch) + " per batch (export --max-batch)");
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------
inline std::string class_name(const Card& card, size_t i) {
  return i < card.classes.size() ? card.classes[i] : "class_" + std::to_string(i);
}

inline void print_topk(const std::vector<float>& logits, int64_t n, int64_t k, const Card& card, int top,
                       const std::vector<std::string>& names) {
  for (int64_t img = 0; img < n; ++img) {
    const float* row = logits.data() + img * k;
    // softmax in double, shifted by the max for stability
    const double mx = *std::max_element(row, row + k);
    std::vector<double> p(static_cast<size_t>(k));
    double sum = 0;
    for (int64_t j = 0; j < k; ++j) sum += p[j] = std::exp(row[j] - mx);
    std::vector<size_t> order(static_cast<size_t>(k));
    std::iota(order.begin(), order.end(), 0);
    const size_t shown = std::min<size_t>(static_cast<size_t>(top), order.size());
    std::partial_sort(order.begin(), order.begin() + shown, order.end(),
                      [&](size_t a, size_t b) { return row[a] > row[b]; });
    if (static_cast<size_t>(img) < names.size())
      std::printf("image %lld: %s\n", static_cast<long long>(img), names[img].c_str());
    else
      std::printf("image %lld:\n", static_cast<long long>(img));
    for (size_t r = 0; r < shown; ++r)
      std::printf("  %zu. %-24s p=%.4f  logit=%.6g\n", r + 1, class_name(card, order[r]).c_str(),
                  p[order[r]] / sum, row[order[r]]);
  }
}

// ---------------------------------------------------------------------------------------------
// The program skeleton
// ---------------------------------------------------------------------------------------------
using Loader = std::function<std::unique_ptr<Backend>(const Options&)>;
using Clock = std::chrono::steady_clock;

inline double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Runs `step` `repeat` times; returns the median time in ms.
template <class Step>
inline double timed(int repeat, Step&& step) {
  std::vector<double> times;
  for (int i = 0; i < repeat; ++i) {
    const auto t0 = Clock::now();
    step();
    times.push_back(ms_since(t0));
  }
  return median(times);
}

inline void write_npy(const std::string& path, const std::vector<float>& data, const std::vector<int64_t>& shape,
                      const char* what) {
  if (path.empty()) return;
  try {
    npy::write_float32(path, data.data(), shape);
  } catch (const npy::Error& e) {
    throw UsageError(e.what());
  }
  std::printf("%s written to %s\n", what, path.c_str());
}

inline int run_program_checked(const Options& o, const Program& p, const Loader& load) {
  const bool from_images = !is_npy(o.inputs.front());
  npy::Array batch;
  std::vector<image::Rgb8> images;
  double decode_ms = 0, preprocess_ms = 0;
  if (from_images) {
    images = decode_images(o.inputs);  // the first run reports bad files; the repeats are timed
    decode_ms = timed(o.repeat, [&] { images = decode_images(o.inputs); });
  } else {
    batch = read_batch(o.inputs.front());
  }
  auto t0 = Clock::now();
  std::unique_ptr<Backend> backend = load(o);
  const double load_ms = ms_since(t0);
  const Card card = resolve_card(o, *backend);
  if (from_images)
    preprocess_ms = timed(o.repeat, [&] { batch = preprocess_images(images, o.inputs, card, o.model); });
  images.clear();
  const std::string input_name =
      from_images ? std::to_string(o.inputs.size()) + (o.inputs.size() == 1 ? " image" : " images") : o.inputs.front();
  check_batch(batch, input_name, card);

  std::printf("%s: %s\n", p.name, backend->describe().c_str());
  std::printf("model: %s (loaded in %.1f ms)\n", o.model.c_str(), load_ms);
  std::printf("card: %s\n", card.source.empty() ? "none found (pass --classes FILE for names)" : card.source.c_str());
  if (from_images)
    std::printf("input: %s, decoded and preprocessed here: resize %lld, centre crop %lld, mean [%g, %g, %g] "
                "std [%g, %g, %g]\n", input_name.c_str(), static_cast<long long>(card.resize),
                static_cast<long long>(card.crop), card.mean[0], card.mean[1], card.mean[2], card.std[0],
                card.std[1], card.std[2]);
  else if (card.mean.size() == 3 && card.std.size() == 3)
    std::printf("input: %s, expects mean [%g, %g, %g] std [%g, %g, %g] already applied\n", input_name.c_str(),
                card.mean[0], card.mean[1], card.mean[2], card.std[0], card.std[1], card.std[2]);
  std::printf("batch: %s float32\n", shape_str(batch.shape).c_str());

  std::vector<int64_t> out_shape;
  t0 = Clock::now();
  std::vector<float> logits = backend->run(batch, out_shape);
  const double first_ms = ms_since(t0);
  if (out_shape.size() != 2 || out_shape[0] != batch.shape[0] ||
      static_cast<int64_t>(logits.size()) != out_shape[0] * out_shape[1])
    throw std::runtime_error("the model returned shape " + shape_str(out_shape) + "; expected " +
                             std::to_string(batch.shape[0]) + " x classes");
  for (int i = 1; i < o.warmup; ++i) backend->run(batch, out_shape);  // the first run was a warm-up

  std::vector<double> times;
  for (int i = 0; i < o.repeat; ++i) {
    t0 = Clock::now();
    logits = backend->run(batch, out_shape);
    times.push_back(ms_since(t0));
  }
  std::sort(times.begin(), times.end());
  const double mean = std::accumulate(times.begin(), times.end(), 0.0) / times.size();
  const double n = static_cast<double>(batch.shape[0]);

  if (!card.classes.empty() && static_cast<int64_t>(card.classes.size()) != out_shape[1])
    std::fprintf(stderr, "warning: %zu class names for %lld outputs; unnamed ones print as class_<i>\n",
                 card.classes.size(), static_cast<long long>(out_shape[1]));
  if (!o.quiet) print_topk(logits, out_shape[0], out_shape[1], card, o.top, from_images ? o.inputs : std::vector<std::string>{});
  if (from_images)
    std::printf("decode + preprocess per batch of %lld: decode %.3f ms, resize + crop + normalise %.3f ms, "
                "total %.3f ms (medians over %d runs); per image %.3f ms\n",
                static_cast<long long>(batch.shape[0]), decode_ms, preprocess_ms, decode_ms + preprocess_ms,
                o.repeat, (decode_ms + preprocess_ms) / n);
  std::printf("time per batch of %lld: mean %.3f ms, median %.3f ms, min %.3f ms over %d runs "
              "(first run %.3f ms); per image %.3f ms (median)\n",
              static_cast<long long>(batch.shape[0]), mean, times[times.size() / 2], times.front(), o.repeat,
              first_ms, times[times.size() / 2] / n);
  if (from_images)
    std::printf("end to end per image: %.3f ms (decode + preprocess + inference, medians; batch of %lld)\n",
                (decode_ms + preprocess_ms + times[times.size() / 2]) / n, static_cast<long long>(batch.shape[0]));
  write_npy(o.dump_input, batch.data, batch.shape, "input");
  write_npy(o.dump_logits, logits, out_shape, "logits");
  return 0;
}

// main() of every program: parse, run, and turn every failure into one line and an exit code.
inline int run_program(int argc, char** argv, const Program& p, const Loader& load) {
  try {
    const std::optional<Options> o = parse_args(argc, argv, p);
    if (!o) return 0;
    return run_program_checked(*o, p, load);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::string msg = e.what();
    // Runtimes put stack traces and source locations after the first line; the first line is the message.
    const auto nl = msg.find('\n');
    if (nl != std::string::npos) msg = msg.substr(0, nl);
    std::fprintf(stderr, "error: %s\n", msg.c_str());
    return 1;
  } catch (...) {
    std::fprintf(stderr, "error: unknown failure\n");
    return 1;
  }
}

}  // namespace alexnet
