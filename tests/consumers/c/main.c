/* A C program built against an installed longattn only (pkg-config longattn-mpi): causal attention
 * over 777 tokens of two documents, zigzag-sharded over the ranks of MPI_COMM_WORLD, forward and
 * backward through the C interface, each rank's O, LSE, dQ, dK, dV checked against a one-process
 * context computing the whole sequence; then a bad call, refused on every rank with a message; then
 * decoding: the rows prefill a KV cache sharded over the ranks, three steps append a token each, and
 * every step's O and LSE are checked against a one-process cache holding the whole sequence. */
#include <dlpack/dlpack.h>
#include <longattn_mpi.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { N = 777, B = 1, HQ = 4, HKV = 2, D = 32 };

static float value(int which, int64_t pos, int h, int d) {
    return (float)(0.5 * sin(0.37 * (double)pos + 1.3 * h + 0.11 * d + 2.0 * which));
}

/* [1, S, H, D] float32 rows at the given global positions. */
static float* rows(int which, const int64_t* pos, int64_t S, int H) {
    float* x = malloc(sizeof(float) * (size_t)(S * H * D) + 1);
    for (int64_t s = 0; s < S; ++s)
        for (int h = 0; h < H; ++h)
            for (int d = 0; d < D; ++d) x[(s * H + h) * D + d] = value(which, pos[s], h, d);
    return x;
}

static DLTensor tensor(float* data, int ndim, int64_t* shape) {
    DLTensor t;
    memset(&t, 0, sizeof(t));
    t.data = data;
    t.device.device_type = kDLCPU;
    t.ndim = ndim;
    t.dtype.code = kDLFloat;
    t.dtype.bits = 32;
    t.dtype.lanes = 1;
    t.shape = shape;
    return t;
}

/* O, LSE, dQ, dK, dV of S rows at pos, through ctx. */
typedef struct {
    float *o, *lse, *dq, *dk, *dv;
} Result;

static int run(la_context* ctx, const la_pattern* pat, const int64_t* pos, int64_t S, Result* r) {
    float *q = rows(0, pos, S, HQ), *k = rows(1, pos, S, HKV), *v = rows(2, pos, S, HKV), *dout = rows(3, pos, S, HQ);
    r->o = calloc((size_t)(S * HQ * D) + 1, sizeof(float));
    r->lse = calloc((size_t)(HQ * S) + 1, sizeof(float));
    r->dq = calloc((size_t)(S * HQ * D) + 1, sizeof(float));
    r->dk = calloc((size_t)(S * HKV * D) + 1, sizeof(float));
    r->dv = calloc((size_t)(S * HKV * D) + 1, sizeof(float));
    int64_t sq[4] = {B, S, HQ, D}, skv[4] = {B, S, HKV, D}, sl[3] = {B, HQ, S};
    DLTensor tq = tensor(q, 4, sq), tk = tensor(k, 4, skv), tv = tensor(v, 4, skv), to = tensor(r->o, 4, sq),
             tl = tensor(r->lse, 3, sl), tdo = tensor(dout, 4, sq), tdq = tensor(r->dq, 4, sq),
             tdk = tensor(r->dk, 4, skv), tdv = tensor(r->dv, 4, skv);
    int st = la_forward(ctx, pat, pos, &tq, &tk, &tv, &to, &tl);
    if (st == LA_OK) st = la_backward(ctx, pat, pos, &tq, &tk, &tv, &to, &tdo, &tl, &tdq, &tdk, &tdv, 0);
    if (st != LA_OK) fprintf(stderr, "c-consumer: call failed (%d): %s\n", st, la_last_error());
    free(q), free(k), free(v), free(dout);
    return st;
}

