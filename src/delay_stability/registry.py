"""The experiments, one declaration each, and the one list of them.

An experiment is five parts of the same name ``<name>``:

    src/delay_stability/experiments/<name>.py   its plan: run specs and folders, how runs group into
                                                ensembles, its tables from the collected runs, plot options
    src/delay_stability/plots/<name>.py         its figures (``@plotter("<figure>")``)
    workflow/rules/<name>.smk                   its rules (run folders register with the generic train rule)
    config.yaml, block ``<name>:``              its settings at each scale (theory: the top-level block)
    tests/test_<name>.py                        its tests

and one entry in ``EXPERIMENTS`` below. The config check (``experiments.config``), smoke mode
(``experiments.smoke``), the ``plot`` command and ``plots.load_plotters``, the workflow (the
Snakefile includes every experiment's rule file from this list) and ``tests/test_layout.py``
iterate ``EXPERIMENTS``; none keeps a list of its own.

A role is named here, not imported: this module imports nothing of the package, so that reading the
registry (the ``plot`` command's help, every Snakemake call) loads neither torch nor matplotlib nor
any experiment. ``Experiment.role`` resolves a name when it is needed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

PACKAGE = __name__.rsplit(".", 1)[0]


@dataclass(frozen=True)
class Experiment:
    """The roles of one experiment; each role is the name of a function (or module) that plays it.

    name          the experiment: experiments/<name>.py, plots/<name>.py, workflow/rules/<name>.smk,
                  tests/test_<name>.py, and the caption of its figures in the report,
                  workflow/report/<name>.rst
    title         its figures' category in the report (``snakemake --report``)
    exact         True when its results are exact (theory): the report category names no scale
    blocks        the config blocks of a scale block that belong to it (stability has two: the plain
                  and the shifted-momentum minima); ``()`` for an experiment whose block is top-level
    figures       the figures its plots module draws (figures/<figure>.pdf)
    specs         function of experiments/<name>.py, ``specs(exp, settings)`` -> (config key, spec) of
                  every training run the scale block ``exp`` implies (``settings(spec)`` adds the run-wide
                  settings); a UserError names the config key below the scale. None: it trains nothing
    ensembles     function of experiments/<name>.py grouping its runs into ensembles (runs -> {key: runs})
    tables        module (under experiments/) whose functions write its tables from the collected runs
    plot_options  function giving the JSON options of its figures (in its tables module where the
                  experiment's module holds what its jobs compute)
    smoke         function of experiments/smoke.py, ``shrink(block, spec, sizes)``: smoke mode's shrink
                  of one of its blocks, in place (``spec`` shrinks a training spec; ``sizes``: epochs,
                  batch_size, n_train, n_val). None: smoke mode keeps the block as it is
    """

    name: str
    title: str = ""
    exact: bool = False
    blocks: tuple = ()
    figures: tuple = ()
    specs: str | None = "config_specs"
    ensembles: str | None = None
    tables: str | None = None
    plot_options: str | None = "plot_options"
    smoke: str | None = None

    @property
    def module(self) -> str:
        """Dotted name of its experiment module."""
        return f"{PACKAGE}.experiments.{self.name}"

    @property
    def plots_module(self) -> str:
        """Dotted name of its plots module."""
        return f"{PACKAGE}.plots.{self.name}"

    @property
    def rules(self) -> str:
        """Its rule file, relative to the repository root."""
        return f"workflow/rules/{self.name}.smk"

    @property
    def caption(self) -> str:
        """The caption of its figures in the report, relative to the repository root."""
        return f"workflow/report/{self.name}.rst"

    @property
    def test_file(self) -> str:
        """Its test file, relative to the repository root."""
        return f"tests/test_{self.name}.py"

    @property
    def config_blocks(self) -> tuple:
        """Its config blocks: those of a scale block, or its own name at the top level."""
        return self.blocks or (self.name,)

    def role(self, role: str):
        """The function that plays ``role`` (a field name above), imported now; None if it has none.
        ``smoke`` resolves in experiments/smoke.py, ``tables`` to a module, the others in the
        experiment's module or else in its tables module."""
        target = getattr(self, role)
        if target is None:
            return None
        if role == "tables":
            return importlib.import_module(f"{PACKAGE}.experiments.{target}")
        if role == "smoke":
            return getattr(importlib.import_module(f"{PACKAGE}.experiments.smoke"), target)
        module = importlib.import_module(self.module)
        if not hasattr(module, target) and self.tables:  # figure options live beside the tables
            module = self.role("tables")
        return getattr(module, target)


#: Every experiment, in the order the workflow includes them and the figures are listed.
EXPERIMENTS = (
    Experiment("theory", "Theory (exact)", exact=True, figures=("fig6", "fig7", "fig8", "fig10", "fig4a", "bridge"),
               specs=None, tables="theory", plot_options=None),
    Experiment("stability", "Minima stability", blocks=("stability", "shifted_stability"),
               figures=("fig2", "fig12", "fig4"), tables="stability_tables", smoke="shrink_stability"),
    Experiment("eos", "Beyond the paper", blocks=("eos",), figures=("delayed_eos",), tables="eos_tables",
               smoke="shrink_eos"),
    Experiment("generalization", "Generalization", blocks=("generalization",), figures=("fig3", "fig1", "fig13"),
               ensembles="ensemble_groups", tables="generalization", smoke="shrink_generalization"),
    Experiment("table1", "Generalization", blocks=("table1",), figures=("table1",), tables="table1_tables",
               smoke="shrink_table1"),
    Experiment("imagenet", "ImageNet under delay", blocks=("imagenet",), figures=("fig5", "fig9"),
               tables="imagenet", smoke="shrink_delayed"),
    Experiment("spikes", "Spikes under delay", blocks=("spikes",), figures=("fig11",), tables="spikes",
               smoke="shrink_delayed"),
    Experiment("momentum", "Asynchrony begets momentum", blocks=("momentum",),
               figures=("momentum_theory", "momentum_vs_workers", "momentum_penalty"),
               ensembles="ensemble_groups", tables="momentum_tables", smoke="shrink_momentum"),
    Experiment("mitigations", "Delay mitigations", blocks=("mitigations",), figures=("mitigations",),
               tables="mitigations_tables", plot_options=None, smoke="shrink_mitigations"),
    Experiment("real_workers", "Real workers", blocks=("real_workers",), figures=("real_staleness",), specs=None,
               tables="real_workers_tables", smoke="shrink_real_workers"),
    Experiment("random_staleness", "Random staleness", blocks=("random_staleness",), figures=("random_staleness",),
               tables="random_staleness_tables", plot_options=None, smoke="shrink_random_staleness"),
)

#: name -> its Experiment
BY_NAME = {e.name: e for e in EXPERIMENTS}


def experiment_of_figure(figure: str) -> Experiment:
    """The experiment that draws ``figure``; KeyError naming the known figures otherwise."""
    for experiment in EXPERIMENTS:
        if figure in experiment.figures:
            return experiment
    raise KeyError(f"unknown figure {figure!r}; known: {', '.join(sorted(all_figures()))}")


def all_figures() -> list:
    """Every figure of every experiment, in registry order."""
    return [f for e in EXPERIMENTS for f in e.figures]


def experiment_of_block(block: str):
    """The experiment a config block of a scale belongs to, or None."""
    return next((e for e in EXPERIMENTS if block in e.blocks), None)
