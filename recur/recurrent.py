"""Recurrent cells, the stateful `Recur` wrapper, and `reset`, `truncate`, `unroll` (SPEC §4).

A cell is a pure function of its state and one input: `new_state, y = cell(state, x)`, with
`x` of shape (in,) or (batch, in). Given a whole sequence `X` (time, batch, in) a cell runs
every step and returns `(final_state, Y)`, Y of shape (time, batch, out). Either way the cell
is one fused tape node, forward and backward in C (`_core/ops_rnn.pyx`, whose plain-numpy
twin is `recur/reference.py`).

`Recur` carries the state from call to call, like Flux's: `m(x)` runs
`m.state, y = m.cell(m.state, x)` and returns `y`.
"""
import numbers

import numpy as np

from recur import ops
from recur._core import ops_rnn as kernels
from recur.layers import FUSED_ACTIVATIONS, Layer, glorot_uniform, layer_input, zeros
from recur.tensor import Param, Tensor, as_array, is_float64, native_dtype
from recur.walk import containers

__all__ = ["RNNCell", "LSTMCell", "GRUCell", "GRUv3Cell", "Recur", "RNN", "LSTM", "GRU",
           "GRUv3", "reset", "truncate", "unroll"]


def _float_dtype(dtype, where):
    dtype = native_dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"{where}: dtype must be float32 or float64, got {dtype}")
    return dtype


def _in_dtype(x, dtype):
    """An input or state in the cell's dtype: a Tensor through a differentiable cast,
    anything else as an array. (The kernels check shapes and name the cell.)"""
    return ops.cast(x, dtype) if isinstance(x, Tensor) else as_array(x, dtype)


class _Cell(Layer):
    """What the four cells share. Each names its `kernel` and the shapes of its weights
    (`weight_shapes`), which both construction and `from_weights` follow; `n_states` is 2
    for the LSTM's (h, c) and 1 for the others' h."""

    n_states = 1

    def _build(self, n_in, n_out, init, initb, init_state, dtype, rng):
        name = type(self).__name__
        for what, n in (("in", n_in), ("out", n_out)):
            if not isinstance(n, numbers.Integral) or n < 0:
                raise ValueError(f"{name}: `{what}` must be a non-negative int, got {n!r}")
        dtype = _float_dtype(dtype, name)
        for weight, shape in self.weight_shapes(n_in, n_out).items():
            make = initb if weight == "b" else init
            setattr(self, weight, Param(make(*shape, rng=rng, dtype=dtype), dtype))
        self.state0 = self._state_params(
            [init_state(n_out, rng=rng, dtype=dtype) for _ in range(self.n_states)], dtype)

    def _state_params(self, arrays, dtype):
        params = tuple(Param(a, dtype) for a in arrays)
        return params if self.n_states > 1 else params[0]

    @classmethod
    def _from_arrays(cls, weights, state0, dtype, **attributes):
        """A cell with copies of `weights` (name -> array-like) as its parameters, in
        `dtype`: float64 if any of them is, else float32, unless given."""
        if dtype is None:
            dtype = (np.float64 if any(is_float64(getattr(w, "dtype", None))
                                       for w in weights.values()) else np.float32)
        dtype = _float_dtype(dtype, f"{cls.__name__}.from_weights")
        values = {name: as_array(w, dtype) for name, w in weights.items()}
        for name in ("Wi", "Wh"):
            if values[name].ndim != 2:
                raise ValueError(f"{cls.__name__}.from_weights: {name} must be a matrix, got "
                                 f"shape {values[name].shape}")
        n_in, n_out = values["Wi"].shape[1], values["Wh"].shape[1]
        expected = cls.weight_shapes(n_in, n_out)
        wrong = [f"{name} {values[name].shape} (expected {shape})"
                 for name, shape in expected.items() if values[name].shape != shape]
        if wrong:
            raise ValueError(f"{cls.__name__}.from_weights with {n_in} inputs and {n_out} "
                             f"outputs: wrong shapes " + ", ".join(wrong))
        cell = cls.__new__(cls)
        for name, value in attributes.items():
            setattr(cell, name, value)
        for name in expected:
            setattr(cell, name, Param(values[name], dtype))
        if state0 is None:
            states = [np.zeros(n_out, dtype)] * cls.n_states
        else:
            states = [as_array(s, dtype) for s in ((state0,) if cls.n_states == 1 else state0)]
            if len(states) != cls.n_states or any(s.size != n_out for s in states):
                raise ValueError(f"{cls.__name__}.from_weights: state0 must be "
                                 f"{cls.n_states} array(s) of {n_out} elements, got "
                                 f"{[s.shape for s in states]}")
        cell.state0 = cell._state_params([s.reshape(n_out) for s in states], dtype)
        return cell

    def _activation(self):
        """The ACT_* code of the kernel's activation; only the RNN cell has a choice."""
        return 0

    def _fused(self):
        """Whether the kernel computes the whole cell (an RNN cell's σ may be any function)."""
        return True

    def __call__(self, state, x):
        return kernels.call(self, state, x, _in_dtype)

    def __repr__(self):
        return f"{type(self).__name__}({self.Wi.shape[1]} => {self.Wh.shape[1]})"


