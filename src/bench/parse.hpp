#pragma once
// Strict parsing of option values: a value is parsed whole (no trailing junk), sizes and counts are
// checked for overflow, and user text echoed in messages has its control characters made visible.
// Every failure throws longattn::Error naming the option (`key`).
#include <cstdint>
#include <string>
#include <vector>

namespace longattn::bench {

// s with control characters (and DEL) shown as \xNN, so a message never moves the terminal.
std::string visible(const std::string& s);
// 'visible(s)'
std::string quoted(const std::string& s);

// A whole decimal integer in int64 range (an optional sign, digits, nothing else).
std::int64_t parse_int(const std::string& s, const char* key, const std::string& form);
// A positive count with an optional K, M or G suffix (2^10, 2^20, 2^30): "64K" is 65536. Overflow of
// int64 is an error.
std::int64_t parse_size(const std::string& s, const char* key);
// Comma- (or whitespace-) separated sizes; "0" allowed where zero_ok.
std::vector<std::int64_t> parse_list(const std::string& s, const char* key, bool zero_ok = false);
// A whole finite decimal number.
double parse_number(const std::string& s, const char* key, const std::string& form);

// a * b and a + b, or an error naming key and what overflowed.
std::int64_t checked_mul(std::int64_t a, std::int64_t b, const char* key, const std::string& what);
std::int64_t checked_add(std::int64_t a, std::int64_t b, const char* key, const std::string& what);

// Paths: an input must exist and be a regular file (a FIFO or a device would block or never end); an
// output file must not be a directory and its directory must be writable (probed by creating a file).
// A --save target (bench/outputs.hpp) is a new directory, or an existing one that is empty or holds an
// earlier --save's set (manifest.json), not a mount point, in a writable directory. Names longer than
// the system's limits are refused.
void require_input_file(const std::string& path, const char* key);
void check_save_target(const std::string& dir, const char* key);
void require_output_file(const std::string& path, const char* key);
// The directory part of a path ("." for a bare name).
std::string parent_of(const std::string& path);

// Rewrites boolean options given bare (--causal, -c) to --name=true, and "--causal false" to
// --causal=false, so that a flag works with and without a value. `names` are the long names; `shorts`
// maps one-letter aliases to long names ("c" -> "check").
std::vector<std::string> normalize_bool_flags(const std::vector<std::string>& args, const std::vector<std::string>& names,
                                              const std::vector<std::pair<char, std::string>>& shorts);

}  // namespace longattn::bench
