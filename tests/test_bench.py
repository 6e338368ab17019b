"""Smoke test of bench/suite.py: the whole pipeline (timing worker, memory workers, import
times, sizes, report) on its quick setting — one tiny config, one repeat. Times are not
asserted: this machine's load makes them meaningless at this size."""
import importlib.util
from pathlib import Path

import pytest

SUITE_PATH = Path(__file__).resolve().parent.parent / "bench" / "suite.py"

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                reason="the bench compares against torch")


def load_suite():
    spec = importlib.util.spec_from_file_location("bench_suite", SUITE_PATH)
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    return suite


def test_quick_run_times_every_case_and_writes_the_report(tmp_path):
    suite = load_suite()
    output = tmp_path / "RESULTS.md"

    status = suite.main(["--quick", "--output", str(output)])

    report = output.read_text()
    assert status == 0, report
    assert "failed" not in report
    for mode_title in ("Training", "Inference"):
        for style in suite.STYLES:
            assert f"## {mode_title}, {style} style" in report
    rows = [line for line in report.splitlines() if line.startswith(("| rnn ", "| lstm ", "| gru "))]
    assert len(rows) == len(suite.MODELS) * len(suite.STYLES) * len(suite.MODES)
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        recur_ms, torch_ms, ratio = cells[5:8]
        assert float(recur_ms) > 0 and float(torch_ms) > 0 and float(ratio) > 0
        # recur's hand-over before / after the row: two times on the crew, "—" on one thread
        handover = cells[-1].rstrip(" ‡")
        assert handover == "—" or all(0 < float(v) < 1e4 for v in handover.split(" / "))
    assert "| peak RSS training LSTM (8,32,1,50), MB |" in report
    assert "| import time, s |" in report


def test_flop_count_of_an_lstm_training_step():
    suite = load_suite()
    F, H, B, T = 2, 5, 3, 7
    config = suite.Config(f"{F},{H},{B},{T}")
    gates = 4 * H
    forward = 2 * T * B * (F * gates + H * gates + H * 3)
    # backward: dWi, dWh, dh = dgates @ Wh; head dW and dh
    backward = 2 * T * B * (F * gates + H * gates + gates * H + 3 * H + 3 * H)
    assert suite.gemm_flops("lstm", config, "infer") == forward
    assert suite.gemm_flops("lstm", config, "train") == forward + backward


@pytest.mark.parametrize("style, mode, model, hidden, ratio, fraction, missed", [
    ("sequence", "train", "lstm", 64, 3.2, 0.1, []),
    ("sequence", "train", "gru", 64, 3.2, 0.1, ["≥5x"]),
    ("sequence", "train", "lstm", 512, 1.2, 0.7, ["≥80% GEMM"]),
    ("sequence", "train", "rnn", 256, 1.2, 0.9, ["≥1.3x"]),
    ("stepwise", "train", "lstm", 1024, 1.3, 0.1, []),
    ("sequence", "infer", "gru", 256, 0.9, 0.9, ["≥1x"]),
])
def test_targets_follow_issue_5(style, mode, model, hidden, ratio, fraction, missed):
    suite = load_suite()
    row = {"targets": suite.targets(model, style, mode, hidden)}
    assert suite.missed_targets(row, ratio, fraction) == missed


def test_new_process_loop_reports_a_row_for_every_cell(capsys):
    spec = importlib.util.spec_from_file_location(
        "bench_new_process", SUITE_PATH.parent / "new_process.py")
    new_process = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(new_process)

    new_process.main(["--rounds", "1", "--seconds", "0.05", "--configs", "8,16,2,5"])

    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and "8,16,2,5" in line]
    assert [row[0].strip() for row in rows] == ["rnn", "lstm", "gru"]
    for row in rows:
        recur_ms, recur_faults, torch_ms, torch_faults, ratio = map(float, row[2:])
        assert recur_ms > 0 and torch_ms > 0 and recur_faults >= 0 and torch_faults >= 0
        assert ratio == pytest.approx(torch_ms / recur_ms, rel=0.01)


