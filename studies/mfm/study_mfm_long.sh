#!/usr/bin/env bash
# The long-schedule MFM study of studies/mfm/README.md (issue 16), resumable: re-run the same command to continue.
#   bash studies/mfm/study_mfm_long.sh [OUT] [STAGE...]   (two runs at a time, one thread each; many hours on 2 cores)
# Settings fixed before any run started (2026-11-30 17:53 UTC):
# - schedule: 2000 iterations (poly to 0, 50 warm-up), evaluated and checkpointed every 400. The pilot is the
#   DACS-only run of issue 16 (1500 iterations, seed 0: q 0.58-0.61 over iterations 1000-1500, just below the
#   0.6 criterion for the last third); 2000 is the next round length, confirmed if DACS seed 0 keeps q >= 0.6
#   over iterations 1334-2000 (reported either way).
# - everything else is the 400-iteration study's recipe (synthetic_effl0_* presets, MFM = the paper's defaults).
# Stages in priority order (the CPU budget decides how far one session gets; each is its own sweep folder):
#   main      DACS, DACS + MFM, MFM at lambda 0, seeds 0-2 (then 3-5 for DACS and DACS + MFM)
#   bnpass    DACS + uda.target_bn_pass, seeds 0-2
#   normeval  DACS vs DACS + MFM with model.norm_eval=true at 400 and at 2000 iterations, seeds 0-2
#   mask      DACS + MFM with uda.mfm.mask_strategy=uncertain and =confident, seeds 0-2
#   mechanism (added 2026-12-01, after the norm_eval answer, before any run of it) MFM's pass with the encoder's
#             BatchNorms in eval mode (uda.mfm.encoder_bn_eval), then with batch statistics but frozen running
#             statistics (uda.mfm.freeze_encoder_bn), seeds 0-2; pairs with main's DACS and DACS + MFM
set -euo pipefail
OUT=${1:-study_mfm_long}
shift || true
STAGES=${*:-main bnpass normeval mask mechanism}
source "$(dirname "$0")/../study_data.sh"  # $DATA and ROOTS
D=synthetic_effl0_dacs
P=synthetic_effl0_dacs_mfm
LONG="train.max_iters=2000 train.eval_interval=400 train.checkpoint_interval=400 train.panel_interval=1000"
NE="model.norm_eval=true"
sweep() { mfmseg sweep "$@" --jobs 2 "${ROOTS[@]}"; }
for stage in $STAGES; do
    case $stage in
        main)
            sweep "dacs_2k=$D $LONG" "dacs_mfm_2k=$P $LONG" "mfm_lambda0_2k=$P $LONG uda.mfm.weight=0" \
                --seeds 0 1 2 --baseline dacs_2k --out "$OUT/sweep_long"
            sweep "dacs_2k=$D $LONG" "dacs_mfm_2k=$P $LONG" --seeds 3 4 5 --baseline dacs_2k --out "$OUT/sweep_long" ;;
        bnpass)
            sweep "dacs_2k=$D $LONG" "dacs_bnpass_2k=$D $LONG uda.target_bn_pass=true" \
                --seeds 0 1 2 --baseline dacs_2k --out "$OUT/sweep_long" ;;
        normeval)
            sweep "dacs_ne=$D $NE" "dacs_mfm_ne=$P $NE" --seeds 0 1 2 --baseline dacs_ne --out "$OUT/sweep_normeval"
            sweep "dacs_ne_2k=$D $NE $LONG" "dacs_mfm_ne_2k=$P $NE $LONG" --seeds 0 1 2 --baseline dacs_ne_2k \
                --out "$OUT/sweep_normeval" ;;
        mask)
            sweep "dacs_mfm_2k=$P $LONG" "mfm_uncertain_2k=$P $LONG uda.mfm.mask_strategy=uncertain" \
                "mfm_confident_2k=$P $LONG uda.mfm.mask_strategy=confident" \
                --seeds 0 1 2 --baseline dacs_mfm_2k --out "$OUT/sweep_long" ;;
        mechanism)
            sweep "dacs_2k=$D $LONG" "mfm_bneval_2k=$P $LONG uda.mfm.encoder_bn_eval=true" \
                "mfm_bnfrozen_2k=$P $LONG uda.mfm.freeze_encoder_bn=true" \
                --seeds 0 1 2 --baseline dacs_2k --out "$OUT/sweep_long" ;;
        *) echo "unknown stage $stage (main bnpass normeval mask mechanism)" >&2; exit 2 ;;
    esac
done
