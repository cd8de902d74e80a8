// The sharded, paged KV cache and the decode step (longattn/kv_cache.hpp).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <vector>

#include <sys/mman.h>

#include "comm/communicator.hpp"
#include "kernels/attention.hpp"
#include "longattn/error.hpp"
#include "longattn/kv_cache.hpp"
#include "longattn/synth.hpp"

namespace longattn {

KvPlacement parse_kv_placement(const std::string& name) {
    if (name == "round-robin") return KvPlacement::round_robin;
    if (name == "layout") return KvPlacement::layout;
    require(false, "kv-placement", "must be round-robin or layout, got '", name, "'");
    return KvPlacement::round_robin;
}
const char* kv_placement_name(KvPlacement p) { return p == KvPlacement::round_robin ? "round-robin" : "layout"; }

DecodeCombine parse_decode_combine(const std::string& name) {
    if (name == "allgather") return DecodeCombine::allgather;
    if (name == "allreduce") return DecodeCombine::allreduce;
    require(false, "combine", "must be allgather or allreduce, got '", name, "'");
    return DecodeCombine::allgather;
}
const char* decode_combine_name(DecodeCombine c) { return c == DecodeCombine::allgather ? "allgather" : "allreduce"; }

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// The page pool: mapped anonymous memory, asked for transparent huge pages where the kernel gives
// them on request (a cache far larger than the TLB's reach, read as a stream each step).
struct PagePool {
    unsigned char* p = nullptr;
    std::size_t n = 0;
    explicit PagePool(std::size_t bytes) : n(bytes) {
        if (!n) return;
        void* m = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
        ::madvise(m, n, MADV_HUGEPAGE);  // advice only: without it the pages stay 4 KiB
#endif
        p = static_cast<unsigned char*>(m);
    }
    ~PagePool() {
        if (p) ::munmap(p, n);
    }
    PagePool(const PagePool&) = delete;
    PagePool& operator=(const PagePool&) = delete;
};

// Bytes of one page, and the pages of each rank (the default: an even share of every sequence at
// full capacity, plus two).
std::int64_t page_bytes_of(const KvCacheOptions& o) {
    return kernels::kv_page_elems(o.kv_heads, o.head_dim, o.page_tokens) * static_cast<std::int64_t>(dtype_size(o.dtype));
}
std::int64_t pages_of(const KvCacheOptions& o, int P) {
    if (o.pages) return o.pages;
    const std::int64_t share = (o.capacity + std::int64_t{P} * o.page_tokens - 1) / (std::int64_t{P} * o.page_tokens);
    return o.batch * (share + 2);
}

}  // namespace

struct KvCache::Impl {
    comm::Communicator* comm = nullptr;
    int rank = 0, P = 1;
    KvCacheOptions opt;
    std::int64_t D = 0, Dp = 0, pt = 0, esize = 0, page_bytes = 0;
    std::unique_ptr<Layout> layout;       // placement = layout
    std::unique_ptr<PagePool> pool;   // pages
    std::vector<std::int64_t> pos;        // [pages * pt]
    std::vector<std::int64_t> fill;       // [pages]
    std::vector<std::vector<std::int64_t>> table;  // per sequence: its pages on this rank, in order
    std::vector<std::int64_t> length;     // per sequence, global
    std::vector<std::int64_t> last;       // per sequence: the last position this rank holds (-1: none)
    std::int64_t used = 0;

    unsigned char* page(std::int64_t id) const { return pool->p + id * page_bytes; }

    int owner(std::int64_t seq, std::int64_t p) const {
        if (opt.placement == KvPlacement::layout) return layout->locate(p).first;
        return static_cast<int>((p / pt + seq) % P);
    }

    void check_seq(std::int64_t seq, const char* what) const {
        require(seq >= 0 && seq < opt.batch, what, "sequence index must be in [0, ", opt.batch, "), got ", seq);
    }

