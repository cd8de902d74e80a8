#include "testing.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numbers>
#include <sstream>

#include "kernels/backend.hpp"

namespace longattn::test {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

std::uint64_t splitmix64(std::uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// Uniform in (0, 1], never 0 so the logarithm below is finite.
double unit(std::uint64_t bits) { return (static_cast<double>(bits >> 11) + 1.0) * 0x1.0p-53; }

// Box-Muller on a counter: the value depends only on (seed, n), not on the order of generation.
double normal(std::uint64_t seed, std::uint64_t n) {
    const std::uint64_t key = splitmix64(seed * 0x2545f4914f6cdd1dull + 0x1234567ull);
    const double u1 = unit(splitmix64(key ^ (2 * n)));
    const double u2 = unit(splitmix64(key ^ (2 * n + 1)));
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

std::string show(double x) {
    std::ostringstream os;
    os.precision(4);
    os << std::scientific << x;
    return os.str();
}

}  // namespace

Tensor::Tensor(DType dtype, std::array<std::int64_t, 4> shape, std::int64_t pad) {
    const std::int64_t row = shape[3] + pad;
    const std::int64_t slots = shape[0] * shape[1] * shape[2] * row;
    bytes_.resize(static_cast<std::size_t>(slots) * dtype_size(dtype));
    view_.data = bytes_.empty() ? nullptr : bytes_.data();
    view_.dtype = dtype;
    view_.rank = 4;
    view_.shape = shape;
    view_.stride = {shape[1] * shape[2] * row, shape[2] * row, row, 1};
    // Every slot, padding included, starts as NaN: anything read or left unwritten by mistake shows.
    for (std::int64_t i = 0; i < slots; ++i) store_from_f32(view_.data, dtype, i, kNaN);
}

std::int64_t Tensor::offset_of(std::int64_t n) const {
    const auto& s = view_.shape;
    const std::int64_t d = n % s[3];
    n /= s[3];
    const std::int64_t h = n % s[2];
    n /= s[2];
    const std::int64_t t = n % s[1];
    return view_.offset(n / s[1], t, h, d);
}

float Tensor::get(std::int64_t n) const { return load_as_f32(view_.data, view_.dtype, offset_of(n)); }
void Tensor::set(std::int64_t n, float x) { store_from_f32(view_.data, view_.dtype, offset_of(n), x); }

void Tensor::fill_random(std::uint64_t seed, double amplitude) {
    for (std::int64_t n = 0; n < numel(); ++n)
        set(n, static_cast<float>(amplitude * normal(seed, static_cast<std::uint64_t>(n))));
}

void Tensor::fill(float x) {
    for (std::int64_t n = 0; n < numel(); ++n) set(n, x);
}

std::vector<double> Tensor::to_f64() const {
    std::vector<double> out(static_cast<std::size_t>(numel()));
    for (std::int64_t n = 0; n < numel(); ++n) out[static_cast<std::size_t>(n)] = get(n);
    return out;
}

std::vector<std::int64_t> positions(std::int64_t n, std::int64_t start, std::int64_t step) {
    std::vector<std::int64_t> p(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) p[static_cast<std::size_t>(i)] = start + i * step;
    return p;
}

std::vector<std::int64_t> concat(const std::vector<std::int64_t>& a, const std::vector<std::int64_t>& b) {
    std::vector<std::int64_t> out = a;
    out.insert(out.end(), b.begin(), b.end());
    return out;
}

RefPrecision precision_of(DType t) {
    return t == DType::f32 ? RefPrecision::f32 : t == DType::bf16 ? RefPrecision::bf16 : RefPrecision::f16;
}

std::vector<NamedSpec> pattern_zoo(std::int64_t n, std::int64_t heads) {
    std::vector<NamedSpec> zoo;
    const auto add = [&](const char* name, auto&& edit) {
        PatternSpec s;
        s.block = 16;
        edit(s);
        zoo.push_back({name, std::move(s)});
    };
    // Documents of uneven lengths, the last one ending at n.
    const std::vector<std::int64_t> docs = {0, n / 5, n / 2, n / 2 + n / 4 + 3, n};
    // A block mask with empty rows (query blocks 1 and 4 see nothing: fully masked rows) and a dense
    // row, so EMPTY, PARTIAL and FULL tiles all occur.
    const std::int64_t nb = (n + 15) / 16;
    std::vector<std::uint8_t> mask(static_cast<std::size_t>(nb * nb), 0);
    for (std::int64_t r = 0; r < nb; ++r)
        for (std::int64_t c = 0; c < nb; ++c)
            mask[static_cast<std::size_t>(r * nb + c)] = r == 1 || r == 4 ? 0 : r == 2 ? 1 : (r * 7 + c * 3) % 5 < 2;
    const auto block_mask = [&](PatternSpec& s) {
        s.block_mask = mask;
        s.block_mask_rows = nb;
        s.block_mask_cols = nb;
    };
    add("dense", [](PatternSpec&) {});
    add("causal", [](PatternSpec& s) { s.causal = true; });
    add("window_16_0", [](PatternSpec& s) { s.window = Window{16, 0}; });
    add("window_inf_8", [](PatternSpec& s) { s.window = Window{-1, 8}; });
    add("window_8_inf", [](PatternSpec& s) { s.window = Window{8, -1}; });
    add("causal_window_5_7", [](PatternSpec& s) { s.causal = true; s.window = Window{5, 7}; });
    add("documents", [&](PatternSpec& s) { s.doc_bounds = docs; });
    add("causal_documents", [&](PatternSpec& s) { s.causal = true; s.doc_bounds = docs; });
    add("global_first", [](PatternSpec& s) { s.global_first = 4; });
    add("causal_global_list", [](PatternSpec& s) { s.causal = true; s.global_list = {3, 50, 51, 120}; });
    add("block_mask", block_mask);
    add("causal_strided", [](PatternSpec& s) { s.causal = true; s.stride = 3; });
    add("random", [&](PatternSpec& s) { s.random_blocks = 2; s.random_seed = 7; s.seq_len = n; });
    add("alibi", [&](PatternSpec& s) { s.alibi_slopes = alibi_slopes(heads); });
    add("causal_alibi", [&](PatternSpec& s) { s.causal = true; s.alibi_slopes = alibi_slopes(heads); });
    // scale 0.5 with D = 64 makes scores of standard deviation 4, so tanh saturates on many pairs.
    add("softcap", [](PatternSpec& s) { s.softcap = 5.0f; s.scale = 0.5f; });
    add("causal_softcap_alibi", [&](PatternSpec& s) {
        s.causal = true; s.softcap = 5.0f; s.scale = 0.5f; s.alibi_slopes = alibi_slopes(heads);
    });
    add("causal_documents_window", [&](PatternSpec& s) { s.causal = true; s.doc_bounds = docs; s.window = Window{32, 0}; });
    add("window_global_random", [&](PatternSpec& s) {
        s.window = Window{8, 8}; s.global_first = 2; s.global_list = {77, 140};
        s.random_blocks = 1; s.random_seed = 3; s.seq_len = n;
    });
    add("causal_block_mask_strided", [&](PatternSpec& s) { s.causal = true; block_mask(s); s.stride = 4; });
    add("everything", [&](PatternSpec& s) {
        s.causal = true; s.doc_bounds = docs; s.window = Window{12, 0}; s.global_first = 1; s.global_list = {60};
        block_mask(s); s.stride = 5; s.random_blocks = 1; s.random_seed = 11; s.seq_len = n;
        s.alibi_slopes = alibi_slopes(heads); s.softcap = 20.0f;
    });
    return zoo;
}

std::vector<float> alibi_slopes(std::int64_t heads) {
    std::vector<float> s;
    for (std::int64_t h = 0; h < heads; ++h)
        s.push_back(std::exp2(-8.0f * static_cast<float>(h + 1) / static_cast<float>(heads)));
    return s;
}

Problem::Problem(Case cs) : c(std::move(cs)), pattern(c.spec) {
    q_pos = c.q_pos.empty() ? positions(c.Sq) : c.q_pos;
    k_pos = c.k_pos.empty() ? positions(c.Sk) : c.k_pos;
    // Fail loudly on a malformed case rather than on an out-of-bounds read.
    if (static_cast<std::int64_t>(q_pos.size()) != c.Sq || static_cast<std::int64_t>(k_pos.size()) != c.Sk)
        throw std::logic_error("test case " + c.name + ": position count does not match Sq/Sk");
    q = Tensor(c.dtype, {c.B, c.Sq, c.Hq, c.D}, c.pad);
    k = Tensor(c.k_dtype.value_or(c.dtype), {c.B, c.Sk, c.Hkv, c.D}, c.pad);
    v = Tensor(c.v_dtype.value_or(c.dtype), {c.B, c.Sk, c.Hkv, c.D}, c.pad);
    dout = Tensor(c.dtype, {c.B, c.Sq, c.Hq, c.D}, c.pad);
    q.fill_random(c.seed * 4 + 0, c.amplitude);
    k.fill_random(c.seed * 4 + 1, c.amplitude);
    v.fill_random(c.seed * 4 + 2);
    dout.fill_random(c.seed * 4 + 3);
}

FwdParams Problem::fwd_params(const Tensor& o, float* lse, int threads) const {
    FwdParams p;
    p.q = q.view();
    p.k = k.view();
    p.v = v.view();
    p.o = o.view();
    p.lse = lse;
    p.q_pos = q_pos.data();
    p.k_pos = k_pos.data();
    p.pattern = &pattern;
    p.head_offset = c.head_offset;
    p.threads = threads;
    return p;
}

BwdParams Problem::bwd_params(const Tensor& o, const std::vector<float>& lse, const Tensor& dq, const Tensor& dk,
                              const Tensor& dv, int threads, bool accumulate) const {
    BwdParams p;
    p.q = q.view();
    p.k = k.view();
    p.v = v.view();
    p.o = o.view();
    p.dout = dout.view();
    p.lse = lse.data();
    p.dq = dq.view();
    p.dk = dk.view();
    p.dv = dv.view();
    p.accumulate = accumulate;
    p.q_pos = q_pos.data();
    p.k_pos = k_pos.data();
    p.pattern = &pattern;
    p.head_offset = c.head_offset;
    p.threads = threads;
    return p;
}


FwdOut fresh_forward_out(const Problem& pb) {
    const auto& c = pb.c;
    return {Tensor(pb.out_dtype(), {c.B, c.Sq, c.Hq, c.D}, c.pad),
            std::vector<float>(static_cast<std::size_t>(c.B * c.Hq * c.Sq), kNaN)};
}

BwdOut fresh_grads(const Case& c) {
    return {Tensor(DType::f32, {c.B, c.Sq, c.Hq, c.D}, c.pad), Tensor(DType::f32, {c.B, c.Sk, c.Hkv, c.D}, c.pad),
            Tensor(DType::f32, {c.B, c.Sk, c.Hkv, c.D}, c.pad)};
}

void forward_on(Device d, const Problem& pb, FwdOut& out, bool accumulate, int threads) {
    const OnDevice q(d, pb.q), k(d, pb.k), v(d, pb.v), o(d, out.o), lse(d, out.lse);
    FwdParams p = pb.fwd_params(out.o, nullptr, threads);
    p.q = q.view(), p.k = k.view(), p.v = v.view(), p.o = o.view(), p.lse = lse.floats();
    p.accumulate = accumulate;
    kernels::backend(d).forward(p);
    o.to_host();
    lse.to_host();
}

void backward_on(Device d, const Problem& pb, const FwdOut& fwd, BwdOut& g, bool accumulate, int threads) {
    const OnDevice q(d, pb.q), k(d, pb.k), v(d, pb.v), o(d, fwd.o), dout(d, pb.dout), lse(d, fwd.lse), dq(d, g.dq),
        dk(d, g.dk), dv(d, g.dv);
    BwdParams p = pb.bwd_params(fwd.o, fwd.lse, g.dq, g.dk, g.dv, threads, accumulate);
    p.q = q.view(), p.k = k.view(), p.v = v.view(), p.o = o.view(), p.dout = dout.view(), p.lse = lse.floats();
    p.dq = dq.view(), p.dk = dk.view(), p.dv = dv.view();
    kernels::backend(d).backward(p);
    dq.to_host();
    dk.to_host();
    dv.to_host();
}

FwdOut run_forward(const Problem& pb, int threads, Device d) {
    FwdOut out = fresh_forward_out(pb);
    forward_on(d, pb, out, false, threads);
    return out;
}

FwdOut reference_forward_out(const Problem& pb) {
    FwdOut out{Tensor(pb.out_dtype(), {pb.c.B, pb.c.Sq, pb.c.Hq, pb.c.D}, pb.c.pad), {}};
    const auto ref = kernels::reference_forward(pb.fwd_params(out.o, nullptr), RefPrecision::f64);
    for (std::size_t n = 0; n < ref.o.size(); ++n) out.o.set(static_cast<std::int64_t>(n), static_cast<float>(ref.o[n]));
    for (double l : ref.lse) out.lse.push_back(static_cast<float>(l));
    return out;
}

BwdOut run_backward(const Problem& pb, const FwdOut& fwd, int threads, Device d) {
    BwdOut out = fresh_grads(pb.c);
    backward_on(d, pb, fwd, out, false, threads);
    return out;
}

std::vector<double> pick_rows(const std::vector<double>& full, std::int64_t B, std::int64_t S, std::int64_t HD,
                              const std::vector<std::int64_t>& rows) {
    std::vector<double> out;
    for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t r : rows)
            for (std::int64_t e = 0; e < HD; ++e) out.push_back(full[static_cast<std::size_t>((b * S + r) * HD + e)]);
    return out;
}

std::vector<double> lse_rows(const std::vector<double>& lse, std::int64_t BH, std::int64_t S,
                             const std::vector<std::int64_t>& rows) {
    std::vector<double> out;
    for (std::int64_t bh = 0; bh < BH; ++bh)
        for (std::int64_t r : rows) out.push_back(lse[static_cast<std::size_t>(bh * S + r)]);
    return out;
}

ErrorAt max_abs_err(const std::vector<double>& got, const std::vector<double>& ref) {
    ErrorAt e;
    if (got.size() != ref.size()) return {std::numeric_limits<double>::infinity(), 0};
    for (std::size_t n = 0; n < got.size(); ++n) {
        double d;
        if (std::isnan(got[n]) || std::isnan(ref[n]))
            d = std::numeric_limits<double>::infinity();
        else if (std::isinf(got[n]) || std::isinf(ref[n]))
            d = got[n] == ref[n] ? 0.0 : std::numeric_limits<double>::infinity();
        else
            d = std::abs(got[n] - ref[n]);
        if (d > e.err) e = {d, n};
    }
    return e;
}

double max_abs_finite(const std::vector<double>& v) {
    double m = 0;
    for (double x : v)
        if (std::isfinite(x)) m = std::max(m, std::abs(x));
    return m;
}

std::vector<double> to_f64(const std::vector<float>& v) { return {v.begin(), v.end()}; }

double floor_for(DType out_dtype, const std::vector<double>& ref) {
    const double m = std::max(1.0, max_abs_finite(ref));
    switch (out_dtype) {
        case DType::f32: return 1e-5 * m;
        case DType::bf16: return 0x1.0p-8 * m;
        default: return 0x1.0p-11 * m;
    }
}

::testing::AssertionResult flash_rule(const std::string& what, const std::vector<double>& got,
                                      const std::vector<double>& plain, const std::vector<double>& ref,
                                      DType out_dtype, double factor) {
    const ErrorAt kernel = max_abs_err(got, ref);
    const ErrorAt base = max_abs_err(plain, ref);
    const double floor = floor_for(out_dtype, ref);
    const double bound = factor * base.err + floor;
    if (kernel.err <= bound) return ::testing::AssertionSuccess();
    auto r = ::testing::AssertionFailure();
    r << what << " (" << dtype_name(out_dtype) << "): max|kernel - fp64| = " << show(kernel.err) << " exceeds "
      << factor << " * max|plain - fp64| (" << show(base.err) << ") + floor " << show(floor) << " = " << show(bound);
    if (kernel.index < got.size())
        r << "; worst at flat index " << kernel.index << ": kernel " << got[kernel.index] << ", fp64 "
          << ref[kernel.index];
    return r;
}

namespace {

// Indices (b, h, i) of query rows the fp64 reference leaves with no allowed key.
std::vector<std::array<std::int64_t, 3>> empty_rows(const Case& c, const std::vector<double>& lse) {
    std::vector<std::array<std::int64_t, 3>> rows;
    for (std::int64_t b = 0; b < c.B; ++b)
        for (std::int64_t h = 0; h < c.Hq; ++h)
            for (std::int64_t i = 0; i < c.Sq; ++i)
                if (std::isinf(lse[lse_index(b, h, i, c.Hq, c.Sq)])) rows.push_back({b, h, i});
    return rows;
}

// Elements of rows (b, h, i) of a [B, S, H, D] tensor that are not exactly 0.
std::int64_t nonzero_in_rows(const Tensor& t, const std::vector<std::array<std::int64_t, 3>>& rows,
                             std::int64_t S, std::int64_t H, std::int64_t D) {
    std::int64_t bad = 0;
    for (const auto& [b, h, i] : rows)
        for (std::int64_t d = 0; d < D; ++d)
            bad += !(t.get(((b * S + i) * H + h) * D + d) == 0.0f);
    return bad;
}

}  // namespace

void check_forward(const Problem& pb, const FwdOut& got) {
    SCOPED_TRACE(pb.c.name + " [" + pb.pattern.describe() + "]");
    const auto fp = pb.fwd_params(got.o, nullptr);
    const auto ref = kernels::reference_forward(fp, RefPrecision::f64);
    const auto plain = kernels::reference_forward(fp, precision_of(pb.out_dtype()));
    const auto plain32 =
        pb.out_dtype() == DType::f32 ? plain : kernels::reference_forward(fp, RefPrecision::f32);
    EXPECT_TRUE(flash_rule("O", got.o.to_f64(), plain.o, ref.o, pb.out_dtype(), kForwardFactor));
    EXPECT_TRUE(flash_rule("LSE", to_f64(got.lse), plain32.lse, ref.lse, DType::f32, kForwardFactor));
    const auto rows = empty_rows(pb.c, ref.lse);
    EXPECT_EQ(nonzero_in_rows(got.o, rows, pb.c.Sq, pb.c.Hq, pb.c.D), 0)
        << "O must be exactly 0 on the " << rows.size() << " rows with no allowed key";
}

void check_forward(const Case& c) {
    const Problem pb(c);
    check_forward(pb, run_forward(pb));
}

void check_backward(const Problem& pb, const FwdOut& fwd, const BwdOut& got) {
    const auto& c = pb.c;
    SCOPED_TRACE(c.name + " [" + pb.pattern.describe() + "]");
    const auto bp = pb.bwd_params(fwd.o, fwd.lse, got.dq, got.dk, got.dv);
    const auto ref = kernels::reference_backward(bp, RefPrecision::f64);
    const auto plain = kernels::reference_backward(bp, precision_of(c.dtype), kernels::RefSource::saved);
    EXPECT_TRUE(flash_rule("dQ", got.dq.to_f64(), plain.dq, ref.dq, DType::f32, kGradFactor));
    EXPECT_TRUE(flash_rule("dK", got.dk.to_f64(), plain.dk, ref.dk, DType::f32, kGradFactor));
    EXPECT_TRUE(flash_rule("dV", got.dv.to_f64(), plain.dv, ref.dv, DType::f32, kGradFactor));

    // Rows and keys that take part in no allowed pair get exactly 0, never NaN or leftovers.
    std::vector<std::array<std::int64_t, 3>> empty_q, empty_k;
    for (std::int64_t i = 0; i < c.Sq; ++i) {
        bool any = false;
        for (std::int64_t j = 0; j < c.Sk && !any; ++j) any = pb.pattern.allowed(pb.q_pos[i], pb.k_pos[j]);
        if (!any)
            for (std::int64_t b = 0; b < c.B; ++b)
                for (std::int64_t h = 0; h < c.Hq; ++h) empty_q.push_back({b, h, i});
    }
    for (std::int64_t j = 0; j < c.Sk; ++j) {
        bool any = false;
        for (std::int64_t i = 0; i < c.Sq && !any; ++i) any = pb.pattern.allowed(pb.q_pos[i], pb.k_pos[j]);
        if (!any)
            for (std::int64_t b = 0; b < c.B; ++b)
                for (std::int64_t h = 0; h < c.Hkv; ++h) empty_k.push_back({b, h, j});
    }
    EXPECT_EQ(nonzero_in_rows(got.dq, empty_q, c.Sq, c.Hq, c.D), 0) << "dQ of query rows with no allowed key";
    EXPECT_EQ(nonzero_in_rows(got.dk, empty_k, c.Sk, c.Hkv, c.D), 0) << "dK of keys no query may attend";
    EXPECT_EQ(nonzero_in_rows(got.dv, empty_k, c.Sk, c.Hkv, c.D), 0) << "dV of keys no query may attend";
}

void check_backward(const Case& c) {
    const Problem pb(c);
    const FwdOut fwd = reference_forward_out(pb);
    check_backward(pb, fwd, run_backward(pb, fwd));
}

}  // namespace longattn::test

