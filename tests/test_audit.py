"""`delay-stability audit` on a real Snakemake workflow (a tiny copy that builds fig6): ok when up to
date, a deleted table reported missing while the figure exists, a config change reported as stale
params, exit 2 without a Snakefile; and the run-folder facts on hand-made run folders, a diverged
run listed without failing the audit."""

import importlib.util
import json
import shutil

import pytest
import yaml

from delay_stability.experiments import audit
from workflow_util import copy_workflow, edit_config, snakemake

needs_snakemake = pytest.mark.skipif(importlib.util.find_spec("snakemake") is None,
                                     reason="snakemake is not installed in this environment")
FIG6 = ("figures/fig6.pdf", "results/theory/fig6.csv")


@pytest.fixture(scope="module")
def built(tiny_build):
    """A copy of the workflow with figures/fig6.pdf built (tau_max 8): the tiny build below, whose
    targets include it (one build for the file)."""
    config = yaml.safe_load((tiny_build / "config.yaml").read_text())
    assert config["theory"]["fig6"]["tau_max"] == 8 and (tiny_build / FIG6[0]).exists()
    return tiny_build


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


# ------------------------------------------------------------------------------------------------
# validity by content: manifests, copies without mtimes, damage found and repaired (real Snakemake)
# ------------------------------------------------------------------------------------------------

TINY_TARGETS = ("figures/fig6.pdf", "results/quick/stability/minimum/polish.json")
BASELINE = "results/quick/stability/baseline"


