"""Block swap: bit-identical outputs and gradients, and exactly the configured blocks move, when they should."""

import pytest
import torch

from fourdnex_core.lowvram.block_swap import BlockSwap, blocks_to_swap_for_budget
from fourdnex_core.sampler import Conditioning, SamplingSettings, sample
from fourdnex_core.transformer import FourDNeXTransformer3DModel
from tiny_configs import TINY_TRANSFORMER
from fourdnex_train.lora_setup import add_lora

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


class PoisonedOffload(BlockSwap):
    """Block swap whose offloaded weights are NaN: whatever reads a weight after it went back is wrong."""

    def _offload(self, block):
        super()._offload(block)
        for tensor in block.tensors:
            tensor.data = torch.full_like(tensor.data, float("nan"))


def _lora_model(num_layers=3):
    """A frozen tiny transformer with a trainable LoRA (non-zero, so every factor gets a gradient)."""
    model = _model(num_layers)
    trainable = add_lora(model, rank=4, alpha=4.0, target_modules=["to_q", "to_k", "to_v", "to_out.0", "ffn.net.2"])
    with torch.no_grad():
        for parameter in trainable:
            parameter.normal_(0, 0.1, generator=torch.Generator().manual_seed(parameter.numel()))
    model.enable_gradient_checkpointing()
    return model.train(), trainable


def _gradients(model, trainable):
    model(**_inputs())[0].square().mean().backward()
    return [parameter.grad for parameter in trainable]


def test_training_with_checkpointing_gives_the_plain_gradients_and_never_reads_offloaded_weights():
    reference = _gradients(*_lora_model())
    model, trainable = _lora_model()
    swap = PoisonedOffload(model, 2, "cpu", keep_trainable=True, trace=True)
    assert all(p.data_ptr() not in {t.data_ptr() for b in swap._swapped.values() for t in b.tensors} for p in trainable)
    gradients = _gradients(model, trainable)
    assert all(torch.equal(g, r) for g, r in zip(gradients, reference))
    # Forward: load 0, prefetch 1, each offloaded after it ran; no wrap-around prefetch in training. Backward
    # (blocks recomputed 2, 1, 0, stopping before their post-hooks): resident block 2 prefetches 1, block 1
    # prefetches 0, and 1 goes back when 0 starts.
    assert swap.events == [("load", 0), ("prefetch", 1), ("offload", 0), ("offload", 1),
                           ("prefetch", 1), ("prefetch", 0), ("offload", 1)]
    assert [i for i, block in swap._swapped.items() if block.state != "host"] == [0]  # ran last, stays
    # A second step, after the optimizer would have run, is the same again.
    for parameter in trainable:
        parameter.grad = None
    assert all(torch.equal(g, r) for g, r in zip(_gradients(model, trainable), reference))


def test_refuses_what_autograd_cannot_train_and_bad_counts():
    model = _model()
    BlockSwap(model, 1, "cpu")
    with pytest.raises(RuntimeError, match=r"cannot train swapped weights.*requires_grad_\(False\).*keep_trainable"):
        model(**_inputs())
    model, _ = _lora_model()
    model.disable_gradient_checkpointing()
    BlockSwap(model, 1, "cpu", keep_trainable=True)
    with pytest.raises(RuntimeError, match="needs gradient checkpointing.*enable_gradient_checkpointing"):
        model(**_inputs())
    assert _run(model).isfinite().all()  # inference needs neither
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
