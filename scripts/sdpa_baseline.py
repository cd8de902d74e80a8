#!/usr/bin/env python3
"""PyTorch scaled_dot_product_attention (flash backend) at the shapes of a longattn-bench kernel CSV, and
the ratio of longattn's TFLOP/s to it. FLOPs are counted as longattn-bench counts them: 4*D*pairs per
head forward (pairs = L*L, or L*(L+1)/2 causal), 2.5 times that backward.

  scripts/sdpa_baseline.py --csv longattn.csv --heads 16 --head-dim 128 [--causal]
"""
import argparse
import csv
import statistics
import sys


def time_ms(torch, fn, iters, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--csv", required=True, help="longattn-bench --csv output of a kernel-mode fwd+bwd run")
    ap.add_argument("--heads", type=int, required=True)
    ap.add_argument("--head-dim", type=int, required=True)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    try:
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        print("sdpa_baseline: PyTorch is not installed: no baseline", file=sys.stderr)
        return 3
    if not torch.cuda.is_available():
        print("sdpa_baseline: no CUDA device visible to PyTorch", file=sys.stderr)
        return 3
    with open(args.csv, newline="") as f:
        rows = list(csv.DictReader(f))
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16, batch {args.batch}, "
          f"heads {args.heads}, head_dim {args.head_dim}, causal {args.causal}")
    print(f"#{'tokens':>8} {'la_fwd_TF':>10} {'sdpa_fwd_TF':>12} {'ratio':>6} {'la_bwd_TF':>10} {'sdpa_bwd_TF':>12} {'ratio':>6}")
    for row in rows:
        L = int(row["tokens"])
        shape = (args.batch, args.heads, L, args.head_dim)
        q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        pairs = L * (L + 1) // 2 if args.causal else L * L
        fwd_flop = 4.0 * args.head_dim * pairs * args.heads * args.batch
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=args.causal)
            grad = torch.randn_like(out)
            fwd = time_ms(torch, lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=args.causal),
                          args.iters, args.warmup)
            bwd = time_ms(torch, lambda: torch.autograd.grad(out, (q, k, v), grad, retain_graph=True),
                          args.iters, args.warmup)
        sdpa_fwd, sdpa_bwd = fwd_flop / fwd / 1e9, 2.5 * fwd_flop / bwd / 1e9
        la_fwd, la_bwd = float(row["fwd_GF/s"]) / 1e3, float(row["bwd_GF/s"]) / 1e3
        print(f" {L:>8} {la_fwd:>10.1f} {sdpa_fwd:>12.1f} {la_fwd / sdpa_fwd:>6.2f} "
              f"{la_bwd:>10.1f} {sdpa_bwd:>12.1f} {la_bwd / sdpa_bwd:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
