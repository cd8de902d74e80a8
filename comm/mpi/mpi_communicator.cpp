#include "comm/mpi/mpi_communicator.hpp"

#include <algorithm>
#include <cstring>
#include <string>

#include "comm/mpi/watchdog.hpp"
#include "longattn/build_config.hpp"
#include "longattn/error.hpp"

#if LONGATTN_HAVE_CUDA
#include "comm/device_memory.hpp"
#include "comm/mpi/device_staging.hpp"
#endif

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

void DeviceStagingDeleter::operator()(DeviceStaging* p) const {
#if LONGATTN_HAVE_CUDA
    delete p;
#else
    (void)p;  // never allocated without CUDA
#endif
}

MpiCommunicator::MpiCommunicator(MPI_Comm parent, double timeout_s) : MpiCommunicator(parent, nullptr) {
    require(timeout_s >= 0, "timeout", "must be 0 (no watchdog) or a number of seconds, not ", timeout_s);
    if (timeout_s > 0 && size_ > 1) {
        watchdog_ = std::make_shared<Watchdog>(comm_, timeout_s);
        watched_rank_ = watchdog_->world_ranks(comm_);
    }
}

MpiCommunicator::MpiCommunicator(MPI_Comm parent, std::shared_ptr<Watchdog> watchdog) : watchdog_(std::move(watchdog)) {
    int init = 0;
    MPI_Initialized(&init);
    require(init != 0, "comm", "MPI must be initialized before creating an MpiCommunicator");
    require(parent != MPI_COMM_NULL, "comm", "the MPI communicator handed in is MPI_COMM_NULL");
    check(MPI_Comm_dup(parent, &comm_), "Comm_dup");
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
#if LONGATTN_HAVE_CUDA
    // Without a visible device no buffer can be device memory: the host path stays as it is.
    if (cuda_device_count() > 0) device_.reset(new DeviceStaging());
#endif
    if (watchdog_) watched_rank_ = watchdog_->world_ranks(comm_);
}

MpiCommunicator::Waiting::Waiting(const MpiCommunicator& c, const char* op, std::size_t bytes, int peer, int tag)
    : w(c.watchdog_.get()) {
    if (w) w->begin_wait(op, bytes, peer < 0 ? -1 : c.watched_rank_[static_cast<std::size_t>(peer)], tag);
}

MpiCommunicator::Waiting::~Waiting() {
    if (w) w->end_wait();
}

