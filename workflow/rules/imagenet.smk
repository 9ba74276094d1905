# ImageNet under delay (Section 3.2, appendices C and E.1): figures 5 and 9.
# fig5: S-SGD, A-SGD with standard momentum, m = 0, shifted momentum, and η x 1/sqrt(τ), x seeds;
# fig9: constant vs discretised-Gaussian delay of the same mean, x seeds. BatchNorm networks: every run
# is a job of the generic train rule -> `imagenet-collect` -> results/<scale>/imagenet/{fig5,fig9}{,_curves}.csv
# -> figures. Run specs (η, batch, delay convention): delay_stability.experiments.imagenet.
from delay_stability.experiments import imagenet as imagenet_exp

IMAGENET = EXP.get("imagenet")
IMAGENET_DIR = SCALE_DIR / "imagenet"
IMAGENET_BASE = with_run_settings(IMAGENET["train"]) if IMAGENET else {}
IMAGENET_FIGURES = imagenet_exp.figures_of(IMAGENET) if IMAGENET else []
#: figure -> [(arm name, folder, spec)]; run folders IMAGENET_DIR/<figure>/<arm slug>/seed{s} (a fig9 run
#: with the spec of a fig5 run reads fig5's folder)
IMAGENET_RUNS = imagenet_exp.planned(IMAGENET, IMAGENET_BASE, IMAGENET_DIR) if IMAGENET else {}

for _fig, _runs in IMAGENET_RUNS.items():
    for _name, _folder, _spec in _runs:
        register_run(_folder, _spec, f"imagenet.{_fig}", runtime_paper=5 * 24 * 60)

ALL_TARGETS.extend(f for name in IMAGENET_FIGURES for f in figure(name))


rule imagenet_tables:
    """<figure>.csv (one row per run: arm, seed, lr, final errors, status) and <figure>_curves.csv."""
    input:
        lambda wc: [run_file(folder, "summary.json") for _, folder, _ in IMAGENET_RUNS[wc.figure]],
    output:
        table=str(IMAGENET_DIR / "{figure}.csv"),
        curves=str(IMAGENET_DIR / "{figure}_curves.csv"),
    params:
        runs=lambda wc: imagenet_exp.runs_json(IMAGENET_RUNS[wc.figure]),
        code=src_hash("experiments.imagenet"),
    wildcard_constraints:
        figure=as_regex(IMAGENET_FIGURES),
    localrule: True
    conda:
        "../../environment.yml"
    log:
        str(LOGS / "imagenet" / "{figure}-tables.log"),
    shell:
        "delay-stability imagenet-collect {wildcards.figure} --runs {params.runs:q} --out {output.table} "
        "--curves {output.curves} > {log} 2>&1"


rule imagenet_figure:
    """fig5: val (solid) and train (dashed) error vs epochs, one panel per A-SGD arm with S-SGD; fig9: constant vs Gaussian delay."""
    input:
        unpack(lambda wc: imagenet_exp.figure_tables(wc.figure, IMAGENET_DIR)),
    output:
        pdf=str(FIGURES / "{figure}.pdf"),
        png=report(str(FIGURES / "{figure}.png"), caption="../report/imagenet.rst",
                   category="ImageNet under delay ({scale})".format(scale=SCALE), labels={"figure": "{figure}"}),
    params:
        tables=lambda wc: " ".join(f"--table {p}" for p in imagenet_exp.figure_tables(wc.figure, IMAGENET_DIR).values()),
        opts=lambda wc: imagenet_exp.plot_options(IMAGENET, wc.figure, IMAGENET_BASE, SCALE),
        code=plots_hash("imagenet"),
    wildcard_constraints:
        figure=as_regex(IMAGENET_FIGURES),
    localrule: True
    conda:
        "../../environment.yml"
    log:
        str(LOGS / "{figure}.log"),
    shell:
        "delay-stability plot {wildcards.figure} {params.tables} --options {params.opts:q} --out {output.pdf} > {log} 2>&1"
