"""Benchmark: the two commands from a fresh clone (budgets: `make test` 12 minutes, `make figures`
about 20 minutes, on 2 cores).

    .venv/bin/python benchmarks/fresh_clone.py test|figures|dry-run|audit [--clone DIR] [--keep]

``test`` and ``figures`` clone this repository's HEAD into DIR (a new temporary folder by default),
run ``make test`` or ``make figures`` there and record the wall time of the set-up (``make setup``:
the virtual environment and its packages) and of the command itself, its exit status, pytest's
outcome line or Snakemake's job count, and the 1-minute load average before, during (sampled every
10 s) and after: the machine may be shared, and a number measured under load says so. ``dry-run``
times ``snakemake -n`` in the clone of an earlier ``figures`` (``--clone DIR``; the bound: 5 s on a
finished quick build), three times, and records the median; ``audit`` times ``delay-stability audit``
there the same way (the bound: 10 s), with the files it checked.

Writes benchmarks/results/fresh_clone.json (one record per command, the others kept) and
benchmarks/results/fresh_clone.md, the table the README includes (``make readme``).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "fresh_clone.json"
TABLE = ROOT / "benchmarks" / "results" / "fresh_clone.md"
BUDGETS_S = {"test": 12 * 60, "figures": 20 * 60, "dry-run": 5, "audit": 10}


def load1() -> float:
    return round(os.getloadavg()[0], 2)


class LoadSampler:
    """The 1-minute load average every ``every`` seconds while a command runs."""

    def __init__(self, every: float = 10.0):
        self.every, self.samples, self._stop = every, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.every):
            self.samples.append(load1())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def timed(cmd: list[str], cwd: Path, log: Path) -> dict:
    """Run ``cmd`` in ``cwd`` (output to ``log``): wall seconds, exit status, load averages."""
    before = load1()
    t0 = time.monotonic()
    with open(log, "w") as f, LoadSampler() as sampler:
        rc = subprocess.call(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
    wall = time.monotonic() - t0
    samples = sampler.samples or [load1()]
    return {"command": " ".join(cmd), "exit_status": rc, "wall_s": round(wall, 1), "load1_before": before,
            "load1_mean_during": round(sum(samples) / len(samples), 2), "load1_max_during": max(samples),
            "load1_after": load1()}


def outcome(kind: str, text: str) -> str | None:
    """pytest's last outcome line (``1011 passed, 1 skipped in 601.2s``) or Snakemake's ``n of m
    steps (100%) done`` / ``Nothing to be done``."""
    pattern = {"test": r"^=*\s*(\d+ (?:passed|failed).*?)\s*=*$",
               "figures": r"(\d+ of \d+ steps \(\d+%\) done|Nothing to be done)"}[kind]
    found = re.findall(pattern, text, flags=re.M)
    return found[-1] if found else None


def clone(dest: Path) -> str:
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=dest, check=True,
                          capture_output=True, text=True).stdout.strip()


def measure_make(kind: str, dest: Path) -> dict:
    commit = clone(dest)
    logs = dest.parent / f"{dest.name}-logs"
    logs.mkdir(exist_ok=True)
    setup = timed(["make", "setup"], dest, logs / "setup.log")
    record = timed(["make", kind], dest, logs / f"{kind}.log")
    record["outcome"] = outcome(kind, (logs / f"{kind}.log").read_text(errors="replace"))
    record.update(commit=commit, setup_wall_s=setup["wall_s"], setup_exit_status=setup["exit_status"],
                  clone=str(dest), log=str(logs / f"{kind}.log"))
    return record


def measure_in_build(kind: str, dest: Path) -> dict:
    """``snakemake -n`` or ``delay-stability audit`` in a finished build, three times: the median."""
    tool = dest / ".venv" / "bin" / ("snakemake" if kind == "dry-run" else "delay-stability")
    if not tool.exists():
        sys.exit(f"--clone {dest}: no {tool.relative_to(dest)} there; run `fresh_clone.py figures --clone {dest} --keep` first")
    cmd = [str(tool), "-n", "--quiet"] if kind == "dry-run" else [str(tool), "audit"]
    before, runs = load1(), []
    for _ in range(3):
        t0 = time.monotonic()
        done = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
        runs.append(round(time.monotonic() - t0, 2))
    text = done.stdout + done.stderr
    if kind == "dry-run":
        outcome_ = "Nothing to be done" if "Nothing to be done" in text else text.strip()[-200:]
    else:  # the audit's summary comes first
        outcome_ = text.strip().splitlines()[0][:200] if text.strip() else None
    return {"command": " ".join([tool.name] + cmd[1:]), "exit_status": done.returncode, "wall_s": sorted(runs)[1],
            "runs_s": runs, "outcome": outcome_, "load1_before": before,
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=dest,
                                     capture_output=True, text=True).stdout.strip()}


#: Earlier runs kept per command (``records["earlier"][kind]``, newest first): one run decides nothing
#: when the budget is close, so the table names the runs before the latest too.
EARLIER_KEPT = 4


def add_record(records: dict, kind: str, record: dict) -> dict:
    """``records`` with ``record`` as the latest of ``kind`` and the one it replaces first among the
    earlier runs of ``kind`` (at most EARLIER_KEPT)."""
    out = {k: v for k, v in records.items() if k in BUDGETS_S}
    earlier = {k: list(v) for k, v in (records.get("earlier") or {}).items() if k in BUDGETS_S}
    if kind in out:
        earlier[kind] = [out[kind], *earlier.get(kind, [])][:EARLIER_KEPT]
    out[kind] = record
    if earlier:
        out["earlier"] = earlier
    return out


def _total(r: dict) -> str:
    """Set-up plus run of a make record, in minutes; the run alone otherwise."""
    if "setup_wall_s" in r:
        return f"{(r['setup_wall_s'] + r['wall_s']) / 60:.1f} min"
    return f"{r['wall_s']:.1f} s"


#: How the table names each command.
NAMES = {"figures": "make figures", "test": "make test", "dry-run": "snakemake -n", "audit": "delay-stability audit"}


def _budget(kind: str) -> str:
    return f"{BUDGETS_S[kind] / 60:.0f} min" if BUDGETS_S[kind] >= 60 else f"{BUDGETS_S[kind]} s"


def write_table(records: dict) -> None:
    """The README's table: one row per command, with its budget and the load it ran under."""
    lines = ["| command (fresh clone) | set-up | run | budget | outcome | load (1-min, mean / max) | commit | measured |",
             "|---|---|---|---|---|---|---|---|"]
    for kind in ("figures", "test", "dry-run", "audit"):
        r = records.get(kind)
        if r is None:
            continue
        setup = f"{r['setup_wall_s'] / 60:.1f} min" if "setup_wall_s" in r else "—"
        run = f"{r['wall_s'] / 60:.1f} min" if r["wall_s"] >= 60 else f"{r['wall_s']:.1f} s"
        budget = _budget(kind)
        load = (f"{r['load1_mean_during']} / {r['load1_max_during']}" if "load1_mean_during" in r
                else f"{r['load1_before']}")
        name = f"`{NAMES[kind]}`" + (" (finished quick build)" if kind in ("dry-run", "audit") else "")
        lines.append(f"| {name} | {setup} | {run} | {budget} | {r.get('outcome') or 'exit ' + str(r['exit_status'])} "
                     f"| {load} | {r['commit']} | {r['measured'][:16].replace('T', ' ')} UTC |")
    for kind, runs in (records.get("earlier") or {}).items():
        listed = "; ".join(f"{_total(r)} ({r['commit']}, {r['measured'][:16].replace('T', ' ')} UTC)" for r in runs)
        what = "set-up + run; " if "setup_wall_s" in runs[0] else ""
        lines.append(f"\nEarlier runs of `{NAMES[kind]}` ({what}budget {_budget(kind)}): {listed}.")
    TABLE.write_text("\n".join(lines) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=["test", "figures", "dry-run", "audit"])
    p.add_argument("--clone", type=Path, help="where to clone (default: a new temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the clone (for a later dry-run)")
    args = p.parse_args()
    if args.kind in ("dry-run", "audit"):
        if args.clone is None:
            sys.exit(f"{args.kind} needs --clone DIR: the clone of an earlier `fresh_clone.py figures --keep`")
        record = measure_in_build(args.kind, args.clone.resolve())
    else:
        if args.clone is not None and args.clone.exists():
            sys.exit(f"--clone {args.clone}: already exists; name a new folder")
        dest = (args.clone or Path(tempfile.mkdtemp(prefix="fresh-clone-")) / "project").resolve()
        record = measure_make(args.kind, dest)
        if not args.keep:
            shutil.rmtree(dest, ignore_errors=True)
    record["measured"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    records = json.loads(OUT.read_text()) if OUT.exists() else {}
    records = add_record(records, args.kind, record)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=2) + "\n")
    os.replace(tmp, OUT)
    write_table(records)
    print(json.dumps(record, indent=2))
    return 0 if record["exit_status"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
