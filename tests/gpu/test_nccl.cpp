// Run under mpirun: exact values of the NCCL communicator on device buffers (ring exchange with
// flush, uneven all-to-all, all-reduce, all-gather, broadcast, split), its host-buffer path, and the
// MPI communicator on device buffers, direct and staged. Without a GPU every test skips with a
// message. All collectives of a test run before its checks, so a failed check never leaves a rank
// behind in a collective.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "comm/device_memory.hpp"
#include "comm/mpi/mpi_communicator.hpp"
#include "comm/mpi/device_select.hpp"
#include "comm/nccl/nccl_communicator.hpp"
#include "longattn/error.hpp"

using namespace longattn;
using comm::cuda_check;

namespace {

comm::MpiCommunicator* g_mpi = nullptr;     // over MPI_COMM_WORLD; takes device buffers when a GPU is visible
comm::NcclCommunicator* g_nccl = nullptr;   // null when the NCCL tests cannot run here
bool g_gpu = false;                         // every rank sees a GPU
std::string g_nccl_skip;                    // why g_nccl is null

// An owning device array, filled from and read back to the host.
template <class T>
class DeviceArray {
public:
    explicit DeviceArray(std::size_t n) : n_(n) {
        if (n_ > 0) cuda_check(cudaMalloc(&p_, n_ * sizeof(T)), "cudaMalloc");
    }
    explicit DeviceArray(const std::vector<T>& host) : DeviceArray(host.size()) { upload(host); }
    ~DeviceArray() {
        if (p_ != nullptr) (void)cudaFree(p_);
    }
    DeviceArray(const DeviceArray&) = delete;
    DeviceArray& operator=(const DeviceArray&) = delete;
    T* data() { return static_cast<T*>(p_); }
    std::size_t bytes() const { return n_ * sizeof(T); }
    void upload(const std::vector<T>& host) {
        cuda_check(cudaMemcpy(p_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy");
        // A copy from pageable memory may still be in flight; a CUDA-aware MPI reads outside any stream.
        cuda_check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    }
    std::vector<T> download() const {
        std::vector<T> host(n_);
        if (n_ > 0) cuda_check(cudaMemcpy(host.data(), p_, bytes(), cudaMemcpyDeviceToHost), "cudaMemcpy");
        return host;
    }

private:
    void* p_ = nullptr;
    std::size_t n_;
};

// Rank r's shard: n values that name their owner and index.
std::vector<std::int32_t> shard(int r, std::size_t n) {
    std::vector<std::int32_t> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = r * 100000 + static_cast<std::int32_t>(i);
    return v;
}

// P ring steps, double-buffered, as a ring strategy posts them: at step t a rank holds the shard of
// rank (r - t) mod P. Returns the owner seen at each step (from the first value of the shard).
std::vector<std::int32_t> ring_pass(comm::Communicator& c, std::size_t n) {
    const int P = c.size(), r = c.rank();
    DeviceArray<std::int32_t> buf0(shard(r, n)), buf1(n);
    DeviceArray<std::int32_t>* buf[2] = {&buf0, &buf1};
    std::vector<std::int32_t> seen;
    int cur = 0;
    for (int t = 0; t < P; ++t) {
        comm::Request rx, tx;
        if (t + 1 < P) {
            rx = c.irecv(buf[1 - cur]->data(), buf[1 - cur]->bytes(), (r - 1 + P) % P, t);
            tx = c.isend(buf[cur]->data(), buf[cur]->bytes(), (r + 1) % P, t);
            c.flush();
        }
        const std::vector<std::int32_t> held = buf[cur]->download();
        seen.push_back(held.empty() ? -1 : held[0] / 100000);
        bool whole = true;
        for (std::size_t i = 0; i < n; ++i)
            whole = whole && held[i] == seen.back() * 100000 + static_cast<std::int32_t>(i);
        if (!whole) seen.back() = -2;  // a shard arrived damaged
        c.wait(rx);
        c.wait(tx);
        cur = 1 - cur;
    }
    return seen;
}

void expect_ring(const std::vector<std::int32_t>& seen, int P, int r) {
    ASSERT_EQ(seen.size(), static_cast<std::size_t>(P));
    for (int t = 0; t < P; ++t) EXPECT_EQ(seen[static_cast<std::size_t>(t)], (r - t + P) % P) << "step " << t;
}

#define NEED_NCCL() \
    if (g_nccl == nullptr) GTEST_SKIP() << g_nccl_skip
#define NEED_GPU() \
    if (!g_gpu) GTEST_SKIP() << "no CUDA device visible: device-buffer tests need a GPU"

TEST(Nccl, RingExchangeWithFlushPassesEveryShard) {
    NEED_NCCL();
    comm::Communicator& c = *g_nccl;
    c.reset_bytes_sent();
    // Shards of 3 MiB: the size of real K/V shards, not a message small enough to hide ordering bugs.
    const std::size_t n = std::size_t{3} << 18;
    expect_ring(ring_pass(c, n), c.size(), c.rank());
    EXPECT_EQ(c.bytes_sent(), static_cast<std::uint64_t>(c.size() - 1) * n * sizeof(std::int32_t));
}

TEST(Nccl, TestReportsCompletionAndLaunchesAPendingBatch) {
    NEED_NCCL();
    comm::Communicator& c = *g_nccl;
    const int P = c.size(), r = c.rank();
    DeviceArray<std::int32_t> out(shard(r, 1000)), in(1000);
    comm::Request rx = c.irecv(in.data(), in.bytes(), (r - 1 + P) % P, 0);
    comm::Request tx = c.isend(out.data(), out.bytes(), (r + 1) % P, 0);
    // No flush: test() must launch the batch itself, or this loop never ends.
    while (!c.test(rx)) {
    }
    c.wait(tx);
    EXPECT_FALSE(rx.active());
    EXPECT_FALSE(tx.active());
    EXPECT_EQ(in.download(), shard((r - 1 + P) % P, 1000));
}

TEST(Nccl, SendsWaitForTheComputeStream) {
    NEED_NCCL();
    comm::NcclCommunicator& c = *g_nccl;
    const int P = c.size(), r = c.rank();
    const std::size_t n = std::size_t{1} << 20;
    cudaStream_t s = nullptr;
    cuda_check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    std::int32_t* pinned = nullptr;
    cuda_check(cudaMallocHost(&pinned, n * sizeof(std::int32_t)), "cudaMallocHost");
    const std::vector<std::int32_t> mine = shard(r, n);
    std::copy(mine.begin(), mine.end(), pinned);
    DeviceArray<std::int32_t> out(n), in(n);
    // The data to send is still being copied on the compute stream when the send is launched.
    cuda_check(cudaMemcpyAsync(out.data(), pinned, out.bytes(), cudaMemcpyHostToDevice, s), "cudaMemcpyAsync");
    c.set_compute_stream(s);
    comm::Request rx = c.irecv(in.data(), in.bytes(), (r - 1 + P) % P, 0);
    comm::Request tx = c.isend(out.data(), out.bytes(), (r + 1) % P, 0);
    c.flush();
    c.wait(rx);
    c.wait(tx);
    c.set_compute_stream(nullptr);
    cuda_check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
    (void)cudaFreeHost(pinned);
    (void)cudaStreamDestroy(s);
    EXPECT_EQ(in.download(), shard((r - 1 + P) % P, n));
}

TEST(Nccl, AllToAllVMovesUnevenDeviceBlocks) {
    NEED_NCCL();
    comm::Communicator& c = *g_nccl;
    const int P = c.size(), r = c.rank();
    // Rank s sends s + 2d + 1 values to rank d: no two blocks from one rank have the same size.
    auto count = [](int s, int d) { return static_cast<std::size_t>(s + 2 * d + 1); };
    auto value = [](int s, int d, std::size_t k) { return s * 10000 + d * 100 + static_cast<std::int32_t>(k); };
    std::vector<std::size_t> sb(static_cast<std::size_t>(P)), so(sb.size()), rb(sb.size()), ro(sb.size());
    std::vector<std::int32_t> send;
    for (int d = 0; d < P; ++d) {
        so[static_cast<std::size_t>(d)] = send.size() * sizeof(std::int32_t);
        for (std::size_t k = 0; k < count(r, d); ++k) send.push_back(value(r, d, k));
        sb[static_cast<std::size_t>(d)] = count(r, d) * sizeof(std::int32_t);
    }
    std::size_t total = 0;
    for (int s = 0; s < P; ++s) {
        ro[static_cast<std::size_t>(s)] = total * sizeof(std::int32_t);
        rb[static_cast<std::size_t>(s)] = count(s, r) * sizeof(std::int32_t);
        total += count(s, r);
    }
    DeviceArray<std::int32_t> dsend(send), drecv(total);
    c.reset_bytes_sent();
    c.all_to_all_v(dsend.data(), sb.data(), so.data(), drecv.data(), rb.data(), ro.data());
    std::vector<std::int32_t> expected;
    for (int s = 0; s < P; ++s)
        for (std::size_t k = 0; k < count(s, r); ++k) expected.push_back(value(s, r, k));
    EXPECT_EQ(drecv.download(), expected);
    std::uint64_t sent = 0;
    for (int d = 0; d < P; ++d)
        if (d != r) sent += sb[static_cast<std::size_t>(d)];
    EXPECT_EQ(c.bytes_sent(), sent);
}

TEST(Nccl, AllReduceSumsAndMaxesDeviceAndHostBuffers) {
    NEED_NCCL();
    comm::Communicator& c = *g_nccl;
    const int P = c.size(), r = c.rank();
    DeviceArray<double> dsum(std::vector<double>{1.0 + r, 0.5 * r}), dmax(std::vector<double>{-1.0 * r, 3.0 * r});
    DeviceArray<std::int64_t> isum(std::vector<std::int64_t>{(std::int64_t{1} << 40) + r, -r});
    c.all_reduce_sum(dsum.data(), 2);
    c.all_reduce_max(dmax.data(), 2);
    c.all_reduce_sum(isum.data(), 2);
    // Host buffers take the MPI path of the same communicator.
    std::vector<double> hsum = {1.0 + r, 0.5 * r};
    c.all_reduce_sum(hsum.data(), 2);
    // Mixed kinds (rank 0 on the device, the others on the host) agree on the MPI path.
    DeviceArray<double> dmixed(std::vector<double>{2.0 * r});
    std::vector<double> hmixed = {2.0 * r};
    c.all_reduce_sum(r == 0 ? dmixed.data() : hmixed.data(), 1);

    const double n = P, tri = P * (P - 1) / 2.0;
    EXPECT_EQ(dsum.download(), (std::vector<double>{n + tri, 0.5 * tri}));
    EXPECT_EQ(dmax.download(), (std::vector<double>{0.0, 3.0 * (P - 1)}));
    const std::int64_t ranks = P * (P - 1) / 2;
    EXPECT_EQ(isum.download(), (std::vector<std::int64_t>{(std::int64_t{P} << 40) + ranks, -ranks}));
    EXPECT_EQ(hsum, (std::vector<double>{n + tri, 0.5 * tri}));
    EXPECT_EQ(r == 0 ? dmixed.download()[0] : hmixed[0], 2.0 * tri);
}

TEST(Nccl, AllGatherVCollectsUnevenDeviceParts) {
    NEED_NCCL();
    comm::Communicator& c = *g_nccl;
    const int P = c.size(), r = c.rank();
    // Rank s contributes s + 1 values s * 1000 + k.
    std::vector<std::size_t> bytes(static_cast<std::size_t>(P)), off(bytes.size());
    std::vector<std::int64_t> expected;
    for (int s = 0; s < P; ++s) {
        off[static_cast<std::size_t>(s)] = expected.size() * sizeof(std::int64_t);
        bytes[static_cast<std::size_t>(s)] = static_cast<std::size_t>(s + 1) * sizeof(std::int64_t);
        for (int k = 0; k <= s; ++k) expected.push_back(s * 1000 + k);
    }
    std::vector<std::int64_t> mine;
    for (int k = 0; k <= r; ++k) mine.push_back(r * 1000 + k);
    DeviceArray<std::int64_t> dmine(mine), dall(expected.size());
    c.all_gather_v(dmine.data(), dall.data(), bytes.data(), off.data());
    // The strategies' shard metadata: host buffers.
    std::vector<std::int64_t> hall(expected.size(), -1);
    c.all_gather_v(mine.data(), hall.data(), bytes.data(), off.data());
    EXPECT_EQ(dall.download(), expected);
    EXPECT_EQ(hall, expected);
}

TEST(Nccl, BroadcastFromTheLastRank) {
    NEED_NCCL();
    comm::Communicator& c = *g_nccl;
    const int P = c.size(), r = c.rank();
    const std::vector<std::int32_t> root = shard(P - 1, 4097);
    DeviceArray<std::int32_t> d(r == P - 1 ? root : std::vector<std::int32_t>(4097, -1));
    c.broadcast(d.data(), d.bytes(), P - 1);
    EXPECT_EQ(d.download(), root);
}

TEST(Nccl, SplitNumbersRanksAsMpiAndCarriesDeviceTraffic) {
    NEED_NCCL();
    comm::Communicator& c = *g_nccl;
    const int P = c.size(), r = c.rank();
    // Even and odd ranks, ordered by descending old rank.
    auto sub = c.split(r % 2, -r);
    const int sp = sub->size(), sr = sub->rank();
    const std::vector<std::int32_t> seen = ring_pass(*sub, 5000);
    DeviceArray<std::int64_t> sum(std::vector<std::int64_t>{r});
    sub->all_reduce_sum(sum.data(), 1);
    EXPECT_EQ(sp, (P - r % 2 + 1) / 2);
    EXPECT_EQ(sr, (sp - 1) - r / 2);
    expect_ring(seen, sp, sr);
    std::int64_t expected = 0;
    for (int q = r % 2; q < P; q += 2) expected += q;
    EXPECT_EQ(sum.download()[0], expected);
}

TEST(Nccl, HostTransfersGoThroughMpi) {
    NEED_NCCL();
    comm::Communicator& c = *g_nccl;
    const int P = c.size(), r = c.rank();
    std::int64_t out = r, in = -1;
    comm::Request rx = c.irecv(&in, sizeof(in), (r - 1 + P) % P, 7), tx = c.isend(&out, sizeof(out), (r + 1) % P, 7);
    c.flush();
    c.wait(rx);
    c.wait(tx);
    EXPECT_EQ(in, (r - 1 + P) % P);
}

// An NCCL communicator of the caller's own (bootstrapped as a training job does): the borrowing
// communicator carries exact traffic, leaves it alive when destroyed, and refuses one whose ranks are
// not in MPI's order, on every rank.
ncclComm_t callers_nccl(int nccl_rank) {
    ncclUniqueId id{};
    if (g_mpi->rank() == 0) {
        EXPECT_EQ(ncclGetUniqueId(&id), ncclSuccess);
    }
    g_mpi->broadcast(&id, sizeof(id), 0);
    ncclComm_t c = nullptr;
    EXPECT_EQ(ncclCommInitRank(&c, g_mpi->size(), id, nccl_rank), ncclSuccess);
    return c;
}

TEST(Nccl, BorrowedCommunicatorCarriesTrafficAndStaysTheCallers) {
    NEED_NCCL();
    const int P = g_mpi->size(), r = g_mpi->rank();
    ncclComm_t mine = callers_nccl(r);
    std::vector<std::int32_t> seen;
    std::vector<double> sum;
    {
        comm::NcclCommunicator c(MPI_COMM_WORLD, mine, nullptr, 0);
        EXPECT_EQ(c.handle(), mine);
        seen = ring_pass(c, 100000);
        DeviceArray<double> s(std::vector<double>{1.0 + r, 2.0});
        c.all_reduce_sum(s.data(), 2);
        sum = s.download();
    }
    expect_ring(seen, P, r);
    EXPECT_EQ(sum, (std::vector<double>{P * (P + 1) / 2.0, 2.0 * P}));
    // Still the caller's: an all-reduce straight through NCCL.
    DeviceArray<float> x(std::vector<float>{1.0f});
    EXPECT_EQ(ncclAllReduce(x.data(), x.data(), 1, ncclFloat, ncclSum, mine, nullptr), ncclSuccess);
    EXPECT_EQ(cudaStreamSynchronize(nullptr), cudaSuccess);
    EXPECT_EQ(x.download(), std::vector<float>{static_cast<float>(P)});
    EXPECT_EQ(ncclCommDestroy(mine), ncclSuccess);

    if (P < 2) return;
    ncclComm_t reversed = callers_nccl(P - 1 - r);
    std::string what;
    try {
        comm::NcclCommunicator c(MPI_COMM_WORLD, reversed, nullptr, 0);
    } catch (const Error& e) {
        what = e.what();
    }
    // Rank r of the reversed communicator is MPI's rank P-1-r: all but a middle rank see the mismatch,
    // and that one hears of it.
    EXPECT_NE(what.find("nccl: "), std::string::npos) << what;
    EXPECT_EQ(ncclCommDestroy(reversed), ncclSuccess);
}

// The MPI communicator on device buffers: whatever the MPI (CUDA-aware or not), and with staging
// forced, so both paths run wherever a GPU is.
void mpi_device_round(comm::MpiCommunicator& c) {
    const int P = c.size(), r = c.rank();
    const std::vector<std::int32_t> seen = ring_pass(c, 100000);
    DeviceArray<double> sum(std::vector<double>{1.0 + r});
    c.all_reduce_sum(sum.data(), 1);
    const std::vector<std::int32_t> root = shard(0, 333);
    DeviceArray<std::int32_t> b(r == 0 ? root : std::vector<std::int32_t>(333, -1));
    c.broadcast(b.data(), b.bytes(), 0);
    // Two values to every rank, own part included (a device-to-device copy).
    std::vector<std::size_t> bytes(static_cast<std::size_t>(P), 2 * sizeof(std::int32_t)), off(bytes.size());
    std::vector<std::int32_t> send;
    for (int d = 0; d < P; ++d) {
        off[static_cast<std::size_t>(d)] = static_cast<std::size_t>(2 * d) * sizeof(std::int32_t);
        send.push_back(r * 100 + d);
        send.push_back(-(r * 100 + d));
    }
    DeviceArray<std::int32_t> dsend(send), drecv(send.size());
    c.all_to_all_v(dsend.data(), bytes.data(), off.data(), drecv.data(), bytes.data(), off.data());

    expect_ring(seen, P, r);
    EXPECT_EQ(sum.download()[0], P + P * (P - 1) / 2.0);
    EXPECT_EQ(b.download(), root);
    std::vector<std::int32_t> expected;
    for (int s = 0; s < P; ++s) {
        expected.push_back(s * 100 + r);
        expected.push_back(-(s * 100 + r));
    }
    EXPECT_EQ(drecv.download(), expected);
}

TEST(MpiDevice, RingAndCollectivesOnDeviceBuffers) {
    NEED_GPU();
    mpi_device_round(*g_mpi);
}

TEST(MpiDevice, StagedThroughPinnedHostMemory) {
    NEED_GPU();
    setenv("LONGATTN_MPI_STAGE_DEVICE", "1", 1);
    comm::MpiCommunicator staged(MPI_COMM_WORLD);
    unsetenv("LONGATTN_MPI_STAGE_DEVICE");
    mpi_device_round(staged);
}

// Empty when every rank sees a GPU and no two ranks of a node hold the same one (NCCL refuses
// that); otherwise the reason the NCCL tests skip. Devices are compared by PCI bus id, since each
// rank may see its own subset of the node's GPUs.
std::string nccl_unusable(bool gpu, int device) {
    if (!gpu) return "no CUDA device visible: NCCL communicator tests need a GPU";
    constexpr int kLen = 32;
    char mine[kLen] = {};
    cuda_check(cudaDeviceGetPCIBusId(mine, kLen, device), "cudaDeviceGetPCIBusId");
    MPI_Comm node = MPI_COMM_NULL;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    int local = 1;
    MPI_Comm_size(node, &local);
    std::vector<char> all(static_cast<std::size_t>(local) * kLen);
    MPI_Allgather(mine, kLen, MPI_CHAR, all.data(), kLen, MPI_CHAR, node);
    MPI_Comm_free(&node);
    std::vector<std::string> ids;
    for (int i = 0; i < local; ++i) ids.emplace_back(all.data() + static_cast<std::ptrdiff_t>(i) * kLen);
    std::sort(ids.begin(), ids.end());
    int distinct = std::unique(ids.begin(), ids.end()) == ids.end() ? 1 : 0;
    MPI_Allreduce(MPI_IN_PLACE, &distinct, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (distinct == 0)
        return "NCCL needs one GPU per rank and some ranks share one (the MPI device-buffer tests still run)";
    return "";
}

}  // namespace

int main(int argc, char** argv) {
    int provided = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    int rc = 0;
    {
        int gpu = comm::cuda_device_count() > 0 ? 1 : 0;
        MPI_Allreduce(MPI_IN_PLACE, &gpu, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
        g_gpu = gpu != 0;
        // Ranks sharing a GPU still get one each where there are enough.
        const int device = g_gpu ? comm::select_device(MPI_COMM_WORLD) : -1;
        comm::MpiCommunicator mpi(MPI_COMM_WORLD);
        g_mpi = &mpi;
        g_nccl_skip = nccl_unusable(g_gpu, device);
        std::unique_ptr<comm::NcclCommunicator> nccl;
        if (g_nccl_skip.empty()) nccl = std::make_unique<comm::NcclCommunicator>(MPI_COMM_WORLD);
        g_nccl = nccl.get();

        ::testing::InitGoogleTest(&argc, argv);
        if (mpi.rank() != 0) {
            // Only rank 0 prints the progress; failures of any rank still print.
            auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
            delete listeners.Release(listeners.default_result_printer());
            struct FailurePrinter : ::testing::EmptyTestEventListener {
                int rank;
                explicit FailurePrinter(int r) : rank(r) {}
                void OnTestPartResult(const ::testing::TestPartResult& r) override {
                    if (r.failed())
                        std::fprintf(stderr, "[rank %d] %s:%d: %s\n", rank, r.file_name(), r.line_number(),
                                     r.summary());
                }
            };
            listeners.Append(new FailurePrinter(mpi.rank()));
        }
        rc = RUN_ALL_TESTS();
        int worst = rc;
        MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        rc = worst;
        g_nccl = nullptr;
        g_mpi = nullptr;
    }
    MPI_Finalize();
    return rc;
}