    // Pages that n more rows of seq need beyond its last page's free slots.
    std::int64_t pages_needed(std::int64_t seq, std::int64_t n) const {
        const auto& t = table[static_cast<std::size_t>(seq)];
        const std::int64_t room = t.empty() ? 0 : pt - fill[static_cast<std::size_t>(t.back())];
        return n <= room ? 0 : (n - room + pt - 1) / pt;
    }
    void require_room(std::int64_t seq, std::int64_t n) const {
        const std::int64_t need = pages_needed(seq, n);
        require(used + need <= opt.pages, "kv cache", "rank ", rank, " is out of pages: ", n,
                " more rows of sequence ", seq, " need ", need, " pages, ", opt.pages - used, " of ", opt.pages,
                " are free (pages of ", pt, " tokens; set more pages or a larger page size)");
    }
    // The slot of the next row of seq (taking a fresh, zeroed page when the last one is full).
    std::pair<std::int64_t, std::int64_t> next_slot(std::int64_t seq) {
        auto& t = table[static_cast<std::size_t>(seq)];
        if (t.empty() || fill[static_cast<std::size_t>(t.back())] == pt) {
            const std::int64_t id = used++;
            std::memset(page(id), 0, static_cast<std::size_t>(page_bytes));
            fill[static_cast<std::size_t>(id)] = 0;
            t.push_back(id);
        }
        const std::int64_t id = t.back();
        return {id, fill[static_cast<std::size_t>(id)]++};
    }
    // One row of K and V (head-major [Hkv][D] floats) into a slot.
    void put(std::int64_t id, std::int64_t slot, std::int64_t p, const float* krow, const float* vrow) {
        unsigned char* base = page(id);
        const std::int64_t H = opt.kv_heads, voff = H * D * pt;
        for (std::int64_t h = 0; h < H; ++h)
            for (std::int64_t d = 0; d < D; ++d) {
                store_from_f32(base, opt.dtype, (h * D + d) * pt + slot, krow[h * D + d]);
                store_from_f32(base, opt.dtype, voff + (h * pt + slot) * Dp + d, vrow[h * D + d]);
            }
        pos[static_cast<std::size_t>(id * pt + slot)] = p;
    }
    // Row i of batch entry e of k and v ([B, S, Hkv, D] views, any storage type) into the next slot of
    // seq, at position p.
    std::vector<float> krow, vrow;
    void add_row(std::int64_t seq, std::int64_t p, const TensorView& k, const TensorView& v, std::int64_t e,
                 std::int64_t i) {
        const std::int64_t H = opt.kv_heads;
        krow.resize(static_cast<std::size_t>(H * D));
        vrow.resize(krow.size());
        for (std::int64_t h = 0; h < H; ++h)
            for (std::int64_t d = 0; d < D; ++d) {
                krow[static_cast<std::size_t>(h * D + d)] = load_as_f32(k.data, k.dtype, k.offset(e, i, h, d));
                vrow[static_cast<std::size_t>(h * D + d)] = load_as_f32(v.data, v.dtype, v.offset(e, i, h, d));
            }
        const auto [id, slot] = next_slot(seq);
        put(id, slot, p, krow.data(), vrow.data());
    }
    // A position to write after position `after` (-1: none) of seq on this rank.
    void check_position(std::int64_t seq, std::int64_t p, std::int64_t after) const {
        require(p >= 0 && p < opt.capacity, "pos", "position ", p, " of sequence ", seq, " is beyond the capacity [0, ",
                opt.capacity, ")");
        require(p > after, "pos", "positions written to a sequence must increase on each rank: position ", p,
                " of sequence ", seq, " after ", after);
    }

    // Undo of an append: the rows appended per sequence, and the pages in use before it.
    struct Undo {
        std::vector<std::int64_t> rows, last;
        std::int64_t used = 0;
        std::vector<std::int64_t> length;
    };
    void undo(const Undo& u) {
        for (std::int64_t s = 0; s < opt.batch; ++s) {
            auto& t = table[static_cast<std::size_t>(s)];
            for (std::int64_t r = u.rows[static_cast<std::size_t>(s)]; r > 0; --r) {
                if (--fill[static_cast<std::size_t>(t.back())] == 0) t.pop_back();
            }
            last[static_cast<std::size_t>(s)] = u.last[static_cast<std::size_t>(s)];
        }
        used = u.used;
        length = u.length;
    }

    // Appends k, v [B, T, Hkv, D] at each sequence's next T positions; every rank keeps its own rows.
    Undo append(const TensorView& k, const TensorView& v) {
        const std::int64_t T = k.shape[1];
        Undo u;
        u.rows.assign(static_cast<std::size_t>(opt.batch), 0);
        u.last = last;
        u.used = used;
        u.length = length;
        // Check everything first: a refused append leaves the cache as it was.
        std::int64_t need = 0;
        for (std::int64_t s = 0; s < opt.batch; ++s) {
            const std::int64_t l = length[static_cast<std::size_t>(s)];
            require(l + T <= opt.capacity, "kv cache", "sequence ", s, " holds ", l, " of ", opt.capacity,
                    " positions: ", T, " more do not fit (the capacity is set when the cache is made)");
            std::int64_t mine = 0;
            for (std::int64_t i = 0; i < T; ++i) mine += owner(s, l + i) == rank;
            u.rows[static_cast<std::size_t>(s)] = mine;
            need += pages_needed(s, mine);
        }
        require(used + need <= opt.pages, "kv cache", "rank ", rank, " is out of pages: this step's new tokens need ",
                need, " pages, ", opt.pages - used, " of ", opt.pages, " are free (pages of ", pt,
                " tokens; set more pages)");
        for (std::int64_t s = 0; s < opt.batch; ++s) {
            const std::int64_t l = length[static_cast<std::size_t>(s)];
            for (std::int64_t i = 0; i < T; ++i) {
                const std::int64_t p = l + i;
                if (owner(s, p) != rank) continue;
                add_row(s, p, k, v, s, i);
                last[static_cast<std::size_t>(s)] = p;
            }
            length[static_cast<std::size_t>(s)] = l + T;
        }
        return u;
    }

