// See include/image_preprocess.hpp for the contract each step keeps.
#include "image_preprocess.hpp"

#include <algorithm>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>

#include <jpeglib.h>
#include <jerror.h>  // JWRN_JPEG_EOF
#include <png.h>
#include <stb/stb_image.h>

namespace alexnet::image {

namespace {

// Files above this are refused before reading: no image the pixel limit admits is this large
// compressed (an uncompressed BMP at the limit is about 540 MB).
constexpr uint64_t kMaxFileBytes = uint64_t(1) << 30;

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) throw ImageError("cannot read image " + path + ": no such file or not readable");
  const std::streamoff size = f.tellg();
  if (size < 0) throw ImageError("cannot read image " + path);
  if (static_cast<uint64_t>(size) > kMaxFileBytes)
    throw ImageError("cannot read image " + path + ": the file is over 1 GiB; shrink the image");
  std::vector<uint8_t> bytes(static_cast<size_t>(size));
  f.seekg(0);
  if (size > 0 && !f.read(reinterpret_cast<char*>(bytes.data()), size))
    throw ImageError("cannot read image " + path);
  return bytes;
}

void check_pixels(const std::string& path, uint64_t width, uint64_t height, const WarningSink& warn) {
  const uint64_t pixels = width * height;
  const std::string size = std::to_string(width) + " x " + std::to_string(height);
  if (width == 0 || height == 0) throw ImageError("cannot read image " + path + ": it is " + size);
  if (pixels > kMaxPixels)
    throw ImageError("cannot read image " + path + ": " + size + " is " + std::to_string(pixels) +
                     " pixels, over the limit of " + std::to_string(kMaxPixels) +
                     " (twice Pillow's MAX_IMAGE_PIXELS); shrink the image");
  if (pixels > kWarnPixels && warn)
    warn(path + " is " + size + " (" + std::to_string(pixels) + " pixels), over Pillow's decompression-bomb limit " +
         std::to_string(kWarnPixels) + "; decoding it anyway");
}

