# The one place that knows the config's shape, the paths and the grids.
import hashlib
import json
from pathlib import Path

import jsonschema
import yaml
from snakemake.exceptions import WorkflowError

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

#: Figures that `rule all` builds; each rule file appends its own.
ALL_TARGETS = []


def figure(name):
    """The PDF and its PNG twin (for the README) of a figure target."""
    return [str(FIGURES / f"{name}.pdf"), str(FIGURES / f"{name}.png")]


def src_hash():
    """Hash of the package source: training rules take it as a parameter, so that editing the
    library reruns the training it affects (Snakemake does not see edits to imported modules)."""
    h = hashlib.sha256()
    for p in sorted((Path(workflow.basedir) / "src" / "delay_stability").rglob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def spec_hash(spec):
    """A short, stable hash of a training spec: changing a training option changes the run."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]


def deep_merge(base, override):
    """A copy of `base` with `override` merged in, recursively for nested dicts."""
    out = dict(base)
    for k, v in (override or {}).items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def with_run_settings(spec):
    """Add the config's run-wide settings (device, data_dir, download) to a training spec."""
    spec = deep_merge(spec, {"device": config["device"]})
    if spec.get("dataset") in ("mnist", "cifar10", "cifar100"):
        args = {"root": config["data_dir"], "download": config["download"]}
        spec["dataset_args"] = {**args, **spec.get("dataset_args", {})}
    return spec


def gpu_resources(runtime_quick=30, runtime_paper=24 * 60, mem_quick=2000, mem_paper=32000):
    """Resources of a training rule: a GPU at paper scale, none at quick scale."""
    paper = SCALE == "paper"
    return dict(
        gpu=1 if paper else 0,
        runtime=runtime_paper if paper else runtime_quick,
        mem_mb=mem_paper if paper else mem_quick,
    )
