#!/usr/bin/env bash
# The GPU run in one call (docs/performance.md, "GPU run"): every measurement and check below,
# in priority order, each section capped by `timeout` at its share of what is left of BUDGET,
# results under $OUT, ending with $OUT/summary.md (python bench_report.py summary $OUT).
#
#   BUDGET=540 bash bench_gpu.sh                        # CUDA machine: the whole run in ≤ 540 s
#   QUICK=1 DEVICE=cpu OUT=/tmp/gpu_dry BUDGET=400 bash bench_gpu.sh   # dry run, toy sizes, CPU
#   ONLY=budget_mri320,multiproc BUDGET=200 bash bench_gpu.sh          # rerun some sections only
#
# Sections (name: what it measures → part file under $OUT/parts/):
#   dip_ct256, dip_mri320     DIP optimiser step per slice-step at 256² (CT) / 320² (MRI): B = 1..8,
#                             vmap vs grouped_cl networks, bf16 eager / CUDA graph, fp32 graph rows,
#                             MFU, profile of the fastest setting (bench.py dip_batched)
#   prior_ct256, prior_mri320 one prior call in fp32 / TF32 / bf16 / fp16, channels-last on/off:
#                             speed and Tweedie x̂₀ error against fp32; batched purification
#                             (bench.py prior_precision)
#   budget_ct256, budget_mri320  seconds per slice at the papers' budget of every solver, naive /
#                             default / fast / batched, uDiG-DIP : DDS (bench.py paper_budget)
#   multiproc                 torchrun ranks (2 sharing the GPU when there is one) against one
#                             process: equal merged results? (bench_checks.py --compare_runs)
#   checks                    CUDA against CPU: the B networks per implementation and backend
#                             setting, solves, same-seed determinism, graph vs eager, operators,
#                             bf16 matmul rate (bench_checks.py)
#   cuda_tests                pytest -k "cuda or gpu" (CUDA only)
#   compile                   torch.compile against eager DIP networks (bench.py --compile_check)
#
# Environment: OUT (default exp/gpu_check), BUDGET (seconds, default 540), DEVICE (cuda | cpu),
# QUICK=1 (toy sizes), ONLY (comma list of sections), PYTHON (default .venv/bin/python if present,
# else python3), THREADS (torch threads; default $OMP_NUM_THREADS).  Each section's output is in
# $OUT/logs/<section>.log, its status in $OUT/sections.tsv.
set -u
cd "$(dirname "$0")"
OUT=${OUT:-exp/gpu_check}
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
BUDGET=${BUDGET:-540}
ONLY=${ONLY:-}
THREADS=${THREADS:-${OMP_NUM_THREADS:-}}
RESERVE=12          # seconds kept for bundling the parts and writing summary.md
MIN_SECTION=15      # a section with less time than this left is skipped
export OUT PYTHON DEVICE QUICK THREADS PYTHONUNBUFFERED=1 MPLBACKEND=Agg
if [ -z "$ONLY" ]; then     # a whole run starts from nothing; ONLY= keeps the other sections' parts
  rm -rf "${OUT:?}/parts" "$OUT/logs" "$OUT/runs"
  rm -f "$OUT"/{checks,dip_step,prior,budget,multigpu,compile_check}.json "$OUT/summary.md"
fi
mkdir -p "$OUT/parts" "$OUT/logs" "$OUT/runs"
START=$(date +%s)
LOG="$OUT/log.txt"
[ -z "$ONLY" ] && : >"$OUT/sections.tsv" && : >"$LOG"
touch "$OUT/sections.tsv"
elapsed() { echo $(( $(date +%s) - START )); }
say() { echo "=== $* [$(date +%T), $(elapsed) s]" | tee -a "$LOG"; }

# ------------------------------------------------------------------------- sizes per mode
if [ "$QUICK" = 1 ]; then
  CT="--modalities=CT --size=32 --prior=demo";  MRI="--modalities=MRI --size=32 --prior=demo"
  NET=8,16; STEPS="--steps=2 --warmup=1"; DIP_BS=1,2; PRIOR_BS=1,2; BUDGET_BS=1,2
  BUDGET_LENS="--budget_outer=1,2 --budget_inner=2 --budget_dm_steps=2,4"
  CC="--size=16 --compile_backends=aot_eager"; CHECKS_Q=--quick; MP_SLICES=3
  MP_Q="--config.solver_cfg.udigdip.num_outer=2 --config.solver_cfg.udigdip.inner_steps=1
