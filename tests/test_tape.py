"""The tape's contract: scope, memory, values, errors, threads."""
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import recur as rc
from recur._core.registry import CODES
from recur._core.tape import thread_tape
from tests.gil import longest_stall


def test_no_tape_outside_gradient():
    W = rc.param(np.ones((2, 3)))
    y = rc.tanh(W @ np.ones(3))
    assert thread_tape().n_nodes_recorded == 0
    assert y._tape is None


def test_inference_memory_stays_flat():
    script = textwrap.dedent("""
        import resource, numpy as np, recur as rc
        model = rc.Chain(rc.Dense(16, 32, rc.tanh), rc.Dense(32, 4))
        x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
        def rss_kib():
            with open("/proc/self/status") as status:
                return next(int(l.split()[1]) for l in status if l.startswith("VmRSS"))
        for _ in range(2000):
            model(x)
        before = rss_kib()
        for _ in range(100_000):
            model(x)
        print(rss_kib() - before)
    """)
    grown_kib = int(subprocess.run([sys.executable, "-c", script], capture_output=True,
                                   text=True, check=True).stdout)
    assert grown_kib < 2048, f"100,000 inference calls grew the process by {grown_kib} KiB"


def test_gradient_calls_reuse_the_tape_buffers():
    model = rc.Chain(rc.Dense(8, 16, rc.tanh), rc.Dense(16, 1))
    x = np.ones((4, 8), np.float32)
    loss = lambda: rc.mean(model(x))
    rc.gradient(loss, model)
    held = thread_tape().arena_bytes
    for _ in range(50):
        rc.gradient(loss, model)
    assert thread_tape().arena_bytes == held


def test_every_gradient_starts_at_zero_when_the_threads_share_the_zeroing():
    # The second call's gradient buffers are the first's, still holding its values, and
    # together pass the size from which the crew's two threads split the zeroing; the
    # nodes' odd sizes put the split inside a node. A byte left unzeroed would show.
    rng = np.random.default_rng(1)
    x = rng.standard_normal((301, 257)).astype(np.float32)      # 301 KB a node
    W = rc.param(rng.standard_normal((257, 7)).astype(np.float32))
    v = rc.param(rng.standard_normal(257).astype(np.float32))

    def loss():
        h = rc.tanh(x * v)                  # nodes of 301 x 257 floats
        return rc.sum(rc.sigmoid(h @ W) * 3.0) + rc.sum(h * 0.5)

    first = rc.gradient(loss, [W, v])
    for _ in range(3):
        again = rc.gradient(loss, [W, v])
        np.testing.assert_array_equal(again[W], first[W])
        np.testing.assert_array_equal(again[v], first[v])
    h = np.tanh(x * v.value)
    s = 1 / (1 + np.exp(-(h @ W.value)))
    dz = 3.0 * s * (1 - s)
    np.testing.assert_allclose(first[W], h.T @ dz, rtol=2e-4, atol=1e-3)
    dh = dz @ W.value.T + 0.5
    np.testing.assert_allclose(first[v], ((1 - h ** 2) * dh * x).sum(0), rtol=2e-4, atol=1e-3)


def _gradients_hold_across_calls(f, arrays):
    # Each call's gradient buffers are the previous call's, holding its values: a buffer
    # neither zeroed nor written whole would show as a gradient that changes from call to
    # call. The first call is checked against finite differences.
    assert rc.check_gradients(f, *arrays) < 1e-5
    ps = [rc.param(a) for a in arrays]
    first = rc.gradient(lambda: rc.sum(f(*ps)), ps)
    for _ in range(3):
        again = rc.gradient(lambda: rc.sum(f(*ps)), ps)
        for p in ps:
            np.testing.assert_array_equal(again[p], first[p])


@pytest.mark.parametrize("dense_last", [True, False])
def test_a_gradient_written_whole_by_its_first_writer_adds_the_other_writers(dense_last):
    # A Dense layer's backward writes its input's gradient whole when it writes there first
    # (it is the input's last consumer on the tape); the other consumer, before or after it
    # on the tape, adds to it.
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 4))
    head = rc.Dense.from_weights(rng.standard_normal((3, 4)), rng.standard_normal(3),
                                 rc.tanh)

    def f(v, W):
        head.W = W
        h = rc.tanh(x * v)
        if dense_last:
            other = rc.sum(h * h * 0.5)
            return other + rc.sum(head(h) ** 2)
        dense = rc.sum(head(h) ** 2)
        return rc.sum(h * h * 0.5) + dense

    _gradients_hold_across_calls(f, [rng.standard_normal(4), rng.standard_normal((3, 4))])


