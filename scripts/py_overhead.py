#!/usr/bin/env python3
"""The Python path's per-call cost on tiny inputs (1 x 4 tokens x 1 head x 8 dims, one process, one
thread), medians of 2000 calls after 200: the longattn package (numpy in, outputs allocated), the
binding alone (outputs and pattern made once), and longattn.torch.attention in eager mode. Run in the venv:
    .venv/bin/python scripts/py_overhead.py"""
import statistics
import time

import numpy as np
import torch

import longattn
import longattn.torch as lat


def per_call_us(fn, n=2000, warm=200):
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        ts.append(time.perf_counter_ns() - t0)
    return statistics.median(ts) / 1e3


def main():
    torch.set_num_threads(1)
    q = np.random.default_rng(0).standard_normal((1, 4, 1, 8)).astype(np.float32)
    pos = np.arange(4, dtype=np.int64)
    ctx = longattn.Context(threads=1)
    o, lse = ctx.forward(q, q, q, pos, causal=True)
    pat = longattn.pattern(causal=True)
    raw = ctx._ctx
    tq = torch.from_numpy(q)
    tpos = torch.from_numpy(pos)
    rows = [
        ("longattn.Context.forward (numpy, outputs allocated)", lambda: ctx.forward(q, q, q, pos, causal=True)),
        ("binding alone (_core, outputs and pattern made once)", lambda: raw.forward(pat, pos, q, q, q, o, lse)),
        ("longattn.torch.attention (eager)", lambda: lat.attention(tq, tq, tq, tpos, causal=True)),
    ]
    print(f"# longattn {longattn.__version__} ({longattn.cpu_isa()}), torch {torch.__version__}; "
          "median per call of 2000 after 200, 1 x 4 x 1 x 8 fp32 causal")
    for name, fn in rows:
        print(f"{per_call_us(fn):8.1f} us  {name}")


if __name__ == "__main__":
    main()
