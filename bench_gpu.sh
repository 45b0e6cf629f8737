#!/usr/bin/env bash
# GPU check + benchmark in one call (issue 6): CUDA correctness tests, per-phase timings / MFU at the
# paper's image sizes, batched DIP-step throughput, and the demo solves naive vs optimised on the
# held-out samples (same configs, PSNR/SSIM side by side).  Results: $OUT (default exp/gpu_check).
#
#   BUDGET=480 bash bench_gpu.sh      # on a CUDA machine, whole script capped at 480 s
#   QUICK=1 DEVICE=cpu bash bench_gpu.sh   # dry run of every section at toy sizes (~3 min on CPU)
#
# Sections are capped with `timeout` and run in priority order, so one failing or slow section
set -u
OUT=${OUT:-exp/gpu_check}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
mkdir -p "$OUT"
RUNS=$(mktemp -d)
export PYTHONUNBUFFERED=1
LOG="$OUT/log.txt"
: >"$LOG"
START=$(date +%s)
BUDGET=${BUDGET:-100000}   # seconds for the whole script: later sections shrink or are skipped
say() { echo "=== $* [$(date +%T), $(( $(date +%s) - START )) s]" | tee -a "$LOG"; }
run() {
  local t=$1 rem; shift
  rem=$(( BUDGET - ($(date +%s) - START) ))
  if [ "$rem" -lt 15 ]; then echo "skipped (BUDGET=$BUDGET s spent): $*" | tee -a "$LOG"; return; fi
  [ "$t" -gt "$rem" ] && t=$rem
  timeout "$t" "$@" 2>&1 | tee -a "$LOG" | grep -v -E "it/s\]|s/it\]" | tail -40
}

if [ "$QUICK" = 1 ]; then
  B_CT="--size=32 --prior=demo --net_channels=8,16 --steps=2 --warmup=1"
  B_MRI="--size=32 --prior=demo --net_channels=8,16 --steps=2 --warmup=1"
  quick() { echo "--config.modality_overrides.$1.udigdip.num_outer=3 --config.modality_overrides.$1.udigdip.inner_steps=2 --config.modality_overrides.$1.udigdip.purify_stop=2"; }
  NS=2; T_BENCH=300; T_Q=300
else
  B_CT="--size=256 --prior=AAPM256 --net_channels=64,128,256,256 --steps=10 --warmup=3"
  B_MRI="--size=320 --prior=fastmri_knee_320_complex_1m --net_channels=64,128,256,256 --steps=10 --warmup=3"
  quick() { echo ""; }
  NS=3; T_BENCH=150; T_Q=150
fi

say "environment"
{ nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,driver_version --format=csv 2>/dev/null || true
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"; } 2>&1 | tee -a "$LOG"

say "bench CT 256 (AAPM256 prior config, default DIP U-Net)"
run "$T_BENCH" $PY bench.py --device="$DEVICE" --modalities=CT $B_CT --solvers=udigdip,dds --skip_solve \
  --batch_sizes=1,2,4,8 --out="$OUT/bench_ct256.json"

say "demo solves ($NS held-out slices): naive (fp32, batch 1, sync + metrics every step) vs optimised (bf16, batch $NS)"
for mod in mri ct; do
  Q=$(quick "${mod^^}")
  run "$T_Q" $PY main.py --config=configs/demo_$mod.py --solver=udigdip --device="$DEVICE" --workdir="$RUNS" \
    --name=${mod}_naive --max_slices=$NS --config.log_every=1 --config.solver_cfg.udigdip.log_every=1 $Q
  run "$T_Q" $PY main.py --config=configs/demo_$mod.py --solver=udigdip --device="$DEVICE" --workdir="$RUNS" \
    --name=${mod}_opt --max_slices=$NS --batch_size=$NS --config.perf.bf16=True $Q
done
# batch 1, fp32, default logging (every 25 steps): separates the batching gain from the sync gain
run 90 $PY main.py --config=configs/demo_mri.py --solver=udigdip --device="$DEVICE" --workdir="$RUNS" \
  --name=mri_b1 --max_slices=$NS $(quick MRI)
$PY - "$RUNS" "$OUT/quality.json" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys, pathlib
runs, out = pathlib.Path(sys.argv[1]), {}
for d in sorted(runs.iterdir()):
    s = d / "summary.json"
    m = d / "metrics.csv"
    out[d.name] = {"summary": json.loads(s.read_text()) if s.exists() else None,
                   "metrics_csv": m.read_text() if m.exists() else None}
pathlib.Path(sys.argv[2]).write_text(json.dumps(out, indent=1))
print("collected", [k for k, v in out.items() if v["summary"]])
EOF

say "CUDA tests"
run 90 $PY -m pytest -q -p no:cacheprovider -m "not slow" tests/test_mri.py tests/test_ct.py tests/test_perf.py \
  tests/test_dip_solvers.py tests/test_diffusion.py -k "cuda or gpu"

say "bench MRI 320 (fastMRI knee prior config)"
run "$T_BENCH" $PY bench.py --device="$DEVICE" --modalities=MRI $B_MRI --solvers=udigdip,dds --skip_solve \
  --batch_sizes=1,2,4,8 --out="$OUT/bench_mri320.json"

say "torch.compile of the DIP step (MRI 256, B=1 and 8)"
run "$T_BENCH" $PY bench.py --device="$DEVICE" --modalities=MRI $B_CT --solvers=aseqdip --skip_solve --compile \
  --batch_sizes=1,8 --out="$OUT/bench_compile.json"
say "done"
rm -rf "$RUNS"