@pytest.mark.parametrize("lower", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("upper_last", [True, False])
def test_a_stacked_layer_writes_the_lower_sequences_gradient_whole_or_adds(lower,
                                                                            upper_last):
    # The upper layer's backward writes the lower sequence's gradient whole when it writes
    # there first, and adds after the other consumer of that sequence; a GRU writes it in
    # two products, the second adding. An LSTM's sequence shares its node with the last c,
    # which the upper layer does not write.
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 3, 2))
    below = getattr(rc, lower)(2, 4, dtype=np.float64, rng=rng)
    above = rc.GRU(4, 3, dtype=np.float64, rng=rng)
    head = rc.Dense.from_weights(rng.standard_normal((2, 3)), None)

    def f(Wi_below, Wi_above):
        below.cell.Wi, above.cell.Wi = Wi_below, Wi_above
        rc.reset(below), rc.reset(above)
        h = below(x)
        if upper_last:
            other = rc.sum(h * h * 0.5)
            return other + rc.sum(head(above(h)) ** 2)
        stacked = rc.sum(head(above(h)) ** 2)
        return rc.sum(h * h * 0.5) + stacked

    _gradients_hold_across_calls(f, [below.cell.Wi.value.copy(),
                                     above.cell.Wi.value.copy()])


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU", "GRUv3"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("steps, batch", [(7, 1), (7, 3), (7, 32), (40, 16)])
@pytest.mark.parametrize("activation", [None, rc.tanh])
def test_a_sequences_gradient_left_as_its_heads_product_is_the_written_one_exactly(
        cell, dtype, steps, batch, activation):
    # A head's dx over a sequence stays the product dz W, which the sequence's backward
    # reads a step at a time. Another consumer of the sequence that writes its gradient
    # first (on the tape after the head) stops that; one that writes after the head has it
    # written out first. Both add zeros, so all three give the same bits (but the RNN's:
    # over 40 x 16, its gate gradients then go part by part, and its weight gradients sum
    # in another order).
    rng = np.random.default_rng(6)
    layer = getattr(rc, cell)(5, 24, dtype=dtype, rng=rng)
    head = rc.Dense(24, 3, activation or rc.identity, dtype=dtype, rng=rng)
    x = rng.standard_normal((steps, batch, 5)).astype(dtype)
    target = rng.standard_normal((steps, batch, 3)).astype(dtype)

    def loss(other):
        rc.reset(layer)
        h = layer(x)
        if other == "before":
            unused = rc.sum(h * 0.0)
            return unused + rc.mse(head(h), target)
        fitted = rc.mse(head(h), target)
        return fitted + rc.sum(h * 0.0) if other == "after" else fitted

    model = rc.Chain(layer, head)
    left = rc.gradient(lambda: loss(None), model)
    part_by_part = cell == "RNN" and steps == 40
    for other in ("before", "after"):
        written = rc.gradient(lambda: loss(other), model)
        for p in rc.params(model):
            if part_by_part:
                np.testing.assert_allclose(left[p], written[p],
                                           rtol=1e-5 if dtype == np.float32 else 1e-13,
                                           atol=1e-6 if dtype == np.float32 else 1e-15)
            else:
                np.testing.assert_array_equal(left[p], written[p])

    def stepwise():        # its head's dx is written step by step
        rc.reset(layer)
        return sum(rc.sum((head(layer(x_t)) - y_t) ** 2)
                   for x_t, y_t in zip(x, target)) * (1 / target.size)

    expected = rc.gradient(stepwise, model)
    for p in rc.params(model):
        np.testing.assert_allclose(left[p], expected[p],
                                   rtol=2e-4 if dtype == np.float32 else 1e-10,
                                   atol=2e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
def test_two_heads_on_one_sequence_add_their_gradients(cell):
    # The second head on the tape (the first whose backward runs) leaves its product; the
    # other's backward has it written out, then adds its own dx.
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 4, 3))
    layer = getattr(rc, cell)(3, 8, dtype=np.float64, rng=rng)
    first = rc.Dense.from_weights(rng.standard_normal((2, 8)), None)
    second = rc.Dense.from_weights(rng.standard_normal((3, 8)), rng.standard_normal(3),
                                   rc.sigmoid)

    def f(Wi, W):
        layer.cell.Wi, second.W = Wi, W
        rc.reset(layer)
        h = layer(x)
        return rc.sum(first(h) ** 2) + rc.sum(second(h) ** 2)

    _gradients_hold_across_calls(f, [layer.cell.Wi.value.copy(),
                                     rng.standard_normal((3, 8))])


