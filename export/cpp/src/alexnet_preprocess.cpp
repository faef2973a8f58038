// The C++ twin of `alexnet-deploy preprocess`: image files -> the model card's input batch as a
// float32 NCHW .npy file, through include/image_preprocess.hpp. Needs no runtime, only the
// image libraries and nlohmann/json, so an app can check its preprocessing on its own.
#include <cstdio>
#include <string>
#include <vector>

#include "image_preprocess.hpp"
#include "model_card.hpp"
#include "npy.hpp"

namespace {

using alexnet::UsageError;
namespace fs = alexnet::fs;

const char* kUsage =
    "usage: alexnet_preprocess IMAGE... --card EXPORT|manifest.json --out OUT.npy\n\n"
    "Decodes the images (JPEG, PNG, BMP) and applies the model card's preprocessing (resize, centre\n"
    "crop, mean/std), as `alexnet-deploy preprocess` does in Python.\n\n"
    "  --card PATH   an export folder (its manifest.json) or a manifest.json file\n"
    "  --out FILE    the batch to write (float32, N x 3 x crop x crop)\n"
    "  -h, --help    show this help\n\n"
    "exit status: 0 ok, 2 bad arguments or input\n";

alexnet::Card read_card(const std::string& where) {
  const fs::path path = fs::is_directory(where) ? fs::path(where) / "manifest.json" : fs::path(where);
  if (!fs::is_regular_file(path)) throw UsageError("--card " + where + ": no manifest.json there (pass an export folder)");
  alexnet::json doc;
  try {
    doc = alexnet::json::parse(alexnet::read_text(path));
  } catch (const alexnet::json::parse_error& e) {
    throw UsageError(path.string() + " is not valid JSON (" + e.what() + ")");
  }
  const auto card = doc.is_object() ? doc.find("card") : doc.end();
  if (card == doc.end()) throw UsageError(path.string() + " has no \"card\"; re-run export");
  return alexnet::card_from_json(*card, path.string());
}

int run(int argc, char** argv) {
  std::vector<std::string> images;
  std::string card_path, out;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(a + " needs a value");
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (a == "--card") {
      card_path = next();
    } else if (a == "--out") {
      out = next();
    } else if (a.size() > 1 && a[0] == '-') {
      throw UsageError("unknown option " + a + " (see alexnet_preprocess --help)");
    } else {
      images.push_back(a);
    }
  }
  if (images.empty() || card_path.empty() || out.empty())
    throw UsageError("give IMAGE..., --card and --out (see alexnet_preprocess --help)");
  if (fs::path(out).extension() != ".npy") throw UsageError("--out must end in .npy, got " + out);
  for (const auto& path : images)
    if (!fs::is_regular_file(path)) throw UsageError("image not found: " + path);
  const alexnet::Card card = read_card(card_path);
  const auto p = card.preprocessing();
  if (!p) throw UsageError("the model card in " + card.source + " has no preprocessing (input.resize, crop, mean, std)");

  const size_t per_image = static_cast<size_t>(3) * p->crop * p->crop;
  std::vector<float> batch(per_image * images.size());
  for (size_t i = 0; i < images.size(); ++i) {
    try {
      const auto warn = [](const std::string& m) { std::fprintf(stderr, "warning: %s\n", m.c_str()); };
      alexnet::image::preprocess(alexnet::image::decode(images[i], warn), *p, batch.data() + i * per_image);
    } catch (const alexnet::image::ImageError& e) {
      throw UsageError(e.what());
    }
  }
  const std::vector<int64_t> shape{static_cast<int64_t>(images.size()), 3, p->crop, p->crop};
  try {
    npy::write_float32(out, batch.data(), shape);
  } catch (const npy::Error& e) {
    throw UsageError(e.what());
  }
  std::printf("wrote %s: float32 %zux3x%dx%d (NCHW)\n", out.c_str(), images.size(), p->crop, p->crop);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {  // UsageError, and a bad_alloc on an image too large for memory
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
}
