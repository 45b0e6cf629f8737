#!/usr/bin/env bash
# GPU check + benchmark in one call: CUDA correctness tests (incl. CUDA-graph step = eager
# step), batched DIP-step throughput / MFU at the paper's image sizes (eager and CUDA graph, with a
# profile at B=8), the demo solves naive vs optimised on the held-out samples (same configs,
# PSNR/SSIM side by side), the default demo with graphs on/off, batched DDS, and a torch.compile
# agreement check.  Results: $OUT (default exp/gpu_check).
#
#   BUDGET=470 bash bench_gpu.sh      # on a CUDA machine, whole script capped at 470 s
#   QUICK=1 DEVICE=cpu bash bench_gpu.sh   # dry run of every section at toy sizes (~3 min on CPU)
#
# Sections are capped with `timeout` and run in priority order, so one failing or slow section
# cannot use up the others' time; BUDGET caps the whole script (seconds).
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
  NS=2; T_BENCH=300; T_Q=300; CC_SIZE=16
else
  B_CT="--size=256 --prior=AAPM256 --net_channels=64,128,256,256 --steps=10 --warmup=3"
  B_MRI="--size=320 --prior=fastmri_knee_320_complex_1m --net_channels=64,128,256,256 --steps=10 --warmup=3"
  quick() { echo ""; }
  NS=3; T_BENCH=150; T_Q=150; CC_SIZE=64
fi

say "environment"
{ nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,driver_version --format=csv 2>/dev/null || true
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"; } 2>&1 | tee -a "$LOG"

say "CUDA tests (operators, batched solvers, CUDA-graph step vs eager)"
run 120 $PY -m pytest -q -p no:cacheprovider -m "not slow" tests/test_mri.py tests/test_ct.py tests/test_perf.py \
  tests/test_dip_solvers.py tests/test_diffusion.py -k "cuda or gpu"

say "bench CT 256 (AAPM256 prior config, default DIP U-Net): batched DIP step, eager vs CUDA graph"
run "$T_BENCH" $PY bench.py --device="$DEVICE" --modalities=CT $B_CT --solvers=udigdip --skip_solve --prior_phases=False \
  --cuda_graph --profile_batch=8 --net_impls=vmap,grouped_cl --batch_sizes=1,2,4,8 --out="$OUT/bench_ct256.json"

say "demo solves ($NS held-out slices): naive (fp32, batch 1, sync + metrics every step) vs optimised (bf16, batch $NS, CUDA graph)"
for mod in mri ct; do
  Q=$(quick "${mod^^}")
  run "$T_Q" $PY main.py --config=configs/demo_$mod.py --solver=udigdip --device="$DEVICE" --workdir="$RUNS" \
    --name=${mod}_naive --max_slices=$NS --config.log_every=1 --config.solver_cfg.udigdip.log_every=1 \
    --config.perf.cuda_graph=off $Q
  run "$T_Q" $PY main.py --config=configs/demo_$mod.py --solver=udigdip --device="$DEVICE" --workdir="$RUNS" \
    --name=${mod}_opt_graph --max_slices=$NS --batch_size=$NS --config.perf.bf16=True --config.perf.cuda_graph=on $Q
done
# the same without the graph: separates the graph's gain from batching + bf16
run "$T_Q" $PY main.py --config=configs/demo_mri.py --solver=udigdip --device="$DEVICE" --workdir="$RUNS" \
  --name=mri_opt_nograph --max_slices=$NS --batch_size=$NS --config.perf.bf16=True --config.perf.cuda_graph=off $(quick MRI)
# the README's main job (python main.py) on the GPU: defaults (perf.cuda_graph=auto) vs graphs off
for g in auto off; do
  if [ "$QUICK" = 1 ]; then DQ="$(quick MRI) $(quick CT) --config.modality_overrides.MRI.aseqdip.num_outer=2 \
--config.modality_overrides.CT.aseqdip.num_outer=2 --config.modality_overrides.MRI.dip.num_steps=4 \
--config.modality_overrides.CT.dip.num_steps=4"; else DQ=""; fi
  run 150 $PY main.py --device="$DEVICE" --workdir="$RUNS" --name=default_demo_graph_$g --config.perf.cuda_graph=$g $DQ
done
# batched DDS (per-slice seeds): one slice at a time vs one batch
run 90 $PY main.py --config=configs/demo_mri.py --solver=dds --device="$DEVICE" --workdir="$RUNS" --name=mri_dds_b1 \
  --max_slices=$NS
run 90 $PY main.py --config=configs/demo_mri.py --solver=dds --device="$DEVICE" --workdir="$RUNS" --name=mri_dds_batched \
  --max_slices=$NS --batch_size=$NS
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

say "bench MRI 320 (fastMRI knee prior config): batched DIP step, eager vs CUDA graph"
run "$T_BENCH" $PY bench.py --device="$DEVICE" --modalities=MRI $B_MRI --solvers=udigdip --skip_solve --prior_phases=False \
  --cuda_graph --net_impls=vmap,grouped_cl --batch_sizes=1,2,4,8 --out="$OUT/bench_mri320.json"

say "torch.compile vs eager DIP nets (per-call agreement; see compile_refusal)"
run "$T_BENCH" $PY bench.py --device="$DEVICE" --compile_check --size=$CC_SIZE --out="$OUT/compile_check.json"
say "done"
rm -rf "$RUNS"
