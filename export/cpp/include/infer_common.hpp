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
#include <vector>

#include "mini_json.hpp"
#include "npy.hpp"

namespace alexnet {

namespace fs = std::filesystem;

// A problem with what the user passed (arguments, files, shapes): exit 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Options {
  std::string model, input, classes_file, dump_logits;
  std::string device;  // runtime-specific device name; each program documents its choices
  int top = 5, repeat = 10, warmup = 1, threads = 0;
  bool quiet = false;  // no per-image lines (for scripts that only want --dump-logits)
};

// The model card: travels with every export (manifest.json, ONNX metadata_props, ...).
struct Card {
  std::vector<std::string> classes;
  std::vector<double> mean, std;
  std::vector<int64_t> chw;  // expected C, H, W; empty when unknown
  int64_t max_batch = 0;     // 0 when unknown
  std::string source;        // where the card was read from, for the log
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
  o << "usage: " << p.name << " MODEL INPUT.npy [options]\n\n"
    << p.summary << "\n\n"
    << "  MODEL                 " << p.model_help << "\n"
    << "  INPUT.npy             float32 NCHW batch, C-order (alexnet-deploy preprocess IMAGE... --card DIR --out INPUT.npy)\n\n"
    << "options:\n"
    << "  --classes FILE        class names, one per line [default: the card in the artifact or manifest.json]\n"
    << "  --top K               classes printed per image [default: 5]\n"
    << "  --repeat N            timed runs of the batch [default: 10]\n"
    << "  --warmup N            untimed runs before timing, at least the first run [default: 1]\n"
    << "  --threads N           intra-op CPU threads [default: the runtime's choice]\n";
  if (p.device_help) o << "  --device D            " << p.device_help << " [default: " << p.default_device << "]\n";
  o << "  --dump-logits OUT.npy write the raw logits (float32, N x classes)\n"
    << "  --quiet               print only the timing line\n"
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
    } else if (a == "--quiet") {
      o.quiet = true;
    } else if (a.size() > 1 && a[0] == '-') {
      throw UsageError("unknown option " + a + " (see " + p.name + " --help)");
    } else {
      positional.push_back(a);
    }
  }
  if (positional.size() != 2)
    throw UsageError(std::string("expected MODEL and INPUT.npy, got ") + std::to_string(positional.size()) +
                     " arguments (see " + p.name + " --help)");
  o.model = positional[0];
  o.input = positional[1];
  if (!fs::exists(o.model)) throw UsageError("model not found: " + o.model);
  if (!fs::is_regular_file(o.input)) throw UsageError("input not found: " + o.input);
  if (!o.classes_file.empty() && !fs::is_regular_file(o.classes_file))
    throw UsageError("--classes file not found: " + o.classes_file);
  return o;
}

