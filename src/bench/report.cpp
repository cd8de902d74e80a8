#include "bench/report.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <sstream>

namespace longattn::bench {
namespace {

std::string number(double v, const Column& c) {
    if (!std::isfinite(v)) return "";
    char buf[64];
    if (c.precision < 0) std::snprintf(buf, sizeof(buf), "%lld", static_cast<long long>(std::llround(v)));
    else std::snprintf(buf, sizeof(buf), c.sci ? "%.*e" : "%.*f", c.precision + 2, v);
    return buf;
}

}  // namespace

std::string json_string(const std::string& s) {
    std::string out = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\') out += '\\';
        if (static_cast<unsigned char>(c) < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof(buf), "\\u%04x", c);
            out += buf;
            continue;
        }
        out += c;
    }
    return out + "\"";
}

Report::Report(const Job& job, bool printer) : job_(job), printer_(printer) {}

void Report::note(const std::string& line) {
    notes_.push_back(line);
    if (printer_) std::printf("# %s\n", line.c_str());
}

void Report::columns(std::vector<Column> cols) {
    cols_ = std::move(cols);
    if (!printer_) return;
    std::string line;
    for (std::size_t i = 0; i < cols_.size(); ++i) {
        char buf[64];
        std::snprintf(buf, sizeof(buf), "%*s", i == 0 ? cols_[i].width - 1 : cols_[i].width, cols_[i].name.c_str());
        line.append(i == 0 ? "#" : " ");
        line.append(buf);
    }
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
}

void Report::row(const std::vector<double>& values) {
    rows_.push_back(values);
    if (!printer_) return;
    std::string line;
    for (std::size_t i = 0; i < cols_.size(); ++i) {
        const Column& c = cols_[i];
        char buf[64];
        if (c.precision < 0) std::snprintf(buf, sizeof(buf), "%*lld", c.width, static_cast<long long>(std::llround(values[i])));
        else std::snprintf(buf, sizeof(buf), c.sci ? "%*.*e" : "%*.*f", c.width, c.precision, values[i]);
        line.append(" ");
        line.append(buf);
    }
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
}

int Report::finish(std::int64_t wrong, OutputSet& out) {
    const char* verdict = wrong == 0 ? "OK" : "FAILED";
    if (!printer_) return wrong == 0 ? 0 : 1;
    std::printf("# Out of bounds values : %lld %s\n", static_cast<long long>(wrong), verdict);
    if (job_.checks.enabled) std::printf("# Check: %s\n", wrong == 0 ? "PASSED" : "FAILED (see #wrong)");
    std::fflush(stdout);
    if (!job_.io.json_path.empty()) {
        std::ostringstream js;
        js << "{\n  \"command\": " << json_string(job_.command_line) << ",\n  \"notes\": [";
        for (std::size_t i = 0; i < notes_.size(); ++i) js << (i ? ",\n    " : "\n    ") << json_string(notes_[i]);
        js << "\n  ],\n  \"rows\": [";
        for (std::size_t r = 0; r < rows_.size(); ++r) {
            js << (r ? ",\n    {" : "\n    {");
            for (std::size_t i = 0; i < cols_.size(); ++i) {
                const std::string v = number(rows_[r][i], cols_[i]);
                js << (i ? ", " : "") << json_string(cols_[i].name) << ": " << (v.empty() ? "null" : v);
            }
            js << "}";
        }
        js << "\n  ],\n  \"wrong\": " << wrong << ",\n  \"checked\": " << (job_.checks.enabled ? "true" : "false")
           << ",\n  \"verdict\": \"" << verdict << "\"\n}\n";
        out.write_text(job_.io.json_path, js.str());
    }
    if (!job_.io.csv_path.empty()) {
        std::ostringstream cs;
        for (std::size_t i = 0; i < cols_.size(); ++i) cs << (i ? "," : "") << cols_[i].name;
        cs << "\n";
        for (const auto& r : rows_) {
            for (std::size_t i = 0; i < cols_.size(); ++i) cs << (i ? "," : "") << number(r[i], cols_[i]);
            cs << "\n";
        }
        out.write_text(job_.io.csv_path, cs.str());
    }
    return wrong == 0 ? 0 : 1;
}

namespace {
double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

Progress::Progress(const Job& job, bool printer)
    : on_(printer && (job.exec.progress > 0 || (job.exec.progress == 0 && ::isatty(2)))), start_(now_s()),
      phase_start_(start_) {}

void Progress::begin(const std::string& phase) {
    phase_ = phase;
    phase_start_ = now_s();
}

void Progress::tick(int done, int total) {
    if (!on_) return;
    const double t = now_s();
    if (t - start_ < kShowAfter) return;
    const double per = (t - phase_start_) / std::max(done, 1);
    std::fprintf(stderr, "# progress: %s %d/%d, %.1f s elapsed, about %.1f s left in it\n", phase_.c_str(), done, total,
                 t - start_, per * (total - done));
    std::fflush(stderr);
}

}  // namespace longattn::bench
