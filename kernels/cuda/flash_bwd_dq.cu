// Backward, dQ: one CTA of 4 warps per (query tile of 64 rows, batch, query head, output dim chunk); the
// warps split the rows, 16 each. The CTA owns its rows of dQ and visits the plan's key tiles in key
// order, so the sum over keys has one fixed order: no atomics, the same bits on every run.
// Per key tile (K and V through `stages` cp.async slots, as the forward):
//   S = Q K^T, dP = dO V^T (fp32); P = exp(s * unit - LSE) from the forward's final LSE, the difference
//   formed by one fused multiply-add (masked pairs 0);
//   dS = P (dP - delta) (times the softcap derivative); dQ += dS K over the CTA's dims.
// dQ is scaled by the softmax scale once at the end. Head dims above 128 split the output dims in chunks
// of 128 (one CTA each, S and dP recomputed per chunk) so that the accumulators stay in registers.
#include <cmath>

#include "kernels/cuda/cuda_check.hpp"
#include "kernels/cuda/fragment_layout.hpp"
#include "kernels/cuda/tile_io.cuh"

namespace longattn::kernels::cuda {
namespace {

template <int DP>
struct DqTiling {
    static constexpr int kThreads = 128;
    static constexpr int kRows = kBwdRows;  // 16 per warp
    static constexpr int kKeys = static_cast<int>(kKeyTile);
    static constexpr int kChunk = DP > 128 ? 128 : DP;
    static constexpr int smem(int stages) { return (2 * kRows + stages * 2 * kKeys) * kPitch<DP> * 2; }
};

template <int DP>
__device__ __forceinline__ void load_kv(const BwdArgs& a, std::uint16_t* sk, int b, int hk, int kt) {
    constexpr int BK = DqTiling<DP>::kKeys;
    const int k0 = kt * BK, nk = min(BK, a.Sk - k0);
    load_tile<BK, DP, 128>(sk, row_ptr(a.k, b, k0, hk), a.k.ss, nk, a.D, a.k.vec);
    load_tile<BK, DP, 128>(sk + BK * kPitch<DP>, row_ptr(a.v, b, k0, hk), a.v.ss, nk, a.D, a.v.vec);
}

template <int DP, class T>
__global__ void __launch_bounds__(128) flash_bwd_dq_kernel(const BwdArgs a) {
    using Tl = DqTiling<DP>;
    constexpr int BQ = Tl::kRows, BK = Tl::kKeys, LD = kPitch<DP>, DC = Tl::kChunk, NC = DP / DC;
    constexpr int KD = DP / 16, NS = BK / 8, NDC = DC / 8;
    extern __shared__ __align__(16) std::uint16_t smem[];
    std::uint16_t* const sq = smem;
    std::uint16_t* const sdo = smem + BQ * LD;
    const auto kv_slot = [&](int st) { return smem + 2 * BQ * LD + st * 2 * BK * LD; };

    const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
    const int per_tile = a.B * a.Hq * NC;
    const int qt = a.plan.order[blockIdx.x / per_tile];
    const int rem = static_cast<int>(blockIdx.x % per_tile), bh = rem / NC, dc = rem % NC;
    const int b = bh / a.Hq, h = bh % a.Hq, hk = h / (a.Hq / a.Hkv);
    const int q0 = qt * BQ, nq = min(BQ, a.Sq - q0);
    const int seg_end = a.plan.seg_ptr[qt + 1];
    int seg = a.plan.seg_ptr[qt];
    if (a.accumulate && seg == seg_end) return;
    const float slope = a.mod.slopes ? a.mod.slopes[h] : 0.0f;
    const auto row_of = [&](int half) { return warp * 16 + frag::c_row(lane, 2 * half); };

    float acc[NDC][4];
#pragma unroll
    for (int nt = 0; nt < NDC; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[nt][i] = 0.0f;

    if (seg < seg_end) {
        float lse_row[2], delta[2];
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int r = row_of(half);
            const std::int64_t li = (static_cast<std::int64_t>(b) * a.Hq + h) * a.Sq + q0 + r;
            lse_row[half] = r < nq ? a.lse_row[li] : INFINITY;
            delta[half] = r < nq ? a.delta[li] : 0.0f;
        }
        load_tile<BQ, DP, 128>(sq, row_ptr(a.q, b, q0, h), a.q.ss, nq, a.D, a.q.vec);
        load_tile<BQ, DP, 128>(sdo, row_ptr(a.dout, b, q0, h), a.dout.ss, nq, a.D, a.dout.vec);
        Segment cur = a.plan.segs[seg];
        int off = 0;
        load_kv<DP>(a, kv_slot(0), b, hk, cur.first);
        cp_async_commit();
        const std::uint32_t sq_addr = smem_addr(sq), sdo_addr = smem_addr(sdo);

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
                load_kv<DP>(a, kv_slot(st ^ 1), b, hk, next.first + noff);
                cp_async_commit();
                cp_async_wait<1>();
            } else {
                cp_async_wait<0>();
            }
            __syncthreads();

            const int k0 = (cur.first + off) * BK, kvalid = min(BK, a.Sk - k0);
            const std::uint32_t sk_addr = smem_addr(kv_slot(st)), sv_addr = sk_addr + BK * LD * 2;

            float s[NS][4], dp[NS][4];
#pragma unroll
            for (int nt = 0; nt < NS; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i) s[nt][i] = dp[nt][i] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < KD; ++kk) {
                const std::uint32_t a_off =
                    static_cast<std::uint32_t>(((warp * 16 + frag::a_row(lane)) * LD + kk * 16 + frag::a_col(lane)) * 2);
                std::uint32_t aq[4], ao[4];
                ldmatrix_x4(aq, sq_addr + a_off);
                ldmatrix_x4(ao, sdo_addr + a_off);
#pragma unroll
                for (int np = 0; np < NS / 2; ++np) {
                    const std::uint32_t b_off =
                        static_cast<std::uint32_t>(((np * 16 + frag::bnk_row(lane)) * LD + kk * 16 + frag::bnk_col(lane)) * 2);
                    std::uint32_t bk[4], bv[4];
                    ldmatrix_x4(bk, sk_addr + b_off);
                    ldmatrix_x4(bv, sv_addr + b_off);
                    Mma<T>::run(s[2 * np], aq, bk[0], bk[1]);
                    Mma<T>::run(s[2 * np + 1], aq, bk[2], bk[3]);
                    Mma<T>::run(dp[2 * np], ao, bv[0], bv[1]);
                    Mma<T>::run(dp[2 * np + 1], ao, bv[2], bv[3]);
                }
            }

