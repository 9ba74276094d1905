"""`delay-stability audit`: what produced every figure, and what is damaged, stale, missing or diverged.

First the content: every file listed in the folders' manifests (``.manifest.json``, see
"validity by content" below: ``sync_manifests``) is hashed and compared with its SHA-256; a file
whose bytes differ is *damaged*, and its job is marked incomplete so that Snakemake reruns it.
The report starts with a one-line summary, lists every problem file and names the one command
that repairs them all (``snakemake --cores 2 FILE ...``, one output per job).

Snakemake knows the DAG, so the audit asks it, in two subprocesses run side by side in the project
folder: ``snakemake --summary`` (one row per output file of the DAG: output_file, date, rule,
log-file(s), status, plan) says whether each file is up to date, and ``snakemake -n -F`` (a dry run
that lists every job of the DAG with its input and output files) says which files each job reads.
Every file is then

- ``ok``: Snakemake's status is "ok" (or a temp/pipe/service file that is absent by design) and
  its plan is "no update";
- ``missing``: status "missing", also when Snakemake would not rebuild it because the figure
  downstream is newer (a deleted intermediate: a table, a search.json);
- ``stale``: any other status ("params changed", "rule implementation changed", "updated input
  files", "set of input files changed"), or "ok" with an update pending (something upstream).

The report is grouped by figure (the jobs of the targets; without ``--target`` the inputs of
``rule all``, i.e. every figure of the scale): the figure, the tables its rule reads, and for each
table the run folders behind it (a folder with run.json that a job upstream of the table writes:
the outputs of the generic ``train`` rule, and the continuation folders that a search or a curve
job writes beside its output) with their status, epochs, steps, seconds, package and torch
versions and device (``run_facts``), plus every file upstream of the table that is not ok. A run or
an upstream file that several tables of a figure share is listed under the first of them.

Code hashes come from Snakemake's metadata (``.snakemake/metadata/``, one record per output file,
named by the urlsafe base64 of its path). Snakemake stores a job's params as the sorted list of
their ``repr``s, without their names, so the rules' ``code=src_hash(...)`` param is recognised as
the params value that is a 12-hex-digit string (``files.code_hash``); the record's ``code`` key is
the rule's shell command, not a hash. ``job_hash`` (Snakemake's hash of the job) is reported too.

Exit status: 0 when every file the figures need is ok, 1 when one is damaged, stale or missing (diverged
runs are results: listed, they do not fail the audit), 2 for a user error. The dry run's job list
is Snakemake's console format: a rule with a ``message:`` would print no files (no rule has one).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from base64 import urlsafe_b64encode
from datetime import datetime
from pathlib import Path

from ..errors import UserError
from ..files import read_yaml, write_json

#: Snakemake statuses of files that are absent by design (not a problem).
ABSENT_BY_DESIGN = {"removed temp file", "pipe file", "service file", "file local to node"}
SNAKEFILES = ("Snakefile", "snakefile", "workflow/Snakefile", "workflow/snakefile")
_JOB_HEADER = re.compile(r"^(?:local)?(?:rule|checkpoint) (\S+):$")
_CODE_PARAM = re.compile(r"^'([0-9a-f]{12})'$")
#: run.json / summary.json keys that the report shows for each run.
RUN_KEYS = ("seed", "package_version", "torch_version", "device", "device_name", "start_time", "end_time")
SUMMARY_KEYS = ("epochs_run", "steps", "seconds", "diverged_epoch")


# ------------------------------------------------------------------ Snakemake
def snakemake_commands(scale=None, config_file=None, targets=()):
    """The two Snakemake command lines: (summary, dry run of every job)."""
    options = []
    if config_file:
        options += ["--configfile", str(config_file)]
    if scale:
        options += ["--config", f"scale={scale}"]  # last: --config takes every word after it
    base = [sys.executable, "-m", "snakemake", *targets]
    return [*base, "--summary", *options], [*base, "--dry-run", "--forceall", *options]


def _error_line(output):
    """Snakemake's error message as one line (without its traceback)."""
    lines = []
    for line in output.splitlines():
        if line.startswith("  File ") or line.startswith("Traceback"):
            break
        if line.strip() and not line.startswith(("Building DAG", "Assuming", "Using")):
            lines.append(line.strip())
    return " ".join(lines)[-500:] or "no output"


