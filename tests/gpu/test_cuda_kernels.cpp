// The CUDA flash kernels against the fp64 reference under FlashAttention's rule (tests/unit/testing.hpp),
// on the cases of the CPU kernel tests at bf16 and fp16 storage. Tests that run kernels skip, with a
// message, when no GPU is visible. The host parts run everywhere: the tile plan against the Pattern pair
// by pair, the fragment layouts through a warp emulator written from the PTX ISA's tables, and the
// argument checks.
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
#include "kernels/cuda/fragment_layout.hpp"
#include "kernels/cuda/tile_plan.hpp"
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

// ---- Host tensors mirrored on the device ------------------------------------------------------

// A device copy of a test Tensor, padding included, with the same strides.
class OnDevice {
public:
    explicit OnDevice(const Tensor& t) : buf_(t.bytes().size()), view_(t.view()) {
        buf_.upload(t.bytes().data(), t.bytes().size());
        view_.data = buf_.get();
        view_.device = Device::cuda;
    }
    const TensorView& view() const { return view_; }
    void to_host(Tensor& t) const { buf_.download(t.view().data, t.bytes().size()); }

private:
    kernels::DeviceBuffer buf_;
    TensorView view_;
};

class DeviceFloats {
public:
    explicit DeviceFloats(const std::vector<float>& v) : buf_(v.size() * sizeof(float)), n_(v.size()) {
        std::vector<std::byte> bytes(v.size() * sizeof(float));
        if (!v.empty()) std::memcpy(bytes.data(), v.data(), bytes.size());
        buf_.upload(std::move(bytes));
    }
    float* get() const { return static_cast<float*>(buf_.get()); }
    std::vector<float> to_host() const {
        std::vector<float> v(n_);
        buf_.download(v.data(), n_ * sizeof(float));
        return v;
    }

private:
    kernels::DeviceBuffer buf_;
    std::size_t n_;
};

FwdOut fresh_forward_out(const Problem& pb) {
    const auto& c = pb.c;
    return {Tensor(pb.out_dtype(), {c.B, c.Sq, c.Hq, c.D}, c.pad),
            std::vector<float>(static_cast<std::size_t>(c.B * c.Hq * c.Sq), kNaN)};
}

// Runs flash_forward_cuda into `out` (its contents are the starting partial when accumulating).
void forward_cuda_into(const Problem& pb, FwdOut& out, bool accumulate = false) {
    const OnDevice q(pb.q), k(pb.k), v(pb.v), o(out.o);
    const DeviceFloats lse(out.lse);
    FwdParams p = pb.fwd_params(out.o, nullptr);
    p.q = q.view();
    p.k = k.view();
    p.v = v.view();
    p.o = o.view();
    p.lse = lse.get();
    p.accumulate = accumulate;
    kernels::flash_forward_cuda(p);
    o.to_host(out.o);
    out.lse = lse.to_host();
}

FwdOut forward_cuda(const Problem& pb) {
    FwdOut out = fresh_forward_out(pb);
    forward_cuda_into(pb, out);
    return out;
}

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

BwdOut fresh_grads(const Case& c) {
    return {Tensor(DType::f32, {c.B, c.Sq, c.Hq, c.D}, c.pad), Tensor(DType::f32, {c.B, c.Sk, c.Hkv, c.D}, c.pad),
            Tensor(DType::f32, {c.B, c.Sk, c.Hkv, c.D}, c.pad)};
}

