"""The Snakemake workflow builds a theory figure from config, is a no-op the second time, and stops
on a bad config value with a message naming the key (no Python traceback)."""

import csv
import math

import pytest

from workflow_util import SNAKEMAKE, copy_workflow, edit_config, snakemake

pytestmark = pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake is not installed in this environment")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A copy of the workflow with fig6 built once (tau_max lowered to keep the test short)."""
    workdir = copy_workflow(tmp_path_factory.mktemp("workflow"))
    edit_config(workdir, lambda c: c["theory"]["fig6"].update(tau_max=24))
    result = snakemake(workdir, "--cores", "1", "figures/fig6.pdf")
    return workdir, result


def test_builds_fig6_from_config(built):
    workdir, result = built
    assert result.returncode == 0, result.stdout + result.stderr
    with open(workdir / "results" / "theory" / "fig6.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["tau"]) for r in rows] == list(range(25))  # theory.fig6.tau_max from the config
    for r in rows:
        tau = int(r["tau"])
        assert float(r["alpha_star"]) == pytest.approx(2 * math.sin(math.pi / (4 * tau + 2)), rel=1e-9)
    pdf, png = workdir / "figures" / "fig6.pdf", workdir / "figures" / "fig6.png"
    assert pdf.read_bytes()[:5] == b"%PDF-" and png.read_bytes()[:4] == b"\x89PNG"
    assert (workdir / "logs" / "quick" / "theory" / "fig6.table.log").exists()


def test_second_run_has_nothing_to_do(built):
    workdir, result = built
    assert result.returncode == 0
    again = snakemake(workdir, "-n", "figures/fig6.pdf")
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.parametrize("edit,key", [
    (lambda c: c["theory"]["fig6"].update(tau_max=-1), "theory.fig6.tau_max"),
    (lambda c: c["theory"]["fig6"].update(tau_maximum=3), "tau_maximum"),
    (lambda c: c["theory"]["fig10"].update(momenta=[0.5, 1.0]), "theory.fig10.momenta"),
])
def test_bad_config_names_the_key(tmp_path, edit, key):
    workdir = copy_workflow(tmp_path)
    edit_config(workdir, edit)
    result = snakemake(workdir, "--cores", "1", "-n", "figures/fig6.pdf")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert key in output
    assert "Traceback" not in output