def run_snakemake(directory, commands):
    """Run ``commands`` side by side in ``directory``; their outputs (stdout and stderr together
    for all but the first, whose stdout is the summary table). A failure is a UserError."""
    env = dict(os.environ, DELAY_STABILITY_SYNCED="1")  # the audit has synced the manifests already
    procs = [subprocess.Popen(cmd, cwd=directory, text=True, stdout=subprocess.PIPE, env=env,
                              stderr=subprocess.PIPE if i == 0 else subprocess.STDOUT)
             for i, cmd in enumerate(commands)]
    outputs = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            for other in procs:
                if other.poll() is None:
                    other.kill()
            raise UserError(f"snakemake failed in {directory}: {_error_line((err or '') + out)}")
        outputs.append(out)
    return outputs


def parse_summary(text):
    """``snakemake --summary`` output -> {output file: {date, rule, log, status, plan}}."""
    rows = {}
    lines = [line for line in text.splitlines() if "\t" in line]
    if not lines or not lines[0].startswith("output_file\t"):
        raise UserError("snakemake --summary printed no table")
    header = lines[0].split("\t")
    for line in lines[1:]:
        row = dict(zip(header, line.split("\t")))
        rows[row["output_file"]] = {"date": row.get("date"), "rule": row.get("rule"),
                                    "log": row.get("log-file(s)"), "status": row.get("status"),
                                    "plan": row.get("plan")}
    return rows


def parse_dag(text):
    """The jobs of a dry run's output: [{"rule", "input": [...], "output": [...]}] in its order."""
    jobs, job = [], None
    for line in text.splitlines():
        header = _JOB_HEADER.match(line)
        if header:
            job = {"rule": header.group(1), "input": [], "output": []}
            jobs.append(job)
        elif job is not None and line.startswith("    ") and ": " in line:
            key, value = line.strip().split(": ", 1)
            if key in ("input", "output"):
                job[key] = value.split(", ")
        elif not line.startswith("    "):
            job = None
    return jobs


def classify(row):
    """(state, reason) of a summary row: ok, missing or stale, and Snakemake's words."""
    status, plan = row.get("status"), row.get("plan")
    if status == "missing":
        return "missing", "missing"
    if status == "ok" or status in ABSENT_BY_DESIGN:
        if plan == "update pending":
            return "stale", "update pending (an input changed or will be rebuilt)"
        return "ok", status
    return "stale", status


# ------------------------------------------------------------------ records on disk
def job_record(directory, path):
    """Snakemake's metadata record of an output file (``.snakemake/metadata``), or None."""
    metadata = Path(directory) / ".snakemake" / "metadata"
    if not metadata.is_dir():
        return None
    max_len = (os.pathconf(metadata, "PC_NAME_MAX") if os.name == "posix" else 255) or 255
    b64 = urlsafe_b64encode(str(path).encode()).decode()
    parts = [b64[i:i + max_len - 1] for i in range(0, len(b64), max_len - 1)]
    record = metadata.joinpath(*["@" + p for p in parts[:-1]], parts[-1])
    try:
        return json.loads(record.read_text())
    except (OSError, ValueError):
        return None


def provenance(directory, path):
    """What Snakemake recorded of the job that wrote ``path``: rule, code hash, job hash, end time."""
    record = job_record(directory, path)
    if not record:
        return {"code": None, "job_hash": None, "built": None}
    codes = [m.group(1) for p in record.get("params") or [] if (m := _CODE_PARAM.match(str(p)))]
    end = record.get("endtime")
    return {"code": ",".join(codes) or None, "job_hash": record.get("job_hash"),
            "built": datetime.fromtimestamp(end).isoformat(sep=" ", timespec="seconds") if end else None}


def _read(path):
    try:
        return json.loads(Path(path).read_text()), None
    except FileNotFoundError:
        return {}, "missing"
    except (OSError, ValueError):
        return {}, "unreadable"


