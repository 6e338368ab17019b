"""Tensor, Param, and differentiation: `gradient`, `value_and_gradient`, `Params`, `Grads`.

A Tensor is an ndarray value plus, while a `gradient` call records, its node on this
thread's tape. When the call ends the tape is reset and the Tensor keeps its value as a
constant: values never go stale, handles simply stop being recorded.
"""
import numbers

import numpy as np

from recur._core import registry  # noqa: F401  (fills the backward table)
from recur._core import tape as _tape
from recur._core.ops_elementwise import same_shape_arithmetic

__all__ = ["Tensor", "Param", "param", "Params", "Grads", "params", "gradient",
           "value_and_gradient", "as_array", "result_dtype", "float_dtype"]


class Tensor:
    """An array value, possibly recorded on the tape. Behaves like a read-only ndarray."""

    __slots__ = ("_value", "_tape", "_epoch", "_node")
    __array_priority__ = 1000

    def __init__(self, value, dtype=None):
        self._value = np.array(as_array(value, dtype), order="C", copy=True)
        self._value.flags.writeable = False
        self._tape, self._epoch, self._node = None, 0, -1

    @property
    def value(self):
        return self._value

    _constant = staticmethod(_tape.tensor_of)   # takes ownership of a fresh array, no copy

    # ------------------------------------------------------------ array-like
    shape = property(lambda self: self._value.shape)
    dtype = property(lambda self: self._value.dtype)
    ndim = property(lambda self: self._value.ndim)
    size = property(lambda self: self._value.size)

    def __len__(self):
        if self._value.ndim == 0:
            raise TypeError("len() of a 0-d Tensor")
        return len(self._value)

    def __iter__(self):
        if self._value.ndim == 0:
            raise TypeError("iteration over a 0-d Tensor")
        return (self[i] for i in range(len(self._value)))

    def numpy(self):
        """The value as a read-only ndarray (no copy)."""
        return self._value

    def __array__(self, dtype=None, copy=None):
        if copy:
            return np.array(self._value, dtype=dtype, copy=True)
        return self._value if dtype is None else self._value.astype(dtype, copy=False)

    def item(self):
        return self._value.item()

    def __float__(self):
        return float(self._value)

    def __int__(self):
        return int(self._value)

    def __bool__(self):
        return bool(self._value)

    def tolist(self):
        return self._value.tolist()

    def astype(self, dtype):
        from recur import ops
        return ops.cast(self, dtype)

    def __repr__(self):
        body = np.array2string(self._value, separator=", ", prefix=type(self).__name__ + "(")
        return f"{type(self).__name__}({body}, dtype={self._value.dtype})"

    # Comparisons are not differentiable; they give boolean ndarrays, as numpy does.
    def __lt__(self, other): return self._value < as_array(other)
    def __le__(self, other): return self._value <= as_array(other)
    def __gt__(self, other): return self._value > as_array(other)
    def __ge__(self, other): return self._value >= as_array(other)
    def __eq__(self, other): return self._value == as_array(other)
    def __ne__(self, other): return self._value != as_array(other)
    __hash__ = object.__hash__

    # ------------------------------------------------------------ differentiable operators
    # Two Tensors of one dtype and shape go straight to the one C call that recur.ops would
    # reach through three Python calls (a stepwise loss adds one step's loss at a time).
    def __add__(self, other):
        out = same_shape_arithmetic(_ADD, self, other)
        return _ops().add(self, other) if out is None else out

    def __radd__(self, other): return _ops().add(other, self)

    def __sub__(self, other):
        out = same_shape_arithmetic(_SUB, self, other)
        return _ops().sub(self, other) if out is None else out

    def __rsub__(self, other): return _ops().sub(other, self)

    def __mul__(self, other):
        out = same_shape_arithmetic(_MUL, self, other)
        return _ops().mul(self, other) if out is None else out

    def __rmul__(self, other): return _ops().mul(other, self)

    def __truediv__(self, other): return _ops().div(self, other)
    def __rtruediv__(self, other): return _ops().div(other, self)
    def __pow__(self, exponent): return _ops().power(self, exponent)
    def __neg__(self): return _ops().neg(self)
    def __pos__(self): return self
    def __abs__(self): return _ops().abs(self)
    def __matmul__(self, other): return _ops().matmul(self, other)
    def __rmatmul__(self, other): return _ops().matmul(other, self)
    def __getitem__(self, key): return _ops().getitem(self, key)

    @property
    def T(self):
        return _ops().transpose(self)

    def reshape(self, *shape):
        return _ops().reshape(self, shape[0] if len(shape) == 1 else shape)

    def sum(self, axis=None):
        return _ops().sum(self, axis)

    def mean(self, axis=None):
        return _ops().mean(self, axis)

    def max(self, axis=None):
        return _ops().max(self, axis)

    # ------------------------------------------------------------ numpy protocol
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return _ops().dispatch_ufunc(ufunc, method, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        return _ops().dispatch_function(func, args, kwargs)

    # ------------------------------------------------------------ pickling
    def __reduce__(self):
        return (type(self), (np.array(self._value),))


class Param(Tensor):
    """A trainable leaf: optimisers update `.value` in place."""

    __slots__ = ()

    def __init__(self, value, dtype=None):
        value = as_array(value, dtype or (np.float64 if is_float64(_dtype_of(value))
                                          else np.float32))
        self._value = np.array(value, order="C", copy=True)
        self._tape, self._epoch, self._node = None, 0, -1

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, new):
        new = np.asarray(new)
        if new.shape != self._value.shape:
            raise ValueError(f"Param value must keep its shape {self._value.shape}, got {new.shape}")
        self._value[...] = new


