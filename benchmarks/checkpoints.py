"""What rolling checkpoints cost a large ensemble of small runs -> benchmarks/results/checkpoints.json.

The quick momentum grid trains hundreds of tiny MLPs (64-16-10 on 640 digits, 25 epochs) as one
ensemble per number of workers; each member writes its own ``checkpoint.pt`` (the run's weights,
optimizer and in-flight state: what a resume needs) every ``checkpoint_every`` epochs. With the default
(about every 5% of the epochs: every epoch at 25 epochs) the writes, not the training, dominated the
job. This benchmark trains the quick ``decade_grid`` ensemble at M = 16 (540 members: 9 momenta x 12
learning rates x 5 seeds, undampened, random workers), built from config.yaml exactly as the workflow
plans it, once per checkpoint interval in ``--every``, each in a fresh folder, and records wall, user
and system seconds of the ``delay-stability ensemble`` process, and that the members' metrics are
identical (a checkpoint is a write, never a change of the run).

Run: ``python benchmarks/checkpoints.py [--every 1 5] [--workers 16]`` (about 2-3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

from delay_stability.experiments import momentum_tables

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "checkpoints.json"


def member_specs(workers: int, every: int) -> list[dict]:
    """The quick decade grid's specs at ``workers`` (as workflow/rules/momentum.smk plans them), with
    ``checkpoint_every`` set to ``every``."""
    block = yaml.safe_load((ROOT / "config.yaml").read_text())["quick"]["momentum"]
    runs = [r for r in momentum_tables.decade_runs(block, block["train"]) if r.axes["workers"] == workers]
    return [dict(r.spec, checkpoint_every=every) for r in runs]


def metrics_digest(outs) -> str:
    """One SHA-256 over every member's metrics.csv without its ``seconds`` column (wall time), in order
    (equal digests: the same numbers)."""
    h = hashlib.sha256()
    for out in outs:
        with open(Path(out, "metrics.csv"), newline="") as f:
            for row in csv.DictReader(f):
                row.pop("seconds", None)
                h.update(json.dumps(row, sort_keys=True).encode())
    return h.hexdigest()


def measure(specs: list[dict]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        spec_file = Path(tmp) / "specs.json"
        spec_file.write_text(json.dumps(specs))
        outs = [str(Path(tmp) / f"r{i}") for i in range(len(specs))]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "delay_stability.cli", "ensemble", "--specs", str(spec_file), "--out", *outs,
                        "--record", str(Path(tmp) / "record.json")], check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        checkpoints = sum(1 for _ in Path(tmp).rglob("checkpoint.pt"))   # left behind: none (removed at the end)
        return {"members": len(specs), "wall_s": round(wall, 2), "user_s": round(after.ru_utime - before.ru_utime, 2),
                "system_s": round(after.ru_stime - before.ru_stime, 2), "checkpoints_left": checkpoints,
                "metrics_sha256": metrics_digest(outs)}


def write_table(record: dict, path) -> None:
    """The README's table (benchmarks/results/checkpoints.md), written with the JSON."""
    lines = ["| checkpoint_every (epochs) | members | wall s | user s | system s | same metrics |", "|---|---|---|---|---|---|"]
    lines += [f"| {c['checkpoint_every']} | {c['members']} | {c['wall_s']} | {c['user_s']} | {c['system_s']} | "
              f"{'yes' if record['same_metrics'] else 'NO'} |" for c in record["cases"]]
    lines.append(f"\n{record['what']}; measured {record['measured']}, 1-min load before {record['machine']['load1_before']:.2f} "
                 "(`benchmarks/checkpoints.py`).\n")
    Path(path).write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--every", type=int, nargs="+", default=[1, 5], help="checkpoint intervals in epochs")
    p.add_argument("--workers", type=int, default=16, help="the decade grid's M to train")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    cases = []
    for every in args.every:
        case = {"checkpoint_every": every, **measure(member_specs(args.workers, every))}
        print(json.dumps(case), flush=True)
        cases.append(case)
    record = {
        "benchmark": "rolling checkpoints of a 540-member ensemble of small runs (benchmarks/checkpoints.py)",
        "what": f"quick momentum decade_grid ensemble at M = {args.workers}: MLP 64-16-10, 640 digits, 25 epochs, "
                "batch 32, random workers, stop at the target loss",
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "load1_before": os.getloadavg()[0]},
        "cases": cases,
        "same_metrics": len({c["metrics_sha256"] for c in cases}) == 1,
    }
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    write_table(record, Path(args.out).with_suffix(".md"))
    print(json.dumps({c["checkpoint_every"]: c["wall_s"] for c in cases}), "same metrics:", record["same_metrics"])


if __name__ == "__main__":
    main()
