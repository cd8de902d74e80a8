"""longattn from Python in one process: numpy and torch through DLPack, forward and backward under
FlashAttention's rule against the fp64 SDPA model, the custom op (opcheck, autograd, torch.compile),
the layout helpers, and bad input raising TypeError / ValueError that names the argument."""
import os

import numpy as np
import pytest
import torch

import longattn
import longattn.torch as lat
from reference import allowed, rule, sdpa

H200 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs", "clusters", "h200-node.ini")


def inputs(B=2, S=150, Hq=4, Hkv=2, D=40, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, S, h, D, generator=g).to(dtype) for h in (Hq, Hkv, Hkv))
    return q, k, v


CASES = [
    dict(causal=True),
    dict(causal=True, window=(40, 0)),
    dict(causal=False, window=(20, 30)),
    dict(causal=True, cu_seqlens=[0, 37, 100, 150]),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}" for k in c))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_backward_meet_the_rule(case, dtype):
    q, k, v = inputs(dtype=dtype)
    S = q.shape[1]
    pos = torch.arange(S)
    mask = allowed(S, S, pos, pos, **case)
    ctx = longattn.Context()
    o, lse = ctx.forward(q, k, v, pos, **case)
    assert o.dtype == dtype and lse.dtype == torch.float32 and lse.shape == (2, 4, S)
    leaves = [x.double().requires_grad_() for x in (q, k, v)]
    ref = sdpa(*leaves, mask, torch.float64)
    plain_in = [x.float().requires_grad_() for x in (q, k, v)]
    plain = sdpa(*plain_in, mask, torch.float32)
    plain_o = plain.to(dtype).float() if dtype != torch.float32 else plain
    rule("O", o.float(), plain_o, ref, dtype, 2)
    dout = torch.randn(o.shape, generator=torch.Generator().manual_seed(9)).to(dtype)
    dq, dk, dv = ctx.backward(q, k, v, o, dout, lse, pos, **case)
    ref_g = torch.autograd.grad(ref, leaves, dout.double())
    plain_g = torch.autograd.grad(plain, plain_in, dout.float())
    for name, got, p, r in zip(("dQ", "dK", "dV"), (dq, dk, dv), plain_g, ref_g):
        rule(name, got, p, r, torch.float32 if dtype == torch.float32 else dtype, 3)


def test_numpy_in_numpy_out_and_zero_copy_views():
    q, k, v = (x.numpy() for x in inputs(B=1, S=64, Hq=2, Hkv=2, D=16))
    pos = longattn.positions(64)
    ctx = longattn.Context(threads=1)
    o, lse = ctx.forward(q, k, v, pos, causal=True)
    assert isinstance(o, np.ndarray) and isinstance(lse, np.ndarray)
    # A strided view goes in as it is (no copy): the same result as the compact array.
    strided = np.swapaxes(np.swapaxes(q, 1, 2).copy(), 1, 2)
    assert not strided.flags.c_contiguous
    o2, _ = ctx.forward(strided, k, v, pos, causal=True)
    np.testing.assert_array_equal(o, o2)
    # The output is the caller's array, written in place.
    out = np.zeros_like(q)
    o3, _ = ctx.forward(q, k, v, pos, causal=True, out=out)
    assert o3 is out
    np.testing.assert_array_equal(out, o)


def test_plan_cache_counts_hits_and_misses():
    q, k, v = inputs(B=1, S=96, Hq=2, Hkv=1, D=16)
    pos = torch.arange(96)
    ctx = longattn.Context(max_plans=2)
    for docs in ([0, 40, 96], [0, 40, 96], [0, 10, 96], [0, 40, 96], [0, 50, 96], [0, 60, 96]):
        ctx.forward(q, k, v, pos, causal=True, cu_seqlens=docs)
    stats = ctx.cache_stats()
    assert stats == {"hits": 2, "misses": 4, "evictions": 2, "plans": 2}, stats


