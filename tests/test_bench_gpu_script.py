"""The GPU benchmark script runs end to end on the CPU (small model), so the first GPU run works.

Checks what its table rests on: every row gives a record, the probe forward of an exact option
(block swap) equals the bf16 row's and fp8's does not, and a training row with swapped fp8 blocks
takes steps.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu_14b.py"
pytestmark = pytest.mark.slow  # each test starts the benchmark script in its own interpreter


def test_the_gpu_benchmark_runs_on_the_cpu_and_measures_output_deviation(tmp_path):
    records = tmp_path / "records.jsonl"
    size = ["--frames", "5", "--height", "32", "--width", "48"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--size", "small", *size, "--steps", "1",
         "--train-frames", "9", "--train-height", "32", "--train-width", "48",
         "--configs", "bf16,bf16-swap-half,fp8,bf16-sage,train-fp8-swap-half,train-full-offload-half",
         "--json", str(records)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {row["config"]: row for row in map(json.loads, records.read_text().splitlines())}
    assert list(rows) == ["bf16", "bf16-swap-half", "fp8", "bf16-sage", "train-fp8-swap-half",
                          "train-full-offload-half"]
    assert "output_rel_l2" not in rows["bf16"] and rows["bf16"]["seconds_per_step"] > 0
    assert rows["bf16-swap-half"]["blocks_swapped"] == 2
    assert rows["bf16-swap-half"]["output_rel_l2"] == 0 and rows["bf16-swap-half"]["output_max_abs"] == 0
    assert rows["fp8"]["fp8_layers"] > 0 and 1e-4 < rows["fp8"]["output_rel_l2"] < 0.1
    assert rows["bf16-sage"]["error"].startswith("skipped: attention 'sage' not available")
    train = rows["train-fp8-swap-half"]
    assert train["blocks_swapped"] == 2 and train["fp8_layers"] > 0 and train["seconds_per_step"] > 0
    offloaded = rows["train-full-offload-half"]  # at the inference job's size, block inputs offloaded
    assert offloaded["train_size"] == [5, 32, 48] and offloaded["seconds_per_step"] > 0
    table = done.stdout
    assert "| bf16-swap-half |" in table and "| 0 / 0 |" in table
    assert "one training step at 9 x 32 x 48" in table and "one training step at 5 x 32 x 48" in table


@pytest.mark.parametrize("argument", [["--configs", "bf17"]])
def test_unknown_configurations_are_named(argument):
    done = subprocess.run([sys.executable, str(SCRIPT), *argument], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Unknown configurations ['bf17']; --list shows them." in done.stderr
