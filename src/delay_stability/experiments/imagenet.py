"""ImageNet under delay (Section 3.2, appendices C and E.1): figures 5 and 9.

The regime of Goyal et al. (2017): ``workers`` W workers of batch b (``train.batch_size``), a
linear warm-up and step decays (``train.lr_schedule``), weight decay. ``train.lr`` is the
*undampened* learning rate η_ref of momentum ``ref_momentum`` m_ref at batch b (Goyal et al.: 0.1
per 256 images at m = 0.9), whose effective step is η_ref / (1 - m_ref) (appendix E; Shallue et
al. 2018). Every run here uses dampening (DelayedSGD, eq. 9 / eq. 10 with the (1 - m) factor) and
that same effective step, whatever its momentum, scaled as the paper scales it:

    η_eff = η_ref / (1 - m_ref)                              (effective step at batch b)
    S-SGD  (τ = 0):  batch W·b,  η = η_eff · W               (linear in the total batch)
    A-SGD  (τ > 0):  batch b,    η = η_eff · W / E[τ]        (the paper's 1/τ rule; ``lr_scaling: linear``)
                                 η = η_eff · W / sqrt(E[τ])  (``lr_scaling: sqrt``: the arm that does not converge)

With dampening the velocity of eq. 9 tends to -η·g for a constant gradient, so a dampened run with
η moves as far per step as an undampened one with η(1 - m): the same η_eff for m = 0, m = 0.9 and
shifted momentum (the paper: "we use dampening and scale the learning rate accordingly to keep
the effective learning rate the same as without dampening").

Delay convention: τ is DelayedSGD's delay, the staleness of every landed update (round robin over
τ + 1 slots: the update applied at step t is g(w_{t-τ})). The paper writes τ = 32 for its 32
workers and scales η by 1/32; an arm with a ``tau`` (or ``delay``) runs that constant delay, the
config's ``tau`` by default.

Worker arms (``workers: M``, optional ``schedule`` and ``spread``) run as the authors' code does:
M workers of a worker schedule (asgd), every gradient landing once, mean staleness M - 1, η still
scaled by the block's 1/τ (the paper's 1/32 for 32 workers). Their shifted momentum keeps one
velocity per worker with staleness M - 1 (``MSGD`` asserts delay + 1 == workers): fig5's shifted
arm is ``workers: W``; fig9's Gaussian arm is the authors' rule (``schedule: gaussian``: the landing
worker drawn with P ∝ Φ((staleness − M)/(M/4)), trainer.py ``_schedule_worker('normal')``) against
the constant delay of the same mean (round robin over the same M workers). Every run's summary
records its realised staleness histogram (``<figure>_staleness.csv``); fig9 draws it beside
appendix C's discretised N(τ, 1) of the same mean.

Warm-up as Goyal et al.: from the unscaled η_eff to the run's η (``lr_schedule.warmup_start`` =
η_eff / η, at most 1), so an arm whose η is η_eff (A-SGD with τ = W) has no ramp at all.

    fig5   ``fig5.runs`` (named arms: S-SGD, standard momentum, m = 0, shifted momentum,
           1/sqrt(tau)) x ``fig5.seeds``
    fig9   ``fig9.delays`` (constant τ, Gaussian of mean τ) x ``fig9.seeds``, with fig9's variant

Tables (``delay-stability imagenet-collect``), under results/<scale>/imagenet/:

    fig5.csv          one row per run (FIG5_COLUMNS)
    fig9.csv          one row per run (FIG9_COLUMNS)
    fig5_curves.csv   one row per run and evaluation epoch (variant, seed, epoch, train/val error)
    fig9_curves.csv   the same for fig9 (delay, seed, epoch, ...)
"""

from __future__ import annotations

import json
import math
import os
import re

from .. import files
from ..errors import UserError
from ..spec import deep_merge, mean_delay, validate_spec
from . import grid

FIGURES = ("fig5", "fig9")
FIG5_COLUMNS = ("variant", "seed", "lr", "final_val_error", "final_train_error", "status", "tau", "optimizer",
                "momentum", "batch_size", "epochs_run", "min_val_error", "run")
FIG9_COLUMNS = ("delay", "seed", "final_val_error", "final_train_error", "status", "lr", "mean_delay",
                "mean_staleness", "optimizer", "momentum", "epochs_run", "run")
STALENESS_COLUMNS = ("arm", "seed", "staleness", "count", "probability")
CURVE_COLUMNS = ("seed", "epoch", "lr", "train_error", "val_error", "train_loss", "val_loss")
LR_SCALINGS = ("linear", "sqrt")


