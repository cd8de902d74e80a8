#!/usr/bin/env python3
"""longattn's CPU kernels against PyTorch on the same shapes and thread counts, in one run, alternating.

Peers per pattern: dense and causal against scaled_dot_product_attention (its CPU flash kernel); a
causal window and packed documents against SDPA with a boolean mask and FlexAttention compiled for
the CPU (torch.compile of flex_attention with its block mask; PyTorch has no FlexAttention backward
on the CPU, so its fwd+bwd columns read n/a). For each (length, head dim, pattern,
threads), `rounds` times: the bench (kernel mode, one timed iteration after one warm-up) then each peer
(the same); medians. Ratio = peer time / longattn time (above 1: longattn is faster). The bench's
measured FMA peak of one core heads the table. Run in the project's venv (DEVELOPERS.md):

    bash scripts/peers.sh [--lengths 4K,16K] [--head-dims 64,128] [--patterns dense,causal,window,docs]
"""
import argparse
import csv
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATTERNS = {  # name -> (bench options, peers)
    "dense": ([], ["sdpa"]),
    "causal": (["--causal", "true"], ["sdpa"]),
    "window": (["--causal", "true", "--window", "512,0"], ["sdpa-mask", "flex"]),
    "docs": (["--causal", "true", "--docs", "8"], ["sdpa-mask", "flex"]),
}


def tokens(text):
    return int(text[:-1]) * 1024 if text.upper().endswith("K") else int(text)


def bench(a, L, D, pattern, threads, peak=False):
    """(fwd_ms, bwd_ms) of one bench run, or the header's measured peak (GFLOP/s) with peak=True."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "k.csv")
        cmd = [a.bench, "--mode", "fwd+bwd", "-b", str(L), "--heads", str(a.heads), "--kv-heads", str(a.kv_heads),
               "--head-dim", str(D), "-t", str(threads), "-n", "1", "-w", "1", "-c", "false", "--dtype", a.dtype,
               "--peak", str(peak).lower(), "--csv", out] + PATTERNS[pattern][0] + \
              (["--cpu-isa", a.cpu_isa] if a.cpu_isa else [])
        run = subprocess.run(cmd, check=True, capture_output=True, text=True)
        if peak:
            return float(re.search(r"FMA peak of one core \(measured\): ([0-9.]+)", run.stdout).group(1))
        with open(out) as f:
            row = next(csv.DictReader(f))
        return float(row["fwd_ms"]), float(row["bwd_ms"]), float(row["density"])


def allowed(L, pattern):
    """The bool mask [L, L] of a pattern (as the bench builds it: 8 equal documents, window 512 left)."""
    i = torch.arange(L)
    m = i[None, :] <= i[:, None]
    if pattern == "window":
        m &= i[None, :] >= i[:, None] - 512
    if pattern == "docs":
        doc = i * 8 // L
        m &= doc[None, :] == doc[:, None]
    return m


def peer_fn(name, L, pattern, heads, kv_heads):
    """A callable (q, k, v) -> O of bhsd inputs for one peer."""
    gqa = heads != kv_heads
    if name == "sdpa":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=pattern == "causal", enable_gqa=gqa)
    if name == "sdpa-mask":
        mask = allowed(L, pattern)
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    if pattern == "window":
        def keep(b, h, qi, ki):
            return (ki <= qi) & (ki >= qi - 512)
    else:
        doc = torch.arange(L) * 8 // L

        def keep(b, h, qi, ki):
            return (ki <= qi) & (doc[qi] == doc[ki])
    block = create_block_mask(keep, None, None, L, L, device="cpu")
    compiled = torch.compile(flex_attention, fullgraph=True)
    return lambda q, k, v: compiled(q, k, v, block_mask=block, enable_gqa=gqa)


def time_peer(fn, L, D, heads, kv_heads, threads, dtype, backward=True):
    """(fwd_ms, fwd+bwd_ms or None without backward), one timed call of each after one warm-up."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    q, dout = (torch.randn(1, heads, L, D, generator=g).to(dtype) for _ in range(2))
    k, v = (torch.randn(1, kv_heads, L, D, generator=g).to(dtype) for _ in range(2))
    with torch.no_grad():
        fn(q, k, v)
        t0 = time.perf_counter()
        fn(q, k, v)
        fwd = (time.perf_counter() - t0) * 1e3
    if not backward:
        return fwd, None
    leaves = [x.requires_grad_() for x in (q, k, v)]
    both = []
    for _ in range(2):
        t0 = time.perf_counter()
        fn(*leaves).backward(dout)
        both.append((time.perf_counter() - t0) * 1e3)
    return fwd, both[-1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", default="4K,16K")
    ap.add_argument("--head-dims", default="64,128")
    ap.add_argument("--patterns", default="dense,causal,window,docs")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--kv-heads", type=int, default=0, help="0: as many as heads")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bench", default=os.path.join(ROOT, "build", "longattn-bench"))
    ap.add_argument("--cpu-isa", default="", help="the bench's kernels (its --cpu-isa); PyTorch's own are set by "
                    "ATEN_CPU_CAPABILITY and MKL_ENABLE_INSTRUCTIONS in the environment, and the header says which ran")
    a = ap.parse_args()
    a.kv_heads = a.kv_heads or a.heads
    for p in a.patterns.split(","):
        if p not in PATTERNS:
            ap.error(f"--patterns: {p!r} is not one of {', '.join(PATTERNS)}")
    tdtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[a.dtype]
    peak = bench(a, 256, 64, "dense", 1, peak=True)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"# {cpu}; FMA peak of one core {peak:.1f} GFLOP/s fp32; torch {torch.__version__}; {a.dtype}, "
          f"{a.heads} heads over {a.kv_heads} kv heads, median of {a.rounds} alternating rounds; longattn's kernels "
          f"{a.cpu_isa or 'as dispatched'}, PyTorch's {torch.backends.cpu.get_cpu_capability()}")
    print("| L | D | pattern | thr | longattn fwd ms | fwd % peak | peer | peer fwd ms | fwd ratio | "
          "longattn fwd+bwd ms | peer fwd+bwd ms | fwd+bwd ratio |")
    print("|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    m = statistics.median
    for L in map(tokens, a.lengths.split(",")):
        for D in map(int, a.head_dims.split(",")):
            for pattern in a.patterns.split(","):
                peers = PATTERNS[pattern][1]
                fns = {p: peer_fn(p, L, pattern, a.heads, a.kv_heads) for p in peers}
                for t in map(int, a.threads.split(",")):
                    la_f, la_fb, density = [], [], 1.0
                    got = {p: ([], []) for p in peers}
                    for _ in range(a.rounds):
                        f, b, density = bench(a, L, D, pattern, t)
                        la_f.append(f)
                        la_fb.append(f + b)
                        for p in peers:
                            f, fb = time_peer(fns[p], L, D, a.heads, a.kv_heads, t, tdtype, p != "flex")
                            got[p][0].append(f)
                            got[p][1].append(fb)
                    pct = 4 * D * density * L * L * a.heads / (m(la_f) * 1e-3) / 1e9 / (peak * t) * 100
                    for p in peers:
                        pf = m(got[p][0])
                        both = "n/a | n/a" if got[p][1][0] is None else \
                            f"{m(got[p][1]):.1f} | {m(got[p][1]) / m(la_fb):.2f}"
                        print(f"| {L // 1024}K | {D} | {pattern} | {t} | {m(la_f):.1f} | {pct:.0f}% | {p} | "
                              f"{pf:.1f} | {pf / m(la_f):.2f} | {m(la_fb):.1f} | {both} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
