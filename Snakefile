# delay-stability: the figures of "At Stability's Edge" (ICLR 2020) and "Asynchrony begets Momentum".
#   snakemake --cores 2                       every figure at the configured scale (quick by default)
#   snakemake --cores 2 figures/fig6.pdf      one figure
#   snakemake -n --config scale=paper         what the paper scale would run (GPU; see README)
# One experiment = an entry of delay_stability/registry.py: workflow/rules/<name>.smk,
# delay_stability/experiments/<name>.py, plots/<name>.py, config block <name>, tests/test_<name>.py.
# Generic rules build what every experiment registers: figures.smk its figures, train.smk its run folders
# and ensembles.

from delay_stability.errors import UserError
from delay_stability.experiments.config import check_config_files
from snakemake.exceptions import WorkflowError

try:  # before Snakemake reads them: a duplicated key names key and line, a YAML error line and column
    check_config_files(["config.yaml", *workflow.overwrite_configfiles])
except UserError as exc:
    raise WorkflowError(str(exc)) from None


configfile: "config.yaml"


include: "workflow/rules/common.smk"


# one rule file per experiment of the registry (delay_stability.registry.EXPERIMENTS), in its order
for _experiment in EXPERIMENTS:

    include: _experiment.rules

include: "workflow/rules/figures.smk"  # after the experiments: one figure rule each, for the figures they registered
include: "workflow/rules/claims.smk"  # after the experiments: it reads their tables
include: "workflow/rules/train.smk"  # last: it builds the run folders the experiments registered


onsuccess:  # record what the jobs wrote in the folders' manifests (common.smk: sync_results)
    sync_results()


onerror:
    sync_results()


rule all:
    input:
        ALL_TARGETS,
    default_target: True
