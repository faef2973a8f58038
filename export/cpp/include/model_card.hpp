// The model card as the C++ programs read it: class names, the input shape, the preprocessing
// (resize, crop, mean, std) and the artifact's batch limit. The card travels with every export:
// in manifest.json, ONNX metadata_props (kept by OpenVINO as rt_info/framework), the TorchScript
// extra file card.json and the AOTInductor package metadata. JSON through nlohmann/json.
#pragma once

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "image_preprocess.hpp"

namespace alexnet {

namespace fs = std::filesystem;
using json = nlohmann::json;

// A problem with what the user passed (arguments, files, shapes): exit 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Card {
  std::vector<std::string> classes;
  std::vector<double> mean, std;
  std::vector<int64_t> chw;  // expected C, H, W; empty when unknown
  int64_t resize = 0, crop = 0;  // 0 when unknown
  int64_t max_batch = 0;     // 0 when unknown
  std::string source;        // where the card was read from, for the log

  // The card's preprocessing, or nullopt when it lacks a field images need.
  std::optional<image::Preprocessing> preprocessing() const {
    if (crop <= 0 || resize <= 0 || mean.size() != 3 || std.size() != 3) return std::nullopt;
    image::Preprocessing p;
    p.resize = static_cast<int>(resize);
    p.crop = static_cast<int>(crop);
    for (size_t c = 0; c < 3; ++c) {
      p.mean[c] = static_cast<float>(mean[c]);  // torchvision's Normalize holds them as float32
      p.std[c] = static_cast<float>(std[c]);
      if (!(p.std[c] > 0) || !std::isfinite(p.mean[c])) return std::nullopt;
    }
    return p;
  }
};

inline std::string read_text(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw UsageError("cannot read " + path.string());
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

namespace card_detail {

inline std::vector<double> numbers(const json& obj, const char* key) {
  std::vector<double> out;
  const auto it = obj.find(key);
  if (it != obj.end() && it->is_array())
    for (const auto& x : *it)
      if (x.is_number()) out.push_back(x.get<double>());
  return out;
}

inline std::vector<std::string> strings(const json& v) {
  std::vector<std::string> out;
  if (v.is_array())
    for (const auto& x : v)
      if (x.is_string()) out.push_back(x.get<std::string>());
  return out;
}

inline int64_t integer(const json& obj, const char* key) {
  const auto it = obj.find(key);
  return it != obj.end() && it->is_number_integer() ? it->get<int64_t>() : 0;
}

}  // namespace card_detail

// The manifest's "card" object (ModelCard in alexnet_deploy/card.py). Fields the Python model
// derives are derived the same way: crop from the shape, resize from the crop (256/224 of it).
inline Card card_from_json(const json& card, const std::string& source) {
  Card c;
  c.source = source;
  if (!card.is_object()) return c;
  if (const auto it = card.find("classes"); it != card.end()) c.classes = card_detail::strings(*it);
  const auto input = card.find("input");
  if (input == card.end() || !input->is_object()) return c;
  c.mean = card_detail::numbers(*input, "mean");
  c.std = card_detail::numbers(*input, "std");
  for (double d : card_detail::numbers(*input, "shape")) c.chw.push_back(static_cast<int64_t>(d));
  if (c.chw.size() != 3) c.chw.clear();
  c.crop = card_detail::integer(*input, "crop");
  if (c.crop <= 0 && !c.chw.empty()) c.crop = c.chw[2];
  c.resize = card_detail::integer(*input, "resize");
  if (c.resize <= 0 && c.crop > 0) c.resize = std::llround(c.crop * 256.0 / 224.0);
  return c;
}

// Card from artifact metadata: either a whole card as JSON under "card", or separate keys.
inline std::optional<Card> card_from_metadata(const std::map<std::string, std::string>& meta,
                                              const std::string& source) {
  for (const char* key : {"card", "model_card", "card.json"}) {
    const auto it = meta.find(key);
    if (it == meta.end()) continue;
    const json doc = json::parse(it->second, nullptr, /*allow_exceptions=*/false);
    if (doc.is_discarded()) return std::nullopt;  // metadata we do not understand: use manifest.json
    return card_from_json(doc, source);
  }
  const auto classes = meta.find("classes");
  if (classes == meta.end()) return std::nullopt;
  json flat = json::object();
  for (const char* key : {"classes", "mean", "std"}) {
    const auto it = meta.find(key);
    if (it == meta.end()) continue;
    const json v = json::parse(it->second, nullptr, false);
    if (v.is_discarded()) return std::nullopt;
    if (std::string(key) == "classes") flat["classes"] = v; else flat["input"][key] = v;
  }
  return card_from_json(flat, source);
}

// manifest.json in the artifact's folder or up to two folders above; fills the batch limit
// from the artifact's own entry when the manifest lists it.
inline std::optional<Card> card_from_manifest(const std::string& model_path) {
  const fs::path model = fs::absolute(model_path).lexically_normal();
  fs::path dir = model.parent_path();
  for (int up = 0; up < 3 && !dir.empty(); ++up, dir = dir.parent_path()) {
    const fs::path manifest = dir / "manifest.json";
    if (!fs::is_regular_file(manifest)) continue;
    json doc;
    try {
      doc = json::parse(read_text(manifest));
    } catch (const json::parse_error& e) {
      throw UsageError(manifest.string() + " is not valid JSON (" + e.what() + "); re-run export");
    }
    const auto card = doc.is_object() ? doc.find("card") : doc.end();
    if (!doc.is_object() || card == doc.end() || !card->is_object())
      throw UsageError(manifest.string() + " has no \"card\"; re-run export");
    Card c = card_from_json(*card, manifest.string());
    const std::string rel = model.lexically_relative(dir).generic_string();
    const auto arts = doc.find("artifacts");
    if (arts != doc.end() && arts->is_array())
      for (const auto& a : *arts) {
        if (!a.is_object() || a.value("path", json()) != rel) continue;
        const auto batch = a.find("batch");
        if (batch != a.end() && batch->is_object()) c.max_batch = card_detail::integer(*batch, "max");
      }
    return c;
  }
  return std::nullopt;
}

}  // namespace alexnet
