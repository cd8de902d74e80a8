// The CUDA flash kernels against the fp64 reference under FlashAttention's rule (tests/unit/testing.hpp):
// the shapes, positions, masks, scales, accumulation and determinism cases of the CPU kernel tests at
// bf16 and fp16 storage, and the device merge. (The pattern zoo, sharp softmax and non-finite cases of
// every backend are tests/unit/test_backends.cpp; the host parts of the CUDA kernels, tile plan and
// fragment layouts, are tests/unit/test_cuda_host.cpp.) Tests that run kernels skip, with a message,
// when no GPU is visible; the argument checks run everywhere.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <ostream>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/cuda/flash_cuda.hpp"
#include "longattn/error.hpp"
#include "testing.hpp"

namespace longattn::test {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr std::int64_t kN = 197;  // odd: no tile of the kernels divides it

#define LONGATTN_REQUIRE_GPU()                                                                          \
    if (!kernels::cuda_device_available())                                                              \
    GTEST_SKIP() << "no CUDA device visible: the CUDA kernels are built but not run on this machine"

// ---- The CUDA backend through the test harness (testing.hpp) ------------------------------------

void forward_cuda_into(const Problem& pb, FwdOut& out, bool accumulate = false) {
    forward_on(Device::cuda, pb, out, accumulate);
}
FwdOut forward_cuda(const Problem& pb) { return run_forward(pb, 0, Device::cuda); }

// check_forward judges O against the plain implementation at O's precision. With an fp32 O from bf16 or
// fp16 inputs the kernel still rounds P to the input type for P V, as every tensor-core kernel does, so
// the yardstick there is the plain implementation at the input precision, with that type's floor.
void check_forward_mixed(const Problem& pb, const FwdOut& got) {
    const Case& c = pb.c;
    if (pb.out_dtype() == c.dtype) return check_forward(pb, got);
    SCOPED_TRACE(c.name + " [" + pb.pattern.describe() + "], fp32 output");
    const auto fp = pb.fwd_params(got.o, nullptr);
    const auto ref = kernels::reference_forward(fp, RefPrecision::f64);
    const auto plain = kernels::reference_forward(fp, precision_of(c.dtype));
    const auto plain32 = kernels::reference_forward(fp, RefPrecision::f32);
    EXPECT_TRUE(flash_rule("O", got.o.to_f64(), plain.o, ref.o, c.dtype, kForwardFactor));
    EXPECT_TRUE(flash_rule("LSE", to_f64(got.lse), plain32.lse, ref.lse, DType::f32, kForwardFactor));
    std::int64_t nonzero = 0;
    for (std::int64_t b = 0; b < c.B; ++b)
        for (std::int64_t h = 0; h < c.Hq; ++h)
            for (std::int64_t i = 0; i < c.Sq; ++i) {
                if (!std::isinf(ref.lse[lse_index(b, h, i, c.Hq, c.Sq)])) continue;
                for (std::int64_t d = 0; d < c.D; ++d) nonzero += got.o.get(((b * c.Sq + i) * c.Hq + h) * c.D + d) != 0.0f;
            }
    EXPECT_EQ(nonzero, 0) << "O must be exactly 0 on rows with no allowed key";
}

void check_forward_cuda(const Case& c) {
    const Problem pb(c);
    check_forward_mixed(pb, forward_cuda(pb));
}

void backward_cuda_into(const Problem& pb, const FwdOut& fwd, BwdOut& g, bool accumulate = false) {
    backward_on(Device::cuda, pb, fwd, g, accumulate);
}
BwdOut backward_cuda(const Problem& pb, const FwdOut& fwd) { return run_backward(pb, fwd, 0, Device::cuda); }

void check_backward_cuda(const Case& c) {
    const Problem pb(c);
    const FwdOut fwd = reference_forward_out(pb);
    check_backward(pb, fwd, backward_cuda(pb, fwd));
}

Case causal_case(const char* name, std::int64_t sq, std::int64_t sk, DType t) {
    Case c;
    c.name = name;
    c.Sq = sq;
    c.Sk = sk;
    c.dtype = t;
    c.spec.causal = true;
    return c;
}

// ---- Argument checks (host only) ----------------------------------------------------------------

struct FakeViews {
    // Never dereferenced: the checks look at fields only.
    static void* ptr() { return reinterpret_cast<void*>(std::uintptr_t{4096}); }
    static TensorView view(DType t, std::int64_t s, std::int64_t h, std::int64_t d) {
        TensorView v = contiguous_view(ptr(), t, 1, s, h, d);
        v.device = Device::cuda;
        return v;
    }
};

void expect_error(const std::function<void()>& f, const std::string& field) {
    try {
        f();
        ADD_FAILURE() << "no error for a bad " << field;
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << "message should name " << field << ": " << e.what();
    }
}

TEST(ValidateCuda, NamesTheBadField) {
    const Pattern pat;
    const auto pos = positions(8);
    float lse_storage[16];
    const auto good = [&] {
        FwdParams p;
        p.q = FakeViews::view(DType::bf16, 8, 2, 64);
        p.k = FakeViews::view(DType::bf16, 8, 1, 64);
        p.v = FakeViews::view(DType::bf16, 8, 1, 64);
        p.o = FakeViews::view(DType::f32, 8, 2, 64);
        p.lse = lse_storage;
        p.q_pos = pos.data();
        p.k_pos = pos.data();
        p.pattern = &pat;
        return p;
    };
    EXPECT_NO_THROW(kernels::validate_cuda(good()));
    expect_error([&] { auto p = good(); p.q.device = Device::cpu; kernels::validate_cuda(p); }, "q.device");
    expect_error([&] { auto p = good(); p.q.dtype = DType::f32; kernels::validate_cuda(p); }, "q.dtype");
    expect_error([&] { auto p = good(); p.k.dtype = DType::f16; kernels::validate_cuda(p); }, "k.dtype");
    expect_error([&] { auto p = good(); p.o.dtype = DType::f16; kernels::validate_cuda(p); }, "o.dtype");
    expect_error([&] { auto p = good(); p.o.dtype = DType::bf16; p.accumulate = true; kernels::validate_cuda(p); }, "o");
    expect_error([&] {
        auto p = good();
        p.q = FakeViews::view(DType::bf16, 8, 2, 300);
        p.k = p.v = FakeViews::view(DType::bf16, 8, 1, 300);
        p.o = FakeViews::view(DType::f32, 8, 2, 300);
        kernels::validate_cuda(p);
    }, "q.shape[3]");
    expect_error([&] { auto p = good(); p.q.stride[3] = 2; kernels::validate_cuda(p); }, "q.stride[3]");
    expect_error([&] { auto p = good(); p.q = FakeViews::view(DType::bf16, 8, 3, 64); p.o = FakeViews::view(DType::f32, 8, 3, 64); p.k = p.v = FakeViews::view(DType::bf16, 8, 2, 64); kernels::validate_cuda(p); }, "q.shape[2]");
    expect_error([&] { auto p = good(); p.lse = nullptr; kernels::validate_cuda(p); }, "lse");

    BwdParams b;
    b.q = FakeViews::view(DType::f16, 8, 2, 64);
    b.k = b.v = FakeViews::view(DType::f16, 8, 2, 64);
    b.o = FakeViews::view(DType::f16, 8, 2, 64);
    b.dout = FakeViews::view(DType::f16, 8, 2, 64);
    b.dq = FakeViews::view(DType::f32, 8, 2, 64);
    b.dk = b.dv = FakeViews::view(DType::f32, 8, 2, 64);
    b.lse = lse_storage;
    b.q_pos = b.k_pos = pos.data();
    b.pattern = &pat;
    EXPECT_NO_THROW(kernels::validate_cuda(b));
    expect_error([&] { auto p = b; p.dout.dtype = DType::bf16; kernels::validate_cuda(p); }, "dout.dtype");
    expect_error([&] { auto p = b; p.dk.dtype = DType::bf16; kernels::validate_cuda(p); }, "dq/dk/dv");
    expect_error([&] { auto p = b; p.dv.device = Device::cpu; kernels::validate_cuda(p); }, "dv.device");
}

// ---- Forward on the device --------------------------------------------------------------------

TEST(CudaForwardShape, Odd113x203) {
    LONGATTN_REQUIRE_GPU();
    for (DType t : {DType::bf16, DType::f16}) {
        Case c = causal_case("113x203 causal, queries are the last 113 keys", 113, 203, t);
        c.q_pos = positions(113, 90);
        check_forward_cuda(c);
        c.name = "113x203 dense";
        c.q_pos.clear();
        c.spec.causal = false;
        check_forward_cuda(c);
        c.name = "113x203 window(20,30)";
        c.spec.window = Window{20, 30};
        check_forward_cuda(c);
    }
}

TEST(CudaForwardShape, Long1023x1024) {
    LONGATTN_REQUIRE_GPU();
    Case c = causal_case("1023x1024 causal bf16", 1023, 1024, DType::bf16);
    c.q_pos = positions(1023, 1);
    check_forward_cuda(c);
    c = causal_case("1023x1024 causal documents fp16, D=128", 1023, 1024, DType::f16);
    c.Hq = c.Hkv = 1;
    c.D = 128;
    c.q_pos = positions(1023, 1);
    c.spec.doc_bounds = {0, 300, 301, 777, 1024};
    check_forward_cuda(c);
}

TEST(CudaForwardShape, HeadDimsOfEveryTiling) {
    LONGATTN_REQUIRE_GPU();
    for (std::int64_t d : {1, 8, 32, 59, 64, 72, 96, 128, 136, 200, 256}) {
        Case c = causal_case("head dim", 150, 150, d % 2 == 0 ? DType::bf16 : DType::f16);
        c.name.append(" ").append(std::to_string(d));
        c.D = d;
        c.spec.alibi_slopes = alibi_slopes(c.Hq);
        check_forward_cuda(c);
    }
}

TEST(CudaForwardShape, GroupedAndMultiQuery) {
    LONGATTN_REQUIRE_GPU();
    Case c = causal_case("GQA 16:2 alibi", 130, 130, DType::bf16);
    c.Hq = 16;
    c.Hkv = 2;
    c.spec.alibi_slopes = alibi_slopes(16);
    check_forward_cuda(c);
    c = causal_case("MQA 8:1 window, D=128", 150, 150, DType::f16);
    c.Hq = 8;
    c.Hkv = 1;
    c.D = 128;
    c.spec.window = Window{40, 0};
    check_forward_cuda(c);
    c = causal_case("head_offset 4 of 6 heads", 150, 150, DType::bf16);
    c.Hq = 2;
    c.Hkv = 1;
    c.head_offset = 4;
    c.spec.alibi_slopes = alibi_slopes(6);
    check_forward_cuda(c);
}

TEST(CudaForwardShape, CrossAttentionBatchStridedViewsFp32Output) {
    LONGATTN_REQUIRE_GPU();
    Case c;
    c.name = "cross 77 queries x 300 keys at offset positions, alibi";
    c.dtype = DType::bf16;
    c.Sq = 77;
    c.Sk = 300;
    c.q_pos = positions(77, 5000);
    c.k_pos = positions(300, 4800);
    c.spec.causal = true;
    c.spec.alibi_slopes = alibi_slopes(c.Hq);
    check_forward_cuda(c);
    // pad 3: rows are not 16-byte aligned, so tiles load element by element.
    c = causal_case("B=3, padded views, documents, fp32 output", 100, 100, DType::f16);
    c.B = 3;
    c.pad = 3;
    c.o_dtype = DType::f32;
    c.spec.doc_bounds = {0, 40, 100};
    check_forward_cuda(c);
    c.name = "B=2, pad 8 (aligned strided rows)";
    c.B = 2;
    c.pad = 8;
    c.o_dtype.reset();
    check_forward_cuda(c);
}

TEST(CudaForwardPositions, ZigzagStripedUnsorted) {
    LONGATTN_REQUIRE_GPU();
    Case c = causal_case("zigzag chunks", 128, 128, DType::bf16);
    c.q_pos = concat(positions(64, 0), positions(64, 448));
    c.k_pos = concat(positions(64, 128), positions(64, 320));
    check_forward_cuda(c);
    c = causal_case("striped, documents, window", 128, 128, DType::f16);
    c.q_pos = positions(128, 1, 4);
    c.k_pos = positions(128, 3, 4);
    c.spec.doc_bounds = {0, 100, 300, 512};
    c.spec.window = Window{40, 0};
    check_forward_cuda(c);
    c = causal_case("reversed queries, interleaved keys", 96, 96, DType::bf16);
    c.q_pos = positions(96, 95, -1);
    for (std::int64_t j = 0; j < 96; ++j) c.k_pos.push_back(j % 2 == 0 ? j / 2 : 95 - j / 2);
    c.spec.window = Window{30, 0};
    check_forward_cuda(c);
}

void expect_all_masked(const FwdOut& out) {
    for (float l : out.lse) ASSERT_EQ(l, -kInf);
    for (std::int64_t n = 0; n < out.o.numel(); ++n) ASSERT_EQ(out.o.get(n), 0.0f) << "element " << n;
}

TEST(CudaForwardMasked, FullyMaskedRows) {
    LONGATTN_REQUIRE_GPU();
    for (DType t : {DType::bf16, DType::f16}) {
        Case c = causal_case("all keys in the future", 64, 64, t);
        c.k_pos = positions(64, 100);
        Problem pb(c);
        FwdOut out = forward_cuda(pb);
        expect_all_masked(out);
        check_forward(pb, out);

        c = causal_case("first 50 rows fully masked", 100, 100, t);
        c.k_pos = positions(100, 50);
        const Problem some(c);
        out = forward_cuda(some);
        for (std::int64_t h = 0; h < c.Hq; ++h) {
            EXPECT_EQ(out.lse[lse_index(0, h, 49, c.Hq, c.Sq)], -kInf);
            EXPECT_TRUE(std::isfinite(out.lse[lse_index(0, h, 50, c.Hq, c.Sq)]));
        }
        check_forward(some, out);

        c = causal_case("Sk = 0", 16, 0, t);
        expect_all_masked(forward_cuda(Problem(c)));
    }
}

TEST(CudaForwardScale, HugeSoftmaxScaleAndSoftcap) {
    LONGATTN_REQUIRE_GPU();
    for (DType t : {DType::bf16, DType::f16}) {
        Case c = causal_case("scale 1e3", 150, 150, t);
        c.spec.scale = 1e3f;
        const Problem pb(c);
        const FwdOut out = forward_cuda(pb);
        for (float l : out.lse) ASSERT_TRUE(std::isfinite(l)) << "LSE must be finite at scale 1e3";
        for (std::int64_t n = 0; n < out.o.numel(); ++n) ASSERT_TRUE(std::isfinite(out.o.get(n)));
        check_forward(pb, out);
    }
    Case c = causal_case("q, k amplitude 8, softcap 30", 150, 150, DType::bf16);
    c.amplitude = 8.0;
    c.spec.softcap = 30.0f;
    check_forward_cuda(c);
}

TEST(CudaForwardAccumulate, ShardsMergeToTheSingleCall) {
    LONGATTN_REQUIRE_GPU();
    // Keys in two shards: the second call continues the first's partial in (o, lse), as the ring does.
    for (const char* shape : {"causal", "window"}) {
        Case c = causal_case("accumulate over two key shards", 150, 230, DType::bf16);
        c.name += std::string(" ") + shape;
        c.o_dtype = DType::f32;
        c.q_pos = positions(150, 80);
        if (std::string(shape) == "window") c.spec.window = Window{30, 0};
        const Problem full(c);
        FwdOut out = fresh_forward_out(full);
        std::vector<std::int64_t> bounds = {0, 100, 230};
        for (std::size_t s = 0; s + 1 < bounds.size(); ++s) {
            Case part = c;
            part.Sk = bounds[s + 1] - bounds[s];
            part.k_pos = positions(part.Sk, bounds[s]);
            Problem pb(part);
            // The shard's keys and values are the full problem's rows [bounds[s], bounds[s+1]).
            for (std::int64_t n = 0; n < pb.k.numel(); ++n) {
                const std::int64_t off = bounds[s] * c.Hkv * c.D;
                pb.k.set(n, full.k.get(off + n));
                pb.v.set(n, full.v.get(off + n));
            }
            forward_cuda_into(pb, out, s > 0);
        }
        check_forward_mixed(full, out);
    }
}

// ---- Backward on the device -------------------------------------------------------------------

TEST(CudaBackwardShape, OddLengthsAndHeadDims) {
    LONGATTN_REQUIRE_GPU();
    Case c = causal_case("113x203 causal", 113, 203, DType::bf16);
    c.q_pos = positions(113, 90);
    check_backward_cuda(c);
    c = causal_case("1023x1024 causal documents", 1023, 1024, DType::f16);
    c.Hq = c.Hkv = 1;
    c.q_pos = positions(1023, 1);
    c.spec.doc_bounds = {0, 300, 301, 777, 1024};
    check_backward_cuda(c);
    for (std::int64_t d : {8, 96, 136, 200, 256}) {
        c = causal_case("head dim", 150, 150, DType::bf16);
        c.name.append(" ").append(std::to_string(d));
        c.D = d;
        c.Hq = c.Hkv = 1;
        c.spec.softcap = 5.0f;
        c.spec.scale = 0.5f;
        check_backward_cuda(c);
    }
}

TEST(CudaBackwardShape, GroupedMultiQueryCrossAttention) {
    LONGATTN_REQUIRE_GPU();
    Case c = causal_case("GQA 16:2 alibi", 130, 130, DType::bf16);
    c.Hq = 16;
    c.Hkv = 2;
    c.spec.alibi_slopes = alibi_slopes(16);
    check_backward_cuda(c);
    c = causal_case("MQA 8:1 D=128", 150, 150, DType::f16);
    c.Hq = 8;
    c.Hkv = 1;
    c.D = 128;
    check_backward_cuda(c);
    c = causal_case("cross, masked rows and unattended keys, B=2, padded", 100, 160, DType::bf16);
    c.B = 2;
    c.pad = 3;
    c.q_pos = positions(100, 50);
    c.k_pos = positions(160, 0);
    c.spec.window = Window{60, 0};
    check_backward_cuda(c);
    c = causal_case("zigzag chunks", 128, 128, DType::f16);
    c.q_pos = concat(positions(64, 0), positions(64, 448));
    c.k_pos = concat(positions(64, 128), positions(64, 320));
    check_backward_cuda(c);
}

TEST(CudaBackwardScale, HugeSoftmaxScale) {
    LONGATTN_REQUIRE_GPU();
    Case c = causal_case("scale 1e3", 96, 96, DType::bf16);
    c.spec.scale = 1e3f;
    const Problem pb(c);
    const FwdOut fwd = reference_forward_out(pb);
    const BwdOut got = backward_cuda(pb, fwd);
    for (std::int64_t n = 0; n < got.dq.numel(); ++n) ASSERT_TRUE(std::isfinite(got.dq.get(n)));
    check_backward(pb, fwd, got);
}

TEST(CudaBackwardDeterminism, SameBitsOnEveryRun) {
    LONGATTN_REQUIRE_GPU();
    for (std::int64_t d : {64, 128}) {
        Case c = causal_case("determinism", 300, 300, DType::bf16);
        c.B = 2;
        c.Hq = 4;
        c.Hkv = 2;
        c.D = d;
        c.spec.doc_bounds = {0, 130, 300};
        c.spec.alibi_slopes = alibi_slopes(4);
        const Problem pb(c);
        const FwdOut fwd = reference_forward_out(pb);
        const BwdOut base = backward_cuda(pb, fwd);
        for (int run = 0; run < 3; ++run) {
            const BwdOut again = backward_cuda(pb, fwd);
            EXPECT_EQ(again.dq.bytes(), base.dq.bytes()) << "dQ differs on run " << run << ", D=" << d;
            EXPECT_EQ(again.dk.bytes(), base.dk.bytes()) << "dK differs on run " << run << ", D=" << d;
            EXPECT_EQ(again.dv.bytes(), base.dv.bytes()) << "dV differs on run " << run << ", D=" << d;
        }
    }
}

TEST(CudaBackwardAccumulate, AddsToExistingContents) {
    LONGATTN_REQUIRE_GPU();
    Case c = causal_case("accumulate", 100, 100, DType::bf16);
    c.Hq = 4;
    c.Hkv = 2;
    c.spec.window = Window{30, 0};
    const Problem pb(c);
    const FwdOut fwd = reference_forward_out(pb);
    const BwdOut fresh = backward_cuda(pb, fwd);
    BwdOut acc = fresh_grads(c);
    acc.dq.fill_random(101);
    acc.dk.fill_random(102);
    acc.dv.fill_random(103);
    const auto before_dq = acc.dq.to_f64(), before_dk = acc.dk.to_f64(), before_dv = acc.dv.to_f64();
    backward_cuda_into(pb, fwd, acc, true);
    // The kernel adds the very values it would have written: one fp32 addition per element.
    const auto expect_sum = [](const char* what, const Tensor& got, const std::vector<double>& before, const Tensor& grad) {
        for (std::int64_t n = 0; n < got.numel(); ++n) {
            const float want = static_cast<float>(before[static_cast<std::size_t>(n)]) + grad.get(n);
            ASSERT_EQ(got.get(n), want) << what << " element " << n;
        }
    };
    expect_sum("dQ", acc.dq, before_dq, fresh.dq);
    expect_sum("dK", acc.dk, before_dk, fresh.dk);
    expect_sum("dV", acc.dv, before_dv, fresh.dv);
}

// ---- Merge on the device ----------------------------------------------------------------------

TEST(CudaMerge, MatchesTheCpuMerge) {
    LONGATTN_REQUIRE_GPU();
    for (DType t : {DType::f32, DType::bf16, DType::f16}) {
        const std::int64_t B = 2, S = 37, H = 3, D = 70;
        Tensor acc(DType::f32, {B, S, H, D}, 2), add(t, {B, S, H, D});
        acc.fill_random(7);
        add.fill_random(8);
        std::vector<float> l1(static_cast<std::size_t>(B * H * S)), l2(l1.size());
        for (std::size_t i = 0; i < l1.size(); ++i) {
            // -inf in either, both, neither; one pair with LSEs near 1e4.
            l1[i] = i % 5 == 0 ? -kInf : static_cast<float>(i % 7) - 3.0f;
            l2[i] = i % 3 == 0 ? -kInf : static_cast<float>(i % 11) * 0.5f - 2.0f;
            if (i == 4) l1[i] = 1e4f, l2[i] = 1e4f + 1.0f;
            if (i == 7) l1[i] = kNaN;  // a NaN on either side makes the row NaN
            if (i == 8) l2[i] = kNaN;
        }
        for (std::size_t i = 0; i < l1.size(); ++i)
            if (l1[i] == -kInf) {
                const std::int64_t b = static_cast<std::int64_t>(i) / (H * S), h = (static_cast<std::int64_t>(i) / S) % H, s = static_cast<std::int64_t>(i) % S;
                for (std::int64_t d = 0; d < D; ++d) acc.set(((b * S + s) * H + h) * D + d, 0.0f);
            }
        // Tensors are not copyable (a view points into its own storage): copy element by element.
        Tensor want_o(DType::f32, {B, S, H, D});
        for (std::int64_t n = 0; n < acc.numel(); ++n) want_o.set(n, acc.get(n));
        std::vector<float> want_l = l1;
        kernels::merge_partial(want_o.view(), want_l.data(), add.view(), l2.data(), 1);

        const OnDevice dacc(Device::cuda, acc), dadd(Device::cuda, add), dl1(Device::cuda, l1), dl2(Device::cuda, l2);
        kernels::merge_partial_cuda(dacc.view(), dl1.floats(), dadd.view(), dl2.floats(), nullptr);
        dacc.to_host();
        dl1.to_host();
        Tensor& got_o = acc;
        std::vector<float> got_l = l1;
        SCOPED_TRACE(std::string(dtype_name(t)));
        for (std::size_t i : {std::size_t{7}, std::size_t{8}}) {
            ASSERT_TRUE(std::isnan(want_l[i]) && std::isnan(got_l[i])) << "row " << i;
            const std::int64_t b = static_cast<std::int64_t>(i) / (H * S), h = (static_cast<std::int64_t>(i) / S) % H, s = static_cast<std::int64_t>(i) % S;
            for (std::int64_t d = 0; d < D; ++d) {
                const std::int64_t n = ((b * S + s) * H + h) * D + d;
                ASSERT_TRUE(std::isnan(got_o.get(n))) << "row " << i;
                got_o.set(n, 0.0f);  // out of the error maxima below
                want_o.set(n, 0.0f);
            }
            got_l[i] = want_l[i] = 0.0f;
        }
        const ErrorAt eo = max_abs_err(got_o.to_f64(), want_o.to_f64());
        const ErrorAt el = max_abs_err(to_f64(got_l), to_f64(want_l));
        EXPECT_LE(eo.err, 1e-5) << "O at " << eo.index;
        EXPECT_LE(el.err, 2e-3) << "LSE at " << el.index << " (1e4 has an ulp of 1e-3)";
        for (std::size_t i = 0; i < l1.size(); ++i) {
            ASSERT_EQ(std::isinf(got_l[i]), std::isinf(want_l[i])) << "row " << i;
            if (l1[i] == -kInf && l2[i] == -kInf) {
                const std::int64_t b = static_cast<std::int64_t>(i) / (H * S), h = (static_cast<std::int64_t>(i) / S) % H, s = static_cast<std::int64_t>(i) % S;
                for (std::int64_t d = 0; d < D; ++d)
                    ASSERT_EQ(got_o.get(((b * S + s) * H + h) * D + d), 0.0f) << "two -inf partials merge to O = 0";
            }
        }
    }
}

}  // namespace
}  // namespace longattn::test
