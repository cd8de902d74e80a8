/* longattn's C interface (C99): exact attention over a sequence sharded across the ranks of a
 * communicator, forward and backward, through opaque contexts that cache their plans.
 *
 * Tensors are DLPack DLTensor descriptors (dlpack/dlpack.h, Debian's libdlpack-dev): Q, K, V, O, dO,
 * dQ, dK, dV are [B, S_local, H, D] (bshd) with any strides (NULL strides: compact), float32, bfloat16
 * or float16 (dQ, dK, dV float32), in host memory (kDLCPU, kDLCUDAHost) or, in a build with CUDA, in
 * device memory (kDLCUDA); LSE is [B, Hq, S_local] float32, compact. pos holds the global position of
 * each local row (int64, host memory); K and V have Hkv heads, Hq a multiple of Hkv.
 *
 * Status and errors: every call returns LA_OK or an error status, and la_last_error() gives the
 * message of the last failed call of the calling thread, naming the bad argument ("q: must be a
 * 4-d tensor...") or what failed. A failed call changes none of the outputs' meaning: discard them.
 *
 * Collective calls: la_context_create_*, la_forward, la_backward, la_context_destroy,
 * la_kv_cache_sync_lengths and la_decode_step are called by every rank of the context's communicator,
 * in the same order, with tensors of the same shapes (the local row counts may differ). A rank whose arguments are refused makes the call fail on every
 * rank (each names that rank); none is left waiting.
 *
 * Ownership and threads: a context borrows its communicator (which must outlive it) and owns its
 * plans; the tensors stay the caller's. Calls on one context must not overlap; distinct contexts may
 * be used from distinct threads. The pattern, pos and the tensors are read during the call only.
 */
#ifndef LONGATTN_H
#define LONGATTN_H

#include <dlpack/dlpack.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LA_VERSION_MAJOR 0
#define LA_VERSION_MINOR 1
#define LA_VERSION_PATCH 0

typedef enum {
    LA_OK = 0,
    LA_ERR_ARGUMENT = 1,    /* a bad argument; la_last_error() names it */
    LA_ERR_RUNTIME = 2,     /* a failure while running (out of memory, a communicator error) */
    LA_ERR_UNSUPPORTED = 3  /* not in this build (CUDA tensors without CUDA, NCCL without NCCL) */
} la_status;

/* "0.1.0", and the version as 10000 * major + 100 * minor + patch. */
const char* la_version(void);
int la_version_number(void);
/* The message of the calling thread's last failed call ("" if none). Valid until its next call. */
const char* la_last_error(void);

/* The instruction set of the CPU kernels in use: "avx512-amx", "avx512-bf16" (GCC builds), "avx512",
 * "avx2" or "sse2" (a portable build picks the
 * best the CPU runs, or the one the environment variable LONGATTN_CPU_ISA names), "native" (a build
 * for one machine) or "generic" (another architecture); "" with la_last_error() set when
 * LONGATTN_CPU_ISA names none of those. Valid until the calling thread's next la_cpu_isa. */
const char* la_cpu_isa(void);
/* Switches the CPU kernels of every later call: "auto" or one of those this build holds and this CPU
 * runs (LA_ERR_ARGUMENT otherwise, la_last_error() naming them). Not while a call runs. */
la_status la_set_cpu_isa(const char* name);

/* The choices below are ints to the ABI: a value outside them is refused by name (their _INT_RANGE_
 * member, INT_MIN, makes every int a value of the type, so checking one is defined in C++ too). */
/* LA_AUTO: each plan takes the strategy and Ulysses degree the cost model predicts fastest for its
 * shards on a cluster file (la_context_set_cluster, required before the first call). */
typedef enum { LA_RING = 0, LA_ULYSSES = 1, LA_HYBRID = 2, LA_ALLGATHER = 3, LA_AUTO = 4, LA_STRATEGY_INT_RANGE_ = -0x7fffffff - 1 } la_strategy;

typedef struct {
    la_strategy strategy;  /* LA_RING */
    int ulysses_degree;    /* LA_HYBRID: ranks per Ulysses group (divides the rank count); 1 */
    int64_t kv_head_chunk; /* LA_ALLGATHER: kv heads gathered at a time (0: all) */
    int threads;           /* kernel threads per rank (0: all) */
    int progress_chunks;   /* LA_RING: kernel calls per step, transfers progressing between them; 4 */
    size_t max_plans;      /* plans the context keeps, least recently used dropped first; 8 */
    double timeout_s;      /* MPI contexts: a rank silent this long ends the job (0: no watchdog) */
} la_options;
void la_options_default(la_options* opt);

/* Which pairs (query q, key k) attend and how scores are modified; la_pattern_default() gives dense
 * attention without causality. The parts below OR together where sparse (window, global tokens,
 * block mask, stride, random blocks); causal and documents gate every pair. */
