"""Spikes in the training error under delay (appendix D, figure 11).

Long training with a constant delay τ and no learning-rate decay, three algorithms with the same
hyperparameters (config block ``spikes``): A-SGD with server momentum m ("momentum", eq. 9), without
momentum ("plain", eq. 2) and with shifted momentum m ("shifted", eq. 10), every seed of
``seeds``. The paper (ResNet-44 on CIFAR-10): spikes appear with momentum, shifted momentum removes
them. Every run uses dampening, so the three have the same effective step η (appendix E).

A *spike* (``count_spikes``), on the per-epoch train error e_1, e_2, ... with running minimum
r_t = min_{s<t} e_s: it starts at the first epoch t with e_t > r_t + margin; it has *recovered* at
the first later epoch u with e_u <= r_t + margin / 2; its height is max_{t<=s<u} e_s - r_t.
A spike that has not recovered by the end is counted apart (``open_spike``); after one ends the
search goes on from u with the running minimum over every epoch so far. A run that diverged (a
train error that is not finite) has its spikes counted up to the divergence.

``delay-stability spikes-collect`` writes results/<scale>/spikes/spikes.csv (SPIKES_COLUMNS, one
row per run) and spikes_curves.csv (one row per run and epoch).
"""

from __future__ import annotations

import json
import math
import os

from .. import files
from ..errors import UserError
from ..spec import deep_merge
from . import grid

VARIANTS = ("momentum", "plain", "shifted")
SPIKES_COLUMNS = ("variant", "seed", "spikes", "mean_height", "final_train_error", "max_height", "open_spike",
                  "status", "final_val_error", "min_train_error", "margin", "lr", "tau", "momentum", "run")
CURVE_COLUMNS = ("variant", "seed", "epoch", "train_error", "val_error", "train_loss")
DEFAULT_MARGIN = 0.05


# ================================================================ the spike count


def count_spikes(errors, margin: float = DEFAULT_MARGIN) -> dict:
    """Spikes of a train-error curve (see the module docstring).

    Args:
        errors: train errors per epoch, in order (None or non-finite: the run diverged there;
            the count stops).
        margin: how far above the running minimum a spike must rise (error as a fraction).

    Returns:
        {"spikes": recovered spikes, "heights": their heights, "open_spike": whether a spike was
        still up at the end, "starts": their start indices}.
    """
    if not margin > 0:
        raise UserError(f"spikes.spike_margin: must be > 0, got {margin}")
    heights, starts = [], []
    best = math.inf
    start = peak = None
    for i, e in enumerate(errors):
        if e is None or not math.isfinite(float(e)):
            break
        e = float(e)
        if start is None:
            if e > best + margin:
                start, peak, base = i, e, best
            best = min(best, e)
        else:
            peak = max(peak, e)
            if e <= base + margin / 2:
                heights.append(peak - base)
                starts.append(start)
                start = None
            best = min(best, e)
    return {"spikes": len(heights), "heights": heights, "open_spike": start is not None, "starts": starts}


# ================================================================ the runs


def run_spec(block: dict, base: dict, variant: str) -> dict:
    """One variant's spec: delay ``tau``, momentum ``momentum`` (0 for plain), dampening."""
    if variant not in VARIANTS:
        raise UserError(f"spikes.variants: unknown variant {variant!r} (choose {', '.join(VARIANTS)})")
    m = 0.0 if variant == "plain" else float(block["momentum"])
    return deep_merge(base, {"optimizer": {"delay": block["tau"], "variant": variant, "momentum": m,
                                           "dampening": True}})


def runs(block: dict, base: dict) -> list:
    """GridRuns of every (variant, seed), named variant{v}/seed{s}."""
    out = []
    for variant in block["variants"]:
        for run in grid.expand(run_spec(block, base, variant), {"seed": list(block.get("seeds") or [0])}):
            out.append(grid.GridRun(f"variant{variant}/{run.name}", {"variant": variant, **run.axes}, run.spec))
    return out


def all_specs(block: dict, base: dict):
    yield "spikes.train", base
    for run in runs(block, base):
        yield f"spikes ({run.name})", run.spec