/* A cache of the N tokens: this rank's rows (pos[0, S)) written in place, bf16 pages of 16 slots. */
static la_kv_cache* prefill(la_context* ctx, const int64_t* pos, int64_t S) {
    la_kv_cache_options co;
    la_kv_cache_options_default(&co);
    co.capacity = N + 8;
    co.kv_heads = HKV;
    co.head_dim = D;
    co.page_tokens = 16;
    la_kv_cache* c = NULL;
    float *k = rows(1, pos, S, HKV), *v = rows(2, pos, S, HKV);
    int64_t skv[4] = {B, S, HKV, D};
    DLTensor tk = tensor(k, 4, skv), tv = tensor(v, 4, skv);
    if (la_kv_cache_create(ctx, &co, &c) != LA_OK || la_kv_cache_write(c, 0, pos, S, &tk, &tv, 0) != LA_OK ||
        la_kv_cache_sync_lengths(c) != LA_OK) {
        fprintf(stderr, "c-consumer: kv cache: %s\n", la_last_error());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    free(k), free(v);
    return c;
}

/* Three decode steps of one new token (positions N, N + 1, N + 2) through the sharded cache and the
 * one-process one; returns 1 where they differ or a call fails. Then a step with rank 0's q missing. */
static int decode(la_context* dist, la_context* local, const int64_t* pos, int64_t S, int rank) {
    int64_t all[N];
    for (int64_t i = 0; i < N; ++i) all[i] = i;
    la_kv_cache *cd = prefill(dist, pos, S), *cl = prefill(local, all, N);
    la_pattern pat;
    la_pattern_default(&pat);
    pat.causal = 1;
    int bad = 0;
    double err = 0;
    for (int64_t t = N; t < N + 3; ++t) {
        float *q = rows(0, &t, 1, HQ), *k = rows(1, &t, 1, HKV), *v = rows(2, &t, 1, HKV);
        float od[HQ * D], ol[HQ * D], ld[HQ], ll[HQ];
        int64_t sq[4] = {B, 1, HQ, D}, skv[4] = {B, 1, HKV, D}, sl[3] = {B, HQ, 1};
        DLTensor tq = tensor(q, 4, sq), tk = tensor(k, 4, skv), tv = tensor(v, 4, skv), tod = tensor(od, 4, sq),
                 tol = tensor(ol, 4, sq), tld = tensor(ld, 3, sl), tll = tensor(ll, 3, sl);
        if (la_decode_step(cd, &pat, &tq, &tk, &tv, &tod, &tld, t % 2 ? LA_COMBINE_ALLREDUCE : LA_COMBINE_ALLGATHER, 1) != LA_OK ||
            la_decode_step(cl, &pat, &tq, &tk, &tv, &tol, &tll, LA_COMBINE_ALLGATHER, 1) != LA_OK) {
            fprintf(stderr, "c-consumer: decode step: %s\n", la_last_error());
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        for (int i = 0; i < HQ * D; ++i) err = fmax(err, fabs(od[i] - ol[i]));
        for (int h = 0; h < HQ; ++h) err = fmax(err, fabs(ld[h] - ll[h]));
        free(q), free(k), free(v);
    }
    int64_t len = 0, held = 0, total = 0;
    la_kv_cache_length(cd, 0, &len);
    la_kv_cache_stats(cd, NULL, NULL, &held, NULL);
    MPI_Allreduce(&held, &total, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
    bad |= !(err <= 2e-5) || len != N + 3 || total != N + 3;
    printf("c-consumer: rank %d: decode, 3 steps over a %lld-token cache (%lld tokens here): max |sharded - one process| %.2e\n",
           rank, (long long)len, (long long)held, err);
    /* Rank 0's q missing: every rank's step fails, the cache unchanged. */
    float o[HQ * D], l[HQ];
    int64_t sq[4] = {B, 1, HQ, D}, sl[3] = {B, HQ, 1};
    DLTensor to = tensor(o, 4, sq), tl = tensor(l, 3, sl), tq = tensor(o, 4, sq);
    const int st = la_decode_step(cd, &pat, rank == 0 ? NULL : &tq, NULL, NULL, &to, &tl, LA_COMBINE_ALLGATHER, 1);
    const char* want = rank == 0 ? "q: is NULL" : "rank 0 refused the step";
    char msg[512];
    snprintf(msg, sizeof(msg), "%s", la_last_error());
    la_kv_cache_length(cd, 0, &len);
    if (st != LA_ERR_ARGUMENT || strstr(msg, want) == NULL || len != N + 3) {
        fprintf(stderr, "c-consumer: a decode step without q on rank 0 gave status %d, '%s', length %lld\n", st, msg,
                (long long)len);
        bad = 1;
    }
    la_kv_cache_destroy(cd);
    la_kv_cache_destroy(cl);
    return bad;
}

int main(int argc, char** argv) {
    int provided = 0, rank = 0, size = 1, bad = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (la_version_number() != LA_VERSION_MAJOR * 10000 + LA_VERSION_MINOR * 100 + LA_VERSION_PATCH) bad = 1;

    la_options opt;
    la_options_default(&opt);
    opt.strategy = LA_RING;
    opt.threads = 1;
    opt.timeout_s = 60;
    la_pattern pat;
    la_pattern_default(&pat);
    const int64_t docs[] = {0, 300, N};
    pat.causal = 1;
    pat.doc_bounds = docs;
    pat.n_doc_bounds = 3;

    la_context *dist = NULL, *local = NULL;
    if (la_context_create_mpi(MPI_COMM_WORLD, &opt, &dist) != LA_OK || la_context_create_local(&opt, &local) != LA_OK) {
        fprintf(stderr, "c-consumer: %s\n", la_last_error());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    int64_t S = 0, all[N];
    la_layout_positions(LA_ZIGZAG, N, size, rank, NULL, &S);
    int64_t* pos = malloc(sizeof(int64_t) * (size_t)S + 1);
    la_layout_positions(LA_ZIGZAG, N, size, rank, pos, &S);
    for (int64_t i = 0; i < N; ++i) all[i] = i;

    Result mine, whole;
    if (run(dist, &pat, pos, S, &mine) != LA_OK || run(local, &pat, all, N, &whole) != LA_OK) MPI_Abort(MPI_COMM_WORLD, 1);
    /* This rank's rows against the same rows of the whole sequence. */
    double err[5] = {0, 0, 0, 0, 0};
    for (int64_t s = 0; s < S; ++s) {
        const int64_t g = pos[s];
        for (int h = 0; h < HQ; ++h) {
            err[1] = fmax(err[1], fabs(mine.lse[h * S + s] - whole.lse[h * N + g]));
            for (int d = 0; d < D; ++d) {
                err[0] = fmax(err[0], fabs(mine.o[(s * HQ + h) * D + d] - whole.o[(g * HQ + h) * D + d]));
                err[2] = fmax(err[2], fabs(mine.dq[(s * HQ + h) * D + d] - whole.dq[(g * HQ + h) * D + d]));
            }
        }
        for (int h = 0; h < HKV; ++h)
            for (int d = 0; d < D; ++d) {
                err[3] = fmax(err[3], fabs(mine.dk[(s * HKV + h) * D + d] - whole.dk[(g * HKV + h) * D + d]));
                err[4] = fmax(err[4], fabs(mine.dv[(s * HKV + h) * D + d] - whole.dv[(g * HKV + h) * D + d]));
            }
    }
    /* fp32 sums in another order: a few units in the last place of values of order 1. */
    for (int i = 0; i < 5; ++i) bad |= !(err[i] <= 2e-5);
    printf("c-consumer: rank %d of %d, %lld rows: max |distributed - one process| o %.2e lse %.2e dq %.2e dk %.2e dv %.2e\n",
           rank, size, (long long)S, err[0], err[1], err[2], err[3], err[4]);

    /* A bad call: refused on every rank, naming the argument. */
    int64_t sq[4] = {B, S, HQ, D};
    DLTensor o = tensor(mine.o, 4, sq);
    const int st = la_forward(dist, &pat, pos, NULL, &o, &o, &o, NULL);
    if (st != LA_ERR_ARGUMENT || strstr(la_last_error(), "q: is NULL") == NULL) {
        fprintf(stderr, "c-consumer: a NULL q gave status %d, '%s'\n", st, la_last_error());
        bad = 1;
    }
    bad |= decode(dist, local, pos, S, rank);
    la_context_destroy(dist);
    la_context_destroy(local);
    int worst = bad;
    MPI_Allreduce(&bad, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (rank == 0) printf("c-consumer: %s\n", worst ? "FAILED" : "OK");
    MPI_Finalize();
    return worst;
}