void MpiCommunicator::note_step(const char* phase, int step) {
    if (watchdog_) watchdog_->set_step(phase, step);
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
#if LONGATTN_HAVE_CUDA
    if (device_) buf = send ? device_->stage_send(static_cast<int>(id), buf, bytes)
                            : device_->stage_recv(static_cast<int>(id), buf, bytes);
#endif
    Slot& s = slots_[id];
    s.in_use = true, s.send = send, s.bytes = bytes, s.peer = peer, s.tag = tag;
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

void MpiCommunicator::finish_slot(std::size_t id) {
    slots_[id].in_use = false;
#if LONGATTN_HAVE_CUDA
    if (device_) device_->complete(static_cast<int>(id));  // a staged receive lands on the device
#endif
}

bool MpiCommunicator::test_slot(std::size_t id) {
    Slot& s = slots_[id];
    int flag = 0;
    check(MPI_Testall(static_cast<int>(s.parts.size()), s.parts.data(), &flag, MPI_STATUSES_IGNORE), "Testall");
    if (flag) finish_slot(id);
    return flag != 0;
}

bool MpiCommunicator::test(Request& r) {
    if (!r.active()) return true;
    if (!test_slot(static_cast<std::size_t>(r.id))) return false;
    r = Request{};
    return true;
}

void MpiCommunicator::wait(Request& r) {
    if (!r.active()) return;
    const auto id = static_cast<std::size_t>(r.id);
    Slot& s = slots_[id];
    const Waiting w(*this, s.send ? "a send" : "a receive", s.bytes, s.peer, s.tag);
    check(MPI_Waitall(static_cast<int>(s.parts.size()), s.parts.data(), MPI_STATUSES_IGNORE), "Waitall");
    finish_slot(id);
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
        local_copy(static_cast<char*>(recv) + recv_off[rank_], static_cast<const char*>(send) + send_off[rank_],
                   send_bytes[rank_]);
    for (Request& r : reqs) wait(r);
}

void MpiCommunicator::local_copy(void* dst, const void* src, std::size_t bytes) {
#if LONGATTN_HAVE_CUDA
    if (device_ && (is_device_memory(dst) || is_device_memory(src))) {
        copy_bytes(dst, src, bytes);
        return;
    }
#endif
    std::memcpy(dst, src, bytes);
}

void MpiCommunicator::allreduce(void* data, std::size_t n, MPI_Datatype type, std::size_t elem_bytes, MPI_Op op) {
    void* p = data;
#if LONGATTN_HAVE_CUDA
    if (device_) p = device_->borrow(data, n * elem_bytes, true);
#endif
    const Waiting w(*this, "an all-reduce", n * elem_bytes);
    check(MPI_Allreduce(MPI_IN_PLACE, p, static_cast<int>(n), type, op, comm_), "Allreduce");
#if LONGATTN_HAVE_CUDA
    if (device_) device_->give_back(data, p, n * elem_bytes, true);
#endif
}

void MpiCommunicator::all_reduce_sum(double* data, std::size_t n) {
    allreduce(data, n, MPI_DOUBLE, sizeof(double), MPI_SUM);
}
void MpiCommunicator::all_reduce_sum(std::int64_t* data, std::size_t n) {
    allreduce(data, n, MPI_INT64_T, sizeof(std::int64_t), MPI_SUM);
}
void MpiCommunicator::all_reduce_max(double* data, std::size_t n) {
    allreduce(data, n, MPI_DOUBLE, sizeof(double), MPI_MAX);
}

void MpiCommunicator::all_gather_v(const void* send, void* recv, const std::size_t* bytes, const std::size_t* offsets) {
    std::vector<std::size_t> send_bytes(static_cast<std::size_t>(size_), bytes[rank_]);
    std::vector<std::size_t> send_off(static_cast<std::size_t>(size_), 0);
    // Everyone sends its own part to everyone: an all-to-all whose send side is one buffer.
    all_to_all_v(send, send_bytes.data(), send_off.data(), recv, bytes, offsets);
}

void MpiCommunicator::broadcast(void* buf, std::size_t bytes, int root) {
    void* mpi_buf = buf;
#if LONGATTN_HAVE_CUDA
    if (device_) mpi_buf = device_->borrow(buf, bytes, rank_ == root);
#endif
    auto* p = static_cast<char*>(mpi_buf);
    const Waiting w(*this, "a broadcast", bytes);
    for (std::size_t done = 0; done < bytes; done += kPart)
        check(MPI_Bcast(p + done, static_cast<int>(std::min(kPart, bytes - done)), MPI_BYTE, root, comm_), "Bcast");
#if LONGATTN_HAVE_CUDA
    if (device_) device_->give_back(buf, mpi_buf, bytes, rank_ != root);
#endif
}

void MpiCommunicator::barrier() {
    const Waiting w(*this, "a barrier", 0);
    check(MPI_Barrier(comm_), "Barrier");
}

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key) {
    MPI_Comm sub;
    {
        const Waiting w(*this, "a communicator split", 0);
        check(MPI_Comm_split(comm_, color, key, &sub), "Comm_split");
    }
    std::unique_ptr<MpiCommunicator> out(new MpiCommunicator(sub, watchdog_));
    MPI_Comm_free(&sub);
    return out;
}

void MpiCommunicator::abort(int code) {
    MPI_Abort(comm_, code);
    std::abort();
}

}  // namespace longattn::comm
