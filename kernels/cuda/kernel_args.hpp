#pragma once
// Plain structs passed by value to the CUDA kernels, filled by the host code (flash_api.cpp) and read by
// the kernels (*.cu), and the launchers the .cu files define. Includes no CUDA header.
#include <cstdint>

#include "kernels/cuda/tile_plan.hpp"

namespace longattn::kernels::cuda {

// One bshd tensor in device memory: element strides of batch, sequence and head; the head dim is
// contiguous.
struct DevTensor {
    void* data = nullptr;
    std::int64_t sb = 0, ss = 0, sh = 0;
    // Every row starts 16-byte aligned and the head dim is a multiple of 8: tiles load in 16-byte
    // asynchronous copies. Otherwise element by element.
    bool vec = false;
};

// A plan side (TilePlan::by_query or by_key) in device memory.
struct DevPlan {
    const std::int32_t* seg_ptr = nullptr;
    const Segment* segs = nullptr;
    const std::int32_t* order = nullptr;
    const std::uint64_t* masks = nullptr;  // `rows` words per PARTIAL tile
    const std::uint64_t* all_ones = nullptr;  // `rows` words of ~0: the mask of a FULL tile where one is copied
};

// Score modifiers, as the CPU kernels: s = scale * q.k; softcap; ALiBi. The kernels keep a score in
// stored units: the raw q.k, or the natural score general_score() returns with softcap or ALiBi, and
// form every exponent from a difference in those units (kernels/cpu/flash_fwd.cpp says why).
struct ScoreMod {
    float scale = 1.0f;
    float unit = 1.0f;           // natural score per stored unit: scale, or 1 when general
    float unit_log2 = 1.0f;      // unit * log2(e)
    float softcap = 0.0f;        // > 0: s = softcap * tanh(s / softcap)
    float inv_softcap = 0.0f;
    int general = 0;             // softcap or ALiBi present
    const float* slopes = nullptr;        // per local query head (device); null without ALiBi
    const std::int64_t* q_pos = nullptr;  // device copies of the positions, with ALiBi only
    const std::int64_t* k_pos = nullptr;
};

enum class Elem : int { bf16 = 0, f16 = 1 };
// DType values of the outputs' storage, as in longattn/dtype.hpp.
enum class OutType : int { f32 = 0, bf16 = 1, f16 = 2 };

struct FwdArgs {
    DevTensor q, k, v, o;
    OutType o_type = OutType::f32;
    float* lse = nullptr;
    float* lse_lo = nullptr;  // optional residual of the LSE (FwdParams::lse_lo)
    int B = 0, Sq = 0, Sk = 0, Hq = 0, Hkv = 0, D = 0;
    int accumulate = 0;
    int stages = 1;  // K/V tiles in flight: 2 overlaps the next tile's load with this one's math
    ScoreMod mod;
    DevPlan plan;    // by query tile
};

struct BwdArgs {
    DevTensor q, k, v, dout, dq, dk, dv;
    const float* lse_row = nullptr;  // [B, Hq, Sq]: the LSE; +inf for rows without keys (P = 0)
    const float* delta = nullptr;  // [B, Hq, Sq]: rowsum(dO * O)
    int B = 0, Sq = 0, Sk = 0, Hq = 0, Hkv = 0, D = 0;
    int accumulate = 0;
    int stages = 1;
    ScoreMod mod;
    DevPlan plan;  // by query tile for dQ, by key tile for dK/dV
};

struct PrepArgs {
    DevTensor o, dout;
    OutType o_type = OutType::f32;
    OutType dout_type = OutType::bf16;
    const float* lse = nullptr;
    float* lse_row = nullptr;
    float* delta = nullptr;
    int B = 0, Sq = 0, Hq = 0, D = 0;
};

// Tilings: query rows per tile, and the dynamic shared memory of a kernel at a stage count. dpad is the
// head dim of the tiling (64, 128 or 256).
int forward_rows(int dpad);
int forward_smem(int dpad, int stages);
inline constexpr int kBwdRows = 64;  // query rows per tile of both backward kernels
int bwd_dq_smem(int dpad, int stages);
int bwd_dkdv_smem(int dpad, int stages);
// Output head-dim chunks of the backward kernels (one CTA each): a chunk keeps its accumulators in
// registers.
int bwd_chunks(int dpad);

// Launch on `stream` (a cudaStream_t) with `grid` CTAs; throw std::runtime_error on a launch failure.
void launch_forward(int dpad, Elem e, const FwdArgs& a, unsigned grid, int smem, void* stream);
void launch_bwd_prep(const PrepArgs& a, void* stream);
void launch_bwd_dq(int dpad, Elem e, const BwdArgs& a, unsigned grid, int smem, void* stream);
void launch_bwd_dkdv(int dpad, Elem e, const BwdArgs& a, unsigned grid, int smem, void* stream);
void launch_merge(const DevTensor& o_acc, float* lse_acc, const DevTensor& o_new, OutType new_type, const float* lse_new,
                  int B, int S, int H, int D, void* stream);

}  // namespace longattn::kernels::cuda