def test_lstm_steps_write_the_previous_states_gradient_whole_only_where_h_and_c_tile_it():
    # A step's state (h, c) is two blocks of one node; the next step's backward writes
    # both whole, so that node's gradient is not zeroed first. Where the next step gets
    # only one of the blocks, or one block twice, or the two swapped, the rest must still
    # start at zero or the blocks land in their own places.
    rng = np.random.default_rng(3)
    cell = rc.LSTMCell(3, 4, dtype=np.float64, rng=rng)
    x = rng.standard_normal((3, 2, 3))
    fresh = rng.standard_normal((2, 4))
    head = rc.Dense.from_weights(rng.standard_normal((2, 4)), None)

    for mix in ("tile", "swapped", "h only", "h twice"):
        def f(Wh, c0):
            cell.Wh = Wh
            (h, c), y = cell((rc.tanh(c0 * 1.5), c0), x[0])
            loss = rc.sum(head(y) ** 2)
            for t in (1, 2):
                state = {"tile": (h, c), "swapped": (c, h), "h only": (h, fresh),
                         "h twice": (h, h)}[mix]
                (h, c), y = cell(state, x[t])
                loss = loss + rc.sum(head(y) ** 2)
            return loss + rc.sum(c * 0.5)

        _gradients_hold_across_calls(f, [cell.Wh.value.copy(), rng.standard_normal((2, 4))])


def test_values_stay_readable_and_unchanged_after_the_call():
    W = rc.param(np.arange(6.0).reshape(2, 3))
    kept = {}

    def loss():
        kept["h"] = rc.tanh(W * 0.1)
        kept["row"] = kept["h"][1]
        return rc.sum(kept["h"])

    rc.gradient(loss, [W])
    snapshot = kept["h"].numpy().copy(), kept["row"].numpy().copy()
    for _ in range(3):
        rc.gradient(lambda: rc.sum(rc.exp(W * 2.0)), [W])
    np.testing.assert_array_equal(kept["h"].numpy(), snapshot[0])
    np.testing.assert_array_equal(kept["row"].numpy(), snapshot[1])
    # Afterwards the value is a constant: using it records nothing.
    gs = rc.gradient(lambda: rc.sum(kept["h"] * W), [W])
    np.testing.assert_allclose(gs[W], snapshot[0])


def test_gradients_are_arrays_of_the_callers_own():
    # A parameter's gradient is written straight into the array handed out: it must not be
    # shared with the tape's buffers, with a later call's gradients, or with a second
    # request for the same node.
    rng = np.random.default_rng(0)
    model = rc.Chain(rc.Dense(3, 5, rc.tanh), rc.Dense(5, 2))
    ps = rc.params(model)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    first = rc.gradient(lambda: rc.sum(model(x)), ps)
    kept = [first[p].copy() for p in ps]
    second = rc.gradient(lambda: rc.sum(model(x * 2) ** 2), ps)
    for p, before in zip(ps, kept):
        assert first[p].shape == p.value.shape and first[p].dtype == np.float32
        assert first[p].flags.writeable and first[p].flags.c_contiguous
        assert not np.shares_memory(first[p], second[p])
        np.testing.assert_array_equal(first[p], before)
        second[p][...] = 7          # editing one call's gradients leaves the other's alone
        np.testing.assert_array_equal(first[p], before)

    W = rc.param(np.arange(4.0).reshape(2, 2))
    tape = thread_tape()
    tape.start([W])
    try:
        out = rc.sum(W * W)
        tape.backward(tape.node_id(out))
        a = tape.grad_of(tape.node_id(W), W.shape, W.dtype)
        b = tape.grad_of(tape.node_id(W), W.shape, W.dtype)
    finally:
        tape.finish()
    assert not np.shares_memory(a, b)
    np.testing.assert_array_equal(a, 2 * W.value)
    np.testing.assert_array_equal(b, 2 * W.value)


