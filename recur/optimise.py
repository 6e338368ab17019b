"""Optimisers: rules that turn gradients into in-place parameter updates.

    opt = Adam(1e-3)
    update(opt, ps, gs)          # gs = recur.gradient(...), ps = recur.params(model)

Two kinds of rule:

- **step rules** update the parameters: `Descent`, `Momentum`, `Nesterov`, `RMSProp`, `Adam`
  (alias `ADAM`) and `AdamW`. Each step runs one C call over every parameter (recur._core.optim).
- **gradient transforms** rewrite the gradients: `ClipNorm` and `ClipValue`. They write into
  buffers of their own and never modify the caller's gradient arrays.

`OptimiserChain(*rules)` passes the gradients through its transforms in order and hands
the result to its last rule, the only one allowed to be a step rule:
`OptimiserChain(ClipNorm(1.0), Adam())`. A transform used as the whole optimiser (alone, or
ending a chain) steps by the transformed gradient itself, `p -= g`, as Flux does.

Optimiser state (velocities, moments, step counts, clipping buffers) is kept per parameter,
keyed by the parameter's identity: two parameters with equal values have separate states.
A rule holds a reference to every parameter it has state for, so the identity stays valid.
"""
import numbers

import numpy as np

from recur._core import optim as _kernels

__all__ = ["Descent", "Momentum", "Nesterov", "RMSProp", "Adam", "ADAM", "AdamW",
           "ClipNorm", "ClipValue", "OptimiserChain", "update"]


# ---------------------------------------------------------------- hyperparameter checks
# Each check takes the rule, the field's name and the value given; it returns the value to
# store or raises, naming the rule, what it expected and what it got.

def _real(rule, name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{type(rule).__name__}: {name} must be a real number, "
                        f"got {type(value).__name__} {value!r}")
    return float(value)


def _nonnegative(rule, name, value):
    value = _real(rule, name, value)
    if not 0.0 <= value < float("inf"):
        raise ValueError(f"{type(rule).__name__}: {name} must be a finite number >= 0, "
                         f"got {value!r}")
    return value


def _positive(rule, name, value):
    value = _real(rule, name, value)
    if not value > 0.0:
        raise ValueError(f"{type(rule).__name__}: {name} must be > 0, got {value!r}")
    return value


def _decay(rule, name, value):
    value = _real(rule, name, value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{type(rule).__name__}: {name} must be in [0, 1), got {value!r}")
    return value


def _betas(rule, name, value):
    try:
        beta1, beta2 = value
    except (TypeError, ValueError):
        raise ValueError(f"{type(rule).__name__}: {name} must be a pair (beta1, beta2), "
                         f"got {value!r}") from None
    return (_decay(rule, f"{name}[0]", beta1), _decay(rule, f"{name}[1]", beta2))


# ---------------------------------------------------------------- rules

class _State:
    """One parameter's state under one rule: the parameter (keeping its id valid), the
    rule's buffers shaped like its value, and how many steps it has taken."""

    __slots__ = ("param", "buffers", "steps")

    def __init__(self, param, buffer_count):
        self.param = param
        self.buffers = tuple(np.zeros_like(param.value) for _ in range(buffer_count))
        self.steps = 0


class Rule:
    """Base of the optimisation rules. `_fields` lists the constructor's hyperparameters
    with their checks; assigning one later (a learning-rate schedule) is checked too."""

    _fields = ()
    _buffer_count = 0

    def __init__(self, *values):
        for (name, _), value in zip(self._fields, values):
            setattr(self, name, value)
        self._states = {}

    def __setattr__(self, name, value):
        for field, check in self._fields:
            if field == name:
                value = check(self, name, value)
        object.__setattr__(self, name, value)

    def __repr__(self):
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name, _ in self._fields)
        return f"{type(self).__name__}({fields})"

    def _states_of(self, params):
        """Each parameter's state, made on its first update."""
        states = []
        for p in params:
            state = self._states.get(id(p))
            if state is None:
                state = self._states[id(p)] = _State(p, self._buffer_count)
            elif state.buffers and (state.buffers[0].shape != p.value.shape
                                    or state.buffers[0].dtype != p.value.dtype):
                made = state.buffers[0]
                raise ValueError(
                    f"{self!r}: a parameter's value is now {p.value.dtype}{list(p.value.shape)} "
                    f"but its optimiser state was made for {made.dtype}{list(made.shape)}; "
                    "use a new optimiser for the changed model")
            states.append(state)
        return states

    def _update(self, params, grads):
        """Update `params` in place given `grads`, their C-contiguous gradients of the
        parameters' own dtypes."""
        raise NotImplementedError