// Runs flash_backward_cuda with (o, lse) from fwd into `g` (added to its contents when accumulating).
void backward_cuda_into(const Problem& pb, const FwdOut& fwd, BwdOut& g, bool accumulate = false) {
    const OnDevice q(pb.q), k(pb.k), v(pb.v), o(fwd.o), dout(pb.dout), dq(g.dq), dk(g.dk), dv(g.dv);
    const DeviceFloats lse(fwd.lse);
    BwdParams p = pb.bwd_params(fwd.o, fwd.lse, g.dq, g.dk, g.dv, 0, accumulate);
    p.q = q.view();
    p.k = k.view();
    p.v = v.view();
    p.o = o.view();
    p.dout = dout.view();
    p.lse = lse.get();
    p.dq = dq.view();
    p.dk = dk.view();
    p.dv = dv.view();
    kernels::flash_backward_cuda(p);
    dq.to_host(g.dq);
    dk.to_host(g.dk);
    dv.to_host(g.dv);
}

BwdOut backward_cuda(const Problem& pb, const FwdOut& fwd) {
    BwdOut g = fresh_grads(pb.c);
    backward_cuda_into(pb, fwd, g);
    return g;
}

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

// ---- The tile plan, pair by pair ------------------------------------------------------------------

using kernels::cuda::kKeyTile;
using kernels::cuda::plan_tiles;
using kernels::cuda::Segment;
using kernels::cuda::TilePlan;

// (query tile, key tile, mask block or -1) of every planned tile, from one side of the plan.
std::set<std::tuple<std::int64_t, std::int64_t, std::int32_t>> planned(const TilePlan& plan, bool by_key) {
    const auto& idx = by_key ? plan.by_key : plan.by_query;
    const std::int64_t tiles = by_key ? plan.k_tiles : plan.q_tiles;
    std::set<std::tuple<std::int64_t, std::int64_t, std::int32_t>> out;
    for (std::int64_t t = 0; t < tiles; ++t) {
        std::int64_t last = -1;
        for (std::int32_t s = idx.seg_ptr[static_cast<std::size_t>(t)]; s < idx.seg_ptr[static_cast<std::size_t>(t) + 1]; ++s) {
            const Segment& seg = idx.segs[static_cast<std::size_t>(s)];
            EXPECT_GT(seg.count, 0);
            EXPECT_GT(seg.first, last) << "segments must be in tile order";
            EXPECT_TRUE(seg.mask < 0 || seg.count == 1) << "a PARTIAL segment holds one tile";
            for (std::int32_t i = 0; i < seg.count; ++i)
                out.insert(by_key ? std::make_tuple(std::int64_t{seg.first + i}, t, seg.mask)
                                  : std::make_tuple(t, std::int64_t{seg.first + i}, seg.mask));
            last = seg.first + seg.count - 1;
        }
    }
    return out;
}

