// longattn._core: the C interface (src/capi/longattn.h) for Python, through nanobind. Tensors cross by
// DLPack without a copy (numpy arrays, torch tensors, anything with __dlpack__); the outputs are the
// caller's arrays, written in place. A tensor that is not one, or a pos that does not fit the rows, is
// handed to the C interface as NULL so that its agreement makes the call fail on every rank alike; the
// rank at fault then raises its own TypeError or ValueError, the others the C interface's message.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "capi/longattn.h"
#include "capi/longattn_mpi.h"

namespace nb = nanobind;

namespace {

// Raises the Python exception for a failed call: TypeError for a storage type or memory kind,
// ValueError for any other bad argument, RuntimeError for a failure while running.
[[noreturn]] void raise(la_status st, const std::string& local_type, const std::string& local_value) {
    if (!local_type.empty()) throw nb::type_error(local_type.c_str());
    if (!local_value.empty()) throw nb::value_error(local_value.c_str());
    const std::string msg = la_last_error();
    if (st == LA_ERR_ARGUMENT) {
        if (msg.find("must be float32") != std::string::npos || msg.find("dtype") != std::string::npos ||
            msg.find("memory (kDL") != std::string::npos)
            throw nb::type_error(msg.c_str());
        throw nb::value_error(msg.c_str());
    }
    throw std::runtime_error(msg);
}

void check(la_status st) {
    if (st != LA_OK) raise(st, "", "");
}

// One call's arguments as the C interface takes them, with what this rank found wrong with them.
struct Call {
    std::vector<nb::ndarray<>> keep;  // the arrays, alive for the call
    std::string type_error, value_error;

    // t stays zeroed (the C interface then refuses it as NULL) unless obj is an array.
    bool tensor(nb::handle obj, const char* name, DLTensor& t) {
        nb::ndarray<> a;
        if (obj.is_none() || !nb::try_cast(obj, a, false)) {
            if (type_error.empty())
                type_error = std::string(name) + ": must be an array or tensor with DLPack (numpy, torch), got " +
                             nb::type_name(obj.type()).c_str();
            return false;
        }
        keep.push_back(a);
        t.data = a.data_handle();
        t.byte_offset = a.byte_offset();
        t.ndim = static_cast<int>(a.ndim());
        t.shape = const_cast<int64_t*>(a.shape_ptr());
        t.strides = const_cast<int64_t*>(a.stride_ptr());
        t.dtype = DLDataType{a.dtype().code, a.dtype().bits, a.dtype().lanes};
        t.device = DLDevice{static_cast<DLDeviceType>(a.device_type()), a.device_id()};
        return true;
    }

    // pos: int64, one per local row (rows = q's S), contiguous, in host memory.
    const int64_t* positions(nb::handle obj, const DLTensor& q) {
        nb::ndarray<> a;
        if (!nb::try_cast(obj, a, false)) {
            if (type_error.empty()) type_error = "pos: must be an int64 array or tensor of the global positions";
            return nullptr;
        }
        keep.push_back(a);
        const bool i64 = a.dtype().code == static_cast<uint8_t>(nb::dlpack::dtype_code::Int) && a.dtype().bits == 64;
        const bool host = a.device_type() == nb::device::cpu::value;
        if (!i64 || !host) {
            if (type_error.empty()) type_error = "pos: must be int64 in host memory";
            return nullptr;
        }
        const int64_t rows = q.ndim == 4 && q.shape ? q.shape[1] : -1;
        const bool flat = a.ndim() == 1 && (a.shape(0) <= 1 || a.stride(0) == 1);
        if (!flat || (rows >= 0 && static_cast<int64_t>(a.shape(0)) != rows)) {
            if (value_error.empty())
                value_error = "pos: must be a contiguous 1-d array of " + std::to_string(rows) +
                              " positions (one per row of q), got " + std::to_string(a.ndim()) + " dimensions" +
                              (a.ndim() == 1 ? " and " + std::to_string(a.shape(0)) + " positions" : std::string());
            return nullptr;
        }
        return static_cast<const int64_t*>(a.data_handle());
    }

