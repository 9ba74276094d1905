# Table 1 (Section 3.2): SB, LB (τ = 0), ASGD (delay τ, the small-batch η), +LR (the paper's rule on the
# large-batch η), +30% (+LR with 30% more epochs), for every network of the table1 block.
#   SB scan (quick scale: sb_lrs; one ensemble per network when it batches, else generic train runs)
#   -> <network>/scan.csv -> `table1-arm` per (network, arm) -> table1.csv, table1.md -> figures/table1.pdf
# The arms and the rule: delay_stability.experiments.table1; the tables (the accuracy of a diverged run)
# and the figure's options: experiments.table1_tables.
from delay_stability.experiments import table1 as t1_exp
from delay_stability.experiments import table1_tables as t1_tables

T1 = EXP.get("table1")
T1_DIR = SCALE_DIR / "generalization" / "table1"
T1_LOGS = LOGS / "table1"
T1_NETS = t1_exp.networks(T1) if T1 else {}
T1_BASE = {n: with_run_settings(net["train"]) for n, net in T1_NETS.items()}
#: network -> the GridRuns of its SB scan (empty at the paper scale: SB's η is the network's lr)
T1_SCAN = {n: t1_exp.scan_runs(T1, base) for n, base in T1_BASE.items()}
T1_SLUGS = {t1_exp.slug(n): n for n in T1_NETS}

if T1:
    register_figure("table1", [SCALE_DIR / "generalization" / "table1.csv"], lambda: t1_tables.plot_options(T1, SCALE))


rule table1_scan:
    """The SB scan of one network (τ = 0, sb_lrs x seeds) and scan.csv; η_SB is its best η."""
    output:
        str(T1_DIR / "{network}" / "scan.csv"),
    params:
        block=lambda wc: json.dumps(T1, sort_keys=True),
        base=lambda wc: json.dumps(T1_BASE[T1_SLUGS[wc.network]], sort_keys=True),
        name=lambda wc: T1_SLUGS[wc.network],
        root=lambda wc, output: str(Path(output[0]).parents[1]),
        code=src_hash("experiments.table1", "ensemble", "train"),
    wildcard_constraints:
        network=as_regex(sorted(t1_exp.slug(n) for n, rs in T1_SCAN.items() if rs)),
    conda:
        "../../environment.yml"
    log:
        str(T1_LOGS / "{network}-scan.log"),
    benchmark:
        str(T1_LOGS / "{network}-scan.benchmark.tsv")
    resources:
        **gpu_resources(runtime_quick=30, runtime_paper=72 * 60),
    shell:
        "delay-stability-gpu-slot --gpus {resources.gpu} -- delay-stability table1-scan --block {params.block:q} "
        "--network {params.name:q} --base {params.base:q} --root {params.root} --out {output} > {log} 2>&1"


rule table1_arm:
    """One arm of one network, all seeds (one ensemble when the model batches, else one by one)."""
    input:  # the network's scan table; none at the paper scale (SB's η is the network's lr)
        lambda wc: [str(T1_DIR / wc.network / "scan.csv")] if T1_SCAN[T1_SLUGS[wc.network]] else [],
    output:
        str(T1_DIR / "{network}" / "{arm}" / "arm.json"),
    params:
        block=lambda wc: json.dumps(T1, sort_keys=True),
        base=lambda wc: json.dumps(T1_BASE[T1_SLUGS[wc.network]], sort_keys=True),
        name=lambda wc: T1_SLUGS[wc.network],
        scan=lambda wc, input: f"--scan {input[0]}" if input else "",
        root=lambda wc, output: str(Path(output[0]).parents[2]),
        code=src_hash("experiments.table1", "ensemble", "train"),
    wildcard_constraints:
        network=as_regex(sorted(T1_SLUGS)),
        arm=as_regex(sorted(t1_exp.SLUG_ARMS)),
    conda:
        "../../environment.yml"
    log:
        str(T1_LOGS / "{network}-{arm}.log"),
    benchmark:
        str(T1_LOGS / "{network}-{arm}.benchmark.tsv")
    resources:
        **gpu_resources(runtime_quick=30, runtime_paper=72 * 60),
    shell:
        "delay-stability-gpu-slot --gpus {resources.gpu} -- delay-stability table1-arm --block {params.block:q} "
        "--network {params.name:q} --arm {wildcards.arm} --base {params.base:q} {params.scan} "
        "--root {params.root} --record {output} > {log} 2>&1"


rule table1_table:
    """table1.csv (one row per network and arm), table1.md (the paper's layout) and table1_runs.csv
    (one row per seed)."""
    input:
        [str(T1_DIR / t1_exp.slug(n) / t1_exp.ARM_SLUGS[a] / "arm.json") for n in T1_NETS for a in t1_exp.ARMS],
    output:
        table=str(SCALE_DIR / "generalization" / "table1.csv"),
        markdown=str(SCALE_DIR / "generalization" / "table1.md"),
        runs=str(SCALE_DIR / "generalization" / "table1_runs.csv"),
    params:
        code=src_hash("experiments.table1_tables"),
    localrule: True
    conda:
        "../../environment.yml"
    log:
        str(T1_LOGS / "table.log"),
    shell:
        "delay-stability table1-collect --record {input} --table {output.table} --markdown {output.markdown} --runs {output.runs} > {log} 2>&1"

