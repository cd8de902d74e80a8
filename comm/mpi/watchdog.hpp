#pragma once
// The watchdog: a deadline on progress, not on total time. Each rank runs a thread that sends a
// heartbeat to the next rank of the job (a ring over every rank) several times per deadline and
// watches the heartbeats of the previous one. A rank that sends none for the deadline is stopped
// (SIGSTOP, a paused VM), wedged in the kernel, or cut off; its successor prints which rank went
// silent and what this rank's own main thread was waiting for (the transfer, its peer and size, the
// strategy's step), runs the abort hooks (the NCCL communicator's ncclCommAbort) and ends the job
// with MPI_Abort. A rank that is slow but alive keeps beating from its thread however long its
// kernels take, so it is never declared stuck. The heartbeats are a few bytes per rank per period:
// O(ranks) messages in all, whatever the job does.
//
// Needs MPI_THREAD_MULTIPLE (the thread calls MPI while the main thread does). Construction and
// destruction are collective over the communicator it watches: the destructor passes a goodbye
// round the ring, so a rank that is done is never mistaken for a stuck one while others still work.
// A destructor run by an exception stops the thread without the goodbye (the rank is failing; its
// peers wait in no ring for it, and a rank that abandons the job this way looks stuck to them).
#include <mpi.h>

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace longattn::comm {

class Watchdog {
public:
    static constexpr int kStuckExitCode = 3;  // what MPI_Abort ends the job with

    // Collective over world; timeout_s > 0. Throws if MPI gives less than MPI_THREAD_MULTIPLE.
    Watchdog(MPI_Comm world, double timeout_s);
    ~Watchdog();
    Watchdog(const Watchdog&) = delete;
    Watchdog& operator=(const Watchdog&) = delete;

    // The rank of `comm`'s rank r in the watched communicator.
    std::vector<int> world_ranks(MPI_Comm comm) const;

    // What the main thread waits for now (kept until end_wait): "receive", "send", "all-reduce"...;
    // peer is a rank of the watched communicator, or -1 for a collective.
    void begin_wait(const char* op, std::size_t bytes, int peer, int tag);
    void end_wait();
    // The strategy's phase and step, named in the report ("ring forward", 3; step -1: none).
    void set_step(const char* phase, int step);

    // Called, from the watchdog's thread, before the job is aborted. Returns an id for remove_hook.
    int add_abort_hook(std::function<void()> hook);
    void remove_hook(int id);

private:
    void run();
    [[noreturn]] void declare_stuck(double silent_s);
    std::string describe_wait() const;

    MPI_Comm comm_ = MPI_COMM_NULL;
    int rank_ = 0, size_ = 1;
    double timeout_s_ = 0, period_s_ = 0;
    std::vector<std::string> hosts_;  // host of each rank, for the report

    mutable std::mutex mu_;  // guards the wait description, the step and the hooks
    struct Wait {
        const char* op = nullptr;
        std::size_t bytes = 0;
        int peer = -1, tag = 0;
        double since = 0;
    } wait_;
    const char* phase_ = nullptr;
    int step_ = 0;
    std::map<int, std::function<void()>> hooks_;
    int next_hook_ = 0;

    std::mutex stop_mu_;
    std::condition_variable stop_cv_;
    bool leaving_ = false, quiet_ = false;
    std::thread thread_;
};

}  // namespace longattn::comm
