"""Block swap: bit-identical outputs, and exactly the configured blocks move, when they should."""

import pytest
import torch

from fourdnex_core.lowvram.block_swap import BlockSwap, blocks_to_swap_for_budget
from fourdnex_core.sampler import Conditioning, SamplingSettings, sample
from fourdnex_core.transformer import FourDNeXTransformer3DModel
from tiny_configs import TINY_TRANSFORMER

LATENT = (1, 16, 2, 4, 8)


def _model(num_layers=3):
    torch.manual_seed(0)
    return FourDNeXTransformer3DModel(**{**TINY_TRANSFORMER, "num_layers": num_layers}).eval()


def _inputs():
    generator = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(1, 36, *LATENT[2:], generator=generator), timestep=torch.tensor([700.0]),
                encoder_hidden_states=torch.randn(1, 512, 32, generator=generator),
                encoder_hidden_states_image=torch.randn(1, 257, 24, generator=generator), return_dict=False)


@torch.no_grad()
def _run(model):
    return model(**_inputs())[0]


def _on_device(swap, index):
    """A swapped block is "on the device" when its tensors are not its CPU copies (the copies are new storage)."""
    block = swap._swapped[index]
    return [t.data_ptr() != h.data_ptr() for t, h in zip(block.tensors, block.host)]


@pytest.mark.parametrize("count", [1, 2, 3])
def test_outputs_are_bit_identical(count):
    model = _model()
    reference = _run(model)
    swap = BlockSwap(model, count, "cpu")
    assert torch.equal(_run(model), reference)
    assert torch.equal(_run(model), reference)  # steady state (prefetched from the previous forward)
    swap.remove()
    assert torch.equal(_run(model), reference)


def test_move_schedule_prefetches_each_swapped_block_once_per_forward():
    model = _model(num_layers=3)
    swap = BlockSwap(model, 2, "cpu", trace=True)
    _run(model)
    assert swap.events == [("load", 0), ("prefetch", 1), ("offload", 0), ("prefetch", 0), ("offload", 1)]
    swap.events.clear()
    _run(model)  # block 0 was prefetched at the end of the last forward
    assert swap.events == [("prefetch", 1), ("offload", 0), ("prefetch", 0), ("offload", 1)]


def test_only_configured_blocks_move_and_at_most_two_are_on_the_device():
    model = _model(num_layers=4)
    swap = BlockSwap(model, 3, "cpu")
    seen = []

    def probe(index):
        def hook(module, args):  # registered after BlockSwap's pre-hook: runs after the load
            running = all(_on_device(swap, index)) if index in swap._swapped else None
            loaded = [i for i in swap._swapped if all(_on_device(swap, i))]
            seen.append((index, running, loaded))
        return hook

    for index, block in enumerate(model.blocks):
        block.register_forward_pre_hook(probe(index))
    _run(model)
    assert [entry[1] for entry in seen] == [True, True, True, None]  # block 3 is resident, never swapped
    assert all(len(loaded) <= 2 for _, _, loaded in seen)
    assert seen[0][2] == [0, 1] and seen[1][2] == [1, 2]
    assert 3 not in swap._swapped
    # Between forwards only the block prefetched for the next forward is off its CPU copy.
    assert [i for i in swap._swapped if any(_on_device(swap, i))] == [0]
    swap.offload_all()
    assert not any(any(_on_device(swap, i)) for i in swap._swapped)


def test_without_prefetch_each_block_loads_in_its_own_hook():
    model = _model()
    swap = BlockSwap(model, 2, "cpu", prefetch=False, trace=True)
    reference = _run(_model())
    assert torch.equal(_run(model), reference)
    assert swap.events == [("load", 0), ("offload", 0), ("load", 1), ("offload", 1)]


def test_sampling_with_block_swap_matches_the_plain_loop():
    conditioning = Conditioning(condition=torch.randn(1, 20, *LATENT[2:]), prompt_embeds=torch.randn(1, 512, 32),
                                negative_prompt_embeds=torch.randn(1, 512, 32), image_embeds=torch.randn(1, 257, 24))
    settings = SamplingSettings(num_inference_steps=4)
    with torch.no_grad():
        plain = sample(_model(), conditioning, settings, progress=False)
        model = _model()
        BlockSwap(model, 2, "cpu")
        swapped = sample(model, conditioning, settings, progress=False)
    assert torch.equal(plain, swapped)


def test_refuses_training_and_bad_counts():
    model = _model()
    BlockSwap(model, 1, "cpu")
    with pytest.raises(RuntimeError, match="torch.no_grad"):
        model(**_inputs())
    with pytest.raises(ValueError, match=r"0\.\.3"):
        BlockSwap(_model(), 4, "cpu")
    with pytest.raises(TypeError, match="blocks"):
        BlockSwap(torch.nn.Linear(2, 2), 1, "cpu")


def test_budget_picks_the_fewest_blocks_that_fit():
    blocks = [10] * 6
    assert blocks_to_swap_for_budget(blocks, other_bytes=5, budget_bytes=65) == 0
    assert blocks_to_swap_for_budget(blocks, other_bytes=5, budget_bytes=64) == 3  # 5 + 30 resident + 20 in flight
    assert blocks_to_swap_for_budget(blocks, other_bytes=5, budget_bytes=64, prefetch=False) == 2
    assert blocks_to_swap_for_budget(blocks, other_bytes=5, budget_bytes=25) == 6
    with pytest.raises(ValueError, match="fp8"):
        blocks_to_swap_for_budget(blocks, other_bytes=5, budget_bytes=24)
