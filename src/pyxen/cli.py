"""The `pyxen` command: xl-style subcommands.

Each subcommand lives in the module that implements it; that module provides
`add_arguments(parser)` and `run(args) -> int`. This file only wires them up, so adding a
subcommand never means editing another one's code.

Every subcommand runs with the stop signals handled (SIGINT, SIGTERM, SIGHUP: one line on
stderr, what was built torn down, exit status 128 + signum).
"""

from __future__ import annotations

import argparse
import codecs
import importlib
import importlib.metadata
import sys

from pyxen.toolstack.embedded import SignalStop, stop_signals

# subcommand name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("pyxen.toolstack.run_cmd", "run one domain in the foreground (no daemon)"),
    "demo": ("pyxen.toolstack.demo_cmd", "build and run the bundled demo guest"),
    "xenstored": ("pyxen.xenstore.daemon", "run a standalone xenstored on a Unix socket"),
    "daemon": ("pyxen.host.daemon", "run the host: XenStore, consoles, one process per domain"),
}
# modules holding several xl commands that talk to the daemon, each a COMMANDS table
XL_MODULES = ("pyxen.toolstack.xl_create", "pyxen.toolstack.xl_list",
              "pyxen.toolstack.xl_console", "pyxen.toolstack.xl_ops",
              "pyxen.toolstack.xl_sched")


def _escape_undecodable(err: UnicodeError) -> tuple[str, int]:
    """Codec error handler for stderr: argv bytes that are not UTF-8 (which Python holds as
    surrogate escapes) print as the \\xNN the user typed, not as \\udcNN; anything else
    that cannot be encoded as a backslash escape."""
    if not isinstance(err, UnicodeEncodeError):
        raise err
    text = err.object[err.start : err.end]
    return "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF
                   else c.encode("ascii", "backslashreplace").decode() for c in text), err.end


codecs.register_error("pyxen.escape", _escape_undecodable)


def messages_show_bytes() -> None:
    """Make one-line errors on stderr show undecodable arguments (paths, names) as \\xNN."""
    if hasattr(sys.stderr, "reconfigure"):
        sys.stderr.reconfigure(errors="pyxen.escape")


def version() -> str:
    """The installed distribution's version; from a source tree that is not installed, the
    package's own __version__, saying so."""
    try:
        return importlib.metadata.version("pyxen")
    except importlib.metadata.PackageNotFoundError:
        from pyxen import __version__

        return f"{__version__} (not installed; version of the source tree)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyxen", description="pyxen: the Xen hypervisor in Python on KVM"
    )
    parser.add_argument("--version", action="version", version=f"pyxen {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sp = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sp)
        sp.set_defaults(_run=module.run)
    for module_name in XL_MODULES:
        for name, command in importlib.import_module(module_name).COMMANDS.items():
            sp = sub.add_parser(name, help=command.help, description=command.help)
            command.add_arguments(sp)
            sp.set_defaults(_run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    messages_show_bytes()
    try:
        with stop_signals.installed():  # first: building the parser imports every subcommand
            parser = build_parser()
            args = parser.parse_args(argv)
            if not getattr(args, "_run", None):
                parser.print_help()
                return 2
            return int(args._run(args) or 0)
    except SignalStop as e:
        print(f"pyxen: {e.message}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:  # SIGINT before the handlers were installed
        print("pyxen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
