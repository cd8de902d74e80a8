// Ring attention: K/V shards travel around the ring while each rank attends its queries to the shard
// it holds; the transfer of the next shard overlaps the kernel on the current one. A shard is
// forwarded only while some rank further along the ring needs it, and a rank skips shards its
// queries cannot see, so windows and documents cost neither compute nor transfers they do not need.
//
// Backward: K/V travel the same way; the dK/dV accumulated for a shard travel with it and go home
// from the last rank that needed it. Sums happen in ring order, so reruns are bitwise identical.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "longattn/error.hpp"
#include "longattn/tensor_ops.hpp"
#include "strategies/common.hpp"

namespace longattn::dist {
namespace {

constexpr int kTagKv = 1 << 12, kTagGrad = 2 << 12, kTagHome = 3 << 12;

struct RingPlan {
    int P, r, next, prev;
    Shards sh;
    std::vector<std::vector<char>> need;
    // Last ring distance at which some rank needs shard o (-1: nobody, not even its owner).
    std::vector<int> last;

    RingPlan(comm::Communicator& comm, const std::int64_t* pos, std::int64_t S, const Pattern& pat)
        : P(comm.size()), r(comm.rank()), next((r + 1) % P), prev((r - 1 + P) % P), sh(gather_shards(comm, pos, S)),
          need(needed_matrix(sh, pat)), last(static_cast<std::size_t>(P), -1) {
        for (int o = 0; o < P; ++o)
            for (int s = 0; s < P; ++s)
                if (need[static_cast<std::size_t>(o)][static_cast<std::size_t>((o + s) % P)]) last[static_cast<std::size_t>(o)] = s;
    }
    int origin(int t) const { return (r - t + P) % P; }  // owner of the shard held at step t
    // The shard held at step t is passed on after it.
    bool forwarded(int o, int t) const { return t < last[static_cast<std::size_t>(o)]; }
    bool needs(int o) const { return need[static_cast<std::size_t>(o)][static_cast<std::size_t>(r)] != 0; }
    std::int64_t rows(int o) const { return sh.count[static_cast<std::size_t>(o)]; }
};

// A K/V shard in a contiguous buffer: K [B, rows, Hkv, D] then V, each in its storage type.
struct KvBuffer {
    KvBuffer(Ctx& cx, std::int64_t max_rows, const TensorView& k, const TensorView& v)
        : B(k.shape[0]), H(k.shape[2]), D(k.shape[3]), kt(k.dtype), vt(v.dtype),
          mem(cx, static_cast<std::size_t>(B * max_rows * H * D) * (dtype_size(kt) + dtype_size(vt))) {}
    std::size_t bytes(std::int64_t rows) const {
        return static_cast<std::size_t>(B * rows * H * D) * (dtype_size(kt) + dtype_size(vt));
    }
    TensorView k(std::int64_t rows) const { return mem.view(kt, B, rows, H, D); }
    TensorView v(std::int64_t rows) const {
        return mem.at(static_cast<std::size_t>(B * rows * H * D) * dtype_size(kt), vt, B, rows, H, D);
    }
    std::int64_t B, H, D;
    DType kt, vt;
    Scratch mem;
};

// dK and dV of a shard, fp32: [2, B, rows, Hkv, D].
struct GradBuffer {
    GradBuffer(Ctx& cx, std::int64_t max_rows, const TensorView& k)
        : B(k.shape[0]), H(k.shape[2]), D(k.shape[3]), mem(cx, static_cast<std::size_t>(2 * B * max_rows * H * D) * 4) {}
    std::size_t bytes(std::int64_t rows) const { return static_cast<std::size_t>(2 * B * rows * H * D) * 4; }
    TensorView dk(std::int64_t rows) const { return mem.view(DType::f32, B, rows, H, D); }
    TensorView dv(std::int64_t rows) const {
        return mem.at(static_cast<std::size_t>(B * rows * H * D) * 4, DType::f32, B, rows, H, D);
    }
    std::int64_t B, H, D;
    Scratch mem;
};

}  // namespace

void ring_forward(Ctx& cx, comm::Communicator& comm, const DistForwardArgs& a) {
    const RingPlan plan(comm, a.pos, a.q.shape[1], *a.pattern);
    const std::int64_t B = a.q.shape[0], S = a.q.shape[1], H = a.q.shape[2], D = a.q.shape[3];
    const std::int64_t max_rows = *std::max_element(plan.sh.count.begin(), plan.sh.count.end());
    KvBuffer buf[2] = {KvBuffer(cx, max_rows, a.k, a.v), KvBuffer(cx, max_rows, a.k, a.v)};
    copy_view(a.k, buf[0].k(S));
    copy_view(a.v, buf[0].v(S));

    // Running result in fp32: the caller's O when it is fp32, else a scratch copy. Each shard's keys are
    // merged into it by the kernel itself (FwdParams::accumulate): no partial buffer, no merge pass.
    const bool own_acc = a.o.dtype != DType::f32;
    Scratch acc_mem(cx, own_acc ? static_cast<std::size_t>(B * S * H * D) * 4 : 0);
    const TensorView acc = own_acc ? acc_mem.view(DType::f32, B, S, H, D) : a.o;
    bool any = false;

    int cur = 0;
    for (int t = 0; t < plan.P; ++t) {
        const int o = plan.origin(t), o_next = plan.origin(t + 1);
        comm::Request rx, tx;
        if (t + 1 < plan.P && plan.forwarded(o_next, t))
            rx = comm.irecv(buf[1 - cur].mem.data(), buf[1 - cur].bytes(plan.rows(o_next)), plan.prev, kTagKv + t);
        if (t + 1 < plan.P && plan.forwarded(o, t))
            tx = comm.isend(buf[cur].mem.data(), buf[cur].bytes(plan.rows(o)), plan.next, kTagKv + t);
        else if (t + 1 < plan.P)
            ++cx.st.skipped_transfers;
        comm.flush();
        if (plan.needs(o) && plan.rows(o) > 0 && S > 0) {
            const std::int64_t rows = plan.rows(o);
            forward_chunked(cx, comm, a.q, buf[cur].k(rows), buf[cur].v(rows), a.pos, plan.sh.pos_of(o), *a.pattern,
                            a.head_offset, acc, a.lse, any);
            any = true;
        } else {
            ++cx.st.skipped_blocks;
        }
        timed_wait(cx, comm, rx);
        timed_wait(cx, comm, tx);
        cur = 1 - cur;
    }
    if (!any) {  // no allowed key anywhere: O = 0, LSE = -inf
        fill_view(acc, 0.0f);
        fill_view(as_rows(a.lse, B, H, S, cx.device), -INFINITY);
    }
    if (own_acc) copy_view(acc, a.o);
}

void ring_backward(Ctx& cx, comm::Communicator& comm, const DistBackwardArgs& a) {
    const RingPlan plan(comm, a.pos, a.q.shape[1], *a.pattern);
    const std::int64_t S = a.q.shape[1];
    const std::int64_t max_rows = *std::max_element(plan.sh.count.begin(), plan.sh.count.end());
    KvBuffer buf[2] = {KvBuffer(cx, max_rows, a.k, a.v), KvBuffer(cx, max_rows, a.k, a.v)};
    copy_view(a.k, buf[0].k(S));
    copy_view(a.v, buf[0].v(S));
    // grad[g]: the running dK/dV of the shard held (two, so a send can finish while the next step
    // receives); contrib: this rank's contribution; home: the own shard's total. A running dK/dV sent
    // at the end of step t travels in step t+1's batch (see comm/communicator.hpp), so the receive of
    // the own total is posted in the step after the last holder is done with it.
    GradBuffer grad[2] = {GradBuffer(cx, max_rows, a.k), GradBuffer(cx, max_rows, a.k)};
    GradBuffer contrib(cx, max_rows, a.k), home(cx, S, a.k);
    const int own_last = plan.last[static_cast<std::size_t>(plan.r)];
    comm::Request home_rx;
    auto post_home = [&] {
        home_rx = comm.irecv(home.mem.data(), home.bytes(S), (plan.r + own_last) % plan.P, kTagHome);
    };

    if (!a.accumulate) fill_view(a.dq, 0.0f);
    int cur = 0, g = 0;
    comm::Request grad_tx[2];
    for (int t = 0; t < plan.P; ++t) {
        const int o = plan.origin(t), o_next = plan.origin(t + 1);
        const int lo = plan.last[static_cast<std::size_t>(o)];
        const std::int64_t rows = plan.rows(o);
        comm::Request rx, tx, grad_rx;
        if (t + 1 < plan.P && plan.forwarded(o_next, t))
            rx = comm.irecv(buf[1 - cur].mem.data(), buf[1 - cur].bytes(plan.rows(o_next)), plan.prev, kTagKv + t);
        if (t + 1 < plan.P && plan.forwarded(o, t))
            tx = comm.isend(buf[cur].mem.data(), buf[cur].bytes(rows), plan.next, kTagKv + t);
        else if (t + 1 < plan.P)
            ++cx.st.skipped_transfers;
        const bool in_chain = t <= lo;  // this rank holds shard o's running dK/dV at step t
        if (in_chain && t > 0) {
            timed_wait(cx, comm, grad_tx[g]);  // the buffer's previous send must be done
            grad_rx = comm.irecv(grad[g].mem.data(), grad[g].bytes(rows), plan.prev, kTagGrad + t);
        }
        if (own_last > 0 && t == own_last + 1) post_home();
        comm.flush();
        const bool compute = plan.needs(o) && rows > 0 && S > 0;
        if (compute) {
            // dQ accumulates over the steps; this step's dK/dV land in a zeroed contrib.
            fill_view(contrib.dk(rows), 0.0f);
            fill_view(contrib.dv(rows), 0.0f);
            kernels::BwdParams p;
            p.q = a.q, p.k = buf[cur].k(rows), p.v = buf[cur].v(rows), p.o = a.o, p.dout = a.dout, p.lse = a.lse;
            p.dq = a.dq, p.dk = contrib.dk(rows), p.dv = contrib.dv(rows);
            p.accumulate = true;
            p.q_pos = a.pos, p.k_pos = plan.sh.pos_of(o);
            p.pattern = a.pattern;
            p.head_offset = a.head_offset;
            p.threads = cx.opt.threads;
            backward_chunked(cx, comm, p);
        } else {
            ++cx.st.skipped_blocks;
        }
        if (in_chain) {
            GradBuffer& run = t == 0 && lo == 0 ? home : grad[g];
            if (t > 0) {
                timed_wait(cx, comm, grad_rx);
                if (compute) {
                    add_view(contrib.dk(rows), run.dk(rows));
                    add_view(contrib.dv(rows), run.dv(rows));
                }
            } else if (compute) {
                copy_view(contrib.dk(rows), run.dk(rows));
                copy_view(contrib.dv(rows), run.dv(rows));
            } else {
                fill_view(run.dk(rows), 0.0f);
                fill_view(run.dv(rows), 0.0f);
            }
            if (t < lo) {
                grad_tx[g] = comm.isend(run.mem.data(), run.bytes(rows), plan.next, kTagGrad + t + 1);
                g = 1 - g;
            } else if (t > 0) {
                grad_tx[g] = comm.isend(run.mem.data(), run.bytes(rows), o, kTagHome);
                g = 1 - g;
            }
        }
        timed_wait(cx, comm, rx);
        timed_wait(cx, comm, tx);
        cur = 1 - cur;
    }
    if (own_last > 0 && own_last + 1 == plan.P) post_home();
    timed_wait(cx, comm, home_rx);
    timed_wait(cx, comm, grad_tx[0]);
    timed_wait(cx, comm, grad_tx[1]);
    GradBuffer* total = own_last >= 0 ? &home : nullptr;
    if (total == nullptr) {  // nobody needed the own keys: zero gradient
        if (!a.accumulate) {
            fill_view(a.dk, 0.0f);
            fill_view(a.dv, 0.0f);
        }
        return;
    }
    if (a.accumulate) {
        add_view(total->dk(S), a.dk);
        add_view(total->dv(S), a.dv);
    } else {
        copy_view(total->dk(S), a.dk);
        copy_view(total->dv(S), a.dv);
    }
}

}  // namespace longattn::dist
