// Ulysses (DeepSpeed-style sequence parallelism): an all-to-all turns sequence shards into head
// shards, each rank attends its heads over the whole sequence, and a second all-to-all turns the
// result back. Heads need not divide the rank count (shards of heads differ by one, and a rank may
// get none), and with GQA/MQA a kv head is sent to every rank holding one of its query heads, so
// the degree is not capped by the number of kv heads; their gradients are summed on the way back.
#include <algorithm>
#include <cmath>

#include "longattn/tensor_ops.hpp"
#include "strategies/plan.hpp"

namespace longattn::dist {
namespace {

// Calls f(q_head_range, kv_head) for the groups of local query heads that share a kv head, or once
// for all local heads when they are whole groups (the kernel then maps heads itself).
template <class F>
void for_head_groups(const Range& q, const Range& kv, std::int64_t G, F&& f) {
    if (q.len == 0) return;
    if (q.start % G == 0 && q.len % G == 0) {
        f(Range{0, q.len}, Range{0, kv.len});
        return;
    }
    for (std::int64_t h = kv.start; h < kv.start + kv.len; ++h) {
        const std::int64_t lo = std::max(q.start, h * G), hi = std::min(q.start + q.len, (h + 1) * G);
        f(Range{lo - q.start, hi - lo}, Range{h - kv.start, 1});
    }
}

}  // namespace

void ulysses_forward(Ctx& cx, comm::Communicator& comm, const UlyssesPlan& hp, const DistForwardArgs& a,
                     const InnerForward& inner) {
    const int me = comm.rank();
    const std::int64_t B = a.q.shape[0], S = a.q.shape[1], Hq = a.q.shape[2], D = a.q.shape[3];
    const Shards& sh = hp.sh;
    const std::int64_t N = sh.total();
    const Range myq = hp.q[static_cast<std::size_t>(me)], mykv = hp.kv[static_cast<std::size_t>(me)];
    const std::vector<Range>& rows = hp.rows;

    Scratch qm(cx, static_cast<std::size_t>(B * N * myq.len * D) * dtype_size(a.q.dtype));
    Scratch km(cx, static_cast<std::size_t>(B * N * mykv.len * D) * dtype_size(a.k.dtype));
    Scratch vm(cx, static_cast<std::size_t>(B * N * mykv.len * D) * dtype_size(a.v.dtype));
    Scratch om(cx, static_cast<std::size_t>(B * N * myq.len * D) * dtype_size(a.o.dtype));
    Scratch lm(cx, static_cast<std::size_t>(B * myq.len * N) * 4);
    const TensorView qf = qm.view(a.q.dtype, B, N, myq.len, D), kf = km.view(a.k.dtype, B, N, mykv.len, D),
                     vf = vm.view(a.v.dtype, B, N, mykv.len, D), of = om.view(a.o.dtype, B, N, myq.len, D);
    exchange_blocks(cx, comm, a.q, 2, hp.q, qf, 1, rows);
    exchange_blocks(cx, comm, a.k, 2, hp.kv, kf, 1, rows);
    exchange_blocks(cx, comm, a.v, 2, hp.kv, vf, 1, rows);

    const TensorView lf = lm.view(DType::f32, B, myq.len, N, 1);
    Scratch lg(cx, static_cast<std::size_t>(B * myq.len * N) * 4);  // one head group's LSE, contiguous
    for_head_groups(myq, mykv, hp.G, [&](Range qh, Range kh) {
        DistForwardArgs sub;
        sub.q = slice(qf, 2, qh.start, qh.len);
        sub.k = slice(kf, 2, kh.start, kh.len);
        sub.v = slice(vf, 2, kh.start, kh.len);
        sub.o = slice(of, 2, qh.start, qh.len);
        sub.lse = lg.f32();
        sub.pos = sh.pos.data();
        sub.pattern = a.pattern;
        sub.head_offset = a.head_offset + myq.start + qh.start;
        inner(sub);
        copy_view(lg.view(DType::f32, B, qh.len, N, 1), slice(lf, 1, qh.start, qh.len));
    });
    exchange_blocks(cx, comm, of, 1, rows, a.o, 2, hp.q);
    exchange_blocks(cx, comm, lf, 2, rows, as_rows(a.lse, B, Hq, S, cx.device), 1, hp.q);
}

void ulysses_backward(Ctx& cx, comm::Communicator& comm, const UlyssesPlan& hp, const DistBackwardArgs& a,
                      const InnerBackward& inner) {
    const int me = comm.rank();
    const std::int64_t B = a.q.shape[0], S = a.q.shape[1], Hq = a.q.shape[2], D = a.q.shape[3];
    const Shards& sh = hp.sh;
    const std::int64_t N = sh.total();
    const Range myq = hp.q[static_cast<std::size_t>(me)], mykv = hp.kv[static_cast<std::size_t>(me)];
    const std::vector<Range>& rows = hp.rows;

    auto gathered = [&](const TensorView& t, const Range& heads, std::vector<Range> const& per_rank) {
        auto mem = std::make_unique<Scratch>(cx, static_cast<std::size_t>(B * N * heads.len * D) * dtype_size(t.dtype));
        const TensorView v = mem->view(t.dtype, B, N, heads.len, D);
        exchange_blocks(cx, comm, t, 2, per_rank, v, 1, rows);
        return std::make_pair(std::move(mem), v);
    };
    auto [qm, qf] = gathered(a.q, myq, hp.q);
    auto [km, kf] = gathered(a.k, mykv, hp.kv);
    auto [vm, vf] = gathered(a.v, mykv, hp.kv);
    auto [om, of] = gathered(a.o, myq, hp.q);
    auto [dm, df] = gathered(a.dout, myq, hp.q);
    Scratch lm(cx, static_cast<std::size_t>(B * myq.len * N) * 4);
    const TensorView lf = lm.view(DType::f32, B, myq.len, N, 1);
    exchange_blocks(cx, comm, as_rows(a.lse, B, Hq, S, cx.device), 1, hp.q, lf, 2, rows);
    Scratch lg(cx, static_cast<std::size_t>(B * myq.len * N) * 4);  // one head group's LSE, contiguous

    Scratch gq(cx, static_cast<std::size_t>(B * N * myq.len * D) * 4), gk(cx, static_cast<std::size_t>(B * N * mykv.len * D) * 4),
        gv(cx, static_cast<std::size_t>(B * N * mykv.len * D) * 4);
    const TensorView dqf = gq.view(DType::f32, B, N, myq.len, D), dkf = gk.view(DType::f32, B, N, mykv.len, D),
                     dvf = gv.view(DType::f32, B, N, mykv.len, D);
    fill_view(dkf, 0.0f);
    fill_view(dvf, 0.0f);
    for_head_groups(myq, mykv, hp.G, [&](Range qh, Range kh) {
        copy_view(slice(lf, 1, qh.start, qh.len), lg.view(DType::f32, B, qh.len, N, 1));
        DistBackwardArgs sub;
        sub.q = slice(qf, 2, qh.start, qh.len);
        sub.k = slice(kf, 2, kh.start, kh.len);
        sub.v = slice(vf, 2, kh.start, kh.len);
        sub.o = slice(of, 2, qh.start, qh.len);
        sub.dout = slice(df, 2, qh.start, qh.len);
        sub.lse = lg.f32();
        sub.dq = slice(dqf, 2, qh.start, qh.len);
        sub.dk = slice(dkf, 2, kh.start, kh.len);
        sub.dv = slice(dvf, 2, kh.start, kh.len);
        sub.accumulate = true;  // groups sharing a kv head add into it; dq rows start at zero below
        fill_view(sub.dq, 0.0f);
        sub.pos = sh.pos.data();
        sub.pattern = a.pattern;
        sub.head_offset = a.head_offset + myq.start + qh.start;
        inner(sub);
    });
    if (a.accumulate) {
        exchange_blocks(cx, comm, dqf, 1, rows, a.dq, 2, hp.q, true);
    } else {
        exchange_blocks(cx, comm, dqf, 1, rows, a.dq, 2, hp.q);
        fill_view(a.dk, 0.0f);
        fill_view(a.dv, 0.0f);
    }
    // A kv head held by several ranks comes back from each of them and is summed in rank order.
    exchange_blocks(cx, comm, dkf, 1, rows, a.dk, 2, hp.kv, true);
    exchange_blocks(cx, comm, dvf, 1, rows, a.dv, 2, hp.kv, true);
}

}  // namespace longattn::dist
