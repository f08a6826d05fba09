#!/usr/bin/env bash
# The second GPU lease's script (docs/benchmarks.md "On a GPU", docs/architectures.md "At matched
# GPU time"), each step under a share of one deadline:
#   1. issue 17's open question: the U-Net against the DiT at matched GPU time, digit 0, trained
#      through `ddpmctl sweep` (max_time each, the machine otherwise idle), scored by
#      benchmarks/architectures.py on the GPU (classifier FID at n = 980, Heun 25, seed 0);
#   2. the test suite with `device = auto` resolving to CUDA, with the time left.
#
#   bash benchmarks/gpu_study.sh [DEADLINE_SECONDS] [MAX_TIME]   # results in $OUT (default benchmarks/out/gpu-study)
#
# Wheels, MNIST and the digit classifier come from .whl/ and .gpu/ as for benchmarks/gpu.sh.
set -u
OUT=${OUT:-benchmarks/out/gpu-study}
DEADLINE=${1:-540}
MAX_TIME=${2:-100s}
WORK=/tmp/gpu-study
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
start=$(date +%s)
left() { echo $(( DEADLINE - ($(date +%s) - start) )); }
step() { echo "== $1 (at $(( $(date +%s) - start )) s, $(left) s left)"; }

step environment
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=$PWD:/tmp/site PATH=/tmp/site/bin:$PATH
fi
$PY -c "import torch, ddpmctl; print('torch', torch.__version__, torch.cuda.get_device_name())"
export DDPMCTL_DATA_DIR=$WORK/data
[ -d .gpu/mnist ] && $PY -m ddpmctl data fetch mnist --from .gpu/mnist > "$WORK/fetch.log" 2>&1
[ -d .gpu/classifiers ] && cp -r .gpu/classifiers "$DDPMCTL_DATA_DIR/"

step "U-Net and DiT, $MAX_TIME each on the GPU"
RUNS=$WORK/architectures
timeout "$(( $(left) - 60 ))" $PY -m ddpmctl sweep --name unet-dit-digit0-gpu --runs-dir "$RUNS" --data mnist16 --set data.digits=0 \
    --set max_time="$MAX_TIME" --steps 100000 --eval-every 1000 --grid network=unet,dit 2>&1 | tail -n 15
for cell in "$RUNS"/unet-dit-digit0-gpu/*/; do cp "$cell/stop.json" "$OUT/stop-$(basename "$cell").json" 2>/dev/null; cp "$cell/metrics.jsonl" "$OUT/metrics-$(basename "$cell").jsonl" 2>/dev/null; done
timeout "$(( $(left) - 10 ))" $PY benchmarks/architectures.py "$RUNS/unet-dit-digit0-gpu" --device cuda --out "$OUT/scores.json" 2>&1 | tail -n 8

step "the test suite on CUDA"
if (( $(left) > 60 )); then
    timeout "$(( $(left) - 5 ))" $PY -m pytest -v -p no:cacheprovider -n 12 -m "not slow" -o addopts="-ra" --timeout 120 tests \
        > "$OUT/pytest.log" 2>&1; echo "pytest exit $?"
    grep -E "FAILED|ERROR|passed|failed" "$OUT/pytest.log" | tail -n 40
fi
step done
