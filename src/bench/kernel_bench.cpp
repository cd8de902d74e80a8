// Single-process kernel benchmark: the fused CPU flash kernels against this CPU's FMA peak and an
// unfused GEMM-softmax-GEMM baseline built from the same tile products, with a sampled fp64 check.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <vector>

#include "bench/bench.hpp"
#include "kernels/attention.hpp"
#include "kernels/cpu/simd.hpp"
#include "longattn/synth.hpp"

namespace longattn::bench {
namespace {

using Clock = std::chrono::steady_clock;
using kernels::cpu::vf;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Independent FMA chains, enough to cover the latency of two FMA pipes; GFLOP/s of one thread.
__attribute__((noinline)) double measure_fma_peak() {
    constexpr int kChains = 16;
    vf acc[kChains];
    for (int i = 0; i < kChains; ++i) acc[i] = kernels::cpu::splat(1.0f + 1e-3f * static_cast<float>(i));
    const vf m = kernels::cpu::splat(0.999999f), a = kernels::cpu::splat(1e-7f);
    const long iters = 20'000'000;
    double best = 0;
    for (int rep = 0; rep < 3; ++rep) {
        const auto t0 = Clock::now();
        for (long it = 0; it < iters; ++it)
            for (int i = 0; i < kChains; ++i) acc[i] = acc[i] * m + a;  // one FMA (built with -ffp-contract=fast)
        const double s = seconds_since(t0);
        best = std::max(best, 2.0 * kernels::cpu::kLanes * kChains * static_cast<double>(iters) / s * 1e-9);
    }
    float sink = 0;
    for (int i = 0; i < kChains; ++i) sink += acc[i][0];
    if (sink == 42.0f) std::printf("#\n");  // keeps the chains alive
    return best;
}

struct Problem {
    std::int64_t B, L, H, Hkv, D;
    DType dtype;
    std::vector<std::uint8_t> q, k, v, o, dout;
    std::vector<float> lse, dq, dk, dv;
    std::vector<std::int64_t> pos;
    TensorView qv, kv, vv, ov, dov, dqv, dkv, dvv;

