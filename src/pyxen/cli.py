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

from pyxen.threads import SignalStop, stop_signals

# subcommand name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("pyxen.toolstack.run_cmd", "run one domain in the foreground (no daemon)"),
    "demo": ("pyxen.toolstack.demo_cmd", "build and run the bundled demo guest"),
    "xenstored": ("pyxen.xenstore.daemon", "run a standalone xenstored on a Unix socket"),
    "daemon": ("pyxen.host.daemon", "run the host: XenStore, consoles, one process per domain"),
}
# xl commands that talk to the daemon -> the module whose COMMANDS table holds them
XL_COMMANDS: dict[str, str] = {
    "create": "pyxen.toolstack.xl_create",
    "list": "pyxen.toolstack.xl_list",
    "console": "pyxen.toolstack.xl_console",
    **dict.fromkeys(("destroy", "pause", "unpause", "shutdown", "reboot", "rename", "domid",
                     "domname", "uptime", "dmesg", "info"), "pyxen.toolstack.xl_ops"),
    **dict.fromkeys(("sched-credit", "vcpu-list", "vcpu-pin", "vcpu-set", "mem-set",
                     "mem-max", "top"), "pyxen.toolstack.xl_sched"),
    **dict.fromkeys(("save", "restore", "migrate", "migrate-receive"),
                    "pyxen.toolstack.xl_save"),
    **dict.fromkeys(("block-attach", "block-detach", "block-list", "network-attach",
                     "network-detach", "network-list"), "pyxen.toolstack.xl_devices"),
}


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


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `only`, just that subcommand's module is imported (the others
    are known by name), so `pyxen list` does not load the hypervisor to print a table."""
    parser = argparse.ArgumentParser(
        prog="pyxen", description="pyxen: the Xen hypervisor in Python on KVM"
    )
    parser.add_argument("--version", action="version", version=f"pyxen {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in [*SUBCOMMANDS, *XL_COMMANDS]:
        if only is not None and name != only:
            sub.add_parser(name)
            continue
        if name in SUBCOMMANDS:
            module_name, help_text = SUBCOMMANDS[name]
            module = importlib.import_module(module_name)
            add_arguments, run = module.add_arguments, module.run
        else:
            command = importlib.import_module(XL_COMMANDS[name]).COMMANDS[name]
            help_text, add_arguments, run = command.help, command.add_arguments, command.run
        sp = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(sp)
        sp.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    messages_show_bytes()
    try:
        with stop_signals.installed():  # first: building the parser imports a subcommand
            args_list = sys.argv[1:] if argv is None else argv
            first = args_list[0] if args_list else None
            parser = build_parser(first if first in SUBCOMMANDS or first in XL_COMMANDS
                                  else None)
            args = parser.parse_args(args_list)
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
