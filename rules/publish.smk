# Publish: the experiment's compact files (per-run metrics, ranks, timing, config, history, provenance; tables;
# plots; stage records) copied from its working folder to <results_dir>/<experiment>/ with a MANIFEST.json
# (commit, code version of each stage, config hash, devices, command, date), and results/INDEX.md regenerated.
PUBLISH_FILES = T.published_files(config)


rule publish:
    input:
        T.publish_inputs(config),
    output:
        manifest=f"{PUBLISHED}/MANIFEST.json",
        index=f"{config['results_dir']}/INDEX.md",
    params:
        config=lambda w: json.dumps(config, sort_keys=True),
        files=lambda w: W("publish_files.txt"),
        publish=PUBLISH_FILES,
    log:
        W("logs/publish.log"),
    conda:
        CPU_ENV
    shell:
        "printf '%s\\n' {params.publish:q} > {params.files} && python -m p2rec publish --config {params.config:q}"
        " --files-from {params.files} --manifest {output.manifest} --index {output.index} > {log} 2>&1"
