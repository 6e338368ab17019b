"""Cost of one small op inside `gradient`, and of backward per node: recur against torch
with requires_grad tensors, in one process, medians over repeats.

    python bench/op_overhead.py [--size 32] [--chain 2000] [--repeats 15]
"""
import argparse
import statistics
import time

import numpy as np

import recur as rc


def recur_costs(size, chain):
    W = rc.param(np.random.default_rng(0).standard_normal(size).astype(np.float32))
    timing = {}

    def loss():
        start = time.perf_counter()
        h = W
        for _ in range(chain):
            h = rc.tanh(h)
        timing["forward"] = time.perf_counter() - start
        return rc.sum(h)

    start = time.perf_counter()
    rc.gradient(loss, [W])
    total = time.perf_counter() - start
    return timing["forward"] / chain, (total - timing["forward"]) / chain


def torch_costs(size, chain):
    import torch
    W = torch.randn(size, requires_grad=True)
    start = time.perf_counter()
    h = W
    for _ in range(chain):
        h = torch.tanh(h)
    out = h.sum()
    forward = time.perf_counter() - start
    start = time.perf_counter()
    out.backward()
    return forward / chain, (time.perf_counter() - start) / chain


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--chain", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    try:
        import torch  # noqa: F401
        engines = {"recur": recur_costs, "torch": torch_costs}
    except ImportError:
        engines = {"recur": recur_costs}
    samples = {name: [] for name in engines}
    for name, costs in engines.items():       # warm-up
        costs(args.size, args.chain)
    for _ in range(args.repeats):              # interleaved
        for name, costs in engines.items():
            samples[name].append(costs(args.size, args.chain))
    print(f"tanh on {args.size} float32, a chain of {args.chain} ops, median of {args.repeats}")
    print(f"{'':8}{'op call (us)':>14}{'backward/node (us)':>20}")
    medians = {}
    for name, runs in samples.items():
        medians[name] = [statistics.median(r[i] for r in runs) * 1e6 for i in (0, 1)]
        print(f"{name:8}{medians[name][0]:14.2f}{medians[name][1]:20.2f}")
    if "torch" in medians:
        ratio = [t / r for t, r in zip(medians["torch"], medians["recur"])]
        print(f"{'torch/recur':8}{ratio[0]:14.2f}{ratio[1]:20.2f}")


if __name__ == "__main__":
    main()