def run_facts(folder):
    """The facts of one run folder from its run.json and summary.json: status (the run's own:
    completed, steady, settled, escaped, diverged; or "missing"/"unreadable" when a file is),
    ``diverged``, epochs_run, steps, seconds, seed, package and torch versions, device, times."""
    run, run_problem = _read(Path(folder) / "run.json")
    summary, summary_problem = _read(Path(folder) / "summary.json")
    facts = {"folder": str(folder), "status": summary.get("status") or summary_problem or run_problem or "unknown"}
    if run_problem and not summary_problem:
        facts["status"] += f" (run.json {run_problem})"
    facts.update({k: summary.get(k) for k in SUMMARY_KEYS})
    facts.update({k: run.get(k) for k in RUN_KEYS})
    facts["diverged"] = bool(summary.get("diverged")) or summary.get("status") == "diverged"
    return facts


# ------------------------------------------------------------------ the report
def build_report(directory, rows, jobs, targets=()):
    """The audit of the figures of ``targets`` (default: the inputs of the jobs without outputs,
    i.e. ``rule all``) from the summary ``rows`` and the DAG ``jobs`` (see the module docstring)."""
    directory = Path(directory)
    producer = {f: i for i, job in enumerate(jobs) for f in job["output"]}
    known_dirs = {str(Path(f).parent) for f in producer}

    def file_entry(path):
        row = rows.get(path)
        if row is None:  # a source file: no job writes it
            state = "ok" if (directory / path).exists() else "missing"
            entry = {"file": path, "state": state, "reason": "source file", "rule": None}
        else:
            state, reason = classify(row)
            entry = {"file": path, "state": state, "reason": reason, "rule": row["rule"]}
        return {**entry, **provenance(directory, path)}

    def upstream(index):
        seen, stack = set(), [index]
        while stack:
            i = stack.pop()
            if i not in seen:
                seen.add(i)
                stack.extend(producer[f] for f in jobs[i]["input"] if f in producer)
        return [f for i in sorted(seen) for f in jobs[i]["output"]]

    def runs_of(files):
        runs = {}  # folder -> the file through which it was found
        for f in files:
            folder = Path(f).parent
            if Path(f).name == "run.json" or (directory / folder / "run.json").exists():
                runs.setdefault(str(folder), f)
            elif (directory / folder).is_dir():
                for child in sorted((directory / folder).iterdir()):
                    rel = str(child.relative_to(directory))
                    if rel not in known_dirs and (child / "run.json").exists():
                        runs.setdefault(rel, f)
        out = []
        for folder, found_by in runs.items():
            state, reason = classify(rows[found_by]) if found_by in rows else ("ok", "")
            out.append({**run_facts(directory / folder), "folder": folder, "state": state,
                        "reason": reason, "rule": rows.get(found_by, {}).get("rule"),
                        **provenance(directory, found_by)})
        return out

    if targets:
        figure_jobs = []
        for t in map(os.path.normpath, targets):
            matches = [producer[t]] if t in producer else [i for i, j in enumerate(jobs) if j["rule"] == t]
            for i in matches:
                figure_jobs += [i] if jobs[i]["output"] else [producer[f] for f in jobs[i]["input"] if f in producer]
    else:
        figure_jobs = [producer[f] for job in jobs if not job["output"] for f in job["input"] if f in producer]
    figure_jobs = list(dict.fromkeys(figure_jobs))

    figures = []
    for i in figure_jobs:
        outputs = [file_entry(f) for f in jobs[i]["output"]]
        worst = next((s for s in ("missing", "stale") if any(o["state"] == s for o in outputs)), "ok")
        tables, listed = [], set(jobs[i]["input"])  # a run or a file: under the first table behind it
        for table in jobs[i]["input"]:
            entry = file_entry(table)
            closure = [f for f in upstream(producer[table]) if f != table] if table in producer else []
            entry["runs"] = [r for r in runs_of(closure) if r["folder"] not in listed]
            entry["needs"] = [e for e in map(file_entry, closure) if e["state"] != "ok" and e["file"] not in listed]
            listed |= {r["folder"] for r in entry["runs"]} | set(closure)
            tables.append(entry)
        figures.append({"figure": jobs[i]["output"][0], "files": outputs, "state": worst,
                        "reason": "; ".join(sorted({o["reason"] for o in outputs})), "rule": jobs[i]["rule"],
                        **{k: outputs[0][k] for k in ("code", "job_hash", "built")}, "tables": tables})

    problems = [{"file": f, "state": s, "reason": r, "rule": row["rule"]}
                for f, row in rows.items() for s, r in [classify(row)] if s != "ok"]
    diverged = {run["folder"]: run for fig in figures for t in fig["tables"] for run in t["runs"] if run["diverged"]}
    return {"directory": str(directory), "targets": list(targets), "figures": figures,
            "files": len(rows), "problems": problems, "diverged": list(diverged.values()),
            "ok": not problems}


