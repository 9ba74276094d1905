# delay-stability: the figures of "At Stability's Edge" (ICLR 2020) and "Asynchrony begets Momentum".
#   snakemake --cores 2                       every figure at the configured scale (quick by default)
#   snakemake --cores 2 figures/fig6.pdf      one figure
#   snakemake -n --config scale=paper         what the paper scale would run (GPU; see README)
# One experiment = an entry of delay_stability/registry.py: workflow/rules/<name>.smk,
# delay_stability/experiments/<name>.py, plots/<name>.py, config block <name>, tests/test_<name>.py.

configfile: "config.yaml"


include: "workflow/rules/common.smk"


# one rule file per experiment of the registry (delay_stability.registry.EXPERIMENTS), in its order
for _experiment in EXPERIMENTS:

    include: _experiment.rules


include: "workflow/rules/train.smk"  # last: it builds the run folders the experiments registered


rule all:
    input:
        ALL_TARGETS,
    default_target: True
