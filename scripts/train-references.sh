#!/usr/bin/env bash
# Train both reference nets (fmnist-vgg, fmnist-resnet) from scratch and write ONNX + training records.
#   scripts/train-references.sh OUT_DIR [DATA_DIR]
# Env: EPOCHS (50), SEED (0), BUDGET (seconds per net; after epoch 2 the epoch count shrinks to fit),
#      DEVICE (cuda when torch sees a GPU, else cpu), PY (python with torch; /usr/bin/python3 here).
# Each net resumes from OUT_DIR/ARCH.ckpt, so re-running after an interruption continues where it stopped.
# The nets run one after the other; a failure of the first does not stop the second.
set -uo pipefail
OUT_DIR=${1:?usage: scripts/train-references.sh OUT_DIR [DATA_DIR]}
DATA_DIR=${2:-/usr/share/datasets/fashion-mnist}
PY=${PY:-/usr/bin/python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$ROOT/engine${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
for arch in fmnist-vgg fmnist-resnet; do
  "$PY" -m tuckerize.reference train --arch "$arch" --epochs "${EPOCHS:-50}" --seed "${SEED:-0}" \
    --out "$OUT_DIR" --data "$DATA_DIR" ${DEVICE:+--device "$DEVICE"} ${BUDGET:+--time-budget "$BUDGET"} || status=1
done
exit $status
