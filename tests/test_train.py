"""The training loop: what `train` calls and returns, epochs, callbacks and early stopping,
the non-finite guard, the progress bar, that real problems learn, and Adam parity with
torch over 100 steps of an LSTM model."""
import io

import numpy as np
import pytest

import recur as rc
from recur.data import DataLoader
from recur.optimise import Adam, Descent
from recur.train import StopTraining, train


def regression_data(rows=64, features=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, features))
    Y = X @ np.array([[1.5], [-2.0], [0.5]])[:features] + 0.3
    return X, Y


def values(model):
    return [p.value.copy() for p in rc.params(model)]


def assert_values_equal(model, expected):
    for p, before in zip(rc.params(model), expected):
        np.testing.assert_array_equal(p.value, before)


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


# ---------------------------------------------------------------- calls and results

def test_returns_one_float_loss_per_step_and_updates_the_parameters():
    X, Y = regression_data()
    model = rc.Dense(3, 1, dtype=np.float64)
    before = values(model)
    losses = train(lambda x, y: rc.mse(model(x), y), model, DataLoader((X, Y), 16), Descent(0.1))
    assert len(losses) == 4 and all(type(loss) is float for loss in losses)
    assert not np.array_equal(model.W.value, before[0])


def test_the_losses_are_the_losses_before_each_update():
    X, Y = regression_data()
    model = rc.Dense(3, 1, dtype=np.float64)
    twin = rc.Dense.from_weights(model.W.value, model.b.value)
    losses = train(lambda x, y: rc.mse(model(x), y), model, [(X, Y)] * 3, Descent(0.1))
    expected, rule = [], Descent(0.1)
    for _ in range(3):
        loss, gs = rc.value_and_gradient(lambda: rc.mse(twin(X), Y), twin)
        expected.append(loss)
        # The same update as train's: numpy's p - 0.1 g rounds twice where the fused
        # kernel's multiply-add may round once, and the losses are compared exactly.
        rc.update(rule, rc.params(twin), gs)
    assert losses == expected


def test_tuple_items_are_splatted_and_other_items_passed_whole():
    model = rc.Dense(2, 1)
    seen = []

    def loss(*args):
        seen.append(len(args))
        return rc.sum(model(args[0] if len(args) == 2 else args[0][0]))

    x = np.ones((1, 2))
    train(loss, model, [(x, x), [x, x], x[None]], Descent(0.0))
    assert seen == [2, 1, 1]


@pytest.mark.parametrize("as_ps", [rc.params, lambda m: list(rc.params(m)), lambda m: m],
                         ids=["Params", "list", "model"])
def test_ps_may_be_params_a_list_or_the_model(as_ps):
    X, Y = regression_data()
    model = rc.Dense(3, 1, dtype=np.float64)
    before = values(model)
    train(lambda x, y: rc.mse(model(x), y), as_ps(model), [(X, Y)], Descent(0.1))
    assert all(not np.array_equal(p.value, b) for p, b in zip(rc.params(model), before))


def test_a_parameter_outside_ps_is_left_alone():
    X, Y = regression_data()
    first, second = rc.Dense(3, 4), rc.Dense(4, 1)
    frozen = values(first)
    train(lambda x, y: rc.mse(second(first(x)), y), second, [(X, Y)] * 2, Adam(0.1))
    assert_values_equal(first, frozen)


# ---------------------------------------------------------------- epochs

def test_epochs_go_through_the_data_again():
    X, Y = regression_data()
    model = rc.Dense(3, 1)
    losses = train(lambda x, y: rc.mse(model(x), y), model, DataLoader((X, Y), 32), Adam(),
                   epochs=3)
    assert len(losses) == 6


@pytest.mark.parametrize("epochs", [1, 2])
def test_a_shuffling_loader_gives_training_the_order_it_gives_a_loop(epochs):
    X, _ = regression_data(rows=12)
    seen = []
    model = rc.Dense(3, 1)
    train(lambda x: (seen.append(x.copy()), rc.sum(model(x)))[1], model,
          DataLoader(X, 4, shuffle=True, rng=np.random.default_rng(5)), Descent(0.0),
          epochs=epochs)
    loader = DataLoader(X, 4, shuffle=True, rng=np.random.default_rng(5))
    expected = [batch for _ in range(epochs) for batch in loader]
    assert len(seen) == len(expected) == 3 * epochs
    for got, want in zip(seen, expected):
        np.testing.assert_array_equal(got, want)


