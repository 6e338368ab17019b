"""The reference cells against float64 central finite differences.

recur/reference.py is the oracle for the fused kernels, so it must itself be right: every
gradient it returns, for steps and whole sequences, is compared with finite differences
of a random linear functional of the outputs, sum(dY * Y) + sum(dh_T * h_T) + ...
"""

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

from recur import reference as ref

N_IN, N_OUT = 3, 2


@dataclass(frozen=True)
class Cell:
    """One row of the cell table. All reference functions are called by keyword, so one
    test body serves every cell."""
    name: str
    param_blocks: dict  # parameter name -> (row blocks of `out`, column count "in"/"out")
    state_names: tuple
    step: Callable
    step_backward: Callable
    sequence: Callable
    sequence_backward: Callable

    def params(self, rng):
        width = {"in": N_IN, "out": N_OUT}
        return {
            name: rng.standard_normal(
                (blocks * N_OUT, width[columns]) if columns else blocks * N_OUT)
            for name, (blocks, columns) in self.param_blocks.items()
        }

    def as_tuple(self, state):
        """LSTM states are (h, c) already; the other cells' state is the bare h."""
        return state if len(self.state_names) > 1 else (state,)


def _rnn(act):
    return Cell(
        f"rnn-{act}",
        {"Wi": (1, "in"), "Wh": (1, "out"), "b": (1, None)},
        ("h",),
        functools.partial(ref.rnn_step, act=act),
        functools.partial(ref.rnn_step_backward, act=act),
        functools.partial(ref.rnn_sequence, act=act),
        functools.partial(ref.rnn_sequence_backward, act=act),
    )


CELLS = [_rnn(act) for act in ("tanh", "relu", "sigmoid", "identity")] + [
    Cell("lstm", {"Wi": (4, "in"), "Wh": (4, "out"), "b": (4, None)}, ("h", "c"),
         ref.lstm_step, ref.lstm_step_backward, ref.lstm_sequence, ref.lstm_sequence_backward),
    Cell("gru", {"Wi": (3, "in"), "Wh": (3, "out"), "b": (3, None)}, ("h",),
         ref.gru_step, ref.gru_step_backward, ref.gru_sequence, ref.gru_sequence_backward),
    Cell("gruv3", {"Wi": (3, "in"), "Wh": (2, "out"), "b": (3, None), "Wh_h": (1, "out")}, ("h",),
         ref.gruv3_step, ref.gruv3_step_backward, ref.gruv3_sequence,
         ref.gruv3_sequence_backward),
]

# name -> (time steps, batch shape of x, batch shape of the state); () means unbatched.
LAYOUTS = {
    "batched": (3, (3,), (3,)),
    "batch of one": (2, (1,), (1,)),
    "one step": (1, (2,), (2,)),
    "unbatched": (3, (), ()),
    "broadcast state": (3, (4,), ()),
}

# Which outputs receive an upstream gradient: "Y" (sequences only) and the final states.
UPSTREAMS = [("Y",), ("h",), ("Y", "h"), ("c",), ("h", "c"), ("Y", "h", "c")]


def _cell_upstream_cases(upstreams):
    return [
        pytest.param(cell, upstream, id=f"{cell.name}-{'+'.join(upstream)}")
        for cell in CELLS
        for upstream in upstreams
        if set(upstream) <= {"Y", *cell.state_names}
    ]


def finite_difference_gradient(loss, arrays, name, eps=1e-6):
    """Central differences of the scalar ``loss()`` with respect to ``arrays[name]``,
    perturbing that array in place one element at a time."""
    array = arrays[name]
    gradient = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        original = array[index]
        array[index] = original + eps
        plus = loss()
        array[index] = original - eps
        minus = loss()
        array[index] = original
        gradient[index] = (plus - minus) / (2 * eps)
    return gradient


def assert_gradients_match(analytic, loss, arrays):
    assert set(analytic) == set(arrays)
    for name in arrays:
        assert analytic[name].shape == arrays[name].shape, name
        numeric = finite_difference_gradient(loss, arrays, name)
        np.testing.assert_allclose(analytic[name], numeric, rtol=1e-5, atol=1e-7, err_msg=name)


def _inputs(cell, layout, rng):
    steps, x_batch, state_batch = LAYOUTS[layout]
    arrays = cell.params(rng)
    arrays["X"] = rng.standard_normal((steps, *x_batch, N_IN))
    for name in cell.state_names:
        arrays[name + "0"] = rng.standard_normal((*state_batch, N_OUT))
    return arrays


def _upstream_gradients(cell, upstream, state_shape, rng, steps=None):
    """Random upstream gradients for the chosen outputs, None for the others."""
    shapes = {"Y": (steps, *state_shape), **dict.fromkeys(cell.state_names, state_shape)}
    return {
        name: rng.standard_normal(shape) if name in upstream else None
        for name, shape in shapes.items()
    }


def _pairing(gradient, value):
    return 0.0 if gradient is None else float(np.sum(gradient * value))


def _state_pairing(cell, state_grads, state):
    return sum(_pairing(grad, value)
               for grad, value in zip(state_grads.values(), cell.as_tuple(state)))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cell, upstream", _cell_upstream_cases(UPSTREAMS))
