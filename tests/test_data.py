"""DataLoader: batches along any axis, partial batches, shuffling per epoch with seeded
generators, length, and the errors for data it cannot batch."""
import numpy as np
import pytest

import recur as rc
from recur.data import DataLoader


def test_batches_an_array_in_order_with_a_short_last_batch():
    X = np.arange(20).reshape(10, 2)
    batches = list(DataLoader(X, batchsize=4))
    assert len(batches) == 3 and all(isinstance(b, np.ndarray) for b in batches)
    np.testing.assert_array_equal(np.concatenate(batches), X)
    assert [len(b) for b in batches] == [4, 4, 2]


def test_a_tuple_of_arrays_gives_tuples_of_matching_batches():
    X, Y = np.arange(10.0), np.arange(10) * 10
    for x, y in DataLoader((X, Y), batchsize=3, shuffle=True, rng=0):
        np.testing.assert_array_equal(y, x.astype(int) * 10)
    batch = next(iter(DataLoader((X,), batchsize=3)))
    assert isinstance(batch, tuple) and len(batch) == 1


def test_arrays_keep_their_dtype():
    labels = np.arange(6, dtype=np.int32)
    x, y = next(iter(DataLoader((np.zeros((6, 2), np.float32), labels), 2)))
    assert x.dtype == np.float32 and y.dtype == np.int32


def test_default_batchsize_is_one_observation():
    batches = list(DataLoader(np.arange(3)))
    assert [b.tolist() for b in batches] == [[0], [1], [2]]


@pytest.mark.parametrize("n, batchsize, partial, expected", [
    (10, 3, True, 4), (10, 3, False, 3), (9, 3, True, 3), (9, 3, False, 3), (2, 5, True, 1),
    (0, 4, True, 0), (0, 4, False, 0),
])
def test_len_is_the_number_of_batches_yielded(n, batchsize, partial, expected):
    loader = DataLoader(np.zeros((n, 2)), batchsize, partial=partial)
    assert len(loader) == expected == len(list(loader))


def test_partial_false_drops_the_short_last_batch():
    batches = list(DataLoader(np.arange(10), 4, partial=False))
    assert [b.tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_sequences_batch_along_axis_1():
    T, N, F = 5, 7, 3
    X = np.random.default_rng(0).standard_normal((T, N, F))
    Y = X.sum(-1, keepdims=True)
    batches = list(DataLoader((X, Y), 3, axis=1))
    assert [x.shape for x, _ in batches] == [(T, 3, F), (T, 3, F), (T, 1, F)]
    np.testing.assert_array_equal(np.concatenate([x for x, _ in batches], axis=1), X)
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches], axis=1), Y)


def test_negative_axis_and_one_axis_per_array():
    X = np.zeros((5, 6, 2))
    labels = np.arange(6)
    x, y = next(iter(DataLoader((X, labels), 4, axis=(-2, 0), shuffle=True, rng=1)))
    assert x.shape == (5, 4, 2) and y.shape == (4,)


def test_shuffle_draws_a_new_permutation_each_epoch_covering_every_observation():
    loader = DataLoader(np.arange(50), 10, shuffle=True, rng=3)
    first, second = np.concatenate(list(loader)), np.concatenate(list(loader))
    assert sorted(first) == sorted(second) == list(range(50))
    assert not np.array_equal(first, second)
    assert not np.array_equal(first, np.arange(50))


def test_shuffle_is_reproducible_from_an_int_seed_or_a_generator():
    def epochs(rng):
        loader = DataLoader(np.arange(30), 7, shuffle=True, rng=rng)
        return [np.concatenate(list(loader)) for _ in range(3)]

    for a, b in zip(epochs(5), epochs(5)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(epochs(np.random.default_rng(9)), epochs(np.random.default_rng(9))):
        np.testing.assert_array_equal(a, b)


def test_shuffle_without_rng_follows_recur_seed():
    loader = DataLoader(np.arange(30), 30, shuffle=True)
    rc.seed(11)
    first = next(iter(loader))
    rc.seed(11)
    np.testing.assert_array_equal(next(iter(loader)), first)


def test_each_iteration_is_independent_so_train_can_take_epochs():
    loader = DataLoader(np.arange(6), 2)
    assert iter(loader) is not loader
    assert [len(list(loader)) for _ in range(3)] == [3, 3, 3]


def test_accepts_lists_and_tensors():
    batches = list(DataLoader(([[1.0, 2.0], [3.0, 4.0]], rc.Tensor(np.arange(2.0))), 1))
    np.testing.assert_array_equal(batches[1][0], [[3.0, 4.0]])
    np.testing.assert_array_equal(batches[1][1], [1.0])


def test_repr_names_shapes_and_settings():
    text = repr(DataLoader((np.zeros((4, 10, 2)), np.zeros(10)), 3, axis=(1, 0)))
    assert "(4, 10, 2), (10,)" in text and "batchsize=3" in text and "4 batches" in text


@pytest.mark.parametrize("make, error, message", [
    (lambda: DataLoader((np.zeros(5), np.zeros(4))), ValueError,
     r"same number of observations; shape \(5,\) has 5 along axis 0, shape \(4,\) has 4"),
    (lambda: DataLoader((np.zeros((3, 5)), np.zeros((3, 4))), axis=1), ValueError,
     "has 5 along axis 1"),
    (lambda: DataLoader(np.zeros(5), 0), ValueError, "batchsize must be >= 1, got 0"),
    (lambda: DataLoader(np.zeros(5), 2.0), TypeError, "batchsize must be an int, got float"),
    (lambda: DataLoader(np.zeros(5), True), TypeError, "batchsize must be an int"),
    (lambda: DataLoader(np.zeros((5, 2)), axis=2), ValueError,
     r"axis 2 is out of range for data item 0 of shape \(5, 2\)"),
    (lambda: DataLoader(np.zeros(5), axis=1.0), TypeError, "axis must be an int"),
    (lambda: DataLoader((np.zeros(5), np.zeros(5)), axis=(0,)), ValueError,
     "axis has 1 entries for 2 arrays"),
    (lambda: DataLoader(np.float64(3.0)), ValueError, "scalar"),
    (lambda: DataLoader(()), ValueError, "empty tuple"),
    (lambda: DataLoader([[1, 2], [3]]), TypeError, "not a rectangular array"),
    (lambda: DataLoader(np.zeros(5), 8, partial=False), ValueError,
     "batchsize 8 exceeds the 5 observations"),
    (lambda: DataLoader(np.zeros(5), shuffle=True, rng=np.random.RandomState(0)), TypeError,
     "rng must be a numpy Generator, an int seed or None, got RandomState"),
])
def test_errors_name_what_was_expected_and_what_came(make, error, message):
    with pytest.raises(error, match=message):
        make()
