"""Table 1's tables and figure options, from the arm records (apart from experiments/table1.py,
which trains the arms, so that editing a table or a figure option never reruns a training job).

    table1.csv   one row per (network, arm): lr, batch_size, epochs, tau, val_accuracy (mean over seeds,
                 100·(1 − final val error); chance for a diverged run), its std, seeds, diverged, paper
    table1.md    the paper's layout: one row per network, one column per arm
    table1_runs.csv   one row per network, arm and seed: val_accuracy, status, run (what the claims
                 ledger pairs by seed)
"""

from __future__ import annotations

import json
import math
import os

from .. import files
from ..errors import UserError
from ..spec import validate_spec
from .table1 import ARMS, all_specs, extra_epochs, read_summary, seeds

TABLE_COLUMNS = ("network", "arm", "lr", "batch_size", "epochs", "tau", "val_accuracy", "val_accuracy_std",
                 "seeds", "diverged", "paper")
PAPER = {
    "ResNet-44": {"SB": 92.87, "LB": 90.42, "ASGD": 10.0, "+LR": 88.57, "+30%": 91.65},
    "VGG-11": {"SB": 89.8, "LB": 84.55, "ASGD": 10.0, "+LR": 61.41, "+30%": 84.74},
    "C3": {"SB": 60.0, "LB": 57.89, "ASGD": 1.0, "+LR": 54.02, "+30%": 58.94},
    "WRN-16-4": {"SB": 76.78, "LB": 72.85, "ASGD": 17.8, "+LR": 70.35, "+30%": 73.81},
}
#: Columns of table1_runs.csv: one row per (network, arm, seed), what the claims ledger pairs by seed.
RUN_COLUMNS = ("network", "arm", "seed", "val_accuracy", "status", "run")
NUM_CLASSES = {"digits": 10, "mnist": 10, "cifar10": 10, "cifar100": 100, "imagenet": 1000}


def accuracy(summary: dict, classes: int) -> float:
    """100·(1 − final val error); chance (100/classes) for a run with no finite val error."""
    e = summary["final"].get("val_error")
    try:
        e = float(e)
    except (TypeError, ValueError):
        e = math.nan
    if summary["status"] == "diverged" or not math.isfinite(e):
        return 100.0 / classes
    return 100.0 * (1.0 - e)


def run_rows(network: str, arm: str, folders) -> list[dict]:
    """The table1_runs.csv rows of one (network, arm): one per run folder (seed), its val accuracy
    (a diverged run at chance)."""
    rows = []
    for folder in folders:
        spec = validate_spec(files.read_json(os.path.join(folder, "run.json"), "run.json").get("spec") or {})
        s = read_summary(folder)
        rows.append({"network": network, "arm": arm, "seed": int(spec["seed"]),
                     "val_accuracy": accuracy(s, NUM_CLASSES.get(spec["dataset"], 10)), "status": s["status"],
                     "run": str(folder), "spec": spec})
    return rows


def table_row(network: str, arm: str, folders) -> dict:
    """The table1.csv row of one (network, arm) from its run folders (one per seed)."""
    runs = run_rows(network, arm, folders)
    accs = [r["val_accuracy"] for r in runs]
    specs = [r["spec"] for r in runs]
    diverged = sum(r["status"] == "diverged" for r in runs)
    if not specs:
        raise UserError(f"table1: no runs for {network} {arm}")
    m = sum(accs) / len(accs)
    std = math.sqrt(sum((a - m) ** 2 for a in accs) / (len(accs) - 1)) if len(accs) > 1 else 0.0
    s0 = specs[0]
    o = s0["optimizer"]
    tau = o["workers"] - 1 if o["workers"] is not None else int(o["delay"])
    return {"network": network, "arm": arm, "lr": s0["lr"], "batch_size": s0["batch_size"], "epochs": s0["epochs"],
            "tau": tau, "val_accuracy": m, "val_accuracy_std": std, "seeds": len(specs), "diverged": diverged,
            "paper": PAPER.get(network, {}).get(arm)}


