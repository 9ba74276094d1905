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
from ..spec import deep_merge, validate_spec


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


def _key_path(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def validate(cfg: dict, schema: dict) -> None:
    """Check ``cfg`` against the schema and fill in its defaults, in place; ConfigError listing
    every problem, one line each, naming the key."""
    import jsonschema

    if not isinstance(cfg, dict):
        raise ConfigError("the configuration must be a mapping of keys (config.yaml)")
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
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
    settings; built by the experiment modules as the rules build them. Specs that the runs
    complete themselves (a continuation's lr and start, the scaled edge-of-stability runs' lr) get
    stand-in values."""
    from . import eos, generalization, imagenet, momentum, spikes, stability, table1

    exp = cfg[scale]
    for name in stability.EXPERIMENTS:
        if name in exp:
            block = exp[name]
            baseline = with_run_settings(block["baseline"], cfg)
            yield f"{name}.baseline", baseline
            yield f"{name}.continuation", deep_merge(baseline, block["continuation"])
            for variant, m in sorted({s[:2] for s in stability.searches(block)}):
                yield f"{name}.continuation", stability.probe_spec(
                    baseline, block["continuation"], lr=1.0, tau=0, variant=variant, momentum=m,
                    init_checkpoint="kicked.pt", epochs=1)
    for figure, name in stability.figure_experiments(exp).items():
        try:
            stability.figure_searches(exp[name], figure)
        except UserError as exc:
            raise ConfigError(f"invalid configuration: {scale}.{name}.{exc}") from None
    if "eos" in exp:
        block = exp["eos"]
        base = with_run_settings(block["train"], cfg)
        try:
            for run in eos.fixed_runs(block, base).values():
                yield f"eos.fixed ({run.name})", run.spec
        except UserError as exc:
            raise ConfigError(f"invalid configuration: {scale}.eos.fixed: {exc}") from None
        if block.get("scaled"):
            yield "eos.scaled.burn_in", eos.burn_in_spec(block, base)
            for run in eos.scaled_runs(block):
                yield "eos.scaled", {**eos.scaled_spec(block, base, *run, "burn_in.pt"), "lr": 1.0}
    # (block, module, whether the module's messages lack the block name): each module's
    # all_specs(block, base) yields (key, spec) of every run it trains; table1's base is a function.
    for name, module, named in (("generalization", generalization, False), ("table1", table1, False),
                                ("imagenet", imagenet, True), ("fig11", spikes, True),
                                ("momentum", momentum, False)):
        if name in exp:
            block = exp[name]
            base = ((lambda spec: with_run_settings(spec, cfg)) if module is table1
                    else with_run_settings(block["train"], cfg))
            try:
                yield from module.all_specs(block, base)
            except UserError as exc:
                raise ConfigError(f"invalid configuration: {scale}.{name + ': ' if named else ''}{exc}") from None
    if "mitigations" in exp:
        yield from _mitigation_specs(exp, scale, cfg)
    if "random_staleness" in exp:
        yield from _random_staleness_specs(exp, scale, cfg)


def _mitigation_specs(exp: dict, scale: str, cfg: dict):
    """A continuation spec per rule of the mitigations block (its source experiment must exist)."""
    from . import mitigations, stability

    block = exp["mitigations"]
    source = block["from"]
    if source not in exp:
        raise ConfigError(f"invalid configuration: {scale}.mitigations.from: no {source!r} block at this scale")
    try:
        rules = mitigations.rules(block)
    except (UserError, ValueError) as exc:
        raise ConfigError(f"invalid configuration: {scale}.mitigations.rules: {exc}") from None
    baseline = with_run_settings(exp[source]["baseline"], cfg)
    for label, rule in rules.items():
        yield f"mitigations.rules.{label}", stability.probe_spec(
            baseline, exp[source]["continuation"], lr=1.0, tau=1, variant="plain", momentum=0.0,
            init_checkpoint="kicked.pt", epochs=1, mitigation=mitigations.optimizer_mitigation(rule, 1.0))


def _random_staleness_specs(exp: dict, scale: str, cfg: dict):
    """A continuation spec per searched model of the random_staleness block (its source must exist)."""
    from . import random_staleness, stability

    block = exp["random_staleness"]
    source = block["from"]
    if source not in exp:
        raise ConfigError(f"invalid configuration: {scale}.random_staleness.from: no {source!r} block at this scale")
    try:
        models = random_staleness.searched_models(block)
    except (UserError, ValueError) as exc:
        raise ConfigError(f"invalid configuration: {scale}.{exc}") from None
    baseline = with_run_settings(exp[source]["baseline"], cfg)
    for label, model in models.items():
        spec = stability.probe_spec(baseline, exp[source]["continuation"], lr=1.0, tau=1, variant="plain",
                                    momentum=0.0, init_checkpoint="kicked.pt", epochs=1)
        yield f"random_staleness.models.{label}", deep_merge(
            spec, {"optimizer": random_staleness.optimizer_overrides(model)})


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
                validate_spec(spec)
            except UserError as exc:
                raise ConfigError(f"invalid configuration: {scale}.{key}: {exc}") from None
    return cfg
