#include "bench/save.hpp"

#include <csignal>

#include <memory>
#include <stdexcept>
#include <vector>

#include "bench/npy.hpp"
#include "comm/communicator.hpp"

namespace longattn::bench {
namespace {

// Runs of consecutive global positions among the local rows: (first local row, length).
std::vector<std::pair<std::int64_t, std::int64_t>> runs(const std::int64_t* pos, std::int64_t S) {
    std::vector<std::pair<std::int64_t, std::int64_t>> out;
    for (std::int64_t s = 0; s < S;) {
        std::int64_t n = 1;
        while (s + n < S && pos[s + n] == pos[s] + n) ++n;
        out.emplace_back(s, n);
        s += n;
    }
    return out;
}

// Rows [B=1, S, H, D] of view t to file elements (pos * H + h) * D + d.
void write_rows(NpyWriter& w, const TensorView& t, const RankRows& r) {
    const std::int64_t H = t.shape[2], D = t.shape[3];
    std::vector<float> buf;
    for (const auto& [s0, n] : runs(r.pos, r.S)) {
        buf.resize(static_cast<std::size_t>(n * H * D));
        for (std::int64_t i = 0; i < n; ++i)
            for (std::int64_t h = 0; h < H; ++h)
                for (std::int64_t d = 0; d < D; ++d)
                    buf[static_cast<std::size_t>((i * H + h) * D + d)] = load_as_f32(t.data, t.dtype, t.offset(0, s0 + i, h, d));
        w.write(r.pos[s0] * H * D, n * H * D, buf.data());
    }
}

}  // namespace

void save_outputs(const Job& job, std::int64_t N, const RankRows& r, comm::Communicator* comm, OutputSet& out) {
    const bool root = comm == nullptr || comm->rank() == 0;
    if (!job.io.allow_nonfinite) {
        std::int64_t bad = count_nonfinite(r, job.shape.batch, job.shape.heads);
        if (comm) comm->all_reduce_sum(&bad, 1);  // every rank refuses alike
        if (bad > 0)
            throw std::runtime_error("save: the outputs hold " + std::to_string(bad) +
                                     " NaN or infinite values; nothing is saved (--allow-nonfinite saves them)");
    }
    const std::int64_t H = job.shape.heads, Hkv = job.shape.kv_heads, D = job.shape.head_dim;
    struct File {
        std::unique_ptr<NpyWriter> w;
        const TensorView* rows;  // null: the LSE
    };
    std::vector<File> files;
    auto add = [&](const char* name, std::vector<std::int64_t> shape, const TensorView* rows) {
        files.push_back({std::make_unique<NpyWriter>(out.staged(name, shape), shape), rows});
    };
    add("out.npy", {N, H, D}, &r.o);
    add("lse.npy", {H, N}, nullptr);
    if (r.dq.data) {
        add("dq.npy", {N, H, D}, &r.dq);
        add("dk.npy", {N, Hkv, D}, &r.dk);
        add("dv.npy", {N, Hkv, D}, &r.dv);
    }
    if (root)
        for (auto& f : files) f.w->create();
    if (comm) comm->barrier();
    const int me = comm ? comm->rank() : 0;
    for (auto& f : files) {
        f.w->open();
        if (f.rows) {
            write_rows(*f.w, *f.rows, r);
        } else {
            for (std::int64_t h = 0; h < H; ++h)
                for (const auto& [s0, n] : runs(r.pos, r.S)) f.w->write(h * N + r.pos[s0], n, r.lse + h * r.S + s0);
        }
        f.w->finish();
        if (job.faults.save_kill == me) ::raise(SIGKILL);  // dies with one file written
    }
    if (comm) comm->barrier();
}

}  // namespace longattn::bench
