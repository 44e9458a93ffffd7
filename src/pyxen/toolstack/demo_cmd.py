"""`pyxen demo`: build the guest kit (if needed) and boot its demo guest."""

from __future__ import annotations

import argparse
import sys

from . import run_cmd
from .guestkit import guest_image


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=run_cmd.timeout_seconds, default=60, metavar="S",
                   help="stop the demo after S seconds (default 60)")
    p.add_argument("--trace", action="store_true", help="log every hypercall on stderr")
    run_cmd.add_accel_argument(p)


def run(args: argparse.Namespace) -> int:
    try:
        image = guest_image("demo")
    except (OSError, RuntimeError) as e:  # GuestKitError is a RuntimeError
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
