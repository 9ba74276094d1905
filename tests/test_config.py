"""The workflow's config is checked whole before any job runs (delay_stability.experiments.config):
generated mutations of config.yaml — unknown keys at every level, wrong types, out-of-range values,
empty grids, unknown names, a scale with no block — each fail with a message naming the key, in
process (hundreds of them) and through the real `snakemake -n` (a sample), never with a traceback
and never starting a job."""

import copy
import random

import pytest
import yaml

from delay_stability.experiments import config as config_check
from workflow_util import REPO, SNAKEMAKE, copy_workflow, snakemake

SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
BASE = yaml.safe_load((REPO / "config.yaml").read_text())


def leaves(node, path=()):
    """(path, value) of every leaf and every mapping of a config tree."""
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from leaves(v, (*path, k))
    elif isinstance(node, list) and node and not all(isinstance(v, (int, float)) for v in node):
        for i, v in enumerate(node):
            yield from leaves(v, (*path, i))
    else:
        yield path, node


def set_at(cfg, path, value):
    node = cfg
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value


def named(path):
    """The last key of a path that is a name (list indices are not)."""
    return next(str(p) for p in reversed(path) if not isinstance(p, int))


def mutations(scale):
    """(description, mutated config, a key the message must name) for one scale's config."""
    base = copy.deepcopy(BASE)
    other = "paper" if scale == "quick" else "quick"
    for path, value in leaves(base):
        if path and path[0] == other:
            continue
        if isinstance(value, dict):
            cfg = copy.deepcopy(base)
            target = cfg
            for p in path:
                target = target[p]
            target["zzz_typo"] = 1
            yield f"unknown key under {'.'.join(map(str, path)) or 'top'}", cfg, "zzz_typo"
            continue
        if not path or path[0] in ("results_dir", "figures_dir", "data_dir"):
            continue
        wrong = {bool: "yes", int: "five", float: "five", str: 12345, list: "five"}.get(type(value))
        if wrong is not None and not (isinstance(value, str) and path[-1] in ("name",)):
            cfg = copy.deepcopy(base)
            set_at(cfg, path, wrong)
            yield f"wrong type at {'.'.join(map(str, path))}", cfg, named(path)
        if isinstance(value, list) and value and path[-1] in ("taus", "lrs", "momenta", "seeds", "workers",
                                                                "lr_factors", "qs", "epochs"):
            cfg = copy.deepcopy(base)
            set_at(cfg, path, [])
            yield f"empty grid at {'.'.join(map(str, path))}", cfg, named(path)
    # out of range, unknown names, a scale with no block
    exp = (scale,)
    picks = [
        ((*exp, "stability", "taus"), [0, -3], "taus"),
        ((*exp, "stability", "baseline", "lr"), 0, "lr"),
        ((*exp, "stability", "baseline", "lr"), -1.0, "lr"),
        ((*exp, "stability", "baseline", "epochs"), -5, "epochs"),
        ((*exp, "stability", "baseline", "model"), "resnet9000", "model"),
        ((*exp, "stability", "baseline", "dataset"), "digitz", "dataset"),
        ((*exp, "stability", "baseline", "loss"), "hinge", "loss"),
        ((*exp, "stability", "variants", "plain", "variant"), "nesterov", "variant"),
        ((*exp, "stability", "search", "rel_tol"), 1.5, "rel_tol"),
        ((*exp, "eos", "train", "optimizer"), {"momentum": 1.0, "variant": "momentum"}, "momentum"),
        (("theory", "fig10", "momenta"), [0.5, 1.0], "momenta"),
        (("theory", "fig6", "tau_max"), -1, "tau_max"),
        (("device",), "tpu", "device"),
    ]
    if scale == "quick":
        picks += [((*exp, "generalization", "train", "lr"), 0, "lr"),
                  ((*exp, "momentum", "momenta"), [-1.0, 0.5], "momenta"),
                  ((*exp, "table1", "networks", 0, "train", "model_args"), {"hidden": "five"}, "hidden")]
    for path, value, key in picks:
        cfg = copy.deepcopy(base)
        set_at(cfg, path, value)
        yield f"out of range / unknown name at {'.'.join(map(str, path))}", cfg, key
    cfg = copy.deepcopy(base)
    cfg.pop("paper")
    cfg["scale"] = "paper"
    yield "a scale with no block", cfg, "scale"


ALL = [m for scale in ("quick", "paper") for m in mutations(scale)]


