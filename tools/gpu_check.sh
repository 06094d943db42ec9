#!/usr/bin/env bash
# One-shot check on a fresh CUDA machine whose python3 already has torch with CUDA (nothing is
# installed from the internet). Run from anywhere; it works in the repository root:
#
#   OUT=<folder for the results> bash tools/gpu_check.sh
#
# Steps, each guarded so that a failing step does not stop the others (exit codes in
# $OUT/steps.txt):
#   (a) nvidia-smi
#   (b) build the project's extension with CUDA (python3 -m ops.build --verbose); the official
#       InternImage DCNv3 / Deformable-DETR MSDA / DCNv4 extensions are JIT-built in the
#       background meanwhile (tools/benchmark.py official-ops --build-only)
#   (c) the CUDA tests of the operators and the perspective head
#   (d) tools/benchmark.py official-ops: our kernels vs the official ones -> $OUT/official_ops.json
#   (e) the CUDA-marked model tests (the official-size forward check)
#
# The official op sources are read from third_party/ (INTERNIMAGE_SRC, MSDA_SRC, DCNV4_SRC
# override the folders; DCNV4_SRC= (empty) leaves DCNv4 out). Python wheels in .whl/ (packages the machine lacks, e.g. for the
# tests) are installed offline into a temporary folder first, when present.
# Typical run on one H200: ~4-5 min (the JIT builds dominate); every step has a time limit, so
# the worst case stays under 8 min and partial results come back.
# Environment: OUT (default gpu_check_out), PYTHON (python3), MAX_JOBS (16),
# TORCH_CUDA_ARCH_LIST (9.0), BEVFORMER_OPS_CACHE (a temporary build cache), REPEATS (20).
set -x
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the packages are not installed there
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
PYTHON=${PYTHON:-python3}
REPEATS=${REPEATS:-20}
export MAX_JOBS=${MAX_JOBS:-16}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export BEVFORMER_OPS_CACHE=${BEVFORMER_OPS_CACHE:-${TMPDIR:-/tmp}/bevformer_ops_cache}
INTERNIMAGE_SRC=${INTERNIMAGE_SRC:-third_party/internimage/classification/ops_dcnv3}
MSDA_SRC=${MSDA_SRC:-third_party/deformable_detr/models/ops}
DCNV4_SRC=${DCNV4_SRC-third_party/dcnv4/DCNv4_op}
DCNV4_ARGS=()
[ -n "$DCNV4_SRC" ] && DCNV4_ARGS=(--dcnv4-src "$DCNV4_SRC")
STEPS="$OUT/steps.txt"
SECONDS=0

step() {  # step NAME TIMEOUT_S LOGFILE COMMAND...: run one step, log its output and exit code
    local name=$1 limit=$2 log=$3
    shift 3
    echo "== $name (t=${SECONDS}s)" | tee -a "$STEPS"
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    echo "   $name: exit $rc (t=${SECONDS}s)" | tee -a "$STEPS"
}

if ls .whl/*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "${TMPDIR:-/tmp}/site" .whl/*.whl 2>&1 | tee -a "$STEPS" &&
        export PYTHONPATH="${TMPDIR:-/tmp}/site${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PYTHON" - <<'EOF' 2>&1 | tee -a "$STEPS"
import importlib.util, sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
for name in ("pytest", "filelock", "ninja", "mmengine", "nuscenes", "pyquaternion", "shapely"):
    print(f"  {name}: {'present' if importlib.util.find_spec(name) else 'MISSING'}")
EOF

# (a)
step nvidia-smi 30 "$OUT/nvidia_smi.txt" nvidia-smi

# official extensions: built in the background while (b) and (c) run (the benchmark in (d)
# then finds them up to date in the same cache)
for pair in "--internimage-src $INTERNIMAGE_SRC" "--msda-src $MSDA_SRC" "${DCNV4_ARGS[*]}"; do
    [ -n "$pair" ] || continue
    # shellcheck disable=SC2086
    (timeout 270 "$PYTHON" tools/benchmark.py official-ops $pair --build-only --verbose 2>&1 |
        sed "s|^|[${pair%% *}] |" >>"$OUT/build_official.txt") &
done

# (b)
step "build ours" 150 "$OUT/build_ours.txt" "$PYTHON" -m ops.build --verbose

# (c)
step pytest 120 "$OUT/pytest.txt" "$PYTHON" -m pytest -q tests/ops/test_cuda.py \
    tests/models/perspective/test_perspective_head.py -k cuda -p no:cacheprovider

# (e) the official-size forward check (R50 t2 setting, 640 x 1600, 200 x 200 BEV) and the
# other CUDA-marked model/engine tests
step "cuda model tests" 200 "$OUT/pytest_models.txt" "$PYTHON" -m pytest -q -s \
    tests/models/test_official_forward.py tests/engine/test_sync_bn.py -k "cuda" \
    -p no:cacheprovider

wait  # the official builds
echo "   official builds done (t=${SECONDS}s)" | tee -a "$STEPS"

# (d)
step official-ops 180 "$OUT/official_ops.txt" "$PYTHON" tools/benchmark.py official-ops \
    --internimage-src "$INTERNIMAGE_SRC" --msda-src "$MSDA_SRC" "${DCNV4_ARGS[@]}" \
    --dtypes fp32 fp16 bf16 --repeats "$REPEATS" --out "$OUT/official_ops.json"


echo "== done in ${SECONDS}s" | tee -a "$STEPS"
