// CPU flash-attention backward, deterministic for any thread count.
//
// P is recomputed from the forward's final LSE, delta_i = rowsum(dO_i * O_i), dS = P * (dP - delta),
// and five block products give dV += P^T dO, dK += dS^T Q, dQ += dS K (scale folded into dS).
//
// Precision at sharp softmax: P = exp(S * scale - LSE) where both terms may be near 88 while their
// difference is near 0, so neither the product S * scale nor a conversion of the LSE to base 2 may be
// rounded at that magnitude (one fp32 ulp there is 7.6e-6, which P would carry as a relative error).
// Each row's LSE is split in double into hi + lo in the units of the raw score S (hi = fl(LSE /
// scale)), and the exponent is ((S - hi) - lo) * scale * log2(e): S - hi is exact near the maximum
// (Sterbenz), so only a small difference is ever rounded, with or without fused multiply-adds.
//
// Work partition (a function of shapes and pattern only, never of the thread count):
//   Query rows are processed in chunks of whole query blocks, one chunk after another, so that the
//   scratch below stays bounded (about kScratchFloats floats) whatever the sequence length.
//   Within a chunk, the key blocks that some row of the chunk may attend are split into `nsplit`
//   contiguous ranges of about equal work; a unit is (batch, kv head, split). A unit owns its key
//   blocks' dK/dV for this chunk exclusively: it sweeps every query head of its GQA group in a fixed
//   order, keeps the block's dK/dV in a private accumulator and adds it to the output once per chunk.
//   Its dQ contributions go to a private fp32 scratch slice; after all units finish, dQ rows are
//   reduced over splits in split order, in parallel over rows.
// So every sum has a fixed order: dK/dV over (chunk, head, query block), dQ over (split, key block).
//
// Layouts: per chunk, Q and dO are converted once to fp32 rows padded to Dp (a multiple of the vector width) with
// zeros. Per key block a unit packs K^T and V^T ([D][bk], keys the vector axis of S = Q K^T and
// dP = dO V^T) and K ([bk][Dp], dims the vector axis of dQ += dS K). P^T dO and dS^T Q read the stored
// P and dS transposed, which the ColA microkernel does without a copy.
//
// bf16 inputs on a CPU with AVX512-BF16 (`dot`): all five products are bf16 dot products
// (bf16_dot.hpp). S and dP are exact products of the stored values summed in fp32; P and scale * dS are
// rounded to bf16 (to nearest even) for dV, dK and dQ, as the plain bf16 implementation stores them,
// while the exponent, dS and every accumulation stay fp32. Q and dO are kept per chunk in dim pairs (for
// S and dP) and in query pairs (for dV and dK), K per key block in key pairs (for dQ).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <new>
#include <vector>

#include "kernels/attention.hpp"
#include "kernels/cpu/bf16_dot.hpp"
#include "kernels/cpu/buffer.hpp"
#include "kernels/cpu/bwd_kernels.hpp"
#include "kernels/cpu/rows.hpp"
#include "longattn/block_plan.hpp"