class _Transform(Rule):
    """A rule that rewrites gradients: `_transform` returns the new gradient arrays."""

    _buffer_count = 1

    def _transform(self, params, grads):
        raise NotImplementedError

    def _update(self, params, grads):
        _kernels.descent([p.value for p in params], self._transform(params, grads), 1.0)


class Descent(Rule):
    """Plain gradient descent: `p -= lr * g`."""

    _fields = (("lr", _nonnegative),)

    def __init__(self, lr=0.1):
        super().__init__(lr)

    def _update(self, params, grads):
        _kernels.descent([p.value for p in params], grads, self.lr)


class _VelocityRule(Rule):
    """Momentum and Nesterov: one velocity buffer per parameter, zero at first, and a kernel
    `kernel(values, grads, velocities, lr, rho)`."""

    _fields = (("lr", _nonnegative), ("rho", _decay))
    _buffer_count = 1

    def _update(self, params, grads):
        states = self._states_of(params)
        self._kernel([p.value for p in params], grads, [s.buffers[0] for s in states],
                     self.lr, self.rho)


class Momentum(_VelocityRule):
    """Gradient descent with momentum (Flux's Momentum): the velocity `v` accumulates the
    steps, `v = rho * v - lr * g; p += v`.

    With a constant `lr` this is torch's `SGD(lr, momentum=rho)`, whose buffer is `-v / lr`.
    """

    _kernel = staticmethod(_kernels.momentum)

    def __init__(self, lr=0.01, rho=0.9):
        super().__init__(lr, rho)


class Nesterov(_VelocityRule):
    """Gradient descent with Nesterov momentum (Flux's Nesterov):

        v' = rho * v - lr * g
        p += rho * v' - lr * g        # = rho² v - (1 + rho) lr g, Flux's form

    The step is the velocity one step further on, evaluated with the current gradient.
    With a constant `lr` this is torch's `SGD(lr, momentum=rho, nesterov=True)`.
    """

    _kernel = staticmethod(_kernels.nesterov)

    def __init__(self, lr=0.001, rho=0.9):
        super().__init__(lr, rho)


class RMSProp(Rule):
    """RMSProp: a running mean of squared gradients scales each step,
    `a = rho * a + (1 - rho) * g²; p -= lr * g / (sqrt(a) + eps)` (eps outside the root).

    The same as torch's `RMSprop(lr, alpha=rho, eps=eps)`.
    """

    _fields = (("lr", _nonnegative), ("rho", _decay), ("eps", _nonnegative))
    _buffer_count = 1

    def __init__(self, lr=0.001, rho=0.9, eps=1e-8):
        super().__init__(lr, rho, eps)

    def _update(self, params, grads):
        states = self._states_of(params)
        _kernels.rmsprop([p.value for p in params], grads,
                         [s.buffers[0] for s in states], self.lr, self.rho, self.eps)


