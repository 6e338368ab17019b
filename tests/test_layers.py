"""Dense, Chain, Embedding, Dropout, initialisers and the seed (SPEC §3)."""
import numpy as np
import pytest

import recur as rc


@pytest.mark.parametrize("shape", [(3,), (4, 3), (2, 4, 3)])
def test_dense_maps_the_last_axis_of_any_rank(shape):
    d = rc.Dense(3, 5, rc.tanh)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    y = d(x)
    assert y.shape == shape[:-1] + (5,) and y.dtype == np.float32
    np.testing.assert_allclose(y.numpy(), np.tanh(x @ d.W.value.T + d.b.value), rtol=1e-5)


def test_dense_casts_input_to_its_dtype():
    d = rc.Dense(2, 2)
    assert d(np.ones(2, np.float64)).dtype == np.float32
    assert d(np.array([1, 2])).dtype == np.float32
    d64 = rc.Dense(2, 2, dtype=np.float64)
    assert d64(np.ones(2, np.float32)).dtype == np.float64


def test_dense_takes_any_layout_and_records_a_cast_of_other_dtypes():
    # Arrays the layer's C entry cannot take as they are (a view with strides, a list, a
    # Tensor of float64 on a float32 layer) go through the layer's conversions.
    d = rc.Dense(3, 2)
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    want = x @ d.W.value.T + d.b.value
    np.testing.assert_allclose(d(x[::2]).numpy(), want[::2], rtol=1e-6)
    np.testing.assert_allclose(d(x.tolist()).numpy(), want, rtol=1e-6)
    p = rc.param(x.astype(np.float64), np.float64)
    grads = rc.gradient(lambda: rc.sum(d(p)), p)
    assert grads[p].dtype == np.float64
    np.testing.assert_allclose(grads[p], np.tile(d.W.value.sum(0), (4, 1)), rtol=1e-6)
    d.W = rc.param(np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"Dense: W must be a matrix, got shape \(3,\)"):
        d(x)


def test_dense_with_an_unfused_activation_and_without_bias():
    d = rc.Dense(3, 2, rc.softplus, bias=False)
    assert d.b is None and len(rc.params(d)) == 1
    x = np.ones((1, 3), np.float32)
    np.testing.assert_allclose(d(x).numpy(), np.logaddexp(0, x @ d.W.value.T), rtol=1e-6)
    assert repr(d) == "Dense(3 => 2, softplus, bias=False)"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_weight_gradients_of_many_small_steps_match_one_call_over_them_all(dtype):
    # Applied a step at a time, each node's dW = dzᵀ x waits to join the next steps' in one
    # product (deferred.h), run once 256 rows have gathered or before anything reads the
    # gradient: the second layer's weights are computed (P / 2), so their node reads the
    # gradient mid-pass, and its tanh takes dz from the node's own scratch. The gradients'
    # rows, 300 and 3, take the panel kernel's two ways of gathering the steps' dz from
    # where they lie (blas.pyx: segments_product), and 9 x 6 the BLAS's over a stacked copy.
    rng = np.random.default_rng(23)
    first, second = rc.Dense(6, 300, dtype=dtype), rc.Dense(300, 3, rc.tanh, dtype=dtype)
    small = rc.Dense(6, 9, dtype=dtype)
    P = rc.param(2 * second.W.value)
    X = rng.standard_normal((70, 5, 6)).astype(dtype)
    seed = rng.standard_normal((70, 5, 3)).astype(dtype)
    ps = [P, first.W, first.b, second.b, small.W]
    results = {}
    for path in ("whole", "steps"):
        def loss():
            second.W = P / 2
            model = rc.Chain(first, second)
            Y = model(X) if path == "whole" else rc.stack([model(x) for x in X])
            Z = small(X) if path == "whole" else rc.stack([small(x) for x in X])
            return rc.sum(Y * seed) + rc.sum(Z[..., :3] * seed)

        results[path] = rc.gradient(loss, ps)
    rtol = 1e-4 if dtype == np.float32 else 1e-11
    for p in ps:
        np.testing.assert_allclose(results["steps"][p], results["whole"][p], rtol=rtol,
                                   atol=rtol, err_msg=str(p.shape))


def test_chain_is_a_sequence_of_callables():
    m = rc.Chain(rc.Dense(2, 4, rc.relu), rc.Dense(4, 3), rc.softmax, lambda y: y * 2)
    assert len(m) == 4 and isinstance(m[0], rc.Dense) and len(list(m)) == 4
    assert isinstance(m[:2], rc.Chain) and len(m[:2]) == 2
    y = m(np.ones((5, 2), np.float32))
    np.testing.assert_allclose(y.numpy().sum(-1), 2.0, rtol=1e-5)


def test_chain_display_counts_parameters():
    text = repr(rc.Chain(rc.Dense(2, 5, rc.relu), rc.Dense(5, 1)))
    assert text == ("Chain(\n"
                    "  Dense(2 => 5, relu),  # 15 parameters\n"
                    "  Dense(5 => 1),  # 6 parameters\n"
                    ")  # Total: 4 trainable arrays, 21 parameters, 84 bytes.")


def test_embedding_looks_up_rows_for_indices_of_any_shape():
    e = rc.Embedding(10, 4)
    idx = np.array([[1, 2, 3], [9, 0, 1]])
    y = e(idx)
    assert y.shape == (2, 3, 4)
    np.testing.assert_array_equal(y.numpy(), e.W.value[idx])
    gs = rc.gradient(lambda: rc.sum(e(idx)), e)
    counts = np.bincount(idx.ravel(), minlength=10)
    np.testing.assert_array_equal(gs[e.W], np.repeat(counts[:, None], 4, axis=1))