def test_layout_helpers_shard_and_unshard_exactly():
    x = torch.arange(2 * 24 * 3).reshape(2, 24, 3)
    for layout in ("zigzag", "striped", "contiguous"):
        parts = [longattn.shard(x, 4, r, layout) for r in range(4)]
        assert torch.equal(longattn.unshard(parts, layout), x)
        assert torch.equal(parts[1][0, :, 0] // 3, torch.from_numpy(longattn.positions(24, 4, 1, layout)))
    assert longattn.positions(8, 2, 0, "zigzag").tolist() == [0, 1, 6, 7]
    assert longattn.positions(8, 2, 1, "striped").tolist() == [1, 3, 5, 7]


def test_bad_input_names_the_argument():
    q, k, v = inputs(B=1, S=32, Hq=4, Hkv=2, D=16)
    pos = torch.arange(32)
    ctx = longattn.Context()
    with pytest.raises(TypeError, match="q: must be float32, bfloat16 or float16"):
        ctx.forward(q.double(), k, v, pos)
    with pytest.raises(TypeError, match="k: must be an array or tensor with DLPack"):
        ctx.forward(q, [1, 2], v, pos)
    with pytest.raises(TypeError, match="pos: must be int64"):
        ctx.forward(q, k, v, pos.int())
    with pytest.raises(ValueError, match="pos: must be a contiguous 1-d array of 32 positions"):
        ctx.forward(q, k, v, pos[:5])
    with pytest.raises(ValueError, match="heads|Hq|multiple"):
        ctx.forward(inputs(B=1, S=32, Hq=3, Hkv=2, D=16)[0], k, v, pos)
    with pytest.raises(ValueError, match="strategy: must be one of ring, ulysses, hybrid, allgather, auto"):
        longattn.Context(strategy="tree")
    with pytest.raises(ValueError, match="cluster: a cluster file goes with strategy='auto'"):
        longattn.Context(strategy="auto")
    with pytest.raises(ValueError, match="cluster: a cluster file goes with strategy='auto'"):
        longattn.Context(cluster=H200)
    with pytest.raises(ValueError, match="cluster: cannot read 'no/such.ini'"):
        longattn.Context(strategy="auto", cluster="no/such.ini")
    with pytest.raises(ValueError, match="strategy: 'auto' is modelled on a cluster file"):
        lat.attention(q, k, v, causal=True, strategy="auto")
    with pytest.raises(TypeError, match="comm: must be None or an mpi4py communicator"):
        longattn.Context(comm=3)
    with pytest.raises(ValueError, match="cpu isa"):
        longattn.set_cpu_isa("avx9")
    ctx.close()
    with pytest.raises(ValueError, match="context: closed"):
        ctx.forward(q, k, v, pos)


def test_predict_ranks_the_strategies():
    rows = longattn.predict(H200, 8, 65536, 32, 128, kv_heads=8, causal=True)
    assert len(rows) == 10  # ring, Ulysses, all-gather, hybrid u = 2 and 4; two layouts each
    assert (rows[0]["strategy"], rows[0]["layout"]) == ("ring", "zigzag")
    assert all(r["fits"] for r in rows) and rows[0]["efficiency"] > 0.99
    assert [r["fwd_s"] + r["bwd_s"] for r in rows] == sorted(r["fwd_s"] + r["bwd_s"] for r in rows)
    contiguous = next(r for r in rows if (r["strategy"], r["layout"]) == ("ring", "contiguous"))
    assert contiguous["fwd_s"] + contiguous["bwd_s"] > 1.7 * (rows[0]["fwd_s"] + rows[0]["bwd_s"])
    with pytest.raises(TypeError, match="cluster: must be a path"):
        longattn.predict(3, 8, 65536, 32, 128)
    with pytest.raises(ValueError, match="ranks: must be 1 to 4096"):
        longattn.predict(H200, 0, 65536, 32, 128)
    with pytest.raises(ValueError, match="dtype: must be one of"):
        longattn.predict(H200, 8, 65536, 32, 128, dtype="int8")


def test_auto_strategy_in_one_process():
    q, k, v = inputs(B=1, S=64, Hq=4, Hkv=2, D=16)
    pos = torch.arange(64)
    with longattn.Context(strategy="auto", cluster=H200, threads=1) as ctx, longattn.Context(threads=1) as ring:
        with pytest.raises(ValueError, match="ctx: has run no forward or backward yet"):
            ctx.strategy_used()
        o, lse = ctx.forward(q, k, v, pos, causal=True)
        assert ctx.strategy_used() == ("ring", 1)  # one rank: every strategy is the kernels alone
        o2, lse2 = ring.forward(q, k, v, pos, causal=True)
        assert torch.equal(o, o2) and torch.equal(lse, lse2)


def sdpa_model(q, k, v, causal):
    return torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal,
        enable_gqa=True).transpose(1, 2)


