"""`delay-stability audit` on a real Snakemake workflow (a tiny copy that builds fig6): ok when up to
date, a deleted table reported missing while the figure exists, a config change reported as stale
params, exit 2 without a Snakefile; and the run-folder facts on hand-made run folders, a diverged
run listed without failing the audit."""

import importlib.util
import json
import shutil

import pytest

from delay_stability.experiments import audit
from workflow_util import copy_workflow, edit_config, snakemake

needs_snakemake = pytest.mark.skipif(importlib.util.find_spec("snakemake") is None,
                                     reason="snakemake is not installed in this environment")
FIG6 = ("figures/fig6.pdf", "results/theory/fig6.csv")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A copy of the workflow with figures/fig6.pdf built once (tau_max 8)."""
    workdir = copy_workflow(tmp_path_factory.mktemp("audit"))
    edit_config(workdir, lambda c: c["theory"]["fig6"].update(tau_max=8))
    result = snakemake(workdir, "--cores", "1", "figures/fig6.pdf")
    assert result.returncode == 0, result.stdout + result.stderr
    return workdir


@pytest.fixture
def project(built, tmp_path):
    """A private copy of the built project (results, figures and .snakemake metadata, mtimes kept)."""
    return shutil.copytree(built, tmp_path / "project", symlinks=True)


def audit_fig6(run_cli, workdir, tmp_path):
    path = tmp_path / "audit.json"
    status, out, err = run_cli("audit", "--directory", workdir, "--target", FIG6[0], "--json", path)
    report = json.loads(path.read_text())
    figure = report["figures"][0]
    return status, out, figure, figure["tables"][0]


@needs_snakemake
def test_an_up_to_date_figure_passes_and_names_its_table_and_code(project, run_cli, tmp_path):
    status, out, figure, table = audit_fig6(run_cli, project, tmp_path)
    assert status == 0, out
    assert (figure["figure"], figure["state"], figure["rule"]) == ("figures/fig6.pdf", "ok", "theory_figure")
    assert (table["file"], table["state"], table["rule"]) == ("results/theory/fig6.csv", "ok", "theory_table")
    assert len(table["code"]) == 12 and int(table["code"], 16) >= 0  # the rule's code=src_hash(...) param
    assert table["built"] and table["runs"] == [] and table["needs"] == []
    assert "figure figures/fig6.pdf, figures/fig6.png: ok" in out
    assert "  table results/theory/fig6.csv: ok" in out


@needs_snakemake
def test_a_deleted_table_is_missing_while_the_figure_exists(project, run_cli, tmp_path):
    (project / FIG6[1]).unlink()
    status, out, figure, table = audit_fig6(run_cli, project, tmp_path)
    assert status == 1
    assert (project / FIG6[0]).exists() and figure["state"] == "ok"
    assert (table["file"], table["state"]) == (FIG6[1], "missing")
    assert "  table results/theory/fig6.csv: missing" in out


@needs_snakemake
def test_a_config_change_makes_the_table_stale(project, run_cli, tmp_path):
    edit_config(project, lambda c: c["theory"]["fig6"].update(tau_max=9))
    status, out, figure, table = audit_fig6(run_cli, project, tmp_path)
    assert status == 1
    assert (table["state"], table["reason"]) == ("stale", "params changed")
    assert figure["state"] == "stale"  # its input will be rebuilt
    assert "table results/theory/fig6.csv: stale (params changed)" in out


@needs_snakemake
def test_without_targets_every_figure_of_the_scale_is_audited(built, run_cli):
    status, out, _ = run_cli("audit", "--directory", built, "--scale", "quick")
    assert status == 1  # the other figures are not built
    for name in ("fig6", "fig7", "fig2", "fig12", "fig4", "delayed_eos"):
        assert f"figure figures/{name}.pdf, figures/{name}.png: " in out
    assert "figure figures/fig6.pdf, figures/fig6.png: ok" in out
    assert "figure figures/fig2.pdf, figures/fig2.png: missing" in out


def test_a_folder_without_snakefile_is_a_user_error(tmp_path, run_cli):
    status, out, err = run_cli("audit", "--directory", tmp_path)
    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "no Snakefile in" in err


def test_a_bad_flag_exits_2(run_cli):
    with pytest.raises(SystemExit) as exc:
        run_cli("audit", "--scale", "huge")
    assert exc.value.code == 2


def write_run(folder, status="completed", epochs=40, diverged=False):
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({
        "spec": {"lr": 0.1}, "seed": 3, "package_version": "9.9.9", "torch_version": "2.0.0",
        "device": "cuda:0", "device_name": "NVIDIA H200", "start_time": "2026-01-01T00:00:00+00:00",
        "end_time": "2026-01-01T00:01:00+00:00"}))
    (folder / "summary.json").write_text(json.dumps({
        "status": status, "epochs_run": epochs, "steps": 10 * epochs, "seconds": 12.5,
        "diverged": diverged, "diverged_epoch": epochs if diverged else None}))


def test_run_facts_of_a_run_folder(tmp_path):
    write_run(tmp_path / "run")
    facts = audit.run_facts(tmp_path / "run")
    assert facts["status"] == "completed" and not facts["diverged"]
    assert (facts["epochs_run"], facts["steps"], facts["seconds"], facts["seed"]) == (40, 400, 12.5, 3)
    assert (facts["package_version"], facts["torch_version"]) == ("9.9.9", "2.0.0")
    assert (facts["device"], facts["device_name"]) == ("cuda:0", "NVIDIA H200")
    assert audit.run_facts(tmp_path / "absent")["status"] == "missing"


def test_diverged_runs_are_listed_and_do_not_fail_the_audit(tmp_path):
    """A trained run (outputs of a train job) and the continuations a search job writes beside its
    search.json; one continuation diverged."""
    write_run(tmp_path / "res" / "baseline")
    write_run(tmp_path / "res" / "search" / "lr1", status="escaped", epochs=5)
    write_run(tmp_path / "res" / "search" / "lr9", status="diverged", epochs=2, diverged=True)
    (tmp_path / "res" / "search" / "search.json").write_text("{}")
    jobs = [
        {"rule": "train", "input": [], "output": ["res/baseline/summary.json", "res/baseline/run.json"]},
        {"rule": "search", "input": ["res/baseline/summary.json"], "output": ["res/search/search.json"]},
        {"rule": "tables", "input": ["res/search/search.json"], "output": ["res/t.csv"]},
        {"rule": "plot", "input": ["res/t.csv"], "output": ["figures/f.pdf"]},
        {"rule": "all", "input": ["figures/f.pdf"], "output": []},
    ]
    rows = {f: {"rule": j["rule"], "status": "ok", "plan": "no update"} for j in jobs for f in j["output"]}
    report = audit.build_report(tmp_path, rows, jobs)
    assert report["ok"]
    [figure] = report["figures"]
    assert figure["figure"] == "figures/f.pdf" and [t["file"] for t in figure["tables"]] == ["res/t.csv"]
    runs = {r["folder"]: r for r in figure["tables"][0]["runs"]}
    assert set(runs) == {"res/baseline", "res/search/lr1", "res/search/lr9"}
    assert (runs["res/baseline"]["rule"], runs["res/search/lr9"]["rule"]) == ("train", "search")
    assert [r["folder"] for r in report["diverged"]] == ["res/search/lr9"]
    report["scale"] = "quick"
    text = audit.format_report(report)
    assert "    run res/search/lr9: diverged, 2 epochs, 20 steps, 12.5 s" in text
    assert "diverged runs (1" in text and "-> ok" in text


def test_the_summary_and_the_dry_run_are_parsed():
    summary = ("output_file\tdate\trule\tlog-file(s)\tstatus\tplan\n"
               "figures/a.pdf\tTue Dec  1 22:03:45 2026\tplot\tlogs/a.log\tok\tupdate pending\n"
               "res/a.csv\t-\ttable\t-\tmissing\tno update\n")
    rows = audit.parse_summary(summary)
    assert audit.classify(rows["figures/a.pdf"])[0] == "stale"
    assert audit.classify(rows["res/a.csv"]) == ("missing", "missing")
    assert audit.classify({"status": "rule implementation changed", "plan": "update pending"}) == \
        ("stale", "rule implementation changed")
    dry = ("[Tue Dec  1 22:05:01 2026]\nlocalrule plot:\n    input: res/a.csv, res/b.csv\n"
           "    output: figures/a.pdf, figures/a.png\n    jobid: 1\n    reason: Forced execution\n"
           "[Tue Dec  1 22:05:01 2026]\nrule table:\n    output: res/a.csv\n    jobid: 2\nJob stats:\n")
    assert audit.parse_dag(dry) == [
        {"rule": "plot", "input": ["res/a.csv", "res/b.csv"], "output": ["figures/a.pdf", "figures/a.png"]},
        {"rule": "table", "input": [], "output": ["res/a.csv"]},
    ]