def test_sequence_backward_matches_finite_differences(cell, upstream, layout):
    rng = np.random.default_rng(0)
    arrays = _inputs(cell, layout, rng)
    Y, _ = cell.sequence(**arrays)
    upstream_grads = _upstream_gradients(cell, upstream, Y.shape[1:], rng, steps=len(Y))
    dY = upstream_grads.pop("Y")
    final_grads = {f"d{name}_T": grad for name, grad in upstream_grads.items()}

    def loss():
        Y, final = cell.sequence(**arrays)
        return _pairing(dY, Y) + _state_pairing(cell, upstream_grads, final)

    analytic = cell.sequence_backward(**arrays, dY=dY, **final_grads)
    assert_gradients_match(analytic, loss, arrays)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cell, upstream", _cell_upstream_cases([("h",), ("c",), ("h", "c")]))
def test_step_backward_matches_finite_differences(cell, upstream, layout):
    rng = np.random.default_rng(1)
    sequence_arrays = _inputs(cell, layout, rng)
    arrays = {name.rstrip("0"): value for name, value in sequence_arrays.items()}
    arrays["x"] = arrays.pop("X")[0]
    new_state_shape = np.broadcast_shapes(arrays["x"].shape[:-1], arrays["h"].shape[:-1])
    upstream_grads = _upstream_gradients(cell, upstream, (*new_state_shape, N_OUT), rng)
    del upstream_grads["Y"]

    def loss():
        return _state_pairing(cell, upstream_grads, cell.step(**arrays))

    analytic = cell.step_backward(
        **arrays, **{f"d{name}_new": grad for name, grad in upstream_grads.items()})
    assert_gradients_match(analytic, loss, arrays)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cell", CELLS, ids=lambda cell: cell.name)
def test_sequence_equals_looped_steps(cell, layout):
    arrays = _inputs(cell, layout, np.random.default_rng(2))
    X = arrays.pop("X")
    params = {name: arrays.pop(name) for name in cell.param_blocks}
    state = tuple(arrays[name + "0"] for name in cell.state_names)
    outputs = []
    for x in X:
        state = cell.as_tuple(cell.step(**params, **dict(zip(cell.state_names, state)), x=x))
        outputs.append(state[0])

    Y, final = cell.sequence(**params, **arrays, X=X)
    np.testing.assert_array_equal(Y, np.stack(outputs))
    np.testing.assert_array_equal(np.stack(cell.as_tuple(final)), np.stack(state))


@pytest.mark.parametrize("cell", CELLS, ids=lambda cell: cell.name)
def test_float32_stays_float32(cell):
    arrays = {name: value.astype(np.float32)
              for name, value in _inputs(cell, "batched", np.random.default_rng(3)).items()}
    Y, _ = cell.sequence(**arrays)
    grads = cell.sequence_backward(**arrays, dY=np.ones_like(Y))
    assert Y.dtype == np.float32
    assert {name: grad.dtype for name, grad in grads.items()} == dict.fromkeys(grads, np.float32)


def test_gate_blocks_are_in_the_documented_order():
    # Finite differences cannot catch a self-consistent forward with permuted blocks, so
    # one scalar case per gated cell is worked out by hand, each block with its own bias.
    s = ref.sigmoid
    x, h, c = np.array([0.7]), np.array([-0.4]), np.array([0.9])
    w_i = np.array([[0.5], [-1.2], [0.8], [0.3]])
    w_h = np.array([[-0.6], [0.4], [1.1], [-0.9]])
    b = np.array([0.1, -0.2, 0.3, 0.4])
    i, f, g, o = (w_i[:, 0] * x + w_h[:, 0] * h + b)
    c_new = s(f) * c + s(i) * np.tanh(g)
    np.testing.assert_allclose(
        ref.lstm_step(w_i, w_h, b, h, c, x), (s(o) * np.tanh(c_new), c_new), rtol=1e-15)

    r, z = s(w_i[:2, 0] * x + w_h[:2, 0] * h + b[:2])
    n = np.tanh(w_i[2, 0] * x + r * (w_h[2, 0] * h) + b[2])
    np.testing.assert_allclose(
        ref.gru_step(w_i[:3], w_h[:3], b[:3], h, x), (1 - z) * n + z * h, rtol=1e-15)


def test_sigmoid_is_finite_and_precise_at_the_extremes():
    a = np.array([-1000.0, -40.0, 0.0, 40.0, 1000.0])
    with np.errstate(over="raise", invalid="raise"):  # underflow to 0 is the right answer
        s = ref.sigmoid(a)
    np.testing.assert_allclose(s[1], np.exp(-40.0), rtol=1e-12)
    np.testing.assert_array_equal(s[[0, 2, 4]], [0.0, 0.5, 1.0])


def test_unknown_activation_is_rejected():
    with pytest.raises(ValueError, match="unknown activation 'softsign'"):
        ref.rnn_step(np.eye(2), np.eye(2), np.zeros(2), np.zeros(2), np.zeros(2), act="softsign")
