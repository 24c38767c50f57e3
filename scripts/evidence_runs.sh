#!/usr/bin/env bash
# The sequence studies of docs/RESULTS.md, one after another, each resumable: run it again and every study skips its
# finished settings and resumes the one it was in (from its newest checkpoint). Results go to results/ (git-ignored).
#   bash scripts/evidence_runs.sh ../shared/datasets  >> results/evidence.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:?usage: bash scripts/evidence_runs.sh DATASETS_FOLDER}"
mkdir -p results

ecg() {  # the ECG study (its task INDEX alone with --only INDEX)
    plifnet study --config ecg --settings docs/results/ecg-neurons.yaml --out results/ecg-neurons "$@" \
        -- --data.root "$DATA"
}
plifnet study --config smnist --settings docs/results/rowmnist-neurons.yaml --out results/rowmnist-neurons \
    -- --data.root "$DATA" --data.order row --model.net.inputs 28 --trainer.max_epochs 10
ecg  # 18 runs of about 4 minutes each on 2 cores
# the same neurons in a wider network, 4-128-6
plifnet study --config ecg --settings docs/results/ecg-neurons.yaml --out results/ecg-wide-neurons \
    -- --data.root "$DATA" --model.net.hidden "[128]"
plifnet study --config psmnist --settings docs/results/psmnist-neurons.yaml --out results/psmnist-neurons \
    -- --data.root "$DATA" --trainer.max_epochs 3
# MNIST, the paper's network on the budget recipe over 20 epochs (bf16-mixed): the 99.4 % target
plifnet study --config mnist --config recipe/budget --config trainer/bf16 --grid plif:2 --out results/mnist-budget20 \
    -- --data.root "$DATA" --trainer.max_epochs 20
