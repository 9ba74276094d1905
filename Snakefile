# delay-stability: the figures of "At Stability's Edge" (ICLR 2020) and "Asynchrony begets Momentum".
#   snakemake --cores 2                       every figure at the configured scale (quick by default)
#   snakemake --cores 2 figures/fig6.pdf      one figure
#   snakemake -n --config scale=paper         what the paper scale would run (GPU; see README)
# One experiment = workflow/rules/<name>.smk + delay_stability/experiments/<name>.py + plots/<name>.py.

configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/theory.smk"
include: "workflow/rules/stability.smk"
include: "workflow/rules/eos.smk"
include: "workflow/rules/generalization.smk"
include: "workflow/rules/table1.smk"
include: "workflow/rules/mitigations.smk"
include: "workflow/rules/imagenet.smk"
include: "workflow/rules/spikes.smk"
include: "workflow/rules/momentum.smk"
include: "workflow/rules/real_workers.smk"
include: "workflow/rules/claims.smk"  # after the experiments: it reads their tables
include: "workflow/rules/train.smk"  # last: it builds the run folders the experiments registered


rule all:
    input:
        ALL_TARGETS,
    default_target: True
