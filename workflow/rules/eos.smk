# Beyond the paper: the delayed edge of stability (figures/delayed_eos.pdf).
# Full-batch delayed GD whose sharpness a(t) = λmax(H) is tracked along training (`eos-run`):
#   fixed:   one η for every τ, from initialisation            results/<scale>/eos/fixed/lr{lr}/tau{tau}/
#   scaled:  η = α*(τ, m)/edge, from a shared synchronous burn-in
#            (results/<scale>/eos/burn_in/)                    results/<scale>/eos/scaled/{variant}-m{m}/tau{tau}/
# -> `eos-collect` -> plateaus.csv, tracks.csv, theory.csv -> `plot delayed_eos`. See delay_stability.eos.

include: "eos_common.smk"


if EOS:
    ALL_TARGETS.extend(figure("delayed_eos"))


rule eos_fixed:
    """Delayed GD at one η from initialisation, with sharpness tracking."""
    output:
        spec=str(EOS_DIR / "fixed" / "lr{lr}" / "tau{tau}" / "request.json"),
        **eos_outputs(EOS_DIR / "fixed" / "lr{lr}" / "tau{tau}"),
    params:
        spec=lambda wc: json.dumps(eos_fixed_spec(float(wc.lr), int(wc.tau)), sort_keys=True),
        track=lambda wc: eos_track_flags(),
        code=EOS_CODE,
        cli=EOS_CLI_GPU,
    wildcard_constraints:
        lr=r"[0-9.e+-]+",
        tau=r"\d+",
    conda:
        "../../environment.yml"
    log:
        str(EOS_LOGS / "fixed-lr{lr}-tau{tau}.log"),
    benchmark:
        str(EOS_LOGS / "fixed-lr{lr}-tau{tau}.benchmark.tsv")
    resources:
        **gpu_resources(runtime_quick=20, runtime_paper=12 * 60, mem_paper=16000),
    shell:
        "printf '%s' {params.spec:q} > {output.spec} && "
        "{params.cli} eos-run --spec {output.spec} --out $(dirname {output.spec}) --series fixed "
        "{params.track} > {log} 2>&1"


rule eos_burn_in:
    """Synchronous GD from initialisation to just below the scaled runs' edge: their shared start."""
    output:
        spec=str(EOS_DIR / "burn_in" / "request.json"),
        **eos_outputs(EOS_DIR / "burn_in"),
    params:
        spec=lambda wc: json.dumps(eos_burn_in_spec(), sort_keys=True),
        track=lambda wc: eos_track_flags(),
        code=EOS_CODE,
        cli=EOS_CLI_GPU,
    conda:
        "../../environment.yml"
    log:
        str(EOS_LOGS / "burn_in.log"),
    benchmark:
        str(EOS_LOGS / "burn_in.benchmark.tsv")
    resources:
        **gpu_resources(runtime_quick=20, runtime_paper=4 * 60, mem_paper=16000),
    shell:
        "printf '%s' {params.spec:q} > {output.spec} && "
        "{params.cli} eos-run --spec {output.spec} --out $(dirname {output.spec}) --series burn_in "
        "{params.track} > {log} 2>&1"


rule eos_scaled:
    """Delayed GD (plain or with momentum) at η = α*(τ, m)/edge from the burn-in, with tracking."""
    input:
        burn_in=str(EOS_DIR / "burn_in" / "final.pt"),
    output:
        spec=str(EOS_DIR / "scaled" / "{variant}-m{m}" / "tau{tau}" / "request.json"),
        **eos_outputs(EOS_DIR / "scaled" / "{variant}-m{m}" / "tau{tau}"),
    params:
        spec=lambda wc: json.dumps(eos_scaled_spec(wc.variant, float(wc.m), int(wc.tau)), sort_keys=True),
        edge=lambda wc: EOS["scaled"]["edge"],
        track=lambda wc: eos_track_flags(),
        code=EOS_CODE,
        cli=EOS_CLI_GPU,
    wildcard_constraints:
        variant="plain|momentum|shifted",
        tau=r"\d+",
    conda:
        "../../environment.yml"
    log:
        str(EOS_LOGS / "scaled-{variant}-m{m}-tau{tau}.log"),
    benchmark:
        str(EOS_LOGS / "scaled-{variant}-m{m}-tau{tau}.benchmark.tsv")
    resources:
        **gpu_resources(runtime_quick=30, runtime_paper=12 * 60, mem_paper=16000),
    shell:
        "printf '%s' {params.spec:q} > {output.spec} && "
        "{params.cli} eos-run --spec {output.spec} --out $(dirname {output.spec}) --series scaled "
        "--edge {params.edge} {params.track} > {log} 2>&1"


rule eos_collect:
    """Tidy tables: plateaus.csv (one row per run), tracks.csv (every measurement), theory.csv (α*)."""
    input:
        eos_tracks,
    output:
        plateaus=str(EOS_DIR / "plateaus.csv"),
        tracks=str(EOS_DIR / "tracks.csv"),
        theory=str(EOS_DIR / "theory.csv"),
    params:
        edge_tol=lambda wc: EOS.get("edge_tol", 0.05),
        code=src_hash("theory", "train", "eos", "eos_tables"),
        cli=EOS_CLI,
    conda:
        "../../environment.yml"
    log:
        str(EOS_LOGS / "collect.log"),
    shell:
        "{params.cli} eos-collect --run {input} --out {output.plateaus} --tracks {output.tracks} "
        "--theory {output.theory} --edge-tol {params.edge_tol} > {log} 2>&1"


rule delayed_eos:
    """Sharpness vs step at fixed η; a(t)/(α*/η) at η = α*/edge; 1/(η·plateau) vs τ against 1/α*."""
    input:
        plateaus=str(EOS_DIR / "plateaus.csv"),
        tracks=str(EOS_DIR / "tracks.csv"),
        theory=str(EOS_DIR / "theory.csv"),
    output:
        pdf=figure("delayed_eos")[0],
        png=figure("delayed_eos")[1],
    params:
        ds=DS,
        scale=SCALE,
        opts=lambda wc: eos_plot_options(),
        code=src_hash("plots"),
    conda:
        "../../environment.yml"
    log:
        str(LOGS / "delayed_eos.log"),
    shell:
        "{params.ds} plot delayed_eos --table {input.plateaus} --table {input.tracks} --table {input.theory} "
        "--scale {params.scale} --options {params.opts:q} --out {output.pdf} > {log} 2>&1"
