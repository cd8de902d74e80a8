"""longattn: exact attention over a sequence sharded across the ranks of a communicator.

Tensors are [B, S_local, H, D] (bshd), float32, bfloat16 or float16, any strides; numpy arrays, torch
tensors or anything else with DLPack cross without a copy, and the results come back in the caller's
framework. ``pos`` holds the global position of each local row (``positions`` gives them for a layout).

    import longattn
    from mpi4py import MPI
    ctx = longattn.Context(MPI.COMM_WORLD, strategy="ring")
    pos = longattn.positions(tokens, ctx.size, ctx.rank, layout="zigzag")
    o, lse = ctx.forward(q, k, v, pos, causal=True)
    dq, dk, dv = ctx.backward(q, k, v, o, dout, lse, pos, causal=True)

Decoding: a ``KvCache`` sharded over the context's ranks, prefilled with the rows each rank holds,
then one collective step per generated token (``cache.decode``).

``longattn.torch`` has the attention as a PyTorch custom op (autograd, torch.compile).
"""
import atexit
import os
import sys
import weakref

import numpy as np

from . import _core

__version__ = _core.version()
__all__ = ["Context", "KvCache", "positions", "shard", "unshard", "cpu_isa", "set_cpu_isa", "predict", "STRATEGIES",
           "LAYOUTS"]

STRATEGIES = {"ring": 0, "ulysses": 1, "hybrid": 2, "allgather": 3, "auto": 4}
_STRATEGY_NAMES = {v: k for k, v in STRATEGIES.items()}
LAYOUTS = {"contiguous": 0, "zigzag": 1, "striped": 2}
PLACEMENTS = {"round-robin": 0, "layout": 1}
COMBINES = {"allgather": 0, "allreduce": 1}
_DTYPES = {"float32": (2, 32), "bfloat16": (4, 16), "float16": (2, 16)}  # DLPack type codes and bits


def cpu_isa():
    """The instruction set of the CPU kernels in use: avx512-amx, avx512-bf16, avx512, avx2, sse2 (or native, generic)."""
    return _core.cpu_isa()


def set_cpu_isa(name):
    """Switches the CPU kernels: "auto" or one this build holds and this CPU runs (ValueError otherwise)."""
    _core.set_cpu_isa(name)


def _choice(table, value, name):
    if value not in table:
        raise ValueError(f"{name}: must be one of {', '.join(table)}, got {value!r}")
    return table[value]


def positions(tokens, ranks=1, rank=0, layout="zigzag"):
    """Global positions (int64 numpy array) of rank ``rank``'s rows when ``tokens`` tokens are sharded
    over ``ranks`` ranks: contiguous, zigzag (2 * ranks chunks, rank r holding chunks r and
    2 * ranks - 1 - r, which balances causal work) or striped (token t on rank t % ranks)."""
    return np.asarray(_core.layout_positions(_choice(LAYOUTS, layout, "layout"), int(tokens), int(ranks), int(rank)),
                      dtype=np.int64)


def _take(x, index, dim):
    if hasattr(x, "index_select"):  # torch
        import torch
        return x.index_select(dim, torch.as_tensor(index, device=x.device))
    return np.take(x, index, axis=dim)


def shard(x, ranks, rank, layout="zigzag", dim=1):
    """Rank ``rank``'s rows of a global tensor (the sequence along ``dim``) under ``layout``."""
    return _take(x, positions(x.shape[dim], ranks, rank, layout), dim)


def unshard(parts, layout="zigzag", dim=1):
    """The global tensor from every rank's shard (``parts[r]`` is rank r's), in global order."""
    ranks = len(parts)
    tokens = sum(p.shape[dim] for p in parts)
    order = np.concatenate([positions(tokens, ranks, r, layout) for r in range(ranks)])
    inverse = np.empty_like(order)
    inverse[order] = np.arange(tokens)
    if hasattr(parts[0], "index_select"):
        import torch
        return _take(torch.cat(list(parts), dim), inverse, dim)
    return _take(np.concatenate(parts, axis=dim), inverse, dim)


def _ints(x):
    if x is None:
        return []
    if hasattr(x, "tolist"):
        x = x.tolist()
    return [int(i) for i in x]


