"""`recur.from_torch`: each supported torch module converts to a recur model with torch's
outputs (and, for the recurrent layers, torch's gradients), and everything else is refused
with a message naming what is wrong."""
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import recur as rc  # noqa: E402
from recur.interop import SUPPORTED, from_torch  # noqa: E402
from recur.recurrent import GRUCell, LSTMCell, Recur, RNNCell, reset  # noqa: E402

DTYPES = [np.float32, np.float64]
TORCH_DTYPES = {np.float32: torch.float32, np.float64: torch.float64}
# float32 outputs agree to rounding (a few ulps of values near 1); float64 ones far closer
# than the 1e-6 the conversion promises.
TOLERANCE = {np.float32: 1e-6, np.float64: 1e-12}
T, B, N_IN, N_OUT = 6, 4, 3, 5


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def in_dtype(module, dtype):
    return module.to(TORCH_DTYPES[dtype])


def randomised_biases(module):
    """torch initialises the biases uniformly already; make the two recurrent biases
    clearly different so that summing them is tested, keeping a GRU's b_hn at zero."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("bias"):
                p.uniform_(-1, 1)
            if name.startswith("bias_hh") and isinstance(module, (nn.GRU, nn.GRUCell)):
                p[2 * module.hidden_size:] = 0
    return module


def inputs(shape, dtype, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def torch_output(module, x, *args):
    with torch.no_grad():
        return module(torch.from_numpy(x), *args)


def assert_close(recur_value, torch_value, dtype):
    expected = (torch_value.detach().numpy() if isinstance(torch_value, torch.Tensor)
                else torch_value)
    actual = np.asarray(recur_value)
    assert actual.dtype == dtype
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


# ---------------------------------------------------------------- feed-forward modules

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(N_IN,), (B, N_IN), (T, B, N_IN)])
def test_linear_gives_torch_outputs(dtype, bias, shape):
    linear = in_dtype(nn.Linear(N_IN, N_OUT, bias=bias), dtype)
    dense = from_torch(linear)
    assert isinstance(dense, rc.Dense)
    assert dense.W.dtype == dtype
    assert (dense.b is None) == (not bias)
    x = inputs(shape, dtype)
    assert_close(dense(x), torch_output(linear, x), dtype)


@pytest.mark.parametrize("module, function", [
    (nn.Tanh(), rc.tanh), (nn.ReLU(), rc.relu), (nn.ReLU(inplace=True), rc.relu),
    (nn.Sigmoid(), rc.sigmoid), (nn.Identity(), rc.identity)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_activations_become_recur_functions(module, function, dtype):
    converted = from_torch(module)
    assert converted is function
    x = inputs((B, N_OUT), dtype)
    assert_close(converted(x), torch_output(module, x.copy()), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sequential_becomes_a_chain_with_torch_outputs(dtype):
    sequential = in_dtype(nn.Sequential(
        nn.Linear(N_IN, 8), nn.Tanh(),
        nn.Sequential(nn.Linear(8, 8, bias=False), nn.ReLU()),
        nn.Identity(), nn.Linear(8, N_OUT), nn.Sigmoid()), dtype)
    chain = from_torch(sequential)
    assert isinstance(chain, rc.Chain) and len(chain) == len(sequential)
    assert isinstance(chain[2], rc.Chain) and len(chain[2]) == 2
    for shape in [(N_IN,), (B, N_IN), (T, B, N_IN)]:
        x = inputs(shape, dtype)
        assert_close(chain(x), torch_output(sequential, x), dtype)


def test_weights_are_copied_not_shared():
    linear = nn.Linear(N_IN, N_OUT)
    dense = from_torch(linear)
    before = dense.W.value.copy()
    with torch.no_grad():
        linear.weight.add_(1.0)
    np.testing.assert_array_equal(dense.W.value, before)


# ---------------------------------------------------------------- recurrent layers

RECURRENT_LAYERS = {
    "RNN-tanh": lambda bias: nn.RNN(N_IN, N_OUT, bias=bias),
    "RNN-relu": lambda bias: nn.RNN(N_IN, N_OUT, nonlinearity="relu", bias=bias),
    "LSTM": lambda bias: nn.LSTM(N_IN, N_OUT, bias=bias),
    "GRU": lambda bias: nn.GRU(N_IN, N_OUT, bias=bias),
}
CELLS = {
    "RNNCell-tanh": (lambda: nn.RNNCell(N_IN, N_OUT), RNNCell),
    "RNNCell-relu": (lambda: nn.RNNCell(N_IN, N_OUT, nonlinearity="relu"), RNNCell),
    "LSTMCell": (lambda: nn.LSTMCell(N_IN, N_OUT), LSTMCell),
    "GRUCell": (lambda: nn.GRUCell(N_IN, N_OUT), GRUCell),
}


def torch_final_state(state):
    """torch's (h_n, c_n) or h_n of shape (1, B, out), as recur holds them: (B, out)."""
    if isinstance(state, tuple):
        return tuple(s[0] for s in state)
    return state[0]


