# ImageNet under delay (Section 3.2, appendices C and E.1): figures 5 and 9.
# fig5: S-SGD, A-SGD with standard momentum, m = 0, shifted momentum, and η x 1/sqrt(τ), x seeds;
# fig9: constant delay vs the authors' Gaussian worker rule (same mean staleness), x seeds. The runs that share the
# schedule, delay and batch size train as one batched ensemble job (spec.ensemble_groups; per-member BatchNorm), the
# others as jobs of the generic train rule -> `imagenet-collect` -> results/<scale>/imagenet/{fig5,fig9}{,_curves}.csv
# -> figures. Run specs (η, batch, delay convention): delay_stability.experiments.imagenet.
from delay_stability.experiments import imagenet as imagenet_exp
from delay_stability.spec import ensemble_groups as imagenet_groups

IMAGENET = EXP.get("imagenet")
IMAGENET_DIR = SCALE_DIR / "imagenet"
IMAGENET_BASE = with_run_settings(IMAGENET["train"]) if IMAGENET else {}
IMAGENET_FIGURES = imagenet_exp.figures_of(IMAGENET) if IMAGENET else []
#: figure -> [(arm name, folder, spec)]; run folders IMAGENET_DIR/<figure>/<arm slug>/seed{s} (a fig9 run
#: with the spec of a fig5 run reads fig5's folder)
IMAGENET_RUNS = imagenet_exp.planned(IMAGENET, IMAGENET_BASE, IMAGENET_DIR) if IMAGENET else {}

#: every run folder once, with its spec
IMAGENET_FOLDERS = {folder: spec for runs in IMAGENET_RUNS.values() for _, folder, spec in runs}
#: group index -> the run folders that train as one ensemble (record IMAGENET_DIR/ensemble<i>/ensemble.json)
IMAGENET_GROUPS = {
    i: [list(IMAGENET_FOLDERS)[j] for j in g]
    for i, g in enumerate(imagenet_groups(list(IMAGENET_FOLDERS.values())))
}
IMAGENET_GROUP_OF = {folder: i for i, folders in IMAGENET_GROUPS.items() for folder in folders}
IMAGENET_RECORDS = {
    i: register_ensemble(IMAGENET_DIR / f"ensemble{i}", [(f, IMAGENET_FOLDERS[f]) for f in folders], "imagenet",
                         runtime_paper=5 * 24 * 60)
    for i, folders in IMAGENET_GROUPS.items()
}

for _fig, _runs in IMAGENET_RUNS.items():
    for _name, _folder, _spec in _runs:
        if _folder not in IMAGENET_GROUP_OF:
            register_run(_folder, _spec, f"imagenet.{_fig}", runtime_paper=5 * 24 * 60)

for _name in IMAGENET_FIGURES:
    register_figure(_name, imagenet_exp.figure_tables(_name, IMAGENET_DIR).values(),
                    lambda name=_name: imagenet_exp.plot_options(IMAGENET, name, IMAGENET_BASE, SCALE))


rule imagenet_tables:
    """<figure>.csv (one row per run: arm, seed, lr, final errors, status), <figure>_curves.csv and
    <figure>_staleness.csv (every run's realised staleness histogram)."""
    input:
        # the figure's ensembles' records and its single runs' records
        lambda wc: [IMAGENET_RECORDS[i]
                    for i in sorted({IMAGENET_GROUP_OF[f] for _, f, _ in IMAGENET_RUNS[wc.figure] if f in IMAGENET_GROUP_OF})]
        + [r for _, f, _ in IMAGENET_RUNS[wc.figure] if f not in IMAGENET_GROUP_OF for r in run_records(f)],
    output:
        table=str(IMAGENET_DIR / "{figure}.csv"),
        curves=str(IMAGENET_DIR / "{figure}_curves.csv"),
        staleness=str(IMAGENET_DIR / "{figure}_staleness.csv"),
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
        "--curves {output.curves} --staleness {output.staleness} > {log} 2>&1"

