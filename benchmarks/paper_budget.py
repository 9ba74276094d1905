"""The paper-scale budget of the generalization figures (fig1, fig13, fig3, Table 1): the exact
number of optimizer steps each needs (from config.yaml's paper block, as the workflow plans them),
and the measured time of one training step of each network at its batch size, here on the CPU and
on a GPU when one is present (bf16 is not used: the engine trains in the spec's dtype).

    .venv/bin/python benchmarks/paper_budget.py     -> benchmarks/results/paper_budget.json

hours = steps x seconds per step / 3600 (evaluation passes, data loading and checkpoints are not
counted: a lower bound). Where no GPU is present, ``gpu`` is null and the README says so.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from delay_stability.experiments import generalization as gen  # noqa: E402
from delay_stability.experiments import table1 as t1  # noqa: E402
from delay_stability.models import build_model  # noqa: E402
from delay_stability.spec import deep_merge, validate_spec  # noqa: E402

#: Training images of the paper-scale datasets (torchvision's train splits).
TRAIN_SIZES = {"mnist": 60000, "cifar10": 50000, "cifar100": 50000}
INPUT = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32)}
CLASSES = {"mnist": 10, "cifar10": 10, "cifar100": 100}


def steps_of(spec: dict) -> int:
    s = validate_spec(spec)
    n = TRAIN_SIZES[s["dataset"]]
    b = s["batch_size"] or n
    return s["epochs"] * math.ceil(n / b)


def runs_by_figure(paper: dict) -> dict:
    """figure -> [spec, ...] of every paper-scale run it trains."""
    g = paper["generalization"]
    out = {"fig3": [r.spec for r in gen.runs(g, "fig3", g["train"])],
           "fig1 + fig13": [r.spec for r in gen.runs(g, "fig1", g["train"])], "table1": []}
    block = paper["table1"]
    for net in block["networks"]:
        for arm in t1.ARMS:
            out["table1"].extend(t1.arm_specs(block, net, net["train"], arm, validate_spec(net["train"])["lr"]))
    return out


#: On the CPU a step is timed at this batch and scaled linearly to the spec's batch (a full VGG-11 or
#: WRN-16-4 batch of 128 takes tens of seconds here); on a GPU at the spec's batch.
CPU_BATCH = 16


def step_seconds(spec: dict, device: str, repeats: int) -> float:
    """Median seconds of one forward + backward + SGD update at the spec's batch size."""
    s = validate_spec(spec)
    if device == "cpu" and s["batch_size"] > CPU_BATCH:
        return step_seconds(deep_merge(spec, {"batch_size": CPU_BATCH}), device, repeats) * s["batch_size"] / CPU_BATCH
    torch.manual_seed(0)
    model = build_model(s["model"], **s["model_args"])
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(s["batch_size"], *INPUT[s["dataset"]], device=device)
    y = torch.randint(0, CLASSES[s["dataset"]], (s["batch_size"],), device=device)
    times = []
    for i in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i:  # the first step warms up
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main() -> int:
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    paper = cfg["paper"]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    measured = {}
    figures = {}
    for figure, specs in runs_by_figure(paper).items():
        rows = {}
        for spec in specs:
            s = validate_spec(spec)
            key = (s["model"], s["dataset"], s["batch_size"])
            for d in devices:
                if (key, d) not in measured:
                    measured[(key, d)] = step_seconds(spec, d, repeats=2 if d == "cpu" else 20)
            row = rows.setdefault(f"{key[0]} on {key[1]}, batch {key[2]}", {"runs": 0, "steps": 0})
            row["runs"] += 1
            row["steps"] += steps_of(spec)
            for d in devices:
                row[f"{d}_seconds_per_step"] = measured[(key, d)]
        total = {"runs": sum(r["runs"] for r in rows.values()), "steps": sum(r["steps"] for r in rows.values())}
        for d in ("cpu", "cuda"):
            total[f"{d}_hours"] = (sum(r["steps"] * r[f"{d}_seconds_per_step"] for r in rows.values()) / 3600
                                   if d in devices else None)
        figures[figure] = {"networks": rows, **total}
        print(f"{figure:<14} {total['runs']:>4} runs {total['steps']:>12,} steps  CPU {total['cpu_hours']:,.0f} h  "
              f"GPU {'%.1f h' % total['cuda_hours'] if total['cuda_hours'] is not None else 'not measured'}")
    out = {"device": torch.cuda.get_device_name(0) if "cuda" in devices else None, "cpu": platform.processor() or platform.machine(),
           "threads": torch.get_num_threads(), "torch": torch.__version__, "load_average": os.getloadavg()[0],
           "note": "hours = steps x measured seconds of one training step (no evaluation, data loading or checkpoints); "
                   f"CPU steps timed at batch {CPU_BATCH} and scaled linearly to the run's batch",
           "figures": figures}
    path = ROOT / "benchmarks" / "results" / "paper_budget.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
