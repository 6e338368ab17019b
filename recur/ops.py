"""The differentiable ops. Forward values come from numpy in the op's float dtype; the tape
records a node whose backward runs in C (`_core/ops_*.pyx`)."""
import builtins
import math
import numbers

import numpy as np

from recur._core import ops_dense
from recur._core.ops_elementwise import logistic_values, same_shape_arithmetic
from recur._core.registry import CODES
from recur._core.tape import alias, is_recorded, record, record_many
from recur.tensor import Param, Tensor, as_array, result_dtype

__all__ = [
    "add", "sub", "mul", "div", "power", "neg", "matmul", "tanh", "sigmoid", "σ", "relu",
    "leakyrelu", "elu", "softplus", "exp", "log", "sqrt", "abs", "square", "sum", "mean", "max",
    "softmax", "logsoftmax", "reshape", "transpose", "concat", "stack", "where", "clip",
    "detach", "identity", "cast", "broadcast_to", "getitem",
]

OP = CODES


def _operand(x, dtype):
    """(value in `dtype`, the object the tape knows x by). A recorded Tensor of another
    dtype goes through a cast node so its gradient comes back in its own dtype."""
    if isinstance(x, Tensor):
        if x._value.dtype == dtype:
            return x._value, x
        cast_x = cast(x, dtype)
        return cast_x._value, cast_x
    return as_array(x, dtype), x


def _contiguous(out):
    out = np.asarray(out)
    return out if out.flags.c_contiguous else np.asarray(out, order="C")


def cast(x, dtype):
    """`x` in float `dtype`; differentiable."""
    dtype = np.dtype(dtype)
    if isinstance(x, Tensor):
        if x._value.dtype == dtype:
            return x
        value = x._value.astype(dtype)
        return record(OP["CAST"], value, (x,), (x._value,))
    return Tensor(as_array(x, dtype))


def detach(x):
    """The value of `x` as a constant: gradients do not flow through it."""
    if isinstance(x, Tensor):
        return Tensor._constant(x._value) if not isinstance(x, Param) else Tensor(x._value)
    return Tensor(x)


def identity(x):
    return x


# ---------------------------------------------------------------- broadcasting arithmetic

def _contiguous_strides(shape):
    strides, step = [0] * len(shape), 1
    for d in range(len(shape) - 1, -1, -1):
        strides[d] = step
        step *= shape[d]
    return strides


def _broadcast_strides(shape, out_shape):
    """Element strides of a C-contiguous array of `shape` read at the indices of the
    broadcast `out_shape`: 0 along the axes it is broadcast on."""
    padded = (1,) * (len(out_shape) - len(shape)) + tuple(shape)
    strides = _contiguous_strides(padded)
    return [0 if n == 1 and m != 1 else s for n, m, s in zip(padded, out_shape, strides)]


def _binary_layout(a_shape, b_shape, out_shape):
    if a_shape == b_shape == out_shape:
        n = math.prod(out_shape)
        return [1, n, 1, 1]
    out_shape = tuple(out_shape) or (1,)
    return ([len(out_shape)] + list(out_shape) + _broadcast_strides(a_shape, out_shape)
            + _broadcast_strides(b_shape, out_shape))


def _binary(op, ufunc, a, b):
    dtype = result_dtype(a, b)
    a_value, a = _operand(a, dtype)
    b_value, b = _operand(b, dtype)
    out = _contiguous(ufunc(a_value, b_value))
    if not (is_recorded(a) or is_recorded(b)):
        return Tensor._constant(out)
    layout = _binary_layout(a_value.shape, b_value.shape, out.shape)
    return record(op, out, (a, b), (a_value, b_value), layout)


def _arithmetic(op, ufunc, a, b):
    """`_binary` for +, - and *, where two Tensors of one dtype and shape take one C call."""
    out = same_shape_arithmetic(op, a, b)
    return _binary(op, ufunc, a, b) if out is None else out


def add(a, b):
    return _arithmetic(OP["ADD"], np.add, a, b)


def sub(a, b):
    return _arithmetic(OP["SUB"], np.subtract, a, b)


def mul(a, b):
    return _arithmetic(OP["MUL"], np.multiply, a, b)


