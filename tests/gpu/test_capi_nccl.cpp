// la_context_create_nccl (longattn_nccl.h) through the shared libraries alone, as a consumer links
// them, under mpirun: a null NCCL communicator is refused naming it (no GPU needed), and with a GPU per
// rank a forward on CUDA tensors over the caller's NCCL communicator gives what a local context gives
// on the host for the same rows.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <mpi.h>
#include <nccl.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "capi/longattn_nccl.h"

namespace {

bool g_gpu = false;  // every rank has a GPU of its own

std::uint16_t to_bf16(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<std::uint16_t>(u >> 16);
}
float from_bf16(std::uint16_t h) {
    const std::uint32_t u = static_cast<std::uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// Rows of [1, n, heads, D] bf16 for the given global positions: a function of (position, head, dim).
std::vector<std::uint16_t> rows(const std::vector<std::int64_t>& pos, std::int64_t heads, std::int64_t D, int which) {
    std::vector<std::uint16_t> x;
    for (std::int64_t p : pos)
        for (std::int64_t h = 0; h < heads; ++h)
            for (std::int64_t d = 0; d < D; ++d)
                x.push_back(to_bf16(static_cast<float>(0.8 * std::sin(0.37 * double(p) + 1.3 * double(h) + 0.11 * double(d) * (which + 1) + which))));
    return x;
}

DLTensor tensor(void* data, std::vector<std::int64_t>& shape, DLDeviceType where, DLDataType type) {
    DLTensor t{};
    t.data = data;
    t.device.device_type = where;
    t.ndim = static_cast<int>(shape.size());
    t.dtype = type;
    t.shape = shape.data();
    return t;
}

struct Device {
    void* p = nullptr;
    explicit Device(std::size_t bytes) { EXPECT_EQ(cudaMalloc(&p, bytes), cudaSuccess); }
    ~Device() { (void)cudaFree(p); }
};

TEST(CApiNccl, NullCommunicatorIsRefusedOnEveryRank) {
    la_options opt;
    la_options_default(&opt);
    la_context* ctx = nullptr;
    EXPECT_EQ(la_context_create_nccl(MPI_COMM_WORLD, nullptr, &opt, &ctx), LA_ERR_ARGUMENT);
    EXPECT_EQ(ctx, nullptr);
    EXPECT_NE(std::string(la_last_error()).find("nccl: the NCCL communicator is null"), std::string::npos)
        << la_last_error();
}

TEST(CApiNccl, ForwardOnCudaTensorsMatchesTheLocalContext) {
    if (!g_gpu) GTEST_SKIP() << "needs a CUDA device per rank";
    int rank = 0, P = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &P);
    ncclUniqueId id{};
    if (rank == 0) {
        ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
    }
    MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, MPI_COMM_WORLD);
    ncclComm_t nccl = nullptr;
    ASSERT_EQ(ncclCommInitRank(&nccl, P, id, rank), ncclSuccess);

    constexpr std::int64_t kN = 777, kH = 4, kHkv = 2, kD = 64;
    la_pattern pat;
    la_pattern_default(&pat);
    pat.causal = 1;
    std::int64_t n = 0;
    ASSERT_EQ(la_layout_positions(LA_ZIGZAG, kN, P, rank, nullptr, &n), LA_OK);
    std::vector<std::int64_t> pos(static_cast<std::size_t>(n)), all(kN);
    ASSERT_EQ(la_layout_positions(LA_ZIGZAG, kN, P, rank, pos.data(), &n), LA_OK);
    for (std::int64_t i = 0; i < kN; ++i) all[static_cast<std::size_t>(i)] = i;
    const DLDataType bf16{kDLBfloat, 16, 1}, f32{kDLFloat, 32, 1};

