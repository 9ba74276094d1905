# Minima stability under delay (Section 3.1, appendix F): figures 2, 12 and 4 (right).
# baseline -> minimum (polish) -> sharpness -> kick -> search per (variant, m, tau) -> tables -> figures
# Every step writes under results/<scale>/<experiment>/; see delay_stability.pipeline for the criterion.


if STABILITY_EXPERIMENTS:
    if "stability" in EXP:
        ALL_TARGETS.extend(figure("fig2") + figure("fig12"))
    ALL_TARGETS.extend(figure("fig4"))


rule stability_baseline:
    """Synchronous training to a steady state: the minimum every continuation starts from."""
    output:
        final=protected(str(SCALE_DIR / "{exp}" / "baseline" / "final.pt")),
        metrics=str(SCALE_DIR / "{exp}" / "baseline" / "metrics.csv"),
        summary=str(SCALE_DIR / "{exp}" / "baseline" / "summary.json"),
        run=str(SCALE_DIR / "{exp}" / "baseline" / "run.json"),
        spec=str(SCALE_DIR / "{exp}" / "baseline" / "spec.json"),
    params:
        ds=DS_GPU,
        spec=lambda wc: json.dumps(stability_baseline_spec(wc.exp), sort_keys=True),
        code=src_hash("asgd", "models", "data", "train"),
    wildcard_constraints:
        exp="stability|shifted_stability",
    conda:
        "../../environment.yml"
    log:
        str(LOGS / "{exp}" / "baseline.log"),
    benchmark:
        str(LOGS / "{exp}" / "baseline.benchmark.tsv")
    resources:
        **gpu_resources(runtime_quick=30, runtime_paper=72 * 60),
    shell:
        "printf '%s' {params.spec:q} > {output.spec} && "
        "{params.ds} train --spec {output.spec} --out $(dirname {output.final}) > {log} 2>&1"


rule stability_minimum:
    """Polish the steady state to a critical point (L-BFGS), or take it as is (polish: null)."""
    input:
        str(SCALE_DIR / "{exp}" / "baseline" / "final.pt"),
    output:
        ckpt=str(SCALE_DIR / "{exp}" / "minimum" / "minimum.pt"),
        info=str(SCALE_DIR / "{exp}" / "minimum" / "polish.json"),
    params:
        ds=DS_GPU,
        device=device_flag(),
        opts=lambda wc: polish_flags(EXP[wc.exp].get("polish")),
        code=src_hash("models", "data", "train", "pipeline"),
    conda:
        "../../environment.yml"
    log:
        str(LOGS / "{exp}" / "minimum.log"),
    resources:
        **gpu_resources(runtime_quick=30, runtime_paper=60),
    shell:
        "{params.ds} stability-polish --checkpoint {input} --out {output.ckpt} --info {output.info} "
        "{params.device}{params.opts} > {log} 2>&1"


rule stability_sharpness:
    """a = λmax of the training-loss Hessian at the minimum."""
    input:
        str(SCALE_DIR / "{exp}" / "minimum" / "minimum.pt"),
    output:
        str(SCALE_DIR / "{exp}" / "sharpness.json"),
    params:
        ds=DS_GPU,
        device=device_flag(),
        flags=lambda wc: sharpness_flags(EXP[wc.exp]),
        code=src_hash("models", "data", "train", "sharpness"),
    conda:
        "../../environment.yml"
    log:
        str(LOGS / "{exp}" / "sharpness.log"),
    resources:
        **gpu_resources(runtime_quick=30, runtime_paper=120),
    shell:
        "{params.ds} sharpness --checkpoint {input} --out {output} {params.device}"
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
        ds=DS_GPU,
        device=device_flag(),
        norm=lambda wc: EXP[wc.exp].get("kick", {}).get("norm", 0.0),
        direction=lambda wc: EXP[wc.exp].get("kick", {}).get("direction", "top_eigenvector"),
        flags=lambda wc: sharpness_flags(EXP[wc.exp]),
        code=src_hash("models", "data", "train", "sharpness", "pipeline"),
    conda:
        "../../environment.yml"
    log:
        str(LOGS / "{exp}" / "kick.log"),
    resources:
        **gpu_resources(runtime_quick=30, runtime_paper=120),
    shell:
        "{params.ds} stability-kick --checkpoint {input.ckpt} --sharpness {input.sharpness} "
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
        ds=DS_GPU,
        continuation=lambda wc: json.dumps(EXP[wc.exp]["continuation"], sort_keys=True),
        search=lambda wc: json.dumps(EXP[wc.exp]["search"], sort_keys=True),
        code=src_hash("asgd", "models", "data", "train", "pipeline", "theory"),
    wildcard_constraints:
        variant="plain|momentum|shifted",
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
        "{params.ds} stability-search --kick {input.kick} --spec {input.spec} "
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
        ds=DS_GPU,
        continuation=lambda wc: json.dumps(EXP[wc.exp]["continuation"], sort_keys=True),
        epochs=lambda wc: EXP[wc.exp]["curves"]["epochs"],
        code=src_hash("asgd", "models", "data", "train", "pipeline"),
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
        "{params.ds} stability-curve --search {input.search} --kick {input.kick} --spec {input.spec} "
        "--continuation {params.continuation:q} --factor {wildcards.factor} --epochs {params.epochs} "
        "--out $(dirname {output.summary}) > {log} 2>&1"


