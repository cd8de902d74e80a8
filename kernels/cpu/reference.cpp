// Unfused attention, one (batch, query head, query row) at a time, with no blocking and no online
// softmax: every line maps to one line of the textbook formulas, so it can be checked by reading.
//
// One template serves every precision. Real is the arithmetic type (double for the reference, float
// for the plain same-precision implementations) and round() is what storing an intermediate in the
// framework's tensor dtype does to it (identity for fp64 and fp32, round_to() for bf16 and fp16).
#include "kernels/cpu/reference.hpp"

#include <cmath>
#include <cstdlib>
#include <limits>

#include "longattn/error.hpp"

namespace longattn::kernels {
namespace {

struct Dims {
    std::int64_t B, Sq, Sk, Hq, Hkv, D, group;
};

Dims dims_of(const TensorView& q, const TensorView& k) {
    Dims d{q.shape[0], q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.shape[3], 1};
    require(d.Hkv > 0 && d.Hq % d.Hkv == 0, "q.shape[2]", "query heads (", d.Hq,
            ") must be a multiple of kv heads (", d.Hkv, ")");
    d.group = d.Hq / d.Hkv;
    return d;
}

// Copies a view into a contiguous [B, S, H, D] array of Real. Every storage value is exact in float
// and in double, so this step adds no error.
template <class Real>
std::vector<Real> load(const TensorView& t) {
    std::vector<Real> out(static_cast<std::size_t>(t.numel()));
    std::size_t n = 0;
    for (std::int64_t b = 0; b < t.shape[0]; ++b)
        for (std::int64_t s = 0; s < t.shape[1]; ++s)
            for (std::int64_t h = 0; h < t.shape[2]; ++h)
                for (std::int64_t d = 0; d < t.shape[3]; ++d)
                    out[n++] = static_cast<Real>(load_as_f32(t.data, t.dtype, t.offset(b, s, h, d)));
    return out;
}

template <class Real>
struct Arith {
    bool rounds;  // false: keep full Real precision (fp64 reference, fp32 plain)
    DType storage;
    Real round(Real x) const { return rounds ? static_cast<Real>(round_to(storage, static_cast<float>(x))) : x; }
};

// Index of element (b, s, h, d) in a contiguous [B, S, H, D] array.
inline std::size_t at(std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t d, std::int64_t S,
                      std::int64_t H, std::int64_t D) {
    return static_cast<std::size_t>(((b * S + s) * H + h) * D + d);
}

// One query row's scores and probabilities. tanh_term keeps tanh(raw / cap) for the softcap gradient.
template <class Real>
struct Row {
    std::vector<Real> s, p, tanh_term;
    std::vector<bool> allowed;
    bool any = false;
    Real lse = -std::numeric_limits<Real>::infinity();
};

template <class Real>
struct RefCall {
    Dims d;
    const Pattern* pattern;
    const std::int64_t* q_pos;
    const std::int64_t* k_pos;
    std::int64_t head_offset;  // global index of local query head 0: ALiBi slopes are per global head
    Arith<Real> ar;
    Real scale;
    std::vector<Real> q, k, v;

    // Scores of row i of query head h: S = scale * q.k, softcap, ALiBi, mask; then softmax with the
    // row maximum subtracted so exp never overflows (scale 1e3 included).
    void row(std::int64_t b, std::int64_t h, std::int64_t i, Row<Real>& r) const {
        const std::int64_t kh = h / d.group;
        const PatternSpec& spec = pattern->spec();
        const Real cap = static_cast<Real>(spec.softcap);
        r.p.assign(static_cast<std::size_t>(d.Sk), Real(0));
        r.tanh_term.assign(static_cast<std::size_t>(d.Sk), Real(0));
        r.allowed.assign(static_cast<std::size_t>(d.Sk), false);
        r.any = false;
        std::vector<Real>& s = r.s;
        s.assign(static_cast<std::size_t>(d.Sk), Real(0));
        Real m = -std::numeric_limits<Real>::infinity();
        for (std::int64_t j = 0; j < d.Sk; ++j) {
            const auto jj = static_cast<std::size_t>(j);
            if (!pattern->allowed(q_pos[i], k_pos[j])) continue;
            Real dot = 0;
            for (std::int64_t c = 0; c < d.D; ++c)
                dot += q[at(b, i, h, c, d.Sq, d.Hq, d.D)] * k[at(b, j, kh, c, d.Sk, d.Hkv, d.D)];
            Real x = ar.round(scale * dot);
            if (pattern->has_softcap()) {
                r.tanh_term[jj] = std::tanh(x / cap);
                x = ar.round(cap * r.tanh_term[jj]);
            }
            if (pattern->has_alibi()) {
                const Real dist = static_cast<Real>(std::llabs(q_pos[i] - k_pos[j]));
                x = ar.round(x - static_cast<Real>(pattern->alibi_slope(head_offset + h)) * dist);
            }
            s[jj] = x;
            r.allowed[jj] = true;
            r.any = true;
            if (x > m) m = x;
        }
        r.lse = -std::numeric_limits<Real>::infinity();
        if (!r.any) return;  // no allowed key: P = 0, O = 0, LSE = -inf
        Real sum = 0;
        for (std::int64_t j = 0; j < d.Sk; ++j) {
            const auto jj = static_cast<std::size_t>(j);
            if (r.allowed[jj]) {
                r.p[jj] = std::exp(s[jj] - m);
                sum += r.p[jj];
            }
        }
        for (std::int64_t j = 0; j < d.Sk; ++j) {
            const auto jj = static_cast<std::size_t>(j);
            if (r.allowed[jj]) r.p[jj] = ar.round(r.p[jj] / sum);
        }
        r.lse = m + std::log(sum);
    }