LONGATTN_ISA_BEGIN
namespace longattn::kernels::cpu {
inline namespace LONGATTN_ISA {
namespace {

using bwd::ALayout;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kInf = std::numeric_limits<float>::infinity();
// Units wanted per chunk: enough for dynamic scheduling to balance a few dozen threads.
constexpr std::int64_t kTargetUnits = 32;
// Bound on the per-chunk buffers (Q, dO, dQ slices), in floats: 64 MiB.
constexpr std::int64_t kScratchFloats = std::int64_t{16} << 20;

std::int64_t round_up(std::int64_t x, std::int64_t m) { return (x + m - 1) / m * m; }
std::int64_t ceil_div(std::int64_t x, std::int64_t m) { return (x + m - 1) / m; }

struct BwdCall {
    const BwdParams* p = nullptr;
    std::int64_t B = 0, Sq = 0, Sk = 0, Hq = 0, Hkv = 0, G = 0, D = 0, Dp = 0;
    std::int64_t bq = 0, bk = 0, nqb = 0, nkb = 0;
    float scale = 1.0f, softcap = 0.0f;
    bool general = false;  // softcap or ALiBi: scores need more than one FMA before the exponent
    bool dot = false;       // S and dP by bf16 dot products (q, k, v, dout and o all bf16; bf16_dot.hpp)
    std::int64_t d16 = 0;   // dot: bf16 per row of Q and dO, the head dim rounded up to 2
    HullTree queries, keys;  // position hulls of the query and key blocks (longattn/block_plan.hpp)
};

// One chunk of query blocks [qb0, qb1) and its per-row inputs, shared read-only by the units.
struct Chunk {
    std::int64_t qb0 = 0, qb1 = 0, row0 = 0, rows = 0;
    float* q = nullptr;     // [B][Hq][rows][Dp]
    float* dout = nullptr;  // [B][Hq][rows][Dp]
    float* lse_hi = nullptr;  // [B][Hq][rows]: the LSE as hi + lo in stored-score units (see the top);
    float* lse_lo = nullptr;  //   hi = +inf for a row without keys, so P = 0
    float* delta = nullptr; // [B][Hq][rows]
    float* dq = nullptr;    // [nsplit][B][Hq][rows][Dp]
    std::uint16_t* q16 = nullptr;     // dot: [B][Hq][rows][d16], Q and dO in bf16 dim pairs
    std::uint16_t* dout16 = nullptr;
    std::uint16_t* qp16 = nullptr;    // dot: [B][Hq][prows / 2][Dp][2], Q and dO in query pairs (zeros
    std::uint16_t* doutp16 = nullptr; //   past the head dim and on the row that pads an odd chunk)
    std::int64_t prows = 0;           // rows rounded up to even
    std::vector<std::int64_t> kbs;                 // key blocks some row of the chunk may attend
    std::vector<std::vector<TileRun>> pairs;       // per entry of kbs: its query blocks
    std::vector<std::int64_t> split_begin;         // nsplit + 1 offsets into kbs
    std::vector<std::int64_t> split_rows;          // per split: chunk rows [2s, 2s+1) its dQ slice covers
    std::int64_t nsplit = 0;

    std::int64_t row_index(const BwdCall& pr, std::int64_t b, std::int64_t h, std::int64_t r) const {
        return (b * pr.Hq + h) * rows + r;
    }
    // Offset in qp16 / doutp16 of the pair holding row r (even) of head h.
    std::int64_t pair_index(const BwdCall& pr, std::int64_t b, std::int64_t h, std::int64_t r) const {
        return ((b * pr.Hq + h) * (prows / 2) + r / 2) * 2 * pr.Dp;
    }
};

// Per-thread buffers of one unit. dot: kp holds K in key pairs ([bk / 2][Dp][2]), p16 and dsp16 P and dS
// in query pairs ([bq / 2][bk][2]), ds16 dS in rows ([bq][bk]), all bf16.
struct ThreadBuffers {
    Buffer kt, vt, kr, dk, dv, s, dp, bias, kposf, kp, p16, ds16, dsp16;
    std::vector<std::uint8_t> mask;

    explicit ThreadBuffers(const BwdCall& pr)
        : kt(pr.D * pr.bk), vt(pr.D * pr.bk), kr(pr.bk * pr.Dp), dk(pr.bk * pr.Dp), dv(pr.bk * pr.Dp),
          s(pr.bq * pr.bk), dp(pr.bq * pr.bk), bias(pr.bq * pr.bk), kposf(pr.bk), kp(pr.dot ? pr.bk * pr.Dp / 2 : 0),
          p16(pr.dot ? pr.bq * pr.bk / 2 : 0), ds16(pr.dot ? pr.bq * pr.bk / 2 : 0), dsp16(pr.dot ? pr.bq * pr.bk / 2 : 0),
          mask(static_cast<std::size_t>(pr.bk)) {}
};

std::uint16_t* u16(const Buffer& b) { return reinterpret_cast<std::uint16_t*>(b.get()); }

// The key block's rows are first staged (rows.hpp) into buffers that run_unit clears right after (dk,
// dv) or that hold K row-major anyway (kr): a window reads every key block from memory for a few query
// blocks. The transposes then read cached rows.
void pack_key_block(const BwdCall& pr, ThreadBuffers& sc, std::int64_t b, std::int64_t hk, std::int64_t kb) {
    const BwdParams& p = *pr.p;
    const std::int64_t D = pr.D, Dp = pr.Dp, bk = pr.bk;
    const std::int64_t j0 = kb * bk, n = std::min(bk, pr.Sk - j0);
    float* kt = sc.kt.get();
    float* vt = sc.vt.get();
    float* kr = sc.kr.get();
    if (pr.dot) {  // K^T and V^T in dim pairs ([dim pair][bk][2]), K in key pairs ([bk / 2][Dp][2]), zeros
                   // past the keys and the head dim
        auto* kt16 = reinterpret_cast<std::uint16_t*>(kt);
        auto* vt16 = reinterpret_cast<std::uint16_t*>(vt);
        std::uint16_t* kp16 = u16(sc.kp);
        stage_rows(p.k, b, hk, j0, n, D, Dp / 2, true, sc.dk.get());  // as stored, stride Dp values
        stage_rows(p.v, b, hk, j0, n, D, Dp / 2, true, sc.dv.get());
        const std::uint16_t* ks = u16(sc.dk);
        const std::uint16_t* vs = u16(sc.dv);
        std::fill(kt16, kt16 + pr.d16 * bk, std::uint16_t{0});
        std::fill(vt16, vt16 + pr.d16 * bk, std::uint16_t{0});
        std::fill(kp16, kp16 + bk * Dp, std::uint16_t{0});
        for (std::int64_t j = 0; j < n; ++j) {
            const std::uint16_t* krow = ks + j * Dp;
            const std::uint16_t* vrow = vs + j * Dp;
            std::uint16_t* kpj = kp16 + (j / 2) * 2 * Dp + j % 2;
            for (std::int64_t d = 0; d < D; ++d) {
                kt16[(d / 2) * 2 * bk + 2 * j + d % 2] = krow[d];
                vt16[(d / 2) * 2 * bk + 2 * j + d % 2] = vrow[d];
                kpj[2 * d] = krow[d];
            }
        }
        return;  // the fp32 panels are not read
    }
    float* vs = sc.dv.get();  // V's rows, stride Dp
    stage_rows(p.k, b, hk, j0, n, D, Dp, false, kr);
    stage_rows(p.v, b, hk, j0, n, D, Dp, false, vs);
    for (std::int64_t j = 0; j < bk; ++j) {
        std::fill(kr + j * Dp + (j < n ? D : 0), kr + (j + 1) * Dp, 0.0f);
        if (j >= n) std::fill(vs + j * Dp, vs + j * Dp + D, 0.0f);
    }
    for (std::int64_t d = 0; d < D; ++d)
        for (std::int64_t j = 0; j < bk; ++j) {
            kt[d * bk + j] = kr[j * Dp + d];
            vt[d * bk + j] = vs[j * Dp + d];
        }
}

// Turns S (raw q.k) into P and dP into scale * dS for one query block against one key block, in place.
// bias (when given) is 0 for allowed pairs and -inf for masked ones, row stride bk.
void softmax_grad(const BwdCall& pr, ThreadBuffers& sc, const Chunk& ch, std::int64_t b, std::int64_t h, std::int64_t r0,
                  std::int64_t nq, std::int64_t ncols, const float* bias, const std::int64_t* qpos, float slope,
                  std::int64_t pos_base) {
    const std::int64_t bk = pr.bk;
    float* S = sc.s.get();
    float* dP = sc.dp.get();
    const float* lse_hi = ch.lse_hi + ch.row_index(pr, b, h, r0);
    const float* lse_lo = ch.lse_lo + ch.row_index(pr, b, h, r0);
    const float* delta = ch.delta + ch.row_index(pr, b, h, r0);
    const float scale = pr.scale;
    if (!pr.general) {
        const vf c2 = splat(scale * kLog2e);
        for (std::int64_t r = 0; r < nq; ++r) {
            float* srow = S + r * bk;
            float* drow = dP + r * bk;
            const vf hi = splat(lse_hi[r]), lo = splat(lse_lo[r]), dl = splat(delta[r]);
            const float* brow = bias ? bias + r * bk : nullptr;
            for (std::int64_t j = 0; j < ncols; j += kLanes) {
                vf x = ((load(srow + j) - hi) - lo) * c2;
                if (brow) x += load(brow + j);
                const vf pv = bwd::exp2v(x);
                store(srow + j, pv);
                store(drow + j, (pv * scale) * (load(drow + j) - dl));
            }
        }
        return;
    }
    const float cap = pr.softcap;
    const float* kposf = sc.kposf.get();
    for (std::int64_t r = 0; r < nq; ++r) {
        float* srow = S + r * bk;
        float* drow = dP + r * bk;
        const vf hi = splat(lse_hi[r]), lo = splat(lse_lo[r]), dl = splat(delta[r]);
        const float* brow = bias ? bias + r * bk : nullptr;
        const float qposf = static_cast<float>(qpos[r] - pos_base);
        for (std::int64_t j = 0; j < ncols; j += kLanes) {
            vf s = load(srow + j) * scale;
            vf gate = splat(scale);
            if (cap > 0.0f) {
                // tanh(y) = (e^{2y} - 1) / (e^{2y} + 1); |y| >= 9 is +-1 in fp32 already.
                const vf y = cpu::clamp(s * (1.0f / cap), -9.0f, 9.0f);
                const vf e = bwd::exp2v(y * (2.0f * kLog2e));
                const vf t = (e - 1.0f) / (e + 1.0f);
                s = cap * t;
                gate *= 1.0f - t * t;  // d(cap tanh(s / cap)) / ds
            }
            if (slope != 0.0f) {
                const vf dist = qposf - load(kposf + j);
                s -= slope * (dist < 0.0f ? -dist : dist);
            }
            vf x = ((s - hi) - lo) * kLog2e;
            if (brow) x += load(brow + j);
            const vf pv = bwd::exp2v(x);
            store(srow + j, pv);
            store(drow + j, (pv * gate) * (load(drow + j) - dl));
        }
    }
}

#if LONGATTN_BF16_TILES
// P (in S) and scale * dS (in dP) of one block rounded to bf16 for the dot products: P and dS in query
// pairs (the A of dV += P^T dO and dK += dS^T Q), dS in rows (the A of dQ += dS K). An odd last row is
// paired with zeros.
void round_block_bf16(const BwdCall& pr, ThreadBuffers& sc, std::int64_t nq, std::int64_t ncols) {
    const std::int64_t bk = pr.bk;
    const float* S = sc.s.get();
    const float* dP = sc.dp.get();
    std::uint16_t* p16 = u16(sc.p16);
    std::uint16_t* ds16 = u16(sc.ds16);
    std::uint16_t* dsp16 = u16(sc.dsp16);
    for (std::int64_t r = 0; r < nq; r += 2) {
        const bool two = r + 1 < nq;
        for (std::int64_t j = 0; j < ncols; j += kLanes) {
            const vf p0 = load(S + r * bk + j), p1 = two ? load(S + (r + 1) * bk + j) : vf{};
            const vf d0 = load(dP + r * bk + j), d1 = two ? load(dP + (r + 1) * bk + j) : vf{};
            store_pairs_bf16(p16 + r * bk + 2 * j, p0, p1);
            store_pairs_bf16(dsp16 + r * bk + 2 * j, d0, d1);
            store_bf16(ds16 + r * bk + j, d0);
            if (two) store_bf16(ds16 + (r + 1) * bk + j, d1);
        }
    }
}
#endif

// The additive mask of query block qb against key block kb (n keys, ncols columns with the padding):
// -inf on disallowed pairs and on the zero-padded key columns, row stride bk.
void block_bias(const BwdCall& pr, ThreadBuffers& sc, std::int64_t kb, std::int64_t qb, BlockClass cls, float* bias) {
    const BwdParams& p = *pr.p;
    const std::int64_t bk = pr.bk, j0 = kb * bk, n = pr.keys.tile_rows(kb), ncols = round_up(n, kLanes);
    const std::int64_t i0 = qb * pr.bq, nq = pr.queries.tile_rows(qb);
    const std::int64_t kbase = pr.keys.run_start(kb);
    // Causal, document and window masks over consecutive keys: one interval per row.
    const bool by_bounds = p.pattern->rows_are_intervals() && kbase != kScattered;
    for (std::int64_t r = 0; r < nq; ++r) {
        float* brow = bias + r * bk;
        if (cls == BlockClass::partial && by_bounds) {
            std::int64_t a, z;
            p.pattern->row_interval(p.q_pos[i0 + r], a, z);
            a = std::clamp<std::int64_t>(a - kbase, 0, n);
            z = std::clamp<std::int64_t>(z - kbase, a, n);
            std::fill(brow, brow + a, -kInf);
            std::fill(brow + a, brow + z, 0.0f);
            std::fill(brow + z, brow + n, -kInf);
        } else if (cls == BlockClass::partial) {
            p.pattern->mask_row(p.q_pos[i0 + r], p.k_pos + j0, n, sc.mask.data());
            for (std::int64_t j = 0; j < n; ++j) brow[j] = sc.mask[static_cast<std::size_t>(j)] ? 0.0f : -kInf;
        } else {
            std::fill(brow, brow + n, 0.0f);
        }
        std::fill(brow + n, brow + ncols, -kInf);
    }
}

// One (batch, kv head, split) unit: its key blocks' dK/dV in full for this chunk, its dQ
// contributions into the split's private slice.
void run_unit(const BwdCall& pr, const Chunk& ch, ThreadBuffers& sc, std::int64_t b, std::int64_t hk, std::int64_t split) {
    const BwdParams& p = *pr.p;
    const std::int64_t D = pr.D, Dp = pr.Dp, bk = pr.bk, G = pr.G;
    const std::int64_t h0 = hk * G;
    float* dqs = ch.dq + split * pr.B * pr.Hq * ch.rows * Dp;
    const std::int64_t r_lo = ch.split_rows[static_cast<std::size_t>(2 * split)];
    const std::int64_t r_hi = ch.split_rows[static_cast<std::size_t>(2 * split + 1)];
    for (std::int64_t h = h0; h < h0 + G; ++h) {
        float* z = dqs + ch.row_index(pr, b, h, 0) * Dp;
        std::fill(z + r_lo * Dp, z + r_hi * Dp, 0.0f);
    }
    float* S = sc.s.get();
    float* dP = sc.dp.get();
    float* dK = sc.dk.get();
    float* dV = sc.dv.get();
    float* bias = sc.bias.get();

    for (std::int64_t e = ch.split_begin[static_cast<std::size_t>(split)];
         e < ch.split_begin[static_cast<std::size_t>(split) + 1]; ++e) {
        const std::int64_t kb = ch.kbs[static_cast<std::size_t>(e)];
        const std::int64_t j0 = kb * bk, n = pr.keys.tile_rows(kb);
        const std::int64_t ncols = round_up(n, kLanes), nv = ncols / kLanes;
        pack_key_block(pr, sc, b, hk, kb);
        std::fill(dK, dK + bk * Dp, 0.0f);
        std::fill(dV, dV + bk * Dp, 0.0f);
        const std::int64_t pos_base = p.k_pos[j0];
        if (pr.general)
            for (std::int64_t j = 0; j < ncols; ++j)
                sc.kposf.get()[j] = j < n ? static_cast<float>(p.k_pos[j0 + j] - pos_base) : 0.0f;

        for (const TileRun& run : ch.pairs[static_cast<std::size_t>(e)]) {
            const bool masked = run.cls == BlockClass::partial || n < ncols;
            for (std::int64_t qb = run.first; qb < run.first + run.count; ++qb) {
                const std::int64_t i0 = qb * pr.bq, nq = pr.queries.tile_rows(qb);
                const std::int64_t r0 = i0 - ch.row0;  // row inside the chunk
                if (masked) block_bias(pr, sc, kb, qb, run.cls, bias);
                for (std::int64_t h = h0; h < h0 + G; ++h) {
                    const float* Q = ch.q + ch.row_index(pr, b, h, r0) * Dp;
                    const float* dO = ch.dout + ch.row_index(pr, b, h, r0) * Dp;
                    float* dQ = dqs + ch.row_index(pr, b, h, r0) * Dp;
                    const float slope = p.pattern->has_alibi() ? p.pattern->alibi_slope(p.head_offset + h) : 0.0f;
                    if (pr.dot) {
#if LONGATTN_BF16_TILES
                        const std::int64_t off = ch.row_index(pr, b, h, r0) * pr.d16, pairs = pr.d16 / 2;
                        dot_gemm_bf16(nq, nv, pairs, ch.q16 + off, pr.d16, u16(sc.kt), 2 * bk, S, bk);
                        dot_gemm_bf16(nq, nv, pairs, ch.dout16 + off, pr.d16, u16(sc.vt), 2 * bk, dP, bk);
                        softmax_grad(pr, sc, ch, b, h, r0, nq, ncols, masked ? bias : nullptr, p.q_pos + i0, slope, pos_base);
                        round_block_bf16(pr, sc, nq, ncols);
                        const std::int64_t qpairs = (nq + 1) / 2, poff = ch.pair_index(pr, b, h, r0);
                        dot_gemm_bf16<true>(n, Dp / kLanes, qpairs, u16(sc.p16), 2 * bk, ch.doutp16 + poff, 2 * Dp, dV, Dp, true);
                        dot_gemm_bf16<true>(n, Dp / kLanes, qpairs, u16(sc.dsp16), 2 * bk, ch.qp16 + poff, 2 * Dp, dK, Dp, true);
                        dot_gemm_bf16(nq, Dp / kLanes, ncols / 2, u16(sc.ds16), bk, u16(sc.kp), 2 * Dp, dQ, Dp, true);
#endif
                        continue;
                    }
                    bwd::gemm<ALayout::row>(nq, nv, D, Q, Dp, sc.kt.get(), bk, S, bk, false);
                    bwd::gemm<ALayout::row>(nq, nv, D, dO, Dp, sc.vt.get(), bk, dP, bk, false);
                    softmax_grad(pr, sc, ch, b, h, r0, nq, ncols, masked ? bias : nullptr, p.q_pos + i0, slope, pos_base);
                    bwd::gemm<ALayout::col>(n, Dp / kLanes, nq, S, bk, dO, Dp, dV, Dp, true);
                    bwd::gemm<ALayout::col>(n, Dp / kLanes, nq, dP, bk, Q, Dp, dK, Dp, true);
                    bwd::gemm<ALayout::row>(nq, Dp / kLanes, n, dP, bk, sc.kr.get(), Dp, dQ, Dp, true);
                }
            }
        }
        for (std::int64_t j = 0; j < n; ++j) {
            float* ok = p.dk.ptr<float>() + p.dk.offset(b, j0 + j, hk, 0);
            float* ov = p.dv.ptr<float>() + p.dv.offset(b, j0 + j, hk, 0);
            for (std::int64_t d = 0; d < D; ++d) {
                ok[d] += dK[j * Dp + d];
                ov[d] += dV[j * Dp + d];
            }
        }
    }
}

std::int64_t tiles_in(const std::vector<TileRun>& runs) {
    std::int64_t n = 0;
    for (const TileRun& r : runs) n += r.count;
    return n;
}

// Splits the chunk's key blocks into nsplit contiguous ranges of about equal work (query blocks
// attending them), by prefix sums: a function of the pattern and shapes only.
void plan_splits(Chunk& ch, std::int64_t units_per_split) {
    const std::int64_t nk = static_cast<std::int64_t>(ch.kbs.size());
    ch.nsplit = nk == 0 ? 0 : std::clamp<std::int64_t>(ceil_div(kTargetUnits, units_per_split), 1, nk);
    ch.split_begin.assign(static_cast<std::size_t>(ch.nsplit + 1), nk);
    if (ch.nsplit == 0) return;
    std::vector<std::int64_t> prefix(static_cast<std::size_t>(nk + 1), 0);
    for (std::int64_t e = 0; e < nk; ++e)
        prefix[static_cast<std::size_t>(e + 1)] =
            prefix[static_cast<std::size_t>(e)] + tiles_in(ch.pairs[static_cast<std::size_t>(e)]);
    const std::int64_t total = prefix.back();
    ch.split_begin[0] = 0;
    for (std::int64_t s = 1; s < ch.nsplit; ++s) {
        const std::int64_t want = total * s / ch.nsplit;
        // Each split keeps at least one key block, and leaves one for each later split.
        std::int64_t e = ch.split_begin[static_cast<std::size_t>(s - 1)] + 1;
        while (e < nk - (ch.nsplit - s) && prefix[static_cast<std::size_t>(e)] < want) ++e;
        ch.split_begin[static_cast<std::size_t>(s)] = e;
    }
}

// The chunk rows each split's dQ slice covers: only they are zeroed and reduced, which for a window
// is a few query blocks per split instead of the whole chunk.
void plan_split_rows(const BwdCall& pr, Chunk& ch) {
    ch.split_rows.assign(static_cast<std::size_t>(2 * ch.nsplit), 0);
    for (std::int64_t s = 0; s < ch.nsplit; ++s) {
        std::int64_t lo = ch.qb1, hi = ch.qb0;
        for (std::int64_t e = ch.split_begin[static_cast<std::size_t>(s)]; e < ch.split_begin[static_cast<std::size_t>(s) + 1]; ++e)
            for (const TileRun& run : ch.pairs[static_cast<std::size_t>(e)]) {
                lo = std::min(lo, run.first);
                hi = std::max(hi, run.first + run.count);
            }
        if (lo >= hi) lo = hi = ch.qb0;
        ch.split_rows[static_cast<std::size_t>(2 * s)] = lo * pr.bq - ch.row0;
        ch.split_rows[static_cast<std::size_t>(2 * s + 1)] = std::min(hi * pr.bq, pr.Sq) - ch.row0;
    }
}

// The chunk's key blocks with the query blocks of [qb0, qb1) that may attend each, and the splits.
void plan_chunk(const BwdCall& pr, Chunk& ch, std::int64_t units_per_split, int nt) {
    const BwdParams& p = *pr.p;
    // The key blocks that the chunk's query hull may attend, from the key tree: a window's chunk meets a
    // few dozen of the call's key blocks, and only those are matched against the chunk's query blocks.
    std::int64_t q_lo = std::numeric_limits<std::int64_t>::max(), q_end = std::numeric_limits<std::int64_t>::min();
    for (std::int64_t qb = ch.qb0; qb < ch.qb1; ++qb) {
        q_lo = std::min(q_lo, pr.queries.tile_lo(qb));
        q_end = std::max(q_end, pr.queries.tile_end(qb));
    }
    std::vector<TileRun> kruns;
    collect_tiles(*p.pattern, pr.keys, false, q_lo, q_end, kruns);
    std::vector<std::int64_t> cand;
    for (const TileRun& r : kruns)
        for (std::int64_t kb = r.first; kb < r.first + r.count; ++kb) cand.push_back(kb);
    const auto nc = static_cast<std::int64_t>(cand.size());
    ch.pairs.resize(cand.size());
#pragma omp parallel for num_threads(nt) schedule(dynamic, 4)
    for (std::int64_t c = 0; c < nc; ++c) {
        const std::int64_t kb = cand[static_cast<std::size_t>(c)];
        collect_tiles(*p.pattern, pr.queries, true, pr.keys.tile_lo(kb), pr.keys.tile_end(kb),
                      ch.pairs[static_cast<std::size_t>(c)], ch.qb0, ch.qb1);
    }
    std::int64_t w = 0;
    for (std::int64_t c = 0; c < nc; ++c) {
        if (ch.pairs[static_cast<std::size_t>(c)].empty()) continue;
        ch.kbs.push_back(cand[static_cast<std::size_t>(c)]);
        if (w != c) ch.pairs[static_cast<std::size_t>(w)] = std::move(ch.pairs[static_cast<std::size_t>(c)]);
        ++w;
    }
    ch.pairs.resize(static_cast<std::size_t>(w));
    plan_splits(ch, units_per_split);
    plan_split_rows(pr, ch);
}

// Row t of the chunk ([B][Hq][rows] order): Q and dO in fp32, LSE as hi + lo, delta.
void load_chunk_row(const BwdCall& pr, const Chunk& ch, std::int64_t t, float* orow) {
    const BwdParams& p = *pr.p;
    const std::int64_t b = t / (pr.Hq * ch.rows), h = (t / ch.rows) % pr.Hq, i = ch.row0 + t % ch.rows;
    float* qd = ch.q + t * pr.Dp;
    float* dod = ch.dout + t * pr.Dp;
    load_row(p.q.data, p.q.dtype, p.q.offset(b, i, h, 0), pr.D, 1.0f, qd);
    load_row(p.dout.data, p.dout.dtype, p.dout.offset(b, i, h, 0), pr.D, 1.0f, dod);
    std::fill(qd + pr.D, qd + pr.Dp, 0.0f);
    std::fill(dod + pr.D, dod + pr.Dp, 0.0f);
    // delta with the same arithmetic, in the same order, as the dP = dO V^T product (fused multiply-adds
    // where the machine has them, or bf16 dot products): a row whose O is one V row (a one-hot softmax)
    // then gets dP - delta = 0 exactly, as it should.
    float delta = 0.0f;
#if LONGATTN_BF16_TILES
    if (pr.dot) {
        std::uint16_t* q16 = ch.q16 + t * pr.d16;
        std::uint16_t* do16 = ch.dout16 + t * pr.d16;
        const auto* q = static_cast<const std::uint16_t*>(p.q.data) + p.q.offset(b, i, h, 0);
        const auto* dout = static_cast<const std::uint16_t*>(p.dout.data) + p.dout.offset(b, i, h, 0);
        const auto* o = static_cast<const std::uint16_t*>(p.o.data) + p.o.offset(b, i, h, 0);
        // O's pairs go in orow (its fp32 copy is not needed): a pair past an odd head dim is zero.
        std::uint16_t* o16 = reinterpret_cast<std::uint16_t*>(orow);
        std::copy(q, q + pr.D, q16);
        std::copy(dout, dout + pr.D, do16);
        std::copy(o, o + pr.D, o16);
        if (pr.d16 > pr.D) q16[pr.D] = do16[pr.D] = o16[pr.D] = 0;
        delta = dot_row_bf16(pr.d16 / 2, do16, o16);
        // Query pairs: this row's half of its pair, and the zero partner of an odd last row.
        const std::int64_t r = t % ch.rows, at = ch.pair_index(pr, b, h, r - r % 2) + r % 2;
        const bool pad = r % 2 == 0 && r + 1 == ch.rows;
        for (std::int64_t d = 0; d < pr.Dp; ++d) {
            ch.qp16[at + 2 * d] = d < pr.D ? q[d] : std::uint16_t{0};
            ch.doutp16[at + 2 * d] = d < pr.D ? dout[d] : std::uint16_t{0};
            if (pad) ch.qp16[at + 2 * d + 1] = ch.doutp16[at + 2 * d + 1] = 0;
        }
    } else
#endif
    {
        load_row(p.o.data, p.o.dtype, p.o.offset(b, i, h, 0), pr.D, 1.0f, orow);
        for (std::int64_t d = 0; d < pr.D; ++d) {
#if LONGATTN_ISA_FMA
            delta = std::fma(dod[d], orow[d], delta);
#else
            delta += dod[d] * orow[d];
#endif
        }
    }
    const float lse = p.lse[(b * pr.Hq + h) * pr.Sq + i];
    // A row without keys has lse = -inf: +inf in the exponent's offset makes its P exactly 0. Scores are
    // natural in the general path and raw (LSE / scale units) otherwise.
    const double unit = pr.general ? 1.0 : pr.scale;
    const float hi = lse == -kInf ? kInf : static_cast<float>(lse / unit);
    ch.lse_hi[t] = hi;
    ch.lse_lo[t] = lse == -kInf ? 0.0f : static_cast<float>((lse - static_cast<double>(hi) * unit) / unit);
    ch.delta[t] = delta;
}

// dQ row t of the chunk: the splits' slices summed in split order.
void reduce_dq_row(const BwdCall& pr, const Chunk& ch, std::int64_t t) {
    const BwdParams& p = *pr.p;
    const std::int64_t nrows = pr.B * pr.Hq * ch.rows;
    const std::int64_t b = t / (pr.Hq * ch.rows), h = (t / ch.rows) % pr.Hq, r = t % ch.rows;
    float* out = p.dq.ptr<float>() + p.dq.offset(b, ch.row0 + r, h, 0);
    if (!p.accumulate) std::fill_n(out, pr.D, 0.0f);
    for (std::int64_t s = 0; s < ch.nsplit; ++s) {
        if (r < ch.split_rows[static_cast<std::size_t>(2 * s)] || r >= ch.split_rows[static_cast<std::size_t>(2 * s + 1)])
            continue;
        const float* src = ch.dq + (s * nrows + t) * pr.Dp;
        for (std::int64_t d = 0; d < pr.D; ++d) out[d] += src[d];
    }
}

BwdCall make_call(const BwdParams& p, bool dot) {
    BwdCall pr;
    pr.p = &p;
    pr.B = p.q.shape[0];
    pr.Sq = p.q.shape[1];
    pr.Hq = p.q.shape[2];
    pr.D = p.q.shape[3];
    pr.Sk = p.k.shape[1];
    pr.Hkv = p.k.shape[2];
    pr.G = pr.Hq / pr.Hkv;
    pr.Dp = round_up(pr.D, kLanes);
    pr.bq = 64;
    pr.bk = 64;
    pr.nqb = ceil_div(pr.Sq, pr.bq);
    pr.nkb = ceil_div(pr.Sk, pr.bk);
    pr.scale = p.pattern->softmax_scale(pr.D);
    pr.softcap = p.pattern->has_softcap() ? p.pattern->spec().softcap : 0.0f;
    pr.general = p.pattern->has_softcap() || p.pattern->has_alibi();
    const auto bf16 = [](const TensorView& t) { return t.dtype == DType::bf16; };
    pr.dot = LONGATTN_BF16_TILES && dot && bf16(p.q) && bf16(p.k) && bf16(p.v) && bf16(p.dout) && bf16(p.o);
    pr.d16 = round_up(pr.D, 2);
    return pr;
}

void backward(const BwdParams& p, bool dot) {
    validate(p);
    BwdCall pr = make_call(p, dot);
    const int nt = p.threads > 0 ? p.threads : omp_get_max_threads();

    // Gradients of keys nobody attends are exactly 0; the chunks below only add.
    if (!p.accumulate && pr.B > 0 && pr.Sk > 0) {
        const std::int64_t rows = pr.B * pr.Sk * pr.Hkv;
#pragma omp parallel for num_threads(nt) schedule(static)
        for (std::int64_t t = 0; t < rows; ++t) {
            const std::int64_t b = t / (pr.Sk * pr.Hkv), j = (t / pr.Hkv) % pr.Sk, hk = t % pr.Hkv;
            std::fill_n(p.dk.ptr<float>() + p.dk.offset(b, j, hk, 0), pr.D, 0.0f);
            std::fill_n(p.dv.ptr<float>() + p.dv.offset(b, j, hk, 0), pr.D, 0.0f);
        }
    }
    if (pr.B == 0 || pr.Sq == 0 || pr.Hq == 0) return;
    pr.queries = HullTree(p.q_pos, pr.Sq, pr.bq);
    pr.keys = HullTree(p.k_pos, pr.Sk, pr.bk);

    // Chunk height: Q, dO and up to max_split dQ slices per row of every (batch, head) fit the bound.
    const std::int64_t units_per_split = pr.B * pr.Hkv;
    const std::int64_t max_split = std::clamp<std::int64_t>(ceil_div(kTargetUnits, units_per_split), 1, std::max<std::int64_t>(pr.nkb, 1));
    const std::int64_t per_row = (max_split + 2) * pr.B * pr.Hq * pr.Dp;
    const std::int64_t chunk_qb = std::clamp<std::int64_t>(kScratchFloats / (per_row * pr.bq), 1, pr.nqb);
    const std::int64_t row_elems = pr.B * pr.Hq * std::min(chunk_qb * pr.bq, pr.Sq);
    // Kept per calling thread between calls (up to kScratchFloats each): a ring step's chunked calls
    // would otherwise fault in fresh pages every time.
    thread_local Buffer qbuf, dobuf, lsebuf, deltabuf, dqbuf, q16buf;
    const auto rows_dp = static_cast<std::size_t>(row_elems * pr.Dp);
    qbuf.reserve(rows_dp);
    dobuf.reserve(rows_dp);
    lsebuf.reserve(static_cast<std::size_t>(2 * row_elems));
    deltabuf.reserve(static_cast<std::size_t>(row_elems));
    dqbuf.reserve(static_cast<std::size_t>(max_split) * rows_dp);
    // dot: Q and dO in bf16, in dim pairs (row_elems * d16 each) and in query pairs (pair_rows * Dp each)
    const std::int64_t pair_rows = row_elems + pr.B * pr.Hq;
    if (pr.dot) q16buf.reserve(static_cast<std::size_t>(row_elems * pr.d16 + pair_rows * pr.Dp));
    const auto keep = static_cast<std::size_t>(kScratchFloats);
    const cpu::TrimOnExit t1{qbuf, keep}, t2{dobuf, keep}, t3{lsebuf, keep}, t4{deltabuf, keep}, t5{dqbuf, 2 * keep},
        t6{q16buf, keep};

    for (std::int64_t qb0 = 0; qb0 < pr.nqb; qb0 += chunk_qb) {
        Chunk ch;
        ch.qb0 = qb0;
        ch.qb1 = std::min(pr.nqb, qb0 + chunk_qb);
        ch.row0 = qb0 * pr.bq;
        ch.rows = std::min(pr.Sq, ch.qb1 * pr.bq) - ch.row0;
        ch.q = qbuf.get();
        ch.dout = dobuf.get();
        ch.lse_hi = lsebuf.get();
        ch.lse_lo = ch.lse_hi + row_elems;
        ch.delta = deltabuf.get();
        ch.dq = dqbuf.get();
        ch.q16 = reinterpret_cast<std::uint16_t*>(q16buf.get());
        ch.dout16 = ch.q16 + row_elems * pr.d16;
        ch.prows = round_up(ch.rows, 2);
        ch.qp16 = ch.dout16 + row_elems * pr.d16;
        ch.doutp16 = ch.qp16 + pair_rows * pr.Dp;
        plan_chunk(pr, ch, units_per_split, nt);
        const std::int64_t nrows = pr.B * pr.Hq * ch.rows;
        const std::int64_t nunits = units_per_split * ch.nsplit;

#pragma omp parallel num_threads(nt)
        {
            Buffer row(static_cast<std::size_t>(pr.Dp));
            if (nunits > 0) {
#pragma omp for schedule(static)
                for (std::int64_t t = 0; t < nrows; ++t) load_chunk_row(pr, ch, t, row.get());
                ThreadBuffers sc(pr);
#pragma omp for schedule(dynamic, 1)
                for (std::int64_t u = 0; u < nunits; ++u) {
                    const std::int64_t split = u % ch.nsplit, bh = u / ch.nsplit;
                    run_unit(pr, ch, sc, bh / pr.Hkv, bh % pr.Hkv, split);
                }
            }
#pragma omp for schedule(static)
            for (std::int64_t t = 0; t < nrows; ++t) reduce_dq_row(pr, ch, t);
        }
    }
}

}  // namespace

void flash_backward(const BwdParams& p) { backward(p, false); }
#if LONGATTN_BF16_TILES
void flash_backward_bf16(const BwdParams& p) { backward(p, true); }
#endif

}  // namespace LONGATTN_ISA
}  // namespace longattn::kernels::cpu
LONGATTN_ISA_END
