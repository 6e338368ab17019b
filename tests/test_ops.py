"""Gradient checks driven by the op registry: every op code needs a case here, and every
case is checked against float64 finite differences and float32 analytic gradients."""
import warnings

import numpy as np
import pytest

import recur as rc
from recur import ops
from recur import reference as ref
from recur._core.registry import CODES
from recur._core.tape import thread_tape

rng = np.random.default_rng(0)


def randn(*shape):
    return rng.standard_normal(shape)


def positive(*shape):
    return rng.uniform(0.5, 2.0, shape)


def away_from_zero(*shape):
    """Values at least 0.1 from 0 (and from the kinks of relu, abs, leakyrelu)."""
    x = rng.uniform(0.1, 1.5, shape)
    return x * rng.choice([-1.0, 1.0], shape)


def onehot(rows, classes):
    y = np.zeros((rows, classes))
    y[np.arange(rows), rng.integers(0, classes, rows)] = 1
    return y


def probabilities(*shape):
    p = rng.uniform(0.1, 1.0, shape)
    return p / p.sum(axis=-1, keepdims=True)


ONEHOT_3x4, ONEHOT_2x5 = onehot(3, 4), onehot(2, 5)
BITS_4 = rng.integers(0, 2, (4,)).astype(float)
BITS_2x3 = rng.integers(0, 2, (2, 3)).astype(float)
PROBS_A, PROBS_B = probabilities(2, 3), probabilities(2, 3)
EMBED = rc.Embedding(6, 3, dtype=np.float64)
TARGET = randn(3, 4)