def audit(directory=".", scale=None, config_file=None, targets=()):
    """Run the two Snakemake subprocesses in ``directory`` and build the report."""
    directory = Path(directory)
    if not directory.is_dir() or not any((directory / s).is_file() for s in SNAKEFILES):
        raise UserError(f"no Snakefile in {directory} (run the audit in the project folder or pass --directory)")
    if config_file is not None:
        config_file = Path(config_file).resolve()
        if not config_file.is_file():
            raise UserError(f"config file not found: {config_file}")
    checks = sync_manifests(directory, _result_roots(config_file or directory / "config.yaml"), verify=True)
    summary, dag = run_snakemake(directory, snakemake_commands(scale, config_file, targets))
    jobs = parse_dag(dag)
    report = build_report(directory, parse_summary(summary), jobs, targets)
    report["scale"] = scale or _configured_scale(config_file or directory / "config.yaml")
    add_checks(report, checks, scale, config_file, jobs)
    return report


def add_checks(report, checks, scale=None, config_file=None, jobs=()):
    """Add the checksum verification (``checks``: ``sync_manifests``) to ``report``: the damaged and
    missing files with the output whose job rewrites them, and the one command that repairs every
    problem (Snakemake builds exactly the named outputs and what they need that is not up to date)."""
    damaged = [{"file": f, "state": "damaged", "reason": "checksum differs from its manifest", "rule": None,
                "owner": o} for f, o in checks["damaged"]]
    damaged += [{"file": f, "state": "missing", "reason": "a file of a finished job is gone", "rule": None,
                 "owner": o} for f, o in checks["missing"]]
    known = {p["file"] for p in report["problems"]}
    report["problems"] = damaged + [p for p in report["problems"] if p["file"] not in {d["file"] for d in damaged}]
    report["checked"] = checks["checked"]
    report["ok"] = not report["problems"]
    first_output = {f: job["output"][0] for job in jobs for f in job["output"]}  # one file names its job
    targets = list(dict.fromkeys(first_output.get(f, f) for f in [d["owner"] or d["file"] for d in damaged] +
                                 [p["file"] for p in report["problems"] if p["file"] in known]))
    report["repair"] = repair_command(targets, scale, config_file) if targets else None
    return report


def repair_command(files, scale=None, config_file=None) -> str:
    """``snakemake --cores 2 FILE ...``: rebuild exactly these outputs (their jobs, and any job they
    need that is not up to date; damaged outputs are marked incomplete, so their jobs run)."""
    words = ["snakemake", "--cores", "2"]
    if config_file:
        words += ["--configfile", str(config_file)]
    words += list(files)
    if scale:
        words += ["--config", f"scale={scale}"]
    return " ".join(words)


def _result_roots(config_path):
    """results_dir and figures_dir of a config file (defaults: results, figures)."""
    try:
        cfg = read_yaml(config_path, "config file") or {}
    except UserError:
        cfg = {}
    return (str(cfg.get("results_dir", "results")), str(cfg.get("figures_dir", "figures")))


def _configured_scale(path):
    """The ``scale`` key of a config file (what Snakemake uses without --scale)."""
    import yaml

    try:
        return str((yaml.safe_load(Path(path).read_text()) or {}).get("scale", "quick"))
    except (OSError, yaml.YAMLError, AttributeError):
        return "as configured"


def _describe(entry):
    return _state(entry) + f"  [{entry['rule'] or 'source'}, code {entry['code'] or '-'}, built {entry['built'] or '-'}]"


def _state(entry):
    return entry["state"] + (f" ({entry['reason']})" if entry["reason"] not in ("ok", entry["state"]) else "")


