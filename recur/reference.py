"""Plain-numpy forward and backward of every recurrent cell: the test oracle.

The fused C kernels are fast and hard to read; this module is slow and easy to read, and
the tests hold the kernels to it. Everything here is a pure function of numpy arrays and
follows the dtype of its inputs (float32 stays float32, float64 stays float64).

Conventions (SPEC §1, §4): features are the last axis; ``x`` is ``(B, in)`` or ``(in,)``,
``h`` and ``c`` are ``(B, out)`` or ``(out,)``; weights are stored ``(out, in)`` and
applied as ``x @ Wi.T + h @ Wh.T + b``. An unbatched state ``(out,)`` broadcasts against a
batched input, and its gradient is then summed over the batch back to ``(out,)``.

Each cell has four functions:

- ``<cell>_step(params..., state..., x)`` -- one step, returning the new state;
- ``<cell>_step_backward(params..., state..., x, d<state>_new...)`` -- the gradients of one
  step, written by hand from recomputed forward intermediates; an upstream gradient of
  ``None`` means zero;
- ``<cell>_sequence(params..., state0..., X)`` -- the step looped over the first axis of
  ``X`` ``(T, B, in)``, returning ``Y (T, B, out)`` and the final state;
- ``<cell>_sequence_backward(params..., state0..., X, dY, d<state>_T=None...)`` -- the
  step backward looped in reverse, returning the gradients of the parameters, of the
  initial state (keys ``h0``, ``c0``) and of ``X``.

Cells (``s`` is the logistic sigmoid):

- RNN:   ``h' = act(x Wiᵀ + h Whᵀ + b)``.
- LSTM:  gate blocks ``[i; f; g; o]`` of ``x Wiᵀ + h Whᵀ + b``;
  ``c' = s(f) c + s(i) tanh(g)``, ``h' = s(o) tanh(c')``.
- GRU:   the Flux 0.13 formulation, blocks ``[r; z; n]``;
  ``r = s(x Wi_rᵀ + h Wh_rᵀ + b_r)``, ``z`` likewise,
  ``n = tanh(x Wi_nᵀ + r (h Wh_nᵀ) + b_n)``, ``h' = (1 - z) n + z h``.
- GRUv3: as GRU but ``Wh`` holds only the r and z blocks and
  ``n = tanh(x Wi_nᵀ + (r h) Wh_hᵀ + b_n)``.
"""

import numpy as np

__all__ = [
    "ACTIVATIONS",
    "sigmoid",
    "rnn_step", "rnn_step_backward", "rnn_sequence", "rnn_sequence_backward",
    "lstm_step", "lstm_step_backward", "lstm_sequence", "lstm_sequence_backward",
    "gru_step", "gru_step_backward", "gru_sequence", "gru_sequence_backward",
    "gruv3_step", "gruv3_step_backward", "gruv3_sequence", "gruv3_sequence_backward",
]


def sigmoid(a):
    """Logistic function, exp(-log(1 + exp(-a))): no overflow and full relative precision
    for large negative ``a``, where ``1 / (1 + exp(-a))`` would overflow."""
    return np.exp(-np.logaddexp(0, -a))


# name -> (activation, derivative expressed through the activation's OUTPUT y); the
# backward pass keeps only outputs, as the fused kernels do.
ACTIVATIONS = {
    "tanh": (np.tanh, lambda y: 1 - y * y),
    "relu": (lambda a: np.maximum(a, 0), lambda y: (y > 0).astype(y.dtype)),
    "sigmoid": (sigmoid, lambda y: y * (1 - y)),
    "identity": (lambda a: a, np.ones_like),
}


def _activation(name):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}"
        ) from None


# ---------------------------------------------------------------------------------------
# Shared pieces of every backward pass
# ---------------------------------------------------------------------------------------

def _or_zeros(grad, like):
    """An upstream gradient of None stands for zeros shaped like the output it belongs to."""
    return np.zeros_like(like) if grad is None else grad


def _sum_to_shape(grad, shape):
    """Undo broadcasting: sum ``grad`` over the axes that broadcasting added or stretched,
    so the gradient of an unbatched state (out,) is its batch sum."""
    grad = grad.sum(axis=tuple(range(grad.ndim - len(shape))))
    stretched = tuple(axis for axis, n in enumerate(shape) if n == 1 and grad.shape[axis] != 1)
    return grad.sum(axis=stretched, keepdims=True) if stretched else grad


def _weight_gradient(d_out, inputs):
    """Gradient of ``W`` in ``inputs @ W.T``: the batch sum of outer products d_out ⊗ inputs.

    ``inputs`` may be unbatched while ``d_out`` is batched (a broadcast state), so it is
    broadcast first; a single unbatched row is a batch of one."""
    inputs = np.broadcast_to(inputs, d_out.shape[:-1] + inputs.shape[-1:])
    return _rows(d_out).T @ _rows(inputs)


