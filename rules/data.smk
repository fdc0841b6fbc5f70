rule prepare_dataset:
    output:
        sequences=W("data/{dataset}/sequences.txt"),
        stats=W("data/{dataset}/stats.json"),
        truth=W("data/{dataset}/truth.tsv"),
    params:
        # only what shapes the data: editing catalog.<name>.train never re-prepares it, and moving the data
        # folder does not either (the declared checksum guards the content)
        entry=lambda w: json.dumps(data_entry(w.dataset), sort_keys=True),
    log:
        W("logs/prepare/{dataset}.log"),
    conda:
        CPU_ENV
    shell:
        "{P2REC} prepare --name {wildcards.dataset} --entry {params.entry:q} --data-dir {config[data_dir]:q}"
        " --raw-dir {config[raw_dir]:q} --out-dir {WORK}/data/{wildcards.dataset} > {log} 2>&1"
