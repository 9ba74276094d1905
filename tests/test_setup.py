"""The set-up's pinned environment: requirements.lock pins every dependency of pyproject.toml at a
version pyproject allows, and tools/install_lock.py deals its packages into disjoint shares that
together install all of them (one pip process per share)."""

import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import install_lock  # noqa: E402


def pinned():
    """name -> version of every line of requirements.lock."""
    out = {}
    for line in install_lock.read_lock(ROOT / "requirements.lock"):
        name, sep, version = line.partition("==")
        assert sep, f"requirements.lock: {line!r} is not pinned with =="
        out[canonicalize_name(name)] = version
    return out


def test_the_lock_pins_every_dependency_at_a_version_pyproject_allows():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    versions = pinned()
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in versions, f"requirements.lock does not pin {req.name} (make lock)"
        assert req.specifier.contains(versions[name], prereleases=True), \
            f"requirements.lock pins {req.name}=={versions[name]}, pyproject.toml asks {req.specifier} (make lock)"
    assert versions["torch"] == "2.14.1" and versions["torchvision"] == "0.29.1"
    assert "delay-stability" not in versions  # the project itself is installed editable, after the lock


def test_the_shares_partition_the_lock_and_each_opens_with_a_heavy_package():
    requirements = install_lock.read_lock(ROOT / "requirements.lock")
    for jobs in (1, 2, 3, 5):
        shares = install_lock.shares(requirements, jobs)
        assert len(shares) == min(jobs, len(requirements))
        flat = [r for share in shares for r in share]
        assert sorted(flat) == sorted(requirements) and len(set(flat)) == len(flat)
        assert max(map(len, shares)) - min(map(len, shares)) <= 1  # dealt by count
        heads = [install_lock.package_name(share[0]) for share in shares]
        assert heads == list(install_lock.HEAVY[:len(shares)])


def test_read_lock_skips_comments_and_names_normalise(tmp_path):
    lock = tmp_path / "x.lock"
    lock.write_text("# header\n\nTorch_Vision==0.29.1  # pinned\nnumpy==2.0\n")
    assert install_lock.read_lock(lock) == ["Torch_Vision==0.29.1", "numpy==2.0"]
    assert install_lock.package_name("Torch_Vision==0.29.1") == "torch-vision"
    assert install_lock.main([str(tmp_path / "missing.lock")]) == 2


def test_environment_yml_asks_what_pyproject_asks():
    """Conda users get the same requirements as pip users: environment.yml's pip list is
    pyproject.toml's dependencies and test extras (and the project, editable)."""
    import yaml

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {canonicalize_name(Requirement(t).name): str(Requirement(t).specifier)
              for t in [*project["dependencies"], *project["optional-dependencies"]["test"]]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert "-e ." in pip
    listed = {canonicalize_name(Requirement(t).name): str(Requirement(t).specifier) for t in pip if t != "-e ."}
    assert listed == wanted


def test_fresh_clone_records_keep_the_earlier_runs_of_each_command():
    """benchmarks/fresh_clone.py: a new run of a command becomes the table's row and the run it
    replaces the first of the earlier runs (at most EARLIER_KEPT); other commands keep theirs."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import fresh_clone as fc

    def run(commit, s):
        return {"commit": commit, "wall_s": s, "setup_wall_s": 60.0, "measured": "2026-12-08T00:00:00+00:00"}

    records = {"figures": run("f0", 800.0), "stray": {}}
    for i in range(fc.EARLIER_KEPT + 2):
        records = fc.add_record(records, "test", run(f"t{i}", 600.0 + i))
    assert records["test"]["commit"] == f"t{fc.EARLIER_KEPT + 1}" and records["figures"]["commit"] == "f0"
    assert [r["commit"] for r in records["earlier"]["test"]] == [f"t{i}" for i in range(fc.EARLIER_KEPT, 0, -1)]
    assert "stray" not in records and "figures" not in records["earlier"]
    assert fc._total(run("x", 600.0)) == "11.0 min"