    // The kernel's page list over this rank's pages of every sequence.
    void pages_for_kernel(std::vector<kernels::KvPage>& pages, std::vector<std::int64_t>& begin) const {
        pages.clear();
        begin.assign(1, 0);
        for (std::int64_t s = 0; s < opt.batch; ++s) {
            for (std::int64_t id : table[static_cast<std::size_t>(s)])
                pages.push_back({page(id), pos.data() + id * pt, fill[static_cast<std::size_t>(id)]});
            begin.push_back(static_cast<std::int64_t>(pages.size()));
        }
    }

    // Scratch of the decode step, kept between steps.
    std::vector<kernels::KvPage> kpages;
    std::vector<std::int64_t> kbegin, qpos;
    std::vector<float> part;  // [status, lse (B * Hq * T), o (B * T * Hq * D)]
    std::vector<float> gathered;
    std::vector<double> red;
};

KvCache::KvCache(comm::Communicator* comm, const KvCacheOptions& opt) : impl_(std::make_unique<Impl>()) {
    Impl& m = *impl_;
    m.comm = comm;
    m.rank = comm ? comm->rank() : 0;
    m.P = comm ? comm->size() : 1;
    require(opt.batch >= 1, "kv cache batch", "must be >= 1, got ", opt.batch);
    require(opt.capacity >= 1, "kv cache capacity", "must be >= 1, got ", opt.capacity);
    require(opt.kv_heads >= 1, "kv cache kv_heads", "must be >= 1, got ", opt.kv_heads);
    require(opt.head_dim >= 1 && opt.head_dim <= 256, "kv cache head_dim", "must be in [1, 256], got ", opt.head_dim);
    require(opt.page_tokens >= 16 && opt.page_tokens % 16 == 0, "page-tokens",
            "must be a positive multiple of 16, got ", opt.page_tokens);
    require(opt.pages >= 0, "kv cache pages", "must be >= 0 (0: enough for an even share), got ", opt.pages);
    m.opt = opt;
    m.D = opt.head_dim;
    m.Dp = kernels::kv_padded_dim(m.D);
    m.pt = opt.page_tokens;
    m.esize = static_cast<std::int64_t>(dtype_size(opt.dtype));
    m.page_bytes = page_bytes_of(opt);
    m.opt.pages = pages_of(opt, m.P);
    if (opt.placement == KvPlacement::layout) m.layout = std::make_unique<Layout>(opt.layout, opt.capacity, m.P);
    m.pool = std::make_unique<PagePool>(static_cast<std::size_t>(m.opt.pages * m.page_bytes));
    m.pos.assign(static_cast<std::size_t>(m.opt.pages * m.pt), 0);
    m.fill.assign(static_cast<std::size_t>(m.opt.pages), 0);
    m.table.resize(static_cast<std::size_t>(opt.batch));
    m.length.assign(static_cast<std::size_t>(opt.batch), 0);
    m.last.assign(static_cast<std::size_t>(opt.batch), -1);
}

KvCache::~KvCache() = default;

const KvCacheOptions& KvCache::options() const { return impl_->opt; }
int KvCache::rank() const { return impl_->rank; }
int KvCache::ranks() const { return impl_->P; }
int KvCache::owner(std::int64_t seq, std::int64_t pos) const {
    impl_->check_seq(seq, "owner");
    require(pos >= 0 && pos < impl_->opt.capacity, "pos", "must be in [0, ", impl_->opt.capacity, "), got ", pos);
    return impl_->owner(seq, pos);
}
std::int64_t KvCache::length(std::int64_t seq) const {
    impl_->check_seq(seq, "length");
    return impl_->length[static_cast<std::size_t>(seq)];
}
std::int64_t KvCache::pages_used() const { return impl_->used; }
std::int64_t KvCache::pages_total() const { return impl_->opt.pages; }
std::int64_t KvCache::tokens_held() const {
    std::int64_t n = 0;
    for (std::int64_t i = 0; i < impl_->used; ++i) n += impl_->fill[static_cast<std::size_t>(i)];
    return n;
}
std::uint64_t KvCache::bytes_for(const KvCacheOptions& opt, int ranks) {
    return static_cast<std::uint64_t>(pages_of(opt, ranks)) *
           static_cast<std::uint64_t>(page_bytes_of(opt) + opt.page_tokens * static_cast<std::int64_t>(sizeof(std::int64_t)));
}
std::uint64_t KvCache::bytes() const { return bytes_for(impl_->opt, impl_->P); }