typedef struct {
    int causal;                    /* k <= q */
    int has_window;                /* a sliding window: q - window_left <= k <= q + window_right */
    int64_t window_left, window_right;  /* -1: unbounded on that side */
    const int64_t* doc_bounds;     /* packed documents: 0 = b0 < b1 < ... < bn = the sequence length */
    size_t n_doc_bounds;           /* 0: one document */
    int64_t global_first;          /* positions [0, global_first) attend and are attended everywhere */
    const int64_t* global_list;    /* further global positions */
    size_t n_global_list;
    int64_t block;                 /* block size of the block mask, stride and random parts; 64 */
    const uint8_t* block_mask;     /* [block_mask_rows x block_mask_cols], 1 = the block is allowed */
    int64_t block_mask_rows, block_mask_cols;
    int64_t stride;                /* > 0: key blocks kb with kb % stride == stride - 1 */
    int64_t random_blocks;         /* random key blocks per query block row, the same on every rank */
    uint64_t random_seed;
    int64_t seq_len;               /* total keys (needed by the random part) */
    const float* alibi_slopes;     /* one per query head: s -= slope[h] * |q - k| */
    size_t n_alibi_slopes;
    float softcap;                 /* > 0: s = softcap * tanh(s / softcap) */
    float scale;                   /* 0: 1 / sqrt(D) */
} la_pattern;
void la_pattern_default(la_pattern* p);

typedef struct la_context la_context;

/* A context of one process (no MPI): the single-process kernels behind the same calls. */
la_status la_context_create_local(const la_options* opt, la_context** out);
/* Contexts over MPI and NCCL communicators: longattn_mpi.h. */
/* Collective where the communicator has several ranks. NULL is ignored. */
void la_context_destroy(la_context* ctx);
/* This rank and the rank count of the context's communicator. */
la_status la_context_rank(const la_context* ctx, int* rank, int* size);
/* An LA_AUTO context's cluster (configs/clusters/ in the sources: nodes, devices per node, links,
 * device throughput and memory), read now (errors name the file, its line and key): the plans built
 * from then on are modelled on it, ranked by the forward's time plus, with backward != 0, the
 * backward's, among the strategies that fit the cluster's memory. Plans already built are dropped.
 * Not collective, but every rank calls it alike (the ranks must agree on the pick, or the next call
 * fails on every rank). */
la_status la_context_set_cluster(la_context* ctx, const char* cluster_path, int backward);
/* The strategy and Ulysses degree of the plan the context's last forward or backward used (for
 * LA_AUTO, the one the cost model picked); LA_ERR_ARGUMENT before any call. */
la_status la_context_strategy(const la_context* ctx, la_strategy* strategy, int* ulysses_degree);
/* The plan cache: calls that found their plan, calls that built one, plans dropped, plans held. */
la_status la_cache_stats(const la_context* ctx, int64_t* hits, int64_t* misses, int64_t* evictions, int64_t* plans);

/* Global positions of rank `rank`'s rows when `tokens` tokens are sharded over `ranks` ranks:
 * layout 0 contiguous, 1 zigzag (2 * ranks chunks, rank r holding chunks r and 2 * ranks - 1 - r:
 * causal work balanced), 2 striped (token t on rank t % ranks). *count receives the row count; pos
 * (NULL to ask the count only) receives the positions. */
typedef enum { LA_CONTIGUOUS = 0, LA_ZIGZAG = 1, LA_STRIPED = 2, LA_LAYOUT_INT_RANGE_ = -0x7fffffff - 1 } la_layout;
la_status la_layout_positions(la_layout layout, int64_t tokens, int ranks, int rank, int64_t* pos, int64_t* count);

/* The cost model (the C++ longattn/cost_model.hpp), nothing run: a job of `tokens` tokens (batch,
 * heads over kv_heads of head_dim, storage dtype, pattern) on `ranks` devices of the cluster file at
 * cluster_path, every strategy, hybrid degree and layout (zigzag, contiguous) ranked as --strategy auto
 * ranks them: those that fit the cluster's memory first, then by the forward's predicted time plus,
 * with backward != 0, the backward's. Up to `capacity` of them go to out[] (NULL with capacity 0: count
 * only), fastest first; *count receives how many there are. Not collective. */
typedef struct {
    la_strategy strategy;
    int ulysses_degree;
    la_layout layout;
    double fwd_s, bwd_s;   /* one forward call, one backward call */
    double exposed_s;      /* of fwd_s + bwd_s, communication not hidden behind the kernels */
    double efficiency;     /* the ideal time (every pair's FLOPs spread evenly, no communication) over fwd_s + bwd_s */
    double device_bytes;   /* the most one device holds for the attention in a backward call */
    int fits;              /* device_bytes within the cluster's memory (always, where it gives none) */
} la_prediction;
la_status la_predict(const char* cluster_path, int ranks, int64_t tokens, int64_t batch, int64_t heads, int64_t kv_heads,
                     int64_t head_dim, DLDataType dtype, const la_pattern* pattern, int backward, la_prediction* out,
                     size_t capacity, size_t* count);