def _bias_gradient(d_out):
    return _rows(d_out).sum(axis=0)


def _rows(a):
    """``a`` as a matrix of its last axis, every other axis one of rows (which numpy's -1
    cannot say of an empty array)."""
    return a.reshape(int(np.prod(a.shape[:-1])), a.shape[-1])


def _projection_backward(d_input_proj, d_hidden_proj, Wi, Wh, x, h):
    """Backward of ``x @ Wi.T + b`` (gradient ``d_input_proj``) and ``h @ Wh.T``
    (gradient ``d_hidden_proj``), the two matrix products every cell starts with.

    The returned ``h`` gradient still has the broadcast batch shape: the caller adds the
    cell's direct paths from ``h`` to the output before summing it to ``h``'s shape."""
    return {
        "Wi": _weight_gradient(d_input_proj, x),
        "Wh": _weight_gradient(d_hidden_proj, h),
        "b": _bias_gradient(d_input_proj),
        "x": _sum_to_shape(d_input_proj @ Wi, x.shape),
        "h": d_hidden_proj @ Wh,
    }


# ---------------------------------------------------------------------------------------
# RNN
# ---------------------------------------------------------------------------------------

def rnn_step(Wi, Wh, b, h, x, act="tanh"):
    """One vanilla RNN step: ``h' = act(x Wiᵀ + h Whᵀ + b)``."""
    activation, _ = _activation(act)
    return activation(x @ Wi.T + h @ Wh.T + b)


def rnn_step_backward(Wi, Wh, b, h, x, dh_new, act="tanh"):
    """Gradients of one RNN step given ``dh_new`` = dL/dh'. Keys: Wi, Wh, b, h, x."""
    _, derivative = _activation(act)
    h_new = rnn_step(Wi, Wh, b, h, x, act)
    d_pre = _or_zeros(dh_new, h_new) * derivative(h_new)
    grads = _projection_backward(d_pre, d_pre, Wi, Wh, x, h)
    grads["h"] = _sum_to_shape(grads["h"], h.shape)
    return grads


# ---------------------------------------------------------------------------------------
# LSTM
# ---------------------------------------------------------------------------------------

def _lstm_forward(Wi, Wh, b, h, c, x):
    """The activated gates and the new cell state, everything the backward pass needs."""
    i, f, g, o = np.split(x @ Wi.T + h @ Wh.T + b, 4, axis=-1)
    i, f, g, o = sigmoid(i), sigmoid(f), np.tanh(g), sigmoid(o)
    c_new = f * c + i * g
    return i, f, g, o, c_new


def lstm_step(Wi, Wh, b, h, c, x):
    """One LSTM step; returns ``(h', c')``. Gate blocks of ``Wi``, ``Wh``, ``b``: [i; f; g; o]."""
    _, _, _, o, c_new = _lstm_forward(Wi, Wh, b, h, c, x)
    return o * np.tanh(c_new), c_new


def lstm_step_backward(Wi, Wh, b, h, c, x, dh_new, dc_new):
    """Gradients of one LSTM step given dL/dh' and dL/dc' (either may be None).
    Keys: Wi, Wh, b, h, c, x."""
    i, f, g, o, c_new = _lstm_forward(Wi, Wh, b, h, c, x)
    tanh_c_new = np.tanh(c_new)
    dh_new = _or_zeros(dh_new, c_new)
    # c' reaches the loss directly and through h' = o tanh(c').
    dc_total = _or_zeros(dc_new, c_new) + dh_new * o * (1 - tanh_c_new * tanh_c_new)

    d_i = dc_total * g * i * (1 - i)
    d_f = dc_total * c * f * (1 - f)
    d_g = dc_total * i * (1 - g * g)
    d_o = dh_new * tanh_c_new * o * (1 - o)
    d_pre = np.concatenate([d_i, d_f, d_g, d_o], axis=-1)

    grads = _projection_backward(d_pre, d_pre, Wi, Wh, x, h)
    grads["h"] = _sum_to_shape(grads["h"], h.shape)
    grads["c"] = _sum_to_shape(dc_total * f, c.shape)
    return grads


# ---------------------------------------------------------------------------------------
# GRU (Flux 0.13 formulation: the reset gate scales the hidden projection h Wh_nᵀ)
# ---------------------------------------------------------------------------------------

def _gru_forward(Wi, Wh, b, h, x):
    """Gates r, z, candidate n and the hidden projection of the n block."""
    x_r, x_z, x_n = np.split(x @ Wi.T + b, 3, axis=-1)
    h_r, h_z, h_n = np.split(h @ Wh.T, 3, axis=-1)
    r = sigmoid(x_r + h_r)
    z = sigmoid(x_z + h_z)
    n = np.tanh(x_n + r * h_n)
    return r, z, n, h_n