void expect_exact_plan(const Pattern& pat, const std::vector<std::int64_t>& qp, const std::vector<std::int64_t>& kp,
                       std::int64_t rows, const std::string& what) {
    SCOPED_TRACE(what + " rows=" + std::to_string(rows) + " [" + pat.describe() + "]");
    const auto sq = static_cast<std::int64_t>(qp.size()), sk = static_cast<std::int64_t>(kp.size());
    const TilePlan plan = plan_tiles(pat, qp.data(), sq, kp.data(), sk, rows, true);
    ASSERT_EQ(plan.q_tiles, (sq + rows - 1) / rows);
    ASSERT_EQ(plan.k_tiles, (sk + kKeyTile - 1) / kKeyTile);
    ASSERT_EQ(plan.masks.size(), static_cast<std::size_t>(plan.partial_tiles * rows));
    const auto tiles = planned(plan, false);
    EXPECT_EQ(planned(plan, true), tiles) << "the by-key plan must list the same tiles with the same masks";

    // What the kernels compute from the plan, against the pattern, for every pair.
    std::vector<std::uint8_t> seen(static_cast<std::size_t>(sq * sk), 0);
    for (const auto& [qt, kt, mask] : tiles) {
        EXPECT_LT(mask, plan.partial_tiles);
        for (std::int64_t r = 0; r < rows; ++r) {
            const std::int64_t i = qt * rows + r;
            for (std::int64_t j0 = kt * kKeyTile, c = 0; c < kKeyTile; ++c) {
                const bool bit = mask < 0 || ((plan.masks[static_cast<std::size_t>(mask * rows + r)] >> c) & 1u);
                if (i >= sq || j0 + c >= sk) {
                    EXPECT_TRUE(mask < 0 || !bit) << "mask bits past the end must be 0";
                    continue;
                }
                seen[static_cast<std::size_t>(i * sk + j0 + c)] = bit ? 1 : 2;
            }
        }
    }
    std::int64_t wrong = 0;
    for (std::int64_t i = 0; i < sq; ++i)
        for (std::int64_t j = 0; j < sk; ++j)
            wrong += (seen[static_cast<std::size_t>(i * sk + j)] == 1) != pat.allowed(qp[static_cast<std::size_t>(i)], kp[static_cast<std::size_t>(j)]);
    EXPECT_EQ(wrong, 0) << "pairs the plan gets wrong";
    // No planned PARTIAL tile is really EMPTY or FULL.
    for (const auto& [qt, kt, mask] : tiles) {
        if (mask < 0) continue;
        const std::int64_t nk = std::min(kKeyTile, sk - kt * kKeyTile);
        bool any = false, every = true;
        for (std::int64_t r = 0; r < rows && qt * rows + r < sq; ++r) {
            const std::uint64_t w = plan.masks[static_cast<std::size_t>(mask * rows + r)];
            any = any || w != 0;
            every = every && w == (nk == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << nk) - 1);
        }
        EXPECT_TRUE(any && !every) << "tile (" << qt << ", " << kt << ") is planned PARTIAL";
    }
    // Heaviest tiles first, each once.
    for (const auto* idx : {&plan.by_query, &plan.by_key}) {
        std::vector<std::int32_t> sorted = idx->order;
        std::sort(sorted.begin(), sorted.end());
        for (std::size_t t = 0; t < sorted.size(); ++t) ASSERT_EQ(sorted[t], static_cast<std::int32_t>(t));
    }
}

TEST(TilePlan, WorkedExampleFromTheHeader) {
    PatternSpec s;
    s.causal = true;
    const Pattern pat(s);
    const auto pos = positions(200);
    const TilePlan plan = plan_tiles(pat, pos.data(), 200, pos.data(), 200, 64, true);
    const auto segs = [](const kernels::cuda::TileIndex& idx, std::size_t t) {
        std::vector<std::array<std::int32_t, 3>> out;
        for (std::int32_t s = idx.seg_ptr[t]; s < idx.seg_ptr[t + 1]; ++s) {
            const Segment& g = idx.segs[static_cast<std::size_t>(s)];
            out.push_back({g.first, g.count, g.mask < 0 ? -1 : 1});
        }
        return out;
    };
    using V = std::vector<std::array<std::int32_t, 3>>;
    EXPECT_EQ(segs(plan.by_query, 0), (V{{0, 1, 1}}));
    EXPECT_EQ(segs(plan.by_query, 1), (V{{0, 1, -1}, {1, 1, 1}}));
    EXPECT_EQ(segs(plan.by_query, 3), (V{{0, 3, -1}, {3, 1, 1}}));
    EXPECT_EQ(segs(plan.by_key, 0), (V{{0, 1, 1}, {1, 3, -1}}));
    EXPECT_EQ(plan.partial_tiles, 4);
    EXPECT_EQ(plan.by_query.order.front(), 3) << "the query tile with most key tiles starts first";
}

TEST(TilePlan, EveryPatternEveryPair) {
    for (const auto& [name, spec] : pattern_zoo(kN, 2)) {
        const Pattern pat(spec);
        for (std::int64_t rows : {64, 128}) {
            expect_exact_plan(pat, positions(kN), positions(kN), rows, name);
        }
    }
    for (const auto& [name, spec] : pattern_zoo(203, 2)) {
        const Pattern pat(spec);
        for (std::int64_t rows : {64, 128})
            expect_exact_plan(pat, positions(113, 90), positions(203), rows, name + " 113x203 offset");
    }
}

