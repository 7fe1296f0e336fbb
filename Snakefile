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


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/classification.smk"
include: "workflow/rules/fold.smk"
include: "workflow/rules/aux.smk"
include: "workflow/rules/segmentation.smk"
include: "workflow/rules/report.smk"


onsuccess:
    build_html_report()


rule all:
    input:
        [f for rq in RQS for f in rq_target(rq)],
        [f"results/report/{p}" for p in REPORT_OUTPUTS],
    default_target: True
    localrule: True


rule rq1_scan:
    input:
        rq_target("rq1_scan"),
    localrule: True


rule rq2_fold:
    input:
        rq_target("rq2_fold"),
    localrule: True


rule rq3_aux:
    input:
        rq_target("rq3_aux"),
    localrule: True


rule rq4_sizes:
    input:
        rq_target("rq4_sizes"),
    localrule: True


rule rq5_seg:
    input:
        rq_target("rq5_seg"),
    localrule: True
