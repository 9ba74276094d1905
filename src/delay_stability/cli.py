"""Command-line interface: `delay-stability COMMAND ...`, the project's one entry point.

Each command lives in the module that owns its concern; such a module defines
``register(subparsers)``, which adds its sub-parsers and sets ``func`` on them. ``COMMANDS`` below
names, for every command, its module and its one-line help, so that ``--help`` lists every command
without importing any of them, and a command imports only the module that owns it:
``delay-stability threshold --tau 32`` loads neither torch nor matplotlib. User mistakes become a
one-line error with exit status 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from .errors import TimeLimitReached, UserError

#: command -> (module that owns it, one-line help), in the order --help shows them.
COMMANDS = {
    "lr": ("delay_stability.experiments.theory", "learning rate that keeps the tau=0 minima stable at delay tau"),
    "threshold": ("delay_stability.experiments.theory", "alpha* = a*eta at the stability edge"),
    "theory-table": ("delay_stability.experiments.theory", "write the tidy table of a theory figure (CSV)"),
    "train": ("delay_stability.train", "train a model with delayed SGD from a spec file"),
    "sharpness": ("delay_stability.measure", "top Hessian eigenvalue of the training loss at a checkpoint"),
    "plot": ("delay_stability.plots", "draw a figure from its tidy table(s)"),
    "stability-polish": ("delay_stability.experiments.stability",
                         "polish a steady state to a minimum (Gauss-Newton/L-BFGS)"),
    "stability-kick": ("delay_stability.experiments.stability", "perturb a minimum along its top eigenvector"),
    "stability-search": ("delay_stability.experiments.stability",
                         "largest stable learning rate for (variant, m, tau)"),
    "stability-curve": ("delay_stability.experiments.stability",
                        "a long continuation at factor x eta_max (fig. 12)"),
    "stability-collect": ("delay_stability.experiments.stability_tables", "tidy tables from search results"),
    "eos-run": ("delay_stability.experiments.eos", "train with sharpness tracking (delayed edge of stability)"),
    "eos-collect": ("delay_stability.experiments.eos_tables",
                    "plateau table of tracked runs (delayed edge of stability)"),
    "ensemble": ("delay_stability.ensemble", "train a list of specs as one batched ensemble (run folders as train)"),
    "generalization-collect": ("delay_stability.experiments.generalization",
                               "tables of the generalization experiment (figs. 1, 3, 13) from run folders"),
    "table1-arm": ("delay_stability.experiments.table1", "train one arm of one network of Table 1 (all seeds)"),
    "table1-scan": ("delay_stability.experiments.table1", "the small-batch learning-rate scan table of Table 1"),
    "table1-collect": ("delay_stability.experiments.table1_tables", "table1.csv and table1.md from the arm records"),
    "imagenet-collect": ("delay_stability.experiments.imagenet",
                         "tables of figures 5 and 9 (ImageNet under delay) from run folders"),
    "spikes-collect": ("delay_stability.experiments.spikes",
                       "spike counts of the training error (fig. 11) from run folders"),
    "momentum-theory": ("delay_stability.experiments.momentum",
                        "figures 6-7 of Asynchrony begets Momentum: rate-optimal explicit momentum (Theorem 7)"),
    "momentum-quadratic": ("delay_stability.experiments.momentum",
                           "least-squares stand-in: measured vs predicted rate-optimal momentum (random workers)"),
    "momentum-collect": ("delay_stability.experiments.momentum_tables",
                         "tables of the momentum experiment (best momentum vs workers) from run folders"),
    "grid-collect": ("delay_stability.experiments.grid", "tidy tables of the run folders of a grid"),
    "mitigations-search": ("delay_stability.experiments.mitigations",
                           "stability searches of one delay mitigation over tau"),
    "mitigations-collect": ("delay_stability.experiments.mitigations_tables", "edges.csv of the delay mitigations"),
    "mitigations-noise": ("delay_stability.experiments.mitigations", "DC-ASGD's noise parameter c at a minimum"),
    "random-staleness-theory": ("delay_stability.experiments.random_staleness",
                                "predicted edges (mean, mean-square, almost-sure) of every staleness model"),
    "random-staleness-search": ("delay_stability.experiments.random_staleness",
                                "stability searches of one staleness model, per seed"),
    "random-staleness-collect": ("delay_stability.experiments.random_staleness_tables",
                                 "edges.csv and summary.csv of random staleness"),
    "random-staleness-rescore": ("delay_stability.experiments.random_staleness_tables",
                                 "the real-workers continuations re-scored by every criterion"),
    "claims-collect": ("delay_stability.experiments.claims",
                       "the claims ledger (results/<scale>/claims.csv) from the tidy tables"),
    "claims": ("delay_stability.experiments.claims",
               "print the claims ledger of a scale: every claim with its interval and verdict"),
    "audit": ("delay_stability.experiments.audit", "what produced every figure, and what is stale, missing or diverged"),
    "parameter-server": ("delay_stability.server",
                         "run as server (rank 0) or worker of a real parameter server under torchrun"),
    "parameter-server-launch": ("delay_stability.server",
                                "launch a real parameter server on this machine (torchrun, loopback)"),
    "real-workers-config": ("delay_stability.experiments.real_workers",
                            "the parameter server's run config of one setting"),
    "real-workers-collect": ("delay_stability.experiments.real_workers_tables", "tables of the real-workers experiment"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: usage line + one line, exit 2
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


class _OnlyCommand:
    """The sub-parsers object handed to a module's ``register``: it keeps the parser of the chosen
    command and gives the module's other commands a throwaway parser (they are listed already)."""

    def __init__(self, subparsers, command):
        self.subparsers, self.command = subparsers, command
        self.registered = []

    def add_parser(self, name, **kwargs):
        self.registered.append(name)
        if name != self.command:
            return _Parser(prog=name, add_help=False)
        kwargs["help"] = COMMANDS[name][1]
        return self.subparsers.add_parser(name, **kwargs)


