# Beyond the paper: the delayed edge of stability (figures/delayed_eos.pdf).
# Full-batch delayed GD whose sharpness a(t) = λmax(H) is tracked along training (`eos-run`):
#   fixed:   one η for every τ, from initialisation            results/<scale>/eos/fixed/lr{lr}/tau{tau}/
#   scaled:  η = α*(τ, m)/edge, from a shared synchronous burn-in
#            (results/<scale>/eos/burn_in/)                    results/<scale>/eos/scaled/{variant}-m{m}/tau{tau}/
# -> `eos-collect` -> plateaus.csv, tracks.csv, theory.csv -> `plot delayed_eos` (rule eos_figure).
# See delay_stability.experiments.eos (tracking) and experiments.eos_tables (the analysis).


from delay_stability.experiments import eos as eos_exp
from delay_stability.experiments import eos_tables

EOS = EXP.get("eos")
EOS_DIR = SCALE_DIR / "eos"
EOS_LOGS = LOGS / "eos"
EOS_CODE = src_hash("experiments.eos")
EOS_BASE = with_run_settings(EOS["train"]) if EOS else {}
EOS_BURN_IN = str(EOS_DIR / "burn_in" / "final.pt")

# Every run's spec (checked with the whole config in common.smk): {folder name: grid run} and
# {(variant, m, tau): spec without lr (eos-run --edge sets it)}.
EOS_FIXED = eos_exp.fixed_runs(EOS, EOS_BASE) if EOS else {}
EOS_SCALED = {r: eos_exp.scaled_spec(EOS, EOS_BASE, *r, EOS_BURN_IN) for r in eos_exp.scaled_runs(EOS)} if EOS else {}
if EOS:
    register_figure("delayed_eos", [EOS_DIR / f"{t}.csv" for t in ("plateaus", "tracks", "theory")],
                    lambda: eos_tables.plot_options(EOS, SCALE))


rule eos_fixed:
    """Delayed GD at one η from initialisation, with sharpness tracking."""
    output:
        spec=str(EOS_DIR / "fixed" / "lr{lr}" / "tau{tau}" / "request.json"),
        **{f.split('.')[0]: str(EOS_DIR / "fixed" / "lr{lr}" / "tau{tau}" / f) for f in eos_exp.RUN_FILES},
    params:
        spec=lambda wc: json.dumps(EOS_FIXED[f"lr{wc.lr}/tau{wc.tau}"].spec, sort_keys=True),
        track=lambda wc: eos_exp.track_flags(EOS["track"]),
        code=EOS_CODE,
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
        "delay-stability-gpu-slot --gpus {resources.gpu} -- delay-stability eos-run --spec {output.spec} --out $(dirname {output.spec}) --series fixed "
        "{params.track} > {log} 2>&1"


rule eos_burn_in:
    """Synchronous GD from initialisation to just below the scaled runs' edge: their shared start."""
    output:
        spec=str(EOS_DIR / "burn_in" / "request.json"),
        **{f.split('.')[0]: str(EOS_DIR / "burn_in" / f) for f in eos_exp.RUN_FILES},
    params:
        spec=lambda wc: json.dumps(eos_exp.burn_in_spec(EOS, EOS_BASE), sort_keys=True),
        track=lambda wc: eos_exp.track_flags(EOS["track"]),
        code=EOS_CODE,
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
        "delay-stability-gpu-slot --gpus {resources.gpu} -- delay-stability eos-run --spec {output.spec} --out $(dirname {output.spec}) --series burn_in "
        "{params.track} > {log} 2>&1"


rule eos_scaled:
    """Delayed GD (plain or with momentum) at η = α*(τ, m)/edge from the burn-in, with tracking."""
    input:
        burn_in=EOS_BURN_IN,
    output:
        spec=str(EOS_DIR / "scaled" / "{variant}-m{m}" / "tau{tau}" / "request.json"),
        **{f.split('.')[0]: str(EOS_DIR / "scaled" / "{variant}-m{m}" / "tau{tau}" / f) for f in eos_exp.RUN_FILES},
    params:
        spec=lambda wc: json.dumps(EOS_SCALED[(wc.variant, float(wc.m), int(wc.tau))], sort_keys=True),
        edge=lambda wc: EOS["scaled"]["edge"],
        track=lambda wc: eos_exp.track_flags(EOS["track"]),
        code=EOS_CODE,
    wildcard_constraints:
        variant=as_regex(VARIANTS),
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
        "delay-stability-gpu-slot --gpus {resources.gpu} -- delay-stability eos-run --spec {output.spec} --out $(dirname {output.spec}) --series scaled "
        "--edge {params.edge} {params.track} > {log} 2>&1"


rule eos_collect:
    """Tidy tables: plateaus.csv (one row per run), tracks.csv (every measurement), theory.csv (α*)."""
    input:
        eos_exp.track_files(EOS_DIR, EOS, EOS_BASE) if EOS else [],
    output:
        plateaus=str(EOS_DIR / "plateaus.csv"),
        tracks=str(EOS_DIR / "tracks.csv"),
        theory=str(EOS_DIR / "theory.csv"),
    params:
        edge_tol=lambda wc: EOS["edge_tol"],
        code=src_hash("experiments.eos_tables"),
    conda:
        "../../environment.yml"
    log:
        str(EOS_LOGS / "collect.log"),
    shell:
        "delay-stability eos-collect --run {input} --out {output.plateaus} --tracks {output.tracks} "
        "--theory {output.theory} --edge-tol {params.edge_tol} > {log} 2>&1"

