#!/usr/bin/env bash
# The label-free validation study of docs/label_free.md (issue 19), resumable: re-run the same command to continue.
#   bash docs/label_free_study.sh [OUT]     (two runs at a time, one thread each; hours on a 2-core CPU)
# dacs_lr_xhigh (lr 50x the recipe's; added in session 24 because lr 2e-3 did not degrade) is the degrading run.
# Dense evaluations (every 50 iterations) whose label-free metrics never see the target labels; the true mIoU is
# logged beside them. Then: python docs/label_free_study.py OUT/sweep
set -euo pipefail
OUT=${1:-label_free_study}
source "$(dirname "$0")/study_data.sh"  # $DATA and ROOTS
DENSE="train.eval_interval=50 train.checkpoint_interval=200 train.keep_checkpoints=true"
mfmseg sweep "source_only=synthetic_effl0_source_only $DENSE" "dacs=synthetic_effl0_dacs $DENSE" \
    "dacs_mfm=synthetic_effl0_dacs_mfm $DENSE" "dacs_lr_high=synthetic_effl0_dacs $DENSE optim.lr=2e-3" \
    "dacs_lr_xhigh=synthetic_effl0_dacs $DENSE optim.lr=1e-2" \
    --seeds 0 1 2 --jobs 2 --out "$OUT/sweep" "${ROOTS[@]}"