def _missing_row(suite, model, config, recur_ms, torch_ms, limit, handover=None):
    row = {"model": model, "style": "sequence", "mode": "train",
           "config": tuple(map(int, config.split(","))),
           "seconds": {"recur": recur_ms / 1e3, "torch": torch_ms / 1e3},
           "gemm_limit": limit, "handover_us": handover,
           "targets": suite.targets(model, "sequence", "train", suite.Config(config).hidden)}
    flops = suite.gemm_flops(model, suite.Config(config), "train")
    row["gemm_fraction"] = flops / row["seconds"]["recur"] / 1e9 / limit
    row["missed"] = suite.missed_targets(row, torch_ms / recur_ms, row["gemm_fraction"])
    return row, flops


def test_each_miss_says_what_meeting_it_would_take():
    suite = load_suite()
    # LSTM at hidden 64 needs 3x: torch's 2.4 ms wants recur at 0.8 ms, 1.25x faster.
    row, flops = _missing_row(suite, "lstm", "32,64,16,50", 1.0, 2.4, 200.0, (0.13, 0.52))
    assert row["missed"] == ["≥3x"]
    seconds, fraction = suite.needed(row)
    assert seconds == pytest.approx(0.8e-3)
    assert fraction == pytest.approx(flops / 0.8e-3 / 1e9 / 200.0)
    # At hidden 512 the ratio is met and the GEMM share missed: the time at 80% of the limit.
    big, big_flops = _missing_row(suite, "lstm", "128,512,64,50", 300.0, 400.0, 150.0)
    assert big["missed"] == ["≥80% GEMM"]
    assert suite.needed(big) == pytest.approx((big_flops / (0.8 * 150.0e9), 0.8))
    # Both missed: the stricter of the two.
    both, both_flops = _missing_row(suite, "gru", "128,512,64,50", 200.0, 220.0, 150.0)
    assert both["missed"] == ["≥1.3x", "≥80% GEMM"]
    assert suite.needed(both)[0] == pytest.approx(min(220e-3 / 1.3, both_flops / (0.8 * 150e9)))
    met, _ = _missing_row(suite, "lstm", "32,64,16,50", 0.5, 2.4, 200.0)
    assert met["missed"] == [] and suite.needed(met) is None

    lines = suite.needs_lines([row, met, big])
    table = [line for line in lines if line.startswith("| train ")]
    assert len(table) == 2
    cells = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert cells[:5] == ["train sequence lstm", "32,64,16,50", "1", "0.8", "1.25x"]
    # Without a measured multiply-add ceiling (recur not timed, or a portable build), a dash.
    assert cells[6] == f"{fraction:.0%}" and cells[7] == "—" and cells[8] == "0.13 / 0.52 ‡"
    assert suite.needs_lines([met]) == []
    # With one, the needed rate against it: past 100%, beyond what the cores' FMAs do.
    # The first miss needs 132 GFLOP/s, the second 80% of a 150 GFLOP/s limit, 120.
    for missing in (row, big):
        missing["fma_ceiling"] = 125.0
    lines = suite.needs_lines([row, big])
    assert any("multiply-add ceiling, 125.0 GFLOP/s" in line for line in lines)
    table = [line for line in lines if line.startswith("| train ")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in table]
    assert cells[0][7] == f"{flops / 0.8e-3 / 1e9 / 125.0:.0%}" == "106%"
    assert cells[1][7] == "96%"
    assert lines[-1] == "1 of these 2 misses would need more than the multiply-add ceiling."


def test_a_run_in_two_processes_gives_each_row_its_spread(tmp_path):
    suite = load_suite()
    output = tmp_path / "RESULTS.md"

    status = suite.main(["--quick", "--processes", "2", "--models", "rnn", "--styles",
                         "sequence", "--modes", "infer", "--output", str(output)])

    report = output.read_text()
    assert status == 0, report
    assert "default threads (" in report and "threads), 2 processes" in report
    assert "The default threads pass ran in 2 worker processes" in report
    rows = [line for line in report.splitlines() if line.startswith("| rnn ")]
    assert len(rows) == 1
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    span, met = cells[-1].split(", ")
    low, high = span.split("-")
    # Of two processes, the upper ratio is the median.
    assert float(low) <= float(high) and cells[7] == high
    assert met in ("0/2", "1/2", "2/2")