def test_epochs_over_a_one_shot_iterator_raise_before_training():
    X, Y = regression_data()
    model = rc.Dense(3, 1)
    before = values(model)
    with pytest.raises(TypeError, match="one-shot iterator.*list\\(zip"):
        train(lambda x, y: rc.mse(model(x), y), model, zip(X, Y), Adam(), epochs=2)
    assert_values_equal(model, before)


def test_one_epoch_over_an_iterator_works():
    X, Y = regression_data(rows=5)
    model = rc.Dense(3, 1)
    losses = train(lambda x, y: rc.mse(model(x), y), model, zip(X, Y), Adam())
    assert len(losses) == 5


def test_zero_epochs_train_nothing():
    model = rc.Dense(3, 1)
    assert train(lambda x: rc.sum(model(x)), model, [np.ones(3)], Adam(), epochs=0) == []


# ---------------------------------------------------------------- callback and early stop

def test_callback_gets_steps_counted_from_one_across_epochs_after_each_update():
    X, Y = regression_data()
    model = rc.Dense(3, 1, dtype=np.float64)
    calls = []
    previous = [model.W.value.copy()]

    def cb(step, loss):
        assert not np.array_equal(model.W.value, previous[-1])   # the update came first
        previous.append(model.W.value.copy())
        calls.append((step, loss))

    losses = train(lambda x, y: rc.mse(model(x), y), model, DataLoader((X, Y), 32),
                   Descent(0.1), epochs=2, cb=cb)
    assert calls == list(enumerate(losses, start=1))
    assert [step for step, _ in calls] == [1, 2, 3, 4]


def test_stop_training_from_the_callback_returns_the_losses_so_far():
    X, Y = regression_data()
    model = rc.Dense(3, 1)

    def cb(step, loss):
        if step == 3:
            raise StopTraining

    losses = train(lambda x, y: rc.mse(model(x), y), model, [(X, Y)] * 10, Adam(), cb=cb)
    assert len(losses) == 3


def test_stop_training_from_the_loss_skips_that_step():
    X, Y = regression_data()
    model = rc.Dense(3, 1)
    steps = []

    def loss(x, y):
        if len(steps) == 2:
            raise StopTraining
        steps.append(1)
        return rc.mse(model(x), y)

    snapshots = []
    losses = train(loss, model, [(X, Y)] * 5, Adam(),
                   cb=lambda step, loss: snapshots.append(values(model)))
    assert len(losses) == 2
    assert_values_equal(model, snapshots[-1])


# ---------------------------------------------------------------- failures leave parameters alone

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_loss_raises_before_any_parameter_changes(bad):
    X, Y = regression_data()
    model = rc.Dense(3, 1, dtype=np.float64)
    opt = Adam(0.1)
    snapshots = []

    def loss(x, y, scale):
        return rc.mse(model(x), y) * scale

    data = [(X, Y, 1.0), (X, Y, 1.0), (X, Y, bad), (X, Y, 1.0)]
    with pytest.raises(FloatingPointError, match=f"step 3 is {bad}"):
        train(loss, model, data, opt, cb=lambda step, loss: snapshots.append(values(model)))
    assert len(snapshots) == 2
    assert_values_equal(model, snapshots[-1])


def test_a_non_finite_first_loss_leaves_the_model_and_optimiser_untouched():
    model = rc.Dense(3, 1, dtype=np.float64)
    twin = rc.Dense.from_weights(model.W.value, model.b.value)
    opt = Adam()
    with pytest.raises(FloatingPointError, match="step 1"):
        train(lambda x: rc.sum(model(x)) * np.nan, model, [np.ones(3)], opt)
    assert_values_equal(model, values(twin))
    # Had the failed step reached the optimiser, its moments would differ from a fresh one's.
    train(lambda x: rc.sum(model(x)), model, [np.ones(3)], opt)
    train(lambda x: rc.sum(twin(x)), twin, [np.ones(3)], Adam())
    assert_values_equal(model, values(twin))


