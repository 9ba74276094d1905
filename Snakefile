# delay-stability: the figures of "At Stability's Edge" (ICLR 2020) and "Asynchrony begets Momentum".
#   snakemake --cores 2                       every figure at the configured scale (quick by default)
#   snakemake --cores 2 figures/fig6.pdf      one figure
#   snakemake -n --config scale=paper         what the paper scale would run (GPU; see README)
# One experiment = workflow/rules/<name>.smk + delay_stability/experiments/<name>.py + plots/<name>.py.

from delay_stability.errors import UserError
from delay_stability.experiments.config import check_config_files
from snakemake.exceptions import WorkflowError

try:  # before Snakemake reads them: a duplicated key names key and line, a YAML error line and column
    check_config_files(["config.yaml", *workflow.overwrite_configfiles])
except UserError as exc:
    raise WorkflowError(str(exc)) from None


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
include: "workflow/rules/random_staleness.smk"
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
