# The one place that knows the config's shape, the paths, the code hashes and the figure helper.
# No experiment logic: each experiment's rules are in workflow/rules/<experiment>.smk, its run specs
# in src/delay_stability/experiments/<experiment>.py.
import json
import os
import re
import sys
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError

import delay_stability
from delay_stability.errors import UserError
from delay_stability.experiments import config as config_check
from delay_stability.experiments import smoke
from delay_stability.files import code_hash
from delay_stability.registry import EXPERIMENTS, experiment_of_figure
from delay_stability.spec import deep_merge, validate_spec
from delay_stability.theory import VARIANTS  # the delayed-SGD variants, for wildcard constraints

ROOT = Path(workflow.basedir)
SCHEMA_PATH = ROOT / "workflow" / "schemas" / "config.schema.yaml"
#: The source tree of the package that the jobs import (the installed one: a copy of the workflow
#: elsewhere still hashes the code it runs).
SRC = Path(sys.modules["delay_stability"].__file__).resolve().parents[1]


if isinstance(config.get("smoke"), str):  # --config smoke=true arrives as a string
    config["smoke"] = {"true": True, "false": False}.get(config["smoke"].lower(), config["smoke"])
try:  # the schema (its defaults filled in) and every training spec of the scale, before any job
    config_check.check(config, yaml.safe_load(SCHEMA_PATH.read_text()))
except UserError as exc:
    raise WorkflowError(str(exc)) from None

SCALE = config["scale"]
FIGURES = Path(config["figures_dir"])


def sync_results():
    """Validity by content (delay_stability.experiments.audit.sync_manifests): record what finished
    jobs wrote, give copied results back their mtimes and Snakemake's records, and return the
    outputs whose files are damaged. Only in the main Snakemake process (not inside a cluster job)."""
    if not workflow.is_main_process or os.environ.get("DELAY_STABILITY_SYNCED"):  # a cluster job, or the audit
        return {"forcerun": []}
    from delay_stability.experiments.audit import sync_manifests

    return sync_manifests(".", (config["results_dir"], config["figures_dir"]))


_SYNC = sync_results()
if _SYNC["forcerun"]:  # marked incomplete: their jobs run again
    from snakemake.logging import logger

    logger.warning("damaged results (checksum differs from the manifest, or a file is gone; their jobs run "
                   f"again): {', '.join(f for f, _ in _SYNC['damaged'] + _SYNC['missing'])}")

if config["smoke"]:  # the paper's networks and rules on tiny data: results/paper-smoke/, figures/smoke/
    if SCALE != "paper":
        raise WorkflowError("config key 'smoke': smoke mode runs the paper scale; add scale=paper "
                            "(snakemake --config scale=paper smoke=true)")
    SMOKE_DATA = Path(config["data_dir"]) / "smoke"
    smoke.write_datasets(SMOKE_DATA)  # milliseconds, the same bytes every time
    config["device"] = "cpu"
    SCALE = "paper-smoke"
    config[SCALE] = smoke.smoke_config(config["paper"], SMOKE_DATA)
    FIGURES = FIGURES / "smoke"
    try:
        for _key, _spec in config_check.training_specs(config, SCALE):
            validate_spec(_spec)
    except UserError as exc:
        raise WorkflowError(f"smoke mode: {exc}") from None
EXP = config[SCALE]                          # the experiment blocks of the current scale
RESULTS = Path(config["results_dir"])
THEORY_DIR = RESULTS / "theory"              # exact results, the same at every scale
SCALE_DIR = RESULTS / SCALE                  # everything trained at this scale
LOGS = Path("logs") / SCALE

# The rules call the package's console scripts, `delay-stability` and (for jobs that may use a GPU)
# `delay-stability-gpu-slot --gpus N -- delay-stability ...`, found on PATH: the scripts beside the
# Python that runs Snakemake come first. Neither the interpreter's nor the checkout's path appears in
# a rule's params or command, so a copy of the project in another folder or venv has nothing to
# rerun (Snakemake reruns a job when its params change).
envvars:
    "PATH",


SEARCH_PATH = os.environ["PATH"]
os.environ.update(PATH=os.pathsep.join([str(Path(sys.executable).parent), SEARCH_PATH]))
#: A cluster's job time limit: training jobs ask for at most this and stop at 90% of it with a
#: checkpoint (exit status 75); Snakemake's retries run the next job of the chain, which resumes.
MAX_JOB_MINUTES = config["max_job_minutes"]
if MAX_JOB_MINUTES:
    os.environ.update(DELAY_STABILITY_JOB_SECONDS=str(int(MAX_JOB_MINUTES * 60 * 0.9)))
#: GPUs of one training job: 1 at paper scale, 0 at quick scale.
GPUS_PER_JOB = 1 if SCALE == "paper" else 0

#: Figures that `rule all` builds; each rule file appends its own.
ALL_TARGETS = []


def figure(name):
    """The PDF and its PNG twin (for the README) of a figure target."""
    return [str(FIGURES / f"{name}.pdf"), str(FIGURES / f"{name}.png")]


def src_hash(*modules):
    """Hash of the package modules a rule runs (e.g. "experiments.stability") and of every module
    they import, transitively (computed from their imports, not listed by hand): rules that compute
    take it as a parameter, so that editing the library reruns what it affects and nothing else
    (Snakemake does not see edits to imported modules). The package root (``__version__``) is left
    out: the version is provenance (run.json records it), not a rerun trigger."""
    names = tuple(f"delay_stability.{m}" for m in modules)
    digest = code_hash(names, SRC, ignore=("delay_stability",))
    CODE_MODULES[digest] = names
    return digest


