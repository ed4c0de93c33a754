#!/usr/bin/env bash
# The MFM study of studies/mfm/README.md, resumable: re-run the same command to continue a killed sweep.
#   bash studies/mfm/study_mfm.sh [OUT]      (two runs at a time, one thread each; hours on a 2-core CPU)
set -euo pipefail
OUT=${1:-study_mfm}
source "$(dirname "$0")/../study_data.sh"  # $DATA and ROOTS
P=synthetic_effl0_dacs_mfm
LONG="train.max_iters=800 train.eval_interval=400 train.checkpoint_interval=400"
mfmseg sweep source_only=synthetic_effl0_source_only dacs=synthetic_effl0_dacs dacs_mfm=$P \
    "mfm_mask0=$P uda.mfm.mask_ratio=0" \
    "mfm_no_rebuilder=$P uda.mfm.rebuild=false" \
    "mfm_frozen_bn=$P uda.mfm.freeze_decoder_bn=true" \
    "mfm_lambda0=$P uda.mfm.weight=0" \
    "mfm_grad_only=$P uda.mfm.freeze_encoder_bn=true uda.mfm.freeze_decoder_bn=true" \
    "mfm_lambda0.5=$P uda.mfm.weight=0.5" \
    "mfm_grid8=$P uda.mfm.grid=8" \
    "mfm_both=$P uda.mfm.domain=both" \
    "mfm_source=$P uda.mfm.domain=source" \
    "dacs_800=synthetic_effl0_dacs $LONG" \
    "dacs_mfm_800=$P $LONG" \
    --seeds 0 1 2 --baseline dacs --jobs 2 --out "$OUT/sweep" "${ROOTS[@]}"
mfmseg sweep oracle=synthetic_effl0_oracle --seeds 0 --out "$OUT/oracle" "${ROOTS[@]}" \
    --set "data.source.root=$DATA/cityscapes"
