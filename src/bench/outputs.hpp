#pragma once
// The files of one job (--save's .npy files, --json, --csv) appear together or not at all.
//
// The --save directory is built whole as a hidden sibling `.NAME.longattn-partial-ID` and published
// by one rename (a new target) or one renameat2(RENAME_EXCHANGE) (an existing target, whose old
// files are removed afterwards): a reader sees the old set or the new one, never a mix. Its
// manifest.json (written last, before the publish) names the job and the files; a directory without
// one that holds anything is not replaced (bench/parse.hpp: check_save_target). --json and --csv files outside it
// are staged as hidden siblings too and renamed into place just before the directory, each old file
// kept under a hidden name until the directory is published, so a failure at any step of the publish
// puts every old file back.
//
// ID is the job's (rank 0's pid and start time), the same on every rank, and every rank registers
// every temporary name: whichever rank fails (an exception, the SIGTERM that MPI_Abort sends, Ctrl-C)
// removes them all, and a later job writing the same target removes what a job killed outright
// (SIGKILL on every rank) left behind. Two jobs must not write the same target at the same time.
#include <cstdint>
#include <string>
#include <vector>

#include "bench/bench.hpp"

namespace longattn::comm {
class Communicator;
}

namespace longattn::bench {

class OutputSet {
public:
    // Collective (comm null: one process); nothing to do without --save, --json and --csv.
    OutputSet(const Job& job, comm::Communicator* comm);
    ~OutputSet();  // not published: the temporaries are removed
    OutputSet(const OutputSet&) = delete;
    OutputSet& operator=(const OutputSet&) = delete;

    // Where --save's file `name` (out.npy...) of this shape is written until the publish.
    std::string staged(const std::string& name, const std::vector<std::int64_t>& shape);
    // The text of --json or --csv (path is one of them), written by one rank.
    void write_text(const std::string& path, const std::string& text);
    // Collective: every rank is done writing; one rank publishes everything, or throws with every old
    // file back in place.
    void publish();

private:
    struct Text {
        std::string target, staged, backup;
    };
    void publish_here();
    void remove_staged();

    const Job& job_;
    comm::Communicator* comm_;
    bool root_ = true, published_ = false;
    std::string id_;
    std::string dir_, staging_, old_;  // --save target, its staging directory, the old set's parking place
    std::vector<Text> texts_;          // --json, --csv outside the --save directory
    std::vector<std::pair<std::string, std::vector<std::int64_t>>> files_;  // in the staging directory
};

// SIGINT and SIGTERM remove every registered temporary and end the process with the signal; SIGINT
// (Ctrl-C) first says so on stderr, and so does SIGTERM (what mpirun sends every rank on a Ctrl-C, or
// when a rank aborts the job) where report_term (one rank of a job). prefix: "longattn-bench: rank 3: "
// or "longattn-bench: ".
void install_cleanup_handlers(const std::string& prefix, bool report_term);
// Removes every registered temporary (the failure paths call it before exiting).
void remove_temp_files();

}  // namespace longattn::bench
