"""Under mpirun (1, 2, 4 ranks): longattn from Python over mpi4py. For each strategy the rank count
allows, the shards' O and gradients (through Context and through the torch custom op) meet the
distributed rule: max|dist - fp64| <= 2x (3x for gradients) the single-process kernel's error plus the
floor; also over a split communicator, and a bad tensor on one rank or ranks sharding under different
layouts raise on every rank. Decoding: a KV cache prefilled with each rank's zigzag rows, three steps
appending a token each, against a one-process cache under the same rule, and a bad q on one rank. Exit 0 when every check passes on every rank."""
import os
import sys

import torch
from mpi4py import MPI

import longattn
import longattn.torch as lat
from reference import allowed, rule, sdpa

world = MPI.COMM_WORLD
rank, size = world.Get_rank(), world.Get_size()
failures = []


def check(name, f):
    try:
        f()
    except AssertionError as e:
        failures.append(f"{name}: {e}")


def global_inputs(S, Hq, Hkv, D, dtype, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, S, h, D, generator=g).to(dtype) for h in (Hq, Hkv, Hkv)] + \
        [torch.randn(1, S, Hq, D, generator=g).to(dtype)]


def strategy_case(comm, strategy, degree, dtype, pattern):
    P, r = comm.Get_size(), comm.Get_rank()
    S, Hq, Hkv, D = 192, 4, 2, 32
    q, k, v, dout = global_inputs(S, Hq, Hkv, D, dtype)
    allpos = torch.arange(S)
    mask = allowed(S, S, allpos, allpos, **pattern)
    leaves = [x.double().requires_grad_() for x in (q, k, v)]
    ref = sdpa(*leaves, mask, torch.float64)
    ref_g = torch.autograd.grad(ref, leaves, dout.double())
    single = longattn.Context()
    so, slse = single.forward(q, k, v, allpos, **pattern)
    sg = single.backward(q, k, v, so, dout, slse, allpos, **pattern)
    single.close()
    pos = torch.from_numpy(longattn.positions(S, P, r, "zigzag"))
    part = [x.index_select(1, pos) for x in (q, k, v, dout)]
    with longattn.Context(comm, strategy=strategy, ulysses_degree=degree, threads=1) as ctx:
        o, lse = ctx.forward(*part[:3], pos, **pattern)
        g = ctx.backward(*part[:3], o, part[3], lse, pos, **pattern)
    gdt = torch.float32 if dtype == torch.float32 else dtype
    rows = lambda t: t.index_select(1, pos)
    rule(f"{strategy} O", o.float(), rows(so).float(), rows(ref), dtype, 2)
    # dQ of the local rows; dK, dV of the local keys.
    for name, got, s1, rf in zip(("dQ", "dK", "dV"), g, sg, ref_g):
        rule(f"{strategy} {name}", got, rows(s1), rows(rf), gdt, 3)


CLUSTER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs", "clusters", "h200-node.ini")


def auto_case(comm):
    """strategy='auto': the plan's pick (strategy_used) gives the bits of that strategy named outright,
    through the Context and through the custom op."""
    P, r = comm.Get_size(), comm.Get_rank()
    S, Hq, Hkv, D = 192, 4, 2, 32
    q, k, v, _ = global_inputs(S, Hq, Hkv, D, torch.float32)
    pos = torch.from_numpy(longattn.positions(S, P, r, "zigzag"))
    part = [x.index_select(1, pos) for x in (q, k, v)]
    with longattn.Context(comm, strategy="auto", cluster=CLUSTER, threads=1) as ctx:
        o, lse = ctx.forward(*part, pos, causal=True)
        name, degree = ctx.strategy_used()
    assert name in ("ring", "ulysses", "hybrid", "allgather"), name
    with longattn.Context(comm, strategy=name, ulysses_degree=degree, threads=1) as ctx:
        o2, lse2 = ctx.forward(*part, pos, causal=True)
    assert torch.equal(o, o2) and torch.equal(lse, lse2), f"auto's pick ({name}, {degree}) differs from it named outright"
    lat.set_cluster(CLUSTER)
    grp = lat.register(comm)
    o3 = lat.attention(*part, causal=True, group=grp, strategy="auto", threads=1)
    o4 = lat.attention(*part, causal=True, group=grp, strategy=name, ulysses_degree=degree, threads=1)
    assert torch.equal(o3, o4), f"the custom op's auto differs from {name}"


def custom_op_case():
    S, H, D = 128, 2, 16
    q, k, v, dout = global_inputs(S, H, H, D, torch.float32, seed=5)
    full = [x.clone().requires_grad_() for x in (q, k, v)]
    lat.attention(*full, torch.arange(S), causal=True).backward(dout)
    group = lat.register(world)
    pos = lat.positions(S, group, "zigzag")
    part = [x.index_select(1, pos).requires_grad_() for x in (q, k, v)]
    o = lat.attention(*part, pos, causal=True, group=group)
    o.backward(dout.index_select(1, pos))
    for name, got, want in zip(("dQ", "dK", "dV"), part, full):
        torch.testing.assert_close(got.grad, want.grad.index_select(1, pos), rtol=1e-4, atol=2e-5,
                                   msg=lambda m: f"custom op {name}: {m}")


