"""Saving and loading models: `state_dict`, `load_state_dict`, `save`, `load`.

A model's state is its parameters and the states its `Recur` layers carry, named by their
dotted path in the model (`0.cell.Wi`, `0.state`, `0.state.1` for the c of an LSTM).
Checkpoints are `.npz` archives of plain arrays: loading them never unpickles anything.
"""
import collections.abc
import os
import zipfile
import zlib

import numpy as np

from recur.tensor import Param, Tensor
from recur.walk import named_walk

__all__ = ["state_dict", "load_state_dict", "save", "load"]

# An entry every recur checkpoint holds, so that another program's .npz is told apart.
FORMAT_KEY = "__recur_format__"
FORMAT_VERSION = 1
_ZIP_MAGIC = b"PK\x03\x04"


def state_dict(model):
    """{dotted name: ndarray copy} of every parameter of `model` (each once, in the order of
    `recur.params`) and of the state of every `Recur` in it (`<name>.state`, or
    `<name>.state.0`, `<name>.state.1` for a tuple state such as the LSTM's `(h, c)`)."""
    return {name: np.array(value, copy=True) for name, (value, _) in _entries(model).items()}


def load_state_dict(model, arrays):
    """Loads `arrays` ({dotted name: array}, as `state_dict` makes) into `model`.

    Every name, shape and dtype is checked before anything changes; on any mismatch the
    model is left as it was and `ValueError` lists the missing names, the unexpected names,
    and the shapes or dtypes that differ. Parameter values are copied in place (cast to each
    parameter's dtype), so the model's `Param` objects stay the same.

    A `Recur`'s state must match the current state's feature (last) axis, whatever its
    batch size. It is set as constant Tensors (a value without history, as between two
    `gradient` calls), except that a state equal in shape and value to the Recur's state0
    (what a reset leaves) becomes the state0 itself, as after a reset.
    """
    _assign(model, arrays, "load_state_dict")


def save(path, model):
    """Writes the `state_dict` of `model` to `path` (exactly that name) as an `.npz` archive.

    The file is written beside `path` and then moved over it, so an interrupted save leaves
    any previous checkpoint at `path` intact."""
    path = os.fspath(path)
    arrays = state_dict(model)
    if FORMAT_KEY in arrays:
        raise ValueError(f"save: the model has an entry named {FORMAT_KEY!r}, a name recur "
                         "reserves for its checkpoint format")
    arrays[FORMAT_KEY] = np.array(FORMAT_VERSION)
    partial = f"{path}.{os.getpid()}.partial"
    try:
        with open(partial, "wb") as file:
            _write_npz(file, arrays)
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise


def load(path, model):
    """Loads a checkpoint written by `save` into `model`, as `load_state_dict` does.

    A truncated or corrupt file, or an `.npz` that `save` did not write, raises `ValueError`
    naming `path`; a model that does not fit the checkpoint raises `ValueError` listing the
    differences. Either way the model is left untouched."""
    path = os.fspath(path)
    with open(path, "rb") as file:  # a missing or unreadable file raises its OSError here
        arrays = _read_npz(file, path)
    version = arrays.pop(FORMAT_KEY, None)
    if version is None:
        raise ValueError(f"load: {path!r} is an .npz archive but not a recur checkpoint (it has "
                         f"no {FORMAT_KEY!r} entry); entries found: {_listing(arrays)}")
    if version.shape != () or version.dtype.kind not in "iu" or int(version) != FORMAT_VERSION:
        raise ValueError(f"load: {path!r} has checkpoint format {version!r}; this recur "
                         f"reads format {FORMAT_VERSION}")
    _assign(model, arrays, f"load({path!r})")


# ---------------------------------------------------------------- the model's entries

def _entries(model):
    """{name: (current value, where it goes)} for every parameter and Recur state, where a
    parameter goes to its Param and a state to `(recur, path of the leaf in its state)`."""
    from recur.recurrent import Recur
    entries = {}
    for name, obj in named_walk(model):
        if isinstance(obj, Param):
            entries[name] = (obj.value, obj)
        elif isinstance(obj, Recur):
            # Right after a reset the state is the state0 Param itself, which the walk names
            # (once) as a parameter: states are named here, under the Recur, whatever they are.
            state_name = f"{name}.state" if name else "state"
            for leaf_name, path, leaf in _state_leaves(obj.state, state_name, ()):
                entries[leaf_name] = (np.asarray(leaf), (obj, path))
    return entries


