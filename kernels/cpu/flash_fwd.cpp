// CPU flash-attention forward: tiled online softmax in fp32.
//
// Per (batch, kv head) K and V are packed once, in parallel, into fp32 blocks of kBk keys:
//   K transposed, [panel of kPanel keys][D][kPanel]: keys are the vector axis of S = Q K^T, and a panel
//     of 4 vectors of keys (D x 256 bytes with AVX-512) is contiguous, so it stays in L1 without set
//     conflicts while every row group of the query block sweeps over it;
//   V as [panel of kPanel dims][kBk][kPanel] (the last panel narrower): dims are the vector axis of
//     O += P V.
// For bf16 q and k on a CPU with AVX512-BF16 the scores are bf16 dot products over K in dim pairs, and
// with bf16 v too O += P V is one, over V in key pairs with P rounded to bf16 (as the plain bf16
// implementation stores it); the AMX path (below) keeps P's precision with a second bf16 part.
// Each task is one (batch, query head, query block). Q is converted to fp32 unscaled, and the
// running row maximum m is kept in the units of the stored scores (raw q.k, or the natural score once
// softcap or ALiBi have transformed it). Each exponent is (S - m) * c with c = scale * log2(e), then
// exp2 of a fast polynomial: S - m is exact for the scores near the maximum (Sterbenz), so the rounding
// of a score at its own magnitude (at |S * scale| near 88 one fp32 ulp is 7.6e-6) never enters the
// softmax, and LSE = m * scale + ln(l) is formed in double and rounded once. The LSE is then as exact
// as a textbook fp32 softmax's, which the backward needs to recompute P from it.
// With softcap or ALiBi the scores are first transformed in the natural scale. Key blocks come from the
// block planner (longattn/block_plan.hpp): a window over a long sequence costs a few classifications per
// query block instead of one per key block.
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <new>
#include <thread>
#include <vector>

#include "kernels/attention.hpp"
#include "kernels/cpu/bf16_dot.hpp"
#include "kernels/cpu/buffer.hpp"
#include "kernels/cpu/rows.hpp"
#include "kernels/cpu/simd.hpp"
#include "longattn/block_plan.hpp"

