#include "bench/parse.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <sstream>

#include "longattn/error.hpp"

namespace longattn::bench {

std::string visible(const std::string& s) {
    std::string out;
    for (unsigned char c : s) {
        if (c < 0x20 || c == 0x7f) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\x%02x", c);
            out += buf;
        } else {
            out += static_cast<char>(c);
        }
    }
    return out;
}

std::string quoted(const std::string& s) {
    std::string out(1, '\'');
    out.append(visible(s)).push_back('\'');
    return out;
}

std::int64_t parse_int(const std::string& s, const char* key, const std::string& form) {
    std::size_t i = 0;
    if (i < s.size() && (s[i] == '-' || s[i] == '+')) ++i;
    bool digits = i < s.size();
    for (std::size_t j = i; j < s.size(); ++j) digits = digits && s[j] >= '0' && s[j] <= '9';
    require(digits, key, "expected ", form, ", got '", visible(s), "'");
    errno = 0;
    const long long v = std::strtoll(s.c_str(), nullptr, 10);
    require(errno != ERANGE, key, "'", visible(s), "' is out of range (at most 9223372036854775807 in magnitude)");
    return v;
}

std::int64_t parse_size(const std::string& s, const char* key) {
    const std::string form = "a positive number with an optional K, M or G suffix";
    require(!s.empty(), key, "is empty; expected ", form);
    std::size_t end = s[0] == '-' || s[0] == '+' ? 1 : 0;
    const std::size_t first = end;
    while (end < s.size() && s[end] >= '0' && s[end] <= '9') ++end;
    const std::string suffix = s.substr(end);
    std::int64_t mul = 1;
    if (suffix == "K" || suffix == "k") mul = std::int64_t{1} << 10;
    else if (suffix == "M" || suffix == "m") mul = std::int64_t{1} << 20;
    else if (suffix == "G" || suffix == "g") mul = std::int64_t{1} << 30;
    else require(suffix.empty() || end == first, key, "unknown suffix '", visible(suffix), "' in '", visible(s), "'; allowed: K, M, G");
    const std::int64_t v = parse_int(suffix.empty() || mul > 1 ? s.substr(0, end) : s, key, form);
    require(v > 0, key, "must be > 0, got '", visible(s), "'");
    return checked_mul(v, mul, key, quoted(s));
}

std::vector<std::int64_t> parse_list(const std::string& s, const char* key, bool zero_ok) {
    std::vector<std::int64_t> out;
    std::string norm = s;
    for (char& c : norm)
        if (c == ',' || c == '\n' || c == '\t' || c == '\r') c = ' ';
    std::stringstream ss(norm);
    std::string item;
    while (ss >> item) {
        if (zero_ok && !item.empty() && item[0] == '-') require(false, key, "must be >= 0, got ", quoted(item));
        out.push_back(zero_ok && item == "0" ? 0 : parse_size(item, key));
    }
    require(!out.empty(), key, "expected a comma-separated list of numbers, got '", visible(s), "'");
    return out;
}

