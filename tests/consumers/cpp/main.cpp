// A C++ program built against an installed longattn only (find_package(longattn CONFIG)): a training
// loop whose batches change document lengths, through one longattn::Context over MPI_COMM_WORLD (a
// cache of two plans). Each step's rows are checked against a one-process call over the whole
// sequence, and the cache must have found what repeated, built what changed and kept its bound.
#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include <longattn/comm/mpi/mpi_communicator.hpp>
#include <longattn/comm/self_communicator.hpp>
#include <longattn/context.hpp>
#include <longattn/layout.hpp>

namespace {

constexpr std::int64_t kN = 600, kH = 2, kD = 16;

std::vector<float> rows(int which, const std::vector<std::int64_t>& pos) {
    std::vector<float> x(pos.size() * kH * kD);
    for (std::size_t s = 0; s < pos.size(); ++s)
        for (std::int64_t h = 0; h < kH; ++h)
            for (std::int64_t d = 0; d < kD; ++d)
                x[(s * kH + h) * kD + d] = static_cast<float>(0.5 * std::cos(0.21 * pos[s] + 0.7 * h + 0.13 * d + which));
    return x;
}

// O of the rows at pos, through ctx.
std::vector<float> forward(longattn::Context& ctx, const std::vector<std::int64_t>& pos, const longattn::Pattern& pat) {
    const auto S = static_cast<std::int64_t>(pos.size());
    std::vector<float> q = rows(0, pos), k = rows(1, pos), v = rows(2, pos), o(q.size()), lse(kH * pos.size());
    longattn::DistForwardArgs a;
    a.q = longattn::contiguous_view(q.data(), longattn::DType::f32, 1, S, kH, kD);
    a.k = longattn::contiguous_view(k.data(), longattn::DType::f32, 1, S, kH, kD);
    a.v = longattn::contiguous_view(v.data(), longattn::DType::f32, 1, S, kH, kD);
    a.o = longattn::contiguous_view(o.data(), longattn::DType::f32, 1, S, kH, kD);
    a.lse = lse.data();
    a.pos = pos.data();
    a.pattern = &pat;
    ctx.forward(a);
    return o;
}

}  // namespace

int main(int argc, char** argv) {
    int provided = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    int bad = 0, rank = 0;
    {
        longattn::comm::MpiCommunicator comm(MPI_COMM_WORLD, 60.0);
        longattn::comm::SelfCommunicator self;
        rank = comm.rank();
        longattn::ContextOptions opt;
        opt.dist.strategy = longattn::StrategyKind::ring;
        opt.dist.threads = 1;
        opt.max_plans = 2;
        longattn::Context ctx(comm, opt), one(self, opt);
        const std::vector<std::int64_t> mine = longattn::Layout(longattn::LayoutKind::zigzag, kN, comm.size()).positions(rank);
        std::vector<std::int64_t> all(kN);
        for (std::int64_t i = 0; i < kN; ++i) all[static_cast<std::size_t>(i)] = i;
        // The batches' document lengths: A, B, A, C, A.
        const std::vector<std::vector<std::int64_t>> batches = {{0, 100, 600}, {0, 250, 400, 600}, {0, 100, 600},
                                                                {0, 599, 600}, {0, 100, 600}};
        double worst = 0;
        for (const auto& docs : batches) {
            longattn::PatternSpec spec;
            spec.causal = true;
            spec.doc_bounds = docs;
            const longattn::Pattern pat(spec);
            const std::vector<float> got = forward(ctx, mine, pat), ref = forward(one, all, pat);
            for (std::size_t s = 0; s < mine.size(); ++s)
                for (std::int64_t e = 0; e < kH * kD; ++e)
                    worst = std::fmax(worst, std::fabs(got[s * kH * kD + e] - ref[mine[s] * kH * kD + e]));
        }
        const longattn::CacheStats& c = ctx.cache();
        // A and B built; A found; C built (B dropped); A found.
        bad = !(worst <= 2e-5) || c.misses != 3 || c.hits != 2 || c.evictions != 1 || c.plans != 2;
        std::printf("cpp-consumer: rank %d: max |distributed - one process| %.2e; plans built %lld, found %lld, "
                    "dropped %lld, held %zu\n",
                    rank, worst, static_cast<long long>(c.misses), static_cast<long long>(c.hits),
                    static_cast<long long>(c.evictions), c.plans);
    }
    int any = bad;
    MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (rank == 0) std::printf("cpp-consumer: %s\n", any ? "FAILED" : "OK");
    MPI_Finalize();
    return any;
}
