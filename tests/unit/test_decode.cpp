// The paged KV cache and the decode step (longattn/kv_cache.hpp, kernels::decode_cpu): every step's O
// and LSE against the fp64 reference of attention over the whole sequence (FlashAttention's rule), on
// one process and on 2-8 threaded ranks of the in-process communicator.
#include <algorithm>
#include <gtest/gtest.h>

#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "fake_comm.hpp"
#include "longattn/error.hpp"
#include "longattn/kv_cache.hpp"
#include "longattn/layout.hpp"
#include "testing.hpp"

namespace longattn::test {
namespace {

// One decode problem: `batch` sequences; sequence b has prefill[b] tokens, then `steps` steps of T new
// tokens each. Each sequence is a Problem whose queries are its new tokens (at their positions) and
// whose keys are the whole sequence: with a causal pattern its reference is what each step must give.
struct DecodeCase {
    std::string name;
    std::vector<std::int64_t> prefill{40};
    std::int64_t steps = 3, T = 1, Hq = 4, Hkv = 2, D = 64;
    DType dtype = DType::f32;
    PatternSpec spec;
    std::int64_t page_tokens = 16;
    KvPlacement placement = KvPlacement::round_robin;
    LayoutKind prefill_layout = LayoutKind::zigzag;
    DecodeCombine combine = DecodeCombine::allgather;
    int threads = 1;
};

std::vector<Problem> problems_of(const DecodeCase& dc) {
    std::vector<Problem> out;
    for (std::size_t b = 0; b < dc.prefill.size(); ++b) {
        Case c;
        c.name = dc.name + " seq " + std::to_string(b);
        const std::int64_t L0 = dc.prefill[b], L = L0 + dc.steps * dc.T;
        c.Sq = dc.steps * dc.T;
        c.Sk = L;
        c.q_pos = positions(c.Sq, L0);
        c.Hq = dc.Hq;
        c.Hkv = dc.Hkv;
        c.D = dc.D;
        c.dtype = dc.dtype;
        c.o_dtype = DType::f32;
        c.spec = dc.spec;
        c.spec.causal = true;
        c.seed = 11 + b;
        out.emplace_back(c);
    }
    return out;
}

// Rows [r0, r0 + n) of a Problem's K or V as a [1, n, H, D] fp32 array.
std::vector<float> rows_of(const Tensor& t, const std::vector<std::int64_t>& rows) {
    const std::int64_t H = t.shape()[2], D = t.shape()[3];
    std::vector<float> out;
    for (std::int64_t r : rows)
        for (std::int64_t i = 0; i < H * D; ++i) out.push_back(t.get(r * H * D + i));
    return out;
}

struct RankResult {
    std::vector<FwdOut> outs;  // per sequence: every step's rows
    std::vector<std::vector<float>> step_o;  // per step: the whole o, for bitwise comparisons
};

// Runs the whole case on one rank of `comm` (null: one process).
RankResult run_case(const DecodeCase& dc, const std::vector<Problem>& pbs, comm::Communicator* comm) {
    const std::int64_t B = static_cast<std::int64_t>(pbs.size()), T = dc.T, Hq = dc.Hq, Hkv = dc.Hkv, D = dc.D;
    KvCacheOptions opt;
    opt.batch = B;
    std::int64_t cap = 0;
    for (const Problem& pb : pbs) cap = std::max(cap, pb.c.Sk);
    opt.capacity = cap;
    opt.kv_heads = Hkv;
    opt.head_dim = D;
    opt.dtype = dc.dtype;
    opt.page_tokens = dc.page_tokens;
    opt.placement = dc.placement;
    KvCache cache(comm, opt);
    const int P = cache.ranks(), r = cache.rank();
    // Prefill: this rank's rows by the prefill layout.
    for (std::int64_t b = 0; b < B; ++b) {
        const Layout lay(dc.prefill_layout, dc.prefill[static_cast<std::size_t>(b)], P);
        const std::vector<std::int64_t> mine = lay.positions(r);
        auto k = rows_of(pbs[static_cast<std::size_t>(b)].k, mine);
        auto v = rows_of(pbs[static_cast<std::size_t>(b)].v, mine);
        const std::int64_t n = static_cast<std::int64_t>(mine.size());
        cache.write(b, mine.data(), n, contiguous_view(k.data(), DType::f32, 1, n, Hkv, D),
                    contiguous_view(v.data(), DType::f32, 1, n, Hkv, D));
    }
    cache.sync_lengths();
    RankResult res;
    for (const Problem& pb : pbs) {
        FwdOut fo;
        fo.o = Tensor(DType::f32, {1, pb.c.Sq, Hq, D});
        fo.lse.assign(static_cast<std::size_t>(Hq * pb.c.Sq), 0.0f);
        res.outs.push_back(std::move(fo));
    }
    std::vector<float> q(static_cast<std::size_t>(B * T * Hq * D)), k(static_cast<std::size_t>(B * T * Hkv * D)),
        v(k.size()), o(q.size()), lse(static_cast<std::size_t>(B * Hq * T));
    for (std::int64_t s = 0; s < dc.steps; ++s) {
        for (std::int64_t b = 0; b < B; ++b) {
            const Problem& pb = pbs[static_cast<std::size_t>(b)];
            for (std::int64_t i = 0; i < T; ++i) {
                const std::int64_t row = s * T + i, key = pb.c.q_pos[static_cast<std::size_t>(row)];
                for (std::int64_t x = 0; x < Hq * D; ++x)
                    q[static_cast<std::size_t>((b * T + i) * Hq * D + x)] = pb.q.get(row * Hq * D + x);
                for (std::int64_t x = 0; x < Hkv * D; ++x) {
                    k[static_cast<std::size_t>((b * T + i) * Hkv * D + x)] = pb.k.get(key * Hkv * D + x);
                    v[static_cast<std::size_t>((b * T + i) * Hkv * D + x)] = pb.v.get(key * Hkv * D + x);
                }
            }
        }
        DecodeArgs a;
        a.q = contiguous_view(q.data(), DType::f32, B, T, Hq, D);
        a.k = contiguous_view(k.data(), DType::f32, B, T, Hkv, D);
        a.v = contiguous_view(v.data(), DType::f32, B, T, Hkv, D);
        a.pattern = &pbs[0].pattern;
        a.o = o.data();
        a.lse = lse.data();
        DecodeOptions dopt;
        dopt.combine = dc.combine;
        dopt.threads = dc.threads;
        decode_step(cache, a, dopt);
        res.step_o.push_back(o);
        for (std::int64_t b = 0; b < B; ++b) {
            FwdOut& fo = res.outs[static_cast<std::size_t>(b)];
            const std::int64_t Sq = pbs[static_cast<std::size_t>(b)].c.Sq;
            for (std::int64_t i = 0; i < T; ++i) {
                const std::int64_t row = s * T + i;
                for (std::int64_t x = 0; x < Hq * D; ++x)
                    fo.o.set(row * Hq * D + x, o[static_cast<std::size_t>((b * T + i) * Hq * D + x)]);
                for (std::int64_t h = 0; h < Hq; ++h)
                    fo.lse[static_cast<std::size_t>(h * Sq + row)] = lse[static_cast<std::size_t>((b * Hq + h) * T + i)];
            }
        }
    }
    return res;
}

void check_case(const RankResult& res, const std::vector<Problem>& pbs) {
    for (std::size_t b = 0; b < pbs.size(); ++b) check_forward(pbs[b], res.outs[b]);
}

// The case on P threaded ranks: every rank's result checked; with the all-gather combine every rank
// holds the same bits.
void run_distributed(const DecodeCase& dc, int P) {
    SCOPED_TRACE(dc.name + ", P = " + std::to_string(P));
    const auto pbs = problems_of(dc);
    std::vector<RankResult> results(static_cast<std::size_t>(P));
    run_ranks(P, [&](comm::Communicator& comm) { results[static_cast<std::size_t>(comm.rank())] = run_case(dc, pbs, &comm); });
    check_case(results[0], pbs);
    for (int r = 1; r < P; ++r) {
        if (dc.combine == DecodeCombine::allgather)
            EXPECT_EQ(results[static_cast<std::size_t>(r)].step_o, results[0].step_o) << "rank " << r << " differs from rank 0";
        else
            check_case(results[static_cast<std::size_t>(r)], pbs);
    }
}

TEST(DecodeKernel, PatternsDtypesAndShapesOnOneProcess) {
    std::vector<DecodeCase> cases;
    DecodeCase base;
    base.name = "causal";
    cases.push_back(base);
    for (DType t : {DType::bf16, DType::f16}) {
        DecodeCase c = base;
        c.name = std::string("causal ") + std::string(dtype_name(t));
        c.dtype = t;
        cases.push_back(c);
    }
    {
        DecodeCase c = base;
        c.name = "gqa 8:1, three new tokens, D 80, pages of 32";
        c.Hq = 8;
        c.Hkv = 1;
        c.T = 3;
        c.D = 80;
        c.page_tokens = 32;
        c.prefill = {70};
        cases.push_back(c);
    }
    {
        DecodeCase c = base;
        c.name = "window 20 with 4 sinks over 150 tokens";
        c.prefill = {150};
        c.spec.window = Window{20, 0};
        c.spec.global_first = 4;
        cases.push_back(c);
    }
    {
        DecodeCase c = base;
        c.name = "alibi and softcap, two new tokens";
        c.T = 2;
        c.spec.alibi_slopes = alibi_slopes(c.Hq);
        c.spec.softcap = 5.0f;
        cases.push_back(c);
    }
    {
        DecodeCase c = base;
        c.name = "mha D 128, a batch of uneven sequences, pages of 64";
        c.Hq = 2;
        c.Hkv = 2;
        c.D = 128;
        c.page_tokens = 64;
        c.prefill = {1, 65, 200};
        cases.push_back(c);
    }
    for (const DecodeCase& dc : cases) {
        SCOPED_TRACE(dc.name);
        const auto pbs = problems_of(dc);
        check_case(run_case(dc, pbs, nullptr), pbs);
    }
}

TEST(DecodeKernel, SameBitsOnRerunAndForAnyThreadCount) {
    DecodeCase dc;
    dc.name = "threads";
    dc.prefill = {900, 300};
    dc.page_tokens = 16;  // 57 pages: several chunks per (sequence, kv head)
    const auto pbs = problems_of(dc);
    const RankResult one = run_case(dc, pbs, nullptr);
    dc.threads = 2;
    const RankResult two = run_case(dc, pbs, nullptr);
    const RankResult again = run_case(dc, pbs, nullptr);
    EXPECT_EQ(one.step_o, two.step_o);
    EXPECT_EQ(two.step_o, again.step_o);
    check_case(one, pbs);
}

// A window with sinks reads only the pages in reach: position 160 with a window of 20 and 4 sinks
// reaches pages [0, 16), [128, 144), [144, 160) and [160, 176) of the 11, for each of the 2 kv heads.
TEST(DecodeKernel, AWindowReadsOnlyThePagesInReach) {
    KvCacheOptions opt;
    opt.capacity = 200;
    opt.kv_heads = 2;
    opt.head_dim = 16;
    opt.page_tokens = 16;
    KvCache cache(nullptr, opt);
    cache.fill_synth(5, 0, 160);
    std::vector<float> q(4 * 16, 0.5f), k(2 * 16, 0.25f), o(q.size()), lse(4);
    PatternSpec spec;
    spec.causal = true;
    spec.window = Window{20, 0};
    spec.global_first = 4;
    const Pattern pat(spec);
    DecodeArgs a;
    a.q = contiguous_view(q.data(), DType::f32, 1, 1, 4, 16);
    a.k = contiguous_view(k.data(), DType::f32, 1, 1, 2, 16);
    a.v = a.k;
    a.pattern = &pat;
    a.o = o.data();
    a.lse = lse.data();
    const DecodeStats st = decode_step(cache, a, {});
    EXPECT_EQ(st.blocks_read, 8);
    EXPECT_EQ(st.blocks_skipped, 14);
}

TEST(Decode, DistributedEqualsTheWholeSequenceAtEveryRankCount) {
    DecodeCase dc;
    dc.name = "uneven batch, zigzag prefill, round-robin appends crossing pages";
    dc.prefill = {37, 90, 5};
    dc.steps = 6;
    dc.T = 3;
    for (int P : {1, 2, 3, 5, 8}) run_distributed(dc, P);
}

TEST(Decode, PlacementsCombinesAndPatterns) {
    DecodeCase dc;
    dc.prefill = {53, 21};
    dc.steps = 4;
    dc.T = 2;
    dc.name = "layout placement (pages straddle ranks), contiguous prefill";
    dc.placement = KvPlacement::layout;
    dc.prefill_layout = LayoutKind::contiguous;
    run_distributed(dc, 3);
    dc.name = "all-reduce combine";
    dc.placement = KvPlacement::round_robin;
    dc.combine = DecodeCombine::allreduce;
    run_distributed(dc, 3);
    dc.name = "window and sinks, bf16, striped prefill";
    dc.combine = DecodeCombine::allgather;
    dc.prefill = {160, 70};
    dc.prefill_layout = LayoutKind::striped;
    dc.spec.window = Window{24, 0};
    dc.spec.global_first = 2;
    dc.dtype = DType::bf16;
    run_distributed(dc, 5);
    dc.name = "gqa 4:1, alibi";
    dc.spec = PatternSpec{};
    dc.Hq = 8;
    dc.Hkv = 2;
    dc.spec.alibi_slopes = alibi_slopes(8);
    run_distributed(dc, 2);
}

// The two baselines: pass-Q (each rank's heads) and the cache gathered onto rank 0.
TEST(Decode, PassQAndGatheredBaselinesGiveTheSameAttention) {
    DecodeCase dc;
    dc.name = "baselines";
    dc.prefill = {75, 40};
    dc.steps = 1;
    dc.T = 2;
    dc.Hq = 6;
    dc.Hkv = 3;
    const auto pbs = problems_of(dc);
    const int P = 4;  // more ranks than kv heads: one rank's chunk is empty
    const std::int64_t B = 2, T = dc.T, Hq = dc.Hq, D = dc.D;
    std::vector<std::vector<float>> ring(P), gath(P), main(P);
    std::vector<std::pair<std::int64_t, std::int64_t>> heads(P);
    run_ranks(P, [&](comm::Communicator& comm) {
        // The decode problem of run_case, then the baselines over the cache it leaves.
        KvCacheOptions opt;
        opt.batch = B;
        opt.capacity = 80;
        opt.kv_heads = dc.Hkv;
        opt.head_dim = D;
        opt.dtype = DType::f32;
        opt.page_tokens = 16;
        KvCache cache(&comm, opt);
        for (std::int64_t b = 0; b < B; ++b) {
            const Layout lay(LayoutKind::zigzag, pbs[static_cast<std::size_t>(b)].c.Sk, P);
            const auto mine = lay.positions(comm.rank());
            auto k = rows_of(pbs[static_cast<std::size_t>(b)].k, mine);
            auto v = rows_of(pbs[static_cast<std::size_t>(b)].v, mine);
            const std::int64_t n = static_cast<std::int64_t>(mine.size());
            cache.write(b, mine.data(), n, contiguous_view(k.data(), DType::f32, 1, n, dc.Hkv, D),
                        contiguous_view(v.data(), DType::f32, 1, n, dc.Hkv, D));
        }
        cache.sync_lengths();
        std::vector<float> q(static_cast<std::size_t>(B * T * Hq * D)), lse(static_cast<std::size_t>(B * Hq * T));
        for (std::int64_t b = 0; b < B; ++b)
            for (std::int64_t x = 0; x < T * Hq * D; ++x)
                q[static_cast<std::size_t>(b * T * Hq * D + x)] = pbs[static_cast<std::size_t>(b)].q.get(x);
        DecodeArgs a;
        a.q = contiguous_view(q.data(), DType::f32, B, T, Hq, D);
        a.pattern = &pbs[0].pattern;
        a.lse = lse.data();
        const int r = comm.rank();
        main[r].assign(q.size(), 0.0f);
        a.o = main[r].data();
        decode_step(cache, a, {});
        ring[r].assign(q.size(), -7.0f);
        a.o = ring[r].data();
        decode_pass_q(cache, a, {}, &heads[r].first, &heads[r].second);
        const auto one = cache.gathered(0);
        EXPECT_EQ(one != nullptr, r == 0);
        if (one) {
            EXPECT_EQ(one->ranks(), 1);
            EXPECT_EQ(one->length(0), 77);
            gath[0].assign(q.size(), 0.0f);
            a.o = gath[0].data();
            decode_step(*one, a, {});
        }
    });
    // The baselines against the decode step (which the other tests hold to the fp64 reference).
    std::int64_t covered = 0;
    for (int r = 0; r < P; ++r) {
        covered += heads[r].second - heads[r].first;
        for (std::int64_t b = 0; b < B; ++b)
            for (std::int64_t i = 0; i < T; ++i)
                for (std::int64_t h = heads[r].first; h < heads[r].second; ++h)
                    for (std::int64_t d = 0; d < D; ++d) {
                        const std::size_t x = static_cast<std::size_t>(((b * T + i) * Hq + h) * D + d);
                        EXPECT_NEAR(ring[r][x], main[0][x], 1e-6) << "pass-q rank " << r << " head " << h;
                    }
    }
    EXPECT_EQ(covered, Hq);
    for (std::size_t x = 0; x < main[0].size(); ++x) EXPECT_NEAR(gath[0][x], main[0][x], 1e-6) << "gathered, value " << x;
}

TEST(Decode, BadInputIsAClearErrorOnEveryRankAndLeavesTheCacheAsItWas) {
    KvCacheOptions opt;
    opt.capacity = 40;
    opt.kv_heads = 2;
    opt.head_dim = 16;
    opt.page_tokens = 0;
    EXPECT_THROW(
        {
            try {
                KvCache c(nullptr, opt);
            } catch (const Error& e) {
                EXPECT_NE(std::string(e.what()).find("page-tokens: must be a positive multiple of 16"), std::string::npos)
                    << e.what();
                throw;
            }
        },
        Error);
    opt.page_tokens = 16;
    opt.capacity = 80;
    opt.pages = 2;  // per rank
    std::mutex mu;
    std::vector<std::string> msgs;
    run_ranks(2, [&](comm::Communicator& comm) {
        KvCache cache(&comm, opt);
        std::vector<float> kv(static_cast<std::size_t>(40 * 2 * 16), 0.5f);
        const TensorView kvv = contiguous_view(kv.data(), DType::f32, 1, 40, 2, 16);
        const std::int64_t beyond = 80, p0 = 0;
        EXPECT_THROW(cache.write(0, &beyond, 1, kvv, kvv), Error);  // beyond the capacity
        EXPECT_THROW(cache.write(1, &p0, 1, kvv, kvv), Error);      // sequence index out of range
        // Round-robin pages of 16: rank 0 holds [0, 16) and [32, 48), rank 1 [16, 32) and [48, 63).
        cache.fill_synth(3, 0, 63);
        EXPECT_EQ(cache.pages_used(), 2);
        EXPECT_EQ(cache.tokens_held(), comm.rank() == 0 ? 32 : 31);
        std::vector<float> q(static_cast<std::size_t>(17 * 4 * 16), 0.25f), o(q.size()), lse(17 * 4);
        std::vector<float> k(static_cast<std::size_t>(17 * 2 * 16), 0.1f);
        PatternSpec cs;
        cs.causal = true;
        const Pattern causal(cs);
        DecodeArgs a;
        a.pattern = &causal;
        a.o = o.data();
        a.lse = lse.data();
        auto step = [&](std::int64_t T, std::int64_t Hq) {
            a.q = contiguous_view(q.data(), DType::f32, 1, T, Hq, 16);
            a.k = contiguous_view(k.data(), DType::f32, 1, T, 2, 16);
            a.v = a.k;
            decode_step(cache, a, {});
        };
        auto refused = [&](const char* what, std::int64_t T, std::int64_t Hq) {
            try {
                step(T, Hq);
                ADD_FAILURE() << what << ": not refused";
            } catch (const Error& e) {
                const std::lock_guard<std::mutex> lock(mu);
                msgs.push_back(std::string(what) + ": rank " + std::to_string(comm.rank()) + ": " + e.what());
            }
        };
        refused("heads", 1, 3);  // query heads no multiple of the kv heads
        // Positions 63 (rank 1, room in its page) and 64 (rank 0, which has no page left): rank 0 refuses,
        // rank 1 takes its row back.
        refused("pages", 2, 4);
        EXPECT_EQ(cache.length(0), 63);
        EXPECT_EQ(cache.tokens_held(), comm.rank() == 0 ? 32 : 31);
        step(1, 4);  // position 63 alone fits
        EXPECT_EQ(cache.length(0), 64);
        EXPECT_EQ(cache.tokens_held(), 32);
        refused("capacity", 17, 4);  // 64 + 17 > 80
        EXPECT_EQ(cache.length(0), 64);
        // Query heads that differ between the ranks (each valid alone), then a bad head count on rank 0 only.
        refused("differ", 1, comm.rank() == 0 ? 4 : 2);
        refused("one rank", 1, comm.rank() == 0 ? 3 : 4);
        // A caller whose arguments failed on rank 1 before the step (as a binding's conversion can).
        if (comm.rank() == 1) {
            try {
                decode_refuse(cache, "q: not a tensor");
            } catch (const Error& e) {
                const std::lock_guard<std::mutex> lock(mu);
                msgs.push_back(std::string("refuse: rank 1: ") + e.what());
            }
        } else {
            refused("refuse", 1, 4);
        }
        EXPECT_EQ(cache.length(0), 64);
        EXPECT_EQ(cache.tokens_held(), 32);
    });
    bool heads = false, pages = false, capacity = false;
    for (const std::string& m : msgs) {
        heads |= m.find("q.shape[2]: query heads (3) must be a multiple of the cache's kv heads (2)") != std::string::npos;
        pages |= m.find("out of pages") != std::string::npos;
        capacity |= m.find("do not fit") != std::string::npos;
    }
    const auto count = [&](const std::string& what) {
        return std::count_if(msgs.begin(), msgs.end(), [&](const std::string& m) { return m.find(what) != std::string::npos; });
    };
    EXPECT_EQ(msgs.size(), 12u);
    EXPECT_TRUE(heads && pages && capacity) << ::testing::PrintToString(msgs);
    EXPECT_EQ(count("differ: rank"), 2) << ::testing::PrintToString(msgs);
    EXPECT_EQ(count("must be the same on every rank; the ranks hold 1 to 1 tokens and 2 to 4 heads"), 2)
        << ::testing::PrintToString(msgs);
    EXPECT_EQ(count("one rank: rank 0: q.shape[2]: query heads (3)"), 1) << ::testing::PrintToString(msgs);
    EXPECT_EQ(count("one rank: rank 1: decode: rank 0 refused the step"), 1) << ::testing::PrintToString(msgs);
    EXPECT_EQ(count("refuse: rank 1: q: not a tensor"), 1) << ::testing::PrintToString(msgs);
    EXPECT_EQ(count("refuse: rank 0: decode: rank 1 refused the step"), 1) << ::testing::PrintToString(msgs);
}

}  // namespace
}  // namespace longattn::test
