"""Benchmark: where the CPU of the smoke end-to-end build goes -> benchmarks/results/smoke_processes.json.

The smoke build of every paper target (``snakemake --cores 2 --config scale=paper smoke=true``, the
build of tests/test_smoke_end_to_end.py, the longest file of ``make test``) runs in a copy of HEAD
(``git archive``). Every Python process it starts records, when it exits, its own user and system
CPU, its command (``delay-stability <command>``, or Snakemake itself) and whether it imported torch
and torchvision (a ``sitecustomize`` hook on PYTHONPATH; processes that end by ``os._exit``, such as
torch.distributed's workers, are not counted). Beside the build, the CPU of a bare
``import torch`` and of ``import torch, torchvision.datasets`` (median of 3 processes each) gives
the start-up share: (torch jobs) x (import torch) + (torchvision jobs) x (the torchvision extra).

    .venv/bin/python benchmarks/smoke_processes.py [--out PATH] [--keep DIR]

About 7 minutes on 2 cores; run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "smoke_processes.json"

HOOK = '''
import atexit, json, os, sys, time
_T0 = time.time()
def _record():
    t = os.times()
    try:
        with open(os.path.join(os.environ["SMOKE_PROCESSES_DIR"], f"{os.getpid()}.json"), "w") as f:
            json.dump({"argv": sys.argv[:3], "user": t.user, "system": t.system, "wall": time.time() - _T0,
                       "torch": "torch" in sys.modules, "torchvision": "torchvision" in sys.modules}, f)
    except Exception:
        pass
atexit.register(_record)
'''


def command_of(argv: list) -> str:
    """``delay-stability <command>``, ``snakemake`` or the script's name."""
    if not argv:
        return "?"
    name = os.path.basename(argv[0])
    if "snakemake" in name:
        return "snakemake"
    if name.startswith("delay-stability") and len(argv) > 1:
        return f"{name} {argv[1]}"
    return name


def import_cpu(python: str, code: str, repeats: int = 3) -> float:
    """Median user + system CPU seconds of a process that runs ``code``."""
    out = []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([python, "-c", code], check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        out.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return round(statistics.median(out), 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--keep", help="build in this folder and keep it (default: a temporary one, removed)")
    args = parser.parse_args()
    venv_bin = ROOT / ".venv" / "bin"
    python = str(venv_bin / "python")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="smoke-processes-"))
    hook_dir, records = work / "hook", work / "records"
    project = work / "project"
    for d in (hook_dir, records, project):
        d.mkdir(parents=True, exist_ok=True)
    (hook_dir / "sitecustomize.py").write_text(HOOK)
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(project)], input=archive, check=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAKEMAKE")}
    env.update(PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(hook_dir),
               SMOKE_PROCESSES_DIR=str(records))
    load_before = round(os.getloadavg()[0], 2)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    build = subprocess.run([str(venv_bin / "snakemake"), "--cores", "2", "--config", "scale=paper", "smoke=true"],
                           cwd=project, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if build.returncode != 0:
        print(build.stdout[-3000:] + build.stderr[-3000:], file=sys.stderr)
        return 1
    steps = next((line.strip() for line in reversed(build.stdout.splitlines() + build.stderr.splitlines())
                  if "steps (100%) done" in line), "")
    procs = [json.loads(p.read_text()) for p in records.glob("*.json")]
    by = {}
    for p in procs:
        row = by.setdefault(command_of(p["argv"]), {"processes": 0, "user_s": 0.0, "system_s": 0.0,
                                                     "with_torch": 0, "with_torchvision": 0})
        row["processes"] += 1
        row["user_s"] += p["user"]
        row["system_s"] += p["system"]
        row["with_torch"] += int(p["torch"])
        row["with_torchvision"] += int(p["torchvision"])
    for row in by.values():
        row["user_s"], row["system_s"] = round(row["user_s"], 1), round(row["system_s"], 1)
    torch_cpu = import_cpu(python, "import torch")
    torchvision_cpu = import_cpu(python, "import torch, torchvision.datasets")
    n_torch = sum(int(p["torch"]) for p in procs)
    n_tv = sum(int(p["torchvision"]) for p in procs)
    total = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    startup = n_torch * torch_cpu + n_tv * (torchvision_cpu - torch_cpu)
    record = {
        "benchmark": "the smoke end-to-end build's CPU by process (benchmarks/smoke_processes.py)",
        "command": "snakemake --cores 2 --config scale=paper smoke=true",
        "commit": commit,
        "outcome": steps,
        "wall_s": round(wall, 1),
        "cpu_s": round(total, 1),
        "cpu_s_recorded_processes": round(sum(p["user"] + p["system"] for p in procs), 1),
        "load1_before": load_before,
        "import_torch_cpu_s": torch_cpu,
        "import_torch_torchvision_cpu_s": torchvision_cpu,
        "processes_with_torch": n_torch,
        "processes_with_torchvision": n_tv,
        "startup_cpu_s_estimate": round(startup, 1),
        "startup_share": round(startup / total, 3) if total else None,
        "by_command": dict(sorted(by.items(), key=lambda kv: -(kv[1]["user_s"] + kv[1]["system_s"]))),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "by_command"}, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
