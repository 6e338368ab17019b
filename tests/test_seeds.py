"""Every example of the recurrent-model documents in /work/shared/seeds/, in its Python form.

Julia's column vectors become rows (features last), `m.(seq)` becomes `[m(x) for x in seq]`,
and `reset!`, `truncate!`, `train!` become `rc.reset`, `rc.truncate`, `rc.train`.
"""
import copy

import numpy as np
import pytest
import scipy.sparse

import recur as rc

rng = np.random.default_rng(0)


def rand(*shape):
    return rng.random(shape).astype(np.float32)


def _hand_written_rnn(n_in, n_out):
    Wxh = rc.param(rng.standard_normal((n_out, n_in)))
    Whh = rc.param(rng.standard_normal((n_out, n_out)))
    b = rc.param(rng.standard_normal(n_out))

    def rnn(h, x):
        h = np.tanh(Wxh @ x + Whh @ h + b)
        return h, h

    return rnn, (Wxh, Whh, b)


# ---------------------------------------------------------------- recurrent cells

def test_hand_written_rnn_function():
    rnn, (Wxh, Whh, b) = _hand_written_rnn(10, 5)
    x = rand(10)                     # dummy data
    h = rand(5)                      # initial hidden state
    h_new, y = rnn(h, x)
    np.testing.assert_allclose(np.asarray(y), np.tanh(Wxh.value @ x + Whh.value @ h + b.value))
    # Running the step again changes y although x is the same: h carries memory.
    _, y_again = rnn(h_new, x)
    assert not np.allclose(np.asarray(y_again), np.asarray(y))


def test_rnn_cell_replaces_the_hand_written_function():
    rnn2 = rc.RNNCell(10, 5)
    x = rand(10)
    h = rand(5)
    h, y = rnn2(h, x)
    assert y.shape == (5,) and y is h
    rnn, weights = _hand_written_rnn(10, 5)
    cell = rc.RNNCell.from_weights(*(w.value for w in weights))
    h0 = rand(5)
    np.testing.assert_allclose(np.asarray(cell(h0, x)[1]), np.asarray(rnn(h0, x)[1]),
                               rtol=1e-12)


# ---------------------------------------------------------------- stateful models

def test_recur_wraps_a_hand_written_function():
    rnn, (Wxh, Whh, b) = _hand_written_rnn(10, 5)
    x = rand(10)
    h = rand(5)
    m = rc.Recur(rnn, h)
    y = m(x)
    np.testing.assert_array_equal(np.asarray(m.state), np.asarray(y))   # stored in m.state
    assert not np.allclose(np.asarray(m(x)), np.asarray(y))
    m.reset()
    assert m.state is h
    gs = rc.gradient(lambda: (rc.reset(m), rc.sum(m(x)) + rc.sum(m(x)))[1], [Wxh, Whh, b])
    assert all(gs[p] is not None and np.all(np.isfinite(gs[p])) for p in (Wxh, Whh, b))


def test_rnn_is_a_wrapped_cell():
    m = rc.RNN(10, 5)
    assert isinstance(m, rc.Recur) and isinstance(m.cell, rc.RNNCell)
    assert repr(m).startswith("Recur(\n  RNNCell(10 => 5, tanh),  # 85 parameters\n)")
    assert repr(rc.RNN(2, 5).cell) == "RNNCell(2 => 5, tanh)"
    for layer, cell in ((rc.LSTM, rc.LSTMCell), (rc.GRU, rc.GRUCell), (rc.GRUv3, rc.GRUv3Cell)):
        assert isinstance(layer(2, 5).cell, cell)


def test_models_apply_over_a_sequence():
    seq = [rand(10) for i in range(10)]
    rnn, _ = _hand_written_rnn(10, 5)
    m = rc.Recur(rnn, rand(5))
    assert [y.shape for y in [m(x) for x in seq]] == [(5,)] * 10

    m = rc.Chain(rc.LSTM(10, 15), rc.Dense(15, 5))
    ys = [m(x) for x in seq]
    assert [y.shape for y in ys] == [(5,)] * 10
    rc.reset(m)
    mapped = list(map(m, seq))
    np.testing.assert_array_equal(np.stack(mapped), np.stack(ys))
    rc.reset(m)   # the same sequence as one (time, batch, features) array
    Y = m(np.stack(seq)[:, None, :])
    np.testing.assert_allclose(np.asarray(Y)[:, 0], np.stack(ys), rtol=1e-6, atol=1e-6)