def test_custom_op_gradients_match_sdpa():
    q, k, v = (x.requires_grad_() for x in inputs(B=1, S=80, Hq=4, Hkv=2, D=32))
    o = lat.attention(q, k, v, causal=True)
    (o * o).sum().backward()
    got = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    r = sdpa_model(*(x.double() for x in (q, k, v)), True)
    (r * r).sum().backward()
    for g, x in zip(got, (q, k, v)):
        torch.testing.assert_close(g, x.grad.float(), rtol=1e-4, atol=1e-5)


def test_opcheck():
    q, k, v = inputs(B=1, S=48, Hq=2, Hkv=1, D=16)
    q.requires_grad_()
    k.requires_grad_()
    v.requires_grad_()
    ctx_id = lat._id_of(lat.context())
    args = (q, k, v, torch.arange(48), ctx_id, True, 10, 0, 0.0, 0.0, None, 0, None, None, 64, 0, 0, 0, 0)
    torch.library.opcheck(lat._forward, args)


def test_torch_compile_fullgraph_with_gradients():
    q, k, v = (x.requires_grad_() for x in inputs(B=1, S=64, Hq=2, Hkv=2, D=16))
    pos = torch.arange(64)

    def f(q, k, v):
        return (lat.attention(q * 2.0, k, v, pos, causal=True, window=(16, 0)) ** 2).sum()

    compiled = torch.compile(f, fullgraph=True)
    eager_loss = f(q, k, v)
    eager = torch.autograd.grad(eager_loss, (q, k, v))
    loss = compiled(q, k, v)
    grads = torch.autograd.grad(loss, (q, k, v))
    torch.testing.assert_close(loss, eager_loss)
    for a, b in zip(grads, eager):
        torch.testing.assert_close(a, b)


def test_exit_closes_contexts_in_creation_order(monkeypatch):
    # Closing is collective, so every rank must close in one order: the order of creation, whatever
    # the objects' addresses.
    closed = []
    monkeypatch.setattr(longattn.Context, "close", lambda self: closed.append(self))
    made = [longattn.Context() for _ in range(12)]
    longattn._close_all()
    assert [c for c in closed if c in made] == made


def test_a_made_pattern_is_reused_and_not_mixed_with_keywords():
    q, k, v = inputs()
    pos = torch.arange(q.shape[1])
    ctx = longattn.Context()
    p = longattn.pattern(causal=True, window=(40, 0))
    o1, _ = ctx.forward(q, k, v, pos, pattern=p)
    o2, _ = ctx.forward(q, k, v, pos, causal=True, window=(40, 0))
    assert torch.equal(o1, o2)
    with pytest.raises(ValueError, match="pattern: given with pattern keywords too"):
        ctx.forward(q, k, v, pos, pattern=p, causal=True)
    with pytest.raises(TypeError, match="pattern: must be one longattn.pattern"):
        ctx.forward(q, k, v, pos, pattern="causal")


def test_eager_fast_path_and_the_op_agree():
    q, k, v = inputs()
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    o = lat.attention(*leaves, causal=True)  # plain tensors in eager mode: the autograd.Function
    o.sum().backward()
    pos = torch.arange(q.shape[1])
    ctx_id = lat._id_of(lat.context(0))
    direct = [x.clone().requires_grad_() for x in (q, k, v)]
    o_op, _ = torch.ops.longattn.forward(*direct, pos, ctx_id, True, -1, -1, 0.0, 0.0, None, 0, None, None, 64, 0, 0,
                                         0, 0)
    o_op.sum().backward()
    assert torch.equal(o, o_op)
    for a, b in zip(leaves, direct):
        assert torch.equal(a.grad, b.grad)


