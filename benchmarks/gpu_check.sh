#!/usr/bin/env bash
# The CUDA checks and GPU figures of benchmarks/, in one pass, for a machine with an NVIDIA GPU:
#   bash benchmarks/gpu_check.sh DATA_ROOT OUT_DIR
# DATA_ROOT holds MNIST/raw; OUT_DIR receives the logs and the MLflow store of the check run.
# Each step is independent (a failure is reported, the next step still runs) and time-boxed.
set -u
data=$(realpath "$1"); out=$(realpath "$2"); repo=$(pwd)
export PYTHONUNBUFFERED=1 PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
step() { local name=$1 limit=$2; shift 2; echo "=== $name"; local t0=$SECONDS
  timeout "$limit" "$@" > "$out/$name.log" 2>&1; local rc=$?
  tail -n "${TAIL:-25}" "$out/$name.log"; echo "=== $name: exit $rc in $((SECONDS - t0)) s"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, pyro, mlflow; print("torch", torch.__version__, "pyro", pyro.__version__, "mlflow", mlflow.__version__)'
step contract_cuda 80 python3 -m pytest -q -p no:cacheprovider tests/model/test_contract.py -k cuda
cd "$(mktemp -d)"  # the MLflow store of the check run goes to ./mlruns here
TAIL=12 step train_cuda 100 python3 -m pyrovae train --no-progress --set "data.root=$data" --set train.epochs=5 \
  --set mlflow.run_name=gpu-check --set eval.iwae_every=5
run=$(grep -o 'run [0-9a-f]\{32\}' "$out/train_cuda.log" | head -1 | cut -d' ' -f2)
TAIL=6 step evaluate_cuda 100 python3 -m pyrovae evaluate "$run" --no-progress --iwae-k 5000 --ais \
  --ais-start posterior --ais-steps 100 --ais-subset 100
python3 - "$run" > "$out/epoch_times.log" 2>&1 <<'PY'
import os, sys, mlflow
mlflow.set_tracking_uri(f"sqlite:///{os.getcwd()}/mlruns/mlflow.db")
client = mlflow.MlflowClient()
for key in ("train/seconds", "val/seconds", "log/seconds", "val/iwae_seconds"):
    print(key, [round(m.value, 2) for m in client.get_metric_history(sys.argv[1], key)])
run = client.get_run(sys.argv[1])
print("status", run.info.status, {k: v for k, v in run.data.tags.items() if "device" in k}, {k: v for k, v in run.data.params.items() if "device" in k})
print({k: round(v, 2) for k, v in run.data.metrics.items() if k.startswith(("test/", "val/"))})
PY
cat "$out/epoch_times.log"
cp mlruns/mlflow.db "$out/" 2>/dev/null; cd "$repo"
TAIL=60 step speed_cuda 240 python3 benchmarks/speed.py --device cuda --data-root "$data" --rounds 5 \
  --variant 'eager:train.jit=false' --variant 'meanfield:train.elbo=meanfield' --scaling
TAIL=40 step profile_cuda 60 python3 benchmarks/step_profile.py --device cuda --batch-size 128 --batch-size 1024
