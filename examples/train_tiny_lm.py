"""A small byte-level causal transformer trained with its sequence sharded over MPI ranks by longattn.

    mpirun -np 4 python examples/train_tiny_lm.py                       # zigzag ring, 20 steps
    mpirun -np 4 python examples/train_tiny_lm.py --strategy hybrid --ulysses-degree 2
    mpirun -np 4 python examples/train_tiny_lm.py --docs                # packed documents (varlen)
    mpirun -np 4 python examples/train_tiny_lm.py --data-parallel 2     # 2 replicas x 2 sequence shards
    mpirun -np 2 python examples/train_tiny_lm.py --compile             # torch.compile(fullgraph=True)
    ... --check   # rank 0 also trains the single-process SDPA model and compares (exit 1 on a mismatch)

Every rank holds the rows of its positions (``longattn.torch.positions``), applies RoPE at those global
positions, and calls ``longattn.torch.attention``; everything else in the model is per token, so the
only cross-rank traffic is longattn's and the gradient all-reduce. The data is the project's own
docs/ARCHITECTURE.md read as bytes, so nothing is downloaded.

With --check, rank 0 trains the same model in one process with torch's scaled_dot_product_attention on
the same batches and requires (1) the loss at every step to match to --loss-rtol (relative), and (2)
every parameter's gradient at step 1 to pass FlashAttention's rule: max|g - g64| <= 2 max|g32 - g64|
+ eps32 max|g64|, with g64 from the SDPA model in float64 and g32 from it in float32.
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
from mpi4py import MPI

import longattn.torch as lat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seq", type=int, default=1024, help="tokens per sequence (sharded over a sequence group)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--strategy", default="ring", choices=["ring", "ulysses", "hybrid", "allgather"])
    p.add_argument("--ulysses-degree", type=int, default=1)
    p.add_argument("--layout", default="zigzag", choices=["zigzag", "striped", "contiguous"])
    p.add_argument("--docs", action="store_true", help="pack several documents per sequence (varlen attention)")
    p.add_argument("--data-parallel", type=int, default=1,
                   help="replicas; the world is split into this many sequence groups (an mpi4py Split)")
    p.add_argument("--compile", action="store_true", help="torch.compile(fullgraph=True) the model")
    p.add_argument("--check", action="store_true", help="compare with the single-process SDPA model")
    p.add_argument("--loss-rtol", type=float, default=1e-4)
    p.add_argument("--text", default=os.path.join(ROOT, "docs", "ARCHITECTURE.md"))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    for name in ("steps", "seq", "layers", "dim", "heads", "kv_heads", "data_parallel", "ulysses_degree"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(a, name)}")
    if a.heads % a.kv_heads or a.dim % a.heads or (a.dim // a.heads) % 2:
        p.error(f"--heads {a.heads} must be a multiple of --kv-heads {a.kv_heads} and divide --dim {a.dim} "
                "into an even head size")
    return a


# ---- the model: plain PyTorch; attention is a function of (q, k, v, rope positions) ----

def rope(x, pos, base=10000.0):
    """Rotary embedding of x [B, S, H, D] at positions pos [S] (the global positions of the rows)."""
    d = x.shape[-1]
    inv = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = pos.to(torch.float64)[:, None] * inv[None, :]
    cos, sin = ang.cos().to(x.dtype)[None, :, None, :], ang.sin().to(x.dtype)[None, :, None, :]
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class Block(torch.nn.Module):
    def __init__(self, dim, heads, kv_heads):
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, dim // heads
        self.norm1, self.norm2 = torch.nn.RMSNorm(dim), torch.nn.RMSNorm(dim)
        self.q = torch.nn.Linear(dim, dim, bias=False)
        self.kv = torch.nn.Linear(dim, 2 * kv_heads * self.hd, bias=False)
        self.o = torch.nn.Linear(dim, dim, bias=False)
        self.up = torch.nn.Linear(dim, 4 * dim, bias=False)
        self.down = torch.nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x, pos, rope_pos, cu, attend):
        B, S, _ = x.shape
        h = self.norm1(x)
        q = self.q(h).view(B, S, self.heads, self.hd)
        k, v = self.kv(h).view(B, S, 2, self.kv_heads, self.hd).unbind(2)
        o = attend(rope(q, rope_pos), rope(k, rope_pos), v, pos, cu)
        x = x + self.o(o.reshape(B, S, -1))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class TinyLM(torch.nn.Module):
    def __init__(self, a):
        super().__init__()
        self.embed = torch.nn.Embedding(256, a.dim)
        self.blocks = torch.nn.ModuleList(Block(a.dim, a.heads, a.kv_heads) for _ in range(a.layers))
        self.norm = torch.nn.RMSNorm(a.dim)
        self.head = torch.nn.Linear(a.dim, 256, bias=False)

    def forward(self, tokens, pos, rope_pos, cu, attend):
        x = self.embed(tokens)
        for b in self.blocks:
            x = b(x, pos, rope_pos, cu, attend)
        return self.head(self.norm(x))


# ---- data: byte windows of the text; with --docs, documents end at the text's blank lines ----

def batch(text, step, a):
    """[dp, seq + 1] bytes (inputs and next-byte targets) of the given step, and per replica the
    cu_seqlens of its documents (None without --docs)."""
    rows, docs = [], []
    for r in range(a.data_parallel):
        start = ((step * a.data_parallel + r) * a.seq) % (len(text) - a.seq - 1)
        window = text[start:start + a.seq + 1]
        rows.append(window)
        if a.docs:  # a document ends after each blank line (at least 16 bytes long, the last one at seq)
            ends, last = [0], 0
            for i in range(a.seq - 1):
                if window[i] == 10 and window[i + 1] == 10 and i + 2 - last >= 16 and a.seq - (i + 2) >= 16:
                    ends.append(i + 2)
                    last = i + 2
            ends.append(a.seq)
            docs.append(torch.tensor(ends, dtype=torch.int64))
        else:
            docs.append(None)
    return torch.tensor(rows, dtype=torch.int64), docs


def rope_positions(pos, cu):
    """Positions inside the document (RoPE restarts at each document start) or the global ones."""
    if cu is None:
        return pos
    start = cu[torch.bucketize(pos, cu, right=True) - 1]
    return pos - start


# ---- one training run: distributed with longattn, or one process with SDPA (the reference) ----

def sdpa_attend(q, k, v, pos, cu):
    """The reference: the whole sequence in one process, causal (within documents with cu)."""
    mask = pos[None, :] <= pos[:, None]
    if cu is not None:
        doc = torch.bucketize(pos, cu, right=True)
        mask &= doc[None, :] == doc[:, None]
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, enable_gqa=q.shape[2] != k.shape[2])
    return o.transpose(1, 2)


def longattn_attend(a, group):
    """This rank's rows (at global positions pos) attending to the whole sharded sequence."""
    def attend(q, k, v, pos, cu):
        return lat.attention(q, k, v, pos, causal=True, cu_seqlens=cu, seq_len=a.seq, group=group,
                             strategy=a.strategy, ulysses_degree=a.ulysses_degree, layout=a.layout)
    return attend


