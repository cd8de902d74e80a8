#!/usr/bin/env python3
"""The scaling study's plots (launch/scaling-study): one PNG of four panels from its scaling.csv.

Speedup and efficiency against ranks, measured and (with model_ms columns) predicted by the cost model;
the time of each rank count split into kernels and communication (measured: comm% of the time blocked on
transfers; predicted: the model's exposed communication); the peak memory growth per rank. With several
sweep entries per rank count, the largest (the last row of each count) is plotted.

    python scripts/plot_scaling.py scaling.csv scaling.png
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src, dst):
    with open(src) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        sys.exit(f"plot_scaling: no rows in {src}")
    last = {}
    for r in rows:  # the last (largest) entry of each rank count
        last[int(r["ranks"])] = r
    ranks = sorted(last)
    get = lambda key: [float(last[p][key]) for p in ranks]
    model = "model_ms" in rows[0]
    fig, ax = plt.subplots(2, 2, figsize=(11, 8))
    a = ax[0][0]
    a.plot(ranks, get("speedup"), "o-", label="measured")
    if model:
        a.plot(ranks, get("model_speedup"), "s--", label="cost model")
    a.plot(ranks, [p / ranks[0] for p in ranks], ":", color="gray", label="ideal")
    a.set(title="speedup", xlabel="ranks", ylabel=f"speedup over {ranks[0]} rank(s)")
    a.legend()
    a = ax[0][1]
    a.plot(ranks, get("efficiency"), "o-", label="measured")
    if model:
        a.plot(ranks, get("model_efficiency"), "s--", label="cost model")
    a.set(title="parallel efficiency", xlabel="ranks", ylabel="efficiency", ylim=(0, 1.1))
    a.legend()
    a = ax[1][0]
    t, comm = get("time_ms"), get("comm%")
    width = 0.38 if model else 0.6
    xs = list(range(len(ranks)))
    kern = [x * (1 - c / 100) for x, c in zip(t, comm)]
    a.bar([x - (width / 2 if model else 0) for x in xs], kern, width, label="measured: kernels and the rest")
    a.bar([x - (width / 2 if model else 0) for x in xs], [x - k for x, k in zip(t, kern)], width, bottom=kern,
          label="measured: blocked on transfers")
    if model:
        m, mk = get("model_ms"), get("model_kern%")
        mkern = [x * k / 100 for x, k in zip(m, mk)]
        a.bar([x + width / 2 for x in xs], mkern, width, label="model: kernels")
        a.bar([x + width / 2 for x in xs], [x - k for x, k in zip(m, mkern)], width, bottom=mkern,
              label="model: exposed communication")
    a.set(title="time split", xlabel="ranks", ylabel="ms", xticks=xs, xticklabels=[str(p) for p in ranks])
    a.legend(fontsize=8)
    a = ax[1][1]
    a.plot(ranks, get("peak_MB"), "o-")
    a.set(title="memory per rank", xlabel="ranks", ylabel="peak RSS growth, MB")
    tokens = last[ranks[-1]]["tokens"]
    fig.suptitle(f"{src}: {tokens} tokens at {ranks[-1]} ranks")
    fig.tight_layout()
    fig.savefig(dst, dpi=90)
    print(f"# plots: {dst}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: plot_scaling.py scaling.csv out.png")
    main(sys.argv[1], sys.argv[2])
