"""The promise: editing a table, a figure or a figure option never reruns a job that computes, and
redraws every figure that uses what was edited; at the quick scale and at the paper scale (through
smoke mode, the paper's rules on tiny data).

Snakemake reruns a finished job when its params change (its ``code`` param is the hash of the
package modules it runs, ``src_hash`` in workflow/rules/common.smk) or when a job upstream reruns.
So, instead of a completed build edited and dry-run for every edit (minutes each), the test reads
from Snakemake itself, once per scale, every rule's ``code`` param and the modules it hashes, and
then, for every edit (a line of code added to a copy of the package), recomputes each rule's hash
with the same function the workflow uses (``files.code_hash``) on the edited copy. A rule computes
unless all it runs is an experiment's tables module, its plots module and the shared plots code. A figure
option is a config value: there the test compares the commands of every job of a forced dry run
(``snakemake -n -F -p``) before and after the edit (every other param appears in its rule's command).
"""

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from delay_stability.files import code_hash, module_dependencies
from delay_stability.registry import EXPERIMENTS
from workflow_util import SNAKEMAKE, copy_workflow, edit_config, snakemake

pytestmark = pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake is not installed")

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "delay_stability"
SCALES = {"quick": [], "paper-smoke": ["--config", "scale=paper", "smoke=true"]}

#: Read every rule's code param and the modules behind it, as the workflow computed them.
PROBE = '''include: "Snakefile"


import json as _json

print("PROBE " + _json.dumps({
    _r.name: {"code": getattr(_r.params, "code", None),
              "modules": list(CODE_MODULES.get(getattr(_r.params, "code", None), ()))}
    for _r in workflow.rules
}))
'''


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    work = copy_workflow(tmp_path_factory.mktemp("promise") / "wf")
    (work / "Probe.smk").write_text(PROBE)
    return work


@pytest.fixture(scope="module", params=list(SCALES))
def plan(request, workdir):
    """One forced dry run per scale (``snakemake -n -F -p -s Probe.smk all``): every rule's code param and
    the modules behind it, and every job of the plan (rule, outputs, shell command)."""
    res = snakemake(workdir, "-n", "-F", "-p", "--cores", "1", "-s", "Probe.smk", "all", *SCALES[request.param],
                    timeout=600)  # `all` named: from Probe.smk Snakemake does not take it as the default target
    assert res.returncode == 0, res.stderr[-3000:]
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("PROBE "))
    return {"scale": request.param, "rules": json.loads(line.removeprefix("PROBE ")), "jobs": jobs_of(res.stdout)}


@pytest.fixture(scope="module")
def rules(plan):
    """rule -> {code, modules} as Snakemake plans it at one scale."""
    found = plan["rules"]
    assert found["train"]["modules"] == [f"{ROOT}.train"]
    return {name: rule for name, rule in found.items() if rule["code"]}


def hashes(rules, src):
    """rule -> its code hash over the package at ``src`` (each distinct set of modules hashed once)."""
    digests = {}
    for rule in rules.values():
        key = tuple(rule["modules"])
        if key not in digests:
            digests[key] = code_hash(rule["modules"], src, ignore=(ROOT,))
    return {name: digests[tuple(rule["modules"])] for name, rule in rules.items()}


def closures(rules, src):
    """rule -> the modules whose code its code param hashes (``files.code_hash``'s closure)."""
    return {name: set().union(*(module_dependencies(m, src) for m in rule["modules"])) - {ROOT}
            for name, rule in rules.items()}


@pytest.fixture(scope="module")
def closure(rules):
    """Each rule's closure, checked once against the workflow's own hashes and against a real
    edit: a line of code added to a module changes exactly the hashes of the rules whose closure
    holds it (the hash is over the closure's code; appending a line imports nothing new)."""
    found = closures(rules, SRC)
    assert hashes(rules, SRC) == {name: rule["code"] for name, rule in rules.items()}
    return found


def test_the_closure_is_what_an_edit_changes(rules, closure, tmp_path):
    copy = tmp_path / "src"
    shutil.copytree(SRC / ROOT, copy / ROOT, ignore=shutil.ignore_patterns("__pycache__"))
    for module in (f"{ROOT}.spec", f"{ROOT}.experiments.stability_tables"):
        path = copy / Path(*module.split(".")).with_suffix(".py")
        original = path.read_text()
        path.write_text(original + "\n_AN_EDIT = 1\n")  # changes the syntax tree
        after = hashes(rules, copy)
        path.write_text(original)
        before = {name: rule["code"] for name, rule in rules.items()}  # the copy's hashes, unedited
        assert {name for name in rules if before[name] != after[name]} == edited_reruns(closure, module)


def edited_reruns(closure, module):
    """The rules whose code param changes when a line of code is added to ``module``."""
    return {name for name, modules in closure.items() if module in modules}


#: What tables and figure rules run: each experiment's tables module and plots module, the shared plots,
#: and the claims ledger (it reads the tidy tables only).
TABLES_AND_PLOTS = ({f"{ROOT}.experiments.{e.tables}" for e in EXPERIMENTS}
                    | {f"{ROOT}.plots.{e.name}" for e in EXPERIMENTS} | {f"{ROOT}.plots", f"{ROOT}.experiments.claims"})


def compute(rules):
    """The rules that compute: every rule that runs more than tables and plots code."""
    return {name for name, rule in rules.items() if not set(rule["modules"]) <= TABLES_AND_PLOTS}


def figure_rules(rules, experiment):
    return {name for name, rule in rules.items() if f"{ROOT}.plots.{experiment.name}" in rule["modules"]}


