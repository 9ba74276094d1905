"""Benchmark: wall time of the test suite, file by file (the budget of `make test`: 12 minutes on 2 cores).

    .venv/bin/python benchmarks/test_time.py [tests/test_smoke.py ...] [--label before]

Runs ``pytest FILE -q --durations=0 -p no:cacheprovider`` once per file, in one process each (no
``-n``), and records the file's wall time, its outcome line and its slowest items. Files not named keep
their previous record in benchmarks/results/test_time.json (so the suite can be measured in parts);
with no file named, every ``tests/test_*.py`` runs. The 1-minute load average before and after each
file is recorded: the machine is shared, so compare files measured under the same load.

The estimate of `make test` (``pytest -n 2 --dist loadfile``: a file stays on one worker) is the
makespan of the files on 2 workers, longest first (LPT), at least the sum of the files / 2 and at least
the longest file. Writes the JSON atomically.
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "test_time.json"
BUDGET_S = 12 * 60
WORKERS = 2
DURATION = re.compile(r"^([\d.]+)s (setup|call|teardown)\s+(\S+)$")


def load1():
    return round(os.getloadavg()[0], 2)


def time_file(path, top=8):
    """(record) of one test file run alone: wall seconds, pytest's outcome line, slowest items."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    before = load1()
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "pytest", str(path), "-q", "--durations=0", "-p", "no:cacheprovider"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    lines = res.stdout.splitlines()
    outcome = next((ln.strip("= ") for ln in reversed(lines) if re.search(r"\b(passed|failed|skipped|error)", ln)), "")
    items = [(float(m[1]), f"{m[2]} {m[3].split('::', 1)[-1]}") for m in map(DURATION.match, lines) if m]
    items.sort(reverse=True)
    return {"wall_s": round(wall, 1), "exit_status": res.returncode, "outcome": outcome,
            "load1_before": before, "load1_after": load1(),
            "slowest": [{"s": s, "item": name} for s, name in items[:top]]}


def makespan(walls, workers=WORKERS):
    """Longest-processing-time-first schedule of whole files on ``workers`` workers."""
    loads = [0.0] * workers
    for wall in sorted(walls, reverse=True):
        loads[loads.index(min(loads))] += wall
    return max(loads)


def summary(files):
    walls = [f["wall_s"] for f in files.values()]
    return {"files": len(walls), "sum_s": round(sum(walls), 1), "sum_over_workers_s": round(sum(walls) / WORKERS, 1),
            "longest_file_s": max(walls, default=0.0), "lpt_makespan_s": round(makespan(walls), 1),
            "budget_s": BUDGET_S, "workers": WORKERS}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="test files (default: every tests/test_*.py)")
    parser.add_argument("--label", default="", help="a note stored with each file measured now")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    paths = [Path(f) for f in args.files] or sorted((ROOT / "tests").glob("test_*.py"))
    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    files = dict(old.get("files", {}))
    for path in paths:
        key = str(path.resolve().relative_to(ROOT))
        record = time_file(path)
        record.update(measured=datetime.now(timezone.utc).isoformat(timespec="seconds"), label=args.label)
        files[key] = record
        print(f"{key}: {record['wall_s']:.1f} s ({record['outcome']}; load {record['load1_before']}"
              f"->{record['load1_after']})", flush=True)
    out = {"benchmark": "make test: wall time of each test file run alone (pytest -q --durations=0, one process)",
           "command": "pytest -q -n 2 --dist loadfile",
           "python": platform.python_version(), "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
           "notes": old.get("notes", ""), "files": dict(sorted(files.items())), "estimate": summary(files)}
    if "before" in old:
        out["before"] = old["before"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=args.out.parent, suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    os.replace(tmp, args.out)
    print(json.dumps(out["estimate"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
