"""``python -m benchmarks``: run the benchmarks and write JSON (so far: the layer section)."""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from benchmarks.layer import compare_layers

SIZES = {"small": [16, 32], "medium": [32, 64, 128], "large": [64, 128, 256]}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--size", choices=tuple(SIZES), default="small")
    parser.add_argument("--output", default="benchmarks/RESULTS.json")
    args = parser.parse_args()
    report = {"machine": {"platform": platform.platform(), "torch": torch.__version__,
                          "threads": torch.get_num_threads()},
              "layer": compare_layers(SIZES[args.size]),
              "gpu": "not measured: no GPU lent in this session"}
    Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["layer"], indent=1))


if __name__ == "__main__":
    main()