TEST(TilePlan, PositionsAsStrategiesPassThem) {
    for (const auto& [name, spec] : pattern_zoo(512, 2)) {
        const Pattern pat(spec);
        expect_exact_plan(pat, concat(positions(64, 0), positions(64, 448)), concat(positions(64, 128), positions(64, 320)),
                          64, name + " zigzag");
        expect_exact_plan(pat, positions(128, 1, 4), positions(128, 3, 4), 64, name + " striped");
        std::vector<std::int64_t> shuffled;
        for (std::int64_t j = 0; j < 150; ++j) shuffled.push_back(j % 2 == 0 ? j / 2 : 149 - j / 2);
        expect_exact_plan(pat, positions(96, 95, -1), shuffled, 128, name + " unsorted");
    }
}

TEST(TilePlan, EmptySides) {
    const Pattern pat;
    const auto pos = positions(100);
    const TilePlan no_keys = plan_tiles(pat, pos.data(), 100, nullptr, 0, 64, true);
    EXPECT_EQ(no_keys.q_tiles, 2);
    EXPECT_EQ(no_keys.k_tiles, 0);
    EXPECT_TRUE(no_keys.by_query.segs.empty());
    const TilePlan no_queries = plan_tiles(pat, nullptr, 0, pos.data(), 100, 64, true);
    EXPECT_EQ(no_queries.k_tiles, 2);
    ASSERT_EQ(no_queries.by_key.seg_ptr.size(), 3u);
    EXPECT_TRUE(no_queries.by_key.segs.empty());
}

// ---- Fragment layouts through a warp emulator -------------------------------------------------

// A 32-bit register holding two 16-bit values, low half first; values are small integers, exact in
// bf16, fp16 and fp32, so the emulated products are exact.
struct Reg {
    float lo = 0, hi = 0;
};
using Mat = std::vector<std::vector<float>>;

Mat numbered(int rows, int cols, int seed) {
    Mat m(static_cast<std::size_t>(rows), std::vector<float>(static_cast<std::size_t>(cols)));
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c)
            m[static_cast<std::size_t>(r)][static_cast<std::size_t>(c)] = static_cast<float>((r * 7 + c * 3 + seed) % 9 - 4);
    return m;
}

// ldmatrix.x4 (.trans): lanes 8j..8j+7 give (row, col) of the 8-element rows of matrix j; lane L gets
// in register j row L/4, elements 2(L%4), 2(L%4)+1 of matrix j (of its transpose).
std::array<std::array<Reg, 4>, 32> ldmatrix_x4(const Mat& m, const std::array<std::pair<int, int>, 32>& addr, bool trans) {
    std::array<std::array<Reg, 4>, 32> out{};
    for (int j = 0; j < 4; ++j) {
        float mj[8][8];
        for (int r = 0; r < 8; ++r)
            for (int c = 0; c < 8; ++c) {
                const auto [row, col] = addr[static_cast<std::size_t>(8 * j + r)];
                mj[r][c] = m[static_cast<std::size_t>(row)][static_cast<std::size_t>(col + c)];
            }
        for (int lane = 0; lane < 32; ++lane) {
            const int r = lane / 4, c = 2 * (lane % 4);
            out[static_cast<std::size_t>(lane)][static_cast<std::size_t>(j)] =
                trans ? Reg{mj[c][r], mj[c + 1][r]} : Reg{mj[r][c], mj[r][c + 1]};
        }
    }
    return out;
}

