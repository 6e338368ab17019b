"""The pool recur's arrays take their memory from (_core/pool.pyx)."""
import gc
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest

import recur as rc
from recur._core import pool

# A stepwise loop in a new process, whose heap has had no large block freed yet: each
# pass keeps its 100 steps' outputs, then lets all of them go at once.
STEPWISE_LOOP = textwrap.dedent("""
    import resource, sys, numpy as np, recur as rc
    layer = getattr(rc, sys.argv[1])(32, 128)
    xs = list(np.random.default_rng(0).standard_normal((100, 32, 32), dtype=np.float32))
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        rc.reset(layer); [layer(x) for x in xs]
    before = faults()
    for _ in range(20):
        rc.reset(layer); [layer(x) for x in xs]
    print((faults() - before) / (20 * len(xs)))
""")


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
def test_a_stepwise_loop_stops_faulting_pages_in(cell):
    # Given back to malloc, the outputs' pages went back to the kernel after every pass
    # and faulted in again in the next: 4 a step for the RNN, 8 for the LSTM.
    per_step = float(subprocess.run([sys.executable, "-c", STEPWISE_LOOP, cell],
                                    capture_output=True, text=True, check=True).stdout)
    assert per_step < 0.5, f"{cell}: {per_step} page faults a step"


def test_an_array_keeps_its_memory_while_it_lives():
    rng = np.random.default_rng(3)
    layer = rc.LSTM(8, 64)
    xs = rng.standard_normal((20, 16, 8)).astype(np.float32)
    first = [np.asarray(layer(x)) for x in xs]
    copies = [y.copy() for y in first]
    rc.reset(layer)
    again = [np.asarray(layer(x)) for x in xs]
    for y, copy, z in zip(first, copies, again):
        assert y.flags.c_contiguous
        assert not np.shares_memory(y, z)
        np.testing.assert_array_equal(y, copy)
        np.testing.assert_array_equal(z, copy)


def test_given_back_blocks_serve_the_next_arrays():
    layer = rc.RNN(16, 256)
    x = np.ones((32, 16), np.float32)
    outputs = [layer(x) for _ in range(50)]
    del outputs
    gc.collect()
    blocks, kept_bytes = pool.kept()
    assert blocks >= 49 and kept_bytes >= 49 * 32 * 256 * 4
    # 49 blocks taken, and one given back: the layer's state let go of the 50th output.
    outputs = [layer(x) for _ in range(49)]
    assert pool.kept()[0] == blocks - 48
    del outputs


def test_the_pool_keeps_at_most_64_mb():
    layer = rc.Dense(64, 8192)             # 256 KB a step's output at 8 rows
    x = np.ones((8, 64), np.float32)
    outputs = [layer(x) for _ in range(400)]   # 100 MB
    del outputs
    gc.collect()
    assert pool.kept()[1] <= 64 << 20
    # Full, it makes room for another size by letting the first one's blocks go.
    other = rc.Dense(64, 4096)
    outputs = [other(x) for _ in range(10)]
    del outputs
    gc.collect()
    blocks, kept_bytes = pool.kept()
    assert kept_bytes <= 64 << 20
    outputs = [other(x) for _ in range(10)]
    assert pool.kept()[0] == blocks - 10


def test_small_and_large_arrays_keep_numpys_own_memory():
    before = pool.kept()
    np.asarray(rc.Dense(4, 3)(np.ones((2, 4), np.float32)))          # 24 bytes
    np.asarray(rc.Dense(4, 2048)(np.ones((256, 4), np.float32)))     # 2 MB
    gc.collect()
    assert pool.kept() == before


def test_memory_tracing_sees_the_arrays():
    layer = rc.RNN(32, 128)
    x = np.ones((32, 32), np.float32)
    layer(x)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        outputs = [layer(x) for _ in range(10)]
        held = tracemalloc.get_traced_memory()[0] - before
        del outputs
        gc.collect()
        after = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held >= 10 * 32 * 128 * 4
    assert after < 2 * 32 * 128 * 4


def test_new_sizes_keep_being_pooled_after_many_others():
    # More distinct sizes than the pool has shelves for, each given back in turn: the
    # last ones still come back, on shelves the earlier sizes left empty.
    for n_out in range(300, 500):
        outputs = [rc.Dense(4, n_out)(np.ones((8, 4), np.float32)) for _ in range(2)]
        del outputs                        # freed by their count: no cycles to collect
        blocks, _ = pool.kept()
        reused = [rc.Dense(4, n_out)(np.ones((8, 4), np.float32)) for _ in range(2)]
        assert pool.kept()[0] == blocks - 2, n_out
        del reused


def test_gradients_kept_from_one_step_survive_the_next():
    rng = np.random.default_rng(5)
    m = rc.Chain(rc.LSTM(8, 64), rc.Dense(64, 3))
    X = rng.standard_normal((10, 16, 8)).astype(np.float32)
    Y = rng.standard_normal((10, 16, 3)).astype(np.float32)

    def loss():
        rc.reset(m)
        return rc.mse(m(X), Y)

    first = rc.gradient(loss, m)
    copies = {p: np.array(g) for p, g in first.items()}
    second = rc.gradient(loss, m)
    for p, g in first.items():
        assert not np.shares_memory(g, second[p])
        np.testing.assert_array_equal(g, copies[p])
        np.testing.assert_array_equal(second[p], copies[p])


def test_products_take_pooled_memory():
    a = rc.Tensor(np.ones((16, 64), np.float32))
    b = np.ones((64, 64), np.float32)
    products = [a @ b for _ in range(3)]
    del products
    gc.collect()
    blocks, _ = pool.kept()
    product = a @ b
    assert pool.kept()[0] == blocks - 1
    np.testing.assert_array_equal(np.asarray(product), np.full((16, 64), 64, np.float32))