// ---------------------------------------------------------------------------------------------
// Model card
// ---------------------------------------------------------------------------------------------
inline std::string read_text(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw UsageError("cannot read " + path.string());
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

inline std::vector<double> json_numbers(const mini_json::Value* v) {
  std::vector<double> out;
  if (v && v->is(mini_json::Value::Kind::Array))
    for (const auto& x : v->items)
      if (x.is(mini_json::Value::Kind::Number)) out.push_back(x.number);
  return out;
}

inline std::vector<std::string> json_strings(const mini_json::Value* v) {
  std::vector<std::string> out;
  if (v && v->is(mini_json::Value::Kind::Array))
    for (const auto& x : v->items)
      if (x.is(mini_json::Value::Kind::String)) out.push_back(x.string);
  return out;
}

// The manifest's "card" object (ModelCard.to_dict in alexnet_deploy/model.py).
inline Card card_from_json(const mini_json::Value& card, const std::string& source) {
  Card c;
  c.source = source;
  c.classes = json_strings(card.get("classes"));
  if (const auto* input = card.get("input")) {
    c.mean = json_numbers(input->get("mean"));
    c.std = json_numbers(input->get("std"));
    for (double d : json_numbers(input->get("shape"))) c.chw.push_back(static_cast<int64_t>(d));
    if (c.chw.size() != 3) c.chw.clear();
  }
  return c;
}

// Card from artifact metadata: either a whole card as JSON under "card", or separate keys.
inline std::optional<Card> card_from_metadata(const std::map<std::string, std::string>& meta,
                                              const std::string& source) {
  auto parse = [](const std::string& text) { return mini_json::parse(text); };
  try {
    for (const char* key : {"card", "model_card", "card.json"}) {
      auto it = meta.find(key);
      if (it != meta.end()) return card_from_json(parse(it->second), source);
    }
    auto classes = meta.find("classes");
    if (classes == meta.end()) return std::nullopt;
    Card c;
    c.source = source;
    const auto v = parse(classes->second);
    c.classes = json_strings(&v);
    for (auto [key, into] : {std::pair{"mean", &c.mean}, std::pair{"std", &c.std}}) {
      auto it = meta.find(key);
      if (it != meta.end()) {
        const auto nums = parse(it->second);
        *into = json_numbers(&nums);
      }
    }
    return c;
  } catch (const mini_json::ParseError&) {
    return std::nullopt;  // metadata we do not understand: fall back to manifest.json
  }
}

// manifest.json in the artifact's folder or up to two folders above; fills the batch limit
// from the artifact's own entry when the manifest lists it.
inline std::optional<Card> card_from_manifest(const std::string& model_path) {
  const fs::path model = fs::absolute(model_path).lexically_normal();
  fs::path dir = model.parent_path();
  for (int up = 0; up < 3 && !dir.empty(); ++up, dir = dir.parent_path()) {
    const fs::path manifest = dir / "manifest.json";
    if (!fs::is_regular_file(manifest)) continue;
    mini_json::Value doc;
    try {
      doc = mini_json::parse(read_text(manifest));
    } catch (const mini_json::ParseError& e) {
      throw UsageError(manifest.string() + " is not valid JSON (" + e.what() + "); re-run export");
    }
    const auto* card = doc.get("card");
    if (!card) throw UsageError(manifest.string() + " has no \"card\"; re-run export");
    Card c = card_from_json(*card, manifest.string());
    const std::string rel = model.lexically_relative(dir).generic_string();
    if (const auto* arts = doc.get("artifacts"))
      for (const auto& a : arts->items) {
        const auto* path = a.get("path");
        const auto* batch = a.get("batch");
        const auto* max = batch ? batch->get("max") : nullptr;
        if (path && max && path->string == rel && max->is(mini_json::Value::Kind::Number))
          c.max_batch = static_cast<int64_t>(max->number);
      }
    return c;
  }
  return std::nullopt;
}

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

inline void print_topk(const std::vector<float>& logits, int64_t n, int64_t k, const Card& card, int top) {
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

inline int run_program_checked(const Options& o, const Program& p, const Loader& load) {
  using clock = std::chrono::steady_clock;
  const auto ms = [](clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); };

  const npy::Array batch = read_batch(o.input);
  auto t0 = clock::now();
  std::unique_ptr<Backend> backend = load(o);
  const double load_ms = ms(clock::now() - t0);
  const Card card = resolve_card(o, *backend);
  check_batch(batch, o.input, card);

  std::printf("%s: %s\n", p.name, backend->describe().c_str());
  std::printf("model: %s (loaded in %.1f ms)\n", o.model.c_str(), load_ms);
  std::printf("card: %s\n", card.source.empty() ? "none found (pass --classes FILE for names)" : card.source.c_str());
  if (card.mean.size() == 3 && card.std.size() == 3)
    std::printf("input: %s, expects mean [%g, %g, %g] std [%g, %g, %g] already applied\n", o.input.c_str(),
                card.mean[0], card.mean[1], card.mean[2], card.std[0], card.std[1], card.std[2]);
  std::printf("batch: %s float32\n", shape_str(batch.shape).c_str());

  std::vector<int64_t> out_shape;
  t0 = clock::now();
  std::vector<float> logits = backend->run(batch, out_shape);
  const double first_ms = ms(clock::now() - t0);
  if (out_shape.size() != 2 || out_shape[0] != batch.shape[0] ||
      static_cast<int64_t>(logits.size()) != out_shape[0] * out_shape[1])
    throw std::runtime_error("the model returned shape " + shape_str(out_shape) + "; expected " +
                             std::to_string(batch.shape[0]) + " x classes");
  for (int i = 1; i < o.warmup; ++i) backend->run(batch, out_shape);  // the first run was a warm-up

  std::vector<double> times;
  for (int i = 0; i < o.repeat; ++i) {
    t0 = clock::now();
    logits = backend->run(batch, out_shape);
    times.push_back(ms(clock::now() - t0));
  }
  std::sort(times.begin(), times.end());
  const double mean = std::accumulate(times.begin(), times.end(), 0.0) / times.size();

  if (!card.classes.empty() && static_cast<int64_t>(card.classes.size()) != out_shape[1])
    std::fprintf(stderr, "warning: %zu class names for %lld outputs; unnamed ones print as class_<i>\n",
                 card.classes.size(), static_cast<long long>(out_shape[1]));
  if (!o.quiet) print_topk(logits, out_shape[0], out_shape[1], card, o.top);
  std::printf("time per batch of %lld: mean %.3f ms, median %.3f ms, min %.3f ms over %d runs "
              "(first run %.3f ms)\n",
              static_cast<long long>(batch.shape[0]), mean, times[times.size() / 2], times.front(), o.repeat,
              first_ms);
  if (!o.dump_logits.empty()) {
    try {
      npy::write_float32(o.dump_logits, logits.data(), out_shape);
    } catch (const npy::Error& e) {
      throw UsageError(e.what());
    }
    std::printf("logits written to %s\n", o.dump_logits.c_str());
  }
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
