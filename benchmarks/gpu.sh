#!/usr/bin/env bash
# The GPU figures and the CUDA-path checks of docs/benchmarks.md ("On a GPU"), in one go, each
# step under a share of one deadline so that a lease's time is never overrun:
#   1. speed against diffusers (benchmarks/speed.py): fp32 and bf16, batch 64 and 512, and DiT;
#   2. phase 2 (digit 0) through the CLI on CUDA at the default precision, its bar checked, while
#   3. the test suite runs beside it with `device = auto` resolving to CUDA;
#   4. channels-last and torch.compile against diffusers, if time is left.
#
#   bash benchmarks/gpu.sh [DEADLINE_SECONDS]      # results: $OUT (default benchmarks/out/gpu)
#
# Where no Python packages can be installed (a lent GPU machine), it installs the wheels found in
# .whl/ into /tmp/site first; MNIST comes from .gpu/mnist (the four .gz files) and the digit
# classifier from .gpu/classifiers when they exist. To prepare them here (both folders ignored):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#       --platform manylinux2014_x86_64 -d .whl pydantic pydantic-core pydantic-settings annotated-types \
#       typing-inspection python-dotenv pot pytorch-fid tomli-w diffusers importlib-metadata
#   pip wheel --no-deps . plugins/ddpmctl-sde plugins/ddpmctl-shapes -w .whl
#   cp -r ../shared/data/mnist .gpu/mnist; cp -r ~/.cache/ddpmctl/data/classifiers .gpu/
# Everything it writes is packed into $OUT/gpu.tar.gz after each step, so a cut-off run still
# returns what it finished.
set -u
OUT=${OUT:-benchmarks/out/gpu}
DEADLINE=${1:-520}
WORK=/tmp/gpu-run
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
start=$(date +%s)

left() { echo $(( DEADLINE - ($(date +%s) - start) )); }
cap() { local l; l=$(left); (( $1 < l )) && echo "$1" || echo "$(( l > 1 ? l : 1 ))"; }
step() { echo "== $1 (at $(( $(date +%s) - start )) s, $(left) s left)"; }
pack() { tar -czf "$OUT/gpu.tar.gz" -C "$WORK" . 2>/dev/null; }

step environment
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv; nproc; } > "$WORK/env.txt" 2>&1
if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=$PWD:/tmp/site PATH=/tmp/site/bin:$PATH  # the work tree first: the wheels may hold an older ddpmctl
fi
$PY -c "import torch, ddpmctl, diffusers; print('torch', torch.__version__, torch.cuda.get_device_name(), 'diffusers', diffusers.__version__)" | tee -a "$WORK/env.txt"
cat "$WORK/env.txt"

step "speed: fp32, bf16 (batch 64), bf16 (batch 512)"
speed() {  # NAME, then benchmarks/speed.py flags
    local name=$1; shift
    timeout "$(cap 100)" $PY benchmarks/speed.py --device cuda --nfe 100 --train-steps 50 --repeats 3 --out "$WORK/$name" "$@" \
        > "$WORK/$name.log" 2>&1; echo "$name: exit $?"; tail -n 8 "$WORK/$name.log"; pack
}
speed speed-fp32 --precision fp32 --model 2d,mnist16,rgb32,mnist16-dit
speed speed-bf16 --precision bf16 --model 2d,mnist16,rgb32,mnist16-dit
speed speed-bf16-b512 --precision bf16 --model mnist16,rgb32,mnist16-dit --batch-size 512

step "phase 2 on CUDA (default precision), the test suite beside it"
export DDPMCTL_DATA_DIR=$WORK/data
[ -d .gpu/mnist ] && $PY -m ddpmctl data fetch mnist --from .gpu/mnist > "$WORK/fetch.log" 2>&1
[ -d .gpu/classifiers ] && mkdir -p "$DDPMCTL_DATA_DIR" && cp -r .gpu/classifiers "$DDPMCTL_DATA_DIR/"
suite_cap=$(cap 240)
# -v: one line per finished test, so a run cut off by its deadline still shows how far it got
( timeout "$suite_cap" $PY -m pytest -v -p no:cacheprovider -n 6 -m "not slow" -o addopts="-ra" --timeout 150 tests/test_cuda.py tests \
    > "$WORK/pytest.log" 2>&1; echo "pytest exit $?" >> "$WORK/pytest.log" ) &
suite=$!
timeout "$(cap 300)" $PY benchmarks/mnist_phases.py digit0 --out "$WORK/phases" > "$WORK/phase2.log" 2>&1
echo "phase 2: exit $?"; tail -n 25 "$WORK/phase2.log"
wait $suite
tail -n 40 "$WORK/pytest.log"
rm -rf "$WORK/phases/digit0/mnist16-digit0/checkpoints" "$WORK/data"
pack

if (( $(left) > 90 )); then
    step "channels-last and torch.compile against diffusers (mnist16, fp32)"
    timeout "$(cap 200)" $PY benchmarks/speed.py --device cuda --ablation --compile --nfe 100 --train-steps 50 --repeats 3 \
        --out "$WORK/ablation" > "$WORK/ablation.log" 2>&1; echo "ablation: exit $?"; tail -n 8 "$WORK/ablation.log"
fi
step done
pack