namespace longattn::test {

const char* chain_name(int out) {
    static const char* const names[kChainOuts] = {"O", "LSE", "dQ", "dK", "dV"};
    return names[out];
}

Runners backend_runners(Device d, int threads) {
    return {[threads, d](const Problem& pb) { return run_forward(pb, threads, d); },
            [threads, d](const Problem& pb, const FwdOut& fwd) { return run_backward(pb, fwd, threads, d); }};
}

bool ChainErrors::pass(int out) const {
    const double factor = out <= kLse ? kForwardFactor : kGradFactor;
    return kernel[out] <= factor * plain[out] + floor[out];
}

ChainErrors chain_errors(const Problem& pb, const Runners& run) {
    const auto& c = pb.c;
    const FwdOut fwd = run.forward(pb);
    const BwdOut got = run.backward(pb, fwd);
    const auto fp = pb.fwd_params(fwd.o, nullptr);
    const auto ref_f = kernels::reference_forward(fp, RefPrecision::f64);
    const auto plain_f = kernels::reference_forward(fp, precision_of(pb.out_dtype()));
    const auto plain_f32 = pb.out_dtype() == DType::f32 ? plain_f : kernels::reference_forward(fp, RefPrecision::f32);
    // The fp64 gradients of the exact forward: recomputed from the inputs, never from the kernel's O.
    const auto bp = pb.bwd_params(fwd.o, fwd.lse, got.dq, got.dk, got.dv);
    const auto ref_b = kernels::reference_backward(bp, RefPrecision::f64, kernels::RefSource::recompute);
    const auto plain_b = kernels::reference_backward(bp, precision_of(c.dtype), kernels::RefSource::recompute);
    ChainErrors e;
    const auto set = [&](int out, const std::vector<double>& got_v, const std::vector<double>& plain_v,
                         const std::vector<double>& ref_v, DType dt) {
        e.kernel[out] = max_abs_err(got_v, ref_v).err;
        e.plain[out] = max_abs_err(plain_v, ref_v).err;
        e.floor[out] = floor_for(dt, ref_v);
    };
    set(kO, fwd.o.to_f64(), plain_f.o, ref_f.o, pb.out_dtype());
    set(kLse, to_f64(fwd.lse), plain_f32.lse, ref_f.lse, DType::f32);
    set(kDq, got.dq.to_f64(), plain_b.dq, ref_b.dq, DType::f32);
    set(kDk, got.dk.to_f64(), plain_b.dk, ref_b.dk, DType::f32);
    set(kDv, got.dv.to_f64(), plain_b.dv, ref_b.dv, DType::f32);
    return e;
}

void check_chain(const Case& c, const Runners& run) {
    const Problem pb(c);
    SCOPED_TRACE(c.name + " [" + pb.pattern.describe() + "]");
    const ChainErrors e = chain_errors(pb, run);
    for (int out = 0; out < kChainOuts; ++out)
        EXPECT_TRUE(e.pass(out)) << chain_name(out) << ": max|kernel - fp64| = " << show(e.kernel[out])
                                 << ", max|plain - fp64| = " << show(e.plain[out]) << ", floor " << show(e.floor[out])
                                 << ", factor " << (out <= kLse ? kForwardFactor : kGradFactor);
}

double amplitude_for_score_std(double std) { return std::sqrt(std); }

std::vector<SharpParam> sharp_params(std::int64_t n, const std::vector<DType>& dtypes) {
    std::vector<SharpParam> out;
    for (const auto& p : pattern_zoo(n, 8))
        for (double sd : {4.0, 16.0, 64.0})
            for (DType t : dtypes) out.push_back({p, sd, t});
    return out;
}

Case sharp_case(const SharpParam& p, std::int64_t n, std::int64_t D) {
    Case c;
    c.name = sharp_name(p);
    c.Sq = c.Sk = n;
    c.Hq = 8;
    c.Hkv = 2;
    c.D = D;
    c.dtype = p.dtype;
    c.spec = p.pattern.spec;
    c.amplitude = amplitude_for_score_std(p.score_std);
    return c;
}

std::string sharp_name(const SharpParam& p) {
    return p.pattern.name + "_std" + std::to_string(static_cast<int>(p.score_std)) + "_" + std::string(dtype_name(p.dtype));
}

void PrintTo(const SharpParam& p, std::ostream* os) { *os << sharp_name(p); }

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// Flat index of (s, h, d) in a contiguous [1, S, H, D] tensor.
std::int64_t flat(std::int64_t s, std::int64_t h, std::int64_t H, std::int64_t D, std::int64_t d) {
    return (s * H + h) * D + d;
}

bool row_all_nan(const Tensor& t, std::int64_t s, std::int64_t h) {
    const std::int64_t H = t.shape()[2], D = t.shape()[3];
    for (std::int64_t d = 0; d < D; ++d)
        if (!std::isnan(t.get(flat(s, h, H, D, d)))) return false;
    return true;
}

bool row_same(const Tensor& a, const Tensor& b, std::int64_t s, std::int64_t h) {
    const std::int64_t H = a.shape()[2], D = a.shape()[3];
    for (std::int64_t d = 0; d < D; ++d) {
        const float x = a.get(flat(s, h, H, D, d)), y = b.get(flat(s, h, H, D, d));
        if (std::memcmp(&x, &y, sizeof x) != 0) return false;
    }
    return true;
}

bool same_bits(float x, float y) { return std::memcmp(&x, &y, sizeof x) == 0; }

std::vector<Case> nonfinite_cases(const std::vector<DType>& dtypes, std::int64_t n, std::int64_t D) {
    std::vector<Case> out;
    for (auto& z : pattern_zoo(n, 2))
        for (const char* keep : {"dense", "causal", "window_16_0", "block_mask", "causal_alibi", "softcap"})
            if (z.name == keep)
                for (DType t : dtypes) {
                    Case c;
                    c.name = z.name + " " + std::string(dtype_name(t));
                    c.Sq = c.Sk = n;
                    c.D = D;
                    c.dtype = t;
                    c.spec = z.spec;
                    out.push_back(c);
                }
    return out;
}

}  // namespace