def gru_step(Wi, Wh, b, h, x):
    """One GRU step: ``h' = (1 - z) n + z h``. Blocks of ``Wi``, ``Wh``, ``b``: [r; z; n]."""
    _, z, n, _ = _gru_forward(Wi, Wh, b, h, x)
    return (1 - z) * n + z * h


def gru_step_backward(Wi, Wh, b, h, x, dh_new):
    """Gradients of one GRU step given dL/dh'. Keys: Wi, Wh, b, h, x."""
    r, z, n, h_n = _gru_forward(Wi, Wh, b, h, x)
    dh_new = _or_zeros(dh_new, n)

    d_n_pre = dh_new * (1 - z) * (1 - n * n)
    d_r_pre = d_n_pre * h_n * r * (1 - r)
    d_z_pre = dh_new * (h - n) * z * (1 - z)
    # The n block enters the input projection as is, but the hidden projection through r.
    d_input_proj = np.concatenate([d_r_pre, d_z_pre, d_n_pre], axis=-1)
    d_hidden_proj = np.concatenate([d_r_pre, d_z_pre, d_n_pre * r], axis=-1)

    grads = _projection_backward(d_input_proj, d_hidden_proj, Wi, Wh, x, h)
    grads["h"] = _sum_to_shape(grads["h"] + dh_new * z, h.shape)
    return grads


# ---------------------------------------------------------------------------------------
# GRUv3 (the reset gate scales h before its own matrix Wh_h)
# ---------------------------------------------------------------------------------------

def _gruv3_forward(Wi, Wh, b, Wh_h, h, x):
    """Gates r, z, candidate n and the reset state r h."""
    x_r, x_z, x_n = np.split(x @ Wi.T + b, 3, axis=-1)
    h_r, h_z = np.split(h @ Wh.T, 2, axis=-1)
    r = sigmoid(x_r + h_r)
    z = sigmoid(x_z + h_z)
    reset_h = r * h
    n = np.tanh(x_n + reset_h @ Wh_h.T)
    return r, z, n, reset_h


def gruv3_step(Wi, Wh, b, Wh_h, h, x):
    """One GRUv3 step: ``h' = (1 - z) n + z h`` with ``n = tanh(x Wi_nᵀ + (r h) Wh_hᵀ + b_n)``.
    ``Wi`` and ``b`` hold blocks [r; z; n], ``Wh`` only [r; z]."""
    _, z, n, _ = _gruv3_forward(Wi, Wh, b, Wh_h, h, x)
    return (1 - z) * n + z * h


def gruv3_step_backward(Wi, Wh, b, Wh_h, h, x, dh_new):
    """Gradients of one GRUv3 step given dL/dh'. Keys: Wi, Wh, b, Wh_h, h, x."""
    r, z, n, reset_h = _gruv3_forward(Wi, Wh, b, Wh_h, h, x)
    dh_new = _or_zeros(dh_new, n)

    d_n_pre = dh_new * (1 - z) * (1 - n * n)
    d_reset_h = d_n_pre @ Wh_h
    d_r_pre = d_reset_h * h * r * (1 - r)
    d_z_pre = dh_new * (h - n) * z * (1 - z)
    d_input_proj = np.concatenate([d_r_pre, d_z_pre, d_n_pre], axis=-1)
    d_hidden_proj = np.concatenate([d_r_pre, d_z_pre], axis=-1)

    grads = _projection_backward(d_input_proj, d_hidden_proj, Wi, Wh, x, h)
    grads["Wh_h"] = _weight_gradient(d_n_pre, reset_h)
    # h reaches h' through the r/z projections, through r h, and through the z h term.
    grads["h"] = _sum_to_shape(grads["h"] + d_reset_h * r + dh_new * z, h.shape)
    return grads


# ---------------------------------------------------------------------------------------
# Whole sequences: the step functions looped over time
# ---------------------------------------------------------------------------------------

def _run_sequence(step, state0, X):
    """Loop ``step(state, x) -> state`` over the first axis of ``X``.

    States are tuples whose first element is the output ``h``. Returns the stacked outputs
    ``Y`` and the list of every state, ``states[t]`` being the state before step ``t``."""
    states = [state0]
    for x in X:
        states.append(step(states[-1], x))
    return np.stack([state[0] for state in states[1:]]), states


