#pragma once
// The communicator contract. Strategies talk to ranks only through this interface; it knows nothing
// about attention. Byte-oriented: callers size their buffers. All collectives are blocking and must
// be called by every rank of the communicator in the same order; point-to-point transfers are
// non-blocking and progress whenever progress(), test() or wait() is called (strategies call
// progress() between kernel tiles so a transfer moves while a kernel runs).
//
// Batches. The point-to-point operations posted since the last flush() form one batch, and a
// backend may hold them back until flush() (NCCL launches a batch as one group on a stream, where a
// lone send would block that stream until its peer's matching receive is launched; MPI starts every
// operation when it is posted and flush() does nothing). So, for every backend:
//   1. post all transfers of a step (irecv and isend, any order), then call flush(), then compute;
//   2. a send and its receive must be launched in the same step's batch on their two ranks: a
//      receive launched steps ahead of its send, or a send launched in a batch of its own, can
//      deadlock NCCL although MPI accepts it;
//   3. within a step, messages between two ranks pair up by tag: give them distinct tags;
//   4. a request may complete only when its whole batch has.
// flush(), progress(), every collective, and test() or wait() on a request not launched yet launch
// the pending batch; test() or wait() on a launched request launches nothing, so a send posted after
// a step's compute joins the next step's batch.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace longattn::comm {

// Handle of an outstanding send or receive; default-constructed = nothing outstanding.
struct Request {
    int id = -1;
    bool active() const { return id >= 0; }
};

class Communicator {
public:
    virtual ~Communicator() = default;
    virtual int rank() const = 0;
    virtual int size() const = 0;

    // Buffers must stay valid and untouched until the request completes.
    virtual Request isend(const void* buf, std::size_t bytes, int dest, int tag) = 0;
    virtual Request irecv(void* buf, std::size_t bytes, int src, int tag) = 0;
    virtual bool test(Request& r) = 0;  // true (and r reset) once complete
    virtual void wait(Request& r) = 0;  // no-op for an inactive request
    virtual void progress() = 0;        // advances every outstanding request
    // Launches the point-to-point operations posted since the last flush (see "Batches" above).
    virtual void flush() {}

    // recv[src] (recv_bytes[src] at recv_off[src]) receives what src sent to this rank.
    virtual void all_to_all_v(const void* send, const std::size_t* send_bytes, const std::size_t* send_off, void* recv,
                              const std::size_t* recv_bytes, const std::size_t* recv_off) = 0;
    virtual void all_reduce_sum(double* data, std::size_t n) = 0;
    virtual void all_reduce_sum(std::int64_t* data, std::size_t n) = 0;
    virtual void all_reduce_max(double* data, std::size_t n) = 0;
    // Every rank contributes bytes[r] at offsets[r] of recv (its own part is copied from send).
    virtual void all_gather_v(const void* send, void* recv, const std::size_t* bytes, const std::size_t* offsets) = 0;
    virtual void broadcast(void* buf, std::size_t bytes, int root) = 0;
    virtual void barrier() = 0;
    // Ranks with the same color form a new communicator, ordered by key (then old rank).
    virtual std::unique_ptr<Communicator> split(int color, int key) = 0;
    // Ends every rank of the job with this exit code (for a rank that failed alone).
    [[noreturn]] virtual void abort(int code) = 0;
    // Names what the caller is doing, for a watchdog's report of a stuck job ("ring forward", step 3).
    // phase must outlive the communicator (a string literal).
    virtual void note_step(const char* phase, int step) {
        (void)phase;
        (void)step;
    }

    // Byte counters of this communicator's point-to-point and collective traffic sent by this rank.
    std::uint64_t bytes_sent() const { return bytes_sent_; }
    void reset_bytes_sent() { bytes_sent_ = 0; }

protected:
    std::uint64_t bytes_sent_ = 0;
};

}  // namespace longattn::comm
