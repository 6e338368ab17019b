"""Recurrent cells, Recur, reset/truncate/unroll (SPEC §4).

The fused kernels are held to recur/reference.py (float64, to rounding) and to finite
differences (tests/test_recurrent_cases.py); the sequence node to the step loop; float32 to
float64; and the stateful rules of Recur to the contract.
"""
import copy
import gc
import inspect
import subprocess
import sys
import textwrap
import threading
import tracemalloc
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import scipy.sparse

import recur as rc
from recur import reference as ref
from recur._core.blas import PANEL_KERNEL_BUILT
from recur._core.tape import is_recorded, thread_tape
from recur.recurrent import (
    GRU, GRUCell, GRUv3, GRUv3Cell, LSTM, LSTMCell, RNN, RNNCell, Recur, reset, truncate,
    unroll,
)
from tests.gil import longest_stall
from tests.test_recurrent_cases import RECURRENT_CASES

N_IN, N_OUT, BATCH, TIME = 3, 4, 2, 5


@dataclass(frozen=True)
class Spec:
    """One cell of SPEC §4's table with its reference functions, called as
    f(*weights, *states, x, **options)."""
    name: str
    make: Callable
    step: Callable
    step_backward: Callable
    sequence: Callable
    sequence_backward: Callable
    options: dict
    state_names: tuple = ("h",)


def _rnn(act):
    return Spec(f"rnn-{act.__name__}", lambda **kw: RNNCell(N_IN, N_OUT, act, **kw),
                ref.rnn_step, ref.rnn_step_backward, ref.rnn_sequence,
                ref.rnn_sequence_backward, {"act": act.__name__})


SPECS = [_rnn(act) for act in (rc.tanh, rc.relu, rc.sigmoid, rc.identity)] + [
    Spec("lstm", lambda **kw: LSTMCell(N_IN, N_OUT, **kw), ref.lstm_step,
         ref.lstm_step_backward, ref.lstm_sequence, ref.lstm_sequence_backward, {}, ("h", "c")),
    Spec("gru", lambda **kw: GRUCell(N_IN, N_OUT, **kw), ref.gru_step, ref.gru_step_backward,
         ref.gru_sequence, ref.gru_sequence_backward, {}),
    Spec("gruv3", lambda **kw: GRUv3Cell(N_IN, N_OUT, **kw), ref.gruv3_step,
         ref.gruv3_step_backward, ref.gruv3_sequence, ref.gruv3_sequence_backward, {}),
]
SPEC_IDS = [s.name for s in SPECS]


def _random_cell(spec, rng, dtype=np.float64):
    """A cell with standard-normal weights (nonzero biases; the gates far from saturation
    only sometimes), its weights as float64 arrays, and their names."""
    cell = spec.make(dtype=dtype)
    names = list(type(cell).weight_shapes(N_IN, N_OUT))
    for name in names:
        getattr(cell, name).value = 0.7 * rng.standard_normal(getattr(cell, name).shape)
    return cell, names, [np.asarray(getattr(cell, name), np.float64) for name in names]


def _pack(states):
    return states[0] if len(states) == 1 else tuple(states)


def _unpack(state):
    return list(state) if isinstance(state, tuple) else [state]


def _assert_close(got, expected, rtol=1e-10, what=""):
    assert got is not None, f"no gradient for {what}"
    scale = max(np.max(np.abs(expected)), 1e-300)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * scale, err_msg=what)


# ---------------------------------------------------------------- kernels against the oracle

LAYOUTS = {"batch": ((BATCH, N_IN), (BATCH, N_OUT)),
           "broadcast state": ((BATCH, N_IN), (N_OUT,)),
           "vector": ((N_IN,), (N_OUT,))}


def _gradient_reads(spec):
    """Which of the new state's parts carry gradient: h only, c only, or both (LSTM)."""
    if len(spec.state_names) == 1:
        return [("h",)]
    return [("h",), ("c",), ("h", "c")]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_step_matches_reference(spec, layout):
    rng = np.random.default_rng(0)
    x_shape, state_shape = LAYOUTS[layout]
    cell, names, weights = _random_cell(spec, rng)
    x = rng.standard_normal(x_shape)
    states = [rng.standard_normal(state_shape) for _ in spec.state_names]
    new_states, y = cell(_pack(states), x)
    expected = spec.step(*weights, *states, x, **spec.options)
    for got, want in zip(_unpack(new_states), _unpack(expected)):
        _assert_close(np.asarray(got), want, what="forward")
    np.testing.assert_array_equal(np.asarray(y), np.asarray(_unpack(new_states)[0]))

    for reads in _gradient_reads(spec):
        seeds = {name: rng.standard_normal(np.shape(expected[0] if len(states) > 1 else expected))
                 if name in reads else None for name in spec.state_names}
        x_param = rc.param(x)
        state_params = [rc.param(s) for s in states]

        def loss():
            new, _ = cell(_pack(state_params), x_param)
            return sum(rc.sum(part * seeds[name])
                       for name, part in zip(spec.state_names, _unpack(new))
                       if seeds[name] is not None)

        params = [x_param, *state_params, *(getattr(cell, n) for n in names)]
        gs = rc.gradient(loss, params)
        want = spec.step_backward(*weights, *states, x, *seeds.values(), **spec.options)
        _assert_close(gs[x_param], want["x"], what=f"x ({reads})")
        for name, p in zip(spec.state_names, state_params):
            _assert_close(gs[p], want[name], what=f"{name} ({reads})")
        for name in names:
            _assert_close(gs[getattr(cell, name)], want[name], what=f"{name} ({reads})")


def _sequence_reads(spec):
    """Upstream gradients of a sequence: the outputs Y, the final state's parts, all."""
    finals = [(f"{name}_T",) for name in spec.state_names]
    return [("Y",)] + finals + [("Y",) + tuple(f"{n}_T" for n in spec.state_names)]