--config.solver_cfg.udigdip.purify_stop=2 --config.solver_cfg.udigdip.net.channels=(8,8,8,8)
--config.solver_cfg.udigdip.disable_progress=True --config.solver_cfg.dds.nfe=3 --config.solver_cfg.dds.progress=False"
else
  CT="--modalities=CT --size=256 --prior=AAPM256"; MRI="--modalities=MRI --size=320 --prior=fastmri_knee_320_complex_1m"
  NET=64,128,256,256; STEPS="--steps=10 --warmup=3"; DIP_BS=1,2,4,8; PRIOR_BS=1,2,4,8; BUDGET_BS=1,4
  BUDGET_LENS="--budget_outer=2,12 --budget_inner=10 --budget_dm_steps=5,50"
  CC="--size=64"; CHECKS_Q=""; MP_SLICES=4
  MP_Q="--config.modality_overrides.MRI.udigdip.num_outer=30 --config.modality_overrides.MRI.udigdip.purify_stop=24
--config.solver_cfg.udigdip.disable_progress=True --config.solver_cfg.dds.nfe=20 --config.solver_cfg.dds.progress=False"
fi
THR=""; [ -n "$THREADS" ] && THR="--threads=$THREADS"
export CT MRI NET STEPS DIP_BS PRIOR_BS BUDGET_BS BUDGET_LENS CC CHECKS_Q MP_SLICES MP_Q THR

# --------------------------------------------------------------------------------- sections
# Each runs in its own `bash -c` under `timeout`; SEC_T is its time limit (inner budgets are
# derived from it).  Exit 3 = skipped (reason on the last output line).
bench() { "$PYTHON" bench.py --device="$DEVICE" $THR --solvers=udigdip "$@"; }
sec_dip() {   # $1 = ct256 | mri320
  local m; [ "$1" = ct256 ] && m=$CT || m=$MRI
  bench $m $STEPS --net_channels=$NET --skip_solve --prior_phases=False --phases=dip_batched --cuda_graph \
    --dip_fp32 --profile_best --net_impls=vmap,grouped_cl --batch_sizes=$DIP_BS --out="$OUT/parts/dip_$1.json"
}
sec_prior() {
  local m; [ "$1" = ct256 ] && m=$CT || m=$MRI
  bench $m $STEPS --phases=prior_precision --batch_sizes=$PRIOR_BS --out="$OUT/parts/prior_$1.json"
}
sec_budget() {
  local m; [ "$1" = ct256 ] && m=$CT || m=$MRI
  bench $m $STEPS --net_channels=$NET --phases=paper_budget --batch_sizes=$BUDGET_BS $BUDGET_LENS \
    --budget_s=$(( SEC_T * 2 / 3 > 5 ? SEC_T * 2 / 3 : 5 )) --out="$OUT/parts/budget_$1.json"
}
sec_multiproc() {
  local n=2 one two t0 t1 t2 rc
  if [ "$DEVICE" != cpu ]; then
    n=$("$PYTHON" -c "import torch; print(max(2, torch.cuda.device_count()))")
  fi
  one="$OUT/runs/one"; two="$OUT/runs/ranks"; rm -f "$OUT/parts/multiproc_wall.json"
  rm -rf "$one" "$two"; mkdir -p "$one" "$two"
  local args="--config=configs/demo_mri.py --solver=udigdip,dds --device=$DEVICE --max_slices=$MP_SLICES $MP_Q"
  t0=$(date +%s.%N)
  "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$n" main.py $args --workdir="$two" --name=ranks \
    || return $?
  t1=$(date +%s.%N)
  "$PYTHON" main.py $args --workdir="$one" --name=one || return $?
  t2=$(date +%s.%N)
  "$PYTHON" bench_checks.py --compare_runs "$(ls -d "$one"/*/ | head -1)" "$(ls -d "$two"/*/ | head -1)" \
    --out="$OUT/parts/multiproc_compare.json" | tail -12 || return $?
  "$PYTHON" -c "import json,sys; json.dump({'nproc': int(sys.argv[1]), 'ranks_s': float(sys.argv[3]) - float(sys.argv[2]),
'one_process_s': float(sys.argv[4]) - float(sys.argv[3]), 'device': sys.argv[5]}, open(sys.argv[6], 'w'))" \
    "$n" "$t0" "$t1" "$t2" "$DEVICE" "$OUT/parts/multiproc_wall.json"
  find "$one" "$two" -name "*.png" -delete        # keep the numbers, not the pictures
}
sec_checks() {
  "$PYTHON" bench_checks.py --device="$DEVICE" $CHECKS_Q $THR --budget_s=$(( SEC_T > 40 ? SEC_T - 15 : SEC_T / 2 )) \
    --out="$OUT/parts/checks_diag.json"
}
sec_cuda_tests() {
  rm -f "$OUT/parts/cuda_tests.xml"
  [ "$HAVE_CUDA" = 1 ] && [ "$DEVICE" != cpu ] || { echo "skipped: no CUDA"; return 3; }
  "$PYTHON" -m pytest -q -p no:cacheprovider -m "not slow" -k "cuda or gpu" --junitxml="$OUT/parts/cuda_tests.xml" \
    tests/test_engines.py tests/test_mri.py tests/test_ct.py tests/test_perf.py tests/test_physics_contract.py \
    tests/test_dip_solvers.py tests/test_diffusion.py
}
sec_compile() {
  "$PYTHON" bench.py --device="$DEVICE" $THR --compile_check $CC --compile_budget_s=$(( SEC_T > 40 ? SEC_T - 25 : SEC_T / 2 )) \
    --out="$OUT/parts/compile_check.json"
}
export -f bench sec_dip sec_prior sec_budget sec_multiproc sec_checks sec_cuda_tests sec_compile

