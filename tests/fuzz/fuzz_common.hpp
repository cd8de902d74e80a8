#pragma once
// Helpers of the libFuzzer targets: one temporary file per process, rewritten for every input.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace longattn_fuzz {

// A file of this process (under $TMPDIR or /tmp), removed at exit.
inline const std::string& temp_file(const char* stem) {
    static const std::string path = [stem] {
        const char* dir = std::getenv("TMPDIR");
        std::string p = std::string(dir && *dir ? dir : "/tmp") + "/" + stem + ".XXXXXX";
        const int fd = ::mkstemp(p.data());
        if (fd < 0) {
            std::perror("mkstemp");
            std::abort();
        }
        ::close(fd);
        return p;
    }();
    static const struct Remover {
        ~Remover() { ::unlink(path.c_str()); }
    } remover;
    return path;
}

// Replaces the file's contents with data[0, size).
inline void write_file(const std::string& path, const unsigned char* data, std::size_t size) {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (f == nullptr || (size > 0 && std::fwrite(data, 1, size, f) != size) || std::fclose(f) != 0) {
        std::perror(path.c_str());
        std::abort();
    }
}

// Inputs naming devices and kernel files are not fuzzed: reading them blocks or never ends, which
// says nothing about the parser.
inline bool names_special_files(std::string_view s) {
    for (std::string_view bad : {"/dev", "/proc", "/sys"})
        if (s.find(bad) != std::string_view::npos) return true;
    return false;
}

}  // namespace longattn_fuzz
