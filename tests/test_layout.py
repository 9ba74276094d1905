"""The layout of the package: the library never imports an experiment or a plot, imports have no
cycle and no private name crosses a module, every command is owned by one module, and the theory
commands start without torch or matplotlib."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from delay_stability import cli, registry
from delay_stability.files import module_dependencies
from delay_stability.registry import EXPERIMENTS

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "delay_stability"


def module_name(path):
    rel = path.relative_to(SRC).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


MODULES = sorted(module_name(p) for p in PACKAGE.rglob("*.py"))
LIBRARY = [m for m in MODULES if not m.startswith(("delay_stability.experiments", "delay_stability.plots"))]


def test_the_layout_has_the_library_experiments_and_plots():
    names = {m.removeprefix("delay_stability.") for m in MODULES}
    assert {"theory", "asgd", "sharpness", "models", "data", "train", "spec", "files", "errors", "cli",
            "registry"} <= names
    assert {"experiments.grid", "experiments.theory", "experiments.stability", "experiments.stability_tables",
            "experiments.eos", "experiments.eos_tables"} <= names
    assert {"plots.style", "plots.theory", "plots.stability", "plots.eos"} <= names


REPO = SRC.parent
CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
#: Modules under experiments/ and plots/ that serve every experiment rather than being one.
HELPERS = {"grid", "plan", "config", "audit", "smoke", "style", "claims"}  # serve every experiment


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=lambda e: e.name)
def test_every_experiment_has_its_five_parts(experiment):
    """Module, plots module, config block (at both scales; theory's is top-level), test file and
    rule file, all named like the registry entry, and every role the entry names exists."""
    assert (PACKAGE / "experiments" / f"{experiment.name}.py").is_file()
    assert (PACKAGE / "plots" / f"{experiment.name}.py").is_file()
    assert (REPO / experiment.test_file).is_file()
    assert (REPO / experiment.rules).is_file()
    if experiment.blocks:
        for scale in ("quick", "paper"):
            assert experiment.name in CONFIG[scale], f"{scale}.{experiment.name}"
            assert set(CONFIG[scale]) & set(experiment.blocks)
    else:
        assert experiment.name in CONFIG
    for role in ("specs", "ensembles", "tables", "plot_options", "smoke"):
        if getattr(experiment, role) is not None:
            assert callable(experiment.role(role)) or role == "tables", role


def test_the_registry_is_the_one_list_of_experiments():
    """Every experiment module, plots module, rule file, config block and figure belongs to one
    registry entry, and every figure the registry names is drawn by its experiment's plots module."""
    names = [e.name for e in EXPERIMENTS]
    assert len(set(names)) == len(names)
    modules = {p.stem for p in (PACKAGE / "experiments").glob("*.py")} - HELPERS - {"__init__"}
    tables = {e.tables for e in EXPERIMENTS if e.tables}
    assert modules - tables == set(names) - tables and set(names) <= modules
    assert {p.stem for p in (PACKAGE / "plots").glob("*.py")} - HELPERS - {"__init__"} == set(names)
    shared = {"common", "train", "figures", "claims"}
    assert {p.stem for p in (REPO / "workflow" / "rules").glob("*.smk")} - shared == set(names)
    assert {p.stem for p in (REPO / "workflow" / "report").glob("*.rst")} == {e.name for e in EXPERIMENTS if e.figures}
    blocks = {b for e in EXPERIMENTS for b in e.blocks}
    for scale in ("quick", "paper"):
        assert set(CONFIG[scale]) <= blocks, scale
    figures = registry.all_figures()
    assert len(set(figures)) == len(figures)
    from delay_stability import plots

    assert set(plots.load_plotters()) == set(figures)
    for experiment in EXPERIMENTS:  # each figure is drawn by its own experiment's plots module
        tree = ast.parse((PACKAGE / "plots" / f"{experiment.name}.py").read_text())
        drawn = {d.args[0].value for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
                 for d in n.decorator_list if isinstance(d, ast.Call) and getattr(d.func, "id", None) == "plotter"}
        assert drawn == set(experiment.figures), experiment.name


def test_the_workflow_includes_the_registry_and_no_rule_file_by_hand():
    snakefile = (REPO / "Snakefile").read_text()
    assert "for _experiment in EXPERIMENTS:" in snakefile
    included = [line.split('"')[1] for line in snakefile.splitlines() if line.startswith("include:")]
    # the shared rule files: common (first); figures (the generic figure rules) and claims (it reads their
    # tables) after the experiments; train (the generic train and ensemble rules) last
    assert included == ["workflow/rules/common.smk", "workflow/rules/figures.smk", "workflow/rules/claims.smk",
                        "workflow/rules/train.smk"]


def test_the_generic_rules_are_the_only_figure_and_ensemble_rules():
    """Experiments register their figures (register_figure) and ensembles (register_ensemble): no rule
    file of an experiment writes a figure or runs the ensemble command itself, and every figure of the
    registry is registered by its experiment's rule file."""
    for experiment in EXPERIMENTS:
        text = (REPO / experiment.rules).read_text()
        assert "FIGURES /" not in text and "report(" not in text, experiment.name
        assert "delay-stability ensemble" not in text, experiment.name
        for figure in experiment.figures:  # literally, or through the plan's list of its figures
            assert "register_figure(" in text, (experiment.name, figure)


@pytest.mark.parametrize("module", LIBRARY)
def test_the_library_never_imports_an_experiment_or_a_plot(module):
    deps = module_dependencies(module, SRC)
    assert not [d for d in deps if d.startswith(("delay_stability.experiments", "delay_stability.plots"))]


def test_plots_never_import_an_experiment_and_experiments_never_import_plots():
    for module in MODULES:
        deps = module_dependencies(module, SRC)
        if module.startswith("delay_stability.plots"):
            assert not any(d.startswith("delay_stability.experiments") for d in deps), module
        if module.startswith("delay_stability.experiments"):
            assert not any(d.startswith("delay_stability.plots") for d in deps), module


def test_the_package_has_no_import_cycle():
    closure = {m: module_dependencies(m, SRC) - {m} for m in MODULES}
    for a in MODULES:
        for b in closure[a]:
            if b != "delay_stability":  # the package root holds only the version
                assert a not in closure.get(b, ()), f"{a} and {b} import each other"


def test_no_private_name_is_imported_across_modules():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("delay_stability")):
                private = [a.name for a in node.names if a.name.startswith("_") and a.name != "__version__"]
                assert not private, f"{path.relative_to(SRC)} imports {private} from {node.module}"


