#include "comm/nccl/nccl_communicator.hpp"

#include <algorithm>
#include <exception>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <thread>

#include "comm/device_memory.hpp"
#include "comm/mpi/device_select.hpp"
#include "comm/mpi/watchdog.hpp"
#include "comm/nccl/nccl_check.hpp"
#include "longattn/error.hpp"

namespace longattn::comm {
namespace {

// The first failure of a step every rank must pass; empty when it succeeded.
template <class F>
std::exception_ptr attempt(F&& f) {
    try {
        f();
        return nullptr;
    } catch (...) {
        return std::current_exception();
    }
}

}  // namespace

NcclCommunicator::NcclCommunicator(MPI_Comm parent, void* compute_stream, int device, double timeout_s)
    : mpi_(std::make_unique<MpiCommunicator>(parent, timeout_s)), compute_(static_cast<cudaStream_t>(compute_stream)) {
    // Every rank learns whether all ranks found a device before any of them waits in NCCL's
    // bootstrap, so a rank without a GPU fails the job on every rank instead of hanging it.
    const std::exception_ptr failed = attempt([&] {
        if (device < 0) {
            device_ = select_device(mpi_->handle());
        } else {
            cuda_check(cudaSetDevice(device), "cudaSetDevice");
            device_ = device;
        }
    });
    int ok = failed ? 0 : 1;
    mpi_check(MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, mpi_->handle()), "Allreduce");
    if (failed) std::rethrow_exception(failed);
    if (ok == 0) throw std::runtime_error("NCCL communicator: another rank could not select its GPU");

    // Rank 0 creates the bootstrap id; its status travels with it so no rank waits on a failed root.
    struct {
        ncclUniqueId id;
        int rc;
    } boot{};
    if (rank() == 0) boot.rc = static_cast<int>(ncclGetUniqueId(&boot.id));
    mpi_->broadcast(&boot, sizeof(boot), 0);
    if (boot.rc != ncclSuccess) {
        if (rank() == 0) nccl_check(static_cast<ncclResult_t>(boot.rc), "ncclGetUniqueId");
        throw std::runtime_error("NCCL ncclGetUniqueId failed on rank 0");
    }
    nccl_check(ncclCommInitRank(&nccl_, size(), boot.id, rank()), "ncclCommInitRank");
    create_streams();
}

NcclCommunicator::NcclCommunicator(MPI_Comm parent, ncclComm_t nccl, void* compute_stream, double timeout_s)
    : mpi_(std::make_unique<MpiCommunicator>(parent, timeout_s)), compute_(static_cast<cudaStream_t>(compute_stream)),
      owned_(false) {
    // Checked on every rank and agreed on before any NCCL traffic, so a mismatch fails everywhere.
    std::string why;
    int count = -1, user_rank = -1;
    if (nccl == nullptr) {
        why = "the NCCL communicator is null";
    } else if (ncclCommCount(nccl, &count) != ncclSuccess || ncclCommUserRank(nccl, &user_rank) != ncclSuccess ||
               ncclCommCuDevice(nccl, &device_) != ncclSuccess) {
        why = "the NCCL communicator cannot be queried (ncclCommCount/ncclCommUserRank/ncclCommCuDevice failed)";
    } else if (count != size() || user_rank != rank()) {
        why = "the NCCL communicator holds " + std::to_string(count) + " ranks and this is its rank " +
              std::to_string(user_rank) + ", but it is rank " + std::to_string(rank()) + " of the " +
              std::to_string(size()) + " of the MPI communicator: they must hold the same ranks in the same order";
    } else if (cudaSetDevice(device_) != cudaSuccess) {
        why = "cudaSetDevice(" + std::to_string(device_) + ") failed for the NCCL communicator's device";
    }
    int ok = why.empty() ? 1 : 0;
    mpi_check(MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, mpi_->handle()), "Allreduce");
    if (!why.empty()) throw Error("nccl: " + why);
    if (ok == 0) throw Error("nccl: another rank's NCCL communicator does not match its MPI communicator");
    nccl_ = nccl;
    create_streams();
}

