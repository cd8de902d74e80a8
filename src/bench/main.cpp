// longattn-bench: attention benchmarks with a self-check (-c), configured from the command line and
// an INI file (the command line wins). Exit codes: 0 ok, 1 failed check or runtime failure, 2 bad input
// or a job that cannot fit, 3 a rank that stopped responding (the watchdog, comm/mpi/watchdog.hpp).
#include <cstdio>
#include <iostream>
#include <string>

#include "bench/bench.hpp"
#include "bench/outputs.hpp"
#include "longattn/build_config.hpp"
#include "longattn/error.hpp"
#if LONGATTN_HAVE_MPI
#include <mpi.h>

#include "comm/mpi/mpi_communicator.hpp"
#endif
#if LONGATTN_HAVE_CUDA && LONGATTN_HAVE_MPI
#include "comm/mpi/device_select.hpp"
#endif
#if LONGATTN_HAVE_NCCL
#include "comm/nccl/nccl_communicator.hpp"
#endif

using namespace longattn;

// Every rank parses the same arguments and the ranks agree on the verdict, so bad input fails
// everywhere alike (exit 2, one message) before anything is written; so does a job that cannot fit
// (AgreedError). A failure after that may hit one rank only: it prints, removes its temporary files and
// aborts the whole job, so no rank hangs.
int main(int argc, char** argv) {
    int rank = 0, size = 1;
#if LONGATTN_HAVE_MPI
    int provided = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);  // the watchdog's thread calls MPI
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
#endif
    bench::install_cleanup_handlers(size > 1 ? "longattn-bench: rank " + std::to_string(rank) + ": " : "longattn-bench: ",
                                    rank == 0);
    auto finish = [&](int rc) {
#if LONGATTN_HAVE_MPI
        MPI_Finalize();
#endif
        return rc;
    };
    auto fail = [&](const char* kind, const char* what, int code) {
        bench::remove_temp_files();
        std::fprintf(stderr, "longattn-bench: %s%s%s\n", size > 1 ? ("rank " + std::to_string(rank) + ": ").c_str() : "",
                     kind, what);
#if LONGATTN_HAVE_MPI
        if (size > 1) MPI_Abort(MPI_COMM_WORLD, code);
#endif
        return code;
    };
    bench::Job job;
    std::string refused;  // why this rank refuses the job
    try {
        std::string help;
        job = bench::parse_job(argc, argv, help);
        if (!help.empty()) {
            if (rank == 0) std::cout << help;
            return finish(0);
        }
        const bool predict = job.sweep.mode == bench::Mode::predict;
        require(!predict || size == 1, "mode", "predict runs in one process (--ranks says how many it models): drop mpirun");
        bench::validate_for_ranks(job, predict ? job.exec.model_ranks : size);
#if !LONGATTN_HAVE_NCCL
        require(!job.exec.nccl, "comm", "this build has no NCCL communicator (it needs CUDA, NCCL and MPI)");
#endif
    } catch (const Error& e) {
        refused = e.what();
    }
    // The ranks parse alike, but their checks of files and directories see the file system at
    // different moments: they agree, so a rank that refuses never leaves the others waiting. The
    // first refusing rank reports.
    int first = refused.empty() ? size : rank;
#if LONGATTN_HAVE_MPI
    MPI_Allreduce(MPI_IN_PLACE, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
#endif
    if (first < size) {
        if (rank == first)
            std::fprintf(stderr, "longattn-bench: error: %s%s\n",
                         first == 0 ? "" : ("rank " + std::to_string(rank) + ": ").c_str(), refused.c_str());
        return finish(2);
    }
    int rc = 0;
    try {
#if LONGATTN_HAVE_CUDA && LONGATTN_HAVE_MPI
        if (job.exec.device == Device::cuda) comm::select_device(MPI_COMM_WORLD);  // one GPU per rank
#endif
        if (job.sweep.mode == bench::Mode::predict) {
            rc = bench::run_predict(job);
        } else if (job.sweep.mode == bench::Mode::calibrate) {
#if LONGATTN_HAVE_MPI
            comm::MpiCommunicator comm(MPI_COMM_WORLD, job.exec.timeout_s);
            rc = bench::run_calibrate(job, &comm);
#else
            rc = bench::run_calibrate(job, nullptr);
#endif
        } else if (!job.exec.distributed && job.sweep.mode == bench::Mode::decode) {
            rc = bench::run_decode_bench(job, nullptr);
        } else if (!job.exec.distributed) {
            rc = bench::run_kernel_bench(job);
        } else {
#if LONGATTN_HAVE_MPI
#if LONGATTN_HAVE_NCCL
            if (job.exec.nccl) {
                comm::NcclCommunicator comm(MPI_COMM_WORLD, nullptr, -1, job.exec.timeout_s);
                rc = bench::run_dist_bench(job, comm);
                return finish(rc);
            }
#endif
            comm::MpiCommunicator comm(MPI_COMM_WORLD, job.exec.timeout_s);
            rc = job.sweep.mode == bench::Mode::decode ? bench::run_decode_bench(job, &comm) : bench::run_dist_bench(job, comm);
#else
            throw Error("strategy: this build has no MPI (configure with -DLONGATTN_WITH_MPI=ON)");
#endif
        }
    } catch (const bench::AgreedError& e) {
        if (rank == 0) std::fprintf(stderr, "longattn-bench: %s%s\n", e.code == 2 ? "error: " : "runtime failure: ", e.what());
        return finish(e.code);
    } catch (const Error& e) {
        return finish(fail("error: ", e.what(), 2));
    } catch (const std::exception& e) {
        return finish(fail("runtime failure: ", e.what(), 1));
    }
    return finish(rc);
}
