#include "bench/check.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace longattn::bench {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

struct Reference {
    const Job& job;
    const Inputs& in;
    const Pattern& pat;
    std::int64_t N, D, G;
    double scale, cap;

    // Keys of query p (or queries of key p) can only lie in p's document, and before p when causal.
    std::pair<std::int64_t, std::int64_t> gate(std::int64_t p, bool keys) const {
        std::int64_t lo = 0, hi = N;
        const auto& b = pat.spec().doc_bounds;
        if (!b.empty()) {
            const auto d = static_cast<std::size_t>(pat.doc_of(p));
            lo = b[d];
            hi = std::min(hi, b[d + 1]);
        }
        if (pat.causal() && keys) hi = std::min(hi, p + 1);
        if (pat.causal() && !keys) lo = std::max(lo, p);
        return {lo, hi};
    }
    // The score and d(score)/d(scale q.k): the softcap's tanh derivative (ALiBi adds a constant).
    std::pair<double, double> score(const double* q, const double* k, std::int64_t qp, std::int64_t kp,
                                    std::int64_t h) const {
        double s = 0;
        for (std::int64_t d = 0; d < D; ++d) s += q[d] * k[d];
        s *= scale;
        double grad = 1.0;
        if (cap > 0) {
            const double t = std::tanh(s / cap);
            s = cap * t;
            grad = 1.0 - t * t;
        }
        if (pat.has_alibi()) s -= pat.alibi_slope(h) * std::fabs(static_cast<double>(qp - kp));
        return {s, grad};
    }
};

double at(const TensorView& t, std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t d) {
    return load_as_f32(t.data, t.dtype, t.offset(b, s, h, d));
}

}  // namespace

double check_tolerance(DType t) { return t == DType::f32 ? 0x1p-13 : t == DType::bf16 ? 0x1p-7 : 0x1p-10; }

std::vector<std::int64_t> sampled_rows(std::int64_t S, int count) {
    std::vector<std::int64_t> rows;
    if (S <= 0) return rows;
    for (int r = 0; r < count; ++r) rows.push_back(std::min(S - 1, r * S / count));
    rows.push_back(S - 1);
    std::sort(rows.begin(), rows.end());
    rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
    return rows;
}

std::vector<float> row_delta(const TensorView& o, const TensorView& dout) {
    const std::int64_t B = o.shape[0], S = o.shape[1], H = o.shape[2], D = o.shape[3];
    std::vector<float> delta(static_cast<std::size_t>(B * H * S));
#pragma omp parallel for collapse(2) schedule(static)
    for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t s = 0; s < S; ++s)
            for (std::int64_t h = 0; h < H; ++h) {
                double x = 0;
                for (std::int64_t d = 0; d < D; ++d) x += at(o, b, s, h, d) * at(dout, b, s, h, d);
                delta[static_cast<std::size_t>((b * H + h) * S + s)] = static_cast<float>(x);
            }
    return delta;
}

std::int64_t count_nonfinite(const RankRows& r, std::int64_t B, std::int64_t H) {
    std::int64_t bad = 0;
    for (const TensorView* t : {&r.o, &r.dq, &r.dk, &r.dv}) {
        if (t->data == nullptr) continue;
        for (std::int64_t b = 0; b < t->shape[0]; ++b)
            for (std::int64_t s = 0; s < t->shape[1]; ++s)
                for (std::int64_t h = 0; h < t->shape[2]; ++h)
                    for (std::int64_t d = 0; d < t->shape[3]; ++d)
                        bad += !std::isfinite(load_as_f32(t->data, t->dtype, t->offset(b, s, h, d)));
    }
    for (std::int64_t i = 0; i < B * H * r.S; ++i) bad += std::isnan(r.lse[i]) || r.lse[i] == INFINITY;
    return bad;
}