def test_truncate_forgets_the_history_and_reset_the_state():
    m = rc.Chain(rc.LSTM(10, 15), rc.Dense(15, 5))
    long_inputs = [rand(10) for _ in range(100)]
    more_inputs = [rand(10) for _ in range(10)]

    def loss(cut):
        rc.reset(m)
        for x in long_inputs:
            m(x)
        if cut:
            rc.truncate(m)
        return sum(rc.sum(m(x)) for x in more_inputs)

    truncated = rc.gradient(lambda: loss(True), m)
    full = rc.gradient(lambda: loss(False), m)
    lstm = m[0]
    # After truncate! only the 10 new calls take part: state0 gets no gradient any more.
    assert truncated[lstm.cell.state0[0]] is None and full[lstm.cell.state0[0]] is not None
    rc.reset(m)
    assert lstm.state is lstm.state0


# ---------------------------------------------------------------- working with sequences

def _chain():
    return rc.Chain(rc.RNN(2, 5), rc.Dense(5, 1))


def test_chain_on_one_step_three_steps_and_batches():
    m = _chain()
    x = rand(2)
    assert m(x).shape == (1,) and m(x).dtype == np.float32
    x = [rand(2) for i in range(3)]
    assert [y.shape for y in [m(xi) for xi in x]] == [(1,)] * 3
    rc.reset(m)
    batch = [rand(4, 2) for i in range(3)]
    assert [y.shape for y in [m(xi) for xi in batch]] == [(4, 1)] * 3


def test_seq_to_one_loss_ignores_the_first_output():
    m = _chain()
    x = [rand(2) for i in range(3)]

    def loss(x, y):
        m(x[0])          # ignores the output but updates the hidden state
        return sum(rc.mse(m(xi), yi) for xi, yi in zip(x[1:], y))

    y = [rand(1) for i in range(2)]
    assert np.isfinite(loss(x, y).item())
    rc.reset(m)
    gs = rc.gradient(lambda: (rc.reset(m), loss(x, y))[1], m)
    assert all(gs[p] is not None for p in rc.params(m))


def test_warm_up_then_train_without_reset():
    m = _chain()

    def loss(x, y):
        return sum(rc.mse(m(xi), yi) for xi, yi in zip(x, y))

    seq_init = [rand(2)]
    seq_1 = [rand(2) for i in range(3)]
    seq_2 = [rand(2) for i in range(3)]
    y1 = [rand(1) for i in range(3)]
    y2 = [rand(1) for i in range(3)]
    X = [seq_1, seq_2]
    Y = [y1, y2]
    data = zip(X, Y)
    rc.reset(m)
    [m(x) for x in seq_init]
    warm = copy.deepcopy(m)
    ps = rc.params(m)
    opt = rc.ADAM(1e-3)
    losses = rc.train(loss, ps, data, opt, progress=False)

    # The same by hand on the copy: the state flows from the warm-up through both batches.
    m = warm
    by_hand, by_hand_opt = [], rc.ADAM(1e-3)
    for x, y in zip(X, Y):
        value, gs = rc.value_and_gradient(lambda: loss(x, y), rc.params(m))
        rc.update(by_hand_opt, rc.params(m), gs)
        by_hand.append(value)
    np.testing.assert_allclose(losses, by_hand, rtol=1e-6)
    cold = copy.deepcopy(warm)
    rc.reset(cold)
    m = cold
    assert loss(seq_1, y1).item() != pytest.approx(losses[0])


def test_reset_inside_the_loss_for_independent_sequences():
    m = _chain()

    def loss(x, y):
        rc.reset(m)
        return sum(rc.mse(m(xi), yi) for xi, yi in zip(x, y))

    x = [rand(4, 2) for i in range(3)]     # 4 sentences of 3 words, 2 features each
    y = [rand(4, 1) for i in range(3)]
    first = loss(x, y).item()
    m(rand(4, 2))
    assert loss(x, y).item() == first
    gs = rc.gradient(lambda: loss(x, y), m)
    assert gs[m[0].cell.state0].shape == (5,)     # summed over the 4 sequences
    losses = rc.train(loss, m, [(x, y)] * 20, rc.Adam(0.01), progress=False)
    assert losses[-1] < losses[0]


# ---------------------------------------------------------------- the oldest API: unroll

