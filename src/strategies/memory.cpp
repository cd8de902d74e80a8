// The working memory of one call through a plan, from its tables alone: each strategy's scratch
// buffers as the strategy allocates them (ring.cpp, ulysses.cpp, exchange.cpp, allgather.cpp; the
// in-process tests compare this with the workspace's measured peak, DistStats::scratch_peak_bytes),
// and the CPU kernels' own buffers (kernels/cpu: the packed K/V copy of a forward, kept between calls,
// and the backward's row chunks), which the bench's peak-RSS check covers.
#include <algorithm>

#include "strategies/plan.hpp"

namespace longattn::dist {
namespace {

using u64 = std::uint64_t;

u64 n(std::int64_t x) { return static_cast<u64>(std::max<std::int64_t>(x, 0)); }

// forward_chunked / backward_chunked: a chunk's LSE rows (and, forward, residuals) in contiguous buffers.
u64 chunk_part(const Dims& d, int chunks, bool forward) {
    chunks = static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>(chunks, d.S)));
    if (chunks == 1) return 0;
    const u64 floats = n(d.B * d.Hq * (d.S / chunks + 1));
    return (forward ? 2 : 1) * floats * 4;
}

}  // namespace

u64 ring_scratch(const Dims& d, std::int64_t M, std::int64_t own_sent, std::size_t es, bool o_fp32, int chunks,
                 bool backward) {
    const u64 kv = 2 * n(d.B * M * d.Hkv * d.D) * 2 * es;  // two K/V buffers
    if (!backward) return kv + (o_fp32 ? 0 : n(d.B * d.S * d.Hq * d.D) * 4) + n(d.B * d.Hq * d.S) * 4 + chunk_part(d, chunks, true);
    const u64 grad_row = 2 * n(d.B * d.Hkv * d.D) * 4;  // dK and dV of one row, fp32
    return kv + grad_row * (n(d.S) + n(M) + n(own_sent) + 2 * n(M)) + chunk_part(d, chunks, false);
}

u64 ulysses_scratch(const Dims& d, std::int64_t N, std::int64_t ql, std::int64_t kl, std::int64_t kv_sent,
                    std::size_t es, bool backward, u64 inner) {
    const u64 q_all = n(d.B * N * ql * d.D), kv_all = n(d.B * N * kl * d.D), lse = n(d.B * ql * N) * 4;
    // Staging of an exchange between [B, S, heads, D] shards and [B, N, my heads, D] (either way).
    const u64 ex_q = (n(d.B * d.S * d.Hq * d.D) + q_all) * es, ex_kv = (n(d.B * d.S * kv_sent * d.D) + kv_all) * es;
    const u64 ex_lse = n(d.B * d.Hq * d.S) * 4 + lse;
    if (!backward) {
        const u64 base = (2 * q_all + 2 * kv_all) * es + lse;
        return base + std::max(std::max(ex_q, ex_kv), lse + std::max({inner, ex_q, ex_lse}));
    }
    const u64 gathered = (3 * q_all + 2 * kv_all) * es;  // q, o, dO; k, v
    const u64 grads = (q_all + 2 * kv_all) * 4;
    const u64 ex_dq = (n(d.B * d.S * d.Hq * d.D) + q_all) * 4, ex_dkv = (n(d.B * d.S * kv_sent * d.D) + kv_all) * 4;
    return std::max({gathered + std::max(ex_q, ex_kv), gathered + lse + ex_lse,
                     gathered + 2 * lse + grads + std::max({inner, ex_dq, ex_dkv})});
}

