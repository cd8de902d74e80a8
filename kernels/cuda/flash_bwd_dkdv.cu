// Backward, dK and dV: one CTA of 4 warps per (key tile of 64 keys, batch, kv head, output dim chunk);
// the warps split the keys, 16 each, and compute the transposed products with keys as rows:
//   S^T = K Q^T, dP^T = V dO^T (fp32); P^T = exp(s * unit - LSE), the difference formed by one fused
//   multiply-add so that neither term is rounded at its own magnitude; dS^T = P^T (dP^T - delta) (times the
//   softcap derivative); dV += P^T dO and dK += dS^T Q over the CTA's dims.
// K and V stay in shared memory; the work items (query tile of the plan, in query order) x (query head
// of the kv head's group, in head order) stream Q, dO, LSE, delta and the tile's mask words through
// `stages` cp.async slots. The CTA owns its keys' dK and dV, and that item order is the one order of
// every sum: no atomics, the same bits on every run. dK is scaled by the softmax scale at the end.
#include <cmath>

#include "kernels/cuda/cuda_check.hpp"
#include "kernels/cuda/fragment_layout.hpp"
#include "kernels/cuda/tile_io.cuh"

namespace longattn::kernels::cuda {
namespace {

template <int DP>
struct DkdvTiling {
    static constexpr int kThreads = 128;
    static constexpr int kKeys = static_cast<int>(kKeyTile);  // 16 per warp
    static constexpr int kRows = kBwdRows;                     // query rows per item
    static constexpr int kChunk = DP > 128 ? 128 : DP;
    // Query columns per pass over an item: with 128 output dims the accumulators of dK and dV take 128
    // registers, so S^T and dP^T cover half the item at a time.
    static constexpr int kSub = kChunk >= 128 ? 32 : 64;
    static constexpr int kTileBytes = kRows * kPitch<DP> * 2;
    // A slot: Q tile, dO tile, LSE and delta (fp32), mask words.
    static constexpr int kSlotBytes = 2 * kTileBytes + kRows * (4 + 4 + 8);
    static constexpr int kKvBytes = 2 * kKeys * kPitch<DP> * 2;
    static constexpr int smem(int stages) { return kKvBytes + stages * kSlotBytes; }
};

struct Slot {
    std::uint16_t* q;
    std::uint16_t* dout;
    float* lse_row;
    float* delta;
    std::uint64_t* words;
};

template <int DP>
__device__ __forceinline__ Slot slot_at(unsigned char* smem, int st) {
    using Tl = DkdvTiling<DP>;
    unsigned char* p = smem + Tl::kKvBytes + st * Tl::kSlotBytes;
    Slot s;
    s.q = reinterpret_cast<std::uint16_t*>(p);
    s.dout = reinterpret_cast<std::uint16_t*>(p + Tl::kTileBytes);
    s.lse_row = reinterpret_cast<float*>(p + 2 * Tl::kTileBytes);
    s.delta = s.lse_row + Tl::kRows;
    s.words = reinterpret_cast<std::uint64_t*>(s.delta + Tl::kRows);
    return s;
}

// Queues one work item: query tile qt of query head h, with its mask words (all ones for a FULL tile).
// Rows past the end of the query read as zeros, mask words included, so they take no part.
template <int DP>
__device__ __forceinline__ void load_item(const BwdArgs& a, const Slot& s, int b, int h, int qt, int mask) {
    constexpr int BQ = DkdvTiling<DP>::kRows;
    const int q0 = qt * BQ, nq = min(BQ, a.Sq - q0);
    load_tile<BQ, DP, 128>(s.q, row_ptr(a.q, b, q0, h), a.q.ss, nq, a.D, a.q.vec);
    load_tile<BQ, DP, 128>(s.dout, row_ptr(a.dout, b, q0, h), a.dout.ss, nq, a.D, a.dout.vec);
    const int r = static_cast<int>(threadIdx.x);
    if (r < BQ) {
        const bool valid = r < nq;
        const std::int64_t li = (static_cast<std::int64_t>(b) * a.Hq + h) * a.Sq + q0 + (valid ? r : 0);
        const std::uint64_t* w = mask >= 0 ? a.plan.masks + static_cast<std::int64_t>(mask) * BQ : a.plan.all_ones;
        cp_async<4>(smem_addr(s.lse_row + r), a.lse_row + li, valid);
        cp_async<4>(smem_addr(s.delta + r), a.delta + li, valid);
        cp_async<8>(smem_addr(s.words + r), w + (valid ? r : 0), valid);
    }
}

template <int DP, class T>
__global__ void __launch_bounds__(128) flash_bwd_dkdv_kernel(const BwdArgs a) {
    using Tl = DkdvTiling<DP>;
    constexpr int BK = Tl::kKeys, BQ = Tl::kRows, LD = kPitch<DP>, DC = Tl::kChunk, NC = DP / DC;
    constexpr int KD = DP / 16, QS = Tl::kSub, NQS = QS / 8, NDC = DC / 8;
    extern __shared__ __align__(16) unsigned char smem_bytes[];
    std::uint16_t* const sk = reinterpret_cast<std::uint16_t*>(smem_bytes);
    std::uint16_t* const sv = sk + BK * LD;

    const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
    const int G = a.Hq / a.Hkv;
    const int per_tile = a.B * a.Hkv * NC;
    const int kt = a.plan.order[blockIdx.x / per_tile];
    const int rem = static_cast<int>(blockIdx.x % per_tile), bhk = rem / NC, dc = rem % NC;
    const int b = bhk / a.Hkv, hk = bhk % a.Hkv;
    const int k0 = kt * BK, nk = min(BK, a.Sk - k0);
    const int seg_end = a.plan.seg_ptr[kt + 1];
    int seg = a.plan.seg_ptr[kt];
    if (a.accumulate && seg == seg_end) return;
    const auto key_of = [&](int half) { return warp * 16 + frag::c_row(lane, 2 * half); };

    float dk[NDC][4], dv[NDC][4];
#pragma unroll
    for (int nt = 0; nt < NDC; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) dk[nt][i] = dv[nt][i] = 0.0f;

    if (seg < seg_end) {
        load_tile<BK, DP, 128>(sk, row_ptr(a.k, b, k0, hk), a.k.ss, nk, a.D, a.k.vec);
        load_tile<BK, DP, 128>(sv, row_ptr(a.v, b, k0, hk), a.v.ss, nk, a.D, a.v.vec);
        Segment cur = a.plan.segs[seg];
        int off = 0, gh = 0;
        load_item<DP>(a, slot_at<DP>(smem_bytes, 0), b, hk * G, cur.first, cur.mask);
        cp_async_commit();
        const std::uint32_t sk_addr = smem_addr(sk), sv_addr = smem_addr(sv);
        const std::uint64_t tail = low_bits(nk);

        for (int e = 0;; ++e) {
            // The next item: the next head of the group, then the next query tile.
            Segment next = cur;
            int nseg = seg, noff = off, ngh = gh + 1;
            if (ngh == G) {
                ngh = 0;
                if (++noff == cur.count) {
                    ++nseg;
                    noff = 0;
                    if (nseg < seg_end) next = a.plan.segs[nseg];
                }
            }
            const bool has_next = nseg < seg_end;
            const int st = a.stages == 2 ? (e & 1) : 0;
            if (a.stages == 2 && has_next) {
                load_item<DP>(a, slot_at<DP>(smem_bytes, st ^ 1), b, hk * G + ngh, next.first + noff, next.mask);
                cp_async_commit();
                cp_async_wait<1>();
            } else {
                cp_async_wait<0>();
            }
            __syncthreads();

            const Slot sl = slot_at<DP>(smem_bytes, st);
            const std::uint32_t q_addr = smem_addr(sl.q), do_addr = smem_addr(sl.dout);
            const int h = hk * G + gh;
            const int q0 = (cur.first + off) * BQ;
            const float slope = a.mod.slopes ? a.mod.slopes[h] : 0.0f;

#pragma unroll
            for (int qs = 0; qs < BQ / QS; ++qs) {
                float s[NQS][4], dp[NQS][4];
#pragma unroll
                for (int nt = 0; nt < NQS; ++nt)
#pragma unroll
                    for (int i = 0; i < 4; ++i) s[nt][i] = dp[nt][i] = 0.0f;
#pragma unroll
                for (int kk = 0; kk < KD; ++kk) {
                    const std::uint32_t a_off =
                        static_cast<std::uint32_t>(((warp * 16 + frag::a_row(lane)) * LD + kk * 16 + frag::a_col(lane)) * 2);
                    std::uint32_t ak[4], av[4];
                    ldmatrix_x4(ak, sk_addr + a_off);
                    ldmatrix_x4(av, sv_addr + a_off);
#pragma unroll
                    for (int np = 0; np < NQS / 2; ++np) {
                        const std::uint32_t b_off = static_cast<std::uint32_t>(
                            ((qs * QS + np * 16 + frag::bnk_row(lane)) * LD + kk * 16 + frag::bnk_col(lane)) * 2);
                        std::uint32_t bq[4], bo[4];
                        ldmatrix_x4(bq, q_addr + b_off);
                        ldmatrix_x4(bo, do_addr + b_off);
                        Mma<T>::run(s[2 * np], ak, bq[0], bq[1]);
                        Mma<T>::run(s[2 * np + 1], ak, bq[2], bq[3]);
                        Mma<T>::run(dp[2 * np], av, bo[0], bo[1]);
                        Mma<T>::run(dp[2 * np + 1], av, bo[2], bo[3]);
                    }
                }

                // P^T in place of S^T, dS^T in place of dP^T. Rows are keys, columns queries.
#pragma unroll
                for (int half = 0; half < 2; ++half) {
                    const int kr = key_of(half);
#pragma unroll
                    for (int nt = 0; nt < NQS; ++nt)
#pragma unroll
                        for (int j = 0; j < 2; ++j) {
                            const int cq = qs * QS + nt * 8 + frag::c_col(lane, j);
                            const int i = 2 * half + j;
                            const bool allowed = ((sl.words[cq] & tail) >> kr) & 1u;
                            float gate = 1.0f, x = s[nt][i];
                            if (a.mod.general) {
                                const float dist = slope != 0.0f ? pos_distance(a.mod.q_pos, a.mod.k_pos, min(q0 + cq, a.Sq - 1),
                                                                                k0 + min(kr, nk - 1))
                                                                 : 0.0f;
                                x = general_score(x, a.mod, slope, dist, gate);
                            }
                            const float p = allowed ? exp2f(fmaf(x, a.mod.unit, -sl.lse_row[cq]) * kLog2e) : 0.0f;
                            s[nt][i] = p;
                            dp[nt][i] = p * (dp[nt][i] - sl.delta[cq]) * gate;
                        }
                }

                // dV += P^T dO and dK += dS^T Q: dO and Q as B from their [query][dim] tiles, transposed on load.
#pragma unroll
                for (int kk = 0; kk < QS / 16; ++kk) {
                    std::uint32_t pa[4], da[4];
                    pa[0] = Mma<T>::pack(s[2 * kk][0], s[2 * kk][1]);
                    pa[1] = Mma<T>::pack(s[2 * kk][2], s[2 * kk][3]);
                    pa[2] = Mma<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
                    pa[3] = Mma<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
                    da[0] = Mma<T>::pack(dp[2 * kk][0], dp[2 * kk][1]);
                    da[1] = Mma<T>::pack(dp[2 * kk][2], dp[2 * kk][3]);
                    da[2] = Mma<T>::pack(dp[2 * kk + 1][0], dp[2 * kk + 1][1]);
                    da[3] = Mma<T>::pack(dp[2 * kk + 1][2], dp[2 * kk + 1][3]);
#pragma unroll
                    for (int np = 0; np < DC / 16; ++np) {
                        const std::uint32_t b_off = static_cast<std::uint32_t>(
                            ((qs * QS + kk * 16 + frag::bkn_row(lane)) * LD + dc * DC + np * 16 + frag::bkn_col(lane)) * 2);
                        std::uint32_t bo[4], bq[4];
                        ldmatrix_x4_trans(bo, do_addr + b_off);
                        ldmatrix_x4_trans(bq, q_addr + b_off);
                        Mma<T>::run(dv[2 * np], pa, bo[0], bo[1]);
                        Mma<T>::run(dv[2 * np + 1], pa, bo[2], bo[3]);
                        Mma<T>::run(dk[2 * np], da, bq[0], bq[1]);
                        Mma<T>::run(dk[2 * np + 1], da, bq[2], bq[3]);
                    }
                }
            }

            __syncthreads();
            if (!has_next) break;
            if (a.stages == 1) {
                load_item<DP>(a, slot_at<DP>(smem_bytes, 0), b, hk * G + ngh, next.first + noff, next.mask);
                cp_async_commit();
            }
            seg = nseg;
            off = noff;
            gh = ngh;
            cur = next;
        }
    }

#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int kr = key_of(half);
        if (kr >= nk) continue;
        const std::int64_t key = k0 + kr;
        float* ok = static_cast<float*>(a.dk.data) + b * a.dk.sb + key * a.dk.ss + hk * a.dk.sh;
        float* ov = static_cast<float*>(a.dv.data) + b * a.dv.sb + key * a.dv.ss + hk * a.dv.sh;
#pragma unroll
        for (int nt = 0; nt < NDC; ++nt)
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const int c = dc * DC + nt * 8 + frag::c_col(lane, j);
                if (c >= a.D) continue;
                // Rounded on its own, as in the dQ kernel: accumulating adds exactly what a plain call writes.
                const float gk = __fmul_rn(dk[nt][2 * half + j], a.mod.scale), gv = dv[nt][2 * half + j];
                ok[c] = a.accumulate ? ok[c] + gk : gk;
                ov[c] = a.accumulate ? ov[c] + gv : gv;
            }
    }
}

template <int DP>
void launch_dtype(Elem e, const BwdArgs& a, unsigned grid, int smem, void* stream) {
    if (e == Elem::bf16)
        launch_tiled(flash_bwd_dkdv_kernel<DP, __nv_bfloat16>, grid, DkdvTiling<DP>::kThreads, smem, stream, a, "flash backward dK/dV");
    else
        launch_tiled(flash_bwd_dkdv_kernel<DP, __half>, grid, DkdvTiling<DP>::kThreads, smem, stream, a, "flash backward dK/dV");
}

}  // namespace

int bwd_dkdv_smem(int dpad, int stages) {
    return dpad == 64 ? DkdvTiling<64>::smem(stages) : dpad == 128 ? DkdvTiling<128>::smem(stages) : DkdvTiling<256>::smem(stages);
}

void launch_bwd_dkdv(int dpad, Elem e, const BwdArgs& a, unsigned grid, int smem, void* stream) {
    switch (dpad) {
        case 64: return launch_dtype<64>(e, a, grid, smem, stream);
        case 128: return launch_dtype<128>(e, a, grid, smem, stream);
        default: return launch_dtype<256>(e, a, grid, smem, stream);
    }
}

}  // namespace longattn::kernels::cuda