def param(array, dtype=None):
    """A `Param` holding a copy of `array`: float32 unless `array` is float64 or `dtype` says."""
    return Param(array, dtype)


_tape.set_tensor_types(Tensor, Param)
_ADD, _SUB, _MUL = registry.CODES["ADD"], registry.CODES["SUB"], registry.CODES["MUL"]

_ops_module = None


def _ops():
    global _ops_module
    if _ops_module is None:
        from recur import ops
        _ops_module = ops
    return _ops_module


# ---------------------------------------------------------------- dtypes

def _dtype_of(x):
    if isinstance(x, Tensor):
        return x._value.dtype
    return getattr(x, "dtype", None)


def native_dtype(dtype):
    """`dtype` in this machine's byte order. recur's kernels read an array's bytes as they
    lie, so an array in the other byte order (from a file written elsewhere) is converted
    first, as numpy's own arithmetic converts it."""
    dtype = np.dtype(dtype)
    return dtype if dtype.isnative else dtype.newbyteorder("=")


def float_dtype(dtype):
    """The float dtype recur computes in for input of `dtype` (in native byte order), or
    TypeError."""
    dtype = native_dtype(dtype)
    if dtype == np.float32 or dtype == np.float64:
        return dtype
    if dtype.kind in "biu":
        return np.dtype(np.float32)
    if dtype == np.float16:
        return np.dtype(np.float32)
    raise TypeError(f"recur computes on float32/float64 numbers; got an array of dtype {dtype}")


_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)


def is_float64(dtype):
    """Whether `dtype` (None for none) is float64, in either byte order."""
    return dtype is not None and native_dtype(dtype) == _F64


def result_dtype(*xs):
    """float64 if any operand is a float64 array or tensor, else float32. Python scalars and
    integer/bool arrays adopt the other operands' float type."""
    result = _F32
    for x in xs:
        kind = type(x)
        if kind is Tensor or kind is Param or kind is np.ndarray:
            dtype = x.dtype
            if dtype is _F64:
                result = _F64
                continue
            if dtype is _F32:
                continue
        elif kind is float or kind is int or kind is bool:
            continue
        elif isinstance(x, (complex, str, bytes)):
            raise TypeError(f"recur computes on real numbers; got {type(x).__name__} {x!r}")
        else:
            dtype = _dtype_of(x)
            if dtype is None:
                if isinstance(x, numbers.Real) and not isinstance(x, np.generic):
                    continue
                dtype = as_array(x).dtype
        if float_dtype(dtype) == _F64:
            result = _F64
    return result


def as_array(x, dtype=None):
    """The float value of a Tensor, array-like or scalar (TypeError otherwise), as the
    kernels read it: C-contiguous, aligned and in this machine's byte order."""
    if isinstance(x, Tensor):
        value = x._value
    else:
        if hasattr(x, "toarray") and not isinstance(x, np.ndarray):
            x = x.toarray()
        try:
            value = np.asarray(x)
        except Exception as err:  # ragged lists and the like
            raise TypeError(f"expected an array-like of numbers, got {type(x).__name__}: {err}") from None
        if value.dtype.kind not in "biuf":
            raise TypeError(
                f"recur computes on real numbers; got an array of dtype {value.dtype}"
                f" from {type(x).__name__}")
    target = float_dtype(value.dtype) if dtype is None else native_dtype(dtype)
    flags = value.flags
    if value.dtype != target or not (flags.c_contiguous and flags.aligned):
        # (ascontiguousarray would make a 0-d array 1-d; a misaligned one needs a copy.)
        value = np.array(value, dtype=target, order="C", copy=True)
    return value


