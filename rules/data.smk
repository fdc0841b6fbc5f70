rule prepare_dataset:
    output:
        sequences="results/data/{dataset}/sequences.txt",
        stats="results/data/{dataset}/stats.json",
        truth="results/data/{dataset}/truth.tsv",
    params:
        entry=lambda w: json.dumps(config["catalog"][w.dataset], sort_keys=True),
        data_dir=config["data_dir"],
        raw_dir=config["raw_dir"],
    log:
        "results/logs/prepare/{dataset}.log",
    shell:
        "{P2REC} prepare --name {wildcards.dataset} --entry {params.entry:q} --data-dir {params.data_dir:q}"
        " --raw-dir {params.raw_dir:q} --out-dir results/data/{wildcards.dataset} > {log} 2>&1"
