"""Benchmark: wall time of the test suite, file by file (the budget of `make test`: 12 minutes on 2 cores).

    .venv/bin/python benchmarks/test_time.py [tests/test_smoke.py ...] [--label before]

Runs ``pytest FILE -q --durations=0 -p no:cacheprovider`` once per file, in one process each (no
``-n``), and records the file's wall time, pytest's session time (``in N s``: the tests and their
collection, without the interpreter's start-up), its CPU time, its outcome line, its failed tests and
its slowest items. Files not named keep
their previous record in benchmarks/results/test_time.json (so the suite can be measured in parts);
with no file named, every ``tests/test_*.py`` runs. The 1-minute load average before and after each
file is recorded: the machine is shared, so compare files measured under the same load; the CPU time
(user + system, the file's processes and every process they started) depends less on the load.

The estimate of `make test` (``pytest -n 2 --dist loadfile``: a file stays on one worker) is the
makespan of the files' session times on 2 workers, longest first (LPT; tests/conftest.py hands the
files out in that order), at least the sum of the files / 2 and at least the longest file. Writes the JSON atomically.
"""

import argparse
import json
import os
import platform
import re
import resource
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


def children_cpu():
    """User + system CPU seconds of the finished child processes (and all they waited for): less
    sensitive to the machine's load than the wall time."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def session_seconds(outcome, wall):
    """pytest's session time from its outcome line (``... passed in 93.16s (0:01:33)``), else ``wall``."""
    found = re.search(r" in ([\d.]+)s", outcome)
    return float(found[1]) if found else round(wall, 1)


def time_file(path, top=8):
    """(record) of one test file run alone: wall seconds, pytest's outcome line, slowest items."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    before = load1()
    cpu0 = children_cpu()
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "pytest", str(path), "-q", "--durations=0", "-p", "no:cacheprovider"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    cpu = children_cpu() - cpu0
    lines = res.stdout.splitlines()
    outcome = next((ln.strip("= ") for ln in reversed(lines) if re.search(r"\b(passed|failed|skipped|error)", ln)), "")
    items = [(float(m[1]), f"{m[2]} {m[3].split('::', 1)[-1]}") for m in map(DURATION.match, lines) if m]
    items.sort(reverse=True)
    return {"wall_s": round(wall, 1), "session_s": session_seconds(outcome, wall),
            "cpu_s": round(cpu, 1), "exit_status": res.returncode, "outcome": outcome,
            "load1_before": before, "load1_after": load1(),
            "failed": [ln.split()[1] for ln in lines if ln.startswith(("FAILED ", "ERROR "))],
            "slowest": [{"s": s, "item": name} for s, name in items[:top]]}


def makespan(walls, workers=WORKERS):
    """Longest-processing-time-first schedule of whole files on ``workers`` workers."""
    loads = [0.0] * workers
    for wall in sorted(walls, reverse=True):
        loads[loads.index(min(loads))] += wall
    return max(loads)


def summary(files):
    """The estimate from pytest's own session times (``session_s``: the tests, without the start-up of
    Python, torch and the collection, which `make test` pays once per worker, not once per file)."""
    walls = [f.get("session_s", f["wall_s"]) for f in files.values()]
    cpu = [f["cpu_s"] for f in files.values() if "cpu_s" in f]
    return {"files": len(walls), "sum_s": round(sum(walls), 1), "cpu_sum_s": round(sum(cpu), 1), "cpu_files": len(cpu),
            "sum_over_workers_s": round(sum(walls) / WORKERS, 1),
            "longest_file_s": max(walls, default=0.0), "lpt_makespan_s": round(makespan(walls), 1),
            "budget_s": BUDGET_S, "workers": WORKERS}


def write(path, old, files):
    """The JSON (atomically): every file's record, the estimate, and what ``old`` held besides."""
    out = {"benchmark": "make test: wall time of each test file run alone (pytest -q --durations=0, one process)",
           "command": "pytest -q -n 2 --dist loadfile --no-loadscope-reorder",
           "python": platform.python_version(),
           "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
           "notes": old.get("notes", ""), "files": dict(sorted(files.items())), "estimate": summary(files)}
    out.update({k: v for k, v in old.items() if k not in out})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="test files (default: every tests/test_*.py)")
    parser.add_argument("--label", default="", help="a note stored with each file measured now")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    paths = [Path(f) for f in args.files] or sorted((ROOT / "tests").glob("test_*.py"))
    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    files = dict(old.get("files", {}))
    for record in files.values():  # records of an older version of this script
        record.setdefault("session_s", session_seconds(record.get("outcome", ""), record["wall_s"]))
    for path in paths:
        key = str(path.resolve().relative_to(ROOT))
        record = time_file(path)
        record.update(measured=datetime.now(timezone.utc).isoformat(timespec="seconds"), label=args.label)
        files[key] = record
        print(f"{key}: {record['wall_s']:.1f} s ({record['outcome']}; load {record['load1_before']}"
              f"->{record['load1_after']})", flush=True)
        write(args.out, old, files)  # after every file: a long measurement can be read (or stopped) midway
    print(json.dumps(summary(files)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
