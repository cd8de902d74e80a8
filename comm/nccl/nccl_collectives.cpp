// Collectives of the NCCL communicator: device buffers through NCCL on the communication stream,
// anything else through the MPI communicator (see "Host memory" in the header). Blocking, as the
// contract says: the result is in place when the call returns.
#include <mpi.h>

#include <vector>

#include "comm/device_memory.hpp"
#include "comm/mpi/watchdog.hpp"
#include "comm/nccl/nccl_check.hpp"
#include "comm/nccl/nccl_communicator.hpp"
#include "longattn/error.hpp"

namespace longattn::comm {

void NcclCommunicator::reduce(void* data, std::size_t n, ncclDataType_t type, ncclRedOp_t op) {
    order_after_compute();
    nccl_check(ncclAllReduce(data, data, n, type, op, nccl_, stream_), "ncclAllReduce", nccl_);
    synchronize();
}

void NcclCommunicator::all_reduce_sum(double* data, std::size_t n) {
    if (n == 0) return;
    if (use_nccl({data})) reduce(data, n, ncclFloat64, ncclSum);
    else mpi_->all_reduce_sum(data, n);
}

void NcclCommunicator::all_reduce_sum(std::int64_t* data, std::size_t n) {
    if (n == 0) return;
    if (use_nccl({data})) reduce(data, n, ncclInt64, ncclSum);
    else mpi_->all_reduce_sum(data, n);
}

void NcclCommunicator::all_reduce_max(double* data, std::size_t n) {
    if (n == 0) return;
    if (use_nccl({data})) reduce(data, n, ncclFloat64, ncclMax);
    else mpi_->all_reduce_max(data, n);
}

void NcclCommunicator::device_all_to_all_v(const void* send, const std::size_t* send_bytes,
                                           const std::size_t* send_off, void* recv, const std::size_t* recv_bytes,
                                           const std::size_t* recv_off) {
    const int P = size(), r = rank();
    const auto* in = static_cast<const char*>(send);
    auto* out = static_cast<char*>(recv);
    order_after_compute();
    NcclGroup group;
    for (int i = 1; i < P; ++i) {
        const auto src = static_cast<std::size_t>((r - i + P) % P), dst = static_cast<std::size_t>((r + i) % P);
        if (recv_bytes[src] > 0)
            nccl_check(ncclRecv(out + recv_off[src], recv_bytes[src], ncclUint8, static_cast<int>(src), nccl_, stream_),
                       "ncclRecv", nccl_);
        if (send_bytes[dst] > 0) {
            nccl_check(ncclSend(in + send_off[dst], send_bytes[dst], ncclUint8, static_cast<int>(dst), nccl_, stream_),
                       "ncclSend", nccl_);
            bytes_sent_ += send_bytes[dst];
        }
    }
    group.end();
    const auto me = static_cast<std::size_t>(r);
    if (send_bytes[me] > 0)
        cuda_check(cudaMemcpyAsync(out + recv_off[me], in + send_off[me], send_bytes[me], cudaMemcpyDefault, stream_),
                   "cudaMemcpyAsync");
    synchronize();
}

void NcclCommunicator::all_to_all_v(const void* send, const std::size_t* send_bytes, const std::size_t* send_off,
                                    void* recv, const std::size_t* recv_bytes, const std::size_t* recv_off) {
    if (use_nccl({send, recv})) {
        device_all_to_all_v(send, send_bytes, send_off, recv, recv_bytes, recv_off);
    } else {
        mpi_->all_to_all_v(send, send_bytes, send_off, recv, recv_bytes, recv_off);
        absorb_mpi_bytes();
    }
}

void NcclCommunicator::all_gather_v(const void* send, void* recv, const std::size_t* bytes,
                                    const std::size_t* offsets) {
    if (use_nccl({send, recv})) {
        // Everyone sends its own part to everyone: an all-to-all whose send side is one buffer.
        const auto P = static_cast<std::size_t>(size());
        const std::vector<std::size_t> send_bytes(P, bytes[rank()]), send_off(P, 0);
        device_all_to_all_v(send, send_bytes.data(), send_off.data(), recv, bytes, offsets);
    } else {
        mpi_->all_gather_v(send, recv, bytes, offsets);
        absorb_mpi_bytes();
    }
}

void NcclCommunicator::broadcast(void* buf, std::size_t bytes, int root) {
    require(root >= 0 && root < size(), "comm", "broadcast root ", root, " is outside [0, ", size(), ")");
    if (bytes == 0) return;
    if (use_nccl({buf})) {
        order_after_compute();
        nccl_check(ncclBroadcast(buf, buf, bytes, ncclUint8, root, nccl_, stream_), "ncclBroadcast", nccl_);
        synchronize();
    } else {
        mpi_->broadcast(buf, bytes, root);
    }
}

void NcclCommunicator::barrier() {
    flush();
    mpi_->barrier();
}

std::unique_ptr<Communicator> NcclCommunicator::split(int color, int key) {
    require(color >= 0, "comm.split", "color must be >= 0, got ", color);
    flush();
    // The MPI half shares this communicator's watchdog.
    std::unique_ptr<MpiCommunicator> mpi(static_cast<MpiCommunicator*>(mpi_->split(color, key).release()));
    // The rank MPI gave (ties in key broken by the old rank) is the NCCL key, so both halves of the
    // new communicator number the ranks the same way.
    ncclComm_t child = nullptr;
    nccl_check(ncclCommSplit(nccl_, color, mpi->rank(), &child, nullptr), "ncclCommSplit", nccl_);
    return std::unique_ptr<Communicator>(new NcclCommunicator(std::move(mpi), child, device_, compute_));
}

void NcclCommunicator::abort(int code) {
    if (abort_hook_ >= 0) mpi_->watchdog()->remove_hook(abort_hook_);
    abort_hook_ = -1;
    if (nccl_ != nullptr) (void)ncclCommAbort(nccl_);  // unblocks this rank's pending NCCL work
    nccl_ = nullptr;
    mpi_->abort(code);
}

}  // namespace longattn::comm
