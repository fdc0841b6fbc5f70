#!/usr/bin/env bash
# SASRec on the three standard datasets: cross-entropy (main workdir, results/runs/...) and the BCE option
# (a second workdir, experiments/bce, whose compact per-run files are collected into results/reproduction/).
# Usage: bash scripts/reproduce_sasrec.sh [seeds JSON, default "[1,2,3]"] [datasets JSON]
set -euo pipefail
cd "$(dirname "$0")/.."
source .venv/bin/activate
SEEDS=${1:-[1,2,3]}
DATASETS=${2:-'["beauty","yelp","ml-1m"]'}
DATA_DIR=$(realpath "${P2REC_DATA_DIR:-../shared/data}")
for ds in $(python -c "import json,sys; print(' '.join(json.loads(sys.argv[1])))" "$DATASETS"); do
  snakemake --cores 2 --resources gpu=2 --rerun-triggers mtime --config "datasets=[\"$ds\"]" "seeds=$SEEDS" \
    'variants=["none"]' 'backbones=["sasrec"]' "data_dir=$DATA_DIR"
done
mkdir -p experiments/bce
cp config.yaml experiments/bce/config.yaml
for ds in $(python -c "import json,sys; print(' '.join(json.loads(sys.argv[1])))" "$DATASETS"); do
  snakemake -s "$PWD/Snakefile" --directory experiments/bce --cores 2 --resources gpu=2 --rerun-triggers mtime \
    --config "datasets=[\"$ds\"]" "seeds=$SEEDS" 'variants=["none"]' 'backbones=["sasrec"]' "data_dir=$DATA_DIR" \
    'train={"loss": "bce"}'
done