/* O and LSE of the local rows. */
la_status la_forward(la_context* ctx, const la_pattern* pattern, const int64_t* pos, const DLTensor* q,
                     const DLTensor* k, const DLTensor* v, DLTensor* o, DLTensor* lse);
/* dQ, dK, dV of the local rows from the forward's O and LSE; accumulate != 0 adds to what they hold. */
la_status la_backward(la_context* ctx, const la_pattern* pattern, const int64_t* pos, const DLTensor* q,
                      const DLTensor* k, const DLTensor* v, const DLTensor* o, const DLTensor* dout,
                      const DLTensor* lse, DLTensor* dq, DLTensor* dk, DLTensor* dv, int accumulate);

/* Decoding over a sharded, paged KV cache (the C++ longattn/kv_cache.hpp): the cache lives on every
 * rank of a context's communicator, each rank holding its pages; a decode step appends each
 * sequence's new tokens on the rank that owns their position, attends the new queries to every
 * rank's pages and combines the partials in one collective. */
typedef struct la_kv_cache la_kv_cache;
typedef enum { LA_KV_ROUND_ROBIN = 0, LA_KV_LAYOUT = 1, LA_KV_PLACEMENT_INT_RANGE_ = -0x7fffffff - 1 } la_kv_placement;
typedef enum { LA_COMBINE_ALLGATHER = 0, LA_COMBINE_ALLREDUCE = 1, LA_COMBINE_INT_RANGE_ = -0x7fffffff - 1 } la_decode_combine;

typedef struct {
    int64_t batch;            /* sequences; 1 */
    int64_t capacity;         /* positions [0, capacity) per sequence (required, > 0) */
    int64_t kv_heads;         /* 1 */
    int64_t head_dim;         /* 64 */
    DLDataType dtype;         /* storage of the pages: float32, bfloat16 (the default) or float16 */
    int64_t page_tokens;      /* slots per page, a positive multiple of 16; 64 */
    la_kv_placement placement;  /* LA_KV_ROUND_ROBIN: pages dealt out in turn, even shards as sequences grow */
    la_layout layout;         /* LA_KV_LAYOUT: position t on the rank this layout over the capacity gives it */
    int64_t pages;            /* pages per rank; 0: an even share of every sequence at full capacity, plus 2 */
} la_kv_cache_options;
void la_kv_cache_options_default(la_kv_cache_options* opt);

/* A cache over ctx's communicator (which must outlive it). Not collective; every rank makes one alike.
 * la_kv_cache_destroy(NULL) is ignored. */
la_status la_kv_cache_create(la_context* ctx, const la_kv_cache_options* opt, la_kv_cache** out);
void la_kv_cache_destroy(la_kv_cache* cache);
/* Prefill, local: this rank's rows of sequence seq at global positions pos[0, n) (increasing, above any
 * row this rank holds of seq) from rows [0, n) of batch entry `entry` of k and v ([B, S, Hkv, D], host
 * memory, any of the three dtypes). Then la_kv_cache_sync_lengths (collective) on every rank. */
la_status la_kv_cache_write(la_kv_cache* cache, int64_t seq, const int64_t* pos, int64_t n, const DLTensor* k,
                            const DLTensor* v, int64_t entry);
la_status la_kv_cache_sync_lengths(la_kv_cache* cache);
/* Tokens in sequence seq (the same on every rank). */
la_status la_kv_cache_length(const la_kv_cache* cache, int64_t seq, int64_t* length);
/* This rank's share: pages used and held, filled slots, and the pages' bytes. NULL outputs are skipped. */
la_status la_kv_cache_stats(const la_kv_cache* cache, int64_t* pages_used, int64_t* pages_total, int64_t* tokens,
                            uint64_t* bytes);
/* Collective: one decode step of every sequence, T new tokens each. q [B, T, Hq, D] (B = the batch) is
 * the same on every rank; k and v [B, T, Hkv, D] are appended at positions length .. length + T - 1
 * before the queries attend (NULL k and v: nothing is appended, the queries sit at the last T
 * positions). o [B, T, Hq, D] and lse [B, Hq, T] are float32, compact, the same on every rank. A bad
 * argument on any rank, a position beyond the capacity or a rank out of pages fail on every rank and
 * leave the cache as it was. threads: kernel threads (0: all). */
la_status la_decode_step(la_kv_cache* cache, const la_pattern* pattern, const DLTensor* q, const DLTensor* k,
                         const DLTensor* v, DLTensor* o, DLTensor* lse, la_decode_combine combine, int threads);

#ifdef __cplusplus
}
#endif
#endif /* LONGATTN_H */
