// CPU decode kernel (kernels/attention.hpp, DecodeParams): a few query rows per sequence against the
// sequence's pages of a paged KV cache, bound by the bandwidth of reading the pages.
//
// Work is split into tasks of (sequence, a chunk of kChunkPages consecutive pages, a group of kv heads),
// the chunks depending on the pages only, so the partials, and their merge in page order, are the same
// bits for any thread count (a head's arithmetic does not depend on its group). A task walks its pages
// in order and each page's heads in memory order, one stream through the cache; for each kv head it
// holds the R = G * T query rows of the head's group (G query heads, T tokens) in fp32 and reads the
// head's K and V of the page once for all of them:
//   scores  S[R][slots] = Q K^T, from the page's transposed K (slots are the vector axis), tiles of
//           kRowBlock rows (or one) by up to kMaxVecs vectors of slots in registers;
//   softmax online over the pages, the running maximum in the units of the stored score and each
//           exponent (S - m) * c in fp32 (as the flash forward does, kernels/cpu/flash_fwd.cpp);
//   values  acc[R][Dp] += P V, one vector of V loaded per (slot, dims) and used by every row.
// The storage types are converted in registers (bf16 by a shift, fp16 by the F16C/AVX-512 converts),
// so a bf16 page costs half the bytes of an fp32 one.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/attention.hpp"
#include "kernels/cpu/buffer.hpp"
#include "kernels/cpu/rows.hpp"
#include "kernels/cpu/simd.hpp"

