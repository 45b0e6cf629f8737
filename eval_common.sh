# Shared by eval_MRI_multi.sh and eval_SVCT_2d.sh (sourced, not run).
#   NOISES tokens: none | gaussian:<sigma> | relative:<level> | poisson:<I0>   (physics/noise.py)
#   SWEEP_DIR: the sweep's folder (default exp/sweep_<time>_<tag>); it must not exist yet.
#   DRY_RUN=1: print the commands (one per line, shell-quoted) and run nothing.
PY=${PY:-.venv/bin/python}
DRY_RUN=${DRY_RUN:-0}

# main.py flags of one NOISES token
noise_flags() {
  local token=$1 kind=${1%%:*} value=${1#*:}
  if [[ "$kind" != none && ( "$token" != *:* || -z "$value" ) ]]; then
    echo "NOISES entry '$token' needs a value, e.g. relative:0.05, gaussian:0.01 or poisson:4096" >&2
    return 2
  fi
  case "$kind" in
    none) echo "--config.physics.noise=none" ;;
    gaussian) echo "--config.physics.noise=gaussian --config.physics.noise_sigma=$value" ;;
    relative) echo "--config.physics.noise=relative --config.physics.noise_level=$value" ;;
    poisson) echo "--config.physics.noise=poisson --config.physics.I0=$value" ;;
    *) echo "unknown NOISES entry '$token'; use none, gaussian:<sigma>, relative:<level> or poisson:<I0>" >&2
       return 2 ;;
  esac
}

# run-name fragment of a NOISES token (relative:0.05 -> relative0.05)
noise_tag() { echo "${1//:/}"; }

# SWEEP_DIR for this sweep; refuses an existing folder (nothing is overwritten)
sweep_dir() {
  SWEEP_DIR=${SWEEP_DIR:-exp/sweep_$(date +%Y%m%d-%H%M%S)_$1}
  if [[ -e "$SWEEP_DIR" && "$DRY_RUN" != 1 ]]; then
    echo "SWEEP_DIR=$SWEEP_DIR exists; choose another folder (a sweep never reuses one)" >&2
    return 2
  fi
}

# print (DRY_RUN=1) or run a command
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}

# the sweep's combined table: $SWEEP_DIR/sweep.csv and sweep.md
combine() {
  echo "=== combined table of $SWEEP_DIR"
  run "$PY" -m utils.sweep_table "$SWEEP_DIR"
}
