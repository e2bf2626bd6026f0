#!/usr/bin/env bash
# The GPU check: throughput of MoCo v2 R-50, MAE ViT-B/16 and MoCo v2 CIFAR on synthetic tensors and fed by our
# pipeline (colour ops on the device / on the CPU), peak memory, the device view ops alone (eager and
# compiled), and a ~2-minute MoCo CIFAR run's kNN.
# Run as is on a machine with one GPU (about 8 minutes; it makes its own synthetic ImageNet-like JPEGs):
#   bash scripts/gpu_check.sh [--output gpu_check.json] [--cifar ../shared/datasets/cifar10]
# `--smoke` runs every row with tiny models on any device (the test suite runs it on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m hf_mixssl.cli.gpu_check "$@"