void KvCache::write(std::int64_t seq, const std::int64_t* pos, std::int64_t n, const TensorView& k, const TensorView& v,
                    std::int64_t entry) {
    Impl& m = *impl_;
    m.check_seq(seq, "write");
    require(n >= 0, "write", "row count must be >= 0, got ", n);
    if (n == 0) return;
    require(pos != nullptr, "pos", "is null for ", n, " rows");
    for (const TensorView* t : {&k, &v}) {
        const char* name = t == &k ? "k" : "v";
        require(t->rank == 4 && t->device == Device::cpu && t->data, name, "must be a CPU view [B, S, Hkv, D]");
        require(t->shape[2] == m.opt.kv_heads && t->shape[3] == m.D, name, "must have ", m.opt.kv_heads,
                " kv heads of dim ", m.D, " (the cache's), got ", t->shape[2], " x ", t->shape[3]);
        require(t->shape[1] >= n, name, "has ", t->shape[1], " rows, fewer than n = ", n);
        require(entry >= 0 && entry < t->shape[0], "entry", "must be in [0, ", t->shape[0], "), got ", entry);
    }
    std::int64_t prev = m.last[static_cast<std::size_t>(seq)];
    for (std::int64_t i = 0; i < n; ++i) {
        m.check_position(seq, pos[i], prev);
        prev = pos[i];
    }
    m.require_room(seq, n);
    for (std::int64_t i = 0; i < n; ++i) m.add_row(seq, pos[i], k, v, entry, i);
    m.last[static_cast<std::size_t>(seq)] = prev;
}

void KvCache::sync_lengths() {
    Impl& m = *impl_;
    std::vector<double> l(static_cast<std::size_t>(m.opt.batch));
    for (std::size_t s = 0; s < l.size(); ++s) l[s] = static_cast<double>(std::max(m.length[s], m.last[s] + 1));
    if (m.comm) m.comm->all_reduce_max(l.data(), l.size());
    for (std::size_t s = 0; s < l.size(); ++s) m.length[s] = static_cast<std::int64_t>(l[s]);
}

void KvCache::fill_synth(std::uint64_t seed, std::int64_t seq, std::int64_t n, int threads) {
    Impl& m = *impl_;
    m.check_seq(seq, "fill_synth");
    const std::int64_t from = m.length[static_cast<std::size_t>(seq)];
    require(n >= from && n <= m.opt.capacity, "fill_synth", "length must be in [", from, ", ", m.opt.capacity, "], got ", n);
    std::vector<std::int64_t> mine;
    for (std::int64_t p = from; p < n; ++p)
        if (m.owner(seq, p) == m.rank) mine.push_back(p);
    const std::int64_t cnt = static_cast<std::int64_t>(mine.size());
    if (cnt) m.check_position(seq, mine.front(), m.last[static_cast<std::size_t>(seq)]);
    m.require_room(seq, cnt);
    std::vector<std::pair<std::int64_t, std::int64_t>> slots(static_cast<std::size_t>(cnt));
    for (std::int64_t i = 0; i < cnt; ++i) slots[static_cast<std::size_t>(i)] = m.next_slot(seq);
    const std::int64_t H = m.opt.kv_heads, D = m.D;
    const int nt = threads > 0 ? threads : omp_get_max_threads();
#pragma omp parallel num_threads(nt)
    {
        std::vector<float> kr(static_cast<std::size_t>(H * D)), vr(kr.size());
#pragma omp for schedule(static)
        for (std::int64_t i = 0; i < cnt; ++i) {
            const std::int64_t p = mine[static_cast<std::size_t>(i)];
            for (std::int64_t h = 0; h < H; ++h)
                for (std::int64_t d = 0; d < D; ++d) {
                    kr[static_cast<std::size_t>(h * D + d)] = synth_value(seed, SynthTensor::k, seq, p, h, d);
                    vr[static_cast<std::size_t>(h * D + d)] = synth_value(seed, SynthTensor::v, seq, p, h, d);
                }
            m.put(slots[static_cast<std::size_t>(i)].first, slots[static_cast<std::size_t>(i)].second, p, kr.data(),
                  vr.data());
        }
    }
    if (cnt) m.last[static_cast<std::size_t>(seq)] = mine.back();
    m.length[static_cast<std::size_t>(seq)] = n;
}

