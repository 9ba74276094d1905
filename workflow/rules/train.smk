# One generic rule: a run folder from its training spec (`delay-stability train`). Every experiment
# registers the runs it needs with `register_run(folder, spec, key)` (common.smk); this file is
# included after them, so that the rule knows every folder.


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