def test_the_default_config_passes_and_gets_its_defaults():
    cfg = copy.deepcopy(BASE)
    config_check.check(cfg, SCHEMA)
    assert cfg["quick"]["stability"]["search"]["scan_factor"] == 2.0
    assert cfg["quick"]["eos"]["edge_tol"] == 0.05
    assert cfg["theory"]["fig6"]["tau_max"] == 64


def test_every_generated_mutation_fails_naming_the_key():
    assert len(ALL) > 300  # the count is reported in the README ("Reliability")
    missed = []
    for description, cfg, key in ALL:
        try:
            config_check.check(cfg, SCHEMA)
        except config_check.ConfigError as exc:
            if key not in str(exc):
                missed.append((description, key, str(exc)[:200]))
            continue
        missed.append((description, key, "accepted"))
    assert not missed, missed[:10]


@pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake is not installed")
def test_a_sample_of_mutations_fails_the_real_dry_run(tmp_path):
    sample = random.Random(0).sample(ALL, 6)
    for i, (description, cfg, key) in enumerate(sample):
        workdir = copy_workflow(tmp_path / f"m{i}")
        (workdir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        result = snakemake(workdir, "-n")
        output = result.stdout + result.stderr
        assert result.returncode != 0, description
        assert key in output and "Traceback" not in output, (description, output[-1500:])
        assert not (workdir / "results").exists() and not (workdir / "logs").exists()


# ------------------------------------------------------------------------------------------------
# the YAML itself: duplicated keys and syntax errors (read strictly before Snakemake reads it)
# ------------------------------------------------------------------------------------------------


def _dup_scale(text):
    """config.yaml with ``scale: quick`` followed by ``scale: paper`` (PyYAML keeps the last)."""
    lines = text.splitlines(keepends=True)
    i = next(i for i, line in enumerate(lines) if line.startswith("scale:"))
    return "".join(lines[:i + 1] + ["scale: paper\n"] + lines[i + 1:]), i + 1


@pytest.mark.parametrize("case", ["top", "nested", "syntax", "tab"])
def test_a_duplicated_key_or_a_yaml_error_names_file_line_and_column(tmp_path, case):
    from delay_stability.errors import UserError
    from delay_stability.experiments.config import ConfigError, check_config_files

    text = (REPO / "config.yaml").read_text()
    lines = text.splitlines(keepends=True)
    if case == "top":
        text, first = _dup_scale(text)
        expected = f"line {first + 1}, column 1: duplicated key 'scale' (first given on line {first})"
    elif case == "nested":
        i = next(i for i, line in enumerate(lines) if line.strip().startswith("epochs:") and line.startswith(" "))
        text = "".join(lines[:i + 1] + [lines[i]] + lines[i + 1:])
        indent = len(lines[i]) - len(lines[i].lstrip())
        expected = f"line {i + 2}, column {indent + 1}: duplicated key 'epochs' (first given on line {i + 1})"
    elif case == "syntax":
        i = next(i for i, line in enumerate(lines) if line.startswith("data_dir:"))
        text = "".join(lines[:i + 1] + ["foo: [1, 2\n"] + lines[i + 1:])
        expected = f"line {i + 3}, column"  # where the unclosed list meets the next key
    else:
        i = next(i for i, line in enumerate(lines) if line.startswith("data_dir:"))
        text = "".join(lines[:i + 1] + ["\tfoo: 1\n"] + lines[i + 1:])
        expected = f"line {i + 2}, column 1: found character '\\t'"
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        check_config_files([str(path)])
    assert isinstance(err.value, ConfigError)
    assert str(path) in str(err.value) and expected in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_yaml_merge_keys_and_repeated_keys_in_different_mappings_are_fine():
    from delay_stability.files import load_yaml_text

    assert load_yaml_text("a: {x: 1}\nb: {x: 2}\nc: &A {p: 1}\nd:\n  <<: *A\n  p: 2\n") == \
        {"a": {"x": 1}, "b": {"x": 2}, "c": {"p": 1}, "d": {"p": 2}}


@pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake is not installed")
def test_the_real_dry_run_refuses_a_duplicated_key_naming_it(tmp_path):
    workdir = copy_workflow(tmp_path / "w")
    text, first = _dup_scale((workdir / "config.yaml").read_text())
    (workdir / "config.yaml").write_text(text)
    result = snakemake(workdir, "-n")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"config.yaml, line {first + 1}, column 1: duplicated key 'scale'" in output, output[-1500:]
    assert "Traceback" not in output and "paper" not in output.split("duplicated")[0][-200:]
    assert not (workdir / "results").exists() and not (workdir / "logs").exists()
