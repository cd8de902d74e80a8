#include "strategies/common.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>

#include <time.h>

#include "longattn/block_plan.hpp"
#include "longattn/error.hpp"
#include "longattn/tensor_ops.hpp"

namespace longattn::dist {

Workspace::~Workspace() { clear(); }

void* Workspace::acquire(Device d, std::size_t bytes) {
    if (bytes == 0) return nullptr;
    Block* best = nullptr;
    for (Block& b : blocks_)
        if (!b.used && b.device == d && b.bytes >= bytes && (!best || b.bytes < best->bytes)) best = &b;
    if (!best) {
        blocks_.push_back({kernels::backend(d).alloc(bytes), bytes, d, false});
        best = &blocks_.back();
    }
    best->used = true;
    return best->p;
}

void Workspace::release(void* p) {
    for (Block& b : blocks_)
        if (b.p == p && p != nullptr) b.used = false;
}

std::uint64_t Workspace::held_bytes() const {
    std::uint64_t n = 0;
    for (const Block& b : blocks_) n += b.bytes;
    return n;
}

void Workspace::clear() {
    for (const Block& b : blocks_) kernels::backend(b.device).free(b.p);
    blocks_.clear();
}

Scratch::Scratch(Ctx& cx, std::size_t bytes) : cx_(cx), bytes_(bytes), data_(cx.ws.acquire(cx.device, bytes)) {
    cx_.scratch_now += bytes;
    cx_.st.scratch_peak_bytes = std::max(cx_.st.scratch_peak_bytes, cx_.scratch_now);
}
Scratch::~Scratch() {
    cx_.ws.release(data_);
    cx_.scratch_now -= bytes_;
}

namespace {

// Every rank sees the same positions, so every rank reaches the same verdict: a position held twice
// (ranks that shard under different layouts or lengths) or a negative one is an error everywhere.
void check_distinct(const Shards& sh) {
    struct Run {
        std::int64_t lo, end;
        int rank;
    };
    std::vector<Run> runs;
    for (std::size_t r = 0; r + 1 < sh.offset.size(); ++r)
        for (const auto& [lo, end] : position_runs(sh.pos_of(static_cast<int>(r)), sh.count[r], SIZE_MAX))
            runs.push_back({lo, end, static_cast<int>(r)});
    std::sort(runs.begin(), runs.end(),
              [](const Run& a, const Run& b) { return std::tie(a.lo, a.rank) < std::tie(b.lo, b.rank); });
    if (!runs.empty())
        require(runs.front().lo >= 0, "pos", "positions must be >= 0; rank ", runs.front().rank, " holds ",
                runs.front().lo);
    for (std::size_t i = 1; i < runs.size(); ++i)
        require(runs[i].lo >= runs[i - 1].end, "pos", "position ", runs[i].lo, " is held by rank ", runs[i - 1].rank,
                runs[i].rank == runs[i - 1].rank ? " twice" : " and by rank " + std::to_string(runs[i].rank),
                "; each position must be on one rank once (do all ranks use the same layout and length?)");
}

}  // namespace

Shards gather_shards(comm::Communicator& comm, const std::int64_t* local_pos, std::int64_t local_count) {
    const auto P = static_cast<std::size_t>(comm.size());
    Shards sh;
    sh.count.assign(P, 0);
    std::vector<std::size_t> bytes(P, sizeof(std::int64_t)), off(P);
    for (std::size_t r = 0; r < P; ++r) off[r] = r * sizeof(std::int64_t);
    comm.all_gather_v(&local_count, sh.count.data(), bytes.data(), off.data());
    sh.offset.assign(P + 1, 0);
    for (std::size_t r = 0; r < P; ++r) sh.offset[r + 1] = sh.offset[r] + sh.count[r];
    sh.pos.assign(static_cast<std::size_t>(sh.offset[P]), 0);
    for (std::size_t r = 0; r < P; ++r) {
        bytes[r] = static_cast<std::size_t>(sh.count[r]) * sizeof(std::int64_t);
        off[r] = static_cast<std::size_t>(sh.offset[r]) * sizeof(std::int64_t);
    }
    comm.all_gather_v(local_pos, sh.pos.data(), bytes.data(), off.data());
    check_distinct(sh);
    return sh;
}

std::vector<std::vector<char>> needed_matrix(const Shards& sh, const Pattern& pat) {
    const std::size_t P = sh.count.size();
    std::vector<PositionRuns> runs(P);
    for (std::size_t r = 0; r < P; ++r) runs[r] = position_runs(sh.pos_of(static_cast<int>(r)), sh.count[r]);
    std::vector<std::vector<char>> need(P, std::vector<char>(P, 0));
    for (std::size_t o = 0; o < P; ++o)
        for (std::size_t d = 0; d < P; ++d) need[o][d] = may_attend(pat, runs[d], runs[o]) ? 1 : 0;
    return need;
}

std::pair<std::int64_t, std::int64_t> rows_needed_elsewhere(const Shards& sh, const Pattern& pat, int o) {
    constexpr std::int64_t kBlock = 64;
    const std::size_t P = sh.count.size();
    const std::int64_t n = sh.count[static_cast<std::size_t>(o)];
    const std::int64_t* kp = sh.pos_of(o);
    std::vector<PositionRuns> runs(P);
    for (std::size_t d = 0; d < P; ++d)
        if (static_cast<int>(d) != o) runs[d] = position_runs(sh.pos_of(static_cast<int>(d)), sh.count[d]);
    // Rows [a, b) of shard o are needed when some other rank's queries may attend their key hull.
    auto needed = [&](std::int64_t a, std::int64_t b) {
        const auto [lo, hi] = std::minmax_element(kp + a, kp + b);
        const PositionRuns hull{{*lo, *hi + 1}};
        for (const PositionRuns& rr : runs)
            if (may_attend(pat, rr, hull)) return true;
        return false;
    };
    std::int64_t first = 0, last = n;
    while (first < n && !needed(first, std::min(n, first + kBlock))) first += kBlock;
    if (first >= n) return {0, 0};
    while (last - kBlock > first && !needed(std::max(first, last - kBlock), last)) last -= kBlock;
    // Whole blocks were tested: trim the ends row by row inside them.
    while (first < last && !needed(first, first + 1)) ++first;
    while (last > first && !needed(last - 1, last)) --last;
    return {first, last};
}

void timed_wait(Ctx& cx, comm::Communicator& comm, comm::Request& r) {
    if (!r.active()) return;
    ScopedTimer t(cx.st.wait_s);
    comm.wait(r);
}

double ScopedCpuTimer::process_cpu_s() {
    timespec ts{};
    ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

void run_forward(Ctx& cx, const kernels::FwdParams& p) {
    ScopedTimer t(cx.st.kernel_s);
    ScopedCpuTimer c(cx.st.kernel_cpu_s);
    kernels::backend_of(p.q).forward(p);
    ++cx.st.kernel_calls;
}

void run_backward(Ctx& cx, const kernels::BwdParams& p) {
    ScopedTimer t(cx.st.kernel_s);
    ScopedCpuTimer c(cx.st.kernel_cpu_s);
    kernels::backend_of(p.q).backward(p);
    ++cx.st.kernel_calls;
}

namespace {

// Row ranges of the query chunks.
std::vector<std::int64_t> chunk_bounds(std::int64_t rows, int chunks) {
    chunks = static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>(chunks, rows)));
    std::vector<std::int64_t> b;
    for (int c = 0; c <= chunks; ++c) b.push_back(rows * c / chunks);
    return b;
}

}  // namespace