def _chosen_command(argv):
    """The command named on the command line (the first argument that is one), or None."""
    for arg in argv:
        if arg in COMMANDS:
            return arg
        if not arg.startswith("-"):
            return None
    return None


def build_parser(argv=None) -> argparse.ArgumentParser:
    """The parser: every command listed; the full parser only for the command in ``argv``
    (``argv=None``: the command line; ``argv="all"``: every command's module is loaded)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = _Parser(
        prog="delay-stability",
        description="Stability of asynchronous SGD with gradient delay (Giladi et al., ICLR 2020) and "
                    "the momentum of asynchrony (Mitliagkas et al., 2016).",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    chosen = _chosen_command(argv) if argv != "all" else None
    for name, (module, help_text) in COMMANDS.items():
        if argv == "all" or name == chosen:
            only = _OnlyCommand(sub, name)
            importlib.import_module(module).register(only)
            if name not in only.registered:
                raise RuntimeError(f"{module} does not register the command {name!r}")
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _unrecognized(parser, argv, extra) -> str:
    """The error for arguments no flag takes, naming the flag they follow and the fix: a flag that
    takes one comma-separated list (``--probs 0.5 0.6``) gets the joined list to type instead."""
    message = f"unrecognized arguments: {' '.join(extra)}"
    try:
        i = argv.index(extra[0])
    except ValueError:
        return message
    j = i - 1
    while j >= 0 and not argv[j].startswith("-"):
        j -= 1
    command = _chosen_command(argv)
    sub = next((a.choices.get(command) for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if j < 0 or sub is None:
        return message
    flag = argv[j]
    action = next((a for a in sub._actions if flag in a.option_strings), None)
    if action is None or action.nargs not in (None, "?"):
        return message
    values = argv[j + 1:i + 1]
    k = i + 1
    while k < len(argv) and not argv[k].startswith("-"):
        values.append(argv[k])
        k += 1
    if "," in str(action.metavar or ""):
        return (f"{flag} takes one comma-separated list without spaces: {flag} {','.join(values)} "
                f"(got {len(values)} separate values)")
    return f"{message} ({flag} takes one value: {flag} {values[0]})"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    if extra:
        command = _chosen_command(argv)
        sub = next((a.choices.get(command) for a in parser._actions
                    if isinstance(a, argparse._SubParsersAction)), None)
        (sub or parser).error(_unrecognized(parser, argv, extra))
    try:
        result = args.func(args)
    except (UserError, ValueError, FileNotFoundError) as exc:
        msg = str(exc) or exc.__class__.__name__
        print(f"delay-stability {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except TimeLimitReached as exc:
        print(f"delay-stability {args.command}: {exc}", file=sys.stderr)
        return TimeLimitReached.EXIT_STATUS
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"delay-stability {args.command}: error: no space left on the device writing "
              f"{exc.filename or 'a result'}; free some and run again (the last checkpoint is intact)",
              file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
