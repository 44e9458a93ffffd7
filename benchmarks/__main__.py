"""`python -m benchmarks [NAME...]`: run the named benchmarks, or all of them.

A benchmark is a module `benchmarks/<NAME>.py` with a `main() -> None` that prints its
figures and ends with the JSON line from `benchmarks.common.report`.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import pkgutil
import sys
from pathlib import Path

HERE = Path(__file__).parent
NOT_BENCHMARKS = {"common", "pair"}


def available() -> list[str]:
    return sorted(
        m.name
        for m in pkgutil.iter_modules([str(HERE)])
        if not m.name.startswith("_") and m.name not in NOT_BENCHMARKS
    )


def summary(name: str) -> str:
    """The first paragraph of a benchmark's docstring, on one line. Read, not imported, so that
    --help works even where a benchmark's own imports would fail."""
    doc = ast.get_docstring(ast.parse((HERE / f"{name}.py").read_text())) or ""
    return " ".join(doc.split("\n\n")[0].split())


def parser() -> argparse.ArgumentParser:
    names = available()
    width = max(map(len, names), default=0)
    listing = "\n".join(f"  {n:<{width}}  {summary(n)}" for n in names)
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run pyxen's benchmarks (all of them without a NAME). Each prints its\n"
                    "figures as ratios against a reference measured in the same run and ends\n"
                    "with one JSON line.",
        epilog=f"benchmarks:\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="a benchmark to run (see below)")
    return p


def main(argv: list[str]) -> int:
    names = parser().parse_args(argv).names or available()
    unknown = [n for n in names if n not in available()]
    if unknown:
        print(f"python -m benchmarks: unknown benchmark(s) {', '.join(unknown)}; "
              f"available: {', '.join(available())}", file=sys.stderr)
        return 2
    for name in names:
        print(f"== {name}", flush=True)
        importlib.import_module(f"benchmarks.{name}").main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