std::unique_ptr<KvCache> KvCache::gathered(int root) const {
    const Impl& m = *impl_;
    require(root >= 0 && root < m.P, "root", "must be in [0, ", m.P, "), got ", root);
    // This rank's pages in sequence order, and per page (sequence, fill).
    std::vector<std::int64_t> ids, meta;
    for (std::int64_t s = 0; s < m.opt.batch; ++s)
        for (std::int64_t id : m.table[static_cast<std::size_t>(s)]) {
            ids.push_back(id);
            meta.push_back(s);
            meta.push_back(m.fill[static_cast<std::size_t>(id)]);
        }
    std::vector<std::int64_t> counts(static_cast<std::size_t>(m.P), 0);
    counts[static_cast<std::size_t>(m.rank)] = static_cast<std::int64_t>(ids.size());
    if (m.comm) m.comm->all_reduce_sum(counts.data(), counts.size());
    std::int64_t total = 0;
    for (std::int64_t c : counts) total += c;
    const std::size_t pbytes = static_cast<std::size_t>(m.page_bytes);
    const std::size_t posbytes = static_cast<std::size_t>(m.pt) * sizeof(std::int64_t);
    const std::size_t each = pbytes + posbytes;
    if (m.rank != root) {  // this rank's pages (bytes, then positions) to root
        if (ids.empty()) return nullptr;
        std::vector<unsigned char> blob(ids.size() * each);
        for (std::size_t i = 0; i < ids.size(); ++i) {
            std::memcpy(blob.data() + i * each, m.page(ids[i]), pbytes);
            std::memcpy(blob.data() + i * each + pbytes, m.pos.data() + ids[i] * m.pt, posbytes);
        }
        m.comm->note_step("kv cache gather", 0);
        comm::Request a = m.comm->isend(meta.data(), meta.size() * sizeof(std::int64_t), root, 901);
        comm::Request b = m.comm->isend(blob.data(), blob.size(), root, 902);
        m.comm->flush();
        m.comm->wait(a);
        m.comm->wait(b);
        return nullptr;
    }
    KvCacheOptions o = m.opt;
    o.pages = std::max<std::int64_t>(total, 1);
    o.placement = KvPlacement::round_robin;
    auto out = std::make_unique<KvCache>(nullptr, o);
    Impl& g = *out->impl_;
    // Every rank's pages in rank order: each sequence's pages on root are grouped by rank.
    for (int src = 0; src < m.P; ++src) {
        const std::size_t np = static_cast<std::size_t>(counts[static_cast<std::size_t>(src)]);
        if (np == 0) continue;
        std::vector<std::int64_t> sm = meta;
        std::vector<unsigned char> blob;
        if (src != root) {
            sm.assign(2 * np, 0);
            blob.resize(np * each);
            m.comm->note_step("kv cache gather", src);
            comm::Request a = m.comm->irecv(sm.data(), sm.size() * sizeof(std::int64_t), src, 901);
            comm::Request b = m.comm->irecv(blob.data(), blob.size(), src, 902);
            m.comm->flush();
            m.comm->wait(a);
            m.comm->wait(b);
        }
        for (std::size_t i = 0; i < np; ++i) {
            const std::int64_t s = sm[2 * i], nid = g.used++;
            const unsigned char* pg = src == root ? m.page(ids[i]) : blob.data() + i * each;
            const void* ps = src == root ? static_cast<const void*>(m.pos.data() + ids[i] * m.pt) : blob.data() + i * each + pbytes;
            std::memcpy(g.page(nid), pg, pbytes);
            std::memcpy(g.pos.data() + nid * m.pt, ps, posbytes);
            g.fill[static_cast<std::size_t>(nid)] = sm[2 * i + 1];
            g.table[static_cast<std::size_t>(s)].push_back(nid);
        }
    }
    g.length = m.length;
    return out;
}