u64 allgather_scratch(const Dims& d, std::int64_t N, int P, std::size_t es, std::int64_t chunk, bool backward) {
    const std::int64_t step = chunk > 0 ? std::min(chunk, d.Hkv) : d.Hkv, G = d.Hkv > 0 ? d.Hq / d.Hkv : 1;
    const u64 full = n(d.B * N * step * d.D);
    const u64 gather = n(d.B * d.S * step * d.D) * es + (d.B == 1 ? 0 : full * es);  // own heads, batch-major staging
    const u64 lse = n(d.B * step * G * d.S) * 4;
    if (!backward) return 2 * full * es + lse + gather;
    // The reduce-scatter sends the whole sequence's dK (or dV) and receives every rank's for the own rows.
    const u64 scatter = full * 4 + n(P) * n(d.B * d.S * step * d.D) * 4;
    return 2 * full * es + 2 * full * 4 + lse + std::max(gather, scatter);
}

namespace {

// What the CPU kernels keep of their own: the forward's packed fp32 K/V (a group of heads up to 32 MiB,
// at least one head; kept between calls up to 256 MiB) and the backward's row chunks (up to 64 MiB).
u64 kernel_forward(std::int64_t keys, std::int64_t heads, std::int64_t D) {
    const u64 head = n(keys) * n(D + (D + 15) / 16 * 16) * 4;
    return std::min(n(heads) * head, std::max(head, u64{32} << 20));
}
u64 kernel_backward(const Dims& d) {
    const u64 rows = n(d.B * d.Hq * d.S);
    return std::min(rows * n(d.D) * 4 * 6, u64{64} << 20) + rows * 3 * 4;
}

}  // namespace

MemoryEstimate working_memory(const PlanState& s, bool backward, DType storage) {
    const PlanShape& p = s.shape;
    const std::size_t es = dtype_size(storage);
    const Dims d{p.batch, p.rows, p.heads, p.kv_heads, p.head_dim};
    const int chunks = s.opt.progress_chunks;
    MemoryEstimate m;
    std::int64_t keys = 0, kv_heads = p.kv_heads;  // the largest kernel call's keys and kv heads
    Dims call = d;
    switch (s.opt.strategy) {
        case StrategyKind::ring:
            m.scratch = ring_scratch(d, s.ring->max_sent(), s.ring->sent_rows(s.ring->r), es, storage == DType::f32, chunks,
                                     backward);
            keys = std::max(p.rows, s.ring->max_sent());
            break;
        case StrategyKind::ulysses:
        case StrategyKind::hybrid: {
            const UlyssesPlan& hp = *s.ulysses;
            const int me = s.opt.strategy == StrategyKind::ulysses ? s.mesh.world.rank() : s.mesh.ulysses->rank();
            call = Dims{p.batch, hp.sh.total(), hp.q[static_cast<std::size_t>(me)].len,
                        hp.kv[static_cast<std::size_t>(me)].len, p.head_dim};
            u64 inner = 0;
            keys = call.S;
            if (s.opt.strategy == StrategyKind::hybrid) {
                inner = ring_scratch(call, s.ring->max_sent(), s.ring->sent_rows(s.ring->r), es, storage == DType::f32,
                                     chunks, backward);
                keys = std::max(call.S, s.ring->max_sent());
            }
            kv_heads = call.Hkv;
            std::int64_t kv_sent = 0;  // a kv head goes to every rank holding one of its query heads
            for (const Range& r : hp.kv) kv_sent += r.len;
            m.scratch = ulysses_scratch(d, hp.sh.total(), call.Hq, call.Hkv, kv_sent, es, backward, inner);
            break;
        }
        case StrategyKind::allgather:
            m.scratch = allgather_scratch(d, s.shards->total(), s.mesh.world.size(), es, s.opt.kv_head_chunk, backward);
            keys = s.shards->total();
            if (s.opt.kv_head_chunk > 0) kv_heads = std::min(s.opt.kv_head_chunk, p.kv_heads);
            break;
    }
    // The forward's pack is kept by the calling thread, so a backward call holds it too.
    const u64 pack = std::min(kernel_forward(keys, p.batch * kv_heads, p.head_dim), u64{256} << 20);
    m.kernel = backward ? pack + kernel_backward(call) : kernel_forward(keys, p.batch * kv_heads, p.head_dim);
    return m;
}

}  // namespace longattn::dist
