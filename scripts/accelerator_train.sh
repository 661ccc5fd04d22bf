#!/usr/bin/env bash
# The one prepared training script for a lent accelerator (device tool `run`: JAX, no TensorFlow,
# no network, a 64 MiB working tree). Needs gpu/pack.npz (`python -m training pack --out
# gpu/pack.npz`) and the Keras wheels in .whl/ (training/README.md, "Training on an accelerator");
# carry both. Writes NAME.weights.npz, NAME.history.json and runs.log to $OUT; back here,
# `python -m training finish` turns each into a model artifact.
#
#   accelerator_train.sh shipped      the shipped recipe (SHIPPED_RECIPE) alone on the GPU
#   accelerator_train.sh candidates   three candidates in parallel (shorter schedules), compared
#                                     on validation; how the recipe was found
set -u
MODE=${1:-shipped}
OUT=${OUT:-var/accelerator}
PACK=${PACK:-gpu/pack.npz}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:. KERAS_BACKEND=jax PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 TF_CPP_MIN_LOG_LEVEL=2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)" || exit 1
FULL_FT="--set mixed_precision=bf16 --set freeze_blocks=0 --set epochs=40"
fit() { python3 -m training fit-pack --pack "$PACK" --out "$OUT" --log "$OUT/runs.log" $FULL_FT "$@"; }
case "$MODE" in
  shipped)
    # one process with the GPU and 14 augmentation threads: about 5 s per epoch after a 2-minute
    # compile; the 5.1-minute budget (compile included) ends it after about 35 epochs
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 fit --name shipped --threads 14 --set time_budget_min=5.1 \
      --deadline $(( $(date +%s) + 325 )) ;;
  candidates)
    # three processes share the GPU: none may take the default 75 % of its memory
    export XLA_PYTHON_CLIENT_MEM_FRACTION=0.28
    DEADLINE=$(( $(date +%s) + 470 ))
    COMMON="--threads 5 --set time_budget_min=6.5 --deadline $DEADLINE"
    fit $COMMON --name fb0 &
    fit $COMMON --name fb0_hair --set aug_hair=0.3 &
    fit $COMMON --name fb0_device --set aug_device=1.5 --set aug_color=0.2 &
    wait ;;
  *) echo "usage: $0 shipped|candidates" >&2; exit 2 ;;
esac
grep -h "best\|weight average\|stopping" "$OUT/runs.log" | tail -40
ls -la "$OUT"
