"""recur against torch: training and inference of RNN, LSTM and GRU models on the CPU.

    python bench/suite.py                 # the full run; writes bench/RESULTS.md
    python bench/suite.py --quick         # smoke run: one tiny config, 1 repeat, prints only
    python bench/suite.py --configs 64,256,64,100 --models lstm --threads 1 --output /tmp/r.md
    python bench/suite.py --processes 5 --configs 32,128,32,100 --models gru --output /tmp/r.md

What is measured, per config (input F, hidden H, batch B, time T), model (rnn, lstm, gru),
style and mode, for each engine:
- style "sequence": one recurrent layer over a (T, B, F) array, then Dense(H => 3) on every
  step's output (recur `Chain(LSTM(F, H), Dense(H, 3))`, torch `nn.LSTM` + `nn.Linear`);
- style "stepwise": a Python loop over the steps (recur `[m(x) for x in seq]`, torch a loop
  over `nn.LSTMCell` with the Linear head applied at every step);
- mode "train": one step = reset, forward over the whole sequence, MSE against a target on
  every step (one mean over the sequence; stepwise: the sum of per-step means), backward,
  Adam update; mode "infer": forward only (torch under `inference_mode`).

Method: both engines run in one process, warm-up first (two steps each: the first allocates
buffers and optimiser state, the second calibrates how many steps make one sample last
`--min-sample-ms`), then `--repeats` samples per engine, alternating which engine goes
first, each sample after a pause of SETTLE_SECONDS so that the other engine's worker
threads have stopped spinning, and after WAKE_SECONDS of the engine's own step untimed
(the machine's wake-up from the pause); the reported time is the median per-step time.
While a case is timed, /proc/stat tells how many cores other processes kept busy; above
FOREIGN_LOAD_TOLERANCE the case is timed again after a pause (up to `--retries` times) and
the quietest attempt is kept, its load shown in the row. Before and after a case, recur's
crew times its hand-over of an empty task to its helper thread and back (recur's
handover_seconds): on a virtual machine whose two vCPUs the host sometimes places in two
core complexes, that round trip and every line one thread passes the other cost several
times more, and the row shows it (‡ above HANDOVER_FAR_US at either end); such rows are
timed like any other, not again. Each thread setting runs in its own
worker process (`--processes N`: N of them, one after the other, below), because OpenBLAS
reads OPENBLAS_NUM_THREADS only when it loads: "default"
leaves the environment alone (both engines use every core), "1" sets OPENBLAS_NUM_THREADS,
OMP_NUM_THREADS, MKL_NUM_THREADS and RECUR_NUM_THREADS to 1 and calls
torch.set_num_threads(1).

Where the host puts a process's two threads decides much of what it measures: on this
machine one row's time differed by up to a third from one process to the next for recur
and by up to 60% for torch (2026-12-07, the GRU and LSTM at 32,128,32,100 stepwise), so a
row whose ratio lies near its target passes or fails by the draw. With
`--processes N` each thread setting is timed in N worker processes in turn, and each row
reports the process whose torch/recur ratio is the median of the N (both times from that
one process, as with one), followed by the lowest and highest ratio and in how many of the N
processes the row met its targets. A pass's GEMM and multiply-add rates at its start and
end are those of its first process's start and its last process's end.

FLOP count (GEMM work only; elementwise work is not counted). With G gate blocks (RNN 1,
GRU 3, LSTM 4), N = T·B rows and the 3-wide head:
    forward  = 2·N·(G·H·(F + H) + 3·H)
    backward = 2·N·(G·H·(F + 2·H) + 2·3·H)      # dWi, dWh, dh through Wh; head dW and dh
    training = forward + backward = 2·N·(G·H·(2F + 3H) + 9·H)
The input gradient dX is not counted: X is data, neither engine needs it. recur's GFLOP/s
is this count over recur's median time; the GEMM limit it is compared with is a float32
1024×1024×1024 product through recur's own `@` (its panel kernel on the crew, where recur's
large products run), timed in the same worker at the same thread count as a third entry
among each row's interleaved samples (its median). A machine shared with others can drift
by a factor of two over minutes, so the fraction compares two rates taken under the same
conditions; the product is also timed at the start and end of each pass, for the report's
header (and as the limit of a row timed without recur). Under each pass's summary, every
missed row shows the time recur would need to meet it and the rate that time means as a
fraction of the row's limit: past 100%, meeting it would take more than the arithmetic of
recur's own large product on this machine. The same rate is also set against the
multiply-add ceiling, measured at the start and end of each pass (recur's fma_peak_flops:
float32 FMAs with nothing to load or store, on recur's threads; the faster of the two
counts): past 100%, the row's products alone would outlast the time needed, on any kernel.

Fairness notes: torch's GRU has a second bias `b_hn` inside the reset gate's product that
recur's (Flux's) GRU does not have; it is zeroed before timing and left to train, which does
not change the work done. Both use Adam(lr=1e-3) with each library's default
implementation. recur's initial state is a trainable parameter (its gradient is part of the
work), torch's is a constant zero.

Also measured: the peak resident memory (max RSS) of a process training the LSTM sequence
model at the selected config with the largest hidden size, one process per engine; `import recur` against
`import torch` (a fresh interpreter each time, median); and the installed size of each
package as a wheel installs it (its package directories without __pycache__ and without
Cython/C sources), plus the installed size of its declared runtime dependencies.
"""
import argparse
import glob
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone

import numpy as np

CONFIGS = ["8,32,1,50", "32,64,16,50", "32,128,32,100", "64,256,64,100", "128,512,64,50",
           "256,1024,32,25"]