# name | weight (expected seconds on an H200; the shares of the remaining time) | command |
# part whose recorded errors make the status "partial" | what it measures
SECTIONS=(
  "dip_ct256|60|sec_dip ct256|dip_ct256.json|DIP step CT 256²: B, vmap/grouped_cl, bf16/fp32, graph, MFU, profile"
  "dip_mri320|60|sec_dip mri320|dip_mri320.json|DIP step MRI 320²: as above"
  "prior_ct256|30|sec_prior ct256|prior_ct256.json|prior call fp32/TF32/bf16/fp16, channels-last, Tweedie; batched purify"
  "prior_mri320|30|sec_prior mri320|prior_mri320.json|as above, MRI 320²"
  "budget_ct256|70|sec_budget ct256|budget_ct256.json|paper-budget s/slice of every solver, naive vs optimised, CT 256²"
  "budget_mri320|70|sec_budget mri320|budget_mri320.json|as above, MRI 320²; uDiG-DIP : DDS"
  "multiproc|55|sec_multiproc|multiproc_compare.json|torchrun ranks vs one process: merged results equal?"
  "checks|85|sec_checks|checks_diag.json|CUDA vs CPU: nets, solves, determinism, graph vs eager, operators, matmul"
  "cuda_tests|40|sec_cuda_tests||pytest -k cuda"
  "compile|20|sec_compile|compile_check.json|torch.compile vs eager DIP nets"
)

record() {   # name status seconds timeout what
  local tmp="$OUT/sections.tsv.tmp"
  awk -F'\t' -v n="$1" '$1 != n' "$OUT/sections.tsv" >"$tmp" 2>/dev/null || true
  printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$tmp"
  mv "$tmp" "$OUT/sections.tsv"
}

selected() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

