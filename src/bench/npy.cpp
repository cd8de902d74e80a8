#include "bench/npy.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <sstream>
#include <vector>

#include "bench/parse.hpp"
#include "longattn/error.hpp"

namespace longattn::bench {
namespace {

constexpr char kMagic[] = "\x93NUMPY";

// Text after `key':` up to the next top-level delimiter of the header dict.
std::string dict_value(const std::string& dict, const std::string& key, const std::string& path, const char* what) {
    const std::size_t k = dict.find("'" + key + "'");
    require(k != std::string::npos, what, "'", path, "' is not a valid .npy file: no '", key, "' in its header");
    std::size_t v = dict.find(':', k);
    require(v != std::string::npos, what, "'", path, "': malformed .npy header");
    ++v;
    while (v < dict.size() && dict[v] == ' ') ++v;
    std::size_t e = v;
    if (e < dict.size() && dict[e] == '(') e = dict.find(')', e) + 1;
    else
        while (e < dict.size() && dict[e] != ',' && dict[e] != '}') ++e;
    return dict.substr(v, e - v);
}

void pread_all(int fd, void* buf, std::size_t n, std::size_t off, const std::string& path, const char* what) {
    auto* p = static_cast<char*>(buf);
    while (n > 0) {
        const ssize_t r = ::pread(fd, p, n, static_cast<off_t>(off));
        require(r > 0, what, "cannot read '", path, "': ", r == 0 ? "file is shorter than its header says" : std::strerror(errno));
        p += r;
        n -= static_cast<std::size_t>(r);
        off += static_cast<std::size_t>(r);
    }
}

std::string header_text(const std::vector<std::int64_t>& shape, DType t) {
    std::ostringstream os;
    os << "{'descr': '" << (t == DType::f32 ? "<f4" : "<f2") << "', 'fortran_order': False, 'shape': (";
    for (std::size_t i = 0; i < shape.size(); ++i) os << shape[i] << (shape.size() == 1 || i + 1 < shape.size() ? "," : "") << (i + 1 < shape.size() ? " " : "");
    os << "), }";
    std::string h = os.str();
    // Version 1.0: 10 bytes of preamble; the data starts on a 64-byte boundary; the header ends in '\n'.
    const std::size_t total = (10 + h.size() + 1 + 63) / 64 * 64;
    h.append(total - 10 - h.size() - 1, ' ');
    h.push_back('\n');
    return h;
}

}  // namespace

void pwrite_all(int fd, const void* buf, std::size_t n, std::size_t off, const std::string& path) {
    const auto* p = static_cast<const char*>(buf);
    while (n > 0) {
        const ssize_t r = ::pwrite(fd, p, n, static_cast<off_t>(off));
        if (r <= 0) throw std::runtime_error("cannot write '" + path + "': " + std::strerror(errno));
        p += r;
        n -= static_cast<std::size_t>(r);
        off += static_cast<std::size_t>(r);
    }
}

std::int64_t NpyHeader::numel() const {
    std::int64_t n = 1;
    for (auto s : shape) n *= s;
    return n;
}

NpyHeader npy_read_header(const std::string& path, const char* what) {
    require_input_file(path, what);  // a FIFO or a device would block every rank in open()
    const int fd = ::open(path.c_str(), O_RDONLY);
    require(fd >= 0, what, "cannot open '", path, "': ", std::strerror(errno));
    struct Closer {
        int fd;
        ~Closer() { ::close(fd); }
    } closer{fd};
    unsigned char pre[12] = {};
    const ssize_t got = ::pread(fd, pre, sizeof(pre), 0);
    require(got >= 10 && std::memcmp(pre, kMagic, 6) == 0, what, "'", path, "' is not a .npy file (no NUMPY magic)");
    const int major = pre[6];
    require(major >= 1 && major <= 3, what, "'", path, "': .npy format version ", major, " is not supported (1 to 3)");
    std::size_t len, start;
    if (major == 1) {
        len = pre[8] | (std::size_t{pre[9]} << 8);
        start = 10;
    } else {
        require(got >= 12, what, "'", path, "': truncated .npy header");
        len = pre[8] | (std::size_t{pre[9]} << 8) | (std::size_t{pre[10]} << 16) | (std::size_t{pre[11]} << 24);
        start = 12;
    }
    require(len < (1u << 20), what, "'", path, "': .npy header of ", len, " bytes is implausible");
    std::string dict(len, '\0');
    pread_all(fd, dict.data(), len, start, path, what);

    NpyHeader h;
    h.data_offset = start + len;
    const std::string descr = dict_value(dict, "descr", path, what);
    if (descr == "'<f4'") h.dtype = DType::f32;
    else if (descr == "'<f2'") h.dtype = DType::f16;
    else require(false, what, "'", path, "' holds ", descr, "; allowed: float32 ('<f4') or float16 ('<f2')");
    require(dict_value(dict, "fortran_order", path, what) == "False", what, "'", path,
            "' is in Fortran order; save it in C order (numpy.ascontiguousarray)");
    std::string shape = dict_value(dict, "shape", path, what);
    require(shape.size() >= 2 && shape.front() == '(' && shape.back() == ')', what, "'", path, "': malformed shape ", shape);
    std::stringstream ss(shape.substr(1, shape.size() - 2));
    std::string item;
    while (std::getline(ss, item, ',')) {
        if (item.find_first_not_of(' ') == std::string::npos) continue;
        std::size_t b = item.find_first_not_of(' '), e = item.find_last_not_of(' ');
        h.shape.push_back(parse_int(item.substr(b, e - b + 1), what, "a shape of integer extents in " + quoted(path)));
    }
    for (auto d : h.shape) require(d >= 0, what, "'", visible(path), "': negative extent in shape ", visible(shape));
    // The data's byte count must fit 64 bits: a crafted shape may not wrap into a plausible size.
    std::int64_t bytes = static_cast<std::int64_t>(dtype_size(h.dtype));
    const std::string desc = quoted(path).append(": shape ").append(visible(shape));
    for (auto d : h.shape) bytes = checked_mul(bytes, d, what, desc);
    const off_t size = ::lseek(fd, 0, SEEK_END);
    const auto need = static_cast<off_t>(checked_add(static_cast<std::int64_t>(h.data_offset), bytes, what, desc));
    require(size >= need, what, "'", path, "' is truncated: ", size, " bytes, its header needs ", need);
    return h;
}

NpyReader::NpyReader(const std::string& path, const char* what) : path_(path), what_(what), h_(npy_read_header(path, what)) {
    fd_ = ::open(path.c_str(), O_RDONLY);
    require(fd_ >= 0, what, "cannot open '", path, "': ", std::strerror(errno));
}

NpyReader::~NpyReader() {
    if (fd_ >= 0) ::close(fd_);
}

void NpyReader::read(std::int64_t first, std::int64_t n, float* out) const {
    const std::size_t es = dtype_size(h_.dtype);
    const std::size_t off = h_.data_offset + static_cast<std::size_t>(first) * es;
    if (h_.dtype == DType::f32) {
        pread_all(fd_, out, static_cast<std::size_t>(n) * 4, off, path_, what_.c_str());
        return;
    }
    std::vector<std::uint16_t> tmp(static_cast<std::size_t>(n));
    pread_all(fd_, tmp.data(), static_cast<std::size_t>(n) * 2, off, path_, what_.c_str());
    for (std::int64_t i = 0; i < n; ++i) out[i] = f16_to_f32(tmp[static_cast<std::size_t>(i)]);
}

NpyWriter::NpyWriter(std::string path, std::vector<std::int64_t> shape, DType dtype)
    : path_(std::move(path)), shape_(std::move(shape)), dtype_(dtype) {
    require(dtype == DType::f32 || dtype == DType::f16, "save", "files are float32 or float16");
    data_offset_ = header_text(shape_, dtype_).size() + 10;
}

NpyWriter::~NpyWriter() {
    if (fd_ >= 0) ::close(fd_);
}

void NpyWriter::create() {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd_ < 0) throw std::runtime_error("cannot create '" + path_ + "': " + std::strerror(errno));
    const std::string h = header_text(shape_, dtype_);
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, static_cast<unsigned char>(h.size() & 0xff),
                             static_cast<unsigned char>(h.size() >> 8)};
    pwrite_all(fd_, pre, sizeof(pre), 0, path_);
    pwrite_all(fd_, h.data(), h.size(), sizeof(pre), path_);
    std::int64_t n = 1;
    for (auto s : shape_) n *= s;
    if (::ftruncate(fd_, static_cast<off_t>(data_offset_ + static_cast<std::size_t>(n) * dtype_size(dtype_))) != 0)
        throw std::runtime_error("cannot size '" + path_ + "': " + std::strerror(errno));
}

void NpyWriter::open() {
    if (fd_ >= 0) return;
    fd_ = ::open(path_.c_str(), O_WRONLY);
    if (fd_ < 0) throw std::runtime_error("cannot open '" + path_ + "': " + std::strerror(errno));
}

void NpyWriter::write(std::int64_t first, std::int64_t n, const float* data) {
    if (dtype_ == DType::f32) {
        pwrite_all(fd_, data, static_cast<std::size_t>(n) * 4, data_offset_ + static_cast<std::size_t>(first) * 4, path_);
        return;
    }
    std::vector<std::uint16_t> h(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) h[static_cast<std::size_t>(i)] = f32_to_f16(data[i]);
    pwrite_all(fd_, h.data(), static_cast<std::size_t>(n) * 2, data_offset_ + static_cast<std::size_t>(first) * 2, path_);
}

void NpyWriter::finish() {
    if (fd_ < 0) return;
    const int fd = fd_;
    fd_ = -1;
    const bool ok = ::fsync(fd) == 0;
    if (::close(fd) != 0 || !ok) throw std::runtime_error("cannot write '" + path_ + "': " + std::strerror(errno));
}

}  // namespace longattn::bench
