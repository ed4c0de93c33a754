#!/usr/bin/env bash
# The label-free validation study of studies/label_free/README.md (issue 19), resumable: re-run the same command to
# continue.
#   bash studies/label_free/label_free_study.sh [OUT]   (two runs at a time, one thread each; hours on a 2-core CPU)
# Degrading runs (added in a second session because lr 2e-3 did not degrade): lr 1e-2 on seed 0 did not either (poly decay
# to 0 settles every run by its end), so the degrading row is a constant lr of 2e-2 (optim.power=0), seeds 0-2,
# fixed before it ran.
# Dense evaluations (every 50 iterations) whose label-free metrics never see the target labels; the true mIoU is
# logged beside them. Then: python studies/label_free/label_free_study.py OUT/sweep --out FIGURE_DIR
set -euo pipefail
OUT=${1:-label_free_study}
JOBS=${JOBS:-2}
source "$(dirname "$0")/../study_data.sh"  # $DATA and ROOTS
DENSE="train.eval_interval=50 train.checkpoint_interval=200 train.keep_checkpoints=true"
D=synthetic_effl0_dacs
mfmseg sweep "dacs_lr_const=$D $DENSE optim.lr=2e-2 optim.power=0" --seeds 0 1 2 --jobs "$JOBS" --out "$OUT/sweep" \
    "${ROOTS[@]}"
mfmseg sweep "source_only=synthetic_effl0_source_only $DENSE" "dacs=$D $DENSE" \
    "dacs_mfm=synthetic_effl0_dacs_mfm $DENSE" "dacs_lr_high=$D $DENSE optim.lr=2e-3" \
    --seeds 0 1 2 --jobs "$JOBS" --out "$OUT/sweep" "${ROOTS[@]}"
mfmseg sweep "dacs_lr_xhigh=$D $DENSE optim.lr=1e-2" --seeds 0 --jobs "$JOBS" --out "$OUT/sweep" "${ROOTS[@]}"
