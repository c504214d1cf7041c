"""Checkpointing with the block inputs in CPU memory: the same gradients as diffusers' checkpointing,
the inputs really leave the device, and it works under block swap and autocast."""

import gc
import weakref

import pytest
import torch

from fourdnex_core.lowvram.activation_offload import offloaded_checkpoint
from test_lowvram_block_swap import PoisonedOffload, _inputs, _lora_model


def _gradients(model, trainable, *, autocast=False):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        output = model(**_inputs())[0]
    output.float().square().mean().backward()
    return [parameter.grad for parameter in trainable]


def _offloaded_model(**kwargs):
    model, trainable = _lora_model(**kwargs)
    model.enable_gradient_checkpointing(gradient_checkpointing_func=offloaded_checkpoint)
    return model, trainable


@pytest.mark.parametrize("autocast", [False, True])
def test_gradients_equal_diffusers_checkpointing(autocast):
    reference = _gradients(*_lora_model(), autocast=autocast)
    gradients = _gradients(*_offloaded_model(), autocast=autocast)
    assert all(torch.equal(g, r) for g, r in zip(gradients, reference))


def test_the_lora_gets_gradients_when_no_activation_requires_grad():
    def lora_only(model):
        model.domain_embeddings.requires_grad_(False)  # then nothing before the blocks requires grad
        return [parameter for name, parameter in model.named_parameters() if "lora_" in name]

    reference_model, model = _lora_model()[0], _offloaded_model()[0]
    reference = _gradients(reference_model, lora_only(reference_model))
    gradients = _gradients(model, lora_only(model))
    assert len(gradients) == len(reference) > 0
    assert all(g is not None and torch.equal(g, r) for g, r in zip(gradients, reference))


def test_block_inputs_leave_the_device_until_the_backward_pass():
    def inputs_alive_after_forward(model):
        refs = []
        handles = [block.register_forward_pre_hook(lambda module, args: refs.append(weakref.ref(args[0])))
                   for block in model.blocks]
        output = model(**_inputs())[0]
        for handle in handles:
            handle.remove()
        gc.collect()
        alive = sum(ref() is not None for ref in refs)
        output.square().mean().backward()  # still works
        return alive, len(refs)

    kept, count = inputs_alive_after_forward(_lora_model()[0])
    assert kept == count  # diffusers' checkpointing keeps every block input for the backward pass
    offloaded, _ = inputs_alive_after_forward(_offloaded_model()[0])
    assert offloaded == 0  # here only their CPU copies are kept


def test_with_block_swap_the_backward_pass_never_reads_weights_that_went_back():
    reference = _gradients(*_lora_model())
    model, trainable = _offloaded_model()
    swap = PoisonedOffload(model, 2, "cpu", keep_trainable=True, trace=True)
    assert all(torch.equal(g, r) for g, r in zip(_gradients(model, trainable), reference))
    # The recomputation runs whole blocks (their post-hooks fire): in the backward pass a block goes back
    # when the next swapped one starts instead.
    assert swap.events == [("load", 0), ("prefetch", 1), ("offload", 0), ("offload", 1),
                           ("prefetch", 1), ("prefetch", 0), ("offload", 1)]


def test_tensors_nested_in_arguments_that_require_grad_are_refused():
    block = torch.nn.Linear(2, 2)
    nested = (torch.ones(2, requires_grad=True),)
    with pytest.raises(ValueError, match="inside a tuple.*torch.utils.checkpoint"):
        offloaded_checkpoint(block, torch.ones(1, 2), nested)