@pytest.mark.parametrize("batched_state", [True, False], ids=["batched state", "broadcast state"])
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_sequence_matches_reference(spec, batched_state):
    rng = np.random.default_rng(1)
    cell, names, weights = _random_cell(spec, rng)
    X = rng.standard_normal((TIME, BATCH, N_IN))
    states = [rng.standard_normal((BATCH, N_OUT) if batched_state else (N_OUT,))
              for _ in spec.state_names]
    final, Y = cell(_pack(states), X)
    Y_want, final_want = spec.sequence(*weights, *states, X, **spec.options)
    _assert_close(np.asarray(Y), Y_want, what="Y")
    for got, want in zip(_unpack(final), _unpack(final_want)):
        _assert_close(np.asarray(got), want, what="final state")

    for reads in _sequence_reads(spec):
        seeds = {"Y": rng.standard_normal(Y.shape) if "Y" in reads else None}
        for name in spec.state_names:
            seeds[f"{name}_T"] = rng.standard_normal((BATCH, N_OUT)) if f"{name}_T" in reads else None
        X_param = rc.param(X)
        state_params = [rc.param(s) for s in states]

        def loss():
            final, Y = cell(_pack(state_params), X_param)
            parts = [(Y, seeds["Y"])] + [(part, seeds[f"{name}_T"]) for name, part
                                          in zip(spec.state_names, _unpack(final))]
            return sum(rc.sum(t * seed) for t, seed in parts if seed is not None)

        params = [X_param, *state_params, *(getattr(cell, n) for n in names)]
        gs = rc.gradient(loss, params)
        finals = {f"d{name}_T": seeds[f"{name}_T"] for name in spec.state_names}
        want = spec.sequence_backward(*weights, *states, X, seeds["Y"], **finals, **spec.options)
        _assert_close(gs[X_param], want["X"], what=f"X ({reads})")
        for name, p in zip(spec.state_names, state_params):
            _assert_close(gs[p], want[f"{name}0"], what=f"{name}0 ({reads})")
        for name in names:
            _assert_close(gs[getattr(cell, name)], want[name], what=f"{name} ({reads})")


# ---------------------------------------------------------------- finite differences, float32

@pytest.mark.parametrize("name", sorted(RECURRENT_CASES))
def test_gradients_match_finite_differences(name):
    f, arrays = RECURRENT_CASES[name]
    assert rc.check_gradients(f, *arrays) < 1e-5


@pytest.mark.parametrize("name", sorted(RECURRENT_CASES))
def test_float32_gradients_match_float64(name):
    f, arrays = RECURRENT_CASES[name]
    grads = {}
    for dtype in (np.float32, np.float64):
        ps = [rc.param(a, dtype) for a in arrays]

        def loss():
            out = f(*ps)
            seed = np.random.default_rng(5).standard_normal(out.shape).astype(dtype)
            return rc.sum(out * seed)

        gs = rc.gradient(loss, ps)
        assert all(gs[p].dtype == dtype for p in ps)
        grads[dtype] = [gs[p] for p in ps]
    for g32, g64 in zip(grads[np.float32], grads[np.float64]):
        _assert_close(g32.astype(np.float64), g64, rtol=1e-4)


# ---------------------------------------------------------------- sequence node = step loop

LAYERS = {"RNN": lambda: RNN(N_IN, N_OUT, dtype=np.float64),
          "RNN relu": lambda: RNN(N_IN, N_OUT, rc.relu, dtype=np.float64),
          "LSTM": lambda: LSTM(N_IN, N_OUT, dtype=np.float64),
          "GRU": lambda: GRU(N_IN, N_OUT, dtype=np.float64),
          "GRUv3": lambda: GRUv3(N_IN, N_OUT, dtype=np.float64),
          "Chain(LSTM, Dense)": lambda: rc.Chain(LSTM(N_IN, N_OUT, dtype=np.float64),
                                                 rc.Dense(N_OUT, 2, dtype=np.float64))}


def _recurs(model):
    return [m for m in (model.layers if isinstance(model, rc.Chain) else [model])
            if isinstance(m, Recur)]


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_sequence_equals_stacked_steps(layer):
    rng = np.random.default_rng(2)
    model = LAYERS[layer]()
    for p in rc.params(model):      # nonzero initial states and biases
        p.value = p.value + 0.3 * rng.standard_normal(p.shape)
    X = rc.param(rng.standard_normal((TIME, BATCH, N_IN)))
    out_seed = rng.standard_normal((TIME, BATCH, 2 if "Chain" in layer else N_OUT))
    state_seed = rng.standard_normal((BATCH, N_OUT))
    results = {}
    for path in ("sequence", "steps"):
        def loss():
            reset(model)
            Y = model(X) if path == "sequence" else rc.stack([model(x) for x in X])
            results[path, "Y"] = np.asarray(Y)
            state = _recurs(model)[0].state
            h_T = state[-1] if isinstance(state, tuple) else state   # c_T for the LSTM
            return rc.sum(Y * out_seed) + rc.sum(h_T * state_seed)

        results[path] = rc.gradient(loss, [X, *rc.params(model)])
        results[path, "state"] = [np.asarray(s) for s in _unpack(_recurs(model)[0].state)]
    _assert_close(results["sequence", "Y"], results["steps", "Y"], rtol=1e-12)
    for got, want in zip(results["sequence", "state"], results["steps", "state"]):
        _assert_close(got, want, rtol=1e-12)
    for p in [X, *rc.params(model)]:
        _assert_close(results["sequence"][p], results["steps"][p], rtol=1e-10, what=str(p.shape))


