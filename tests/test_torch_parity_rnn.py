"""recur's RNN, LSTM and GRU against torch's, in float64, with copied weights: outputs,
final states and every gradient agree for single steps, step loops and whole sequences.

Mapping: recur's Wi, Wh are torch's weight_ih, weight_hh (torch's LSTM gate order i, f, g, o
and GRU order r, z, n are recur's); recur's single bias is bias_ih + bias_hh. recur's GRU is
Flux's, whose reset gate has no hidden bias inside r ⊙ (h Wh_nᵀ): torch's b_hn is set to 0.
"""
import numpy as np
import pytest

import recur as rc
from recur.recurrent import GRUCell, LSTMCell, Recur, RNNCell, reset

torch = pytest.importorskip("torch")

N_IN, N_OUT, BATCH, TIME = 3, 4, 2, 6
RTOL = 1e-9

# name -> (torch layer, torch cell, recur cell, cell options, states)
KINDS = {
    "RNN tanh": (lambda: torch.nn.RNN(N_IN, N_OUT, nonlinearity="tanh"),
                 lambda: torch.nn.RNNCell(N_IN, N_OUT, nonlinearity="tanh"),
                 RNNCell, {"σ": rc.tanh}, 1),
    "RNN relu": (lambda: torch.nn.RNN(N_IN, N_OUT, nonlinearity="relu"),
                 lambda: torch.nn.RNNCell(N_IN, N_OUT, nonlinearity="relu"),
                 RNNCell, {"σ": rc.relu}, 1),
    "LSTM": (lambda: torch.nn.LSTM(N_IN, N_OUT), lambda: torch.nn.LSTMCell(N_IN, N_OUT),
             LSTMCell, {}, 2),
    "GRU": (lambda: torch.nn.GRU(N_IN, N_OUT), lambda: torch.nn.GRUCell(N_IN, N_OUT),
            GRUCell, {}, 1),
}


def _weights(module):
    """(W_ih, W_hh, b_ih, b_hh) of a torch cell or single-layer module."""
    suffix = "_l0" if hasattr(module, "weight_ih_l0") else ""
    return [getattr(module, f"{name}{suffix}")
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]


def _torch_module(kind, which, seed):
    torch.manual_seed(seed)
    module = KINDS[kind][0 if which == "layer" else 1]().double()
    if kind == "GRU":
        with torch.no_grad():
            _weights(module)[3][2 * N_OUT:] = 0      # b_hn: Flux's GRU has none
    return module


def _recur_cell(kind, module, states0):
    W_ih, W_hh, b_ih, b_hh = (w.detach().numpy() for w in _weights(module))
    _, _, make, options, n_states = KINDS[kind]
    state0 = states0[0] if n_states == 1 else tuple(states0)
    return make.from_weights(W_ih, W_hh, b_ih + b_hh, state0, **options)


def _assert_close(got, expected, what):
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else expected
    scale = np.max(np.abs(expected))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=RTOL, atol=RTOL * scale,
                               err_msg=what)


def _compare_gradients(kind, cell, gs, module, torch_inputs, recur_inputs):
    W_ih, W_hh, b_ih, b_hh = _weights(module)
    _assert_close(gs[cell.Wi], W_ih.grad, "Wi")
    _assert_close(gs[cell.Wh], W_hh.grad, "Wh")
    _assert_close(gs[cell.b], b_ih.grad, "b")
    # Both torch biases see the same gradient as recur's one, but for GRU's zeroed b_hn.
    n = 2 * N_OUT if kind == "GRU" else b_hh.shape[0]
    _assert_close(gs[cell.b][:n], b_hh.grad[:n], "b_hh")
    for name, (ours, theirs) in enumerate(zip(recur_inputs, torch_inputs)):
        _assert_close(gs[ours], theirs.grad, f"input {name}")


def _seeds(rng, *shapes):
    return [rng.standard_normal(shape) for shape in shapes]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_single_step_matches_torch_cell(kind):
    rng = np.random.default_rng(0)
    n_states = KINDS[kind][4]
    module = _torch_module(kind, "cell", 0)
    x = rng.standard_normal((BATCH, N_IN))
    states = _seeds(rng, *[(BATCH, N_OUT)] * n_states)
    seeds = _seeds(rng, *[(BATCH, N_OUT)] * n_states)

    torch_x = torch.tensor(x, requires_grad=True)
    torch_states = [torch.tensor(s, requires_grad=True) for s in states]
    out = module(torch_x, tuple(torch_states) if n_states == 2 else torch_states[0])
    outs = list(out) if n_states == 2 else [out]
    sum((o * torch.from_numpy(s)).sum() for o, s in zip(outs, seeds)).backward()

    cell = _recur_cell(kind, module, [np.zeros(N_OUT)] * n_states)
    recur_x = rc.param(x)
    recur_states = [rc.param(s) for s in states]
    results = {}

    def loss():
        new, y = cell(recur_states[0] if n_states == 1 else tuple(recur_states), recur_x)
        results["new"] = [new] if n_states == 1 else list(new)
        return sum(rc.sum(o * s) for o, s in zip(results["new"], seeds))

    gs = rc.gradient(loss, [recur_x, *recur_states, *rc.params(cell)])
    for ours, theirs in zip(results["new"], outs):
        _assert_close(ours, theirs, "new state")
    _compare_gradients(kind, cell, gs, module, [torch_x, *torch_states],
                       [recur_x, *recur_states])


@pytest.mark.parametrize("path", ["steps", "sequence"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_layer_matches_torch_layer(kind, path):
    """recur's state0 is unbatched and broadcast over the batch; torch's h0 is the same
    vector expanded, so both sum its gradient over the batch."""
    rng = np.random.default_rng(1)
    n_states = KINDS[kind][4]
    module = _torch_module(kind, "layer", 1)
    X = rng.standard_normal((TIME, BATCH, N_IN))
    states0 = _seeds(rng, *[(N_OUT,)] * n_states)
    Y_seed, *final_seeds = _seeds(rng, (TIME, BATCH, N_OUT), *[(BATCH, N_OUT)] * n_states)

    torch_X = torch.tensor(X, requires_grad=True)
    torch_states = [torch.tensor(s, requires_grad=True) for s in states0]
    expanded = [s.expand(1, BATCH, N_OUT) for s in torch_states]
    Y, final = module(torch_X, tuple(expanded) if n_states == 2 else expanded[0])
    finals = list(final) if n_states == 2 else [final]
    loss = (Y * torch.from_numpy(Y_seed)).sum()
    loss = loss + sum((f[0] * torch.from_numpy(s)).sum() for f, s in zip(finals, final_seeds))
    loss.backward()

    m = Recur(_recur_cell(kind, module, states0))
    recur_X = rc.param(X)
    results = {}

    def recur_loss():
        reset(m)
        Y = m(recur_X) if path == "sequence" else rc.stack([m(x) for x in recur_X])
        results["Y"], results["final"] = Y, [m.state] if n_states == 1 else list(m.state)
        return rc.sum(Y * Y_seed) + sum(rc.sum(f * s) for f, s in zip(results["final"], final_seeds))

    gs = rc.gradient(recur_loss, [recur_X, *rc.params(m)])
    _assert_close(results["Y"], Y, "Y")
    for ours, theirs in zip(results["final"], finals):
        _assert_close(ours, theirs[0], "final state")
    _compare_gradients(kind, m.cell, gs, module, [torch_X, *torch_states],
                       [recur_X, *(m.state0 if n_states == 2 else [m.state0])])