def config_specs(exp: dict, settings):
    """(config key, spec) of every training run of the ``spikes`` block of ``exp`` (registry role
    ``specs``; ``settings(spec)`` adds the run-wide settings)."""
    yield from all_specs(exp["spikes"], settings(exp["spikes"]["train"]))


def margin_of(block: dict) -> float:
    return float(block.get("spike_margin", DEFAULT_MARGIN))


def plot_options(block: dict, base: dict, scale: str) -> str:
    return json.dumps({"model": base["model"], "dataset": base.get("dataset", "digits"), "epochs": base["epochs"],
                       "batch_size": base.get("batch_size"), "lr": base["lr"], "tau": block["tau"],
                       "momentum": block["momentum"], "margin": margin_of(block), "scale": scale}, sort_keys=True)


# ================================================================ the tables


def _num(v):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def run_rows(folder: str, margin: float) -> tuple[dict, list[dict]]:
    """(spikes row, curve rows) of one run folder."""
    rec = files.read_json(os.path.join(folder, "run.json"), "run.json")
    s = files.read_json(os.path.join(folder, "summary.json"), "summary.json")
    if not isinstance(rec, dict) or "spec" not in rec or "final" not in (s or {}):
        raise UserError(f"{folder}: not a finished run folder")
    spec, o = rec["spec"], rec["spec"]["optimizer"]
    metrics = [m for m in files.read_csv(os.path.join(folder, "metrics.csv"), "metrics.csv") if int(m["epoch"]) > 0]
    errors = [_num(m["train_error"]) for m in metrics]
    if s["status"] == "diverged":
        errors.append(None)
    found = count_spikes(errors, margin)
    finite = [e for e in errors if e is not None]
    row = {"variant": o["variant"], "seed": int(spec["seed"]), "spikes": found["spikes"],
           "mean_height": sum(found["heights"]) / len(found["heights"]) if found["heights"] else 0.0,
           "final_train_error": _num(s["final"].get("train_error")),
           "max_height": max(found["heights"], default=0.0), "open_spike": found["open_spike"],
           "status": s["status"], "final_val_error": _num(s["final"].get("val_error")),
           "min_train_error": min(finite, default=None), "margin": margin, "lr": float(spec["lr"]),
           "tau": o["delay"], "momentum": float(o["momentum"]), "run": str(folder)}
    curve = [{"variant": o["variant"], "seed": row["seed"], "epoch": int(m["epoch"]),
              "train_error": _num(m["train_error"]), "val_error": _num(m["val_error"]),
              "train_loss": _num(m["train_loss"])} for m in metrics]
    return row, curve


def write_tables(folders, margin: float, out_csv: str, curves_csv: str) -> list[dict]:
    rows, curves = [], []
    for folder in folders:
        row, curve = run_rows(folder, margin)
        rows.append(row)
        curves += curve
    rows.sort(key=lambda r: (VARIANTS.index(r["variant"]) if r["variant"] in VARIANTS else 9, r["seed"]))
    files.write_csv(out_csv, list(SPIKES_COLUMNS), rows)
    files.write_csv(curves_csv, list(CURVE_COLUMNS), curves)
    return rows


def _cli_collect(args) -> int:
    rows = write_tables(args.run, args.margin, args.out, args.curves)
    by = {}
    for r in rows:
        by.setdefault(r["variant"], []).append(r)
    for variant, rs in by.items():
        counts = [r["spikes"] for r in rs]
        print(f"{variant:<9} spikes per run {counts} (mean {sum(counts) / len(counts):.2f}); "
              f"final train error {[None if r['final_train_error'] is None else round(100 * r['final_train_error'], 2) for r in rs]}%")
    return 0


def register(subparsers) -> None:
    """Add ``spikes-collect``."""
    p = subparsers.add_parser(
        "spikes-collect",
        description="spikes.csv (per run: spikes of the train error above its running minimum by --margin "
                    "that recovered, their mean height, the final train error) and spikes_curves.csv.")
    p.add_argument("--run", nargs="+", required=True, metavar="DIR", help="fig11's run folders")
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help="spike margin (error fraction)")
    p.add_argument("--out", required=True, metavar="CSV")
    p.add_argument("--curves", required=True, metavar="CSV")
    p.set_defaults(func=_cli_collect)