namespace {

// Shapes of a decode step's arguments against the cache.
void check_args(const KvCache::Impl& m, const DecodeArgs& a, bool appending) {
    const TensorView& q = a.q;
    require(q.rank == 4 && q.device == Device::cpu, "q", "must be a CPU view [B, T, Hq, D]");
    require(q.shape[0] == m.opt.batch, "q.shape[0]", "must equal the cache's batch (", m.opt.batch, "), got ", q.shape[0]);
    require(q.shape[1] >= 1, "q.shape[1]", "new tokens per sequence must be >= 1, got ", q.shape[1]);
    require(q.shape[3] == m.D, "q.shape[3]", "head dim must equal the cache's (", m.D, "), got ", q.shape[3]);
    require(q.shape[2] >= 1 && q.shape[2] % m.opt.kv_heads == 0, "q.shape[2]", "query heads (", q.shape[2],
            ") must be a multiple of the cache's kv heads (", m.opt.kv_heads, ")");
    require(q.data != nullptr, "q.data", "is null");
    require(a.pattern != nullptr, "pattern", "is null");
    require(a.o != nullptr && a.lse != nullptr, "o/lse", "is null");
    if (appending)
        for (const TensorView* t : {&a.k, &a.v}) {
            const char* name = t == &a.k ? "k" : "v";
            require(t->rank == 4 && t->device == Device::cpu && t->data, name, "must be a CPU view [B, T, Hkv, D]");
            require(t->shape[0] == q.shape[0] && t->shape[1] == q.shape[1] && t->shape[2] == m.opt.kv_heads &&
                        t->shape[3] == m.D,
                    name, "must be [", q.shape[0], ", ", q.shape[1], ", ", m.opt.kv_heads, ", ", m.D, "], got [",
                    t->shape[0], ", ", t->shape[1], ", ", t->shape[2], ", ", t->shape[3], "]");
        }
    else
        for (std::int64_t s = 0; s < m.opt.batch; ++s)
            require(m.length[static_cast<std::size_t>(s)] >= q.shape[1], "q", "sequence ", s, " holds ",
                    m.length[static_cast<std::size_t>(s)], " tokens, fewer than the ", q.shape[1],
                    " queries that would sit at its last positions");
}

// Runs the kernel over this rank's pages of kv heads [g0, g1) for the query heads of q (a view of
// those heads' rows); partial O in o ([B, T, Hq', D] fp32), LSE in lse.
void local_partial(KvCache::Impl& m, const TensorView& q, std::int64_t g0, std::int64_t g1, const DecodeArgs& a,
                   int threads, float* o, float* lse, DecodeStats& st) {
    const std::int64_t B = q.shape[0], T = q.shape[1];
    m.pages_for_kernel(m.kpages, m.kbegin);
    m.qpos.resize(static_cast<std::size_t>(B * T));
    for (std::int64_t s = 0; s < B; ++s)
        for (std::int64_t i = 0; i < T; ++i)
            m.qpos[static_cast<std::size_t>(s * T + i)] = m.length[static_cast<std::size_t>(s)] - T + i;
    kernels::DecodeParams p;
    p.q = q;
    p.q_pos = m.qpos.data();
    p.pages = m.kpages.data();
    p.page_begin = m.kbegin.data();
    p.kv_dtype = m.opt.dtype;
    p.kv_heads = m.opt.kv_heads;
    p.kv_head_offset = g0;
    p.q_kv_heads = g1 - g0;
    p.page_tokens = m.pt;
    p.pattern = a.pattern;
    p.head_offset = a.head_offset + g0 * (a.q.shape[2] / m.opt.kv_heads);
    p.o = o;
    p.lse = lse;
    p.threads = threads;
    p.blocks_read = &st.blocks_read;
    p.blocks_skipped = &st.blocks_skipped;
    if (g1 > g0) kernels::decode_cpu(p);
}

// Collective: every rank's verdict on its own arguments (err: why it refuses), its new tokens per
// sequence, query heads and whether it appends, agreed in one small all-reduce before anything is
// written: a refusal, or shapes that differ between ranks (the combine's sizes follow from them), throw
// on every rank.
void agree_step(KvCache::Impl& m, const DecodeArgs& a, bool appending, const std::string& err) {
    if (m.P > 1) {
        const bool ok = err.empty();
        const double T = ok ? static_cast<double>(a.q.shape[1]) : 0.0, H = ok ? static_cast<double>(a.q.shape[2]) : 0.0;
        const double ap = appending ? 1.0 : 0.0;
        double v[7] = {ok ? 0.0 : 1.0 + m.rank, T, -T, H, -H, ap, -ap};
        m.comm->note_step("decode agreement", 0);
        m.comm->all_reduce_max(v, 7);
        if (ok && v[0] != 0.0)
            throw Error("decode: rank " + std::to_string(static_cast<int>(v[0]) - 1) + " refused the step (see its message)");
        if (ok)
            require(v[1] == -v[2] && v[3] == -v[4] && v[5] == -v[6], "q",
                    "the new tokens (shape[1]), the query heads (shape[2]) and whether k and v are given must be the "
                    "same on every rank; the ranks hold ", -v[2], " to ", v[1], " tokens and ", -v[4], " to ", v[3],
                    " heads", v[5] != -v[6] ? ", and some append while others do not" : "");
    }
    if (!err.empty()) throw Error(err);
}

}  // namespace

void decode_refuse(KvCache& cache, const std::string& why) {
    agree_step(cache.impl(), DecodeArgs{}, false, why.empty() ? std::string("decode: refused") : why);
    throw Error(why);  // agree_step has thrown already
}

