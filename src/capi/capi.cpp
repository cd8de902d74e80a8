// The C interface (longattn.h) over longattn::Context: DLPack descriptors become TensorViews, the
// pattern descriptor a Pattern, exceptions status codes with the message kept per thread.
#include "capi/capi_internal.hpp"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <new>
#include <optional>
#include <stdexcept>

#include "comm/self_communicator.hpp"
#include "kernels/backend.hpp"
#include "longattn/cost_model.hpp"
#include "longattn/cpu_isa.hpp"
#include "longattn/kv_cache.hpp"
#include "longattn/layout.hpp"

namespace {

using namespace longattn;

thread_local std::string g_error;

DType dtype_of(const DLDataType& t, const char* name) {
    require(t.lanes == 1, name, "must have one lane per element, got ", t.lanes);
    if (t.code == kDLFloat && t.bits == 32) return DType::f32;
    if (t.code == kDLFloat && t.bits == 16) return DType::f16;
    if (t.code == kDLBfloat && t.bits == 16) return DType::bf16;
    require(false, name, "must be float32, bfloat16 or float16, got DLPack type code ", int(t.code), " with ",
            int(t.bits), " bits");
    return DType::f32;
}

Device device_of(const DLDevice& d, const char* name) {
    if (d.device_type == kDLCPU || d.device_type == kDLCUDAHost) return Device::cpu;
    if (d.device_type == kDLCUDA) {
        if (!kernels::backend(Device::cuda).built) throw la::Unsupported(std::string(name) + ": a CUDA tensor, and this build has no CUDA");
        return Device::cuda;
    }
    require(false, name, "must be in host (kDLCPU, kDLCUDAHost) or CUDA (kDLCUDA) memory, got DLPack device type ",
            int(d.device_type));
    return Device::cpu;
}

// A 4-d [B, S, H, D] view of t (NULL strides: compact).
TensorView view_of(const DLTensor* t, const char* name) {
    require(t != nullptr, name, "is NULL");
    require(t->ndim == 4, name, "must be a 4-d tensor [B, S, H, D], got ", t->ndim, " dimensions");
    require(t->shape != nullptr, name, "has no shape");
    require(t->data != nullptr || t->shape[0] * t->shape[1] * t->shape[2] * t->shape[3] == 0, name, "has no data");
    TensorView v;
    v.dtype = dtype_of(t->dtype, name);
    v.device = device_of(t->device, name);
    v.data = static_cast<char*>(t->data) + t->byte_offset;
    v.rank = 4;
    std::int64_t compact = 1;
    for (int i = 3; i >= 0; --i) {
        require(t->shape[i] >= 0, name, "shape[", i, "] must be >= 0, got ", t->shape[i]);
        v.shape[static_cast<std::size_t>(i)] = t->shape[i];
        v.stride[static_cast<std::size_t>(i)] = t->strides ? t->strides[i] : compact;
        compact *= t->shape[i];
    }
    return v;
}

// LSE: [B, Hq, S] float32, compact.
float* lse_of(const DLTensor* t, const char* name) {
    require(t != nullptr, name, "is NULL");
    require(t->ndim == 3 && t->shape != nullptr, name, "must be a 3-d tensor [B, Hq, S], got ", t->ndim, " dimensions");
    require(dtype_of(t->dtype, name) == DType::f32, name, "must be float32");
    (void)device_of(t->device, name);
    if (t->strides)
        require(t->strides[2] == 1 && t->strides[1] == t->shape[2] && t->strides[0] == t->shape[1] * t->shape[2], name,
                "must be compact (strides [Hq * S, S, 1])");
    return reinterpret_cast<float*>(static_cast<char*>(t->data) + t->byte_offset);
}

template <class T>
std::vector<T> list(const T* p, std::size_t n, const char* name) {
    require(n == 0 || p != nullptr, name, "is NULL with ", n, " entries");
    return n == 0 ? std::vector<T>{} : std::vector<T>(p, p + n);
}

Pattern pattern_of(const la_pattern* p) {
    require(p != nullptr, "pattern", "is NULL (la_pattern_default gives dense attention)");
    PatternSpec s;
    s.causal = p->causal != 0;
    if (p->has_window) s.window = Window{p->window_left, p->window_right};
    s.doc_bounds = list(p->doc_bounds, p->n_doc_bounds, "pattern.doc_bounds");
    s.global_first = p->global_first;
    s.global_list = list(p->global_list, p->n_global_list, "pattern.global_list");
    s.block = p->block;
    require(p->block_mask_rows >= 0 && p->block_mask_cols >= 0, "pattern.block_mask_rows", "must be >= 0");
    s.block_mask = list(p->block_mask, static_cast<std::size_t>(p->block_mask_rows * p->block_mask_cols), "pattern.block_mask");
    s.block_mask_rows = p->block_mask_rows, s.block_mask_cols = p->block_mask_cols;
    s.stride = p->stride;
    s.random_blocks = p->random_blocks, s.random_seed = p->random_seed;
    s.seq_len = p->seq_len;
    s.alibi_slopes = list(p->alibi_slopes, p->n_alibi_slopes, "pattern.alibi_slopes");
    s.softcap = p->softcap, s.scale = p->scale;
    return Pattern(std::move(s));
}

// Every rank learns of this rank's refusal through `refuse` (a collective that throws on every rank);
// a build that lacks what was asked stays LA_ERR_UNSUPPORTED.
[[noreturn]] void agree_on_refusal(const Error& e, const std::function<void(const std::string&)>& refuse) {
    const bool unsupported = dynamic_cast<const la::Unsupported*>(&e) != nullptr;
    try {
        refuse(e.what());
    } catch (const Error& agreed) {
        if (unsupported) throw la::Unsupported(agreed.what());
        throw;
    }
    throw Error(e.what());  // refuse always throws
}

// A forward or backward call: this rank's arguments are read first (read fills args from the DLPack
// descriptors), a refusal agreed with the other ranks, then the context runs the call.
template <class Args>
la_status run_call(la_context* ctx, const la_pattern* pattern, const int64_t* pos,
                   void (Context::*call)(const Args&, DistStats*), const std::function<void(Args&)>& read) {
    if (ctx == nullptr) return la::guard([] { require(false, "ctx", "is NULL"); });
    return la::guard([&] {
        // Alike on every rank (la_context_set_cluster is called alike): no rank waits.
        require(!ctx->needs_cluster, "strategy", "LA_AUTO picks by a cluster file: call la_context_set_cluster first");
        Args a;
        std::optional<Pattern> pat;
        try {
            pat.emplace(pattern_of(pattern));
            read(a);
        } catch (const Error& e) {
            agree_on_refusal(e, [&](const std::string& why) { ctx->ctx->refuse(why); });
        }
        a.pos = pos, a.pattern = &*pat;
        (ctx->ctx.get()->*call)(a, nullptr);
    });
}

// o [B, T, Hq, D] float32 compact, of exactly `shape`.
float* compact_f32(const DLTensor* t, const char* name, const std::int64_t (&shape)[4]) {
    const TensorView v = view_of(t, name);
    require(v.dtype == DType::f32, name, "must be float32");
    std::int64_t stride = 1;
    for (int i = 3; i >= 0; --i) {
        require(v.shape[static_cast<std::size_t>(i)] == shape[i], name, "must be [", shape[0], ", ", shape[1], ", ",
                shape[2], ", ", shape[3], "] like q, got shape[", i, "] = ", v.shape[static_cast<std::size_t>(i)]);
        require(v.shape[static_cast<std::size_t>(i)] <= 1 || v.stride[static_cast<std::size_t>(i)] == stride, name, "must be compact");
        stride *= shape[i];
    }
    return static_cast<float*>(v.data);
}

}  // namespace

