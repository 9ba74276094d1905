# The two generic rules that train: a run folder from its training spec (`delay-stability train`), and
# a batched ensemble of run folders (`delay-stability ensemble`). Every experiment registers the runs it
# needs with `register_run(folder, spec, key)` and the ensembles with `register_ensemble(folder, runs,
# key)` (common.smk); this file is included after them, so that the rules know every folder.


rule train:
    """Train as the spec says (DelayedSGD; resumes from a checkpoint of the same spec)."""
    output:
        final=str(Path("{run}") / "final.pt"),
        metrics=str(Path("{run}") / "metrics.csv"),
        summary=str(Path("{run}") / "summary.json"),
        run=str(Path("{run}") / "run.json"),
        spec=str(Path("{run}") / "spec.json"),
    params:
        spec=lambda wc: json.dumps(RUNS[wc.run]["spec"], sort_keys=True),
        code=src_hash("train"),
    wildcard_constraints:
        run=as_regex(RUNS),
    conda:
        "../../environment.yml"
    log:
        str(Path("logs") / "train" / "{run}.log"),
    benchmark:
        str(Path("logs") / "train" / "{run}.benchmark.tsv")
    resources:
        gpu=GPUS_PER_JOB,
        runtime=lambda wc: RUNS[wc.run]["resources"]["runtime"],
        mem_mb=lambda wc: RUNS[wc.run]["resources"]["mem_mb"],
    shell:
        "printf '%s' {params.spec:q} > {output.spec} && "
        "delay-stability-gpu-slot --gpus {resources.gpu} -- delay-stability train --spec {output.spec} --out $(dirname {output.final}) > {log} 2>&1"


rule ensemble:
    """Train a registered group of runs as one batched ensemble (delay_stability.ensemble: one model
    per member, vectorised); each member writes its own run folder, as the train rule would."""
    output:
        specs=str(Path("{group}") / "ensemble-specs.json"),
        record=str(Path("{group}") / "ensemble.json"),
    params:
        specs=lambda wc: json.dumps(ENSEMBLES[wc.group]["specs"], sort_keys=True),
        out=lambda wc: " ".join(ENSEMBLES[wc.group]["runs"]),
        code=src_hash("ensemble"),
    wildcard_constraints:
        group=as_regex(ENSEMBLES),
    conda:
        "../../environment.yml"
    log:
        str(Path("logs") / "ensemble" / "{group}.log"),
    benchmark:
        str(Path("logs") / "ensemble" / "{group}.benchmark.tsv")
    resources:
        gpu=GPUS_PER_JOB,
        runtime=lambda wc: ENSEMBLES[wc.group]["resources"]["runtime"],
        mem_mb=lambda wc: ENSEMBLES[wc.group]["resources"]["mem_mb"],
    shell:
        "printf '%s' {params.specs:q} > {output.specs} && "
        "delay-stability-gpu-slot --gpus {resources.gpu} -- delay-stability ensemble --specs {output.specs} "
        "--out {params.out} --record {output.record} > {log} 2>&1"
