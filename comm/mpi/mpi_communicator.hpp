#pragma once
// MPI backend of the communicator. Takes the caller's communicator and duplicates it, so a training
// codebase can hand in its own and longattn's traffic never mixes with the caller's.
//
// In builds with CUDA, buffers may also be device memory (so several ranks can share one GPU): a
// CUDA-aware MPI gets them directly, any other MPI through pinned host copies (device_staging.hpp).
// Device data must be complete when handed over, and received device data is in place once test()
// or wait() reports completion. Both ends of a transfer may use either kind of memory.
//
// With a timeout, a watchdog (comm/mpi/watchdog.hpp) watches every rank of the job: a rank silent
// for that long ends the job, and every wait here tells the watchdog what it waits for. The
// communicators split from this one share its watchdog.
#include <mpi.h>

#include <memory>

#include "../communicator.hpp"  // relative: the same in the source tree and installed

namespace longattn::comm {

class DeviceStaging;  // comm/mpi/device_staging.hpp, defined in builds with CUDA only
// Keeps the class the same in every build: without CUDA the pointer is always null.
struct DeviceStagingDeleter {
    void operator()(DeviceStaging* p) const;
};

class Watchdog;

class MpiCommunicator final : public Communicator {
public:
    // timeout_s > 0 starts the watchdog over parent (collective; needs MPI_THREAD_MULTIPLE and more
    // than one rank; with one rank there is nobody to wait for).
    explicit MpiCommunicator(MPI_Comm parent, double timeout_s = 0);
    ~MpiCommunicator() override;
    MpiCommunicator(const MpiCommunicator&) = delete;
    MpiCommunicator& operator=(const MpiCommunicator&) = delete;

    int rank() const override { return rank_; }
    int size() const override { return size_; }
    MPI_Comm handle() const { return comm_; }
    Watchdog* watchdog() const { return watchdog_.get(); }

    Request isend(const void* buf, std::size_t bytes, int dest, int tag) override;
    Request irecv(void* buf, std::size_t bytes, int src, int tag) override;
    bool test(Request& r) override;
    void wait(Request& r) override;
    void progress() override;

    void all_to_all_v(const void* send, const std::size_t* send_bytes, const std::size_t* send_off, void* recv,
                      const std::size_t* recv_bytes, const std::size_t* recv_off) override;
    void all_reduce_sum(double* data, std::size_t n) override;
    void all_reduce_sum(std::int64_t* data, std::size_t n) override;
    void all_reduce_max(double* data, std::size_t n) override;
    void all_gather_v(const void* send, void* recv, const std::size_t* bytes, const std::size_t* offsets) override;
    void broadcast(void* buf, std::size_t bytes, int root) override;
    void barrier() override;
    std::unique_ptr<Communicator> split(int color, int key) override;
    [[noreturn]] void abort(int code) override;
    void note_step(const char* phase, int step) override;

    // Tells the watchdog (if any) what this thread waits for while it lives; peer: a rank of this
    // communicator, -1 for a collective.
    struct Waiting {
        Watchdog* w;
        Waiting(const MpiCommunicator& c, const char* op, std::size_t bytes, int peer = -1, int tag = 0);
        ~Waiting();
        Waiting(const Waiting&) = delete;
        Waiting& operator=(const Waiting&) = delete;
    };

private:
    MpiCommunicator(MPI_Comm parent, std::shared_ptr<Watchdog> watchdog);
    struct Slot {
        std::vector<MPI_Request> parts;  // a large message travels in several parts
        bool in_use = false, send = false;
        std::size_t bytes = 0;
        int peer = 0, tag = 0;
    };
    Request post(bool send, void* buf, std::size_t bytes, int peer, int tag);
    bool test_slot(std::size_t id);
    void finish_slot(std::size_t id);
    void local_copy(void* dst, const void* src, std::size_t bytes);
    // MPI_Allreduce in place, on a buffer that may be device memory.
    void allreduce(void* data, std::size_t n, MPI_Datatype type, std::size_t elem_bytes, MPI_Op op);

    MPI_Comm comm_ = MPI_COMM_NULL;
    int rank_ = 0, size_ = 1;
    std::vector<Slot> slots_;
    std::unique_ptr<DeviceStaging, DeviceStagingDeleter> device_;  // null: host memory only
    std::shared_ptr<Watchdog> watchdog_;  // null: no timeout
    std::vector<int> watched_rank_;       // this communicator's ranks as the watchdog numbers them
};

}  // namespace longattn::comm
