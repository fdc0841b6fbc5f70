# Publish: the experiment's compact files (per-run metrics, ranks, timing, config, history, provenance; tables;
# plots; stage records) copied from its working folder to <results_dir>/<experiment>/ with a MANIFEST.json
# (commit, code version of each stage, config hash, devices, command, date), and results/INDEX.md regenerated;
# the job's own output is a receipt (a copy of the MANIFEST) in the working folder.
rule publish:
    input:
        T.publish_inputs(config),
    output:
        # a receipt in the working folder, not the published MANIFEST itself: Snakemake deletes a job's outputs
        # before it runs, and the published folder must stay as it was until the new one is complete
        receipt=W("published.json"),
    params:
        manifest=f"{PUBLISHED}/MANIFEST.json",
        index=f"{config['results_dir']}/INDEX.md",
        config=lambda w: json.dumps(config, sort_keys=True),
    log:
        W("logs/publish.log"),
    conda:
        CPU_ENV
    shell:
        "python -m p2rec publish --config {params.config:q} --files {input} --manifest {params.manifest}"
        " --index {params.index} --receipt {output.receipt} > {log} 2>&1"
