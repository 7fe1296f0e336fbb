# Training (through the submitit launcher), throughput and MAC counting for the classification RQs.
# MACs are counted by `sf_mamba flops` (per sheet row for RQ1, per size and family for RQ4), never
# by the trainer.
#
# Training is a local rule: Snakemake waits on `sf_mamba launch`, which submits the job (Slurm,
# local subprocess or in-process debug), reattaches to it after a driver restart, and copies the
# run's metrics.json up when the job has succeeded. Only metrics.json is declared: checkpoints stay
# in the run's work/ folder where Snakemake never deletes them, so the trainer resumes.
# The executor flags are built inside `run:` (not in params:) so that moving from a laptop to a
# cluster, or changing the partition, never counts as a changed experiment.


rule train:
    input:
        recipe=lambda wc: recipe_chain(recipe_path(wc.experiment)),
        data=cls_data_input,
    output:
        train_metrics("{experiment}", "{seed}"),
    params:
        recipe=lambda wc: recipe_arg(wc.experiment),
        sets=lambda wc: shell_join(f"--set={s}" for s in train_overrides(wc.experiment, int(wc.seed))),
        run_dir=lambda wc, output: os.path.dirname(output[0]),
    threads: waiter_threads(config["train"]["resources"])
    resources:
        gpu=config["train"]["resources"]["gpus"],
        launch_slots=1,
    log:
        "logs/train/{experiment}/seed{seed}.log",
    localrule: True
    run:
        shell(train_command(wildcards, input, params, threads, log))


rule bench:
    output:
        bench_json("{experiment}"),
    params:
        model=lambda wc: EXPERIMENTS[wc.experiment]["model"],
        kwargs=lambda wc: kwargs_json(model_kwargs(EXPERIMENTS[wc.experiment])),
        protocol=bench_flags(config["bench"]),
        img_size=config["bench"]["img_size"],
    threads: config["bench"]["resources"]["cpus"]
    resources:
        gpu=config["bench"]["resources"]["gpus"],
        mem_mb=int(config["bench"]["resources"]["mem_gb"] * 1024),
        runtime=config["bench"]["resources"]["time_min"],
        cpus_per_task=config["bench"]["resources"]["cpus"],
    log:
        "logs/bench/{experiment}.log",
    conda:
        "../envs/sf_mamba.yaml"
    shell:
        "OMP_NUM_THREADS={threads} sf_mamba bench --model {params.model} --model-kwargs {params.kwargs}"
        " --img-size {params.img_size} {params.protocol} --out {output} > {log} 2>&1"


rule flops_experiment:
    output:
        experiment_flops_json("{experiment}"),
    params:
        model=lambda wc: EXPERIMENTS[wc.experiment]["model"],
        kwargs=lambda wc: kwargs_json(model_kwargs(EXPERIMENTS[wc.experiment])),
        img_size=config["flops"]["img_size"],
    threads: 1
    log:
        "logs/flops/runs/{experiment}.log",
    conda:
        "../envs/sf_mamba.yaml"
    shell:
        "OMP_NUM_THREADS={threads} sf_mamba flops --model {params.model} --model-kwargs {params.kwargs}"
        " --img-size {params.img_size} --out {output} > {log} 2>&1"


rule flops:
    output:
        flops_json("{model}", "{family}"),
    params:
        kwargs=lambda wc: kwargs_json(FLOPS_FAMILIES[wc.family]["kwargs"]),
        img_size=config["flops"]["img_size"],
    threads: 1
    log:
        "logs/flops/{model}_{family}.log",
    conda:
        "../envs/sf_mamba.yaml"
    shell:
        "OMP_NUM_THREADS={threads} sf_mamba flops --model {wildcards.model} --model-kwargs {params.kwargs}"
        " --img-size {params.img_size} --out {output} > {log} 2>&1"