# name -> (function of Params, input arrays)
CASES = {
    "add same shape": (lambda a, b: a + b, [randn(3, 4), randn(3, 4)]),
    "add 0-d pair": (lambda a, b: a + b, [randn(), randn()]),
    "sub same shape": (lambda a, b: a - b, [randn(2, 3), randn(2, 3)]),
    "mul same shape": (lambda a, b: a * b, [randn(4), randn(4)]),
    "add broadcast rows/cols": (lambda a, b: a + b, [randn(3, 1), randn(1, 4)]),
    "add trailing vector": (lambda a, b: a + b, [randn(2, 3, 4), randn(4)]),
    "add 0-d": (lambda a, b: a + b, [randn(), randn(2, 3)]),
    "add python scalar": (lambda a: 2.5 + a, [randn(3)]),
    "sub broadcast": (lambda a, b: a - b, [randn(2, 1, 4), randn(3, 1)]),
    "rsub scalar": (lambda a: 1 - a, [randn(3)]),
    "mul broadcast": (lambda a, b: a * b, [randn(2, 3, 1), randn(1, 3, 4)]),
    "mul size-1 axes": (lambda a, b: a * b, [randn(1, 1), randn(1, 5)]),
    "div": (lambda a, b: a / b, [randn(3, 4), positive(4)]),
    "rdiv scalar": (lambda a: 2 / a, [positive(3, 2)]),
    "pow cube": (lambda a: a ** 3, [randn(2, 3)]),
    "pow half": (lambda a: a ** 0.5, [positive(4)]),
    "pow negative": (lambda a: a ** -1.5, [positive(2, 2)]),
    "neg": (lambda a: -a, [randn(3)]),
    "tanh": (rc.tanh, [randn(2, 3)]),
    "np.tanh": (np.tanh, [randn(2, 3)]),
    "sigmoid": (rc.sigmoid, [randn(5)]),
    "relu": (rc.relu, [away_from_zero(3, 3)]),
    "leakyrelu": (lambda a: rc.leakyrelu(a, 0.2), [away_from_zero(3, 3)]),
    "elu": (lambda a: rc.elu(a, 0.7), [away_from_zero(4)]),
    "softplus": (rc.softplus, [randn(2, 2)]),
    "exp": (rc.exp, [randn(3)]),
    "log": (rc.log, [positive(3)]),
    "sqrt": (rc.sqrt, [positive(2, 3)]),
    "abs": (rc.abs, [away_from_zero(5)]),
    "square": (rc.square, [randn(2, 2)]),
    "where": (lambda a, b: rc.where(np.array([[True], [False]]), a, b), [randn(2, 3), randn(3)]),
    "clip": (lambda a: rc.clip(a, -0.5, 0.5), [np.array([-1.0, -0.3, 0.2, 0.45, 0.8])]),
    "sum all (0-d result)": (rc.sum, [randn(3, 4)]),
    "sum axis": (lambda a: rc.sum(a, axis=1), [randn(2, 3, 4)]),
    "sum axes keepdims": (lambda a: rc.sum(a, axis=(0, 2), keepdims=True), [randn(2, 3, 4)]),
    "sum 0-d input": (rc.sum, [randn()]),
    "np.sum": (lambda a: np.sum(a, axis=0), [randn(3, 2)]),
    "mean": (lambda a: rc.mean(a, axis=-1), [randn(3, 5)]),
    "mean all": (rc.mean, [randn(4)]),
    "max all": (rc.max, [randn(3, 4)]),
    "max axis": (lambda a: rc.max(a, axis=0), [randn(3, 4)]),
    "max ties share": (lambda a: rc.max(a * 0 + 1) * rc.sum(a), [randn(2, 2)]),
    "softmax": (rc.softmax, [randn(3, 4)]),
    "softmax axis 0": (lambda a: rc.softmax(a, axis=0), [randn(3, 2, 2)]),
    "logsoftmax": (rc.logsoftmax, [randn(2, 5)]),
    "logsoftmax middle axis": (lambda a: rc.logsoftmax(a, axis=1), [randn(2, 3, 2)]),
    "broadcast_to": (lambda a: ops.broadcast_to(a, (2, 3, 4)), [randn(3, 1)]),
    "reshape": (lambda a: rc.reshape(a, (4, 3)) * TARGET.T, [randn(3, 4)]),
    "transpose": (lambda a: rc.transpose(a), [randn(3, 4)]),
    "transpose axes": (lambda a: rc.transpose(a, (1, 2, 0)), [randn(2, 3, 4)]),
    ".T": (lambda a: a.T, [randn(2, 5)]),
    "slice strided": (lambda a: a[:, 1:3], [randn(3, 4)]),
    "slice step": (lambda a: a[::2], [randn(5, 2)]),
    "index row (alias)": (lambda a: a[1], [randn(3, 4)]),
    "index scalar": (lambda a: a[1, 2] * a[0, 0], [randn(3, 4)]),
    "index rows repeated": (lambda a: a[[0, 2, 2]], [randn(3, 4)]),
    "index mask": (lambda a: a[np.array([True, False, True])], [randn(3, 2)]),
    "index pairs": (lambda a: a[[0, 1], [1, 2]], [randn(3, 4)]),
    "index negative rows": (lambda a: a[[-1, 0]], [randn(3, 2)]),
    "concat axis 0": (lambda a, b: rc.concat([a, b], axis=0), [randn(2, 3), randn(1, 3)]),
    "concat axis 1": (lambda a, b: rc.concat([a, b], axis=1), [randn(2, 3), randn(2, 2)]),
    "np.concatenate": (lambda a, b: np.concatenate([a, b]), [randn(2), randn(3)]),
    "stack": (lambda a, b: rc.stack([a, b]), [randn(2, 3), randn(2, 3)]),
    "stack last axis": (lambda a, b: rc.stack([a, b], axis=-1), [randn(2, 3), randn(2, 3)]),
    "stack with constant": (lambda a: rc.stack([a, np.ones(3)], axis=1), [randn(3)]),
    "matmul 2d": (lambda a, b: a @ b, [randn(3, 4), randn(4, 2)]),
    "matmul vector-matrix": (lambda a, b: a @ b, [randn(4), randn(4, 2)]),
    "matmul matrix-vector": (lambda a, b: a @ b, [randn(3, 4), randn(4)]),
    "matmul dot (0-d)": (lambda a, b: a @ b, [randn(4), randn(4)]),
    "matmul stacked by matrix": (lambda a, b: a @ b, [randn(2, 3, 4), randn(4, 2)]),
    "matmul batched": (lambda a, b: a @ b, [randn(2, 3, 4), randn(2, 4, 2)]),
    "matmul matrix by stack": (lambda a, b: a @ b, [randn(3, 4), randn(2, 4, 2)]),
    "matmul batch broadcast": (lambda a, b: a @ b, [randn(2, 1, 3, 4), randn(3, 4, 2)]),
    "matmul with constant": (lambda a: TARGET @ a, [randn(4, 2)]),
    "dense params": (lambda x: _dense_tanh(x), [randn(5, 3)]),
    "dense 1-d": (lambda x: _dense_sigmoid(x), [randn(3)]),
    "dense 3-d relu": (lambda x: _dense_relu(x), [randn(2, 2, 3) + 3]),
    "dense no bias": (lambda x: _dense_nobias(x), [randn(2, 3)]),
    "dense other activation": (lambda x: _dense_softplus(x), [randn(2, 3)]),
    "embedding": (lambda W: rc.ops.getitem(W, np.array([[0, 5], [5, 2]])), [randn(6, 3)]),
    # float32 inside: a linear function, so a wide step loses nothing but rounding.
    "cast": (lambda a: rc.ops.cast(a, np.float32) * TARGET[0, :3], [randn(3)], dict(eps=0.5, rtol=1e-5)),
    "mse": (lambda a: rc.mse(a, TARGET), [randn(3, 4)]),
    "mse wrt target": (lambda y: rc.mse(TARGET, y), [randn(3, 4)]),
    "mse wrt both": (lambda a, y: rc.mse(a, y), [randn(3, 4), randn(3, 4)]),
    "mae": (lambda a: rc.mae(a, TARGET), [TARGET + away_from_zero(3, 4)]),
    "crossentropy": (lambda a: rc.crossentropy(a, ONEHOT_3x4), [probabilities(3, 4)]),
    "logitcrossentropy": (lambda a: rc.logitcrossentropy(a, ONEHOT_2x5), [randn(2, 5)]),
    "binarycrossentropy": (lambda a: rc.binarycrossentropy(a, BITS_4), [rng.uniform(0.1, 0.9, 4)]),
    "logitbinarycrossentropy": (lambda a: rc.logitbinarycrossentropy(a, BITS_2x3), [randn(2, 3)]),
    "huber_loss": (lambda a: rc.huber_loss(a, np.zeros(6)), [np.array([-2.0, -0.5, 0.3, 0.9, 1.7, 3.0])]),
    "kldivergence": (lambda a: rc.kldivergence(a, PROBS_A), [probabilities(2, 3)]),
    "kldivergence wrt target": (lambda y: rc.kldivergence(PROBS_B, y), [probabilities(2, 3)]),
    "loss sum agg": (lambda a: rc.mse(a, TARGET, agg=rc.sum), [randn(3, 4)]),
    "loss over steps": (lambda a: sum(rc.mse(a[t], TARGET[t]) for t in range(3)), [randn(3, 4)]),
}