# A sequence multiplies by its weights packed once into panels (_core/panel_gemm.h) and,
# from 8 rows on, the crew splits it by batch rows; a single step packs per product. These
# sizes give partial panels (4 * 37 gates is no multiple of a panel), remainders of the
# kernel's row blocks (batch 13, 25), and batches too small for the row split (7, 3),
# whose products the crew splits by columns instead. From 256 rows in each half of the
# batch (time x batch / 2) a recorded sequence keeps its gates, c and h Wh_nᵀ half by half
# (ops_rnn: part_major): halves of 6 and 7 rows, of 16, and of 8 and 16 with 4 x 140 and
# 4 x 160 gates, whose weight gradients pack the rows each step saw (blas.pyx:
# gradient_of_rows), the second's Wh gradient in a packing the crew shares.
PANEL_SIZES = [(37, 13, 4), (37, 25, 4), (128, 7, 4), (130, 3, 4), (37, 13, 45), (20, 32, 17),
               (140, 16, 33), (160, 32, 30)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("hidden,batch,time", PANEL_SIZES)
@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU", "GRUv3"])
def test_sequence_equals_steps_at_panel_sizes(kind, hidden, batch, time, dtype):
    rng = np.random.default_rng(hidden + batch)
    layer = {"RNN": RNN, "LSTM": LSTM, "GRU": GRU, "GRUv3": GRUv3}[kind](5, hidden, dtype=dtype)
    # The ungated RNN's recurrence gets a smaller disturbance: with 0.2 and 140 or 160
    # hidden units it is chaotic, and float32's rounding, 5e-7 after a step, grows to 5e-3
    # over 33 steps in either path, so that the two agree to 2e-4 only where they round
    # alike (they do on the panel kernel, not on a build without it, RECUR_PORTABLE=1).
    scale = 0.05 if kind == "RNN" else 0.2
    for p in rc.params(layer):
        p.value = (p.value + scale * rng.standard_normal(p.shape)).astype(dtype)
    X = rc.param(rng.standard_normal((time, batch, 5)).astype(dtype))
    seed = rng.standard_normal((time, batch, hidden)).astype(dtype)
    results = {}
    for path in ("sequence", "steps"):
        def loss():
            reset(layer)
            Y = layer(X) if path == "sequence" else rc.stack([layer(x) for x in X])
            results[path, "Y"] = np.asarray(Y)
            return rc.sum(Y * seed)

        results[path] = rc.gradient(loss, [X, *rc.params(layer)])
    rtol = 1e-10 if dtype == np.float64 else 2e-4
    _assert_close(results["sequence", "Y"], results["steps", "Y"], rtol=rtol)
    for p in [X, *rc.params(layer)]:
        _assert_close(results["sequence"][p], results["steps"][p], rtol=rtol, what=str(p.shape))


# One layer's weights met by several sequences in one loss: the backward that reaches a
# weight's gradient first sets it, the others add to it (ops_rnn: sets_weight_gradient),
# whether they keep their rows half by half (45 or 50 steps of 13 rows: part_major) or not
# (4 steps), and in either order. A Dense head, so that the RNN's gate gradients too go
# half by half.
@pytest.mark.parametrize("lengths", [(45, 4), (4, 45), (45, 50)])
@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU", "GRUv3"])
def test_sequences_sharing_weights_add_up_their_gradients(kind, lengths):
    rng = np.random.default_rng(len(kind) + lengths[0])
    layer = {"RNN": RNN, "LSTM": LSTM, "GRU": GRU, "GRUv3": GRUv3}[kind](5, 37,
                                                                         dtype=np.float64)
    head = rc.Dense(37, 3, dtype=np.float64, rng=rng)
    for p in rc.params(layer):
        p.value = p.value + 0.2 * rng.standard_normal(p.shape)
    Xs = [rc.param(rng.standard_normal((time, 13, 5))) for time in lengths]
    seeds = [rng.standard_normal((time, 13, 3)) for time in lengths]
    watched = [*Xs, *rc.params(layer), *rc.params(head)]
    results = {}
    for path in ("sequence", "steps"):
        def loss():
            total = 0.0
            for X, seed in zip(Xs, seeds):
                reset(layer)
                Y = layer(X) if path == "sequence" else rc.stack([layer(x) for x in X])
                total = total + rc.sum(head(Y) * seed)
            return total

        results[path] = rc.gradient(loss, watched)
    for p in watched:
        _assert_close(results["sequence"][p], results["steps"][p], what=str(p.shape))


def test_sequence_then_steps_continue_the_state():
    rng = np.random.default_rng(3)
    m = LSTM(N_IN, N_OUT, dtype=np.float64)
    X = rng.standard_normal((6, BATCH, N_IN))
    whole = np.asarray(m(X))
    reset(m)
    first = np.asarray(m(X[:3]))
    rest = [np.asarray(m(x)) for x in X[3:]]
    np.testing.assert_allclose(np.concatenate([first, np.stack(rest)]), whole, rtol=1e-12)


def test_empty_sequence_keeps_the_state():
    m = GRU(N_IN, N_OUT)
    Y = m(np.zeros((0, BATCH, N_IN), np.float32))
    assert Y.shape == (0, BATCH, N_OUT)
    assert m.state is m.state0


# ---------------------------------------------------------------- construction

def test_parameter_shapes_defaults_and_order():
    cells = {RNNCell: ["Wi", "Wh", "b", "state0"], LSTMCell: ["Wi", "Wh", "b", "state0"],
             GRUCell: ["Wi", "Wh", "b", "state0"], GRUv3Cell: ["Wi", "Wh", "b", "Wh_h", "state0"]}
    for make, names in cells.items():
        cell = make(3, 5)
        shapes = make.weight_shapes(3, 5)
        for name, shape in shapes.items():
            assert getattr(cell, name).shape == shape and getattr(cell, name).dtype == np.float32
        states = _unpack(cell.state0)
        assert all(isinstance(s, rc.Param) and s.shape == (5,) and not s.value.any() for s in states)
        assert [id(p) for p in rc.params(cell)] == [
            id(p) for n in names for p in _unpack(getattr(cell, n))]
    lstm = LSTMCell(3, 5)
    np.testing.assert_array_equal(lstm.b.value, np.r_[np.zeros(5), np.ones(5), np.zeros(10)])
    assert not GRUCell(3, 5).b.value.any() and not RNNCell(3, 5).b.value.any()


def test_parameter_counts_and_display():
    assert repr(RNN(3, 5)) == ("Recur(\n"
                               "  RNNCell(3 => 5, tanh),  # 50 parameters\n"
                               ")  # Total: 4 trainable arrays, 50 parameters,\n"
                               "   # plus 1 non-trainable, 5 parameters, 220 bytes.")
    counts = {LSTM: (190, 5), GRU: (140, 4), GRUv3: (140, 5)}
    for make, (n, arrays) in counts.items():
        ps = rc.params(make(3, 5))
        assert (sum(p.size for p in ps), len(ps)) == (n, arrays)
    assert repr(RNNCell(3, 5)) == "RNNCell(3 => 5, tanh)"
    assert repr(RNNCell(3, 5, rc.relu)) == "RNNCell(3 => 5, relu)"
    assert repr(LSTMCell(3, 5)) == "LSTMCell(3 => 5)"
    assert repr(GRUCell(3, 5)) == "GRUCell(3 => 5)"
    assert repr(GRUv3Cell(3, 5)) == "GRUv3Cell(3 => 5)"


def test_glorot_uniform_over_the_stacked_matrix():
    cell = LSTMCell(30, 50, rng=np.random.default_rng(0))
    for W in (cell.Wi.value, cell.Wh.value):
        limit = np.sqrt(6 / (W.shape[0] + W.shape[1]))
        assert np.abs(W).max() <= limit and np.abs(W).max() > 0.95 * limit


def test_keyword_options():
    a = GRUCell(3, 5, rng=np.random.default_rng(4))
    b = GRUCell(3, 5, rng=np.random.default_rng(4))
    np.testing.assert_array_equal(a.Wh.value, b.Wh.value)
    cell = LSTMCell(3, 5, init=rc.ones, initb=rc.ones, init_state=rc.ones, dtype=np.float64)
    assert cell.Wi.dtype == np.float64 and cell.Wi.value.min() == 1 and cell.b.value.min() == 1
    assert all(s.dtype == np.float64 and s.value.min() == 1 for s in cell.state0)
    with pytest.raises(ValueError, match="RNNCell.*non-negative int"):
        RNNCell(3, -1)
    with pytest.raises(TypeError, match="GRUCell: dtype must be float32 or float64"):
        GRUCell(3, 5, dtype=np.int32)
    with pytest.raises(TypeError, match="LSTMCell.from_weights: dtype"):
        LSTMCell.from_weights(np.ones((8, 3)), np.ones((8, 2)), np.zeros(8), dtype=np.float16)


def test_from_weights_takes_any_array_likes():
    rng = np.random.default_rng(5)
    Wh = scipy.sparse.diags([rng.random(4), rng.random(5), rng.random(4)], [-1, 0, 1])
    cell = RNNCell.from_weights(rng.random((5, 4)), Wh, rng.random(5), rng.random((5, 1)))
    assert cell.Wh.dtype == np.float64 and isinstance(cell.Wh.value, np.ndarray)
    np.testing.assert_array_equal(cell.Wh.value, Wh.toarray())
    assert cell.state0.shape == (5,)
    assert RNNCell.from_weights([[1, 2]], [[0.5]], [0]).Wi.dtype == np.float32
    mixed = LSTMCell.from_weights(np.ones((8, 3), np.float32), np.ones((8, 2)), np.zeros(8),
                                  state0=([1, 2], [3, 4]))
    assert mixed.Wi.dtype == np.float64 and mixed.state0[1].value.tolist() == [3, 4]
    single = GRUv3Cell.from_weights(np.ones((6, 3)), np.ones((4, 2)), np.zeros(6),
                                    np.eye(2), dtype=np.float32)
    assert single.Wh_h.dtype == np.float32 and single.state0.dtype == np.float32
    relu = RNNCell.from_weights(np.ones((2, 3)), np.eye(2), np.zeros(2), σ=rc.relu)
    assert repr(relu) == "RNNCell(3 => 2, relu)"


def test_from_weights_checks_shapes():
    with pytest.raises(ValueError, match=r"GRUCell.from_weights.*Wh \(6, 3\) \(expected \(9, 3\)\)"):
        GRUCell.from_weights(np.ones((9, 2)), np.ones((6, 3)), np.zeros(9))
    with pytest.raises(ValueError, match="state0 must be 2 array"):
        LSTMCell.from_weights(np.ones((8, 3)), np.ones((8, 2)), np.zeros(8), state0=[np.zeros(2)])
    with pytest.raises(ValueError, match="Wi must be a matrix"):
        RNNCell.from_weights(np.ones(3), np.ones((2, 2)), np.zeros(2))


# ---------------------------------------------------------------- calling cells and layers

def test_layers_cast_input_to_their_dtype():
    m = RNN(3, 2)
    assert m(np.ones(3)).dtype == np.float32
    reset(m)
    assert m(np.ones((4, 3), np.int64)).dtype == np.float32
    reset(m)
    assert m(np.ones((2, 4, 3))).dtype == np.float32
    cell = LSTMCell(3, 2)
    x = rc.param(np.ones((2, 3)))                # float64, recorded: cast node, gradient back
    gs = rc.gradient(lambda: rc.sum(cell(cell.state0, x)[1]), [x])
    assert gs[x].dtype == np.float64 and np.abs(gs[x]).sum() > 0


def test_wrong_feature_size_names_the_layer():
    with pytest.raises(ValueError, match=r"RNNCell\(3 => 5, tanh\) expects 3 features.*\(4,\)"):
        RNN(3, 5)(np.ones(4))
    with pytest.raises(ValueError, match=r"LSTMCell\(3 => 5\) expects 3 features.*\(7, 2, 4\)"):
        LSTM(3, 5)(np.ones((7, 2, 4)))
    with pytest.raises(ValueError, match=r"GRUCell\(3 => 5\).*\(features,\) or \(batch, features\)"):
        GRUCell(3, 5)(np.zeros(5), np.ones((1, 2, 2, 3)))
    with pytest.raises(TypeError):
        RNN(3, 5)(np.ones(3, complex))


def test_cell_state_shape_is_checked():
    cell = GRUCell(3, 5)
    with pytest.raises(ValueError, match=r"GRUCell\(3 => 5\): state h has shape \(4, 5\); expected \(5,\) or \(2, 5\)"):
        cell(np.zeros((4, 5)), np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"state c has shape \(6,\)"):
        LSTMCell(3, 5)((np.zeros(5), np.zeros(6)), np.ones(3))


def test_recur_takes_any_layout_and_records_a_cast_of_other_dtypes():
    # Inputs and states the cells' C entry cannot take as they are (a strided view, a list,
    # a float64 Tensor on a float32 layer, an LSTM state as a list) go through conversions.
    rng = np.random.default_rng(23)
    m = LSTM(3, 4)
    X = rng.standard_normal((6, 3)).astype(np.float32)
    reset(m)
    want = np.asarray(m(np.ascontiguousarray(X[::2])))
    reset(m)
    np.testing.assert_array_equal(np.asarray(m(X[::2])), want)
    reset(m)
    np.testing.assert_array_equal(np.asarray(m(X[::2].tolist())), want)
    h, c = (np.asarray(s) for s in m.state)
    state, y = m.cell([h.astype(np.float64), c.tolist()], X[:3])
    assert y.dtype == np.float32 and state[1].shape == (3, 4)
    p = rc.param(X.astype(np.float64), np.float64)

    def loss():
        reset(m)
        return rc.sum(m(p))

    grads = rc.gradient(loss, p)
    assert grads[p].dtype == np.float64 and np.abs(grads[p]).sum() > 0


def test_batch_size_change_without_reset_raises():
    m = RNN(3, 5)
    m(np.ones((10, 3)))
    with pytest.raises(ValueError, match=r"batch size changed from 10 to 1 without reset; "
                                         r"call recur\.reset\(model\)"):
        m(np.ones(3))
    with pytest.raises(ValueError, match="batch size changed from 10 to 4"):
        m(np.ones((5, 4, 3)))
    reset(m)
    assert m(np.ones(3)).shape == (5,)
    with pytest.raises(ValueError, match="batch size changed from 1 to 10"):
        m(np.ones((10, 3)))
    m.reset()
    assert m(np.ones((1, 3))).shape == (1, 5)
    with pytest.raises(ValueError, match=r"from 1 to 1 \(a single input after a batch\)"):
        m(np.ones(3))


def test_unbatched_state0_broadcasts_and_its_gradient_sums_over_the_batch():
    rng = np.random.default_rng(6)
    for make in (RNN, LSTM, GRU, GRUv3):
        m = make(N_IN, N_OUT, dtype=np.float64)
        X = rng.standard_normal((TIME, BATCH, N_IN))
        states0 = _unpack(m.state0)
        for p in states0:
            p.value = rng.standard_normal(N_OUT)
        gs = rc.gradient(lambda: (reset(m), rc.sum(m(X) ** 2))[1], m)
        # The same with the initial state copied into every row of the batch.
        rows = [rc.param(np.tile(p.value, (BATCH, 1))) for p in states0]
        m.state = _pack(rows)
        g_rows = rc.gradient(lambda: rc.sum(m(X) ** 2), rows)
        for p, r in zip(states0, rows):
            _assert_close(gs[p], g_rows[r].sum(axis=0), rtol=1e-12)


def test_state_is_readable_and_assignable():
    m = GRU(3, 2, dtype=np.float64)
    assert m.state is m.state0 and m.cell.state0 is m.state0
    m.state = np.full((4, 2), 0.5)
    y = m(np.ones((4, 3)))
    expected = ref.gru_step(m.cell.Wi.value, m.cell.Wh.value, m.cell.b.value, np.full((4, 2), 0.5), np.ones((4, 3)))
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(m.state), np.asarray(y))


