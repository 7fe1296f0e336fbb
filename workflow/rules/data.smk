# Offline datasets. ImageNet/ADE20K (dataset: external) are prepared by the user and not made here.


rule data_digits:
    output:
        directory(CLS_DATA),
    params:
        size=config["data"]["classification"]["size"],
    log:
        "logs/data/digits.log",
    localrule: True
    conda:
        "../envs/sf_mamba.yaml"
    shell:
        "sf_mamba data digits --out {output} --size {params.size} > {log} 2>&1"


rule data_seg_smoke:
    output:
        directory(SEG_DATA),
    log:
        "logs/data/seg_smoke.log",
    localrule: True
    conda:
        "../envs/sf_mamba.yaml"
    shell:
        "sf_mamba seg-data --out {output} > {log} 2>&1"
