"""The command line: `recur demo` end to end at a tiny size, its pieces, and `recur bench`'s
hand-off to the suite of a source checkout."""
import importlib.util
import re
import subprocess
import sys

import numpy as np
import pytest

import recur as rc
from recur import demo
from recur.__main__ import UNAVAILABLE, main

TINY = ["--steps", "4", "--hidden", "16", "--embed", "8", "--batch", "4", "--seq-len", "16",
        "--sample-length", "40", "--no-progress"]


def test_demo_trains_reports_samples_and_saves_a_loadable_model(tmp_path, capsys):
    output = tmp_path / "tiny.npz"
    assert main(["demo", *TINY, "--seed", "3", "--output", str(output)]) == 0
    printed = capsys.readouterr().out

    validation = re.search(r"validation loss: ([\d.]+) bits/char", printed)
    unigram = re.search(r"unigram entropy of the corpus: ([\d.]+) bits/char", printed)
    assert validation and unigram
    text = demo.corpus()
    vocabulary = sorted(set(text))
    to_index = {char: i for i, char in enumerate(vocabulary)}
    assert 0 < float(validation.group(1)) < 2 * np.log2(len(vocabulary))
    assert float(unigram.group(1)) == pytest.approx(
        demo.unigram_entropy_bits(np.array([to_index[c] for c in text]), len(vocabulary)),
        abs=1e-3)

    sample = printed.split("sample (temperature 0.8):\n\n", 1)[1].split("\n\nsaved", 1)[0]
    assert sample.startswith(demo.PROMPT)
    assert len(sample) == len(demo.PROMPT) + 40

    model = demo.build_model(len(vocabulary), hidden=16, embed=8)
    rc.load(output, model)
    saved = np.load(output)
    np.testing.assert_array_equal(model.state_dict()["2.W"], saved["2.W"])
    assert str(output) in printed


def test_demo_is_reproducible_from_its_seed(tmp_path, capsys):
    def run(seed):
        main(["demo", *TINY, "--steps", "2", "--seed", str(seed),
              "--output", str(tmp_path / f"{seed}.npz")])
        return capsys.readouterr().out.split("trained in", 1)[1].split("\n", 1)[1]

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_streams_are_consecutive_pieces_of_the_text_as_columns():
    columns = demo.streams(np.arange(23), batch=3)
    assert columns.shape == (7, 3)
    np.testing.assert_array_equal(columns[:, 1], np.arange(7, 14))


def test_chunks_continue_each_stream_truncating_between_and_resetting_at_each_pass():
    columns = demo.streams(np.arange(40), batch=2)  # two streams of 20
    model = rc.LSTM(2, 3)
    chunks = iter(demo.Chunks(columns, seq_len=6, steps=4, model=model))
    assert len(demo.Chunks(columns, seq_len=6, steps=4, model=model)) == 4

    x, y = next(chunks)
    assert model.state is model.state0  # a pass starts from a reset model
    np.testing.assert_array_equal(x[:, 0], np.arange(0, 6))
    np.testing.assert_array_equal(y[:, 0], np.arange(1, 7))
    model(np.ones((6, 2, 2), np.float32))
    carried = np.array(model.state[0])

    x, _ = next(chunks)
    np.testing.assert_array_equal(x[:, 1], np.arange(26, 32))  # where the last chunk stopped
    np.testing.assert_array_equal(model.state[0], carried)  # kept, through truncate

    next(chunks)
    x, _ = next(chunks)  # (20 - 1) // 6 = 3 chunks per pass: the fourth starts over
    np.testing.assert_array_equal(x[:, 0], np.arange(0, 6))
    assert model.state is model.state0


def test_chunks_refuse_text_shorter_than_one_chunk():
    with pytest.raises(ValueError, match="--seq-len 8"):
        demo.Chunks(demo.streams(np.arange(10), batch=2), 8, 1, rc.LSTM(2, 3))


def test_unigram_entropy_in_bits():
    assert demo.unigram_entropy_bits(np.array([0, 1, 2, 3] * 5), 6) == pytest.approx(2.0)
    assert demo.unigram_entropy_bits(np.array([2, 2, 2]), 3) == 0.0


def test_sample_starts_with_the_prompt_and_follows_the_seed():
    vocabulary = list("abcT he")
    model = demo.build_model(len(vocabulary), hidden=8, embed=4)
    first = demo.sample(model, vocabulary, 30, 1.0, np.random.default_rng(1))
    again = demo.sample(model, vocabulary, 30, 1.0, np.random.default_rng(1))
    assert first == again and first.startswith(demo.PROMPT) and len(first) == 34
    assert set(first) <= set(vocabulary)


@pytest.mark.parametrize("flag, value", [("--steps", "0"), ("--hidden", "0"),
                                         ("--temperature", "0")])
def test_demo_refuses_nonpositive_settings(flag, value, tmp_path):
    with pytest.raises(SystemExit, match=flag):
        main(["demo", flag, value, "--output", str(tmp_path / "x.npz")])


def test_help_lists_the_commands():
    shown = subprocess.run([sys.executable, "-m", "recur", "--help"], capture_output=True,
                           text=True, check=True).stdout
    assert "demo" in shown and "bench" in shown


def fake_checkout(tmp_path, monkeypatch, suite_source=None):
    """Points `recur bench` at a checkout in tmp_path, with `suite_source` as its
    bench/suite.py (none if None)."""
    package = tmp_path / "recur"
    package.mkdir()
    monkeypatch.setattr(rc, "__file__", str(package / "__init__.py"))
    if suite_source is not None:
        (tmp_path / "bench").mkdir()
        (tmp_path / "bench" / "suite.py").write_text(suite_source)


def test_bench_hands_its_arguments_to_the_suite(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    fake_checkout(tmp_path, monkeypatch,
                  "def main(argv):\n    print('suite got', argv)\n    return 7\n")
    assert main(["bench", "--quick", "--models", "lstm"]) == 7
    assert "suite got ['--quick', '--models', 'lstm']" in capsys.readouterr().out


def test_bench_outside_a_source_checkout_exits_with_status_2(tmp_path, monkeypatch, capsys):
    fake_checkout(tmp_path, monkeypatch)
    assert main(["bench"]) == UNAVAILABLE == 2
    assert "source checkout" in capsys.readouterr().err


def test_bench_without_torch_exits_with_status_2(tmp_path, monkeypatch, capsys):
    fake_checkout(tmp_path, monkeypatch, "def main(argv):\n    raise AssertionError\n")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real_find_spec(name, *a))
    assert main(["bench"]) == UNAVAILABLE
    assert "torch" in capsys.readouterr().err
