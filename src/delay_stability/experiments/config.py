"""The workflow's configuration (config.yaml), checked whole before any job runs.

``check(config, schema)`` validates the config against workflow/schemas/config.schema.yaml, fills
in the schema's ``default:`` values (the one place defaults live) and then checks every training
spec the config implies at its scale, built by the experiment modules exactly as the rules build
them (``training_specs``), and the figure selections. A problem is a ``ConfigError`` whose lines
each name the config key. ``workflow/rules/common.smk`` calls it when Snakemake builds the DAG, so
a typo fails ``snakemake -n`` before Snakemake touches any output.
"""

from __future__ import annotations

import copy

from ..errors import UserError
from ..spec import check_spec, deep_merge


class ConfigError(UserError):
    """A mistake in config.yaml: each line of the message names a config key."""


# ------------------------------------------------------------------------------------------------
# The schema, with its defaults
# ------------------------------------------------------------------------------------------------


def _with_defaults(validator_class):
    """A jsonschema validator class that also fills in the schema's ``default:`` values."""
    import jsonschema

    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_VALIDATOR_CLASS = None


def _key_path(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def validate(cfg: dict, schema: dict) -> None:
    """Check ``cfg`` against the schema and fill in its defaults, in place; ConfigError listing
    every problem, one line each, naming the key."""
    import jsonschema

    if not isinstance(cfg, dict):
        raise ConfigError("the configuration must be a mapping of keys (config.yaml)")
    global _VALIDATOR_CLASS
    if _VALIDATOR_CLASS is None:  # extending a validator class costs more than a validation
        _VALIDATOR_CLASS = _with_defaults(jsonschema.Draft202012Validator)
    validator = _VALIDATOR_CLASS(schema)
    problems = []
    for err in sorted(validator.iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path))):
        if err.validator == "additionalProperties":
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            problems.append(f"unknown key(s) {', '.join(map(repr, extra))} under '{_key_path(err)}'")
        else:
            problems.append(f"config key '{_key_path(err)}': {err.message}")
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    if cfg["scale"] not in cfg:
        raise ConfigError(f"config key 'scale': '{cfg['scale']}' has no block '{cfg['scale']}:' in the config")


def check_config_files(paths) -> None:
    """Parse every config file that exists strictly (``files.read_yaml``: a key given twice in one
    mapping, or a YAML syntax error, is one line with the file, line and column), before Snakemake
    reads them with a loader that keeps the last of two equal keys; ConfigError otherwise."""
    import os

    from ..files import read_yaml

    for path in paths:
        if os.path.exists(path):
            try:
                read_yaml(path, "config file")
            except UserError as exc:
                raise ConfigError(f"invalid configuration: {exc}") from None


# ------------------------------------------------------------------------------------------------
# Every training spec the config implies
# ------------------------------------------------------------------------------------------------


def with_run_settings(spec: dict, cfg: dict) -> dict:
    """A training spec with the config's run-wide settings: device, and for torchvision datasets
    the data folder and whether to download."""
    spec = deep_merge(spec, {"device": cfg["device"]})
    if spec.get("dataset") in ("mnist", "cifar10", "cifar100"):
        args = {"root": cfg["data_dir"], "download": cfg["download"]}
        spec["dataset_args"] = {**args, **(spec.get("dataset_args") or {})}
    return spec


def training_specs(cfg: dict, scale: str):
    """(config key, spec) of every training run the config implies at ``scale``, with the run-wide
    settings: each experiment of the registry (``delay_stability.registry``) whose block is in the
    scale block yields its own (its ``specs`` role, as the rules build them). Specs that the runs
    complete themselves (a continuation's lr and start, the scaled edge-of-stability runs' lr) get
    stand-in values."""
    from ..registry import EXPERIMENTS

    exp = cfg[scale]

    def settings(spec):
        return with_run_settings(spec, cfg)

    for experiment in EXPERIMENTS:
        if experiment.specs is None or not any(block in exp for block in experiment.blocks):
            continue
        try:
            yield from experiment.role("specs")(exp, settings)
        except UserError as exc:
            raise ConfigError(f"invalid configuration: {scale}.{exc}") from None


#: The scale blocks of a config.
SCALES = ("quick", "paper")


def check(cfg: dict, schema: dict) -> dict:
    """The whole check: schema (defaults filled in, in place), then every training spec and figure
    selection of every scale block (not only the one that runs: a typo in the paper block is found
    on the laptop). Returns ``cfg``; ConfigError naming the key otherwise."""
    validate(cfg, schema)
    for scale in (s for s in SCALES if s in cfg):
        for key, spec in training_specs(cfg, scale):
            try:
                check_spec(spec)
            except UserError as exc:
                raise ConfigError(f"invalid configuration: {scale}.{key}: {exc}") from None
    return cfg