double parse_number(const std::string& s, const char* key, const std::string& form) {
    std::size_t used = 0;
    double v = 0;
    try {
        v = std::stod(s, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    require(used == s.size() && !s.empty() && std::isfinite(v), key, "expected ", form, ", got '", visible(s), "'");
    return v;
}

std::int64_t checked_mul(std::int64_t a, std::int64_t b, const char* key, const std::string& what) {
    std::int64_t r = 0;
    require(!__builtin_mul_overflow(a, b, &r), key, what, " overflows 64-bit sizes");
    return r;
}

std::int64_t checked_add(std::int64_t a, std::int64_t b, const char* key, const std::string& what) {
    std::int64_t r = 0;
    require(!__builtin_add_overflow(a, b, &r), key, what, " overflows 64-bit sizes");
    return r;
}

std::string parent_of(const std::string& path) {
    const auto slash = path.find_last_of('/');
    return slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
}

namespace {

void require_path_length(const std::string& path, const char* key) {
    require(!path.empty(), key, "is an empty path");
    require(path.size() < PATH_MAX, key, "path of ", path.size(), " bytes is longer than the system allows (", PATH_MAX - 1, ")");
    std::size_t start = 0;
    while (start <= path.size()) {
        const std::size_t slash = path.find('/', start);
        const std::size_t end = slash == std::string::npos ? path.size() : slash;
        require(end - start <= NAME_MAX, key, "'", visible(path), "' has a name of ", end - start,
                " bytes; at most ", NAME_MAX, " are allowed");
        if (slash == std::string::npos) break;
        start = slash + 1;
    }
}


// Creates and removes a file in dir: the only test of writability that holds for root and for
// read-only or virtual file systems alike. Returns the reason it cannot, or "".
std::string cannot_create_in(const std::string& dir) {
    std::string tmpl = dir + "/.longattn-probe-XXXXXX";
    const int fd = ::mkstemp(tmpl.data());
    if (fd < 0) return std::strerror(errno);
    ::close(fd);
    ::unlink(tmpl.c_str());
    return "";
}

}  // namespace

void require_input_file(const std::string& path, const char* key) {
    require_path_length(path, key);
    struct stat st {};
    const int rc = ::stat(path.c_str(), &st);
    const std::string why = rc == 0 ? "" : std::strerror(errno);
    require(rc == 0, key, "cannot open '", visible(path), "': ", why);
    require(S_ISREG(st.st_mode), key, "'", visible(path), "' is ",
            S_ISDIR(st.st_mode) ? "a directory" : S_ISFIFO(st.st_mode) ? "a FIFO" : "not a regular file",
            "; a regular file is needed");
}

void check_save_target(const std::string& dir, const char* key) {
    require_path_length(dir, key);
    std::string d = dir;
    while (d.size() > 1 && d.back() == '/') d.pop_back();
    const std::size_t slash = d.find_last_of('/');
    const std::size_t base = d.size() - (slash == std::string::npos ? 0 : slash + 1);
    require(base <= NAME_MAX - 64, key, "'", visible(dir), "' has a last name of ", base, " bytes; at most ",
            NAME_MAX - 64, " are allowed (the set is built under a longer hidden name beside it)");
    const std::string parent = parent_of(d);
    struct stat st {}, up {};
    require(::stat(parent.c_str(), &up) == 0 && S_ISDIR(up.st_mode), key, "cannot create '", visible(dir), "': '",
            visible(parent), "' is not a directory");
    const std::string why = cannot_create_in(parent);
    require(why.empty(), key, "cannot create files in '", visible(parent), "' (the set is built there, beside '",
            visible(dir), "'): ", why);
    if (::lstat(d.c_str(), &st) != 0) return;  // a new directory
    require(S_ISDIR(st.st_mode), key, "'", visible(dir), "' exists and is not a directory");
    char real[PATH_MAX];
    require(st.st_dev == up.st_dev && ::realpath(d.c_str(), real) != nullptr && std::string(real) != "/", key, "'",
            visible(dir), "' is a mount point; the set replaces its directory whole, so give one inside it");
    bool empty = true, manifest = false;
    if (DIR* h = ::opendir(d.c_str())) {
        while (const dirent* e = ::readdir(h)) {
            const std::string n = e->d_name;
            // Another rank's probe of the directory (require_output_file) is not a file of its own.
            if (n == "." || n == ".." || n.rfind(".longattn-probe-", 0) == 0) continue;
            empty = false;
            manifest = manifest || n == "manifest.json";
        }
        ::closedir(h);
    }
    require(empty || manifest, key, "'", visible(dir), "' holds files that no --save wrote (it has no manifest.json); ",
            "give a new or empty directory, or one an earlier --save made (its files are then replaced)");
}

void require_output_file(const std::string& path, const char* key) {
    require_path_length(path, key);
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0)
        require(S_ISREG(st.st_mode), key, "'", visible(path), "' exists and is not a regular file");
    const std::string dir = parent_of(path);
    require(::stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode) && cannot_create_in(dir).empty(), key,
            "the directory of '", visible(path), "' is not writable");
}

std::vector<std::string> normalize_bool_flags(const std::vector<std::string>& args, const std::vector<std::string>& names,
                                              const std::vector<std::pair<char, std::string>>& shorts) {
    const auto is_word = [](const std::string& w) {
        for (const char* b : {"true", "false", "1", "0", "yes", "no", "on", "off"})
            if (w == b) return true;
        return false;
    };
    std::vector<std::string> out;
    for (std::size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        std::string name;
        if (a.size() > 2 && a.compare(0, 2, "--") == 0 && a.find('=') == std::string::npos) {
            for (const auto& n : names)
                if (a.compare(2, std::string::npos, n) == 0) name = n;
        } else if (a.size() == 2 && a[0] == '-' && a[1] != '-') {
            for (const auto& [c, n] : shorts)
                if (a[1] == c) name = n;
        }
        if (name.empty()) {
            out.push_back(a);
            continue;
        }
        std::string joined = "--";
        joined.append(name).append("=");
        joined.append(i + 1 < args.size() && is_word(args[i + 1]) ? args[++i] : std::string("true"));
        out.push_back(joined);
    }
    return out;
}

}  // namespace longattn::bench