def test_an_exception_in_the_loss_propagates_and_training_works_afterwards():
    X, Y = regression_data()
    model = rc.Dense(3, 1)
    snapshots = []

    def loss(x, y):
        if len(snapshots) == 1:
            model(np.ones((2, 5)))   # wrong feature size, raised mid-recording
        return rc.mse(model(x), y)

    with pytest.raises(ValueError, match="features"):
        train(loss, model, [(X, Y)] * 3, Adam(),
              cb=lambda step, loss: snapshots.append(values(model)))
    assert_values_equal(model, snapshots[-1])
    assert len(train(lambda x, y: rc.mse(model(x), y), model, [(X, Y)], Adam())) == 1


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(epochs=-1), ValueError, "epochs must be an int >= 0, got -1"),
    (dict(epochs=1.5), ValueError, "epochs must be an int"),
    (dict(cb=3), TypeError, "cb must be a function"),
    (dict(progress="yes"), TypeError, "progress must be None, True or False"),
])
def test_bad_arguments_raise_clear_errors(kwargs, error, message):
    model = rc.Dense(3, 1)
    with pytest.raises(error, match=message):
        train(lambda x: rc.sum(model(x)), model, [np.ones(3)], Adam(), **kwargs)


def test_data_that_is_not_iterable_is_refused():
    model = rc.Dense(3, 1)
    with pytest.raises(TypeError, match=r"train: data must be an iterable of data items "
                                        r"\(a list, a recur\.DataLoader, zip\(xs, ys\)\), "
                                        r"got int"):
        train(lambda x: rc.sum(model(x)), model, 5, Adam())


def test_arrays_as_ps_are_refused_before_training():
    model = rc.Dense(3, 1)
    before = model.W.value.copy()
    with pytest.raises(TypeError, match=r"train: ps must be recur\.Params.*got an ndarray"):
        train(lambda x: rc.sum(model(x)), [model.W.value], [np.ones(3)], Adam())
    np.testing.assert_array_equal(model.W.value, before)


def test_an_optimiser_class_instead_of_a_rule_is_refused():
    model = rc.Dense(3, 1)
    with pytest.raises(TypeError, match="call it: Adam()"):
        train(lambda x: rc.sum(model(x)), model, [np.ones(3)], Adam)


# ---------------------------------------------------------------- progress bar

def run_with_bar(file, progress, steps=3):
    X, Y = regression_data()
    model = rc.Dense(3, 1)
    return train(lambda x, y: rc.mse(model(x), y), model, [(X, Y)] * steps, Adam(),
                 progress=progress, file=file)


def test_forced_progress_bar_renders_steps_rate_and_the_last_loss_to_any_stream():
    stream = io.StringIO()
    losses = run_with_bar(stream, progress=True)
    shown = stream.getvalue()
    assert "3/3" in shown and "step/s" in shown
    assert f"loss={losses[-1]:.4g}" in shown


def test_forced_off_progress_prints_nothing():
    stream = FakeTerminal()
    run_with_bar(stream, progress=False)
    assert stream.getvalue() == ""


def test_default_progress_shows_on_a_terminal_only():
    terminal, pipe = FakeTerminal(), io.StringIO()
    run_with_bar(terminal, progress=None)
    run_with_bar(pipe, progress=None)
    assert "3/3" in terminal.getvalue()
    assert pipe.getvalue() == ""


def test_progress_bar_over_data_without_length_counts_steps():
    stream = io.StringIO()
    model = rc.Dense(3, 1)
    train(lambda x: rc.sum(model(x)), model, (np.ones(3) for _ in range(4)), Adam(),
          progress=True, file=stream)
    assert "4step" in stream.getvalue()


def test_progress_bar_is_closed_when_training_fails():
    stream = io.StringIO()
    model = rc.Dense(3, 1)
    with pytest.raises(FloatingPointError):
        train(lambda x: rc.sum(model(x)) * x[0], model, [np.ones(3), np.full(3, np.nan)],
              Adam(), progress=True, file=stream)
    assert stream.getvalue().endswith("\n") and "1/2" in stream.getvalue()


