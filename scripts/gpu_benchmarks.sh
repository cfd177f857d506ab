#!/bin/bash
# The GPU numbers in docs/RESULTS.md ("On a GPU"): the pruning and MAC-budget tests on the
# accelerator, then jitted latency, dense vs compact, and the train step against the forward, on
# whatever accelerator JAX finds. No TensorFlow needed (the benchmarks use synthetic inputs).
#   bash scripts/gpu_benchmarks.sh OUT_DIR
# writes OUT_DIR/gpu_benchmarks.json (every benchmark's JSON by name), OUT_DIR/gpu_benchmarks.log
# (the printed tables) and OUT_DIR/tests.log: three files, whatever the number of benchmarks.
set -u
out=${1:?usage: bash scripts/gpu_benchmarks.sh OUT_DIR}
mkdir -p "$out/parts"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
log="$out/gpu_benchmarks.log"
nvidia-smi -L 2>/dev/null | tee "$log"
python3 -c 'import jax, flax; print("jax", jax.__version__, "flax", flax.__version__, jax.devices())' | tee -a "$log"
echo "== tests on the accelerator"
timeout 300 python3 -m pytest -q -rf --tb=line -n 6 -p no:cacheprovider tests/test_graph_prune.py \
  tests/test_budget.py tests/test_budget_training.py tests/test_user_budget.py > "$out/tests.log" 2>&1
tail -15 "$out/tests.log"
bench() {  # name, then benchmark.py flags
  local name=$1; shift
  echo "== $name" | tee -a "$log"
  timeout 240 python3 launch/benchmark.py --batch_sizes=1,64,256,1024 --runs=100 --warmup=10 \
    --json="$out/parts/$name.json" "$@" 2>&1 | grep -v '^[IW][0-9]' | tee -a "$log"
}
for b in 0.3 0.5; do  # the Fashion-MNIST networks trained to a MAC budget: scripts/pareto.py's plan main
  # pareto.py's workdirs are WORKROOT/<commit[:12]>/<plan>/<arm>_<budget>_s<seed>: the newest finished one
  d=$(ls -td workdirs/pareto/*/main/scp_${b}_s0 2>/dev/null | while read -r w; do
        [ -f "$w/report.json" ] && echo "$w" && break; done)
  if [ -n "$d" ]; then
    bench "fmnist_scp_${b}" --workdir="$d" $([ "$b" = 0.5 ] && echo --train_step)
  else
    echo "== fmnist_scp_${b}: skipped, no finished workdirs/pareto/*/main/scp_${b}_s0 (python scripts/pareto.py --plan=main)" | tee -a "$log"
  fi
done
bench resnet56_p0.5_r1 --config=configs/cifar.py:cifar10_resnet56 --random_prune=0.5 --round_to=1 --train_step
bench resnet56_p0.5_r8 --config=configs/cifar.py:cifar10_resnet56 --random_prune=0.5 --round_to=8
bench vgg16_p0.5_r1 --config=configs/cifar.py:cifar10_vgg16 --random_prune=0.5 --round_to=1
bench resnet50_p0.5_r8 --config=configs/imagenet.py:resnet50 --input_shape=224,224,3 --random_prune=0.5 \
  --round_to=8 --batch_sizes=1,32,128 --runs=50 --train_step
python3 - "$out" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
parts = {os.path.basename(p)[:-5]: json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, "parts", "*.json")))}
json.dump(parts, open(os.path.join(out, "gpu_benchmarks.json"), "w"), indent=1)
PY
rm -rf "$out/parts"