def assert_state_close(recur_state, torch_state, dtype):
    if isinstance(torch_state, tuple):
        assert isinstance(recur_state, tuple) and len(recur_state) == len(torch_state)
        for r, t in zip(recur_state, torch_state):
            assert_close(r, t, dtype)
    else:
        assert_close(recur_state, torch_state, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", RECURRENT_LAYERS)
def test_recurrent_layer_gives_torch_outputs_over_a_sequence(kind, bias, dtype):
    layer = in_dtype(randomised_biases(RECURRENT_LAYERS[kind](bias)), dtype)
    model = from_torch(layer)
    assert isinstance(model, Recur)
    assert model.cell.Wi.dtype == dtype
    x = inputs((T, B, N_IN), dtype)
    expected, final_state = torch_output(layer, x)
    assert_close(model(x), expected, dtype)
    assert_state_close(model.state, torch_final_state(final_state), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", RECURRENT_LAYERS)
def test_recurrent_layer_gives_torch_outputs_step_by_step(kind, dtype):
    layer = in_dtype(randomised_biases(RECURRENT_LAYERS[kind](True)), dtype)
    model = from_torch(layer)
    x = inputs((T, B, N_IN), dtype)
    expected, _ = torch_output(layer, x)
    for t in range(T):
        assert_close(model(x[t]), expected[t], dtype)
    reset(model)
    assert_close(model(x[0, 0]), expected[0, 0], dtype)  # one unbatched step after a reset


@pytest.mark.parametrize("kind", RECURRENT_LAYERS)
def test_recurrent_layer_gives_torch_gradients(kind):
    layer = in_dtype(randomised_biases(RECURRENT_LAYERS[kind](True)), np.float64)
    model = from_torch(layer)
    x = inputs((T, B, N_IN), np.float64)
    weights = np.random.default_rng(2).standard_normal((T, B, N_OUT))

    output, _ = layer(torch.from_numpy(x))
    (output * torch.from_numpy(weights)).sum().backward()
    cell = model.cell
    grads = rc.gradient(lambda: rc.sum(model(x) * weights), [cell.Wi, cell.Wh, cell.b])

    assert_close(grads[cell.Wi], layer.weight_ih_l0.grad, np.float64)
    assert_close(grads[cell.Wh], layer.weight_hh_l0.grad, np.float64)
    # b = bias_ih + bias_hh enters wherever bias_ih does, so it has bias_ih's gradient.
    assert_close(grads[cell.b], layer.bias_ih_l0.grad, np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", CELLS)
def test_cells_give_torch_outputs(kind, dtype):
    make, recur_class = CELLS[kind]
    torch_cell = in_dtype(randomised_biases(make()), dtype)
    cell = from_torch(torch_cell)
    assert type(cell) is recur_class
    x = inputs((B, N_IN), dtype)
    h = inputs((B, N_OUT), dtype, seed=2)
    if recur_class is LSTMCell:
        c = inputs((B, N_OUT), dtype, seed=3)
        torch_state = (torch.from_numpy(h), torch.from_numpy(c))
        expected_h, expected_c = torch_output(torch_cell, x, torch_state)
        (new_h, new_c), y = cell((h, c), x)
        assert_close(new_c, expected_c, dtype)
    else:
        expected_h = torch_output(torch_cell, x, torch.from_numpy(h))
        new_h, y = cell(h, x)
    assert_close(new_h, expected_h, dtype)
    assert_close(y, expected_h, dtype)


@pytest.mark.parametrize("kind", CELLS)
def test_converted_cell_starts_from_torchs_zero_state(kind):
    make, _ = CELLS[kind]
    torch_cell = in_dtype(randomised_biases(make()), np.float64)
    model = Recur(from_torch(torch_cell))
    x = inputs((B, N_IN), np.float64)
    expected = torch_output(torch_cell, x)
    assert_close(model(x), expected[0] if isinstance(expected, tuple) else expected, np.float64)


def test_sequential_may_hold_recurrent_layers():
    """torch cannot chain an LSTM (it returns a tuple), but the converted Chain runs."""
    lstm, linear = nn.LSTM(N_IN, 8), nn.Linear(8, N_OUT)
    chain = from_torch(nn.Sequential(lstm, nn.Tanh(), linear))
    x = inputs((T, B, N_IN), np.float32)
    with torch.no_grad():
        expected = linear(torch.tanh(lstm(torch.from_numpy(x))[0]))
    assert_close(chain(x), expected, np.float32)


def test_single_layer_dropout_is_accepted_since_torch_never_applies_it():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: dropout has no effect here
        lstm = nn.LSTM(N_IN, N_OUT, dropout=0.5)
    lstm.train()
    model = from_torch(lstm)
    x = inputs((T, B, N_IN), np.float32)
    assert_close(model(x), torch_output(lstm, x)[0], np.float32)


# ---------------------------------------------------------------- what is refused

@pytest.mark.parametrize("make", [nn.GRU, nn.GRUCell])
def test_gru_with_nonzero_b_hn_raises(make):
    gru = make(N_IN, N_OUT)
    bias_hh = gru.bias_hh_l0 if isinstance(gru, nn.GRU) else gru.bias_hh
    with torch.no_grad():
        bias_hh.zero_()
        bias_hh[2 * N_OUT + 1] = 0.25
    with pytest.raises(ValueError, match="b_hn"):
        from_torch(gru)


@pytest.mark.parametrize("module, setting", [
    (lambda: nn.LSTM(N_IN, N_OUT, num_layers=2), "num_layers=2"),
    (lambda: nn.GRU(N_IN, N_OUT, bidirectional=True), "bidirectional"),
    (lambda: nn.LSTM(N_IN, N_OUT, proj_size=2), "proj_size=2"),
    (lambda: nn.RNN(N_IN, N_OUT, batch_first=True), "batch_first"),
])
def test_unsupported_recurrent_settings_raise_naming_the_setting(module, setting):
    with pytest.raises(ValueError, match=setting):
        from_torch(module())


def test_batch_first_module_converts_after_switching_the_flag_as_the_message_says():
    lstm = nn.LSTM(N_IN, N_OUT, batch_first=True)
    x_batch_first = inputs((B, T, N_IN), np.float32)
    expected = torch_output(lstm, x_batch_first)[0]
    lstm.batch_first = False
    model = from_torch(lstm)
    assert_close(model(x_batch_first.transpose(1, 0, 2)), expected.transpose(0, 1), np.float32)


class LinearWithOwnForward(nn.Linear):
    def forward(self, x):
        return super().forward(x) * 2


@pytest.mark.parametrize("module", [nn.Conv1d(2, 2, 2), nn.Softmax(dim=-1),
                                    LinearWithOwnForward(N_IN, N_OUT),
                                    nn.Sequential(nn.Linear(N_IN, N_OUT), nn.GELU())])
def test_unsupported_module_raises_type_error_listing_what_is_supported(module):
    with pytest.raises(TypeError) as raised:
        from_torch(module)
    message = str(raised.value)
    assert type(module).__name__ in message or "GELU" in message
    for name in SUPPORTED:
        assert name in message


def test_not_a_module_raises_type_error():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        from_torch(np.zeros((2, 2)))


def test_half_precision_weights_raise_type_error():
    with pytest.raises(TypeError, match="float16"):
        from_torch(nn.Linear(N_IN, N_OUT).half())
