# Sourced by the study scripts (studies/mfm/study_mfm.sh, mfm/study_mfm_long.sh, label_free/label_free_study.sh):
# the built-in synthetic benchmark of seed 0 under $OUT/data, written and prepared once, and ROOTS, the sweep
# options that point at it.
DATA=$OUT/data
if [[ ! -f $DATA/gta/sample_class_stats.json ]]; then
    mfmseg synth --out "$DATA" --seed 0
    mfmseg prepare gta "$DATA/gta"
    mfmseg prepare cityscapes "$DATA/cityscapes"
fi
ROOTS=(--set "data.source.root=$DATA/gta" --set "data.target.root=$DATA/cityscapes"
       --set "data.val.root=$DATA/cityscapes")