# ================================================================ the runs


def slug(name: str) -> str:
    """A folder name for an arm: lower case, every run of other characters a single '-'
    ("m = 0" -> "m-0", "1/sqrt(tau)" -> "1-sqrt-tau")."""
    out = re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")
    if not out:
        raise UserError(f"imagenet: a run name needs a letter or digit, got {name!r}")
    return out


def effective_lr(block: dict, base: dict) -> float:
    """η_eff = η_ref / (1 - m_ref): the effective step of the block's undampened train.lr."""
    return float(base["lr"]) / (1.0 - float(block.get("ref_momentum", 0.9)))


def arm_spec(block: dict, base: dict, arm: dict) -> dict:
    """The training spec of one arm (see the module docstring for η, the batch and the warm-up):
    ``arm`` = {name, tau | delay | workers (+ schedule, spread), variant, momentum, lr_scaling}."""
    workers = int(block["workers"])
    if "workers" in arm:  # M workers of a worker schedule: staleness M - 1 on average, η by the block's τ
        if "tau" in arm or "delay" in arm:
            raise UserError(f"imagenet run {arm.get('name')!r}: give workers or tau/delay, not both")
        m_workers = int(arm["workers"])
        delay, tau = m_workers - 1, float(block["tau"])
        schedule = {"workers": m_workers, "schedule": arm.get("schedule", "round_robin")}
        if arm.get("spread") is not None:
            schedule["spread"] = arm["spread"]
    else:
        delay = arm.get("delay", arm.get("tau", block["tau"]))
        tau, schedule = mean_delay(delay), {}
    scaling = arm.get("lr_scaling", "linear")
    if scaling not in LR_SCALINGS:
        raise UserError(f"imagenet run {arm.get('name')!r}: lr_scaling {scaling!r} (choose {', '.join(LR_SCALINGS)})")
    eff = effective_lr(block, base)
    if tau == 0:
        batch, lr = workers * int(base["batch_size"]), eff * workers
    else:
        batch, lr = int(base["batch_size"]), eff * workers / (tau if scaling == "linear" else math.sqrt(tau))
    momentum = float(arm.get("momentum", 0.0))
    optimizer = {"delay": delay, "variant": arm.get("variant", "plain" if momentum == 0 else "momentum"),
                 "momentum": momentum, "dampening": True, **schedule}
    lr = float(f"{lr:.12g}")
    override = {"batch_size": batch, "lr": lr, "optimizer": optimizer}
    if (base.get("lr_schedule") or {}).get("warmup_epochs"):  # Goyal: the warm-up from η_eff to η
        override["lr_schedule"] = {"warmup_start": float(f"{min(1.0, eff / lr):.12g}")}
    return deep_merge(base, override)


def fig5_arms(block: dict) -> list[dict]:
    return list((block.get("fig5") or {}).get("runs") or [])


def fig9_arms(block: dict) -> list[dict]:
    """fig9's delays as arms, with fig9's variant and momentum (default: plain, m = 0)."""
    fig9 = block.get("fig9") or {}
    common = {"variant": fig9.get("variant", "plain"), "momentum": fig9.get("momentum", 0.0)}
    return [{**common, **d} for d in fig9.get("delays") or []]


def arms(block: dict, figure: str) -> list[dict]:
    return fig5_arms(block) if figure == "fig5" else fig9_arms(block)


def seeds(block: dict, figure: str) -> list[int]:
    return list((block.get(figure) or {}).get("seeds") or [0])


def runs(block: dict, figure: str, base: dict) -> list[tuple[str, object]]:
    """(arm name, GridRun) of ``figure``'s runs, named <arm slug>/seed{s} (grid.expand over seeds)."""
    out, seen = [], set()
    for arm in arms(block, figure):
        name = arm.get("name")
        if slug(name) in seen:
            raise UserError(f"imagenet.{figure}: two runs named like {name!r}")
        seen.add(slug(name))
        try:
            grid_runs = grid.expand(arm_spec(block, base, arm), {"seed": seeds(block, figure)})
        except UserError as exc:
            raise UserError(f"imagenet.{figure} ({name}): {exc}") from None
        for run in grid_runs:
            out.append((name, grid.GridRun(f"{slug(name)}/{run.name}", run.axes, run.spec)))
    return out


