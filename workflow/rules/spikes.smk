# Spikes in the training error under delay (appendix D): figure 11.
# A-SGD with momentum, without, and with shifted momentum (config block spikes), the same hyperparameters,
# no LR decay, x seeds: one batched ensemble job (the generic ensemble rule, per-member BatchNorm) when
# spec.ensemble_groups allows, else one job of the generic train rule per run -> `spikes-collect` -> results/<scale>/spikes/{spikes,spikes_curves}.csv -> figures/fig11.
# The spike count: delay_stability.experiments.spikes.count_spikes.
from delay_stability.experiments import spikes as spikes_exp
from delay_stability.spec import ensemble_groups as spikes_groups

SPIKES = EXP.get("spikes")
SPIKES_DIR = SCALE_DIR / "spikes"
SPIKES_BASE = with_run_settings(SPIKES["train"]) if SPIKES else {}
#: run folders SPIKES_DIR/variant{v}/seed{s}
SPIKES_RUNS = spikes_exp.runs(SPIKES, SPIKES_BASE) if SPIKES else []

#: the runs that train as one ensemble (every run shares the delay and the batch size), else none
SPIKES_GROUP = [SPIKES_RUNS[i] for g in spikes_groups([r.spec for r in SPIKES_RUNS])[:1] for i in g]

for _run in SPIKES_RUNS:
    if _run not in SPIKES_GROUP:
        register_run(_run.folder(SPIKES_DIR), _run.spec, "spikes", runtime_paper=3 * 24 * 60)
SPIKES_RECORDS = [register_ensemble(SPIKES_DIR, [(r.folder(SPIKES_DIR), r.spec) for r in SPIKES_GROUP], "spikes",
                                    runtime_paper=3 * 24 * 60)] if SPIKES_GROUP else []

if SPIKES:
    register_figure("fig11", [SPIKES_DIR / "spikes.csv", SPIKES_DIR / "spikes_curves.csv"],
                    lambda: spikes_exp.plot_options(SPIKES, SPIKES_BASE, SCALE))


rule spikes_tables:
    """spikes.csv (per run: spikes, mean height, final train error) and spikes_curves.csv."""
    input:
        group=SPIKES_RECORDS,
        single=[f for r in SPIKES_RUNS if r not in SPIKES_GROUP for f in run_records(r.folder(SPIKES_DIR))],
    output:
        table=str(SPIKES_DIR / "spikes.csv"),
        curves=str(SPIKES_DIR / "spikes_curves.csv"),
    params:
        runs=" ".join(r.folder(SPIKES_DIR) for r in SPIKES_RUNS),
        margin=spikes_exp.margin_of(SPIKES) if SPIKES else 0.05,
        code=src_hash("experiments.spikes"),
    localrule: True
    conda:
        "../../environment.yml"
    log:
        str(LOGS / "spikes" / "tables.log"),
    shell:
        "delay-stability spikes-collect --run {params.runs} --margin {params.margin} --out {output.table} "
        "--curves {output.curves} > {log} 2>&1"