def _describe_run(run):
    words = [run["status"]]
    if run.get("epochs_run") is not None:
        words.append(f"{run['epochs_run']} epochs, {run['steps']} steps, {run['seconds']} s")
    if run.get("package_version"):
        words.append(f"delay-stability {run['package_version']}, torch {run['torch_version']}, "
                     f"{run['device']} ({run['device_name']})")
    if run["state"] != "ok":
        words.append(f"snakemake: {_state(run)}")
    return ", ".join(words) + f"  [{run['rule'] or '-'}, code {run['code'] or '-'}]"


def format_report(report):
    """The report as text: one line per figure, table, run and problem, indented."""
    counts = {s: sum(p["state"] == s for p in report["problems"]) for s in ("damaged", "missing", "stale")}
    lines = [f"audit of {report['directory']} (scale: {report['scale']}): "
             f"{'ok' if report['ok'] else 'NOT up to date'}: {counts['damaged']} damaged, {counts['missing']} missing, "
             f"{counts['stale']} stale; {report.get('checked', 0)} files checked by checksum, "
             f"{report['files']} files in the DAG of {len(report['figures'])} target(s); "
             f"{len(report['diverged'])} diverged run(s)"]
    for p in report["problems"]:
        lines.append(f"  {p['state']}: {p['file']} ({p['reason']})")
    if report.get("repair"):
        lines.append(f"repair (reruns exactly these): {report['repair']}")
    for fig in report["figures"]:
        kind = "figure" if fig["figure"].endswith((".pdf", ".png", ".svg")) else "target"
        lines.append(f"{kind} {', '.join(f['file'] for f in fig['files'])}: {_describe(fig)}")
        for table in fig["tables"]:
            lines.append(f"  table {table['file']}: {_describe(table)}")
            lines += [f"    run {run['folder']}: {_describe_run(run)}" for run in table["runs"]]
            lines += [f"    needs {e['file']}: {_state(e)}  [{e['rule']}]" for e in table["needs"]]
    if report["diverged"]:
        lines.append(f"diverged runs ({len(report['diverged'])}, results, not failures):")
        lines += [f"  {run['folder']}: diverged at epoch {run['diverged_epoch']}" for run in report["diverged"]]
    lines.append(f"result: {counts['damaged']} damaged, {counts['missing']} missing, {counts['stale']} stale of "
                 f"{report['files']} files; "
                 f"{len(report['diverged'])} diverged run(s) -> {'ok' if report['ok'] else 'NOT up to date'}")
    return "\n".join(lines)


# ------------------------------------------------------------------ command line
def register(subparsers) -> None:
    """Add the ``audit`` command to ``subparsers``."""
    p = subparsers.add_parser(
        "audit",
        help="what produced every figure, and what is stale, missing or diverged",
        description="For every figure of the scale: the tables behind it and the runs behind each table "
        "(status, epochs, code hash, package and torch versions, device, seconds), from Snakemake's own "
        "summary of the DAG. Exit 0: every figure's inputs are present and up to date; 1: something a "
        "figure needs is stale or missing (diverged runs are listed, they do not fail); 2: user error.",
    )
    p.add_argument("--scale", choices=("quick", "paper"), help="the scale to audit (default: the config's)")
    p.add_argument("--config-file", metavar="YAML", help="a config file for Snakemake (--configfile)")
    p.add_argument("--target", action="append", default=[], metavar="FILE",
                   help="audit only this figure target (repeatable; default: every figure, rule all)")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    p.add_argument("--directory", default=".", metavar="DIR", help="the project folder (default: .)")
    p.set_defaults(func=_cli_audit)


def _cli_audit(args) -> int:
    report = audit(args.directory, args.scale, args.config_file, args.target)
    print(format_report(report))
    if args.json:
        write_json(args.json, report)
    return 0 if report["ok"] else 1


