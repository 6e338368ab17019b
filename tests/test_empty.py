"""Arrays with an axis of length 0: a batch of no rows, a sequence of no steps, a layer with
no inputs or no units. They work as numpy's arrays do: shapes follow the same rules as at
any other size, and a gradient is zero where nothing contributed to the loss."""
import numpy as np
import pytest

import recur as rc
from recur import reference as ref
from recur.recurrent import GRUCell, GRUv3Cell, LSTMCell, RNNCell
from tests.test_recurrent import _pack, _unpack

# kind -> (cell, reference step, its backward, reference sequence, its backward, states)
CELLS = {
    "rnn": (RNNCell, ref.rnn_step, ref.rnn_step_backward, ref.rnn_sequence,
            ref.rnn_sequence_backward, ("h",)),
    "lstm": (LSTMCell, ref.lstm_step, ref.lstm_step_backward, ref.lstm_sequence,
             ref.lstm_sequence_backward, ("h", "c")),
    "gru": (GRUCell, ref.gru_step, ref.gru_step_backward, ref.gru_sequence,
            ref.gru_sequence_backward, ("h",)),
    "gruv3": (GRUv3Cell, ref.gruv3_step, ref.gruv3_step_backward, ref.gruv3_sequence,
              ref.gruv3_sequence_backward, ("h",)),
}

# name -> (inputs, units, batch, steps). The larger ones reach the kernels' packed paths.
SIZES = {
    "no batch rows": (3, 5, 0, 4),
    "no inputs": (0, 5, 3, 4),
    "no units": (3, 0, 3, 4),
    "none of anything": (0, 0, 0, 2),
    "no batch rows, 128 units": (32, 128, 0, 3),
    "no inputs, 40 rows of 128 units": (0, 128, 40, 3),
}

DTYPES = [np.float64, np.float32]
TOLERANCE = {np.float64: 1e-10, np.float32: 2e-5}


def _random_cell(kind, n_in, n_out, dtype, rng):
    make = CELLS[kind][0]
    cell = make(n_in, n_out, dtype=dtype)
    names = list(make.weight_shapes(n_in, n_out))
    for name in names:
        getattr(cell, name).value = 0.5 * rng.standard_normal(getattr(cell, name).shape)
    return cell, names, [np.asarray(getattr(cell, name), np.float64) for name in names]


def _assert_close(got, want, dtype, what):
    assert got is not None, f"no gradient for {what}"
    got = np.asarray(got)
    want = np.broadcast_to(np.asarray(want, np.float64), got.shape) if np.ndim(want) == 0 else want
    assert got.shape == np.shape(want), f"{what}: shape {got.shape}, expected {np.shape(want)}"
    assert got.dtype == dtype, f"{what}: dtype {got.dtype}, expected {np.dtype(dtype)}"
    tol = TOLERANCE[dtype]
    scale = np.max(np.abs(want)) if np.size(want) else 0.0
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(scale, 1.0), err_msg=what)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("style", ["sequence", "single step"])
@pytest.mark.parametrize("sizes", sorted(SIZES))
@pytest.mark.parametrize("kind", sorted(CELLS))
def test_a_cell_with_an_empty_axis_matches_the_reference(kind, sizes, style, dtype):
    n_in, n_out, batch, steps = SIZES[sizes]
    _, step, step_backward, sequence, sequence_backward, state_names = CELLS[kind]
    rng = np.random.default_rng(4)
    cell, names, weights = _random_cell(kind, n_in, n_out, dtype, rng)
    x = rng.standard_normal((steps, batch, n_in) if style == "sequence" else (batch, n_in))
    states = [rng.standard_normal((batch, n_out)) for _ in state_names]
    new, y = cell(_pack([s.astype(dtype) for s in states]), x.astype(dtype))
    if style == "sequence":
        y_want, new_want = sequence(*weights, *states, x)
    else:
        new_want = step(*weights, *states, x)
        y_want = _unpack(new_want)[0]
    _assert_close(y, y_want, dtype, "output")
    for name, got, want in zip(state_names, _unpack(new), _unpack(new_want)):
        _assert_close(got, want, dtype, f"new {name}")

    dy = rng.standard_normal(np.shape(y_want))
    d_new = [rng.standard_normal((batch, n_out)) for _ in state_names]
    x_param = rc.param(x.astype(dtype))
    state_params = [rc.param(s.astype(dtype)) for s in states]

    def loss():
        new, y = cell(_pack(state_params), x_param)
        total = rc.sum(y * dy.astype(dtype))
        for part, seed in zip(_unpack(new), d_new):
            total = total + rc.sum(part * seed.astype(dtype))
        return total

    gs = rc.gradient(loss, [x_param, *state_params, *(getattr(cell, name) for name in names)])
    if style == "sequence":
        want = sequence_backward(*weights, *states, x, dy, *d_new)
        want_x, want_states = want["X"], [want[f"{name}0"] for name in state_names]
    else:
        # A step's output is its new h: both seeds reach h.
        want = step_backward(*weights, *states, x, d_new[0] + dy, *d_new[1:])
        want_x, want_states = want["x"], [want[name] for name in state_names]
    _assert_close(gs[x_param], want_x, dtype, "the input's gradient")
    for name, p, expected in zip(state_names, state_params, want_states):
        _assert_close(gs[p], expected, dtype, f"{name}'s gradient")
    for name in names:
        _assert_close(gs[getattr(cell, name)], want[name], dtype, f"{name}'s gradient")


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_a_sequence_of_no_steps_keeps_the_state_and_passes_its_gradient_back(kind):
    make, state_names = CELLS[kind][0], CELLS[kind][-1]
    rng = np.random.default_rng(6)
    cell = make(3, 4, dtype=np.float64)
    states = [rc.param(rng.standard_normal((2, 4))) for _ in state_names]
    seeds = [rng.standard_normal((2, 4)) for _ in state_names]
    X = rc.param(np.zeros((0, 2, 3)))

    def loss():
        final, Y = cell(_pack(states), X)
        assert Y.shape == (0, 2, 4)
        return rc.sum(Y) + sum(rc.sum(part * seed) for part, seed in zip(_unpack(final), seeds))

    weights = rc.params(cell)
    gs = rc.gradient(loss, [X, *states, *weights])
    for p, seed in zip(states, seeds):
        np.testing.assert_array_equal(gs[p], seed)
    # No step ran: the loss does not depend on the input or the weights (SPEC: None).
    assert gs[X] is None and all(gs[w] is None for w in weights)


