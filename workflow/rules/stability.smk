# Minima stability under delay (Section 3.1, appendix F): figures 2, 12 and 4 (right).
# baseline (rule train) -> minimum (polish) -> sharpness -> kick -> search per (variant, m, tau)
#   -> tables (every search: results/<scale>/stability/*.csv; per figure: .../stability/<figure>/*.csv)
#   -> figures (the generic figure rule `stability_figure`, workflow/rules/figures.smk). Every step writes under results/<scale>/<experiment>/; the experiment's logic and its
#   grid are in delay_stability.experiments.stability, its tables and the figures' plan (searches each
#   draws, options) in experiments.stability_tables.
from delay_stability.experiments import stability as stability_exp
from delay_stability.experiments import stability_tables

STABILITY_EXPERIMENTS = [e for e in stability_exp.EXPERIMENTS if e in EXP]
STABILITY_TABLES = SCALE_DIR / "stability"
#: figure -> the experiment whose searches it draws (fig4: the one that holds shifted momentum)
STABILITY_FIGURES = stability_tables.figure_experiments(EXP)



for _exp in STABILITY_EXPERIMENTS:
    register_run(SCALE_DIR / _exp / "baseline", EXP[_exp]["baseline"], f"{_exp}.baseline",
                 runtime_quick=30, runtime_paper=72 * 60)

if STABILITY_EXPERIMENTS:
    ALL_TARGETS.extend(str(STABILITY_TABLES / f"{t}.csv") for t in ("thresholds", "fits", "probes", "curves"))
for _name, _exp in STABILITY_FIGURES.items():
    register_figure(_name, stability_tables.figure_tables(_name, STABILITY_TABLES, THEORY_DIR),
                    lambda name=_name, exp=_exp: stability_tables.plot_options(EXP[exp], name, exp, SCALE))


rule stability_minimum:
    """Polish the steady state to a critical point (Gauss-Newton for mse, else L-BFGS), or take it
    as is (polish: null)."""
    input:
        str(SCALE_DIR / "{exp}" / "baseline" / "final.pt"),
    output:
        ckpt=str(SCALE_DIR / "{exp}" / "minimum" / "minimum.pt"),
        info=str(SCALE_DIR / "{exp}" / "minimum" / "polish.json"),
    params:
        device=device_flag(),
        opts=lambda wc: stability_exp.polish_flags(EXP[wc.exp]["polish"]),
        code=src_hash("experiments.stability"),
    conda:
        "../../environment.yml"
    log:
        str(LOGS / "{exp}" / "minimum.log"),
    resources:
        **gpu_resources(runtime_quick=30, runtime_paper=60),
    shell:
        "delay-stability-gpu-slot --gpus {resources.gpu} -- delay-stability stability-polish --checkpoint {input} --out {output.ckpt} --info {output.info} "
        "{params.device}{params.opts} > {log} 2>&1"


rule stability_sharpness:
    """a = λmax of the training-loss Hessian at the minimum."""
    input:
        str(SCALE_DIR / "{exp}" / "minimum" / "minimum.pt"),
    output:
        str(SCALE_DIR / "{exp}" / "sharpness.json"),
    params:
        device=device_flag(),
        flags=lambda wc: stability_exp.sharpness_flags(EXP[wc.exp]["sharpness"]),
        code=src_hash("measure"),
    conda:
        "../../environment.yml"
    log:
        str(LOGS / "{exp}" / "sharpness.log"),
    resources:
        **gpu_resources(runtime_quick=30, runtime_paper=120),
    shell:
        "delay-stability-gpu-slot --gpus {resources.gpu} -- delay-stability sharpness --checkpoint {input} --out {output} {params.device}"
        "{params.flags} > {log} 2>&1"


rule stability_kick:
    """The start of every continuation: the minimum plus a small kick (top eigenvector or random)."""
    input:
        ckpt=str(SCALE_DIR / "{exp}" / "minimum" / "minimum.pt"),
        sharpness=str(SCALE_DIR / "{exp}" / "sharpness.json"),
    output:
        ckpt=str(SCALE_DIR / "{exp}" / "kick" / "kicked.pt"),
        info=str(SCALE_DIR / "{exp}" / "kick" / "kick.json"),
    params:
        device=device_flag(),
        norm=lambda wc: EXP[wc.exp]["kick"]["norm"],
        direction=lambda wc: EXP[wc.exp]["kick"]["direction"],
        flags=lambda wc: stability_exp.sharpness_flags(EXP[wc.exp]["sharpness"]),
        code=src_hash("experiments.stability"),
    conda:
        "../../environment.yml"
    log:
        str(LOGS / "{exp}" / "kick.log"),
    resources:
        **gpu_resources(runtime_quick=30, runtime_paper=120),
    shell:
        "delay-stability-gpu-slot --gpus {resources.gpu} -- delay-stability stability-kick --checkpoint {input.ckpt} --sharpness {input.sharpness} "
        "--norm {params.norm} --direction {params.direction} --out {output.ckpt} --info {output.info} "
        "{params.device}> {log} 2>&1"


