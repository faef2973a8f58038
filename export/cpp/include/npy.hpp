// Reading and writing float32 C-order .npy files (NumPy's format, versions 1.0-3.0).
//
// Format: the 6-byte magic "\x93NUMPY", a major and minor version byte, the header length
// (2 bytes little-endian in 1.0, 4 bytes in 2.0/3.0), then an ASCII Python dict literal
// {'descr': '<f4', 'fortran_order': False, 'shape': (N, C, H, W), } padded with spaces to a
// multiple of 64 bytes and ending in '\n', then the raw data.
// Only what `alexnet-deploy preprocess` writes is accepted; anything else is refused with a
// message naming the problem, never read as garbage.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <unistd.h>

namespace npy {

struct Array {
  std::vector<int64_t> shape;
  std::vector<float> data;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {

inline bool little_endian_host() {
  const uint16_t one = 1;
  unsigned char first;
  std::memcpy(&first, &one, 1);
  return first == 1;
}

// The value text after 'key': in the header dict, up to the next top-level ',' or '}'.
inline std::string dict_value(const std::string& header, const std::string& key) {
  const std::string quoted[] = {"'" + key + "'", "\"" + key + "\""};
  size_t pos = std::string::npos;
  for (const auto& q : quoted)
    if ((pos = header.find(q)) != std::string::npos) {
      pos += q.size();
      break;
    }
  if (pos == std::string::npos) throw Error("header has no '" + key + "' entry");
  pos = header.find(':', pos);
  if (pos == std::string::npos) throw Error("header entry '" + key + "' has no value");
  ++pos;
  int depth = 0;
  size_t end = pos;
  for (; end < header.size(); ++end) {
    char c = header[end];
    if (c == '(' || c == '[') ++depth;
    if (c == ')' || c == ']') --depth;
    if (depth == 0 && (c == ',' || c == '}')) break;
  }
  std::string v = header.substr(pos, end - pos);
  const auto first = v.find_first_not_of(" \t");
  const auto last = v.find_last_not_of(" \t");
  return first == std::string::npos ? "" : v.substr(first, last - first + 1);
}

inline std::vector<int64_t> parse_shape(const std::string& text) {
  if (text.size() < 2 || text.front() != '(' || text.back() != ')')
    throw Error("shape is not a tuple: " + text);
  std::vector<int64_t> shape;
  const std::string inner = text.substr(1, text.size() - 2);
  size_t start = 0;
  while (start <= inner.size()) {
    size_t comma = inner.find(',', start);
    if (comma == std::string::npos) comma = inner.size();
    const std::string item = inner.substr(start, comma - start);
    start = comma + 1;
    if (item.find_first_not_of(' ') == std::string::npos) continue;  // "(5,)" has an empty tail
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(item, &used);
    } catch (const std::logic_error&) {
      used = 0;
    }
    if (used == 0 || v < 0 || item.find_first_not_of(' ', item.find_first_not_of(' ') + used) != std::string::npos)
      throw Error("bad dimension '" + item + "' in shape " + text);
    shape.push_back(v);
  }
  return shape;
}

}  // namespace detail

// Reads a little-endian float32, C-order array; throws npy::Error naming what is wrong.
inline Array read_float32(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error("cannot open " + path);
  char magic[6];
  if (!f.read(magic, 6) || std::memcmp(magic, "\x93NUMPY", 6) != 0)
    throw Error(path + " is not a .npy file (bad magic); write one with `alexnet-deploy preprocess`");
  unsigned char version[2];
  if (!f.read(reinterpret_cast<char*>(version), 2)) throw Error(path + ": truncated header");
  uint32_t header_len = 0;
  if (version[0] == 1) {
    unsigned char b[2];
    if (!f.read(reinterpret_cast<char*>(b), 2)) throw Error(path + ": truncated header");
    header_len = b[0] | (b[1] << 8);
  } else if (version[0] == 2 || version[0] == 3) {
    unsigned char b[4];
    if (!f.read(reinterpret_cast<char*>(b), 4)) throw Error(path + ": truncated header");
    header_len = b[0] | (b[1] << 8) | (b[2] << 16) | (uint32_t(b[3]) << 24);
  } else {
    throw Error(path + ": unsupported .npy version " + std::to_string(version[0]));
  }
  if (header_len > (1u << 20)) throw Error(path + ": implausible header length");
  std::string header(header_len, '\0');
  if (!f.read(header.data(), header_len)) throw Error(path + ": truncated header");

  Array a;
  try {
    const std::string descr = detail::dict_value(header, "descr");
    if (descr != "'<f4'" && descr != "\"<f4\"")
      throw Error("dtype is " + descr + ", expected '<f4' (little-endian float32)");
    if (detail::dict_value(header, "fortran_order") != "False")
      throw Error("array is Fortran-ordered; save a C-order array (numpy.ascontiguousarray)");
    a.shape = detail::parse_shape(detail::dict_value(header, "shape"));
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
  if (!detail::little_endian_host()) throw Error("this reader supports little-endian hosts only");
  const int64_t n = a.numel();
  if (n > (int64_t(1) << 34)) throw Error(path + ": array too large");
  a.data.resize(static_cast<size_t>(n));
  if (!f.read(reinterpret_cast<char*>(a.data.data()), static_cast<std::streamsize>(n * sizeof(float))))
    throw Error(path + ": file ends before the " + std::to_string(n) + " floats its header declares");
  return a;
}

// Writes a float32 C-order array as .npy version 1.0 (what numpy.save writes for small headers).
inline void write_float32(const std::string& path, const float* data, const std::vector<int64_t>& shape) {
  std::string dims;
  int64_t n = 1;
  for (int64_t d : shape) {
    dims += std::to_string(d) + ", ";
    n *= d;
  }
  if (shape.size() > 1) dims.resize(dims.size() - 1);  // "(2, 10)" but "(5,)"
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  // Written under a temporary name and renamed, so a failure never leaves a partial file at `path`.
  const std::string tmp = path + ".partial-" + std::to_string(::getpid());
  std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
  if (!f) throw Error("cannot write " + path);
  const unsigned char prefix[8] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
  f.write(reinterpret_cast<const char*>(prefix), 8);
  const unsigned char len[2] = {static_cast<unsigned char>(header.size() & 0xff),
                                static_cast<unsigned char>(header.size() >> 8)};
  f.write(reinterpret_cast<const char*>(len), 2);
  f.write(header.data(), static_cast<std::streamsize>(header.size()));
  f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(n * sizeof(float)));
  f.close();
  if (!f || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw Error("failed writing " + path);
  }
}

}  // namespace npy
