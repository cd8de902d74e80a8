// The distributed API (longattn/distributed.hpp) on 2, 3 and 4 ranks that are threads of this process,
// talking through the fake communicator (fake_comm.hpp, with batches ordered as NCCL runs them), so
// every strategy runs under plain ctest:
//   - every rank's rows of O, LSE, dQ, dK and dV against the single-process CPU kernels on the whole
//     sequence, judged as tests/mpi/test_dist.cpp judges them: FlashAttention's rule against fp64,
//     with the single-process kernel's own error as the yardstick;
//   - the ring's skip counters and its traffic against what the pattern says each rank needs, worked
//     out here pair by pair from Pattern::allowed (and, for causal and a window on contiguous shards,
//     by hand); every strategy's traffic against the cost model's (longattn/cost_model.hpp);
//   - a kept Plan: the one-shot bits on every call, no split after it is built, no growth of its
//     working memory after the first call, and one rank's bad input refused on every rank;
//   - a Context: the plans it finds and builds as document lengths and one rank's positions change,
//     its bound, and the one-shot bits on every call.
#include <gtest/gtest.h>
#include <omp.h>

#include <limits>
#include <ostream>
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "fake_comm.hpp"
#include "kernels/attention.hpp"
#include "kernels/cpu/reference.hpp"
#include "longattn/context.hpp"
#include "longattn/cost_model.hpp"
#include "longattn/distributed.hpp"
#include "longattn/error.hpp"
#include "longattn/layout.hpp"
#include "longattn/synth.hpp"
#include "strategies/common.hpp"
#include "testing.hpp"