void check_bad_query_row(const Runners& run, const std::vector<DType>& dtypes, std::int64_t n, std::int64_t D) {
    for (const Case& c : nonfinite_cases(dtypes, n, D))
        for (float bad : {kNaN, kInf}) {
            // Softcap bounds an infinite score to the cap: an Inf query is then an ordinary row.
            if (std::isinf(bad) && c.spec.softcap > 0.0f) continue;
            SCOPED_TRACE(c.name + (std::isnan(bad) ? " NaN" : " Inf"));
            const Problem clean(c);
            Problem pb(c);
            const std::int64_t row = 100, head = 1;  // block_mask lets query block 6 see keys
            pb.q.set(flat(row, head, c.Hq, D, 5), bad);
            const FwdOut ref = run.forward(clean), got = run.forward(pb);
            const BwdOut gref = run.backward(clean, ref), ggot = run.backward(pb, got);
            for (std::int64_t h = 0; h < c.Hq; ++h)
                for (std::int64_t s = 0; s < c.Sq; ++s) {
                    const std::size_t li = lse_index(0, h, s, c.Hq, c.Sq);
                    if (s == row && h == head) {
                        EXPECT_TRUE(std::isnan(got.lse[li])) << "LSE of the bad row: " << got.lse[li];
                        EXPECT_TRUE(row_all_nan(got.o, s, h)) << "O of the bad row";
                        EXPECT_TRUE(row_all_nan(ggot.dq, s, h)) << "dQ of the bad row";
                    } else {
                        EXPECT_TRUE(same_bits(got.lse[li], ref.lse[li])) << "LSE row " << s << " head " << h;
                        EXPECT_TRUE(row_same(got.o, ref.o, s, h)) << "O row " << s << " head " << h;
                        EXPECT_TRUE(row_same(ggot.dq, gref.dq, s, h)) << "dQ row " << s << " head " << h;
                    }
                }
        }
}