def test_values_are_read_only():
    t = rc.tanh(np.ones(3))
    with pytest.raises(ValueError):
        np.asarray(t)[0] = 5


def test_nested_gradient_raises():
    W = rc.param(np.ones(2))
    with pytest.raises(RuntimeError, match="nested"):
        rc.gradient(lambda: rc.sum(W) + rc.gradient(lambda: rc.sum(W), [W])[W].sum(), [W])
    # The outer call cleaned up: gradients work again.
    assert rc.gradient(lambda: rc.sum(W * 3), [W])[W].tolist() == [3, 3]


def test_non_scalar_result_raises():
    W = rc.param(np.ones(3))
    with pytest.raises(ValueError, match=r"scalar.*shape \(3,\)"):
        rc.gradient(lambda: W * 2, [W])
    with pytest.raises(ValueError, match="scalar"):
        rc.gradient(lambda: "loss", [W])


@pytest.mark.parametrize("call", [rc.gradient, rc.value_and_gradient])
def test_arrays_passed_as_parameters_raise_instead_of_giving_no_gradients(call):
    x = np.ones(3)
    name = call.__name__
    with pytest.raises(TypeError, match=rf"{name}: ps must be recur\.Params, a list of Params "
                                        r"or a model; got an ndarray as item 0 of a list, "
                                        r"which is not trainable \(make one with "
                                        r"recur\.param\(array\)\)"):
        call(lambda: rc.sum(rc.tanh(x)), [x])
    with pytest.raises(TypeError, match=rf"{name}: .*got a Tensor, which is not trainable"):
        call(lambda: rc.sum(x), rc.Tensor(x))
    # A model holding arrays among its layers is walked as before, arrays skipped.
    W = rc.param(np.ones(3))
    assert call(lambda: rc.sum(W * 2), {"W": W, "table": x}) is not None


def test_unused_parameter_gets_none():
    used, unused = rc.param(np.ones(2)), rc.param(np.ones(2))
    gs = rc.gradient(lambda: rc.sum(used * 2), [used, unused])
    assert gs[unused] is None and gs[used].tolist() == [2, 2]
    # A constant result depends on nothing.
    loss, gs = rc.value_and_gradient(lambda: 3.0, [used])
    assert loss == 3.0 and gs[used] is None


def test_tied_weight_gets_summed_gradient():
    shared = rc.Dense(3, 3, dtype=np.float64)
    model = rc.Chain(shared, rc.tanh, shared)
    ps = rc.params(model)
    assert len(ps) == 2
    x = np.random.default_rng(0).standard_normal((2, 3))
    gs = rc.gradient(lambda: rc.sum(model(x)), ps)
    W = shared.W.value
    h = np.tanh(x @ W.T + shared.b.value)
    dz = np.ones((2, 3))
    dh = dz @ W * (1 - h ** 2)
    np.testing.assert_allclose(gs[shared.W], dz.T @ h + dh.T @ x)


def test_value_and_gradient_returns_a_float():
    W = rc.param(np.full(2, 2.0))
    loss, gs = rc.value_and_gradient(lambda: rc.sum(W * W), W)
    assert isinstance(loss, float) and loss == 8.0
    assert gs[W].tolist() == [4, 4]


def test_an_exception_inside_f_leaves_no_tape_behind():
    W = rc.param(np.ones(2))
    with pytest.raises(ZeroDivisionError):
        rc.gradient(lambda: 1 / 0, [W])
    assert thread_tape().n_nodes_recorded == 0
    assert rc.gradient(lambda: rc.sum(W), [W])[W].tolist() == [1, 1]


def test_long_chains_need_no_recursion():
    W = rc.param(np.ones(1))
    def loss():
        h = W
        for _ in range(20_000):
            h = h * 1.0
        return rc.sum(h)
    assert rc.gradient(loss, [W])[W].tolist() == [1.0]


