"""Arrays in any layout numpy allows: the other byte order (a file written on another
machine), misaligned (a view into a byte buffer), Fortran order, negative strides,
read-only. recur's kernels read the bytes as they lie, so whatever reaches them is first
made a C-contiguous, aligned array in this machine's byte order; the values and gradients
are then those of such a copy, to the last bit."""
import numpy as np
import pytest

import recur as rc


def _other_byte_order(a):
    return a.astype(a.dtype.newbyteorder("S"))


def _misaligned(a):
    out = np.frombuffer(bytearray(a.nbytes + 1), a.dtype, offset=1).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned
    return out


def _negative_strides(a):
    return np.flip(np.ascontiguousarray(np.flip(a)))


def _read_only(a):
    out = a.copy()
    out.flags.writeable = False
    return out


LAYOUTS = {"other byte order": _other_byte_order, "misaligned": _misaligned,
           "Fortran order": np.asfortranarray, "negative strides": _negative_strides,
           "read-only": _read_only}

rng = np.random.default_rng(11)
SEQUENCE = rng.standard_normal((5, 4, 3))
TARGET = rng.standard_normal((5, 4, 2))


def _models():
    rc.seed(3)
    return {"dense": rc.Dense(3, 2, rc.tanh), "rnn": rc.Chain(rc.RNN(3, 6), rc.Dense(6, 2)),
            "lstm": rc.Chain(rc.LSTM(3, 6), rc.Dense(6, 2)),
            "gru": rc.Chain(rc.GRU(3, 6), rc.Dense(6, 2)),
            "gruv3": rc.Chain(rc.GRUv3(3, 6), rc.Dense(6, 2))}


MODELS = _models()

# name -> f(x) for x of SEQUENCE's shape, giving a Tensor of TARGET's shape or a scalar
USES = {
    **{f"{name} over a sequence": (lambda x, m=m: m(x)) for name, m in MODELS.items()},
    **{f"{name} step by step": (lambda x, m=m: rc.stack([m(x_t) for x_t in x]))
       for name, m in MODELS.items() if name != "dense"},
    "mse against it": lambda x: rc.mse(MODELS["lstm"](SEQUENCE[..., :2] @ np.ones((2, 3))),
                                       x[..., :2]),
    "tanh": lambda x: MODELS["dense"](rc.tanh(x)),
    "sum and product": lambda x: MODELS["dense"](x * x + x),
    "matmul": lambda x: MODELS["dense"](x @ np.eye(3)),
    "softmax": lambda x: MODELS["dense"](rc.softmax(x)),
    "concat and where": lambda x: MODELS["gru"](rc.where(x > 0, x, rc.concat([x[:1], x[1:]]))),
    "logitcrossentropy": lambda x: rc.logitcrossentropy(MODELS["rnn"](x), rc.softmax(x[..., :2])),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("use", sorted(USES))
def test_any_layout_gives_the_values_and_gradients_of_a_native_copy(use, layout, dtype):
    f = USES[use]
    native = SEQUENCE.astype(dtype)
    odd = LAYOUTS[layout](native)
    assert np.array_equal(odd, native)
    for m in MODELS.values():
        rc.reset(m)
    want = np.asarray(f(native))
    for m in MODELS.values():
        rc.reset(m)
    got = np.asarray(f(odd))
    assert got.dtype == want.dtype and got.dtype.isnative
    np.testing.assert_array_equal(got, want)

    ps = rc.params(list(MODELS.values()))

    def loss(x):
        for m in MODELS.values():
            rc.reset(m)
        out = f(x)
        return out if out.ndim == 0 else rc.sum(out * TARGET)

    want_gs = rc.gradient(lambda: loss(native), ps)
    got_gs = rc.gradient(lambda: loss(odd), ps)
    for p in ps:
        if want_gs[p] is None:
            assert got_gs[p] is None
        else:
            np.testing.assert_array_equal(got_gs[p], want_gs[p])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_parameters_and_layers_hold_their_values_in_this_machines_byte_order(dtype):
    swapped = np.dtype(dtype).newbyteorder("S")
    p = rc.param(np.arange(3, dtype=swapped))
    assert p.dtype == np.dtype(dtype) and p.dtype.isnative      # float64 stays float64
    np.testing.assert_array_equal(p.value, np.arange(3))
    p.value = np.arange(3, 6, dtype=swapped)
    np.testing.assert_array_equal(p.value, np.arange(3, 6))
    for layer in (rc.Dense(3, 2, dtype=swapped), rc.LSTM(3, 2, dtype=swapped)):
        assert all(q.dtype == np.dtype(dtype) for q in rc.params(layer))
    cell = rc.GRUCell.from_weights(np.ones((6, 3), swapped), np.ones((6, 2), swapped),
                                   np.zeros(6, swapped))
    assert cell.Wi.dtype == np.dtype(dtype)


def test_an_update_with_a_gradient_in_the_other_byte_order_steps_by_its_values():
    p, q = rc.param(np.ones(3)), rc.param(np.ones(3))
    g = np.array([0.5, -1.0, 2.0])
    rc.update(rc.Descent(0.1), [p], {p: _other_byte_order(g)})
    rc.update(rc.Descent(0.1), [q], {q: g})
    np.testing.assert_array_equal(p.value, q.value)
    np.testing.assert_array_equal(p.value, 1 - 0.1 * g)


def test_update_refuses_something_other_than_a_mapping_of_gradients():
    p = rc.param(np.ones(3))
    with pytest.raises(TypeError, match="gs must map each parameter to its gradient.*NoneType"):
        rc.update(rc.Descent(0.1), [p], None)
