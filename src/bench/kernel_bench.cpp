// Single-process kernel benchmark: the fused CPU flash kernels against this CPU's FMA peak and an
// unfused GEMM-softmax-GEMM baseline built from the same tile products, with a sampled fp64 check.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <vector>

#include "bench/bench.hpp"
#include "bench/check.hpp"
#include "bench/inputs.hpp"
#include "bench/mirror.hpp"
#include "bench/report.hpp"
#include "bench/save.hpp"
#include "kernels/attention.hpp"
#include "kernels/cpu/simd.hpp"
#ifdef LONGATTN_BENCH_CUDA
#include "kernels/cuda/flash_cuda.hpp"
#include "kernels/cuda/tensor_ops_cuda.hpp"
#endif

namespace longattn::bench {
namespace {

using Clock = std::chrono::steady_clock;
using kernels::cpu::vf;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Independent FMA chains, enough to cover the latency of two FMA pipes and few enough to stay in
// registers (32 with AVX-512, 16 below); GFLOP/s of one thread.
__attribute__((noinline)) double measure_fma_peak() {
    constexpr int kChains = kernels::cpu::kLanes == 16 ? 16 : 10;
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

    Problem(const Job& job, const Inputs& in, std::int64_t L_, bool grads)
        : B(job.shape.batch), L(L_), H(job.shape.heads), Hkv(job.shape.kv_heads), D(job.shape.head_dim),
          dtype(job.shape.dtype) {
        const std::size_t es = dtype_size(dtype);
        auto alloc = [&](std::vector<std::uint8_t>& buf, std::int64_t heads) {
            buf.assign(static_cast<std::size_t>(B * L * heads * D) * es, 0);
            return contiguous_view(buf.data(), dtype, B, L, heads, D);
        };
        qv = alloc(q, H);
        kv = alloc(k, Hkv);
        vv = alloc(v, Hkv);
        ov = alloc(o, H);
        lse.assign(static_cast<std::size_t>(B * H * L), 0.0f);
        pos.resize(static_cast<std::size_t>(L));
        for (std::int64_t i = 0; i < L; ++i) pos[static_cast<std::size_t>(i)] = i;
        in.fill(SynthTensor::q, qv, pos.data());
        in.fill(SynthTensor::k, kv, pos.data());
        in.fill(SynthTensor::v, vv, pos.data());
        if (!grads) return;
        dov = alloc(dout, H);
        in.fill(SynthTensor::dout, dov, pos.data());
        dq.assign(static_cast<std::size_t>(B * L * H * D), 0.0f);
        dk.assign(static_cast<std::size_t>(B * L * Hkv * D), 0.0f);
        dv.assign(dk.size(), 0.0f);
        dqv = contiguous_view(dq.data(), DType::f32, B, L, H, D);
        dkv = contiguous_view(dk.data(), DType::f32, B, L, Hkv, D);
        dvv = contiguous_view(dv.data(), DType::f32, B, L, Hkv, D);
    }
    // --device cuda: the kernels read and write device copies (mirrors: q k v o lse [dout dq dk dv]).
    std::vector<Mirror> mirrors;
    void to_device() {
        mirrors.reserve(9);
        for (const TensorView& t : {qv, kv, vv, ov, lse_view(lse.data(), B, H, L)}) mirrors.emplace_back(t);
        if (!dq.empty())
            for (const TensorView& t : {dov, dqv, dkv, dvv}) mirrors.emplace_back(t);
    }
    const TensorView& on(std::size_t i, const TensorView& host) const { return mirrors.empty() ? host : mirrors[i].device(); }
    void results_to_host() const {
        for (std::size_t i : {3, 4, 6, 7, 8})
            if (i < mirrors.size()) mirrors[i].to_host();
    }
    kernels::FwdParams fwd(const Pattern& p, int threads) {
        kernels::FwdParams f;
        f.q = on(0, qv), f.k = on(1, kv), f.v = on(2, vv), f.o = on(3, ov);
        f.lse = mirrors.empty() ? lse.data() : mirrors[4].device().ptr<float>();
        f.q_pos = f.k_pos = pos.data();
        f.pattern = &p;
        f.threads = threads;
        return f;
    }
    kernels::BwdParams bwd(const Pattern& p, int threads) {
        kernels::BwdParams b;
        b.q = on(0, qv), b.k = on(1, kv), b.v = on(2, vv), b.o = on(3, ov), b.dout = on(5, dov);
        b.lse = mirrors.empty() ? lse.data() : mirrors[4].device().ptr<float>();
        b.dq = on(6, dqv), b.dk = on(7, dkv), b.dv = on(8, dvv);
        b.q_pos = b.k_pos = pos.data();
        b.pattern = &p;
        b.threads = threads;
        return b;
    }
    RankRows rows() const {
        RankRows r;
        r.pos = pos.data(), r.S = L, r.o = ov, r.lse = lse.data();
        if (!dq.empty()) r.dq = dqv, r.dk = dkv, r.dv = dvv;
        return r;
    }
    float at(const TensorView& t, std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t d) const {
        return load_as_f32(t.data, t.dtype, t.offset(b, s, h, d));
    }
};

// The kernels of the job's device; a CUDA call returns once its results are ready.
void forward(const kernels::FwdParams& p) {
#ifdef LONGATTN_BENCH_CUDA
    if (p.q.device == Device::cuda) {
        kernels::flash_forward_cuda(p);
        kernels::cuda_synchronize(p.stream);
        return;
    }
#endif
    kernels::flash_forward_cpu(p);
}

void backward(const kernels::BwdParams& p) {
#ifdef LONGATTN_BENCH_CUDA
    if (p.q.device == Device::cuda) {
        kernels::flash_backward_cuda(p);
        kernels::cuda_synchronize(p.stream);
        return;
    }
#endif
    kernels::flash_backward_cpu(p);
}

// Median of n timed runs after the warmup.
template <class F>
double time_median(const Job& job, F&& run) {
    for (int i = 0; i < job.sweep.warmup; ++i) run();
    std::vector<double> t;
    for (int i = 0; i < job.sweep.iters; ++i) {
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
    const float scale = pat.softmax_scale(D) * 1.4426950408889634f;  // scores in the log2 scale
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
                        // The flash kernels' softmax arithmetic: scores in the log2 scale, the same exp2.
                        float* row = s.data() + i * L;
                        pat.mask_row(i0 + i, pr.pos.data(), L, mask.data());
                        float mx = -INFINITY;
                        for (std::int64_t j = 0; j < L; ++j) {
                            if (!mask[static_cast<std::size_t>(j)]) row[j] = -INFINITY;
                            mx = std::max(mx, row[j]);
                        }
                        const float base = mx == -INFINITY ? 0.0f : mx;
                        vf acc{};
                        std::int64_t j = 0;
                        for (; j + kernels::cpu::kLanes <= L; j += kernels::cpu::kLanes) {
                            const vf e = kernels::cpu::exp2v(kernels::cpu::load(row + j) - base);
                            kernels::cpu::store(row + j, e);
                            acc += e;
                        }
                        float sum = kernels::cpu::hsum(acc);
                        for (; j < L; ++j) sum += row[j] = std::exp2(row[j] - base);
                        const float inv = sum > 0 ? 1.0f / sum : 0.0f;
                        for (j = 0; j < L; ++j) row[j] *= inv;
                        pr.lse[static_cast<std::size_t>((b * pr.H + h) * L + i0 + i)] =
                            sum > 0 ? (mx + std::log2(sum)) * 0.6931471805599453f : -INFINITY;
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

}  // namespace

int run_kernel_bench(const Job& job) {
    const double peak = job.checks.peak ? measure_fma_peak() : 0.0;
    const bool do_bwd = job.sweep.mode != Mode::fwd;
    const Inputs in(job);
    Report rep(job, true);
    {
        std::ostringstream os;
        os << "longattn-bench kernel mode=" << mode_name(job.sweep.mode) << " dtype=" << dtype_name(job.shape.dtype)
           << " batch=" << job.shape.batch << " heads=" << job.shape.heads << " kv_heads=" << job.shape.kv_heads
           << " head_dim=" << job.shape.head_dim;
        rep.note(os.str());
    }
    rep.note("pattern " + Pattern(spec_for_length(job, job.sweep.lengths.back())).describe() + ", documents " +
             job.pattern.docs.describe() + ", inputs " + (in.loaded() ? job.io.load_dir : "synthetic") +
             "; median of " + std::to_string(job.sweep.iters) + " iterations after " +
             std::to_string(job.sweep.warmup) + " warmup");
    if (job.checks.peak) {
        char line[96];
        std::snprintf(line, sizeof(line), "FMA peak of one core (measured): %.1f GFLOP/s fp32", peak);
        rep.note(line);
    }
    rep.note("FLOPs: fwd 4*D*pairs, bwd 2.5x that (pairs counted exactly from the pattern); unfused: GEMM, softmax, "
             "GEMM with the same products and exp, speedup = unfused_ms / fwd_ms");
    rep.columns({{"tokens", 10, -1}, {"thr", 4, -1}, {"density", 8, 5}, {"fwd_ms", 10, 2}, {"fwd_GF/s", 9, 1},
                 {"fwd_%peak", 9, 1}, {"bwd_ms", 10, 2}, {"bwd_GF/s", 9, 1}, {"bwd_%peak", 9, 1}, {"unfused_ms", 10, 2},
                 {"speedup", 7, 2}, {"max_err", 10, 2, true}, {"#wrong", 6, -1}});
    std::int64_t wrong_total = 0;
    for (std::int64_t L : job.sweep.lengths) {
        const Pattern pat(spec_for_length(job, L));
        Problem pr(job, in, L, do_bwd);
        if (job.exec.device == Device::cuda) pr.to_device();
        const double pairs = static_cast<double>(pat.count_allowed(0, L, 0, L));
        const double flops = 4.0 * static_cast<double>(job.shape.head_dim) * pairs *
                             static_cast<double>(job.shape.batch * job.shape.heads);
        for (int thr : job.sweep.threads) {
            const int t = thr > 0 ? thr : omp_get_max_threads();
            double t_bwd = 0, t_base = 0;
            // The forward always runs: the backward needs its O and LSE.
            const double t_fwd = time_median(job, [&] { forward(pr.fwd(pat, t)); });
            if (do_bwd) t_bwd = time_median(job, [&] { backward(pr.bwd(pat, t)); });
            if (job.checks.baseline) {
                t_base = time_median(job, [&] { unfused_forward(pr, pat, t); });
                kernels::flash_forward_cpu(pr.fwd(pat, t));  // the check reads the fused result
            }
            pr.results_to_host();
            if (job.faults.corrupt)
                store_from_f32(pr.ov.data, pr.dtype, 0, load_as_f32(pr.ov.data, pr.dtype, 0) + 0.5f);
            RankRows rows = pr.rows();
            std::vector<float> delta;
            CheckResult c;
            if (job.checks.enabled) {
                if (do_bwd) {
                    delta = row_delta(pr.ov, pr.dov);
                    rows.lse_all = pr.lse.data();
                    rows.delta_all = delta.data();
                }
                c = check_rows(job, in, pat, L, rows, t);
            }
            wrong_total += c.wrong;
            if (!job.io.save_dir.empty()) save_outputs(job, L, rows, nullptr);
            auto pct = [&](double gf) { return peak > 0 ? 100.0 * gf / (peak * t) : 0.0; };
            const double gf_fwd = flops / t_fwd * 1e-9, gf_bwd = t_bwd > 0 ? 2.5 * flops / t_bwd * 1e-9 : 0;
            rep.row({double(L), double(t), pairs / (double(L) * double(L)), t_fwd * 1e3, gf_fwd, pct(gf_fwd), t_bwd * 1e3,
                     gf_bwd, pct(gf_bwd), t_base * 1e3, t_base > 0 ? t_base / t_fwd : 0.0, c.max_err, double(c.wrong)});
        }
    }
    return rep.finish(wrong_total);
}

}  // namespace longattn::bench