struct la_kv_cache {
    std::unique_ptr<longattn::KvCache> cache;
};

namespace la {

la_status guard(const std::function<void()>& f) {
    try {
        f();
        g_error.clear();
        return LA_OK;
    } catch (const Unsupported& e) {
        g_error = e.what();
        return LA_ERR_UNSUPPORTED;
    } catch (const Error& e) {
        g_error = e.what();
        return LA_ERR_ARGUMENT;
    } catch (const std::bad_alloc&) {
        g_error = "out of memory";
        return LA_ERR_RUNTIME;
    } catch (const std::exception& e) {
        g_error = e.what();
        return LA_ERR_RUNTIME;
    } catch (...) {
        g_error = "unknown failure";
        return LA_ERR_RUNTIME;
    }
}

ContextOptions options_of(const la_options* opt) {
    la_options d;
    la_options_default(&d);
    const la_options& o = opt ? *opt : d;
    require(o.strategy >= LA_RING && o.strategy <= LA_AUTO, "strategy",
            "must be LA_RING, LA_ULYSSES, LA_HYBRID, LA_ALLGATHER or LA_AUTO, got ", int(o.strategy));
    require(o.ulysses_degree >= 1, "ulysses_degree", "must be >= 1, got ", o.ulysses_degree);
    require(o.kv_head_chunk >= 0, "kv_head_chunk", "must be >= 0 (0: all), got ", o.kv_head_chunk);
    require(o.threads >= 0, "threads", "must be >= 0 (0: all), got ", o.threads);
    require(o.progress_chunks >= 1, "progress_chunks", "must be >= 1, got ", o.progress_chunks);
    require(o.max_plans >= 1, "max_plans", "must be >= 1, got ", o.max_plans);
    require(std::isfinite(o.timeout_s) && o.timeout_s >= 0, "timeout_s", "must be >= 0 seconds (0: no watchdog), got ", o.timeout_s);
    ContextOptions c;
    c.dist.strategy = o.strategy == LA_AUTO ? StrategyKind::ring : static_cast<StrategyKind>(o.strategy);
    c.dist.ulysses_degree = o.ulysses_degree;
    c.dist.kv_head_chunk = o.kv_head_chunk;
    c.dist.threads = o.threads;
    c.dist.progress_chunks = o.progress_chunks;
    c.max_plans = o.max_plans;
    return c;
}

la_status create(std::unique_ptr<comm::Communicator> comm, const ContextOptions& o, const la_options* opt, la_context** out) {
    return guard([&] {
        require(out != nullptr, "out", "is NULL");
        auto* c = new la_context{std::move(comm), nullptr, opt != nullptr && opt->strategy == LA_AUTO};
        c->ctx = std::make_unique<Context>(*c->comm, o);
        *out = c;
    });
}

}  // namespace la

