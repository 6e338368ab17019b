"""Matrix products (_core/blas.pyx): small ones on scipy's BLAS, large ones on recur's panel
kernel shared by the crew of two threads (panel_gemm.h, crew.h).

The products are reached through the public ops: `a @ b` forward is C = A B, its gradients
are dA = dC Bᵀ and dB = Aᵀ dC, so every transpose combination the engine uses runs here."""
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import recur as rc
from recur import reference as ref
from recur._core.blas import PANEL_KERNEL_BUILT

# Above 16384 multiply-adds a product leaves the BLAS for the panel kernel. The shapes give
# partial panels, row counts that are no multiple of the kernel's blocks, a single narrow
# panel, a long k that is cut into chunks, and a tall A whose blocks are gathered first.
# (50, 40, 60): B's gradient, 40 x 60 over 50 rows, is one whole panel of float32 and a
# part of one, its units rows of the transposed product, each sent into B's gradient by
# the thread that computed it (blas.pyx: send_transposed).
LARGE_SHAPES = [(70, 90, 80), (13, 300, 257), (600, 5, 200), (40, 1000, 70), (700, 33, 300),
                (50, 40, 60)]


def _product_and_grads(a, b, seed):
    A, B = rc.param(a), rc.param(b)
    grads = rc.gradient(lambda: rc.sum((A @ B) * seed), [A, B])
    return np.asarray(A @ B), grads[A], grads[B]


