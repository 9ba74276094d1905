"""Training specs (delay_stability.spec): the names it checks against agree with the library's,
it imports no torch, and the helpers it offers (deep merge, overrides) do what they say."""

import inspect
import subprocess
import sys

import pytest

from delay_stability import spec
from delay_stability.errors import UserError


def test_model_arguments_are_the_builders_signatures():
    from delay_stability.models import MODELS

    assert list(spec.MODEL_ARGS) == list(MODELS)
    for name, builder in MODELS.items():
        params = inspect.signature(builder).parameters
        defaults = {k: p.default for k, p in params.items()}
        assert spec.MODEL_ARGS[name] == defaults, name


def test_names_agree_with_the_library():
    from delay_stability import asgd, data, theory

    assert spec.SCHEDULES is asgd.SCHEDULES and asgd.VARIANTS is theory.VARIANTS
    assert set(spec.WORKER_SCHEDULES) < set(spec.SCHEDULES) and "iid" in spec.SCHEDULES
    assert all(new in spec.SCHEDULES for new in spec.SCHEDULE_ALIASES.values())
    assert spec.VELOCITY_UNITS is asgd.VELOCITY_UNITS
    assert set(spec.DTYPE_NAMES) == set(data.DTYPES)
    assert data.dataset_args_with_defaults is spec.dataset_args_with_defaults


def test_the_config_schema_names_only_worker_schedules_for_named_arms():
    import pathlib

    import yaml

    schema = yaml.safe_load((pathlib.Path(__file__).resolve().parents[1] / "workflow" / "schemas"
                             / "config.schema.yaml").read_text())
    arms = schema["$defs"]["named_run"]["properties"]["schedule"]["enum"]
    assert set(arms) <= set(spec.WORKER_SCHEDULES) - {"replay"}  # replay needs a log file, not an arm key


def test_spec_imports_no_torch():
    code = ("import sys; from delay_stability import spec; "
            "spec.validate_spec({'model': 'mlp', 'epochs': 1, 'lr': 0.1}); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("bad, key", [
    ({"epochs": "five thousand"}, "epochs"),
    ({"lr": 0}, "lr"),
    ({"lr": -1}, "lr"),
    ({"model": "resnet9000"}, "model"),
    ({"dataset": "mnist2"}, "dataset"),
    ({"optimizer": {"delay": 2, "momentun": 0.9}}, "optimizer.momentun"),
    ({"optimizer": {"momentum": 1.0, "variant": "momentum"}}, "optimizer.momentum"),
    ({"optimizer": {"delay": -1}}, "optimizer.delay"),
    ({"model_args": {"hiden": [8]}}, "model_args.hiden"),
])
def test_a_bad_spec_names_its_key(bad, key):
    base = {"model": "mlp", "epochs": 1, "lr": 0.1}
    with pytest.raises(UserError, match=f"spec key '{key}'"):
        spec.validate_spec({**base, **bad})


def test_deep_merge_merges_nested_mappings_and_copies():
    base = {"a": 1, "opt": {"delay": 2, "momentum": 0.0}}
    out = spec.deep_merge(base, {"opt": {"momentum": 0.9}, "b": 2})
    assert out == {"a": 1, "b": 2, "opt": {"delay": 2, "momentum": 0.9}}
    assert base == {"a": 1, "opt": {"delay": 2, "momentum": 0.0}}
    assert spec.deep_merge(base, None) == base


def test_overrides_parse_values_as_yaml():
    out = spec.apply_overrides({"lr": 0.1}, ["optimizer.delay=8", "lr=0.01", "stop.escape=null"])
    assert out == {"lr": 0.01, "optimizer": {"delay": 8}, "stop": {"escape": None}}
    # YAML reads 1e-2 (no dot) as a string; validate_spec takes it as the number
    assert spec.validate_spec({"model": "mlp", "epochs": 1, **spec.apply_overrides({}, ["lr=1e-2"])})["lr"] == 0.01
    with pytest.raises(UserError, match="KEY=VALUE"):
        spec.apply_overrides({}, ["nonsense"])


@pytest.mark.parametrize("seed", [1, 7, 123456])
def test_a_seed_shares_the_validation_of_seed_0_and_gives_the_same_spec(seed):
    """The remembered validation of a spec with seed s (through seed 0's) is exactly the
    uncached validation of that spec."""
    base = {"model": "mlp", "dataset": "digits", "lr": 0.05, "epochs": 3, "optimizer": {"delay": 2, "momentum": 0.5, "variant": "momentum"}}
    spec._VALIDATED.clear()
    got = spec.validate_spec({**base, "seed": seed})
    assert got == spec._validate_spec({**base, "seed": seed}) and got["seed"] == seed
    assert spec.validate_spec({**base, "seed": 0})["seed"] == 0  # seed 0's own entry is untouched
    assert list(got) == list(spec._validate_spec({**base, "seed": seed}))  # same key order


@pytest.mark.parametrize("seed", [-1, True, 1.5, "3"])
def test_a_bad_seed_is_still_named(seed):
    with pytest.raises(UserError, match="seed"):
        spec.validate_spec({"model": "mlp", "dataset": "digits", "lr": 0.05, "epochs": 3, "seed": seed})


def test_a_bad_key_beside_a_seed_is_still_named():
    with pytest.raises(UserError, match="lr"):
        spec.validate_spec({"model": "mlp", "dataset": "digits", "epochs": 3, "seed": 4, "lr": -1.0})
