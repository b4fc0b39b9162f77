#!/usr/bin/env bash
# The one script to run on a GPU machine (one H100, bf16): every figure into ONE JSON file.
#
#   bash benchmarks/gpu_session.sh [OUT_DIR]            # default OUT_DIR: runs/gpu_session_<date>_<time>
#   bash benchmarks/gpu_session.sh --dry-run            # the commands it would run; creates nothing
#   bash benchmarks/gpu_session.sh OUT_DIR --only main_job,joint_step   # a second window: those steps again
#
# Steps, in order, each under its own timeout, the session going on past a step that fails
# or times out (its record says so):
#   environment   nvidia-smi, torch/CUDA/Python versions, the packages the steps import
#   cuda_tests    python -m pytest -q -m cuda tests/test_cuda.py (passed/failed counts)
#   clip          benchmarks/clip_vs_open_clip.py: mmssl's CLIP step against open_clip's own
#                 trainer at ViT-B-32, batch 256, bf16 autocast, CUDA
#   clip_compile  the same with torch.compile on both sides (open_clip --torchcompile,
#                 mmssl train.compile=true)
#   main_job      the README's main job on the GPU: pretraining on configs/default.yaml
#                 (train.device=cuda) timed to its end, then its zero-shot evaluation; its
#                 train_summary.json (samples/s, tflops, mfu) and zero-shot figures
#   joint_step    benchmarks/joint_step.py on configs/default.yaml on CUDA: the joint step's
#                 FLOP/s against its objectives alone and the device's bf16 matmul peak
#
# Everything lands in OUT_DIR/gpu_session.json (layout: benchmarks/gpu_session_record.py),
# rewritten after every step, so a session killed at any point keeps what it had; each
# step's output is in OUT_DIR/<step>.log. The whole session stops starting steps once
# GPU_SESSION_BUDGET_S (default 285) seconds have passed, and a step's timeout is cut to
# what is left, so the script ends within the budget (plus up to 10 s for a killed step
# to exit). A step the budget left out is recorded as skipped: rerun it in a later window
# with --only, into the same OUT_DIR.
#
# Settings (environment variables, defaults for one H100):
#   PYTHON (python), GPU_SESSION_DEVICE (cuda), GPU_SESSION_PRECISION (bf16),
#   GPU_SESSION_BUDGET_S (285), GPU_SESSION_CLIP_MODEL (ViT-B-32), GPU_SESSION_CLIP_BATCH (256),
#   GPU_SESSION_CLIP_ROUNDS (2), GPU_SESSION_CLIP_STEPS (20), GPU_SESSION_CLIP_SKIP (5),
#   GPU_SESSION_CLIP_COMPILE_ROUNDS (1), GPU_SESSION_CLIP_THREADS (8),
#   GPU_SESSION_MAIN_CONFIG (configs/default.yaml), GPU_SESSION_MAIN_OVERRIDES (none),
#   GPU_SESSION_JOINT_ARGS (--steps 4 --warmup 1 --rounds 2), and per-step timeouts in
#   seconds: GPU_SESSION_T_ENVIRONMENT (30), _T_CUDA_TESTS (60), _T_CLIP (75),
#   _T_CLIP_COMPILE (110), _T_MAIN_TRAIN (150), _T_MAIN_EVAL (60), _T_JOINT (60).
# What the GPU machine needs installed first: docs/benchmarks.md, "GPU session".
set -uo pipefail

STEPS_ALL="environment cuda_tests clip clip_compile main_job joint_step"

usage() {
    sed -n '2,5p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    echo "steps: ${STEPS_ALL// /, }"
}

DRY_RUN=0
OUT=""
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --only) [ $# -ge 2 ] || { echo "--only needs a list of steps" >&2; exit 2; }; ONLY="$2"; shift ;;
        --only=*) ONLY="${1#--only=}" ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
        *) [ -z "$OUT" ] || { echo "one OUT_DIR, got '$OUT' and '$1'" >&2; exit 2; }; OUT="$1" ;;
    esac
    shift
done
for s in ${ONLY//,/ }; do
    case " $STEPS_ALL " in *" $s "*) ;; *) echo "--only: unknown step '$s' (steps: $STEPS_ALL)" >&2; exit 2 ;; esac
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 2
# this tree's code first, whichever checkout an editable install points at
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

