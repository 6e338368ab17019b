"""Display of models as nested structure with parameter counts."""
import numpy as np

from recur.tensor import Param, Tensor
from recur.walk import walk


def _arrays(obj):
    return [x for x in walk(obj) if isinstance(x, Param)]


def _state_arrays(state):
    if isinstance(state, (tuple, list)):
        return [a for s in state for a in _state_arrays(s)]
    return [state] if isinstance(state, (Tensor, np.ndarray)) else []


def _counts(model):
    from recur.recurrent import Recur
    trainable = _arrays(model)
    states = [a for x in walk(model) if isinstance(x, Recur) for a in _state_arrays(x.state)]
    return trainable, states


def _container_children(obj):
    from recur.layers import Chain
    from recur.recurrent import Recur
    if isinstance(obj, Chain):
        return list(obj.layers)
    if isinstance(obj, Recur):
        return [obj.cell]
    return None


def _lines(obj, depth):
    pad = "  " * depth
    children = _container_children(obj)
    if children is None:
        count = sum(p.size for p in _arrays(obj))
        note = f"  # {count} parameters" if count else ""
        return [f"{pad}{_leaf_repr(obj)},{note}"]
    lines = [f"{pad}{type(obj).__name__}("]
    for child in children:
        lines += _lines(child, depth + 1)
    lines.append(f"{pad}),")
    return lines


def _leaf_repr(obj):
    from recur.layers import Layer
    if isinstance(obj, Layer) and type(obj).__repr__ is Layer.__repr__:
        return f"{type(obj).__name__}()"     # a container show() does not know
    if callable(obj) and not hasattr(obj, "__dict__") or isinstance(obj, type(_leaf_repr)):
        return getattr(obj, "__name__", repr(obj))
    return repr(obj)


def show(model):
    """`Chain(\\n  Dense(2 => 5, relu),  # 15 parameters\\n)  # Total: ...` like Flux."""
    lines = _lines(model, 0)
    lines[-1] = lines[-1].rstrip(",")
    trainable, states = _counts(model)
    n_params = sum(p.size for p in trainable)
    n_state = sum(np.size(s) for s in states)
    nbytes = sum(np.asarray(p).nbytes for p in trainable) + sum(np.asarray(s).nbytes for s in states)
    if states:
        lines[-1] += (f"  # Total: {len(trainable)} trainable arrays, {n_params} parameters,\n"
                      f"   # plus {len(states)} non-trainable, {n_state} parameters, {nbytes} bytes.")
    else:
        lines[-1] += f"  # Total: {len(trainable)} trainable arrays, {n_params} parameters, {nbytes} bytes."
    return "\n".join(lines)