def test_the_solver_knows_no_checkpoint_or_run_folder():
    code = ast.dump(ast.parse((PACKAGE / "sharpness.py").read_text()))  # code, not its docstrings
    names = {n.id for n in ast.walk(ast.parse((PACKAGE / "sharpness.py").read_text())) if isinstance(n, ast.Name)}
    assert not {"load_checkpoint", "model_from_checkpoint", "load_run", "load_dataset"} & names
    assert "torch.load" not in code
    deps = module_dependencies("delay_stability.sharpness", SRC)
    assert "delay_stability.train" not in deps and "delay_stability.data" not in deps


def test_every_command_is_registered_by_its_module_and_listed_in_help():
    parser = cli.build_parser("all")  # imports every owning module
    sub = next(a for a in parser._actions if a.dest == "command")
    assert list(sub.choices) == list(cli.COMMANDS)
    helps = {a.dest: a.help for a in sub._choices_actions}
    assert helps == {name: text for name, (_, text) in cli.COMMANDS.items()}
    out = subprocess.run([sys.executable, "-m", "delay_stability.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for name in cli.COMMANDS:
        assert name in out


NO_HEAVY = ("import sys; from delay_stability.cli import main\n"
            "try:\n    rc = main({argv!r})\nexcept SystemExit as exc:\n    rc = exc.code\n"
            "heavy = sorted(m for m in ('torch', 'matplotlib') if m in sys.modules)\n"
            "print('HEAVY', heavy); sys.exit(rc)")


@pytest.mark.parametrize("argv", [
    ["threshold", "--tau", "32"],
    ["lr", "--eta0", "0.1", "--tau", "32", "--momentum", "0.9", "--variant", "shifted"],
    ["threshold", "--gaussian", "8", "--json"],
    ["--help"],
])
def test_theory_commands_load_no_torch_and_no_matplotlib(argv):
    res = subprocess.run([sys.executable, "-c", NO_HEAVY.format(argv=argv)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout


def test_a_theory_table_loads_no_torch(tmp_path):
    argv = ["theory-table", "fig6", "--out", str(tmp_path / "fig6.csv"), "--tau-max", "4"]
    res = subprocess.run([sys.executable, "-c", NO_HEAVY.format(argv=argv)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout and (tmp_path / "fig6.csv").exists()


def test_the_workflow_builds_its_dag_without_torch(tmp_path):
    """Every Snakemake call (each dry run, each job's scheduling) checks the whole config and plans
    every grid; none of that needs torch (what batches is decided in spec.py), which saves seconds
    per call."""
    from workflow_util import SNAKEMAKE, copy_workflow

    workdir = copy_workflow(tmp_path / "wf")
    res = subprocess.run([sys.executable, "-X", "importtime", str(SNAKEMAKE), "-n", "--cores", "1"], cwd=workdir,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    assert "delay_stability.experiments.config" in imported  # the config was checked in this process
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}


# ------------------------------------------------------------------------------------------------
# Defaults live in the schema: a fallback written in an experiment module agrees with it
# ------------------------------------------------------------------------------------------------


def schema_defaults(node, out=None):
    """key -> the set of scalar ``default:`` values the config schema gives a property of that name."""
    out = {} if out is None else out
    if isinstance(node, dict):
        for key, sub in (node.get("properties") or {}).items():
            if isinstance(sub, dict) and "default" in sub and not isinstance(sub["default"], (dict, list)):
                out.setdefault(key, set()).add(sub["default"])
        for value in node.values():
            schema_defaults(value, out)
    elif isinstance(node, list):
        for value in node:
            schema_defaults(value, out)
    return out


def literal_fallbacks(path):
    """(line, key, value) of every ``x.get("key", <literal>)`` in a module."""
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and len(node.args) == 2 and all(isinstance(a, ast.Constant) for a in node.args)
                and isinstance(node.args[0].value, str)):
            yield node.lineno, node.args[0].value, node.args[1].value


def test_a_fallback_in_an_experiment_module_is_the_schemas_default():
    """The config check fills the schema's defaults in before any plan reads a block, so a literal
    fallback in an experiment module only matters to library callers: it must then say what the
    schema says (a key the schema defaults to one value only; imagenet's ref_momentum once fell
    back to 0.0 where the schema says 0.9)."""
    defaults = schema_defaults(yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text()))
    checked, wrong = 0, []
    for path in sorted((PACKAGE / "experiments").glob("*.py")):
        for line, key, value in literal_fallbacks(path):
            if len(defaults.get(key, ())) == 1:
                checked += 1
                (expected,) = defaults[key]
                if value != expected or type(value) is bool and type(expected) is not bool:
                    wrong.append(f"{path.name}:{line} {key}={value!r}, the schema says {expected!r}")
    assert not wrong, wrong
    assert checked >= 10  # the scan sees the fallbacks it is meant to check


#: The modules that the compute rules hash (workflow/rules/*.smk: training, ensembles, searches,
#: solvers, real workers), not those of tables and figures.
COMPUTE_MODULES = ("train", "ensemble", "server", "measure", "experiments.eos", "experiments.table1",
                   "experiments.stability", "experiments.mitigations", "experiments.random_staleness",
                   "experiments.real_workers", "experiments.momentum")


@pytest.mark.parametrize("module", COMPUTE_MODULES)
def test_no_compute_job_imports_the_shared_plan_code(module):
    """experiments/plan.py (how runs group into ensembles) serves plans and tables only: editing it
    must rerun no training job, so no module a compute rule hashes may import it."""
    assert f"delay_stability.{module}" in MODULES
    assert "delay_stability.experiments.plan" not in module_dependencies(f"delay_stability.{module}", SRC)
    assert "delay_stability.experiments.plan" in module_dependencies("delay_stability.experiments.generalization", SRC)
