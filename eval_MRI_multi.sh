#!/usr/bin/env bash
# Sweep multi-coil MRI: masks × accelerations × noise levels × solvers, then ONE combined table.
#   ./eval_MRI_multi.sh [CONFIG] [DATA] [extra main.py flags...]
#   MASKS="uniform1d gaussian1d" ACCS="4 8" NOISES="none relative:0.05" SOLVERS="udigdip,dds,cgsense" ./eval_MRI_multi.sh
# NOISES: none | gaussian:<sigma> | relative:<level> (σ = level × RMS of the slice's measured k-space);
# the models are stated in physics/noise.py. Every setting is one run folder inside the sweep folder
# SWEEP_DIR (default exp/sweep_<time>_mri; pass no --workdir), which ends with sweep.csv and sweep.md:
# setting × solver → mean ± std PSNR / SSIM and s/slice (utils/sweep_table.py). An interrupted
# setting is resumed by hand with main.py --resume=<its run folder>, then
# `python -m utils.sweep_table SWEEP_DIR --overwrite`. DRY_RUN=1 prints the commands and runs nothing.
set -euo pipefail
cd "$(dirname "$0")"
source ./eval_common.sh
CONFIG=${1:-configs/demo_mri.py}
DATA=${2:-indist_samples}
shift $(( $# > 2 ? 2 : $# )) || true
MASKS=${MASKS:-"uniform1d gaussian1d"}
ACCS=${ACCS:-"4 8"}
NOISES=${NOISES:-"none relative:0.05"}
SOLVERS=${SOLVERS:-"udigdip,aseqdip,dip,cgsense,tv,l1wavelet"}
sweep_dir mri
for noise in $NOISES; do
  nflags=$(noise_flags "$noise")
  for mask in $MASKS; do
    for acc in $ACCS; do
      echo "=== MRI-multi mask=$mask acc=${acc}x noise=$noise solvers=$SOLVERS data=$DATA"
      # shellcheck disable=SC2086  # $nflags holds several flags
      run "$PY" main.py --config="$CONFIG" --deg=MRI-multi --solver="$SOLVERS" --data="$DATA" \
        --config.physics.mask="$mask" --config.physics.acceleration="$acc" $nflags \
        --workdir="$SWEEP_DIR" --name="mri_${mask}_${acc}x_$(noise_tag "$noise")" "$@"
    done
  done
done
combine