def decode_reference(q_all, k_all, v_all, rows, window=(-1, -1)):
    """fp64 and fp32 SDPA of query rows `rows` over keys [0, rows[-1]] (causal, the window)."""
    n = int(rows[-1]) + 1
    qp, kp = torch.as_tensor(rows), torch.arange(n)
    mask = allowed(len(rows), n, qp, kp, causal=True, window=window)
    q = q_all.index_select(1, qp)
    return [sdpa(q, k_all[:, :n], v_all[:, :n], mask, dt) for dt in (torch.float64, torch.float32)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kv_cache_decode_meets_the_rule(dtype):
    B, S, Hq, Hkv, D, T = 1, 203, 4, 2, 32, 2
    q_all, k_all, v_all = inputs(B, S + 3 * T, Hq, Hkv, D, dtype, seed=7)[:3]
    ctx = longattn.Context(threads=1)
    cache = longattn.KvCache(ctx, capacity=S + 3 * T, kv_heads=Hkv, head_dim=D, dtype=dtype, page_tokens=16)
    cache.write(0, torch.arange(S), k_all[:, :S], v_all[:, :S])
    cache.sync_lengths()
    assert cache.length() == S
    for step, window in enumerate([(-1, -1), (40, 0), (-1, -1)]):
        r = S + step * T
        rows = list(range(r, r + T))
        o, lse = cache.decode(q_all[:, r:r + T], k_all[:, r:r + T], v_all[:, r:r + T], causal=True, window=window,
                              combine="allreduce" if step % 2 else "allgather")
        assert o.dtype == torch.float32 and o.shape == (B, T, Hq, D) and lse.shape == (B, Hq, T)
        ref, plain = decode_reference(q_all, k_all, v_all, rows, window)
        rule(f"decode step {step} O", o, plain, ref, torch.float32, 2)
    # A replay of the last step's queries: nothing appended, the same bits.
    again, lse2 = cache.decode(q_all[:, r:r + T], causal=True)
    assert torch.equal(again, o) and torch.equal(lse2, lse)
    assert cache.length() == S + 3 * T
    st = cache.stats()
    assert st["tokens"] == S + 3 * T and st["pages_used"] == (S + 3 * T + 15) // 16 and st["bytes"] > 0
    ctx.close()


def test_kv_cache_numpy_and_bad_input():
    S, H, D = 40, 2, 16
    rng = np.random.default_rng(1)
    k = rng.standard_normal((1, S, H, D), dtype=np.float32)
    q = rng.standard_normal((1, 1, H, D), dtype=np.float32)
    ctx = longattn.Context(threads=1)
    cache = longattn.KvCache(ctx, capacity=S, kv_heads=H, head_dim=D, dtype=np.float32, page_tokens=16)
    cache.write(0, np.arange(S - 1, dtype=np.int64), k, k)
    cache.sync_lengths()
    o, lse = cache.decode(q, k[:, S - 1:], k[:, S - 1:], causal=True)
    assert isinstance(o, np.ndarray) and o.dtype == np.float32 and lse.shape == (1, H, 1)
    ref, _ = decode_reference(*(torch.from_numpy(x) for x in (np.concatenate([q] * S, 1), k, k)), [S - 1])
    np.testing.assert_allclose(o, ref.numpy(), atol=2e-6)
    with pytest.raises(ValueError, match="do not fit"):  # position 40 is beyond the capacity
        cache.decode(q, k[:, :1], k[:, :1], causal=True)
    with pytest.raises(ValueError, match="query heads .3. must be a multiple"):
        cache.decode(rng.standard_normal((1, 1, 3, D), dtype=np.float32), causal=True)
    with pytest.raises(ValueError, match="k and v must both be given"):
        cache.decode(q, k[:, :1], None, causal=True)
    with pytest.raises(TypeError, match="q: must be an array"):
        cache.decode("q", causal=True)
    with pytest.raises(ValueError, match="combine: must be one of allgather, allreduce"):
        cache.decode(q, combine="tree")
    with pytest.raises(ValueError, match="dtype: must be one of"):
        longattn.KvCache(ctx, capacity=S, kv_heads=H, head_dim=D, dtype="int8")
    with pytest.raises(ValueError, match="page-tokens: must be a positive multiple of 16"):
        longattn.KvCache(ctx, capacity=S, kv_heads=H, head_dim=D, page_tokens=8)
    assert cache.length() == S
    ctx.close()
    with pytest.raises(ValueError, match="kv cache: closed"):
        cache.length()
