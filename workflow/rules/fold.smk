# RQ2: batch folding with periodic state reset.
# - fold_sweep: op-level fold invariance + timings (any device; the CPU part of the question);
# - fold_bench: model throughput with fold off / fixed k / LUT ('auto') per batch and resolution
#   (meaningful on a GPU; on CPU it is a smoke of the same path and labelled with its device);
# - fold_lut: the per-GPU lookup table behind fold='auto' (GPU only, config rq2_fold.lut).


rule fold_sweep:
    output:
        FOLD_SWEEP,
    params:
        s=config["rq2_fold"]["sweep"],
    threads: 1
    log:
        "logs/rq2_fold/fold_sweep.log",
    conda:
        "../envs/sf_mamba.yaml"
    shell:
        "OMP_NUM_THREADS={threads} sf_mamba fold-sweep --out {output}"
        " --batch-sizes {params.s[batch_sizes]} --lengths {params.s[lengths]}"
        " --channels {params.s[channels]} --folds {params.s[folds]} --repeats {params.s[repeats]}"
        " --backend {params.s[backend]} --device {params.s[device]} > {log} 2>&1"


rule fold_lut:
    output:
        FOLD_LUT,
    resources:
        gpu=1,
        runtime=60,
    log:
        "logs/rq2_fold/fold_lut.log",
    conda:
        "../envs/sf_mamba.yaml"
    shell:
        "sf_mamba lut build --out {output} > {log} 2>&1"


rule fold_bench:
    input:
        lut=FOLD_LUT if config["rq2_fold"]["lut"] else [],
    output:
        fold_bench_json("{model}", "{fold}", "{bs}", "{res}"),
    params:
        protocol=lambda wc: bench_flags({**config["bench"], "batch_size": int(wc.bs)}),
        lut_env=lambda wc, input: f"SF_MAMBA_FOLD_LUT={input.lut}" if input.lut else "",
        kwargs=lambda wc: kwargs_json({"fold": fold_kwarg(wc.fold)}),
    threads: config["bench"]["resources"]["cpus"]
    resources:
        gpu=config["bench"]["resources"]["gpus"],
        mem_mb=int(config["bench"]["resources"]["mem_gb"] * 1024),
        runtime=config["bench"]["resources"]["time_min"],
        cpus_per_task=config["bench"]["resources"]["cpus"],
    log:
        "logs/rq2_fold/bench/{model}_fold{fold}_bs{bs}_res{res}.log",
    conda:
        "../envs/sf_mamba.yaml"
    shell:
        "{params.lut_env} OMP_NUM_THREADS={threads} sf_mamba bench --model {wildcards.model}"
        " --model-kwargs {params.kwargs} --img-size {wildcards.res} {params.protocol}"
        " --out {output} > {log} 2>&1"
