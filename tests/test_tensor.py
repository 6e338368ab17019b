"""Tensor and Param as arrays: the numpy-like surface of SPEC §2."""
import pickle

import numpy as np
import pytest

import recur as rc


def test_array_like_surface():
    value = np.arange(6.0, dtype=np.float32).reshape(2, 3)
    t = rc.Tensor(value)
    assert t.shape == (2, 3) and t.dtype == np.float32 and t.ndim == 2 and len(t) == 2
    assert t.T.shape == (3, 2)
    np.testing.assert_array_equal(t[1], value[1])
    np.testing.assert_array_equal(t[:, 1:].numpy(), value[:, 1:])
    assert rc.Tensor(np.array([2.5])).item() == 2.5
    assert float(rc.sum(t)) == 15.0
    assert [row.shape for row in t] == [(3,), (3,)]
    assert "Tensor(" in repr(t) and "float32" in repr(t)


def test_numpy_view_is_read_only_and_shares_memory():
    t = rc.tanh(np.ones((2, 2), np.float32))
    view = np.asarray(t)
    assert view is t.numpy() and not view.flags.writeable
    with pytest.raises(ValueError):
        view[0, 0] = 1


def test_constructor_copies_and_leaves_the_users_array_writable():
    mine = np.ones(3)
    t = rc.Tensor(mine)
    mine[0] = 7
    assert mine.flags.writeable and t.numpy()[0] == 1


def test_param_defaults_to_float32_and_keeps_float64():
    assert rc.param(np.ones(2)).dtype == np.float64
    assert rc.param([1, 2]).dtype == np.float32
    assert rc.param(np.ones(2, np.float32)).dtype == np.float32
    assert rc.param(np.ones(2), dtype=np.float32).dtype == np.float32


def test_param_value_updates_in_place():
    p = rc.param(np.zeros(3))
    p.value = np.ones(3)
    assert p.numpy().tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match=r"keep its shape \(3,\)"):
        p.value = np.ones(4)


def test_params_deduplicates_and_keeps_order():
    a, b = rc.param(np.ones(1)), rc.param(np.ones(2))
    ps = rc.Params([a, b, a])
    assert len(ps) == 2 and list(ps) == [a, b] and a in ps
    with pytest.raises(TypeError, match="Param"):
        rc.Params([np.ones(2)])


def test_grads_lookup_by_identity():
    a = rc.param(np.ones(2))
    gs = rc.gradient(lambda: rc.sum(a), [a])
    assert gs[a].tolist() == [1, 1] and a in gs and len(gs) == 1
    with pytest.raises(KeyError, match="not among the parameters"):
        gs[rc.param(np.ones(2))]


def test_detach_cuts_the_gradient():
    a = rc.param(np.full(2, 3.0))
    gs = rc.gradient(lambda: rc.sum(a * rc.detach(a)), [a])
    assert gs[a].tolist() == [3, 3]


def test_tensors_and_params_pickle():
    t = rc.Tensor(np.arange(3.0))
    p = rc.param(np.arange(2.0))
    t2, p2 = pickle.loads(pickle.dumps((t, p)))
    assert type(t2) is rc.Tensor and type(p2) is rc.Param
    np.testing.assert_array_equal(t2.numpy(), t.numpy())
    np.testing.assert_array_equal(p2.value, p.value)
    assert p2.value.flags.writeable


def test_comparisons_give_boolean_arrays():
    t = rc.Tensor(np.array([1.0, 2.0]))
    assert (t > 1.5).tolist() == [False, True]
    assert np.greater(t, 1.5).tolist() == [False, True]


def test_scalars_stay_zero_dimensional():
    m = rc.Dense(2, 1)
    loss = sum(rc.mse(m(np.ones(2)), np.ones(1)) for _ in range(3))
    assert loss.shape == () and isinstance(float(loss), float)
    assert (rc.sum(np.ones(3)) * 2.0).shape == ()
    assert rc.Tensor(np.float64(2.0)).shape == ()


class _NamedTensor(rc.Tensor):
    """A user's subclass with a slot of its own, which the fused kernels must still read."""
    __slots__ = ("name",)


def _named(value, name):
    t = _NamedTensor(value)
    t.name = name
    return t


def test_tensor_subclasses_and_params_feed_the_fused_kernels():
    rc.seed(0)
    x = np.random.rand(4, 3).astype(np.float32)
    h = np.random.rand(4, 5).astype(np.float32)
    dense, cell = rc.Dense(3, 2), rc.GRUCell(3, 5)
    for wrapped in (_named(x, "x"), rc.param(x)):
        np.testing.assert_array_equal(dense(wrapped).numpy(), dense(x).numpy())
        state, y = cell(_named(h, "h"), wrapped)
        np.testing.assert_array_equal(y.numpy(), cell(h, x)[1].numpy())
    ps = rc.params(dense)
    sub = _named(x, "x")
    _, grads = rc.value_and_gradient(lambda: rc.sum(dense(sub)), ps)
    np.testing.assert_allclose(grads[dense.W], np.tile(x.sum(0), (2, 1)), rtol=1e-6)


def test_a_tensor_without_its_value_raises_attribute_error():
    # object.__new__ leaves the slots empty: the kernels must say so, not read them.
    empty = rc.Tensor.__new__(rc.Tensor)
    with pytest.raises(AttributeError):
        rc.Dense(3, 2)(empty)
    with pytest.raises(AttributeError):
        rc.GRUCell(3, 5)(np.zeros((4, 5), np.float32), empty)
    with pytest.raises(AttributeError):
        empty + empty
