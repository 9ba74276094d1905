"""Table 1 (Section 3.2): asynchronous training with η ∝ 1/τ against small and large batch, at the
same budget of epochs (samples seen).

Per network of the block, with b its ``batch_size``, W = ``large_batch`` / b workers and τ the
block's ``tau`` (the paper: 32 workers, τ = 32), the arms are

    SB     τ = 0, batch b, η_SB: the network's ``lr`` (paper scale); or, when the block has
           ``sb_lrs`` (the quick scale, where no standard η exists), the best η of that scan at
           τ = 0 and batch b (lowest mean val error over the seeds)
    LB     τ = 0, batch W·b, η_LB = η_SB·√W (``lr_scaling: sqrt``, Hoffer et al. 2017) or η_SB·W
           (``linear``, Goyal et al. 2017)
    ASGD   W workers of batch b with delay τ, at the small-batch η_SB (the rule ignored)
    +LR    the same at η_LB·α*(τ)/α*(0): the exact form of the paper's inverse-linear rule (eq. 8 is
           its approximation πη0/(4(τ+½))), applied to the large-batch η as in the paper
    +30%   +LR with ``extra_epochs`` (0.3) more epochs; a step schedule's milestones (and warm-up)
           stretched by the same factor, so the decays fall at the same fractions of training

Every arm trains ``seeds`` seeds for the network's ``epochs`` (LB makes W times fewer updates than
SB and ASGD: same samples). Validation accuracy is 100·(1 − final val error); a run that diverged
has no prediction and counts at chance level, 100/classes (what the paper's 10.0% and 1.0% are).

Jobs (each trains its runs as one ensemble when ``ensemble.can_ensemble`` allows, else one by one):
``delay-stability table1-scan`` trains one network's SB scan (when ``sb_lrs``) and writes its
table; ``table1-arm`` trains one (network, arm): it reads the scan table for η_SB, builds the arm's
specs and trains them (SB with a scan trains nothing: its runs are the scan's at η_SB).
``table1-collect`` writes

    table1.csv   network, arm, lr, batch_size, epochs, tau, val_accuracy (percent, mean over seeds),
                 val_accuracy_std, seeds, diverged, paper (the paper's value, where there is one)
    table1.md    the same as a Markdown table, one row per network, one column per arm
    <network>/scan.csv   the SB scan (quick scale): lr, seed, status, val_error, train_error
"""

from __future__ import annotations

import math
import os
import sys

from .. import files
from ..errors import UserError
from ..spec import deep_merge, validate_spec
from ..theory import critical_alpha
from . import grid

ARMS = ("SB", "LB", "ASGD", "+LR", "+30%")
#: arm -> its folder name under results/<scale>/generalization/table1/<network>/
ARM_SLUGS = {"SB": "sb", "LB": "lb", "ASGD": "asgd", "+LR": "lr", "+30%": "extra_epochs"}
SLUG_ARMS = {v: k for k, v in ARM_SLUGS.items()}
SCAN_COLUMNS = ("lr", "seed", "status", "val_error", "train_error", "run")
DEFAULT_SEEDS = (0,)
DEFAULT_EXTRA_EPOCHS = 0.3
#: The paper's Table 1 (validation accuracy, percent).



# ================================================================ the block


def seeds(block: dict) -> list[int]:
    return list(block.get("seeds") or DEFAULT_SEEDS)


def networks(block: dict) -> dict:
    """name -> network entry, in the block's order; UserError on a repeated name."""
    out = {}
    for i, net in enumerate(block["networks"]):
        if net["name"] in out:
            raise UserError(f"table1.networks[{i}].name: {net['name']!r} is used twice")
        out[net["name"]] = net
    return out


def slug(name: str) -> str:
    """A network's folder name (its name with anything but letters, digits, '.', '-' as '_')."""
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in name)


def workers(block: dict, net: dict, i: int = 0) -> int:
    """W = large_batch / batch_size; UserError naming the key when it is not a whole number ≥ 1."""
    b = validate_spec(net["train"])["batch_size"]
    big = net["large_batch"]
    if b <= 0 or big % b or big < b:
        raise UserError(f"table1.networks[{i}].large_batch: {big} is not a multiple ≥ 1 of the network's "
                        f"batch_size {b} (W = large_batch / batch_size workers)")
    return big // b


def lb_factor(block: dict, w: int) -> float:
    """η_LB / η_SB: √W (sqrt, the default) or W (linear)."""
    return float(w) if block.get("lr_scaling", "sqrt") == "linear" else math.sqrt(w)


def rule_factor(tau: int) -> float:
    """α*(τ)/α*(0): the paper's step reduction for delay τ (exact edge ratio)."""
    return critical_alpha(tau) / critical_alpha(0)


def extra_epochs(block: dict) -> float:
    return float(block.get("extra_epochs", DEFAULT_EXTRA_EPOCHS))


