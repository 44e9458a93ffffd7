"""`pyxen demo`: build the guest kit (if needed) and boot its demo guest."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from . import run_cmd

GUESTS = Path(__file__).resolve().parents[3] / "guests"


def guest_image(name: str) -> Path:
    """guests/build/NAME.elf, built with make if it is missing or stale."""
    if not (GUESTS / "Makefile").exists():
        raise FileNotFoundError(f"the guest kit is not at {GUESTS} (run from a source checkout)")
    if not shutil.which("make"):
        raise FileNotFoundError("`make` is needed to build the guest kit")
    build = subprocess.run(["make", "-s", "-C", str(GUESTS), f"build/{name}.elf"],
                           capture_output=True, text=True)
    if build.returncode:
        raise RuntimeError(f"building guests/{name} failed:\n{build.stdout}{build.stderr}")
    return GUESTS / "build" / f"{name}.elf"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=60, metavar="S",
                   help="stop the demo after S seconds (default 60)")
    p.add_argument("--trace", action="store_true", help="log every hypercall on stderr")
    run_cmd.add_accel_argument(p)


def run(args: argparse.Namespace) -> int:
    try:
        image = guest_image("demo")
    except (OSError, RuntimeError) as e:
        print(f"pyxen: {e}", file=sys.stderr)
        return 1
    run_args = run_cmd.build_parser_defaults()
    run_args.image = str(image)
    run_args.name = "demo"
    run_args.cmdline = "pyxen demo"
    run_args.timeout = args.timeout
    run_args.trace = args.trace
    run_args.accel = args.accel
    return run_cmd.run(run_args)