# ---------------------------------------------------------------- learning

def test_linear_regression_learns_with_adam():
    X, Y = regression_data(rows=256)
    model = rc.Dense(3, 1, dtype=np.float64, rng=np.random.default_rng(1))
    losses = train(lambda x, y: rc.mse(model(x), y), model,
                   DataLoader((X, Y), 32, shuffle=True, rng=0), Adam(0.05), epochs=40)
    assert losses[-1] < 1e-4 * losses[0]
    np.testing.assert_allclose(model.W.value, [[1.5, -2.0, 0.5]], atol=1e-2)


def test_two_moons_classifier_learns_with_adam():
    rng = np.random.default_rng(0)
    angle = rng.uniform(0, np.pi, 400)
    label = rng.integers(0, 2, 400)
    points = np.stack([np.cos(angle) + label, np.sin(angle) * (1 - 2 * label) + 0.5 * label], 1)
    points += 0.1 * rng.standard_normal(points.shape)
    onehot = np.eye(2)[label]
    model = rc.Chain(rc.Dense(2, 16, rc.tanh, rng=rng), rc.Dense(16, 2, rng=rng))
    train(lambda x, y: rc.logitcrossentropy(model(x), y), model,
          DataLoader((points, onehot), 40, shuffle=True, rng=1), Adam(0.02), epochs=60)
    accuracy = np.mean(np.argmax(np.asarray(model(points)), 1) == label)
    assert accuracy > 0.95


# ---------------------------------------------------------------- torch parity

def test_adam_training_of_an_lstm_model_matches_torch_for_100_steps():
    torch = pytest.importorskip("torch")
    from recur.recurrent import LSTMCell, Recur, reset

    torch.manual_seed(0)
    features, hidden, outputs, steps = 3, 5, 2, 100
    lstm = torch.nn.LSTM(features, hidden, dtype=torch.float64)
    dense = torch.nn.Linear(hidden, outputs, dtype=torch.float64)
    # recur's LSTM has one bias and a trainable initial state: give torch the same.
    lstm.bias_hh_l0.data.zero_()
    lstm.bias_hh_l0.requires_grad_(False)
    h0 = torch.nn.Parameter(0.1 * torch.randn(hidden, dtype=torch.float64))
    c0 = torch.nn.Parameter(0.1 * torch.randn(hidden, dtype=torch.float64))
    torch_params = [lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, h0, c0,
                    dense.weight, dense.bias]

    def weights(t):
        return t.detach().numpy().copy()

    cell = LSTMCell.from_weights(weights(lstm.weight_ih_l0), weights(lstm.weight_hh_l0),
                                 weights(lstm.bias_ih_l0), state0=(weights(h0), weights(c0)))
    model = rc.Chain(Recur(cell), rc.Dense.from_weights(weights(dense.weight),
                                                        weights(dense.bias)))

    rng = np.random.default_rng(0)
    data = [(rng.standard_normal((7, 4, features)), rng.standard_normal((7, 4, outputs)))
            for _ in range(steps)]

    def recur_loss(x, y):
        reset(model)
        return rc.mse(model(x), y)

    recur_losses = train(recur_loss, model, data, Adam(0.01), progress=False)

    opt = torch.optim.Adam(torch_params, lr=0.01)
    torch_losses = []
    for x, y in data:
        opt.zero_grad()
        batch = x.shape[1]
        state = (h0.expand(1, batch, hidden), c0.expand(1, batch, hidden))
        out, _ = lstm(torch.from_numpy(x), state)
        loss = torch.nn.functional.mse_loss(dense(out), torch.from_numpy(y))
        loss.backward()
        opt.step()
        torch_losses.append(loss.item())

    np.testing.assert_allclose(recur_losses, torch_losses, rtol=1e-7)
    recur_values = [cell.Wi.value, cell.Wh.value, cell.b.value, cell.state0[0].value,
                    cell.state0[1].value, model[1].W.value, model[1].b.value]
    for mine, theirs in zip(recur_values, torch_params):
        np.testing.assert_allclose(mine, weights(theirs), rtol=1e-7, atol=1e-12)