class Adam(Rule):
    """Adam, numerically torch's `Adam(lr, betas, eps)`. For the t-th step of a parameter:

        m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g²
        p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    `t` counts each parameter's own updates: a parameter skipped for lack of a gradient
    does not advance.
    """

    _fields = (("lr", _nonnegative), ("betas", _betas), ("eps", _nonnegative))
    _buffer_count = 2
    weight_decay = 0.0

    def __init__(self, lr=0.001, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(lr, betas, eps)

    def _update(self, params, grads):
        states = self._states_of(params)
        beta1, beta2 = self.betas
        _kernels.adam([p.value for p in params], grads,
                      [s.buffers[0] for s in states], [s.buffers[1] for s in states],
                      [s.steps + 1 for s in states],
                      self.lr, beta1, beta2, self.eps, self.weight_decay)
        for state in states:
            state.steps += 1


ADAM = Adam


class AdamW(Adam):
    """Adam with decoupled weight decay, numerically torch's `AdamW`: each step first
    shrinks the parameter, `p *= 1 - lr * weight_decay`, then takes Adam's step."""

    _fields = Adam._fields + (("weight_decay", _nonnegative),)

    def __init__(self, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        Rule.__init__(self, lr, betas, eps, weight_decay)


class ClipNorm(_Transform):
    """Rescales the gradients when their global L2 norm — over all parameters together —
    is large, as `torch.nn.utils.clip_grad_norm_(ps, max)` does: every gradient is multiplied
    by `max / (norm + 1e-6)` when that is below 1, and passed unchanged otherwise. The norm
    is accumulated in double. (Flux's ClipNorm measures each array on its own instead.)"""

    _fields = (("max", _positive),)

    def __init__(self, max):
        super().__init__(max)

    def _transform(self, params, grads):
        factor = self.max / (_kernels.global_norm(grads) + 1e-6)
        # `not >=` so that a NaN norm spreads to every gradient, as in torch.
        if not factor >= 1.0:
            clipped = [s.buffers[0] for s in self._states_of(params)]
            _kernels.scale(grads, clipped, factor)
            return clipped
        return grads


class ClipValue(_Transform):
    """Clips every gradient element to `[-v, v]` (a NaN stays NaN)."""

    _fields = (("v", _positive),)

    def __init__(self, v):
        super().__init__(v)

    def _transform(self, params, grads):
        clipped = [s.buffers[0] for s in self._states_of(params)]
        _kernels.clip_value(grads, clipped, self.v)
        return clipped


class OptimiserChain(Rule):
    """Applies `rules` in sequence: each gradient transform rewrites the gradients for the
    next rule, and the last rule updates the parameters. A step rule (Adam, Descent, ...)
    can only come last. Nested chains are flattened."""

    def __init__(self, *rules):
        flat = []
        for rule in rules:
            _check_rule("OptimiserChain", rule)
            flat.extend(rule.rules if isinstance(rule, OptimiserChain) else (rule,))
        if not flat:
            raise ValueError("OptimiserChain: expected at least one rule, got none")
        for position, rule in enumerate(flat[:-1]):
            if not isinstance(rule, _Transform):
                raise ValueError(
                    f"OptimiserChain: {rule!r} updates the parameters, so it must be the "
                    f"last rule; got it at position {position + 1} of {len(flat)}")
        super().__init__()
        self.rules = tuple(flat)

    def __repr__(self):
        return f"OptimiserChain({', '.join(map(repr, self.rules))})"

    def _update(self, params, grads):
        for rule in self.rules[:-1]:
            grads = rule._transform(params, grads)
        self.rules[-1]._update(params, grads)


# ---------------------------------------------------------------- update

def _check_rule(where, opt):
    if isinstance(opt, type) and issubclass(opt, Rule):
        raise TypeError(f"{where}: got the class {opt.__name__}, not a rule; "
                        f"call it: {opt.__name__}()")
    if not isinstance(opt, Rule):
        raise TypeError(f"{where}: expected an optimisation rule such as recur.Adam(), "
                        f"got {type(opt).__name__}")


_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))     # native byte order only


def _value_of(p):
    """The array an optimiser updates in place for the parameter `p`."""
    value = getattr(p, "value", None)
    if not isinstance(value, np.ndarray):
        raise TypeError(f"update: expected parameters with a .value array (pass "
                        f"recur.params(model)), got {type(p).__name__}")
    flags = value.flags
    if value.dtype not in _FLOAT_DTYPES or not flags.c_contiguous or not flags.writeable:
        raise TypeError(f"update: a parameter's value must be a writable C-contiguous "
                        f"float32 or float64 array, got {value.dtype} "
                        f"(contiguous={flags.c_contiguous}, "
                        f"writable={flags.writeable})")
    return value


def _gradient_array(value, g):
    """`g` as a C-contiguous array of the dtype of `value`, once its shape is known to fit."""
    g = np.asarray(g)
    if g.shape != value.shape:
        raise ValueError(f"update: gradient of shape {g.shape} for a parameter of shape "
                         f"{value.shape}")
    if g.dtype == value.dtype:      # the usual case, spared can_cast's 0.4 µs a parameter
        return g if g.flags.c_contiguous else np.ascontiguousarray(g)
    if not np.can_cast(g.dtype, value.dtype, "same_kind"):
        raise TypeError(f"update: a {g.dtype} gradient cannot update a {value.dtype} "
                        "parameter")
    return np.ascontiguousarray(g, dtype=value.dtype)


def update(opt, ps, gs):
    """Update every parameter of `ps` in place with the rule `opt`, given `gs[p]`.

    `ps` is `recur.Params` or any iterable of parameters (objects with a `.value` ndarray);
    a parameter listed twice is updated once. `gs` maps a parameter to its gradient, an
    array shaped like its value (cast to its dtype), or to None — or lacks it — for no
    gradient: that parameter is skipped and its optimiser state left as it was. Every
    gradient is checked before any parameter changes.
    """
    _check_rule("update", opt)
    lookup = None if isinstance(gs, (list, tuple, np.ndarray)) else (
        getattr(gs, "get", None) or getattr(gs, "__getitem__", None))
    if lookup is None:
        raise TypeError(f"update: gs must map each parameter to its gradient (the Grads "
                        f"that recur.gradient returns, or a dict keyed by parameter), got a "
                        f"{type(gs).__name__}")
    params, grads, seen = [], [], set()
    for p in ps:
        if id(p) in seen:
            continue
        seen.add(id(p))
        value = _value_of(p)
        g = lookup(p)
        if g is not None:
            grads.append(_gradient_array(value, g))
            params.append(p)
    if params:
        opt._update(params, grads)
