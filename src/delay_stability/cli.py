"""Command-line interface: `delay-stability COMMAND ...`.

Each command lives in the module that owns its concern; a module that offers commands defines
``register(subparsers)``, which adds its sub-parsers and sets ``func`` on them. This file only
collects them and turns user mistakes into a one-line error with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UserError

#: Modules that contribute sub-commands, in the order shown by --help.
COMMAND_MODULES = (
    "delay_stability.theory_cli",
    "delay_stability.train",
    "delay_stability.sharpness",
    "delay_stability.plots",
    "delay_stability.pipeline",
    "delay_stability.tables",
    "delay_stability.eos",
    "delay_stability.eos_tables",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: usage line + one line, exit 2
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="delay-stability",
        description="Stability of asynchronous SGD with gradient delay (Giladi et al., ICLR 2020).",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a module not written yet must not break the others
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except (UserError, ValueError, FileNotFoundError) as exc:
        msg = str(exc) or exc.__class__.__name__
        print(f"delay-stability {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