rule stability_tables:
    """Tidy tables: thresholds.csv (η_max per τ), probes.csv (every continuation), curves.csv."""
    input:
        search=all_search_files,
        curves=all_curve_files,
    output:
        thresholds=str(STABILITY_TABLES / "thresholds.csv"),
        fits=str(STABILITY_TABLES / "fits.csv"),
        probes=str(STABILITY_TABLES / "probes.csv"),
        curves=str(STABILITY_TABLES / "curves.csv"),
    params:
        ds=DS,
        code=src_hash("tables"),
    localrule: True
    conda:
        "../../environment.yml"
    log:
        str(LOGS / "stability" / "tables.log"),
    shell:
        "{params.ds} stability-collect --search {input.search} --curve {input.curves} "
        "--thresholds {output.thresholds} --probes {output.probes} --curves {output.curves} > {log} 2>&1"


rule fig2:
    """Epochs to leave the minimum vs η per τ (left); 1/η_max vs τ with fit and theory (right)."""
    input:
        thresholds=str(STABILITY_TABLES / "thresholds.csv"),
        probes=str(STABILITY_TABLES / "probes.csv"),
    output:
        pdf=str(FIGURES / "fig2.pdf"),
        png=str(FIGURES / "fig2.png"),
    params:
        ds=DS,
        opts=lambda wc: json.dumps({"experiment": "stability", "scale": SCALE,
                                    **EXP.get("stability", {}).get("plots", {}).get("fig2", {})}),
    localrule: True
    conda:
        "../../environment.yml"
    log:
        str(LOGS / "fig2.log"),
    shell:
        "{params.ds} plot fig2 --table {input.thresholds} --table {input.probes} --options {params.opts:q} "
        "--out {output.pdf} > {log} 2>&1"


rule fig12:
    """Validation error vs epochs of the continuations (the (τ, η) pairs of fig2)."""
    input:
        curves=str(STABILITY_TABLES / "curves.csv"),
        thresholds=str(STABILITY_TABLES / "thresholds.csv"),
    output:
        pdf=str(FIGURES / "fig12.pdf"),
        png=str(FIGURES / "fig12.png"),
    params:
        ds=DS,
        opts=lambda wc: json.dumps({"experiment": "stability", "scale": SCALE,
                                    **EXP.get("stability", {}).get("plots", {}).get("fig12", {})}),
    localrule: True
    conda:
        "../../environment.yml"
    log:
        str(LOGS / "fig12.log"),
    shell:
        "{params.ds} plot fig12 --table {input.curves} --table {input.thresholds} --options {params.opts:q} "
        "--out {output.pdf} > {log} 2>&1"


rule fig4:
    """Shifted momentum: theory 1/(aη) vs τ (left); measured 1/(a·η_max) vs τ with fits (right)."""
    input:
        theory=str(THEORY_DIR / "fig4a.csv"),
        thresholds=str(STABILITY_TABLES / "thresholds.csv"),
    output:
        pdf=str(FIGURES / "fig4.pdf"),
        png=str(FIGURES / "fig4.png"),
    params:
        ds=DS,
        opts=lambda wc: json.dumps({"experiment": FIG4_EXPERIMENT, "scale": SCALE,
                                    **EXP.get(FIG4_EXPERIMENT, {}).get("plots", {}).get("fig4", {})}),
    localrule: True
    conda:
        "../../environment.yml"
    log:
        str(LOGS / "fig4.log"),
    shell:
        "{params.ds} plot fig4 --table {input.theory} --table {input.thresholds} --options {params.opts:q} "
        "--out {output.pdf} > {log} 2>&1"
