"""The VRAM estimator: its byte counter follows real allocations, and on fake tensors it counts what
a real run of the same model allocates (so its 14B numbers are the eager graph's, not guesses)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def estimator():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("estimate_vram", BENCHMARKS / "estimate_vram.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["estimate_vram"] = module
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_live_bytes_counts_new_storages_until_freed_and_never_views(estimator):
    weight = torch.ones(256, 256)  # made before: not counted, nor are its views
    counter = estimator.LiveBytes()
    with counter:
        transposed = weight.t()
        first = torch.ones(1024, 1024)          # 4 MiB
        view = first[:512]                      # shares first's storage
        first.add_(1.0)                         # in place: no new memory
        second = first * 2                      # 4 MiB more
        del first, view
        third = second + weight.sum()           # first is gone (4 MiB freed); 4 MiB more, and a scalar
        del second, third, transposed
    assert counter.peak == 2 * 4 * 2**20 + 4  # two 4 MiB tensors alive at once, plus the 4-byte sum
    assert counter.live == 0


MEDIUM = dict(num_attention_heads=8, attention_head_dim=64, in_channels=36, out_channels=16, text_dim=64, freq_dim=64,
              ffn_dim=1536, num_layers=3, image_dim=64, added_kv_proj_dim=512)


@pytest.mark.parametrize("fp8", [False, True])
def test_fake_runs_count_what_real_runs_allocate(estimator, fp8):
    size = (9, 128, 192)  # 576 tokens
    for simulate in (estimator.simulate_inference, estimator.simulate_training):
        torch.manual_seed(0)
        real = simulate(MEDIUM, fp8, size, fake=False)
        fake = simulate(MEDIUM, fp8, size, fake=True)
        assert fake.weights == real.weights and fake.gradients == real.gradients > -1
        assert fake.activations == pytest.approx(real.activations, rel=1e-3)
        assert real.activations > 1 << 20  # a real workload, not an empty count


def test_swap_rows_fit_the_cap_with_the_fewest_blocks(estimator):
    config = dict(MEDIUM, num_layers=4)
    estimate = estimator.simulate_inference(config, False, (9, 64, 96))
    with torch.device("meta"):
        block = estimator.module_bytes(estimator.fake_model(config, False).blocks[0])
    cap_gib = (estimate.total - block) / 2**30
    swapped = estimator.with_swap_for_cap(estimate, config, fp8=False, cap_gib=cap_gib)
    # Two swapped blocks are on the GPU at a time, so saving one block takes three swapped ones.
    assert swapped.blocks_swapped == 3 and swapped.total == estimate.total - block
    assert estimator.with_swap_for_cap(estimate, config, fp8=False, cap_gib=1.0).blocks_swapped == 0


def test_fake_vae_decodes_count_what_real_ones_allocate_and_tiling_lowers_the_peak(estimator):
    from fourdnex_core.tiny import TINY_VAE_CONFIG

    size = (5, 256, 384)  # a 256 x 768 wide frame: several 256-px tiles across
    peaks = {}
    for tiled in (False, True):
        real = estimator.simulate_vae_decode(TINY_VAE_CONFIG, torch.float32, tiled, size, fake=False)
        fake = estimator.simulate_vae_decode(TINY_VAE_CONFIG, torch.float32, tiled, size, fake=True)
        assert fake.weights == real.weights and fake.activations == pytest.approx(real.activations, rel=1e-3)
        assert real.activations > 5 * 3 * 256 * 768 * 4  # at least the decoded video
        peaks[tiled] = real.activations
    assert peaks[True] < 0.8 * peaks[False]


def test_offloaded_activations_leave_the_block_inputs_out_of_the_peak(estimator):
    config = dict(MEDIUM, num_layers=8)
    size = (9, 128, 192)  # 576 tokens: a block input is 576 x 512 x 2 bytes in bf16
    plain = estimator.simulate_training(config, False, size)
    offloaded = estimator.simulate_training(config, False, size, offload_activations=True)
    block_input = 576 * 512 * 2
    assert plain.activations - offloaded.activations >= (config["num_layers"] - 2) * block_input
    assert (offloaded.weights, offloaded.gradients) == (plain.weights, plain.gradients)