def test_inference_records_nothing():
    m = LSTM(3, 4)
    h = m(np.ones((2, 3)))
    assert not is_recorded(h) and thread_tape().n_nodes_recorded == 0


def test_non_fused_activation_composes_ops():
    rng = np.random.default_rng(7)
    cell = RNNCell(3, 2, rc.elu, dtype=np.float64)
    h0, x = rng.standard_normal(2), rng.standard_normal((4, 3))
    h, y = cell(h0, x)
    expected = x @ cell.Wi.value.T + h0 @ cell.Wh.value.T + cell.b.value
    np.testing.assert_allclose(np.asarray(h), np.where(expected > 0, expected, np.expm1(expected)), rtol=1e-12)
    X = rng.standard_normal((5, 4, 3))
    m = Recur(cell)
    Y = m(X)
    reset(m)
    np.testing.assert_allclose(np.asarray(Y), np.stack([np.asarray(m(x)) for x in X]), rtol=1e-12)

    def f(X, Wi, Wh, b):
        cell.Wi, cell.Wh, cell.b = Wi, Wh, b
        return cell(np.zeros(2), X)[1]

    assert rc.check_gradients(f, X, cell.Wi.value, cell.Wh.value, cell.b.value) < 1e-5


# ---------------------------------------------------------------- Recur around a function