namespace longattn::test {
namespace {

constexpr std::uint64_t kSeed = 11;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct Shape {
    std::int64_t N, B, Hq, Hkv, D;
    DType dtype;
};
// 203 tokens: no rank count divides them (2 x 101 + 1, 3 x 67 + 2, 4 x 50 + 3), so shards differ;
// GQA 2:1. 128 tokens: even shards at P = 2 and 4; MQA with 3 query heads, which 2 and 4 do not divide
// (Ulysses leaves one rank without a head at P = 4); batch 2; bf16 storage.
const Shape kShapes[] = {{203, 1, 4, 2, 32, DType::f32}, {128, 2, 3, 1, 64, DType::bf16}};
constexpr std::int64_t kWindow = 24;  // fewer rows than any contiguous shard here (32 at N = 128, P = 4)

struct NamedPattern {
    std::string name;
    PatternSpec spec;
};

PatternSpec causal() {
    PatternSpec s;
    s.causal = true;
    return s;
}
PatternSpec causal_window() {
    PatternSpec s = causal();
    s.window = Window{kWindow, 0};
    return s;
}

// Causal; a causal sliding window (on contiguous shards a rank needs only its predecessor's last rows);
// documents of uneven lengths without causality (keys after the query too).
std::vector<NamedPattern> patterns(std::int64_t n) {
    PatternSpec docs;
    docs.doc_bounds = {0, n / 5, n / 2, n / 2 + n / 4 + 3, n};
    return {{"causal", causal()}, {"causal_window_24", causal_window()}, {"documents", docs}};
}

Tensor synth(DType t, std::int64_t B, const std::vector<std::int64_t>& pos, std::int64_t H, std::int64_t D,
             SynthTensor which) {
    Tensor x(t, {B, static_cast<std::int64_t>(pos.size()), H, D});
    fill_synth(x.view(), kSeed, which, pos.data());
    return x;
}

// The whole sequence in one process: the CPU kernels' results and the fp64 reference.
struct Whole {
    std::vector<double> o, lse, dq, dk, dv;  // single-process kernels
    kernels::RefForward rf;
    kernels::RefBackward rb;
};

Whole whole_problem(const Shape& s, const Pattern& pat) {
    const std::vector<std::int64_t> all = positions(s.N);
    const Tensor q = synth(s.dtype, s.B, all, s.Hq, s.D, SynthTensor::q),
                 k = synth(s.dtype, s.B, all, s.Hkv, s.D, SynthTensor::k),
                 v = synth(s.dtype, s.B, all, s.Hkv, s.D, SynthTensor::v),
                 dout = synth(s.dtype, s.B, all, s.Hq, s.D, SynthTensor::dout);
    Tensor o(s.dtype, {s.B, s.N, s.Hq, s.D}), dq(DType::f32, {s.B, s.N, s.Hq, s.D}),
        dk(DType::f32, {s.B, s.N, s.Hkv, s.D}), dv(DType::f32, {s.B, s.N, s.Hkv, s.D});
    std::vector<float> lse(static_cast<std::size_t>(s.B * s.Hq * s.N), kNaN);
    kernels::FwdParams fp;
    fp.q = q.view(), fp.k = k.view(), fp.v = v.view(), fp.o = o.view(), fp.lse = lse.data();
    fp.q_pos = fp.k_pos = all.data(), fp.pattern = &pat;
    kernels::flash_forward_cpu(fp);
    kernels::BwdParams bp;
    bp.q = q.view(), bp.k = k.view(), bp.v = v.view(), bp.o = o.view(), bp.dout = dout.view(), bp.lse = lse.data();
    bp.dq = dq.view(), bp.dk = dk.view(), bp.dv = dv.view(), bp.q_pos = bp.k_pos = all.data(), bp.pattern = &pat;
    kernels::flash_backward_cpu(bp);
    return {o.to_f64(),  to_f64(lse), dq.to_f64(), dk.to_f64(), dv.to_f64(), kernels::reference_forward(fp),
            kernels::reference_backward(bp)};
}

// One rank's part of a distributed forward and backward.
struct RankRun {
    std::vector<std::int64_t> pos;
    std::vector<double> o, lse, dq, dk, dv;
    DistStats fwd, bwd;
    std::uint64_t shard_bytes = 0;  // what learning every rank's shard costs this rank, measured
    MemoryEstimate est_fwd, est_bwd;  // a plan's estimate of the calls' working memory
};
struct DistRun {
    std::vector<RankRun> ranks;
    std::int64_t splits = 0;
};

DistRun run_distributed(const Shape& s, const Pattern& pat, const DistOptions& opt, LayoutKind lk, int P) {
    const Layout layout(lk, s.N, P);
    DistRun out;
    out.ranks.resize(static_cast<std::size_t>(P));
    FakeWorld world(P);
    run_ranks(world, [&](comm::Communicator& comm) {
        // One thread per rank already: OpenMP teams inside a rank (the tensor helpers take all cores)
        // would only oversubscribe the machine.
        omp_set_num_threads(1);
        RankRun& me = out.ranks[static_cast<std::size_t>(comm.rank())];
        me.pos = layout.positions(comm.rank());
        const auto S = static_cast<std::int64_t>(me.pos.size());
        const Tensor q = synth(s.dtype, s.B, me.pos, s.Hq, s.D, SynthTensor::q),
                     k = synth(s.dtype, s.B, me.pos, s.Hkv, s.D, SynthTensor::k),
                     v = synth(s.dtype, s.B, me.pos, s.Hkv, s.D, SynthTensor::v),
                     dout = synth(s.dtype, s.B, me.pos, s.Hq, s.D, SynthTensor::dout);
        Tensor o(s.dtype, {s.B, S, s.Hq, s.D}), dq(DType::f32, {s.B, S, s.Hq, s.D}),
            dk(DType::f32, {s.B, S, s.Hkv, s.D}), dv(DType::f32, {s.B, S, s.Hkv, s.D});
        std::vector<float> lse(static_cast<std::size_t>(s.B * s.Hq * S), kNaN);
        // The ring's plan starts by learning every shard (dist::gather_shards); its cost, measured
        // here, separates the ring's own traffic in the byte counts checked below.
        const std::uint64_t b0 = comm.bytes_sent();
        dist::gather_shards(comm, me.pos.data(), S);
        me.shard_bytes = comm.bytes_sent() - b0;
        DistForwardArgs fa;
        fa.q = q.view(), fa.k = k.view(), fa.v = v.view(), fa.o = o.view(), fa.lse = lse.data();
        fa.pos = me.pos.data(), fa.pattern = &pat;
        attention_forward(comm, opt, fa, &me.fwd);
        DistBackwardArgs ba;
        ba.q = q.view(), ba.k = k.view(), ba.v = v.view(), ba.o = o.view(), ba.dout = dout.view(), ba.lse = lse.data();
        ba.dq = dq.view(), ba.dk = dk.view(), ba.dv = dv.view(), ba.pos = me.pos.data(), ba.pattern = &pat;
        attention_backward(comm, opt, ba, &me.bwd);
        const Plan plan(comm, me.pos.data(), pat, PlanShape{s.B, S, s.Hq, s.Hkv, s.D}, opt);
        me.est_fwd = plan.memory_estimate(false, s.dtype);
        me.est_bwd = plan.memory_estimate(true, s.dtype);
        me.o = o.to_f64(), me.lse = to_f64(lse), me.dq = dq.to_f64(), me.dk = dk.to_f64(), me.dv = dv.to_f64();
    });
    out.splits = world.splits();
    return out;
}

// FlashAttention's rule as tests/mpi/test_dist.cpp applies it: the distributed error against fp64 on
// this rank's rows within `factor` times the single-process kernel's error over the whole problem,
// plus the floor of the output type. The message also gives the largest difference to the
// single-process kernel itself.
::testing::AssertionResult rule(const char* name, const std::vector<double>& got, const std::vector<double>& single_all,
                                const std::vector<double>& single_rows, const std::vector<double>& ref_all,
                                const std::vector<double>& ref_rows, DType t, double factor) {
    const double e_single = max_abs_err(single_all, ref_all).err, e_dist = max_abs_err(got, ref_rows).err;
    const double bound = factor * e_single + floor_for(t, ref_all);
    if (e_dist <= bound) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << name << ": distributed error " << e_dist << " > bound " << bound
                                         << " (single-process error " << e_single << ", floor " << floor_for(t, ref_all)
                                         << "); max |distributed - single-process| on the rows "
                                         << max_abs_err(got, single_rows).err;
}

void check_rows(const Shape& s, const Whole& w, const RankRun& me) {
    const std::int64_t HqD = s.Hq * s.D, HkD = s.Hkv * s.D, BH = s.B * s.Hq;
    auto rows = [&](const std::vector<double>& full, std::int64_t HD) { return pick_rows(full, s.B, s.N, HD, me.pos); };
    EXPECT_TRUE(rule("O", me.o, w.o, rows(w.o, HqD), w.rf.o, rows(w.rf.o, HqD), s.dtype, kForwardFactor));
    EXPECT_TRUE(rule("LSE", me.lse, w.lse, lse_rows(w.lse, BH, s.N, me.pos), w.rf.lse,
                     lse_rows(w.rf.lse, BH, s.N, me.pos), DType::f32, kForwardFactor));
    EXPECT_TRUE(rule("dQ", me.dq, w.dq, rows(w.dq, HqD), w.rb.dq, rows(w.rb.dq, HqD), DType::f32, kGradFactor));
    EXPECT_TRUE(rule("dK", me.dk, w.dk, rows(w.dk, HkD), w.rb.dk, rows(w.rb.dk, HkD), DType::f32, kGradFactor));
    EXPECT_TRUE(rule("dV", me.dv, w.dv, rows(w.dv, HkD), w.rb.dv, rows(w.rb.dv, HkD), DType::f32, kGradFactor));
}

// ---- What a ring must skip and send, from the pattern alone -----------------------------------

using ShardList = std::vector<std::vector<std::int64_t>>;

struct RingExpect {
    std::int64_t skipped_blocks = 0, skipped_transfers = 0;
    std::int64_t kv_rows = 0;    // K/V rows this rank sends on (forward, and again in the backward)
    std::int64_t grad_rows = 0;  // rows of dK/dV running sums this rank sends on or home (backward)
};

// In a ring of shards, shard o visits the rank at distance t = 0, 1, ..., P-1 after its owner in
// step t. A rank attends the shard it holds only if some query of its own may attend some key of it;
// the holder passes a shard on only while a rank further along needs it; only the rows between the
// first and the last that another rank may attend travel; and in the backward every holder after the
// owner, up to the farthest that needs the shard, sends on (the last one: home) the running sum of
// those rows' dK/dV.
RingExpect ring_expect(const Pattern& pat, const ShardList& sh, int r) {
    const int P = static_cast<int>(sh.size());
    auto uz = [](int i) { return static_cast<std::size_t>(i); };
    // need[o][d]: a query of shard d may attend a key of shard o.
    std::vector<std::vector<char>> need(uz(P), std::vector<char>(uz(P), 0));
    for (int o = 0; o < P; ++o)
        for (int d = 0; d < P; ++d)
            for (std::int64_t k : sh[uz(o)])
                for (std::int64_t q : sh[uz(d)])
                    if (!need[uz(o)][uz(d)] && pat.allowed(q, k)) need[uz(o)][uz(d)] = 1;
    auto at = [&](int o, int t) { return (o + t) % P; };  // the rank at distance t after o
    auto needed_beyond = [&](int o, int t) {
        for (int s = t + 1; s < P; ++s)
            if (need[uz(o)][uz(at(o, s))]) return true;
        return false;
    };
    // Rows of shard o between the first and the last that another rank may attend.
    auto travelling_rows = [&](int o) {
        std::int64_t first = -1, last = -1;
        const auto& keys = sh[uz(o)];
        for (std::size_t i = 0; i < keys.size(); ++i)
            for (int d = 0; d < P; ++d) {
                if (d == o) continue;
                bool any = false;
                for (std::int64_t q : sh[uz(d)]) any = any || pat.allowed(q, keys[i]);
                if (any) {
                    if (first < 0) first = static_cast<std::int64_t>(i);
                    last = static_cast<std::int64_t>(i);
                }
            }
        return first < 0 ? std::int64_t{0} : last - first + 1;
    };
    RingExpect e;
    for (int t = 0; t < P; ++t) {
        const int o = (r - t + P) % P;
        if (sh[uz(r)].empty() || !need[uz(o)][uz(r)]) ++e.skipped_blocks;
        if (t + 1 < P) {
            if (needed_beyond(o, t)) e.kv_rows += travelling_rows(o);
            else ++e.skipped_transfers;
        }
        if (t >= 1 && (need[uz(o)][uz(r)] || needed_beyond(o, t))) e.grad_rows += travelling_rows(o);
    }
    return e;
}

ShardList shards_of(const Layout& l) {
    ShardList sh;
    for (int r = 0; r < l.ranks(); ++r) sh.push_back(l.positions(r));
    return sh;
}

// The reference above against counts worked out by hand, so that it can be trusted for the layouts
// and patterns where no closed form is at hand.
TEST(InprocRingReference, MatchesHandDerivedCounts) {
    for (int P = 2; P <= 5; ++P)
        for (std::int64_t N : {std::int64_t{128}, std::int64_t{203}}) {
            const Layout l(LayoutKind::contiguous, N, P);
            const ShardList sh = shards_of(l);
            for (int r = 0; r < P; ++r) {
                SCOPED_TRACE("P=" + std::to_string(P) + " N=" + std::to_string(N) + " rank " + std::to_string(r));
                const auto size = [&](int o) {
                    return static_cast<std::int64_t>(sh[static_cast<std::size_t>(o)].size());
                };
                // Causal: rank r needs shards 0..r. Its own shard and those it receives go on while a
                // later rank exists (the wrapped-around ones, from ranks after r, nobody further needs);
                // it holds the running sums of shards 0..r-1.
                const RingExpect c = ring_expect(Pattern(causal()), sh, r);
                EXPECT_EQ(c.skipped_blocks, P - 1 - r);
                EXPECT_EQ(c.skipped_transfers, r == P - 1 ? P - 1 : P - 2 - r);
                std::int64_t upto_r = 0;
                for (int o = 0; o <= r; ++o) upto_r += size(o);
                EXPECT_EQ(c.kv_rows, r < P - 1 ? upto_r : 0);
                EXPECT_EQ(c.grad_rows, upto_r - size(r));
                // A window shorter than every shard: rank r needs shards r-1 and r, and only the last
                // kWindow rows of its own shard go to rank r+1, whose dK/dV for them come back.
                const RingExpect w = ring_expect(Pattern(causal_window()), sh, r);
                EXPECT_EQ(w.skipped_blocks, r == 0 ? P - 1 : P - 2);
                EXPECT_EQ(w.skipped_transfers, r == P - 1 ? P - 1 : P - 2);
                EXPECT_EQ(w.kv_rows, r < P - 1 ? kWindow : 0);
                EXPECT_EQ(w.grad_rows, r > 0 ? kWindow : 0);
            }
            // Zigzag and causal: every rank holds an early and a late chunk, so every shard is needed
            // by every rank and nothing is skipped.
            const ShardList zz = shards_of(Layout(LayoutKind::zigzag, N, P));
            for (int r = 0; r < P; ++r) {
                const RingExpect z = ring_expect(Pattern(causal()), zz, r);
                EXPECT_EQ(z.skipped_blocks, 0);
                EXPECT_EQ(z.skipped_transfers, 0);
            }
        }
}

// ---- The strategies -----------------------------------------------------------------------------

struct Config {
    StrategyKind strategy;
    int P;
    int ulysses_degree;
};

std::string config_name(const Config& c) {
    std::string s = strategy_name(c.strategy);
    s.append("_P").append(std::to_string(c.P));
    if (c.strategy == StrategyKind::hybrid) s.append("_u").append(std::to_string(c.ulysses_degree));
    return s;
}

void PrintTo(const Config& c, std::ostream* os) { *os << config_name(c); }  // gtest's name for a parameter

class InprocStrategies : public ::testing::TestWithParam<Config> {};

TEST_P(InprocStrategies, MatchSingleProcessKernelsAndSkipWhatThePatternAllows) {
    const Config cfg = GetParam();
    DistOptions opt;
    opt.strategy = cfg.strategy;
    opt.ulysses_degree = cfg.ulysses_degree;
    opt.threads = 1;
    opt.kv_head_chunk = 1;   // allgather: one kv head at a time where there are two
    opt.progress_chunks = 3;  // ring: progress() between kernel calls on row chunks
    for (const Shape& s : kShapes)
        for (const NamedPattern& np : patterns(s.N)) {
            const Pattern pat(np.spec);
            const Whole w = whole_problem(s, pat);
            for (LayoutKind lk : {LayoutKind::contiguous, LayoutKind::zigzag}) {
                std::string what = config_name(cfg);
                what.append(" ").append(layout_name(lk)).append(" ").append(np.name).append(" N=");
                what.append(std::to_string(s.N)).append(" ").append(dtype_name(s.dtype));
                SCOPED_TRACE(what);
                const DistRun run = run_distributed(s, pat, opt, lk, cfg.P);
                // Hybrid splits the world into Ulysses groups and into rings, in the forward, again in
                // the backward, and once more for the plan of the memory estimate; the others use the
                // world as it is.
                EXPECT_EQ(run.splits, cfg.strategy == StrategyKind::hybrid ? 6 : 0);
                const Layout layout(lk, s.N, cfg.P);
                ModelJob mj;
                mj.tokens = s.N, mj.batch = s.B, mj.heads = s.Hq, mj.kv_heads = s.Hkv, mj.head_dim = s.D;
                mj.dtype = s.dtype, mj.layout = lk, mj.ranks = cfg.P, mj.dist = opt;
                const std::vector<RankCost> model = model_costs(mj, pat);
                double model_pairs = 0;
                for (const RankCost& c : model) model_pairs += c.pairs;
                // Every allowed pair of every head is attended exactly once, somewhere.
                EXPECT_EQ(model_pairs, double(pat.count_allowed(0, s.N, 0, s.N)) * double(s.B * s.Hq));
                for (int r = 0; r < cfg.P; ++r) {
                    SCOPED_TRACE("rank " + std::to_string(r));
                    const RankRun& me = run.ranks[static_cast<std::size_t>(r)];
                    check_rows(s, w, me);
                    // The cost model's bytes are what the one-shot calls sent beyond building their plans.
                    EXPECT_EQ(me.fwd.bytes_sent - me.fwd.setup_bytes, model[static_cast<std::size_t>(r)].fwd_bytes);
                    EXPECT_EQ(me.bwd.bytes_sent - me.bwd.setup_bytes, model[static_cast<std::size_t>(r)].bwd_bytes);
                    // The plan's estimate of the working memory is what the strategy held at its peak.
                    EXPECT_GT(me.fwd.scratch_peak_bytes, 0u);
                    EXPECT_EQ(me.est_fwd.scratch, me.fwd.scratch_peak_bytes);
                    EXPECT_EQ(me.est_bwd.scratch, me.bwd.scratch_peak_bytes);
                    if (cfg.strategy == StrategyKind::ring) {
                        const RingExpect e = ring_expect(pat, shards_of(layout), r);
                        EXPECT_EQ(me.fwd.skipped_blocks, e.skipped_blocks);
                        EXPECT_EQ(me.fwd.skipped_transfers, e.skipped_transfers);
                        EXPECT_EQ(me.bwd.skipped_blocks, e.skipped_blocks);
                        EXPECT_EQ(me.bwd.skipped_transfers, e.skipped_transfers);
                        // K/V rows in their storage type; the dK/dV sums in fp32, two tensors.
                        const auto row = static_cast<std::uint64_t>(s.B * s.Hkv * s.D);
                        const std::uint64_t kv = static_cast<std::uint64_t>(e.kv_rows) * row * 2 * dtype_size(s.dtype);
                        const std::uint64_t grad = static_cast<std::uint64_t>(e.grad_rows) * row * 2 * 4;
                        EXPECT_EQ(me.fwd.bytes_sent, me.shard_bytes + kv);
                        EXPECT_EQ(me.bwd.bytes_sent, me.shard_bytes + kv + grad);
                        if (lk == LayoutKind::contiguous && np.name == "causal") {
                            EXPECT_EQ(me.fwd.skipped_blocks, cfg.P - 1 - r);  // the hand-derived form
                            EXPECT_EQ(me.fwd.skipped_transfers, r == cfg.P - 1 ? cfg.P - 1 : cfg.P - 2 - r);
                        }
                    } else if (cfg.strategy == StrategyKind::hybrid) {
                        // The inner ring runs over the rings' shards: the sequence gathered by each Ulysses
                        // group (its ranks' positions in rank order), ring rank r / u. Every rank's heads
                        // read one kv head or whole groups of them here, so the ring runs once per call.
                        const int u = cfg.ulysses_degree;
                        ShardList groups(static_cast<std::size_t>(cfg.P / u));
                        for (int j = 0; j < cfg.P; ++j) {
                            const auto p = layout.positions(j);
                            auto& g = groups[static_cast<std::size_t>(j / u)];
                            g.insert(g.end(), p.begin(), p.end());
                        }
                        const RingExpect e = ring_expect(pat, groups, r / u);
                        EXPECT_EQ(me.fwd.skipped_blocks, e.skipped_blocks);
                        EXPECT_EQ(me.fwd.skipped_transfers, e.skipped_transfers);
                        EXPECT_EQ(me.bwd.skipped_blocks, e.skipped_blocks);
                        EXPECT_EQ(me.bwd.skipped_transfers, e.skipped_transfers);
                    } else {
                        // Ulysses attends its heads over the whole sequence, allgather every key: nothing
                        // is skipped.
                        EXPECT_EQ(me.fwd.skipped_blocks + me.bwd.skipped_blocks, 0);
                        EXPECT_EQ(me.fwd.skipped_transfers + me.bwd.skipped_transfers, 0);
                    }
                }
            }
        }
}

INSTANTIATE_TEST_SUITE_P(
    Inproc, InprocStrategies,
    ::testing::Values(Config{StrategyKind::ring, 2, 1}, Config{StrategyKind::ring, 3, 1},
                      Config{StrategyKind::ring, 4, 1}, Config{StrategyKind::ulysses, 2, 1},
                      Config{StrategyKind::ulysses, 3, 1}, Config{StrategyKind::ulysses, 4, 1},
                      Config{StrategyKind::hybrid, 4, 2}, Config{StrategyKind::allgather, 2, 1},
                      Config{StrategyKind::allgather, 3, 1}, Config{StrategyKind::allgather, 4, 1}),
    [](const auto& info) { return config_name(info.param); });

// Fewer rows than ranks: some ranks own none, in every strategy and layout, forward and backward,
// and every row still matches the single-process kernels (and the memory estimate its peak).
TEST(InprocZeroRows, EveryStrategyAndLayoutForwardAndBackward) {
    const Shape s{13, 1, 4, 2, 16, DType::f32};  // 13 rows (the fewest the patterns allow) on 16 ranks
    for (const Config& cfg : {Config{StrategyKind::ring, 16, 1}, Config{StrategyKind::ulysses, 16, 1},
                              Config{StrategyKind::hybrid, 16, 2}, Config{StrategyKind::allgather, 16, 1}}) {
        DistOptions opt;
        opt.strategy = cfg.strategy;
        opt.ulysses_degree = cfg.ulysses_degree;
        opt.threads = 1;
        for (const NamedPattern& np : patterns(s.N)) {
            const Pattern pat(np.spec);
            const Whole w = whole_problem(s, pat);
            for (LayoutKind lk : {LayoutKind::contiguous, LayoutKind::zigzag, LayoutKind::striped}) {
                SCOPED_TRACE(config_name(cfg) + " " + layout_name(lk) + " " + np.name);
                const DistRun run = run_distributed(s, pat, opt, lk, cfg.P);
                int empty = 0;
                for (const RankRun& me : run.ranks) {
                    empty += me.pos.empty();
                    check_rows(s, w, me);
                    EXPECT_EQ(me.est_fwd.scratch, me.fwd.scratch_peak_bytes);
                    EXPECT_EQ(me.est_bwd.scratch, me.bwd.scratch_peak_bytes);
                }
                EXPECT_GE(empty, 1);
            }
        }
    }
}

// Ranks that disagree on a shape fail alike on every rank, and none is left waiting.
TEST(InprocErrors, MismatchedShapesFailOnEveryRank) {
    std::vector<std::string> errors(2);
    run_ranks(2, [&](comm::Communicator& comm) {
        const std::int64_t D = comm.rank() == 0 ? 8 : 16;  // ranks disagree on the head dim
        Tensor q(DType::f32, {1, 4, 2, D}), k(DType::f32, {1, 4, 2, D}), v(DType::f32, {1, 4, 2, D}),
            o(DType::f32, {1, 4, 2, D});
        std::vector<float> lse(8);
        const std::vector<std::int64_t> pos = comm.rank() == 0 ? positions(4) : positions(4, 4);
        const Pattern pat;
        DistForwardArgs fa;
        fa.q = q.view(), fa.k = k.view(), fa.v = v.view(), fa.o = o.view(), fa.lse = lse.data(), fa.pos = pos.data();
        fa.pattern = &pat;
        try {
            attention_forward(comm, DistOptions{}, fa);
        } catch (const Error& e) {
            errors[static_cast<std::size_t>(comm.rank())] = e.what();
        }
    });
    for (const std::string& e : errors) EXPECT_NE(e.find("q.shape[3] (head dim)"), std::string::npos) << e;
}

// ---- The Plan -------------------------------------------------------------------------------------

// One Plan called again and again gives the one-shot calls' bits every time, splits no communicator
// after it is built, and stops growing its working memory after the first call.
TEST(InprocPlan, ReusedPlanGivesTheOneShotBitsWithoutSplittingOrAllocating) {
    const Shape& s = kShapes[0];
    const Pattern pat(causal_window());
    for (const Config& cfg : {Config{StrategyKind::hybrid, 4, 2}, Config{StrategyKind::ring, 3, 1},
                              Config{StrategyKind::ulysses, 3, 1}, Config{StrategyKind::allgather, 2, 1}}) {
        SCOPED_TRACE(config_name(cfg));
        DistOptions opt;
        opt.strategy = cfg.strategy;
        opt.ulysses_degree = cfg.ulysses_degree;
        opt.threads = 1;
        const DistRun once = run_distributed(s, pat, opt, LayoutKind::zigzag, cfg.P);
        // The one-shot calls build a plan each, and so does the memory estimate: the hybrid splits
        // twice per plan.
        EXPECT_EQ(once.splits, cfg.strategy == StrategyKind::hybrid ? 6 : 0);
        for (const RankRun& r : once.ranks) EXPECT_GT(r.fwd.setup_s + r.bwd.setup_s, 0.0);

        const Layout layout(LayoutKind::zigzag, s.N, cfg.P);
        FakeWorld world(cfg.P);
        std::vector<std::int64_t> splits_built(static_cast<std::size_t>(cfg.P)), splits_after(splits_built);
        run_ranks(world, [&](comm::Communicator& comm) {
            omp_set_num_threads(1);
            const RankRun& want = once.ranks[static_cast<std::size_t>(comm.rank())];
            const std::vector<std::int64_t> pos = layout.positions(comm.rank());
            const auto S = static_cast<std::int64_t>(pos.size());
            const Tensor q = synth(s.dtype, s.B, pos, s.Hq, s.D, SynthTensor::q),
                         k = synth(s.dtype, s.B, pos, s.Hkv, s.D, SynthTensor::k),
                         v = synth(s.dtype, s.B, pos, s.Hkv, s.D, SynthTensor::v),
                         dout = synth(s.dtype, s.B, pos, s.Hq, s.D, SynthTensor::dout);
            Plan plan(comm, pos.data(), pat, PlanShape{s.B, S, s.Hq, s.Hkv, s.D}, opt);
            comm.barrier();  // every rank's splits are done
            splits_built[static_cast<std::size_t>(comm.rank())] = world.splits();
            std::uint64_t held = 0, sent = 0;
            for (int call = 0; call < 3; ++call) {
                SCOPED_TRACE("call " + std::to_string(call));
                Tensor o(s.dtype, {s.B, S, s.Hq, s.D}), dq(DType::f32, {s.B, S, s.Hq, s.D}),
                    dk(DType::f32, {s.B, S, s.Hkv, s.D}), dv(DType::f32, {s.B, S, s.Hkv, s.D});
                std::vector<float> lse(static_cast<std::size_t>(s.B * s.Hq * S), kNaN);
                DistForwardArgs fa;
                fa.q = q.view(), fa.k = k.view(), fa.v = v.view(), fa.o = o.view(), fa.lse = lse.data();
                DistStats fs, bs;
                plan.forward(fa, &fs);
                DistBackwardArgs ba;
                ba.q = q.view(), ba.k = k.view(), ba.v = v.view(), ba.o = o.view(), ba.dout = dout.view();
                ba.lse = lse.data(), ba.dq = dq.view(), ba.dk = dk.view(), ba.dv = dv.view();
                plan.backward(ba, &bs);
                EXPECT_EQ(fs.setup_s + bs.setup_s, 0.0);
                EXPECT_EQ(o.to_f64(), want.o);
                EXPECT_EQ(to_f64(lse), want.lse);
                EXPECT_EQ(dq.to_f64(), want.dq);
                EXPECT_EQ(dk.to_f64(), want.dk);
                EXPECT_EQ(dv.to_f64(), want.dv);
                // The same traffic on every call; for the ring, the one-shot call's less its shard table.
                if (call == 0) sent = fs.bytes_sent + bs.bytes_sent;
                EXPECT_EQ(fs.bytes_sent + bs.bytes_sent, sent);
                if (cfg.strategy == StrategyKind::ring) {
                    EXPECT_EQ(fs.bytes_sent, want.fwd.bytes_sent - want.shard_bytes);
                    EXPECT_EQ(bs.bytes_sent, want.bwd.bytes_sent - want.shard_bytes);
                }
                if (call == 0) held = plan.workspace_bytes();
                EXPECT_EQ(plan.workspace_bytes(), held) << "working memory grew after the first call";
            }
            comm.barrier();
            splits_after[static_cast<std::size_t>(comm.rank())] = world.splits();
            plan.release_workspace();
            EXPECT_EQ(plan.workspace_bytes(), 0u);
        });
        for (int r = 0; r < cfg.P; ++r) {
            EXPECT_EQ(splits_built[static_cast<std::size_t>(r)], cfg.strategy == StrategyKind::hybrid ? 2 : 0);
            EXPECT_EQ(splits_after[static_cast<std::size_t>(r)], splits_built[static_cast<std::size_t>(r)])
                << "a communicator was split after the plan was built";
        }
    }
}

// Input that one rank alone gets wrong is refused on every rank before any transfer: that rank names
// its problem, the others name that rank, and none waits for it.
TEST(InprocPlan, OneRanksBadInputIsRefusedOnEveryRank) {
    constexpr int P = 3;
    std::vector<std::string> errors(P);
    const Layout layout(LayoutKind::zigzag, 96, P);
    run_ranks(P, [&](comm::Communicator& comm) {
        const std::vector<std::int64_t> pos = layout.positions(comm.rank());
        const auto S = static_cast<std::int64_t>(pos.size());
        const Pattern pat(causal());
        DistOptions opt;
        opt.threads = 1;
        Plan plan(comm, pos.data(), pat, PlanShape{1, S, 2, 1, 16}, opt);
        // Rank 1's query has one row too many.
        const std::int64_t qrows = comm.rank() == 1 ? S + 1 : S;
        Tensor q(DType::f32, {1, qrows, 2, 16}), k(DType::f32, {1, S, 1, 16}), v(DType::f32, {1, S, 1, 16}),
            o(DType::f32, {1, qrows, 2, 16});
        std::vector<float> lse(static_cast<std::size_t>(2 * qrows));
        DistForwardArgs fa;
        fa.q = q.view(), fa.k = k.view(), fa.v = v.view(), fa.o = o.view(), fa.lse = lse.data();
        try {
            plan.forward(fa);
        } catch (const Error& e) {
            errors[static_cast<std::size_t>(comm.rank())] = e.what();
        }
        // A plan takes its own positions and pattern.
        const Tensor good_q(DType::f32, {1, S, 2, 16});
        fa.q = good_q.view();
        fa.pos = pos.data();
        try {
            plan.forward(fa);
            ADD_FAILURE() << "positions given to a plan were accepted";
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("pos"), std::string::npos) << e.what();
        }
    });
    EXPECT_NE(errors[1].find("q: must have the plan's shape"), std::string::npos) << errors[1];
    for (int r : {0, 2}) EXPECT_NE(errors[static_cast<std::size_t>(r)].find("rank 1 refused"), std::string::npos) << errors[static_cast<std::size_t>(r)];
}

}  // namespace
}  // namespace longattn::test

