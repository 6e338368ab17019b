"""The training loop: `train(loss, ps, data, opt)` and `StopTraining`.

    losses = train(lambda x, y: mse(model(x), y), model, DataLoader((X, Y), 32), Adam(),
                   epochs=10)
"""
import collections.abc
import math
import numbers
import sys
import time


from recur.optimise import _check_rule, update
from recur.tensor import _as_params, value_and_gradient

__all__ = ["train", "StopTraining"]

# How often (seconds) the bar's loss is refreshed; tqdm redraws no more often than this
# either, so formatting the loss on every step would be wasted work.
_LOSS_DISPLAY_INTERVAL = 0.1


class StopTraining(Exception):
    """Raise it from `train`'s callback (or from the loss) to end training early; `train`
    then returns the losses of the steps taken so far."""


def train(loss, ps, data, opt, *, epochs=1, cb=None, progress=None, file=None):
    """Trains the parameters `ps` on `data` with the optimisation rule `opt`; returns the
    list of per-step losses as floats.

    For each item `d` of `data` (one step): computes `loss(*d)` if `d` is a tuple, else
    `loss(d)`, together with its gradient with respect to `ps`, then updates `ps` in place
    with `opt`. `ps` is `recur.Params`, a list of `Param`s, or a model (its `recur.params`).

    - `epochs=n` goes through `data` n times, so for n > 1 `data` must be re-iterable (a
      list, a `DataLoader`); a one-shot iterator such as `zip(xs, ys)` raises `TypeError`.
    - `cb(step, loss)` is called after each update, with `step` counted from 1 across all
      epochs. Raising `StopTraining` in it (or in the loss) ends training: `train` returns
      the losses so far (a step stopped inside the loss updates nothing and adds no loss).
    - A NaN or infinite loss raises `FloatingPointError` naming the step, before that step
      touches any parameter. Any exception from the loss propagates the same way, with the
      parameters as the previous step left them.
    - `progress=None` draws a progress bar (steps, loss, steps/s) when the bar's stream is a
      terminal; `True` or `False` forces it on or off. `file` is the bar's stream, by default
      `sys.stderr`.
    """
    if not callable(loss):
        raise TypeError(f"train: loss must be a function of a data item, got {type(loss).__name__}")
    _check_rule("train", opt)
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 0:
        raise ValueError(f"train: epochs must be an int >= 0, got {epochs!r}")
    if cb is not None and not callable(cb):
        raise TypeError(f"train: cb must be a function cb(step, loss) or None, got {type(cb).__name__}")
    if progress not in (None, True, False):
        raise TypeError(f"train: progress must be None, True or False, got {progress!r}")
    # Checked without calling iter(data): a shuffling DataLoader draws its epoch's order
    # there, and an extra draw would change the order training sees.
    if not (hasattr(type(data), "__iter__") or hasattr(type(data), "__getitem__")):
        raise TypeError(f"train: data must be an iterable of data items (a list, a "
                        f"recur.DataLoader, zip(xs, ys)), got {type(data).__name__}")
    if epochs > 1 and isinstance(data, collections.abc.Iterator):
        raise TypeError(
            f"train: epochs={epochs} needs data that can be iterated again, but "
            f"{type(data).__name__} is a one-shot iterator; pass a list (e.g. list(zip(xs, ys))) "
            "or a recur.DataLoader")
    ps = _as_params(ps, "train")
    stream = sys.stderr if file is None else file
    if progress is None:
        progress = _is_terminal(stream)

    losses = []
    bar = _Bar(_total_steps(data, epochs), stream) if progress else None
    try:
        for _ in range(epochs):
            for item in data:
                step = len(losses) + 1
                value, grads = value_and_gradient(_loss_call(loss, item), ps)
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"train: the loss at step {step} is {value}; stopped before updating "
                        "the parameters at this step")
                update(opt, ps, grads)
                losses.append(value)
                if bar is not None:
                    bar.step(value)
                if cb is not None:
                    cb(step, value)
    except StopTraining:
        pass
    finally:
        if bar is not None:
            bar.close()
    return losses


def _loss_call(loss, item):
    if isinstance(item, tuple):
        return lambda: loss(*item)
    return lambda: loss(item)


def _is_terminal(stream):
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def _total_steps(data, epochs):
    try:
        return len(data) * epochs
    except TypeError:  # data without len(): the bar counts without a total
        return None


class _Bar:
    """A tqdm bar over training steps whose loss is reformatted only as often as tqdm
    redraws (formatting it on every step costs more than the bar itself)."""

    def __init__(self, total, stream):
        from tqdm import tqdm   # here, not at import: it is a sizeable part of `import recur`
        self._bar = tqdm(total=total, file=stream, unit="step", dynamic_ncols=True,
                         mininterval=_LOSS_DISPLAY_INTERVAL)
        self._shown_at = -math.inf
        self._loss = None

    def step(self, loss):
        self._loss = loss
        now = time.monotonic()
        if now - self._shown_at >= _LOSS_DISPLAY_INTERVAL:
            self._shown_at = now
            self._bar.set_postfix_str(f"loss={loss:.4g}", refresh=False)
        self._bar.update(1)

    def close(self):
        if self._loss is not None:
            self._bar.set_postfix_str(f"loss={self._loss:.4g}", refresh=False)
        self._bar.close()
