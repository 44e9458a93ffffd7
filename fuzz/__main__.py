"""`python -m fuzz TARGET [--runs N] [--seconds S] [--corpus DIR] [CRASH...]`: one target
under atheris; `python -m fuzz --list` names the targets. See fuzz/__init__.py."""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import FunctionType, ModuleType

from fuzz.targets import HERE as TARGETS_DIR
from fuzz.targets import names

CORPUS = Path(__file__).parent / "corpus"
# Instrumented for coverage unless a target names its modules (INSTRUMENT = (...)):
# instrumenting all of pyxen costs seconds at every start (the host modules import the
# hypervisor).
INSTRUMENTED = ("pyxen",)


def _tree(name: str) -> ast.Module:
    return ast.parse((TARGETS_DIR / f"{name}.py").read_text())


def summary(name: str) -> str:
    """A target's first docstring line, read without importing it."""
    doc = ast.get_docstring(_tree(name)) or ""
    return doc.split("\n", 1)[0]


def instrumented(name: str) -> list[str]:
    """The modules a target wants coverage of: its INSTRUMENT, read without importing it
    (an import before the instrumentation would leave them uninstrumented)."""
    for node in _tree(name).body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "INSTRUMENT" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return list(INSTRUMENTED)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    p.add_argument("target", nargs="?", choices=names(), metavar="TARGET")
    p.add_argument("inputs", nargs="*", metavar="CRASH",
                   help="run these input files once each instead of fuzzing")
    p.add_argument("--list", action="store_true", help="list the targets and exit")
    p.add_argument("--runs", type=int, help="stop after N inputs (after the corpus's)")
    p.add_argument("--seconds", type=int, help="stop after S seconds")
    p.add_argument("--corpus", type=Path,
                   help="the working corpus (kept; default: a temporary directory)")
    p.add_argument("--seed", type=int, default=0, help="libFuzzer's -seed (0: random)")
    p.add_argument("--timeout", type=int, default=10,
                   help="seconds one input may take before it counts as a hang")
    p.add_argument("--max-len", type=int, default=0,
                   help="libFuzzer's -max_len (0: its default, from the corpus)")
    p.add_argument("--artifacts", type=Path, default=Path("."),
                   help="where crash-*, timeout-*, oom-* inputs are written")
    p.add_argument("--rss-limit-mb", type=int, default=2048)
    return p


def load(name: str, instrument: bool) -> ModuleType:
    """The target's module; with `instrument`, the functions of the modules it names get
    coverage hooks. (atheris.instrument_imports would take all of pyxen: it filters on the
    top-level package only.)"""
    module = importlib.import_module(f"fuzz.targets.{name}")
    if instrument:
        import atheris

        prefixes = instrumented(name)
        for modname, mod in list(sys.modules.items()):
            if any(modname == p or modname.startswith(p + ".") for p in prefixes):
                for fn in _functions(mod):
                    atheris.instrument_func(fn)
    return module


def _functions(module: ModuleType) -> Iterator[FunctionType]:
    """The functions and methods defined in `module` (nested ones are instrumented with
    the function that holds them)."""
    for obj in list(vars(module).values()):
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        if isinstance(obj, FunctionType):
            yield obj
        elif isinstance(obj, type):
            for attr in vars(obj).values():
                if isinstance(attr, staticmethod | classmethod):
                    attr = attr.__func__
                if isinstance(attr, property):
                    yield from (f for f in (attr.fget, attr.fset) if isinstance(f, FunctionType))
                elif isinstance(attr, FunctionType):
                    yield attr


def write_seeds(module: ModuleType, directory: Path) -> None:
    """The target's generated seeds, as files named by their hash (written once)."""
    seeds = getattr(module, "seeds", None)
    for data in seeds() if seeds else []:
        path = directory / hashlib.sha1(data).hexdigest()
        if not path.exists():
            path.write_bytes(data)


def libfuzzer_args(args: argparse.Namespace, corpora: list[Path]) -> list[str]:
    flags = [sys.argv[0], f"-timeout={args.timeout}", f"-rss_limit_mb={args.rss_limit_mb}",
             f"-artifact_prefix={args.artifacts}/", "-print_final_stats=1"]
    if args.seed:
        flags.append(f"-seed={args.seed}")
    if args.runs is not None:
        flags.append(f"-runs={args.runs}")
    if args.seconds is not None:
        flags.append(f"-max_total_time={args.seconds}")
    if args.max_len:
        flags.append(f"-max_len={args.max_len}")
    return flags + [str(c) for c in corpora]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.list:
        for name in names():
            print(f"{name:<16} {summary(name)}")
        return 0
    if args.target is None:
        parser().error("a TARGET is needed (--list names them)")
    try:
        import atheris
    except ImportError:
        print("python -m fuzz: atheris is not installed (pip install atheris)",
              file=sys.stderr)
        return 2
    if args.inputs:
        atheris.Setup([sys.argv[0], *args.inputs], load(args.target, True).one_input)
        atheris.Fuzz()
        return 0
    if args.corpus is None:
        # libFuzzer ends the process when it is done: a child fuzzes, this one cleans up
        with tempfile.TemporaryDirectory(prefix=f"fuzz-{args.target}-") as scratch:
            rest = sys.argv[1:] if argv is None else argv
            return subprocess.call([sys.executable, "-m", "fuzz", *rest, "--corpus", scratch])
    module = load(args.target, instrument=True)
    args.corpus.mkdir(parents=True, exist_ok=True)
    write_seeds(module, args.corpus)
    corpora = [args.corpus]
    if (CORPUS / args.target).is_dir():
        corpora.append(CORPUS / args.target)  # read only: libFuzzer adds to the first
    args.artifacts.mkdir(parents=True, exist_ok=True)
    atheris.Setup(libfuzzer_args(args, corpora), module.one_input)
    atheris.Fuzz()  # exits the process: 0 when the runs or the time are done
    return 0


if __name__ == "__main__":
    sys.exit(main())
