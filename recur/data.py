"""`DataLoader`: minibatches of arrays, optionally shuffled, for `train`."""
import numbers

import numpy as np

from recur.layers import default_rng

__all__ = ["DataLoader"]


class DataLoader:
    """Iterates over minibatches of `data`, an array or a tuple of arrays that all hold the
    same number of observations along `axis`.

        DataLoader((X, Y), batchsize=32, shuffle=True)      # X (N, F), Y (N, C)
        DataLoader((X, Y), batchsize=32, axis=1)            # sequences X (T, N, F), Y (T, N, C)
        DataLoader((X, labels), batchsize=32, axis=(1, 0))  # X (T, N, F), labels (N,)

    Each batch is an array (for an array) or a tuple of arrays (for a tuple), so `train`
    passes a tuple batch to the loss as separate arguments. Arrays keep their dtype. In order
    the batches are views of `data`; shuffled, they are copies.

    - `axis` is one int for every array, or a tuple with one per array.
    - `shuffle=True` draws a new permutation of the observations each time the loader is
      iterated (each epoch), from `rng`: a numpy Generator, an int seed, or None for recur's
      default generator (seeded by `recur.seed`).
    - `partial=False` drops the last batch when it is shorter than `batchsize`.
    - `len(loader)` is the number of batches per epoch.
    """

    def __init__(self, data, batchsize=1, shuffle=False, *, axis=0, partial=True, rng=None):
        self._is_tuple = isinstance(data, tuple)
        arrays = data if self._is_tuple else (data,)
        if not arrays:
            raise ValueError("DataLoader: expected an array or a tuple of arrays, got an empty tuple")
        self.arrays = tuple(_as_data_array(a, i) for i, a in enumerate(arrays))
        self.axes = _axes(axis, self.arrays)
        self.count = _common_length(self.arrays, self.axes)
        if isinstance(batchsize, bool) or not isinstance(batchsize, numbers.Integral):
            raise TypeError(f"DataLoader: batchsize must be an int, got {type(batchsize).__name__} "
                            f"{batchsize!r}")
        if batchsize < 1:
            raise ValueError(f"DataLoader: batchsize must be >= 1, got {batchsize}")
        if not partial and 0 < self.count < batchsize:
            raise ValueError(
                f"DataLoader: batchsize {batchsize} exceeds the {self.count} observations, so "
                "partial=False would give no batch at all")
        self.batchsize = int(batchsize)
        self.shuffle = bool(shuffle)
        self.partial = bool(partial)
        self._rng = _generator(rng)

    def __len__(self):
        if self.partial:
            return -(-self.count // self.batchsize)
        return self.count // self.batchsize

    def __iter__(self):
        return self._batches(self._order())

    def _order(self):
        """This epoch's permutation of the observations, or None for their own order."""
        if not self.shuffle:
            return None
        rng = default_rng() if self._rng is None else self._rng
        return rng.permutation(self.count)

    def _batches(self, order):
        for start in range(0, len(self) * self.batchsize, self.batchsize):
            stop = start + self.batchsize
            rows = slice(start, stop) if order is None else order[start:stop]
            batch = tuple(_along(a, axis, rows) for a, axis in zip(self.arrays, self.axes))
            yield batch if self._is_tuple else batch[0]

    def __repr__(self):
        shapes = ", ".join(str(a.shape) for a in self.arrays)
        axes = self.axes[0] if len(set(self.axes)) == 1 else self.axes
        return (f"DataLoader({shapes}; batchsize={self.batchsize}, shuffle={self.shuffle}, "
                f"axis={axes}, partial={self.partial}, {len(self)} batches)")


def _as_data_array(x, position):
    try:
        array = np.asarray(x)
    except ValueError as err:  # ragged nested lists
        raise TypeError(f"DataLoader: data item {position} is not a rectangular array: {err}") from None
    if array.ndim == 0:
        raise ValueError(f"DataLoader: data item {position} is a scalar; it needs an axis of "
                         "observations to batch along")
    return array


def _axes(axis, arrays):
    """One normalised axis per array."""
    axes = axis if isinstance(axis, tuple) else (axis,) * len(arrays)
    if len(axes) != len(arrays):
        raise ValueError(f"DataLoader: axis has {len(axes)} entries for {len(arrays)} arrays")
    normalised = []
    for position, (a, ax) in enumerate(zip(arrays, axes)):
        if isinstance(ax, bool) or not isinstance(ax, numbers.Integral):
            raise TypeError(f"DataLoader: axis must be an int or a tuple of ints, got {ax!r}")
        if not -a.ndim <= ax < a.ndim:
            raise ValueError(f"DataLoader: axis {ax} is out of range for data item {position} of "
                             f"shape {a.shape}")
        normalised.append(int(ax) % a.ndim)
    return tuple(normalised)


def _common_length(arrays, axes):
    lengths = [a.shape[ax] for a, ax in zip(arrays, axes)]
    if len(set(lengths)) > 1:
        described = ", ".join(f"shape {a.shape} has {n} along axis {ax}"
                              for a, ax, n in zip(arrays, axes, lengths))
        raise ValueError(f"DataLoader: every array must hold the same number of observations; "
                         f"{described}")
    return lengths[0]


def _generator(rng):
    if rng is None or isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, numbers.Integral) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"DataLoader: rng must be a numpy Generator, an int seed or None, "
                    f"got {type(rng).__name__}")


def _along(array, axis, rows):
    """The entries `rows` (a slice or an index array) of `array` along `axis`."""
    return array[(slice(None),) * axis + (rows,)]