@pytest.mark.parametrize("style", ["sequence", "stepwise"])
@pytest.mark.parametrize("layer", [rc.RNN, rc.LSTM, rc.GRU, rc.GRUv3])
def test_training_on_a_batch_of_no_rows_leaves_the_model_as_it_was(layer, style):
    rc.seed(1)
    model = rc.Chain(layer(3, 6), rc.Dense(6, 2))
    before = [p.value.copy() for p in rc.params(model)]
    X = np.zeros((5, 0, 3), np.float32)
    ps, opt = rc.params(model), rc.Adam(0.01)

    def loss():
        outputs = model(X) if style == "sequence" else rc.stack([model(x) for x in X])
        assert outputs.shape == (5, 0, 2)
        return rc.sum(outputs)

    rc.reset(model)
    value, gs = rc.value_and_gradient(loss, ps)
    assert value == 0.0
    for p in ps:
        np.testing.assert_array_equal(gs[p], np.zeros_like(p.value))
    rc.update(opt, ps, gs)
    for p, old in zip(ps, before):
        np.testing.assert_array_equal(p.value, old)


# (leading axes of the input, inputs, outputs), each with an axis of length 0 somewhere
DENSE_EMPTY = [(lead, n_in, n_out)
               for lead in [(), (0,), (3,), (70,), (0, 4), (5, 0), (4, 3)]
               for n_in, n_out in [(3, 4), (0, 4), (3, 0), (0, 0), (64, 96), (0, 96)]
               if not (n_in and n_out and all(lead))]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("lead, n_in, n_out", DENSE_EMPTY, ids=str)
def test_dense_with_an_empty_axis_matches_numpy(lead, n_in, n_out, dtype):
    rng = np.random.default_rng(7)
    d = rc.Dense(n_in, n_out, rc.tanh, dtype=dtype)
    d.b.value = rng.standard_normal(n_out)
    x = rng.standard_normal(lead + (n_in,))
    seed = rng.standard_normal(lead + (n_out,))
    W, b = d.W.value.astype(np.float64), d.b.value.astype(np.float64)
    y_want = np.tanh(x @ W.T + b)
    _assert_close(d(x.astype(dtype)), y_want, dtype, "y")
    x_param = rc.param(x.astype(dtype))
    gs = rc.gradient(lambda: rc.sum(d(x_param) * seed.astype(dtype)), [x_param, d.W, d.b])
    d_pre = seed * (1 - y_want ** 2)
    rows = int(np.prod(lead))
    _assert_close(gs[x_param], d_pre @ W, dtype, "x's gradient")
    _assert_close(gs[d.W], d_pre.reshape(rows, n_out).T @ x.reshape(rows, n_in), dtype,
                  "W's gradient")
    _assert_close(gs[d.b], d_pre.reshape(rows, n_out).sum(axis=0), dtype, "b's gradient")


