#!/usr/bin/env bash
# Sweep sparse-view CT: number of views × noise levels × solvers, then ONE combined table.
#   ./eval_SVCT_2d.sh [CONFIG] [DATA] [extra main.py flags...]
#   VIEWS="18 30 60" NOISES="none poisson:4096" SOLVERS="udigdip,aseqdip,dip,dds,tv" ./eval_SVCT_2d.sh configs/paper_ct_aapm.py data/aapm
# NOISES: none | gaussian:<sigma> | relative:<level> | poisson:<I0> (photons per detector bin; the
# attenuation scale is config.physics.mu_max × pixel_mm); the models are stated in physics/noise.py.
# DEG=LA-CT ANGLE=90 switches to limited-angle CT. Every setting is one run folder inside the sweep
# folder SWEEP_DIR (default exp/sweep_<time>_ct; pass no --workdir), which ends with sweep.csv and
# sweep.md: setting × solver → mean ± std PSNR / SSIM and s/slice (utils/sweep_table.py).
# DRY_RUN=1 prints the commands and runs nothing.
set -euo pipefail
cd "$(dirname "$0")"
source ./eval_common.sh
CONFIG=${1:-configs/demo_ct.py}
DATA=${2:-indist_samples}
shift $(( $# > 2 ? 2 : $# )) || true
VIEWS=${VIEWS:-"16 23 32"}
NOISES=${NOISES:-"none poisson:4096"}
SOLVERS=${SOLVERS:-"udigdip,aseqdip,dip,cgsense,tv"}
DEG=${DEG:-SV-CT}
ANGLE=${ANGLE:-90}
sweep_dir ct
# the arc is a setting of limited-angle CT only (SV-CT always spans 180°)
angle_flags=""
if [[ "$DEG" == LA-CT ]]; then angle_flags="--config.physics.angle_range=$ANGLE"; fi
for noise in $NOISES; do
  nflags=$(noise_flags "$noise")
  for views in $VIEWS; do
    echo "=== $DEG views=$views noise=$noise solvers=$SOLVERS data=$DATA"
    # shellcheck disable=SC2086  # $nflags / $angle_flags hold several flags
    run "$PY" main.py --config="$CONFIG" --deg="$DEG" --solver="$SOLVERS" --data="$DATA" \
      --config.physics.num_views="$views" $angle_flags $nflags \
      --workdir="$SWEEP_DIR" --name="ct_${DEG}_${views}v_$(noise_tag "$noise")" "$@"
  done
done
combine
