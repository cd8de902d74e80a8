// The cost model's exact part (longattn/cost_model.hpp) on cases small enough to count by hand; the
// in-process strategies test (test_strategies_inproc.cpp) and every distributed bench run check it
// against the bytes the strategies really send.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>

#include "longattn/cost_model.hpp"
#include "longattn/error.hpp"

namespace longattn::test {
namespace {

ModelJob job(StrategyKind s, int P, std::int64_t N, std::int64_t hq, std::int64_t hkv, std::int64_t D, DType t,
             LayoutKind l = LayoutKind::contiguous) {
    ModelJob j;
    j.tokens = N, j.heads = hq, j.kv_heads = hkv, j.head_dim = D, j.dtype = t, j.layout = l, j.ranks = P;
    j.dist.strategy = s;
    return j;
}

PatternSpec causal(std::int64_t window = -1) {
    PatternSpec s;
    s.causal = true;
    if (window >= 0) s.window = Window{window, 0};
    return s;
}

// 2 ranks, contiguous halves of 64 tokens, causal, 1 kv head of dim 8, fp32. Rank 1 needs all of rank
// 0's 32 rows; rank 0 nothing of rank 1's. A K/V row is 2 x 8 x 4 = 64 bytes, a dK/dV row too.
TEST(CostModel, TwoRankCausalRingByHand) {
    const auto c = model_costs(job(StrategyKind::ring, 2, 64, 2, 1, 8, DType::f32), Pattern(causal()));
    ASSERT_EQ(c.size(), 2u);
    EXPECT_EQ(c[0].fwd_bytes, 32u * 64);  // rank 0's K/V to rank 1
    EXPECT_EQ(c[1].fwd_bytes, 0u);        // rank 1's shard is needed nowhere else
    EXPECT_EQ(c[0].bwd_bytes, 32u * 64);  // the K/V again
    EXPECT_EQ(c[1].bwd_bytes, 32u * 64);  // dK/dV of rank 0's rows, home
    // Pairs (2 query heads): rank 0 the causal triangle of its 32 rows; rank 1 its own triangle at
    // step 0 and every one of rank 0's 32 x 32 keys at step 1.
    EXPECT_EQ(c[0].pairs, 2.0 * 528);
    EXPECT_EQ(c[1].step_pairs, (std::vector<double>{2.0 * 528, 2.0 * 1024}));
    EXPECT_EQ(c[0].step_bytes, (std::vector<std::uint64_t>{32u * 64, 0}));
    // Memory of each rank's 32 rows: Q, O (2 heads) and K, V (1) of 8 fp32 dims and the LSE; the
    // backward's dO, dQ (2 heads), dK, dV (1).
    for (const RankCost& r : c) {
        EXPECT_EQ(r.fwd_tensors, 32u * 6 * 8 * 4 + 2 * 32 * 4);
        EXPECT_EQ(r.bwd_tensors, 32u * 2 * 8 * 4 + 32 * 4 * 8 * 4);
    }
    // Scratch: two K/V buffers of the 32 rows that travel (4096 bytes), the LSE's residual (256) and, in 4
    // progress chunks, 2 x 9 rows x 2 heads of floats (144); O is fp32, its own accumulator. Backward: the
    // K/V buffers, dK/dV rows (64 bytes each) of the own 32, the held 32, the 2 x 32 running sums and
    // what comes home (rank 0: 32 rows, rank 1: none), and a chunk's 9 x 2 LSE floats.
    EXPECT_EQ(c[0].fwd_scratch, 4096u + 256 + 144);
    EXPECT_EQ(c[1].fwd_scratch, 4096u + 256 + 144);
    EXPECT_EQ(c[0].bwd_scratch, 4096u + 64 * (32 + 32 + 64 + 32) + 72);
    EXPECT_EQ(c[1].bwd_scratch, 4096u + 64 * (32 + 32 + 64) + 72);
    EXPECT_EQ(c[0].peak(true), 6400u + 6144 + 14408);
}

// 4 ranks of 16 contiguous tokens, a causal window of 8 keys: each rank needs only its predecessor's
// last 8 rows, one hop; the last rank's shard travels nowhere.
TEST(CostModel, WindowedRingSendsOnlyTheRowsInReach) {
    const auto c = model_costs(job(StrategyKind::ring, 4, 64, 1, 1, 4, DType::bf16), Pattern(causal(8)));
    const std::uint64_t row = 2 * 4 * 2, grad = 2 * 4 * 4;  // K and V of 4 dims in bf16; dK and dV in fp32
    for (int r = 0; r < 3; ++r) EXPECT_EQ(c[static_cast<std::size_t>(r)].fwd_bytes, 8 * row) << r;
    EXPECT_EQ(c[3].fwd_bytes, 0u);
    // The backward sends the K/V again, and ranks 1-3 the dK/dV of their predecessor's 8 rows home.
    EXPECT_EQ(c[0].bwd_bytes, 8 * row);
    EXPECT_EQ(c[1].bwd_bytes, 8 * row + 8 * grad);
    EXPECT_EQ(c[2].bwd_bytes, 8 * row + 8 * grad);
    EXPECT_EQ(c[3].bwd_bytes, 8 * grad);
    // Rank 1: its triangle of the window (16 rows: 1 + 2 + ... + 9 for the first 9, then 9 each) and,
    // from rank 0's last 8 rows, 8 + 7 + ... + 1 = 36 pairs.
    EXPECT_EQ(c[1].pairs, 45.0 + 7 * 9 + 36);
}

// Ulysses on 2 ranks of 5 tokens, 2 query heads over 2 kv heads of dim 4, bf16: each rank sends the
// other its rows of the other's head (Q, K, V), then the other's rows of its own head's O (bf16) and LSE
// (fp32). Backward: Q, O, dO, K, V and the LSE of the other's head; dQ, dK, dV (fp32) back.
TEST(CostModel, UlyssesAllToAllsByHand) {
    const auto c = model_costs(job(StrategyKind::ulysses, 2, 10, 2, 2, 4, DType::bf16), Pattern(PatternSpec{}));
    const std::uint64_t fwd = 5 * 4 * 3 * 2 + 5 * 4 * 2 + 5 * 4;
    const std::uint64_t bwd = 5 * 4 * 5 * 2 + 5 * 4 + 5 * 4 * 3 * 4;
    EXPECT_EQ(c[0].fwd_bytes, fwd);
    EXPECT_EQ(c[1].fwd_bytes, fwd);
    EXPECT_EQ(c[0].bwd_bytes, bwd);
    EXPECT_EQ(c[0].pairs, 100.0);  // its one head over every pair of the 10 tokens
}

// All-gather on 3 ranks of 10 tokens, 1 kv head of dim 4, fp32: K and V to each of the 2 others; the
// backward gathers again and sends the dK/dV of the 20 foreign rows to their owners.
TEST(CostModel, AllGatherByHand) {
    const auto c = model_costs(job(StrategyKind::allgather, 3, 30, 1, 1, 4, DType::f32), Pattern(causal()));
    EXPECT_EQ(c[1].fwd_bytes, 2u * 2 * 10 * 16);
    EXPECT_EQ(c[1].bwd_bytes, 2u * 2 * 10 * 16 + 2u * 20 * 16);
    EXPECT_EQ(c[0].pairs, 55.0);
    EXPECT_EQ(c[2].pairs, 10.0 * 20 + 55);
}

// A hybrid of Ulysses degree P is Ulysses; of degree 1 it is the ring.
TEST(CostModel, HybridDegreesAtTheEndsAreUlyssesAndRing) {
    PatternSpec docs = causal(40);
    docs.doc_bounds = {0, 70, 130, 203};
    const Pattern pat(docs);
    for (LayoutKind l : {LayoutKind::contiguous, LayoutKind::zigzag, LayoutKind::striped}) {
        ModelJob h = job(StrategyKind::hybrid, 4, 203, 4, 2, 16, DType::bf16, l);
        for (int u : {1, 4}) {
            h.dist.ulysses_degree = u;
            ModelJob same = h;
            same.dist.strategy = u == 1 ? StrategyKind::ring : StrategyKind::ulysses;
            const auto a = model_costs(h, pat), b = model_costs(same, pat);
            for (std::size_t r = 0; r < a.size(); ++r) {
                EXPECT_EQ(a[r].fwd_bytes, b[r].fwd_bytes) << layout_name(l) << " u=" << u << " rank " << r;
                EXPECT_EQ(a[r].bwd_bytes, b[r].bwd_bytes) << layout_name(l) << " u=" << u << " rank " << r;
                EXPECT_EQ(a[r].pairs, b[r].pairs) << layout_name(l) << " u=" << u << " rank " << r;
            }
        }
    }
}

// A cluster of one node of 2 devices: 1 GB/s and 1 us between them, 1 TFLOP/s forward and backward.
ClusterSpec two_devices() {
    ClusterSpec c;
    c.name = "two";
    c.nodes = 1, c.devices_per_node = 2;
    c.intra_bandwidth = 1e9, c.intra_latency = 1e-6;
    c.fwd_flops = c.bwd_flops = 1e12;
    return c;
}

// The 2-rank causal ring above: step 0 is rank 0's transfer of 2048 bytes (1 us + 2.048 us), longer than
// either rank's kernel on its own 32 x 32 keys (one PARTIAL tile, computed whole: 2 x 1024 pairs at 4 x 8
// FLOPs each); step 1 is rank 1's 2 x 1024 pairs of rank 0's keys, nothing to send.
TEST(CostModel, TwoRankRingTimesByHand) {
    const ModelJob j = job(StrategyKind::ring, 2, 64, 2, 1, 8, DType::f32);
    const Prediction p = predict(two_devices(), j, model_costs(j, Pattern(causal())));
    const double pf = 32e-12, pb = 80e-12;  // seconds per pair forward (4 x 8 FLOPs), backward (10 x 8)
    EXPECT_DOUBLE_EQ(p.fwd_s, 3.048e-6 + 2048 * pf);
    // Backward: step 0 sends the K/V again (3.048 us, more than 1056 pairs at 80 ps); step 1 rank 1's
    // 2048 pairs (164 ns) against its 2048 bytes of dK/dV home (3.048 us).
    EXPECT_DOUBLE_EQ(p.bwd_s, 2 * 3.048e-6);
    EXPECT_DOUBLE_EQ(p.compute_s, 2048 * pf + 2048 * pf + 2048 * pb + 2048 * pb);
    const auto c = model_costs(j, Pattern(causal()));
    EXPECT_EQ(c[1].step_fwd_work, (std::vector<double>{2048, 2048}));
    EXPECT_EQ(c[1].pairs, 2.0 * (528 + 1024));  // the allowed ones: the ideal time counts these
    EXPECT_DOUBLE_EQ(p.exposed_s, p.fwd_s + p.bwd_s - p.compute_s);
    EXPECT_DOUBLE_EQ(p.ideal_s, (1056 + 3104) * (pf + pb) / 2);
    EXPECT_EQ(p.max_bytes, 4096u);
}

// Ulysses on the 2 devices: five all-to-alls forward (5 us of latency) and 180 bytes, then each rank's
// 100 pairs of one head.
TEST(CostModel, UlyssesTimesByHand) {
    const ModelJob j = job(StrategyKind::ulysses, 2, 10, 2, 2, 4, DType::bf16);
    const Prediction p = predict(two_devices(), j, model_costs(j, Pattern(PatternSpec{})));
    EXPECT_DOUBLE_EQ(p.fwd_s, 5e-6 + 180e-9 + 100 * 16e-12);
    EXPECT_DOUBLE_EQ(p.bwd_s, 9e-6 + 460e-9 + 100 * 40e-12);
    // With an all-to-all measured (--mode calibrate) at 0.5 GB/s and 3 us a call, the all-to-alls take
    // those figures instead of the ping-pong's.
    ClusterSpec a2a = two_devices();
    a2a.alltoall_bandwidth = 0.5e9, a2a.alltoall_latency = 3e-6;
    const Prediction q = predict(a2a, j, model_costs(j, Pattern(PatternSpec{})));
    EXPECT_DOUBLE_EQ(q.fwd_s, 15e-6 + 360e-9 + 100 * 16e-12);
    EXPECT_DOUBLE_EQ(q.bwd_s, 27e-6 + 920e-9 + 100 * 40e-12);
}

TEST(CostModel, ClusterFilesLoadAndBadOnesNameTheLine) {
    const ClusterSpec h = load_cluster(LONGATTN_SOURCE_DIR "/configs/clusters/h100-ib.ini");
    EXPECT_EQ(h.devices(), 1024);
    EXPECT_EQ(h.inter_bandwidth, 50e9);
    EXPECT_EQ(h.intra_latency, 3e-6);
    const std::string dir = ::testing::TempDir();
    auto refused = [&](const std::string& text, const std::string& message) {
        const std::string path = dir + "/bad_cluster.ini";
        std::FILE* f = std::fopen(path.c_str(), "w");
        std::fputs(text.c_str(), f);
        std::fclose(f);
        try {
            load_cluster(path);
            ADD_FAILURE() << "accepted: " << text;
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
        }
    };
    const std::string ok = "[cluster]\nnodes = 1\ndevices_per_node = 1\n[device]\nfwd_tflops = 1\nbwd_tflops = 1\n";
    refused(ok + "speed = 3\n", ":7: unknown key 'speed' in [device]");
    refused("[cluster]\nnodes = two\n", ":2: nodes must be a number >= 1, got 'two'");
    refused("[cluster]\nnodes = 2\ndevices_per_node = 1\n[device]\nfwd_tflops = 1\nbwd_tflops = 1\n", "[inter] needs bandwidth_GBps");
    refused("[gpus]\n", ":1: unknown section [gpus]");
    refused("nodes = 1\n", ":1: expected 'key = value' inside a section");
    refused("", "[cluster] needs nodes");
    refused(ok + "[intra]\nalltoall_bandwidth_GBps = 3\n", "alltoall_bandwidth_GBps and alltoall_latency_us go together");
    EXPECT_THROW(load_cluster(dir + "/no_such_file.ini"), Error);
}

// --strategy auto's pick on the committed 8x H200 file: 64K causal tokens over the 8 GPUs, 32 query heads
// over 8 kv heads of dim 128. A ring step's K/V (8K rows, 33.5 MB) crosses NVLink in well under its
// kernel's time, so the ring hides its traffic; zigzag balances the causal work, which contiguous shards
// leave to the last rank (about twice the time).
TEST(CostModel, AutoPicksTheRingOnZigzagWithinAnNvlinkNode) {
    const ClusterSpec h200 = load_cluster(LONGATTN_SOURCE_DIR "/configs/clusters/h200-node.ini");
    ModelJob j = job(StrategyKind::ring, 8, 65536, 32, 8, 128, DType::bf16);
    const auto ranked = rank_strategies(h200, j, Pattern(causal()), true);
    ASSERT_EQ(ranked.size(), 10u);  // ring, Ulysses, all-gather, hybrid u = 2 and 4; two layouts each
    EXPECT_EQ(ranked.front().dist.strategy, StrategyKind::ring);
    EXPECT_EQ(ranked.front().layout, LayoutKind::zigzag);
    EXPECT_EQ(ranked.front().p.exposed_s, 0.0);
    const auto contiguous = std::find_if(ranked.begin(), ranked.end(), [](const StrategyChoice& c) {
        return c.dist.strategy == StrategyKind::ring && c.layout == LayoutKind::contiguous;
    });
    ASSERT_NE(contiguous, ranked.end());
    EXPECT_GT(contiguous->time_s, 1.7 * ranked.front().time_s);
}

// The same job on devices of 3 GiB: the ring (2.82 GiB a device at 4 ranks of 64K tokens, 96 query
// heads) fits, Ulysses and the hybrid (5.64 GiB: the whole sequence of their heads, gathered) do not,
// and come after every choice that fits, however fast.
TEST(CostModel, AutoPutsWhatDoesNotFitLast) {
    ClusterSpec small = load_cluster(LONGATTN_SOURCE_DIR "/configs/clusters/h200-node.ini");
    small.memory = 3.0 * 1073741824.0;
    const auto ranked = rank_strategies(small, job(StrategyKind::ring, 4, 65536, 96, 8, 128, DType::bf16), Pattern(causal()), true);
    ASSERT_FALSE(ranked.empty());
    EXPECT_TRUE(ranked.front().fits);
    EXPECT_EQ(ranked.front().dist.strategy, StrategyKind::ring);
    bool seen_misfit = false;
    for (const StrategyChoice& c : ranked) {
        EXPECT_EQ(c.fits, c.p.device_memory(true) <= small.memory);
        if (c.dist.strategy == StrategyKind::ulysses || c.dist.strategy == StrategyKind::hybrid) {
            EXPECT_FALSE(c.fits);
        }
        EXPECT_FALSE(seen_misfit && c.fits) << "a fitting choice after one that does not fit";
        seen_misfit = seen_misfit || !c.fits;
    }
    EXPECT_TRUE(seen_misfit);
}

// Eight nodes of one device behind 100 us links, 2K tokens of one head, forward only: the kernels take
// about a microsecond, so latencies decide: the ring's 7 steps lose to the all-gather's 2 collectives
// (Ulysses has 5).
TEST(CostModel, AutoPicksTheAllGatherWhenLatencyDominates) {
    ClusterSpec slow;
    slow.name = "slow";
    slow.nodes = 8, slow.devices_per_node = 1;
    slow.inter_bandwidth = 10e9, slow.inter_latency = 100e-6;
    slow.fwd_flops = slow.bwd_flops = 100e12;
    const auto ranked = rank_strategies(slow, job(StrategyKind::ring, 8, 2048, 1, 1, 64, DType::bf16), Pattern(causal()), false);
    EXPECT_EQ(ranked.front().dist.strategy, StrategyKind::allgather);
    // Two latencies, K and V of 256 rows x 64 dims in bf16 to each of 7 ranks at 10 GB/s, and a kernel of
    // about a microsecond.
    EXPECT_NEAR(ranked.front().time_s, 2 * 100e-6 + 2.0 * 7 * 256 * 64 * 2 / 10e9, 2e-6);
}

TEST(CostModel, BadJobsAreErrors) {
    ModelJob j = job(StrategyKind::hybrid, 4, 64, 2, 1, 8, DType::f32);
    j.dist.ulysses_degree = 3;
    EXPECT_THROW(model_costs(j, Pattern(causal())), Error);
    j = job(StrategyKind::ring, 2, 64, 3, 2, 8, DType::f32);
    EXPECT_THROW(model_costs(j, Pattern(causal())), Error);
}

// A decode step on 2 ranks, pages of 16, round-robin from rank 0: 40 cached positions and 1 new (41 in
// all) make pages [0, 16) on rank 0, [16, 32) on rank 1, [32, 41) on rank 0. Causal: every page is read,
// 2 kv heads of each; with a window of 10 keys the new token at 40 reaches back to 30 only.
TEST(CostModel, DecodeStepByHand) {
    DecodeModelJob j;
    j.context = 40, j.new_tokens = 1, j.heads = 4, j.kv_heads = 2, j.head_dim = 8, j.page_tokens = 16;
    j.dtype = DType::bf16, j.ranks = 2;
    const auto c = decode_costs(j, Pattern(causal()));
    const std::uint64_t block = 16u * (8 + 16) * 2;  // a page of one kv head: K and V padded to 16 dims, bf16
    EXPECT_EQ(c[0].blocks, 4);
    EXPECT_EQ(c[1].blocks, 2);
    EXPECT_EQ(c[0].read_bytes, 4 * block);
    EXPECT_EQ(c[0].work, (16.0 + 9) * 4);  // the pages' positions over the 4 query heads
    EXPECT_EQ(c[1].work, 16.0 * 4);
    // All-gather: the partial's status, 4 LSEs and 4 x 8 outputs in fp32 to the other rank.
    EXPECT_EQ(c[0].sent, (1u + 4 + 32) * 4);
    EXPECT_EQ(c[0].received, (1u + 4 + 32) * 4);
    const auto w = decode_costs(j, Pattern(causal(10)));
    EXPECT_EQ(w[0].blocks, 2);  // page [32, 41)
    EXPECT_EQ(w[1].blocks, 2);  // page [16, 32), which holds 30 and 31
    // All-reduce: the status and LSEs as doubles, then the weights and weighted outputs.
    j.combine = DecodeCombine::allreduce;
    EXPECT_EQ(decode_costs(j, Pattern(causal()))[1].sent, (1u + 4) * 8 + (4 + 32) * 8);
    // 1 GB/s of memory, 1 GFLOP/s: rank 0's 4 blocks (3072 bytes) against 100 pairs of 32 FLOPs.
    ClusterSpec cl;
    cl.nodes = 1, cl.devices_per_node = 2, cl.intra_bandwidth = 1e9, cl.intra_latency = 0;
    cl.fwd_flops = cl.bwd_flops = 1e9, cl.memory_bandwidth = 1e9;
    j.combine = DecodeCombine::allgather;
    const DecodePrediction p = predict_decode(cl, j, c);
    EXPECT_DOUBLE_EQ(p.kernel_s, std::max(4.0 * double(block) / 1e9, 100.0 * 32 / 1e9));
    EXPECT_DOUBLE_EQ(p.combine_s, 148.0 / 1e9 + 36.0 * 12 / 1e9);  // rank 1's partial in, one merge of 4 x (8 + 1)
    cl.memory_bandwidth = 0;
    EXPECT_THROW(predict_decode(cl, j, c), Error);
}

}  // namespace
}  // namespace longattn::test
