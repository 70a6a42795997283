#!/usr/bin/env bash
# Regenerates the shipped default models in models/:
#   1. scripted kitchen demonstrations (1-4 subtasks, commands recorded as the action labels) in
#      data/kitchen_demos_v2 (not committed; resumable: an interrupted run keeps what it wrote),
#   2. the encoder: the shipped ResNet-18 TCN (models/encoders/r3m_resnet18.pt) is kept, it won the
#      encoder comparison (benchmarks/encoder_comparison.py); RETRAIN_ENCODER=1 re-trains it with
#      R3M's time-contrastive objective on the demos' frames,
#   3. the EXTRACT pipeline: embed -> K-means (K=8) -> segment -> skill VAE (closed-loop, free-running
#      decoder, measured-frame commands, state-noise training, command feedback) + priors, with 20% of whole episodes held out for
#      model selection and calibration,
#   4. the SPiRL-style baseline skill model (models/spirl_kitchen.pt) for the sample-efficiency benchmark.
# EXTRACT's skill model then gets DAGGER_ROUNDS (default 2) DAgger rounds (`extract dagger`: the decoder drives the
# kitchen through the training demos' segments chained from each start, the states it reaches are labelled with the
# demo's commanded targets, and the model is fine-tuned on demos + that aggregate; the round with the most held-out
# subtasks decoded chained ships). Measured (benchmarks/RESULTS.md, sessions 14-15): with command feedback, decoded
# skills chain twice as well (7 -> 16 of 32 subtasks on unseen demos). DAGGER_ROUNDS=0: no DAgger. The SPiRL-style
# baseline is trained without it (its benchmark row stays comparable with earlier ones).
# The online policy (models/policies/) comes from benchmarks/sample_efficiency.py --methods extract --seeds 0
# --ship-policy models/policies/extract_heldout0.pt, run after this script (the policy records the skill checkpoint's
# sha256), then this script's last sha256sum line again.
# Deterministic seeds; timings vary with machine load.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
. scripts/env.sh
DATA="${DATA:-data/kitchen_demos_v2}"
EPISODES="${EPISODES:-193}"
RUN="${RUN:-runs/kitchen}"
THREADS="${THREADS:-2}"
WEIGHTS=models/encoders/r3m_resnet18.pt
extract-generate-demos --out "$DATA" --episodes "$EPISODES" --seed 1000 --image-size 128 --resume --no-progress
if [ "${RETRAIN_ENCODER:-0}" = 1 ] || [ ! -f "$WEIGHTS" ]; then
  extract train-encoder --dataset "$DATA" --run-dir "$RUN" --encoder-weights "$WEIGHTS" \
    --tcn-steps 1500 --threads "$THREADS"
fi
# Decoder recipe (benchmarks/RESULTS.md, skill fidelity ablations): commands relative to the joints measured each
# step, noise injection on the decoder's joint inputs with corrected labels, cosine learning-rate decay.
RECIPE=(--action-frame measured --state-noise 0.03 --lr-final-fraction 0.05)
DAGGER_ROUNDS="${DAGGER_ROUNDS:-2}"
SPIRL=(--num-skills 1 --min-segment-len 5 --max-segment-len 10)
# train (and optionally DAgger) one skill model: train_skills ROUNDS RUN_DIR OUT [extra extract args...]
train_skills() {
  local rounds="$1" run="$2" out="$3"
  shift 3
  if [ "$rounds" -gt 0 ]; then
    extract all --dataset "$DATA" --run-dir "$run" --encoder-weights "$WEIGHTS" --out "$run/skill_model_base.pt" \
      --threads "$THREADS" "$@" "${RECIPE[@]}"
    extract dagger --dataset "$DATA" --run-dir "$run" --base "$run/skill_model_base.pt" --out "$out" \
      --threads "$THREADS" --dagger-rounds "$rounds" --dagger-steps 2000
  else
    extract all --dataset "$DATA" --run-dir "$run" --encoder-weights "$WEIGHTS" --out "$out" \
      --threads "$THREADS" "$@" "${RECIPE[@]}"
  fi
}
# EXTRACT's decoder also sees the lead of its last joint target over the measured joints (--command-feedback;
# benchmarks/RESULTS.md, session 13: chained and prior-only skills complete more subtasks).
train_skills "$DAGGER_ROUNDS" "$RUN" models/extract_kitchen.pt --command-feedback
# Baseline for benchmarks/sample_efficiency.py: SPiRL-style skills (one skill, <= 10-step windows) on the same
# data, embeddings and encoder.
train_skills 0 "${RUN}_spirl" models/spirl_kitchen.pt "${SPIRL[@]}"
mkdir -p models/report
cp "$RUN"/cluster_vs_subtask.md "$RUN"/skill_model_report.md "$RUN"/*.png models/report/
# Pin every shipped model file (the loaders refuse a listed file whose bytes differ; `sha256sum -c` by hand).
(cd models && sha256sum $(find . -name '*.pt' | sed 's|^\./||' | sort) > SHA256SUMS)
echo "make_models: wrote models/extract_kitchen.pt, models/report/ (encoder $WEIGHTS)"