def _model_and_loss(seed):
    rng = np.random.default_rng(seed)
    model = rc.Chain(rc.Dense(256, 256, rc.tanh, dtype=np.float64, rng=rng),
                     rc.Dense(256, 256, dtype=np.float64, rng=rng))
    x = rng.standard_normal((256, 256))
    return model, lambda: rc.mean(rc.square(model(x)))


def test_threads_give_the_serial_results():
    pairs = [_model_and_loss(seed) for seed in (1, 2)]
    serial = [rc.gradient(loss, model) for model, loss in pairs]
    results = [None, None]

    def work(k):
        model, loss = pairs[k]
        for _ in range(5):
            results[k] = rc.gradient(loss, model)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (model, _), expected, got in zip(pairs, serial, results):
        for p in rc.params(model):
            np.testing.assert_array_equal(got[p], expected[p])


def test_kernels_release_the_gil():
    """While one thread runs a long matrix product, another keeps running Python."""
    rng = np.random.default_rng(0)
    W = rc.param(rng.standard_normal((1500, 1500)))
    x = rng.standard_normal((1500, 1500))
    stall, alone = longest_stall(lambda: rc.gradient(lambda: rc.sum(x @ W), [W]))
    assert stall < alone / 3, (stall, alone)


# ---------------------------------------------------------------- bad input

def test_dense_wrong_feature_size():
    with pytest.raises(ValueError, match=r"Dense\(3 => 2\).*3 features.*\(4, 5\)"):
        rc.Dense(3, 2)(np.ones((4, 5)))


def test_dense_scalar_input():
    with pytest.raises(ValueError, match=r"Dense\(3 => 2\).*scalar"):
        rc.Dense(3, 2)(1.0)


@pytest.mark.parametrize("bad", [np.array([1 + 2j]), np.array(["a"]), np.array([object()]),
                                 "text"])
def test_non_numeric_input_raises_type_error(bad):
    with pytest.raises(TypeError, match="dtype|real numbers"):
        rc.tanh(bad)


def test_loss_shape_mismatch():
    with pytest.raises(ValueError, match=r"mse.*\(3, 2\).*\(2, 3\)"):
        rc.mse(np.ones((3, 2)), np.ones((2, 3)))


def test_mse_is_one_node_and_the_mean_of_squares():
    # The default mean is one fused node; its float32 value is the float64 mean rounded
    # once, and any other aggregation composes the ops to the same result.
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((2, 7, 5)).astype(np.float32)
    want = np.float32(np.mean((a.astype(np.float64) - b) ** 2))
    assert rc.mse(a, b).dtype == np.float32
    assert float(rc.mse(a, b)) == want
    np.testing.assert_allclose(float(rc.mse(a, b, agg=lambda v: rc.sum(v) / v.size)), want,
                               rtol=1e-6)
    p = rc.param(a)
    seen = []

    def loss():
        out = rc.mse(p, b)
        seen.extend(thread_tape().recorded_ops())
        return out

    grads = rc.gradient(loss, p)
    assert seen.count(CODES["SQUARED_ERROR"]) == 1 and len(seen) == 2   # the leaf and mse
    np.testing.assert_allclose(grads[p], 2 * (a - b) / a.size, rtol=1e-6)
    assert np.isnan(float(rc.mse(np.ones((0, 3)), np.ones((0, 3)))))


class _TargetArray(np.ndarray):
    """An ndarray subclass, which the fused loss leaves to the general path."""


def test_mse_of_every_pairing_of_operands_matches_the_mean_of_squares():
    # Tensor against ndarray or Tensor, float32 and float64 mixed, a strided target, an
    # ndarray subclass: each gives numpy's value and gradient, fused or composed.
    rng = np.random.default_rng(6)
    a = rng.standard_normal((4, 6))
    b = rng.standard_normal((4, 12))
    strided = b[:, ::2]
    targets = [strided.astype(np.float32), strided.astype(np.float64), strided,
               rc.Tensor(strided.astype(np.float32)),
               strided.astype(np.float32).view(_TargetArray)]
    for target in targets:
        for dtype in (np.float32, np.float64):
            p = rc.param(a.astype(dtype))
            y = np.asarray(target.value if isinstance(target, rc.Tensor) else target, np.float64)
            want = np.mean((p.value.astype(np.float64) - y) ** 2)
            loss, grads = rc.value_and_gradient(lambda: rc.mse(p, target), p)
            np.testing.assert_allclose(loss, want, rtol=1e-6)
            np.testing.assert_allclose(grads[p], 2 * (p.value - y) / y.size, rtol=1e-5,
                                       atol=1e-7)
    with pytest.raises(ValueError, match=r"mse.*\(4, 6\).*\(6, 4\)"):
        rc.mse(rc.param(a), np.ones((6, 4)))


