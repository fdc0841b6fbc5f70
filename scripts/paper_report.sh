#!/usr/bin/env bash
# Tables, plots and the Snakemake report of one paper slice, made by the workflow's own rules.
#
#   bash scripts/paper_report.sh results/paper/beauty [extra snakemake arguments]
#
# The slice folder holds config.yaml (the top-level configuration narrowed to the slice). The workflow runs in
# a scratch working directory whose results/{runs,llm,pretrain,data} are links to this checkout's, so the
# top-level results/tables and results/plots are never overwritten. Only the table, plot and report rules may
# run there: a missing run stops the script instead of being trained. What the slice folder receives:
# main.{md,csv,tex}, significance.csv, robustness.*, efficiency.*, categories.csv, plots/ and report.html.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
slice=${1:?usage: scripts/paper_report.sh SLICE_DIR [snakemake arguments]}
shift
[[ -f "$slice/config.yaml" ]] || { echo "paper_report: $slice/config.yaml not found" >&2; exit 2; }
# the data folder as configured, resolved from this checkout (the scratch directory is elsewhere)
data_dir=$(python - "$slice/config.yaml" <<'EOF'
import os, sys, yaml
print(os.path.realpath(yaml.safe_load(open(sys.argv[1]))["data_dir"]))
EOF
)
work=$(mktemp -d "${TMPDIR:-/tmp}/p2rec-paper.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/results"
for part in runs llm pretrain data; do ln -s "$root/results/$part" "$work/results/$part"; done
cp "$slice/config.yaml" "$work/config.yaml"
run_snakemake() {
    snakemake -s "$root/Snakefile" --directory "$work" --cores 1 --rerun-triggers mtime \
        --allowed-rules all paper_tables dataset_plots sft_efficiency_plot llm_parse_table \
        --config "data_dir=$data_dir" "$@"
}
run_snakemake "$@" || { echo "paper_report: stopped: the slice's tables could not be built (a missing run is" \
    "listed above as a missing input of paper_tables; run it with the workflow first)" >&2; exit 1; }
run_snakemake --report "$work/report.html" "$@"
# copy into a temporary sibling first, then swap: an interrupted copy never leaves a half-updated slice
staged=$(mktemp -d "$slice/.staged.XXXXXX")
cp "$work"/results/tables/* "$staged/"
cp -r "$work/results/plots" "$staged/plots"
cp "$work/report.html" "$staged/report.html"
rm -rf "$slice/plots"
mv "$staged"/* "$slice/"
rmdir "$staged"
echo "paper_report: $slice: $(cd "$slice" && ls | tr '\n' ' ')"
