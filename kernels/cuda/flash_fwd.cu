// Flash-attention forward on tensor cores (FlashAttention-2 scheme).
//
// One CTA of 4 warps per (query tile, batch, query head); the warps split the tile's rows (16 per
// m-tile, MT m-tiles each). Q stays in shared memory (and in registers for head dims <= 128); the K and
// V tiles of the plan's non-EMPTY key tiles stream through `stages` shared-memory slots with cp.async, so
// with two slots the next tile loads while this one is computed. Per key tile:
//   S = Q K^T (mma.m16n8k16, fp32), softcap and ALiBi in the natural scale where present, the plan's
//   mask on PARTIAL tiles and past the last key, online softmax (row max m in the scores' stored units,
//   P = exp2((s - m) * unit * log2(e)), rescale of O and of the row sum), P rounded to the storage type,
//   O += P V. The exponent is a difference of scores, never a score rounded at its own magnitude, and
//   LSE = m * unit + ln(l) is formed in double (kernels/cpu/flash_fwd.cpp says why).
// The row sum is kept per thread and reduced over the quad once at the end (the rescale factor is the
// same for the four threads of a row). A row that never sees an allowed key keeps m = -inf and l = 0 and
// is written as O = 0, LSE = -inf; a row that met a NaN has l = NaN and is written as NaN.
#include <cmath>

#include "kernels/cuda/cuda_check.hpp"
#include "kernels/cuda/fragment_layout.hpp"
#include "kernels/cuda/tile_io.cuh"

namespace longattn::kernels::cuda {
namespace {

template <int DP>
struct FwdTiling {
    static constexpr int kThreads = 128;
    static constexpr int kMT = DP == 64 ? 2 : 1;  // 16-row m-tiles per warp
    static constexpr int kRows = 16 * kMT * (kThreads / 32);
    static constexpr int kKeys = static_cast<int>(kKeyTile);
    static constexpr bool kQInRegs = DP <= 128;
    // Keys per pass over a key tile: S of a 64-key tile next to a 32-row or 256-dim O would not fit the
    // 255 registers, so those tilings take the tile in two halves (each its own online-softmax step).
    static constexpr int kSub = DP == 128 ? 64 : 32;
    static constexpr int smem(int stages) { return (kRows + stages * 2 * kKeys) * kPitch<DP> * 2; }
};

template <int DP>
__device__ __forceinline__ void load_kv(const FwdArgs& a, std::uint16_t* sk, int b, int hk, int kt) {
    constexpr int BK = FwdTiling<DP>::kKeys;
    const int k0 = kt * BK, nk = min(BK, a.Sk - k0);
    load_tile<BK, DP, 128>(sk, row_ptr(a.k, b, k0, hk), a.k.ss, nk, a.D, a.k.vec);
    load_tile<BK, DP, 128>(sk + BK * kPitch<DP>, row_ptr(a.v, b, k0, hk), a.v.ss, nk, a.D, a.v.vec);
}

template <int DP, class T>
__global__ void __launch_bounds__(128) flash_fwd_kernel(const FwdArgs a) {
    using Tl = FwdTiling<DP>;
    constexpr int MT = Tl::kMT, BQ = Tl::kRows, BK = Tl::kKeys, LD = kPitch<DP>;
    constexpr int KD = DP / 16;  // k-steps of S = Q K^T
    constexpr int KS = Tl::kSub; // keys per pass
    constexpr int NS = KS / 8;   // n-tiles of S
    constexpr int NO = DP / 8;   // n-tiles of O
    extern __shared__ __align__(16) std::uint16_t smem[];
    std::uint16_t* const sq = smem;
    const auto kv_slot = [&](int st) { return smem + BQ * LD + st * 2 * BK * LD; };

    const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
    const int BH = a.B * a.Hq;
    const int qt = a.plan.order[blockIdx.x / BH];
    const int bh = static_cast<int>(blockIdx.x % BH), b = bh / a.Hq, h = bh % a.Hq, hk = h / (a.Hq / a.Hkv);
    const int q0 = qt * BQ, nq = min(BQ, a.Sq - q0);
    const int seg_end = a.plan.seg_ptr[qt + 1];
    int seg = a.plan.seg_ptr[qt];
    // Accumulating with no key to add: the partial already in (o, lse) is the answer.
    if (a.accumulate && seg == seg_end) return;
    const float slope = a.mod.slopes ? a.mod.slopes[h] : 0.0f;
    const auto row_of = [&](int mt, int half) { return warp * MT * 16 + mt * 16 + frag::c_row(lane, 2 * half); };

    // Row state: m the running max in stored units, l this thread's part of the row sum.
    float m[MT][2], l[MT][2], o[MT][NO][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            m[mt][half] = -INFINITY;
            l[mt][half] = 0.0f;
        }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NO; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) o[mt][nt][i] = 0.0f;

