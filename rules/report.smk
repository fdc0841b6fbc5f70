rule main_table:
    input:
        metrics=run_metrics(),
    output:
        md="results/tables/main.md",
        csv="results/tables/main.csv",
    log:
        "results/logs/tables/main.log",
    shell:
        "{P2REC} gather --metrics {input.metrics} --out-md {output.md} --out-csv {output.csv} > {log} 2>&1"