def test_dropout_is_identity_outside_gradient_and_active_inside():
    drop = rc.Dropout(0.5, rng=np.random.default_rng(0))
    x = np.ones(1000, np.float32)
    assert drop(x) is x
    p = rc.param(np.ones(1000, np.float32))
    seen = {}

    def loss():
        seen["y"] = drop(p)
        return rc.sum(seen["y"])

    gs = rc.gradient(loss, [p])
    y = seen["y"].numpy()
    assert set(np.unique(y)) == {0.0, 2.0} and 400 < (y == 0).sum() < 600
    np.testing.assert_array_equal(gs[p], y)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        rc.Dropout(1.0)


def test_glorot_uniform_bounds_over_the_stacked_matrix():
    W = rc.glorot_uniform(400, 100, rng=np.random.default_rng(0))
    limit = np.sqrt(6 / 500)
    assert W.dtype == np.float32 and W.shape == (400, 100)
    assert np.abs(W).max() <= limit and np.abs(W).max() > 0.95 * limit
    Wn = rc.glorot_normal(300, 200, rng=np.random.default_rng(0))
    assert abs(Wn.std() - np.sqrt(2 / 500)) < 0.002
    assert rc.zeros(2, 3).sum() == 0 and rc.ones(4).sum() == 4


def test_seed_makes_initialisation_reproducible():
    rc.seed(42)
    a = rc.Dense(3, 3).W.value.copy()
    rc.seed(42)
    b = rc.Dense(3, 3).W.value.copy()
    np.testing.assert_array_equal(a, b)


def test_params_walks_nested_structures():
    inner = rc.Dense(2, 2)
    model = {"encoder": [inner, rc.Chain(rc.Dense(2, 3), inner)], "head": rc.Dense(3, 1)}
    assert len(rc.params(model)) == 6


def test_containers_are_what_walk_finds_but_the_leaves_in_its_order():
    from recur.walk import _LEAF, _kind, containers, walk

    class Pair:                 # names its children itself
        def __init__(self, a, b):
            self.a, self.b = a, b

        def _children(self):
            return [("second", self.b), ("first", self.a)]

    class Holder:               # plain attributes, a private one skipped
        def __init__(self):
            self.layers = (rc.LSTM(2, 3), {"gru": rc.GRU(3, 2), "fn": np.tanh})
            self._hidden = rc.RNN(1, 1)
            self.scale = 2.0

    shared = rc.Chain(rc.RNN(2, 2), rc.Dense(2, 2))
    model = {"encoder": [shared, Holder(), Pair(shared, rc.Dense(1, 1))],
             "decoder": (rc.Chain(shared, rc.LSTM(2, 2)), [np.zeros(3), "text", None])}
    model["encoder"].append(model["encoder"])          # a cycle
    expected = [x for x in walk(model) if _kind(type(x)) != _LEAF]
    found = containers(model)
    assert [id(x) for x in found] == [id(x) for x in expected]
    assert len(expected) > 10
    assert containers(np.zeros(2)) == [] and containers(rc.Dense(1, 1).W) == []
    recurs = [m for m in found if isinstance(m, rc.Recur)]
    assert len(recurs) == 4         # the shared RNN once; the private RNN not at all
    lstm, dense = rc.LSTM(2, 3), rc.Dense(3, 1)
    chain = rc.Chain(lstm, dense)   # the LSTM's state0 tuple is its cell's, met once
    assert [id(x) for x in containers(chain)] == [id(chain), id(lstm), id(lstm.cell),
                                                  id(lstm.state0), id(dense)]


def test_walk_is_a_depth_first_pass_over_what_children_names():
    # The compiled walk (_core/walk.pyx) against the same walk written as recursion over
    # walk.children: everything once, parents first, each container's children in order.
    from recur.walk import children, walk

    def depth_first(obj, seen):
        if id(obj) in seen:
            return []
        seen.add(id(obj))
        found = [obj]
        for _, child in children(obj):
            found += depth_first(child, seen)
        return found

    class Holder:
        def __init__(self):
            self.first = rc.Chain(rc.GRU(2, 2), rc.Dense(2, 1, rc.relu))
            self._private = rc.Dense(1, 1)
            self.table = {"a": self.first, 3: [1.5, None], "b": (np.ones(2), print)}

    shared = rc.LSTM(2, 2)
    model = [Holder(), {"x": shared, "y": [shared, rc.Chain(shared, rc.RNN(2, 1))]}, ()]
    model.append(model)                 # a cycle
    want = depth_first(model, set())
    assert [id(x) for x in walk(model)] == [id(x) for x in want]
    assert len(want) > 25
    assert walk(3.0) == [3.0] and [id(x) for x in walk(shared.cell.Wi)] == [id(shared.cell.Wi)]


@pytest.mark.parametrize("make", [lambda: rc.Dense(2, 3), lambda: rc.LSTM(2, 3),
                                  lambda: rc.GRUCell(2, 3), lambda: rc.Embedding(4, 2),
                                  lambda: rc.Chain(rc.RNN(2, 3), rc.Dense(3, 1))])
def test_every_layer_saves_and_loads_its_state(make):
    model, other = make(), make()
    other.load_state_dict(model.state_dict())
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[name], value)