void forward_chunked(Ctx& cx, comm::Communicator& comm, const kernels::FwdParams& p) {
    const std::int64_t B = p.q.shape[0], S = p.q.shape[1], H = p.q.shape[2];
    const auto bounds = chunk_bounds(S, cx.opt.progress_chunks);
    const bool one = bounds.size() == 2;
    // A chunk's LSE rows (and their residuals) are strided in [B, H, S]: they pass through contiguous
    // [B, H, n] buffers.
    const std::size_t part_floats = one ? 0 : static_cast<std::size_t>(B * H * (bounds[1] - bounds[0] + 1));
    Scratch part(cx, 2 * part_floats * 4);
    const TensorView lse = as_rows(p.lse, B, H, S, cx.device);
    const TensorView lo = p.lse_lo ? as_rows(p.lse_lo, B, H, S, cx.device) : TensorView{};
    for (std::size_t c = 0; c + 1 < bounds.size(); ++c) {
        const std::int64_t i0 = bounds[c], n = bounds[c + 1] - i0;
        kernels::FwdParams f = p;
        f.q = slice(p.q, 1, i0, n);
        f.o = slice(p.o, 1, i0, n);
        f.q_pos = p.q_pos + i0;
        f.threads = cx.opt.threads;
        if (!one) {
            f.lse = part.f32();
            f.lse_lo = p.lse_lo ? part.f32() + part_floats : nullptr;
            if (p.accumulate) {
                copy_view(slice(lse, 2, i0, n), part.view(DType::f32, B, H, n, 1));
                if (p.lse_lo) copy_view(slice(lo, 2, i0, n), part.at(part_floats * 4, DType::f32, B, H, n, 1));
            }
        }
        run_forward(cx, f);
        if (!one) {
            copy_view(part.view(DType::f32, B, H, n, 1), slice(lse, 2, i0, n));
            if (p.lse_lo) copy_view(part.at(part_floats * 4, DType::f32, B, H, n, 1), slice(lo, 2, i0, n));
        }
        comm.progress();
    }
}

