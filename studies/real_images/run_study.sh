#!/usr/bin/env bash
# The real-image study (issue 28; studies/real_images/README.md), resumable: re-run the same command to continue.
#   bash studies/real_images/run_study.sh KITTI_CLONE IDD_CLONE [OUT] [STAGE...]
# Two trainings at a time, one torch thread each (mfmseg sweep --jobs 2 on 2 cores).
#
# Protocol, fixed 2026-12-04 17:00 UTC before any run of it (nothing below was changed after looking at target
# validation numbers):
# - data: KITTI's 200 labelled images and IDD-Lite (1,403 train, 204 val) via make_layouts.py; scored in IDD's 7
#   level-1 classes (data.classes=idd_level1); sizes of the real_*_effl0_* presets (~183 px tall, 128x128 crops).
# - recipe: the real_*_effl0_* presets = the synthetic_effl0_* recipe (EfficientNet-Lite0 from ImageNet, DAFormer
#   head, AdamW 2e-4, 50 warm-up, EMA 0.99, MFM at the paper's defaults) at 1000 iterations, evaluated and
#   checkpointed every 250, label-free metrics at every evaluation.
# - direction (stage pilot): source-only seed 0 in both directions. Rule fixed before it ran: the study runs in the
#   direction whose source-only mIoU on its target val is lower (the larger shift to adapt), a tie (< 2 points)
#   going to KITTI -> IDD for its 4x larger validation set (204 vs 50 images) and 9x larger unlabelled target.
# - stages in priority order (each is one sweep folder; what the CPU does not reach is listed in the report):
#   main      DACS, DACS + MFM and DACS + uda.target_bn_pass, seeds 0-2, in one sweep (seed-major: every finished
#             seed is a complete triple, and a freed slot takes the next run at once)
#   source    source-only, seeds 1-2 (seed 0 is the pilot's run of the chosen direction)
#   normeval  DACS and DACS + MFM with model.norm_eval=true, seeds 0-2
set -euo pipefail
KITTI=${1:?clone of ika-rwth-aachen/acdc-notebooks}
IDD=${2:?clone of ssg8288/IDD}
OUT=${3:-study_real}
shift 3 || true
STAGES=${*:-pilot main source normeval}
DIR=${PAIR:-kitti2idd}  # the direction the pilot chose (studies/real_images/README.md)
here=$(dirname "$0")
python "$here/make_layouts.py" --kitti "$KITTI" --idd "$IDD" --out "$OUT/data"
R=$OUT/data
roots() {  # the data roots of a direction
    if [[ $1 == kitti2idd ]]; then
        echo "--set data.source.root=$R/kitti --set data.target.root=$R/idd --set data.val.root=$R/idd"
    else
        echo "--set data.source.root=$R/idd --set data.target.root=$R/kitti --set data.val.root=$R/kitti"
    fi
}
P=real_${DIR}_effl0
sweep() { mfmseg sweep "$@" --jobs 2 $(roots "$DIR"); }
for stage in $STAGES; do
    case $stage in
        pilot)
            mfmseg sweep "src_k2i=real_kitti2idd_effl0_source_only" --seeds 0 --jobs 1 $(roots kitti2idd) \
                --out "$OUT/pilot_kitti2idd" &
            mfmseg sweep "src_i2k=real_idd2kitti_effl0_source_only" --seeds 0 --jobs 1 $(roots idd2kitti) \
                --out "$OUT/pilot_idd2kitti" &
            wait ;;
        main)
            sweep "dacs=${P}_dacs" "dacs_mfm=${P}_dacs_mfm" "dacs_bnpass=${P}_dacs uda.target_bn_pass=true" \
                --seeds 0 1 2 --baseline dacs --out "$OUT/main" ;;
        source)
            sweep "source_only=${P}_source_only" --seeds 1 2 --out "$OUT/main" ;;  # seed 0: the pilot's run
        normeval)
            sweep "dacs_ne=${P}_dacs model.norm_eval=true" "dacs_mfm_ne=${P}_dacs_mfm model.norm_eval=true" \
                --seeds 0 1 2 --baseline dacs_ne --out "$OUT/normeval" ;;
        *) echo "unknown stage $stage" >&2; exit 2 ;;
    esac
done