    // O row i of head h from probabilities r.p, rounded to storage.
    void out_row(std::int64_t b, std::int64_t h, const Row<Real>& r, std::vector<Real>& o) const {
        const std::int64_t kh = h / d.group;
        o.assign(static_cast<std::size_t>(d.D), Real(0));
        for (std::int64_t j = 0; j < d.Sk; ++j) {
            const Real pj = r.p[static_cast<std::size_t>(j)];
            if (pj == Real(0)) continue;
            for (std::int64_t c = 0; c < d.D; ++c)
                o[static_cast<std::size_t>(c)] += pj * v[at(b, j, kh, c, d.Sk, d.Hkv, d.D)];
        }
        for (auto& x : o) x = ar.round(x);
    }
};

template <class Real>
RefCall<Real> make_problem(const TensorView& q, const TensorView& k, const TensorView& v, const Pattern* pattern,
                           const std::int64_t* q_pos, const std::int64_t* k_pos, std::int64_t head_offset,
                           RefPrecision prec, DType storage) {
    require(pattern != nullptr, "pattern", "is null");
    RefCall<Real> pr{dims_of(q, k), pattern, q_pos, k_pos, head_offset,
                     Arith<Real>{prec == RefPrecision::bf16 || prec == RefPrecision::f16, storage},
                     static_cast<Real>(pattern->softmax_scale(q.shape[3])), load<Real>(q), load<Real>(k),
                     load<Real>(v)};
    return pr;
}

DType storage_of(RefPrecision prec) {
    return prec == RefPrecision::bf16 ? DType::bf16 : prec == RefPrecision::f16 ? DType::f16 : DType::f32;
}

template <class Real>
RefForward forward(const FwdParams& p, RefPrecision prec) {
    const auto pr =
        make_problem<Real>(p.q, p.k, p.v, p.pattern, p.q_pos, p.k_pos, p.head_offset, prec, storage_of(prec));
    const Dims& d = pr.d;
    RefForward out;
    out.o.assign(static_cast<std::size_t>(d.B * d.Sq * d.Hq * d.D), 0.0);
    out.lse.assign(static_cast<std::size_t>(d.B * d.Hq * d.Sq), 0.0);
    Row<Real> r;
    std::vector<Real> o;
    for (std::int64_t b = 0; b < d.B; ++b)
        for (std::int64_t h = 0; h < d.Hq; ++h)
            for (std::int64_t i = 0; i < d.Sq; ++i) {
                pr.row(b, h, i, r);
                pr.out_row(b, h, r, o);
                for (std::int64_t c = 0; c < d.D; ++c)
                    out.o[at(b, i, h, c, d.Sq, d.Hq, d.D)] = static_cast<double>(o[static_cast<std::size_t>(c)]);
                out.lse[static_cast<std::size_t>((b * d.Hq + h) * d.Sq + i)] = static_cast<double>(r.lse);
            }
    return out;
}

// dV = P^T dO; dP = dO V^T; delta = rowsum(dO * O); dS = P * (dP - delta), times the softcap
// derivative 1 - tanh^2; dQ = scale * dS K; dK = scale * dS^T Q. Gradients of kv heads shared by a
// group of query heads are summed over the group.
template <class Real>
RefBackward backward(const BwdParams& p, RefPrecision prec, RefSource source) {
    const auto pr =
        make_problem<Real>(p.q, p.k, p.v, p.pattern, p.q_pos, p.k_pos, p.head_offset, prec, storage_of(prec));
    const Dims& d = pr.d;
    const std::vector<Real> dout = load<Real>(p.dout);
    std::vector<Real> dq(static_cast<std::size_t>(d.B * d.Sq * d.Hq * d.D), Real(0));
    std::vector<Real> dk(static_cast<std::size_t>(d.B * d.Sk * d.Hkv * d.D), Real(0));
    std::vector<Real> dv(dk.size(), Real(0));
    Row<Real> r;
    std::vector<Real> o, dq_row;
    for (std::int64_t b = 0; b < d.B; ++b)
        for (std::int64_t h = 0; h < d.Hq; ++h) {
            const std::int64_t kh = h / d.group;
            for (std::int64_t i = 0; i < d.Sq; ++i) {
                pr.row(b, h, i, r);
                if (!r.any) continue;  // no allowed key: every gradient through this row is 0
                if (source == RefSource::saved) {
                    const Real lse = static_cast<Real>(p.lse[(b * d.Hq + h) * d.Sq + i]);
                    for (std::size_t j = 0; j < r.p.size(); ++j)
                        if (r.allowed[j]) r.p[j] = pr.ar.round(std::exp(r.s[j] - lse));
                    o.resize(static_cast<std::size_t>(d.D));
                    for (std::int64_t c = 0; c < d.D; ++c)
                        o[static_cast<std::size_t>(c)] = static_cast<Real>(load_as_f32(p.o.data, p.o.dtype, p.o.offset(b, i, h, c)));
                } else {
                    pr.out_row(b, h, r, o);
                }
                const auto dO = [&](std::int64_t c) { return dout[at(b, i, h, c, d.Sq, d.Hq, d.D)]; };
                Real delta = 0;
                for (std::int64_t c = 0; c < d.D; ++c) delta += dO(c) * o[static_cast<std::size_t>(c)];
                dq_row.assign(static_cast<std::size_t>(d.D), Real(0));
                for (std::int64_t j = 0; j < d.Sk; ++j) {
                    const auto jj = static_cast<std::size_t>(j);
                    if (!r.allowed[jj]) continue;
                    const Real pj = r.p[jj];
                    Real dp = 0;
                    for (std::int64_t c = 0; c < d.D; ++c) dp += dO(c) * pr.v[at(b, j, kh, c, d.Sk, d.Hkv, d.D)];
                    dp = pr.ar.round(dp);
                    Real ds = pr.ar.round(pj * (dp - delta));
                    if (p.pattern->has_softcap()) ds = pr.ar.round(ds * (Real(1) - r.tanh_term[jj] * r.tanh_term[jj]));
                    for (std::int64_t c = 0; c < d.D; ++c) {
                        const std::size_t kj = at(b, j, kh, c, d.Sk, d.Hkv, d.D);
                        dv[kj] += pj * dO(c);
                        dk[kj] += pr.scale * ds * pr.q[at(b, i, h, c, d.Sq, d.Hq, d.D)];
                        dq_row[static_cast<std::size_t>(c)] += ds * pr.k[kj];
                    }
                }
                for (std::int64_t c = 0; c < d.D; ++c)
                    dq[at(b, i, h, c, d.Sq, d.Hq, d.D)] = pr.ar.round(pr.scale * dq_row[static_cast<std::size_t>(c)]);
            }
        }
    RefBackward out;
    const auto finish = [&](const std::vector<Real>& g, std::vector<double>& dst) {
        dst.resize(g.size());
        for (std::size_t n = 0; n < g.size(); ++n) dst[n] = static_cast<double>(pr.ar.round(g[n]));
    };
    finish(dq, out.dq);
    finish(dk, out.dk);
    finish(dv, out.dv);
    return out;
}

}  // namespace

RefForward reference_forward(const FwdParams& p, RefPrecision prec) {
    return prec == RefPrecision::f64 ? forward<double>(p, prec) : forward<float>(p, prec);
}

RefBackward reference_backward(const BwdParams& p, RefPrecision prec, RefSource source) {
    require(source == RefSource::recompute || p.lse != nullptr, "lse", "is null but RefSource::saved reads it");
    return prec == RefPrecision::f64 ? backward<double>(p, prec, source) : backward<float>(p, prec, source);
}

}  // namespace longattn::kernels