def pattern(causal=False, window=None, softmax_scale=None, softcap=0.0, alibi_slopes=None, global_tokens=0,
            global_list=None, cu_seqlens=None, block_mask=None, block=64, stride=0, random_blocks=0,
            random_seed=0, seq_len=0):
    """The pattern descriptor of a call (the same on every rank). window=(left, right), -1 for unbounded,
    as FlashAttention's window_size; cu_seqlens: the packed documents' boundaries 0 = b0 < ... < bn =
    the sequence length, which may cross ranks; block_mask: a 2-d bool array over blocks of ``block``
    positions; stride, random_blocks (with random_seed and seq_len): the sparse parts; alibi_slopes:
    one per query head; softcap > 0: s = softcap * tanh(s / softcap)."""
    p = _core.Pattern()
    p.causal = bool(causal)
    if window is not None:
        left, right = window
        if (left, right) != (-1, -1):
            p.set_window(int(left), int(right))
    p.scale = 0.0 if softmax_scale is None else float(softmax_scale)
    p.softcap = float(softcap)
    if alibi_slopes is not None:
        p.alibi_slopes = [float(s) for s in (alibi_slopes.tolist() if hasattr(alibi_slopes, "tolist") else alibi_slopes)]
    p.global_first = int(global_tokens)
    p.global_list = _ints(global_list)
    p.doc_bounds = _ints(cu_seqlens)
    p.block = int(block)
    if block_mask is not None:
        m = np.asarray(block_mask.cpu() if hasattr(block_mask, "cpu") else block_mask)
        if m.ndim != 2:
            raise ValueError(f"block_mask: must be 2-d [query blocks, key blocks], got {m.ndim} dimensions")
        p.set_block_mask(m.astype(np.uint8).ravel().tolist(), m.shape[0], m.shape[1])
    p.stride = int(stride)
    p.random_blocks = int(random_blocks)
    p.random_seed = int(random_seed)
    p.seq_len = int(seq_len)
    return p


_patterns = {}


def _pattern_of(args):
    """pattern(**args), kept for arguments seen before (scalars, tuples and lists only; at most 64)."""
    plain = (bool, int, float, str, type(None))
    def frozen(v):
        return tuple(v) if isinstance(v, (list, tuple)) and all(isinstance(x, plain) for x in v) else v
    key = tuple(sorted((k, frozen(v)) for k, v in args.items()))
    if not all(isinstance(v, plain + (tuple,)) for _, v in key):  # an array among them
        return pattern(**args)
    return _kept_pattern(key, lambda: pattern(**args))


def _kept_pattern(key, make):
    """The pattern kept under ``key`` (hashable, of plain values), made by make() when new; at most
    64 are kept."""
    p = _patterns.get(key)
    if p is None:
        if len(_patterns) >= 64:
            _patterns.clear()
        p = _patterns[key] = make()
    return p


def _given(p, args):
    if p is None:
        return _pattern_of(args)
    if args:
        raise ValueError(f"pattern: given with pattern keywords too ({', '.join(args)}); pass one or the other")
    if not isinstance(p, _core.Pattern):
        raise TypeError(f"pattern: must be one longattn.pattern() made, got {type(p).__name__}")
    return p