def bad_rank_case():
    q, k, v, _ = global_inputs(64, 2, 2, 16, torch.float32)
    pos = torch.from_numpy(longattn.positions(64, size, rank, "zigzag"))
    part = [x.index_select(1, pos) for x in (q, k, v)]
    if rank == size - 1:
        part[0] = part[0].double()
    with longattn.Context(world, timeout=30) as ctx:
        try:
            ctx.forward(*part, pos, causal=True)
            raise AssertionError("a bad q on the last rank was accepted")
        except TypeError as e:
            assert rank == size - 1 and "q: must be float32" in str(e), f"rank {rank}: {e}"
        except ValueError as e:
            assert rank != size - 1 and f"rank {size - 1}" in str(e), f"rank {rank}: {e}"


def layout_mismatch_case(strategy, degree):
    # Rank 0 shards zigzag, the others contiguous: positions overlap, which every rank must refuse.
    q = torch.randn(1, 64 // size, 4, 16)
    layout = "zigzag" if rank == 0 else "contiguous"
    grp = lat.register(world)
    try:
        lat.attention(q, q, q, causal=True, group=grp, layout=layout, strategy=strategy, ulysses_degree=degree)
        raise AssertionError(f"{strategy}: ranks with different layouts were accepted")
    except ValueError as e:
        assert "pos: position" in str(e) and "same layout" in str(e), f"rank {rank}: {e}"


def decode_case(placement):
    S, Hq, Hkv, D, steps = 190, 4, 2, 32, 3
    q, k, v, _ = global_inputs(S + steps, Hq, Hkv, D, torch.bfloat16, seed=11)
    pos = torch.from_numpy(longattn.positions(S, size, rank, "zigzag"))
    opts = dict(capacity=S + steps, kv_heads=Hkv, head_dim=D, dtype=torch.bfloat16, page_tokens=16)
    single = longattn.Context(threads=1)
    whole = longattn.KvCache(single, **opts)
    whole.write(0, torch.arange(S), k[:, :S], v[:, :S])
    whole.sync_lengths()
    with longattn.Context(world, threads=1) as ctx:
        cache = longattn.KvCache(ctx, placement=placement, **opts)
        cache.write(0, pos, k.index_select(1, pos), v.index_select(1, pos))
        cache.sync_lengths()
        for step in range(steps):
            t = S + step
            new = [x[:, t:t + 1] for x in (q, k, v)]
            o, lse = cache.decode(*new, causal=True, combine=("allgather", "allreduce")[step % 2])
            so, slse = whole.decode(*new, causal=True)
            n = t + 1
            mask = allowed(1, n, torch.tensor([t]), torch.arange(n), causal=True)
            ref = sdpa(q[:, t:t + 1].double(), k[:, :n].double(), v[:, :n].double(), mask, torch.float64)
            rule(f"decode {placement} step {step} O", o, so, ref, torch.float32, 2)
            assert torch.allclose(lse, slse, atol=1e-5), f"decode {placement} step {step}: LSE differs"
        assert cache.length() == S + steps
        held = world.allreduce(cache.stats()["tokens"])
        assert held == S + steps, f"decode {placement}: the ranks hold {held} tokens"
        # A bad q on the last rank: every rank raises, the cache unchanged.
        bad = q[:, :1].double() if rank == size - 1 else q[:, :1]
        try:
            cache.decode(bad, causal=True)
            raise AssertionError("a float64 q on the last rank was accepted")
        except TypeError as e:
            assert rank == size - 1 and "q: must be float32" in str(e), f"rank {rank}: {e}"
        except ValueError as e:
            assert rank != size - 1 and f"rank {size - 1} refused the step" in str(e), f"rank {rank}: {e}"
        assert cache.length() == S + steps
    single.close()


for dtype in (torch.float32, torch.bfloat16):
    for pattern in (dict(causal=True), dict(causal=True, window=(50, 0), cu_seqlens=[0, 70, 192])):
        cases = [("ring", 1), ("allgather", 1)]
        if 4 % size == 0:
            cases.append(("ulysses", size))
        if size == 4:
            cases.append(("hybrid", 2))
        for strategy, degree in cases:
            check(f"{strategy} {dtype} {pattern}", lambda: strategy_case(world, strategy, degree, dtype, pattern))
if size > 1:
    sub = world.Split(rank % 2, rank)
    check("split communicator", lambda: strategy_case(sub, "ring", 1, torch.float32, dict(causal=True)))
    sub.Free()
check("custom op", custom_op_case)
check("strategy auto", lambda: auto_case(world))
for placement in ("round-robin", "layout"):
    check(f"decode ({placement})", lambda: decode_case(placement))
if size > 1:
    check("bad tensor on one rank", bad_rank_case)
    for strategy, degree in [("ring", 1), ("ulysses", 1), ("allgather", 1)] + ([("hybrid", 2)] if size == 4 else []):
        check(f"layouts differ ({strategy})", lambda: layout_mismatch_case(strategy, degree))

for f in failures:
    print(f"rank {rank}: FAIL {f}", flush=True)
worst = world.allreduce(len(failures), op=MPI.MAX)
if rank == 0:
    print(f"dist_check: {size} ranks: {'PASS' if worst == 0 else 'FAIL'}", flush=True)
sys.exit(1 if worst else 0)