PY="${PYTHON:-python}"
DEVICE="${GPU_SESSION_DEVICE:-cuda}"
PRECISION="${GPU_SESSION_PRECISION:-bf16}"
BUDGET_S="${GPU_SESSION_BUDGET_S:-285}"
CLIP_MODEL="${GPU_SESSION_CLIP_MODEL:-ViT-B-32}"
CLIP_BATCH="${GPU_SESSION_CLIP_BATCH:-256}"
CLIP_ROUNDS="${GPU_SESSION_CLIP_ROUNDS:-2}"
CLIP_STEPS="${GPU_SESSION_CLIP_STEPS:-20}"
CLIP_SKIP="${GPU_SESSION_CLIP_SKIP:-5}"
CLIP_COMPILE_ROUNDS="${GPU_SESSION_CLIP_COMPILE_ROUNDS:-1}"
CLIP_THREADS="${GPU_SESSION_CLIP_THREADS:-8}"
MAIN_CONFIG="${GPU_SESSION_MAIN_CONFIG:-configs/default.yaml}"
read -r -a MAIN_OVERRIDES <<< "${GPU_SESSION_MAIN_OVERRIDES:-}"
read -r -a JOINT_ARGS <<< "${GPU_SESSION_JOINT_ARGS:---steps 4 --warmup 1 --rounds 2}"
T_ENVIRONMENT="${GPU_SESSION_T_ENVIRONMENT:-30}"
T_CUDA_TESTS="${GPU_SESSION_T_CUDA_TESTS:-60}"
T_CLIP="${GPU_SESSION_T_CLIP:-75}"
T_CLIP_COMPILE="${GPU_SESSION_T_CLIP_COMPILE:-110}"
T_MAIN_TRAIN="${GPU_SESSION_T_MAIN_TRAIN:-150}"
T_MAIN_EVAL="${GPU_SESSION_T_MAIN_EVAL:-60}"
T_JOINT="${GPU_SESSION_T_JOINT:-60}"
MIN_STEP_S=15  # a step is not started with less than this left of the budget

OUT="${OUT:-runs/gpu_session_$(date +%Y%m%d_%H%M%S)}"
SESSION="$OUT/gpu_session.json"
RECORD=("$PY" benchmarks/gpu_session_record.py)
START_NS=$(date +%s%N)

wanted() {  # is step $1 among those asked for
    [ -z "$ONLY" ] || [ "$1" = environment ] || case ",$ONLY," in *",$1,"*) true ;; *) false ;; esac
}

elapsed_s() { echo $(( ($(date +%s%N) - START_NS) / 1000000000 )); }

quoted() { local q; printf -v q '%q ' "$@"; echo "${q% }"; }

# run_step NAME TIMEOUT [--json F | --junit F | --run-dir D] -- CMD...: run CMD under
# `timeout` (cut to the budget left), its output to OUT/NAME.log, then record it.
# Returns CMD's exit status (125 when skipped).
run_step() {
    local name="$1" limit="$2"; shift 2
    local extra=()
    while [ "$1" != "--" ]; do extra+=("$1"); shift; done
    shift
    local cmd
    cmd="$(quoted "$@")"
    if [ "$DRY_RUN" = 1 ]; then
        echo "[$name] timeout ${limit}s: $cmd"
        return 0
    fi
    local left=$(( BUDGET_S - $(elapsed_s) ))
    if [ "$left" -lt "$MIN_STEP_S" ]; then
        echo "[$name] skipped: ${left}s of the ${BUDGET_S}s budget left" >&2
        "${RECORD[@]}" skip "$SESSION" "$name" --reason "session budget: ${left}s of ${BUDGET_S}s left" --command "$cmd"
        return 125
    fi
    [ "$limit" -le "$left" ] || limit="$left"
    local log="$OUT/$name.log"
    echo "[$name] timeout ${limit}s: $cmd" >&2
    local t0 rc
    t0=$(date +%s%N)
    timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1
    rc=$?
    local seconds
    seconds=$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
    echo "[$name] rc $rc after ${seconds}s (log: $log)" >&2
    "${RECORD[@]}" step "$SESSION" "$name" --rc "$rc" --seconds "$seconds" --timeout-s "$limit" \
        --command "$cmd" --log "$log" "${extra[@]}" \
        || echo "[$name] could not record the step (rc $?)" >&2
    return "$rc"
}

