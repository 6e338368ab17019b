"""Saving and loading: state_dict names and copies, bit-exact round trips in float32 and
float64 with Recur states, checks that change nothing on any mismatch, truncated, corrupt
and foreign files, no unpickling anywhere in the package, and pickling of models."""
import os
import pathlib
import pickle
import re
import struct
import zipfile

import numpy as np
import pytest

import recur as rc
from recur.io import FORMAT_KEY, load, load_state_dict, save, state_dict
from recur.recurrent import GRU, LSTM, RNN, GRUv3, Recur, reset

DTYPES = [np.float32, np.float64]


def lstm_model(dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return rc.Chain(LSTM(3, 4, dtype=dtype, rng=rng), rc.Dense(4, 2, rc.tanh, dtype=dtype, rng=rng))


def mixed_model(dtype=np.float32, seed=0):
    """Every recurrent layer, a tied weight, and a Dense without bias."""
    rng = np.random.default_rng(seed)
    dense = rc.Dense(5, 5, dtype=dtype, rng=rng)
    return rc.Chain(RNN(3, 5, dtype=dtype, rng=rng), GRU(5, 5, dtype=dtype, rng=rng), dense,
                    dense, GRUv3(5, 5, dtype=dtype, rng=rng), LSTM(5, 4, dtype=dtype, rng=rng),
                    rc.Dense(4, 2, bias=False, dtype=dtype, rng=rng))


def run(model, batch=6, steps=3, seed=1):
    """Feeds a few steps through the model (so its Recur states are batched) and returns
    the last output."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        y = model(rng.standard_normal((batch, 3)))
    return np.asarray(y)


def snapshot(model):
    return {name: array.copy() for name, array in state_dict(model).items()}


def assert_same_arrays(a, b):
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def recurs(model):
    return [layer for layer in model if isinstance(layer, Recur)]


# ---------------------------------------------------------------- state_dict

def test_state_dict_names_parameters_by_their_dotted_path():
    model = rc.Chain(rc.Dense(2, 3), rc.Dense(3, 1, bias=False))
    arrays = state_dict(model)
    assert list(arrays) == ["0.W", "0.b", "1.W"]
    np.testing.assert_array_equal(arrays["0.W"], model[0].W.value)


def test_state_dict_holds_copies():
    model = rc.Dense(2, 3)
    arrays = state_dict(model)
    arrays["W"][...] = 7
    assert not np.any(model.W.value == 7)


def test_state_dict_has_every_parameter_once_and_recur_states_by_the_recur_name():
    model = mixed_model()
    arrays = state_dict(model)
    states = [name for name in arrays if ".state" in name and "state0" not in name]
    assert states == ["0.state", "1.state", "4.state", "5.state.0", "5.state.1"]
    parameters = [arrays[name] for name in arrays if name not in states]
    assert len(parameters) == len(rc.params(model))
    for array, p in zip(parameters, rc.params(model)):
        np.testing.assert_array_equal(array, p.value)


def test_state_names_do_not_depend_on_whether_the_model_has_run():
    model = lstm_model()
    reset(model)
    fresh = list(state_dict(model))
    run(model)
    assert list(state_dict(model)) == fresh
    assert state_dict(model)["0.state.0"].shape == (6, 4)


def test_a_recur_on_its_own_names_its_state_state():
    model = LSTM(2, 3)
    assert {"state.0", "state.1"} <= set(state_dict(model))


def test_layers_delegate_state_dict_and_load_state_dict():
    model, other = lstm_model(seed=0), lstm_model(seed=1)
    run(model)
    other.load_state_dict(model.state_dict())
    assert_same_arrays(snapshot(other), snapshot(model))


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("dtype", DTYPES)
def test_save_and_load_round_trip_bit_exactly_with_recur_states(tmp_path, dtype):
    model = mixed_model(dtype, seed=0)
    run(model)
    path = tmp_path / "model.npz"
    save(path, model)
    other = mixed_model(dtype, seed=5)
    load(path, other)
    assert_same_arrays(snapshot(other), snapshot(model))
    # The states carry on: the next outputs agree bit for bit.
    np.testing.assert_array_equal(run(other, steps=1, seed=2), run(model, steps=1, seed=2))


def test_load_keeps_the_param_objects_and_gives_states_as_constant_tensors(tmp_path):
    model, other = lstm_model(seed=0), lstm_model(seed=1)
    run(model)
    save(tmp_path / "m.npz", model)
    params_before = list(rc.params(other))
    load(tmp_path / "m.npz", other)
    assert all(a is b for a, b in zip(rc.params(other), params_before))
    h, c = recurs(other)[0].state
    assert type(h) is rc.Tensor and type(c) is rc.Tensor and h.shape == (6, 4)
    reset(other)   # back to the trainable state0 of the loaded model
    assert recurs(other)[0].state[0] is recurs(other)[0].cell.state0[0]


def test_a_state_saved_right_after_reset_loads_as_after_a_reset(tmp_path):
    model = lstm_model()
    reset(model)
    save(tmp_path / "m.npz", model)
    other = lstm_model(seed=1)
    run(other)
    load(tmp_path / "m.npz", other)
    recur = recurs(other)[0]
    assert recur.state is recur.cell.state0   # so it broadcasts over any batch and trains
    np.testing.assert_array_equal(run(other, steps=1, batch=2), run(model, steps=1, batch=2))


def test_an_unbatched_running_state_loads_as_a_constant(tmp_path):
    model = lstm_model()
    model(np.ones(3))   # one unbatched step: the state is (4,) but no longer state0
    save(tmp_path / "m.npz", model)
    other = lstm_model(seed=1)
    load(tmp_path / "m.npz", other)
    h, c = recurs(other)[0].state
    assert type(h) is rc.Tensor and h.shape == (4,)
    np.testing.assert_array_equal(np.asarray(other(np.ones(3))), np.asarray(model(np.ones(3))))


def test_load_state_dict_casts_float64_arrays_into_a_float32_model():
    model = lstm_model(np.float32)
    source = lstm_model(np.float64, seed=3)
    run(source)
    load_state_dict(model, state_dict(source))
    for name, array in state_dict(model).items():
        assert array.dtype == np.float32
        np.testing.assert_array_equal(array, state_dict(source)[name].astype(np.float32))


def test_save_writes_exactly_the_given_path_and_leaves_no_temporary_file(tmp_path):
    model = rc.Dense(2, 2)
    save(str(tmp_path / "checkpoint"), model)
    save(tmp_path / "checkpoint", model)   # overwrites in place
    assert os.listdir(tmp_path) == ["checkpoint"]
    with np.load(tmp_path / "checkpoint", allow_pickle=False) as archive:
        assert sorted(archive.files) == sorted(["W", "b", FORMAT_KEY])


def test_entry_names_that_are_numpy_keywords_survive(tmp_path):
    # np.savez(path, **arrays) would crash on `file` and silently drop `allow_pickle`.
    model = {"file": rc.param(np.ones(2)), "allow_pickle": rc.param(np.zeros(3))}
    save(tmp_path / "m.npz", model)
    other = {"file": rc.param(np.zeros(2)), "allow_pickle": rc.param(np.ones(3))}
    load(tmp_path / "m.npz", other)
    assert_same_arrays(state_dict(other), state_dict(model))


# ---------------------------------------------------------------- mismatches change nothing

def test_mismatched_arrays_list_every_difference_and_change_nothing():
    model = lstm_model()
    run(model)
    before = snapshot(model)
    arrays = snapshot(lstm_model(seed=1))
    del arrays["1.b"]
    arrays["extra.W"] = np.ones(2)
    arrays["1.W"] = np.ones((3, 4))
    arrays["0.state.0"] = np.ones((6, 9))
    arrays["0.state.1"] = arrays["0.state.1"].astype(np.int64)
    with pytest.raises(ValueError) as caught:
        load_state_dict(model, arrays)
    message = str(caught.value)
    for expected in ["missing: 1.b", "unexpected: extra.W", "1.W: the model has shape (2, 4), "
                     "the arrays (3, 4)", "0.state.0: a state of shape (6, 9)",
                     "0.state.1: expected a float array, got dtype int64", "nothing was loaded"]:
        assert expected in message
    assert_same_arrays(snapshot(model), before)


def test_a_different_architecture_is_refused_on_load(tmp_path):
    save(tmp_path / "lstm.npz", lstm_model())
    model = rc.Chain(GRU(3, 4), rc.Dense(4, 2))
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"load\('.*lstm.npz'\): the arrays do not fit"):
        load(tmp_path / "lstm.npz", model)
    assert_same_arrays(snapshot(model), before)


def test_a_state_with_another_batch_size_is_fine_but_not_another_feature_size():
    model = lstm_model()
    run(model, batch=6)
    arrays = snapshot(model)
    other = lstm_model(seed=1)
    run(other, batch=2)
    load_state_dict(other, arrays)
    assert recurs(other)[0].state[0].shape == (6, 4)


def test_load_state_dict_needs_a_mapping():
    with pytest.raises(TypeError, match="expected a mapping of names to arrays, got list"):
        load_state_dict(rc.Dense(2, 2), [np.ones((2, 2))])


# ---------------------------------------------------------------- bad files change nothing

@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "model.npz"
    save(path, lstm_model(seed=7))
    return path


def refuses(path, match):
    model = lstm_model()
    run(model)
    before = snapshot(model)
    with pytest.raises(ValueError, match=match):
        load(path, model)
    assert_same_arrays(snapshot(model), before)


@pytest.mark.parametrize("kept", [lambda n: 0, lambda n: 3, lambda n: 30, lambda n: n // 2,
                                  lambda n: n - 1],
                         ids=["empty", "3 bytes", "30 bytes", "half", "all but 1 byte"])
def test_a_truncated_file_raises_naming_the_path_and_changes_nothing(checkpoint, kept):
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[:kept(len(data))])
    refuses(checkpoint, re.escape(repr(str(checkpoint))))


def test_a_corrupted_byte_is_caught_by_the_checksum(checkpoint):
    with zipfile.ZipFile(checkpoint) as archive:
        entry = archive.getinfo("1.W.npy")
    data = bytearray(checkpoint.read_bytes())
    # A local file header is 30 bytes, then the name and the extra field, then the data.
    name_length, extra_length = struct.unpack("<HH", data[entry.header_offset + 26:
                                                         entry.header_offset + 30])
    data_start = entry.header_offset + 30 + name_length + extra_length
    data[data_start + entry.compress_size - 1] ^= 0xFF   # the last byte of 1.W's values
    checkpoint.write_bytes(bytes(data))
    refuses(checkpoint, "not a readable recur checkpoint.*CRC")


def test_a_foreign_npz_is_recognised(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.ones(3))
    refuses(path, "an .npz archive but not a recur checkpoint .* entries found: weights")


@pytest.mark.parametrize("content", [
    b"hello, not a checkpoint",
    pickle.dumps({"0.W": np.ones(2)}),
])
def test_files_that_are_not_npz_are_refused_without_unpickling(tmp_path, content):
    path = tmp_path / "model.npz"
    path.write_bytes(content)
    refuses(path, "is not a recur checkpoint: an .npz archive begins with")


def test_a_single_npy_file_is_refused(tmp_path):
    path = tmp_path / "model.npy"
    np.save(path, np.ones(3))
    refuses(path, "is not a recur checkpoint")


def test_an_npz_holding_object_arrays_is_refused(tmp_path):
    path = tmp_path / "model.npz"
    np.savez(path, **{FORMAT_KEY: np.array(1), "0.W": np.array([{"x": 1}], dtype=object)})
    refuses(path, "not a readable recur checkpoint")


def test_an_unknown_format_version_is_refused(tmp_path):
    path = tmp_path / "model.npz"
    np.savez(path, **{FORMAT_KEY: np.array(99)})
    refuses(path, "has checkpoint format array\\(99\\); this recur reads format 1")


def test_a_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "nothing.npz", rc.Dense(2, 2))


def test_the_package_never_unpickles():
    package = pathlib.Path(rc.__file__).parent
    sources = list(package.rglob("*.py")) + list(package.parent.joinpath("_core").glob("*.pyx"))
    assert len(sources) > 10
    forbidden = re.compile(r"pickle\.loads?\b|Unpickler|allow_pickle\s*=\s*True")
    offenders = [f"{path.name}: {line.strip()}" for path in sources
                 for line in path.read_text(encoding="utf-8").splitlines()
                 if forbidden.search(line)]
    assert offenders == []


# ---------------------------------------------------------------- pickling

@pytest.mark.parametrize("dtype", DTYPES)
def test_params_and_tensors_pickle_to_their_own_type_dtype_and_value(dtype):
    p = rc.param(np.arange(6.0).reshape(2, 3), dtype=dtype)
    copy = pickle.loads(pickle.dumps(p))
    assert type(copy) is rc.Param and copy.dtype == dtype
    np.testing.assert_array_equal(copy.value, p.value)
    copy.value[0, 0] = 5   # a live, writable parameter of its own
    assert p.value[0, 0] == 0
    t = pickle.loads(pickle.dumps(rc.Tensor(np.ones(3, dtype=dtype))))
    assert type(t) is rc.Tensor and t.dtype == dtype


def test_dense_and_chain_pickle_with_identical_outputs_and_tied_weights():
    dense = rc.Dense(3, 3, rc.tanh)
    model = rc.Chain(dense, dense, rc.Dense(3, 2), rc.softmax)
    copy = pickle.loads(pickle.dumps(model))
    x = np.random.default_rng(0).standard_normal((4, 3))
    np.testing.assert_array_equal(np.asarray(copy(x)), np.asarray(model(x)))
    assert copy[0] is copy[1] and len(rc.params(copy)) == 4


@pytest.mark.parametrize("dtype", DTYPES)
def test_recurrent_models_pickle_mid_sequence_with_identical_outputs(dtype):
    model = mixed_model(dtype)
    run(model)
    copy = pickle.loads(pickle.dumps(model))
    assert_same_arrays(snapshot(copy), snapshot(model))
    np.testing.assert_array_equal(run(copy, steps=2, seed=3), run(model, steps=2, seed=3))


def test_a_pickled_model_right_after_reset_keeps_state0_as_its_state():
    model = lstm_model()
    reset(model)
    copy = pickle.loads(pickle.dumps(model))
    recur = recurs(copy)[0]
    assert recur.state[0] is recur.cell.state0[0]
    gs = rc.gradient(lambda: rc.sum(copy(np.ones((2, 3)))), copy)
    assert gs[recur.cell.state0[0]] is not None


def test_cells_pickle():
    cell = recurs(lstm_model())[0].cell
    copy = pickle.loads(pickle.dumps(cell))
    x = np.ones((2, 3))
    _, y = cell(cell.state0, x)
    _, y_copy = copy(copy.state0, x)
    np.testing.assert_array_equal(np.asarray(y_copy), np.asarray(y))