def test_recur_around_a_function_steps_3d_input():
    rng = np.random.default_rng(8)
    W = rc.param(rng.standard_normal((2, 3)))
    step = lambda h, x: (np.tanh(x @ W.T + h), np.tanh(x @ W.T + h))
    m = Recur(step, np.zeros(2))
    X = rng.standard_normal((4, 5, 3))
    Y = m(X)
    assert Y.shape == (4, 5, 2)
    reset(m)
    np.testing.assert_allclose(np.asarray(Y), np.stack([np.asarray(m(x)) for x in X]))
    gs = rc.gradient(lambda: (reset(m), rc.sum(m(X)))[1], [W])
    assert gs[W] is not None and np.all(np.isfinite(gs[W]))
    with pytest.raises(TypeError, match="needs a state0"):
        Recur(step)


def test_unroll():
    m = RNN(2, 3)
    ys = unroll(m, 4)([np.ones(2)] * 4)
    assert len(ys) == 4 and all(y.shape == (3,) for y in ys)
    with pytest.raises(ValueError, match=r"unroll\(model, 4\) takes a list of 4 inputs, got 3"):
        unroll(m, 4)([np.ones(2)] * 3)


# ---------------------------------------------------------------- reset and truncate

class _Holder:
    def __init__(self, inner):
        self.inner = inner


def test_reset_and_truncate_find_every_recur_in_any_nesting():
    layers = [RNN(2, 2), LSTM(2, 2), GRU(2, 2), GRUv3(2, 2), RNN(2, 2)]
    model = {"chain": rc.Chain(layers[0], rc.Dense(2, 2)),
             "list": [layers[1], (layers[2],)], "object": _Holder(_Holder(layers[3])),
             "nested chain": rc.Chain(rc.Chain(layers[4]))}
    for m in layers:
        m(np.ones((3, 2)))
        assert m.state is not m.state0
    truncate(model)
    for m in layers:
        assert all(type(s) is rc.Tensor and s.shape == (3, 2) for s in _unpack(m.state))
    reset(model)
    for m in layers:
        assert m.state is m.state0


def _loss_over_two_chunks(m, X, cut):
    """The loss of the second half of X, after running the first half."""
    reset(m)
    m(X[:3])
    if cut is truncate:
        truncate(m)
    elif cut == "constant":
        m.state = tuple(rc.Tensor(np.asarray(s)) for s in m.state)
    return rc.sum(m(X[3:]) ** 2)


def test_truncate_equals_a_constant_state_and_cuts_gradients():
    rng = np.random.default_rng(9)
    m = LSTM(N_IN, N_OUT, dtype=np.float64)
    X = rng.standard_normal((6, BATCH, N_IN))
    grads = {cut: rc.gradient(lambda: _loss_over_two_chunks(m, X, cut), m)
             for cut in (truncate, "constant", None)}
    for p in rc.params(m):
        a, b = grads[truncate][p], grads["constant"][p]
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a, b)
    assert grads[truncate][m.cell.state0[0]] is None
    assert grads[None][m.cell.state0[0]] is not None
    assert not np.allclose(grads[truncate][m.cell.Wh], grads[None][m.cell.Wh])


def test_truncate_keeps_the_state_value():
    m = GRU(3, 2)
    m(np.ones((2, 3)))
    before = np.array(m.state)
    truncate(m)
    np.testing.assert_array_equal(np.asarray(m.state), before)
    reset(m)
    truncate(m)          # a just-reset state has no history: it stays state0
    assert m.state is m.state0
    np.testing.assert_array_equal(np.asarray(m.state), m.state0.value)


# ---------------------------------------------------------------- long sequences, memory

def _long_run(path, steps):
    rng = np.random.default_rng(10)
    m = rc.Chain(RNN(2, 8), rc.Dense(8, 1))
    xs = rng.standard_normal((steps, 1, 2)).astype(np.float32)
    ys = np.sin(np.cumsum(xs[..., :1], axis=0)).astype(np.float32)
    opt = rc.Adam(0.01)

    def loss():
        reset(m)
        if path == "sequence":
            return rc.mse(m(xs), ys)
        return sum(rc.mse(m(x), y) for x, y in zip(xs, ys)) / steps

    losses = []
    for _ in range(3):
        value, gs = rc.value_and_gradient(loss, m)
        rc.update(opt, rc.params(m), gs)
        losses.append(value)
        assert all(np.all(np.isfinite(gs[p])) for p in rc.params(m))
    return m, losses


@pytest.mark.parametrize("path", ["sequence", "steps"])
def test_ten_thousand_steps_train_and_release_the_tape(path):
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200 + len(inspect.stack()))
    try:
        m, losses = _long_run(path, 10_000)
    finally:
        sys.setrecursionlimit(limit)
    assert losses[-1] < losses[0]
    assert thread_tape().n_nodes_recorded == 0

    arena = thread_tape().arena_bytes
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        _long_run(path, 10_000)
        gc.collect()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(path, peak - before, held - before)
    # The tape held the values of 10,000 steps during each call and let them go at its end;
    # its arenas are reused, not grown, by the next calls.
    assert peak - before > 300_000
    assert held - before < 50_000, (held - before, peak - before)
    assert thread_tape().arena_bytes == arena