def _dense(act, bias=True):
    layer = rc.Dense(3, 4, act, bias=bias, dtype=np.float64, rng=np.random.default_rng(1))
    if bias:
        layer.b.value = np.random.default_rng(2).standard_normal(4)
    return layer


_dense_tanh = _dense(rc.tanh)
_dense_sigmoid = _dense(rc.sigmoid)
_dense_relu = _dense(rc.relu)
_dense_nobias = _dense(rc.identity, bias=False)
_dense_softplus = _dense(rc.softplus)
CASES["dense weights"] = (lambda W, b: _dense_with(W, b, rc.tanh), [randn(4, 3), randn(4)])
CASES["dense identity weights"] = (lambda x, W, b: _dense_with(W, b, rc.identity, x), [randn(2, 3), randn(4, 3), randn(4)])


def _dense_with(W, b, act, x=TARGET[:, :3]):
    layer = rc.Dense(3, 4, act, dtype=np.float64)
    layer.W, layer.b = W, b
    return layer(x)


CASES["embedding layer"] = (lambda W: _embed_with(W), [randn(6, 3)])


def _embed_with(W):
    EMBED.W = W
    return EMBED(np.array([[1, 1, 4], [0, 5, 2]]))


def recorded_ops(f, arrays, dtype=np.float64):
    """The op codes recorded while differentiating f at `arrays`."""
    ps = [rc.param(a, dtype) for a in arrays]
    seen = []

    def loss():
        out = rc.sum(f(*ps))
        seen.extend(thread_tape().recorded_ops())
        return out

    rc.gradient(loss, ps)
    return set(seen)