    // Over NCCL, on the device.
    const std::vector<std::uint16_t> q = rows(pos, kH, kD, 0), k = rows(pos, kHkv, kD, 1), v = rows(pos, kHkv, kD, 2);
    Device dq(q.size() * 2), dk(k.size() * 2), dv(v.size() * 2), dout(q.size() * 2), dlse(static_cast<std::size_t>(kH * n) * 4);
    ASSERT_EQ(cudaMemcpy(dq.p, q.data(), q.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(dk.p, k.data(), k.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(dv.p, v.data(), v.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
    std::vector<std::int64_t> sq{1, n, kH, kD}, skv{1, n, kHkv, kD}, sl{1, kH, n};
    la_options opt;
    la_options_default(&opt);
    la_context* ctx = nullptr;
    ASSERT_EQ(la_context_create_nccl(MPI_COMM_WORLD, nccl, &opt, &ctx), LA_OK) << la_last_error();
    {
        DLTensor tq = tensor(dq.p, sq, kDLCUDA, bf16), tk = tensor(dk.p, skv, kDLCUDA, bf16),
                 tv = tensor(dv.p, skv, kDLCUDA, bf16), to = tensor(dout.p, sq, kDLCUDA, bf16),
                 tl = tensor(dlse.p, sl, kDLCUDA, f32);
        ASSERT_EQ(la_forward(ctx, &pat, pos.data(), &tq, &tk, &tv, &to, &tl), LA_OK) << la_last_error();
    }
    la_context_destroy(ctx);
    std::vector<std::uint16_t> o(q.size());
    std::vector<float> lse(static_cast<std::size_t>(kH * n));
    ASSERT_EQ(cudaMemcpy(o.data(), dout.p, o.size() * 2, cudaMemcpyDeviceToHost), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(lse.data(), dlse.p, lse.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_EQ(ncclCommDestroy(nccl), ncclSuccess);  // still the caller's to destroy

    // The whole sequence in one process, on the host.
    std::vector<std::uint16_t> fq = rows(all, kH, kD, 0), fk = rows(all, kHkv, kD, 1), fv = rows(all, kHkv, kD, 2),
                               fo(fq.size());
    std::vector<float> flse(static_cast<std::size_t>(kH * kN));
    std::vector<std::int64_t> fsq{1, kN, kH, kD}, fskv{1, kN, kHkv, kD}, fsl{1, kH, kN};
    la_context* local = nullptr;
    ASSERT_EQ(la_context_create_local(&opt, &local), LA_OK) << la_last_error();
    {
        DLTensor tq = tensor(fq.data(), fsq, kDLCPU, bf16), tk = tensor(fk.data(), fskv, kDLCPU, bf16),
                 tv = tensor(fv.data(), fskv, kDLCPU, bf16), to = tensor(fo.data(), fsq, kDLCPU, bf16),
                 tl = tensor(flse.data(), fsl, kDLCPU, f32);
        ASSERT_EQ(la_forward(local, &pat, all.data(), &tq, &tk, &tv, &to, &tl), LA_OK) << la_last_error();
    }
    la_context_destroy(local);

    // Each result is rounded to bf16 from fp32 sums: they may differ by 2 ulps of bf16 (2^-6
    // relative) and an fp32 floor; the LSE, kept in fp32, much less.
    int bad = 0;
    for (std::int64_t i = 0; i < n; ++i) {
        const std::int64_t g = pos[static_cast<std::size_t>(i)];
        for (std::int64_t h = 0; h < kH; ++h) {
            const float got_l = lse[static_cast<std::size_t>(h * n + i)], want_l = flse[static_cast<std::size_t>(h * kN + g)];
            if (!(std::abs(got_l - want_l) <= 1e-4f * (1.0f + std::abs(want_l)))) ++bad;
            for (std::int64_t d = 0; d < kD; ++d) {
                const float got = from_bf16(o[static_cast<std::size_t>((i * kH + h) * kD + d)]);
                const float want = from_bf16(fo[static_cast<std::size_t>((g * kH + h) * kD + d)]);
                if (!(std::abs(got - want) <= std::ldexp(std::abs(want), -6) + 1e-5f)) ++bad;
            }
        }
    }
    EXPECT_EQ(bad, 0) << "values of O or LSE differ beyond 2 bf16 ulps between the NCCL and the local context";
}

}  // namespace

int main(int argc, char** argv) {
    int provided = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    int rank = 0, size = 1, count = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int gpu = cudaGetDeviceCount(&count) == cudaSuccess && count >= size ? 1 : 0;
    MPI_Allreduce(MPI_IN_PLACE, &gpu, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    g_gpu = gpu != 0;
    if (g_gpu && cudaSetDevice(rank % count) != cudaSuccess) g_gpu = false;
    ::testing::InitGoogleTest(&argc, argv);
    int rc = RUN_ALL_TESTS(), worst = rc;
    MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Finalize();
    return worst;
}