    Problem(const Job& job, std::int64_t L_) : B(job.batch), L(L_), H(job.heads), Hkv(job.kv_heads), D(job.head_dim),
                                               dtype(job.dtype) {
        const std::size_t es = dtype_size(dtype);
        auto alloc = [&](std::vector<std::uint8_t>& buf, std::int64_t heads) {
            buf.assign(static_cast<std::size_t>(B * L * heads * D) * es, 0);
            return contiguous_view(buf.data(), dtype, B, L, heads, D);
        };
        qv = alloc(q, H);
        kv = alloc(k, Hkv);
        vv = alloc(v, Hkv);
        ov = alloc(o, H);
        dov = alloc(dout, H);
        lse.assign(static_cast<std::size_t>(B * H * L), 0.0f);
        pos.resize(static_cast<std::size_t>(L));
        for (std::int64_t i = 0; i < L; ++i) pos[static_cast<std::size_t>(i)] = i;
        fill_synth(qv, job.seed, SynthTensor::q, pos.data());
        fill_synth(kv, job.seed, SynthTensor::k, pos.data());
        fill_synth(vv, job.seed, SynthTensor::v, pos.data());
    }
    void alloc_grads(std::uint64_t seed) {
        fill_synth(dov, seed, SynthTensor::dout, pos.data());
        dq.assign(static_cast<std::size_t>(B * L * H * D), 0.0f);
        dk.assign(static_cast<std::size_t>(B * L * Hkv * D), 0.0f);
        dv.assign(dk.size(), 0.0f);
        dqv = contiguous_view(dq.data(), DType::f32, B, L, H, D);
        dkv = contiguous_view(dk.data(), DType::f32, B, L, Hkv, D);
        dvv = contiguous_view(dv.data(), DType::f32, B, L, Hkv, D);
    }
    kernels::FwdParams fwd(const Pattern& p, int threads) {
        kernels::FwdParams f;
        f.q = qv, f.k = kv, f.v = vv, f.o = ov, f.lse = lse.data();
        f.q_pos = f.k_pos = pos.data();
        f.pattern = &p;
        f.threads = threads;
        return f;
    }
    kernels::BwdParams bwd(const Pattern& p, int threads) {
        kernels::BwdParams b;
        b.q = qv, b.k = kv, b.v = vv, b.o = ov, b.dout = dov, b.lse = lse.data();
        b.dq = dqv, b.dk = dkv, b.dv = dvv;
        b.q_pos = b.k_pos = pos.data();
        b.pattern = &p;
        b.threads = threads;
        return b;
    }
    float at(const TensorView& t, std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t d) const {
        return load_as_f32(t.data, t.dtype, t.offset(b, s, h, d));
    }
};

// Median of n timed runs after the warmup.
template <class F>
double time_median(const Job& job, F&& run) {
    for (int i = 0; i < job.warmup; ++i) run();
    std::vector<double> t;
    for (int i = 0; i < job.iters; ++i) {
        const auto t0 = Clock::now();
        run();
        t.push_back(seconds_since(t0));
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

// Unfused attention over panels of full rows: S = scale Q K^T for all keys (materialized), mask,
// softmax, O = P V; the products use the same register-blocked gemm as the flash kernels.
void unfused_forward(Problem& pr, const Pattern& pat, int threads) {
    const std::int64_t L = pr.L, D = pr.D, G = pr.H / pr.Hkv;
    constexpr std::int64_t kPanel = 256;
    const float scale = pat.softmax_scale(D);
#pragma omp parallel num_threads(threads)
    {
        std::vector<float> kt(static_cast<std::size_t>(D * L)), vf32(static_cast<std::size_t>(L * D));
        std::vector<float> qp(static_cast<std::size_t>(kPanel * D)), s(static_cast<std::size_t>(kPanel * L));
        std::vector<float> op(static_cast<std::size_t>(kPanel * D));
        std::vector<std::uint8_t> mask(static_cast<std::size_t>(L));
#pragma omp for collapse(2) schedule(dynamic)
        for (std::int64_t b = 0; b < pr.B; ++b)
            for (std::int64_t h = 0; h < pr.H; ++h) {
                const std::int64_t hk = h / G;
                for (std::int64_t j = 0; j < L; ++j)
                    for (std::int64_t d = 0; d < D; ++d) {
                        kt[static_cast<std::size_t>(d * L + j)] = pr.at(pr.kv, b, j, hk, d);
                        vf32[static_cast<std::size_t>(j * D + d)] = pr.at(pr.vv, b, j, hk, d);
                    }
                for (std::int64_t i0 = 0; i0 < L; i0 += kPanel) {
                    const std::int64_t m = std::min(kPanel, L - i0);
                    for (std::int64_t i = 0; i < m; ++i)
                        for (std::int64_t d = 0; d < D; ++d)
                            qp[static_cast<std::size_t>(i * D + d)] = scale * pr.at(pr.qv, b, i0 + i, h, d);
                    kernels::cpu::gemm(m, L, D, qp.data(), D, 1, kt.data(), L, s.data(), L, false);
                    for (std::int64_t i = 0; i < m; ++i) {
                        float* row = s.data() + i * L;
                        pat.mask_row(i0 + i, pr.pos.data(), L, mask.data());
                        float mx = -INFINITY;
                        for (std::int64_t j = 0; j < L; ++j) {
                            if (!mask[static_cast<std::size_t>(j)]) row[j] = -INFINITY;
                            mx = std::max(mx, row[j]);
                        }
                        float sum = 0;
                        for (std::int64_t j = 0; j < L; ++j) {
                            row[j] = mx == -INFINITY ? 0.0f : std::exp(row[j] - mx);
                            sum += row[j];
                        }
                        const float inv = sum > 0 ? 1.0f / sum : 0.0f;
                        for (std::int64_t j = 0; j < L; ++j) row[j] *= inv;
                        pr.lse[static_cast<std::size_t>((b * pr.H + h) * L + i0 + i)] = mx + std::log(sum);
                    }
                    kernels::cpu::gemm(m, D, L, s.data(), L, 1, vf32.data(), D, op.data(), D, false);
                    for (std::int64_t i = 0; i < m; ++i)
                        for (std::int64_t d = 0; d < D; ++d)
                            store_from_f32(pr.ov.data, pr.dtype, pr.ov.offset(b, i0 + i, h, d),
                                           op[static_cast<std::size_t>(i * D + d)]);
                }
            }
    }
}

struct CheckResult {
    double max_err = 0;
    std::int64_t wrong = 0;
};

double tolerance(DType t) { return t == DType::f32 ? 1.0 / 8192 : t == DType::bf16 ? 1.0 / 128 : 1.0 / 1024; }

// fp64 reference of sampled query rows (O, LSE, and with gradients dQ) and sampled key rows (dK, dV).
// The key-row gradients sum over every query row and take that row's LSE and O from the kernel
// (checked on the sampled rows); everything else is recomputed here.
CheckResult check(const Job& job, Problem& pr, const Pattern& pat, bool grads) {
    const std::int64_t L = pr.L, D = pr.D, G = pr.H / pr.Hkv;
    const double scale = pat.softmax_scale(D), cap = pat.spec().softcap;
    const double tol = tolerance(pr.dtype);
    std::vector<std::int64_t> rows;
    for (int r = 0; r < job.check_rows; ++r) rows.push_back(std::min(L - 1, r * L / job.check_rows + r % 7));
    rows.push_back(L - 1);
    auto score = [&](std::int64_t b, std::int64_t i, std::int64_t h, std::int64_t j) {
        double s = 0;
        for (std::int64_t d = 0; d < D; ++d) s += double(pr.at(pr.qv, b, i, h, d)) * pr.at(pr.kv, b, j, h / G, d);
        s *= scale;
        return cap > 0 ? cap * std::tanh(s / cap) : s;
    };
    // dS/ds_raw factor of the softcap.
    auto dcap = [&](double s_capped) { return cap > 0 ? 1.0 - (s_capped / cap) * (s_capped / cap) : 1.0; };
    CheckResult res;
    auto compare = [&](CheckResult& r, double want, double got) {
        const double e = std::isinf(want) && want == got ? 0.0 : std::fabs(want - got);
        r.max_err = std::max(r.max_err, e);
        r.wrong += !(e <= tol * std::max(1.0, std::fabs(want)));
    };
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (std::int64_t b = 0; b < pr.B; ++b)
        for (std::int64_t h = 0; h < pr.H; ++h) {
            CheckResult local;
            std::vector<double> s(static_cast<std::size_t>(L)), o(static_cast<std::size_t>(D));
            for (std::int64_t i : rows) {
                double mx = -INFINITY;
                for (std::int64_t j = 0; j < L; ++j) {
                    s[j] = pat.allowed(i, j) ? score(b, i, h, j) : -INFINITY;
                    mx = std::max(mx, s[j]);
                }
                double sum = 0;
                for (std::int64_t j = 0; j < L; ++j) sum += mx == -INFINITY ? 0 : std::exp(s[j] - mx);
                const double lse = mx == -INFINITY ? -INFINITY : mx + std::log(sum);
                std::fill(o.begin(), o.end(), 0.0);
                for (std::int64_t j = 0; j < L; ++j) {
                    if (s[j] == -INFINITY) continue;
                    const double p = std::exp(s[j] - lse);
                    for (std::int64_t d = 0; d < D; ++d) o[d] += p * pr.at(pr.vv, b, j, h / G, d);
                }
                compare(local, lse, pr.lse[static_cast<std::size_t>((b * pr.H + h) * L + i)]);
                for (std::int64_t d = 0; d < D; ++d) compare(local, o[d], pr.at(pr.ov, b, i, h, d));
                if (grads) {
                    double delta = 0;
                    for (std::int64_t d = 0; d < D; ++d) delta += o[d] * pr.at(pr.dov, b, i, h, d);
                    std::vector<double> dq(static_cast<std::size_t>(D), 0.0);
                    for (std::int64_t j = 0; j < L; ++j) {
                        if (s[j] == -INFINITY) continue;
                        const double p = std::exp(s[j] - lse);
                        double dp = 0;
                        for (std::int64_t d = 0; d < D; ++d)
                            dp += double(pr.at(pr.dov, b, i, h, d)) * pr.at(pr.vv, b, j, h / G, d);
                        const double ds = p * (dp - delta) * dcap(s[j]) * scale;
                        for (std::int64_t d = 0; d < D; ++d) dq[d] += ds * pr.at(pr.kv, b, j, h / G, d);
                    }
                    for (std::int64_t d = 0; d < D; ++d)
                        compare(local, dq[d], pr.dq[static_cast<std::size_t>(((b * L + i) * pr.H + h) * D + d)]);
                }
            }
#pragma omp critical
            {
                res.max_err = std::max(res.max_err, local.max_err);
                res.wrong += local.wrong;
            }
        }
    if (grads) {
        // Key rows: dV_j = sum_i P_ij dO_i, dK_j = sum_i dS_ij Q_i over every query head of the group.
        for (std::int64_t b = 0; b < pr.B; ++b)
            for (std::int64_t hk = 0; hk < pr.Hkv; ++hk)
                for (std::int64_t j : rows) {
                    std::vector<double> dk(static_cast<std::size_t>(D), 0.0), dv(static_cast<std::size_t>(D), 0.0);
                    for (std::int64_t h = hk * G; h < (hk + 1) * G; ++h)
                        for (std::int64_t i = 0; i < L; ++i) {
                            if (!pat.allowed(i, j)) continue;
                            const double sc = score(b, i, h, j);
                            const double p = std::exp(sc - pr.lse[static_cast<std::size_t>((b * pr.H + h) * L + i)]);
                            double dp = 0, delta = 0;
                            for (std::int64_t d = 0; d < D; ++d) {
                                dp += double(pr.at(pr.dov, b, i, h, d)) * pr.at(pr.vv, b, j, hk, d);
                                delta += double(pr.at(pr.dov, b, i, h, d)) * pr.at(pr.ov, b, i, h, d);
                            }
                            const double ds = p * (dp - delta) * dcap(sc) * scale;
                            for (std::int64_t d = 0; d < D; ++d) {
                                dv[d] += p * pr.at(pr.dov, b, i, h, d);
                                dk[d] += ds * pr.at(pr.qv, b, i, h, d);
                            }
                        }
                    for (std::int64_t d = 0; d < D; ++d) {
                        compare(res, dk[d], pr.dk[static_cast<std::size_t>(((b * L + j) * pr.Hkv + hk) * D + d)]);
                        compare(res, dv[d], pr.dv[static_cast<std::size_t>(((b * L + j) * pr.Hkv + hk) * D + d)]);
                    }
                }
    }
    return res;
}

}  // namespace

PatternSpec spec_for_length(const Job& job, std::int64_t L) {
    PatternSpec s = job.pattern;
    s.seq_len = L;
    if (job.docs > 0) {
        s.doc_bounds = {0};
        for (std::int64_t d = 1; d <= job.docs; ++d) s.doc_bounds.push_back(std::max(d * L / job.docs, s.doc_bounds.back() + 1));
        s.doc_bounds.back() = std::max(L, s.doc_bounds.back());
    } else if (!job.doc_lens.empty()) {
        s.doc_bounds = {0};
        for (std::size_t i = 0; s.doc_bounds.back() < L; ++i)
            s.doc_bounds.push_back(std::min(L, s.doc_bounds.back() + job.doc_lens[i % job.doc_lens.size()]));
    }
    return s;
}

int run_kernel_bench(const Job& job) {
    const char* mode = job.mode == Mode::fwd ? "fwd" : job.mode == Mode::bwd ? "bwd" : "fwd+bwd";
    const double peak = job.peak ? measure_fma_peak() : 0.0;
    const bool do_bwd = job.mode != Mode::fwd;
    std::printf("# longattn-bench kernel mode=%s dtype=%s batch=%lld heads=%lld kv_heads=%lld head_dim=%lld\n", mode,
                std::string(dtype_name(job.dtype)).c_str(), static_cast<long long>(job.batch),
                static_cast<long long>(job.heads), static_cast<long long>(job.kv_heads),
                static_cast<long long>(job.head_dim));
    std::printf("# pattern %s, iters %d (median), warmup %d, check %s\n",
                Pattern(spec_for_length(job, 1 << 20)).describe().c_str(), job.iters, job.warmup, job.check ? "on" : "off");
    if (job.peak) std::printf("# FMA peak of one core (measured): %.1f GFLOP/s fp32\n", peak);
    std::printf("# FLOPs: fwd 4*D*pairs, bwd 2.5x that (pairs counted exactly from the pattern)\n");
    std::printf("#%9s %4s %8s %10s %9s %6s %10s %9s %6s %10s %7s %10s %6s\n", "tokens", "thr", "density", "fwd_ms",
                "fwd_GF/s", "%peak", "bwd_ms", "bwd_GF/s", "%peak", "unfused_ms", "speedup", "max_err", "#wrong");
    std::int64_t wrong_total = 0;
    for (std::int64_t L : job.lengths) {
        const Pattern pat(spec_for_length(job, L));
        Problem pr(job, L);
        if (do_bwd) pr.alloc_grads(job.seed);
        const double pairs = static_cast<double>(pat.count_allowed(0, L, 0, L));
        const double flops = 4.0 * static_cast<double>(job.head_dim) * pairs * static_cast<double>(job.batch * job.heads);
        for (int thr : job.threads) {
            const int t = thr > 0 ? thr : omp_get_max_threads();
            double t_bwd = 0, t_base = 0;
            // The forward always runs: the backward needs its O and LSE.
            const double t_fwd = time_median(job, [&] { kernels::flash_forward_cpu(pr.fwd(pat, t)); });
            if (do_bwd) t_bwd = time_median(job, [&] { kernels::flash_backward_cpu(pr.bwd(pat, t)); });
            if (job.baseline) {
                t_base = time_median(job, [&] { unfused_forward(pr, pat, t); });
                kernels::flash_forward_cpu(pr.fwd(pat, t));  // the check reads the fused result
            }
            CheckResult c;
            if (job.check) c = check(job, pr, pat, do_bwd);
            wrong_total += c.wrong;
            auto pct = [&](double gf) { return peak > 0 ? 100.0 * gf / (peak * t) : 0.0; };
            const double gf_fwd = flops / t_fwd * 1e-9, gf_bwd = t_bwd > 0 ? 2.5 * flops / t_bwd * 1e-9 : 0;
            std::printf(" %9lld %4d %8.5f %10.2f %9.1f %6.1f %10.2f %9.1f %6.1f %10.2f %7.2f %10.2e %6lld\n",
                        static_cast<long long>(L), t, pairs / (double(L) * double(L)), t_fwd * 1e3, gf_fwd, pct(gf_fwd),
                        t_bwd * 1e3, gf_bwd, pct(gf_bwd), t_base * 1e3, t_base > 0 ? t_base / t_fwd : 0.0,
                        c.max_err, static_cast<long long>(c.wrong));
            std::fflush(stdout);
        }
    }
    std::printf("# Out of bounds values : %lld %s\n", static_cast<long long>(wrong_total), wrong_total ? "FAILED" : "OK");
    return static_cast<int>(std::min<std::int64_t>(wrong_total, 1));
}

}  // namespace longattn::bench
