# RQ5, detection: Cascade Mask R-CNN on COCO 2017 (paper config) or Mask R-CNN on the offline coins
# smoke set (default config). Training goes through the submitit launcher like segmentation; only
# metrics.json is declared. Detection calls mmcv's compiled ops (NMS, RoIAlign): where they are
# missing (mmcv-lite, the explicit `make venv MMCV=lite`), each run records itself as skipped with
# the reason instead of failing, and the report shows the row as skipped. Functions and the run
# table: workflow/rules/detection_runs.smk.


rule data_det_smoke:
    output:
        directory(DET_DATA),
    log:
        "logs/data/det_smoke.log",
    localrule: True
    conda:
        "../envs/sf_mamba.yaml"
    shell:
        "sf_mamba det-data --out {output} > {log} 2>&1"


rule det_train:
    input:
        cfg=lambda wc: DET[wc.experiment]["config"],
        data=det_data_input,
        pretrain=det_pretrain_input,
    output:
        det_metrics("{experiment}", "{seed}"),
    params:
        run_dir=lambda wc, output: os.path.dirname(output[0]),
        options=lambda wc: shell_join(
            DET[wc.experiment].get("cfg_options", []) + [f"randomness.seed={wc.seed}"]
            + list(config["rq5_det"]["cfg_options"])
        ),
        data_root=lambda wc: f"--data-root {DET_DATA}",
        # part of the experiment's record: installing the ops later reruns a skipped row
        ops=DET_OPS,
    threads: waiter_threads(config["rq5_det"]["resources"])
    resources:
        gpu=config["rq5_det"]["resources"]["gpus"],
        launch_slots=1,
    log:
        "logs/det/{experiment}/seed{seed}.log",
    localrule: True
    run:
        shell(det_command(wildcards, input, params, threads, log))