def _close(got, want, dtype):
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    scale = np.max(np.abs(want))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale * np.sqrt(want.size))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("m,k,n", LARGE_SHAPES)
def test_large_products_and_their_gradients_match_numpy(m, k, n, dtype):
    rng = np.random.default_rng(m * k + n)
    a, b = rng.standard_normal((m, k)), rng.standard_normal((k, n))
    seed = rng.standard_normal((m, n))
    assert m * k * n > 16384
    C, dA, dB = _product_and_grads(a.astype(dtype), b.astype(dtype), seed.astype(dtype))
    assert C.dtype == dA.dtype == dB.dtype == dtype
    a, b, seed = (x.astype(dtype).astype(np.float64) for x in (a, b, seed))
    _close(C, a @ b, dtype)
    _close(dA, seed @ b.T, dtype)
    _close(dB, a.T @ seed, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("m,k,n", LARGE_SHAPES)
def test_a_weight_gradient_adds_onto_the_one_already_there(m, k, n, dtype):
    # B in two products: the second's Aᵀ dC adds onto the gradient the first left, through
    # every path a weight gradient takes into C (the transposed one's tiles and edges too).
    rng = np.random.default_rng(m + k * n)
    a1, a2 = rng.standard_normal((m, k)), rng.standard_normal((m + 3, k))
    b = rng.standard_normal((k, n))
    s1, s2 = rng.standard_normal((m, n)), rng.standard_normal((m + 3, n))
    A1, A2, B = (rc.param(x.astype(dtype)) for x in (a1, a2, b))
    S1, S2 = s1.astype(dtype), s2.astype(dtype)
    dB = rc.gradient(lambda: rc.sum((A1 @ B) * S1) + rc.sum((A2 @ B) * S2), [B])[B]
    a1, a2, s1, s2 = (x.astype(dtype).astype(np.float64) for x in (a1, a2, s1, s2))
    _close(dB, a1.T @ s1 + a2.T @ s2, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_row_count_up_to_three_blocks_matches_numpy(dtype):
    # The kernel cuts a product's rows into blocks as even as can be (8 + 8 for 16 rows):
    # every count up to three blocks of AVX-512's 12 rows takes its own mix of block sizes.
    rng = np.random.default_rng(16)
    b = rng.standard_normal((600, 500))
    for m in range(1, 37):
        a, seed = rng.standard_normal((m, 600)), rng.standard_normal((m, 500))
        C, dA, dB = _product_and_grads(a.astype(dtype), b.astype(dtype), seed.astype(dtype))
        a64, b64, seed64 = (x.astype(dtype).astype(np.float64) for x in (a, b, seed))
        _close(C, a64 @ b64, dtype)
        _close(dA, seed64 @ b64.T, dtype)
        _close(dB, a64.T @ seed64, dtype)


@pytest.mark.parametrize("rows", [3, 70, 300])
def test_dense_layer_on_the_panel_path_matches_numpy(rows):
    # Below the panels' row count the bias joins the transposed kernel's sums (a batch of
    # few rows, few_batch's); from there on y is filled with it first. The bias is drawn,
    # not left at its zeros.
    rng = np.random.default_rng(3)
    layer = rc.Dense(300, 200, rc.tanh, dtype=np.float64)
    layer.b.value = rng.standard_normal(200)
    x = rng.standard_normal((rows, 300))
    want = np.tanh(x @ np.asarray(layer.W).T + np.asarray(layer.b))
    _close(np.asarray(layer(x)), want, np.float64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_weights_whose_rows_lie_4_kb_apart_match_numpy(dtype):
    # A Dense layer's x Wᵀ reads W in place a block of rows at a time; with its rows 4 KB
    # apart (1024 float32 inputs, 512 float64) the blocks are of at most 8 rows, as even as
    # can be, so output counts that are no multiple of 8 or 12 take blocks of every size.
    n_in = 4096 // np.dtype(dtype).itemsize
    rng = np.random.default_rng(n_in)
    for n_out in (37, 203):
        layer = rc.Dense(n_in, n_out, dtype=dtype)
        layer.b.value = rng.standard_normal(n_out).astype(dtype)
        W, b = np.asarray(layer.W).astype(np.float64), np.asarray(layer.b).astype(np.float64)
        for rows in (1, 7, 16, 33):
            x = rng.standard_normal((rows, n_in)).astype(dtype)
            _close(np.asarray(layer(x)), x.astype(np.float64) @ W.T + b, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bias", [True, False])
def test_products_with_few_columns_match_numpy(dtype, bias):
    # A Wᵀ with at most 4 columns runs on its own kernel (panel_gemm.h's few_columns): a
    # Dense head's forward, and a matmul's dA = dC Bᵀ when B has that few rows. The head's
    # dW = dzᵀ x, onto as few rows, runs on another (few_rows). The sizes cover k past
    # whole vectors and below one, one row, and products the crew splits; dW's columns come
    # a chunk of vectors at a time and then every count of whole vectors short of one
    # (float32's 48 and 80 inputs: 3 and 5 vectors).
    # Each element is held to its dtype's rounding of the sums it adds, |A| |W|ᵀ: a single
    # output can cancel to far below its terms. The bias is drawn, not left at its zeros:
    # each part of a shared head adds it into the rows it writes (blas.pyx: dense_product).
    rng = np.random.default_rng(7)
    tol = 1e-13 if dtype == np.float64 else 1e-6

    def close(got, want, scale):
        assert np.all(np.abs(got - want) <= tol * scale + tol), np.max(np.abs(got - want) / scale)

    for n_out in range(1, 6):
        for n_in in (3, 16, 17, 33, 48, 80, 128, 200):
            for rows in (1, 5, 300, 3000):
                layer = rc.Dense(n_in, n_out, bias=bias, dtype=dtype, rng=rng)
                if bias:
                    layer.b.value = rng.standard_normal(n_out).astype(dtype)
                x = rng.standard_normal((rows, n_in)).astype(dtype)
                seed = rng.standard_normal((rows, n_out)).astype(dtype)
                grads = rc.gradient(lambda: rc.sum(layer(x) * seed), rc.params(layer))
                W = np.asarray(layer.W).astype(np.float64)
                b = np.asarray(layer.b).astype(np.float64) if bias else 0
                x64, seed64 = x.astype(np.float64), seed.astype(np.float64)
                close(np.asarray(layer(x)), x64 @ W.T + b, np.abs(x64) @ np.abs(W).T + np.abs(b))
                close(grads[layer.W], seed64.T @ x64, np.abs(seed64).T @ np.abs(x64))
                a, b_mat = rc.param(seed), rc.param(W.astype(dtype))
                dA = rc.gradient(lambda: rc.sum((a @ b_mat) * x), [a])[a]
                close(dA, x64 @ W.T, np.abs(x64) @ np.abs(W).T)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batch", [8, 12, 16, 24, 32, 40])
def test_a_head_over_a_sequence_equals_the_head_over_its_rows_as_one_batch(dtype, batch):
    # Over a (T, B, F) sequence, the crew shares a few-column head's rows (few_columns) and
    # its dx (few_inner) by each step's batch, half of every step's rows to each thread,
    # where B is a multiple of 8 from 16 on (16, 24, 32, 40 here); over the same rows as
    # one (T B, F) batch, by halves of them all. Each row's sums are the same either way,
    # so the two agree bit for bit: forward, dx and the bias's gradient. The weights'
    # gradient over a sequence sums each half of the steps' rows apart (grouped_few_rows),
    # so it agrees to the rounding of its sums, |dz|ᵀ |x|.
    rng = np.random.default_rng(batch)
    steps, n_in = 30, 128
    tol = 1e-13 if dtype == np.float64 else 1e-6
    for n_out in (1, 3, 4):
        layer = rc.Dense(n_in, n_out, rc.tanh, dtype=dtype, rng=rng)
        layer.b.value = rng.standard_normal(n_out).astype(dtype)
        xs = rng.standard_normal((steps, batch, n_in)).astype(dtype)
        seed = rng.standard_normal((steps, batch, n_out)).astype(dtype)
        results = []
        for x, s in [(xs, seed), (xs.reshape(-1, n_in), seed.reshape(-1, n_out))]:
            x_param = rc.param(x)
            y = np.asarray(layer(x))
            grads = rc.gradient(lambda: rc.sum(layer(x_param) * s),
                                [x_param, layer.W, layer.b])
            results.append([y.reshape(-1, n_out), grads[x_param].reshape(-1, n_in),
                            grads[layer.b], grads[layer.W]])
        for sequence, flat in zip(results[0][:3], results[1][:3]):
            np.testing.assert_array_equal(sequence, flat)
        y64 = results[1][0].astype(np.float64)
        dz = (seed.reshape(-1, n_out) * (1 - y64 ** 2))      # through tanh
        x64 = xs.reshape(-1, n_in).astype(np.float64)
        scale = np.abs(dz).T @ np.abs(x64)
        for dW in (results[0][3], results[1][3]):
            assert np.all(np.abs(dW - dz.T @ x64) <= tol * scale + tol)
        # and against float64's sums
        W, b = (np.asarray(p.value).astype(np.float64) for p in rc.params(layer))
        want = np.tanh(xs.reshape(-1, n_in).astype(np.float64) @ W.T + b)
        np.testing.assert_allclose(results[0][0], want, rtol=1e-5, atol=1e-5)


def test_a_heads_weight_gradient_over_a_sequence_is_the_same_on_one_thread_and_two():
    # Each half of the steps' rows summed apart, by the thread whose part of the
    # recurrence wrote them, and on one thread the same halves in turn: the same bits.
    if (os.cpu_count() or 1) < 2 or not PANEL_KERNEL_BUILT:
        pytest.skip("needs two CPUs and the crew")
    code = """
        import numpy as np
        import recur as rc
        rng = np.random.default_rng(5)
        for dtype in (np.float32, np.float64):
            for n_out, n_in, batch in [(3, 128, 32), (1, 64, 16), (4, 200, 24)]:
                layer = rc.Dense(n_in, n_out, dtype=dtype, rng=rng)
                x = rng.standard_normal((40, batch, n_in)).astype(dtype)
                seed = rng.standard_normal((40, batch, n_out)).astype(dtype)
                dW = rc.gradient(lambda: rc.sum(layer(x) * seed), [layer.W])[layer.W]
                print(np.asarray(dW).tobytes().hex())
    """
    alone, shared = _run(code, {"RECUR_NUM_THREADS": "1"}), _run(code, {"RECUR_NUM_THREADS": ""})
    assert alone.returncode == 0 and shared.returncode == 0, alone.stderr + shared.stderr
    assert len(alone.stdout.split()) == 6
    assert alone.stdout == shared.stdout


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_an_infinite_weight_near_the_end_of_k_gives_infinity_not_nan(dtype):
    # Dot products along k (few_columns: a head of 3 outputs at 40 rows; few_batch: 512
    # outputs at 3 rows) end on the vector that ends at K, the lanes counted before zeroed.
    # An infinite weight in those lanes must still count once: inf, not inf + 0 x inf.
    # 204 inputs: the last vector starts at 188 (16 float32 lanes, 12 past the last whole
    # vector) or 196 (8 float64 lanes, 4 past), its first 4 lanes counted already.
    rng = np.random.default_rng(11)
    counted_twice = 188 if dtype == np.float32 else 196
    for rows, n_out in [(40, 3), (3, 512)]:
        layer = rc.Dense(204, n_out, bias=False, dtype=dtype, rng=rng)
        W = np.array(layer.W.value)
        W[1, counted_twice] = np.inf
        layer.W.value = W
        x = np.abs(rng.standard_normal((rows, 204))).astype(dtype) + 0.5
        y = np.asarray(layer(x))
        assert np.all(y[:, 1] == np.inf), y[:, 1]
        # the other outputs, each to its dtype's rounding of the sums it adds, |x| |W|ᵀ
        x64, W64 = x.astype(np.float64), np.delete(W, 1, axis=0).astype(np.float64)
        error = np.abs(np.delete(y, 1, axis=1) - x64 @ W64.T)
        assert np.all(error <= (1e-6 if dtype == np.float32 else 1e-13) * (x64 @ np.abs(W64).T))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_products_over_a_small_inner_size_match_numpy(dtype):
    # A B with an inner size of at most 4 runs on its own kernel (panel_gemm.h's few_inner):
    # `a @ b` forward for a of 1 to 4 columns, and its dB = Aᵀ dC, with Aᵀ read transposed,
    # when a has that few rows. dB = Aᵀ dC for a of 1 to 4 columns runs on few_rows. Column
    # counts cover a partial vector and none whole.
    rng = np.random.default_rng(11)
    tol = 1e-13 if dtype == np.float64 else 1e-6
    for inner in range(1, 6):
        for n in (3, 15, 16, 17, 40, 128):
            for m in (1, 2, 4, 7, 3000):
                a = rng.standard_normal((m, inner)).astype(dtype)
                b = rng.standard_normal((inner, n)).astype(dtype)
                seed = rng.standard_normal((m, n)).astype(dtype)
                A, B = rc.param(a), rc.param(b)
                C = A @ B
                grads = rc.gradient(lambda: rc.sum((A @ B) * seed), [A, B])
                a64, b64, seed64 = (v.astype(np.float64) for v in (a, b, seed))
                for got, want, scale in [
                        (np.asarray(C), a64 @ b64, np.abs(a64) @ np.abs(b64)),
                        (grads[A], seed64 @ b64.T, np.abs(seed64) @ np.abs(b64).T),
                        (grads[B], a64.T @ seed64, np.abs(a64).T @ np.abs(seed64))]:
                    assert got.dtype == dtype
                    assert np.all(np.abs(got - want) <= tol * scale + tol), (inner, n, m)


# A step of a cell outside a gradient call reads its weights in place, and a batch of at
# most 12 rows is read in place too (blas.pyx: few_batch), 4 rows at a time: each of the
# gates a sum of dot products, x·Wi[n] + h·Wh[n] + b[n], the GRU's candidate h·Wh_n[n]
# kept apart. 60 inputs and 120 units give every cell more than the BLAS's 16384
# multiply-adds at one row (the RNN's 1 x 180 x 120 fewest), and from 2 rows on more than
# the 65536 from which the two threads share W's rows. Every count of rows up to 13, one
# past few_batch's, against the same oracle.
FEW_BATCH_CELLS = [
    (rc.RNNCell, lambda *a: ref.rnn_step(*a, act="tanh")),
    (rc.LSTMCell, ref.lstm_step),
    (rc.GRUCell, ref.gru_step),
    (rc.GRUv3Cell, ref.gruv3_step),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("make,step", FEW_BATCH_CELLS, ids=lambda v: getattr(v, "__name__", ""))
def test_single_steps_of_few_rows_match_the_reference(make, step, dtype):
    rng = np.random.default_rng(5)
    n_in, n_out = 60, 120
    cell = make(n_in, n_out, dtype=dtype, rng=rng)
    names = list(type(cell).weight_shapes(n_in, n_out))
    for name in names:     # nonzero biases, gates neither all saturated nor all linear
        getattr(cell, name).value = (0.15 * rng.standard_normal(getattr(cell, name).shape)
                                     ).astype(dtype)
    weights = [np.asarray(getattr(cell, name), np.float64) for name in names]
    n_states = 2 if make is rc.LSTMCell else 1
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    for shape in [(n_in,)] + [(rows, n_in) for rows in range(1, 14)]:
        x = rng.standard_normal(shape).astype(dtype)
        states = [rng.standard_normal(shape[:-1] + (n_out,)).astype(dtype)
                  for _ in range(n_states)]
        new, y = cell(states[0] if n_states == 1 else tuple(states), x)
        want = step(*weights, *(s.astype(np.float64) for s in states), x.astype(np.float64))
        for got, expected in zip(new if n_states > 1 else [new],
                                 want if n_states > 1 else [want]):
            assert np.asarray(got).dtype == dtype and np.shape(got) == expected.shape
            np.testing.assert_allclose(np.asarray(got), expected, rtol=rtol, atol=rtol,
                                       err_msg=str(shape))


# Past few_batch's 12 rows and below 256, x Wᵀ reads W in place, a block of 12 of its rows
# at a time (8 where they lie 4 KB apart), against panels of xᵀ, and each block of the
# result goes out into C's rows (panel_gemm.h: tile_out), through a transpose where the
# block is as wide as a vector at most: float32's blocks of 12 and 8, float64's of 8. Other
# blocks go value by value: float64's of 12, and the last block of 100 outputs, 4 either
# way. Batches of 13 to 40 rows fill a panel's first vector of float32 partly and wholly,
# its second partly and wholly, and then reach a second panel. A Dense layer adds the
# product onto the bias already in C; a cell's step adds its bias to each block on the way
# out.
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_products_on_weights_read_in_place_match_numpy_at_every_batch_width(dtype):
    rng = np.random.default_rng(41)
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    for n_in in (50, 4096 // np.dtype(dtype).itemsize):
        layer = rc.Dense(n_in, 100, dtype=dtype, rng=rng)
        layer.b.value = rng.standard_normal(100).astype(dtype)
        W, b = np.asarray(layer.W, np.float64), np.asarray(layer.b, np.float64)
        for rows in range(13, 41):
            x = rng.standard_normal((rows, n_in)).astype(dtype)
            _close(np.asarray(layer(x)), x.astype(np.float64) @ W.T + b, dtype)
    Wi, Wh, b = (0.15 * rng.standard_normal(shape) for shape in ((100, 50), (100, 100), 100))
    cell = rc.RNNCell.from_weights(Wi, Wh, b, dtype=dtype)
    for rows in range(13, 41):
        h, x = rng.standard_normal((rows, 100)), rng.standard_normal((rows, 50))
        h, x = h.astype(dtype).astype(np.float64), x.astype(dtype).astype(np.float64)
        weights = [w.astype(dtype).astype(np.float64) for w in (Wi, Wh, b)]
        new, _ = cell(h.astype(dtype), x.astype(dtype))
        np.testing.assert_allclose(np.asarray(new), ref.rnn_step(*weights, h, x), rtol=rtol,
                                   atol=rtol, err_msg=str(rows))


def _work(seed):
    """A large product's gradients, a whole LSTM sequence's and those of the same LSTM run
    step by step (whose weight gradients may run in the background), as arrays."""
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((200, 150)), rng.standard_normal((150, 120))
    out = list(_product_and_grads(a, b, rng.standard_normal((200, 120))))
    layer = rc.LSTM(20, 64, dtype=np.float64, rng=np.random.default_rng(seed))
    X = rng.standard_normal((12, 32, 20))
    grads = rc.gradient(lambda: (rc.reset(layer), rc.sum(layer(X) ** 2))[1], layer)
    steps = rc.gradient(lambda: (rc.reset(layer), sum(rc.sum(layer(x) ** 2) for x in X))[1],
                        layer)
    return out + [grads[p] for p in rc.params(layer)] + [steps[p] for p in rc.params(layer)]


def test_threads_sharing_the_crew_give_the_serial_results_exactly():
    # A thread that finds the crew busy computes alone; every element is the same sum in
    # the same order either way, so the results agree to the last bit.
    serial = [_work(i) for i in range(4)]
    results = [None] * 4
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, _work(i)))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for want, got in zip(serial, results):
        for w, g in zip(want, got):
            np.testing.assert_array_equal(g, w)


def _run(code, env=None):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, **(env or {})))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_gets_its_own_crew():
    # The parent's helper thread does not exist in the child: the child must start its
    # own rather than wait forever for one that cannot answer.
    result = _run("""
        import os, sys
        import numpy as np
        import recur as rc
        a = rc.Tensor(np.ones((300, 300)))
        before = np.asarray(a @ np.ones((300, 300)))
        pid = os.fork()
        if pid == 0:
            ok = np.array_equal(np.asarray(a @ np.ones((300, 300))), before)
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"


# A product large enough for the crew, in a new process: prints how many threads the process
# gained during it and the product's sum. `confine` runs first.
_PRODUCT_IN_A_NEW_PROCESS = """
    import os
    import numpy as np
    import recur as rc
    {confine}
    a = rc.Tensor(np.random.default_rng(0).standard_normal((300, 300)))
    before = len(os.listdir("/proc/self/task"))
    product = np.asarray(a @ np.asarray(a))
    print(len(os.listdir("/proc/self/task")) - before, float(product.sum()))
"""


def _product_in_a_new_process(env, confine="pass"):
    """(threads the process gained, the product's sum), as printed."""
    result = _run(_PRODUCT_IN_A_NEW_PROCESS.format(confine=confine), env)
    assert result.returncode == 0, result.stderr
    return tuple(result.stdout.split())


def test_recur_num_threads_1_keeps_to_the_calling_thread():
    if not os.path.isdir("/proc/self/task") or (os.cpu_count() or 1) < 2:
        pytest.skip("needs /proc and two CPUs")
    if not PANEL_KERNEL_BUILT:
        pytest.skip("a build without the panel kernel (RECUR_PORTABLE=1) runs no crew")
    new_alone, sum_alone = _product_in_a_new_process({"RECUR_NUM_THREADS": "1"})
    new_shared, sum_shared = _product_in_a_new_process({"RECUR_NUM_THREADS": ""})
    assert (new_alone, new_shared) == ("0", "1")
    assert sum_alone == sum_shared


def test_handover_probe_times_the_helper_or_says_there_is_none():
    # bench/suite.py reports the crew's hand-over round trip with every row: a positive
    # time where the helper takes its part, None where recur keeps to one thread.
    if (os.cpu_count() or 1) < 2 or not PANEL_KERNEL_BUILT:
        pytest.skip("needs two CPUs and the crew")
    code = """
        from recur._core.blas import handover_seconds
        print(handover_seconds(rounds=5, per_round=10))
    """
    alone, shared = _run(code, {"RECUR_NUM_THREADS": "1"}), _run(code, {"RECUR_NUM_THREADS": ""})
    assert alone.returncode == 0 and shared.returncode == 0, alone.stderr + shared.stderr
    assert alone.stdout.strip() == "None"
    assert 0 < float(shared.stdout) < 0.01
    from recur._core.blas import handover_seconds
    with pytest.raises(ValueError, match="rounds and per_round must be positive, got 0 and 3"):
        handover_seconds(rounds=0, per_round=3)


_ROWS_BY_SPEED = """
    import numpy as np
    import recur as rc
    from recur._core import blas
    shares = {shares}
    for dtype in (np.float32, np.float64):
        for make in (rc.RNN, rc.LSTM, rc.GRU, rc.GRUv3):
            # Sequences of 16 and 37 rows; the steps of 37 rows, past the size from which a
            # single step is split, in inference and recorded.
            for n_in, n_out, batch in [(32, 64, 16), (24, 128, 37)]:
                m = make(n_in, n_out, dtype=dtype, rng=np.random.default_rng(3))
                xs = np.random.default_rng(4).standard_normal((12, batch, n_in)).astype(dtype)
                for share in shares:
                    if share is not None:
                        blas.pin_helper_share(share)
                    rc.reset(m)
                    sequence = np.asarray(m(xs))
                    rc.reset(m)
                    steps = [np.asarray(m(x)) for x in xs[:3]]
                    rc.reset(m)
                    grads = rc.gradient(lambda: rc.sum(m(xs) * m(xs)), rc.params(m))
                    rc.reset(m)
                    step_grads = rc.gradient(lambda: sum(rc.sum(m(x)) for x in xs[:3]),
                                             rc.params(m))
                    values = [sequence, *steps, *(np.asarray(grads[p]) for p in rc.params(m)),
                              *(np.asarray(step_grads[p]) for p in rc.params(m))]
                    print(np.dtype(dtype).name, make.__name__, batch, b"".join(v.tobytes() for v in values).hex())
    print("share", blas.helper_share())
"""


def test_rows_divided_by_the_cores_speeds_give_the_same_bits_at_any_division():
    # A forward's parts divide the batch rows by the speeds the crew measured (crew.h:
    # crew_balanced_split): every division, pinned from a quarter of the rows to the helper
    # to three quarters, must give each row the bits one thread gives it.
    if (os.cpu_count() or 1) < 2 or not PANEL_KERNEL_BUILT:
        pytest.skip("needs two CPUs and the crew")
    alone = _run(_ROWS_BY_SPEED.format(shares=[None]), {"RECUR_NUM_THREADS": "1"})
    shared = _run(_ROWS_BY_SPEED.format(shares=[0.25, 0.4, 0.5, 0.6, 0.75]),
                  {"RECUR_NUM_THREADS": ""})
    assert alone.returncode == 0 and shared.returncode == 0, alone.stderr + shared.stderr
    alone_lines, shared_lines = alone.stdout.splitlines(), shared.stdout.splitlines()
    assert len(alone_lines) == 2 * 4 * 2 + 1 and len(shared_lines) == 5 * 16 + 1
    want = dict(line.rsplit(" ", 1) for line in alone_lines[:-1])
    for line in shared_lines[:-1]:
        case, got = line.rsplit(" ", 1)
        assert got == want[case], case
    # Pinned, the share stays where the last pin put it.
    assert shared_lines[-1] == "share 0.75"


def test_the_helpers_share_follows_the_parts_and_stays_within_bounds():
    if (os.cpu_count() or 1) < 2 or not PANEL_KERNEL_BUILT:
        pytest.skip("needs two CPUs and the crew")
    code = """
        import numpy as np
        import recur as rc
        from recur._core import blas
        m = rc.LSTM(32, 64, rng=np.random.default_rng(3))
        xs = np.random.default_rng(4).standard_normal((20, 16, 32)).astype(np.float32)
        print(blas.helper_share())
        seen = set()
        for _ in range(50):
            rc.reset(m)
            m(xs)
            seen.add(blas.helper_share())
        print(min(seen), max(seen), len(seen))
        print(blas.pin_helper_share(0.3), blas.helper_share(), blas.pin_helper_share(None),
              blas.helper_share())
    """
    shared = _run(code, {"RECUR_NUM_THREADS": ""})
    assert shared.returncode == 0, shared.stderr
    first, seen, pins = shared.stdout.splitlines()
    # Halves until the first measurement; then each sequence's parts move it, never
    # past a quarter or three quarters.
    assert float(first) == 0.5
    low, high, distinct = seen.split()
    assert 0.25 <= float(low) <= float(high) <= 0.75 and int(distinct) > 1
    pinned_from, pinned, unpinned_from, unpinned = (float(v) for v in pins.split())
    assert (pinned, unpinned_from, unpinned) == (0.300048828125, 0.300048828125, 0.5)
    assert 0.25 <= pinned_from <= 0.75
    from recur._core.blas import pin_helper_share
    with pytest.raises(ValueError, match=r"share must be within \[0, 1\], got 1.5"):
        pin_helper_share(1.5)


def test_fma_ceiling_is_a_rate_or_none_where_products_run_on_the_blas():
    # bench/suite.py sets each missed target against this rate. On one thread and on the
    # crew it is a positive, finite rate; how it compares with the products' is for bench/.
    code = """
        from recur._core.blas import fma_peak_flops
        print(fma_peak_flops(0.02))
    """
    from recur._core.blas import fma_peak_flops
    for bad in (0.0, -1.0, float("nan")):      # refused in every build
        with pytest.raises(ValueError, match="seconds must be positive, got"):
            fma_peak_flops(bad)
    alone = _run(code, {"RECUR_NUM_THREADS": "1"})
    assert alone.returncode == 0, alone.stderr
    if not PANEL_KERNEL_BUILT:
        # A portable build's products run on the BLAS's own, wider kernels: no ceiling.
        assert alone.stdout.strip() == "None"
        return
    assert 1e8 < float(alone.stdout) < 1e14


def test_a_process_allowed_one_cpu_keeps_to_the_calling_thread():
    # Two threads on one CPU would only take turns on it.
    if (not os.path.isdir("/proc/self/task") or not hasattr(os, "sched_setaffinity")
            or len(os.sched_getaffinity(0)) < 2):
        pytest.skip("needs /proc and two CPUs this process may run on")
    if not PANEL_KERNEL_BUILT:
        pytest.skip("a build without the panel kernel (RECUR_PORTABLE=1) runs no crew")
    one_cpu = "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})"
    new_threads, _ = _product_in_a_new_process({"RECUR_NUM_THREADS": ""}, confine=one_cpu)
    assert new_threads == "0"


# Products whose shared parts claim units of work as they go (crew.h: crew_claims): a tall
# A in units of rows, a short one in units of panels, A Wᵀ over W read in place in units of
# W's rows, a weight gradient Aᵀ B, an LSTM's forward split by columns step by step, and
# the gradients of a GRU and an LSTM over weights past 8 MB, whose backward shares each
# step by columns and its elementwise pass by rows. Weight gradients Aᵀ B of at most 512
# rows run as (Bᵀ A)ᵀ in halves of the panels (blas.pyx: gradient_as_transpose): a
# matmul's dB, and a small GRU's weights. Each repetition may cut the work
# between the threads elsewhere; prints one digest a case per repetition.
_CLAIMED_UNITS = """
    import hashlib
    import numpy as np
    import recur as rc
    rng = np.random.default_rng(5)
    tall, short = rng.standard_normal((700, 300)), rng.standard_normal((40, 300))
    b, seed = rng.standard_normal((300, 1000)), rng.standard_normal((700, 1000))
    dense = rc.Dense(300, 900, rng=rng, dtype=np.float64)
    lstm = rc.LSTM(32, 384, rng=rng)
    X = rng.standard_normal((4, 16, 32)).astype(np.float32)
    A, B = rc.param(tall), rc.param(b)

    def gradients(layer):
        grads = rc.gradient(lambda: (rc.reset(layer), rc.sum(layer(X) ** 2))[1], layer)
        return np.concatenate([grads[p].ravel() for p in rc.params(layer)])

    big_gru, big_lstm = rc.GRU(32, 960, rng=rng), rc.LSTM(32, 768, rng=rng)
    small_gru = rc.GRU(32, 128, rng=rng)
    cases = [lambda: rc.Tensor(tall) @ b, lambda: rc.Tensor(short) @ b,
             lambda: dense(short), lambda: rc.gradient(lambda: rc.sum((A @ b) * seed), [A])[A],
             lambda: (rc.reset(lstm), lstm(X))[1], lambda: gradients(big_gru),
             lambda: gradients(big_lstm),
             lambda: rc.gradient(lambda: rc.sum((rc.Tensor(tall) @ B) * seed), [B])[B],
             lambda: gradients(small_gru)]
    for _ in range(20):
        print(" ".join(hashlib.sha1(np.ascontiguousarray(np.asarray(case())).tobytes())
                       .hexdigest()[:16] for case in cases))
"""


# Step-by-step training, whose weight gradients the crew's helper computes in the
# background (blas.pyx: drain_queue) while the calling thread goes on: two stacked layers
# and a head, one cell's Wh also multiplied directly (its transpose node, whose backward
# runs after the steps', must wait for the background products before it adds to the same
# gradient) and another's computed as
# P / 2 (that node reads its gradient mid-pass); then 9 steps of one layer, whose last
# step's products run when the pass ends, as soon as the first 8 steps' have gone to the
# background; then 100 steps of 32 rows, whose 25 or so products fill the queue, so that
# the calling thread takes queued ones too, beside the helper (queue_product). Prints one
# digest per repetition.
_BACKGROUND_GRADIENTS = """
    import hashlib
    import numpy as np
    import recur as rc
    rng = np.random.default_rng(9)
    first, second = rc.GRU(24, 96, rng=rng), rc.LSTM(96, 64, rng=rng)
    head = rc.Dense(64, 3, rng=rng)
    model = rc.Chain(first, second, head)
    P = rc.param(2 * second.cell.Wh.value)
    ps = [P] + [p for p in rc.params(model) if p is not second.cell.Wh]
    X = rng.standard_normal((40, 16, 24)).astype(np.float32)
    Y = rng.standard_normal((40, 16, 3)).astype(np.float32)
    probe = rng.standard_normal((5, 96)).astype(np.float32)

    def loss():
        rc.reset(model)
        second.cell.Wh = P / 2
        # Recorded before the steps, so its backward runs after theirs.
        probed = rc.sum((rc.Tensor(probe) @ first.cell.Wh.T) ** 2)
        return probed + sum(rc.mse(model(x), y) for x, y in zip(X, Y))

    short = rc.LSTM(16, 64, rng=rng)
    X9 = rng.standard_normal((9, 32, 16)).astype(np.float32)

    def short_loss():
        rc.reset(short)
        return sum(rc.sum(short(x) ** 2) for x in X9)

    long = rc.GRU(32, 128, rng=rng)
    X100 = rng.standard_normal((100, 32, 32)).astype(np.float32)

    def long_loss():
        rc.reset(long)
        return sum(rc.sum(long(x) ** 2) for x in X100)

    def digest(f, ws):
        grads = rc.gradient(f, ws)
        return hashlib.sha1(b"".join(np.asarray(grads[p]).tobytes() for p in ws)).hexdigest()

    def inference():
        outputs = [stacked(X.value), v3(X.value), odd(X_odd), wide(X_wide)]
        return hashlib.sha1(b"".join(np.asarray(y).tobytes() for y in outputs)).hexdigest()

    for _ in range(10):
        print(digest(loss, ps)[:16], digest(short_loss, rc.params(short))[:16],
              digest(long_loss, rc.params(long))[:16])
"""


def _alone_and_shared(code):
    """The lines `code` prints in a process on one thread and in one on the crew's two."""
    if not PANEL_KERNEL_BUILT:
        pytest.skip("a build without the panel kernel (RECUR_PORTABLE=1) runs no crew")
    alone = _run(code, {"RECUR_NUM_THREADS": "1"})
    shared = _run(code, {"RECUR_NUM_THREADS": ""})
    assert alone.returncode == 0, alone.stderr
    assert shared.returncode == 0, shared.stderr
    return alone.stdout.split("\n"), shared.stdout.split("\n")


# Sequences that keep their gates half by half (ops_rnn: part_major): two threads run a
# half each, one thread both in turn, and the weight gradients go half by half with the
# rows each step saw gathered where they lie (blas.pyx: gradient_of_rows). Stacked, so
# that the second layer's input gradient goes back half by half too; a GRUv3, whose
# gradients of r ⊙ h are kept that way; an odd batch, of halves 6 and 7, in float64; and
# 4 x 160 gates, whose Wh gradient packs the rows each step saw in a packing the crew shares.
# The last column is the same layers' inference, whose parts each pack the weights.
_PART_BY_PART = """
    import hashlib
    import numpy as np
    import recur as rc
    rng = np.random.default_rng(12)
    stacked = rc.Chain(rc.GRU(24, 96, rng=rng), rc.LSTM(96, 64, rng=rng), rc.Dense(64, 3, rng=rng))
    X = rc.param(rng.standard_normal((40, 16, 24)).astype(np.float32))
    Y = rng.standard_normal((40, 16, 3)).astype(np.float32)
    v3 = rc.GRUv3(24, 48, rng=rng)
    odd = rc.LSTM(5, 37, rng=rng, dtype=np.float64)
    X_odd = rng.standard_normal((45, 13, 5))
    wide = rc.LSTM(16, 160, rng=rng)
    X_wide = rng.standard_normal((30, 32, 16)).astype(np.float32)
    # The RNN's gate gradients go part by part where its head's dx stays a product.
    headed = rc.Chain(rc.RNN(24, 64, rng=rng), rc.Dense(64, 3, rng=rng))

    def digest(f, ws):
        grads = rc.gradient(f, ws)
        return hashlib.sha1(b"".join(np.asarray(grads[p]).tobytes() for p in ws)).hexdigest()

    def inference():
        outputs = [stacked(X.value), v3(X.value), odd(X_odd), wide(X_wide)]
        return hashlib.sha1(b"".join(np.asarray(y).tobytes() for y in outputs)).hexdigest()

    for _ in range(3):
        print(digest(lambda: (rc.reset(stacked), rc.mse(stacked(X), Y))[1],
                     [X, *rc.params(stacked)])[:16],
              digest(lambda: (rc.reset(v3), rc.sum(v3(X) ** 2))[1], rc.params(v3))[:16],
              digest(lambda: (rc.reset(odd), rc.sum(odd(X_odd) ** 2))[1], rc.params(odd))[:16],
              digest(lambda: (rc.reset(wide), rc.sum(wide(X_wide) ** 2))[1],
                     rc.params(wide))[:16],
              digest(lambda: (rc.reset(headed), rc.mse(headed(X), Y))[1],
                     [X, *rc.params(headed)])[:16],
              (rc.reset([stacked, v3, odd, wide]), inference())[1][:16])
"""


def test_sequences_kept_part_by_part_give_one_threads_gradients_and_outputs_exactly():
    alone_lines, shared_lines = _alone_and_shared(_PART_BY_PART)
    assert len(alone_lines) == 4 and len(set(alone_lines[:3])) == 1
    assert len(alone_lines[0].split()) == 6
    assert shared_lines == alone_lines


def test_gradients_computed_in_the_background_match_one_threads_exactly():
    alone_lines, shared_lines = _alone_and_shared(_BACKGROUND_GRADIENTS)
    assert len(alone_lines) == 11 and len(set(alone_lines[:10])) == 1
    assert shared_lines == alone_lines


def test_units_claimed_by_two_threads_give_one_threads_results_exactly():
    alone_lines, shared_lines = _alone_and_shared(_CLAIMED_UNITS)
    assert len(set(alone_lines[:20])) == 1 and len(alone_lines[0].split()) == 9
    assert shared_lines == alone_lines