def test_inference_memory_stays_flat():
    script = textwrap.dedent("""
        import numpy as np, recur as rc
        from recur.recurrent import LSTM
        m = LSTM(16, 32)
        x = np.ones((8, 16), np.float32)
        def rss_kib():
            with open("/proc/self/status") as status:
                return next(int(l.split()[1]) for l in status if l.startswith("VmRSS"))
        for _ in range(2000):
            m(x)
        m(np.ones((50, 8, 16), np.float32))
        before = rss_kib()
        for _ in range(50_000):
            m(x)
        for _ in range(200):
            m(np.ones((50, 8, 16), np.float32))
        print(rss_kib() - before)
    """)
    grown_kib = int(subprocess.run([sys.executable, "-c", script], capture_output=True,
                                   text=True, check=True).stdout)
    assert grown_kib < 2048, f"inference grew the process by {grown_kib} KiB"


def test_sequence_kernels_release_the_gil():
    """While one thread runs a long sequence forward and backward, another runs Python."""
    rng = np.random.default_rng(13)
    m = LSTM(64, 128, dtype=np.float64)
    X = rng.standard_normal((400, 32, 64))
    loss = lambda: (reset(m), rc.sum(m(X)))[1]
    stall, alone = longest_stall(lambda: rc.gradient(loss, m))
    assert stall < alone / 3, (stall, alone)


def test_threads_give_the_serial_results():
    rng = np.random.default_rng(11)
    models = [LSTM(8, 16, rng=np.random.default_rng(i)) for i in range(4)]
    X = rng.standard_normal((30, 5, 8)).astype(np.float32)

    def run(m):
        reset(m)
        return rc.gradient(lambda: (reset(m), rc.sum(m(X) ** 2))[1], m)

    serial = [run(m) for m in models]
    results = [None] * len(models)
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, run(models[i])))
               for i in range(len(models))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for m, expected, got in zip(models, serial, results):
        for p in rc.params(m):
            np.testing.assert_array_equal(got[p], expected[p])


# ---------------------------------------------------------------- float32 activations

def test_float32_gates_are_accurate_and_propagate_nan():
    """float32 kernels compute sigmoid and tanh with their own vectorising code: within a
    few float32 ulps of float64 over the whole range, and NaN stays NaN."""
    rng = np.random.default_rng(12)
    for make in (LSTMCell, GRUCell):
        cell64 = make(N_IN, N_OUT, dtype=np.float64)
        for p in rc.params(cell64):
            p.value = 4 * rng.standard_normal(p.shape)
        cell32 = make.from_weights(*(getattr(cell64, n).value.astype(np.float32)
                                     for n in make.weight_shapes(N_IN, N_OUT)))
        x = np.concatenate([rng.standard_normal((50, N_IN)) * scale
                            for scale in (1e-6, 1e-2, 1, 30)]).astype(np.float32)
        state = _pack([np.zeros(N_OUT, np.float32)] * make.n_states)
        want = np.asarray(cell64(_pack(_unpack(state)), x.astype(np.float64))[1])
        got = np.asarray(cell32(state, x)[1])
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-7)
        x[3, 1] = np.nan
        assert np.isnan(np.asarray(cell32(state, x)[1])[3]).all()


@pytest.mark.parametrize("σ, exact", [(rc.sigmoid, lambda v: 1 / (1 + np.exp(-v))),
                                       (rc.tanh, np.tanh)])
def test_float32_activation_over_a_long_row_matches_float64_everywhere(σ, exact):
    """Long float32 rows take the whole-vector loops (activations.h) and their last values
    the scalar ones: both within a few ulps of float64, including past the exp clamp, with
    NaN kept, infinities saturated and tanh's sign kept; and the two give the same bits."""
    special = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 87.5, -87.5, 88.5,
                        -88.5, 200.0, -200.0, 1e-30, -1e-30, 44.0, -44.0])
    rng = np.random.default_rng(5)
    spread = np.concatenate([rng.standard_normal(100) * scale for scale in (1e-4, 1, 10)])
    values = np.concatenate([special, spread, special]).astype(np.float32)    # 332 values
    # x = 0 against W = 1 gives exactly b: the row is the values themselves.
    layer = rc.Dense.from_weights(np.ones((values.size, 1), np.float32), values, σ)
    got = np.asarray(layer(np.zeros((1, 1), np.float32)))[0].astype(np.float64)
    with np.errstate(over="ignore"):
        want = exact(values.astype(np.float64))
    assert np.array_equal(np.isnan(got), np.isnan(want))
    finite = ~np.isnan(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=2e-6, atol=2e-7)
    if σ is rc.tanh:        # (x W + b turns b's -0 into +0, so zeros are left out)
        signed = finite & (values != 0)
        np.testing.assert_array_equal(np.signbit(got[signed]), np.signbit(values[signed]))
    # One value per call leaves every value to the scalar loop (fastmath.pxd), whose values
    # the vector loop rounds alike, though scaled by powers of two (exp's argument folded
    # into its constants).
    one_by_one = [np.asarray(rc.Dense.from_weights(np.ones((1, 1), np.float32), values[i:i + 1],
                                                   σ)(np.zeros((1, 1), np.float32)))[0, 0]
                  for i in range(values.size)]
    np.testing.assert_array_equal(got, np.array(one_by_one, np.float64))


def test_float32_tanh_keeps_its_absolute_precision_in_saturation():
    """A saturated tanh's gradient 1 - tanh² is only as good as tanh's absolute error: the
    float32 tanh of the fused kernels is within 0.6 ulp of 1 from |v| = 2 on and 1.05 from
    1 to 2 (a form of its own above 0.55), so that 1 - tanh² is as close to float64's as a
    float32 tanh rounded to nearest allows."""
    rng = np.random.default_rng(8)
    magnitude = np.concatenate([rng.uniform(1, 2, 3000), rng.uniform(2, 9, 6000)])
    values = (magnitude * rng.choice([-1, 1], magnitude.size)).astype(np.float32)
    layer = rc.Dense.from_weights(np.ones((values.size, 1), np.float32), values.copy(), rc.tanh)
    x = np.zeros((1, 1), np.float32)
    got = np.asarray(layer(x))[0].astype(np.float64)
    want = np.tanh(values.astype(np.float64))
    error_in_ulps_of_one = np.abs(got - want) / 2.0 ** -24
    assert error_in_ulps_of_one[np.abs(values) >= 2].max() <= 0.61
    assert error_in_ulps_of_one[np.abs(values) < 2].max() <= 1.05
    # The bias's gradient of sum(tanh(b)) is 1 - tanh², computed from the float32 output.
    slope = np.asarray(rc.gradient(lambda: rc.sum(layer(x)), rc.params(layer))[layer.b],
                       np.float64)
    exact_slope = 1 - want ** 2
    # tanh off by δ puts 2|δ| into 1 - tanh²; tanh² rounds by up to half an ulp of 1 where
    # no FMA fuses it into the subtraction (portable builds), and the result by its own.
    allowed = (2 * 0.61 + 0.5) * 2.0 ** -24 + np.spacing(exact_slope.astype(np.float32)) / 2
    far = np.abs(values) >= 2
    assert (np.abs(slope - exact_slope)[far] <= allowed[far]).all()