extern "C" {

const char* la_version(void) {
    static char v[16];
    std::snprintf(v, sizeof(v), "%d.%d.%d", LA_VERSION_MAJOR, LA_VERSION_MINOR, LA_VERSION_PATCH);
    return v;
}

int la_version_number(void) { return LA_VERSION_MAJOR * 10000 + LA_VERSION_MINOR * 100 + LA_VERSION_PATCH; }

const char* la_last_error(void) { return g_error.c_str(); }

const char* la_cpu_isa(void) {
    static thread_local std::string name;
    if (la::guard([&] { name = longattn::cpu_isa(); }) != LA_OK) return "";
    return name.c_str();
}

la_status la_set_cpu_isa(const char* name) {
    return la::guard([&] {
        require(name != nullptr, "name", "is NULL");
        longattn::set_cpu_isa(name);
    });
}

void la_options_default(la_options* opt) {
    if (opt == nullptr) return;
    *opt = la_options{LA_RING, 1, 0, 0, 4, 8, 0.0};
}

void la_pattern_default(la_pattern* p) {
    if (p == nullptr) return;
    *p = la_pattern{};
    p->window_left = p->window_right = -1;
    p->block = 64;
}

la_status la_context_create_local(const la_options* opt, la_context** out) {
    la_status st = LA_OK;
    ContextOptions o;
    if ((st = la::guard([&] { o = la::options_of(opt); })) != LA_OK) return st;
    // One process: the collectives copy on the tensors' device.
    auto copy = [](void* dst, const void* src, std::size_t bytes) {
        const kernels::Backend& cuda = kernels::backend(Device::cuda);
        if (cuda.built && cuda.available()) cuda.memcpy(dst, src, bytes);
        else std::memcpy(dst, src, bytes);
    };
    return la::create(std::make_unique<comm::SelfCommunicator>(copy), o, opt, out);
}

void la_context_destroy(la_context* ctx) { delete ctx; }

la_status la_context_rank(const la_context* ctx, int* rank, int* size) {
    return la::guard([&] {
        require(ctx != nullptr, "ctx", "is NULL");
        if (rank) *rank = ctx->comm->rank();
        if (size) *size = ctx->comm->size();
    });
}

la_status la_context_set_cluster(la_context* ctx, const char* cluster_path, int backward) {
    return la::guard([&] {
        require(ctx != nullptr, "ctx", "is NULL");
        require(cluster_path != nullptr, "cluster_path", "is NULL");
        require(ctx->needs_cluster || ctx->ctx->options().dist.choose, "strategy",
                "the context was not created with LA_AUTO: its strategy is fixed");
        auto c = std::make_shared<AutoChoice>();
        c->cluster = load_cluster(cluster_path);
        c->backward = backward != 0;
        ctx->ctx->set_choice(std::move(c));
        ctx->needs_cluster = false;
    });
}

la_status la_predict(const char* cluster_path, int ranks, int64_t tokens, int64_t batch, int64_t heads, int64_t kv_heads,
                     int64_t head_dim, DLDataType dtype, const la_pattern* pattern, int backward, la_prediction* out,
                     size_t capacity, size_t* count) {
    return la::guard([&] {
        require(cluster_path != nullptr, "cluster_path", "is NULL");
        require(count != nullptr, "count", "is NULL");
        require(out != nullptr || capacity == 0, "out", "is NULL with a capacity of ", capacity);
        require(ranks >= 1 && ranks <= 4096, "ranks", "must be 1 to 4096, got ", ranks);
        require(tokens >= 1, "tokens", "must be >= 1, got ", tokens);
        require(batch >= 1, "batch", "must be >= 1, got ", batch);
        require(head_dim >= 1 && head_dim <= 256, "head_dim", "must be 1 to 256, got ", head_dim);
        const ClusterSpec cl = load_cluster(cluster_path);
        PatternSpec spec = pattern_of(pattern).spec();
        if (spec.seq_len == 0) spec.seq_len = tokens;
        ModelJob j;
        j.tokens = tokens, j.batch = batch, j.heads = heads, j.kv_heads = kv_heads, j.head_dim = head_dim;
        j.dtype = dtype_of(dtype, "dtype"), j.ranks = ranks;
        const std::vector<StrategyChoice> ranked = rank_strategies(cl, j, Pattern(spec), backward != 0);
        *count = ranked.size();
        for (std::size_t i = 0; i < std::min(capacity, ranked.size()); ++i) {
            const StrategyChoice& c = ranked[i];
            out[i] = la_prediction{static_cast<la_strategy>(c.dist.strategy),
                                   c.dist.ulysses_degree,
                                   static_cast<la_layout>(c.layout),
                                   c.p.fwd_s,
                                   c.p.bwd_s,
                                   c.p.exposed_s,
                                   c.p.efficiency(),
                                   c.p.device_memory(true),
                                   c.fits ? 1 : 0};
        }
    });
}

la_status la_context_strategy(const la_context* ctx, la_strategy* strategy, int* ulysses_degree) {
    return la::guard([&] {
        require(ctx != nullptr, "ctx", "is NULL");
        const DistOptions* d = ctx->ctx->last_options();
        require(d != nullptr, "ctx", "has run no forward or backward yet");
        if (strategy) *strategy = static_cast<la_strategy>(d->strategy);
        if (ulysses_degree) *ulysses_degree = d->ulysses_degree;
    });
}

la_status la_cache_stats(const la_context* ctx, int64_t* hits, int64_t* misses, int64_t* evictions, int64_t* plans) {
    return la::guard([&] {
        require(ctx != nullptr, "ctx", "is NULL");
        const CacheStats& c = ctx->ctx->cache();
        if (hits) *hits = c.hits;
        if (misses) *misses = c.misses;
        if (evictions) *evictions = c.evictions;
        if (plans) *plans = static_cast<int64_t>(c.plans);
    });
}

la_status la_layout_positions(la_layout layout, int64_t tokens, int ranks, int rank, int64_t* pos, int64_t* count) {
    return la::guard([&] {
        require(layout >= LA_CONTIGUOUS && layout <= LA_STRIPED, "layout", "must be LA_CONTIGUOUS, LA_ZIGZAG or LA_STRIPED");
        require(ranks >= 1, "ranks", "must be >= 1, got ", ranks);
        require(rank >= 0 && rank < ranks, "rank", "must be in [0, ", ranks, "), got ", rank);
        require(count != nullptr, "count", "is NULL");
        const Layout l(static_cast<LayoutKind>(layout), tokens, ranks);
        *count = l.local_count(rank);
        if (pos == nullptr) return;
        const std::vector<std::int64_t> p = l.positions(rank);
        std::copy(p.begin(), p.end(), pos);
    });
}

la_status la_forward(la_context* ctx, const la_pattern* pattern, const int64_t* pos, const DLTensor* q, const DLTensor* k,
                     const DLTensor* v, DLTensor* o, DLTensor* lse) {
    return run_call<DistForwardArgs>(ctx, pattern, pos, &Context::forward, [&](DistForwardArgs& a) {
        a.q = view_of(q, "q"), a.k = view_of(k, "k"), a.v = view_of(v, "v"), a.o = view_of(o, "o");
        a.lse = lse_of(lse, "lse");
    });
}

la_status la_backward(la_context* ctx, const la_pattern* pattern, const int64_t* pos, const DLTensor* q, const DLTensor* k,
                      const DLTensor* v, const DLTensor* o, const DLTensor* dout, const DLTensor* lse, DLTensor* dq,
                      DLTensor* dk, DLTensor* dv, int accumulate) {
    return run_call<DistBackwardArgs>(ctx, pattern, pos, &Context::backward, [&](DistBackwardArgs& a) {
        a.q = view_of(q, "q"), a.k = view_of(k, "k"), a.v = view_of(v, "v"), a.o = view_of(o, "o");
        a.dout = view_of(dout, "dout");
        a.lse = lse_of(lse, "lse");
        a.dq = view_of(dq, "dq"), a.dk = view_of(dk, "dk"), a.dv = view_of(dv, "dv");
        a.accumulate = accumulate != 0;
    });
}

void la_kv_cache_options_default(la_kv_cache_options* opt) {
    if (opt == nullptr) return;
    *opt = la_kv_cache_options{1, 0, 1, 64, DLDataType{kDLBfloat, 16, 1}, 64, LA_KV_ROUND_ROBIN, LA_ZIGZAG, 0};
}

la_status la_kv_cache_create(la_context* ctx, const la_kv_cache_options* opt, la_kv_cache** out) {
    return la::guard([&] {
        require(ctx != nullptr, "ctx", "is NULL");
        require(out != nullptr, "out", "is NULL");
        la_kv_cache_options d;
        la_kv_cache_options_default(&d);
        const la_kv_cache_options& o = opt ? *opt : d;
        require(o.placement == LA_KV_ROUND_ROBIN || o.placement == LA_KV_LAYOUT, "placement",
                "must be LA_KV_ROUND_ROBIN or LA_KV_LAYOUT, got ", int(o.placement));
        require(o.layout >= LA_CONTIGUOUS && o.layout <= LA_STRIPED, "layout", "must be LA_CONTIGUOUS, LA_ZIGZAG or LA_STRIPED, got ",
                int(o.layout));
        KvCacheOptions c;
        c.batch = o.batch, c.capacity = o.capacity, c.kv_heads = o.kv_heads, c.head_dim = o.head_dim;
        c.dtype = dtype_of(o.dtype, "dtype");
        c.page_tokens = o.page_tokens;
        c.placement = o.placement == LA_KV_LAYOUT ? KvPlacement::layout : KvPlacement::round_robin;
        c.layout = static_cast<LayoutKind>(o.layout);
        c.pages = o.pages;
        auto cache = std::make_unique<KvCache>(ctx->comm.get(), c);
        *out = new la_kv_cache{std::move(cache)};
    });
}

void la_kv_cache_destroy(la_kv_cache* cache) { delete cache; }

la_status la_kv_cache_write(la_kv_cache* cache, int64_t seq, const int64_t* pos, int64_t n, const DLTensor* k,
                            const DLTensor* v, int64_t entry) {
    return la::guard([&] {
        require(cache != nullptr, "cache", "is NULL");
        require(pos != nullptr || n == 0, "pos", "is NULL with ", n, " rows");
        cache->cache->write(seq, pos, n, view_of(k, "k"), view_of(v, "v"), entry);
    });
}

la_status la_kv_cache_sync_lengths(la_kv_cache* cache) {
    return la::guard([&] {
        require(cache != nullptr, "cache", "is NULL");
        cache->cache->sync_lengths();
    });
}

la_status la_kv_cache_length(const la_kv_cache* cache, int64_t seq, int64_t* length) {
    return la::guard([&] {
        require(cache != nullptr, "cache", "is NULL");
        require(length != nullptr, "length", "is NULL");
        *length = cache->cache->length(seq);
    });
}

la_status la_kv_cache_stats(const la_kv_cache* cache, int64_t* pages_used, int64_t* pages_total, int64_t* tokens,
                            uint64_t* bytes) {
    return la::guard([&] {
        require(cache != nullptr, "cache", "is NULL");
        const KvCache& c = *cache->cache;
        if (pages_used) *pages_used = c.pages_used();
        if (pages_total) *pages_total = c.pages_total();
        if (tokens) *tokens = c.tokens_held();
        if (bytes) *bytes = c.bytes();
    });
}

la_status la_decode_step(la_kv_cache* cache, const la_pattern* pattern, const DLTensor* q, const DLTensor* k,
                         const DLTensor* v, DLTensor* o, DLTensor* lse, la_decode_combine combine, int threads) {
    if (cache == nullptr) return la::guard([] { require(false, "cache", "is NULL"); });
    return la::guard([&] {
        DecodeArgs a;
        DecodeOptions opt;
        std::optional<Pattern> pat;
        try {
            pat.emplace(pattern_of(pattern));
            a.q = view_of(q, "q");
            require((k == nullptr) == (v == nullptr), "k", "k and v must both be given (append) or both be NULL (replay)");
            if (k) a.k = view_of(k, "k"), a.v = view_of(v, "v");
            const std::int64_t shape[4] = {a.q.shape[0], a.q.shape[1], a.q.shape[2], a.q.shape[3]};
            a.o = compact_f32(o, "o", shape);
            a.lse = lse_of(lse, "lse");
            require(lse->shape[0] == shape[0] && lse->shape[1] == shape[2] && lse->shape[2] == shape[1], "lse",
                    "must be [", shape[0], ", ", shape[2], ", ", shape[1], "] (B, Hq, T of q)");
            require(combine == LA_COMBINE_ALLGATHER || combine == LA_COMBINE_ALLREDUCE, "combine",
                    "must be LA_COMBINE_ALLGATHER or LA_COMBINE_ALLREDUCE, got ", int(combine));
            opt.combine = combine == LA_COMBINE_ALLREDUCE ? DecodeCombine::allreduce : DecodeCombine::allgather;
            opt.threads = threads;
        } catch (const Error& e) {
            agree_on_refusal(e, [&](const std::string& why) { decode_refuse(*cache->cache, why); });
        }
        a.pattern = &*pat;
        decode_step(*cache->cache, a, opt);
    });
}

}  // extern "C"
