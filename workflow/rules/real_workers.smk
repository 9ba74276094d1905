# Real asynchronous workers (beyond the paper): a parameter server on torch.distributed (gloo), started
# with torchrun, from the stability experiment's kicked minimum. Per setting (M workers, jitter) one
# launch of M + 1 processes: a pilot measures the staleness, continuations run at factor x the edge it
# predicts (eq. 19) -> results/<scale>/real_workers/M<M>/jitter<j>/<phase>/{staleness,histogram}.csv
#   -> `real-workers-collect` -> results/<scale>/real_workers/{outcomes,histograms,settings}.csv -> figure.
# The run configs and the stay/leave rule: delay_stability.experiments.real_workers; the tables and the
# figure's options: experiments.real_workers_tables.
from delay_stability.experiments import real_workers as rw_exp
from delay_stability.experiments import real_workers_tables as rw_tables

RW = EXP.get("real_workers")
RW_DIR = SCALE_DIR / "real_workers"
RW_LOGS = LOGS / "real_workers"
RW_FROM = SCALE_DIR / RW["from"] if RW else None
RW_SETTINGS = rw_exp.settings(RW) if RW else []

if RW:
    register_figure("real_staleness", [RW_DIR / f"{t}.csv" for t in ("outcomes", "histograms", "settings")],
                    lambda: rw_tables.plot_options(RW, SCALE, EXP[RW["from"]]["baseline"]))


rule real_workers_run:
    """One setting: M + 1 processes under torchrun's agent (server + M workers), listening on loopback only;
    the server writes every phase."""
    input:
        kick=str(SCALE_DIR / "{exp}" / "kick" / "kick.json"),
        ckpt=str(SCALE_DIR / "{exp}" / "kick" / "kicked.pt"),
    output:
        config=str(RW_DIR / "from-{exp}" / "M{m}" / "jitter{jitter}" / "run.json"),
        summary=str(RW_DIR / "from-{exp}" / "M{m}" / "jitter{jitter}" / "summary.json"),
    params:
        options=lambda wc: json.dumps(RW, sort_keys=True),
        flags=lambda wc: rw_exp.launch_flags(RW, int(wc.m)),
        device=device_flag(),
        code=src_hash("server", "experiments.real_workers"),
    wildcard_constraints:
        m=r"\d+",
    threads: 2  # real timing: one launch at a time on a 2-core machine (its M + 1 processes share them)
    conda:
        "../../environment.yml"
    log:
        str(RW_LOGS / "{exp}-M{m}-jitter{jitter}.log"),
    benchmark:
        str(RW_LOGS / "{exp}-M{m}-jitter{jitter}.benchmark.tsv")
    resources:
        **gpu_resources(runtime_quick=10, runtime_paper=120, mem_quick=4000),
    shell:
        "delay-stability real-workers-config --kick {input.kick} --workers {wildcards.m} --jitter {wildcards.jitter} "
        "--options {params.options:q} {params.device}--out {output.config} > {log} 2>&1 && "
        "OMP_NUM_THREADS=1 delay-stability-gpu-slot --gpus {resources.gpu} -- delay-stability parameter-server-launch {params.flags} "
        "--config {output.config} --out $(dirname {output.summary}) >> {log} 2>&1"


rule real_workers_tables:
    """outcomes.csv (one row per continuation), histograms.csv, settings.csv and continuations.csv."""
    input:
        [str(RW_DIR / f"from-{RW['from']}" / f"M{m}" / f"jitter{j:g}" / "summary.json") for m, j in RW_SETTINGS],
    output:
        outcomes=str(RW_DIR / "outcomes.csv"),
        histograms=str(RW_DIR / "histograms.csv"),
        settings=str(RW_DIR / "settings.csv"),
        continuations=str(RW_DIR / "continuations.csv"),
    params:
        runs=lambda wc, input: " ".join(str(Path(p).parent) for p in input),
        growth=RW["escape"]["growth"] if RW else 3.0,
        code=src_hash("experiments.real_workers_tables"),
    localrule: True
    conda:
        "../../environment.yml"
    log:
        str(RW_LOGS / "tables.log"),
    shell:
        "delay-stability real-workers-collect --run {params.runs} --outcomes {output.outcomes} "
        "--histograms {output.histograms} --settings {output.settings} --continuations {output.continuations} "
        "--growth {params.growth} > {log} 2>&1"