def test_every_registered_op_has_a_gradient_case():
    from tests.test_recurrent_cases import RECURRENT_CASES
    covered = set()
    for f, arrays, *_ in list(CASES.values()) + list(RECURRENT_CASES.values()):
        covered |= recorded_ops(f, arrays)
    missing = sorted(name for name, code in CODES.items() if code not in covered)
    assert not missing, f"ops without a gradient case: {missing}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_float64_matches_finite_differences(name):
    f, arrays, *options = CASES[name]
    assert rc.check_gradients(f, *arrays, **(options[0] if options else {})) < 1e-5


@pytest.mark.parametrize("name", sorted(CASES))
def test_float32_gradients_match_float64(name):
    f, arrays, *_ = CASES[name]
    grads = {}
    for dtype in (np.float32, np.float64):
        ps = [rc.param(a, dtype) for a in arrays]
        weights = {}

        def loss():
            out = f(*ps)
            if "w" not in weights:
                weights["w"] = np.random.default_rng(5).standard_normal(out.shape).astype(dtype)
            return rc.sum(out * weights["w"])

        gs = rc.gradient(loss, ps)
        grads[dtype] = [gs[p] for p in ps]
        for p, g in zip(ps, grads[dtype]):
            assert g is None or g.dtype == dtype
    for g32, g64 in zip(grads[np.float32], grads[np.float64]):
        scale = max(np.abs(g64).max(), 1e-3)
        assert np.abs(g32 - g64).max() / scale < 1e-4


def test_cast_gradient_returns_in_the_inputs_dtype():
    x = rc.param(np.arange(3.0), np.float32)
    gs = rc.gradient(lambda: rc.sum(rc.ops.cast(x, np.float64) * np.array([1.0, 2.0, 3.0])), [x])
    assert gs[x].dtype == np.float32
    np.testing.assert_array_equal(gs[x], [1, 2, 3])


def test_mixed_dtypes_promote_like_numpy():
    a32 = rc.param(np.ones(2), np.float32)
    b64 = rc.param(np.ones(2), np.float64)
    assert (a32 + b64).dtype == np.float64
    assert (a32 + np.arange(2)).dtype == np.float32          # ints adopt the float type
    assert (a32 * 2.0).dtype == np.float32                     # Python scalars are weak
    assert rc.tanh(np.arange(3)).dtype == np.float32           # float32 by default
    gs = rc.gradient(lambda: rc.sum(a32 * b64), [a32, b64])
    assert gs[a32].dtype == np.float32 and gs[b64].dtype == np.float64


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_same_shape_arithmetic_gives_numpys_values_recorded_or_not(dtype):
    # Two Tensors of one dtype and shape take one C call (ops_elementwise.pyx); its values
    # are numpy's to the bit, on the tape or off it, and mixed dtypes still promote.
    x, y = randn(3, 5).astype(dtype), randn(3, 5).astype(dtype)
    a, b = rc.param(x, dtype), rc.param(y, dtype)
    for op in (np.add, np.subtract, np.multiply):
        np.testing.assert_array_equal(op(rc.Tensor(x), rc.Tensor(y)).value, op(x, y))
        recorded = {}
        rc.gradient(lambda: (recorded.setdefault("v", op(a, b)), rc.sum(recorded["v"]))[1],
                    [a, b])
        assert recorded["v"].dtype == dtype and not recorded["v"].value.flags.writeable
        np.testing.assert_array_equal(recorded["v"].value, op(x, y))
    other = np.float64 if dtype == np.float32 else np.float32
    assert (a + rc.param(y, other)).dtype == np.float64