def _dl(*xs):
    """torch CPU tensors as DLPack capsules (torch's C export costs about a tenth of its __dlpack__);
    anything else as given (the binding takes any DLPack producer)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return xs
    export, tensor = torch.utils.dlpack.to_dlpack, torch.Tensor
    return tuple(export(x) if isinstance(x, tensor) and x.is_cpu else x for x in xs)


def _empty(x, shape, float32=False):
    """An uninitialized array of x's framework and device: x's dtype, or float32."""
    if hasattr(x, "new_empty"):  # torch
        import torch
        return x.new_empty(shape, dtype=torch.float32 if float32 else x.dtype)
    return np.empty(shape, dtype=np.float32 if float32 else x.dtype)


_live = weakref.WeakValueDictionary()  # creation number -> open Context
_created = 0


class Context:
    """A communicator, the options and a bounded cache of plans keyed on (shapes, pattern, positions).

    comm: None for one process, or an MPI communicator from mpi4py (any split of one; it is duplicated).
    strategy: ring, ulysses, hybrid (ulysses_degree ranks per Ulysses group), allgather
    (kv_head_chunk kv heads gathered at a time, 0: all), or auto: each plan takes the strategy and
    Ulysses degree the cost model predicts fastest for its shards on ``cluster`` (a cluster file, see
    configs/clusters/; ranked by forward plus backward time, or the forward's with backward=False);
    ``strategy_used()`` says which the last call ran. threads: kernel threads per rank (0: all).
    timeout: a rank silent this long ends the job (0: no watchdog; MPI needs MPI_THREAD_MULTIPLE,
    mpi4py's default). Creation, forward, backward and close are collective over comm: every rank makes
    these calls in the same order (at exit, contexts still open close in the order they were created)."""

    def __init__(self, comm=None, strategy="ring", ulysses_degree=1, kv_head_chunk=0, threads=0, progress_chunks=4,
                 max_plans=8, timeout=60.0, cluster=None, backward=True):
        fcomm = None
        if comm is not None:
            if not hasattr(comm, "py2f"):
                raise TypeError(f"comm: must be None or an mpi4py communicator, got {type(comm).__name__}")
            fcomm = comm.py2f()
        code = _choice(STRATEGIES, strategy, "strategy")
        if (cluster is None) != (strategy != "auto"):
            raise ValueError("cluster: a cluster file goes with strategy='auto' (and auto needs one)")
        if cluster is not None and not isinstance(cluster, (str, os.PathLike)):
            raise TypeError(f"cluster: must be a path, got {type(cluster).__name__}")
        self._ctx = _core.Context(fcomm, code, int(ulysses_degree), int(kv_head_chunk), int(threads),
                                  int(progress_chunks), int(max_plans), float(timeout) if comm is not None else 0.0)
        if cluster is not None:
            try:
                self._ctx.set_cluster(os.fspath(cluster), bool(backward))
            except BaseException:
                self._ctx.close()
                raise
        self.rank, self.size = self._ctx.rank_size()
        self.strategy = strategy
        self._caches = weakref.WeakSet()
        global _created
        _created += 1
        _live[_created] = self

    def close(self):
        """Destroys the context (collective) and its KV caches; later calls raise ValueError."""
        for c in list(self._caches):
            c.close()
        self._ctx.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def strategy_used(self):
        """(strategy, ulysses_degree) of the plan the last forward or backward ran: with
        strategy='auto', the cost model's pick."""
        code, degree = self._ctx.strategy_used()
        return _STRATEGY_NAMES[code], degree

    def cache_stats(self):
        """Calls that found their plan, calls that built one, plans dropped, plans held."""
        hits, misses, evictions, plans = self._ctx.cache()
        return {"hits": hits, "misses": misses, "evictions": evictions, "plans": plans}

    def forward(self, q, k, v, pos, *, out=None, lse=None, pattern=None, **pattern_args):
        """O [B, S, Hq, D] (q's dtype, or ``out``) and LSE [B, Hq, S] float32 of the local rows. The
        pattern: keywords as ``longattn.pattern``'s, or pattern= one it made (reused: no per-call cost)."""
        b, s, h = (q.shape[0], q.shape[1], q.shape[2]) if getattr(q, "ndim", 0) == 4 else (0, 0, 0)
        if out is None and getattr(q, "ndim", 0) == 4:
            out = _empty(q, tuple(q.shape))
        if lse is None and getattr(q, "ndim", 0) == 4:
            lse = _empty(q, (b, h, s), float32=True)
        self._ctx.forward(_given(pattern, pattern_args), *_dl(pos, q, k, v, out, lse))
        return out, lse

    def backward(self, q, k, v, o, dout, lse, pos, *, dq=None, dk=None, dv=None, accumulate=False, pattern=None,
                 **pattern_args):
        """dQ, dK, dV (float32, shapes of q, k, v) of the local rows; accumulate adds into dq, dk, dv."""
        grads = []
        for g, x in ((dq, q), (dk, k), (dv, v)):
            if g is None and getattr(x, "ndim", 0) == 4:
                g = _empty(x, tuple(x.shape), float32=True)
            grads.append(g)
        self._ctx.backward(_given(pattern, pattern_args), *_dl(pos, q, k, v, o, dout, lse, *grads), bool(accumulate))
        return tuple(grads)


def predict(cluster, ranks, tokens, heads, head_dim, *, kv_heads=None, batch=1, dtype="bfloat16", backward=True,
            pattern=None, **pattern_args):
    """The cost model's time for a job on ``ranks`` devices of a cluster file, nothing run: every
    strategy, hybrid degree and layout, those that fit the cluster's memory first, then fastest first
    (by forward plus backward time, or the forward's with backward=False), as dicts of strategy,
    ulysses_degree, layout, fwd_s, bwd_s, exposed_s, efficiency, device_bytes and fits. The pattern:
    keywords as ``pattern``'s, or pattern= one it made."""
    if not isinstance(cluster, (str, os.PathLike)):
        raise TypeError(f"cluster: must be a path, got {type(cluster).__name__}")
    code, bits = _choice(_DTYPES, _dtype_name(dtype), "dtype")
    rows = _core.predict(os.fspath(cluster), int(ranks), int(tokens), int(batch), int(heads),
                         int(heads if kv_heads is None else kv_heads), int(head_dim), code, bits,
                         _given(pattern, pattern_args), bool(backward))
    layouts = {v: k for k, v in LAYOUTS.items()}
    keys = ("strategy", "ulysses_degree", "layout", "fwd_s", "bwd_s", "exposed_s", "efficiency", "device_bytes", "fits")
    return [dict(zip(keys, (_STRATEGY_NAMES[r[0]], r[1], layouts[r[2]]) + tuple(r[3:]))) for r in rows]


def _dtype_name(d):
    """float32, bfloat16, float16, ... from a name, a torch dtype or a numpy dtype or type."""
    if isinstance(d, str):
        return d
    if str(d).startswith("torch."):
        return str(d)[len("torch."):]
    try:
        return np.dtype(d).name
    except TypeError:
        return str(d)


class KvCache:
    """A paged KV cache for decoding, sharded over the ranks of ``ctx`` (longattn's decode path).

    Each sequence of the ``batch`` holds up to ``capacity`` positions of ``kv_heads`` heads of
    ``head_dim``, stored as ``dtype`` (float32, bfloat16, float16; a torch or numpy dtype or its name)
    in pages of ``page_tokens`` slots. ``placement``: round-robin deals a sequence's pages out to the
    ranks in turn (even shards as it grows), layout puts position t where ``layout`` over the capacity
    does. ``pages``: per rank, 0 for an even share of every sequence at full capacity plus two.

        cache = longattn.KvCache(ctx, capacity=1 << 20, kv_heads=8, head_dim=128)
        cache.write(0, pos, k_local, v_local)        # prefill: the rows this rank holds
        cache.sync_lengths()                         # collective
        o, lse = cache.decode(q, k_new, v_new, causal=True)  # collective, q the same on every rank

    Making one is local (every rank makes it alike); it is closed with its context."""

    def __init__(self, ctx, capacity, kv_heads, head_dim, *, batch=1, dtype="bfloat16", page_tokens=64,
                 placement="round-robin", layout="zigzag", pages=0):
        if not isinstance(ctx, Context):
            raise TypeError(f"ctx: must be a longattn.Context, got {type(ctx).__name__}")
        code, bits = _choice(_DTYPES, _dtype_name(dtype), "dtype")
        self._cache = _core.KvCache(ctx._ctx, int(batch), int(capacity), int(kv_heads), int(head_dim), code, bits,
                                    int(page_tokens), _choice(PLACEMENTS, placement, "placement"),
                                    _choice(LAYOUTS, layout, "layout"), int(pages))
        self.batch = int(batch)
        ctx._caches.add(self)

    def close(self):
        """Frees the pages (local); later calls raise ValueError."""
        self._cache.close()

    def write(self, seq, pos, k, v, entry=0):
        """Prefill, local: this rank's rows of sequence ``seq`` at the global positions ``pos`` (int64,
        increasing), rows [0, len(pos)) of batch entry ``entry`` of k and v [B, S, Hkv, D]."""
        self._cache.write(int(seq), *_dl(pos, k, v), int(entry))

    def sync_lengths(self):
        """Collective: each sequence's length becomes its largest written position plus one."""
        self._cache.sync_lengths()

    def length(self, seq=0):
        """Tokens in sequence ``seq`` (the same on every rank)."""
        return self._cache.length(int(seq))

    def stats(self):
        """This rank's share: pages used and held, tokens, and the pages' bytes."""
        used, total, tokens, nbytes = self._cache.stats()
        return {"pages_used": used, "pages_total": total, "tokens": tokens, "bytes": nbytes}

    def decode(self, q, k=None, v=None, *, combine="allgather", threads=0, out=None, lse=None, pattern=None,
               **pattern_args):
        """Collective: one decode step of every sequence. q [B, T, Hq, D] (the same on every rank); k and
        v [B, T, Hkv, D] appended at each sequence's next T positions before the queries attend (None:
        nothing appended, the queries sit at the last T positions). Returns O [B, T, Hq, D] and LSE
        [B, Hq, T], float32, in q's framework, the same on every rank. combine: allgather or allreduce.
        The pattern as ``forward``'s (causal=True for generation)."""
        if getattr(q, "ndim", 0) == 4:
            b, t, h = q.shape[0], q.shape[1], q.shape[2]
            if out is None:
                out = _empty(q, tuple(q.shape), float32=True)
            if lse is None:
                lse = _empty(q, (b, h, t), float32=True)
        self._cache.decode(_given(pattern, pattern_args), *_dl(q, k, v, out, lse), _choice(COMBINES, combine, "combine"),
                           int(threads))
        return out, lse


@atexit.register
def _close_all():
    # Before mpi4py finalizes MPI (its exit handler was registered first, so it runs after this one).
    # Closing is collective: every rank closes its contexts in the order they were created (the same
    # order everywhere, since creation is collective too), never in a set's arbitrary order.
    for _, c in sorted(_live.items()):
        c.close()