    if (a.accumulate) {
        // Continue from the normalized partial: m = LSE in stored units (rounded), l = exp(LSE - m * unit)
        // (1 up to m's rounding; counted once per quad), O times l.
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int r = row_of(mt, half);
                if (r >= nq) continue;
                const std::int64_t li = (static_cast<std::int64_t>(b) * a.Hq + h) * a.Sq + q0 + r;
                if (a.lse[li] == -INFINITY) continue;
                const double lse = static_cast<double>(a.lse[li]) + (a.lse_lo ? a.lse_lo[li] : 0.0f);
                m[mt][half] = static_cast<float>(lse / a.mod.unit);
                const float lrow = static_cast<float>(exp(lse - static_cast<double>(m[mt][half]) * a.mod.unit));
                l[mt][half] = (lane & 3) == 0 ? lrow : 0.0f;
                const float* orow = static_cast<const float*>(a.o.data) + b * a.o.sb + (q0 + r) * a.o.ss + h * a.o.sh;
#pragma unroll
                for (int nt = 0; nt < NO; ++nt)
#pragma unroll
                    for (int j = 0; j < 2; ++j) {
                        const int c = nt * 8 + frag::c_col(lane, j);
                        if (c < a.D) o[mt][nt][2 * half + j] = orow[c] * lrow;
                    }
            }
    }