if [ "$DRY_RUN" = 1 ]; then
    echo "# dry run: OUT_DIR would be $OUT; session file $SESSION; budget ${BUDGET_S}s"
else
    if ! mkdir -p "$OUT"; then echo "cannot create $OUT" >&2; exit 2; fi
    SETTINGS=$(printf '{"device": "%s", "precision": "%s", "clip_model": "%s", "clip_batch": %s, "clip_rounds": %s, "clip_steps": %s, "clip_compile_rounds": %s, "main_config": "%s"}' \
        "$DEVICE" "$PRECISION" "$CLIP_MODEL" "$CLIP_BATCH" "$CLIP_ROUNDS" "$CLIP_STEPS" "$CLIP_COMPILE_ROUNDS" "$MAIN_CONFIG")
    "${RECORD[@]}" start "$SESSION" --out-dir "$OUT" --budget-s "$BUDGET_S" --only "$ONLY" --settings "$SETTINGS" \
        || { echo "cannot write $SESSION" >&2; exit 2; }
    echo "session file: $SESSION (budget ${BUDGET_S}s)" >&2
fi

# 1. the machine
if wanted environment; then
    run_step environment "$T_ENVIRONMENT" --json "$OUT/environment.json" -- \
        "$PY" benchmarks/gpu_session_record.py environment "$OUT/environment.json"
fi

# 2. the GPU tests
if wanted cuda_tests; then
    run_step cuda_tests "$T_CUDA_TESTS" --junit "$OUT/cuda_tests.xml" -- \
        "$PY" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider -rfEs --junitxml="$OUT/cuda_tests.xml"
fi

# 3. the CLIP step against open_clip's trainer, then both sides compiled
CLIP=("$PY" benchmarks/clip_vs_open_clip.py --model "$CLIP_MODEL" --device "$DEVICE" --precision "$PRECISION"
      --batch-size "$CLIP_BATCH" --steps "$CLIP_STEPS" --skip "$CLIP_SKIP" --threads "$CLIP_THREADS")
if wanted clip; then
    run_step clip "$T_CLIP" --json "$OUT/clip.json" -- \
        "${CLIP[@]}" --rounds "$CLIP_ROUNDS" --json "$OUT/clip.json"
fi
if wanted clip_compile; then
    run_step clip_compile "$T_CLIP_COMPILE" --json "$OUT/clip_compile.json" -- \
        "${CLIP[@]}" --rounds "$CLIP_COMPILE_ROUNDS" --compile --json "$OUT/clip_compile.json"
fi

# 4. the main job: pretraining to its end from scratch, then zero-shot evaluation
if wanted main_job; then
    RUN_DIR="$OUT/main_job"
    # a directory left by an earlier window would resume, and the time would not be the whole run's
    [ "$DRY_RUN" = 1 ] || rm -rf "$RUN_DIR"
    run_step main_job_train "$T_MAIN_TRAIN" --run-dir "$RUN_DIR" --config "$MAIN_CONFIG" -- \
        "$PY" tools/pretrain.py "$MAIN_CONFIG" --output-dir "$RUN_DIR" "train.device=$DEVICE" train.progress=false \
        "${MAIN_OVERRIDES[@]}"
    train_rc=$?
    EVAL=("$PY" tools/zero_shot.py --checkpoint "$RUN_DIR" --device "$DEVICE" --no-progress)
    if [ "$DRY_RUN" = 1 ] || [ "$train_rc" = 0 ]; then
        run_step main_job_zero_shot "$T_MAIN_EVAL" --run-dir "$RUN_DIR" -- "${EVAL[@]}"
    else
        "${RECORD[@]}" skip "$SESSION" main_job_zero_shot --reason "pretraining did not finish (rc $train_rc)" \
            --command "$(quoted "${EVAL[@]}")"
    fi
fi

# 5. the joint step's FLOP/s and share of the device's peak (the main job's mfu is in 4.)
if wanted joint_step; then
    run_step joint_step "$T_JOINT" --json "$OUT/joint_step.json" -- \
        "$PY" benchmarks/joint_step.py "$MAIN_CONFIG" --device "$DEVICE" "${JOINT_ARGS[@]}" --json "$OUT/joint_step.json"
fi

if [ "$DRY_RUN" = 1 ]; then
    exit 0
fi
"${RECORD[@]}" finish "$SESSION"
echo "session file: $SESSION ($(elapsed_s)s)" >&2
exit 0