def test_truncate_right_after_reset_keeps_state0():
    m = rc.LSTM(4, 5)
    rc.reset(m)
    rc.truncate(m)
    assert m.state is m.cell.state0
    assert m(np.zeros((7, 3, 4), np.float32)).shape == (7, 3, 5)
    rc.reset(m)
    gs = rc.gradient(lambda: (rc.truncate(m), rc.sum(m(np.ones((2, 4), np.float32))))[1], m)
    assert gs[m.cell.state0[0]] is not None


def test_step_weight_gradients_deferred_over_many_steps():
    # A step's weight gradient waits to join the next steps' in one product (deferred.h),
    # run once 256 rows have gathered and before anything reads the gradient: here 40
    # steps of 8 rows through two layers, one of whose weights is itself computed (P / 2),
    # so its node reads the gradient in the middle of the backward pass.
    rng = np.random.default_rng(11)
    first, second = LSTM(5, 16, dtype=np.float64), GRUv3(16, 12, dtype=np.float64)
    model = rc.Chain(first, second)
    P = rc.param(2 * first.cell.Wh.value)
    X = rng.standard_normal((40, 8, 5))
    seed = rng.standard_normal((40, 8, 12))
    ps = [P, *(p for p in rc.params(model) if p is not first.cell.Wh)]
    results = {}
    for path in ("sequence", "steps"):
        def loss():
            reset(model)
            first.cell.Wh = P / 2
            Y = model(X) if path == "sequence" else rc.stack([model(x) for x in X])
            return rc.sum(Y * seed)

        results[path] = rc.gradient(loss, ps)
    for p in ps:
        _assert_close(results["sequence"][p], results["steps"][p], rtol=1e-10, what=str(p.shape))


def _stepwise_and_sequence_gradients(model, X, seed, ps):
    results = {}
    for path in ("sequence", "steps"):
        def loss():
            reset(model)
            Y = model(X) if path == "sequence" else rc.stack([model(x) for x in X])
            return rc.sum(Y * seed)

        results[path] = rc.gradient(loss, ps)
    return results


def test_step_nodes_share_one_packing_of_their_weights_per_backward_pass():
    # The step nodes of a backward pass multiply by one packing of each weight
    # (pack_cache.h), where a step's product reaches 262144 multiply-adds. Five layers need
    # ten packings (Wh, and Wi for every layer whose input has a gradient, GRUv3's Wh_h
    # too), past the cache's eight: the rest read their weights in place. Both ways agree
    # with the sequence nodes, which pack their own.
    rng = np.random.default_rng(17)
    model = rc.Chain(LSTM(5, 64, dtype=np.float64), GRU(64, 96, dtype=np.float64),
                     RNN(96, 128, dtype=np.float64), GRUv3(128, 96, dtype=np.float64),
                     LSTM(96, 64, dtype=np.float64))
    X = rng.standard_normal((30, 16, 5))
    seed = rng.standard_normal((30, 16, 64))
    ps = rc.params(model)
    results = _stepwise_and_sequence_gradients(model, X, seed, ps)
    for p in ps:
        _assert_close(results["sequence"][p], results["steps"][p], rtol=1e-10, what=str(p.shape))


def test_packed_weights_are_forgotten_when_a_backward_pass_ends():
    # A weight changed in place keeps its address; the next pass must pack it anew. The
    # twin, a copy made after the change, holds the same values at other addresses.
    rng = np.random.default_rng(19)
    model = rc.Chain(LSTM(6, 64), GRU(64, 96))
    X = rng.standard_normal((12, 16, 6)).astype(np.float32)
    seed = rng.standard_normal((12, 16, 96)).astype(np.float32)

    def stepwise_gradients(m):
        def loss():
            reset(m)
            return rc.sum(rc.stack([m(x) for x in X]) * seed)
        return rc.gradient(loss, rc.params(m))

    stepwise_gradients(model)
    for p in rc.params(model):
        p.value *= 1.5
    twin = copy.deepcopy(model)
    want = stepwise_gradients(twin)
    got = stepwise_gradients(model)
    for p, q in zip(rc.params(model), rc.params(twin)):
        _assert_close(got[p], want[q], rtol=1e-6, what=str(p.shape))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_recorded_steps_share_one_packing_of_each_layer_per_recording(dtype):
    # A recording's steps of one layer share one packing of its weights (ops_rnn.pyx:
    # recorded_packing), found by its addresses among eight. Ten layers, stepped in turn,
    # evict each other's: every step still computes with its own layer's weights, as the
    # sequence nodes (which pack their own) and an unrecorded stepwise loop do.
    rng = np.random.default_rng(23)
    kinds = [LSTM, GRU, RNN, GRUv3, LSTM, RNN, GRU, LSTM, GRUv3, RNN]
    sizes = [4] + [24 + 4 * i for i in range(len(kinds))]
    model = rc.Chain(*[k(a, b, dtype=dtype) for k, a, b in zip(kinds, sizes, sizes[1:])])
    X = rng.standard_normal((6, 10, 4)).astype(dtype)
    seed = rng.standard_normal((6, 10, sizes[-1])).astype(dtype)
    ps = rc.params(model)
    rtol = 1e-10 if dtype == np.float64 else 2e-4
    results = _stepwise_and_sequence_gradients(model, X, seed, ps)
    for p in ps:
        _assert_close(results["steps"][p], results["sequence"][p], rtol=rtol, what=str(p.shape))
    recorded = {}

    def loss():
        reset(model)
        Y = rc.stack([model(x) for x in X])
        recorded["Y"] = np.asarray(Y)
        return rc.sum(Y * seed)

    rc.gradient(loss, ps)
    reset(model)
    inferred = np.stack([np.asarray(model(x)) for x in X])
    _assert_close(recorded["Y"], inferred, rtol=rtol)


