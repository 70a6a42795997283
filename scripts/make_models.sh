#!/usr/bin/env bash
# Regenerates the shipped default models in models/ from scratch (about 40 min on 2 CPU cores):
#   1. 50 scripted kitchen demonstrations (data/kitchen_demos, not committed),
#   2. the project's encoder: an R3M-objective time-contrastive fine-tune of a ResNet-18 trunk
#      on those frames (no pretrained weights can be downloaded here), saved in R3M's format,
#   3. the EXTRACT pipeline: embed -> K-means (K=8) -> segment -> skill VAE + priors.
# Deterministic seeds; timings vary with machine load.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
. scripts/env.sh
DATA="${DATA:-data/kitchen_demos}"
RUN="${RUN:-runs/kitchen}"
THREADS="${THREADS:-2}"
if [ ! -f "$DATA/dataset.json" ]; then
  extract-generate-demos --out "$DATA" --episodes 50 --seed 0 --image-size 128
fi
extract train-encoder --dataset "$DATA" --run-dir "$RUN" --encoder-weights models/encoders/r3m_resnet18.pt \
  --tcn-steps 1500 --threads "$THREADS"
extract all --dataset "$DATA" --run-dir "$RUN" --encoder-weights models/encoders/r3m_resnet18.pt \
  --out models/extract_kitchen.pt --threads "$THREADS"
mkdir -p models/report
cp "$RUN"/cluster_vs_subtask.md "$RUN"/*.png models/report/
echo "make_models: wrote models/extract_kitchen.pt, models/encoders/r3m_resnet18.pt, models/report/"
