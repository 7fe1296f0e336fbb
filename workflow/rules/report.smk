# Gathering and rendering. Manifests list every expected result (from the validated sheet), so a
# missing run is a visible "missing" row, never a silently shorter table. Included after every rule
# file, so that it sees every registered research question.

RQS = research_questions()
REPORT_OUTPUTS = [f"{rq}/{name}" for rq in RQS for name in RESEARCH_QUESTIONS[rq]["outputs"]] + [
    "reproduction.md", "reproduction.tex", "reproduction.csv", "README.md"]


rule manifest:
    wildcard_constraints:
        rq="|".join(RQS),
    output:
        "results/{rq}/manifest.json",
    params:
        entries=lambda wc: json.dumps(manifest_entries(wc.rq), sort_keys=True),
    log:
        "logs/manifest/{rq}.log",
    localrule: True
    run:
        write_text(output[0], params.entries)


rule manifest_all:
    output:
        "results/report/manifest.json",
    params:
        entries=json.dumps([e for rq in RQS for e in manifest_entries(rq)], sort_keys=True),
    log:
        "logs/manifest/all.log",
    localrule: True
    run:
        write_text(output[0], params.entries)


rule gather:
    wildcard_constraints:
        rq="|".join(RQS),
    input:
        manifest="results/{rq}/manifest.json",
        results=lambda wc: gather_inputs([wc.rq]),
    output:
        "results/{rq}/runs.csv",
    log:
        "logs/gather/{rq}.log",
    localrule: True
    conda:
        "../envs/sf_mamba.yaml"
    shell:
        "sf_mamba gather --manifest {input.manifest} --out {output} > {log} 2>&1"


rule gather_all:
    input:
        manifest="results/report/manifest.json",
        results=gather_inputs(RQS),
    output:
        "results/report/runs.csv",
    log:
        "logs/gather/all.log",
    localrule: True
    conda:
        "../envs/sf_mamba.yaml"
    shell:
        "sf_mamba gather --manifest {input.manifest} --out {output} > {log} 2>&1"


for _rq in RQS:

    rule:
        name:
            f"render_{_rq}"
        input:
            runs=f"results/{_rq}/runs.csv",
            reference=config["report"]["reference"],
        output:
            [report_flag(p, _rq) for p in rq_target(_rq)],
        params:
            rq=_rq,
        log:
            f"logs/render/{_rq}.log",
        localrule: True
        conda:
            "../envs/sf_mamba.yaml"
        shell:
            "sf_mamba report --runs {input.runs} --rq {params.rq} --reference {input.reference}"
            " --out results/{params.rq} > {log} 2>&1"


rule render_all:
    input:
        runs="results/report/runs.csv",
        reference=config["report"]["reference"],
    output:
        [report_flag(f"results/report/{p}", "report") for p in REPORT_OUTPUTS],
    log:
        "logs/render/all.log",
    localrule: True
    conda:
        "../envs/sf_mamba.yaml"
    shell:
        "sf_mamba report --runs {input.runs} --all --reference {input.reference}"
        " --out results/report > {log} 2>&1"

