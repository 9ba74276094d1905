# Generalization under delay (Section 3.2): figures 1, 3 and 13.
# fig3: τ x η x seeds; fig1: τ ∈ {0, fig1.tau} x η x seeds (fig13 reads fig1's runs at several epochs).
# The runs of one (figure, τ) train as one batched ensemble job (`delay-stability ensemble`) when
# delay_stability.ensemble.can_ensemble allows; otherwise each run is a job of the generic train rule.
#   -> `generalization-collect` -> results/<scale>/generalization/{fig3,fig1,claims,fit}.csv -> figures.
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

if GEN_FIGURES:
    ALL_TARGETS.extend(f for name in GEN_FIGURES for f in figure(name))


rule generalization_ensemble:
    """The runs of one (figure, τ) as one batched ensemble; each member writes its own run folder."""
    output:
        specs=str(GEN_DIR / "{figure}" / "tau{tau}" / "ensemble-specs.json"),
        record=str(GEN_DIR / "{figure}" / "tau{tau}" / "ensemble.json"),
    params:
        specs=lambda wc: gen_exp.specs_json(GEN_GROUPS[(wc.figure, int(wc.tau))]),
        out=lambda wc: " ".join(r.folder(GEN_DIR / wc.figure) for r in GEN_GROUPS[(wc.figure, int(wc.tau))]),
        code=src_hash("ensemble"),
    wildcard_constraints:
        figure="fig3|fig1",
        tau=r"\d+",
    conda:
        "../../environment.yml"
    log:
        str(GEN_LOGS / "{figure}-tau{tau}-ensemble.log"),
    benchmark:
        str(GEN_LOGS / "{figure}-tau{tau}-ensemble.benchmark.tsv")
    resources:
        **gpu_resources(runtime_quick=30, runtime_paper=72 * 60),
    shell:
        "printf '%s' {params.specs:q} > {output.specs} && "
        "delay-stability-gpu-slot --gpus {resources.gpu} -- delay-stability ensemble --specs {output.specs} "
        "--out {params.out} --record {output.record} > {log} 2>&1"


rule generalization_tables:
    """fig3.csv (one row per run), claims.csv (per τ: eta_div, best η, eq. 8), fit.csv (1/eta_div vs τ)."""
    input:
        groups=[str(GEN_DIR / f / f"tau{tau}" / "ensemble.json") for f, tau in GEN_GROUPS if f == "fig3"],
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
        groups=[str(GEN_DIR / f / f"tau{tau}" / "ensemble.json") for f, tau in GEN_GROUPS if f == "fig1"],
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


rule generalization_figure:
    """fig3: val error vs η per τ; fig1: val error vs epochs per η at fig1's τ; fig13: vs η at several epochs."""
    input:
        unpack(lambda wc: gen_exp.figure_tables(wc.figure, GEN_DIR)),
    output:
        pdf=str(FIGURES / "{figure}.pdf"),
        png=report(str(FIGURES / "{figure}.png"), caption="../report/generalization.rst",
                   category="Generalization ({scale})".format(scale=SCALE), labels={"figure": "{figure}"}),
    params:
        tables=lambda wc: " ".join(f"--table {p}" for p in gen_exp.figure_tables(wc.figure, GEN_DIR).values()),
        opts=lambda wc: gen_exp.plot_options(GEN, wc.figure, GEN_BASE, SCALE),
        code=plots_hash("generalization"),
    wildcard_constraints:
        figure=as_regex(GEN_FIGURES),
    localrule: True
    conda:
        "../../environment.yml"
    log:
        str(LOGS / "{figure}.log"),
    shell:
        "delay-stability plot {wildcards.figure} {params.tables} --options {params.opts:q} --out {output.pdf} > {log} 2>&1"