# ------------------------------------------------------------------ validity by content: manifests
#
# Snakemake decides what to run from the files' mtimes and, when ``.snakemake/metadata`` holds a
# record of the job that wrote a file, from the job's params, code (shell command), set of input
# files and software environment (``--rerun-triggers``; Snakemake 9: a file without a record is
# judged by mtime alone, persistence.params_changed skips it). Results copied without their mtimes
# (``cp -r``, scp, rsync without -t, tar without times) into a fresh clone have neither: mtimes in
# arbitrary order (jobs rerun for nothing) and no records (a changed config is silently ignored).
#
# So every folder of results/ and figures/ carries ``.manifest.json``: for each of its files the
# SHA-256, size and mtime it had when its job finished, the job's output it belongs to ("owner":
# the file itself for a declared output; else the output of the nearest folder above that has one,
# e.g. a continuation folder written beside its search's search.json) and, for outputs, Snakemake's
# record of the job. ``sync_manifests`` runs when Snakemake reads the workflow (common.smk) and after
# every build (onsuccess/onerror); it
#
# - records the files of every job that Snakemake finished since the manifest was written (the
#   record's endtime differs): manifests follow the builds;
# - for a file whose size or mtime differs from its entry, compares the SHA-256: the same bytes
#   (a copy that lost its mtime) get the recorded mtime back; other bytes are *damaged*;
# - gives back Snakemake's record of every output that has none (a fresh clone), so that Snakemake's
#   own params/code/input triggers compare the copied results with the current config and code,
#   exactly as in the folder where they were built;
# - marks the outputs whose jobs must run again (a damaged file, or a missing side file) incomplete
#   in Snakemake's own bookkeeping, as a killed job's: Snakemake reruns those jobs (the default
#   profile sets --rerun-incomplete), and their dependants in the DAG of the targets. (Snakemake's
#   --forcerun cannot be set from the workflow: the DAG settings are installed after it is read.)

MANIFEST = ".manifest.json"
MANIFEST_FORMAT = 1
#: Folder and file names that are no results: kept copies, parked runs, locks, temporary files.
_SKIP = (".",)
_SKIP_DIRS = {"pids"}


def metadata_record_path(directory, path, kind="metadata") -> Path:
    """Where Snakemake 9's file persistence keeps the record of output ``path`` (a path relative to
    the working directory): ``.snakemake/metadata/<urlsafe base64 of path>``, split into folders
    named ``@<part>`` when longer than the file system's name limit."""
    metadata = os.path.join(os.fspath(directory), ".snakemake", kind)
    max_len = _name_max(metadata, os.fspath(directory))
    b64 = urlsafe_b64encode(str(path).encode()).decode()
    parts = [b64[i:i + max_len - 1] for i in range(0, len(b64), max_len - 1)]
    return Path(os.path.join(metadata, *["@" + p for p in parts[:-1]], parts[-1]))


_NAME_MAX: dict = {}


def _name_max(metadata: str, directory: str) -> int:
    """The file system's name limit where the records live (asked once per folder: a workflow
    looks up the records of thousands of files)."""
    if metadata not in _NAME_MAX:
        max_len = 255
        if os.name == "posix":
            try:
                max_len = os.pathconf(metadata if os.path.isdir(metadata) else directory, "PC_NAME_MAX") or 255
            except OSError:
                pass
        _NAME_MAX[metadata] = max_len
    return _NAME_MAX[metadata]


def _read_record(directory, path, listing=None):
    """Snakemake's record of output ``path`` (None: none, or the job did not finish). ``listing``
    (``_RecordListing``) skips the read of a record that is not there."""
    if listing is not None and not listing.may_exist(path, "metadata"):
        return None
    try:
        record = json.loads(metadata_record_path(directory, path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and not record.get("incomplete") else None


class _RecordListing:
    """The names in ``.snakemake/metadata`` and ``.snakemake/incomplete``, listed once: a sync looks
    up the record of every result file (thousands), most of which are no declared output and have
    none. ``may_exist`` is exact for a path whose record is one name (not split into ``@`` folders),
    and True otherwise (then the file is read, as without the listing)."""

    def __init__(self, directory):
        self.directory = os.fspath(directory)
        self.names = {}
        for kind in ("metadata", "incomplete"):
            try:
                self.names[kind] = set(os.listdir(os.path.join(self.directory, ".snakemake", kind)))
            except OSError:
                self.names[kind] = set()

    def may_exist(self, path, kind) -> bool:
        b64 = urlsafe_b64encode(str(path).encode()).decode()
        max_len = _name_max(os.path.join(self.directory, ".snakemake", kind), self.directory)
        if len(b64) > max_len - 1:  # a long path: its record lies in '@' folders (metadata_record_path)
            return True
        return b64 in self.names[kind]


def _in_progress(name) -> bool:
    """A run's state in progress, not a result: its rolling checkpoint and partial tables."""
    return name == "checkpoint.pt" or name.endswith(".partial.csv")


def _result_files(root):
    """({folder: [file names]} of the results under ``root``, the folders holding a manifest), in one
    walk: hidden folders (a run's .finished/ copies), pids/ and the state of runs in progress are
    skipped. A manifest is only ever written beside results, so it never lies in a skipped folder."""
    found, manifests = {}, set()
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(_SKIP) and d not in _SKIP_DIRS)
        names = sorted(f for f in files if not f.startswith(_SKIP) and not _in_progress(f))
        if names:
            found[folder] = names
        if MANIFEST in files:
            manifests.add(folder)
    return found, manifests


def _read_manifest(folder):
    try:
        data = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("files"), dict):
        return {}
    return data["files"]


