#!/usr/bin/env bash
# Sweep sparse-view CT: number of views × solvers over a data folder.
#   ./eval_SVCT_2d.sh [CONFIG] [DATA] [extra main.py flags...]
#   VIEWS="18 30 60" SOLVERS="udigdip,aseqdip,dip,dds" ./eval_SVCT_2d.sh configs/paper_ct_aapm.py data/aapm
# DEG=LA-CT ANGLE=90 switches to limited-angle CT.
set -euo pipefail
cd "$(dirname "$0")"
CONFIG=${1:-configs/demo_ct.py}
DATA=${2:-indist_samples}
shift $(( $# > 2 ? 2 : $# )) || true
VIEWS=${VIEWS:-"16 23 32"}
SOLVERS=${SOLVERS:-"udigdip,aseqdip,dip"}
DEG=${DEG:-SV-CT}
ANGLE=${ANGLE:-90}
PY=${PY:-.venv/bin/python}
for views in $VIEWS; do
  echo "=== $DEG views=$views solvers=$SOLVERS data=$DATA"
  "$PY" main.py --config="$CONFIG" --deg="$DEG" --solver="$SOLVERS" --data="$DATA" \
    --config.physics.num_views="$views" --config.physics.angle_range="$ANGLE" \
    --name="ct_${DEG}_${views}v" "$@"
done