rule stability_search:
    """Largest learning rate that stays at the minimum, for one (variant, m, tau)."""
    input:
        kick=str(SCALE_DIR / "{exp}" / "kick" / "kick.json"),
        spec=str(SCALE_DIR / "{exp}" / "baseline" / "spec.json"),
    output:
        str(SCALE_DIR / "{exp}" / "search" / "{variant}-m{m}" / "tau{tau}" / "search.json"),
    params:
        continuation=lambda wc: json.dumps(EXP[wc.exp]["continuation"], sort_keys=True),
        search=lambda wc: json.dumps(EXP[wc.exp]["search"], sort_keys=True),
        code=src_hash("experiments.stability"),
    wildcard_constraints:
        variant=as_regex(VARIANTS),
        tau=r"\d+",
    conda:
        "../../environment.yml"
    log:
        str(LOGS / "{exp}" / "search" / "{variant}-m{m}-tau{tau}.log"),
    benchmark:
        str(LOGS / "{exp}" / "search" / "{variant}-m{m}-tau{tau}.benchmark.tsv")
    resources:
        **gpu_resources(runtime_quick=60, runtime_paper=48 * 60),
    shell:
        "delay-stability-gpu-slot --gpus {resources.gpu} -- delay-stability stability-search --kick {input.kick} --spec {input.spec} "
        "--continuation {params.continuation:q} --search {params.search:q} "
        "--variant {wildcards.variant} --momentum {wildcards.m} --tau {wildcards.tau} "
        "--out {output} > {log} 2>&1"


rule stability_curve:
    """A long continuation at η = factor·η_max, without early stop (the curves of fig. 12)."""
    input:
        search=str(SCALE_DIR / "{exp}" / "search" / "plain-m0" / "tau{tau}" / "search.json"),
        kick=str(SCALE_DIR / "{exp}" / "kick" / "kick.json"),
        spec=str(SCALE_DIR / "{exp}" / "baseline" / "spec.json"),
    output:
        summary=str(SCALE_DIR / "{exp}" / "curves" / "tau{tau}" / "x{factor}" / "summary.json"),
        metrics=str(SCALE_DIR / "{exp}" / "curves" / "tau{tau}" / "x{factor}" / "metrics.csv"),
    params:
        continuation=lambda wc: json.dumps(EXP[wc.exp]["continuation"], sort_keys=True),
        epochs=lambda wc: EXP[wc.exp]["curves"]["epochs"],
        code=src_hash("experiments.stability"),
    wildcard_constraints:
        tau=r"\d+",
    conda:
        "../../environment.yml"
    log:
        str(LOGS / "{exp}" / "curves" / "tau{tau}-x{factor}.log"),
    benchmark:
        str(LOGS / "{exp}" / "curves" / "tau{tau}-x{factor}.benchmark.tsv")
    resources:
        **gpu_resources(runtime_quick=30, runtime_paper=24 * 60),
    shell:
        "delay-stability-gpu-slot --gpus {resources.gpu} -- delay-stability stability-curve --search {input.search} --kick {input.kick} --spec {input.spec} "
        "--continuation {params.continuation:q} --factor {wildcards.factor} --epochs {params.epochs} "
        "--out $(dirname {output.summary}) > {log} 2>&1"


rule stability_tables:
    """Tidy tables of every search: thresholds.csv (η_max per τ), fits.csv (1/η_max vs τ), probes.csv
    (every continuation), curves.csv (the long continuations)."""
    input:
        **stability_tables.table_inputs({SCALE_DIR / e: EXP[e] for e in STABILITY_EXPERIMENTS}),
    output:
        thresholds=str(STABILITY_TABLES / "thresholds.csv"),
        fits=str(STABILITY_TABLES / "fits.csv"),
        probes=str(STABILITY_TABLES / "probes.csv"),
        curves=str(STABILITY_TABLES / "curves.csv"),
    params:
        code=src_hash("experiments.stability_tables"),
    localrule: True
    conda:
        "../../environment.yml"
    log:
        str(LOGS / "stability" / "tables.log"),
    shell:
        "delay-stability stability-collect --search {input.search} --curve {input.curves} "
        "--thresholds {output.thresholds} --probes {output.probes} --curves {output.curves} > {log} 2>&1"


rule stability_figure_tables:
    """The same tables, from the runs one figure draws only (a figure target builds what it shows)."""
    input:
        unpack(lambda wc: stability_tables.table_inputs(
            {SCALE_DIR / STABILITY_FIGURES[wc.figure]: EXP[STABILITY_FIGURES[wc.figure]]}, wc.figure)),
    output:
        thresholds=str(STABILITY_TABLES / "{figure}" / "thresholds.csv"),
        fits=str(STABILITY_TABLES / "{figure}" / "fits.csv"),
        probes=str(STABILITY_TABLES / "{figure}" / "probes.csv"),
        curves=str(STABILITY_TABLES / "{figure}" / "curves.csv"),
    params:
        code=src_hash("experiments.stability_tables"),
    wildcard_constraints:
        figure=as_regex(STABILITY_FIGURES),
    localrule: True
    conda:
        "../../environment.yml"
    log:
        str(LOGS / "stability" / "{figure}-tables.log"),
    shell:
        "delay-stability stability-collect --search {input.search} --curve {input.curves} "
        "--thresholds {output.thresholds} --probes {output.probes} --curves {output.curves} > {log} 2>&1"

