rule prepare_dataset:
    output:
        sequences=W("data/{dataset}/sequences.txt"),
        stats=W("data/{dataset}/stats.json"),
        truth=W("data/{dataset}/truth.tsv"),
    params:
        # only what shapes the data: editing catalog.<name>.train never re-prepares it, and moving the data
        # folder does not either (the declared checksum guards the content)
        entry=lambda w: json.dumps(data_entry(w.dataset), sort_keys=True),
        data_dir=config["data_dir"],
        raw_dir=config["raw_dir"],
        out_dir=lambda w, output: str(Path(output.stats).parent),
    log:
        W("logs/prepare/{dataset}.log"),
    conda:
        CPU_ENV
    shell:
        "python -m p2rec prepare --name {wildcards.dataset} --entry {params.entry:q} --data-dir {params.data_dir:q}"
        " --raw-dir {params.raw_dir:q} --out-dir {params.out_dir} > {log} 2>&1"
