#!/usr/bin/env bash
# Everything that needs a GPU, in one go, for a machine lent for a few minutes. Prints one table per step.
#
#   bash bench/gpu_check.sh            # from the repository root; sets up .venv like `make test` when needed
#
# 1. the GPU tests (CUDA-only tests run, every other GPU path's CPU test runs too)
# 2. bench/train_speed.py: fp32, AMP, AMP + channels_last; nbtrain vs a bare loop (vs fastai when installed)
# 3. a torchrun run with 1 process (the same script trains with RANK/WORLD_SIZE set)
# 4. the cleaner's build at 10,000 images, and the near-duplicate search at 50,000 on the GPU
# 5. the platform as it is: this torch's kernels for this GPU, the precision chosen, /dev/shm and the
#    loader workers it allows, a real pass with workers, and n_gpus=2 where there are two GPUs
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
  tests/test_distributed.py tests/test_kaggle_env.py -k "not spawned and not fresh_environment" 2>&1 | tail -5

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

echo "== 5. the platform: kernels, precision, shared memory, workers, several GPUs"
timeout 240 "$PY" - "$out/mnist2k" <<'PYEOF' 2>&1 | tail -12
import sys, time, torch
from nbtrain import ImageDataLoaders, Resize, vision_learner, error_rate
from nbtrain.environment import (default_device, describe_gpus, gpu_problem, mixed_precision, shared_memory_bytes,
                                 worker_plan)
from nbtrain.samples import make_mnist_sample
print("arch list", torch.cuda.get_arch_list(), "|", describe_gpus())
for i in range(torch.cuda.device_count()):
    print(f"GPU {i}:", gpu_problem(torch.device("cuda", i)) or "this torch has kernels for it")
device = default_device()
x = torch.randn(8, 3, 32, 32, device=device)
print("device", device, "| a real convolution:", torch.nn.Conv2d(3, 8, 3).to(device)(x).shape,
      "| precision, scaler:", mixed_precision(device))
free = shared_memory_bytes()
print("/dev/shm free MB:", None if free is None else free // 2**20,
      "| workers allowed of 8 for 64x3x224x224 batches:", worker_plan(8, 64 * 3 * 224 * 224, prefetch=4))
path = make_mnist_sample(sys.argv[1], n=2000, noise=0.0, seed=0).path
dls = ImageDataLoaders.from_folder(path, item_tfms=Resize(64), bs=64, seed=0, num_workers=4)
start = time.time()
n = sum(len(y) for _, y in dls.train.new(cache=False, drop_last=False))
print(f"a pass with 4 workers: {n} images in {time.time() - start:.1f} s")
if torch.cuda.device_count() >= 2:
    learn = vision_learner(dls, "mobilenet_v2", metrics=error_rate)
    learn.fit(1, n_gpus=2)
    print("n_gpus=2:", learn.recorder.values[-1])
else:
    print("n_gpus=2: skipped, this machine has", torch.cuda.device_count(), "GPU(s)")
PYEOF