LONGATTN_ISA_BEGIN
namespace longattn::kernels::cpu {
inline namespace LONGATTN_ISA {
namespace {

constexpr int kRows = kTileRows;  // query rows per register tile
constexpr int kPanel = 4 * kLanes;  // keys per K panel and dims per V panel: 4 vectors
constexpr int kPanelVecs = kPanel / kLanes;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Query rows per task and keys per block. The query block is a multiple of kRows; the key block is a
// multiple of kPanel.
struct Blocking {
    std::int64_t bq, bk;
};
Blocking choose_blocking(const Pattern& pat) {
    // Interval-shaped masks (windows) are cheap to apply on partial tiles, so they keep the dense
    // blocking; other sparse parts waste less in smaller tiles.
    if (pat.has_sparse_part() && !pat.rows_are_intervals()) return {48, 64};
    return {96, 128};
}

std::int64_t round_up(std::int64_t x, std::int64_t m) { return (x + m - 1) / m * m; }

// The packed K/V copy is kept per calling thread between calls up to this size: sparse and
// short-query calls are otherwise dominated by faulting in fresh pages.
constexpr std::size_t kKeepPackFloats = std::size_t{64} << 20;  // 256 MiB
// Kv heads are packed and attended a group at a time, as many as fit in this many floats (at least
// one): a long sequence then holds one head's fp32 copy instead of all of them, while short calls
// keep every (head, query block) task of the call in one parallel loop.
constexpr std::int64_t kGroupPackFloats = std::int64_t{8} << 20;  // 32 MiB

// S[r][0, C vectors) = sum_d Q[r][d] * KT[d][0, C vectors) for kRows rows, KT with rows of kPanel floats; rmax[r]
// (one vector per row) takes the lane-wise max so that unmasked blocks need no separate max pass.
template <int C>
inline void score_tile(std::int64_t D, const float* q, std::int64_t q_rs, const float* kt, float* s,
                       std::int64_t s_rs, float* rmax) {
    vf acc[kRows][C] = {};
    for (std::int64_t d = 0; d < D; ++d) {
        vf b[C];
        for (int c = 0; c < C; ++c) b[c] = load(kt + d * kPanel + c * kLanes);
        for (int r = 0; r < kRows; ++r) {
            const float a = q[r * q_rs + d];
            for (int c = 0; c < C; ++c) acc[r][c] += a * b[c];
        }
    }
    for (int r = 0; r < kRows; ++r) {
        vf m = load(rmax + r * kLanes);
        for (int c = 0; c < C; ++c) {
            store(s + r * s_rs + c * kLanes, acc[r][c]);
            m = vmax(m, acc[r][c]);
        }
        store(rmax + r * kLanes, m);
    }
}

// O[r][0, 16C) = alpha[r] * O[r][0, 16C) + sum_{k < n} P[r][k] * V[k][0, 16C) for kRows rows: the
// online-softmax rescale rides on the load of the O tile.
template <int C>
inline void pv_tile(std::int64_t n, const float* p, std::int64_t p_rs, const float* v, float* o, std::int64_t o_rs,
                    const float* alpha) {
    vf acc[kRows][C];
    for (int r = 0; r < kRows; ++r)
        for (int c = 0; c < C; ++c) acc[r][c] = alpha[r] * load(o + r * o_rs + c * kLanes);
    for (std::int64_t k = 0; k < n; ++k) {
        vf b[C];
        for (int c = 0; c < C; ++c) b[c] = load(v + k * (C * kLanes) + c * kLanes);
        for (int r = 0; r < kRows; ++r) {
            const float a = p[r * p_rs + k];
            for (int c = 0; c < C; ++c) acc[r][c] += a * b[c];
        }
    }
    for (int r = 0; r < kRows; ++r)
        for (int c = 0; c < C; ++c) store(o + r * o_rs + c * kLanes, acc[r][c]);
}

#if LONGATTN_BF16_TILES
// pv_tile for bf16 P and V by AVX512-BF16 dot products over `pairs` key pairs: P rows of bf16 (p_rs
// bf16 apart), V as [key pair][16C dims][2].
template <int C>
LONGATTN_DPBF16 inline void pv_tile_bf16(std::int64_t pairs, const std::uint16_t* p, std::int64_t p_rs,
                                         const std::uint16_t* v, float* o, std::int64_t o_rs, const float* alpha) {
    __m512 acc[kRows][C];
    for (int r = 0; r < kRows; ++r)
        for (int c = 0; c < C; ++c) acc[r][c] = (__m512)(alpha[r] * load(o + r * o_rs + c * kLanes));
    for (std::int64_t k = 0; k < pairs; ++k) {
        __m512bh b[C];
        for (int c = 0; c < C; ++c) b[c] = (__m512bh)_mm512_loadu_si512(v + k * (2 * C * kLanes) + c * 2 * kLanes);
        for (int r = 0; r < kRows; ++r) {
            const __m512bh a = bf16_pair(p + r * p_rs + 2 * k);
            for (int c = 0; c < C; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], a, b[c]);
        }
    }
    for (int r = 0; r < kRows; ++r)
        for (int c = 0; c < C; ++c) store(o + r * o_rs + c * kLanes, (vf)acc[r][c]);
}

// AMX tiles for bf16 storage (q, k and v all bf16), on CPUs with AMX-BF16 (dispatch.cpp's avx512-amx):
// S = Q K^T in tiles of 16 rows x 16 keys over 32 dims, and O += P V with P split into bf16 hi + lo,
// so that P keeps 16 of its 24 bits (2^-17 relative, far below the bf16 output's rounding) and the
// result has the fp32 path's precision. Tile registers: 0-3 accumulators, 4-5 the left operands, 6-7
// the right ones, each 16 rows of 64 bytes. Packed K: per tile of 16 keys, per 32 dims, 16 dim pairs x
// 16 keys x 2 (the pair layout the tile product reads); packed V: per 16 dims, per 32 keys, 16 key pairs
// x 16 dims x 2.
#define LONGATTN_AMX __attribute__((target("amx-tile,amx-bf16,avx512bf16")))
constexpr std::int64_t kAmxTile = 512;  // bf16 per packed 1 KiB tile

struct alignas(64) AmxConfig {
    std::uint8_t palette = 1, start_row = 0, reserved[14] = {};
    std::uint16_t colsb[16] = {};
    std::uint8_t rows[16] = {};
};

LONGATTN_AMX void amx_begin() {
    AmxConfig c;
    for (int i = 0; i < 8; ++i) {
        c.colsb[i] = 64;
        c.rows[i] = 16;
    }
    // GCC 12 does not see the configuration load read c, and drops the stores above without this.
    asm volatile("" : : "r"(&c) : "memory");
    _tile_loadconfig(&c);
}
LONGATTN_AMX void amx_end() { _tile_release(); }

// S[16 MT rows][32 keys] = Q K^T: q holds bf16 rows of `chunks` x 32 dims, q_rs apart; kt the first of
// two packed key tiles, kt_stride bf16 apart.
template <int MT>
LONGATTN_AMX void amx_scores(std::int64_t chunks, const std::uint16_t* q, std::int64_t q_rs, const std::uint16_t* kt,
                             std::int64_t kt_stride, float* s, std::int64_t s_rs) {
    _tile_zero(0);
    _tile_zero(1);
    if constexpr (MT > 1) {
        _tile_zero(2);
        _tile_zero(3);
    }
    for (std::int64_t c = 0; c < chunks; ++c) {
        _tile_loadd(4, q + c * 32, q_rs * 2);
        _tile_loadd(6, kt + c * kAmxTile, 64);
        _tile_loadd(7, kt + kt_stride + c * kAmxTile, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        if constexpr (MT > 1) {
            _tile_loadd(5, q + 16 * q_rs + c * 32, q_rs * 2);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
    }
    _tile_stored(0, s, s_rs * 4);
    _tile_stored(1, s + 16, s_rs * 4);
    if constexpr (MT > 1) {
        _tile_stored(2, s + 16 * s_rs, s_rs * 4);
        _tile_stored(3, s + 16 * s_rs + 16, s_rs * 4);
    }
}

// P[16 rows][c0, c1) (fp32, a multiple of 32 keys) to bf16 hi and lo = bf16(P - hi).
LONGATTN_AMX void amx_split_p(const float* s, std::int64_t s_rs, std::int64_t c0, std::int64_t c1, std::uint16_t* hi,
                              std::uint16_t* lo, std::int64_t p_rs) {
    for (int r = 0; r < 16; ++r)
        for (std::int64_t j = c0; j < c1; j += 32) {
            const vf a = load(s + r * s_rs + j), b = load(s + r * s_rs + j + 16);
            // hi in fp32: the same round to nearest even as the conversion (P is finite or NaN, and a
            // NaN's lo is NaN either way).
            const auto round_bf16 = [](vf x) {
                const vi u = (vi)x;
                return (vf)((u + 0x7fff + ((u >> 16) & 1)) & ~0xffff);
            };
            const __m512i h = (__m512i)_mm512_cvtne2ps_pbh((__m512)b, (__m512)a);
            const __m512i l = (__m512i)_mm512_cvtne2ps_pbh((__m512)(b - round_bf16(b)), (__m512)(a - round_bf16(a)));
            _mm512_storeu_si512(hi + r * p_rs + j, h);
            _mm512_storeu_si512(lo + r * p_rs + j, l);
        }
}

// O[16 rows][16 W dims] += (hi + lo)[16 rows][32 kc0, 32 kc1) V, vt the first packed V tile of the first
// of W dim tiles (vt_stride bf16 apart).
template <int W>
LONGATTN_AMX void amx_pv(std::int64_t kc0, std::int64_t kc1, const std::uint16_t* hi, const std::uint16_t* lo,
                         std::int64_t p_rs, const std::uint16_t* vt, std::int64_t vt_stride, float* o,
                         std::int64_t o_rs) {
    _tile_loadd(0, o, o_rs * 4);
    if constexpr (W > 1) _tile_loadd(1, o + 16, o_rs * 4);
    if constexpr (W > 2) _tile_loadd(2, o + 32, o_rs * 4);
    if constexpr (W > 3) _tile_loadd(3, o + 48, o_rs * 4);
    for (std::int64_t kc = kc0; kc < kc1; ++kc) {
        _tile_loadd(4, hi + kc * 32, p_rs * 2);
        _tile_loadd(5, lo + kc * 32, p_rs * 2);
        const std::uint16_t* v = vt + kc * kAmxTile;
        _tile_loadd(6, v, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(0, 5, 6);
        if constexpr (W > 1) {
            _tile_loadd(7, v + vt_stride, 64);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(1, 5, 7);
        }
        if constexpr (W > 2) {
            _tile_loadd(6, v + 2 * vt_stride, 64);
            _tile_dpbf16ps(2, 4, 6);
            _tile_dpbf16ps(2, 5, 6);
        }
        if constexpr (W > 3) {
            _tile_loadd(7, v + 3 * vt_stride, 64);
            _tile_dpbf16ps(3, 4, 7);
            _tile_dpbf16ps(3, 5, 7);
        }
    }
    _tile_stored(0, o, o_rs * 4);
    if constexpr (W > 1) _tile_stored(1, o + 16, o_rs * 4);
    if constexpr (W > 2) _tile_stored(2, o + 32, o_rs * 4);
    if constexpr (W > 3) _tile_stored(3, o + 48, o_rs * 4);
}
#endif

// Everything a task reads; built once per call.
struct FwdCall {
    const FwdParams* p = nullptr;
    std::int64_t B = 0, Sq = 0, Sk = 0, Hq = 0, Hkv = 0, D = 0, Dp = 0;
    Blocking blk{};
    std::int64_t nqb = 0, nkb = 0;              // query blocks, key blocks
    float scale = 1.0f;                         // softmax scale, > 0
    float smul = 1.0f;                          // natural score per unit of stored score: scale, or 1 once
                                                // softcap or ALiBi have turned the stored score natural
    float c2 = kLog2e;                          // smul * log2(e): stored-score units to the exponent's
    bool general = false;                       // softcap or ALiBi: transform scores before the softmax
    float softcap = 0.0f;
    bool amx = false;                           // AMX tiles (bf16 q, k, v): the packed blocks hold bf16
    bool bf16k = false;                         // AVX512-BF16 scores (bf16 q, k): packed keys hold bf16
    bool bf16v = false;                         // and O += P V by AVX512-BF16 dot products (bf16 v too), P
                                                // rounded to bf16: packed values hold bf16 key pairs
    std::int64_t dq = 0;                        // bf16 per Q row: the head dim rounded up to 32 (AMX) or 2
    float* kpack = nullptr;
    float* vpack = nullptr;
    std::int64_t kblock_sz = 0, vblock_sz = 0;  // floats per packed key block
    std::int64_t group0 = 0;                    // first (batch, kv head) of the packed group, as b * Hkv + hk
    // Per key block of the group: 0 not packed, 1 being packed, 2 packed. A block is packed by the first
    // task that needs it, just before its use, so a window's blocks are still in cache when they are read.
    std::atomic<std::uint8_t>* packed = nullptr;
    HullTree keys;  // position hulls of the key blocks (longattn/block_plan.hpp)

    float* kblock(std::int64_t b, std::int64_t hk, std::int64_t kb) const {
        return kpack + ((b * Hkv + hk - group0) * nkb + kb) * kblock_sz;
    }
    float* vblock(std::int64_t b, std::int64_t hk, std::int64_t kb) const {
        return vpack + ((b * Hkv + hk - group0) * nkb + kb) * vblock_sz;
    }
};

#if LONGATTN_BF16_TILES
// Key block kb in the tile layouts (above), zeros past the keys and the head dim.
void pack_key_block_amx(const FwdCall& pr, std::int64_t b, std::int64_t hk, std::int64_t kb) {
    const FwdParams& p = *pr.p;
    const std::int64_t D = pr.D, Dp = pr.Dp, bk = pr.blk.bk, chunks = pr.dq / 32, kchunks = bk / 32;
    const std::int64_t j0 = kb * bk, n = std::min(bk, pr.Sk - j0);
    auto* kt = reinterpret_cast<std::uint16_t*>(pr.kblock(b, hk, kb));
    auto* vt = reinterpret_cast<std::uint16_t*>(pr.vblock(b, hk, kb));
    std::fill(kt, kt + bk * pr.dq, std::uint16_t{0});
    std::fill(vt, vt + bk * Dp, std::uint16_t{0});
    const auto* k = static_cast<const std::uint16_t*>(p.k.data);
    const auto* v = static_cast<const std::uint16_t*>(p.v.data);
    for (std::int64_t j = 0; j < n; ++j) {
        const std::uint16_t* krow = k + p.k.offset(b, j0 + j, hk, 0);
        const std::uint16_t* vrow = v + p.v.offset(b, j0 + j, hk, 0);
        std::uint16_t* kdst = kt + (j / 16) * chunks * kAmxTile + (j % 16) * 2;
        std::uint16_t* vdst = vt + (j / 32) * kAmxTile + ((j % 32) / 2) * 32 + j % 2;
        for (std::int64_t d = 0; d < D; ++d) {
            kdst[(d / 32) * kAmxTile + ((d % 32) / 2) * 32 + d % 2] = krow[d];
            vdst[(d / 16) * kchunks * kAmxTile + (d % 16) * 2] = vrow[d];
        }
    }
}
#endif

// The block's rows are first staged (rows.hpp) into rows, the thread's bk x Dp floats (a window reads
// each key block from memory for a few query blocks), and the panels written from them.
void pack_key_block(const FwdCall& pr, std::int64_t b, std::int64_t hk, std::int64_t kb, float* rows) {
#if LONGATTN_BF16_TILES
    if (pr.amx) return pack_key_block_amx(pr, b, hk, kb);
#endif
    const FwdParams& p = *pr.p;
    const std::int64_t D = pr.D, Dp = pr.Dp, bk = pr.blk.bk;
    const std::int64_t j0 = kb * bk, n = std::min(bk, pr.Sk - j0);
    float* kt = pr.kblock(b, hk, kb);
    float* vp = pr.vblock(b, hk, kb);
    const auto* rows16 = reinterpret_cast<const std::uint16_t*>(rows);  // bf16 rows, stride 2 Dp
    stage_rows(p.k, b, hk, j0, n, D, Dp, pr.bf16k, rows);
    if (pr.bf16k) {  // K panels of bf16 dim pairs (dot_tile_bf16's B), zeros past the keys and the head dim
        auto* kt16 = reinterpret_cast<std::uint16_t*>(kt);
        std::fill(kt16, kt16 + bk * pr.dq, std::uint16_t{0});
        for (std::int64_t j = 0; j < n; ++j) {
            const std::uint16_t* krow = rows16 + j * 2 * Dp;
            std::uint16_t* kpan = kt16 + (j / kPanel) * pr.dq * kPanel + (j % kPanel) * 2;
            for (std::int64_t d = 0; d < D; ++d) kpan[(d / 2) * 2 * kPanel + d % 2] = krow[d];
        }
    } else {
        for (std::int64_t j0p = 0; j0p < bk; j0p += kPanel)
            for (std::int64_t d = 0; d < D; ++d) {
                float* kpan = kt + (j0p / kPanel) * D * kPanel + d * kPanel;
                for (std::int64_t j = 0; j < kPanel; ++j) kpan[j] = j0p + j < n ? rows[(j0p + j) * Dp + d] : 0.0f;
            }
    }
    stage_rows(p.v, b, hk, j0, n, D, Dp, pr.bf16v, rows);
    if (pr.bf16v) {  // V panels of bf16 key pairs ([key pair][w][2] per panel of w dims), zeros past the keys
                     // and the head dim
        auto* vp16 = reinterpret_cast<std::uint16_t*>(vp);
        std::fill(vp16, vp16 + bk * Dp, std::uint16_t{0});
        for (std::int64_t j = 0; j < n; ++j) {
            const std::uint16_t* vrow = rows16 + j * 2 * Dp;
            for (std::int64_t d = 0; d < D; ++d) {
                const std::int64_t c0 = d / kPanel * kPanel, w = std::min<std::int64_t>(kPanel, Dp - c0);
                vp16[c0 * bk + (j / 2) * 2 * w + 2 * (d - c0) + j % 2] = vrow[d];
            }
        }
        return;
    }
    for (std::int64_t j = 0; j < bk; ++j) {
        float* row = rows + j * Dp;
        if (j < n)
            std::fill(row + D, row + Dp, 0.0f);
        else
            std::fill(row, row + Dp, 0.0f);
        for (std::int64_t c0 = 0; c0 < Dp; c0 += kPanel) {
            const std::int64_t w = std::min<std::int64_t>(kPanel, Dp - c0);
            std::copy(row + c0, row + c0 + w, vp + c0 * bk + j * w);
        }
    }
}

void ensure_packed(const FwdCall& pr, std::int64_t b, std::int64_t hk, std::int64_t kb, float* row) {
    std::atomic<std::uint8_t>& st = pr.packed[(b * pr.Hkv + hk - pr.group0) * pr.nkb + kb];
    if (st.load(std::memory_order_acquire) == 2) return;
    std::uint8_t expected = 0;
    if (st.compare_exchange_strong(expected, 1, std::memory_order_acquire)) {
        pack_key_block(pr, b, hk, kb, row);
        st.store(2, std::memory_order_release);
        return;
    }
    while (st.load(std::memory_order_acquire) != 2) std::this_thread::yield();  // another task packs it
}

// Per-thread scratch for one query block.
struct ThreadBuffers {
    Buffer q, s, o, rmax, alpha, kposf, tmp;
    Buffer q16, p16;  // AMX and AVX512-BF16: Q rows in bf16; AMX: P as bf16 hi then lo
    std::vector<float> m, l;
    std::vector<std::uint8_t> mask;
    std::vector<std::int64_t> vlo, vhi;  // per row group: key vectors [vlo, vhi) of the block it needs
    std::vector<std::int64_t> ia, ib;    // per row of a partial block masked by bounds: keys [ia, ib)
    std::vector<std::int64_t> pa, pz;    // per row of an interval pattern: allowed positions [pa, pz)
    std::vector<TileRun> blocks;

    explicit ThreadBuffers(const FwdCall& pr)
        : q(static_cast<std::size_t>(pr.blk.bq * pr.D)),
          s(static_cast<std::size_t>(pr.blk.bq * pr.blk.bk)),
          o(static_cast<std::size_t>(pr.blk.bq * pr.Dp)),
          rmax(static_cast<std::size_t>(pr.blk.bq * kLanes)),
          alpha(static_cast<std::size_t>(pr.blk.bq)),
          kposf(static_cast<std::size_t>(pr.blk.bk)),
          tmp(static_cast<std::size_t>(pr.blk.bk * pr.Dp)),
          m(static_cast<std::size_t>(pr.blk.bq)),
          l(static_cast<std::size_t>(pr.blk.bq)),
          mask(static_cast<std::size_t>(pr.blk.bq * pr.blk.bk)),
          vlo(static_cast<std::size_t>(pr.blk.bq / kRows)),
          vhi(static_cast<std::size_t>(pr.blk.bq / kRows)),
          ia(static_cast<std::size_t>(pr.blk.bq)),
          ib(static_cast<std::size_t>(pr.blk.bq)),
          pa(static_cast<std::size_t>(pr.blk.bq)),
          pz(static_cast<std::size_t>(pr.blk.bq)) {
        if (pr.amx || pr.bf16k) q16.reserve(static_cast<std::size_t>(pr.blk.bq * pr.dq / 2));
        if (pr.amx) p16.reserve(static_cast<std::size_t>(pr.blk.bq * pr.blk.bk));
        if (pr.bf16v) p16.reserve(static_cast<std::size_t>(pr.blk.bq * pr.blk.bk / 2));
    }
};

// Raw scores to natural ones: scale, softcap, ALiBi.
void transform_row(const FwdCall& pr, float* s, std::int64_t ncols, float slope, float qposf, const float* kposf) {
    const float cap = pr.softcap;
    for (std::int64_t j = 0; j < ncols; j += kLanes) {
        vf x = load(s + j) * pr.scale;
        if (cap > 0.0f) {
            // tanh(y) = (e^{2y} - 1) / (e^{2y} + 1); |y| <= 9 already gives tanh = +-1 in fp32.
            vf y = x * (1.0f / cap);
            y = cpu::clamp(y, -9.0f, 9.0f);
            const vf e = cpu::exp2v(y * (2.0f * kLog2e));
            x = cap * ((e - 1.0f) / (e + 1.0f));
        }
        if (slope != 0.0f) {
            const vf dist = qposf - load(kposf + j);
            x -= slope * (dist < 0.0f ? -dist : dist);
        }
        store(s + j, x);
    }
}

// One task: query block qb of head h of batch entry b, on the calling thread's buffers. Its rows carry
// the online-softmax state (m, l, O * l) across the key blocks.
class Task {
public:
    Task(const FwdCall& pr, ThreadBuffers& sc, std::int64_t b, std::int64_t h, std::int64_t qb)
        : pr_(pr), p_(*pr.p), sc_(sc), b_(b), h_(h), hk_(h / (pr.Hq / pr.Hkv)), i0_(qb * pr.blk.bq),
          nq_(std::min(pr.blk.bq, pr.Sq - i0_)), rows_(pr.amx ? 16 : kRows), nq_pad_(round_up(nq_, rows_)),
          ngroups_(nq_pad_ / rows_),
          qpos_(p_.q_pos + i0_), intervals_(p_.pattern->rows_are_intervals()),
          slope_(p_.pattern->has_alibi() ? p_.pattern->alibi_slope(p_.head_offset + h) : 0.0f) {}

    void run() {
        begin();
        sc_.blocks.clear();
        if (intervals_) {
            RowIntervals(*p_.pattern, qpos_, nq_, sc_.pa.data(), sc_.pz.data()).collect(pr_.keys, sc_.blocks);
        } else {
            const auto [qmn, qmx] = std::minmax_element(qpos_, qpos_ + nq_);
            collect_tiles(*p_.pattern, pr_.keys, false, *qmn, *qmx + 1, sc_.blocks);
        }
        for (const TileRun& run : sc_.blocks)
            for (std::int64_t kb = run.first; kb < run.first + run.count; ++kb) attend(kb, run.cls);
        finish();
    }

private:
    // Q rows (zero padding rows): as bf16 pairs where the scores are bf16 dot products, else in fp32;
    // and the running state: fresh, or continued from the partial.
    void begin() {
        const std::int64_t D = pr_.D, ldo = pr_.Dp;
        float* O = sc_.o.get();
#if LONGATTN_BF16_TILES
        if (pr_.amx || pr_.bf16k) {
            auto* q16 = reinterpret_cast<std::uint16_t*>(sc_.q16.get());
            const auto* q = static_cast<const std::uint16_t*>(p_.q.data);
            std::fill(q16, q16 + nq_pad_ * pr_.dq, std::uint16_t{0});
            for (std::int64_t r = 0; r < nq_; ++r) {
                const std::uint16_t* row = q + p_.q.offset(b_, i0_ + r, h_, 0);
                std::copy(row, row + D, q16 + r * pr_.dq);
            }
        } else
#endif
        {
            float* Q = sc_.q.get();
            for (std::int64_t r = 0; r < nq_pad_; ++r) {
                if (r < nq_)
                    load_row(p_.q.data, p_.q.dtype, p_.q.offset(b_, i0_ + r, h_, 0), D, 1.0f, Q + r * D);
                else
                    std::fill(Q + r * D, Q + (r + 1) * D, 0.0f);
            }
        }
        std::fill(O, O + nq_pad_ * ldo, 0.0f);
        std::fill(sc_.m.begin(), sc_.m.end(), kNegInf);
        std::fill(sc_.l.begin(), sc_.l.end(), 0.0f);
        if (!p_.accumulate) return;
        // Continue the online softmax from the given partial: with m = LSE in stored-score units (rounded)
        // and l = exp(LSE - m * smul) (1 up to m's rounding, in double), the state is (m, l, O * l); a row
        // without keys so far stays empty, a NaN partial stays NaN.
        for (std::int64_t r = 0; r < nq_; ++r) {
            const std::int64_t li = lse_index(r);
            const float lse_hi = p_.lse[li];
            if (lse_hi == kNegInf) continue;
            const double lse = static_cast<double>(lse_hi) + (p_.lse_lo ? p_.lse_lo[li] : 0.0f);
            const float m = static_cast<float>(lse / pr_.smul);
            sc_.m[static_cast<std::size_t>(r)] = m;
            const float l = static_cast<float>(std::exp(lse - static_cast<double>(m) * pr_.smul));
            sc_.l[static_cast<std::size_t>(r)] = l;
            const float* prev = p_.o.ptr<float>() + p_.o.offset(b_, i0_ + r, h_, 0);
            for (std::int64_t d = 0; d < D; ++d) O[r * ldo + d] = prev[d] * l;
        }
    }

    // Key block kb of class cls into the running state.
    void attend(std::int64_t kb, BlockClass cls) {
        const std::int64_t j0 = kb * pr_.blk.bk, n = std::min(pr_.blk.bk, pr_.Sk - j0);
        const std::int64_t nvec = (n + kLanes - 1) / kLanes;
        ensure_packed(pr_, b_, hk_, kb, sc_.tmp.get());
        const bool partial = cls == BlockClass::partial;
        // Causal, document and window masks over consecutive keys are one interval per row.
        const std::int64_t kbase = pr_.keys.run_start(kb);
        const bool by_bounds = intervals_ && kbase != kScattered;
        for (std::int64_t g = 0; g < ngroups_; ++g) {
            sc_.vlo[g] = 0;
            sc_.vhi[g] = nvec;
        }
        if (partial) group_bounds(j0, n, kbase, by_bounds);
        if (pr_.amx) {
            // The tile products take keys 32 at a time: each group's vectors widen to even bounds (the
            // keys past n are packed as zeros and masked below).
            for (std::int64_t g = 0; g < ngroups_; ++g) {
                if (sc_.vlo[g] >= sc_.vhi[g]) continue;
                sc_.vlo[g] &= ~std::int64_t{1};
                sc_.vhi[g] = std::min(round_up(sc_.vhi[g], 2), pr_.blk.bk / kLanes);
            }
        }
        scores(pr_.kblock(b_, hk_, kb), nvec);
        if (slope_ != 0.0f) {
            float* kf = sc_.kposf.get();
            for (std::int64_t j = 0; j < n; ++j) kf[j] = static_cast<float>(p_.k_pos[j0 + j] - qpos_[0]);
            for (std::int64_t j = n; j < nvec * kLanes; ++j) kf[j] = 0.0f;
        }
        // The AMX scores come without the lane-wise row maxima: the masking pass finds them.
        softmax(n, partial, by_bounds, pr_.amx || pr_.general || partial || n % kLanes != 0);
        accumulate_pv(pr_.vblock(b_, hk_, kb), n);
    }

    // A partial block is masked row by row before any arithmetic: each group of kRows rows then computes
    // only the key vectors between its first and last allowed key, which on a window's edge or the causal
    // diagonal is about half the block.
    void group_bounds(std::int64_t j0, std::int64_t n, std::int64_t kbase, bool by_bounds) {
        const std::int64_t bk = pr_.blk.bk;
        for (std::int64_t g = 0; g < ngroups_; ++g) {
            std::int64_t lo = n, hi = 0;
            for (std::int64_t r = g * rows_; r < std::min(nq_, (g + 1) * rows_); ++r) {
                std::int64_t a = 0, z = n;
                if (by_bounds) {
                    a = std::clamp<std::int64_t>(sc_.pa[static_cast<std::size_t>(r)] - kbase, 0, n);
                    z = std::clamp<std::int64_t>(sc_.pz[static_cast<std::size_t>(r)] - kbase, a, n);
                    sc_.ia[static_cast<std::size_t>(r)] = a;
                    sc_.ib[static_cast<std::size_t>(r)] = z;
                } else {
                    std::uint8_t* mk = sc_.mask.data() + r * bk;
                    p_.pattern->mask_row(qpos_[r], p_.k_pos + j0, n, mk);
                    while (a < n && !mk[a]) ++a;
                    while (z > a && !mk[z - 1]) --z;
                }
                if (a < z) {
                    lo = std::min(lo, a);
                    hi = std::max(hi, z);
                }
            }
            sc_.vlo[g] = lo < hi ? lo / kLanes : 0;
            sc_.vhi[g] = lo < hi ? (hi + kLanes - 1) / kLanes : 0;
        }
    }

    // S = Q K^T on each row group's key vectors, with the lane-wise row maxima.
    void scores(const float* kt, std::int64_t nvec) {
#if LONGATTN_BF16_TILES
        if (pr_.amx) return scores_amx(reinterpret_cast<const std::uint16_t*>(kt));
#endif
        const std::int64_t D = pr_.D, lds = pr_.blk.bk;
        const float* Q = sc_.q.get();
        float* S = sc_.s.get();
        float* rmax = sc_.rmax.get();
        for (std::int64_t r = 0; r < nq_pad_; ++r) store(rmax + r * kLanes, splat(kNegInf));
        for (std::int64_t pn = 0; pn * kPanelVecs < nvec; ++pn) {
            const float* kpan = kt + pn * D * kPanel;
            for (std::int64_t g = 0; g < ngroups_; ++g) {
                const std::int64_t v0 = std::max(sc_.vlo[g], pn * kPanelVecs);
                const std::int64_t v1 = std::min(sc_.vhi[g], (pn + 1) * kPanelVecs);
                if (v0 >= v1) continue;
                const std::int64_t r = g * kRows;
                float* sv = S + r * lds + v0 * kLanes;
#if LONGATTN_BF16_TILES
                if (pr_.bf16k) {
                    scores_bf16(reinterpret_cast<const std::uint16_t*>(kt), pn, v0, v1, r, sv);
                    continue;
                }
#endif
                const float* ktv = kpan + (v0 - pn * kPanelVecs) * kLanes;
                switch (v1 - v0) {
                    case 4: score_tile<4>(D, Q + r * D, D, ktv, sv, lds, rmax + r * kLanes); break;
                    case 3: score_tile<3>(D, Q + r * D, D, ktv, sv, lds, rmax + r * kLanes); break;
                    case 2: score_tile<2>(D, Q + r * D, D, ktv, sv, lds, rmax + r * kLanes); break;
                    default: score_tile<1>(D, Q + r * D, D, ktv, sv, lds, rmax + r * kLanes); break;
                }
            }
        }
    }

#if LONGATTN_BF16_TILES
    // S for rows [r, r + kRows) on key vectors [v0, v1) of panel pn, by AVX512-BF16 dot products.
    void scores_bf16(const std::uint16_t* kt, std::int64_t pn, std::int64_t v0, std::int64_t v1, std::int64_t r,
                     float* sv) {
        const std::int64_t pairs = pr_.dq / 2, lds = pr_.blk.bk;
        const auto* q = reinterpret_cast<const std::uint16_t*>(sc_.q16.get()) + r * pr_.dq;
        const std::uint16_t* ktv = kt + pn * pr_.dq * kPanel + (v0 - pn * kPanelVecs) * 2 * kLanes;
        float* rmax = sc_.rmax.get() + r * kLanes;
        constexpr std::int64_t ldk = 2 * kPanel;
        switch (v1 - v0) {
            case 4: dot_tile_bf16<kRows, 4>(pairs, q, pr_.dq, ktv, ldk, sv, lds, rmax); break;
            case 3: dot_tile_bf16<kRows, 3>(pairs, q, pr_.dq, ktv, ldk, sv, lds, rmax); break;
            case 2: dot_tile_bf16<kRows, 2>(pairs, q, pr_.dq, ktv, ldk, sv, lds, rmax); break;
            default: dot_tile_bf16<kRows, 1>(pairs, q, pr_.dq, ktv, ldk, sv, lds, rmax); break;
        }
    }

    // S by tiles: two row groups at once where their key ranges agree (every unmasked block).
    void scores_amx(const std::uint16_t* kt) {
        const std::int64_t lds = pr_.blk.bk, chunks = pr_.dq / 32, kt_stride = chunks * kAmxTile;
        const auto* q16 = reinterpret_cast<const std::uint16_t*>(sc_.q16.get());
        float* S = sc_.s.get();
        for (std::int64_t g = 0; g < ngroups_; ++g) {
            const std::int64_t v0 = sc_.vlo[g], v1 = sc_.vhi[g];
            if (v0 >= v1) continue;
            const bool pair = g + 1 < ngroups_ && sc_.vlo[g + 1] == v0 && sc_.vhi[g + 1] == v1;
            const std::uint16_t* q = q16 + g * 16 * pr_.dq;
            for (std::int64_t v = v0; v < v1; v += 2) {
                float* sv = S + g * 16 * lds + v * kLanes;
                if (pair)
                    amx_scores<2>(chunks, q, pr_.dq, kt + v * kt_stride, kt_stride, sv, lds);
                else
                    amx_scores<1>(chunks, q, pr_.dq, kt + v * kt_stride, kt_stride, sv, lds);
            }
            if (pair) ++g;
        }
    }

    // O = alpha * O + P V by tiles, P split into bf16 hi + lo.
    void accumulate_pv_amx(const std::uint16_t* vt) {
        const std::int64_t Dp = pr_.Dp, bk = pr_.blk.bk, vt_stride = (bk / 32) * kAmxTile, ndt = Dp / 16;
        const float* S = sc_.s.get();
        float* O = sc_.o.get();
        const float* alpha = sc_.alpha.get();
        auto* hi = reinterpret_cast<std::uint16_t*>(sc_.p16.get());
        std::uint16_t* lo = hi + pr_.blk.bq * bk;
        for (std::int64_t g = 0; g < ngroups_; ++g) {
            const std::int64_t c0 = sc_.vlo[g] * kLanes, c1 = sc_.vhi[g] * kLanes;
            if (c0 >= c1) continue;
            const std::int64_t r0 = g * 16;
            for (std::int64_t r = r0; r < r0 + 16; ++r)
                if (alpha[r] != 1.0f)
                    for (std::int64_t d = 0; d < Dp; d += kLanes) store(O + r * Dp + d, alpha[r] * load(O + r * Dp + d));
            amx_split_p(S + r0 * bk, bk, c0, c1, hi + r0 * bk, lo + r0 * bk, bk);
            for (std::int64_t dt = 0; dt < ndt; dt += 4) {
                const std::uint16_t* v = vt + dt * vt_stride;
                const std::uint16_t *h = hi + r0 * bk, *l = lo + r0 * bk;
                float* o = O + r0 * Dp + dt * 16;
                switch (std::min<std::int64_t>(4, ndt - dt)) {
                    case 4: amx_pv<4>(c0 / 32, c1 / 32, h, l, bk, v, vt_stride, o, Dp); break;
                    case 3: amx_pv<3>(c0 / 32, c1 / 32, h, l, bk, v, vt_stride, o, Dp); break;
                    case 2: amx_pv<2>(c0 / 32, c1 / 32, h, l, bk, v, vt_stride, o, Dp); break;
                    default: amx_pv<1>(c0 / 32, c1 / 32, h, l, bk, v, vt_stride, o, Dp); break;
                }
            }
        }
    }
#endif

    // Scores to P in place (transform and mask first where `fix`), the new row maxima and sums, and
    // alpha: the rescale of the rows' earlier O.
    void softmax(std::int64_t n, bool partial, bool by_bounds, bool fix) {
        const std::int64_t lds = pr_.blk.bk;
        float* S = sc_.s.get();
        const float* rmax = sc_.rmax.get();
        float* alpha = sc_.alpha.get();
        for (std::int64_t r = 0; r < nq_pad_; ++r) {
            const std::int64_t g = r / rows_;
            const std::int64_t c0 = sc_.vlo[g] * kLanes, c1 = sc_.vhi[g] * kLanes;
            alpha[r] = 1.0f;
            if (c0 >= c1) continue;
            float* srow = S + r * lds;
            if (pr_.amx && r >= nq_) {  // a padding row of the tile: P = 0
                std::fill(srow + c0, srow + c1, 0.0f);
                continue;
            }
            float mblk;
            if (fix && r < nq_) {
                if (pr_.general)
                    transform_row(pr_, srow + c0, c1 - c0, slope_, static_cast<float>(qpos_[r] - qpos_[0]),
                                  sc_.kposf.get() + c0);
                if (partial && by_bounds) {
                    const std::int64_t a = sc_.ia[static_cast<std::size_t>(r)], z = sc_.ib[static_cast<std::size_t>(r)];
                    for (std::int64_t j = c0; j < std::min(a, c1); ++j) srow[j] = kNegInf;
                    for (std::int64_t j = std::max(z, c0); j < std::min(c1, n); ++j) srow[j] = kNegInf;
                } else if (partial) {
                    const std::uint8_t* mk = sc_.mask.data() + r * lds;
                    for (std::int64_t j = c0; j < std::min(c1, n); ++j) srow[j] = mk[j] ? srow[j] : kNegInf;
                }
                for (std::int64_t j = std::max(c0, n); j < c1; ++j) srow[j] = kNegInf;
                vf mv = splat(kNegInf);
                for (std::int64_t j = c0; j < c1; j += kLanes) mv = vmax(mv, load(srow + j));
                mblk = hmax(mv);
            } else {
                mblk = hmax(load(rmax + r * kLanes));
            }
            const float mold = sc_.m[r];
            // std::max keeps its first argument when either is NaN: a NaN row maximum stays NaN.
            const float mnew = std::max(mold, mblk);
            if (mnew == kNegInf) {
                // Nothing allowed so far in this row: P = 0 keeps O = 0 and l = 0. But the max skips NaN: an
                // allowed score that is NaN makes the row NaN.
                bool nan = false;
                for (std::int64_t j = c0; j < c1; ++j) nan = nan || std::isnan(srow[j]);
                if (nan) sc_.m[r] = sc_.l[r] = std::numeric_limits<float>::quiet_NaN();
                std::fill(srow + c0, srow + c1, 0.0f);
                continue;
            }
            alpha[r] = std::exp2((mold - mnew) * pr_.c2);
            const vf mv = splat(mnew);
            const auto expo = [&](const float* x) { return cpu::exp2v((load(x) - mv) * pr_.c2); };
            vf sum0{}, sum1{};
            std::int64_t j = c0;
            for (; j + 2 * kLanes <= c1; j += 2 * kLanes) {
                const vf e0 = expo(srow + j);
                const vf e1 = expo(srow + j + kLanes);
                store(srow + j, e0);
                store(srow + j + kLanes, e1);
                sum0 += e0;
                sum1 += e1;
            }
            if (j < c1) {
                const vf e0 = expo(srow + j);
                store(srow + j, e0);
                sum0 += e0;
            }
            sc_.l[r] = sc_.l[r] * alpha[r] + cpu::hsum(sum0 + sum1);
            sc_.m[r] = mnew;
        }
    }

    // O = alpha * O + P V over each row group's keys.
    void accumulate_pv(const float* vp, std::int64_t n) {
#if LONGATTN_BF16_TILES
        if (pr_.amx) return accumulate_pv_amx(reinterpret_cast<const std::uint16_t*>(vp));
#endif
        const std::int64_t Dp = pr_.Dp, bk = pr_.blk.bk, lds = bk, ldo = Dp;
        const float* S = sc_.s.get();
        float* O = sc_.o.get();
        const float* alpha = sc_.alpha.get();
#if LONGATTN_BF16_TILES
        if (pr_.bf16v) return accumulate_pv_bf16(reinterpret_cast<const std::uint16_t*>(vp), n);
#endif
        for (std::int64_t d0 = 0; d0 < Dp; d0 += kPanel) {
            const std::int64_t w = std::min<std::int64_t>(kPanel, Dp - d0);
            const float* vpan = vp + d0 * bk;
            for (std::int64_t g = 0; g < ngroups_; ++g) {
                const std::int64_t k0 = sc_.vlo[g] * kLanes, k1 = std::min(sc_.vhi[g] * kLanes, n);
                if (k0 >= k1) continue;
                const std::int64_t r = g * rows_;
                const float* pg = S + r * lds + k0;
                const float* vg = vpan + k0 * w;
                float* og = O + r * ldo + d0;
                switch (w / kLanes) {
                    case 4: pv_tile<4>(k1 - k0, pg, lds, vg, og, ldo, alpha + r); break;
                    case 3: pv_tile<3>(k1 - k0, pg, lds, vg, og, ldo, alpha + r); break;
                    case 2: pv_tile<2>(k1 - k0, pg, lds, vg, og, ldo, alpha + r); break;
                    default: pv_tile<1>(k1 - k0, pg, lds, vg, og, ldo, alpha + r); break;
                }
            }
        }
    }

#if LONGATTN_BF16_TILES
    // As accumulate_pv with P rounded to bf16 (to nearest even) and V in key pairs. A key past n has P = 0
    // (masked in softmax) and a zero V pair.
    void accumulate_pv_bf16(const std::uint16_t* vp, std::int64_t n) {
        const std::int64_t Dp = pr_.Dp, bk = pr_.blk.bk, ldo = Dp;
        const float* S = sc_.s.get();
        std::uint16_t* P = reinterpret_cast<std::uint16_t*>(sc_.p16.get());
        float* O = sc_.o.get();
        const float* alpha = sc_.alpha.get();
        for (std::int64_t g = 0; g < ngroups_; ++g) {
            const std::int64_t k0 = sc_.vlo[g] * kLanes, k1 = round_up(std::min(sc_.vhi[g] * kLanes, n), 2);
            if (k0 >= k1) continue;
            const std::int64_t r = g * rows_;
            for (std::int64_t i = r; i < r + rows_; ++i)
                for (std::int64_t j = k0; j < k1; j += kLanes) store_bf16(P + i * bk + j, load(S + i * bk + j));
            for (std::int64_t d0 = 0; d0 < Dp; d0 += kPanel) {
                const std::int64_t w = std::min<std::int64_t>(kPanel, Dp - d0);
                const std::uint16_t* pg = P + r * bk + k0;
                const std::uint16_t* vg = vp + d0 * bk + k0 * w;
                float* og = O + r * ldo + d0;
                const std::int64_t pairs = (k1 - k0) / 2;
                switch (w / kLanes) {
                    case 4: pv_tile_bf16<4>(pairs, pg, bk, vg, og, ldo, alpha + r); break;
                    case 3: pv_tile_bf16<3>(pairs, pg, bk, vg, og, ldo, alpha + r); break;
                    case 2: pv_tile_bf16<2>(pairs, pg, bk, vg, og, ldo, alpha + r); break;
                    default: pv_tile_bf16<1>(pairs, pg, bk, vg, og, ldo, alpha + r); break;
                }
            }
        }
    }
#endif

    // O = (O * l) / l and LSE rows out.
    void finish() {
        const float* O = sc_.o.get();
        for (std::int64_t r = 0; r < nq_; ++r) {
            const float l = sc_.l[r];
            const std::int64_t li = lse_index(r);
            const std::int64_t off = p_.o.offset(b_, i0_ + r, h_, 0);
            if (l != 0.0f) {  // l is NaN on a row that met a NaN: O and LSE are NaN
                store_row(p_.o.data, p_.o.dtype, off, pr_.D, 1.0f / l, O + r * pr_.Dp);
                // m * smul + ln(l) in double, rounded once.
                const double lse = static_cast<double>(sc_.m[r]) * pr_.smul + std::log(static_cast<double>(l));
                p_.lse[li] = static_cast<float>(lse);
                if (p_.lse_lo) p_.lse_lo[li] = static_cast<float>(lse - static_cast<double>(p_.lse[li]));
            } else {
                store_row(p_.o.data, p_.o.dtype, off, pr_.D, 0.0f, O + r * pr_.Dp);
                p_.lse[li] = kNegInf;
                if (p_.lse_lo) p_.lse_lo[li] = 0.0f;
            }
        }
    }

    std::int64_t lse_index(std::int64_t r) const { return (b_ * pr_.Hq + h_) * pr_.Sq + i0_ + r; }

    const FwdCall& pr_;
    const FwdParams& p_;
    ThreadBuffers& sc_;
    const std::int64_t b_, h_, hk_, i0_, nq_;
    const std::int64_t rows_;  // query rows per row group: the register tile's, or AMX's 16
    const std::int64_t nq_pad_, ngroups_;
    const std::int64_t* qpos_;
    const bool intervals_;
    const float slope_;
};

}  // namespace

namespace {
// The tile products for bf16 inputs: AMX (where q, k and v are bf16, else as dot), AVX512-BF16 dot
// products for the scores (bf16 q and k), or the fp32 tiles.
enum class Bf16Tiles { none, dot, amx };

void forward(const FwdParams& p, Bf16Tiles tiles) {
    validate(p);
    FwdCall pr;
    pr.p = &p;
    pr.B = p.q.shape[0];
    pr.Sq = p.q.shape[1];
    pr.Hq = p.q.shape[2];
    pr.D = p.q.shape[3];
    pr.Sk = p.k.shape[1];
    pr.Hkv = p.k.shape[2];
    if (pr.B == 0 || pr.Sq == 0 || pr.Hq == 0) return;
    if (p.accumulate && pr.Sk == 0) return;  // nothing to merge in
    pr.Dp = round_up(pr.D, kLanes);
    pr.blk = choose_blocking(*p.pattern);
    pr.nqb = (pr.Sq + pr.blk.bq - 1) / pr.blk.bq;
    pr.nkb = (pr.Sk + pr.blk.bk - 1) / pr.blk.bk;
    pr.general = p.pattern->has_softcap() || p.pattern->has_alibi();
    pr.softcap = p.pattern->has_softcap() ? p.pattern->spec().softcap : 0.0f;
    pr.scale = p.pattern->softmax_scale(pr.D);
    pr.smul = pr.general ? 1.0f : pr.scale;
    pr.c2 = pr.smul * kLog2e;
    pr.kblock_sz = pr.blk.bk * pr.D;
    pr.vblock_sz = pr.blk.bk * pr.Dp;
    const bool qk16 = p.q.dtype == DType::bf16 && p.k.dtype == DType::bf16;
    pr.amx = tiles == Bf16Tiles::amx && qk16 && p.v.dtype == DType::bf16;
    pr.bf16k = tiles != Bf16Tiles::none && qk16 && !pr.amx;  // AMX CPUs have AVX512-BF16 too
    if (pr.amx) {  // bf16 blocks, in floats
        pr.dq = round_up(pr.D, 32);
        pr.kblock_sz = pr.blk.bk * pr.dq / 2;
        pr.vblock_sz = pr.blk.bk * pr.Dp / 2;
    } else if (pr.bf16k) {
        pr.dq = round_up(pr.D, 2);
        pr.kblock_sz = pr.blk.bk * pr.dq / 2;
        pr.bf16v = p.v.dtype == DType::bf16;
        if (pr.bf16v) pr.vblock_sz = pr.blk.bk * pr.Dp / 2;
    }

    const std::int64_t head_floats = pr.nkb * (pr.kblock_sz + pr.vblock_sz);
    const std::int64_t heads = pr.B * pr.Hkv;
    const std::int64_t group = std::clamp<std::int64_t>(kGroupPackFloats / std::max<std::int64_t>(head_floats, 1), 1, heads);
    thread_local Buffer pack;
    pr.kpack = pack.reserve(static_cast<std::size_t>(group * head_floats));
    pr.vpack = pr.kpack + group * pr.nkb * pr.kblock_sz;
    const cpu::TrimOnExit trim{pack, kKeepPackFloats};
    pr.keys = HullTree(p.k_pos, pr.Sk, pr.blk.bk);

    const std::size_t nstates = static_cast<std::size_t>(group * pr.nkb);
    std::unique_ptr<std::atomic<std::uint8_t>[]> packed(new std::atomic<std::uint8_t>[nstates]);
    pr.packed = packed.get();

    const int nt = p.threads > 0 ? p.threads : omp_get_max_threads();
    const std::int64_t G = pr.Hq / pr.Hkv;
#pragma omp parallel num_threads(nt)
    {
#if LONGATTN_BF16_TILES
        if (pr.amx) amx_begin();
#endif
        ThreadBuffers sc(pr);
        for (std::int64_t g0 = 0; g0 < heads; g0 += group) {
            const std::int64_t g1 = std::min(heads, g0 + group);
            // Every thread reads pr.group0 and the pack states only after the single's barrier.
#pragma omp single
            {
                pr.group0 = g0;
                for (std::size_t i = 0; i < nstates; ++i) pr.packed[i].store(0, std::memory_order_relaxed);
            }
            // Later query blocks see more keys under a causal mask: hand them out first.
            const std::int64_t ntasks = (g1 - g0) * G * pr.nqb;
#pragma omp for schedule(dynamic, 1)
            for (std::int64_t t = 0; t < ntasks; ++t) {
                const std::int64_t bh = g0 + t / (G * pr.nqb), qb = pr.nqb - 1 - t % pr.nqb;
                const std::int64_t b = bh / pr.Hkv, h = (bh % pr.Hkv) * G + (t / pr.nqb) % G;
                Task(pr, sc, b, h, qb).run();
            }
        }
#if LONGATTN_BF16_TILES
        if (pr.amx) amx_end();
#endif
    }
}
}  // namespace

void flash_forward(const FwdParams& p) { forward(p, Bf16Tiles::none); }
#if LONGATTN_BF16_TILES
void flash_forward_amx(const FwdParams& p) { forward(p, Bf16Tiles::amx); }
void flash_forward_bf16(const FwdParams& p) { forward(p, Bf16Tiles::dot); }
#endif

}  // namespace LONGATTN_ISA
}  // namespace longattn::kernels::cpu
LONGATTN_ISA_END
