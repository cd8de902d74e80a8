#include "bench/inputs.hpp"

#include <unistd.h>

#include <cmath>
#include <vector>

#include "longattn/error.hpp"

namespace longattn::bench {

Inputs::Inputs(const Job& job)
    : seed_(job.shape.seed), dtype_(job.shape.dtype), D_(job.shape.head_dim), allow_nonfinite_(job.io.allow_nonfinite) {
    if (job.io.load_dir.empty()) return;
    q_ = std::make_unique<NpyReader>(job.io.load_dir + "/q.npy", "load");
    k_ = std::make_unique<NpyReader>(job.io.load_dir + "/k.npy", "load");
    v_ = std::make_unique<NpyReader>(job.io.load_dir + "/v.npy", "load");
    const std::string dout = job.io.load_dir + "/dout.npy";
    if (::access(dout.c_str(), F_OK) == 0) dout_ = std::make_unique<NpyReader>(dout, "load");
}

const NpyReader* Inputs::reader(SynthTensor t) const {
    switch (t) {
        case SynthTensor::q: return q_.get();
        case SynthTensor::k: return k_.get();
        case SynthTensor::v: return v_.get();
        default: return dout_.get();
    }
}

void Inputs::fill(SynthTensor t, const TensorView& view, const std::int64_t* pos) const {
    const NpyReader* r = reader(t);
    if (r == nullptr) {
        fill_synth(view, seed_, t, pos);
        return;
    }
    // One sequence (batch 1): runs of consecutive positions are contiguous rows [H, D] in the file.
    const std::int64_t S = view.shape[1], H = view.shape[2], D = view.shape[3];
    std::vector<float> buf;
    for (std::int64_t s = 0; s < S;) {
        std::int64_t n = 1;
        while (s + n < S && pos[s + n] == pos[s] + n) ++n;
        buf.resize(static_cast<std::size_t>(n * H * D));
        r->read(pos[s] * H * D, n * H * D, buf.data());
        for (std::int64_t i = 0; i < n; ++i)
            for (std::int64_t h = 0; h < H; ++h)
                for (std::int64_t d = 0; d < D; ++d) {
                    const float x = buf[static_cast<std::size_t>((i * H + h) * D + d)];
                    require(allow_nonfinite_ || std::isfinite(x), "load", r->path(), " holds ", x, " at row ", pos[s] + i,
                            ", head ", h, ", dim ", d, "; --allow-nonfinite lets NaN and Inf through");
                    store_from_f32(view.data, view.dtype, view.offset(0, s + i, h, d), x);
                }
        s += n;
    }
}

void Inputs::row(SynthTensor t, std::int64_t b, std::int64_t p, std::int64_t h, double* out) const {
    const NpyReader* r = reader(t);
    if (r == nullptr) {
        for (std::int64_t d = 0; d < D_; ++d) out[d] = round_to(dtype_, synth_value(seed_, t, b, p, h, d));
        return;
    }
    const std::int64_t H = r->header().shape[1];
    float buf[256];
    r->read((p * H + h) * D_, D_, buf);
    for (std::int64_t d = 0; d < D_; ++d) out[d] = round_to(dtype_, buf[d]);
}

}  // namespace longattn::bench
