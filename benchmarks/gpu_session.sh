#!/usr/bin/env bash
# Goal 5 of performance round two, in one go on a machine with a CUDA GPU (about 6-8 minutes on
# an H100/H200): the training-throughput table and the decode benchmark, plus the CUDA-only tests.
# Results go to ${OUT:-./gpu-results}/. Needs the project's environment (torch with CUDA, torchvision).
#   bash benchmarks/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-results}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"; } > "$out/machine.txt" 2>&1
timeout 360 python benchmarks/gpu_throughput.py --batch 256 --steps 20 > "$out/gpu_throughput.txt" 2>&1
echo "gpu_throughput rc=$?" >> "$out/machine.txt"
timeout 120 python benchmarks/decode_throughput.py --images 300 --gpu-speeds 5000,10000,20000 > "$out/decode_throughput.txt" 2>&1
echo "decode_throughput rc=$?" >> "$out/machine.txt"
timeout 120 python -m pytest -q tests/test_pipeline_feed.py -k gpu > "$out/cuda_tests.txt" 2>&1
echo "cuda tests rc=$?" >> "$out/machine.txt"
cat "$out"/*.txt
