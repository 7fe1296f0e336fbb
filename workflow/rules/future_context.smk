# RQ3, trained evidence: the future-context task (digits as segmentation; sf_mamba fc-train). One job
# per (design of the future-context sheet, seed): train, evaluate by raster region, checkpoint, and
# probe the information flow at initialisation and on the final checkpoint. A run takes about a
# minute on one core, so it runs here (no launcher, no resume); its outputs are declared, the
# checkpoint and probe files beside them are not.


rule fc_train:
    output:
        metrics="results/rq3_aux/future_context/{experiment}/seed{seed}/metrics.json",
        per_image="results/rq3_aux/future_context/{experiment}/seed{seed}/per_image.npz",
    params:
        model=FC["model"],
        kwargs=lambda wc: kwargs_json(fc_model_kwargs(wc.experiment)),
        protocol=(f"--img-size {FC['img_size']} --epochs {FC['epochs']} --batch-size {FC['batch_size']}"
                  f" --lr {FC['lr']} --probe-images {FC['probe_images']}"),
        out_dir=lambda wc, output: os.path.dirname(output.metrics),
    threads: 1
    resources:
        mem_mb=3000,
    log:
        "logs/rq3_aux/future_context/{experiment}/seed{seed}.log",
    conda:
        "../envs/sf_mamba.yaml"
    shell:
        "OMP_NUM_THREADS={threads} sf_mamba fc-train --model {params.model} --model-kwargs {params.kwargs}"
        " {params.protocol} --seed {wildcards.seed} --threads {threads} --out-dir {params.out_dir} > {log} 2>&1"
