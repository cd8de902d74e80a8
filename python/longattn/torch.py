"""longattn's attention as a PyTorch custom op: autograd, ``torch.compile(fullgraph=True)``, opcheck.

    import longattn.torch as lat
    group = lat.register(MPI.COMM_WORLD)           # once; an integer handle (None: one process)
    pos = lat.positions(tokens, group, "zigzag")    # this rank's global positions (for RoPE too)
    o = lat.attention(q, k, v, pos, causal=True, group=group)

q [B, S_local, Hq, D], k and v [B, S_local, Hkv, D] (bshd), float32, bfloat16 or float16; gradients
flow to q, k and v. A communicator is registered once and named by the integer the op schema carries;
each (communicator, strategy, degree) gets one longattn Context, whose plan cache serves every call.
"""
from typing import List, Optional, Tuple

import torch

import longattn as _la

__all__ = ["register", "attention", "varlen_attention", "positions", "context"]

_comms = {0: None}      # handle -> communicator (0: one process)
_contexts = {}          # (handle, strategy, ulysses_degree, threads) -> Context
_ids = {}               # context id (the op's argument) -> Context


def register(comm=None):
    """The integer handle of an mpi4py communicator (registered once; None gives 0, one process)."""
    if comm is None:
        return 0
    for h, c in _comms.items():
        if c is comm:
            return h
    h = len(_comms)
    _comms[h] = comm
    return h


_cluster = None  # strategy="auto": (cluster file, backward), from set_cluster


def set_cluster(path, backward=True):
    """The cluster file that strategy="auto" calls are modelled on (every rank alike; before their
    first call): each plan then takes the strategy the cost model predicts fastest for its shards."""
    global _cluster
    _cluster = (path, bool(backward))


def context(group=0, strategy="ring", ulysses_degree=1, threads=0):
    """The Context that calls with this group and strategy use (created on first use: collective)."""
    if group not in _comms:
        raise ValueError(f"group: {group!r} is not a registered communicator handle (longattn.torch.register)")
    if strategy == "auto" and _cluster is None:
        raise ValueError("strategy: 'auto' is modelled on a cluster file: call longattn.torch.set_cluster(path) first")
    key = (group, strategy, int(ulysses_degree), int(threads)) + ((_cluster,) if strategy == "auto" else ())
    if key not in _contexts:
        extra = dict(cluster=_cluster[0], backward=_cluster[1]) if strategy == "auto" else {}
        ctx = _la.Context(_comms[group], strategy=strategy, ulysses_degree=ulysses_degree, threads=threads, **extra)
        _contexts[key] = ctx
        _ids[len(_ids)] = ctx
    return _contexts[key]


def _id_of(ctx):
    for i, c in _ids.items():
        if c is ctx:
            return i
    raise ValueError("context: not one of longattn.torch's")


def positions(tokens, group=0, layout="zigzag"):
    """This rank's global positions (int64 tensor on the CPU) when `tokens` tokens are sharded over the
    group's ranks under layout (zigzag, striped, contiguous): the rows to take, and the RoPE positions."""
    ctx = context(group)
    return torch.from_numpy(_la.positions(int(tokens), ctx.size, ctx.rank, layout))


def _default_positions(q, ctx, layout, tokens):
    n = int(tokens) if tokens is not None else q.shape[1] * ctx.size
    pos = torch.from_numpy(_la.positions(n, ctx.size, ctx.rank, layout))
    if pos.numel() != q.shape[1]:
        raise ValueError(f"pos: {n} tokens give rank {ctx.rank} {pos.numel()} rows under {layout}, but q has "
                         f"{q.shape[1]}: pass seq_len= (the whole length) or pos=")
    return pos


def _pattern(causal, window_left, window_right, scale, softcap, alibi_slopes, global_tokens, cu_seqlens, block_mask,
             block, stride, random_blocks, random_seed, seq_len):
    return dict(causal=causal, window=(window_left, window_right), softmax_scale=scale if scale > 0 else None,
                softcap=softcap, alibi_slopes=alibi_slopes, global_tokens=global_tokens, cu_seqlens=cu_seqlens,
                block_mask=block_mask, block=block, stride=stride, random_blocks=random_blocks,
                random_seed=random_seed, seq_len=seq_len)


def _made_pattern(args):
    """The pattern of the op's pattern arguments, kept (keyed on them as given) unless a tensor is among
    them."""
    if any(isinstance(a, torch.Tensor) for a in args):
        return _la.pattern(**_pattern(*args))
    return _la._kept_pattern(("longattn.torch",) + args, lambda: _la.pattern(**_pattern(*args)))


def _forward_impl(q, k, v, pos, ctx, *pattern):
    return _ids[ctx].forward(q, k, v, pos, pattern=_made_pattern(pattern))


def _backward_impl(dout, q, k, v, o, lse, pos, ctx, *pattern):
    dq, dk, dv = _ids[ctx].backward(q, k, v, o, dout.contiguous(), lse, pos, pattern=_made_pattern(pattern))
    return [dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)]


@torch.library.custom_op("longattn::forward", mutates_args=())
def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, ctx: int, causal: bool,
             window_left: int, window_right: int, scale: float, softcap: float, alibi_slopes: Optional[torch.Tensor],
             global_tokens: int, cu_seqlens: Optional[torch.Tensor], block_mask: Optional[torch.Tensor], block: int,
             stride: int, random_blocks: int, random_seed: int, seq_len: int) -> Tuple[torch.Tensor, torch.Tensor]:
    return _forward_impl(q, k, v, pos, ctx, causal, window_left, window_right, scale, softcap, alibi_slopes,
                         global_tokens, cu_seqlens, block_mask, block, stride, random_blocks, random_seed, seq_len)


