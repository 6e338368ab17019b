"""A recurrent layer's stepwise loop, as the seeds write it (`[m(x) for x in xs]`, the layer
alone), in a process that has run nothing else: recur against torch's cell loop.

The suite times every case in one long process, whose heap earlier cases have shaped. This
times what a short script sees: each sample is a new interpreter that imports one engine,
builds the layer, runs a few passes to warm up, then times passes of inference for
`--seconds`; the engines alternate, and each row gives the medians over `--rounds`, with the
page faults each step took (minor faults of the timed passes over their steps).

    python bench/new_process.py [--rounds 3] [--seconds 1.5] [--configs 32,64,16,50 ...]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

CELLS = ["rnn", "lstm", "gru"]
CONFIGS = ["32,64,16,50", "32,128,32,100"]

SAMPLE = r"""
import json, resource, statistics, sys, time
import numpy as np
engine, cell, config, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
F, H, B, T = map(int, config.split(","))
xs = list(np.random.default_rng(0).standard_normal((T, B, F), dtype=np.float32))
if engine == "recur":
    import recur as rc
    layer = {"rnn": rc.RNN, "lstm": rc.LSTM, "gru": rc.GRU}[cell](F, H)
    def one_pass():
        rc.reset(layer)
        return [layer(x) for x in xs]
else:
    import torch
    torch.set_grad_enabled(False)
    cells = {"rnn": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}
    step = cells[cell](F, H)
    xs = [torch.from_numpy(x) for x in xs]
    def one_pass():
        state = (torch.zeros(B, H), torch.zeros(B, H)) if cell == "lstm" else torch.zeros(B, H)
        outputs = []
        for x in xs:
            state = step(x, state)
            outputs.append(state[0] if cell == "lstm" else state)
        return outputs
for _ in range(3):
    one_pass()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
times = []
end = time.perf_counter() + seconds
while time.perf_counter() < end:
    start = time.perf_counter()
    one_pass()
    times.append(time.perf_counter() - start)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
print(json.dumps({"ms": statistics.median(times) * 1e3, "faults": faults / (len(times) * T)}))
"""


def sample(engine, cell, config, seconds):
    completed = subprocess.run([sys.executable, "-c", SAMPLE, engine, cell, config, str(seconds)],
                               stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(completed.stdout)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--configs", nargs="+", default=CONFIGS)
    parser.add_argument("--engines", nargs="+", default=["recur", "torch"])
    args = parser.parse_args(argv)
    with_ratio = args.engines == ["recur", "torch"]
    print(f"Stepwise inference of a layer alone, each sample a new process "
          f"({args.rounds} rounds of {args.seconds} s, medians)\n")
    print("| cell | F,H,B,T | " + " | ".join(f"{e} ms | {e} faults/step" for e in args.engines)
          + (" | torch/recur |" if with_ratio else " |"))
    print("|---|---|" + "--:|--:|" * len(args.engines) + ("--:|" if with_ratio else ""))
    for config in args.configs:
        for cell in CELLS:
            runs = {engine: [] for engine in args.engines}
            for _ in range(args.rounds):
                for engine in args.engines:
                    runs[engine].append(sample(engine, cell, config, args.seconds))
            medians = {engine: (statistics.median(r["ms"] for r in runs[engine]),
                                statistics.median(r["faults"] for r in runs[engine]))
                       for engine in args.engines}
            row = f"| {cell} | {config} | " + " | ".join(
                f"{medians[e][0]:.4g} | {medians[e][1]:.2f}" for e in args.engines)
            if with_ratio:
                row += f" | {medians['torch'][0] / medians['recur'][0]:.2f}"
            print(row + " |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