    void fail_if(la_status st) const {
        if (st != LA_OK || !type_error.empty() || !value_error.empty()) raise(st, type_error, value_error);
    }
};

// The pattern descriptor with storage for its lists.
struct PatternArgs {
    la_pattern p{};
    std::vector<int64_t> doc_bounds, global_list;
    std::vector<uint8_t> block_mask;
    std::vector<float> alibi;
    PatternArgs() { la_pattern_default(&p); }
    const la_pattern* get() {
        p.doc_bounds = doc_bounds.data();
        p.n_doc_bounds = doc_bounds.size();
        p.global_list = global_list.data();
        p.n_global_list = global_list.size();
        p.block_mask = block_mask.empty() ? nullptr : block_mask.data();
        p.alibi_slopes = alibi.data();
        p.n_alibi_slopes = alibi.size();
        return &p;
    }
};

class Context {
public:
    // fcomm: the Fortran handle of an MPI communicator (mpi4py's py2f()), or none for one process.
    Context(std::optional<int64_t> fcomm, int strategy, int ulysses_degree, int64_t kv_head_chunk, int threads,
            int progress_chunks, size_t max_plans, double timeout_s) {
        la_options o;
        la_options_default(&o);
        o.strategy = static_cast<la_strategy>(strategy);
        o.ulysses_degree = ulysses_degree;
        o.kv_head_chunk = kv_head_chunk;
        o.threads = threads;
        o.progress_chunks = progress_chunks;
        o.max_plans = max_plans;
        o.timeout_s = timeout_s;
        if (fcomm) check(la_context_create_mpi_f(static_cast<MPI_Fint>(*fcomm), &o, &ctx_));
        else check(la_context_create_local(&o, &ctx_));
    }
    ~Context() { close(); }
    Context(const Context&) = delete;
    Context& operator=(const Context&) = delete;

    void close() {
        la_context_destroy(ctx_);
        ctx_ = nullptr;
    }
    la_context* get() const {
        if (ctx_ == nullptr) throw nb::value_error("context: closed");
        return ctx_;
    }
    std::tuple<int, int> rank_size() const {
        int r = 0, s = 1;
        check(la_context_rank(get(), &r, &s));
        return {r, s};
    }
    void set_cluster(const std::string& path, bool backward) { check(la_context_set_cluster(get(), path.c_str(), backward)); }
    std::tuple<int, int> strategy_used() const {
        la_strategy s = LA_RING;
        int u = 1;
        check(la_context_strategy(get(), &s, &u));
        return {static_cast<int>(s), u};
    }
    std::tuple<int64_t, int64_t, int64_t, int64_t> cache() const {
        int64_t h = 0, m = 0, e = 0, p = 0;
        check(la_cache_stats(get(), &h, &m, &e, &p));
        return {h, m, e, p};
    }

    void forward(PatternArgs& pat, nb::handle pos, nb::handle q, nb::handle k, nb::handle v, nb::handle o,
                 nb::handle lse) {
        Call c;
        DLTensor tq{}, tk{}, tv{}, to{}, tl{};
        DLTensor* t[] = {&tq, &tk, &tv, &to, &tl};
        const char* names[] = {"q", "k", "v", "o", "lse"};
        nb::handle objs[] = {q, k, v, o, lse};
        bool ok[5];
        for (int i = 0; i < 5; ++i) ok[i] = c.tensor(objs[i], names[i], *t[i]);
        const int64_t* p = c.positions(pos, tq);
        la_status st;
        {
            nb::gil_scoped_release unlocked;
            st = la_forward(get(), pat.get(), p, ok[0] ? &tq : nullptr, ok[1] ? &tk : nullptr, ok[2] ? &tv : nullptr,
                            ok[3] ? &to : nullptr, ok[4] ? &tl : nullptr);
        }
        c.fail_if(st);
    }