def _tiny(config):
    from workflow_util import tiny_stability, tiny_theory

    tiny_stability(config)
    tiny_theory(config)


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory):
    """A tiny build: theory fig6 and the stability experiment's baseline run (the generic train rule)
    polished to a minimum: 4 jobs."""
    workdir = copy_workflow(tmp_path_factory.mktemp("tiny") / "built")
    edit_config(workdir, _tiny)
    result = snakemake(workdir, "--cores", "2", *TINY_TARGETS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir


def _fresh_clone_with_copied_results(built, dest):
    """The workflow files into ``dest`` (a fresh clone: no .snakemake) and results/ and figures/
    copied as `cp -r` does: new mtimes (in copy order), no metadata."""
    workdir = copy_workflow(dest)
    shutil.copy(built / "config.yaml", workdir / "config.yaml")
    for folder in ("results", "figures"):
        shutil.copytree(built / folder, workdir / folder, copy_function=shutil.copyfile)
    return workdir


def _digests(workdir):
    from delay_stability.files import sha256_file

    return {str(p.relative_to(workdir)): sha256_file(p) for root in ("results", "figures")
            for p in sorted((workdir / root).rglob("*")) if p.is_file() and "/." not in str(p.relative_to(workdir))}


def _planned(result):
    """{rule: count} of a dry run's job stats (empty when nothing is to be done)."""
    out = result.stdout + result.stderr
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:", 1)[1].split("total", 1)[0]
    return {w[0]: int(w[1]) for w in (line.split() for line in table.splitlines()) if len(w) == 2 and w[1].isdigit()}


@needs_snakemake
def test_every_folder_has_a_manifest_and_kept_copies_are_not_links(tiny_build):
    manifest = json.loads((tiny_build / BASELINE / ".manifest.json").read_text())["files"]
    from delay_stability.files import sha256_file

    assert set(manifest) == {"final.pt", "metrics.csv", "summary.json", "run.json", "spec.json"}
    for name, entry in manifest.items():
        assert entry["sha256"] == sha256_file(tiny_build / BASELINE / name)
        assert entry["record"]["rule"] == "train"
    kept = next((tiny_build / BASELINE / ".finished").iterdir())
    assert (kept / "metrics.csv").stat().st_nlink == 1 and (tiny_build / BASELINE / "metrics.csv").stat().st_nlink == 1
    assert len((kept / "MANIFEST").read_text().split()) == 2 * 5  # name and SHA-256 of each
    for root in ("results/theory", "figures", "results/quick/stability/minimum"):
        assert (tiny_build / root / ".manifest.json").exists(), root


@needs_snakemake
def test_results_copied_without_mtimes_plan_nothing_then_exactly_a_changed_option(tiny_build, tmp_path):
    workdir = _fresh_clone_with_copied_results(tiny_build, tmp_path / "clone")
    assert not (workdir / ".snakemake").exists()
    before = _digests(workdir)
    assert _planned(snakemake(workdir, "-n", *TINY_TARGETS)) == {}
    assert _digests(workdir) == before  # only times and Snakemake's records were restored
    edit = lambda c: c["quick"]["stability"]["baseline"].update(epochs=301)  # noqa: E731
    edit_config(workdir, edit)
    planned = _planned(snakemake(workdir, "-n", *TINY_TARGETS))
    assert planned == {"train": 1, "stability_minimum": 1}
    with_metadata = shutil.copytree(tiny_build, tmp_path / "with-metadata", symlinks=True)  # cp -a
    edit_config(with_metadata, edit)
    assert _planned(snakemake(with_metadata, "-n", *TINY_TARGETS)) == planned  # as Snakemake's own records plan


@needs_snakemake
def test_a_truncated_metrics_csv_is_named_with_the_command_that_repairs_exactly_it(tiny_build, tmp_path, run_cli):
    workdir = shutil.copytree(tiny_build, tmp_path / "damaged", symlinks=True)
    before = _digests(workdir)
    damaged = workdir / BASELINE / "metrics.csv"
    with open(damaged, "r+b") as f:  # in place, as a crash or a bad disk would
        f.truncate(40)
    status, out, _ = run_cli("audit", "--directory", workdir, "--target", TINY_TARGETS[1])
    assert status == 1
    first = out.splitlines()[0]
    assert "NOT up to date: 1 damaged, 0 missing, 0 stale" in first, out
    assert f"damaged: {BASELINE}/metrics.csv (checksum differs from its manifest)" in out
    command = next(line for line in out.splitlines() if line.startswith("repair"))
    assert command.endswith(f"snakemake --cores 2 {BASELINE}/final.pt"), command  # one output names the job
    result = snakemake(workdir, *command.split(": ", 1)[1].split()[1:])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "restored the finished run" in (workdir / "logs/train" / f"{BASELINE}.log").read_text()
    assert _digests(workdir) == before  # repaired from the verified kept copy, nothing else touched
    assert _planned(snakemake(workdir, "-n", *TINY_TARGETS)) == {}
    status, out, _ = run_cli("audit", "--directory", workdir, "--target", TINY_TARGETS[1])
    assert status == 0 and "ok: 0 damaged, 0 missing, 0 stale" in out.splitlines()[0], out


@needs_snakemake
def test_a_damaged_kept_copy_is_not_restored(tiny_build, tmp_path):
    workdir = shutil.copytree(tiny_build, tmp_path / "kept", symlinks=True)
    kept = next((workdir / BASELINE / ".finished").iterdir())
    (kept / "final.pt").write_bytes(b"damaged")
    (workdir / BASELINE / "final.pt").write_bytes(b"damaged too")
    result = snakemake(workdir, "--cores", "2", f"{BASELINE}/final.pt")
    assert result.returncode == 0, result.stderr[-3000:]
    log = (workdir / "logs/train" / f"{BASELINE}.log").read_text()
    assert "is damaged (checksum differs); computing the run again" in log and "completed after" in log


@pytest.mark.parametrize("name", ["results/quick/x/final.pt", "results/quick/" + "deep/" * 60 + "final.pt"])
def test_the_record_listing_finds_exactly_the_records_that_exist(tmp_path, name):
    """A short path's record is one name in .snakemake/metadata, a long one's lies in '@' folders:
    the listing answers as reading the record does, with and without a record (and an incomplete
    mark), so that a sync reads only records that are there."""
    record = audit.metadata_record_path(tmp_path, name)
    split = record.parent.name.startswith("@")  # a long path (its record is read, not looked up)
    assert split == (len(name) > 150)
    listing = audit._RecordListing(tmp_path)
    assert audit._read_record(tmp_path, name, listing) is None and audit._read_record(tmp_path, name) is None
    assert listing.may_exist(name, "incomplete") == split and not audit._running_or_killed(tmp_path, name)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"endtime": 5.0}))
    listing = audit._RecordListing(tmp_path)
    assert audit._read_record(tmp_path, name, listing) == {"endtime": 5.0} == audit._read_record(tmp_path, name)
    assert listing.may_exist(name, "metadata") and not listing.may_exist("results/other.csv", "metadata")
    audit.mark_incomplete(tmp_path, name)
    assert audit._RecordListing(tmp_path).may_exist(name, "incomplete")