NcclCommunicator::NcclCommunicator(std::unique_ptr<MpiCommunicator> mpi, ncclComm_t nccl, int device,
                                   cudaStream_t compute)
    : mpi_(std::move(mpi)), nccl_(nccl), device_(device), compute_(compute) {
    create_streams();
}

void NcclCommunicator::create_streams() {
    // Non-blocking: the legacy default stream must not serialize with the transfers; the events
    // below order exactly what needs ordering.
    cuda_check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    cuda_check(cudaEventCreateWithFlags(&compute_ready_, cudaEventDisableTiming), "cudaEventCreateWithFlags");
    // A stuck peer leaves this rank's NCCL kernels spinning: the watchdog aborts them first.
    if (Watchdog* w = mpi_->watchdog()) abort_hook_ = w->add_abort_hook([c = nccl_] { (void)ncclCommAbort(c); });
}

NcclCommunicator::~NcclCommunicator() {
    // Nothing can be reported from here. Destroying the NCCL communicator waits for launched work.
    if (abort_hook_ >= 0) mpi_->watchdog()->remove_hook(abort_hook_);
    if (nccl_ != nullptr && owned_) (void)ncclCommDestroy(nccl_);
    for (Batch& b : batches_)
        if (b.done != nullptr) (void)cudaEventDestroy(b.done);
    if (compute_ready_ != nullptr) (void)cudaEventDestroy(compute_ready_);
    if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
}

// ---------------------------------------------------------------------------------------------
// Point-to-point

Request NcclCommunicator::add_slot(Slot s) {
    std::size_t id = 0;
    while (id < slots_.size() && slots_[id].kind != Slot::Kind::free) ++id;
    if (id == slots_.size()) slots_.emplace_back();
    slots_[id] = s;
    return Request{static_cast<int>(id)};
}

Request NcclCommunicator::isend(const void* buf, std::size_t bytes, int dest, int tag) {
    if (bytes == 0 || !is_device_memory(buf)) {
        Slot s;
        s.kind = Slot::Kind::mpi;
        s.mpi = mpi_->isend(buf, bytes, dest, tag);
        absorb_mpi_bytes();
        return add_slot(s);
    }
    bytes_sent_ += bytes;
    return post(true, const_cast<void*>(buf), bytes, dest, tag);  // NCCL only reads it
}

Request NcclCommunicator::irecv(void* buf, std::size_t bytes, int src, int tag) {
    if (bytes == 0 || !is_device_memory(buf)) {
        Slot s;
        s.kind = Slot::Kind::mpi;
        s.mpi = mpi_->irecv(buf, bytes, src, tag);
        return add_slot(s);
    }
    return post(false, buf, bytes, src, tag);
}

Request NcclCommunicator::post(bool send, void* buf, std::size_t bytes, int peer, int tag) {
    require(peer >= 0 && peer < size(), "comm", "peer rank ", peer, " is outside [0, ", size(), ")");
    Slot s;
    s.kind = Slot::Kind::nccl;
    const Request r = add_slot(s);
    pending_.push_back({Op{send, buf, bytes, peer, tag}, r.id});
    return r;
}

void NcclCommunicator::flush() {
    if (pending_.empty()) return;
    std::size_t b = 0;
    while (b < batches_.size() && batches_[b].open > 0) ++b;
    if (b == batches_.size()) {
        batches_.emplace_back();
        cuda_check(cudaEventCreateWithFlags(&batches_[b].done, cudaEventDisableTiming), "cudaEventCreateWithFlags");
    }
    // Both ends launch the messages between them in tag order, which is how NCCL pairs them.
    std::stable_sort(pending_.begin(), pending_.end(),
                     [](const auto& x, const auto& y) { return x.first.tag < y.first.tag; });
    order_after_compute();
    NcclGroup group;
    for (const auto& [op, slot] : pending_) {
        if (op.send)
            nccl_check(ncclSend(op.buf, op.bytes, ncclUint8, op.peer, nccl_, stream_), "ncclSend", nccl_);
        else
            nccl_check(ncclRecv(op.buf, op.bytes, ncclUint8, op.peer, nccl_, stream_), "ncclRecv", nccl_);
    }
    group.end();
    cuda_check(cudaEventRecord(batches_[b].done, stream_), "cudaEventRecord");
    for (const auto& entry : pending_) slots_[static_cast<std::size_t>(entry.second)].batch = static_cast<int>(b);
    batches_[b].open = static_cast<int>(pending_.size());
    pending_.clear();
}