    void backward(PatternArgs& pat, nb::handle pos, nb::handle q, nb::handle k, nb::handle v, nb::handle o,
                  nb::handle dout, nb::handle lse, nb::handle dq, nb::handle dk, nb::handle dv, bool accumulate) {
        Call c;
        DLTensor tq{}, tk{}, tv{}, to{}, td{}, tl{}, gq{}, gk{}, gv{};
        DLTensor* t[] = {&tq, &tk, &tv, &to, &td, &tl, &gq, &gk, &gv};
        const char* names[] = {"q", "k", "v", "o", "dout", "lse", "dq", "dk", "dv"};
        nb::handle objs[] = {q, k, v, o, dout, lse, dq, dk, dv};
        bool ok[9];
        for (int i = 0; i < 9; ++i) ok[i] = c.tensor(objs[i], names[i], *t[i]);
        const int64_t* p = c.positions(pos, tq);
        auto arg = [&](int i) { return ok[i] ? t[i] : nullptr; };
        la_status st;
        {
            nb::gil_scoped_release unlocked;
            st = la_backward(get(), pat.get(), p, arg(0), arg(1), arg(2), arg(3), arg(4), arg(5), arg(6), arg(7),
                             arg(8), accumulate ? 1 : 0);
        }
        c.fail_if(st);
    }

private:
    la_context* ctx_ = nullptr;
};

// A paged KV cache over a context's communicator (la_kv_cache). The Python KvCache closes it before
// its context.
class KvCache {
public:
    KvCache(const Context& ctx, int64_t batch, int64_t capacity, int64_t kv_heads, int64_t head_dim, int dtype_code,
            int dtype_bits, int64_t page_tokens, int placement, int layout, int64_t pages) {
        la_kv_cache_options o;
        la_kv_cache_options_default(&o);
        o.batch = batch, o.capacity = capacity, o.kv_heads = kv_heads, o.head_dim = head_dim;
        o.dtype = DLDataType{static_cast<uint8_t>(dtype_code), static_cast<uint8_t>(dtype_bits), 1};
        o.page_tokens = page_tokens;
        o.placement = static_cast<la_kv_placement>(placement);
        o.layout = static_cast<la_layout>(layout);
        o.pages = pages;
        check(la_kv_cache_create(ctx.get(), &o, &cache_));
    }
    ~KvCache() { close(); }
    KvCache(const KvCache&) = delete;
    KvCache& operator=(const KvCache&) = delete;

    void close() {
        la_kv_cache_destroy(cache_);
        cache_ = nullptr;
    }
    la_kv_cache* get() const {
        if (cache_ == nullptr) throw nb::value_error("kv cache: closed");
        return cache_;
    }

    void write(int64_t seq, nb::handle pos, nb::handle k, nb::handle v, int64_t entry) {
        Call c;
        DLTensor tk{}, tv{}, none{};
        const bool ok = c.tensor(k, "k", tk) && c.tensor(v, "v", tv);
        const int64_t* p = c.positions(pos, none);
        const int64_t n = p ? static_cast<int64_t>(c.keep.back().shape(0)) : 0;
        if (!ok || p == nullptr) c.fail_if(LA_OK);
        la_status st;
        {
            nb::gil_scoped_release unlocked;
            st = la_kv_cache_write(get(), seq, p, n, &tk, &tv, entry);
        }
        c.fail_if(st);
    }
    void sync_lengths() {
        la_status st;
        {
            nb::gil_scoped_release unlocked;
            st = la_kv_cache_sync_lengths(get());
        }
        check(st);
    }
    int64_t length(int64_t seq) const {
        int64_t n = 0;
        check(la_kv_cache_length(get(), seq, &n));
        return n;
    }
    std::tuple<int64_t, int64_t, int64_t, uint64_t> stats() const {
        int64_t used = 0, total = 0, tokens = 0;
        uint64_t bytes = 0;
        check(la_kv_cache_stats(get(), &used, &total, &tokens, &bytes));
        return {used, total, tokens, bytes};
    }

