# The true stability edge of random staleness (beyond the paper; delay_stability.theory section 8).
# Predicted edges of every staleness model by criterion (`random-staleness-theory`) and, from the
# stability experiment's kicked minimum (`random_staleness.from`, reused, not retrained), the fig. 2
# search under each model's random schedule, once per seed (`random-staleness-search`) -> edges.csv,
# summary.csv (`random-staleness-collect`); the real-workers continuations re-scored by each criterion
# (`random-staleness-rescore`, when that experiment is configured) -> figures/random_staleness.pdf.
# The models, the guard on schedules DelayedSGD lacks, the tables: delay_stability.experiments.random_staleness.
from delay_stability.experiments import random_staleness as rs_exp

RS = EXP.get("random_staleness")
RS_DIR = SCALE_DIR / "random_staleness"
RS_LOGS = LOGS / "random_staleness"
RS_SEARCHED = rs_exp.searched_models(RS) if RS else {}
RS_SOURCE = SCALE_DIR / RS["from"] if RS else None
RS_RESCORE = bool(RS) and "real_workers" in EXP
RS_RW_DIR = SCALE_DIR / "real_workers"

if RS:
    ALL_TARGETS.extend(str(RS_DIR / t) for t in ("predictions.csv", "summary.csv"))
    if RS_RESCORE:
        ALL_TARGETS.append(str(RS_DIR / "scores.csv"))
    register_figure("random_staleness", [RS_DIR / "summary.csv"] + ([RS_DIR / "scores.csv"] if RS_RESCORE else []),
                    lambda: json.dumps({"scale": SCALE}))


rule random_staleness_theory:
    """Mean, mean-square and almost-sure edges of every model (no training)."""
    output:
        str(RS_DIR / "predictions.csv"),
    params:
        block=lambda wc: json.dumps({k: RS[k] for k in ("models", "lyapunov", "seeds")}, sort_keys=True),
        code=src_hash("experiments.random_staleness"),
    localrule: True
    conda:
        "../../environment.yml"
    log:
        str(RS_LOGS / "theory.log"),
    shell:
        "delay-stability random-staleness-theory --block {params.block:q} --out {output} > {log} 2>&1"


rule random_staleness_search:
    """The fig2 search under one model's schedule, once per seed (probes are run folders beside it)."""
    input:
        kick=str(RS_SOURCE / "kick" / "kick.json") if RS else [],
        spec=str(RS_SOURCE / "baseline" / "spec.json") if RS else [],
    output:
        str(RS_DIR / "search" / "{model}" / "searches.json"),
    params:
        continuation=lambda wc: json.dumps(EXP[RS["from"]]["continuation"], sort_keys=True),
        search=lambda wc: json.dumps(rs_exp.search_settings(EXP[RS["from"]], RS), sort_keys=True),
        block=lambda wc: json.dumps({k: RS[k] for k in ("models", "lyapunov", "seeds")}, sort_keys=True),
        code=src_hash("experiments.random_staleness"),
    wildcard_constraints:
        model=as_regex(RS_SEARCHED) if RS_SEARCHED else "none",
    conda:
        "../../environment.yml"
    log:
        str(RS_LOGS / "search-{model}.log"),
    benchmark:
        str(RS_LOGS / "search-{model}.benchmark.tsv")
    resources:
        **gpu_resources(runtime_quick=30, runtime_paper=72 * 60),
    shell:
        "delay-stability-gpu-slot --gpus {resources.gpu} -- delay-stability random-staleness-search "
        "--kick {input.kick} --spec {input.spec} --continuation {params.continuation:q} "
        "--search {params.search:q} --block {params.block:q} --label {wildcards.model} --out {output} > {log} 2>&1"


rule random_staleness_tables:
    """edges.csv (one row per search) and summary.csv (per model: measured over seeds beside the criteria)."""
    input:
        predictions=str(RS_DIR / "predictions.csv"),
        searches=[str(RS_DIR / "search" / label / "searches.json") for label in RS_SEARCHED],
    output:
        edges=str(RS_DIR / "edges.csv"),
        summary=str(RS_DIR / "summary.csv"),
        markdown=str(RS_DIR / "summary.md"),
    params:
        code=src_hash("experiments.random_staleness_tables"),
    localrule: True
    conda:
        "../../environment.yml"
    log:
        str(RS_LOGS / "tables.log"),
    shell:
        "delay-stability random-staleness-collect --predictions {input.predictions} --search {input.searches} "
        "--edges {output.edges} --summary {output.summary} --markdown {output.markdown} > {log} 2>&1"


rule random_staleness_rescore:
    """The real-workers continuations called stay/leave by every criterion's edge."""
    input:
        continuations=str(RS_RW_DIR / "continuations.csv"),
        histograms=str(RS_RW_DIR / "histograms.csv"),
    output:
        rescored=str(RS_DIR / "rescored.csv"),
        scores=str(RS_DIR / "scores.csv"),
        markdown=str(RS_DIR / "scores.md"),
    params:
        lyapunov=lambda wc: json.dumps(RS["lyapunov"], sort_keys=True),
        code=src_hash("experiments.random_staleness_tables"),
    localrule: True
    conda:
        "../../environment.yml"
    log:
        str(RS_LOGS / "rescore.log"),
    shell:
        "delay-stability random-staleness-rescore --continuations {input.continuations} "
        "--histograms {input.histograms} --lyapunov {params.lyapunov:q} --rescored {output.rescored} "
        "--scores {output.scores} --markdown {output.markdown} > {log} 2>&1"

