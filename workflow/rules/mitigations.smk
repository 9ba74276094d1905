# Which delay mitigations keep the minima? (beyond the paper; delay_stability.theory section 6)
# The stability experiment's kicked minimum (`mitigations.from`, reused, not retrained) -> one search job
# per rule over every τ (`mitigations-search`) -> edges.csv (`mitigations-collect`) -> figures/mitigations.pdf;
# and DC-ASGD's noise parameter c at that minimum (`mitigations-noise`) -> noise.csv.
# The grid, the predictions and the tables: delay_stability.experiments.mitigations.
from delay_stability.experiments import mitigations as mit_exp

MIT = EXP.get("mitigations")
MIT_DIR = SCALE_DIR / "mitigations"
MIT_LOGS = LOGS / "mitigations"
MIT_RULES = mit_exp.rules(MIT) if MIT else {}
MIT_SOURCE = SCALE_DIR / MIT["from"] if MIT else None

if MIT:
    ALL_TARGETS.extend(str(MIT_DIR / t) for t in ("edges.csv", "noise.csv"))
    register_figure("mitigations", [MIT_DIR / "edges.csv"],
                    lambda: json.dumps({"scale": SCALE, **MIT["plots"]["mitigations"]}))


rule mitigations_search:
    """The fig2 search for one rule at every τ of the block (probes are run folders beside it)."""
    input:
        kick=str(MIT_SOURCE / "kick" / "kick.json") if MIT else [],
        spec=str(MIT_SOURCE / "baseline" / "spec.json") if MIT else [],
    output:
        str(MIT_DIR / "search" / "{rule}" / "searches.json"),
    params:
        continuation=lambda wc: json.dumps(EXP[MIT["from"]]["continuation"], sort_keys=True),
        search=lambda wc: json.dumps(mit_exp.search_settings(EXP[MIT["from"]], MIT), sort_keys=True),
        rule=lambda wc: json.dumps(MIT_RULES[wc.rule], sort_keys=True),
        taus=lambda wc: ",".join(str(t) for t in MIT["taus"]),
        code=src_hash("experiments.mitigations"),
    wildcard_constraints:
        rule=as_regex(MIT_RULES) if MIT_RULES else "none",
    conda:
        "../../environment.yml"
    log:
        str(MIT_LOGS / "search-{rule}.log"),
    benchmark:
        str(MIT_LOGS / "search-{rule}.benchmark.tsv")
    resources:
        **gpu_resources(runtime_quick=30, runtime_paper=72 * 60),
    shell:
        "delay-stability-gpu-slot --gpus {resources.gpu} -- delay-stability mitigations-search --kick {input.kick} "
        "--spec {input.spec} --continuation {params.continuation:q} --search {params.search:q} "
        "--rule {params.rule:q} --label {wildcards.rule} --taus {params.taus} --out {output} > {log} 2>&1"


rule mitigations_noise:
    """c = λ·E[g²]/a at the minimum per minibatch size, and DC-ASGD's edge at that c."""
    input:
        minimum=str(MIT_SOURCE / "minimum" / "minimum.pt") if MIT else [],
        kick=str(MIT_SOURCE / "kick" / "kick.json") if MIT else [],
    output:
        str(MIT_DIR / "noise.csv"),
    params:
        sizes=lambda wc: ",".join(str(b) for b in MIT["noise"]["batch_sizes"]),
        lambdas=lambda wc: json.dumps(MIT["noise"]["lambdas"], sort_keys=True),
        taus=lambda wc: ",".join(str(t) for t in MIT["noise"]["taus"]),
        code=src_hash("experiments.mitigations"),
    conda:
        "../../environment.yml"
    log:
        str(MIT_LOGS / "noise.log"),
    resources:
        **gpu_resources(runtime_quick=10, runtime_paper=120),
    shell:
        "delay-stability mitigations-noise --checkpoint {input.minimum} --kick {input.kick} "
        "--batch-sizes {params.sizes} --lambdas {params.lambdas:q} --taus {params.taus} --out {output} > {log} 2>&1"


rule mitigations_tables:
    """edges.csv: measured and predicted edges of every rule and τ."""
    input:
        [str(MIT_DIR / "search" / label / "searches.json") for label in MIT_RULES],
    output:
        str(MIT_DIR / "edges.csv"),
    params:
        code=src_hash("experiments.mitigations_tables"),
    localrule: True
    conda:
        "../../environment.yml"
    log:
        str(MIT_LOGS / "tables.log"),
    shell:
        "delay-stability mitigations-collect --search {input} --out {output} > {log} 2>&1"