    // k and v None: a replay (nothing appended).
    void decode(PatternArgs& pat, nb::handle q, nb::handle k, nb::handle v, nb::handle o, nb::handle lse, int combine,
                int threads) {
        Call c;
        DLTensor tq{}, tk{}, tv{}, to{}, tl{};
        const bool okq = c.tensor(q, "q", tq), oko = c.tensor(o, "o", to), okl = c.tensor(lse, "lse", tl);
        // One of k and v None: handed over as NULL, for the C interface's "both or neither".
        const bool okk = !k.is_none() && c.tensor(k, "k", tk), okv = !v.is_none() && c.tensor(v, "v", tv);
        la_status st;
        {
            nb::gil_scoped_release unlocked;
            st = la_decode_step(get(), pat.get(), okq ? &tq : nullptr, okk ? &tk : nullptr, okv ? &tv : nullptr,
                                oko ? &to : nullptr, okl ? &tl : nullptr,
                                static_cast<la_decode_combine>(combine), threads);
        }
        c.fail_if(st);
    }

private:
    la_kv_cache* cache_ = nullptr;
};

}  // namespace

NB_MODULE(_core, m) {
    m.doc() = "longattn's C interface (longattn.h) for Python; use the longattn package, not this module";
    m.def("version", [] { return std::string(la_version()); });
    m.def("cpu_isa", [] {
        const std::string s = la_cpu_isa();
        if (s.empty()) throw nb::value_error(la_last_error());
        return s;
    });
    m.def("set_cpu_isa", [](const std::string& name) { check(la_set_cpu_isa(name.c_str())); });
    m.def("predict", [](const std::string& cluster, int ranks, int64_t tokens, int64_t batch, int64_t heads,
                        int64_t kv_heads, int64_t head_dim, int dtype_code, int dtype_bits, const PatternArgs& pat,
                        bool backward) {
        const DLDataType dt{static_cast<uint8_t>(dtype_code), static_cast<uint8_t>(dtype_bits), 1};
        size_t n = 0;
        check(la_predict(cluster.c_str(), ranks, tokens, batch, heads, kv_heads, head_dim, dt, &pat.p, backward, nullptr, 0, &n));
        std::vector<la_prediction> out(n);
        check(la_predict(cluster.c_str(), ranks, tokens, batch, heads, kv_heads, head_dim, dt, &pat.p, backward, out.data(),
                         n, &n));
        std::vector<std::tuple<int, int, int, double, double, double, double, double, bool>> rows;
        for (const la_prediction& r : out)
            rows.emplace_back(static_cast<int>(r.strategy), r.ulysses_degree, static_cast<int>(r.layout), r.fwd_s, r.bwd_s,
                              r.exposed_s, r.efficiency, r.device_bytes, r.fits != 0);
        return rows;
    });
    m.def("layout_positions", [](int layout, int64_t tokens, int ranks, int rank) {
        int64_t n = 0;
        check(la_layout_positions(static_cast<la_layout>(layout), tokens, ranks, rank, nullptr, &n));
        std::vector<int64_t> pos(static_cast<size_t>(n));
        check(la_layout_positions(static_cast<la_layout>(layout), tokens, ranks, rank, pos.data(), &n));
        return pos;
    });

    nb::class_<PatternArgs>(m, "Pattern")
        .def(nb::init<>())
        .def_prop_rw("causal", [](PatternArgs& a) { return a.p.causal != 0; }, [](PatternArgs& a, bool v) { a.p.causal = v; })
        .def("set_window", [](PatternArgs& a, int64_t left, int64_t right) {
            a.p.has_window = 1;
            a.p.window_left = left;
            a.p.window_right = right;
        })
        .def_rw("doc_bounds", &PatternArgs::doc_bounds)
        .def_prop_rw("global_first", [](PatternArgs& a) { return a.p.global_first; }, [](PatternArgs& a, int64_t v) { a.p.global_first = v; })
        .def_rw("global_list", &PatternArgs::global_list)
        .def_prop_rw("block", [](PatternArgs& a) { return a.p.block; }, [](PatternArgs& a, int64_t v) { a.p.block = v; })
        .def("set_block_mask", [](PatternArgs& a, std::vector<uint8_t> mask, int64_t rows, int64_t cols) {
            a.block_mask = std::move(mask);
            a.p.block_mask_rows = rows;
            a.p.block_mask_cols = cols;
        })
        .def_prop_rw("stride", [](PatternArgs& a) { return a.p.stride; }, [](PatternArgs& a, int64_t v) { a.p.stride = v; })
        .def_prop_rw("random_blocks", [](PatternArgs& a) { return a.p.random_blocks; },
                     [](PatternArgs& a, int64_t v) { a.p.random_blocks = v; })
        .def_prop_rw("random_seed", [](PatternArgs& a) { return a.p.random_seed; },
                     [](PatternArgs& a, uint64_t v) { a.p.random_seed = v; })
        .def_prop_rw("seq_len", [](PatternArgs& a) { return a.p.seq_len; }, [](PatternArgs& a, int64_t v) { a.p.seq_len = v; })
        .def_rw("alibi_slopes", &PatternArgs::alibi)
        .def_prop_rw("softcap", [](PatternArgs& a) { return a.p.softcap; }, [](PatternArgs& a, float v) { a.p.softcap = v; })
        .def_prop_rw("scale", [](PatternArgs& a) { return a.p.scale; }, [](PatternArgs& a, float v) { a.p.scale = v; });

    nb::class_<Context>(m, "Context")
        .def(nb::init<std::optional<int64_t>, int, int, int64_t, int, int, size_t, double>(), nb::arg("fcomm").none(),
             nb::arg("strategy"), nb::arg("ulysses_degree"), nb::arg("kv_head_chunk"), nb::arg("threads"),
             nb::arg("progress_chunks"), nb::arg("max_plans"), nb::arg("timeout_s"))
        .def("close", &Context::close)
        .def("rank_size", &Context::rank_size)
        .def("set_cluster", &Context::set_cluster)
        .def("strategy_used", &Context::strategy_used)
        .def("cache", &Context::cache)
        .def("forward", &Context::forward, nb::arg("pattern"), nb::arg("pos").none(), nb::arg("q").none(),
             nb::arg("k").none(), nb::arg("v").none(), nb::arg("o").none(), nb::arg("lse").none())
        .def("backward", &Context::backward, nb::arg("pattern"), nb::arg("pos").none(), nb::arg("q").none(),
             nb::arg("k").none(), nb::arg("v").none(), nb::arg("o").none(), nb::arg("dout").none(),
             nb::arg("lse").none(), nb::arg("dq").none(), nb::arg("dk").none(), nb::arg("dv").none(),
             nb::arg("accumulate"));

    nb::class_<KvCache>(m, "KvCache")
        .def(nb::init<const Context&, int64_t, int64_t, int64_t, int64_t, int, int, int64_t, int, int, int64_t>(),
             nb::arg("ctx"), nb::arg("batch"), nb::arg("capacity"), nb::arg("kv_heads"), nb::arg("head_dim"),
             nb::arg("dtype_code"), nb::arg("dtype_bits"), nb::arg("page_tokens"), nb::arg("placement"),
             nb::arg("layout"), nb::arg("pages"))
        .def("close", &KvCache::close)
        .def("write", &KvCache::write, nb::arg("seq"), nb::arg("pos").none(), nb::arg("k").none(), nb::arg("v").none(),
             nb::arg("entry"))
        .def("sync_lengths", &KvCache::sync_lengths)
        .def("length", &KvCache::length, nb::arg("seq"))
        .def("stats", &KvCache::stats)
        .def("decode", &KvCache::decode, nb::arg("pattern"), nb::arg("q").none(), nb::arg("k").none(),
             nb::arg("v").none(), nb::arg("o").none(), nb::arg("lse").none(), nb::arg("combine"), nb::arg("threads"));
}