def test_every_figure_rule_hashes_its_plots_module_and_the_shared_plots_code(rules):
    for experiment in EXPERIMENTS:
        figures = figure_rules(rules, experiment)
        assert figures, experiment.name
        for name in figures:
            assert f"{ROOT}.plots" in rules[name]["modules"], name  # plots/__init__.py, and style through it


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=lambda e: e.name)
def test_a_tables_or_plots_edit_reruns_no_compute_job_and_redraws_its_figures(rules, closure, experiment):
    figures = figure_rules(rules, experiment)
    assert edited_reruns(closure, f"{ROOT}.plots.{experiment.name}") == figures
    tables = f"{ROOT}.experiments.{experiment.tables}"
    reruns = edited_reruns(closure, tables)
    assert not reruns & compute(rules), sorted(reruns & compute(rules))
    # its own tables rules rerun (and tables that reuse its code); every figure drawn from them follows
    assert {name for name, rule in rules.items() if tables in rule["modules"]} <= reruns


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=lambda e: e.name)
def test_plans_and_figure_options_live_where_no_compute_job_reads_them(rules, closure, experiment):
    """The modules of its figure options, of its list of training specs and of its grouping of runs
    into ensembles are hashed by no job that computes (an edit there reruns tables and figures at
    most; the ensemble and training jobs take their specs as params, not as code)."""
    computed = set().union(*(closure[name] for name in compute(rules)))
    for role in ("plot_options", "specs", "ensembles"):
        function = experiment.role(role)
        if function is not None:
            assert function.__module__ not in computed, (role, function.__module__)


def test_the_shared_plots_code_redraws_every_figure_and_nothing_else(rules, closure):
    every_figure = set().union(*(figure_rules(rules, e) for e in EXPERIMENTS))
    for module in (f"{ROOT}.plots", f"{ROOT}.plots.style"):
        assert edited_reruns(closure, module) == every_figure, module


def test_the_version_reruns_nothing(rules, tmp_path):
    """The package root holds only __version__: provenance, in no code hash."""
    copy = tmp_path / "src"
    shutil.copytree(SRC / ROOT, copy / ROOT, ignore=shutil.ignore_patterns("__pycache__"))
    init = copy / ROOT / "__init__.py"
    init.write_text(init.read_text().replace("__version__ = ", "__version__ = '9.9.9' or "))
    assert hashes(rules, copy) == {name: rule["code"] for name, rule in rules.items()}


# ------------------------------------------------------------------------------------ figure options
def jobs_of(stdout):
    """(rule, outputs, shell command) of every job of a forced dry run's output, as a sorted list."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", stdout)[1:]:
        rule = re.match(r"(?:local)?rule (\w+):", block).group(1)
        output = re.search(r"^\s+output: (.*)$", block, re.M)
        command = re.search(r"^Shell command: (.*)$", block, re.M)
        jobs.append((rule, output.group(1) if output else "", command.group(1) if command else ""))
    assert len(jobs) > 20
    return sorted(jobs)


def forced_jobs(workdir, *args):
    """The jobs of a forced dry run (``snakemake -n -F -p``) in ``workdir``."""
    res = snakemake(workdir, "-n", "-F", "-p", "--cores", "1", *args, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return jobs_of(res.stdout)


def figure_option_edits(block):
    """(figure, new options) for each figure option of a stability block's ``plots``: another
    metric for fig12, one momentum fewer for fig4, another configured (variant, m) for fig2."""
    plots = block.get("plots") or {}
    configured = [(e["variant"], float(m)) for e in block["variants"].values() for m in e["momenta"]]
    if "fig12" in plots:
        yield "fig12", {**plots["fig12"], "metric": "val_error" if plots["fig12"]["metric"] != "val_error"
                        else "train_loss"}
    if "fig4" in plots and len(plots["fig4"]["momenta"]) > 1:
        yield "fig4", {**plots["fig4"], "momenta": plots["fig4"]["momenta"][:-1]}
    if "fig2" in plots:
        other = [c for c in configured if c != (plots["fig2"]["variant"], float(plots["fig2"]["momentum"]))]
        if other:
            yield "fig2", {**plots["fig2"], "variant": other[0][0], "momentum": other[0][1]}


def test_a_figure_option_reruns_no_compute_job_and_redraws_its_figure(plan, workdir):
    """Each edit in the probe's own project (smoke mode's data folder is an absolute path: another
    copy's commands would differ everywhere), its config.yaml restored after each edit."""
    scale = plan["scale"]
    args = SCALES[scale]
    original = (workdir / "config.yaml").read_text()
    config = yaml.safe_load(original)
    block_scale = "paper" if scale == "paper-smoke" else scale
    edits = [(name, figure, options) for name in ("stability", "shifted_stability") if name in config[block_scale]
             for figure, options in figure_option_edits(config[block_scale][name])]
    assert {figure for _, figure, _ in edits} >= {"fig12", "fig4"}
    before = plan["jobs"]  # the unedited plan (the probe's dry run: the same project, config and workflow)
    # what a figure option may touch: the stability tables of one figure, and the figures
    redraw = {"stability_figure_tables", "stability_figure"}
    for name, figure, options in edits:
        try:
            edit_config(workdir, lambda c: c[block_scale][name]["plots"].__setitem__(figure, options))
            after = forced_jobs(workdir, *args)
        finally:
            (workdir / "config.yaml").write_text(original)
        changed_jobs = set(after) ^ set(before)
        changed = {job[0] for job in changed_jobs}
        assert any(f"{figure}.pdf" in outputs for _, outputs, _ in changed_jobs), (figure, changed)
        assert changed <= redraw, (figure, sorted(changed - redraw))