MODELS = ["rnn", "lstm", "gru"]
STYLES = ["sequence", "stepwise"]
MODES = ["train", "infer"]
GATE_BLOCKS = {"rnn": 1, "gru": 3, "lstm": 4}
HEAD_OUT = 3
GEMM_SIZE = 1024
GEMM_PROBE = "recur's GEMM"   # the probe timed among each row's samples (time_case)
LEARNING_RATE = 1e-3
MEMORY_TRAINING_STEPS = 3
# A case timed while other processes kept more than this many cores busy is timed again
# (up to --retries times, after a pause), and the quietest attempt is kept: on a shared
# machine, spinning OpenMP/OpenBLAS worker threads turn a little foreign load into
# many-fold slowdowns.
FOREIGN_LOAD_TOLERANCE = 0.2
RETRY_PAUSE_SECONDS = 2.0
# recur's hand-over to its helper and back, in µs, above which the two threads sit far apart:
# on this host 0.12-0.16 µs with both vCPUs in one core complex, 0.48-0.58 in two (60
# samples; a cache line's round trip between the two CPUs, timed beside each, took 51-77 ns
# and 326-373 ns).
HANDOVER_FAR_US = 0.3
# Both engines keep worker threads spinning for a while after a parallel call (recur's crew
# helper, OpenMP for torch), and a spinning worker on a 2-core machine takes a core from
# whatever runs next: timed back to back, each engine ran against the other's spinning
# threads and lost up to half its speed. Every sample starts after this pause, long enough
# (measured: 0.2 s was not always) for the previous engine's threads to go to sleep.
SETTLE_SECONDS = 0.4
# The first few milliseconds of work after such a pause run far slower on some machines:
# on this one's 2 vCPUs (2026-12-05) the first RNN 8,32,1,50 training step after a 0.4 s
# sleep took 10-15 ms against 0.1 (after 0.1 s, 4 ms; one thread alike, and a numpy
# product alike), wherever the time went on the host. A sample of 50 ms then carried that
# wake-up, and the step timed to size the samples carried it whole (recur's step timed at
# 2.7 ms for 0.09, torch's 19.9 for 2.7). So after every pause the engine first runs its
# step untimed for this long, at least once: both engines meet their samples awake, as
# they are through a training loop.
WAKE_SECONDS = 0.03
DEFAULT_OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
SINGLE_THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                     "RECUR_NUM_THREADS": "1"}

# Issue 5's targets. Hidden sizes split at 128/256; the GEMM-throughput target starts at 512.
SMALL_HIDDEN, LARGE_HIDDEN, GEMM_TARGET_HIDDEN = 128, 256, 512
GEMM_FRACTION_TARGET = 0.8
IMPORT_SECONDS_TARGET = 0.3
MEMORY_FRACTION_TARGET = 0.5


class Config(tuple):
    """(input, hidden, batch, time), parsed from "F,H,B,T"."""

    def __new__(cls, text):
        values = [int(v) for v in str(text).split(",")]
        if len(values) != 4 or min(values) < 1:
            raise argparse.ArgumentTypeError(f"a config is F,H,B,T (4 positive ints), got {text!r}")
        return super().__new__(cls, values)

    input, hidden, batch, time = (property(lambda self, i=i: self[i]) for i in range(4))

    def __str__(self):
        return ",".join(map(str, self))


def gemm_flops(model, config, mode):
    """The GEMM floating-point operations of one step (formula in the module docstring)."""
    F, H, B, T = config
    G, rows = GATE_BLOCKS[model], T * B
    forward = 2 * rows * (G * H * (F + H) + HEAD_OUT * H)
    if mode == "infer":
        return forward
    return forward + 2 * rows * (G * H * (F + 2 * H) + 2 * HEAD_OUT * H)


def sequence_data(config):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((config.time, config.batch, config.input), dtype=np.float32)
    Y = rng.standard_normal((config.time, config.batch, HEAD_OUT), dtype=np.float32)
    return X, Y


# ---------------------------------------------------------------- one step of each engine

def recur_step(model_name, style, mode, config, X, Y):
    """A function running one recur step of this case."""
    import recur as rc
    rc.seed(0)
    layer = {"rnn": rc.RNN, "lstm": rc.LSTM, "gru": rc.GRU}[model_name]
    model = rc.Chain(layer(config.input, config.hidden), rc.Dense(config.hidden, HEAD_OUT))
    if style == "sequence":
        def forward():
            return model(X)

        def loss():
            return rc.mse(model(X), Y)
    else:
        xs, ys = list(X), list(Y)

        def forward():
            return [model(x) for x in xs]

        def loss():
            return sum(rc.mse(model(x), y) for x, y in zip(xs, ys))

    if mode == "infer":
        def step():
            rc.reset(model)
            forward()
        return step

    ps, opt = rc.params(model), rc.Adam(LEARNING_RATE)

    def step():
        rc.reset(model)
        _, grads = rc.value_and_gradient(loss, ps)
        rc.update(opt, ps, grads)
    return step


def torch_step(model_name, style, mode, config, X, Y):
    """A function running one torch step of this case."""
    import torch
    import torch.nn.functional as tF
    from torch import nn
    torch.manual_seed(0)
    X, Y = torch.from_numpy(X), torch.from_numpy(Y)
    hidden = config.hidden
    head = nn.Linear(hidden, HEAD_OUT)
    if style == "sequence":
        rnn = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[model_name](config.input, hidden)
        new_hidden_bias = rnn.bias_hh_l0 if model_name == "gru" else None

        def forward():
            return head(rnn(X)[0])

        def loss():
            return tF.mse_loss(forward(), Y)
    else:
        rnn = {"rnn": nn.RNNCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}[model_name](config.input, hidden)
        new_hidden_bias = rnn.bias_hh if model_name == "gru" else None
        xs, ys = X.unbind(0), Y.unbind(0)
        zeros = torch.zeros(config.batch, hidden)

        def outputs():
            state = (zeros, zeros) if model_name == "lstm" else zeros
            for x in xs:
                state = rnn(x, state)
                yield head(state[0] if model_name == "lstm" else state)

        def forward():
            return list(outputs())

        def loss():
            return sum(tF.mse_loss(y_hat, y) for y_hat, y in zip(outputs(), ys))

    if new_hidden_bias is not None:   # b_hn: recur's GRU has no such bias
        with torch.no_grad():
            new_hidden_bias[2 * hidden:] = 0

    if mode == "infer":
        def step():
            with torch.inference_mode():
                forward()
        return step

    opt = torch.optim.Adam([*rnn.parameters(), *head.parameters()], lr=LEARNING_RATE)

    def step():
        opt.zero_grad()
        loss().backward()
        opt.step()
    return step