void check_nan_key(const Runners& run, const std::vector<DType>& dtypes, std::int64_t n, std::int64_t D) {
    for (const Case& c : nonfinite_cases(dtypes, n, D)) {
        SCOPED_TRACE(c.name);
        const Problem clean(c);
        Problem pb(c);
        const std::int64_t key = 40;  // kv head 0 serves query head 0 (Hq = Hkv = 2)
        pb.k.set(flat(key, 0, c.Hkv, D, 7), kNaN);
        const FwdOut ref = run.forward(clean), got = run.forward(pb);
        for (std::int64_t s = 0; s < c.Sq; ++s) {
            const std::size_t li = lse_index(0, 0, s, c.Hq, c.Sq);
            if (pb.pattern.allowed(pb.q_pos[s], pb.k_pos[key])) {
                EXPECT_TRUE(std::isnan(got.lse[li])) << "row " << s << " may attend the NaN key: LSE " << got.lse[li];
                EXPECT_TRUE(row_all_nan(got.o, s, 0)) << "row " << s;
            } else {
                EXPECT_TRUE(same_bits(got.lse[li], ref.lse[li])) << "row " << s << " cannot see the NaN key";
                EXPECT_TRUE(row_same(got.o, ref.o, s, 0)) << "row " << s;
            }
            EXPECT_TRUE(row_same(got.o, ref.o, s, 1)) << "kv head 1 is untouched, row " << s;
        }
    }
}

