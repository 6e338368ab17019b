"""The generic model walker: a model is plain nested objects (layers, lists, tuples, dicts,
attributes), and params, reset, truncate, show and state_dict all visit it the same way."""
import types

import numpy as np

from recur.tensor import Param, Tensor

_LEAVES = (str, bytes, int, float, complex, bool, type(None), np.ndarray, np.generic, Tensor,
           types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.ModuleType,
           type)


def children(obj):
    """(name, child) pairs of a container or an object's attributes, in a stable order.
    A class may name its children itself with a `_children()` method."""
    if isinstance(obj, _LEAVES) or callable(obj) and not hasattr(obj, "__dict__"):
        return []
    if isinstance(obj, (list, tuple)):
        return [(str(i), x) for i, x in enumerate(obj)]
    if isinstance(obj, dict):
        return [(str(k), v) for k, v in obj.items()]
    own = getattr(obj, "_children", None)
    if own is not None:
        return own()
    if hasattr(obj, "__dict__"):
        return [(k, v) for k, v in vars(obj).items() if not k.startswith("_")]
    return []


def walk(obj, _seen=None):
    """Every object reachable from `obj`, each once, parents before children."""
    seen = set() if _seen is None else _seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    yield obj
    for _, child in children(obj):
        yield from walk(child, seen)


def named_walk(obj, prefix="", _seen=None):
    """(dotted name, object) for everything reachable from `obj`, each once."""
    seen = set() if _seen is None else _seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    yield prefix, obj
    for name, child in children(obj):
        yield from named_walk(child, f"{prefix}.{name}" if prefix else name, seen)


def find_params(obj):
    return [x for x in walk(obj) if isinstance(x, Param)]