// ---------------------------------------------------------------------------------------------
// JPEG: libjpeg's errors arrive through a callback that must not return; longjmp back out.
// Only trivially destructible objects live between setjmp and the longjmp.
// ---------------------------------------------------------------------------------------------
struct JpegError {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void jpeg_fail(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

// A truncated file is refused, as Pillow refuses it ("image file is truncated"); libjpeg would
// warn and fill the rest with grey. Other warnings (extraneous bytes, ...) are ignored, as Pillow does.
void jpeg_message(j_common_ptr cinfo, int level) {
  if (level == -1 && cinfo->err->msg_code == JWRN_JPEG_EOF) jpeg_fail(cinfo);
}

Rgb8 decode_jpeg(const std::string& path, const std::vector<uint8_t>& bytes, const WarningSink& warn) {
  jpeg_decompress_struct cinfo;
  JpegError err;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_fail;
  err.mgr.emit_message = jpeg_message;
  Rgb8 out;
  std::string problem;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    throw ImageError("cannot read image " + path + ": " + err.message + " (corrupt or truncated JPEG)");
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, bytes.data(), static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(&cinfo, TRUE);
  if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
    problem = "a CMYK JPEG is not supported; convert it to RGB";
  } else {
    try {
      check_pixels(path, cinfo.image_width, cinfo.image_height, warn);
    } catch (const ImageError& e) {
      problem = e.what();
    }
  }
  if (!problem.empty()) {
    jpeg_destroy_decompress(&cinfo);
    throw ImageError(problem.rfind("cannot", 0) == 0 ? problem : "cannot read image " + path + ": " + problem);
  }
  cinfo.out_color_space = JCS_RGB;  // libjpeg-turbo replicates grayscale into RGB
  out.width = static_cast<int>(cinfo.image_width);
  out.height = static_cast<int>(cinfo.image_height);
  out.pixels.resize(static_cast<size_t>(out.width) * out.height * 3);
  jpeg_start_decompress(&cinfo);
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = out.pixels.data() + static_cast<size_t>(cinfo.output_scanline) * out.width * 3;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return out;
}

// ---------------------------------------------------------------------------------------------
// PNG: the same longjmp pattern; warnings (bad gamma, unknown chunks) are ignored, as Pillow does.
// ---------------------------------------------------------------------------------------------
struct PngSource {
  const std::vector<uint8_t>* bytes;
  size_t pos;
  char message[256];
};

void png_fail(png_structp png, png_const_charp msg) {
  auto* src = static_cast<PngSource*>(png_get_error_ptr(png));
  std::snprintf(src->message, sizeof src->message, "%s", msg);
  png_longjmp(png, 1);
}

void png_quiet(png_structp, png_const_charp) {}

void png_read_bytes(png_structp png, png_bytep data, png_size_t length) {
  auto* src = static_cast<PngSource*>(png_get_io_ptr(png));
  if (src->bytes->size() - src->pos < length) png_error(png, "the file ends early (truncated PNG)");
  std::memcpy(data, src->bytes->data() + src->pos, length);
  src->pos += length;
}

Rgb8 decode_png(const std::string& path, const std::vector<uint8_t>& bytes, const WarningSink& warn) {
  PngSource src{&bytes, 0, {}};
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, png_fail, png_quiet);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!info) {
    png_destroy_read_struct(&png, nullptr, nullptr);
    throw std::bad_alloc();
  }
  Rgb8 out;
  std::vector<uint8_t> raw;
  std::vector<png_bytep> rows;
  std::string problem;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    throw ImageError(problem.empty() ? "cannot read image " + path + ": " + src.message + " (corrupt PNG)" : problem);
  }
  png_set_read_fn(png, &src, png_read_bytes);
  png_set_user_limits(png, 0x7fffffff, 0x7fffffff);  // our own pixel limit applies below
  png_read_info(png, info);
  const png_uint_32 width = png_get_image_width(png, info), height = png_get_image_height(png, info);
  try {
    check_pixels(path, width, height, warn);
  } catch (const ImageError& e) {
    problem = e.what();
  }
  if (!problem.empty()) png_longjmp(png, 1);  // outside the handler: longjmp must not leave a catch block
  const int depth = png_get_bit_depth(png, info), type = png_get_color_type(png, info);
  const bool gray = (type & PNG_COLOR_MASK_COLOR) == 0;
  const bool gray16 = type == PNG_COLOR_TYPE_GRAY && depth == 16;  // scaled below, not truncated
  if (type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (gray && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (type & PNG_COLOR_MASK_ALPHA) png_set_strip_alpha(png);
  if (depth == 16 && !gray16) png_set_strip_16(png);  // the high byte, as Pillow's decoder keeps
  if (gray && !gray16) png_set_gray_to_rgb(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  const size_t stride = png_get_rowbytes(png, info);
  raw.resize(stride * height);
  rows.resize(height);
  for (png_uint_32 y = 0; y < height; ++y) rows[y] = raw.data() + y * stride;
  png_read_image(png, rows.data());
  png_read_end(png, nullptr);
  png_destroy_read_struct(&png, &info, nullptr);

  out.width = static_cast<int>(width);
  out.height = static_cast<int>(height);
  if (!gray16) {
    out.pixels = std::move(raw);
    return out;
  }
  out.pixels.resize(static_cast<size_t>(width) * height * 3);
  for (size_t i = 0; i < static_cast<size_t>(width) * height; ++i) {
    const unsigned v = (raw[2 * i] << 8) | raw[2 * i + 1];  // PNG stores 16-bit samples big-endian
    const auto u8 = static_cast<uint8_t>((v + 128) / 257);  // round(v * 255 / 65535); never a tie
    std::fill_n(out.pixels.begin() + 3 * i, 3, u8);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// BMP: stb_image, asked for 3 channels (palette expanded, alpha dropped).
// ---------------------------------------------------------------------------------------------
Rgb8 decode_bmp(const std::string& path, const std::vector<uint8_t>& bytes, const WarningSink& warn) {
  if (bytes.size() > static_cast<size_t>(std::numeric_limits<int>::max()))
    throw ImageError("cannot read image " + path + ": the file is too large for the BMP reader");
  const auto* data = bytes.data();
  const int len = static_cast<int>(bytes.size());
  int w = 0, h = 0, channels = 0;
  if (!stbi_info_from_memory(data, len, &w, &h, &channels))
    throw ImageError("cannot read image " + path + ": " + stbi_failure_reason() + " (corrupt or unsupported BMP)");
  check_pixels(path, static_cast<uint64_t>(w), static_cast<uint64_t>(h), warn);
  unsigned char* pixels = stbi_load_from_memory(data, len, &w, &h, &channels, 3);
  if (!pixels)
    throw ImageError("cannot read image " + path + ": " + stbi_failure_reason() + " (corrupt or unsupported BMP)");
  Rgb8 out;
  out.width = w;
  out.height = h;
  out.pixels.assign(pixels, pixels + static_cast<size_t>(w) * h * 3);
  stbi_image_free(pixels);
  return out;
}

std::string format_name(const std::vector<uint8_t>& b) {
  auto starts = [&](const char* magic, size_t n, size_t at = 0) {
    return b.size() >= at + n && std::memcmp(b.data() + at, magic, n) == 0;
  };
  if (starts("GIF8", 4)) return "GIF";
  if (starts("RIFF", 4) && starts("WEBP", 4, 8)) return "WebP";
  if (starts("II*\0", 4) || starts("MM\0*", 4)) return "TIFF";
  return "";
}

// ---------------------------------------------------------------------------------------------
// Resize: separable triangle filter over a support widened by the downscale factor, weights in
// fixed point with as many fraction bits as a 16-bit weight allows (torch's uint8 kernel, which
// torchvision uses on CPU), each pass rounded to 8 bits.
// ---------------------------------------------------------------------------------------------
struct Taps {
  int size = 0;       // taps per output sample (the widest window)
  int precision = 0;  // fraction bits of `weights`
  std::vector<int> first, count;
  std::vector<int32_t> weights;  // output sample o: weights[o * size .. o * size + count[o])
};

Taps make_taps(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double support = scale >= 1.0 ? scale : 1.0;  // the triangle's half-width in input samples
  const double inv = scale >= 1.0 ? 1.0 / scale : 1.0;
  Taps t;
  t.size = static_cast<int>(std::ceil(support)) * 2 + 1;
  t.first.resize(out_size);
  t.count.resize(out_size);
  std::vector<double> w(static_cast<size_t>(out_size) * t.size, 0.0);
  double w_max = 0.0;
  for (int o = 0; o < out_size; ++o) {
    const double center = scale * (o + 0.5);
    // Truncation toward zero, then clamping, as the reference kernels compute the window.
    const int lo = std::max(static_cast<int>(center - support + 0.5), 0);
    const int hi = std::min(static_cast<int>(center + support + 0.5), in_size);
    const int n = std::min(hi - lo, t.size);
    double total = 0.0;
    double* row = w.data() + static_cast<size_t>(o) * t.size;
    for (int j = 0; j < n; ++j) {
      const double x = std::abs((j + lo - center + 0.5) * inv);
      row[j] = x < 1.0 ? 1.0 - x : 0.0;
      total += row[j];
    }
    for (int j = 0; j < n && total != 0.0; ++j) {
      row[j] /= total;
      w_max = std::max(w_max, row[j]);
    }
    t.first[o] = lo;
    t.count[o] = n;
  }
  for (t.precision = 0; t.precision < 22; ++t.precision)
    if (static_cast<int>(0.5 + w_max * (1 << (t.precision + 1))) >= (1 << 15)) break;
  t.weights.resize(w.size());
  for (size_t i = 0; i < w.size(); ++i) {
    const double v = w[i] * (1 << t.precision);
    t.weights[i] = static_cast<int32_t>(v < 0 ? v - 0.5 : v + 0.5);
  }
  return t;
}

inline int32_t precision_half(int precision) { return precision > 0 ? 1 << (precision - 1) : 0; }

inline uint8_t fixed_to_u8(int32_t acc, int precision) {
  const int32_t v = acc >> precision;
  return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

// Output columns [x0, x1) of the width pass, for input rows [r0, r1).
Rgb8 resize_width(const Rgb8& in, const Taps& t, int x0, int x1, int r0, int r1) {
  const int32_t half = precision_half(t.precision);
  const int width = x1 - x0;
  Rgb8 out{width, r1 - r0, std::vector<uint8_t>(static_cast<size_t>(width) * (r1 - r0) * 3)};
  for (int y = r0; y < r1; ++y) {
    const uint8_t* src = in.pixels.data() + static_cast<size_t>(y) * in.width * 3;
    uint8_t* dst = out.pixels.data() + static_cast<size_t>(y - r0) * width * 3;
    for (int o = x0; o < x1; ++o) {
      const int32_t* k = t.weights.data() + static_cast<size_t>(o) * t.size;
      const uint8_t* s = src + static_cast<size_t>(t.first[o]) * 3;
      int32_t r = half, g = half, b = half;
      for (int j = 0; j < t.count[o]; ++j) {
        r += k[j] * s[3 * j];
        g += k[j] * s[3 * j + 1];
        b += k[j] * s[3 * j + 2];
      }
      uint8_t* d = dst + static_cast<size_t>(o - x0) * 3;
      d[0] = fixed_to_u8(r, t.precision);
      d[1] = fixed_to_u8(g, t.precision);
      d[2] = fixed_to_u8(b, t.precision);
    }
  }
  return out;
}

// Output rows [y0, y1) of the height pass; `in` holds input rows from r0 on.
Rgb8 resize_height(const Rgb8& in, const Taps& t, int y0, int y1, int r0) {
  const int32_t half = precision_half(t.precision);
  const size_t row_len = static_cast<size_t>(in.width) * 3;
  Rgb8 out{in.width, y1 - y0, std::vector<uint8_t>(row_len * (y1 - y0))};
  std::vector<int32_t> acc(row_len);
  for (int o = y0; o < y1; ++o) {
    std::fill(acc.begin(), acc.end(), half);
    const int32_t* k = t.weights.data() + static_cast<size_t>(o) * t.size;
    for (int j = 0; j < t.count[o]; ++j) {
      const uint8_t* src = in.pixels.data() + static_cast<size_t>(t.first[o] + j - r0) * row_len;
      for (size_t i = 0; i < row_len; ++i) acc[i] += k[j] * src[i];
    }
    uint8_t* dst = out.pixels.data() + static_cast<size_t>(o - y0) * row_len;
    for (size_t i = 0; i < row_len; ++i) dst[i] = fixed_to_u8(acc[i], t.precision);
  }
  return out;
}

Rgb8 copy_window(const Rgb8& in, int x0, int x1, int r0, int r1) {
  Rgb8 out{x1 - x0, r1 - r0, std::vector<uint8_t>(static_cast<size_t>(x1 - x0) * (r1 - r0) * 3)};
  for (int y = r0; y < r1; ++y)
    std::memcpy(&out.pixels[static_cast<size_t>(y - r0) * out.width * 3],
                &in.pixels[(static_cast<size_t>(y) * in.width + x0) * 3], static_cast<size_t>(out.width) * 3);
  return out;
}

// The resized image's window [x0, x1) x [y0, y1) only: every pixel in it is the one the full resize
// computes (each output pixel depends on its own taps alone), at the cost of the window. A pass
// whose size does not change is skipped, as the reference kernels skip it.
Rgb8 resize_window(const Rgb8& in, int out_w, int out_h, int x0, int x1, int y0, int y1) {
  const bool width_changes = out_w != in.width, height_changes = out_h != in.height;
  Taps rows;
  int r0 = y0, r1 = y1;  // input rows the window needs
  if (height_changes) {
    rows = make_taps(in.height, out_h);
    r0 = in.height;
    r1 = 0;
    for (int o = y0; o < y1; ++o) {
      r0 = std::min(r0, rows.first[o]);
      r1 = std::max(r1, rows.first[o] + rows.count[o]);
    }
  }
  Rgb8 mid = width_changes ? resize_width(in, make_taps(in.width, out_w), x0, x1, r0, r1)
                           : copy_window(in, x0, x1, r0, r1);
  return height_changes ? resize_height(mid, rows, y0, y1, r0) : mid;
}

struct Resized {
  int width, height;
};

Resized resized_size(const Rgb8& image, int side) {
  const int64_t short_side = std::min(image.width, image.height), long_side = std::max(image.width, image.height);
  // Python's int(side * long / short): an exact product, one correctly rounded division, truncation.
  const auto long_out = static_cast<int64_t>(static_cast<double>(side * long_side) / static_cast<double>(short_side));
  const uint64_t pixels = static_cast<uint64_t>(side) * static_cast<uint64_t>(long_out);
  if (pixels > kMaxResizedPixels)
    throw ImageError("image " + std::to_string(image.width) + " x " + std::to_string(image.height) +
                     ": its aspect ratio makes the resized image " + std::to_string(pixels) + " pixels (limit " +
                     std::to_string(kMaxResizedPixels) + "); crop it first");
  return image.width <= image.height ? Resized{side, static_cast<int>(long_out)}
                                     : Resized{static_cast<int>(long_out), side};
}

// Where a centre crop of `size` takes its pixels from an extent of `extent`: the zero padding before
// (when the extent is smaller, the smaller half first) and the first source index.
struct CropAxis {
  int pad, start, count;  // output [pad, pad + count) <- source [start, start + count)
};

CropAxis crop_axis(int extent, int size) {
  const int pad = std::max(size - extent, 0) / 2;
  const int padded = std::max(extent, size);
  // round((extent - size) / 2) with ties to even, as Python's round().
  const int offset = static_cast<int>(std::nearbyint((padded - size) / 2.0));
  const int start = offset - pad;  // >= 0: padding and cropping never both apply on one axis
  return {std::max(pad - offset, 0), std::max(start, 0), std::min(size, extent)};
}

// Places `window` (count.x x count.y pixels) into a zeroed size x size canvas at the padding.
Rgb8 place(const Rgb8& window, int size, const CropAxis& x, const CropAxis& y) {
  Rgb8 out{size, size, std::vector<uint8_t>(static_cast<size_t>(size) * size * 3, 0)};
  for (int row = 0; row < y.count; ++row)
    std::memcpy(&out.pixels[(static_cast<size_t>(row + y.pad) * size + x.pad) * 3],
                &window.pixels[static_cast<size_t>(row) * window.width * 3], static_cast<size_t>(x.count) * 3);
  return out;
}

}  // namespace

Rgb8 decode(const std::string& path, const WarningSink& warn) {
  const std::vector<uint8_t> bytes = read_file(path);
  if (bytes.empty()) throw ImageError("cannot read image " + path + ": the file is empty");
  if (bytes.size() >= 3 && bytes[0] == 0xFF && bytes[1] == 0xD8 && bytes[2] == 0xFF)
    return decode_jpeg(path, bytes, warn);
  if (bytes.size() >= 8 && std::memcmp(bytes.data(), "\x89PNG\r\n\x1a\n", 8) == 0) return decode_png(path, bytes, warn);
  if (bytes.size() >= 2 && bytes[0] == 'B' && bytes[1] == 'M') return decode_bmp(path, bytes, warn);
  const std::string known = format_name(bytes);
  throw ImageError("cannot read image " + path + ": " +
                   (known.empty() ? "not a JPEG, PNG or BMP file" : known + " is not supported") +
                   " (convert it to JPEG or PNG)");
}

Rgb8 resize_shorter_side(const Rgb8& image, int side) {
  const Resized r = resized_size(image, side);
  if (r.width == image.width && r.height == image.height) return image;
  return resize_window(image, r.width, r.height, 0, r.width, 0, r.height);
}

Rgb8 center_crop(const Rgb8& image, int size) {
  const CropAxis x = crop_axis(image.width, size), y = crop_axis(image.height, size);
  return place(copy_window(image, x.start, x.start + x.count, y.start, y.start + y.count), size, x, y);
}

void normalize_chw(const Rgb8& image, const Preprocessing& p, float* out) {
  // torchvision: ToDtype(float32, scale=True) multiplies by the float 1/255; Normalize subtracts
  // and divides in float32. The same three float operations give the same bits.
  const float scale = static_cast<float>(1.0 / 255.0);
  const size_t plane = static_cast<size_t>(image.width) * image.height;
  for (size_t c = 0; c < 3; ++c)
    for (size_t i = 0; i < plane; ++i) {
      const float v = static_cast<float>(image.pixels[3 * i + c]) * scale;
      out[c * plane + i] = (v - p.mean[c]) / p.std[c];
    }
}

void preprocess(const Rgb8& image, const Preprocessing& p, float* out) {
  // resize_shorter_side then center_crop, fused: only the pixels the crop keeps are resized.
  const Resized r = resized_size(image, p.resize);
  const CropAxis x = crop_axis(r.width, p.crop), y = crop_axis(r.height, p.crop);
  const Rgb8 window = resize_window(image, r.width, r.height, x.start, x.start + x.count, y.start, y.start + y.count);
  normalize_chw(place(window, p.crop, x, y), p, out);
}

}  // namespace alexnet::image