def div(a, b):
    return _binary(OP["DIV"], np.true_divide, a, b)


def where(cond, a, b):
    """`a` where `cond` holds, else `b` (broadcasting); differentiable in `a` and `b`."""
    cond = np.asarray(cond.value if isinstance(cond, Tensor) else cond).astype(bool)
    dtype = result_dtype(a, b)
    a_value, a = _operand(a, dtype)
    b_value, b = _operand(b, dtype)
    out = _contiguous(np.where(cond, a_value, b_value))
    if not (is_recorded(a) or is_recorded(b)):
        return Tensor._constant(out)
    mask = np.asarray(np.broadcast_to(cond, out.shape), dtype=dtype, order="C")
    layout = _binary_layout(a_value.shape, b_value.shape, out.shape)
    return record(OP["WHERE"], out, (a, b), (a_value, b_value), layout, (), (mask,))


# ---------------------------------------------------------------- elementwise functions

def _unary(op, fn, x, reals=()):
    if type(x) is Tensor:
        # The common case inside a model, kept short: the op's overhead is the point.
        value = x._value
        out = fn(value)
        if type(out) is not np.ndarray:
            out = np.asarray(out)
        return record(op, out, (x,), (value,), (), reals)
    dtype = result_dtype(x)
    value, x = _operand(x, dtype)
    out = _contiguous(fn(value))
    if out.dtype != dtype:
        out = out.astype(dtype)
    return record(op, out, (x,), (value,), (), reals)


def neg(x):
    return _unary(OP["NEG"], np.negative, x)


def tanh(x):
    return _unary(OP["TANH"], np.tanh, x)


def sigmoid(x):
    return _unary(OP["SIGMOID"], logistic_values, x)


σ = sigmoid


def relu(x):
    return _unary(OP["RELU"], lambda v: np.maximum(v, 0), x)


def leakyrelu(x, a=0.01):
    return _unary(OP["LEAKYRELU"], lambda v: np.where(v > 0, v, v * v.dtype.type(a)), x, (a,))


def _elu(v, alpha):
    # expm1 of the negative part only: the positive values it would have overflowed on
    # (v > 88 in float32) warned, though np.where then discarded them.
    return np.where(v > 0, v, v.dtype.type(alpha) * np.expm1(np.minimum(v, 0)))


def elu(x, alpha=1.0):
    return _unary(OP["ELU"], lambda v: _elu(v, alpha), x, (alpha,))


def softplus(x):
    return _unary(OP["SOFTPLUS"], lambda v: np.logaddexp(v.dtype.type(0), v), x)


def exp(x):
    return _unary(OP["EXP"], np.exp, x)


def log(x):
    return _unary(OP["LOG"], np.log, x)


def sqrt(x):
    return _unary(OP["SQRT"], np.sqrt, x)


def abs(x):
    return _unary(OP["ABS"], np.abs, x)


def square(x):
    return _unary(OP["SQUARE"], np.square, x)


def power(x, exponent):
    """`x ** exponent` for a scalar exponent."""
    if isinstance(exponent, Tensor) or not isinstance(exponent, numbers.Real):
        raise TypeError("recur.power takes a scalar (Python or numpy number) exponent; "
                        f"got {type(exponent).__name__}")
    exponent = float(exponent)
    if exponent == 2.0:
        return square(x)
    return _unary(OP["POW"], lambda v: np.power(v, v.dtype.type(exponent)), x, (exponent,))


def clip(x, lo, hi):
    """`x` limited to [lo, hi]; the gradient passes where lo <= x <= hi."""
    lo = -np.inf if lo is None else float(lo)
    hi = np.inf if hi is None else float(hi)
    if lo > hi:
        raise ValueError(f"recur.clip needs lo <= hi, got lo={lo}, hi={hi}")
    return _unary(OP["CLIP"], lambda v: np.clip(v, lo, hi), x, (lo, hi))


# ---------------------------------------------------------------- reductions

def _axes(axis, ndim, name):
    if axis is None:
        return tuple(range(ndim))
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    normalised = []
    for a in axes:
        if not isinstance(a, numbers.Integral):
            raise TypeError(f"recur.{name}: axis must be an int or a tuple of ints, got {axis!r}")
        if not -ndim <= a < builtins.max(ndim, 1):
            raise ValueError(f"recur.{name}: axis {a} is out of range for an array with "
                             f"{ndim} dimensions")
        normalised.append(int(a) % builtins.max(ndim, 1))
    return tuple(sorted(set(normalised)))