def test_unroll_a_chain_of_recurrent_layers():
    model = rc.Chain(rc.Dense(784, 20), rc.sigmoid, rc.RNN(20, 30), rc.RNN(30, 15))
    unrolled = rc.unroll(model, 20)
    ys = unrolled([rand(784) for _ in range(20)])
    assert len(ys) == 20 and all(y.shape == (15,) for y in ys)


def test_hand_written_recurrent_and_lstm_equal_the_cells():
    n_in, n_out = 4, 3
    W = {name: rng.standard_normal((n_in if name[1] == "x" else n_out, n_out))
         for name in ("Wxy", "Wyy", "Wxf", "Wyf", "Wxi", "Wyi", "Wxo", "Wyo", "Wxc", "Wyc")}
    b = {name: rng.standard_normal(n_out) for name in ("by", "bf", "bi", "bo", "bc")}

    def recurrent(y, x):
        y = rc.tanh(x @ W["Wxy"] + y @ W["Wyy"] + b["by"])
        return y, y

    def lstm(state, x):
        y, c = state
        forget = rc.σ(x @ W["Wxf"] + y @ W["Wyf"] + b["bf"])
        input_ = rc.σ(x @ W["Wxi"] + y @ W["Wyi"] + b["bi"])
        output = rc.σ(x @ W["Wxo"] + y @ W["Wyo"] + b["bo"])
        candidate = rc.tanh(x @ W["Wxc"] + y @ W["Wyc"] + b["bc"])
        c = forget * c + input_ * candidate
        y = output * rc.tanh(c)
        return (y, c), y

    def stacked(kind, gates):        # the row-vector weights, stored (out, in) as in recur
        return np.concatenate([W[f"W{kind}{g}"].T for g in gates])

    zeros = np.zeros(n_out)
    pairs = [
        (rc.Recur(recurrent, zeros),
         rc.Recur(rc.RNNCell.from_weights(W["Wxy"].T, W["Wyy"].T, b["by"]))),
        (rc.Recur(lstm, (zeros, zeros)),
         rc.Recur(rc.LSTMCell.from_weights(stacked("x", "ifco"), stacked("y", "ifco"),
                                           np.concatenate([b[f"b{g}"] for g in "ifco"])))),
    ]
    xs = [rng.standard_normal(n_in) for _ in range(5)]
    for hand_written, layer in pairs:
        np.testing.assert_allclose(np.stack([np.asarray(hand_written(x)) for x in xs]),
                                   np.stack([np.asarray(layer(x)) for x in xs]), rtol=1e-12)


# ---------------------------------------------------------------- the RNN docstring

def test_rnn_docstring_examples():
    r = rc.RNN(3, 5)
    assert repr(r) == ("Recur(\n"
                       "  RNNCell(3 => 5, tanh),  # 50 parameters\n"
                       ")  # Total: 4 trainable arrays, 50 parameters,\n"
                       "   # plus 1 non-trainable, 5 parameters, 220 bytes.")
    assert r(rand(3)).shape == (5,)
    rc.reset(r)
    assert r(rand(10, 3)).shape == (10, 5)     # batch size of 10


def test_batch_size_changes_raise_instead_of_silently_misbehaving():
    r = rc.RNN(3, 5)
    assert r.state.shape == (5,)
    assert r(rand(3)).shape == (5,)
    assert r.state.shape == (5,)
    with pytest.raises(ValueError, match="batch size changed from 1 to 10 without reset"):
        r(rand(10, 3))
    rc.reset(r)
    assert r(rand(10, 3)).shape == (10, 5)
    assert r.state.shape == (10, 5)            # the state shape has changed
    with pytest.raises(ValueError, match=r"batch size changed from 10 to 1 without reset; "
                                         r"call recur\.reset\(model\)"):
        r(rand(3))


def test_rnn_cell_from_weights_with_a_tridiagonal_matrix():
    A = rand(5, 5)
    tridiagonal = scipy.sparse.diags([A.diagonal(-1), A.diagonal(), A.diagonal(1)], [-1, 0, 1])
    r = rc.Recur(rc.RNNCell.from_weights(rand(5, 4), tridiagonal, rand(5), rand(5, 1)))
    x = rand(10, 4)
    y = r(x)
    assert y.shape == (10, 5)                  # batch size of 10
    cell = r.cell
    dense_Wh = np.triu(np.tril(A, 1), -1)
    expected = np.tanh(x @ cell.Wi.value.T + cell.state0.value @ dense_Wh.T + cell.b.value)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-6)