def test_values_match_numpy():
    x = randn(3, 4)
    np.testing.assert_allclose(rc.softmax(x).value, np.exp(x) / np.exp(x).sum(-1, keepdims=True))
    np.testing.assert_allclose(rc.logsoftmax(x).value, np.log(rc.softmax(x).value))
    np.testing.assert_allclose(rc.softplus(x).value, np.log1p(np.exp(x)))
    np.testing.assert_allclose(rc.elu(x).value, np.where(x > 0, x, np.expm1(x)))
    np.testing.assert_allclose((rc.Tensor(x) @ x.T).value, x @ x.T)
    np.testing.assert_allclose(rc.max(x, axis=1).value, x.max(1))
    a, b = randn(2, 1, 3, 4), randn(5, 4, 2)
    np.testing.assert_allclose((rc.Tensor(a) @ b).value, a @ b)
    np.testing.assert_allclose(rc.Tensor(x)[[0, 2], 1:].value, x[[0, 2], 1:])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_and_elu_keep_their_precision_far_below_zero(dtype):
    """Both tails of sigmoid, its gradient below 0 and elu's, to a few ulp of float64's
    values (relative): no cancellation to 0 where the true value is tiny but representable.
    (Above 0 sigmoid's gradient is y (1 - y) from its output, which cancels as torch's
    does: float32 gives 0 at 30 in both.)"""
    x = np.array([-700, -80, -30, -20, -12, -3, -0.5, 0, 0.5, 3, 12, 30, 80, 700], dtype)
    exact = ref.sigmoid(x.astype(np.float64))
    representable = exact > np.finfo(dtype).tiny
    tolerance = 8 * np.finfo(dtype).eps
    p = rc.param(x.copy())
    y = {}
    g = rc.gradient(lambda: rc.sum(y.setdefault("s", rc.sigmoid(p))), [p])[p]
    assert y["s"].dtype == dtype
    np.testing.assert_allclose(y["s"].value[representable], exact[representable],
                               rtol=tolerance, atol=0)
    slope = exact * (1 - exact)
    below = representable & (x <= 0)
    np.testing.assert_allclose(np.asarray(g)[below], slope[below], rtol=2 * tolerance, atol=0)

    ends = rc.sigmoid(np.array([-np.inf, np.inf, np.nan, -1e4, 1e4], dtype)).value
    np.testing.assert_array_equal(ends, np.array([0, 1, np.nan, 0, 1], dtype))
    far = rc.sigmoid(np.array([-100], dtype)).value[0]       # a subnormal in float32
    expected = ref.sigmoid(-100.0)
    assert abs(far - expected) <= max(np.finfo(dtype).smallest_subnormal, tolerance * expected)

    p = rc.param(x.copy())
    g = rc.gradient(lambda: rc.sum(rc.elu(p, 0.7)), [p])[p]
    slope = np.where(x > 0, 1.0, 0.7 * np.exp(x.astype(np.float64)))
    representable = slope > np.finfo(dtype).tiny
    np.testing.assert_allclose(np.asarray(g)[representable], slope[representable],
                               rtol=tolerance, atol=0)


def test_elu_of_large_values_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = rc.elu(np.array([1e3, 50.0, -1e3], np.float32)).value
    np.testing.assert_array_equal(value, np.array([1e3, 50.0, -1.0], np.float32))