    if (seg < seg_end) {
        load_tile<BQ, DP, 128>(sq, row_ptr(a.q, b, q0, h), a.q.ss, nq, a.D, a.q.vec);
        Segment cur = a.plan.segs[seg];
        int off = 0;
        load_kv<DP>(a, kv_slot(0), b, hk, cur.first);
        cp_async_commit();
        const std::uint32_t sq_addr = smem_addr(sq);
        std::uint32_t qf[Tl::kQInRegs ? MT : 1][Tl::kQInRegs ? KD : 1][4];

        for (int e = 0;; ++e) {
            Segment next = cur;
            int nseg = seg, noff = off + 1;
            if (noff == cur.count) {
                ++nseg;
                noff = 0;
                if (nseg < seg_end) next = a.plan.segs[nseg];
            }
            const bool has_next = nseg < seg_end;
            const int st = a.stages == 2 ? (e & 1) : 0;
            if (a.stages == 2 && has_next) {
                // The other slot was released by the barrier that ended the previous tile.
                load_kv<DP>(a, kv_slot(st ^ 1), b, hk, next.first + noff);
                cp_async_commit();
                cp_async_wait<1>();
            } else {
                cp_async_wait<0>();
            }
            __syncthreads();

            if constexpr (Tl::kQInRegs) {
                if (e == 0) {
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                        for (int kk = 0; kk < KD; ++kk)
                            ldmatrix_x4(qf[mt][kk], sq_addr + static_cast<std::uint32_t>(
                                                                  ((warp * MT * 16 + mt * 16 + frag::a_row(lane)) * LD +
                                                                   kk * 16 + frag::a_col(lane)) * 2));
                }
            }

            const int kt = cur.first + off;
            const int k0 = kt * BK, kvalid = min(BK, a.Sk - k0);
            const std::uint32_t sk_addr = smem_addr(kv_slot(st)), sv_addr = sk_addr + BK * LD * 2;
            const bool masked = cur.mask >= 0 || kvalid < BK;
            const std::uint64_t* words = cur.mask >= 0 ? a.plan.masks + static_cast<std::int64_t>(cur.mask) * BQ : nullptr;
            const std::uint64_t tail = low_bits(kvalid);

#pragma unroll 1
            for (int ks = 0; ks < BK; ks += KS) {
                if (ks >= kvalid) break;  // the rest of the last tile is past the end of the keys
                float s[MT][NS][4];
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                    for (int nt = 0; nt < NS; ++nt)
#pragma unroll
                        for (int i = 0; i < 4; ++i) s[mt][nt][i] = 0.0f;
#pragma unroll
                for (int kk = 0; kk < KD; ++kk) {
                    std::uint32_t af[MT][4];
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        if constexpr (Tl::kQInRegs) {
#pragma unroll
                            for (int i = 0; i < 4; ++i) af[mt][i] = qf[mt][kk][i];
                        } else {
                            ldmatrix_x4(af[mt], sq_addr + static_cast<std::uint32_t>(
                                                              ((warp * MT * 16 + mt * 16 + frag::a_row(lane)) * LD + kk * 16 +
                                                               frag::a_col(lane)) * 2));
                        }
                    }
#pragma unroll
                    for (int np = 0; np < NS / 2; ++np) {
                        std::uint32_t bf[4];
                        ldmatrix_x4(bf, sk_addr + static_cast<std::uint32_t>(
                                                      ((ks + np * 16 + frag::bnk_row(lane)) * LD + kk * 16 + frag::bnk_col(lane)) * 2));
#pragma unroll
                        for (int mt = 0; mt < MT; ++mt) {
                            Mma<T>::run(s[mt][2 * np], af[mt], bf[0], bf[1]);
                            Mma<T>::run(s[mt][2 * np + 1], af[mt], bf[2], bf[3]);
                        }
                    }
                }

                // Softcap and ALiBi; the mask on PARTIAL tiles and on keys past the end.
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                    for (int half = 0; half < 2; ++half) {
                        const int r = row_of(mt, half);
                        const std::uint64_t w = masked ? (words ? words[r] : ~std::uint64_t{0}) & tail : ~std::uint64_t{0};
#pragma unroll
                        for (int nt = 0; nt < NS; ++nt)
#pragma unroll
                            for (int j = 0; j < 2; ++j) {
                                const int c = ks + nt * 8 + frag::c_col(lane, j);
                                float& x = s[mt][nt][2 * half + j];
                                if (a.mod.general) {
                                    float gate;
                                    const float dist = slope != 0.0f ? pos_distance(a.mod.q_pos, a.mod.k_pos, q0 + min(r, nq - 1),
                                                                                    k0 + min(c, kvalid - 1))
                                                                     : 0.0f;
                                    x = general_score(x, a.mod, slope, dist, gate);
                                }
                                if (masked && !((w >> c) & 1u)) x = -INFINITY;
                            }
                    }

                // Online softmax: new row max, rescale of what came before, P = exp2((S - max) * unit log2(e)).
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                    for (int half = 0; half < 2; ++half) {
                        float mx = -INFINITY;
#pragma unroll
                        for (int nt = 0; nt < NS; ++nt) mx = fmaxf(mx, fmaxf(s[mt][nt][2 * half], s[mt][nt][2 * half + 1]));
                        const float mnew = fmaxf(m[mt][half], quad_max(mx));
                        // Nothing allowed yet in this row: subtracting 0 keeps every P = exp2(-inf) = 0.
                        const float msub = mnew == -INFINITY ? 0.0f : mnew;
                        const float alpha = exp2f((m[mt][half] - msub) * a.mod.unit_log2);
                        m[mt][half] = mnew;
                        float sum = 0.0f;
#pragma unroll
                        for (int nt = 0; nt < NS; ++nt)
#pragma unroll
                            for (int j = 0; j < 2; ++j) {
                                const float p = exp2f((s[mt][nt][2 * half + j] - msub) * a.mod.unit_log2);
                                s[mt][nt][2 * half + j] = p;
                                sum += p;
                            }
                        l[mt][half] = l[mt][half] * alpha + sum;
#pragma unroll
                        for (int nt = 0; nt < NO; ++nt) {
                            o[mt][nt][2 * half] *= alpha;
                            o[mt][nt][2 * half + 1] *= alpha;
                        }
                    }

                // O += P V: the accumulators of S are, pairwise, the A fragments of P.
#pragma unroll
                for (int kk = 0; kk < KS / 16; ++kk) {
                    std::uint32_t pf[MT][4];
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        pf[mt][0] = Mma<T>::pack(s[mt][2 * kk][0], s[mt][2 * kk][1]);
                        pf[mt][1] = Mma<T>::pack(s[mt][2 * kk][2], s[mt][2 * kk][3]);
                        pf[mt][2] = Mma<T>::pack(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
                        pf[mt][3] = Mma<T>::pack(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
                    }
#pragma unroll
                    for (int np = 0; np < DP / 16; ++np) {
                        std::uint32_t bf[4];
                        ldmatrix_x4_trans(bf, sv_addr + static_cast<std::uint32_t>(
                                                            ((ks + kk * 16 + frag::bkn_row(lane)) * LD + np * 16 + frag::bkn_col(lane)) * 2));
#pragma unroll
                        for (int mt = 0; mt < MT; ++mt) {
                            Mma<T>::run(o[mt][2 * np], pf[mt], bf[0], bf[1]);
                            Mma<T>::run(o[mt][2 * np + 1], pf[mt], bf[2], bf[3]);
                        }
                    }
                }
            }

            __syncthreads();  // every warp is done with this slot
            if (!has_next) break;
            if (a.stages == 1) {
                load_kv<DP>(a, kv_slot(0), b, hk, next.first + noff);
                cp_async_commit();
            }
            seg = nseg;
            off = noff;
            cur = next;
        }
    }