class RNNCell(_Cell):
    """The vanilla cell: `h' = σ(x Wiᵀ + h Whᵀ + b)`, `y = h'`.

    σ = tanh, relu, sigmoid or identity runs fused in C; any other callable is composed
    from recur's ops, one step at a time."""

    kernel = kernels.RNN

    def __init__(self, n_in, n_out, σ=ops.tanh, *, init=glorot_uniform, initb=zeros,
                 init_state=zeros, dtype=np.float32, rng=None):
        self.σ = σ
        self._build(n_in, n_out, init, initb, init_state, dtype, rng)

    @staticmethod
    def weight_shapes(n_in, n_out):
        return {"Wi": (n_out, n_in), "Wh": (n_out, n_out), "b": (n_out,)}

    @classmethod
    def from_weights(cls, Wi, Wh, b, state0=None, σ=ops.tanh, *, dtype=None):
        """A cell with the given weights (any array-likes, sparse matrices included)."""
        return cls._from_arrays({"Wi": Wi, "Wh": Wh, "b": b}, state0, dtype, σ=σ)

    def _activation(self):
        return FUSED_ACTIVATIONS[self.σ]

    def _fused(self):
        return self.σ in FUSED_ACTIVATIONS

    def __call__(self, h, x):
        if self._fused():
            return super().__call__(h, x)
        x, _ = layer_input(self, x, self.Wi.dtype, self.Wi.shape[1])
        if x.ndim == 3:
            ys = []
            for x_t in x:
                h, y = self(h, x_t)
                ys.append(y)
            return h, ops.stack(ys)
        h = self.σ(x @ self.Wi.T + _in_dtype(h, self.Wi.dtype) @ self.Wh.T + self.b)
        return h, h

    def __repr__(self):
        name = getattr(self.σ, "__name__", repr(self.σ))
        return f"RNNCell({self.Wi.shape[1]} => {self.Wh.shape[1]}, {name})"


class LSTMCell(_Cell):
    """Long short-term memory, state `(h, c)`. With gate blocks `[i; f; g; o]` of
    `x Wiᵀ + h Whᵀ + b` and s the logistic sigmoid:
    `c' = s(f) c + s(i) tanh(g)`, `h' = s(o) tanh(c')`, `y = h'`.
    The forget block of `b` starts at 1, as in Flux."""

    kernel = kernels.LSTM
    n_states = 2

    def __init__(self, n_in, n_out, *, init=glorot_uniform, initb=zeros, init_state=zeros,
                 dtype=np.float32, rng=None):
        self._build(n_in, n_out, init, initb, init_state, dtype, rng)
        self.b.value[n_out:2 * n_out] = 1

    @staticmethod
    def weight_shapes(n_in, n_out):
        return {"Wi": (4 * n_out, n_in), "Wh": (4 * n_out, n_out), "b": (4 * n_out,)}

    @classmethod
    def from_weights(cls, Wi, Wh, b, state0=None, *, dtype=None):
        """A cell with the given weights; `state0` is a pair (h0, c0) or None for zeros."""
        return cls._from_arrays({"Wi": Wi, "Wh": Wh, "b": b}, state0, dtype)


class GRUCell(_Cell):
    """Gated recurrent unit as in Flux 0.13, blocks `[r; z; n]`:
    `r = s(x Wi_rᵀ + h Wh_rᵀ + b_r)`, `z` likewise,
    `n = tanh(x Wi_nᵀ + r ⊙ (h Wh_nᵀ) + b_n)`, `h' = (1 - z) n + z h`, `y = h'`."""

    kernel = kernels.GRU

    def __init__(self, n_in, n_out, *, init=glorot_uniform, initb=zeros, init_state=zeros,
                 dtype=np.float32, rng=None):
        self._build(n_in, n_out, init, initb, init_state, dtype, rng)

    @staticmethod
    def weight_shapes(n_in, n_out):
        return {"Wi": (3 * n_out, n_in), "Wh": (3 * n_out, n_out), "b": (3 * n_out,)}

    @classmethod
    def from_weights(cls, Wi, Wh, b, state0=None, *, dtype=None):
        """A cell with the given weights (any array-likes, sparse matrices included)."""
        return cls._from_arrays({"Wi": Wi, "Wh": Wh, "b": b}, state0, dtype)


class GRUv3Cell(_Cell):
    """The GRU of the original paper (v3 of arXiv:1406.1078): as GRUCell, but the reset gate
    scales h before a matrix of its own, `n = tanh(x Wi_nᵀ + (r ⊙ h) Wh_hᵀ + b_n)`;
    `Wh` holds only the r and z blocks."""

    kernel = kernels.GRUV3

    def __init__(self, n_in, n_out, *, init=glorot_uniform, initb=zeros, init_state=zeros,
                 dtype=np.float32, rng=None):
        self._build(n_in, n_out, init, initb, init_state, dtype, rng)

    @staticmethod
    def weight_shapes(n_in, n_out):
        return {"Wi": (3 * n_out, n_in), "Wh": (2 * n_out, n_out), "b": (3 * n_out,),
                "Wh_h": (n_out, n_out)}

    @classmethod
    def from_weights(cls, Wi, Wh, b, Wh_h, state0=None, *, dtype=None):
        """A cell with the given weights (any array-likes, sparse matrices included)."""
        return cls._from_arrays({"Wi": Wi, "Wh": Wh, "b": b, "Wh_h": Wh_h}, state0, dtype)


