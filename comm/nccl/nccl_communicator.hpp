#pragma once
// NCCL backend of the communicator: one GPU per rank, bootstrapped from an MPI communicator.
//
// Streams. NCCL work runs on a communication stream of its own, so transfers overlap the kernels on
// the caller's compute stream. Each launch first makes the communication stream wait for the work
// already queued on the compute stream (the data to send is written there, and a receive buffer may
// still be read there). Completion is seen by the host (test() true or wait() returned), so work the
// caller queues afterwards on any stream is ordered after the transfer.
//
// Point-to-point (see "Batches" in comm/communicator.hpp). isend/irecv of device buffers only record
// the operation; flush() launches every operation posted since the last flush as one NCCL group,
// which is what lets a ring step's receive from prev and send to next progress together (a lone
// ncclSend blocks its stream until the peer launches the matching receive). So a ring step is:
//     rx = comm.irecv(next_buf, bytes, prev, tag);
//     tx = comm.isend(cur_buf, bytes, next, tag);
//     comm.flush();                 // launched: the transfer runs while the kernel computes
//     ... kernels on the compute stream ...
//     comm.wait(rx); comm.wait(tx);
// NCCL pairs the sends and receives between two ranks in the order they are launched, and knows no
// tags; a batch is launched sorted by tag (stably), so within one step messages pair up by tag
// whatever order each side posted them in. A request completes when its whole batch has.
//
// Transfers of zero bytes always go through MPI, so a null pointer on one end cannot split a pair.
//
// Host memory. The strategies also exchange small host arrays (shard positions, shapes), and NCCL
// reads device memory only; so host buffers go through the MPI communicator this one keeps. A
// transfer must use the same kind of memory on both ends. A collective takes the NCCL path only when
// the buffers of every rank are device memory (the ranks agree first over MPI), otherwise the MPI
// path, which also accepts device buffers; a buffer passed as null (zero bytes) fits either.
#include <cuda_runtime_api.h>
#include <mpi.h>
#include <nccl.h>

#include <initializer_list>
#include <memory>
#include <utility>
#include <vector>

#include "../communicator.hpp"  // relative: the same in the source tree and installed
#include "../mpi/mpi_communicator.hpp"

namespace longattn::comm {

class NcclCommunicator final : public Communicator {
public:
    // Collective over parent. compute_stream is a cudaStream_t (null: the legacy default stream).
    // device < 0 picks one from the local rank (comm/mpi/device_select.hpp); it becomes the current device.
    // timeout_s > 0: the MPI communicator's watchdog, which also aborts the NCCL communicator (and
    // those split from it) before it ends a stuck job.
    explicit NcclCommunicator(MPI_Comm parent, void* compute_stream = nullptr, int device = -1, double timeout_s = 0);
    // Over an NCCL communicator the caller already has (borrowed: it must outlive this one, and is
    // neither destroyed nor used for anything but this communicator's transfers while it lives), with
    // parent's ranks for the host-memory path. Collective over parent; nccl must hold the same ranks in
    // the same order (rank r of parent is rank r of nccl), which is checked. Its device becomes the
    // current one. The watchdog, if any, aborts it when it ends a stuck job.
    NcclCommunicator(MPI_Comm parent, ncclComm_t nccl, void* compute_stream, double timeout_s);
    ~NcclCommunicator() override;
    NcclCommunicator(const NcclCommunicator&) = delete;
    NcclCommunicator& operator=(const NcclCommunicator&) = delete;

    int rank() const override { return mpi_->rank(); }
    int size() const override { return mpi_->size(); }
    int device() const { return device_; }
    ncclComm_t handle() const { return nccl_; }
    MpiCommunicator& mpi() { return *mpi_; }
    // Later launches are ordered after the work queued on this stream instead.
    void set_compute_stream(void* stream) { compute_ = static_cast<cudaStream_t>(stream); }

    Request isend(const void* buf, std::size_t bytes, int dest, int tag) override;
    Request irecv(void* buf, std::size_t bytes, int src, int tag) override;
    bool test(Request& r) override;
    void wait(Request& r) override;
    void progress() override;
    void flush() override;
    void note_step(const char* phase, int step) override { mpi_->note_step(phase, step); }

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

private:
    // A split: the sub-communicators are made by the parent.
    NcclCommunicator(std::unique_ptr<MpiCommunicator> mpi, ncclComm_t nccl, int device, cudaStream_t compute);
    void create_streams();  // and registers with the watchdog

    struct Op {
        bool send;
        void* buf;
        std::size_t bytes;
        int peer;
        int tag;
    };
    // A request is a slot: either an MPI request (host memory) or one operation of an NCCL batch.
    struct Slot {
        enum class Kind { free, mpi, nccl } kind = Kind::free;
        Request mpi;
        int batch = -1;  // -1: posted, not launched yet
    };
    // The operations launched by one flush share one completion event.
    struct Batch {
        cudaEvent_t done = nullptr;
        int open = 0;  // its requests not completed yet; 0: the event may be reused
    };

    Request add_slot(Slot s);
    Request post(bool send, void* buf, std::size_t bytes, int peer, int tag);
    bool batch_done(int batch);         // queries the event
    void release(Request& r);           // frees the slot (and the batch after its last request)
    void order_after_compute();         // the communication stream waits for the compute stream
    void synchronize();                 // waits for the communication stream, watching for NCCL errors
    void check_async();                 // throws if NCCL reports an asynchronous error
    bool all_device(bool mine);         // agreement of every rank, over MPI
    // Whether a collective on these buffers (null ones ignored) takes the NCCL path on every rank.
    bool use_nccl(std::initializer_list<const void*> buffers);
    void absorb_mpi_bytes();            // counts traffic sent through the MPI communicator
    void reduce(void* data, std::size_t n, ncclDataType_t type, ncclRedOp_t op);
    void device_all_to_all_v(const void* send, const std::size_t* send_bytes, const std::size_t* send_off, void* recv,
                             const std::size_t* recv_bytes, const std::size_t* recv_off);

    std::unique_ptr<MpiCommunicator> mpi_;
    ncclComm_t nccl_ = nullptr;
    int device_ = 0;
    cudaStream_t compute_ = nullptr;
    cudaStream_t stream_ = nullptr;      // communication stream
    cudaEvent_t compute_ready_ = nullptr;
    std::vector<Slot> slots_;
    std::vector<Batch> batches_;
    std::vector<std::pair<Op, int>> pending_;  // (operation, slot) posted since the last flush
    int abort_hook_ = -1;                      // the watchdog's hook that aborts nccl_
    bool owned_ = true;                        // nccl_ is destroyed with this communicator
};

}  // namespace longattn::comm