say "environment (OUT=$OUT DEVICE=$DEVICE QUICK=$QUICK BUDGET=$BUDGET s${ONLY:+ ONLY=$ONLY})"
{ nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,driver_version --format=csv 2>/dev/null || true
  timeout 60 "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available',
torch.cuda.is_available(), 'devices', torch.cuda.device_count(), 'threads', torch.get_num_threads())"
} 2>&1 | tee "$OUT/env.txt" | tee -a "$LOG"
HAVE_CUDA=$(timeout 60 "$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
export HAVE_CUDA
if [ "$DEVICE" != cpu ] && [ "$HAVE_CUDA" != 1 ]; then
  echo "DEVICE=$DEVICE but CUDA is not available: every section is skipped (use DEVICE=cpu for a dry run)" | tee -a "$LOG"
fi

# weight of the selected sections still to run
pending=0
for s in "${SECTIONS[@]}"; do IFS='|' read -r name w _ <<<"$s"; selected "$name" && pending=$(( pending + w )); done

for s in "${SECTIONS[@]}"; do
  IFS='|' read -r name w cmd part what <<<"$s"
  selected "$name" || continue
  rem=$(( BUDGET - RESERVE - $(elapsed) ))
  t=$(( rem * w / (pending > 0 ? pending : 1) ))     # its share of what is left
  pending=$(( pending - w ))
  if [ "$t" -lt "$MIN_SECTION" ]; then t=$(( w < rem ? w : rem )); fi   # scarce: earlier sections first
  if [ "$DEVICE" != cpu ] && [ "$HAVE_CUDA" != 1 ]; then
    record "$name" "skipped: no CUDA" 0 0 "$what"; say "$name: skipped: no CUDA"; continue
  fi
  if [ "$t" -lt "$MIN_SECTION" ]; then
    record "$name" "skipped: budget spent" 0 "$t" "$what"; say "$name: skipped (only ${t} s of BUDGET=$BUDGET left)"
    continue
  fi
  say "$name (timeout ${t} s): $what"
  [ -n "$part" ] && rm -f "$OUT/parts/$part"
  t0=$(date +%s)
  SEC_T=$t timeout -k 10 "$t" bash -c "$cmd" >"$OUT/logs/$name.log" 2>&1
  rc=$?
  dt=$(( $(date +%s) - t0 ))
  grep -v -E "it/s\]|s/it\]|^USDT|profiler_st" "$OUT/logs/$name.log" | tail -n 14
  cat "$OUT/logs/$name.log" >>"$LOG"
  case $rc in
    0) status=ok
       if [ -n "$part" ] && ! errs=$("$PYTHON" bench_report.py errors "$OUT/parts/$part" 2>&1); then
         status="partial: $(echo "$errs" | head -1) in parts/$part"; echo "$errs" | head -6
       fi ;;
    3) status="$(tail -n 1 "$OUT/logs/$name.log")" ;;
    124|137) status="timeout after ${t} s" ;;
    *) status="error (exit $rc)" ;;
  esac
  record "$name" "$status" "$dt" "$t" "$what"
  say "$name: $status (${dt} s)"
done

say "report"
P="$OUT/parts"
timeout 60 "$PYTHON" bench_report.py bundle "$OUT/checks.json" pytest="$P/cuda_tests.xml" diagnostics="$P/checks_diag.json"
timeout 60 "$PYTHON" bench_report.py bundle "$OUT/dip_step.json" ct256="$P/dip_ct256.json" mri320="$P/dip_mri320.json"
timeout 60 "$PYTHON" bench_report.py bundle "$OUT/prior.json" ct256="$P/prior_ct256.json" mri320="$P/prior_mri320.json"
timeout 60 "$PYTHON" bench_report.py bundle "$OUT/budget.json" ct256="$P/budget_ct256.json" mri320="$P/budget_mri320.json"
timeout 60 "$PYTHON" bench_report.py bundle "$OUT/multigpu.json" compare="$P/multiproc_compare.json" wall="$P/multiproc_wall.json"
[ -f "$P/compile_check.json" ] && cp "$P/compile_check.json" "$OUT/compile_check.json"
for s in "${SECTIONS[@]}"; do      # sections.tsv in the order of SECTIONS (a rerun appends)
  awk -F'\t' -v n="${s%%|*}" '$1 == n' "$OUT/sections.tsv"
done >"$OUT/sections.tsv.tmp" && mv "$OUT/sections.tsv.tmp" "$OUT/sections.tsv"
timeout 60 "$PYTHON" bench_report.py summary "$OUT" >/dev/null
echo
awk -F'\t' '{printf "%-14s %-48s %4s s (timeout %s s)\n", $1, substr($2, 1, 48), $3, $4}' "$OUT/sections.tsv"
say "done: $OUT/summary.md"