def planned(block: dict, base: dict, root) -> dict:
    """figure -> [(arm name, run folder, spec)]: fig5's runs under root/fig5/, fig9's under
    root/fig9/, except that a fig9 run with exactly the spec of a fig5 run reads that run's
    folder (fig9's constant delay with shifted momentum is fig5's shifted-momentum arm: one
    training, not two)."""
    out, by_spec = {}, {}
    for figure in figures_of(block):
        rows = []
        for name, run in runs(block, figure, base):
            key = json.dumps(run.spec, sort_keys=True)
            folder = by_spec.get(key) or run.folder(os.path.join(os.fspath(root), figure))
            by_spec.setdefault(key, folder)
            rows.append((name, folder, run.spec))
        out[figure] = rows
    return out


def figures_of(block: dict) -> list[str]:
    return [f for f in FIGURES if arms(block or {}, f)]


def all_specs(block: dict, base: dict):
    """(config key, spec) of the block's train spec, then of every run it trains."""
    yield "imagenet.train", base
    for figure in figures_of(block):
        for name, run in runs(block, figure, base):
            yield f"imagenet.{figure} ({name}, {run.name})", run.spec


def config_specs(exp: dict, settings):
    """(config key, spec) of every training run of the ``imagenet`` block of ``exp`` (registry role
    ``specs``; ``settings(spec)`` adds the run-wide settings)."""
    try:
        yield from all_specs(exp["imagenet"], settings(exp["imagenet"]["train"]))
    except UserError as exc:
        raise UserError(f"imagenet: {exc}") from None


def runs_json(planned_runs) -> str:
    """The ``--runs`` argument of imagenet-collect: [[arm name, run folder], ...] of a figure's
    ``planned`` rows."""
    return json.dumps([[name, folder] for name, folder, _ in planned_runs])


def plot_options(block: dict, figure: str, base: dict, scale: str) -> str:
    """The ``--options`` JSON of a figure: the regime, for the caption."""
    spec = validate_spec(base)
    sched = spec["lr_schedule"]
    opts = {"model": spec["model"], "dataset": spec["dataset"], "epochs": spec["epochs"],
            "batch_size": spec["batch_size"], "workers": block["workers"], "tau": block["tau"],
            "ref_momentum": block.get("ref_momentum", 0.9), "lr_ref": spec["lr"],
            "warmup_epochs": sched["warmup_epochs"], "milestones": sched.get("milestones", []),
            "weight_decay": spec["optimizer"]["weight_decay"], "scale": scale}
    opts["weight_decay_on"] = spec["optimizer"]["weight_decay_on"]
    if figure == "fig9":
        fig9 = block.get("fig9") or {}
        opts.update(variant=fig9.get("variant", "plain"), momentum=fig9.get("momentum", 0.0))
        # appendix C's N(τ, 1) drawn beside the realised staleness: τ the arms' mean staleness
        means = [int(a["workers"]) - 1 if "workers" in a else mean_delay(a.get("delay", a.get("tau", block["tau"])))
                 for a in fig9_arms(block)]
        opts["gaussian_mean"] = max(means) if means else block["tau"]
    return json.dumps(opts, sort_keys=True)


def figure_tables(figure: str, root) -> dict:
    """The tables a figure reads: <figure>.csv, <figure>_curves.csv and (fig9) <figure>_staleness.csv
    under ``root``."""
    names = (figure, f"{figure}_curves") + ((f"{figure}_staleness",) if figure == "fig9" else ())
    return {n: os.path.join(os.fspath(root), f"{n}.csv") for n in names}


# ================================================================ the tables


def _run_record(folder):
    rec = files.read_json(os.path.join(folder, "run.json"), "run.json")
    summary = files.read_json(os.path.join(folder, "summary.json"), "summary.json")
    if not isinstance(rec, dict) or not isinstance(rec.get("spec"), dict) or "final" not in (summary or {}):
        raise UserError(f"{folder}: not a finished run folder (run.json with its spec, summary.json)")
    metrics = files.read_csv(os.path.join(folder, "metrics.csv"), "metrics.csv")
    return rec["spec"], summary, metrics


def _number(value):
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def run_row(name: str, folder: str) -> tuple[dict, list[dict]]:
    """(the final row, the curve rows) of one run folder, the arm named ``name``."""
    spec, s, metrics = _run_record(folder)
    o = spec["optimizer"]
    final = s["final"]
    vals = [_number(m["val_error"]) for m in metrics]
    row = {"seed": int(spec["seed"]), "lr": float(spec["lr"]), "final_val_error": _number(final.get("val_error")),
           "final_train_error": _number(final.get("train_error")), "status": s["status"],
           "optimizer": o["variant"], "momentum": float(o["momentum"]), "batch_size": int(spec["batch_size"]),
           "epochs_run": s["epochs_run"], "mean_delay": mean_delay(o["delay"]),
           "mean_staleness": s.get("mean_staleness"), "tau": mean_delay(o["delay"]),
           "min_val_error": min((v for v in vals if v is not None), default=None), "run": str(folder)}
    curve = [{"seed": row["seed"], "epoch": int(m["epoch"]), "lr": _number(m["lr"]),
              **{c: _number(m[c]) for c in ("train_error", "val_error", "train_loss", "val_loss")}}
             for m in metrics]
    return row, curve