LONGATTN_ISA_BEGIN
namespace longattn::kernels::cpu {
inline namespace LONGATTN_ISA {
namespace {

constexpr std::int64_t kChunkPages = 16;
// A score tile is kRowBlock rows by up to kMaxVecs vectors of slots: 16 accumulators of AVX-512's 32
// registers, 8 of the 16 the narrower sets have.
constexpr int kRowBlock = 4;
constexpr int kMaxVecs = kLanes == 16 ? 4 : 2;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

typedef std::uint16_t vh_u __attribute__((vector_size(2 * kLanes), aligned(2), may_alias));
typedef std::uint32_t vu __attribute__((vector_size(4 * kLanes)));

// kLanes values of storage type T at element i of base, as fp32.
template <DType T>
inline vf load_kv(const void* base, std::int64_t i) {
    if constexpr (T == DType::f32) {
        return load(static_cast<const float*>(base) + i);
    } else if constexpr (T == DType::bf16) {
        const std::uint16_t* p = static_cast<const std::uint16_t*>(base) + i;
#if LONGATTN_SIMD_LANES == 16
        const __m512i w = _mm512_maskz_cvtepu16_epi32(0xffff, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
        return (vf)_mm512_maskz_slli_epi32(0xffff, w, 16);
#elif LONGATTN_SIMD_LANES == 8 && (defined(LONGATTN_ISA_avx2) || defined(__AVX2__))
        return (vf)_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16);
#else
        const vh_u h = *reinterpret_cast<const vh_u*>(p);
        return (vf)(__builtin_convertvector(h, vu) << 16);
#endif
    } else {
        const std::uint16_t* p = static_cast<const std::uint16_t*>(base) + i;
#if LONGATTN_SIMD_LANES == 16
        // The all-lanes mask form keeps GCC 12 from warning about the unmasked form's pass-through.
        return (vf)_mm512_mask_cvtph_ps(_mm512_setzero_ps(), 0xffff, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#elif LONGATTN_SIMD_LANES == 8 && (defined(LONGATTN_ISA_avx2) || defined(__F16C__))
        return (vf)_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#else
        vf r;
        for (int j = 0; j < kLanes; ++j) r[j] = f16_to_f32(p[j]);
        return r;
#endif
    }
}

std::int64_t round_up(std::int64_t x, std::int64_t m) { return (x + m - 1) / m * m; }

inline void prefetch_span(const char* p, std::int64_t bytes) {
    for (std::int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(p + off, 0, 3);
}

struct Call {
    const DecodeParams* p = nullptr;
    std::int64_t B = 0, T = 0, Hq = 0, D = 0, Dp = 0, G = 0, Hkvq = 0, pt = 0;
    std::int64_t R = 0;               // query rows per (sequence, kv head)
    std::int64_t v_off = 0;           // elements from a page's start to its V
    float scale = 1.0f, smul = 1.0f, c2 = kLog2e, softcap = 0.0f;
    bool general = false;             // softcap or ALiBi: scores turned natural before the softmax
    std::int64_t part = 0;            // floats of one task's partial: m, l, acc per row
};

// A task: kv heads [hk0, hk1) of sequence b over the pages [page0, page1), chunk `chunk` of all the
// sequences' chunks (the partials are indexed by chunk and kv head).
struct Task {
    std::int64_t b, chunk, page0, page1, hk0, hk1;
};

// Independent accumulator sets of a tile: RB = kRowBlock rows give RB * C FMA chains, enough to hide
// the FMA latency; a single row splits its sum over sets instead (added together at the end).
template <int C, int RB>
constexpr int kSets = RB > 1 ? 1 : (8 / C > 1 ? 8 / C : 1);

// S[r][0, C vectors) for RB rows of Q (rows of D floats) against the transposed K rows (row d at
// kt + d * pt); s has rows of pt floats.
template <DType T, int C, int RB>
inline void score_tile(std::int64_t D, std::int64_t pt, const float* q, const void* kt, std::int64_t j0, float* s,
                       const char* pf, std::int64_t pf_step) {
    constexpr int NS = kSets<C, RB>;
    vf acc[NS][RB][C] = {};
    const auto step = [&](int u, std::int64_t d) {
        if (pf) prefetch_span(pf + d * pf_step, pf_step);
        vf k[C];
        for (int c = 0; c < C; ++c) k[c] = load_kv<T>(kt, d * pt + j0 + c * kLanes);
        for (int r = 0; r < RB; ++r) {
            const float x = q[r * D + d];
            for (int c = 0; c < C; ++c) acc[u][r][c] += x * k[c];
        }
    };
    std::int64_t d = 0;
    for (; d + NS <= D; d += NS)
#pragma GCC unroll 8
        for (int u = 0; u < NS; ++u) step(u, d + u);
    for (; d < D; ++d) step(0, d);
    for (int u = 1; u < NS; ++u)
        for (int r = 0; r < RB; ++r)
            for (int c = 0; c < C; ++c) acc[0][r][c] += acc[u][r][c];
    for (int r = 0; r < RB; ++r)
        for (int c = 0; c < C; ++c) store(s + r * pt + j0 + c * kLanes, acc[0][r][c]);
}

template <DType T, int RB>
void score_rows(const Call& c, const float* q, const void* kt, std::int64_t nvec, float* s, const char*& pf, std::int64_t step) {
    std::int64_t j = 0;
    for (; j + kMaxVecs <= nvec; j += kMaxVecs, pf = nullptr) score_tile<T, kMaxVecs, RB>(c.D, c.pt, q, kt, j * kLanes, s, pf, step);
    for (; j < nvec; ++j, pf = nullptr) score_tile<T, 1, RB>(c.D, c.pt, q, kt, j * kLanes, s, pf, step);
}

// The R rows in blocks of kRowBlock, then one by one. pf: the block read next (this page's V),
// prefetched during the first tile in steps over its D rows.
template <DType T>
void scores(const Call& c, const float* q, const void* kt, std::int64_t nvec, float* s, const char* pf, std::int64_t pf_bytes) {
    const std::int64_t step = round_up((pf_bytes + c.D - 1) / c.D, 64);
    std::int64_t r0 = 0;
    for (; r0 + kRowBlock <= c.R; r0 += kRowBlock) score_rows<T, kRowBlock>(c, q + r0 * c.D, kt, nvec, s + r0 * c.pt, pf, step);
    for (; r0 < c.R; ++r0) score_rows<T, 1>(c, q + r0 * c.D, kt, nvec, s + r0 * c.pt, pf, step);
}

// acc[r][0, Dp) += sum over slots k < n of P[r][k] * V[k][0, Dp) for RB rows, by C vectors of dims in
// registers, the slots streamed in order (a V row's part is contiguous).
template <DType T, int C, int RB>
inline void value_tile(const Call& c, const float* P, const void* v, std::int64_t n, std::int64_t dv, float* acc,
                       const char* pf, std::int64_t pf_step) {
    constexpr int NS = kSets<C, RB>;
    vf a[NS][RB][C] = {};
    for (int r = 0; r < RB; ++r)
        for (int j = 0; j < C; ++j) a[0][r][j] = load(acc + r * c.Dp + dv + j * kLanes);
    const auto step = [&](int u, std::int64_t k) {
        if (pf) prefetch_span(pf + k * pf_step, pf_step);
        vf x[C];
        for (int j = 0; j < C; ++j) x[j] = load_kv<T>(v, k * c.Dp + dv + j * kLanes);
        for (int r = 0; r < RB; ++r) {
            const float pr = P[r * c.pt + k];
            for (int j = 0; j < C; ++j) a[u][r][j] += pr * x[j];
        }
    };
    std::int64_t k = 0;
    for (; k + NS <= n; k += NS)
#pragma GCC unroll 8
        for (int u = 0; u < NS; ++u) step(u, k + u);
    for (; k < n; ++k) step(0, k);
    for (int u = 1; u < NS; ++u)
        for (int r = 0; r < RB; ++r)
            for (int j = 0; j < C; ++j) a[0][r][j] += a[u][r][j];
    for (int r = 0; r < RB; ++r)
        for (int j = 0; j < C; ++j) store(acc + r * c.Dp + dv + j * kLanes, a[0][r][j]);
}

template <DType T, int RB>
void value_rows(const Call& c, const float* P, const void* v, std::int64_t n, float* acc, const char*& pf, std::int64_t step) {
    std::int64_t dv = 0;
    for (; dv + kMaxVecs * kLanes <= c.Dp; dv += kMaxVecs * kLanes, pf = nullptr) value_tile<T, kMaxVecs, RB>(c, P, v, n, dv, acc, pf, step);
    for (; dv < c.Dp; dv += kLanes, pf = nullptr) value_tile<T, 1, RB>(c, P, v, n, dv, acc, pf, step);
}

// The R rows as the scores take them. pf: the block read next (the next K), prefetched during the
// first tile in steps over the slots.
template <DType T>
void accumulate_values(const Call& c, const float* P, const void* v, std::int64_t n, float* acc, const char* pf,
                       std::int64_t pf_bytes) {
    const std::int64_t step = round_up((pf_bytes + c.pt - 1) / c.pt, 64);
    std::int64_t r0 = 0;
    for (; r0 + kRowBlock <= c.R; r0 += kRowBlock) value_rows<T, kRowBlock>(c, P + r0 * c.pt, v, n, acc + r0 * c.Dp, pf, step);
    for (; r0 < c.R; ++r0) value_rows<T, 1>(c, P + r0 * c.pt, v, n, acc + r0 * c.Dp, pf, step);
}

struct Scratch {
    Buffer q, s;
    std::vector<std::uint8_t> mask;
    std::vector<float> kposf;
    Scratch(const Call& c, std::int64_t heads)
        : q(static_cast<std::size_t>(heads * c.R * c.D)), s(static_cast<std::size_t>(c.R * c.pt)),
          mask(static_cast<std::size_t>(c.T * c.pt)), kposf(static_cast<std::size_t>(c.pt)) {}
};

// The partial of (sequence b's chunk j, kv head hk): m, l, acc = O * l per row.
inline float* part_of(const Call& c, float* parts, std::int64_t chunk, std::int64_t hk) {
    return parts + (chunk * c.Hkvq + hk) * c.part;
}

// One task: the partials of its kv heads over its chunk of pages; returns the (page, kv head) blocks read.
// The pages are walked in order and each page's heads in order, the blocks read as K0 V0 K1 V1 ...; each
// block's loop prefetches the block read after it, spread over its iterations (the hardware
// prefetchers alone start on a block only after its first misses).
template <DType T>
std::int64_t run_task(const Call& c, const Task& t, Scratch& sc, float* parts) {
    const DecodeParams& p = *c.p;
    const Pattern& pat = *p.pattern;
    const std::int64_t R = c.R, D = c.D, Dp = c.Dp, pt = c.pt, nh = t.hk1 - t.hk0;
    constexpr std::int64_t kSize = T == DType::f32 ? 4 : 2;
    const std::int64_t kbytes = D * pt * kSize, vbytes = pt * Dp * kSize;
    for (std::int64_t hk = t.hk0; hk < t.hk1; ++hk) {
        float* part = part_of(c, parts, t.chunk, hk);
        std::fill(part, part + R, kNegInf);
        std::fill(part + R, part + c.part, 0.0f);
    }
    // Rows r = g * T + i of head hk: query head hk * G + g, token i.
    float* Q = sc.q.get();
    for (std::int64_t hk = t.hk0; hk < t.hk1; ++hk)
        for (std::int64_t g = 0; g < c.G; ++g)
            for (std::int64_t i = 0; i < c.T; ++i)
                load_row(p.q.data, p.q.dtype, p.q.offset(t.b, i, hk * c.G + g, 0), D, 1.0f,
                         Q + ((hk - t.hk0) * R + g * c.T + i) * D);
    const std::int64_t* qpos = p.q_pos + t.b * c.T;
    float* S = sc.s.get();
    std::int64_t read = 0;
    for (std::int64_t pi = t.page0; pi < t.page1; ++pi) {
        const KvPage& pg = p.pages[pi];
        const std::int64_t n = pg.fill;
        if (n == 0) continue;
        const BlockClass cls = pat.classify_positions(qpos, c.T, pg.pos, n);
        if (cls == BlockClass::empty) continue;
        read += nh;
        const bool masked = cls == BlockClass::partial;
        if (masked)
            for (std::int64_t i = 0; i < c.T; ++i) pat.mask_row(qpos[i], pg.pos, n, sc.mask.data() + i * pt);
        if (c.general)
            for (std::int64_t k = 0; k < n; ++k) sc.kposf[k] = static_cast<float>(pg.pos[k]);
        const char* base = static_cast<const char*>(pg.data);
        const char* next_page = pi + 1 < t.page1 ? static_cast<const char*>(p.pages[pi + 1].data) : nullptr;
        const std::int64_t nvec = (n + kLanes - 1) / kLanes;
        for (std::int64_t hk = t.hk0; hk < t.hk1; ++hk) {
            const std::int64_t kvh = p.kv_head_offset + hk;
            const char* kt = base + kvh * kbytes;
            const char* vv = base + c.v_off * kSize + kvh * vbytes;
            const char* next_k = hk + 1 < t.hk1 ? kt + kbytes
                                 : next_page ? next_page + (p.kv_head_offset + t.hk0) * kbytes : nullptr;
            float* part = part_of(c, parts, t.chunk, hk);
            float* m = part;
            float* l = part + R;
            float* acc = part + 2 * R;
            scores<T>(c, Q + (hk - t.hk0) * R * D, kt, nvec, S, vv, vbytes);
            for (std::int64_t i = 0; i < c.T; ++i) {
                const std::uint8_t* mask = sc.mask.data() + i * pt;
                for (std::int64_t g = 0; g < c.G; ++g) {
                    const std::int64_t r = g * c.T + i;
                    float* s = S + r * pt;
                    if (c.general) {
                        const float slope = pat.has_alibi() ? pat.alibi_slope(p.head_offset + hk * c.G + g) : 0.0f;
                        const float qp = static_cast<float>(qpos[i]);
                        for (std::int64_t k = 0; k < n; ++k) {
                            float x = s[k] * c.scale;
                            if (c.softcap > 0.0f) x = c.softcap * std::tanh(x / c.softcap);
                            if (slope != 0.0f) x -= slope * std::fabs(qp - sc.kposf[k]);
                            s[k] = x;
                        }
                    }
                    if (masked)
                        for (std::int64_t k = 0; k < n; ++k) s[k] = mask[k] ? s[k] : kNegInf;
                    for (std::int64_t k = n; k < nvec * kLanes; ++k) s[k] = kNegInf;
                    vf mx = splat(kNegInf);
                    for (std::int64_t j = 0; j < nvec; ++j) mx = vmax(mx, load(s + j * kLanes));
                    const float mnew = std::max(m[r], hmax(mx));
                    if (mnew == kNegInf) {  // nothing allowed yet: the row's P is 0
                        std::fill(s, s + nvec * kLanes, 0.0f);
                        continue;
                    }
                    const float alpha = m[r] == kNegInf ? 0.0f : std::exp2((m[r] - mnew) * c.c2);
                    vf sum{};
                    for (std::int64_t j = 0; j < nvec; ++j) {
                        const vf e = exp2v((load(s + j * kLanes) - mnew) * c.c2);
                        store(s + j * kLanes, e);
                        sum += e;
                    }
                    l[r] = l[r] * alpha + hsum(sum);
                    m[r] = mnew;
                    if (alpha != 1.0f)
                        for (std::int64_t d = 0; d < Dp; d += kLanes) store(acc + r * Dp + d, load(acc + r * Dp + d) * alpha);
                }
            }
            accumulate_values<T>(c, S, vv, n, acc, next_k, kbytes);
        }
    }
    return read;
}

// Merges the partials of (b, hk) over b's chunks [j0, j1) in order into o and lse.
void merge_chunks(const Call& c, const float* parts, std::int64_t b, std::int64_t hk, std::int64_t j0, std::int64_t j1) {
    const DecodeParams& p = *c.p;
    std::vector<float> sum(static_cast<std::size_t>(c.Dp));
    for (std::int64_t g = 0; g < c.G; ++g)
        for (std::int64_t i = 0; i < c.T; ++i) {
            const std::int64_t r = g * c.T + i, h = hk * c.G + g;
            float M = kNegInf;
            for (std::int64_t j = j0; j < j1; ++j) M = std::max(M, parts[(j * c.Hkvq + hk) * c.part + r]);
            float* o = p.o + ((b * c.T + i) * c.Hq + h) * c.D;
            float& lse = p.lse[(b * c.Hq + h) * c.T + i];
            float l = 0.0f;
            std::fill(sum.begin(), sum.end(), 0.0f);
            if (M != kNegInf)
                for (std::int64_t j = j0; j < j1; ++j) {
                    const float* part = parts + (j * c.Hkvq + hk) * c.part;
                    if (part[r] == kNegInf) continue;
                    const float w = std::exp2((part[r] - M) * c.c2);
                    l += part[c.R + r] * w;
                    const float* a = part + 2 * c.R + r * c.Dp;
                    for (std::int64_t d = 0; d < c.D; ++d) sum[static_cast<std::size_t>(d)] += a[d] * w;
                }
            if (!(l > 0.0f)) {
                std::fill(o, o + c.D, 0.0f);
                lse = l == 0.0f ? kNegInf : l;  // NaN stays NaN
                continue;
            }
            const float inv = 1.0f / l;
            for (std::int64_t d = 0; d < c.D; ++d) o[d] = sum[static_cast<std::size_t>(d)] * inv;
            lse = static_cast<float>(static_cast<double>(M) * c.smul + std::log(static_cast<double>(l)));
        }
}

template <DType T>
void decode_as(const Call& c, const std::vector<Task>& tasks, const std::vector<std::int64_t>& chunk0, int nt,
               std::int64_t heads_per_task, float* parts) {
    const std::int64_t ntasks = static_cast<std::int64_t>(tasks.size());
    const std::int64_t nmerge = c.B * c.Hkvq;
    std::int64_t read = 0;
#pragma omp parallel num_threads(nt) reduction(+ : read)
    {
        Scratch sc(c, heads_per_task);
#pragma omp for schedule(dynamic, 1)
        for (std::int64_t t = 0; t < ntasks; ++t) read += run_task<T>(c, tasks[static_cast<std::size_t>(t)], sc, parts);
#pragma omp for schedule(static)
        for (std::int64_t g = 0; g < nmerge; ++g) {
            const std::int64_t b = g / c.Hkvq;
            merge_chunks(c, parts, b, g % c.Hkvq, chunk0[static_cast<std::size_t>(b)], chunk0[static_cast<std::size_t>(b) + 1]);
        }
    }
    if (c.p->blocks_read) *c.p->blocks_read += read;
    if (c.p->blocks_skipped) {
        std::int64_t blocks = 0;
        for (const Task& t : tasks) blocks += (t.page1 - t.page0) * (t.hk1 - t.hk0);
        *c.p->blocks_skipped += blocks - read;
    }
}

}  // namespace

void decode(const DecodeParams& p) {
    Call c;
    c.p = &p;
    c.B = p.q.shape[0];
    c.T = p.q.shape[1];
    c.Hq = p.q.shape[2];
    c.D = p.q.shape[3];
    if (c.B * c.T * c.Hq == 0) return;
    c.Dp = kv_padded_dim(c.D);
    c.Hkvq = p.q_kv_heads ? p.q_kv_heads : p.kv_heads;
    c.G = c.Hq / c.Hkvq;
    c.pt = p.page_tokens;
    c.R = c.G * c.T;
    c.v_off = p.kv_heads * c.D * c.pt;
    const Pattern& pat = *p.pattern;
    c.general = pat.has_softcap() || pat.has_alibi();
    c.softcap = pat.has_softcap() ? pat.spec().softcap : 0.0f;
    c.scale = pat.softmax_scale(c.D);
    c.smul = c.general ? 1.0f : c.scale;
    c.c2 = c.smul * kLog2e;
    c.part = c.R * (2 + c.Dp);

    // Sequence b's pages split into chunks of kChunkPages (a sequence without pages still gets one
    // empty chunk so that its rows are written); chunk0[b] is b's first chunk. The chunks fix the bits;
    // the kv heads of a chunk are one task, or split into groups when there are too few chunks to keep
    // the threads busy (a head's arithmetic is the same in any group).
    const int nt = p.threads > 0 ? p.threads : omp_get_max_threads();
    std::vector<std::int64_t> chunk0{0};
    for (std::int64_t b = 0; b < c.B; ++b) {
        const std::int64_t pages = p.page_begin[b + 1] - p.page_begin[b];
        chunk0.push_back(chunk0.back() + std::max<std::int64_t>(1, (pages + kChunkPages - 1) / kChunkPages));
    }
    const std::int64_t groups = std::min(c.Hkvq, std::max<std::int64_t>(1, 4 * nt / chunk0.back()));
    const std::int64_t hpt = (c.Hkvq + groups - 1) / groups;
    std::vector<Task> tasks;
    for (std::int64_t b = 0; b < c.B; ++b) {
        const std::int64_t a = p.page_begin[b], z = p.page_begin[b + 1];
        for (std::int64_t j = chunk0[static_cast<std::size_t>(b)]; j < chunk0[static_cast<std::size_t>(b) + 1]; ++j) {
            const std::int64_t page0 = a + (j - chunk0[static_cast<std::size_t>(b)]) * kChunkPages;
            const std::int64_t page1 = std::min(z, page0 + kChunkPages);
            for (std::int64_t h = 0; h < c.Hkvq; h += hpt) tasks.push_back({b, j, page0, page1, h, std::min(c.Hkvq, h + hpt)});
        }
    }
    thread_local Buffer parts;
    float* buf = parts.reserve(static_cast<std::size_t>(chunk0.back() * c.Hkvq * c.part));
    switch (p.kv_dtype) {
        case DType::f32: decode_as<DType::f32>(c, tasks, chunk0, nt, hpt, buf); break;
        case DType::bf16: decode_as<DType::bf16>(c, tasks, chunk0, nt, hpt, buf); break;
        default: decode_as<DType::f16>(c, tasks, chunk0, nt, hpt, buf); break;
    }
}

}  // namespace LONGATTN_ISA
}  // namespace longattn::kernels::cpu
LONGATTN_ISA_END
