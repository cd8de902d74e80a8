#pragma once
// What the strategies share: timing and memory accounting, shard bookkeeping, and kernel calls.
#include <chrono>
#include <cstdint>
#include <functional>
#include <vector>

#include "comm/communicator.hpp"
#include "kernels/attention.hpp"
#include "kernels/backend.hpp"
#include "longattn/distributed.hpp"

namespace longattn::dist {

// Tensor memory is touched only through the backend table of the tensors' device.
using kernels::add_view;
using kernels::copy_view;
using kernels::fill_view;

// Blocks of working memory kept between the calls of a plan: a released block goes to the next
// request it fits (the smallest such), so the calls after the first allocate nothing.
class Workspace {
public:
    Workspace() = default;
    ~Workspace();
    Workspace(const Workspace&) = delete;
    Workspace& operator=(const Workspace&) = delete;
    void* acquire(Device d, std::size_t bytes);  // nullptr for 0 bytes
    void release(void* p);
    std::uint64_t held_bytes() const;
    void clear();  // frees every block; none may be in use

private:
    struct Block {
        void* p;
        std::size_t bytes;
        Device device;
        bool used;
    };
    std::vector<Block> blocks_;
};

struct Ctx {
    const DistOptions& opt;
    DistStats& st;
    Workspace& ws;
    Device device = Device::cpu;  // where the caller's tensors live, and so every scratch buffer
    std::uint64_t scratch_now = 0;
};

// Adds the wall time of a scope to a counter.
class ScopedTimer {
public:
    explicit ScopedTimer(double& acc) : acc_(acc), t0_(std::chrono::steady_clock::now()) {}
    ~ScopedTimer() { acc_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count(); }
    ScopedTimer(const ScopedTimer&) = delete;
    ScopedTimer& operator=(const ScopedTimer&) = delete;

private:
    double& acc_;
    std::chrono::steady_clock::time_point t0_;
};

// Adds the process's CPU time (every thread) over its scope to acc.
class ScopedCpuTimer {
public:
    explicit ScopedCpuTimer(double& acc) : acc_(acc), t0_(process_cpu_s()) {}
    ~ScopedCpuTimer() { acc_ += process_cpu_s() - t0_; }
    ScopedCpuTimer(const ScopedCpuTimer&) = delete;
    ScopedCpuTimer& operator=(const ScopedCpuTimer&) = delete;
    static double process_cpu_s();

private:
    double& acc_;
    double t0_;
};

// Working memory of a strategy on the tensors' device (from the plan's workspace), counted into the
// stats while it lives.
class Scratch {
public:
    Scratch(Ctx& cx, std::size_t bytes);
    ~Scratch();
    Scratch(const Scratch&) = delete;
    Scratch& operator=(const Scratch&) = delete;
    void* data() { return data_; }
    float* f32() { return static_cast<float*>(data_); }
    TensorView view(DType t, std::int64_t d0, std::int64_t d1, std::int64_t d2, std::int64_t d3) const {
        return at(0, t, d0, d1, d2, d3);
    }
    // A contiguous view starting `offset` bytes in.
    TensorView at(std::size_t offset, DType t, std::int64_t d0, std::int64_t d1, std::int64_t d2, std::int64_t d3) const {
        TensorView v = contiguous_view(static_cast<char*>(data_) + offset, t, d0, d1, d2, d3);
        v.device = cx_.device;
        return v;
    }

private:
    Ctx& cx_;
    std::size_t bytes_;
    void* data_;
};

// Row counts, offsets and global positions of every rank's shard (all ranks learn all of them).
struct Shards {
    std::vector<std::int64_t> count, offset, pos;  // pos: all positions, rank after rank
    const std::int64_t* pos_of(int r) const { return pos.data() + offset[static_cast<std::size_t>(r)]; }
    std::int64_t total() const { return pos.empty() ? 0 : static_cast<std::int64_t>(pos.size()); }
};
Shards gather_shards(comm::Communicator& comm, const std::int64_t* local_pos, std::int64_t local_count);

// needed[o][d]: rank d's queries have some allowed key among rank o's rows (exact up to the hulls
// of runs of consecutive positions, so EMPTY is never claimed wrongly).
std::vector<std::vector<char>> needed_matrix(const Shards& sh, const Pattern& pat);

// Local rows [lo, hi) of shard o holding every key some other rank may attend (a hull: rows inside it
// may still go unused); {0, 0} when no other rank needs any. A ring sends only these rows.
std::pair<std::int64_t, std::int64_t> rows_needed_elsewhere(const Shards& sh, const Pattern& pat, int o);

// Blocked time on a request, counted as communication wait.
void timed_wait(Ctx& cx, comm::Communicator& comm, comm::Request& r);

// Kernel calls, timed and counted.
void run_forward(Ctx& cx, const kernels::FwdParams& p);
void run_backward(Ctx& cx, const kernels::BwdParams& p);

// The forward kernel on p in cx.opt.progress_chunks calls over query rows with comm.progress() between
// them (p.threads is cx's). With p.accumulate the keys are merged into the fp32 partial already in
// (p.o, p.lse, p.lse_lo).
void forward_chunked(Ctx& cx, comm::Communicator& comm, const kernels::FwdParams& p);
void backward_chunked(Ctx& cx, comm::Communicator& comm, const kernels::BwdParams& p);

// Strategy entry points, on the schedules of the plan (strategies/plan.hpp). Ulysses and hybrid wrap an
// inner attention over the gathered sequence.
struct RingPlan;
struct UlyssesPlan;
using InnerForward = std::function<void(const DistForwardArgs&)>;
using InnerBackward = std::function<void(const DistBackwardArgs&)>;

void ring_forward(Ctx& cx, comm::Communicator& comm, const RingPlan& plan, const DistForwardArgs& a);
void ring_backward(Ctx& cx, comm::Communicator& comm, const RingPlan& plan, const DistBackwardArgs& a);
void ulysses_forward(Ctx& cx, comm::Communicator& comm, const UlyssesPlan& plan, const DistForwardArgs& a,
                     const InnerForward& inner);
void ulysses_backward(Ctx& cx, comm::Communicator& comm, const UlyssesPlan& plan, const DistBackwardArgs& a,
                      const InnerBackward& inner);
void allgather_forward(Ctx& cx, comm::Communicator& comm, const Shards& sh, const DistForwardArgs& a);
void allgather_backward(Ctx& cx, comm::Communicator& comm, const Shards& sh, const DistBackwardArgs& a);
// Local attention over the whole (gathered) sequence on this rank alone.
void local_forward(Ctx& cx, const DistForwardArgs& a);
void local_backward(Ctx& cx, const DistBackwardArgs& a);

}  // namespace longattn::dist

namespace longattn::dist {

struct Range {
    std::int64_t start = 0, len = 0;
};
// Near-equal split of n items over p parts.
std::vector<Range> split_even(std::int64_t n, int p);
// Each rank's rows inside the gathered sequence.
std::vector<Range> rows_of(const Shards& sh);
// LSE [B, H, S] as a rank-4 view [B, H, S, 1], so it travels and is sliced like the other tensors.
inline TensorView as_rows(const float* lse, std::int64_t B, std::int64_t H, std::int64_t S, Device d) {
    TensorView v = contiguous_view(const_cast<float*>(lse), DType::f32, B, H, S, 1);
    v.device = d;
    return v;
}

// All-to-all of tensor blocks: rank j sends src narrowed to send[d] along send_dim to every rank d;
// rank d places (or adds, in source-rank order) the block from j into dst narrowed to recv[j] along
// recv_dim. Blocks travel in src's dtype; dst converts (add requires fp32 dst).
void exchange_blocks(Ctx& cx, comm::Communicator& comm, const TensorView& src, int send_dim,
                     const std::vector<Range>& send, const TensorView& dst, int recv_dim,
                     const std::vector<Range>& recv, bool add = false);

}  // namespace longattn::dist