// mma.m16n8k16 with the PTX ISA's fragment tables: a[lane] 4 registers (a0..a7), b[lane] 2 (b0..b3),
// c[lane] 4 fp32 values; c += A B.
void mma(const std::array<std::array<Reg, 4>, 32>& a, const std::array<std::array<Reg, 2>, 32>& b,
         std::array<std::array<float, 4>, 32>& c) {
    float A[16][16], B[16][8];
    for (int lane = 0; lane < 32; ++lane) {
        const int g = lane >> 2, t = lane % 4;
        for (int i = 0; i < 8; ++i) {
            const Reg& rg = a[static_cast<std::size_t>(lane)][static_cast<std::size_t>(i / 2)];
            const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
            const int col = t * 2 + (i & 1) + (i >= 4 ? 8 : 0);
            A[row][col] = i % 2 == 0 ? rg.lo : rg.hi;
        }
        for (int i = 0; i < 4; ++i) {
            const Reg& rg = b[static_cast<std::size_t>(lane)][static_cast<std::size_t>(i / 2)];
            const int row = t * 2 + (i & 1) + (i >= 2 ? 8 : 0);
            B[row][g] = i % 2 == 0 ? rg.lo : rg.hi;
        }
    }
    for (int lane = 0; lane < 32; ++lane) {
        const int g = lane >> 2, t = lane % 4;
        for (int i = 0; i < 4; ++i) {
            const int row = i < 2 ? g : g + 8, col = t * 2 + (i & 1);
            float sum = 0;
            for (int k = 0; k < 16; ++k) sum += A[row][k] * B[k][col];
            c[static_cast<std::size_t>(lane)][static_cast<std::size_t>(i)] += sum;
        }
    }
}

std::array<std::pair<int, int>, 32> addresses(int (*row)(int), int (*col)(int), int r0, int c0) {
    std::array<std::pair<int, int>, 32> a{};
    for (int lane = 0; lane < 32; ++lane) a[static_cast<std::size_t>(lane)] = {r0 + row(lane), c0 + col(lane)};
    return a;
}

// B registers of n-tile `half` (0 or 1) of an x4 load: registers 2 half, 2 half + 1.
std::array<std::array<Reg, 2>, 32> b_tile(const std::array<std::array<Reg, 4>, 32>& x4, int half) {
    std::array<std::array<Reg, 2>, 32> b{};
    for (int lane = 0; lane < 32; ++lane)
        b[static_cast<std::size_t>(lane)] = {x4[static_cast<std::size_t>(lane)][static_cast<std::size_t>(2 * half)],
                                             x4[static_cast<std::size_t>(lane)][static_cast<std::size_t>(2 * half + 1)]};
    return b;
}

TEST(FragmentLayout, ScoresFromRowMajorQAndK) {
    // S = Q K^T for 16 rows x 16 keys over 32 dims (two k-steps), Q at rows 16.., keys at rows 32..
    namespace fr = kernels::cuda::frag;
    const Mat q = numbered(48, 32, 1), k = numbered(64, 32, 5);
    std::array<std::array<std::array<float, 4>, 32>, 2> s{};
    for (int kk = 0; kk < 2; ++kk) {
        const auto a = ldmatrix_x4(q, addresses(fr::a_row, fr::a_col, 16, 16 * kk), false);
        const auto b = ldmatrix_x4(k, addresses(fr::bnk_row, fr::bnk_col, 32, 16 * kk), false);
        mma(a, b_tile(b, 0), s[0]);
        mma(a, b_tile(b, 1), s[1]);
    }
    for (int nt = 0; nt < 2; ++nt)
        for (int lane = 0; lane < 32; ++lane)
            for (int i = 0; i < 4; ++i) {
                const int r = fr::c_row(lane, i), c = nt * 8 + fr::c_col(lane, i);
                float want = 0;
                for (int d = 0; d < 32; ++d)
                    want += q[static_cast<std::size_t>(16 + r)][static_cast<std::size_t>(d)] * k[static_cast<std::size_t>(32 + c)][static_cast<std::size_t>(d)];
                ASSERT_EQ(s[static_cast<std::size_t>(nt)][static_cast<std::size_t>(lane)][static_cast<std::size_t>(i)], want)
                    << "lane " << lane << " value " << i << " n-tile " << nt;
            }
}