DecodeStats decode_step(KvCache& cache, const DecodeArgs& a, const DecodeOptions& opt) {
    KvCache::Impl& m = cache.impl();
    const auto t0 = Clock::now();
    DecodeStats st;
    const bool appending = a.k.data != nullptr;
    std::string err;
    KvCache::Impl::Undo undo;
    bool appended = false;
    const std::int64_t B = a.q.shape[0], T = a.q.shape[1], Hq = a.q.shape[2], D = a.q.shape[3];
    const std::size_t nl = static_cast<std::size_t>(std::max<std::int64_t>(B * Hq * T, 0));
    const std::size_t no = static_cast<std::size_t>(std::max<std::int64_t>(B * T * Hq * D, 0));
    // The partial: [status, lse, o]; status 1 marks a rank that refused the step.
    m.part.assign(1 + nl + no, 0.0f);
    float* lse = m.part.data() + 1;
    float* o = lse + nl;
    try {
        require(opt.threads >= 0, "threads", "must be >= 0 (0 = all), got ", opt.threads);
        check_args(m, a, appending);
    } catch (const Error& e) {
        err = e.what();
    }
    agree_step(m, a, appending, err);
    try {
        const auto ta = Clock::now();
        if (appending) {
            undo = m.append(a.k, a.v);
            appended = true;
        }
        st.append_s = since(ta);
        const auto tk = Clock::now();
        local_partial(m, a.q, 0, m.opt.kv_heads, a, opt.threads, o, lse, st);
        st.kernel_s = since(tk);
    } catch (const Error& e) {
        err = e.what();
        m.part.assign(1 + nl + no, 0.0f);
        lse = m.part.data() + 1;
        o = lse + nl;
        m.part[0] = 1.0f;
        std::fill(lse, lse + nl, kNegInf);
    }
    const auto tc = Clock::now();
    int failed = m.part[0] != 0.0f ? m.rank : -1;
    if (m.P == 1) {
        if (failed < 0) {
            std::copy(o, o + no, a.o);
            std::copy(lse, lse + nl, a.lse);
        }
    } else if (opt.combine == DecodeCombine::allgather) {
        const std::size_t each = m.part.size();
        m.gathered.resize(each * static_cast<std::size_t>(m.P));
        std::vector<std::size_t> bytes(static_cast<std::size_t>(m.P), each * sizeof(float)), offs(bytes.size());
        for (std::size_t r = 0; r < offs.size(); ++r) offs[r] = r * each * sizeof(float);
        m.comm->note_step("decode combine (all-gather)", 0);
        m.comm->all_gather_v(m.part.data(), m.gathered.data(), bytes.data(), offs.data());
        st.bytes_sent = each * sizeof(float);
        st.bytes_received = (static_cast<std::uint64_t>(m.P) - 1) * each * sizeof(float);
        for (int r = 0; r < m.P && failed < 0; ++r)
            if (m.gathered[static_cast<std::size_t>(r) * each] != 0.0f) failed = r;
        if (failed < 0) {
            // Rank 0's partial, then each further rank's merged in, in rank order: the same bits everywhere.
            const float* g = m.gathered.data();
            std::copy(g + 1 + nl, g + 1 + nl + no, a.o);
            std::copy(g + 1, g + 1 + nl, a.lse);
            const TensorView acc = contiguous_view(a.o, DType::f32, B, T, Hq, D);
            for (int r = 1; r < m.P; ++r) {
                const float* pr = g + static_cast<std::size_t>(r) * each;
                const TensorView onew = contiguous_view(const_cast<float*>(pr + 1 + nl), DType::f32, B, T, Hq, D);
                kernels::merge_partial(acc, a.lse, onew, pr + 1, opt.threads);
            }
        }
    } else {
        // max of the LSEs (and of the status), then the sum of w = exp(lse - max) and of O * w.
        m.red.assign(1 + nl, 0.0);
        m.red[0] = m.part[0];
        for (std::size_t i = 0; i < nl; ++i) m.red[1 + i] = lse[i];
        m.comm->note_step("decode combine (all-reduce max)", 0);
        m.comm->all_reduce_max(m.red.data(), m.red.size());
        if (m.red[0] != 0.0) failed = failed >= 0 ? failed : m.P;  // some rank refused
        std::vector<double> mx(m.red.begin() + 1, m.red.end());
        m.red.assign(nl + no, 0.0);
        if (failed < 0)
            for (std::int64_t s = 0; s < B; ++s)
                for (std::int64_t h = 0; h < Hq; ++h)
                    for (std::int64_t i = 0; i < T; ++i) {
                        const std::size_t li = static_cast<std::size_t>((s * Hq + h) * T + i);
                        if (mx[li] == -std::numeric_limits<double>::infinity() || lse[li] == kNegInf) continue;
                        const double w = std::exp(static_cast<double>(lse[li]) - mx[li]);
                        m.red[li] = w;
                        const float* orow = o + ((s * T + i) * Hq + h) * D;
                        double* dst = m.red.data() + nl + static_cast<std::size_t>(((s * T + i) * Hq + h) * D);
                        for (std::int64_t d = 0; d < D; ++d) dst[d] = w * orow[d];
                    }
        m.comm->note_step("decode combine (all-reduce sum)", 0);
        m.comm->all_reduce_sum(m.red.data(), m.red.size());
        st.bytes_sent = (1 + nl) * sizeof(double) + (nl + no) * sizeof(double);
        st.bytes_received = st.bytes_sent;
        if (failed < 0)
            for (std::int64_t s = 0; s < B; ++s)
                for (std::int64_t h = 0; h < Hq; ++h)
                    for (std::int64_t i = 0; i < T; ++i) {
                        const std::size_t li = static_cast<std::size_t>((s * Hq + h) * T + i);
                        const double w = m.red[li];
                        float* orow = a.o + ((s * T + i) * Hq + h) * D;
                        const double* src = m.red.data() + nl + static_cast<std::size_t>(((s * T + i) * Hq + h) * D);
                        if (!(w > 0.0)) {
                            std::fill(orow, orow + D, 0.0f);
                            a.lse[li] = w == 0.0 ? kNegInf : static_cast<float>(w);
                            continue;
                        }
                        for (std::int64_t d = 0; d < D; ++d) orow[d] = static_cast<float>(src[d] / w);
                        a.lse[li] = static_cast<float>(mx[li] + std::log(w));
                    }
    }
    st.combine_s = since(tc);
    st.total_s = since(t0);
    if (failed >= 0) {
        if (appended) m.undo(undo);
        if (!err.empty()) throw Error(err);
        if (failed < m.P) throw Error("decode: rank " + std::to_string(failed) + " refused the step (see its message)");
        throw Error("decode: a rank refused the step (see its message)");
    }
    return st;
}