namespace longattn::test {
namespace {

// ---- The Context ---------------------------------------------------------------------------------

// Steps of a training loop on 3 ranks: document lengths alternate between two batches, and at step 4
// rank 0 alone holds its rows in another order. Every call must give the one-shot call's bits; the
// cache finds what repeats, builds what changed on any rank (on every rank alike), and keeps its bound.
TEST(InprocContext, FindsWhatRepeatsAndBuildsWhatChangedOnAnyRank) {
    const Shape& s = kShapes[0];
    constexpr int P = 3, kSteps = 6;
    const Layout layout(LayoutKind::zigzag, s.N, P);
    PatternSpec a = causal(), b = causal();
    a.doc_bounds = {0, 50, s.N};
    b.doc_bounds = {0, 120, 160, s.N};
    const Pattern pa(a), pb(b);
    std::vector<CacheStats> one(P), two(P);
    std::vector<int> mismatched(P, 0);
    run_ranks(P, [&](comm::Communicator& comm) {
        omp_set_num_threads(1);
        const int me = comm.rank();
        const std::vector<std::int64_t> zig = layout.positions(me);
        std::vector<std::int64_t> reversed(zig.rbegin(), zig.rend());
        ContextOptions o1;
        o1.dist.threads = 1;
        o1.max_plans = 1;
        ContextOptions o2 = o1;
        o2.max_plans = 2;
        Context small(comm, o1), big(comm, o2);
        for (int step = 0; step < kSteps; ++step) {
            const Pattern& pat = step % 2 ? pb : pa;
            const std::vector<std::int64_t>& pos = step == 4 && me == 0 ? reversed : zig;
            const auto S = static_cast<std::int64_t>(pos.size());
            const Tensor q = synth(s.dtype, s.B, pos, s.Hq, s.D, SynthTensor::q),
                         k = synth(s.dtype, s.B, pos, s.Hkv, s.D, SynthTensor::k),
                         v = synth(s.dtype, s.B, pos, s.Hkv, s.D, SynthTensor::v);
            Tensor o_ref(s.dtype, {s.B, S, s.Hq, s.D});
            std::vector<float> lse_ref(static_cast<std::size_t>(s.B * s.Hq * S));
            DistForwardArgs fa;
            fa.q = q.view(), fa.k = k.view(), fa.v = v.view(), fa.o = o_ref.view(), fa.lse = lse_ref.data();
            fa.pos = pos.data(), fa.pattern = &pat;
            attention_forward(comm, o1.dist, fa);
            for (Context* c : {&small, &big}) {
                Tensor o(s.dtype, {s.B, S, s.Hq, s.D});
                std::vector<float> lse(lse_ref.size());
                fa.o = o.view(), fa.lse = lse.data();
                c->forward(fa);
                mismatched[static_cast<std::size_t>(me)] += o.to_f64() != o_ref.to_f64() || lse != lse_ref;
            }
        }
        one[static_cast<std::size_t>(me)] = small.cache();
        two[static_cast<std::size_t>(me)] = big.cache();
    });
    for (int r = 0; r < P; ++r) {
        SCOPED_TRACE("rank " + std::to_string(r));
        EXPECT_EQ(mismatched[static_cast<std::size_t>(r)], 0);
        // One plan: every step differs from the one before, so every step builds.
        const CacheStats& c1 = one[static_cast<std::size_t>(r)];
        EXPECT_EQ(c1.misses, kSteps);
        EXPECT_EQ(c1.hits, 0);
        EXPECT_EQ(c1.evictions, kSteps - 1);
        EXPECT_EQ(c1.plans, 1u);
        // Two plans: the two batches are built once each (steps 0, 1); step 4 (rank 0's rows reordered)
        // is built on every rank although ranks 1 and 2 hold its plan; step 5 finds batch b's plan.
        const CacheStats& c2 = two[static_cast<std::size_t>(r)];
        EXPECT_EQ(c2.misses, 3);
        EXPECT_EQ(c2.hits, 3);
        EXPECT_EQ(c2.evictions, 1);
        EXPECT_EQ(c2.plans, 2u);
    }
}

// DistOptions::choose: the plan takes the cost model's pick for its shards. Four nodes of one device
// behind links of 50 ms: latencies decide, so the pick is not the ring (3 steps each way) but what the
// model ranks first for these shards; a plan and a context built with `choose` run it, with the bits
// of that strategy named outright.
TEST(InprocAuto, PlansTakeTheCostModelsPick) {
    const Shape& s = kShapes[0];
    constexpr int P = 4;
    const Layout layout(LayoutKind::zigzag, s.N, P);
    const Pattern pat(causal());
    auto choice = std::make_shared<AutoChoice>();
    choice->cluster.nodes = P, choice->cluster.devices_per_node = 1;
    choice->cluster.inter_bandwidth = 1e9, choice->cluster.inter_latency = 50e-3;
    choice->cluster.fwd_flops = choice->cluster.bwd_flops = 1e12;
    choice->dtype = s.dtype;
    std::vector<std::vector<std::int64_t>> all(P);
    for (int r = 0; r < P; ++r) all[static_cast<std::size_t>(r)] = layout.positions(r);
    DistOptions plain;
    plain.threads = 1;
    const DistOptions expected = choose_strategy(*choice, all, pat, s.B, s.Hq, s.Hkv, s.D, plain);
    ASSERT_NE(expected.strategy, StrategyKind::ring);
    DistOptions opt = plain;
    opt.choose = choice;
    std::vector<int> bad(P, 0);
    run_ranks(P, [&](comm::Communicator& comm) {
        omp_set_num_threads(1);
        const int me = comm.rank();
        const std::vector<std::int64_t>& pos = all[static_cast<std::size_t>(me)];
        const auto S = static_cast<std::int64_t>(pos.size());
        const Plan plan(comm, pos.data(), pat, PlanShape{s.B, S, s.Hq, s.Hkv, s.D}, opt);
        bad[static_cast<std::size_t>(me)] += plan.options().strategy != expected.strategy ||
                                             plan.options().ulysses_degree != expected.ulysses_degree ||
                                             plan.options().choose != nullptr;
        const Tensor q = synth(s.dtype, s.B, pos, s.Hq, s.D, SynthTensor::q),
                     k = synth(s.dtype, s.B, pos, s.Hkv, s.D, SynthTensor::k),
                     v = synth(s.dtype, s.B, pos, s.Hkv, s.D, SynthTensor::v);
        Tensor o_ref(s.dtype, {s.B, S, s.Hq, s.D}), o(s.dtype, {s.B, S, s.Hq, s.D});
        std::vector<float> lse_ref(static_cast<std::size_t>(s.B * s.Hq * S)), lse(lse_ref.size());
        DistForwardArgs fa;
        fa.q = q.view(), fa.k = k.view(), fa.v = v.view(), fa.o = o_ref.view(), fa.lse = lse_ref.data();
        fa.pos = pos.data(), fa.pattern = &pat;
        attention_forward(comm, expected, fa);
        ContextOptions co;
        co.dist = opt;
        Context ctx(comm, co);
        fa.o = o.view(), fa.lse = lse.data();
        ctx.forward(fa);
        bad[static_cast<std::size_t>(me)] += o.to_f64() != o_ref.to_f64() || lse != lse_ref;
    });
    for (int r = 0; r < P; ++r) EXPECT_EQ(bad[static_cast<std::size_t>(r)], 0) << "rank " << r;
}

// A rank whose arguments cannot be planned is refused on every rank, and none waits.
TEST(InprocContext, OneRanksBadArgumentsAreRefusedOnEveryRank) {
    std::vector<std::string> errors(2);
    run_ranks(2, [&](comm::Communicator& comm) {
        const std::vector<std::int64_t> pos = comm.rank() == 0 ? positions(4) : positions(4, 4);
        Tensor q(DType::f32, {1, 4, 2, 8}), o(DType::f32, {1, 4, 2, 8});
        std::vector<float> lse(8);
        const Pattern pat;
        DistForwardArgs fa;
        fa.q = fa.k = fa.v = q.view(), fa.o = o.view(), fa.lse = lse.data(), fa.pos = pos.data();
        fa.pattern = comm.rank() == 1 ? nullptr : &pat;
        Context ctx(comm);
        try {
            ctx.forward(fa);
        } catch (const Error& e) {
            errors[static_cast<std::size_t>(comm.rank())] = e.what();
        }
    });
    EXPECT_NE(errors[0].find("rank 1 refused"), std::string::npos) << errors[0];
    EXPECT_NE(errors[1].find("pattern: a Context call names its pattern"), std::string::npos) << errors[1];
}

}  // namespace
}  // namespace longattn::test