@_forward.register_fake
def _(q, k, v, pos, ctx, *args):
    return torch.empty_like(q), q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32)


@torch.library.custom_op("longattn::backward", mutates_args=())
def _backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
              lse: torch.Tensor, pos: torch.Tensor, ctx: int, causal: bool, window_left: int, window_right: int,
              scale: float, softcap: float, alibi_slopes: Optional[torch.Tensor], global_tokens: int,
              cu_seqlens: Optional[torch.Tensor], block_mask: Optional[torch.Tensor], block: int, stride: int,
              random_blocks: int, random_seed: int, seq_len: int) -> List[torch.Tensor]:
    return _backward_impl(dout, q, k, v, o, lse, pos, ctx, causal, window_left, window_right, scale, softcap,
                          alibi_slopes, global_tokens, cu_seqlens, block_mask, block, stride, random_blocks,
                          random_seed, seq_len)


@_backward.register_fake
def _(dout, q, k, v, *args):
    return [torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)]


def _setup_context(ctx, inputs, output):
    q, k, v, pos = inputs[:4]
    o, lse = output
    ctx.save_for_backward(q, k, v, pos, o, lse)
    ctx.rest = inputs[4:]


def _grads(ctx, grad_o, grad_lse):
    q, k, v, pos, o, lse = ctx.saved_tensors
    dq, dk, dv = _backward(grad_o, q, k, v, o, lse, pos, *ctx.rest)
    return (dq, dk, dv) + (None,) * (4 + len(ctx.rest) - 3)


_forward.register_autograd(_grads, setup_context=_setup_context)


class _Eager(torch.autograd.Function):
    """The same forward and backward as the ops, called directly: in eager mode on plain tensors this
    skips the dispatcher's round trips (the ops remain what torch.compile, fake tensors and opcheck see)."""

    @staticmethod
    def forward(ctx, q, k, v, pos, *rest):
        o, lse = _forward_impl(q, k, v, pos, *rest)
        ctx.save_for_backward(q, k, v, pos, o, lse)
        ctx.rest = rest
        ctx.mark_non_differentiable(lse)
        return o, lse

    @staticmethod
    def backward(ctx, grad_o, grad_lse):
        q, k, v, pos, o, lse = ctx.saved_tensors
        dq, dk, dv = _backward_impl(grad_o, q, k, v, o, lse, pos, *ctx.rest)
        return (dq, dk, dv) + (None,) * (1 + len(ctx.rest))


def _eager(*tensors):
    return not torch.compiler.is_compiling() and all(type(t) is torch.Tensor for t in tensors)


def attention(q, k, v, pos=None, *, causal=False, window=(-1, -1), softmax_scale=None, softcap=0.0, alibi_slopes=None,
              global_tokens=0, block_mask=None, block=64, stride=0, random_blocks=0, random_seed=0, seq_len=None,
              cu_seqlens=None, group=0, strategy="ring", ulysses_degree=1, threads=0, layout="zigzag",
              return_lse=False):
    """Attention of this rank's rows q [B, S_local, Hq, D] to the whole sharded sequence's keys.

    pos: this rank's global positions (int64; default: those of ``layout`` for seq_len tokens, or
    S_local times the rank count).
    window=(left, right) as FlashAttention's window_size (-1: unbounded); softmax_scale (default
    1/sqrt(D)); softcap; alibi_slopes [Hq]; global_tokens (positions [0, n) attend and are attended
    everywhere); block_mask (2-d bool over blocks of ``block`` positions), stride, random_blocks
    (random_seed, seq_len = the whole length); cu_seqlens: packed documents, which may cross ranks.
    group: a handle from register(); strategy: ring, ulysses, hybrid (ulysses_degree), allgather, or auto
    (the cost model's pick per plan, on the cluster file of set_cluster)."""
    ctx = context(group, strategy, ulysses_degree, threads)
    if pos is None:
        pos = _default_positions(q, ctx, layout, seq_len)
    n = int(seq_len) if seq_len is not None else q.shape[1] * ctx.size
    left, right = window
    alibi = None if alibi_slopes is None else torch.as_tensor(alibi_slopes, dtype=torch.float32)
    docs = None if cu_seqlens is None else torch.as_tensor(cu_seqlens, dtype=torch.int64)
    mask = None if block_mask is None else torch.as_tensor(block_mask, dtype=torch.bool)
    op = _Eager.apply if _eager(q, k, v) else _forward
    o, lse = op(q, k, v, pos, _id_of(ctx), bool(causal), int(left), int(right),
                      float(softmax_scale) if softmax_scale is not None else 0.0, float(softcap), alibi,
                      int(global_tokens), docs, mask, int(block), int(stride), int(random_blocks), int(random_seed),
                      n if random_blocks else 0)
    return (o, lse) if return_lse else o


def varlen_attention(q, k, v, cu_seqlens, pos=None, **kwargs):
    """Packed documents: q, k, v [S_local, H, D] (no batch dimension) of a sequence whose documents end
    at cu_seqlens (0 = b0 < ... < bn = the whole length); documents may cross ranks. Causal unless
    causal=False is passed."""
    kwargs.setdefault("causal", True)
    n = int(cu_seqlens[-1])
    o = attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), pos, cu_seqlens=cu_seqlens, seq_len=n, **kwargs)
    return o.squeeze(0)
