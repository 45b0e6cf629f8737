#!/usr/bin/env bash
# Sweep multi-coil MRI: masks × accelerations × solvers over a data folder.
#   ./eval_MRI_multi.sh [CONFIG] [DATA] [extra main.py flags...]
#   MASKS="uniform1d gaussian1d" ACCS="4 8" SOLVERS="udigdip,aseqdip,dip,dds" ./eval_MRI_multi.sh
# Each setting is one run folder under exp/ (never overwritten); re-running with RESUME=<folder>
# is done per setting by main.py --resume.
set -euo pipefail
cd "$(dirname "$0")"
CONFIG=${1:-configs/demo_mri.py}
DATA=${2:-indist_samples}
shift $(( $# > 2 ? 2 : $# )) || true
MASKS=${MASKS:-"uniform1d gaussian1d"}
ACCS=${ACCS:-"4 8"}
SOLVERS=${SOLVERS:-"udigdip,aseqdip,dip"}
PY=${PY:-.venv/bin/python}
for mask in $MASKS; do
  for acc in $ACCS; do
    echo "=== MRI-multi mask=$mask acc=${acc}x solvers=$SOLVERS data=$DATA"
    "$PY" main.py --config="$CONFIG" --deg=MRI-multi --solver="$SOLVERS" --data="$DATA" \
      --config.physics.mask="$mask" --config.physics.acceleration="$acc" \
      --name="mri_${mask}_${acc}x" "$@"
  done
done
