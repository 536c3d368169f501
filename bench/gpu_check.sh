#!/usr/bin/env bash
# Everything that needs a GPU, in one go, for a machine lent for a few minutes. Prints one table per step.
#
#   bash bench/gpu_check.sh            # from the repository root; sets up .venv like `make test` when needed
#
# 1. the GPU tests (CUDA-only tests run, every other GPU path's CPU test runs too)
# 2. bench/train_speed.py: fp32, AMP, AMP + channels_last; nbtrain vs a bare loop (vs fastai when installed)
# 3. a torchrun run with 1 process (the same script trains with RANK/WORLD_SIZE set)
# 4. the cleaner's build at 10,000 images, and the near-duplicate search at 50,000 on the GPU
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || { make .venv/.nbtrain-installed >/dev/null && PY=.venv/bin/python; }
export MPLBACKEND=Agg
out=${OUT:-/tmp}/gpu_check
mkdir -p "$out"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

echo "== 1. GPU tests"
timeout 240 "$PY" -m pytest -q -m "" tests/test_gpu_paths.py tests/test_environment.py tests/test_metrics.py \
  tests/test_distributed.py -k "not spawned" 2>&1 | tail -5

echo "== 2. training speed"
timeout 300 "$PY" bench/train_speed.py --precisions fp32,amp,amp_cl 2>&1 | tail -12

echo "== 3. torchrun, 1 process"
cat > "$out/torchrun_one.py" <<'PYEOF'
import sys, time
from nbtrain import ImageDataLoaders, Resize, vision_learner, error_rate
from nbtrain.samples import make_mnist_sample
path = make_mnist_sample(sys.argv[1], n=2000, noise=0.0, seed=0).path
dls = ImageDataLoaders.from_folder(path, item_tfms=Resize(64), bs=64, seed=0)
learn = vision_learner(dls, "mobilenet_v2", metrics=error_rate)
start = time.time()
learn.fine_tune(1)
print(f"torchrun 1 process: device {learn.device}, error {learn.recorder.values[-1][-1]:.4f}, {time.time() - start:.1f} s")
PYEOF
timeout 180 "$(dirname "$PY")/torchrun" --nproc_per_node=1 "$out/torchrun_one.py" "$out/mnist2k" 2>&1 | tail -4

echo "== 4. cleaner at 10,000 images; near-duplicate search at 50,000"
timeout 240 "$PY" bench/cleaner_scale.py --sizes 10000 2>&1 | tail -3
timeout 120 "$PY" bench/cleaner_scale.py --duplicates 50000 2>&1 | tail -3