def _reduction_layout(in_shape, kept_shape):
    """Index space = the input's shape; dst = the input gradient; src = the reduced
    gradient read with stride 0 along the reduced axes."""
    shape = tuple(in_shape) or (1,)
    kept = tuple(kept_shape) or (1,)
    return ([len(shape), 0] + list(shape) + _contiguous_strides(shape)
            + _broadcast_strides(kept, shape))


_REDUCERS = {"sum": np.add.reduce, "mean": np.add.reduce, "max": np.maximum.reduce}


def _reduce_all(op, x, mean):
    # The whole-array sum or mean that ends every loss: one flat index space.
    value = x._value
    n = value.size
    total = np.add.reduce(value.reshape(-1))
    scale = 1.0 / n if mean and n else 1.0
    out = np.asarray(total * value.dtype.type(scale) if mean else total, dtype=value.dtype)
    return record(op, out, (x,), (value,), (1, 0, n, 1, 0), (scale,))


def _reduce(op, x, axis, keepdims, name):
    if axis is None and not keepdims and type(x) is Tensor and name != "max" and x._value.size:
        return _reduce_all(op, x, name == "mean")
    dtype = result_dtype(x)
    value, x = _operand(x, dtype)
    axes = _axes(axis, value.ndim, name)
    count = math.prod(value.shape[a] for a in axes)
    if name == "max" and count == 0:
        # As numpy: a reduction over no values has no maximum, even where the result would
        # be empty too; over values of other, empty, rows it gives an empty result.
        raise ValueError(f"recur.max over axes {axes} of an array of shape {value.shape}: "
                         "those axes hold no values, and an empty set has no maximum")
    # The ufunc's reduce directly: numpy's sum/mean wrappers cost more than the work here.
    kept = _REDUCERS[name](value, axis=axes, keepdims=True)
    if name == "mean":
        # A mean of no values is NaN, as numpy's and torch's are.
        kept = kept * dtype.type(1.0 / count) if count else np.full_like(kept, np.nan)
    out = kept if keepdims else kept.reshape([n for d, n in enumerate(value.shape) if d not in axes])
    out = _contiguous(out)
    if not is_recorded(x):
        return Tensor._constant(out)
    layout = _reduction_layout(value.shape, kept.shape)
    if name == "max":
        # Ties share the gradient equally.
        winners = (value == kept).astype(dtype)
        weights = np.asarray(winners / np.add.reduce(winners, axis=axes, keepdims=True), order="C")
        return record(op, out, (x,), (value,), layout, (1.0,), (weights,))
    scale = 1.0 if name == "sum" else 1.0 / builtins.max(count, 1)
    return record(op, out, (x,), (value,), layout, (scale,))


def sum(x, axis=None, keepdims=False):
    return _reduce(OP["SUM"], x, axis, keepdims, "sum")


def mean(x, axis=None, keepdims=False):
    return _reduce(OP["SUM"], x, axis, keepdims, "mean")


def max(x, axis=None, keepdims=False):
    """Maximum along `axis`; tied maxima share the gradient equally."""
    return _reduce(OP["MAX"], x, axis, keepdims, "max")


def _softmax(op, x, axis, log_domain):
    dtype = result_dtype(x)
    value, x = _operand(x, dtype)
    if value.ndim == 0:
        raise ValueError("recur.softmax needs at least one axis, got a 0-d value")
    axis = _axes(axis, value.ndim, "softmax")[0]
    if value.shape[axis] == 0:
        out = value.copy()      # along an axis of length 0 there is nothing to normalise
    else:
        shifted = value - np.max(value, axis=axis, keepdims=True)
        if log_domain:
            out = shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))
        else:
            e = np.exp(shifted)
            out = e / np.sum(e, axis=axis, keepdims=True)
    out = _contiguous(out)
    outer = math.prod(value.shape[:axis])
    inner = math.prod(value.shape[axis + 1:])
    return record(op, out, (x,), (value,), (outer, value.shape[axis], inner))