void check_nan_value(const Runners& run, DType dtype, std::int64_t n, std::int64_t D) {
    for (const Case& c : nonfinite_cases({dtype}, n, D)) {
        SCOPED_TRACE(c.name);
        const Problem clean(c);
        Problem pb(c);
        const std::int64_t key = 90;
        pb.v.set(flat(key, 1, c.Hkv, D, 0), kNaN);
        const FwdOut ref = run.forward(clean), got = run.forward(pb);
        for (std::int64_t s = 0; s < c.Sq; ++s) {
            if (!pb.pattern.allowed(pb.q_pos[s], pb.k_pos[key])) continue;
            const std::size_t li = lse_index(0, 1, s, c.Hq, c.Sq);
            EXPECT_TRUE(std::isnan(got.o.get(flat(s, 1, c.Hq, D, 0)))) << "row " << s;
            EXPECT_TRUE(same_bits(got.lse[li], ref.lse[li])) << "LSE does not depend on V, row " << s;
        }
    }
}

void check_masked_row_with_nan_query(const Runners& run, DType dtype, std::int64_t n, std::int64_t D) {
    for (const Case& c : nonfinite_cases({dtype}, n, D)) {
        if (c.name.rfind("block_mask", 0) != 0) continue;
        // The zoo's block mask leaves query block 1 (rows 16..31) without any key.
        Problem pb(c);
        pb.q.set(flat(20, 0, c.Hq, D, 0), kNaN);
        const FwdOut got = run.forward(pb);
        EXPECT_EQ(got.lse[lse_index(0, 0, 20, c.Hq, c.Sq)], -kInf);
        for (std::int64_t d = 0; d < D; ++d) EXPECT_EQ(got.o.get(flat(20, 0, c.Hq, D, d)), 0.0f);
    }
}

}  // namespace longattn::test
