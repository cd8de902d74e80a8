#pragma once
// The communicator of one process (rank 0 of 1): collectives copy the own part, a send meets the
// receive of the same tag. For a context without MPI. Buffers may be device memory when the copy
// function handed in moves it (the default is memcpy: host memory only).
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <vector>

#include "communicator.hpp"

namespace longattn::comm {

class SelfCommunicator final : public Communicator {
public:
    using Copy = std::function<void(void* dst, const void* src, std::size_t bytes)>;
    explicit SelfCommunicator(Copy copy = nullptr) : copy_(std::move(copy)) {}

    int rank() const override { return 0; }
    int size() const override { return 1; }

    Request isend(const void* buf, std::size_t bytes, int dest, int tag) override {
        return post(Op{true, const_cast<void*>(buf), bytes, tag}, dest);
    }
    Request irecv(void* buf, std::size_t bytes, int src, int tag) override { return post(Op{false, buf, bytes, tag}, src); }
    bool test(Request& r) override {
        if (!r.active()) return true;
        if (!ops_[static_cast<std::size_t>(r.id)].done) return false;
        ops_[static_cast<std::size_t>(r.id)] = Op{};
        r = Request{};
        return true;
    }
    void wait(Request& r) override {
        if (!test(r)) throw std::logic_error("SelfCommunicator: waiting on a transfer that has no partner (it would hang)");
    }
    void progress() override {}

    void all_to_all_v(const void* send, const std::size_t* send_bytes, const std::size_t* send_off, void* recv,
                      const std::size_t*, const std::size_t* recv_off) override {
        copy(static_cast<char*>(recv) + recv_off[0], static_cast<const char*>(send) + send_off[0], send_bytes[0]);
    }
    void all_reduce_sum(double*, std::size_t) override {}
    void all_reduce_sum(std::int64_t*, std::size_t) override {}
    void all_reduce_max(double*, std::size_t) override {}
    void all_gather_v(const void* send, void* recv, const std::size_t* bytes, const std::size_t* offsets) override {
        copy(static_cast<char*>(recv) + offsets[0], send, bytes[0]);
    }
    void broadcast(void*, std::size_t, int) override {}
    void barrier() override {}
    std::unique_ptr<Communicator> split(int, int) override { return std::make_unique<SelfCommunicator>(copy_); }
    [[noreturn]] void abort(int code) override { std::exit(code); }

private:
    struct Op {
        bool send = false;
        void* buf = nullptr;
        std::size_t bytes = 0;
        int tag = 0;
        bool used = false, done = false;
    };
    void copy(void* dst, const void* src, std::size_t bytes) {
        if (bytes == 0 || dst == src) return;
        if (copy_) copy_(dst, src, bytes);
        else std::memcpy(dst, src, bytes);
    }
    Request post(Op op, int peer) {
        if (peer != 0) throw std::invalid_argument("SelfCommunicator: the only rank is 0");
        op.used = true;
        if (op.send) bytes_sent_ += op.bytes;
        for (std::size_t i = 0; i < ops_.size(); ++i) {
            Op& o = ops_[i];
            if (o.used && !o.done && o.send != op.send && o.tag == op.tag) {
                const Op& s = op.send ? op : o;
                const Op& r = op.send ? o : op;
                if (s.bytes != r.bytes) throw std::logic_error("SelfCommunicator: a send and its receive differ in size");
                copy(r.buf, s.buf, s.bytes);
                o.done = op.done = true;
                break;
            }
        }
        std::size_t id = 0;
        while (id < ops_.size() && ops_[id].used) ++id;
        if (id == ops_.size()) ops_.emplace_back();
        ops_[id] = op;
        return Request{static_cast<int>(id)};
    }
    Copy copy_;
    std::vector<Op> ops_;
};

}  // namespace longattn::comm
