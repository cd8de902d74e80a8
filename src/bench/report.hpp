#pragma once
// The bench's output in the nccl-tests spirit: '#' header lines describing the job, one row per
// size, a '#' footer with the verdict; the same numbers as JSON (--json) and CSV (--csv), each
// written to a temporary name and renamed once complete. Only the printing rank (rank 0) writes.
#include <cstdint>
#include <string>
#include <vector>

#include "bench/bench.hpp"
#include "bench/outputs.hpp"

namespace longattn::bench {

struct Column {
    std::string name;
    int width;
    int precision;   // digits after the point; -1: an integer
    bool sci = false;
};

// s as a JSON string literal, quotes included.
std::string json_string(const std::string& s);

class Report {
public:
    Report(const Job& job, bool printer);
    void note(const std::string& line);            // a '#' line, kept in the JSON notes
    void columns(std::vector<Column> cols);        // prints the column header
    void row(const std::vector<double>& values);   // one value per column
    // Prints the footer and writes --json and --csv into the job's outputs (published by the caller);
    // returns the exit code (0 ok, 1 wrong values).
    int finish(std::int64_t wrong, OutputSet& out);

private:
    const Job& job_;
    bool printer_;
    std::vector<std::string> notes_;
    std::vector<Column> cols_;
    std::vector<std::vector<double>> rows_;
};

}  // namespace longattn::bench