#: code hash -> the modules it covers (with all they import, the code of the jobs whose `code` param
#: it is): tests/test_promise.py reads it to check which jobs an edit reruns.
CODE_MODULES = {}


def plots_hash(experiment):
    """Hash of the code that draws the figures of ``experiment``: its plots module and the shared
    plots code (plots/__init__.py, style.py and what they import)."""
    return src_hash("plots", f"plots.{experiment}")


def checked_spec(spec, key):
    """``spec`` validated now, when the DAG is built (delay_stability.spec.validate_spec): a typo in
    a training block fails `snakemake -n` with a message naming the config key, before any job runs
    (and before Snakemake touches the outputs of a finished run)."""
    try:
        validate_spec(spec)
    except UserError as exc:
        raise WorkflowError(f"invalid configuration: {SCALE}.{key}: {exc}") from None
    return spec


def with_run_settings(spec):
    """Add the config's run-wide settings (device, data_dir, download) to a training spec."""
    return config_check.with_run_settings(spec, config)


def device_flag():
    """`--device D ` for the CLI, or nothing when the config says auto (cuda if available)."""
    return "" if config["device"] == "auto" else f"--device {config['device']} "


def gpu_resources(runtime_quick=30, runtime_paper=24 * 60, mem_quick=2000, mem_paper=32000):
    """Resources of a training rule: a GPU at paper scale, none at quick scale."""
    paper = SCALE == "paper"
    runtime = runtime_paper if paper else runtime_quick
    return dict(
        gpu=GPUS_PER_JOB,
        runtime=min(runtime, MAX_JOB_MINUTES) if MAX_JOB_MINUTES else runtime,
        mem_mb=mem_paper if paper else mem_quick,
    )


def as_regex(values):
    """A wildcard constraint that matches exactly these strings."""
    return "|".join(re.escape(str(v)) for v in values) or "(?!)"


# ------------------------------------------------------------------ run folders of the generic rule
#: run folder -> {"spec": training spec, "resources": ...}: every run that workflow/rules/train.smk
#: builds. Experiments register their runs with `register_run`; train.smk is included last.
RUNS = {}


def register_run(folder, spec, key, runtime_quick=30, runtime_paper=24 * 60):
    """Let the generic training rule build ``folder`` from ``spec`` (validated now; ``key`` names
    its config block in error messages). Returns the folder as a string."""
    folder = str(folder)
    spec = checked_spec(with_run_settings(spec), key)
    if folder in RUNS and RUNS[folder]["spec"] != spec:
        raise WorkflowError(f"two different specs for the run folder {folder} (config key {key})")
    RUNS[folder] = {"spec": spec, "resources": gpu_resources(runtime_quick, runtime_paper)}
    return folder


#: The files of a run folder that tables read (every one a declared input of the rule that reads it).
RUN_RECORDS = ("summary.json", "metrics.csv", "run.json")


def run_records(folder):
    """The files of a run folder that the tables read (summary.json, metrics.csv, run.json)."""
    return [run_file(folder, name) for name in RUN_RECORDS]


def run_file(folder, name="final.pt"):
    """A file of a registered run folder (final.pt, metrics.csv, summary.json, run.json, spec.json)."""
    return str(Path(folder) / name)


# ------------------------------------------------------------- ensembles of the generic ensemble rule
#: ensemble folder -> {"specs": the members' specs, "runs": their run folders, "resources"}: every
#: batched ensemble that workflow/rules/train.smk builds (rule `ensemble`, which writes the specs as JSON).
ENSEMBLES = {}


def register_ensemble(folder, runs, key, runtime_quick=30, runtime_paper=24 * 60):
    """Let the generic ensemble rule train ``runs`` ((run folder, spec) pairs, specs as the plan made
    them) as one batched ensemble whose record is ``folder``/ensemble.json; each member writes its own
    run folder, as the train rule would. ``key`` names the config block in error messages. Returns the
    record's path (what a tables rule takes as input)."""
    folder = str(folder)
    entry = {"specs": [spec for _, spec in runs], "runs": [str(f) for f, _ in runs],
             "resources": gpu_resources(runtime_quick, runtime_paper)}
    if folder in ENSEMBLES and ENSEMBLES[folder]["specs"] != entry["specs"]:
        raise WorkflowError(f"two different ensembles in the folder {folder} (config key {key})")
    ENSEMBLES[folder] = entry
    return ensemble_record(folder)


def ensemble_record(folder):
    """The record an ensemble job writes (ensemble.json in its folder): a tables rule's input."""
    return str(Path(folder) / "ensemble.json")


# ---------------------------------------------------------------- figures of the generic figure rules
#: figure -> {"tables": the tables it reads, in the order its plotter takes them, "options": a function
#: of no arguments giving its --options JSON}: every figure that workflow/rules/figures.smk draws.
FIGURE_PLANS = {}


def register_figure(name, tables, options=None):
    """Let the generic figure rule of its experiment (``<experiment>_figure``, workflow/rules/figures.smk)
    draw figure ``name`` from ``tables`` (paths, in the order its plotter reads them) with ``options``
    (a function of no arguments returning the JSON object of plot options, called when the job is
    planned; None: none), and add its PDF and PNG to rule all."""
    experiment_of_figure(name)  # KeyError: a figure the registry does not list
    FIGURE_PLANS[name] = {"tables": [str(t) for t in tables], "options": options or (lambda: "{}")}
    ALL_TARGETS.extend(figure(name))