@pytest.mark.parametrize("kind", [RNN, LSTM, GRU, GRUv3])
def test_weights_changed_in_place_between_recorded_steps_are_refused(kind):
    # Recorded steps compute with the packing their layer's first step made: a weight
    # changed in place between two steps would leave the forward on the old values and
    # the backward on the new. The gradient call raises instead, before any gradient is
    # computed, and the change stays; the next call records with the new weights.
    rng = np.random.default_rng(29)
    layer = kind(3, 8, dtype=np.float64)
    X = rng.standard_normal((4, 5, 3))
    ps = rc.params(layer)
    weight = ps[1]

    def loss(change):
        reset(layer)
        total = 0
        for t, x in enumerate(X):
            if t == 2 and change:
                weight.value[0, 0] += 0.5
            total = total + rc.sum(layer(x))
        return total

    before = weight.value.copy()
    if PANEL_KERNEL_BUILT:
        with pytest.raises(RuntimeError, match="changed in place while its steps were"):
            rc.gradient(lambda: loss(True), ps)
    else:
        # A build without the panel kernel (RECUR_PORTABLE=1) packs nothing: each recorded
        # step reads the weights as it finds them, as any other node does, so there is no
        # stale packing to refuse, and the steps after the change compute with it.
        value, _ = rc.value_and_gradient(lambda: loss(True), ps)
        weight.value[0, 0] = before[0, 0]
        assert float(loss(True)) == pytest.approx(value, rel=1e-12)       # unrecorded
        weight.value[0, 0] = before[0, 0]
        assert float(loss(False)) != pytest.approx(value, rel=1e-6)
        weight.value[0, 0] += 0.5
    assert weight.value[0, 0] == before[0, 0] + 0.5
    np.testing.assert_array_equal(np.delete(weight.value.ravel(), 0),
                                  np.delete(before.ravel(), 0))
    got = rc.gradient(lambda: loss(False), ps)
    twin = copy.deepcopy(layer)
    twin_ps = rc.params(twin)

    def twin_loss():
        reset(twin)
        return rc.sum(twin(X))

    want = rc.gradient(twin_loss, twin_ps)
    for p, q in zip(ps, twin_ps):
        _assert_close(got[p], want[q], rtol=1e-10, what=str(p.shape))


@pytest.mark.parametrize("kind,n_in,hidden", [("LSTM", 200, 800), ("GRUv3", 200, 800),
                                               ("RNN", 1200, 1600)])
@pytest.mark.parametrize("steps", [3, 16])
def test_inference_over_large_weights_matches_the_recorded_forward(kind, n_in, hidden, steps):
    # Past 8 MB of weights inference over fewer than 16 steps reads them in place, step by
    # step (ops_rnn.pyx; the RNN's and LSTM's input and recurrence in one call,
    # blas.gates_product), and over more packs them, as a recorded forward does for its
    # backward: each agrees with the recorded forward.
    rng = np.random.default_rng(13)
    layer = {"LSTM": LSTM, "GRUv3": GRUv3, "RNN": RNN}[kind](n_in, hidden)
    assert sum(p.value.nbytes for p in rc.params(layer)) > 8 << 20
    X = rng.standard_normal((steps, 5, n_in)).astype(np.float32)
    reset(layer)
    inferred = np.asarray(layer(X))
    recorded = {}

    def loss():
        reset(layer)
        Y = layer(X)
        recorded["Y"] = np.asarray(Y)
        return rc.sum(Y)

    rc.gradient(loss, rc.params(layer))
    _assert_close(inferred, recorded["Y"], rtol=2e-5)


@pytest.mark.parametrize("n_in,hidden,batch", [(32, 128, 32), (30, 300, 4), (7, 37, 5),
                                               (2, 10, 3), (3, 200, 9)])
def test_gru_steps_on_weights_in_place_match_the_reference(n_in, hidden, batch):
    # An unrecorded GRU step reads its weights in place: r and z take the input's and the
    # recurrence's products in one kernel call, and h Wh_nᵀ lands apart for the candidate
    # (blas.gates_product's `joined` and C2). The shapes take the step's row split (32
    # rows), the crew's units of W's rows (4 rows, 1.2M multiply-adds: units of 48 rows,
    # two of them across the r z | n and n | h Wh_nᵀ boundaries), blocks the kernel's rows
    # do not fill, and the BLAS (3 x 30 x 12, too small for the kernel).
    rng = np.random.default_rng(17)
    Wi = rng.standard_normal((3 * hidden, n_in)) * 0.3
    Wh = rng.standard_normal((3 * hidden, hidden)) * 0.3
    b = rng.standard_normal(3 * hidden)
    cell = rc.GRUCell.from_weights(Wi, Wh, b)
    h = rng.standard_normal((batch, hidden))
    for _ in range(3):
        x = rng.standard_normal((batch, n_in))
        expected = ref.gru_step(Wi, Wh, b, h, x)
        h_next, y = cell(h, x)
        _assert_close(np.asarray(h_next), expected, rtol=1e-12, what="h'")
        _assert_close(np.asarray(y), expected, rtol=1e-12, what="y")
        h = np.asarray(h_next)


@pytest.mark.parametrize("n_in,hidden,batch,time", [(32, 128, 32, 3), (7, 37, 5, 4),
                                                    (1, 10, 2, 6), (3, 200, 9, 2)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gru_on_stacked_packings_matches_the_reference(n_in, hidden, batch, time, dtype):
    # On packed weights the GRU's step reads one stage [h, x, 1] three ways (ops_rnn:
    # gru_packings): r and z against all of it, the candidate's x Wi_nᵀ + b_n against
    # [x, 1], its h Wh_nᵀ against h. The shapes take the row split (32 rows), r z and n
    # blocks that end inside a panel, a single input and a depth past one panel group;
    # each runs as an unrecorded sequence, a recorded one (whose h Wh_nᵀ goes straight to
    # where backward keeps it) and recorded single steps (one packing for all of them).
    rng = np.random.default_rng(23)
    Wi = rng.standard_normal((3 * hidden, n_in)) * 0.3
    Wh = rng.standard_normal((3 * hidden, hidden)) * 0.3
    b = rng.standard_normal(3 * hidden)
    h0 = rng.standard_normal((batch, hidden))
    X = rng.standard_normal((time, batch, n_in))
    dY = rng.standard_normal((time, batch, hidden))
    Y_want, _ = ref.gru_sequence(Wi, Wh, b, h0, X)
    want = ref.gru_sequence_backward(Wi, Wh, b, h0, X, dY)
    rtol = 1e-10 if dtype == np.float64 else 2e-4
    cell = rc.GRUCell.from_weights(Wi.astype(dtype), Wh.astype(dtype), b.astype(dtype))
    X_cast, dY_cast = X.astype(dtype), dY.astype(dtype)
    _, Y = cell(h0.astype(dtype), X_cast)
    _assert_close(np.asarray(Y), Y_want, rtol=rtol, what="Y, unrecorded")

    for stepwise in (False, True):
        h0_param = rc.param(h0, dtype)

        def loss():
            if not stepwise:
                _, Y = cell(h0_param, X_cast)
                return rc.sum(Y * dY_cast)
            h, total = h0_param, 0
            for x, seed in zip(X_cast, dY_cast):
                h, y = cell(h, x)
                total = total + rc.sum(y * seed)
            return total

        how = "steps" if stepwise else "sequence"
        gs = rc.gradient(loss, [h0_param, cell.Wi, cell.Wh, cell.b])
        _assert_close(gs[h0_param], want["h0"], rtol=rtol, what=f"h0 ({how})")
        for name in ("Wi", "Wh", "b"):
            _assert_close(gs[getattr(cell, name)], want[name], rtol=rtol,
                          what=f"{name} ({how})")