def stretched(spec: dict, factor: float) -> dict:
    """``spec`` with round(factor·epochs) epochs and its step schedule (milestones, warm-up)
    stretched alike."""
    s = validate_spec(spec)
    epochs = max(1, round(factor * s["epochs"]))
    sched = dict(s["lr_schedule"])
    if sched.get("milestones"):
        sched["milestones"] = [max(1, round(factor * m)) for m in sched["milestones"]]
    if sched.get("warmup_epochs"):
        sched["warmup_epochs"] = round(factor * sched["warmup_epochs"])
    out = {"epochs": epochs, "lr_schedule": sched}
    if spec.get("eval_every") and epochs % s["eval_every"]:
        out["eval_every"] = math.gcd(epochs, s["eval_every"])  # the last epoch stays an evaluation epoch
    return deep_merge(spec, out)


def _with_delay(spec: dict, tau: int) -> dict:
    return deep_merge(spec, {"optimizer": {"delay": int(tau), "workers": None}})


def scan_runs(block: dict, base: dict) -> list:
    """The SB scan's GridRuns (lr{η}/seed{s}, τ = 0, batch b); empty without ``sb_lrs``."""
    lrs = block.get("sb_lrs") or []
    if not lrs:
        return []
    return grid.expand(_with_delay(base, 0), {"lr": lrs, "seed": seeds(block)})


def arm_specs(block: dict, net: dict, base: dict, arm: str, sb_lr: float) -> list[dict]:
    """The specs (one per seed) of ``arm`` for a network whose SB η is ``sb_lr``; ``base`` is the
    network's train spec with the run settings."""
    if arm not in ARMS:
        raise UserError(f"table1: unknown arm {arm!r} (choose {', '.join(ARMS)})")
    w = workers(block, net)
    b = validate_spec(base)["batch_size"]
    tau = int(block["tau"])
    lb_lr = sb_lr * lb_factor(block, w)
    if arm == "SB":
        spec = _with_delay(base, 0)
        lr = sb_lr
    elif arm == "LB":
        spec = deep_merge(_with_delay(base, 0), {"batch_size": w * b})
        lr = lb_lr
    elif arm == "ASGD":
        spec, lr = _with_delay(base, tau), sb_lr
    else:
        spec, lr = _with_delay(base, tau), lb_lr * rule_factor(tau)
        if arm == "+30%":
            spec = stretched(spec, 1.0 + extra_epochs(block))
    return [validate_spec(deep_merge(spec, {"lr": float(lr), "seed": int(s)})) for s in seeds(block)]


def all_specs(block: dict, base_of):
    """(config key, spec) of every run the block trains, with a stand-in SB η (the configured lr)
    for the arms; ``base_of(train)`` adds the run settings."""
    nets = networks(block)
    for i, (name, net) in enumerate(nets.items()):
        key = f"table1.networks[{i}]"
        base = base_of(net["train"])
        yield f"{key}.train", base
        workers(block, net, i)
        for run in scan_runs(block, base):
            yield f"{key} scan ({run.name})", run.spec
        for arm in ARMS:
            for spec in arm_specs(block, net, base, arm, validate_spec(base)["lr"]):
                yield f"{key} {arm}", spec


# ================================================================ the SB η


def read_summary(folder) -> dict:
    s = files.read_json(os.path.join(folder, "summary.json"), "summary.json")
    if not isinstance(s, dict) or "final" not in s or "status" not in s:
        raise UserError(f"summary.json in {folder}: not a run summary")
    return s


def _error(value) -> float:
    """A final error as a float; a missing or non-finite one (a diverged run) is 1.0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return 1.0
    return v if math.isfinite(v) else 1.0


def scan_rows(folders) -> list[dict]:
    """One row per SB scan run (SCAN_COLUMNS), sorted by (lr, seed)."""
    rows = []
    for folder in folders:
        spec = files.read_json(os.path.join(folder, "run.json"), "run.json").get("spec") or {}
        s = read_summary(folder)
        rows.append({"lr": float(spec["lr"]), "seed": int(spec["seed"]), "status": s["status"],
                     "val_error": s["final"].get("val_error"), "train_error": s["final"].get("train_error"),
                     "run": str(folder)})
    return sorted(rows, key=lambda r: (r["lr"], r["seed"]))


def best_lr(rows: list[dict]) -> float:
    """The η of the scan with the lowest mean val error over its seeds (diverged = 100% error;
    ties to the smaller η)."""
    if not rows:
        raise UserError("table1: the SB scan has no runs")
    by_lr = {}
    for r in rows:
        by_lr.setdefault(float(r["lr"]), []).append(_error(r["val_error"]))
    return min(by_lr, key=lambda lr: (sum(by_lr[lr]) / len(by_lr[lr]), lr))


def sb_lr(base: dict, scan_csv: str | None) -> float:
    """η_SB: the best η of the scan table, or the network's configured lr without a scan."""
    if not scan_csv:
        return float(validate_spec(base)["lr"])
    rows = files.read_csv(scan_csv, "table1 scan table")
    if not rows:
        raise UserError(f"table1 scan table {scan_csv}: no rows")
    return best_lr(rows)


# ================================================================ training an arm


def can_batch(specs: list[dict]) -> bool:
    """Whether these specs train as one ensemble (``spec.can_ensemble``)."""
    from ..spec import can_ensemble

    return can_ensemble(specs)[0]


