"""Feed-forward layers, initialisers and recur's random generator."""
import numbers

import numpy as np

from recur import ops
from recur._core import ops_dense
from recur._core.tape import recording_tape
from recur.tensor import Param, Tensor, as_array

__all__ = ["Layer", "Dense", "Chain", "Embedding", "Dropout", "glorot_uniform", "glorot_normal",
           "zeros", "ones", "seed", "default_rng", "layer_input", "FUSED_ACTIVATIONS"]

_rng = np.random.default_rng()


def seed(n):
    """Seeds recur's default generator (initialisers, Dropout, DataLoader shuffling)."""
    global _rng
    _rng = np.random.default_rng(n)


def default_rng():
    return _rng


# ---------------------------------------------------------------- initialisers

def _fans(shape):
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, shape[0]
    receptive = int(np.prod(shape[2:], dtype=np.int64))
    return shape[1] * receptive, shape[0] * receptive   # (out, in, ...) storage


def glorot_uniform(*shape, rng=None, dtype=np.float32):
    """U(±√(6 / (fan_in + fan_out))) over the whole array (a stacked gate matrix counts as
    one matrix)."""
    fan_in, fan_out = _fans(shape)
    limit = np.sqrt(6.0 / max(fan_in + fan_out, 1))   # both fans 0: an empty array
    return (rng or _rng).uniform(-limit, limit, size=shape).astype(dtype)


def glorot_normal(*shape, rng=None, dtype=np.float32):
    """N(0, 2 / (fan_in + fan_out)) over the whole array."""
    fan_in, fan_out = _fans(shape)
    scale = np.sqrt(2.0 / max(fan_in + fan_out, 1))    # both fans 0: an empty array
    return ((rng or _rng).standard_normal(size=shape) * scale).astype(dtype)


def zeros(*shape, rng=None, dtype=np.float32):
    return np.zeros(shape, dtype=dtype)


def ones(*shape, rng=None, dtype=np.float32):
    return np.ones(shape, dtype=dtype)


# ---------------------------------------------------------------- input checks

def layer_input(layer, x, dtype, features):
    """`x` as a value of `dtype` (a recorded Tensor of another dtype goes through a cast
    node) after checking its last axis holds `features`."""
    if isinstance(x, Tensor):
        shape = x.shape
    else:
        x = as_array(x)
        shape = x.shape
    if len(shape) == 0:
        raise ValueError(f"{layer!r} expects an array whose last axis has {features} features, "
                         "got a scalar")
    if shape[-1] != features:
        raise ValueError(f"{layer!r} expects {features} features in the last axis of its input, "
                         f"got shape {shape}")
    if isinstance(x, Tensor):
        x = ops.cast(x, dtype)
        return x, x._value
    value = as_array(x, dtype)
    return value, value


# Activations computed inside the fused kernels, by code (ACT_* of _core/ops_dense.pxd).
FUSED_ACTIVATIONS = {ops.identity: 0, ops.tanh: 1, np.tanh: 1, ops.sigmoid: 2, ops.relu: 3}


def _name(f):
    return getattr(f, "__name__", repr(f))


# ---------------------------------------------------------------- layers

class Layer:
    """What every recur layer shares: saving and loading its state, and the display."""

    def state_dict(self):
        """{dotted name: ndarray copy} of the parameters and Recur states."""
        from recur.io import state_dict
        return state_dict(self)

    def load_state_dict(self, arrays):
        """Loads `arrays` after checking every name and shape; changes nothing on a mismatch."""
        from recur.io import load_state_dict
        load_state_dict(self, arrays)

    def __repr__(self):
        from recur.show import show
        return show(self)


class Dense(Layer):
    """`σ(x @ W.T + b)` over the last axis of any input; one fused node (GEMM, bias and a
    tanh/sigmoid/relu activation in one pass)."""

    def __init__(self, n_in, n_out, σ=ops.identity, *, bias=True, init=glorot_uniform,
                 dtype=np.float32, rng=None):
        for name, n in (("in", n_in), ("out", n_out)):
            if not isinstance(n, numbers.Integral) or n < 0:
                raise ValueError(f"Dense: `{name}` must be a non-negative int, got {n!r}")
        self.W = Param(init(n_out, n_in, rng=rng, dtype=dtype), dtype)
        self.b = Param(np.zeros(n_out, dtype=dtype), dtype) if bias else None
        self.σ = σ

    @classmethod
    def from_weights(cls, W, b=None, σ=ops.identity):
        W = as_array(W)
        dense = cls.__new__(cls)
        dense.W = Param(W, W.dtype)
        dense.b = None if b is None else Param(as_array(b, W.dtype), W.dtype)
        if dense.b is not None and dense.b.shape != (W.shape[0],):
            raise ValueError(f"Dense.from_weights: b must have shape ({W.shape[0]},), got {dense.b.shape}")
        dense.σ = σ
        return dense

    def __call__(self, x):
        return ops_dense.call(self, x, layer_input, FUSED_ACTIVATIONS)

    def __repr__(self):
        out, n_in = self.W.shape
        act = "" if self.σ is ops.identity else f", {_name(self.σ)}"
        bias = "" if self.b is not None else ", bias=False"
        return f"Dense({n_in} => {out}{act}{bias})"


class Chain(Layer):
    """Calls its layers in order; a layer may be any callable."""

    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        self.layers = tuple(layers)

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Chain(*self.layers[i])
        return self.layers[i]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def _children(self):
        return [(str(i), layer) for i, layer in enumerate(self.layers)]


class Embedding(Layer):
    """Integer indices of any shape → vectors of `dim`, shape `(..., dim)`. Row `i` of `W`
    (vocab, dim) is the vector of index `i`."""

    def __init__(self, vocab, dim, *, init=None, dtype=np.float32, rng=None):
        for name, n in (("vocab", vocab), ("dim", dim)):
            if not isinstance(n, numbers.Integral) or n <= 0:
                raise ValueError(f"Embedding: `{name}` must be a positive int, got {n!r}")
        weights = ((rng or _rng).standard_normal((vocab, dim)) if init is None
                   else init(vocab, dim, rng=rng, dtype=dtype))
        self.W = Param(np.asarray(weights, dtype=dtype), dtype)

    def __call__(self, indices):
        if isinstance(indices, Tensor):
            indices = indices._value
        indices = np.asarray(indices)
        if indices.dtype.kind not in "iu":
            raise TypeError(f"{self!r} expects integer indices, got an array of dtype {indices.dtype}")
        vocab = self.W.shape[0]
        if indices.size and (indices.min() < 0 or indices.max() >= vocab):
            bad = indices[(indices < 0) | (indices >= vocab)].ravel()[0]
            raise IndexError(f"{self!r}: index {bad} is out of range [0, {vocab})")
        return ops.getitem(self.W, indices.astype(np.int64, copy=False))

    def __repr__(self):
        return f"Embedding({self.W.shape[0]} => {self.W.shape[1]})"


class Dropout(Layer):
    """Zeroes each element with probability `p` and scales the rest by 1/(1-p) — only while
    a `gradient`/`train` call is recording; the identity otherwise."""

    def __init__(self, p, *, rng=None):
        if not 0 <= p < 1:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.rng = rng

    def __call__(self, x):
        if self.p == 0 or recording_tape() is None:
            return x
        shape = np.shape(x._value if isinstance(x, Tensor) else x)
        dtype = x.dtype if isinstance(x, Tensor) else np.float32
        keep = (self.rng or _rng).random(shape) >= self.p
        return ops.mul(x, (keep / (1 - self.p)).astype(dtype))

    def __repr__(self):
        return f"Dropout({self.p})"