# ---------------------------------------------------------------- the stateful wrapper

def _shape(x):
    return x.shape if hasattr(x, "shape") else np.shape(x)


class Recur(Layer):
    """`m(x)` runs `m.state, y = m.cell(m.state, x)` and returns `y`.

    `cell` is a recur cell or any function `f(state, x) -> (state, y)`; `state0` defaults to
    `cell.state0`, and `m.reset()` sets the state back to that very object, so after a reset
    a trainable state0 receives gradient.

    Inputs are one step, (in,) or (batch, in), or a whole sequence (time, batch, in), which
    returns (time, batch, out): one fused node for recur's cells, a step loop for a function.
    An unbatched state broadcasts over the batch on the first step after a reset (its
    gradient sums over the batch); after that the batch is fixed until the next reset, and
    an input of another batch size raises ValueError. The state never keeps a history
    between `gradient` calls: each call records a fresh tape.
    """

    def __init__(self, cell, state0=None):
        if state0 is None:
            if not hasattr(cell, "state0"):
                raise TypeError(f"Recur({getattr(cell, '__name__', cell)!r}) needs a state0: "
                                "a plain function has no initial state of its own")
            state0 = cell.state0
        self.cell = cell
        self.state0 = state0
        self.state = state0

    def __call__(self, x):
        cell = self.cell
        if isinstance(cell, _Cell) and cell._fused():
            # One C call checks the batch and runs the kernel (_core/ops_rnn.pyx).
            self.state, y = kernels.call(cell, self.state, x, _in_dtype, self)
            return y
        if not isinstance(cell, _Cell):
            if len(_shape(x)) == 3:
                return ops.stack([self(x_t) for x_t in x])
            self.state, y = cell(self.state, x)
            return y
        self._check_batch(_shape(x))
        self.state, y = cell(self.state, x)
        return y

    def _check_batch(self, x_shape):
        batch = tuple(x_shape[1:-1] if len(x_shape) == 3 else x_shape[:-1])
        h = self.state[0] if self.cell.n_states > 1 else self.state
        state_batch = tuple(_shape(h)[:-1])
        if batch == state_batch or state_batch == () and self.state is self.state0:
            return
        old, new = int(np.prod(state_batch)), int(np.prod(batch))
        detail = "" if old != new else (" (a single input after a batch)" if batch == ()
                                        else " (a batch after single inputs)")
        raise ValueError(f"Recur({self.cell!r}): batch size changed from {old} to {new}"
                         f"{detail} without reset; call recur.reset(model)")

    def reset(self):
        """Sets the state back to state0."""
        self.state = self.state0


def RNN(n_in, n_out, σ=ops.tanh, **options):
    """`Recur(RNNCell(n_in, n_out, σ, **options))`."""
    return Recur(RNNCell(n_in, n_out, σ, **options))


def LSTM(n_in, n_out, **options):
    """`Recur(LSTMCell(n_in, n_out, **options))`."""
    return Recur(LSTMCell(n_in, n_out, **options))


def GRU(n_in, n_out, **options):
    """`Recur(GRUCell(n_in, n_out, **options))`."""
    return Recur(GRUCell(n_in, n_out, **options))


def GRUv3(n_in, n_out, **options):
    """`Recur(GRUv3Cell(n_in, n_out, **options))`."""
    return Recur(GRUv3Cell(n_in, n_out, **options))


# ---------------------------------------------------------------- whole models

def _recurs(model):
    return [m for m in containers(model) if isinstance(m, Recur)]


def reset(model):
    """Sets the state of every `Recur` inside `model` back to its state0."""
    for m in _recurs(model):
        m.reset()


def _detached(state):
    if isinstance(state, (tuple, list)):
        return type(state)(_detached(s) for s in state)
    return ops.detach(state)


def truncate(model):
    """Keeps every `Recur`'s state value but cuts its history: gradients stop flowing into
    the steps before this call. A state just reset has no history: it stays `state0`, still
    trainable and still free to take any batch size."""
    for m in _recurs(model):
        if m.state is not m.state0:
            m.state = _detached(m.state)


def unroll(model, n):
    """A function of a list of `n` inputs returning the `n` outputs of `model`, step by
    step (Flux's oldest recurrent API)."""
    def unrolled(xs):
        xs = list(xs)
        if len(xs) != n:
            raise ValueError(f"unroll(model, {n}) takes a list of {n} inputs, got {len(xs)}")
        return [model(x) for x in xs]
    return unrolled