def _run_sequence_backward(step_backward, param_names, state_names, states, X, dY, dstate_T):
    """Backpropagation through time by looping ``step_backward`` from the last step back.

    ``step_backward(state, x, dstate)`` returns a step's gradients keyed by ``param_names``,
    ``state_names`` and ``x``. The parameter gradients are summed over the steps; the output
    gradient ``dY[t]`` joins the state gradient flowing back into ``h`` of step ``t``."""
    grads = {name: 0 for name in param_names}
    dX = [None] * len(X)
    dstate = list(dstate_T)
    for t in reversed(range(len(X))):
        if dY is not None:
            dstate[0] = dY[t] if dstate[0] is None else dstate[0] + dY[t]
        step_grads = step_backward(states[t], X[t], dstate)
        for name in param_names:
            grads[name] = grads[name] + step_grads[name]
        dX[t] = step_grads["x"]
        dstate = [step_grads[name] for name in state_names]
    for name, d_initial in zip(state_names, dstate):
        grads[name + "0"] = d_initial
    grads["X"] = np.stack(dX)
    return grads


def _rnn_states(Wi, Wh, b, h0, X, act):
    return _run_sequence(lambda state, x: (rnn_step(Wi, Wh, b, *state, x, act),), (h0,), X)


def rnn_sequence(Wi, Wh, b, h0, X, act="tanh"):
    """Run an RNN over ``X`` (T, B, in); returns ``(Y (T, B, out), h_T)``."""
    Y, states = _rnn_states(Wi, Wh, b, h0, X, act)
    return Y, states[-1][0]


def rnn_sequence_backward(Wi, Wh, b, h0, X, dY, dh_T=None, act="tanh"):
    """Gradients of an RNN sequence given dL/dY and dL/dh_T. Keys: Wi, Wh, b, h0, X."""
    _, states = _rnn_states(Wi, Wh, b, h0, X, act)
    return _run_sequence_backward(
        lambda state, x, dstate: rnn_step_backward(Wi, Wh, b, *state, x, *dstate, act),
        ("Wi", "Wh", "b"), ("h",), states, X, dY, (dh_T,))


def _lstm_states(Wi, Wh, b, h0, c0, X):
    return _run_sequence(lambda state, x: lstm_step(Wi, Wh, b, *state, x), (h0, c0), X)


def lstm_sequence(Wi, Wh, b, h0, c0, X):
    """Run an LSTM over ``X`` (T, B, in); returns ``(Y (T, B, out), (h_T, c_T))``."""
    Y, states = _lstm_states(Wi, Wh, b, h0, c0, X)
    return Y, states[-1]


def lstm_sequence_backward(Wi, Wh, b, h0, c0, X, dY, dh_T=None, dc_T=None):
    """Gradients of an LSTM sequence given dL/dY, dL/dh_T and dL/dc_T.
    Keys: Wi, Wh, b, h0, c0, X."""
    _, states = _lstm_states(Wi, Wh, b, h0, c0, X)
    return _run_sequence_backward(
        lambda state, x, dstate: lstm_step_backward(Wi, Wh, b, *state, x, *dstate),
        ("Wi", "Wh", "b"), ("h", "c"), states, X, dY, (dh_T, dc_T))


def _gru_states(Wi, Wh, b, h0, X):
    return _run_sequence(lambda state, x: (gru_step(Wi, Wh, b, *state, x),), (h0,), X)


def gru_sequence(Wi, Wh, b, h0, X):
    """Run a GRU over ``X`` (T, B, in); returns ``(Y (T, B, out), h_T)``."""
    Y, states = _gru_states(Wi, Wh, b, h0, X)
    return Y, states[-1][0]


def gru_sequence_backward(Wi, Wh, b, h0, X, dY, dh_T=None):
    """Gradients of a GRU sequence given dL/dY and dL/dh_T. Keys: Wi, Wh, b, h0, X."""
    _, states = _gru_states(Wi, Wh, b, h0, X)
    return _run_sequence_backward(
        lambda state, x, dstate: gru_step_backward(Wi, Wh, b, *state, x, *dstate),
        ("Wi", "Wh", "b"), ("h",), states, X, dY, (dh_T,))


def _gruv3_states(Wi, Wh, b, Wh_h, h0, X):
    return _run_sequence(lambda state, x: (gruv3_step(Wi, Wh, b, Wh_h, *state, x),), (h0,), X)


def gruv3_sequence(Wi, Wh, b, Wh_h, h0, X):
    """Run a GRUv3 over ``X`` (T, B, in); returns ``(Y (T, B, out), h_T)``."""
    Y, states = _gruv3_states(Wi, Wh, b, Wh_h, h0, X)
    return Y, states[-1][0]


def gruv3_sequence_backward(Wi, Wh, b, Wh_h, h0, X, dY, dh_T=None):
    """Gradients of a GRUv3 sequence given dL/dY and dL/dh_T. Keys: Wi, Wh, b, Wh_h, h0, X."""
    _, states = _gruv3_states(Wi, Wh, b, Wh_h, h0, X)
    return _run_sequence_backward(
        lambda state, x, dstate: gruv3_step_backward(Wi, Wh, b, Wh_h, *state, x, *dstate),
        ("Wi", "Wh", "b", "Wh_h"), ("h",), states, X, dY, (dh_T,))
