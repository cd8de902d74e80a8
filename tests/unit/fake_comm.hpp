#pragma once
// An in-process fake of the communicator contract (comm/communicator.hpp) for unit tests: the ranks
// are threads of one process sharing a FakeWorld, so the distributed strategies run under plain ctest,
// without mpirun. Transfers copy the bytes between the ranks' own buffers and collectives combine
// every rank's contribution, so results are real.
//
// Where the contract is stricter than MPI, the fake follows the contract, so that a strategy passing
// here also keeps the rules NCCL needs:
//   - Batches::ordered (the default): the batches a rank launches on a communicator run one after the
//     other, and a request completes only when its whole batch has, as NCCL groups on one stream do.
//     A receive launched a step ahead of its send, or a send in a batch whose receive the peer
//     launches in a later one, then deadlocks here as it may under NCCL. Batches::eager matches every
//     operation from the moment it is posted and completes it alone, as MPI does.
//   - A send completes only when its receive has the bytes (MPI may buffer a send earlier; a correct
//     program cannot count on it).
//   - Messages pair by (source, destination, tag) in posting order; a receive may be larger than its
//     message, not smaller. Collectives check that every rank calls the same one, with sizes that
//     agree (all_to_all_v: what j sends to d is what d expects from j).
// No test hangs on it: a deadlock (every rank still running waits, and none can be served) or a
// rank's failure marks the world failed, and every rank that waits, or waits later, throws
// FakeWorldFailed naming the cause. One rank thread per rank: the deadlock detection counts them.
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>

#include "comm/communicator.hpp"

namespace longattn::test {

enum class Batches { ordered, eager };

// Misuse of the fake or of the contract, thrown by the rank that did it once the world is failed: a
// peer out of range, a request the communicator does not have outstanding, a split with a negative
// color.
class FakeCommError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Thrown by a rank released from a wait (or refused a new operation) because the world failed.
class FakeWorldFailed : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Communicator::abort(code): the world fails and the calling rank throws this.
class FakeAbort : public FakeCommError {
public:
    FakeAbort(const std::string& what, int code) : FakeCommError(what), code_(code) {}
    int code() const { return code_; }

private:
    int code_;
};

class FakeWorld {
public:
    explicit FakeWorld(int size, Batches batches = Batches::ordered);
    ~FakeWorld();  // after every communicator of the world is gone
    FakeWorld(const FakeWorld&) = delete;
    FakeWorld& operator=(const FakeWorld&) = delete;

    int size() const;
    Batches batches() const;
    // The world communicator of one rank, handed out once per rank; use it on that rank's thread.
    std::unique_ptr<comm::Communicator> communicator(int rank);
    // split() calls so far, one per call by all the ranks of a communicator (a hybrid strategy that
    // splits the world twice counts 2).
    std::int64_t splits() const;
    bool failed() const;
    std::string failure() const;  // the first cause, once failed
    // Fails the world (the first cause is kept): every waiting rank throws FakeWorldFailed.
    void fail(const std::string& why);
    // The thread of `rank` is done: a rank still waiting for it can no longer be served.
    void finished(int rank);

    struct Impl;

private:
    std::unique_ptr<Impl> impl_;
};

// Runs fn on world.size() threads, each with its rank's world communicator (a world runs once), and
// joins them. Rethrows the first exception a rank raised of its own (a test's or the library's error,
// FakeCommError, FakeAbort) or, when every exception came from ranks released by a failed world, the
// first of those; a world that failed without any exception (a communicator destroyed with requests
// outstanding) throws FakeWorldFailed.
void run_ranks(FakeWorld& world, const std::function<void(comm::Communicator&)>& fn);
void run_ranks(int P, const std::function<void(comm::Communicator&)>& fn, Batches batches = Batches::ordered);

}  // namespace longattn::test