bool NcclCommunicator::batch_done(int batch) {
    const cudaError_t rc = cudaEventQuery(batches_[static_cast<std::size_t>(batch)].done);
    if (rc == cudaSuccess) return true;
    if (rc != cudaErrorNotReady) cuda_check(rc, "cudaEventQuery");
    (void)cudaGetLastError();  // "not ready" is an answer, not an error for later checks to find
    check_async();
    return false;
}

void NcclCommunicator::release(Request& r) {
    Slot& s = slots_[static_cast<std::size_t>(r.id)];
    if (s.kind == Slot::Kind::nccl) --batches_[static_cast<std::size_t>(s.batch)].open;
    s = Slot{};
    r = Request{};
}

bool NcclCommunicator::test(Request& r) {
    if (!r.active()) return true;
    const auto id = static_cast<std::size_t>(r.id);
    if (slots_[id].kind == Slot::Kind::mpi) {
        if (!mpi_->test(slots_[id].mpi)) return false;
    } else {
        if (slots_[id].batch < 0) flush();
        if (!batch_done(slots_[id].batch)) return false;
    }
    release(r);
    return true;
}

void NcclCommunicator::wait(Request& r) {
    if (!r.active()) return;
    const auto id = static_cast<std::size_t>(r.id);
    if (slots_[id].kind == Slot::Kind::mpi) {
        mpi_->wait(slots_[id].mpi);
    } else {
        if (slots_[id].batch < 0) flush();
        // Polled rather than synchronized, so a failed peer surfaces as an NCCL error here.
        const MpiCommunicator::Waiting note(*mpi_, "an NCCL point-to-point batch", 0);
        while (!batch_done(slots_[id].batch)) std::this_thread::yield();
    }
    release(r);
}

void NcclCommunicator::progress() {
    flush();
    mpi_->progress();
    check_async();
}

// ---------------------------------------------------------------------------------------------
// Stream order and errors

void NcclCommunicator::order_after_compute() {
    cuda_check(cudaEventRecord(compute_ready_, compute_), "cudaEventRecord");
    cuda_check(cudaStreamWaitEvent(stream_, compute_ready_, 0), "cudaStreamWaitEvent");
}

void NcclCommunicator::synchronize() {
    const MpiCommunicator::Waiting note(*mpi_, "an NCCL collective", 0);
    for (;;) {
        const cudaError_t rc = cudaStreamQuery(stream_);
        if (rc == cudaSuccess) return;
        if (rc != cudaErrorNotReady) cuda_check(rc, "cudaStreamQuery");
        (void)cudaGetLastError();
        check_async();
        std::this_thread::yield();
    }
}

void NcclCommunicator::check_async() {
    ncclResult_t state = ncclSuccess;
    nccl_check(ncclCommGetAsyncError(nccl_, &state), "ncclCommGetAsyncError", nccl_);
    if (state != ncclSuccess && state != ncclInProgress) nccl_check(state, "asynchronous operation", nccl_);
}

void NcclCommunicator::absorb_mpi_bytes() {
    bytes_sent_ += mpi_->bytes_sent();
    mpi_->reset_bytes_sent();
}

bool NcclCommunicator::all_device(bool mine) {
    int v = mine ? 1 : 0;
    mpi_check(MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_INT, MPI_MIN, mpi_->handle()), "Allreduce");
    return v != 0;
}

bool NcclCommunicator::use_nccl(std::initializer_list<const void*> buffers) {
    // Collectives keep the order of the point-to-point batches posted before them on every rank.
    flush();
    bool mine = true, any_device = false;
    for (const void* p : buffers) {
        if (p == nullptr) continue;
        const bool dev = is_device_memory(p);
        mine = mine && dev;
        any_device = any_device || dev;
    }
    const bool nccl = all_device(mine);
    // The MPI path copies device memory outside the compute stream: the data must be complete.
    if (!nccl && any_device) cuda_check(cudaStreamSynchronize(compute_), "cudaStreamSynchronize");
    return nccl;
}

}  // namespace longattn::comm