def test_unsupported_numpy_function_names_itself():
    t = rc.Tensor(np.ones((2, 2)))
    with pytest.raises(TypeError, match="numpy.cumsum"):
        np.cumsum(t)
    with pytest.raises(TypeError, match="numpy.sin"):
        np.sin(t)
    with pytest.raises(TypeError, match="numpy.add.accumulate"):
        np.add.accumulate(t)


def test_supported_numpy_functions_stay_on_the_tape():
    W = rc.param(np.array([0.5, -0.2]), np.float64)
    gs = rc.gradient(lambda: np.sum(np.tanh(W) * np.exp(W)), [W])
    expected = (1 - np.tanh(W.value) ** 2) * np.exp(W.value) + np.tanh(W.value) * np.exp(W.value)
    np.testing.assert_allclose(gs[W], expected)
    a = np.arange(2.0)
    assert isinstance(a + W, rc.Tensor)
    assert isinstance(np.concatenate([W, a]), rc.Tensor)


def test_matmul_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(2, 3\) @ \(2, 3\)"):
        rc.Tensor(np.ones((2, 3))) @ np.ones((2, 3))


def test_embedding_bad_indices():
    e = rc.Embedding(5, 2)
    with pytest.raises(IndexError, match=r"index 7 is out of range \[0, 5\)"):
        e(np.array([1, 7]))
    with pytest.raises(TypeError, match="integer indices"):
        e(np.array([1.0]))


def test_broadcast_mismatch():
    with pytest.raises(ValueError, match="broadcast"):
        rc.Tensor(np.ones(3)) + np.ones(4)


def test_power_needs_a_scalar_exponent():
    with pytest.raises(TypeError, match="scalar"):
        rc.Tensor(np.ones(3)) ** np.ones(3)


def test_reshape_error_names_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4,\)"):
        rc.reshape(rc.Tensor(np.ones((2, 3))), (4,))


def test_axis_out_of_range():
    with pytest.raises(ValueError, match="axis 2"):
        rc.sum(np.ones((2, 2)), axis=2)


def test_a_recordings_backward_pass_runs_once():
    """Kernels may reuse what the forward saved for the backward pass (an LSTM's gate
    gradients overwrite its gates), so a second pass over one recording is refused rather
    than run on overwritten values; a new recording differentiates again."""
    m = rc.LSTM(3, 4, dtype=np.float64)
    ps = rc.params(m)
    x = np.linspace(-1, 1, 6).reshape(2, 3)
    tape = thread_tape()
    rc.reset(m)
    tape.start(ps)
    try:
        out = rc.sum(m(x))
        tape.backward(tape.node_id(out))
        first = tape.grad_of(tape.node_id(m.cell.Wh), m.cell.Wh.shape, m.cell.Wh.dtype)
        with pytest.raises(RuntimeError, match="backward pass has already run"):
            tape.backward(tape.node_id(out))
    finally:
        tape.finish()
    rc.reset(m)
    again = rc.gradient(lambda: rc.sum(m(x)), ps)[m.cell.Wh]
    np.testing.assert_array_equal(again, first)


def test_every_watched_param_is_found_however_many_are_watched():
    # The tape finds a Param's leaf by its address in a table sized to what it watches:
    # small, grown, and small again on one thread, each Param gets its own gradient, and a
    # Param it does not watch none.
    for n in (2, 70, 3, 300, 1):
        ps = [rc.param(np.zeros(2)) for _ in range(n)]
        outsider = rc.param(np.ones(2))

        def loss():
            total = rc.sum(outsider * 5.0)
            for i, p in enumerate(ps):
                total = total + rc.sum(p * float(i + 1))
            return total

        grads = rc.gradient(loss, ps)
        for i, p in enumerate(ps):
            assert grads[p].tolist() == [i + 1.0, i + 1.0]
        with pytest.raises(KeyError):
            grads[outsider]
