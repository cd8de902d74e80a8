#include <algorithm>

#include "longattn/tensor_ops.hpp"
#include "strategies/common.hpp"

namespace longattn::dist {

std::vector<Range> split_even(std::int64_t n, int p) {
    std::vector<Range> out(static_cast<std::size_t>(p));
    const std::int64_t base = n / p, extra = n % p;
    for (int i = 0; i < p; ++i) out[static_cast<std::size_t>(i)] = {i * base + std::min<std::int64_t>(i, extra), base + (i < extra)};
    return out;
}

std::vector<Range> rows_of(const Shards& sh) {
    std::vector<Range> out(sh.count.size());
    for (std::size_t r = 0; r < out.size(); ++r) out[r] = {sh.offset[r], sh.count[r]};
    return out;
}

void exchange_blocks(Ctx& cx, comm::Communicator& comm, const TensorView& src, int send_dim,
                     const std::vector<Range>& send, const TensorView& dst, int recv_dim,
                     const std::vector<Range>& recv, bool add) {
    const auto P = static_cast<std::size_t>(comm.size());
    const auto es = dtype_size(src.dtype);
    auto block_elems = [](const TensorView& t, int dim, std::int64_t len) {
        return t.shape[dim] == 0 ? std::int64_t{0} : t.numel() / t.shape[dim] * len;
    };
    std::vector<std::size_t> sb(P), so(P), rb(P), ro(P);
    std::size_t send_total = 0, recv_total = 0;
    for (std::size_t r = 0; r < P; ++r) {
        sb[r] = static_cast<std::size_t>(block_elems(src, send_dim, send[r].len)) * es;
        so[r] = send_total;
        send_total += sb[r];
        rb[r] = static_cast<std::size_t>(block_elems(dst, recv_dim, recv[r].len)) * es;
        ro[r] = recv_total;
        recv_total += rb[r];
    }
    Scratch sbuf(cx, send_total), rbuf(cx, recv_total);
    // A packed block has the shape of its slice, made contiguous.
    auto packed = [](void* base, std::size_t off, const TensorView& like) {
        TensorView v = like;
        v.data = static_cast<char*>(base) + off;
        std::int64_t s = 1;
        for (int i = v.rank - 1; i >= 0; --i) {
            v.stride[i] = s;
            s *= v.shape[i];
        }
        return v;
    };
    for (std::size_t r = 0; r < P; ++r) {
        const TensorView part = slice(src, send_dim, send[r].start, send[r].len);
        copy_view(part, packed(sbuf.data(), so[r], part));
    }
    {
        ScopedTimer t(cx.st.wait_s);
        comm.note_step("Ulysses all-to-all", -1);
        comm.all_to_all_v(sbuf.data(), sb.data(), so.data(), rbuf.data(), rb.data(), ro.data());
    }
    for (std::size_t r = 0; r < P; ++r) {
        const TensorView place = slice(dst, recv_dim, recv[r].start, recv[r].len);
        TensorView block = packed(rbuf.data(), ro[r], place);
        block.dtype = src.dtype;
        if (add) add_view(block, place);
        else copy_view(block, place);
    }
}

}  // namespace longattn::dist
