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

// Progress lines on stderr, from the printing rank: "# progress: PHASE i/n, E s elapsed, about R s left",
// once the job has run kShowAfter seconds (so short jobs print none), when the job asks for them (or,
// by default, when stderr is a terminal).
class Progress {
public:
    Progress(const Job& job, bool printer);
    void begin(const std::string& phase);  // a phase of iterations starts (the estimate is per phase)
    void tick(int done, int total);        // iteration `done` of the phase's `total` has finished
    static constexpr double kShowAfter = 3.0;

private:
    bool on_ = false;
    double start_ = 0, phase_start_ = 0;
    std::string phase_;
};

}  // namespace longattn::bench
