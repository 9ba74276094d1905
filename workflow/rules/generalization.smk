# Generalization under delay (Section 3.2): figures 1, 3 and 13.
# fig3: τ x η x seeds; fig1: τ ∈ {0, fig1.tau} x η x seeds (fig13 reads fig1's runs at several epochs).
# The runs of one (figure, τ) train as one batched ensemble job (the generic ensemble rule) when
# delay_stability.ensemble.can_ensemble allows; otherwise each run is a job of the generic train rule.
#   -> `generalization-collect` -> results/<scale>/generalization/{fig3,fig1,claims,fit}.csv -> figures
# (the generic figure rule `generalization_figure`, workflow/rules/figures.smk).
# The grids, the failure criterion and the tables: delay_stability.experiments.generalization.
from delay_stability.experiments import generalization as gen_exp

GEN = EXP.get("generalization")
GEN_DIR = SCALE_DIR / "generalization"
GEN_LOGS = LOGS / "generalization"
GEN_BASE = with_run_settings(GEN["train"]) if GEN else {}
#: figure ("fig3", "fig1") -> its GridRuns; run folders GEN_DIR/<figure>/tau{τ}/lr{η}/seed{s}
GEN_RUNS = {f: gen_exp.runs(GEN, f, GEN_BASE) for f in ("fig3", "fig1") if GEN and f in GEN}
#: (figure, τ) -> the GridRuns that train as one ensemble
GEN_GROUPS = {(f, tau): g for f, rs in GEN_RUNS.items() for tau, g in gen_exp.ensemble_groups(rs).items()}
GEN_SINGLE = {f: [r for r in rs if (f, r.axes["tau"]) not in GEN_GROUPS] for f, rs in GEN_RUNS.items()}
GEN_FIGURES = gen_exp.figures_of(GEN) if GEN and "fig3" in GEN else []

for _fig, _runs in GEN_SINGLE.items():
    for _run in _runs:
        register_run(_run.folder(GEN_DIR / _fig), _run.spec, f"generalization.{_fig}")
#: figure -> the records of its ensembles (the tables' inputs)
GEN_RECORDS = {f: [] for f in GEN_RUNS}
for (_fig, _tau), _group in GEN_GROUPS.items():
    GEN_RECORDS[_fig].append(register_ensemble(
        GEN_DIR / _fig / f"tau{_tau}", [(r.folder(GEN_DIR / _fig), r.spec) for r in _group],
        f"generalization.{_fig}", runtime_paper=72 * 60))

for _name in GEN_FIGURES:
    register_figure(_name, gen_exp.figure_tables(_name, GEN_DIR).values(),
                    lambda name=_name: gen_exp.plot_options(GEN, name, GEN_BASE, SCALE))


rule generalization_tables:
    """fig3.csv (one row per run), claims.csv (per τ: eta_div, best η, eq. 8), fit.csv (1/eta_div vs τ)."""
    input:
        groups=GEN_RECORDS.get("fig3", []),
        single=[f for r in GEN_SINGLE.get("fig3", []) for f in run_records(r.folder(GEN_DIR / "fig3"))],
    output:
        fig3=str(GEN_DIR / "fig3.csv"),
        claims=str(GEN_DIR / "claims.csv"),
        fit=str(GEN_DIR / "fit.csv"),
    params:
        runs=" ".join(r.folder(GEN_DIR / "fig3") for r in GEN_RUNS.get("fig3", [])),
        fail=gen_exp.fail_train_error(GEN) if GEN else 0.5,
        code=src_hash("experiments.generalization"),
    localrule: True
    conda:
        "../../environment.yml"
    log:
        str(GEN_LOGS / "tables.log"),
    shell:
        "delay-stability generalization-collect --fig3-run {params.runs} --fail-train-error {params.fail} "
        "--fig3 {output.fig3} --claims {output.claims} --fit {output.fit} > {log} 2>&1"


rule generalization_fig1_table:
    """fig1.csv: one row per fig1 run (τ = 0 and fig1.tau) and evaluation epoch (fig1 and fig13 read it)."""
    input:
        groups=GEN_RECORDS.get("fig1", []),
        single=[f for r in GEN_SINGLE.get("fig1", []) for f in run_records(r.folder(GEN_DIR / "fig1"))],
    output:
        fig1=str(GEN_DIR / "fig1.csv"),
    params:
        runs=" ".join(r.folder(GEN_DIR / "fig1") for r in GEN_RUNS.get("fig1", [])),
        code=src_hash("experiments.generalization"),
    localrule: True
    conda:
        "../../environment.yml"
    log:
        str(GEN_LOGS / "fig1-table.log"),
    shell:
        "delay-stability generalization-collect --fig1-run {params.runs} --fig1 {output.fig1} > {log} 2>&1"