def markdown(rows: list[dict]) -> str:
    """table1.md: one row per network, one column per arm: 'mean ± std (η)', the paper's value
    after a slash where there is one."""
    nets = list(dict.fromkeys(r["network"] for r in rows))
    cell = {(r["network"], r["arm"]): r for r in rows}
    lines = ["| network | " + " | ".join(ARMS) + " |", "|---|" + "---|" * len(ARMS)]
    for n in nets:
        cells = []
        for arm in ARMS:
            r = cell.get((n, arm))
            if r is None:
                cells.append("")
                continue
            text = f"{r['val_accuracy']:.2f} ± {r['val_accuracy_std']:.2f} (η {r['lr']:.3g})"
            if r["diverged"]:
                text += f", {r['diverged']}/{r['seeds']} diverged"
            if r["paper"] is not None:
                text += f" / paper {r['paper']:.2f}"
            cells.append(text)
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(arm_dirs: dict, table_csv: str, table_md: str, runs_csv: str | None = None) -> list[dict]:
    """table1.csv and table1.md from ``arm_dirs`` ((network, arm) -> run folders), rows in the
    order networks first appear and ARMS; with ``runs_csv`` also table1_runs.csv (one row per seed)."""
    order = {a: i for i, a in enumerate(ARMS)}
    nets = {n: i for i, n in enumerate(dict.fromkeys(n for n, _ in arm_dirs))}
    cells = sorted(arm_dirs.items(), key=lambda kv: (nets[kv[0][0]], order[kv[0][1]]))
    rows = [table_row(n, a, dirs) for (n, a), dirs in cells]
    files.write_csv(table_csv, list(TABLE_COLUMNS), rows)
    if runs_csv:
        files.write_csv(runs_csv, list(RUN_COLUMNS), [r for (n, a), dirs in cells for r in run_rows(n, a, dirs)])
    text = markdown(rows)
    files.atomic_write(table_md, lambda f: f.write(text.encode()))
    return rows


def plot_options(block: dict, scale: str) -> str:
    return json.dumps({"tau": int(block["tau"]), "scale": scale, "extra_epochs": extra_epochs(block),
                       "lr_scaling": block.get("lr_scaling", "sqrt"), "seeds": len(seeds(block)),
                       "scan": bool(block.get("sb_lrs"))}, sort_keys=True)


def config_specs(exp: dict, settings):
    """(config key, spec) of every training run of the ``table1`` block of ``exp`` (registry role
    ``specs``; ``settings(spec)`` adds the run-wide settings to each network's spec)."""
    yield from all_specs(exp["table1"], settings)


def _cli_collect(args) -> int:
    arm_dirs = {}
    for path in args.record:
        rec = files.read_json(path, "table1 arm record")
        if not isinstance(rec, dict) or not {"network", "arm", "runs"} <= set(rec):
            raise UserError(f"table1 arm record {path}: not an arm record (network, arm, runs)")
        arm_dirs[(rec["network"], rec["arm"])] = rec["runs"]
    for r in write_table(arm_dirs, args.table, args.markdown, args.runs):
        paper = f" (paper {r['paper']:.2f})" if r["paper"] is not None else ""
        print(f"{r['network']:<12} {r['arm']:<5} lr {r['lr']:<9.4g} val accuracy {r['val_accuracy']:.2f} "
              f"± {r['val_accuracy_std']:.2f}%{paper}")
    return 0


def register(subparsers) -> None:
    """Add ``table1-collect``."""
    p = subparsers.add_parser("table1-collect", description="table1.csv and table1.md from the arm records.")
    p.add_argument("--record", nargs="+", required=True, metavar="JSON")
    p.add_argument("--table", required=True, metavar="CSV")
    p.add_argument("--markdown", required=True, metavar="MD")
    p.add_argument("--runs", default=None, metavar="CSV", help="also table1_runs.csv: one row per network, arm and seed")
    p.set_defaults(func=_cli_collect)
