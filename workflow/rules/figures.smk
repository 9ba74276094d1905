# The figure rules: one generic rule, instantiated once per experiment of the registry as
# `<experiment>_figure` (its caption workflow/report/<experiment>.rst, its report category the
# experiment's title, its code hash its plots module and the shared plots code). Each experiment's rule
# file registers the figures it draws with `register_figure(name, tables, options)` (common.smk); this
# file is included after them. A figure job only reads tables and draws: editing a plots module, a
# caption or a plot option reruns the figures that use it and never a job that computes.


def figure_options(name):
    """The --options JSON of figure ``name`` (its experiment's plan says it)."""
    return FIGURE_PLANS[name]["options"]()


def figure_category(experiment):
    """The report category of an experiment's figures: its title, and the scale unless it is exact."""
    return experiment.title if experiment.exact else f"{experiment.title} ({SCALE})"


for _experiment in EXPERIMENTS:
    _figures = [f for f in _experiment.figures if f in FIGURE_PLANS]
    if not _figures:
        continue

    rule:
        name:
            f"{_experiment.name}_figure"
        input:
            lambda wc: FIGURE_PLANS[wc.figure]["tables"],
        output:
            pdf=str(FIGURES / "{figure}.pdf"),
            png=report(str(FIGURES / "{figure}.png"), caption=f"../report/{_experiment.name}.rst",
                       category=figure_category(_experiment), labels={"figure": "{figure}"}),
        params:
            tables=lambda wc: " ".join(f"--table {t}" for t in FIGURE_PLANS[wc.figure]["tables"]),
            opts=lambda wc: figure_options(wc.figure),
            code=plots_hash(_experiment.name),
        wildcard_constraints:
            figure=as_regex(_figures),
        localrule: True
        conda:
            "../../environment.yml"
        log:
            str(LOGS / "figures" / "{figure}.log"),
        shell:
            "delay-stability plot {wildcards.figure} {params.tables} --options {params.opts:q} "
            "--out {output.pdf} > {log} 2>&1"
