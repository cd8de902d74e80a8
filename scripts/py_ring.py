#!/usr/bin/env python3
"""The bench's distributed ring job through Python, for the side-by-side with longattn-bench: under
mpirun, every rank times Context.forward (and backward) on its zigzag shard of synthetic inputs, and
rank 0 prints the median over iterations of the slowest rank's time, in the bench's units.
    mpirun -np 2 .venv/bin/python scripts/py_ring.py --tokens 16384 --heads 2 --head-dim 128 --causal"""
import argparse
import statistics
import time

import numpy as np
from mpi4py import MPI

import longattn


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--mode", choices=["fwd", "fwd+bwd"], default="fwd")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    comm = MPI.COMM_WORLD
    P, r = comm.Get_size(), comm.Get_rank()
    pos = longattn.positions(a.tokens, P, r, "zigzag")
    rng = np.random.default_rng(r)
    q, k, v, dout = (rng.standard_normal((1, len(pos), a.heads, a.head_dim), dtype=np.float32) for _ in range(4))
    ctx = longattn.Context(comm, strategy="ring", threads=a.threads)
    o, lse = ctx.forward(q, k, v, pos, causal=a.causal)
    fwd, bwd = [], []
    for it in range(a.warmup + a.iters):
        comm.Barrier()
        t0 = time.perf_counter()
        ctx.forward(q, k, v, pos, causal=a.causal, out=o, lse=lse)
        t1 = time.perf_counter()
        if a.mode == "fwd+bwd":
            comm.Barrier()
            t2 = time.perf_counter()
            ctx.backward(q, k, v, o, dout, lse, pos, causal=a.causal)
            t3 = time.perf_counter()
        if it >= a.warmup:
            fwd.append(comm.allreduce(t1 - t0, op=MPI.MAX) * 1e3)
            if a.mode == "fwd+bwd":
                bwd.append(comm.allreduce(t3 - t2, op=MPI.MAX) * 1e3)
    ctx.close()
    if r == 0:
        line = f"python ring ranks={P} tokens={a.tokens}: fwd_ms {statistics.median(fwd):.2f}"
        if bwd:
            line += f" bwd_ms {statistics.median(bwd):.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