STEP_BUILDERS = {"recur": recur_step, "torch": torch_step}


# ---------------------------------------------------------------- timing

def settled(step):
    """Pauses for the other engine's threads to stop spinning, then wakes up with `step`."""
    time.sleep(SETTLE_SECONDS)
    end = time.perf_counter() + WAKE_SECONDS
    step()
    while time.perf_counter() < end:
        step()


def warmed_up(build, min_sample_seconds):
    """(step, steps per sample): the case built, run once to allocate, then timed."""
    step = build()
    step()
    settled(step)
    start = time.perf_counter()
    step()
    once = time.perf_counter() - start
    return step, max(1, math.ceil(min_sample_seconds / once)) if once > 0 else 1


def interleaved_medians(prepared, repeats):
    """Median seconds per step of each prepared engine, samples alternating engine order."""
    samples = {name: [] for name in prepared}
    names = list(prepared)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            step, steps_per_sample = prepared[name]
            settled(step)
            start = time.perf_counter()
            for _ in range(steps_per_sample):
                step()
            samples[name].append((time.perf_counter() - start) / steps_per_sample)
    return {name: statistics.median(times) for name, times in samples.items()}


def cpu_mark():
    """(wall seconds, CPU seconds busy machine-wide, CPU seconds of this process), or None
    where /proc/stat does not exist."""
    if not os.path.exists("/proc/stat"):
        return None
    with open("/proc/stat") as f:
        # cpu  user nice system idle iowait irq softirq steal ...
        ticks = [int(v) for v in f.readline().split()[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]
    own = os.times()
    return time.perf_counter(), busy / os.sysconf("SC_CLK_TCK"), own.user + own.system


def foreign_load_since(mark):
    """Cores other processes kept busy on average since `mark` (steal time counts: it is
    CPU the hypervisor gave to someone else)."""
    now = cpu_mark()
    if mark is None or now is None:
        return None
    wall, busy, own = (b - a for a, b in zip(mark, now))
    return max(0.0, (busy - own) / wall)


def handover_us():
    """recur's crew hand-over round trip in µs; None where recur runs on one thread."""
    from recur._core.blas import handover_seconds
    seconds = handover_seconds()
    return None if seconds is None else seconds * 1e6


def gemm_step(engine):
    """A function running one float32 GEMM_SIZE³ product through an engine's `@`."""
    rng = np.random.default_rng(1)
    left, right = (rng.standard_normal((GEMM_SIZE, GEMM_SIZE), dtype=np.float32)
                   for _ in range(2))
    if engine == "recur":
        import recur as rc
        left = rc.Tensor(left)
    else:
        import torch
        left, right = torch.from_numpy(left), torch.from_numpy(right)

    def step():
        left @ right
    return step


def gemm_rate(seconds):
    """GFLOP/s of one GEMM_SIZE³ product taking `seconds`."""
    return 2 * GEMM_SIZE ** 3 / seconds / 1e9


def gemm_gflops(engine, repeats=7):
    """float32 GEMM_SIZE³ throughput of an engine's matrix product, median of `repeats`."""
    step = gemm_step(engine)
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return gemm_rate(statistics.median(times))


def fma_peak_gflops():
    """recur's float32 multiply-add ceiling on this process's threads (recur's
    fma_peak_flops), GFLOP/s; None where recur's build does not target this CPU."""
    from recur._core.blas import fma_peak_flops
    flops = fma_peak_flops()
    return None if flops is None else flops / 1e9


def timing_worker(args):
    """Times every selected case at this process's thread setting; writes JSON."""
    engines = args.engines
    (threads,) = args.threads
    if "torch" in engines:
        import torch
        if threads != "default":
            torch.set_num_threads(int(threads))
    gemm_start = {engine: gemm_gflops(engine) for engine in engines}
    fma_start = fma_peak_gflops() if "recur" in engines else None
    rows = []
    for config in args.configs:
        X, Y = sequence_data(config)
        for model_name in args.models:
            for style in args.styles:
                for mode in args.modes:
                    rows.append(time_case(engines, model_name, style, mode, config, X, Y, args))
    gemm_end = {engine: gemm_gflops(engine) for engine in engines}
    fma_end = fma_peak_gflops() if "recur" in engines else None
    result = {
        "threads": threads,
        "torch_threads": torch.get_num_threads() if "torch" in engines else None,
        "recur_threads": recur_threads(),
        "gemm_start": gemm_start,
        "gemm_end": gemm_end,
        "fma_start": fma_start,
        "fma_end": fma_end,
        "rows": rows,
    }
    with open(args.result_file, "w") as f:
        json.dump(result, f)


def time_case(engines, model_name, style, mode, config, X, Y, args):
    row = {"model": model_name, "style": style, "mode": mode, "config": list(config),
           "seconds": {}, "errors": {}}
    prepared = {}
    for engine in engines:
        try:
            prepared[engine] = warmed_up(
                lambda: STEP_BUILDERS[engine](model_name, style, mode, config, X, Y),
                args.min_sample_ms / 1000)
        except Exception as error:   # a broken engine must not hide the other's numbers
            traceback.print_exc()
            row["errors"][engine] = f"{type(error).__name__}: {error}"
    # recur's GEMM rate is sampled between the row's own samples: this machine's speed
    # drifts over minutes (its GEMM ran at 186 and 402 GFLOP/s at the two ends of one
    # pass), so the fraction compares two rates taken under the same conditions.
    probes = ({GEMM_PROBE: warmed_up(lambda: gemm_step("recur"), args.min_sample_ms / 1000)}
              if "recur" in prepared else {})
    row["foreign_load"] = None
    handover_start = handover_us() if "recur" in prepared else None
    for attempt in range(1 + args.retries if prepared else 0):
        if attempt:
            time.sleep(RETRY_PAUSE_SECONDS)
        mark = cpu_mark()
        seconds = interleaved_medians({**prepared, **probes}, args.repeats)
        load = foreign_load_since(mark)
        if attempt == 0 or load < row["foreign_load"]:
            probe = seconds.pop(GEMM_PROBE, None)
            row["seconds"], row["foreign_load"] = seconds, load
            row["gemm_gflops"] = gemm_rate(probe) if probe else None
        if load is None or load <= FOREIGN_LOAD_TOLERANCE:
            break
    row["handover_us"] = ([handover_start, handover_us()] if handover_start is not None
                          else None)
    times = ", ".join(f"{engine} {seconds * 1e3:.3g} ms" for engine, seconds in row["seconds"].items())
    load = "" if row["foreign_load"] is None else f" (others' load {row['foreign_load']:.2f} cores)"
    print(f"[threads {args.threads[0]}] {model_name} {style} {mode} ({config}): {times}{load}"
          + "".join(f" [{engine} failed: {error}]" for engine, error in row["errors"].items()),
          file=sys.stderr, flush=True)
    return row


# ---------------------------------------------------------------- memory, import time, size

def peak_rss_mb():
    """This process's peak resident set size so far, in MB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_worker(args):
    """Trains the LSTM sequence model a few steps with one engine; prints its peak RSS."""
    config = args.configs[0]
    __import__(args.memory_engine)
    X, Y = sequence_data(config)
    after_import = peak_rss_mb()
    step = STEP_BUILDERS[args.memory_engine]("lstm", "sequence", "train", config, X, Y)
    for _ in range(MEMORY_TRAINING_STEPS):
        step()
    print(json.dumps({"after_import_mb": after_import, "peak_mb": peak_rss_mb()}))


def run_worker(worker_args, env=None):
    command = [sys.executable, os.path.abspath(__file__), *worker_args]
    completed = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"worker failed ({completed.returncode}): {shlex.join(command)}")
    return completed.stdout


def measure_memory(engines, config):
    """{engine: peak RSS figures, or {"error": why} when its training process failed}."""
    memory = {}
    for engine in engines:
        try:
            memory[engine] = json.loads(run_worker(["--role", "memory", "--memory-engine", engine,
                                                    "--configs", str(config)]))
        except RuntimeError as error:
            memory[engine] = {"error": str(error)}
    return memory


def measure_import_seconds(engines, repeats):
    """Median seconds of `import <engine>` in a fresh interpreter; the first run, which
    pays for cold file caches, is discarded."""
    seconds = {}
    for engine in engines:
        code = (f"import time; start = time.perf_counter(); import {engine}; "
                "print(time.perf_counter() - start)")
        runs = [float(subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                     text=True, check=True).stdout)
                for _ in range(repeats + 1)]
        seconds[engine] = statistics.median(runs[1:])
    return seconds


def package_dirs(name):
    """The directories of an import package and its subpackages that live elsewhere (recur
    maps `recur._core` onto the top-level `_core/` directory)."""
    dirs = {os.path.realpath(d) for d in importlib.util.find_spec(name).submodule_search_locations}
    if name == "recur":
        dirs.update(os.path.realpath(d)
                    for d in importlib.util.find_spec("recur._core").submodule_search_locations)
    # An installed recur holds _core inside its package directory: count it once.
    return sorted(d for d in dirs
                  if not any(d.startswith(other + os.sep) for other in dirs if other != d))


def installed_bytes(dirs):
    total = 0
    for top in dirs:
        for root, subdirs, files in os.walk(top):
            subdirs[:] = [d for d in subdirs if d != "__pycache__"]
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files
                         if not f.endswith((".c", ".pyx")))
    return total


def runtime_dependencies(distribution):
    """Names of the installed distributions `distribution` needs at run time, recursively
    (requirements whose environment marker holds, extras excluded)."""
    from packaging.requirements import Requirement
    found, pending = set(), [distribution]
    while pending:
        for text in importlib.metadata.requires(pending.pop()) or []:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue
            name = requirement.name.lower().replace("_", "-")
            try:
                importlib.metadata.distribution(name)
            except importlib.metadata.PackageNotFoundError:
                continue
            if name not in found:
                found.add(name)
                pending.append(name)
    return sorted(found)


def distribution_bytes(name):
    files = importlib.metadata.distribution(name).files or []
    return sum(os.path.getsize(path) for path in map(lambda f: f.locate(), files)
               if os.path.isfile(path))


def measure_sizes(engines):
    sizes = {}
    for engine in engines:
        dependencies = runtime_dependencies(engine)
        sizes[engine] = {
            "package_bytes": installed_bytes(package_dirs(engine)),
            "dependencies": dependencies,
            "dependency_bytes": sum(distribution_bytes(d) for d in dependencies),
        }
    return sizes


# ---------------------------------------------------------------- machine description

def cpu_details():
    """Family and model, the vector extensions recur's kernels build for, and the caches of
    the first CPU: a model name such as "AMD EPYC" alone can mean several generations."""
    fields, parts = {}, []
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    if "cpu family" in fields:
        parts.append(f"family {fields['cpu family']} model {fields.get('model', '?')}")
    flags = set(fields.get("flags", "").split())
    vectors = [name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("fma", "FMA"))
               if flag in flags]
    if vectors:
        parts.append(", ".join(vectors))
    caches = []
    for index in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        try:
            with open(os.path.join(index, "level")) as f:
                level = f.read().strip()
            with open(os.path.join(index, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(index, "size")) as f:
                size = f.read().strip()
        except OSError:
            continue
        if kind != "Instruction":
            caches.append(f"L{level}{'d' if kind == 'Data' else ''} {size}")
    if caches:
        parts.append("caches of one CPU: " + ", ".join(caches))
    return "; ".join(parts)


def machine_description():
    cpu_model = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu_model = models[0] if models else cpu_model
    details = cpu_details()
    if details:
        cpu_model = f"{cpu_model} ({details})"
    versions = {}
    for name in ("recur", "numpy", "scipy", "torch"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "cpu": cpu_model,
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "blas": blas_descriptions(),
        "revision": source_revision(),
    }


def source_revision():
    """The checkout's commit, and which tracked files differ from it: the engine under test
    changes from commit to commit."""
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "-C", checkout, "log", "-1", "--format=%h %s"],
                                stdout=subprocess.PIPE, text=True, check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", checkout, "status", "--porcelain", "--untracked-files=no"],
                                 stdout=subprocess.PIPE, text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    changed = [line[3:] for line in changed if line.strip()]
    return f"{commit}" + (f" (modified: {', '.join(changed)})" if changed else "")


def blas_descriptions():
    """Which BLAS each library was built with (numpy's is listed for completeness: recur's
    products go through scipy's)."""
    import scipy
    described = {}
    for name, module in (("scipy (recur's small products)", scipy), ("numpy", np)):
        blas = module.show_config(mode="dicts")["Build Dependencies"]["blas"]
        described[name] = f"{blas['name']} {blas.get('version', '')} ({blas.get('openblas configuration', '').strip()})"
    if importlib.util.find_spec("torch"):
        code = "import torch; print(torch.__config__.show())"
        shown = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True).stdout
        keys = ("Math Kernel Library", "MKL-DNN", "OpenMP", "CPU capability")
        described["torch"] = "; ".join(line.strip(" -") for line in shown.splitlines()
                                       if any(key in line for key in keys))
    return described


# ---------------------------------------------------------------- targets

def targets(model_name, style, mode, hidden):
    """Issue 5's targets for one row: a list of (label, minimum ratio torch/recur or None,
    minimum fraction of the GEMM limit or None)."""
    small = hidden <= SMALL_HIDDEN
    if mode == "infer":
        return [("≥3x", 3.0, None)] if small else [("≥1x", 1.0, None)]
    if style == "stepwise":
        return [("≥5x", 5.0, None)] if small else [("≥1.3x", 1.3, None)]
    lstm = model_name == "lstm"
    if small:
        return [("≥3x", 3.0, None)] if lstm else [("≥5x", 5.0, None)]
    wanted = [("≥1.1x", 1.1, None)] if lstm else [("≥1.3x", 1.3, None)]
    if hidden >= GEMM_TARGET_HIDDEN:
        wanted.append((f"≥{GEMM_FRACTION_TARGET:.0%} GEMM", None, GEMM_FRACTION_TARGET))
    return wanted


def missed_targets(row, ratio, gemm_fraction):
    return [label for label, min_ratio, min_fraction in row["targets"]
            if (min_ratio is not None and (ratio is None or ratio < min_ratio))
            or (min_fraction is not None and gemm_fraction < min_fraction)]


# ---------------------------------------------------------------- the report

def analysed_rows(timing):
    """Adds ratio, GFLOP/s, GEMM fraction, targets and misses to every timed row."""
    pass_limit = max(timing["gemm_start"]["recur"], timing["gemm_end"]["recur"])
    ceilings = [c for c in (timing.get("fma_start"), timing.get("fma_end")) if c]
    for row in timing["rows"]:
        row["fma_ceiling"] = max(ceilings) if ceilings else None
        row["gemm_limit"] = gemm_limit = row.get("gemm_gflops") or pass_limit
        config = Config(",".join(map(str, row["config"])))
        recur_s, torch_s = row["seconds"].get("recur"), row["seconds"].get("torch")
        row["ratio"] = torch_s / recur_s if recur_s and torch_s else None
        row["gflops"] = gemm_flops(row["model"], config, row["mode"]) / recur_s / 1e9 if recur_s else None
        row["gemm_fraction"] = row["gflops"] / gemm_limit if recur_s else None
        row["targets"] = targets(row["model"], row["style"], row["mode"], config.hidden)
        row["missed"] = (missed_targets(row, row["ratio"], row["gemm_fraction"])
                         if recur_s and torch_s else None)
    return timing["rows"]


def median_process(timings):
    """One pass from the same cases timed in several worker processes (--processes): each
    row is the process whose torch/recur ratio is the median (the upper of the middle two
    for an even count; a row without a ratio, an engine having failed, counts as lowest),
    with `spread`: every process's ratio and in how many the row met its targets. The pass's
    rates at its start are the first process's, at its end the last's. The processes' rows
    must already be analysed (analysed_rows), for their ratios and misses."""
    first, last = timings[0], timings[-1]
    merged = dict(first, gemm_end=last["gemm_end"], fma_end=last.get("fma_end"),
                  processes=len(timings), rows=[])
    for rows in zip(*(timing["rows"] for timing in timings)):
        keys = {(row["model"], row["style"], row["mode"], tuple(row["config"])) for row in rows}
        if len(keys) != 1:
            raise ValueError(f"processes timed different cases in one place: {sorted(keys)}")
        ranked = sorted(rows, key=lambda row: -1 if row["ratio"] is None else row["ratio"])
        chosen = dict(ranked[len(ranked) // 2])
        ratios = [row["ratio"] for row in rows]
        chosen["spread"] = {"ratios": ratios,
                            "met": sum(row["missed"] == [] for row in rows),
                            "processes": len(rows)}
        merged["rows"].append(chosen)
    # Analysed again against the merged pass: each row's multiply-add ceiling becomes the
    # pass's (the faster of its two ends) rather than its own process's.
    analysed_rows(merged)
    return merged


def spread_text(row):
    """'4.40-6.20, 3/6': the ratios' range over the processes, and in how many of them the
    row met its targets; empty for a row timed in one process."""
    spread = row.get("spread")
    if spread is None:
        return ""
    known = [r for r in spread["ratios"] if r is not None]
    span = f"{min(known):.2f}-{max(known):.2f}" if known else "—"
    return f"{span}, {spread['met']}/{spread['processes']}"


def recur_threads():
    """Threads recur computes on in this process: its crew of two (crew.h) unless
    RECUR_NUM_THREADS=1 or the process may run on one CPU only."""
    setting = os.environ.get("RECUR_NUM_THREADS", "")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if (setting and int(setting) <= 1) or (cpus or 1) < 2:
        return 1
    return 2


def pass_name(timing):
    threads = timing["threads"]
    if threads == "default":
        return "default threads"
    return f"{threads} thread{'s' if threads != '1' else ''}"


def threads_label(timing):
    processes = timing.get("processes", 1)
    in_processes = f", {processes} processes" if processes > 1 else ""
    if timing["threads"] == "default":
        torch_part = f"torch {timing['torch_threads']} threads, " if timing["torch_threads"] else ""
        return (f"{pass_name(timing)} ({torch_part}recur {timing['recur_threads']} threads)"
                + in_processes)
    return pass_name(timing) + in_processes


def fmt(value, spec, missing="—"):
    return missing if value is None else format(value, spec)


def row_table(rows):
    spread = any("spread" in row for row in rows)
    lines = ["| model | F | H | B | T | recur ms | torch ms | torch/recur | recur GFLOP/s "
             "| GEMM GFLOP/s | of GEMM | target | met | others' load | hand-over µs |"
             + (" torch/recur over processes, met in |" if spread else ""),
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|--:|--:|"
             + ("--:|" if spread else "")]
    for row in rows:
        seconds = row["seconds"]
        if row["missed"] is None:
            met = "; ".join(f"{engine}: {error}" for engine, error in row["errors"].items()) or "—"
        else:
            met = "yes" if not row["missed"] else "**no** (" + ", ".join(row["missed"]) + ")"
        lines.append(
            f"| {row['model']} | " + " | ".join(map(str, row["config"])) + " | "
            f"{fmt(seconds.get('recur') and seconds['recur'] * 1e3, '.3g')} | "
            f"{fmt(seconds.get('torch') and seconds['torch'] * 1e3, '.3g')} | "
            f"{fmt(row['ratio'], '.2f')} | {fmt(row['gflops'], '.1f')} | "
            f"{fmt(row.get('gemm_limit'), '.0f')} | {fmt(row['gemm_fraction'], '.0%')} | "
            f"{', '.join(label for label, _, _ in row['targets'])} | {met} | "
            f"{fmt(row['foreign_load'], '.2f')}{' ⚠' if disturbed(row) else ''} | "
            f"{handover_text(row)}{' ‡' if threads_apart(row) else ''} |"
            + (f" {spread_text(row)} |" if spread else ""))
    return lines


def disturbed(row):
    return row["foreign_load"] is not None and row["foreign_load"] > FOREIGN_LOAD_TOLERANCE


def handover_text(row):
    handover = row.get("handover_us")
    return "—" if handover is None else " / ".join(fmt(v, ".2f") for v in handover)


def threads_apart(row):
    handover = row.get("handover_us")
    return handover is not None and any(v is not None and v > HANDOVER_FAR_US for v in handover)


def summary_lines(timings):
    """Per thread pass: how many rows meet their targets, and a matrix of torch/recur by
    case and config (with recur's GEMM fraction where a GEMM target applies)."""
    lines = []
    for timing in timings:
        rows = timing["rows"]
        judged = [row for row in rows if row["missed"] is not None]
        noisy = sum(map(disturbed, rows))
        apart = sum(map(threads_apart, rows))
        lines += ["", f"### {threads_label(timing)}", "",
                  f"Targets met in {sum(not row['missed'] for row in judged)} of {len(judged)} rows"
                  + (f"; {noisy} rows timed while other processes kept more than "
                     f"{FOREIGN_LOAD_TOLERANCE} cores busy (⚠)" if noisy else "")
                  + (f"; {apart} rows timed while recur's hand-over took more than "
                     f"{HANDOVER_FAR_US} µs at either end, its threads far apart (‡)"
                     if apart else "")
                  + ". torch/recur per case, ✗ where a target is missed"
                  + (f" (each row the median of {timing['processes']} processes, and in how "
                     "many of them it met its targets)" if timing.get("processes", 1) > 1
                     else "") + ":", ""]
        configs = list(dict.fromkeys(tuple(row["config"]) for row in rows))
        lines += ["| case | " + " | ".join(",".join(map(str, c)) for c in configs) + " |",
                  "|---|" + "--:|" * len(configs)]
        cases = dict.fromkeys((row["mode"], row["style"], row["model"]) for row in rows)
        for case in cases:
            by_config = {tuple(row["config"]): row for row in rows
                         if (row["mode"], row["style"], row["model"]) == case}
            lines.append(f"| {' '.join(case)} | "
                         + " | ".join(matrix_cell(by_config.get(c)) for c in configs) + " |")
        lines += needs_lines(rows)
        for row in rows:
            for engine, error in row["errors"].items():
                lines.append(f"- **{engine} failed** on {row['model']} {row['style']} "
                             f"{row['mode']} ({','.join(map(str, row['config']))}): {error}")
    return lines


def needed(row):
    """For a row that misses a target: the time recur would need to meet every target it
    misses, in seconds, and the GFLOP/s that time means as a fraction of the row's GEMM
    limit (above 1: more than recur's own large product reaches on this machine, so no
    kernel can get the row there by arithmetic speed alone). None where nothing is missed."""
    if not row["missed"]:
        return None
    config = Config(",".join(map(str, row["config"])))
    flops = gemm_flops(row["model"], config, row["mode"])
    limit = row["gemm_limit"]
    times = [row["seconds"]["torch"] / min_ratio if min_ratio is not None
             else flops / (min_fraction * limit * 1e9)
             for label, min_ratio, min_fraction in row["targets"] if label in row["missed"]]
    seconds = min(times)
    return seconds, flops / seconds / 1e9 / limit


def needs_lines(rows):
    """A table of the pass's misses, each with what meeting it would take: the time, and
    the rate it means against the row's GEMM limit and against the multiply-add ceiling
    (past 1, the row's products alone would outlast that time on any kernel)."""
    missed = [row for row in rows if row["missed"]]
    if not missed:
        return []
    ceiling = missed[0].get("fma_ceiling")
    lines = ["", "What each miss would need: recur's time to meet the row's missed targets, "
             "and the rate that time means, against the row's GEMM limit"
             + (f" and against the pass's multiply-add ceiling, {ceiling:.1f} GFLOP/s "
                "(float32 FMAs with nothing to load, on recur's threads, the faster of the "
                "pass's two ends; past 100% no kernel on these cores could meet the target)"
                if ceiling else "") + ":", "",
             "| case | config | recur ms | would need, ms | faster by | of GEMM now "
             "| of GEMM needed | of ceiling needed | hand-over µs |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    beyond = 0
    for row in missed:
        seconds, fraction = needed(row)
        recur_s = row["seconds"]["recur"]
        of_ceiling = fraction * row["gemm_limit"] / ceiling if ceiling else None
        beyond += of_ceiling is not None and of_ceiling > 1
        lines.append(f"| {row['mode']} {row['style']} {row['model']} | "
                     f"{','.join(map(str, row['config']))} | {recur_s * 1e3:.3g} | "
                     f"{seconds * 1e3:.3g} | {recur_s / seconds:.2f}x | "
                     f"{row['gemm_fraction']:.0%} | {fraction:.0%} | {fmt(of_ceiling, '.0%')} | "
                     f"{handover_text(row)}{' ‡' if threads_apart(row) else ''} |")
    if ceiling:
        lines += ["", f"{beyond} of these {len(missed)} misses would need more than the "
                  "multiply-add ceiling."]
    return lines


def matrix_cell(row):
    if row is None or row["ratio"] is None:
        return "—"
    text = f"{row['ratio']:.2f}"
    if any(min_fraction is not None for _, _, min_fraction in row["targets"]):
        text += f" · {row['gemm_fraction']:.0%}"
    if row["missed"]:
        text = f"**{text} ✗**"
    if "spread" in row:
        text += f" ({row['spread']['met']}/{row['spread']['processes']})"
    return text + (" ⚠" if disturbed(row) else "") + (" ‡" if threads_apart(row) else "")


def extras_lines(extras):
    memory, imports, sizes = extras["memory"], extras["import_seconds"], extras["sizes"]
    engines = list(imports)
    lines = ["| | " + " | ".join(engines) + " | target |", "|---|" + "--:|" * len(engines) + "---|"]
    peak = {engine: memory[engine].get("peak_mb") for engine in engines}
    after_import = {engine: memory[engine].get("after_import_mb") for engine in engines}
    memory_met = f"recur ≤ {MEMORY_FRACTION_TARGET:.0%} of torch: "
    if peak.get("recur") is not None and peak.get("torch") is not None:
        ratio = peak["recur"] / peak["torch"]
        memory_met += f"{ratio:.0%}, " + ("met" if ratio <= MEMORY_FRACTION_TARGET else "**missed**")
    else:
        memory_met += "not measured"
    import_met = (f"recur < {IMPORT_SECONDS_TARGET} s: "
                  + ("met" if imports["recur"] < IMPORT_SECONDS_TARGET else "**missed**"))
    lines += [
        f"| peak RSS training LSTM ({extras['memory_config']}), MB | "
        + " | ".join(fmt(peak[e], ".0f", "failed") for e in engines) + f" | {memory_met} |",
        "| of which after import and data, MB | "
        + " | ".join(fmt(after_import[e], ".0f", "failed") for e in engines) + " | |",
        "| import time, s | " + " | ".join(f"{imports[e]:.3f}" for e in engines) + f" | {import_met} |",
        "| installed package, MB | "
        + " | ".join(f"{sizes[e]['package_bytes'] / 1e6:.1f}" for e in engines) + " | |",
        "| its runtime dependencies, MB | "
        + " | ".join(f"{sizes[e]['dependency_bytes'] / 1e6:.1f}" for e in engines) + " | |",
    ]
    lines += [""] + [f"- {engine}'s runtime dependencies: {', '.join(sizes[engine]['dependencies']) or 'none'}"
                     for engine in engines]
    lines += [f"- **{engine}'s training process failed**: {memory[engine]['error']}"
              for engine in engines if "error" in memory[engine]]
    return lines


def report(machine, command, timings, extras, elapsed, load, retries):
    gemm = "; ".join(
        f"{threads_label(t)}: " + ", ".join(
            f"{engine} {t['gemm_start'][engine]:.1f} / {t['gemm_end'][engine]:.1f}"
            for engine in t["gemm_start"])
        for t in timings)
    ceiling = "; ".join(
        f"{threads_label(t)}: {fmt(t.get('fma_start'), '.1f')} / {fmt(t.get('fma_end'), '.1f')}"
        for t in timings)
    lines = [
        "# recur vs torch: recurrent training and inference on the CPU",
        "",
        f"Generated by `{command}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC in "
        f"{elapsed / 60:.1f} minutes. Method, FLOP formula and fairness notes: the docstring "
        "of `bench/suite.py`. Times are medians per step (one whole sequence); `torch/recur` "
        "above 1 means recur is faster; `of GEMM` is recur's GFLOP/s over `GEMM GFLOP/s`, "
        f"the median rate of a float32 {GEMM_SIZE}³ product through recur's `@` timed "
        "between that row's own samples (this limit drifts with the machine's speed; the "
        "rates at each pass's ends are listed under Machine); `others' load` is how many "
        "cores other processes kept busy while the row was timed (from /proc/stat; ⚠ above "
        f"{FOREIGN_LOAD_TOLERANCE} even after re-timing up to {retries} more times); "
        "`hand-over µs` is recur's hand-over of an empty task to its helper thread and back, "
        "before / after the row (‡ above "
        f"{HANDOVER_FAR_US} µs: the host had placed the two threads' CPUs far apart, and "
        "every line they pass each other cost several times more)."
        + "".join(f" The {pass_name(t)} pass ran in "
                  f"{t['processes']} worker processes one after the other: each row is the "
                  "process whose torch/recur ratio was the median, and its last column gives "
                  "the lowest and highest ratio and in how many processes the row met its "
                  "targets." for t in timings if t.get("processes", 1) > 1),
        "",
        "## Machine",
        "",
        f"- recur at commit {machine['revision']}",
        f"- CPU: {machine['cpu']}, {machine['logical_cpus']} logical CPUs; {machine['platform']}",
        f"- Load average (1 min) at start / end: {load[0]:.2f} / {load[1]:.2f}",
        "- Python " + machine["python"] + ", "
        + ", ".join(f"{name} {version}" for name, version in machine["versions"].items()),
        *[f"- BLAS of {name}: {text}" for name, text in machine["blas"].items()],
        f"- float32 {GEMM_SIZE}³ GEMM, GFLOP/s at the start / end of each pass: {gemm}",
        f"- float32 multiply-add ceiling (recur's FMAs with nothing to load, on its threads), "
        f"GFLOP/s at the start / end of each pass: {ceiling}",
        "",
        "## Targets (issue 5)",
        "",
        "Sequence training: ≥3x (LSTM) / ≥5x (RNN, GRU) at hidden ≤ 128, ≥1.1x / ≥1.3x at "
        "hidden ≥ 256, and ≥80% of the GEMM limit at hidden ≥ 512 (shown after the ratio). "
        "Stepwise training: ≥5x at hidden ≤ 128, ≥1.3x everywhere. Inference: ≥3x at "
        "hidden ≤ 128, never slower. The issue states them for this machine's default "
        "threads; the 1-thread pass is judged by the same rule.",
        *summary_lines(timings),
    ]
    for timing in timings:
        for mode in MODES:
            for style in STYLES:
                rows = [r for r in timing["rows"] if r["mode"] == mode and r["style"] == style]
                if rows:
                    title = {"train": "Training", "infer": "Inference"}[mode]
                    lines += ["", f"## {title}, {style} style — {threads_label(timing)}", ""]
                    lines += row_table(rows)
    if extras:
        lines += ["", "## Memory, import time, installed size", ""] + extras_lines(extras)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- command line

def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python bench/suite.py",
        description="recur against torch: RNN/LSTM/GRU training and inference on the CPU.")
    parser.add_argument("--configs", nargs="+", type=Config, default=None, metavar="F,H,B,T",
                        help="input,hidden,batch,time per config (default: the six of issue 5)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=MODELS)
    parser.add_argument("--styles", nargs="+", choices=STYLES, default=STYLES)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=MODES)
    parser.add_argument("--threads", nargs="+", default=None, metavar="N",
                        help='thread settings, each "default" or 1 (default: default 1)')
    parser.add_argument("--repeats", type=int, default=None, help="samples per engine (default 7)")
    parser.add_argument("--processes", type=int, default=1,
                        help="worker processes timing each thread setting in turn; each row "
                             "reports the one with the median ratio (default 1)")
    parser.add_argument("--retries", type=int, default=None,
                        help="re-measurements of a case disturbed by other processes' load "
                             f"(above {FOREIGN_LOAD_TOLERANCE} cores; default 1)")
    parser.add_argument("--min-sample-ms", type=float, default=None,
                        help="minimum length of one sample; short steps are looped (default 50)")
    parser.add_argument("--output", default=None,
                        help="markdown report path (default bench/RESULTS.md; none with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: the smallest config, 1 repeat, default threads only")
    parser.add_argument("--role", choices=["main", "timing", "memory"], default="main",
                        help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    parser.add_argument("--memory-engine", help=argparse.SUPPRESS)
    parser.add_argument("--engines", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {"configs": [Config(CONFIGS[0])] if quick else [Config(c) for c in CONFIGS],
                "threads": ["default"] if quick else ["default", "1"],
                "repeats": 1 if quick else 7,
                "retries": 0 if quick else 1,
                "min_sample_ms": 0 if quick else 50,
                "output": None if quick else DEFAULT_OUTPUT}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.processes < 1:
        parser.error(f"--processes takes a count of at least 1, got {args.processes}")
    for threads in args.threads:
        if threads not in ("default", "1"):
            parser.error(f'--threads takes "default" or 1, got {threads!r}')
    return args


def main(argv=None):
    """Runs the suite; returns 0, or 1 when an engine failed on some case or its memory run."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.role == "timing":
        return timing_worker(args) or 0
    if args.role == "memory":
        return memory_worker(args) or 0

    started, load_start = time.perf_counter(), os.getloadavg()[0]
    machine = machine_description()   # now: the checkout may gain commits during the run
    engines = ["recur", "torch"] if importlib.util.find_spec("torch") else ["recur"]
    if engines == ["recur"]:
        print("torch is not installed: timing recur alone", file=sys.stderr)
    shared = ["--configs", *map(str, args.configs), "--models", *args.models,
              "--styles", *args.styles, "--modes", *args.modes, "--repeats", str(args.repeats), "--retries", str(args.retries),
              "--min-sample-ms", str(args.min_sample_ms), "--engines", *engines]
    timings = []
    with tempfile.TemporaryDirectory() as scratch:
        for threads in args.threads:
            env = dict(os.environ, **(SINGLE_THREAD_ENV if threads == "1" else {}))
            in_processes = []
            for process in range(args.processes):
                result_file = os.path.join(scratch, f"threads-{threads}-{process}.json")
                run_worker(["--role", "timing", "--threads", threads,
                            "--result-file", result_file, *shared], env)
                with open(result_file) as f:
                    timing = json.load(f)
                analysed_rows(timing)
                in_processes.append(timing)
            timings.append(in_processes[0] if args.processes == 1
                           else median_process(in_processes))

    largest = max(args.configs, key=lambda c: (c.hidden, gemm_flops("lstm", c, "train")))
    extras = {
        "memory_config": str(largest),
        "memory": measure_memory(engines, largest),
        "import_seconds": measure_import_seconds(engines, 1 if args.quick else 5),
        "sizes": measure_sizes(engines),
    }
    command = shlex.join(["python", "bench/suite.py", *argv])
    text = report(machine, command, timings, extras,
                  time.perf_counter() - started, (load_start, os.getloadavg()[0]), args.retries)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
        print(f"wrote {args.output}", file=sys.stderr)
    failed = (any(row["errors"] for timing in timings for row in timing["rows"])
              or any("error" in figures for figures in extras["memory"].values()))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
