#!/usr/bin/env bash
# The GPU check: install charlm, run the CUDA tests, measure the GPU figures. At most ~8 minutes on one H200.
#
#   scripts/gpu_check.sh [--dry-run] [OUT_DIR]        (OUT_DIR defaults to $OUT, then ./gpu_check_out)
#
# Writes OUT_DIR/gpu_check.log (everything printed), figures.json, figures.md and
# gpu_config_metrics.jsonl. Needs no network and nothing beside the repository: the corpora ship in
# the package. --dry-run installs nothing and runs the same steps on the CPU with tiny models and a
# few steps, in seconds, to check the script's logic where there is no GPU (tests/test_gpu_check.py).
# PYTHON picks the interpreter (default python3, the one that holds torch on the GPU machine).
set -uo pipefail
cd "$(dirname "$0")/.."

dry=0
out="${OUT:-}"
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry=1 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $arg" >&2; exit 2 ;;
    *) out="$arg" ;;
  esac
done
out="${out:-gpu_check_out}"
py="${PYTHON:-python3}"
mkdir -p "$out" || exit 2
out="$(cd "$out" && pwd)"
exec > >(tee "$out/gpu_check.log") 2>&1
start=$SECONDS
total=${GPU_CHECK_SECONDS:-470}  # the whole check, install and tests included

echo "== gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ), dry run: $dry, python: $py, out: $out"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null \
  || echo "nvidia-smi: not found"

if [ "$dry" = 1 ]; then
  echo "== install: skipped in --dry-run"
else
  echo "== install"
  # No network there: --no-build-isolation builds with the setuptools already installed.
  if ! "$py" -m pip install -q --no-deps --no-build-isolation -e .; then
    echo "pip install failed; running charlm from src/ instead"
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
"$py" -c "import charlm, torch; print('charlm', charlm.__version__, 'at', charlm.__file__, '| torch', torch.__version__, \
'| cuda available:', torch.cuda.is_available())" || exit 1

echo "== CUDA tests"
tests_rc=0
timeout 240 "$py" -m pytest tests/test_cuda.py -m cuda -q -rs -p no:cacheprovider || tests_rc=$?
echo "cuda tests exit code: $tests_rc"

echo "== figures"
budget=$(( total - (SECONDS - start) - 15 ))
[ "$budget" -lt 30 ] && budget=30
if [ "$dry" = 1 ]; then
  "$py" scripts/gpu_check.py --out "$out" --dry-run --budget 120
else
  timeout $(( budget + 60 )) "$py" scripts/gpu_check.py --out "$out" --budget "$budget"
fi
figures_rc=$?
echo "== done in $(( SECONDS - start )) s: tests exit $tests_rc, figures exit $figures_rc"
[ "$tests_rc" = 0 ] && [ "$figures_rc" = 0 ]
