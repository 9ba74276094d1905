# Asynchrony begets Momentum (Mitliagkas et al. 2016): the best explicit momentum falls with the number of
# workers M, even below zero. Theory (figures 6-7, Theorem 7) -> results/theory/momentum_{theory,fig7}.csv;
# the network grid M x μ x η x seeds with random workers (geometric staleness) -> one ensemble job per M
# (the generic ensemble rule; runs that cannot batch are jobs of the generic train rule)
#   -> `momentum-collect` -> results/<scale>/momentum/{runs,scores,tuned,best,penalty,paper}.csv -> figures.
# What the theory and stand-in jobs compute: delay_stability.experiments.momentum (nothing else, so that
# editing the plan reruns neither); the network grid (the plan of the ensemble and train jobs), the score
# (steps to a target training loss), the tables and the figures' options: experiments.momentum_tables.
from delay_stability.experiments import momentum as mom_exp
from delay_stability.experiments import momentum_tables as mom_tables

MOM = EXP.get("momentum")
MOM_DIR = SCALE_DIR / "momentum"
MOM_LOGS = LOGS / "momentum"
MOM_BASE = with_run_settings(MOM["train"]) if MOM else {}
MOM_RUNS = mom_tables.runs(MOM, MOM_BASE, validate=False) if MOM else []   # checked by the config check
#: M -> the GridRuns that train as one ensemble; run folders MOM_DIR/workers{M}/momentum{μ}/lr{η}/seed{s}
MOM_GROUPS = mom_tables.ensemble_groups(MOM_RUNS) if MOM else {}
MOM_SINGLE = [r for r in MOM_RUNS if r.axes["workers"] not in MOM_GROUPS]

for _run in MOM_SINGLE:
    register_run(_run.folder(MOM_DIR), _run.spec, "momentum")
MOM_RECORDS = [register_ensemble(MOM_DIR / f"workers{M}", [(r.folder(MOM_DIR), r.spec) for r in group], "momentum",
                                 runtime_paper=48 * 60) for M, group in MOM_GROUPS.items()]

# The second paper's own protocol (``decade_grid``: undampened momentum, η on a decade grid at several
# offsets): its own runs, one ensemble job per M, tables under MOM_DIR/decade/ (the same collect).
MOM_DECADE_DIR = MOM_DIR / "decade"
MOM_DECADE_RUNS = mom_tables.decade_runs(MOM, MOM_BASE, validate=False) if MOM else []
MOM_DECADE_GROUPS = mom_tables.ensemble_groups(MOM_DECADE_RUNS)
MOM_DECADE_SINGLE = [r for r in MOM_DECADE_RUNS if r.axes["workers"] not in MOM_DECADE_GROUPS]
for _run in MOM_DECADE_SINGLE:
    register_run(_run.folder(MOM_DECADE_DIR), _run.spec, "momentum.decade_grid")
MOM_DECADE_RECORDS = [
    register_ensemble(MOM_DECADE_DIR / f"workers{M}", [(r.folder(MOM_DECADE_DIR), r.spec) for r in group],
                      "momentum.decade_grid", runtime_paper=48 * 60) for M, group in MOM_DECADE_GROUPS.items()]

for _name in mom_tables.FIGURES if MOM else ():
    register_figure(_name, mom_tables.figure_tables(_name, MOM_DIR, THEORY_DIR).values(),
                    lambda name=_name: mom_tables.plot_options(MOM, MOM_BASE, mom_tables.caption_scale(name, SCALE)))


rule momentum_theory:
    """Figures 6-7 of the paper: the rate-optimal explicit momentum vs μ_S (Theorem 7), exact."""
    output:
        theory=str(THEORY_DIR / "momentum_theory.csv"),
        fig7=str(THEORY_DIR / "momentum_fig7.csv"),
    params:
        options=json.dumps(mom_exp.theory_options(MOM), sort_keys=True),
        code=src_hash("experiments.momentum"),
    localrule: True
    conda:
        "../../environment.yml"
    log:
        str(LOGS / "theory" / "momentum_theory.log"),
    shell:
        "delay-stability momentum-theory --out {output.theory} --fig7 {output.fig7} --options {params.options:q} "
        "> {log} 2>&1"


rule momentum_quadratic:
    """The least-squares stand-in: measured (DelayedSGD, random workers) vs predicted rate-optimal μ_L."""
    output:
        rows=str(MOM_DIR / "quadratic.csv"),
        best=str(MOM_DIR / "quadratic_best.csv"),
    params:
        options=json.dumps((MOM or {}).get("quadratic") or {}, sort_keys=True),
        code=src_hash("experiments.momentum"),
    localrule: True
    conda:
        "../../environment.yml"
    log:
        str(MOM_LOGS / "quadratic.log"),
    shell:
        "delay-stability momentum-quadratic --out {output.rows} --best {output.best} --options {params.options:q} "
        "> {log} 2>&1"


rule momentum_tables:
    """runs, scores, tuned, best, penalty and paper.csv: steps to the target loss, η and μ tuned per M."""
    input:
        groups=MOM_RECORDS,
        single=[f for r in MOM_SINGLE for f in run_records(r.folder(MOM_DIR))],
    output:
        [str(MOM_DIR / f"{name}.csv") for name in mom_tables.TABLES],
    params:
        runs=" ".join(r.folder(MOM_DIR) for r in MOM_RUNS),
        target=MOM["target_loss"] if MOM else None,
        fixed=MOM.get("fixed_momentum", 0.9) if MOM else None,
        out_dir=lambda wc, output: os.path.dirname(output[0]),
        code=src_hash("experiments.momentum_tables"),
    localrule: True
    conda:
        "../../environment.yml"
    log:
        str(MOM_LOGS / "tables.log"),
    shell:
        "delay-stability momentum-collect --run {params.runs} --target-loss {params.target} "
        "--fixed-momentum {params.fixed} --out-dir {params.out_dir} > {log} 2>&1"




# The paper's own protocol (undampened momentum, decade η grid): the same tables under momentum/decade/
# (the claims read the best μ on each offset of the decade grid from its runs.csv).
use rule momentum_tables as momentum_decade_tables with:
    input:
        groups=MOM_DECADE_RECORDS,
        single=[f for r in MOM_DECADE_SINGLE for f in run_records(r.folder(MOM_DECADE_DIR))],
    output:
        [str(MOM_DECADE_DIR / f"{name}.csv") for name in mom_tables.TABLES],
    params:
        runs=" ".join(r.folder(MOM_DECADE_DIR) for r in MOM_DECADE_RUNS),
        target=MOM["target_loss"] if MOM else None,
        fixed=MOM.get("fixed_momentum", 0.9) if MOM else None,
        out_dir=lambda wc, output: os.path.dirname(output[0]),
        code=src_hash("experiments.momentum_tables"),
    log:
        str(MOM_LOGS / "decade_tables.log"),