def _state_leaves(state, name, path):
    """(name, path of indices, array) of each array in a state: a Tensor, an array, or a
    tuple or list of states."""
    if isinstance(state, (tuple, list)):
        for i, part in enumerate(state):
            yield from _state_leaves(part, f"{name}.{i}", path + (i,))
    elif isinstance(state, (Tensor, np.ndarray)):
        yield name, path, state
    else:
        raise TypeError(f"state_dict: the Recur state {name} is a {type(state).__name__}; only "
                        "Tensors, arrays, and tuples or lists of them can be saved")


def _with_leaf(state, path, leaf):
    """`state` with the leaf at `path` replaced by `leaf`."""
    if not path:
        return leaf
    parts = list(state)
    parts[path[0]] = _with_leaf(parts[path[0]], path[1:], leaf)
    return type(state)(parts)


# ---------------------------------------------------------------- checking and loading

def _assign(model, arrays, caller):
    if not isinstance(arrays, collections.abc.Mapping):
        raise TypeError(f"{caller}: expected a mapping of names to arrays, got "
                        f"{type(arrays).__name__}")
    entries = _entries(model)
    given = {name: np.asarray(value) for name, value in arrays.items()}
    problems = _mismatches(entries, given)
    if problems:
        raise ValueError(f"{caller}: the arrays do not fit the {type(model).__name__} "
                         "(nothing was loaded):\n  " + "\n  ".join(problems))
    loaded_states = {}   # id(recur) -> (recur, {path in its state: constant Tensor})
    for name, (current, target) in entries.items():
        if isinstance(target, Param):
            target.value[...] = given[name]
        else:
            recur, path = target
            leaves = loaded_states.setdefault(id(recur), (recur, {}))[1]
            leaves[path] = Tensor(given[name], dtype=current.dtype)
    # After the parameters, so that a state can be compared with the loaded state0.
    for recur, leaves in loaded_states.values():
        recur.state = _loaded_state(recur, leaves)


def _loaded_state(recur, leaves):
    """The Recur's state made of the loaded `leaves`; the state0 itself when they equal it
    (as a reset leaves them), so that the model broadcasts it over a batch and trains it
    just as after a reset."""
    state = recur.state
    for path, leaf in leaves.items():
        state = _with_leaf(state, path, leaf)
    return recur.state0 if _equal_states(state, recur.state0) else state


def _equal_states(a, b):
    if isinstance(a, (tuple, list)):
        return (isinstance(b, (tuple, list)) and len(a) == len(b)
                and all(_equal_states(x, y) for x, y in zip(a, b)))
    return isinstance(b, (Tensor, np.ndarray)) and np.array_equal(np.asarray(a), np.asarray(b))


def _mismatches(entries, given):
    missing = [name for name in entries if name not in given]
    unexpected = [name for name in given if name not in entries]
    problems = []
    if missing:
        problems.append("missing: " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected: " + ", ".join(map(str, unexpected)))
    for name, (current, target) in entries.items():
        if name not in given:
            continue
        array = given[name]
        if array.dtype.kind != "f":
            problems.append(f"{name}: expected a float array, got dtype {array.dtype}")
        elif isinstance(target, Param) and array.shape != current.shape:
            problems.append(f"{name}: the model has shape {current.shape}, the arrays "
                            f"{array.shape}")
        elif not isinstance(target, Param) and array.shape[-1:] != current.shape[-1:]:
            problems.append(f"{name}: a state of shape {array.shape} cannot replace the "
                            f"model's state of shape {current.shape} (the last axis must "
                            "match)")
    return problems


# ---------------------------------------------------------------- the .npz file

def _write_npz(file, arrays):
    """An .npz archive that `np.load` reads, written entry by entry. (`np.savez` takes
    the names as keyword arguments, so a model entry named `file` or `allow_pickle` would
    break or vanish.)"""
    with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def _read_npz(file, path):
    """{name: array} of every entry of the .npz `file`, all read (and CRC-checked) before
    returning; anything unreadable raises ValueError naming `path`."""
    head = file.read(len(_ZIP_MAGIC))
    if head != _ZIP_MAGIC:
        # Checked here rather than left to np.load, whose message for such a file suggests
        # loading it with pickle.
        raise ValueError(f"load: {path!r} is not a recur checkpoint: an .npz archive begins "
                         f"with {_ZIP_MAGIC!r}, this file with {head!r}")
    file.seek(0)
    try:
        with np.load(file, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(f"load: {path!r} is not a readable recur checkpoint "
                         f"({type(err).__name__}: {err})") from err


def _listing(names, limit=8):
    names = list(names)
    shown = ", ".join(names[:limit]) or "none"
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