#: Fewer specs than this train one by one even when they batch: an ensemble of 3 MLPs on digits took
#: 2.9 s against 1.2 s for the 3 runs one by one, an ensemble of 15 took 3.3 s against 5.4 s (one
#: thread, this 2-core CPU); the per-step cost of the batched kernels pays off only for many members.
MIN_ENSEMBLE = 8


def train_specs(specs: list[dict], folders: list[str]) -> list[dict]:
    """Train ``specs`` into ``folders``: one batched ensemble when they batch and are at least
    MIN_ENSEMBLE, else one by one (the same results either way, to rounding)."""
    from ..ensemble import run_ensemble
    from ..train import run_training

    from ..spec import can_ensemble

    ok, reason = can_ensemble(specs)
    if len(specs) >= MIN_ENSEMBLE and ok:
        return run_ensemble(specs, folders)
    why = reason if not ok else f"{len(specs)} runs, fewer than MIN_ENSEMBLE = {MIN_ENSEMBLE}"
    print(f"[table1] training {len(specs)} runs one by one, not as an ensemble: {why}", file=sys.stderr)
    return [run_training(s, f) for s, f in zip(specs, folders)]


def arm_folders(root, network: str, arm: str, seeds_: list[int]) -> list[str]:
    return [os.path.join(os.fspath(root), slug(network), ARM_SLUGS[arm], f"seed{s}") for s in seeds_]


# ================================================================ command line


def _block_and_network(args):
    block = files.parse_json_object(args.block, "--block")
    nets = networks(block)
    if args.network not in nets:
        raise UserError(f"--network: {args.network!r} is not a network of the block ({', '.join(nets)})")
    return block, nets[args.network], files.parse_json_object(args.base, "--base")


def scan_folders(root, network: str, runs: list) -> list[str]:
    return [r.folder(os.path.join(os.fspath(root), slug(network), "scan")) for r in runs]


def _cli_arm(args) -> int:
    block, net, base = _block_and_network(args)
    arm = SLUG_ARMS.get(args.arm, args.arm)
    lr = sb_lr(base, args.scan)
    specs = arm_specs(block, net, base, arm, lr)
    if arm == "SB" and args.scan:  # the scan's runs at its best η are SB's runs: nothing to train
        rows = [r for r in files.read_csv(args.scan, "table1 scan table") if float(r["lr"]) == lr]
        folders = [r["run"] for r in rows]
        status = [r["status"] for r in rows]
    else:
        folders = arm_folders(args.root, args.network, arm, seeds(block))
        status = [s["status"] for s in train_specs(specs, folders)]
    record = {"network": args.network, "arm": arm, "sb_lr": lr, "lr": specs[0]["lr"], "runs": folders,
              "status": status}
    files.write_json(args.record, record)
    print(f"{args.network} {arm}: lr {specs[0]['lr']:.4g}, status {', '.join(status)}")
    return 0


def _cli_scan(args) -> int:
    block, net, base = _block_and_network(args)
    runs = scan_runs(block, base)
    if not runs:
        raise UserError("table1-scan: the block has no sb_lrs (SB's η is each network's lr)")
    folders = scan_folders(args.root, args.network, runs)
    train_specs([r.spec for r in runs], folders)
    files.write_csv(args.out, list(SCAN_COLUMNS), scan_rows(folders))
    best = best_lr(scan_rows(folders))
    print(f"{args.network}: SB scan over {len(runs)} runs, best lr {best:g}")
    return 0


def register(subparsers) -> None:
    """Add ``table1-arm`` and ``table1-scan``."""
    p = subparsers.add_parser("table1-arm", description="Train one arm (SB, LB, ASGD, +LR, +30%) of one network "
                                                        "of Table 1, all its seeds; writes an arm record.")
    p.add_argument("--block", required=True, help="the table1 config block, as JSON")
    p.add_argument("--network", required=True, help="the network's name in the block")
    p.add_argument("--arm", required=True, help="SB, LB, ASGD, +LR or +30%% (or sb, lb, asgd, lr, extra_epochs)")
    p.add_argument("--base", required=True, help="the network's train spec with the run settings, as JSON")
    p.add_argument("--scan", default=None, metavar="CSV", help="the SB scan table (η_SB = its best η); "
                                                                "without it η_SB is the spec's lr")
    p.add_argument("--root", required=True, metavar="DIR", help="results/<scale>/generalization/table1")
    p.add_argument("--record", required=True, metavar="JSON")
    p.set_defaults(func=_cli_arm)
    p = subparsers.add_parser("table1-scan", description="Train the small-batch scan of one network of Table 1 "
                                                         "(τ = 0, the block's sb_lrs x seeds) and write its table.")
    p.add_argument("--block", required=True, help="the table1 config block, as JSON")
    p.add_argument("--network", required=True, help="the network's name in the block")
    p.add_argument("--base", required=True, help="the network's train spec with the run settings, as JSON")
    p.add_argument("--root", required=True, metavar="DIR", help="results/<scale>/generalization/table1")
    p.add_argument("--out", required=True, metavar="CSV")
    p.set_defaults(func=_cli_scan)
