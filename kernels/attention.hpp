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

// Decoding: a few new query rows per sequence attend to that sequence's keys in a paged cache.
//
// A page holds `page_tokens` key/value slots of one sequence (a multiple of 16), in the storage
// dtype, one block of memory laid out for the decode kernel:
//   K transposed: [Hkv][D][page_tokens]   (slots are the vector axis of the scores)
//   V:            [Hkv][page_tokens][Dp]  (Dp = D rounded up to 16; the padding is zero)
// pos[0, fill) are the global positions of the filled slots; the slots past fill are ignored.
struct KvPage {
    const void* data = nullptr;
    const std::int64_t* pos = nullptr;
    std::int64_t fill = 0;
};
inline std::int64_t kv_padded_dim(std::int64_t D) { return (D + 15) / 16 * 16; }
// Elements of one page (K and V, every kv head).
inline std::int64_t kv_page_elems(std::int64_t kv_heads, std::int64_t D, std::int64_t page_tokens) {
    return kv_heads * page_tokens * (D + kv_padded_dim(D));
}

struct DecodeParams {
    TensorView q;                          // [B, T, Hq, D], any storage dtype, any strides
    const std::int64_t* q_pos = nullptr;   // [B * T]: the position of query row t of sequence b
    const KvPage* pages = nullptr;         // every sequence's pages, sequence b's in
    const std::int64_t* page_begin = nullptr;  // [page_begin[b], page_begin[b + 1]); [B + 1]
    DType kv_dtype = DType::f32;
    std::int64_t kv_heads = 0;             // Hkv of the pages
    std::int64_t kv_head_offset = 0;       // query head h reads kv head kv_head_offset + h / (Hq / Hkv_q)
    std::int64_t q_kv_heads = 0;           // Hkv_q: the kv heads the queries' heads cover (0: kv_heads)
    std::int64_t page_tokens = 0;
    const Pattern* pattern = nullptr;
    std::int64_t head_offset = 0;          // global index of query head 0 (ALiBi)
    float* o = nullptr;                    // [B, T, Hq, D] fp32, contiguous: O normalized
    float* lse = nullptr;                  // [B, Hq, T]; -inf (and O = 0) for a row with no allowed key
    int threads = 0;
    // Optional out: the (page, kv head) blocks read, and those the pattern left out unread.
    std::int64_t* blocks_read = nullptr;
    std::int64_t* blocks_skipped = nullptr;
};

// Flash-Decoding on the CPU: each (sequence, kv head) splits its pages into chunks of a fixed number
// of pages (independent of the thread count), the chunks run in parallel, each reading a page once for
// every query row of the kv head's group, and their partials are merged in fp32 in page order: the same
// bits for any thread count. Pages the pattern leaves EMPTY for every query row are not read.
void decode_cpu(const DecodeParams& p);

// Checks shapes, dtypes, strides and pointers; throws longattn::Error naming the bad field.
void validate(const FwdParams& p);
void validate(const BwdParams& p);
void validate(const DecodeParams& p);

// CPU flash kernels: fp32 online softmax, vectorized, threads over (batch, head, query block).
void flash_forward_cpu(const FwdParams& p);
// Deterministic: the same bits on every rerun and for any thread count.
void flash_backward_cpu(const BwdParams& p);

// Merge a partial (o_new, lse_new) into (o_acc, lse_acc) in place, fp32:
//   lse = logaddexp(l1, l2); O = O1 exp(l1 - lse) + O2 exp(l2 - lse). -inf shards never make NaN.
// o_acc is fp32 [B, S, H, D]; o_new any dtype of the same shape; lse [B, H, S].
void merge_partial(TensorView o_acc, float* lse_acc, TensorView o_new, const float* lse_new, int threads = 0);

}  // namespace longattn::kernels