# ---------------------------------------------------------------- parameters and gradients

class Params:
    """The trainable Params of a model in a stable order, each once (by identity)."""

    def __init__(self, items=()):
        self._list = []
        self._ids = set()
        for p in items:
            self.add(p)

    def add(self, p):
        if not isinstance(p, Param):
            raise TypeError(f"Params holds recur.Param objects, got {type(p).__name__}")
        if id(p) not in self._ids:
            self._ids.add(id(p))
            self._list.append(p)

    def __iter__(self):
        return iter(self._list)

    def __len__(self):
        return len(self._list)

    def __contains__(self, p):
        return id(p) in self._ids

    def __getitem__(self, i):
        return self._list[i]

    def __repr__(self):
        shapes = ", ".join(str(p.shape) for p in self._list)
        return f"Params([{shapes}])"


class Grads:
    """Gradients by parameter identity: `gs[p]` is an ndarray shaped like `p`, or None."""

    def __init__(self, params, arrays):
        self._params = list(params)
        self._by_id = {id(p): g for p, g in zip(self._params, arrays)}

    def __getitem__(self, p):
        try:
            return self._by_id[id(p)]
        except KeyError:
            raise KeyError(f"no gradient was taken for this {type(p).__name__} of shape "
                           f"{getattr(p, 'shape', '?')}: it is not among the parameters "
                           "passed to gradient") from None

    def get(self, p, default=None):
        return self._by_id.get(id(p), default)

    def __contains__(self, p):
        return id(p) in self._by_id

    def __iter__(self):
        return iter(self._params)

    def __len__(self):
        return len(self._params)

    def items(self):
        return ((p, self._by_id[id(p)]) for p in self._params)

    def __repr__(self):
        return f"Grads({len(self._params)} parameters)"


def params(*models):
    """`Params` of everything reachable from `models` (layers, lists, dicts, attributes)."""
    from recur.walk import find_params
    found = Params()
    for model in models:
        for p in find_params(model):
            found.add(p)
    return found


def _as_params(ps, caller):
    if isinstance(ps, Params):
        return ps
    if isinstance(ps, Param):
        return Params([ps])
    if isinstance(ps, (list, tuple)) and all(isinstance(p, Param) for p in ps):
        return Params(ps)
    # A model's walk skips plain arrays, so these would give an empty Grads: the user meant
    # them as parameters, which they are not.
    items = ps if isinstance(ps, (list, tuple)) else (ps,)
    for i, item in enumerate(items):
        if isinstance(item, (np.ndarray, Tensor)) and not isinstance(item, Param):
            what = "an ndarray" if isinstance(item, np.ndarray) else "a Tensor"
            where = f" as item {i} of a {type(ps).__name__}" if items is ps else ""
            raise TypeError(
                f"{caller}: ps must be recur.Params, a list of Params or a model; got "
                f"{what}{where}, which is not trainable (make one with recur.param(array))")
    return params(ps)


def value_and_gradient(f, ps):
    """Calls `f()` while recording and returns `(loss, grads)`: the loss as a float and the
    gradient of the loss with respect to every Param of `ps` (None where it does not depend
    on it)."""
    return _value_and_gradient(f, ps, "value_and_gradient")


def _value_and_gradient(f, ps, caller):
    ps = _as_params(ps, caller)
    tape = _tape.thread_tape()
    tape.start(ps)
    try:
        out = f()
        loss = _scalar_loss(out)
        root = tape.node_id(out) if isinstance(out, Tensor) else -1
        if root >= 0:
            tape.backward(root)
        grads = [tape.grad_of(tape.node_id(p), p.shape, p.dtype) if root >= 0 else None
                 for p in ps]
    finally:
        tape.finish()
    return loss, Grads(ps, grads)


def gradient(f, ps):
    """The gradient of the scalar `f()` with respect to the Params `ps`, as `Grads`."""
    return _value_and_gradient(f, ps, "gradient")[1]


def _scalar_loss(out):
    if isinstance(out, Tensor):
        if out.size != 1:
            raise ValueError(
                f"gradient needs f() to return a scalar; got a Tensor of shape {out.shape} "
                "(reduce it, e.g. with recur.sum or recur.mean)")
        return float(out._value.reshape(()))
    if isinstance(out, numbers.Real):
        return float(out)
    if isinstance(out, np.ndarray) and out.size == 1 and out.dtype.kind in "biuf":
        return float(out.reshape(()))
    shape = getattr(out, "shape", None)
    raise ValueError(f"gradient needs f() to return a scalar Tensor or number; got "
                     f"{type(out).__name__}" + (f" of shape {shape}" if shape is not None else ""))
