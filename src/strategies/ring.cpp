// Ring attention: K/V shards travel around the ring while each rank attends its queries to the shard
// it holds; the transfer of the next shard overlaps the kernel on the current one. A shard travels
// only while some rank further along the ring needs it, and only the rows other ranks may attend (a
// window's last rows, a document's tail), and a rank skips shards its queries cannot see: windows and
// documents cost neither compute nor transfers they do not need.
//
// Backward: K/V travel the same way; the dK/dV that other ranks contribute to a shard's sent rows
// travel with it, summed in ring order, and go home from the last rank that needed it, where they
// are added to the owner's own contribution. So reruns are bitwise identical.
#include <algorithm>
#include <cmath>
#include <tuple>

#include "longattn/error.hpp"
#include "longattn/tensor_ops.hpp"
#include "strategies/plan.hpp"

namespace longattn::dist {
namespace {

constexpr int kTagKv = 1 << 12, kTagGrad = 2 << 12, kTagHome = 3 << 12;

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

void ring_forward(Ctx& cx, comm::Communicator& comm, const RingPlan& plan, const DistForwardArgs& a) {
    const std::int64_t B = a.q.shape[0], S = a.q.shape[1], H = a.q.shape[2], D = a.q.shape[3];
    KvBuffer buf[2] = {KvBuffer(cx, plan.max_sent(), a.k, a.v), KvBuffer(cx, plan.max_sent(), a.k, a.v)};

    // Running result in fp32: the caller's O when it is fp32, else a scratch copy. Each shard's keys are
    // merged into it by the kernel itself (FwdParams::accumulate): no partial buffer, no merge pass.
    const bool own_acc = a.o.dtype != DType::f32;
    Scratch acc_mem(cx, own_acc ? static_cast<std::size_t>(B * S * H * D) * 4 : 0);
    const TensorView acc = own_acc ? acc_mem.view(DType::f32, B, S, H, D) : a.o;
    // The running LSE's fp32 residual (kernels::FwdParams::lse_lo): the merges keep the single call's bits.
    Scratch lse_lo(cx, static_cast<std::size_t>(B * H * S) * 4);
    kernels::FwdParams p;
    p.q = a.q, p.o = acc, p.lse = a.lse, p.lse_lo = lse_lo.f32();
    p.q_pos = a.pos, p.pattern = a.pattern, p.head_offset = a.head_offset;
    bool any = false;

    int cur = 0;
    for (int t = 0; t < plan.P; ++t) {
        const int o = plan.origin(t), o_next = plan.origin(t + 1);
        const std::int64_t sent = plan.sent_rows(o);
        comm::Request rx, tx;
        comm.note_step("ring forward", t);
        if (t == 0 && plan.forwarded(o, 0)) {  // the own rows others need, made contiguous for sending
            copy_view(slice(a.k, 1, plan.sent_lo[static_cast<std::size_t>(o)], sent), buf[cur].k(sent));
            copy_view(slice(a.v, 1, plan.sent_lo[static_cast<std::size_t>(o)], sent), buf[cur].v(sent));
        }
        if (t + 1 < plan.P && plan.forwarded(o_next, t))
            rx = comm.irecv(buf[1 - cur].mem.data(), buf[1 - cur].bytes(plan.sent_rows(o_next)), plan.prev, kTagKv + t);
        if (t + 1 < plan.P && plan.forwarded(o, t))
            tx = comm.isend(buf[cur].mem.data(), buf[cur].bytes(sent), plan.next, kTagKv + t);
        else if (t + 1 < plan.P)
            ++cx.st.skipped_transfers;
        comm.flush();
        // Step 0 attends the whole own shard in place; later steps the rows that travelled.
        const std::int64_t rows = t == 0 ? S : sent;
        if (plan.needs(o) && rows > 0 && S > 0) {
            p.k = t == 0 ? a.k : buf[cur].k(rows);
            p.v = t == 0 ? a.v : buf[cur].v(rows);
            p.k_pos = t == 0 ? a.pos : plan.sent_pos(o);
            p.accumulate = any;
            forward_chunked(cx, comm, p);
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

void ring_backward(Ctx& cx, comm::Communicator& comm, const RingPlan& plan, const DistBackwardArgs& a) {
    const std::int64_t S = a.q.shape[1], max_sent = plan.max_sent();
    KvBuffer buf[2] = {KvBuffer(cx, max_sent, a.k, a.v), KvBuffer(cx, max_sent, a.k, a.v)};
    // own: this rank's contribution to its own dK/dV (every row); grad[g]: the running sum of other
    // ranks' contributions to the sent rows of the shard held (two, so a send can finish while the
    // next step receives); contrib: this rank's contribution to them; home: what comes back for the
    // own sent rows. A running sum sent at the end of step t travels in step t+1's batch (see
    // comm/communicator.hpp), so the receive of the own sum is posted in the step after the last
    // holder is done with it.
    GradBuffer own(cx, S, a.k), contrib(cx, max_sent, a.k), home(cx, plan.sent_rows(plan.r), a.k);
    GradBuffer grad[2] = {GradBuffer(cx, max_sent, a.k), GradBuffer(cx, max_sent, a.k)};
    const int own_last = plan.last[static_cast<std::size_t>(plan.r)];
    const std::int64_t own_sent = plan.sent_rows(plan.r);
    comm::Request home_rx;
    auto post_home = [&] {
        home_rx = comm.irecv(home.mem.data(), home.bytes(own_sent), (plan.r + own_last) % plan.P, kTagHome);
    };

    if (!a.accumulate) fill_view(a.dq, 0.0f);
    int cur = 0, g = 0;
    comm::Request grad_tx[2];
    for (int t = 0; t < plan.P; ++t) {
        const int o = plan.origin(t), o_next = plan.origin(t + 1);
        const int lo = plan.last[static_cast<std::size_t>(o)];
        const std::int64_t sent = plan.sent_rows(o), rows = t == 0 ? S : sent;
        comm::Request rx, tx, grad_rx;
        comm.note_step("ring backward", t);
        if (t == 0 && plan.forwarded(o, 0)) {
            copy_view(slice(a.k, 1, plan.sent_lo[static_cast<std::size_t>(o)], sent), buf[cur].k(sent));
            copy_view(slice(a.v, 1, plan.sent_lo[static_cast<std::size_t>(o)], sent), buf[cur].v(sent));
        }
        if (t + 1 < plan.P && plan.forwarded(o_next, t))
            rx = comm.irecv(buf[1 - cur].mem.data(), buf[1 - cur].bytes(plan.sent_rows(o_next)), plan.prev, kTagKv + t);
        if (t + 1 < plan.P && plan.forwarded(o, t))
            tx = comm.isend(buf[cur].mem.data(), buf[cur].bytes(sent), plan.next, kTagKv + t);
        else if (t + 1 < plan.P)
            ++cx.st.skipped_transfers;
        const bool in_chain = t >= 1 && t <= lo;  // this rank holds the running sum of shard o at step t
        if (in_chain && t > 1) {
            timed_wait(cx, comm, grad_tx[g]);  // the buffer's previous send must be done
            grad_rx = comm.irecv(grad[g].mem.data(), grad[g].bytes(sent), plan.prev, kTagGrad + t);
        }
        if (own_last > 0 && t == own_last + 1) post_home();
        comm.flush();
        const bool compute = plan.needs(o) && rows > 0 && S > 0;
        GradBuffer& out = t == 0 ? own : contrib;
        if (compute) {
            // dQ accumulates over the steps; this step's dK/dV land in a zeroed buffer.
            fill_view(out.dk(rows), 0.0f);
            fill_view(out.dv(rows), 0.0f);
            kernels::BwdParams p;
            p.q = a.q, p.o = a.o, p.dout = a.dout, p.lse = a.lse;
            p.k = t == 0 ? a.k : buf[cur].k(rows);
            p.v = t == 0 ? a.v : buf[cur].v(rows);
            p.dq = a.dq, p.dk = out.dk(rows), p.dv = out.dv(rows);
            p.accumulate = true;
            p.q_pos = a.pos, p.k_pos = t == 0 ? a.pos : plan.sent_pos(o);
            p.pattern = a.pattern;
            p.head_offset = a.head_offset;
            p.threads = cx.opt.threads;
            backward_chunked(cx, comm, p);
        } else {
            ++cx.st.skipped_blocks;
            if (t == 0) {
                fill_view(own.dk(S), 0.0f);
                fill_view(own.dv(S), 0.0f);
            }
        }
        if (in_chain) {
            GradBuffer& run = grad[g];
            if (t > 1) {
                timed_wait(cx, comm, grad_rx);
                if (compute) {
                    add_view(contrib.dk(sent), run.dk(sent));
                    add_view(contrib.dv(sent), run.dv(sent));
                }
            } else if (compute) {
                copy_view(contrib.dk(sent), run.dk(sent));
                copy_view(contrib.dv(sent), run.dv(sent));
            } else {
                fill_view(run.dk(sent), 0.0f);
                fill_view(run.dv(sent), 0.0f);
            }
            grad_tx[g] = t < lo ? comm.isend(run.mem.data(), run.bytes(sent), plan.next, kTagGrad + t + 1)
                                : comm.isend(run.mem.data(), run.bytes(sent), o, kTagHome);
            g = 1 - g;
        }
        timed_wait(cx, comm, rx);
        timed_wait(cx, comm, tx);
        cur = 1 - cur;
    }
    if (own_last > 0 && own_last + 1 == plan.P) post_home();
    timed_wait(cx, comm, home_rx);
    timed_wait(cx, comm, grad_tx[0]);
    timed_wait(cx, comm, grad_tx[1]);
    // The own total: this rank's contribution plus, on the sent rows, everyone else's (ring order).
    if (own_last > 0) {
        const std::int64_t s0 = plan.sent_lo[static_cast<std::size_t>(plan.r)];
        add_view(home.dk(own_sent), slice(own.dk(S), 1, s0, own_sent));
        add_view(home.dv(own_sent), slice(own.dv(S), 1, s0, own_sent));
    }
    if (a.accumulate) {
        add_view(own.dk(S), a.dk);
        add_view(own.dv(S), a.dv);
    } else {
        copy_view(own.dk(S), a.dk);
        copy_view(own.dv(S), a.dv);
    }
}

}  // namespace longattn::dist
