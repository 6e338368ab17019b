"""Optimisers: every rule against a numpy transcription of its formula, over several steps,
in float32 and float64; state by identity; chains and clipping; errors; torch parity."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from recur._core import optim as kernels
from recur.optimise import (ADAM, Adam, AdamW, ClipNorm, ClipValue, Descent, Momentum,
                            Nesterov, OptimiserChain, RMSProp, update)

DTYPES = [np.float32, np.float64]
TOLERANCE = {np.float32: dict(rtol=2e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-14)}
SHAPES = [(3, 4), (5,), (2, 3, 2)]
STEPS = 6


class Box:
    """The least a parameter needs to be: an object holding a `.value` array."""

    def __init__(self, value):
        self.value = np.array(value)


# ---------------------------------------------------------------- numpy transcriptions
# Each takes a parameter array, its gradient and a dict of state (empty at first) and
# returns the updated parameter; all arithmetic in float64.

def descent_reference(lr):
    def step(p, g, s):
        return p - lr * g
    return step


def momentum_reference(lr, rho):
    def step(p, g, s):
        s["v"] = rho * s.get("v", 0.0) - lr * g
        return p + s["v"]
    return step


def nesterov_reference(lr, rho):
    # Flux's form, kept literally: the kernel uses the equal rho v' - lr g.
    def step(p, g, s):
        v = s.get("v", 0.0)
        d = rho ** 2 * v - (1 + rho) * lr * g
        s["v"] = rho * v - lr * g
        return p + d
    return step


def rmsprop_reference(lr, rho, eps):
    def step(p, g, s):
        s["a"] = rho * s.get("a", 0.0) + (1 - rho) * g ** 2
        return p - lr * g / (np.sqrt(s["a"]) + eps)
    return step


def adam_reference(lr, betas, eps, weight_decay=0.0):
    b1, b2 = betas

    def step(p, g, s):
        t = s["t"] = s.get("t", 0) + 1
        s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
        s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g ** 2
        m_hat = s["m"] / (1 - b1 ** t)
        v_hat = s["v"] / (1 - b2 ** t)
        return p * (1 - lr * weight_decay) - lr * m_hat / (np.sqrt(v_hat) + eps)
    return step


def clip_value_reference(v):
    def step(p, g, s):
        return p - np.clip(g, -v, v)
    return step


RULES = [
    (lambda: Descent(0.1), descent_reference(0.1)),
    (lambda: Momentum(0.05, 0.8), momentum_reference(0.05, 0.8)),
    (lambda: Nesterov(0.05, 0.8), nesterov_reference(0.05, 0.8)),
    (lambda: RMSProp(0.01, 0.9, 1e-8), rmsprop_reference(0.01, 0.9, 1e-8)),
    (lambda: RMSProp(0.01, 0.5, 0.1), rmsprop_reference(0.01, 0.5, 0.1)),
    (lambda: Adam(0.01), adam_reference(0.01, (0.9, 0.999), 1e-8)),
    (lambda: Adam(0.1, (0.5, 0.9), 1e-3), adam_reference(0.1, (0.5, 0.9), 1e-3)),
    (lambda: AdamW(0.01), adam_reference(0.01, (0.9, 0.999), 1e-8, 0.01)),
    (lambda: AdamW(0.1, (0.8, 0.99), 1e-6, 0.5), adam_reference(0.1, (0.8, 0.99), 1e-6, 0.5)),
    (lambda: ClipValue(0.5), clip_value_reference(0.5)),
]
RULE_IDS = ["descent", "momentum", "nesterov", "rmsprop", "rmsprop-big-eps", "adam",
            "adam-betas", "adamw", "adamw-decay", "clipvalue"]


def random_arrays(rng, dtype, shapes=SHAPES, scale=1.0):
    return [(scale * rng.standard_normal(shape)).astype(dtype) for shape in shapes]


def run_reference(reference, values, grad_steps):
    """The parameters after the steps, each parameter with its own state; None skips."""
    values = [v.astype(np.float64) for v in values]
    states = [{} for _ in values]
    for grads in grad_steps:
        for i, g in enumerate(grads):
            if g is not None:
                values[i] = reference(values[i], g.astype(np.float64), states[i])
    return values


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make_rule, reference", RULES, ids=RULE_IDS)
def test_rule_matches_numpy_transcription(make_rule, reference, dtype):
    rng = np.random.default_rng(0)
    start = random_arrays(rng, dtype)
    grad_steps = [random_arrays(rng, dtype) for _ in range(STEPS)]
    params = [Box(v.copy()) for v in start]
    opt = make_rule()
    for grads in grad_steps:
        update(opt, params, dict(zip(params, grads)))
    expected = run_reference(reference, start, grad_steps)
    for p, want in zip(params, expected):
        assert p.value.dtype == dtype
        np.testing.assert_allclose(p.value, want, **TOLERANCE[dtype])


# Past the kernels' SHARED_UPDATE_MIN_VALUES (65536) an update is split between two threads,
# each taking part of every parameter; odd sizes put the cut inside a vector.
LARGE_SHAPES = [(301, 299), (70001,), (3,)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make_rule, reference", RULES, ids=RULE_IDS)
def test_a_large_update_matches_numpy_transcription(make_rule, reference, dtype):
    rng = np.random.default_rng(3)
    start = random_arrays(rng, dtype, LARGE_SHAPES)
    grad_steps = [random_arrays(rng, dtype, LARGE_SHAPES) for _ in range(3)]
    params = [Box(v.copy()) for v in start]
    opt = make_rule()
    for grads in grad_steps:
        update(opt, params, dict(zip(params, grads)))
    for p, want in zip(params, run_reference(reference, start, grad_steps)):
        np.testing.assert_allclose(p.value, want, **TOLERANCE[dtype])


def test_a_shared_update_equals_the_one_thread_update_bit_for_bit():
    code = textwrap.dedent("""
        import sys
        import numpy as np
        import recur as rc
        rng = np.random.default_rng(4)
        params = [rc.param(rng.standard_normal(shape).astype(dtype))
                  for shape, dtype in [((301, 299), np.float32), ((70001,), np.float64)]]
        opt = rc.Adam(0.01)
        for _ in range(3):
            grads = {p: rng.standard_normal(p.value.shape).astype(p.value.dtype)
                     for p in params}
            rc.update(opt, params, grads)
        sys.stdout.buffer.write(b"".join(p.value.tobytes() for p in params))
    """)
    outputs = [subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120,
                              env=dict(os.environ, RECUR_NUM_THREADS=threads))
               for threads in ("1", "")]
    for result in outputs:
        assert result.returncode == 0, result.stderr.decode()
    alone, shared = (result.stdout for result in outputs)
    assert len(alone) == 301 * 299 * 4 + 70001 * 8
    assert alone == shared


@pytest.mark.parametrize("make_rule, reference", RULES, ids=RULE_IDS)
def test_mixed_dtypes_in_one_update(make_rule, reference):
    rng = np.random.default_rng(1)
    start = [a.astype(dtype) for a, dtype in
             zip(random_arrays(rng, np.float64), [np.float32, np.float64, np.float32])]
    grad_steps = [[g.astype(v.dtype) for g, v in zip(random_arrays(rng, np.float64), start)]
                  for _ in range(STEPS)]
    params = [Box(v.copy()) for v in start]
    opt = make_rule()
    for grads in grad_steps:
        update(opt, params, dict(zip(params, grads)))
    for p, v, want in zip(params, start, run_reference(reference, start, grad_steps)):
        assert p.value.dtype == v.dtype
        np.testing.assert_allclose(p.value, want, **TOLERANCE[v.dtype.type])


@pytest.mark.parametrize("make_rule, reference", RULES, ids=RULE_IDS)
def test_none_gradients_are_skipped_and_do_not_advance_state(make_rule, reference):
    rng = np.random.default_rng(2)
    start = random_arrays(rng, np.float64)
    grad_steps = [random_arrays(rng, np.float64) for _ in range(STEPS)]
    grad_steps[1][0] = None
    grad_steps[2][0] = None
    grad_steps[3][2] = None
    params = [Box(v.copy()) for v in start]
    opt = make_rule()
    for grads in grad_steps:
        update(opt, params, dict(zip(params, grads)))
    for p, want in zip(params, run_reference(reference, start, grad_steps)):
        np.testing.assert_allclose(p.value, want, **TOLERANCE[np.float64])


def test_missing_gradient_key_is_skipped():
    a, b = Box(np.ones(3)), Box(np.ones(3))
    update(Descent(0.5), [a, b], {a: np.ones(3)})
    np.testing.assert_array_equal(a.value, 0.5)
    np.testing.assert_array_equal(b.value, 1.0)


class Lookup:
    """A mapping with only `__getitem__`, as `update` accepts."""

    def __init__(self, grads):
        self.grads = grads

    def __getitem__(self, p):
        return self.grads[id(p)]


def test_gradients_by_getitem_only():
    a = Box(np.ones(2))
    update(Descent(0.5), [a], Lookup({id(a): np.full(2, 2.0)}))
    np.testing.assert_array_equal(a.value, 0.0)


def test_state_is_keyed_by_identity_not_value():
    rng = np.random.default_rng(3)
    value = rng.standard_normal(4)
    first, second = Box(value.copy()), Box(value.copy())
    alone_first, alone_second = Box(value.copy()), Box(value.copy())
    shared, own_first, own_second = Adam(0.1), Adam(0.1), Adam(0.1)
    for step in range(STEPS):
        g1, g2 = rng.standard_normal(4), rng.standard_normal(4)
        grads = {first: g1, second: g2 if step % 2 else None}
        update(shared, [first, second], grads)
        update(own_first, [alone_first], {alone_first: g1})
        update(own_second, [alone_second], {alone_second: grads[second]})
    np.testing.assert_array_equal(first.value, alone_first.value)
    np.testing.assert_array_equal(second.value, alone_second.value)
    assert not np.array_equal(first.value, second.value)


def test_a_parameter_listed_twice_is_updated_once():
    p = Box(np.zeros(2))
    update(Descent(1.0), [p, p], {p: np.ones(2)})
    np.testing.assert_array_equal(p.value, -1.0)


def test_updates_in_place():
    p = Box(np.zeros(3, np.float32))
    array = p.value
    update(Adam(), [p], {p: np.ones(3)})
    assert p.value is array
    assert np.all(array < 0)


@pytest.mark.parametrize("grad", [np.ones(3, np.float64), np.ones(3, np.int64), [1, 1, 1],
                                  np.ones(3, np.bool_), np.ones(6, np.float32)[::2]])
def test_gradients_are_cast_to_the_parameter_dtype(grad):
    p = Box(np.zeros(3, np.float32))
    update(Descent(0.25), [p], {p: grad})
    assert p.value.dtype == np.float32
    np.testing.assert_array_equal(p.value, -0.25)


@pytest.mark.parametrize("rule", [ClipNorm(0.5), ClipValue(0.5),
                                  OptimiserChain(ClipValue(0.5), ClipNorm(0.1), Adam())])
def test_gradients_given_are_never_modified(rule):
    p = Box(np.zeros(4))
    g = np.array([3.0, -2.0, 1.0, 0.25])
    g.flags.writeable = False
    update(rule, [p], {p: g})
    np.testing.assert_array_equal(g, [3.0, -2.0, 1.0, 0.25])
    assert np.all(p.value != 0)


def test_empty_parameters():
    p, q = Box(np.zeros((0, 3))), Box(np.zeros(2, np.float32))
    for rule in [Descent(), Momentum(), Nesterov(), RMSProp(), Adam(), AdamW(), ClipNorm(1.0),
                 ClipValue(1.0)]:
        update(rule, [p, q], {p: np.zeros((0, 3)), q: np.ones(2)})
        assert p.value.shape == (0, 3)


def test_no_gradients_at_all_is_a_no_op():
    p = Box(np.ones(2))
    update(Adam(), [p], {})
    update(Adam(), [], {})
    np.testing.assert_array_equal(p.value, 1.0)


# ---------------------------------------------------------------- clipping

def clip_norm_reference(grads, max_norm):
    norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads))
    factor = max_norm / (norm + 1e-6)
    return [g * factor for g in grads] if factor < 1 else grads


@pytest.mark.parametrize("max_norm", [0.1, 1.0, 100.0])
def test_clip_norm_is_global_over_all_parameters(max_norm):
    rng = np.random.default_rng(4)
    grads = random_arrays(rng, np.float64)
    params = [Box(np.zeros_like(g)) for g in grads]
    update(ClipNorm(max_norm), params, dict(zip(params, grads)))
    for p, want in zip(params, clip_norm_reference(grads, max_norm)):
        np.testing.assert_allclose(-p.value, want, rtol=1e-14)
    clipped = np.sqrt(sum(np.sum(p.value ** 2) for p in params))
    assert clipped <= max_norm


def test_clip_norm_over_mixed_dtypes():
    p, q = Box(np.zeros(2, np.float32)), Box(np.zeros(2))
    update(ClipNorm(1.0), [p, q], {p: np.array([3.0, 4.0], np.float32), q: np.array([0, 12.0])})
    factor = 1.0 / (13.0 + 1e-6)
    np.testing.assert_allclose(p.value, [-3 * factor, -4 * factor], rtol=1e-7)
    np.testing.assert_allclose(q.value, [0.0, -12 * factor], rtol=1e-15)


def test_clip_norm_of_gradients_whose_squares_overflow():
    big = np.array([3e200, -4e200])
    assert kernels.global_norm([big, np.ones(3, np.float32)]) == pytest.approx(5e200, rel=1e-15)
    p = Box(np.zeros(2))
    update(ClipNorm(1.0), [p], {p: big})
    np.testing.assert_allclose(p.value, [-0.6, 0.8], rtol=1e-14)


def test_global_norm_of_non_finite_gradients():
    assert np.isnan(kernels.global_norm([np.array([np.inf]), np.array([np.nan, 1.0])]))
    assert kernels.global_norm([np.array([np.inf, 1.0], np.float32)]) == np.inf
    assert kernels.global_norm([]) == 0.0


def test_clip_value_bounds_and_keeps_nan():
    p = Box(np.zeros(5, np.float32))
    update(ClipValue(1.5), [p], {p: np.array([-3.0, -1.0, 0.5, 2.0, np.nan])})
    np.testing.assert_array_equal(p.value, [1.5, 1.0, -0.5, -1.5, np.nan])


@pytest.mark.parametrize("dtype", DTYPES)
def test_chain_clip_norm_then_adam(dtype):
    rng = np.random.default_rng(5)
    start = random_arrays(rng, dtype)
    grad_steps = [random_arrays(rng, dtype, scale=3.0) for _ in range(STEPS)]
    params = [Box(v.copy()) for v in start]
    opt = OptimiserChain(ClipNorm(1.0), Adam(0.01))
    for grads in grad_steps:
        update(opt, params, dict(zip(params, grads)))
    clipped_steps = [clip_norm_reference([g.astype(np.float64) for g in grads], 1.0)
                     for grads in grad_steps]
    expected = run_reference(adam_reference(0.01, (0.9, 0.999), 1e-8), start, clipped_steps)
    for p, want in zip(params, expected):
        np.testing.assert_allclose(p.value, want, **TOLERANCE[dtype])


def test_chain_transforms_in_order_and_flattens():
    g = np.array([4.0, -0.5])
    chain = OptimiserChain(OptimiserChain(ClipValue(1.0)), ClipNorm(1.0), Descent(0.5))
    assert len(chain.rules) == 3
    p = Box(np.zeros(2))
    update(chain, [p], {p: g})
    clipped = clip_norm_reference([np.clip(g, -1, 1)], 1.0)[0]
    np.testing.assert_allclose(p.value, -0.5 * clipped, rtol=1e-14)


def test_chain_of_transforms_alone_steps_by_the_gradient():
    p = Box(np.zeros(2))
    update(OptimiserChain(ClipValue(1.0)), [p], {p: np.array([3.0, 0.5])})
    np.testing.assert_array_equal(p.value, [-1.0, -0.5])


# ---------------------------------------------------------------- display and errors

@pytest.mark.parametrize("rule, text", [
    (Descent(), "Descent(lr=0.1)"),
    (Momentum(), "Momentum(lr=0.01, rho=0.9)"),
    (Nesterov(), "Nesterov(lr=0.001, rho=0.9)"),
    (RMSProp(), "RMSProp(lr=0.001, rho=0.9, eps=1e-08)"),
    (Adam(), "Adam(lr=0.001, betas=(0.9, 0.999), eps=1e-08)"),
    (ADAM(0.01), "Adam(lr=0.01, betas=(0.9, 0.999), eps=1e-08)"),
    (AdamW(), "AdamW(lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.01)"),
    (ClipNorm(1), "ClipNorm(max=1.0)"),
    (ClipValue(0.5), "ClipValue(v=0.5)"),
    (OptimiserChain(ClipNorm(1), Adam()),
     "OptimiserChain(ClipNorm(max=1.0), Adam(lr=0.001, betas=(0.9, 0.999), eps=1e-08))"),
])
def test_repr(rule, text):
    assert repr(rule) == text


def test_learning_rate_can_be_changed_between_steps():
    p = Box(np.zeros(1))
    opt = Descent(1.0)
    update(opt, [p], {p: np.ones(1)})
    opt.lr = 0.25
    update(opt, [p], {p: np.ones(1)})
    np.testing.assert_array_equal(p.value, [-1.25])
    with pytest.raises(ValueError, match=r"Descent: lr must be a finite number >= 0, got -1"):
        opt.lr = -1


@pytest.mark.parametrize("make, message", [
    (lambda: Descent(-0.1), r"Descent: lr must be a finite number >= 0, got -0\.1"),
    (lambda: Descent(float("nan")), r"Descent: lr must be a finite number >= 0, got nan"),
    (lambda: Momentum(0.1, 1.0), r"Momentum: rho must be in \[0, 1\), got 1\.0"),
    (lambda: Nesterov(0.1, -0.5), r"Nesterov: rho must be in \[0, 1\), got -0\.5"),
    (lambda: RMSProp(eps=-1e-8), r"RMSProp: eps must be a finite number >= 0, got -1e-08"),
    (lambda: Adam(betas=(0.9, 1.5)), r"Adam: betas\[1\] must be in \[0, 1\), got 1\.5"),
    (lambda: Adam(betas=0.9), r"Adam: betas must be a pair \(beta1, beta2\), got 0\.9"),
    (lambda: Adam(betas=(0.9, 0.99, 0.9)), r"Adam: betas must be a pair"),
    (lambda: AdamW(weight_decay=-1), r"AdamW: weight_decay must be a finite number >= 0"),
    (lambda: ClipNorm(0), r"ClipNorm: max must be > 0, got 0\.0"),
    (lambda: ClipValue(-1), r"ClipValue: v must be > 0, got -1\.0"),
    (lambda: OptimiserChain(), r"OptimiserChain: expected at least one rule, got none"),
    (lambda: OptimiserChain(Adam(), ClipNorm(1.0)),
     r"OptimiserChain: Adam\(.*\) updates the parameters, so it must be the last rule; "
     r"got it at position 1 of 2"),
])
def test_bad_hyperparameters_raise_value_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("make, message", [
    (lambda: Descent("0.1"), r"Descent: lr must be a real number, got str '0\.1'"),
    (lambda: Momentum(0.1, True), r"Momentum: rho must be a real number, got bool True"),
    (lambda: OptimiserChain(ClipNorm(1.0), "adam"),
     r"OptimiserChain: expected an optimisation rule such as recur\.Adam\(\), got str"),
])
def test_wrongly_typed_hyperparameters_raise_type_error(make, message):
    with pytest.raises(TypeError, match=message):
        make()


def test_update_errors():
    p = Box(np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match=r"update: got the class Adam, not a rule; call it: "
                                        r"Adam\(\)"):
        update(Adam, [p], {p: np.zeros((2, 3))})
    with pytest.raises(TypeError, match=r"update: expected an optimisation rule"):
        update(0.1, [p], {p: np.zeros((2, 3))})
    with pytest.raises(ValueError, match=r"update: gradient of shape \(3, 2\) for a parameter "
                                         r"of shape \(2, 3\)"):
        update(Adam(), [p], {p: np.zeros((3, 2))})
    with pytest.raises(TypeError, match=r"update: a complex128 gradient cannot update a "
                                        r"float32 parameter"):
        update(Adam(), [p], {p: np.zeros((2, 3), complex)})
    with pytest.raises(TypeError, match=r"update: expected parameters with a \.value array "
                                        r"\(pass recur\.params\(model\)\), got object"):
        update(Adam(), [object()], {})
    for gradients in ([np.zeros((2, 3))], (np.zeros((2, 3)),), np.zeros((1, 2, 3))):
        with pytest.raises(TypeError, match=r"update: gs must map each parameter to its "
                                            r"gradient \(the Grads that recur\.gradient "
                                            r"returns, or a dict keyed by parameter\), got a "
                                            + type(gradients).__name__):
            update(Adam(), [p], gradients)
    np.testing.assert_array_equal(p.value, 0.0)


@pytest.mark.parametrize("value", [np.zeros(3, np.int64), np.zeros(6)[::2],
                                   np.zeros(3, np.float16)])
def test_unusable_parameter_values_raise(value):
    p = Box(())
    p.value = value
    with pytest.raises(TypeError, match="update: a parameter's value must be a writable "
                                        "C-contiguous float32 or float64 array"):
        update(Descent(), [p], {p: np.zeros(3)})


def test_a_bad_gradient_changes_nothing():
    a, b = Box(np.ones(2)), Box(np.ones(2))
    opt = Adam()
    with pytest.raises(ValueError):
        update(opt, [a, b], {a: np.ones(2), b: np.ones(3)})
    np.testing.assert_array_equal(a.value, 1.0)
    update(opt, [a], {a: np.ones(2)})
    np.testing.assert_allclose(a.value, 1.0 - 0.001, rtol=1e-9)


def test_state_of_a_parameter_whose_value_changed_shape_raises():
    p = Box(np.zeros(3))
    opt = Momentum()
    update(opt, [p], {p: np.ones(3)})
    p.value = np.zeros(4)
    with pytest.raises(ValueError, match=r"a parameter's value is now float64\[4\] but its "
                                         r"optimiser state was made for float64\[3\]"):
        update(opt, [p], {p: np.ones(4)})


def test_kernels_refuse_unsafe_arrays():
    value = np.zeros(4)
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.descent([np.zeros(8)[::2]], [np.ones(4)], 0.1)
    with pytest.raises(ValueError, match="read-only"):
        frozen = np.zeros(4)
        frozen.flags.writeable = False
        kernels.descent([frozen], [np.ones(4)], 0.1)
    with pytest.raises(ValueError, match="beside a gradient"):
        kernels.descent([value], [np.ones(5)], 0.1)
    with pytest.raises(ValueError, match="beside a gradient"):
        kernels.descent([value], [np.ones(4, np.float32)], 0.1)
    with pytest.raises(TypeError, match="float32 or float64"):
        kernels.descent([np.zeros(4, np.int32)], [np.ones(4, np.int32)], 0.1)
    with pytest.raises(ValueError, match="2 arrays for 1 gradients"):
        kernels.descent([value, value], [np.ones(4)], 0.1)


# ---------------------------------------------------------------- torch parity

TORCH_STEPS = 20


def torch_pairs():
    torch = pytest.importorskip("torch")
    optim = torch.optim
    return torch, [
        ("adam", lambda: Adam(0.01), lambda ps: optim.Adam(ps, lr=0.01)),
        ("adam-betas", lambda: Adam(0.05, (0.8, 0.99), 1e-6),
         lambda ps: optim.Adam(ps, lr=0.05, betas=(0.8, 0.99), eps=1e-6)),
        ("adamw", lambda: AdamW(0.01), lambda ps: optim.AdamW(ps, lr=0.01)),
        ("adamw-decay", lambda: AdamW(0.01, weight_decay=0.3),
         lambda ps: optim.AdamW(ps, lr=0.01, weight_decay=0.3)),
        ("rmsprop", lambda: RMSProp(0.01, 0.9, 1e-8),
         lambda ps: optim.RMSprop(ps, lr=0.01, alpha=0.9, eps=1e-8)),
        ("descent", lambda: Descent(0.1), lambda ps: optim.SGD(ps, lr=0.1)),
        ("momentum", lambda: Momentum(0.01, 0.9),
         lambda ps: optim.SGD(ps, lr=0.01, momentum=0.9)),
        ("nesterov", lambda: Nesterov(0.01, 0.9),
         lambda ps: optim.SGD(ps, lr=0.01, momentum=0.9, nesterov=True)),
    ]


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-7), (np.float32, 1e-4)])
@pytest.mark.parametrize("case", ["adam", "adam-betas", "adamw", "adamw-decay", "rmsprop",
                                  "descent", "momentum", "nesterov"])
def test_matches_torch(case, dtype, rtol):
    torch, pairs = torch_pairs()
    _, make_rule, make_torch = next(pair for pair in pairs if pair[0] == case)
    rng = np.random.default_rng(6)
    start = random_arrays(rng, dtype)
    params = [Box(v.copy()) for v in start]
    tensors = [torch.tensor(v.copy(), requires_grad=True) for v in start]
    opt, torch_opt = make_rule(), make_torch(tensors)
    for _ in range(TORCH_STEPS):
        grads = random_arrays(rng, dtype)
        update(opt, params, dict(zip(params, grads)))
        for t, g in zip(tensors, grads):
            t.grad = torch.from_numpy(g.copy())
        torch_opt.step()
    for p, t in zip(params, tensors):
        np.testing.assert_allclose(p.value, t.detach().numpy(), rtol=rtol, atol=rtol * 1e-3)


def test_clip_norm_then_adam_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    start = random_arrays(rng, np.float64)
    params = [Box(v.copy()) for v in start]
    tensors = [torch.tensor(v.copy(), requires_grad=True) for v in start]
    opt, torch_opt = OptimiserChain(ClipNorm(0.5), Adam(0.01)), torch.optim.Adam(tensors, 0.01)
    for _ in range(TORCH_STEPS):
        grads = random_arrays(rng, np.float64)
        update(opt, params, dict(zip(params, grads)))
        for t, g in zip(tensors, grads):
            t.grad = torch.from_numpy(g.copy())
        torch.nn.utils.clip_grad_norm_(tensors, 0.5)
        torch_opt.step()
    for p, t in zip(params, tensors):
        np.testing.assert_allclose(p.value, t.detach().numpy(), rtol=1e-7, atol=1e-12)
