#pragma once
// The block kernel contract. A kernel attends a set of query rows to a set of key rows, both named by
// their global positions, and returns a partial result (O normalized, LSE natural log, fp32 math).
// Kernels know nothing about ranks; strategies call them once per (query shard, key shard) and merge.
//
// Shapes (bshd): Q, O, dO [B, Sq, Hq, D]; K, V [B, Sk, Hkv, D]; LSE [B, Hq, Sq] fp32 contiguous.
// Hq is a multiple of Hkv (query head h reads kv head h / (Hq / Hkv)). Positions are the same for
// every batch entry. A row with no allowed key gets LSE = -inf and O = 0.
#include <cstdint>

#include "longattn/pattern.hpp"
#include "longattn/tensor.hpp"

namespace longattn::kernels {

struct FwdParams {
    TensorView q, k, v;   // any storage dtype (each may differ), rank 4
    TensorView o;         // output, any storage dtype
    float* lse = nullptr; // [B, Hq, Sq]
    const std::int64_t* q_pos = nullptr;  // Sq global positions
    const std::int64_t* k_pos = nullptr;  // Sk global positions
    const Pattern* pattern = nullptr;
    std::int64_t head_offset = 0;  // global index of query head 0 (ALiBi slopes are per global head)
    // Merge these keys into the partial result already in (o, lse) instead of overwriting it: the same
    // as merge_partial of a separate call, without its buffer or pass. o must be fp32.
    bool accumulate = false;
    // Optional [B, Hq, Sq], for a chain of accumulating calls: the residual LSE - lse, read with the
    // partial (null: 0) and written with the result, so that the running LSE keeps twice fp32's
    // precision from call to call. Without it each call rounds the partial's LSE to fp32, which at
    // |LSE| near 300 moves its weight against the new keys by up to 1.5e-5.
    float* lse_lo = nullptr;
    int threads = 0;      // 0: all hardware threads
    void* stream = nullptr;  // cudaStream_t for the CUDA kernels (nullptr: the default stream)
};

struct BwdParams {
    TensorView q, k, v, o, dout;   // o is the final (merged) output of the forward pass
    const float* lse = nullptr;    // final LSE [B, Hq, Sq]
    TensorView dq, dk, dv;         // fp32 outputs, rank 4
    bool accumulate = false;       // add into dq/dk/dv instead of overwriting
    const std::int64_t* q_pos = nullptr;
    const std::int64_t* k_pos = nullptr;
    const Pattern* pattern = nullptr;
    std::int64_t head_offset = 0;  // as in FwdParams
    int threads = 0;
    void* stream = nullptr;  // cudaStream_t for the CUDA kernels (nullptr: the default stream)
};

// Checks shapes, dtypes, strides and pointers; throws longattn::Error naming the bad field.
void validate(const FwdParams& p);
void validate(const BwdParams& p);

// CPU flash kernels: fp32 online softmax, vectorized, threads over (batch, head, query block).
void flash_forward_cpu(const FwdParams& p);
// Deterministic: the same bits on every rerun and for any thread count.
void flash_backward_cpu(const BwdParams& p);

// Merge a partial (o_new, lse_new) into (o_acc, lse_acc) in place, fp32:
//   lse = logaddexp(l1, l2); O = O1 exp(l1 - lse) + O2 exp(l2 - lse). -inf shards never make NaN.
// o_acc is fp32 [B, S, H, D]; o_new any dtype of the same shape; lse [B, H, S].
void merge_partial(TensorView o_acc, float* lse_acc, TensorView o_new, const float* lse_new, int threads = 0);

}  // namespace longattn::kernels
