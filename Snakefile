# SF-Mamba reproduction DAG. Targets: one per research question, and `all`.
#
#   snakemake -c2                                  # CPU smoke of the whole DAG (configs/default.yaml)
#   snakemake -c2 rq2_fold                         # one research question
#   snakemake --profile slurm --configfile configs/paper.yaml    # full reproduction (docs/cluster.md)
#   snakemake --report results/report/report.html  # HTML report (also written after a run that
#                                                  # updated results/report/, e.g. `all`)
#
# The rules live in workflow/rules/, the schemas (with every default) in workflow/schemas/.
from snakemake.utils import min_version

min_version("9.0")


configfile: "configs/default.yaml"


# the rules run `sf_mamba` from PATH (common.smk puts this Python's bin/ first); Slurm jobs get it too
envvars:
    "PATH",


report: "workflow/report/workflow.rst"


# Read top to bottom: the validated config, the run table, the research questions (what each one
# expects; common.smk), the command lines; then one rule file per concern; report.smk last, as it
# renders every registered question.
include: "workflow/rules/config.smk"
include: "workflow/rules/run_table.smk"
include: "workflow/rules/future_context_runs.smk"
include: "workflow/rules/common.smk"
include: "workflow/rules/commands.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/classification.smk"
include: "workflow/rules/fold.smk"
include: "workflow/rules/aux.smk"
include: "workflow/rules/future_context.smk"
include: "workflow/rules/segmentation.smk"
include: "workflow/rules/detection_runs.smk"
include: "workflow/rules/detection.smk"
# a new research question: include its rule file here and register it in common.smk
include: "workflow/rules/report.smk"


check_sheet_tags()


onsuccess:
    build_html_report()


rule all:
    input:
        [f for rq in RQS for f in rq_target(rq)],
        [f"results/report/{p}" for p in REPORT_OUTPUTS],
    default_target: True
    localrule: True


# one target per research question: `snakemake -c2 rq2_fold`
for _rq in RQS:

    rule:
        name:
            _rq
        input:
            rq_target(_rq),
        localrule: True
