"""The `recur` command line (also `python -m recur`):

    recur demo [options]     train a character-level LSTM on Python's help text
    recur bench [options]    compare recur with torch (from a source checkout)
"""
import argparse
import importlib.util
import sys
from pathlib import Path

import recur

# The exit status of a command that cannot run here, argparse's for a usage error.
UNAVAILABLE = 2


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        prog="recur", description="recur: automatic differentiation for recurrent neural networks")
    parser.add_argument("--version", action="version", version=f"recur {recur.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from recur import demo
    demo_parser = commands.add_parser(
        "demo", help="train a character-level LSTM language model on Python's help text",
        description=demo.__doc__.splitlines()[0])
    demo.add_arguments(demo_parser)
    commands.add_parser(
        "bench", add_help=False,
        help="run bench/suite.py, recur against torch (source checkout with torch installed); "
             "`recur bench --help` lists its options")

    # The bench suite parses its own options, so everything after `bench` goes to it untouched.
    if argv[:1] == ["bench"]:
        return bench(argv[1:])
    args = parser.parse_args(argv)
    demo.run(args)
    return 0


def bench(argv):
    suite = Path(recur.__file__).resolve().parent.parent / "bench" / "suite.py"
    if not suite.is_file():
        print(f"recur bench: the benchmark suite lives in a source checkout of recur, next to the "
              f"package; there is no {suite} here. Run it from a clone of the repository "
              "(pip install -e . there).", file=sys.stderr)
        return UNAVAILABLE
    if importlib.util.find_spec("torch") is None:
        print("recur bench: the benchmarks compare recur with torch, which is not installed; "
              "pip install 'torch==2.13.0' (or pip install -e '.[bench]').", file=sys.stderr)
        return UNAVAILABLE
    spec = importlib.util.spec_from_file_location("bench_suite", suite)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


if __name__ == "__main__":
    sys.exit(main())