DecodeStats decode_pass_q(KvCache& cache, const DecodeArgs& a, const DecodeOptions& opt, std::int64_t* heads_begin,
                          std::int64_t* heads_end) {
    KvCache::Impl& m = cache.impl();
    const auto t0 = Clock::now();
    DecodeStats st;
    check_args(m, a, false);
    const std::int64_t B = a.q.shape[0], T = a.q.shape[1], Hq = a.q.shape[2], D = a.q.shape[3];
    const std::int64_t H = m.opt.kv_heads, G = Hq / H;
    const int P = m.P, r = m.rank;
    // Chunk c: kv heads [c * H / P, (c + 1) * H / P) and their query heads.
    auto g0 = [&](int c) { return static_cast<std::int64_t>(c) * H / P; };
    auto g1 = [&](int c) { return static_cast<std::int64_t>(c + 1) * H / P; };
    auto size_of = [&](int c) {  // floats of a travelling chunk: q, o, lse
        const std::int64_t hc = (g1(c) - g0(c)) * G;
        return static_cast<std::size_t>(B * T * hc * D * 2 + B * hc * T);
    };
    std::vector<float> cur(size_of(r)), nxt, part, plse;
    // Chunk r's queries in fp32, its running O zero and LSE -inf.
    {
        const std::int64_t hc = (g1(r) - g0(r)) * G;
        float* q = cur.data();
        for (std::int64_t s = 0; s < B; ++s)
            for (std::int64_t i = 0; i < T; ++i)
                for (std::int64_t h = 0; h < hc; ++h)
                    for (std::int64_t d = 0; d < D; ++d)
                        q[((s * T + i) * hc + h) * D + d] =
                            load_as_f32(a.q.data, a.q.dtype, a.q.offset(s, i, g0(r) * G + h, d));
        std::fill(cur.begin() + B * T * hc * D * 2, cur.end(), kNegInf);
    }
    for (int step = 0; step < P; ++step) {
        const int c = ((r - step) % P + P) % P;
        const std::int64_t hc = (g1(c) - g0(c)) * G;
        float* q = cur.data();
        float* o = q + B * T * hc * D;
        float* lse = o + B * T * hc * D;
        if (hc > 0) {
            const auto tk = Clock::now();
            const TensorView qv = contiguous_view(q, DType::f32, B, T, hc, D);
            if (step == 0) {
                local_partial(m, qv, g0(c), g1(c), a, opt.threads, o, lse, st);
            } else {
                part.resize(static_cast<std::size_t>(B * T * hc * D));
                plse.resize(static_cast<std::size_t>(B * hc * T));
                local_partial(m, qv, g0(c), g1(c), a, opt.threads, part.data(), plse.data(), st);
                kernels::merge_partial(contiguous_view(o, DType::f32, B, T, hc, D), lse,
                                       contiguous_view(part.data(), DType::f32, B, T, hc, D), plse.data(), opt.threads);
            }
            st.kernel_s += since(tk);
        }
        if (P == 1) break;
        // Pass the chunk on; after the last step it goes home (to rank c), which is the next rank too.
        const int to = (r + 1) % P, from = (r - 1 + P) % P;
        const int cin = step + 1 < P ? ((r - step - 1) % P + P) % P : r;
        nxt.resize(size_of(cin));
        m.comm->note_step("decode pass-q", step);
        comm::Request rq = m.comm->irecv(nxt.data(), nxt.size() * sizeof(float), from, 900);
        comm::Request sq = m.comm->isend(cur.data(), cur.size() * sizeof(float), to, 900);
        m.comm->flush();
        m.comm->wait(rq);
        m.comm->wait(sq);
        st.bytes_sent += cur.size() * sizeof(float);
        st.bytes_received += nxt.size() * sizeof(float);
        cur.swap(nxt);
    }
    // cur is chunk r, complete.
    const std::int64_t hc = (g1(r) - g0(r)) * G, h0 = g0(r) * G;
    const float* o = cur.data() + B * T * hc * D;
    const float* lse = o + B * T * hc * D;
    for (std::int64_t s = 0; s < B; ++s)
        for (std::int64_t i = 0; i < T; ++i)
            for (std::int64_t h = 0; h < hc; ++h) {
                std::copy(o + ((s * T + i) * hc + h) * D, o + ((s * T + i) * hc + h + 1) * D,
                          a.o + ((s * T + i) * Hq + h0 + h) * D);
                a.lse[(s * Hq + h0 + h) * T + i] = lse[(s * hc + h) * T + i];
            }
    if (heads_begin) *heads_begin = h0;
    if (heads_end) *heads_end = h0 + hc;
    st.total_s = since(t0);
    return st;
}

}  // namespace longattn
