#pragma once
// Between the two halves of longattn-bench's option parser: options.cpp declares the options and reads
// the command line and the config file with Boost.Program_options, job.cpp makes the job's sections of
// what they gave and checks the options against one another.
#include <set>
#include <string>

#include "bench/bench.hpp"

namespace longattn::bench {

// What the options give as text, for the strict parsers of bench/parse.hpp: choices by name, sizes with
// K/M/G suffixes, lists, the window, file names and seeds (read signed, so that a negative one is refused
// rather than wrapped); and the sweep's factor. Boost stores every other option straight into its field
// of the job.
struct OptionValues {
    std::string mode, device, threads, seed, max_memory, cpu_isa, progress;    // [run]
    bool quiet = false;
    int ranks = 0;  // [dist] --ranks (predict)
    std::string minlen, maxlen, scaling;                              // [sweep]
    double factor = 2;
    std::string dtype;                                                // [shape]
    std::string strategy, layout, comm, plan, cluster;                // [dist]
    std::string window, doc_lens, doc_lens_file, doc_dist, doc_seed;  // [pattern]
    std::string global_list, block_mask, random_seed;
    std::string kv_placement, combine, fill;                          // [decode]
    std::string config;
    std::set<std::string> given;  // set on the command line or in the config file, not left at the default
    bool is_given(const char* name) const { return given.count(name) != 0; }
};

// Reads `v` into `j`, whose typed fields Boost has already stored, and checks what depends on more than
// one option; throws Error naming the option. The checks run in one fixed order whatever the input, so
// that of several mistakes the same one is reported.
void complete_job(const OptionValues& v, Job& j);

}  // namespace longattn::bench