CheckResult check_rows(const Job& job, const Inputs& in, const Pattern& pat, std::int64_t N, const RankRows& r,
                       int threads) {
    const std::int64_t B = job.shape.batch, H = job.shape.heads, Hkv = job.shape.kv_heads, D = job.shape.head_dim;
    const Reference ref{job, in, pat, N, D, H / Hkv, pat.softmax_scale(D), pat.spec().softcap};
    const bool grads = r.dq.data != nullptr;
    const double tol = check_tolerance(job.shape.dtype);
    const std::vector<std::int64_t> rows = sampled_rows(r.S, job.checks.rows);
    const auto nrows = static_cast<std::int64_t>(rows.size());
    CheckResult res;
    res.wrong = count_nonfinite(r, B, H);  // anywhere in the outputs, sampled or not
    auto compare = [&](CheckResult& c, double want, double got) {
        const double e = std::isinf(want) && want == got ? 0.0 : std::fabs(want - got);
        c.max_err = std::isnan(e) ? INFINITY : std::max(c.max_err, e);
        c.wrong += !(e <= tol * std::max(1.0, std::fabs(want)));
        ++c.values;
    };
    const int nt = threads > 0 ? threads : omp_get_max_threads();

    // Query rows: O, LSE (and dQ) of (b, head, sampled row).
#pragma omp parallel num_threads(nt)
    {
        CheckResult local;
        std::vector<double> q(D), k(D), v(D), dout(D), o(D), dq(D), s, sgrad;
        std::vector<std::int64_t> keys;
#pragma omp for collapse(3) schedule(dynamic)
        for (std::int64_t b = 0; b < B; ++b)
            for (std::int64_t h = 0; h < H; ++h)
                for (std::int64_t ri = 0; ri < nrows; ++ri) {
                    const std::int64_t i = rows[static_cast<std::size_t>(ri)], p = r.pos[i], hk = h / ref.G;
                    in.row(SynthTensor::q, b, p, h, q.data());
                    const auto [lo, hi] = ref.gate(p, true);
                    keys.clear();
                    s.clear();
                    sgrad.clear();
                    double mx = kNegInf;
                    for (std::int64_t j = lo; j < hi; ++j) {
                        if (!pat.allowed(p, j)) continue;
                        in.row(SynthTensor::k, b, j, hk, k.data());
                        keys.push_back(j);
                        const auto [x, g] = ref.score(q.data(), k.data(), p, j, h);
                        s.push_back(x);
                        sgrad.push_back(g);
                        mx = std::max(mx, s.back());
                    }
                    double sum = 0;
                    for (double x : s) sum += std::exp(x - mx);
                    const double lse = keys.empty() ? kNegInf : mx + std::log(sum);
                    std::fill(o.begin(), o.end(), 0.0);
                    for (std::size_t n = 0; n < keys.size(); ++n) {
                        in.row(SynthTensor::v, b, keys[n], hk, v.data());
                        const double pr = std::exp(s[n] - lse);
                        for (std::int64_t d = 0; d < D; ++d) o[d] += pr * v[d];
                    }
                    compare(local, lse, r.lse[(b * H + h) * r.S + i]);
                    for (std::int64_t d = 0; d < D; ++d) compare(local, o[d], at(r.o, b, i, h, d));
                    if (!grads) continue;
                    in.row(SynthTensor::dout, b, p, h, dout.data());
                    double delta = 0;  // from the stored O, which is what the backward consumes
                    for (std::int64_t d = 0; d < D; ++d) delta += dout[d] * at(r.o, b, i, h, d);
                    std::fill(dq.begin(), dq.end(), 0.0);
                    for (std::size_t n = 0; n < keys.size(); ++n) {
                        in.row(SynthTensor::v, b, keys[n], hk, v.data());
                        in.row(SynthTensor::k, b, keys[n], hk, k.data());
                        double dp = 0;
                        for (std::int64_t d = 0; d < D; ++d) dp += dout[d] * v[d];
                        const double ds = std::exp(s[n] - lse) * (dp - delta) * sgrad[n] * ref.scale;
                        for (std::int64_t d = 0; d < D; ++d) dq[d] += ds * k[d];
                    }
                    for (std::int64_t d = 0; d < D; ++d) compare(local, dq[d], at(r.dq, b, i, h, d));
                }
#pragma omp critical
        {
            res.max_err = std::max(res.max_err, local.max_err);
            res.wrong += local.wrong;
            res.values += local.values;
        }
    }
    if (!grads) return res;

    // Key rows: dK, dV of (b, kv head, sampled row) summed over every query head of the group.
#pragma omp parallel num_threads(nt)
    {
        CheckResult local;
        std::vector<double> q(D), k(D), v(D), dout(D), dk(D), dv(D);
#pragma omp for collapse(3) schedule(dynamic)
        for (std::int64_t b = 0; b < B; ++b)
            for (std::int64_t hk = 0; hk < Hkv; ++hk)
                for (std::int64_t ri = 0; ri < nrows; ++ri) {
                    const std::int64_t j = rows[static_cast<std::size_t>(ri)], p = r.pos[j];
                    in.row(SynthTensor::k, b, p, hk, k.data());
                    in.row(SynthTensor::v, b, p, hk, v.data());
                    std::fill(dk.begin(), dk.end(), 0.0);
                    std::fill(dv.begin(), dv.end(), 0.0);
                    const auto [lo, hi] = ref.gate(p, false);
                    for (std::int64_t i = lo; i < hi; ++i) {
                        if (!pat.allowed(i, p)) continue;
                        for (std::int64_t h = hk * ref.G; h < (hk + 1) * ref.G; ++h) {
                            in.row(SynthTensor::q, b, i, h, q.data());
                            in.row(SynthTensor::dout, b, i, h, dout.data());
                            const auto [sc, sgrad] = ref.score(q.data(), k.data(), i, p, h);
                            const std::size_t row = static_cast<std::size_t>((b * H + h) * N + i);
                            const double pr = std::exp(sc - r.lse_all[row]);
                            double dp = 0;
                            for (std::int64_t d = 0; d < D; ++d) dp += dout[d] * v[d];
                            const double ds = pr * (dp - r.delta_all[row]) * sgrad * ref.scale;
                            for (std::int64_t d = 0; d < D; ++d) {
                                dv[d] += pr * dout[d];
                                dk[d] += ds * q[d];
                            }
                        }
                    }
                    for (std::int64_t d = 0; d < D; ++d) {
                        compare(local, dk[d], at(r.dk, b, j, hk, d));
                        compare(local, dv[d], at(r.dv, b, j, hk, d));
                    }
                }
#pragma omp critical
        {
            res.max_err = std::max(res.max_err, local.max_err);
            res.wrong += local.wrong;
            res.values += local.values;
        }
    }
    return res;
}

}  // namespace longattn::bench
