// Image file -> the model's input tensor, as the Python path (`alexnet-deploy preprocess`, predict,
// validate) makes it. Copy this header and src/image_preprocess.cpp into an app; they need
// libjpeg(-turbo), libpng and stb_image (Debian: libjpeg62-turbo-dev libpng-dev libstb-dev).
//
// The contract, step by step, with the Python side it matches:
//  1. decode to 8-bit RGB (alexnet_deploy.data.load_image / to_rgb8):
//     JPEG through libjpeg-turbo, the library Pillow decodes with, default settings (islow IDCT,
//     fancy upsampling), so pixels are identical; grayscale JPEG replicated to RGB. CMYK JPEG is
//     refused (Pillow would convert it; convert the file to RGB first).
//     PNG through libpng: palette expanded (transparency ignored), gray replicated, alpha dropped,
//     16-bit gray scaled to 8 bits as round(v * 255 / 65535), 16-bit colour keeps the high byte
//     (what Pillow's decoder gives). Gamma chunks are ignored, as Pillow ignores them.
//     BMP through stb_image.
//     EXIF orientation is ignored, in both (torchvision's loader ignores it: training saw it so).
//     Size limits, Pillow's: refused above 2 x 89,478,485 pixels before decoding, a warning above
//     1 x; and a resize whose output would exceed 2^25 pixels (a thin panorama) is refused.
//  2. resize the shorter side to `resize` (longer side: floor(resize * long / short)), bilinear
//     with antialiasing: torchvision Resize(antialias=True) on a uint8 image, whose kernel is
//     Pillow's triangle filter with fixed-point weights, width first, then height, 8-bit between.
//  3. centre crop to `crop` x `crop` (offsets round((size - crop) / 2), ties to even as Python's
//     round; zero padding when the image is smaller, as torchvision's CenterCrop).
//  4. float = u8 / 255, then (float - mean[c]) / std[c] in float32; planar C x H x W.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace alexnet::image {

// Pillow's Image.MAX_IMAGE_PIXELS: above it a warning, above twice it a refusal.
constexpr uint64_t kWarnPixels = 89478485;
constexpr uint64_t kMaxPixels = 2 * kWarnPixels;
// alexnet_deploy.data.MAX_RESIZED_PIXELS: the largest image the resize may produce.
constexpr uint64_t kMaxResizedPixels = uint64_t(1) << 25;

// The image cannot be used (unreadable, corrupt, truncated, unsupported, too large): the
// message names the file and what to do.
class ImageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// 8-bit RGB, interleaved, row-major: pixel (x, y) channel c at pixels[(y * width + x) * 3 + c].
struct Rgb8 {
  int width = 0, height = 0;
  std::vector<uint8_t> pixels;
};

// The card's `input` fields that define preprocessing.
struct Preprocessing {
  int resize = 0;  // shorter side after the resize
  int crop = 0;    // square centre crop; the tensor is 3 x crop x crop
  std::array<float, 3> mean{}, std{};
};

// Called with a one-line message for an image decoded in spite of a concern (Pillow's warning).
using WarningSink = std::function<void(const std::string&)>;

// Decodes a JPEG, PNG or BMP file (chosen by its first bytes, not its name) to 8-bit RGB.
Rgb8 decode(const std::string& path, const WarningSink& warn = {});

// The resize of step 2; throws ImageError when the output would exceed kMaxResizedPixels.
Rgb8 resize_shorter_side(const Rgb8& image, int side);

// Step 3.
Rgb8 center_crop(const Rgb8& image, int size);

// Step 4 into out[0 .. 3 * size * size), where size = image.width = image.height.
void normalize_chw(const Rgb8& image, const Preprocessing& p, float* out);

// Steps 2-4 of a decoded image: 3 * p.crop * p.crop floats written to `out`.
void preprocess(const Rgb8& image, const Preprocessing& p, float* out);

}  // namespace alexnet::image