EMPTY_SHAPES = [(0,), (0, 3), (3, 0), (2, 0, 4)]


def _logsoftmax(a):
    if a.shape[-1] == 0:
        return a
    shifted = a - a.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


# name -> (recur's op, what numpy gives)
OPS_ON_EMPTY = {
    "tanh": (rc.tanh, np.tanh), "exp": (rc.exp, np.exp), "log": (rc.log, np.log),
    "sqrt": (rc.sqrt, np.sqrt), "abs": (rc.abs, np.abs), "square": (rc.square, np.square),
    "sigmoid": (rc.sigmoid, lambda a: 1 / (1 + np.exp(-a))),
    "relu": (rc.relu, lambda a: np.maximum(a, 0)),
    "softplus": (rc.softplus, lambda a: np.logaddexp(a, 0)),
    "sum": (rc.sum, np.sum), "mean": (rc.mean, np.mean),
    "sum over the first axis": (lambda a: rc.sum(a, axis=0), lambda a: a.sum(axis=0)),
    "mean over the first axis": (lambda a: rc.mean(a, axis=0), lambda a: a.mean(axis=0)),
    "mean over the last axis": (lambda a: rc.mean(a, axis=-1), lambda a: a.mean(axis=-1)),
    "product": (lambda a: a * a, lambda a: a * a), "quotient": (lambda a: a / 2, lambda a: a / 2),
    "power": (lambda a: a ** 2, lambda a: a ** 2),
    "reshape": (lambda a: rc.reshape(a, (-1,)), lambda a: a.reshape(-1)),
    "transpose": (rc.transpose, np.transpose),
    "concat": (lambda a: rc.concat([a, a], axis=0), lambda a: np.concatenate([a, a])),
    "stack": (lambda a: rc.stack([a, a]), lambda a: np.stack([a, a])),
    "clip": (lambda a: rc.clip(a, -1, 1), lambda a: np.clip(a, -1, 1)),
    "slice": (lambda a: a[:1], lambda a: a[:1]),
    "matmul": (lambda a: a @ np.ones((a.shape[-1], 2)), lambda a: a @ np.ones((a.shape[-1], 2))),
    "softmax": (rc.softmax, lambda a: np.exp(_logsoftmax(a))),
    "logsoftmax": (rc.logsoftmax, _logsoftmax),
    "mse": (lambda a: rc.mse(a, np.zeros(a.shape)), lambda a: np.mean(a ** 2)),
    "logitcrossentropy": (lambda a: rc.logitcrossentropy(a, np.zeros(a.shape)),
                          lambda a: np.mean(-np.sum(0 * _logsoftmax(a), axis=-1))),
}


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("shape", EMPTY_SHAPES, ids=str)
@pytest.mark.parametrize("op", sorted(OPS_ON_EMPTY))
def test_ops_on_empty_arrays_give_numpys_values_and_empty_gradients(op, shape):
    ours, numpys = OPS_ON_EMPTY[op]
    a = rc.param(np.ones(shape))
    np.testing.assert_array_equal(np.asarray(ours(a.value)), numpys(a.value))
    gs = rc.gradient(lambda: rc.sum(ours(a)), [a])
    assert gs[a].shape == shape and gs[a].dtype == np.float64


def test_max_over_no_values_raises_as_numpy_does_and_over_empty_rows_gives_empty_rows():
    for shape, axis in [((0,), None), ((3, 0), -1), ((0, 3), 0), ((0, 0), 1)]:
        with pytest.raises(ValueError, match=r"recur\.max over axes .* of shape .* no values"):
            rc.max(np.ones(shape), axis=axis)
        with pytest.raises(ValueError):
            np.max(np.ones(shape), axis=axis)
    a = rc.param(np.ones((0, 3)))
    gs = rc.gradient(lambda: rc.sum(rc.max(a, axis=1)), [a])
    assert rc.max(a, axis=1).shape == (0,) and gs[a].shape == (0, 3)
