# The one place that knows the config's shape, the paths and the grids.
import hashlib
import json
import shlex
import sys
from pathlib import Path

import jsonschema
import yaml
from snakemake.exceptions import WorkflowError

from delay_stability.pipeline import deep_merge

SCHEMA_PATH = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"


def _key_path(error):
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def validate_config(cfg):
    """Validate the config against the schema; one clear line per problem, naming the key."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for err in sorted(validator.iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path))):
        if err.validator == "additionalProperties":
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            problems.append(f"unknown key(s) {', '.join(map(repr, extra))} under '{_key_path(err)}'")
        else:
            problems.append(f"config key '{_key_path(err)}': {err.message}")
    if problems:
        raise WorkflowError("invalid configuration:\n  " + "\n  ".join(problems))
    if cfg["scale"] not in cfg:
        raise WorkflowError(f"config key 'scale': '{cfg['scale']}' has no block '{cfg['scale']}:' in the config")
    # defaults for optional top-level keys
    cfg.setdefault("data_dir", "data")
    cfg.setdefault("download", False)
    cfg.setdefault("device", "auto")


validate_config(config)

SCALE = config["scale"]
EXP = config[SCALE]                          # the experiment blocks of the current scale
RESULTS = Path(config["results_dir"])
THEORY_DIR = RESULTS / "theory"              # exact results, the same at every scale
SCALE_DIR = RESULTS / SCALE                  # everything trained at this scale
FIGURES = Path(config["figures_dir"])
LOGS = Path("logs") / SCALE

#: The package CLI, run by the Python that runs Snakemake (no need to activate the venv).
DS = f"{shlex.quote(sys.executable)} -m delay_stability.cli"

#: Figures that `rule all` builds; each rule file appends its own.
ALL_TARGETS = []


def figure(name):
    """The PDF and its PNG twin (for the README) of a figure target."""
    return [str(FIGURES / f"{name}.pdf"), str(FIGURES / f"{name}.png")]


def src_hash(*modules):
    """Hash of the named package modules (e.g. "asgd", "train"): rules that compute take it as a
    parameter, so that editing the library reruns what it affects and nothing else (Snakemake does
    not see edits to imported modules)."""
    h = hashlib.sha256()
    for name in sorted(modules):
        p = Path(workflow.basedir) / "src" / "delay_stability" / f"{name}.py"
        h.update(name.encode())
        h.update(p.read_bytes() if p.exists() else b"")
    return h.hexdigest()[:12]


def spec_hash(spec):
    """A short, stable hash of a training spec: changing a training option changes the run."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]


def with_run_settings(spec):
    """Add the config's run-wide settings (device, data_dir, download) to a training spec."""
    spec = deep_merge(spec, {"device": config["device"]})
    if spec.get("dataset") in ("mnist", "cifar10", "cifar100"):
        args = {"root": config["data_dir"], "download": config["download"]}
        spec["dataset_args"] = {**args, **spec.get("dataset_args", {})}
    return spec


def device_flag():
    """`--device D ` for the CLI, or nothing when the config says auto (cuda if available)."""
    return "" if config["device"] == "auto" else f"--device {config['device']} "


GPU_SLOT = Path(workflow.basedir) / "workflow" / "scripts" / "gpu_slot.py"


def gpus_per_job():
    """GPUs of one training job: 1 at paper scale, 0 at quick scale."""
    return 1 if SCALE == "paper" else 0


#: The CLI for commands that use the GPU: on a multi-GPU machine each job gets a GPU of its own
#: (workflow/scripts/gpu_slot.py sets CUDA_VISIBLE_DEVICES; it does nothing with --gpus 0 or under SLURM).
DS_GPU = f"{shlex.quote(sys.executable)} {shlex.quote(str(GPU_SLOT))} --gpus {gpus_per_job()} -- {DS}"


def gpu_resources(runtime_quick=30, runtime_paper=24 * 60, mem_quick=2000, mem_paper=32000):
    """Resources of a training rule: a GPU at paper scale, none at quick scale."""
    paper = SCALE == "paper"
    return dict(
        gpu=gpus_per_job(),
        runtime=runtime_paper if paper else runtime_quick,
        mem_mb=mem_paper if paper else mem_quick,
    )


# ------------------------------------------------------------------ minima stability (stability.smk)
STABILITY_EXPERIMENTS = [e for e in ("stability", "shifted_stability") if e in EXP]
# fig4 (right) reads the experiment that holds shifted momentum: its own at paper scale, else the main one.
FIG4_EXPERIMENT = "shifted_stability" if "shifted_stability" in EXP else "stability"
STABILITY_TABLES = SCALE_DIR / "stability"


def stability_dir(exp):
    return SCALE_DIR / exp


def stability_baseline_spec(exp):
    return with_run_settings(EXP[exp]["baseline"])


def stability_searches(exp):
    """(variant, momentum, tau) of every threshold search of an experiment."""
    block = EXP[exp]
    out = []
    for entry in block["variants"].values():
        for m in entry["momenta"]:
            for tau in block["taus"]:
                out.append((entry["variant"], float(m), int(tau)))
    return out


def search_file(exp, variant, m, tau):
    return str(stability_dir(exp) / "search" / f"{variant}-m{m:g}" / f"tau{tau}" / "search.json")


def all_search_files(wildcards=None):
    return [search_file(e, *s) for e in STABILITY_EXPERIMENTS for s in stability_searches(e)]


def polish_flags(polish):
    if not polish:
        return "--max-iter 0"
    return f"--max-iter {polish.get('max_iter', 1000)} --grad-tol {polish.get('grad_tol', 1e-9)}"


def sharpness_flags(block):
    s = block["sharpness"]
    flags = [f"--method {s.get('method', 'lanczos')}", f"--tol {s.get('tol', 1e-4)}",
             f"--bn-mode {s.get('bn_mode', 'train')}"]
    if "max_iter" in s:
        flags.append(f"--max-iter {s['max_iter']}")
    if "subset" in s:
        flags.append(f"--subset {s['subset']}")
    return " ".join(flags)


def all_curve_files(wildcards=None):
    """summary.json of every fig. 12 continuation (plain A-SGD at factor·η_max)."""
    out = []
    for e in STABILITY_EXPERIMENTS:
        curves = EXP[e].get("curves")
        if not curves:
            continue
        for tau in curves["taus"]:
            for f in curves["lr_factors"]:
                out.append(str(stability_dir(e) / "curves" / f"tau{tau}" / f"x{float(f):g}" / "summary.json"))
    return out
