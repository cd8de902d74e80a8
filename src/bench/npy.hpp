#pragma once
// NumPy .npy files (format versions 1-3, little-endian, C order): reading rows of float32 / float16
// arrays at any offset, and writing float32 / float16 arrays in pieces from several processes (into a
// staging directory that bench/outputs.hpp publishes whole).
#include <cstdint>
#include <string>
#include <vector>

#include "longattn/dtype.hpp"

namespace longattn::bench {

struct NpyHeader {
    DType dtype = DType::f32;          // f32 ('<f4') or f16 ('<f2')
    std::vector<std::int64_t> shape;
    std::size_t data_offset = 0;       // bytes before the first element
    std::int64_t numel() const;
};

// Throws Error naming `what` (the option) and the path for anything but a C-order float32/float16 array.
NpyHeader npy_read_header(const std::string& path, const char* what);

// Random-access reader of contiguous element runs.
class NpyReader {
public:
    NpyReader(const std::string& path, const char* what);
    ~NpyReader();
    NpyReader(const NpyReader&) = delete;
    NpyReader& operator=(const NpyReader&) = delete;
    const NpyHeader& header() const { return h_; }
    const std::string& path() const { return path_; }
    // out[0, n) = elements [first, first + n) as fp32.
    void read(std::int64_t first, std::int64_t n, float* out) const;

private:
    std::string path_, what_;
    NpyHeader h_;
    int fd_ = -1;
};

// n bytes of buf at offset off of the open file fd; throws std::runtime_error naming path.
void pwrite_all(int fd, const void* buf, std::size_t n, std::size_t off, const std::string& path);

// A float32 (or float16) .npy being written at `path`. create() (one process) writes the header and
// sizes the file; any process may then open() it, write() and finish() (flushed to storage).
class NpyWriter {
public:
    NpyWriter(std::string path, std::vector<std::int64_t> shape, DType dtype = DType::f32);
    ~NpyWriter();
    NpyWriter(const NpyWriter&) = delete;
    NpyWriter& operator=(const NpyWriter&) = delete;
    void create();
    void open();
    // Elements [first, first + n) = data[0, n), rounded to the file's dtype.
    void write(std::int64_t first, std::int64_t n, const float* data);
    void finish();

private:
    std::string path_;
    std::vector<std::int64_t> shape_;
    DType dtype_;
    std::size_t data_offset_ = 0;
    int fd_ = -1;
};

}  // namespace longattn::bench
