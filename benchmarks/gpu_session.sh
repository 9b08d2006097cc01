#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md in one command, on a machine with one NVIDIA GPU:
#
#   bash benchmarks/gpu_session.sh OUT_DIR [PARALLEL_RUNS] [ACCURACY_SECONDS] [SCHEDULES]
#
# 1. the environment (GPU, torch, detectron2) -> OUT_DIR/env.txt
# 2. the overhead benchmark, the GPU to itself: the presets (single head, cascade), and the tiny one's
#    control (the standard head against itself) -> OUT_DIR/overhead_{tiny,tiny-control,tiny-cascade,r50-coco}.txt
# 3. the accuracy matrix (benchmarks/accuracy.py: $DATASETS x $VARIANTS x $SEEDS) at each of the
#    SCHEDULES (default "1": the configs' iterations; "3 4": does the gain grow with training?); by default
#    the no-tuning matrix of issue 28 (the five data sets; detectron2's heads, today's defaults, the automatic
#    K), PARALLEL_RUNS training processes at a time on the one GPU, stopped after
#    ACCURACY_SECONDS. Each run that ends writes its result file into OUT_DIR/results (the layout of
#    benchmarks/results/accuracy: copy them there to add them to the report); OUT_DIR/accuracy.md is
#    the report of those that finished. A later call with the same OUT_DIR skips the recorded runs.
#    PARALLEL_RUNS=0 skips the matrix.
#
# Python is $PYTHON (default python3); torch, detectron2 and the packages of setup.cfg must import.
# DYNAMIC_RCNN_DATASETS must name the folder that holds BCCD/ and the data sets tools/prepare_datasets.py makes
# (kangaroo/, pear640/, cells/). DATASETS, VARIANTS and SEEDS choose the matrix, e.g.
# DATASETS="shapes bccd" VARIANTS="baseline_d2 dynamic_no_gt_ke20" SEEDS="0 1 2 3" for the stock comparison.
set -uo pipefail

OUT=${1:?usage: gpu_session.sh OUT_DIR [PARALLEL_RUNS] [ACCURACY_SECONDS] [SCHEDULES]}
PARALLEL=${2:-10}
ACC_SECONDS=${3:-1800}
SCHEDULES=${4:-"1"}
DATASETS=${DATASETS:-"shapes bccd kangaroo pear640 cells"}
VARIANTS=${VARIANTS:-"baseline_d2 defaults_nms70 auto_nms70 baseline_cascade dynamic_cascade_ki22 auto_cascade"}
SEEDS=${SEEDS:-"0 1 2 3 4 5 6 7"}
PY=${PYTHON:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd)
RUNS=$OUT/runs
RESULTS=$OUT/results
mkdir -p "$RUNS" "$RESULTS"
cd "$ROOT"
export PYTHONWARNINGS=ignore PYTHONUNBUFFERED=1
stamp() { echo "[gpu_session $(date +%T)] $*"; }

stamp "environment"
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PY" -c "import sys, torch, detectron2, numpy; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| detectron2', detectron2.__version__, '| numpy', numpy.__version__); print(torch.cuda.get_device_name())"
    nproc
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
"$PY" -c "import torch, dynamic_rcnn; assert torch.cuda.is_available()" || { stamp "no GPU or no dynamic_rcnn: stopping"; exit 1; }

overhead() {
    local name=$1; shift
    stamp "overhead, $name"
    "$PY" benchmarks/overhead.py "$@" > "$OUT/overhead_$name.txt" 2> "$OUT/overhead_$name.log"
    cat "$OUT/overhead_$name.txt"
}
overhead tiny --preset tiny --steps 200 --warmup 10
overhead tiny-control --preset tiny --steps 200 --warmup 10 --control
overhead tiny-cascade --preset tiny-cascade --steps 200 --warmup 10
overhead r50-coco --preset r50-coco --steps 30 --warmup 5

if [ "$PARALLEL" = 0 ]; then stamp "done (no accuracy matrix)"; exit 0; fi
stamp "accuracy matrix, $PARALLEL runs at a time, for at most $ACC_SECONDS s"
# The shapes images are generated once here, before the runs share the cache.
"$PY" -c "from detectron2.data import DatasetCatalog; import dynamic_rcnn.data; [DatasetCatalog.get(n) for n in ('shapes_train', 'shapes_val', 'bccd_train', 'bccd_valtest')]"
for d in $DATASETS; do case $d in kangaroo|pear640|cells)
    [ -f "${DYNAMIC_RCNN_DATASETS:-datasets}/$d/train.json" ] || { stamp "no $d in \$DYNAMIC_RCNN_DATASETS: make it with tools/prepare_datasets.py"; exit 1; };;
esac; done
jobs_file=$(mktemp)
for schedule in $SCHEDULES; do
    for seed in $SEEDS; do
        for dataset in $DATASETS; do
            for variant in $VARIANTS; do
                echo "$dataset $variant $seed $schedule" >> "$jobs_file"
            done
        done
    done
done
# Each run is its own process; OMP threads are kept at 2 so that the runs share the CPU cores.
OMP_NUM_THREADS=2 setsid xargs -P "$PARALLEL" -L 1 sh -c \
    "\"$PY\" benchmarks/accuracy.py --datasets \$0 --variants \$1 --seeds \$2 --schedule \$3 --results \"$RESULTS\" --runs \"$RUNS\" > /dev/null 2>&1 || echo \"failed: \$0 \$1 \$2 x\$3\"" \
    < "$jobs_file" &
group=$!
start=$SECONDS
while kill -0 "$group" 2>/dev/null; do
    if (( SECONDS - start > ACC_SECONDS )); then
        stamp "time is up: stopping the runs still going"
        kill -TERM -- "-$group" 2>/dev/null
        sleep 3
        kill -KILL -- "-$group" 2>/dev/null
        break
    fi
    sleep 5
done
wait "$group" 2>/dev/null
stamp "accuracy: $(( SECONDS - start )) s"
"$PY" benchmarks/accuracy.py --report --datasets $DATASETS --schedule $SCHEDULES --variants $VARIANTS --seeds $SEEDS --results "$RESULTS" \
    --reference baseline_d2 > "$OUT/accuracy.md"
cat "$OUT/accuracy.md"
stamp "done"