def train(a, text, dtype, world=None, group=None, replica=0, grads_at=1):
    """Losses at every step and every parameter's gradient at step `grads_at` (1-based).

    world None: one process holding every replica's whole sequence, SDPA (the reference). Otherwise
    this rank holds the rows of its positions in replica `replica`'s sequence (group: its handle)."""
    torch.manual_seed(a.seed)
    model = TinyLM(a).to(dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    distributed = world is not None
    if distributed:
        pos = lat.positions(a.seq, group, a.layout)
    else:
        pos = torch.arange(a.seq)
    forward = torch.compile(model, fullgraph=True) if a.compile else model
    attend = longattn_attend(a, group) if distributed else sdpa_attend
    losses, grads = [], None
    for step in range(1, a.steps + 1):
        data, docs = batch(text, step - 1, a)
        rows = [replica] if distributed else range(a.data_parallel)
        total = torch.zeros((), dtype=dtype)
        opt.zero_grad(set_to_none=False)
        for r in rows:
            cu = docs[r]
            inputs, targets = data[r, :-1][pos], data[r, 1:][pos]
            logits = forward(inputs[None], pos, rope_positions(pos, cu), cu, attend)
            # The mean over every token of every replica: this rank's share of the sum.
            loss = F.cross_entropy(logits[0], targets, reduction="sum") / (a.seq * a.data_parallel)
            loss.backward()
            total += loss.detach()
        if distributed:  # sum the shares (and the gradients) over every rank of every replica
            flat = torch.cat([total.view(1)] + [p.grad.view(-1) for p in model.parameters()])
            world.Allreduce(MPI.IN_PLACE, flat.numpy())
            total = flat[0]
            offset = 1
            for p in model.parameters():
                p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
                offset += p.numel()
        if step == grads_at:
            grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        losses.append(total.item())
        opt.step()
    return losses, grads


# The rule's floor, relative to each parameter's largest gradient entry: one float32 epsilon. (The
# gradients here are about 1e-2, so the kernel tests' absolute 1e-5 would hide every error.)
FLOOR = torch.finfo(torch.float32).eps


def check(a, text, losses, grads):
    """Rank 0: the single-process SDPA runs (fp32 for the losses and the plain gradients, compiled as
    the run under test is; fp64 in eager mode for the reference gradients); returns the failures."""
    ref_losses, g32 = train(a, text, torch.float32)
    a64 = argparse.Namespace(**{**vars(a), "steps": 1, "compile": False})
    _, g64 = train(a64, text, torch.float64)
    failures = []
    worst = 0.0
    for s, (got, ref) in enumerate(zip(losses, ref_losses), 1):
        rel = abs(got - ref) / abs(ref)
        worst = max(worst, rel)
        if rel > a.loss_rtol:
            failures.append(f"step {s}: loss {got:.8f} vs SDPA {ref:.8f} (relative {rel:.2e} > {a.loss_rtol:g})")
    print(f"check: loss at {len(losses)} steps within {worst:.2e} relative of the SDPA model", flush=True)
    ratios = []
    for n, g in grads.items():
        ref = g64[n]
        err = (g.double() - ref).abs().max().item()
        base = (g32[n].double() - ref).abs().max().item()
        floor = FLOOR * ref.abs().max().item()
        ratios.append((err / (2 * base + floor), n))
        if err > 2 * base + floor:
            failures.append(f"gradient of {n}: max|g - g64| = {err:.3g} exceeds 2 * {base:.3g} + {floor:.3g}")
    r, n = max(ratios)
    print(f"check: step-1 gradients of {len(grads)} parameters, worst max|g - g64| / (2 max|g32 - g64| + floor) = "
          f"{r:.2f} ({n}; at most 1 passes)", flush=True)
    return failures


def main():
    a = parse()
    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    if size % a.data_parallel:
        if rank == 0:
            print(f"--data-parallel {a.data_parallel} must divide the rank count {size}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    group_size = size // a.data_parallel
    replica = rank // group_size
    comm = world.Split(color=replica, key=rank) if a.data_parallel > 1 else world
    group = lat.register(comm)
    with open(a.text, "rb") as f:
        text = f.read()
    if len(text) < a.seq + 2:
        if rank == 0:
            print(f"--seq {a.seq}: the text {a.text} has only {len(text)} bytes", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    losses, grads = train(a, text, torch.float32, world, group, replica)
    elapsed = time.perf_counter() - t0
    if rank == 0:
        for s, l in enumerate(losses, 1):
            print(f"step {s:3d}  loss {l:.6f}", flush=True)
        print(f"{size} ranks ({a.data_parallel} x {group_size}), {a.strategy}, {a.layout}"
              f"{', documents' if a.docs else ''}{', compiled' if a.compile else ''}: {a.steps} steps of "
              f"{a.data_parallel} x {a.seq} tokens in {elapsed:.2f} s", flush=True)
    failures = check(a, text, losses, grads) if a.check and rank == 0 else []
    failures = world.bcast(failures, root=0)
    if failures:
        if rank == 0:
            print("FAILED:\n  " + "\n  ".join(failures), file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