void backward_chunked(Ctx& cx, comm::Communicator& comm, const kernels::BwdParams& p) {
    const std::int64_t B = p.q.shape[0], S = p.q.shape[1], H = p.q.shape[2];
    const auto bounds = chunk_bounds(S, cx.opt.progress_chunks);
    const bool one = bounds.size() == 2;
    Scratch part(cx, one ? 0 : static_cast<std::size_t>(B * H * (bounds[1] - bounds[0] + 1)) * 4);
    const TensorView all = as_rows(p.lse, B, H, S, cx.device);
    for (std::size_t c = 0; c + 1 < bounds.size(); ++c) {
        const std::int64_t i0 = bounds[c], n = bounds[c + 1] - i0;
        kernels::BwdParams b = p;
        b.q = slice(p.q, 1, i0, n);
        b.o = slice(p.o, 1, i0, n);
        b.dout = slice(p.dout, 1, i0, n);
        b.dq = slice(p.dq, 1, i0, n);
        b.q_pos = p.q_pos + i0;
        b.accumulate = p.accumulate || c > 0;  // dK and dV sum over the chunks
        if (!one) {
            copy_view(slice(all, 2, i0, n), part.view(DType::f32, B, H, n, 1));
            b.lse = part.f32();
        }
        // dQ rows of this chunk are fresh unless the caller accumulates.
        if (!p.accumulate && c > 0) fill_view(b.dq, 0.0f);
        run_backward(cx, b);
        comm.progress();
    }
}

void local_forward(Ctx& cx, const DistForwardArgs& a) {
    kernels::FwdParams p;
    p.q = a.q, p.k = a.k, p.v = a.v, p.o = a.o, p.lse = a.lse;
    p.q_pos = p.k_pos = a.pos;
    p.pattern = a.pattern;
    p.head_offset = a.head_offset;
    p.threads = cx.opt.threads;
    run_forward(cx, p);
}

void local_backward(Ctx& cx, const DistBackwardArgs& a) {
    kernels::BwdParams p;
    p.q = a.q, p.k = a.k, p.v = a.v, p.o = a.o, p.dout = a.dout, p.lse = a.lse;
    p.dq = a.dq, p.dk = a.dk, p.dv = a.dv;
    p.accumulate = a.accumulate;
    p.q_pos = p.k_pos = a.pos;
    p.pattern = a.pattern;
    p.head_offset = a.head_offset;
    p.threads = cx.opt.threads;
    run_backward(cx, p);
}

}  // namespace longattn::dist
