"""The whole paper scale, end to end, in smoke mode (real Snakemake): every target of ``rule all``
at ``--config scale=paper smoke=true`` builds, writes only results/paper-smoke/ and figures/smoke/,
keeps the paper's networks, and leaves the plan of a real paper-scale run unchanged.

A file of its own, the longest of the suite: one build (a module fixture) that the tests below read.
Under ``pytest -n 2 --dist loadfile`` a file stays on one worker, so the smoke unit tests of
tests/test_smoke.py run on the other worker meanwhile; conftest.py starts the longest files first.
"""

import json
import shutil
from pathlib import Path

import pytest

from workflow_util import SNAKEMAKE, copy_workflow, snakemake

pytestmark = [pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake is not installed"), pytest.mark.slow]

PAPER_FIGURES = ("fig2", "fig12", "fig4", "delayed_eos")


def paper_plan(workdir):
    """The training jobs and shell commands a real paper-scale run would do (dry run). The exact
    theory tables (results/theory/) are the same at every scale, so a smoke run may build them."""
    result = snakemake(workdir, "-n", "-p", "--config", "scale=paper")
    assert result.returncode == 0, result.stderr[-2000:]
    return sorted(line for line in result.stdout.splitlines()
                  if ("delay-stability" in line or line.startswith("rule ")) and "theory" not in line)


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """(project, paper plan before the build): every paper target built in smoke mode, once."""
    workdir = copy_workflow(tmp_path_factory.mktemp("smoke-e2e") / "project")
    before = paper_plan(workdir)
    try:
        result = snakemake(workdir, "--cores", "2", "--config", "scale=paper", "smoke=true", timeout=1500)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        yield workdir, before
    finally:  # the paper's networks at paper scale: the build's checkpoints take gigabytes
        shutil.rmtree(workdir / "results", ignore_errors=True)


def test_every_paper_target_runs_end_to_end_in_smoke_mode(build):
    workdir, _ = build
    for name in PAPER_FIGURES:
        assert (workdir / "figures" / "smoke" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert not (workdir / "figures" / f"{name}.png").exists()  # the real figures are not touched
    rows = (workdir / "results" / "paper-smoke" / "stability" / "thresholds.csv").read_text().splitlines()
    assert len(rows) >= 3
    assert not (workdir / "results" / "paper").exists()


def test_the_smoke_runs_train_the_papers_networks(build):
    smoke_dir = build[0] / "results" / "paper-smoke"
    run = json_load(smoke_dir / "stability" / "baseline" / "run.json")
    assert run["spec"]["model"] == "vgg11" and run["spec"]["dataset"] == "cifar10"  # the paper's network
    run = json_load(smoke_dir / "shifted_stability" / "baseline" / "run.json")
    assert run["spec"]["model"] == "fc3x1024" and run["spec"]["dataset"] == "mnist"


def test_finished_paper_runs_keep_no_in_flight_copies(build):
    """A finished run's final.pt holds the weights, not the tau + 1 in-flight gradients nor the
    starting weights: table 1's asynchronous VGG-11 (tau = 32) keeps its model and small state only."""
    from delay_stability.train import load_checkpoint

    run = build[0] / "results" / "paper-smoke" / "generalization" / "table1" / "VGG-11" / "asgd" / "seed0"
    ckpt = load_checkpoint(str(run / "final.pt"))
    assert ckpt["spec"]["optimizer"]["delay"] == 32 and ckpt["optimizer"]["delayed"]["grads"] is None
    weights = sum(t.numel() * t.element_size() for t in ckpt["model"].values())
    assert ckpt["init_params"] is None
    assert (run / "final.pt").stat().st_size < 1.2 * weights  # the weights (+ small state)


def test_a_smoke_build_leaves_the_paper_plan_unchanged(build):
    workdir, before = build
    assert paper_plan(workdir) == before  # a real paper-scale run would do exactly what it would have done


def json_load(path):
    return json.loads(Path(path).read_text())