def _timed_pass(suite, rows, gemm=(150.0, 160.0), fma=(220.0, 230.0)):
    """A pass as a timing worker writes it, analysed: rows of (model, style, mode, config,
    recur ms, torch ms or None where torch failed)."""
    timing = {"threads": "default", "torch_threads": 2, "recur_threads": 2,
              "gemm_start": {"recur": gemm[0], "torch": gemm[0]},
              "gemm_end": {"recur": gemm[1], "torch": gemm[1]},
              "fma_start": fma[0], "fma_end": fma[1], "rows": []}
    for model, style, mode, config, recur_ms, torch_ms in rows:
        seconds = {"recur": recur_ms / 1e3}
        errors = {}
        if torch_ms is None:
            errors["torch"] = "RuntimeError: out of memory"
        else:
            seconds["torch"] = torch_ms / 1e3
        timing["rows"].append({"model": model, "style": style, "mode": mode,
                               "config": list(map(int, config.split(","))), "seconds": seconds,
                               "errors": errors, "foreign_load": 0.0, "gemm_gflops": gemm[0],
                               "handover_us": [0.13, 0.14]})
    suite.analysed_rows(timing)
    return timing


def test_several_processes_report_the_median_process_of_each_row():
    suite = load_suite()
    gru, lstm = ("gru", "sequence", "train", "32,128,32,100"), ("lstm", "sequence", "infer",
                                                                "64,256,64,100")
    # GRU needs 5x: ratios 4.4, 6.2, 5.5 -> the third process, met in two of three. The
    # LSTM needs 1x: torch failed in the first process, which then counts lowest, 1.0 and
    # 1.2 after it -> the median is the 1.0 of the third process.
    passes = [_timed_pass(suite, [(*gru, 7.0, 30.8), (*lstm, 20.0, None)], gemm=(150.0, 151.0),
                          fma=(221.0, 222.0)),
              _timed_pass(suite, [(*gru, 6.0, 37.2), (*lstm, 20.0, 24.0)], gemm=(152.0, 153.0),
                          fma=(223.0, 224.0)),
              _timed_pass(suite, [(*gru, 6.5, 35.75), (*lstm, 21.0, 21.0)], gemm=(154.0, 155.0),
                          fma=(219.0, 218.0))]

    merged = suite.median_process(passes)

    gru_row, lstm_row = merged["rows"]
    assert gru_row["seconds"] == {"recur": 6.5e-3, "torch": 35.75e-3}
    assert gru_row["ratio"] == pytest.approx(5.5) and gru_row["missed"] == []
    assert gru_row["spread"]["met"] == 2 and gru_row["spread"]["processes"] == 3
    assert gru_row["spread"]["ratios"] == pytest.approx([4.4, 6.2, 5.5])
    assert lstm_row["seconds"] == {"recur": 21e-3, "torch": 21e-3}
    assert lstm_row["spread"]["met"] == 2 and lstm_row["spread"]["ratios"][0] is None
    # The pass starts with its first process and ends with its last; the multiply-add
    # ceiling is the faster of those two ends, 221 against 218.
    assert merged["gemm_start"]["recur"] == 150.0 and merged["gemm_end"]["recur"] == 155.0
    assert merged["fma_start"] == 221.0 and merged["fma_end"] == 218.0
    assert all(row["fma_ceiling"] == 221.0 for row in merged["rows"])
    # The processes' own rows are left as they were.
    assert "spread" not in passes[2]["rows"][0]

    assert suite.threads_label(merged).endswith("recur 2 threads), 3 processes")
    assert suite.spread_text(gru_row) == "4.40-6.20, 2/3"
    summary = "\n".join(suite.summary_lines([merged]))
    assert "each row the median of 3 processes" in summary
    assert "| train sequence gru | 5.50 (2/3) |" in summary
    table = suite.row_table([gru_row])
    assert table[0].endswith("| torch/recur over processes, met in |")
    assert table[2].endswith("| 4.40-6.20, 2/3 |")
    assert suite.row_table(passes[0]["rows"])[0].endswith("| hand-over µs |")

    shifted = _timed_pass(suite, [(*lstm, 20.0, 24.0), (*gru, 6.0, 37.2)])
    with pytest.raises(ValueError, match="different cases"):
        suite.median_process([passes[0], shifted])


def test_processes_must_be_counted_from_one():
    suite = load_suite()
    assert suite.parse_args(["--quick"]).processes == 1
    assert suite.parse_args(["--quick", "--processes", "3"]).processes == 3
    with pytest.raises(SystemExit):
        suite.parse_args(["--processes", "0"])