            // dS in place of S.
            const bool masked = cur.mask >= 0 || kvalid < BK;
            const std::uint64_t* words = cur.mask >= 0 ? a.plan.masks + static_cast<std::int64_t>(cur.mask) * BQ : nullptr;
            const std::uint64_t tail = low_bits(kvalid);
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int r = row_of(half);
                const std::uint64_t w = masked ? (words ? words[r] : ~std::uint64_t{0}) & tail : ~std::uint64_t{0};
#pragma unroll
                for (int nt = 0; nt < NS; ++nt)
#pragma unroll
                    for (int j = 0; j < 2; ++j) {
                        const int c = nt * 8 + frag::c_col(lane, j);
                        const int i = 2 * half + j;
                        float gate = 1.0f, x = s[nt][i];
                        if (a.mod.general) {
                            const float dist = slope != 0.0f ? pos_distance(a.mod.q_pos, a.mod.k_pos, q0 + min(r, nq - 1),
                                                                            k0 + min(c, kvalid - 1))
                                                             : 0.0f;
                            x = general_score(x, a.mod, slope, dist, gate);
                        }
                        const bool allowed = !masked || ((w >> c) & 1u);
                        const float p = allowed ? exp2f(fmaf(x, a.mod.unit, -lse_row[half]) * kLog2e) : 0.0f;
                        s[nt][i] = p * (dp[nt][i] - delta[half]) * gate;
                    }
            }

            // dQ += dS K over this CTA's dims: K as B from its [key][dim] tile, transposed on load.
#pragma unroll
            for (int kk = 0; kk < BK / 16; ++kk) {
                std::uint32_t af[4];
                af[0] = Mma<T>::pack(s[2 * kk][0], s[2 * kk][1]);
                af[1] = Mma<T>::pack(s[2 * kk][2], s[2 * kk][3]);
                af[2] = Mma<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
                af[3] = Mma<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
                for (int np = 0; np < DC / 16; ++np) {
                    std::uint32_t bf[4];
                    ldmatrix_x4_trans(bf, sk_addr + static_cast<std::uint32_t>(
                                                        ((kk * 16 + frag::bkn_row(lane)) * LD + dc * DC + np * 16 +
                                                         frag::bkn_col(lane)) * 2));
                    Mma<T>::run(acc[2 * np], af, bf[0], bf[1]);
                    Mma<T>::run(acc[2 * np + 1], af, bf[2], bf[3]);
                }
            }

            __syncthreads();
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

#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int r = row_of(half);
        if (r >= nq) continue;
        float* out = static_cast<float*>(a.dq.data) + b * a.dq.sb + (q0 + r) * a.dq.ss + h * a.dq.sh;
#pragma unroll
        for (int nt = 0; nt < NDC; ++nt)
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const int c = dc * DC + nt * 8 + frag::c_col(lane, j);
                if (c >= a.D) continue;
                // Rounded on its own (no fused multiply-add into the sum), so that accumulating adds
                // exactly the value a plain call writes.
                const float v = __fmul_rn(acc[nt][2 * half + j], a.mod.scale);
                out[c] = a.accumulate ? out[c] + v : v;
            }
    }
}

template <int DP>
void launch_dtype(Elem e, const BwdArgs& a, unsigned grid, int smem, void* stream) {
    if (e == Elem::bf16)
        launch_tiled(flash_bwd_dq_kernel<DP, __nv_bfloat16>, grid, DqTiling<DP>::kThreads, smem, stream, a, "flash backward dQ");
    else
        launch_tiled(flash_bwd_dq_kernel<DP, __half>, grid, DqTiling<DP>::kThreads, smem, stream, a, "flash backward dQ");
}

}  // namespace

int bwd_chunks(int dpad) { return dpad > 128 ? dpad / 128 : 1; }

int bwd_dq_smem(int dpad, int stages) {
    return dpad == 64 ? DqTiling<64>::smem(stages) : dpad == 128 ? DqTiling<128>::smem(stages) : DqTiling<256>::smem(stages);
}

void launch_bwd_dq(int dpad, Elem e, const BwdArgs& a, unsigned grid, int smem, void* stream) {
    switch (dpad) {
        case 64: return launch_dtype<64>(e, a, grid, smem, stream);
        case 128: return launch_dtype<128>(e, a, grid, smem, stream);
        default: return launch_dtype<256>(e, a, grid, smem, stream);
    }
}

}  // namespace longattn::kernels::cuda
