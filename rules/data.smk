rule prepare_dataset:
    output:
        sequences="results/data/{dataset}/sequences.txt",
        stats="results/data/{dataset}/stats.json",
        truth="results/data/{dataset}/truth.tsv",
    params:
        # only what shapes the data: editing catalog.<name>.train never re-prepares it, and moving the data
        # folder does not either (the declared checksum guards the content)
        entry=lambda w: json.dumps(data_entry(w.dataset), sort_keys=True),
    log:
        "results/logs/prepare/{dataset}.log",
    shell:
        "{P2REC} prepare --name {wildcards.dataset} --entry {params.entry:q} --data-dir {config[data_dir]:q}"
        " --raw-dir {config[raw_dir]:q} --out-dir results/data/{wildcards.dataset} > {log} 2>&1"
