// All-gather KV: every rank gathers the whole sequence's K/V (a chunk of kv heads at a time, so the
// gathered copy stays bounded) and attends its own queries to it. Backward reduce-scatters the
// dK/dV of the whole sequence back to the owners, summed in rank order.
#include <algorithm>

#include "longattn/tensor_ops.hpp"
#include "strategies/common.hpp"

namespace longattn::dist {
namespace {

// K or V heads [h0, h0+nh) of every rank, gathered in rank order: [B, N, nh, D].
void gather_heads(Ctx& cx, comm::Communicator& comm, const Shards& sh, const TensorView& t, std::int64_t h0,
                  std::int64_t nh, const TensorView& full) {
    const auto P = static_cast<std::size_t>(comm.size());
    const std::int64_t B = t.shape[0], S = t.shape[1], D = t.shape[3];
    const std::size_t row = static_cast<std::size_t>(nh * D) * dtype_size(t.dtype);
    Scratch mine(cx, static_cast<std::size_t>(B * S) * row);
    copy_view(slice(t, 2, h0, nh), mine.view(t.dtype, B, S, nh, D));
    // Batch-major staging [src][B][S_src] unless B == 1, where it is the gathered layout itself.
    Scratch staging(cx, B == 1 ? 0 : static_cast<std::size_t>(B * sh.total()) * row);
    void* dst = B == 1 ? full.data : staging.data();
    std::vector<std::size_t> bytes(P), off(P);
    for (std::size_t r = 0; r < P; ++r) {
        bytes[r] = static_cast<std::size_t>(B * sh.count[r]) * row;
        off[r] = static_cast<std::size_t>(B * sh.offset[r]) * row;
    }
    {
        ScopedTimer w(cx.st.wait_s);
        comm.note_step("all-gather of K/V", -1);
        comm.all_gather_v(mine.data(), dst, bytes.data(), off.data());
    }
    if (B == 1) return;
    for (std::size_t r = 0; r < P; ++r)
        copy_view(staging.at(off[r], t.dtype, B, sh.count[r], nh, D), slice(full, 1, sh.offset[r], sh.count[r]));
}

std::int64_t chunk_heads(const DistOptions& opt, std::int64_t hkv) {
    return opt.kv_head_chunk > 0 ? std::min(opt.kv_head_chunk, hkv) : hkv;
}

}  // namespace

void allgather_forward(Ctx& cx, comm::Communicator& comm, const Shards& sh, const DistForwardArgs& a) {
    const std::int64_t B = a.q.shape[0], S = a.q.shape[1], Hkv = a.k.shape[2], D = a.q.shape[3];
    const std::int64_t G = a.q.shape[2] / Hkv;
    const std::int64_t N = sh.total(), step = chunk_heads(cx.opt, Hkv);
    Scratch km(cx, static_cast<std::size_t>(B * N * step * D) * dtype_size(a.k.dtype));
    Scratch vm(cx, static_cast<std::size_t>(B * N * step * D) * dtype_size(a.v.dtype));
    Scratch lse(cx, static_cast<std::size_t>(B * step * G * S) * 4);
    for (std::int64_t h0 = 0; h0 < Hkv; h0 += step) {
        const std::int64_t nh = std::min(step, Hkv - h0);
        const TensorView kf = km.view(a.k.dtype, B, N, nh, D), vf = vm.view(a.v.dtype, B, N, nh, D);
        gather_heads(cx, comm, sh, a.k, h0, nh, kf);
        gather_heads(cx, comm, sh, a.v, h0, nh, vf);
        kernels::FwdParams p;
        p.q = slice(a.q, 2, h0 * G, nh * G);
        p.k = kf, p.v = vf;
        p.o = slice(a.o, 2, h0 * G, nh * G);
        p.lse = lse.f32();
        p.q_pos = a.pos, p.k_pos = sh.pos.data();
        p.pattern = a.pattern;
        p.head_offset = a.head_offset + h0 * G;
        p.threads = cx.opt.threads;
        run_forward(cx, p);
        copy_view(lse.view(DType::f32, B, nh * G, S, 1),
                  slice(as_rows(a.lse, B, a.q.shape[2], S, cx.device), 1, h0 * G, nh * G));
    }
}

void allgather_backward(Ctx& cx, comm::Communicator& comm, const Shards& sh, const DistBackwardArgs& a) {
    const std::int64_t B = a.q.shape[0], S = a.q.shape[1], Hq = a.q.shape[2], Hkv = a.k.shape[2], D = a.q.shape[3];
    const std::int64_t G = Hq / Hkv;
    const std::int64_t N = sh.total(), step = chunk_heads(cx.opt, Hkv);
    const auto rows = rows_of(sh);
    const std::vector<Range> whole(static_cast<std::size_t>(comm.size()), Range{0, S});
    Scratch km(cx, static_cast<std::size_t>(B * N * step * D) * dtype_size(a.k.dtype));
    Scratch vm(cx, static_cast<std::size_t>(B * N * step * D) * dtype_size(a.v.dtype));
    Scratch gk(cx, static_cast<std::size_t>(B * N * step * D) * 4), gv(cx, static_cast<std::size_t>(B * N * step * D) * 4);
    Scratch lse(cx, static_cast<std::size_t>(B * step * G * S) * 4);
    if (!a.accumulate) {
        fill_view(a.dq, 0.0f);
        fill_view(a.dk, 0.0f);
        fill_view(a.dv, 0.0f);
    }
    for (std::int64_t h0 = 0; h0 < Hkv; h0 += step) {
        const std::int64_t nh = std::min(step, Hkv - h0);
        const TensorView kf = km.view(a.k.dtype, B, N, nh, D), vf = vm.view(a.v.dtype, B, N, nh, D);
        const TensorView dkf = gk.view(DType::f32, B, N, nh, D), dvf = gv.view(DType::f32, B, N, nh, D);
        gather_heads(cx, comm, sh, a.k, h0, nh, kf);
        gather_heads(cx, comm, sh, a.v, h0, nh, vf);
        copy_view(slice(as_rows(a.lse, B, Hq, S, cx.device), 1, h0 * G, nh * G), lse.view(DType::f32, B, nh * G, S, 1));
        kernels::BwdParams p;
        p.q = slice(a.q, 2, h0 * G, nh * G);
        p.k = kf, p.v = vf;
        p.o = slice(a.o, 2, h0 * G, nh * G);
        p.dout = slice(a.dout, 2, h0 * G, nh * G);
        p.lse = lse.f32();
        p.dq = slice(a.dq, 2, h0 * G, nh * G);
        p.dk = dkf, p.dv = dvf;
        fill_view(dkf, 0.0f);
        fill_view(dvf, 0.0f);
        p.accumulate = true;  // dq adds to what the caller (or the zeroing above) left
        p.q_pos = a.pos, p.k_pos = sh.pos.data();
        p.pattern = a.pattern;
        p.head_offset = a.head_offset + h0 * G;
        p.threads = cx.opt.threads;
        run_backward(cx, p);
        // Reduce-scatter: rank r gets every rank's dK/dV for its rows and sums them in rank order.
        exchange_blocks(cx, comm, dkf, 1, rows, slice(a.dk, 2, h0, nh), 1, whole, true);
        exchange_blocks(cx, comm, dvf, 1, rows, slice(a.dv, 2, h0, nh), 1, whole, true);
    }
}

}  // namespace longattn::dist
