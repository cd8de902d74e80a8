// libFuzzer target of longattn-bench's option parser (longattn::bench::parse_job).
//   first byte 0x01: the rest, split on NUL bytes, is the command line (argv[1..]);
//   anything else:   the whole input is an INI file given as --config FILE.
// A longattn::Error is the parser refusing the input (expected); any other exception escaping, a
// crash, a hang or a sanitizer report is a finding.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "bench/bench.hpp"
#include "fuzz_common.hpp"
#include "longattn/error.hpp"

namespace {

constexpr std::size_t kMaxArgs = 64;

void parse(std::vector<std::string>& args) {
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::string help;
    try {
        longattn::bench::Job job = longattn::bench::parse_job(static_cast<int>(args.size()), argv.data(), help);
        (void)job;
    } catch (const longattn::Error&) {
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view in(reinterpret_cast<const char*>(data), size);
    if (longattn_fuzz::names_special_files(in)) return -1;
    std::vector<std::string> args{"longattn-bench"};
    if (size > 0 && data[0] == 0x01) {
        std::string_view rest = in.substr(1);
        while (!rest.empty() && args.size() <= kMaxArgs) {
            const std::size_t nul = rest.find('\0');
            args.emplace_back(rest.substr(0, nul));
            rest = nul == std::string_view::npos ? std::string_view{} : rest.substr(nul + 1);
        }
    } else {
        const std::string& path = longattn_fuzz::temp_file("fuzz_options.ini");
        longattn_fuzz::write_file(path, data, size);
        args.insert(args.end(), {"--config", path});
    }
    parse(args);
    return 0;
}