def _inputs_not_newer(directory, record, mtime_ns) -> bool:
    """Whether every input file of the job ``record`` describes is at most as new as ``mtime_ns``."""
    for name in (record or {}).get("input") or []:
        try:
            if (Path(directory) / name).stat().st_mtime_ns > mtime_ns:
                return False
        except OSError:
            return False
    return True


def _entry_matches_stat(entry, st):
    return entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns


def sync_manifests(directory=".", roots=("results", "figures"), seed=True, restore_times=True, mark=True,
                   verify=False):
    """Bring the manifests of the results under ``roots`` (relative to ``directory``) up to date
    with the files and Snakemake's records, as described above. Returns
    ``{"checked", "hashed", "recorded", "seeded", "retimed", "damaged": [...], "missing": [...],
    "forcerun": [...]}``: ``damaged`` and ``missing`` list (file, owner) pairs; ``forcerun`` the
    owners (declared outputs) whose jobs must run again. ``verify``: hash every file (the audit),
    not only those whose size or mtime differ from their entry."""
    from ..files import sha256_file

    directory = Path(directory)
    dir_s = os.fspath(directory)
    stats = {"checked": 0, "hashed": 0, "recorded": 0, "seeded": 0, "retimed": 0, "damaged": [], "missing": []}
    forcerun = set()
    listing = _RecordListing(directory)
    for root in roots:
        base = directory / root
        if not base.is_dir():
            continue
        present, manifests = _result_files(base)
        folders = set(present) | manifests
        records, owners_of, marked = {}, {}, {}

        def record_of(rel):
            if rel not in records:
                records[rel] = _read_record(directory, rel, listing)
            return records[rel]

        def running_or_killed(owner):
            if owner not in marked:
                marked[owner] = listing.may_exist(owner, "incomplete") and _running_or_killed(directory, owner)
            return marked[owner]

        def owner_of(folder_rel):
            """The nearest folder at or above ``folder_rel`` with a declared output: its outputs."""
            if folder_rel in owners_of:
                return owners_of[folder_rel]
            names = present.get(str(directory / folder_rel), [])
            outs = [str(Path(folder_rel) / n) for n in names if record_of(str(Path(folder_rel) / n))]
            if not outs and Path(folder_rel) != Path(root) and str(Path(folder_rel).parent) not in ("", "."):
                outs = owner_of(str(Path(folder_rel).parent))
            owners_of[folder_rel] = outs
            return outs

        for folder in sorted(folders):
            rel_folder = os.path.relpath(folder, directory)
            old = _read_manifest(folder)
            new, changed = {}, False
            names = present.get(folder, [])
            for name in sorted(set(names) | set(old)):
                rel = os.path.join(rel_folder, name) if rel_folder != "." else name  # as str(Path(rel_folder) / name)
                path = os.path.join(dir_s, rel)   # a str: a Path per file costs more than the stat
                entry = old.get(name)
                rec = record_of(rel)
                owner = rel if rec else (entry.get("owner") if entry else None)
                if owner is None and name in names:
                    # a file no job declares, written beside an output: it belongs to the job of that
                    # output only if the job ended after the file was written (a later job's
                    # half-written folder is not an earlier job's result)
                    mtime = os.stat(path).st_mtime_ns
                    owner = next((o for o in owner_of(rel_folder)
                                  if (record_of(o) or {}).get("endtime") and record_of(o)["endtime"] * 1e9 >= mtime - 1e6),
                                 None)
                owner_rec = record_of(owner) if owner else None
                if owner and running_or_killed(owner):
                    if entry:  # its job runs now (or was killed): Snakemake's business, not damage
                        new[name] = entry
                    continue
                if name not in names:  # listed, gone
                    if entry and owner and owner != rel and (directory / owner).exists() and owner_rec \
                            and owner_rec.get("endtime") == entry.get("endtime"):
                        stats["missing"].append((rel, owner))
                        forcerun.add(owner)
                        new[name] = entry
                    else:
                        changed = True  # an output Snakemake will plan, or a file its job no longer writes
                    continue
                stats["checked"] += 1
                st = os.stat(path)
                rebuilt = owner_rec is not None and (entry is None or owner_rec.get("endtime") != entry.get("endtime"))
                if entry is None or rebuilt:  # a job finished since the manifest: record its files
                    if owner_rec is None and entry is None and owner is None:
                        continue  # not written by a job of the workflow (yet): nothing to vouch for
                    stats["hashed"] += 1
                    new[name] = {"sha256": sha256_file(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                 "owner": owner, "endtime": owner_rec.get("endtime") if owner_rec else None}
                    if entry is not None and entry.get("sha256") == new[name]["sha256"] and restore_times \
                            and _inputs_not_newer(directory, owner_rec, entry["mtime_ns"]):
                        # rebuilt to the same bytes (a repair) from unchanged inputs: the same file
                        os.utime(path, ns=(st.st_atime_ns, entry["mtime_ns"]))
                        new[name]["mtime_ns"] = entry["mtime_ns"]
                        stats["retimed"] += 1
                    if rec is not None:
                        new[name]["record"] = rec
                    stats["recorded"] += 1
                    changed = True
                    continue
                new[name] = entry
                if verify or not _entry_matches_stat(entry, st):
                    stats["hashed"] += 1
                    if sha256_file(path) != entry["sha256"]:
                        stats["damaged"].append((rel, entry.get("owner")))
                        if entry.get("owner"):
                            forcerun.add(entry["owner"])
                        continue
                    if restore_times and st.st_mtime_ns != entry["mtime_ns"]:
                        os.utime(path, ns=(st.st_atime_ns, entry["mtime_ns"]))
                        stats["retimed"] += 1
                if seed and rec is None and entry.get("record") and entry.get("owner") == rel:
                    target = metadata_record_path(directory, rel)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    (directory / ".snakemake" / "incomplete").mkdir(exist_ok=True)  # else Snakemake "migrates"
                    write_json(target, entry["record"])
                    listing.names["metadata"].add(target.name)
                    records[rel] = entry["record"]
                    stats["seeded"] += 1
            if changed or set(new) != set(old):
                if new:
                    write_json(Path(folder) / MANIFEST, {"format": MANIFEST_FORMAT, "files": new})
                elif (Path(folder) / MANIFEST).exists():
                    os.remove(Path(folder) / MANIFEST)
    stats["forcerun"] = sorted(forcerun)
    if mark:
        for owner in stats["forcerun"]:
            mark_incomplete(directory, owner)
    return stats


def mark_incomplete(directory, path) -> None:
    """Mark output ``path`` incomplete in Snakemake's own bookkeeping (``.snakemake/incomplete/``,
    as for a job that was killed): Snakemake then reruns its job (``--rerun-incomplete``, which the
    default profile sets; without it, Snakemake stops and names the file)."""
    target = metadata_record_path(directory, path, "incomplete")
    target.parent.mkdir(parents=True, exist_ok=True)
    (Path(directory) / ".snakemake" / "metadata").mkdir(parents=True, exist_ok=True)
    write_json(target, {"external_jobid": None, "damaged": True})


def _running_or_killed(directory, path) -> bool:
    """Whether Snakemake itself marked output ``path`` incomplete (its job runs now, or was killed);
    a mark of ours (``mark_incomplete``: damaged) does not count."""
    try:
        marker = json.loads(metadata_record_path(directory, path, "incomplete").read_text())
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True
    return not (isinstance(marker, dict) and marker.get("damaged"))