    float lsum[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int half = 0; half < 2; ++half) lsum[mt][half] = quad_sum(l[mt][half]);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int r = row_of(mt, half);
            if (r >= nq) continue;
            const bool any = lsum[mt][half] != 0.0f;  // NaN included: the row's O and LSE become NaN
            const float inv = any ? 1.0f / lsum[mt][half] : 0.0f;
            const std::int64_t row = q0 + r;
            const std::int64_t base = b * a.o.sb + row * a.o.ss + h * a.o.sh;
#pragma unroll
            for (int nt = 0; nt < NO; ++nt)
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    const int c = nt * 8 + frag::c_col(lane, j);
                    if (c < a.D) store_value(a.o.data, a.o_type, base + c, any ? o[mt][nt][2 * half + j] * inv : 0.0f);
                }
            if ((lane & 3) == 0) {
                const std::int64_t li = (static_cast<std::int64_t>(b) * a.Hq + h) * a.Sq + row;
                const double lse = any ? static_cast<double>(m[mt][half]) * a.mod.unit + log(static_cast<double>(lsum[mt][half]))
                                       : -INFINITY;
                a.lse[li] = static_cast<float>(lse);
                if (a.lse_lo) a.lse_lo[li] = any ? static_cast<float>(lse - static_cast<double>(a.lse[li])) : 0.0f;
            }
        }
}

template <int DP>
void launch_dtype(Elem e, const FwdArgs& a, unsigned grid, int smem, void* stream) {
    if (e == Elem::bf16)
        launch_tiled(flash_fwd_kernel<DP, __nv_bfloat16>, grid, FwdTiling<DP>::kThreads, smem, stream, a, "flash forward");
    else
        launch_tiled(flash_fwd_kernel<DP, __half>, grid, FwdTiling<DP>::kThreads, smem, stream, a, "flash forward");
}

}  // namespace

int forward_rows(int dpad) {
    return dpad == 64 ? FwdTiling<64>::kRows : dpad == 128 ? FwdTiling<128>::kRows : FwdTiling<256>::kRows;
}

int forward_smem(int dpad, int stages) {
    return dpad == 64 ? FwdTiling<64>::smem(stages) : dpad == 128 ? FwdTiling<128>::smem(stages) : FwdTiling<256>::smem(stages);
}

void launch_forward(int dpad, Elem e, const FwdArgs& a, unsigned grid, int smem, void* stream) {
    switch (dpad) {
        case 64: return launch_dtype<64>(e, a, grid, smem, stream);
        case 128: return launch_dtype<128>(e, a, grid, smem, stream);
        default: return launch_dtype<256>(e, a, grid, smem, stream);
    }
}

}  // namespace longattn::kernels::cuda