def staleness_rows(name: str, folder: str) -> list[dict]:
    """The realised staleness histogram of one run (summary.json's ``staleness_histogram``)."""
    spec, s, _ = _run_record(folder)
    counts = s.get("staleness_histogram") or []
    total = sum(counts)
    return [{"arm": name, "seed": int(spec["seed"]), "staleness": k, "count": c, "probability": c / total}
            for k, c in enumerate(counts) if c]


def tables(named_folders, figure: str) -> tuple[list[dict], list[dict]]:
    """(rows, curve rows) of ``figure`` from [(arm name, folder), ...]: the arm name goes in the
    column ``variant`` (fig5) or ``delay`` (fig9)."""
    key = "variant" if figure == "fig5" else "delay"
    columns = FIG5_COLUMNS if figure == "fig5" else FIG9_COLUMNS
    rows, curves = [], []
    for name, folder in named_folders:
        row, curve = run_row(name, folder)
        rows.append({c: ({**row, key: name}).get(c) for c in columns})
        curves += [{key: name, **r} for r in curve]
    return rows, curves


def write_tables(named_folders, figure: str, out_csv: str, curves_csv: str, staleness_csv: str | None = None) -> list[dict]:
    rows, curves = tables(named_folders, figure)
    key = "variant" if figure == "fig5" else "delay"
    files.write_csv(out_csv, list(FIG5_COLUMNS if figure == "fig5" else FIG9_COLUMNS), rows)
    files.write_csv(curves_csv, [key, *CURVE_COLUMNS], curves)
    if staleness_csv is not None:
        files.write_csv(staleness_csv, list(STALENESS_COLUMNS),
                        [r for name, folder in named_folders for r in staleness_rows(name, folder)])
    return rows


def arm_means(rows: list[dict], key: str) -> dict:
    """arm -> (mean final val error, std, mean final train error, n, statuses) over seeds; a run
    with no finite error (diverged) counts as 100% error."""
    out = {}
    for r in rows:
        out.setdefault(r[key], []).append(r)
    stats = {}
    for arm, rs in out.items():
        v = [r["final_val_error"] if r["final_val_error"] is not None else 1.0 for r in rs]
        t = [r["final_train_error"] if r["final_train_error"] is not None else 1.0 for r in rs]
        m = sum(v) / len(v)
        sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
        stats[arm] = (m, sd, sum(t) / len(t), len(v), sorted({r["status"] for r in rs}))
    return stats


# ================================================================ command line


def _parse_runs(text: str):
    try:
        pairs = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"--runs: not JSON ({exc})") from None
    if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
        raise UserError('--runs: expected [["arm name", "run folder"], ...]')
    return [(str(a), str(b)) for a, b in pairs]


def _cli_collect(args) -> int:
    rows = write_tables(_parse_runs(args.runs), args.figure, args.out, args.curves, args.staleness)
    key = "variant" if args.figure == "fig5" else "delay"
    for arm, (m, sd, tr, n, status) in arm_means(rows, key).items():
        print(f"{args.figure} {arm:<18} val error {100 * m:6.2f}% ± {100 * sd:.2f} (n={n}), "
              f"train error {100 * tr:6.2f}%  [{', '.join(status)}]")
    return 0


def register(subparsers) -> None:
    """Add ``imagenet-collect``."""
    p = subparsers.add_parser(
        "imagenet-collect",
        description="Tables of figures 5 and 9 (ImageNet under delay) from finished run folders: "
                    "<figure>.csv (one row per run) and <figure>_curves.csv (per evaluation epoch).")
    p.add_argument("figure", choices=FIGURES)
    p.add_argument("--runs", required=True, metavar="JSON", help='[["arm name", "run folder"], ...]')
    p.add_argument("--out", required=True, metavar="CSV")
    p.add_argument("--curves", required=True, metavar="CSV")
    p.add_argument("--staleness", default=None, metavar="CSV",
                   help="also write every run's realised staleness histogram here")
    p.set_defaults(func=_cli_collect)
