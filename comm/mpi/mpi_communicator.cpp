#include "comm/mpi/mpi_communicator.hpp"

#include <algorithm>
#include <cstring>
#include <string>

#include "longattn/error.hpp"

namespace longattn::comm {
namespace {

// MPI counts are int: messages travel in parts of at most 1 GiB.
constexpr std::size_t kPart = std::size_t{1} << 30;

void check(int rc, const char* what) {
    if (rc == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    throw std::runtime_error(std::string("MPI ") + what + " failed: " + std::string(msg, static_cast<std::size_t>(len)));
}

}  // namespace

MpiCommunicator::MpiCommunicator(MPI_Comm parent) {
    int init = 0;
    MPI_Initialized(&init);
    require(init != 0, "comm", "MPI must be initialized before creating an MpiCommunicator");
    require(parent != MPI_COMM_NULL, "comm", "the MPI communicator handed in is MPI_COMM_NULL");
    check(MPI_Comm_dup(parent, &comm_), "Comm_dup");
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
}

MpiCommunicator::~MpiCommunicator() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

Request MpiCommunicator::post(bool send, void* buf, std::size_t bytes, int peer, int tag) {
    std::size_t id = 0;
    while (id < slots_.size() && slots_[id].in_use) ++id;
    if (id == slots_.size()) slots_.emplace_back();
    Slot& s = slots_[id];
    s.in_use = true;
    s.parts.clear();
    auto* p = static_cast<char*>(buf);
    std::size_t done = 0;
    do {
        const std::size_t n = std::min(kPart, bytes - done);
        MPI_Request r;
        if (send) check(MPI_Isend(p + done, static_cast<int>(n), MPI_BYTE, peer, tag, comm_, &r), "Isend");
        else check(MPI_Irecv(p + done, static_cast<int>(n), MPI_BYTE, peer, tag, comm_, &r), "Irecv");
        s.parts.push_back(r);
        done += n;
    } while (done < bytes);
    if (send) bytes_sent_ += bytes;
    return Request{static_cast<int>(id)};
}

Request MpiCommunicator::isend(const void* buf, std::size_t bytes, int dest, int tag) {
    return post(true, const_cast<void*>(buf), bytes, dest, tag);
}
Request MpiCommunicator::irecv(void* buf, std::size_t bytes, int src, int tag) {
    return post(false, buf, bytes, src, tag);
}

bool MpiCommunicator::test_slot(Slot& s) {
    int flag = 0;
    check(MPI_Testall(static_cast<int>(s.parts.size()), s.parts.data(), &flag, MPI_STATUSES_IGNORE), "Testall");
    if (flag) s.in_use = false;
    return flag != 0;
}

bool MpiCommunicator::test(Request& r) {
    if (!r.active()) return true;
    if (!test_slot(slots_[static_cast<std::size_t>(r.id)])) return false;
    r = Request{};
    return true;
}

void MpiCommunicator::wait(Request& r) {
    if (!r.active()) return;
    Slot& s = slots_[static_cast<std::size_t>(r.id)];
    check(MPI_Waitall(static_cast<int>(s.parts.size()), s.parts.data(), MPI_STATUSES_IGNORE), "Waitall");
    s.in_use = false;
    r = Request{};
}

void MpiCommunicator::progress() {
    // Testing any one request drives the progress engine for all of them.
    for (Slot& s : slots_)
        if (s.in_use) {
            int flag = 0;
            check(MPI_Testall(static_cast<int>(s.parts.size()), s.parts.data(), &flag, MPI_STATUSES_IGNORE),
                  "Testall");
            return;
        }
}

void MpiCommunicator::all_to_all_v(const void* send, const std::size_t* send_bytes, const std::size_t* send_off,
                                   void* recv, const std::size_t* recv_bytes, const std::size_t* recv_off) {
    // Point-to-point pairs: no int-count limit, and the own part is a plain copy.
    constexpr int kTag = 0x7a2a;
    std::vector<Request> reqs;
    for (int i = 1; i < size_; ++i) {
        const int src = (rank_ - i + size_) % size_;
        if (recv_bytes[src] > 0) reqs.push_back(irecv(static_cast<char*>(recv) + recv_off[src], recv_bytes[src], src, kTag));
    }
    for (int i = 1; i < size_; ++i) {
        const int dst = (rank_ + i) % size_;
        if (send_bytes[dst] > 0)
            reqs.push_back(isend(static_cast<const char*>(send) + send_off[dst], send_bytes[dst], dst, kTag));
    }
    if (send_bytes[rank_] > 0)
        std::memcpy(static_cast<char*>(recv) + recv_off[rank_], static_cast<const char*>(send) + send_off[rank_],
                    send_bytes[rank_]);
    for (Request& r : reqs) wait(r);
}

void MpiCommunicator::all_reduce_sum(double* data, std::size_t n) {
    check(MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_DOUBLE, MPI_SUM, comm_), "Allreduce");
}
void MpiCommunicator::all_reduce_sum(std::int64_t* data, std::size_t n) {
    check(MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_INT64_T, MPI_SUM, comm_), "Allreduce");
}
void MpiCommunicator::all_reduce_max(double* data, std::size_t n) {
    check(MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_DOUBLE, MPI_MAX, comm_), "Allreduce");
}

void MpiCommunicator::all_gather_v(const void* send, void* recv, const std::size_t* bytes, const std::size_t* offsets) {
    std::vector<std::size_t> send_bytes(static_cast<std::size_t>(size_), bytes[rank_]);
    std::vector<std::size_t> send_off(static_cast<std::size_t>(size_), 0);
    // Everyone sends its own part to everyone: an all-to-all whose send side is one buffer.
    all_to_all_v(send, send_bytes.data(), send_off.data(), recv, bytes, offsets);
}

void MpiCommunicator::broadcast(void* buf, std::size_t bytes, int root) {
    auto* p = static_cast<char*>(buf);
    for (std::size_t done = 0; done < bytes; done += kPart)
        check(MPI_Bcast(p + done, static_cast<int>(std::min(kPart, bytes - done)), MPI_BYTE, root, comm_), "Bcast");
}

void MpiCommunicator::barrier() { check(MPI_Barrier(comm_), "Barrier"); }

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key) {
    MPI_Comm sub;
    check(MPI_Comm_split(comm_, color, key, &sub), "Comm_split");
    auto out = std::make_unique<MpiCommunicator>(sub);
    MPI_Comm_free(&sub);
    return out;
}

void MpiCommunicator::abort(int code) {
    MPI_Abort(comm_, code);
    std::abort();
}

}  // namespace longattn::comm