TEST(FragmentLayout, AccumulatorsAsTheNextAOperand) {
    // O = P V: P is a 16 x 16 accumulator (two n-tiles) repacked as A; V [key][dim] through .trans.
    namespace fr = kernels::cuda::frag;
    const Mat p = numbered(16, 16, 2), v = numbered(32, 40, 7);
    std::array<std::array<float, 4>, 32> pc0{}, pc1{};
    for (int lane = 0; lane < 32; ++lane)
        for (int i = 0; i < 4; ++i) {
            pc0[static_cast<std::size_t>(lane)][static_cast<std::size_t>(i)] = p[static_cast<std::size_t>(fr::c_row(lane, i))][static_cast<std::size_t>(fr::c_col(lane, i))];
            pc1[static_cast<std::size_t>(lane)][static_cast<std::size_t>(i)] = p[static_cast<std::size_t>(fr::c_row(lane, i))][static_cast<std::size_t>(8 + fr::c_col(lane, i))];
        }
    std::array<std::array<Reg, 4>, 32> a{};
    for (std::size_t lane = 0; lane < 32; ++lane)
        a[lane] = {Reg{pc0[lane][0], pc0[lane][1]}, Reg{pc0[lane][2], pc0[lane][3]}, Reg{pc1[lane][0], pc1[lane][1]},
                   Reg{pc1[lane][2], pc1[lane][3]}};
    // Keys 16..31 of V, dims 24..39.
    const auto b = ldmatrix_x4(v, addresses(fr::bkn_row, fr::bkn_col, 16, 24), true);
    std::array<std::array<std::array<float, 4>, 32>, 2> o{};
    mma(a, b_tile(b, 0), o[0]);
    mma(a, b_tile(b, 1), o[1]);
    for (int nt = 0; nt < 2; ++nt)
        for (int lane = 0; lane < 32; ++lane)
            for (int i = 0; i < 4; ++i) {
                const int r = fr::c_row(lane, i), c = nt * 8 + fr::c_col(lane, i);
                float want = 0;
                for (int j = 0; j < 16; ++j)
                    want += p[static_cast<std::size_t>(r)][static_cast<std::size_t>(j)] * v[static_cast<std::size_t>(16 + j)][static_cast<std::size_t>(24 + c)];
                ASSERT_EQ(o[static_cast<std::size_t>(nt)][static_cast<std::size_t>(lane)][static_cast<std::size_t>(i)], want)
                    << "lane " << lane << " value " << i << " n-tile " << nt;
            }
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

struct ZooParam {
    NamedSpec pattern;
    DType dtype;
    std::int64_t D;
};

std::vector<ZooParam> zoo_params(std::initializer_list<std::int64_t> dims) {
    std::vector<ZooParam> out;
    for (const auto& p : pattern_zoo(kN, 2))
        for (DType t : {DType::bf16, DType::f16})
            for (std::int64_t d : dims) out.push_back({p, t, d});
    return out;
}

void PrintTo(const ZooParam& z, std::ostream* os) {
    *os << z.pattern.name << " " << dtype_name(z.dtype) << " D=" << z.D;
}

std::string zoo_name(const ::testing::TestParamInfo<ZooParam>& i) {
    return i.param.pattern.name + "_" + std::string(dtype_name(i.param.dtype)) + "_d" + std::to_string(i.param.D);
}

Case zoo_case(const ZooParam& z) {
    Case c;
    c.name = z.pattern.name + " D=" + std::to_string(z.D);
    c.Sq = c.Sk = kN;
    c.D = z.D;
    c.dtype = z.dtype;
    c.spec = z.pattern.spec;
    return c;
}

class CudaForwardPattern : public ::testing::TestWithParam<ZooParam> {};

TEST_P(CudaForwardPattern, MatchesReference) {
    LONGATTN_REQUIRE_GPU();
    check_forward_cuda(zoo_case(GetParam()));
}

INSTANTIATE_TEST_SUITE_P(Zoo, CudaForwardPattern, ::testing::ValuesIn(zoo_params({64, 128, 59})), zoo_name);

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
        c.name += " " + std::to_string(d);
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

class CudaBackwardPattern : public ::testing::TestWithParam<ZooParam> {};

TEST_P(CudaBackwardPattern, MatchesReference) {
    LONGATTN_REQUIRE_GPU();
    check_backward_cuda(zoo_case(GetParam()));
}

INSTANTIATE_TEST_SUITE_P(Zoo, CudaBackwardPattern, ::testing::ValuesIn(zoo_params({64, 128, 59})), zoo_name);

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
        c.name += " " + std::to_string(d);
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

// ---- Sharp softmax and non-finite inputs on the device -----------------------------------------

Runners cuda_runners() { return {forward_cuda, backward_cuda}; }

class CudaSharpSoftmax : public ::testing::TestWithParam<SharpParam> {};

TEST_P(CudaSharpSoftmax, ForwardThenBackwardMeetTheRule) {
    LONGATTN_REQUIRE_GPU();
    check_chain(sharp_case(GetParam(), kN, 64), cuda_runners());
}

INSTANTIATE_TEST_SUITE_P(Zoo, CudaSharpSoftmax, ::testing::ValuesIn(sharp_params(kN, {DType::bf16, DType::f16})),
                         [](const ::testing::TestParamInfo<SharpParam>& i) { return sharp_name(i.param); });

TEST(CudaNonFinite, BadQueryRowGivesNanInThatRowOnly) {
    LONGATTN_REQUIRE_GPU();
    check_bad_query_row(cuda_runners(), {DType::bf16, DType::f16}, kN, 64);
}

TEST(CudaNonFinite, NanKeyReachesExactlyTheRowsThatMayAttendIt) {
    LONGATTN_REQUIRE_GPU();
    check_nan_key(cuda_runners(), {DType::bf16, DType::f16}, kN, 64);
}

TEST(CudaNonFinite, NanValueMakesTheRowsThatAttendItNanWithTheirLseIntact) {
    LONGATTN_REQUIRE_GPU();
    check_nan_value(cuda_runners(), DType::bf16, kN, 64);
}

TEST(CudaNonFinite, FullyMaskedRowsStayZeroWithANanQuery) {
    LONGATTN_REQUIRE_GPU();
    check_masked_row_with_nan_query(cuda_runners(), DType::bf16, kN, 64);
}

TEST(CudaNonFinite, AccumulatingOntoANanPartialStaysNan) {
    LONGATTN_REQUIRE_GPU();
    Case c;
    c.Sq = c.Sk = kN;
    c.dtype = DType::bf16;
    c.o_dtype = DType::f32;  // an accumulating call needs an fp32 O
    const Problem pb(c);
    FwdOut part = forward_cuda(pb);
    part.lse[lse_index(0, 0, 3, c.Hq, c.Sq)] = kNaN;
    forward_cuda_into(pb, part, true);
    EXPECT_TRUE(std::isnan(part.lse[lse_index(0, 0, 3, c.Hq, c.Sq)]));
    for (std::int64_t d = 0; d < c.D; ++d) EXPECT_TRUE(std::isnan(part.o.get(3 * c.Hq * c.D + d))) << d;
    EXPECT_TRUE(std::isfinite(part.lse[lse_index(0, 0, 4, c.Hq, c.Sq)]));
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

        const OnDevice dacc(acc), dadd(add);
        const DeviceFloats dl1(l1), dl2(l2);
        kernels::merge_partial_cuda(dacc.view(), dl1.get(), dadd.view(), dl2.get(), nullptr);
        Tensor got_o(DType::f32, {B, S, H, D}, 2);
        dacc.to_host(got_o);
        std::vector<float> got_l = dl1.to_host();
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