def softmax(x, axis=-1):
    return _softmax(OP["SOFTMAX"], x, axis, False)


def logsoftmax(x, axis=-1):
    return _softmax(OP["LOGSOFTMAX"], x, axis, True)


# ---------------------------------------------------------------- layout

def _view_of(x, value):
    """A Tensor for `value`, a C-contiguous view into x's value: shares x's gradient."""
    offset = (value.__array_interface__["data"][0]
              - x._value.__array_interface__["data"][0]) // x._value.itemsize
    if isinstance(x, Param):
        # A Param's memory changes under the optimiser; a view must not.
        value = value.copy()
    return alias(x, value, offset)


def reshape(x, shape):
    if not isinstance(x, Tensor):
        return Tensor._constant(np.reshape(as_array(x), shape).copy())
    try:
        value = x._value.reshape(shape)
    except ValueError:
        raise ValueError(f"recur.reshape: cannot reshape a Tensor of shape {x.shape} "
                         f"(size {x.size}) into {shape}") from None
    return _view_of(x, value)


def _strided_layout(view, base):
    """Index space = the view's shape; dst = the base gradient at the view's strides."""
    shape = view.shape or (1,)
    itemsize = base.itemsize
    offset = (view.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // itemsize
    strides = [s // itemsize for s in view.strides] or [1]
    return [len(shape), offset] + list(shape) + strides + _contiguous_strides(shape)


def _strided(x, view):
    out = np.asarray(view, order="C")
    if not is_recorded(x):
        return Tensor._constant(out)
    return record(OP["STRIDED"], out, (x,), (x._value,), _strided_layout(view, x._value), (1.0,))


def transpose(x, axes=None):
    if not isinstance(x, Tensor):
        return Tensor._constant(np.asarray(np.transpose(as_array(x), axes), order="C"))
    view = np.transpose(x._value, axes)
    if view.flags.c_contiguous:
        return _view_of(x, view)
    return _strided(x, view)


def broadcast_to(x, shape):
    dtype = result_dtype(x)
    value, x = _operand(x, dtype)
    shape = tuple(shape)
    out = np.array(np.broadcast_to(value, shape), order="C")   # never a view of a Param
    if not is_recorded(x):
        return Tensor._constant(out)
    index_shape = shape or (1,)
    layout = ([len(index_shape), 0] + list(index_shape) + _broadcast_strides(value.shape, index_shape)
              + _contiguous_strides(index_shape))
    return record(OP["BROADCAST"], out, (x,), (value,), layout, (1.0,))


def _is_basic(key):
    parts = key if isinstance(key, tuple) else (key,)
    return builtins.all(
        isinstance(k, (numbers.Integral, slice)) or k is None or k is Ellipsis
        for k in parts) and not builtins.any(isinstance(k, (bool, np.bool_)) for k in parts)


def getitem(x, key):
    """`x[key]`, differentiable for basic and advanced (integer or boolean) indexing."""
    if isinstance(key, Tensor):
        key = key._value
    elif isinstance(key, tuple):
        key = tuple(k._value if isinstance(k, Tensor) else k for k in key)
    if not isinstance(x, Tensor):
        x = Tensor(x)
    value = x._value
    if _is_basic(key):
        # A trailing Ellipsis makes numpy return a 0-d view instead of a scalar copy.
        parts = key if isinstance(key, tuple) else (key,)
        view = value[parts if Ellipsis in parts else parts + (Ellipsis,)]
        if view.flags.c_contiguous:
            return _view_of(x, view)
        return _strided(x, view)
    if isinstance(key, (list, np.ndarray)) and np.asarray(key).dtype.kind in "iu" and value.ndim >= 1:
        # Whole rows by integer index: a gather of rows.
        rows = np.asarray(key, dtype=np.int64)
        out = _contiguous(value[rows])
        inner = math.prod(value.shape[1:])
        index = np.ascontiguousarray(np.where(rows < 0, rows + value.shape[0], rows).ravel())
    else:
        flat_index = np.arange(value.size, dtype=np.int64).reshape(value.shape)[key]
        out = _contiguous(value.reshape(-1)[flat_index])
        inner = 1
        index = np.ascontiguousarray(flat_index.ravel())
    return record(OP["GATHER"], out, (x,), (value,), (inner, index.size), (), (index,))


def _joined(xs, name):
    if isinstance(xs, (Tensor, np.ndarray)):
        xs = list(xs)
    xs = list(xs)
    if not xs:
        raise ValueError(f"recur.{name} needs at least one array")
    dtype = result_dtype(*xs)
    pairs = [_operand(x, dtype) for x in xs]
    return [v for v, _ in pairs], [t for _, t in pairs]


def _join(xs, axis, name, numpy_join):
    values, tensors = _joined(xs, name)
    try:
        out = _contiguous(numpy_join(values, axis=axis))
    except (ValueError, np.exceptions.AxisError) as err:
        shapes = [v.shape for v in values]
        raise ValueError(f"recur.{name} along axis {axis}: shapes {shapes} do not fit: {err}") from None
    axis = axis % out.ndim
    inner = math.prod(out.shape[axis + 1:])
    outer = math.prod(out.shape[:axis])
    # Each input is a block of `width` elements in every one of the `outer` rows.
    widths = ([v.shape[axis] * inner for v in values] if numpy_join is np.concatenate
              else [inner] * len(values))
    return record_many(OP["CONCAT"], out, tensors, values, [outer] + widths)


def concat(xs, axis=0):
    """Joins arrays along an existing axis."""
    return _join(xs, axis, "concat", np.concatenate)


def stack(xs, axis=0):
    """Joins arrays of one shape along a new axis."""
    return _join(xs, axis, "stack", np.stack)


# ---------------------------------------------------------------- matrix products

def matmul(a, b):
    """`a @ b` with numpy's rules: 1-D operands, stacks of matrices, batch broadcasting."""
    dtype = result_dtype(a, b)
    a_value, a = _operand(a, dtype)
    b_value, b = _operand(b, dtype)
    if a_value.ndim == 0 or b_value.ndim == 0:
        raise ValueError("recur.matmul: operands must be at least 1-D (use * for scalars); "
                         f"got shapes {a_value.shape} and {b_value.shape}")
    a_shape = (1,) + a_value.shape if a_value.ndim == 1 else a_value.shape
    b_shape = b_value.shape + (1,) if b_value.ndim == 1 else b_value.shape
    if a_shape[-1] != b_shape[-2]:
        raise ValueError(f"recur.matmul: inner dimensions differ: {a_value.shape} @ {b_value.shape}")
    m, inner, n = a_shape[-2], a_shape[-1], b_shape[-1]
    if len(b_shape) == 2:
        # Fold every leading axis of a into the rows of one product.
        batch, m_rows, stride_a, stride_b = 1, math.prod(a_shape[:-1]), 0, 0
        batch_shape = a_shape[:-2]
    else:
        batch_shape = np.broadcast_shapes(a_shape[:-2], b_shape[:-2])
        if a_shape[:-2] != batch_shape and len(a_shape) > 2:
            a = broadcast_to(a, batch_shape + a_shape[-2:])
            a_value, a_shape = a._value, a._value.shape
        if b_shape[:-2] != batch_shape:
            b = broadcast_to(b, batch_shape + b_shape[-2:])
            b_value, b_shape = b._value, b._value.shape
        batch = math.prod(batch_shape)
        m_rows = m
        stride_a = m * inner if len(a_shape) > 2 else 0
        stride_b = inner * n
    out_shape = tuple(batch_shape) + (m, n)
    if a_value.ndim == 1:
        out_shape = out_shape[:-2] + out_shape[-1:]
    if b_value.ndim == 1:
        out_shape = out_shape[:-1]
    return ops_dense.matmul(a, b, a_value, b_value, batch, m_rows, inner, n, stride_a, stride_b,
                            out_shape)


# ---------------------------------------------------------------- the numpy protocol

def _power_ufunc(x, exponent):
    if isinstance(exponent, Tensor):
        raise TypeError("numpy.power: recur supports only a scalar exponent, got a Tensor")
    return power(x, exponent)


# Ufuncs that stay on the tape.
UFUNCS = {
    np.add: add, np.subtract: sub, np.multiply: mul, np.true_divide: div, np.negative: neg,
    np.tanh: tanh, np.exp: exp, np.log: log, np.sqrt: sqrt, np.absolute: abs,
    np.square: square, np.power: _power_ufunc, np.matmul: matmul,
    np.positive: lambda x: x,
}
# Ufuncs whose results carry no gradient (tests and masks): computed on the values.
PLAIN_UFUNCS = {
    np.greater, np.greater_equal, np.less, np.less_equal, np.equal, np.not_equal,
    np.isfinite, np.isnan, np.isinf, np.sign, np.signbit, np.logical_and, np.logical_or,
    np.logical_not, np.logical_xor,
}


def _values(args):
    return [a._value if isinstance(a, Tensor) else a for a in args]


def dispatch_ufunc(ufunc, method, inputs, kwargs):
    if method == "__call__" and not kwargs:
        if ufunc in UFUNCS:
            return UFUNCS[ufunc](*inputs)
        if ufunc in PLAIN_UFUNCS:
            return ufunc(*_values(inputs))
    if ufunc is np.add and method == "reduce" and set(kwargs) <= {"axis", "keepdims"}:
        return sum(inputs[0], kwargs.get("axis", 0), kwargs.get("keepdims", False))
    detail = f"numpy.{ufunc.__name__}" + ("" if method == "__call__" else f".{method}")
    if kwargs:
        detail += f" with {', '.join(sorted(kwargs))}="
    raise TypeError(f"{detail} is not supported on recur.Tensor (it would drop off the "
                    "gradient tape); use recur's own ops or np.asarray(t) for a constant")


def _np_sum(a, axis=None, dtype=None, out=None, keepdims=False, **_):
    _no_out("sum", out, dtype)
    return sum(a, axis, keepdims)


def _np_mean(a, axis=None, dtype=None, out=None, keepdims=False, **_):
    _no_out("mean", out, dtype)
    return mean(a, axis, keepdims)


def _np_max(a, axis=None, out=None, keepdims=False, **_):
    _no_out("max", out)
    return max(a, axis, keepdims)


def _no_out(name, out, dtype=None):
    if out is not None or dtype is not None:
        raise TypeError(f"numpy.{name} on a recur.Tensor does not take out= or dtype=")


def _np_squeeze(a, axis=None):
    value = np.asarray(a._value if isinstance(a, Tensor) else a)
    return reshape(a, np.squeeze(value, axis).shape)


def _np_expand_dims(a, axis):
    value = np.asarray(a._value if isinstance(a, Tensor) else a)
    return reshape(a, np.expand_dims(value, axis).shape)


def _np_clip(a, a_min=None, a_max=None, **kwargs):
    lo = kwargs.pop("min", a_min)
    hi = kwargs.pop("max", a_max)
    return clip(a, lo, hi)


# numpy functions that stay on the tape.
FUNCTIONS = {
    np.sum: _np_sum, np.mean: _np_mean, np.max: _np_max, np.amax: _np_max,
    np.concatenate: lambda arrays, axis=0: concat(arrays, axis),
    np.stack: lambda arrays, axis=0: stack(arrays, axis),
    np.reshape: lambda a, *args, **kw: reshape(a, kw.get("newshape", kw.get("shape", args[0] if args else None))),
    np.transpose: lambda a, axes=None: transpose(a, axes),
    np.where: lambda cond, a, b: where(cond, a, b),
    np.clip: _np_clip, np.dot: lambda a, b: matmul(a, b) if np.ndim(a) and np.ndim(b) else mul(a, b),
    np.squeeze: _np_squeeze, np.expand_dims: _np_expand_dims,
    np.ravel: lambda a: reshape(a, (-1,)),
    np.broadcast_to: lambda a, shape: broadcast_to(a, shape),
    np.shape: lambda a: np.shape(np.asarray(a)), np.ndim: lambda a: np.ndim(np.asarray(a)),
    np.size: lambda a, axis=None: np.size(np.asarray(a), axis),
}


def dispatch_function(func, args, kwargs):
    handler = FUNCTIONS.get(func)
    if handler is None:
        raise TypeError(f"numpy.{func.__name__} is not supported on recur.Tensor (it would "
                        "drop off the gradient tape); use recur's own ops or np.asarray(t) "
                        "for a constant")
    return handler(*args, **kwargs)
