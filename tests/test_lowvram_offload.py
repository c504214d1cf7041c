"""Component offload (load for a stage, free after) and the prompt-embedding cache."""

import pytest
import torch
from torch import nn

from fourdnex_core.lowvram.embedding_cache import EmbeddingCache, PromptKey, file_identity
from fourdnex_core.lowvram.offload import ComponentOffload


class RecordingLinear(nn.Linear):
    """A Linear that records the devices it is moved to."""

    def __init__(self):
        torch.manual_seed(0)
        super().__init__(8, 4)
        self.moves = []

    def to(self, *args, **kwargs):
        self.moves.append(str(torch.device(args[0] if args else kwargs["device"])))
        return super().to(*args, **kwargs)


def test_free_policy_loads_for_each_stage_and_gives_identical_outputs():
    state = RecordingLinear().state_dict()
    loads = []

    def loader():
        module = nn.Linear(8, 4)
        module.load_state_dict(state)
        loads.append(module)
        return module

    offload = ComponentOffload("cpu")
    offload.add("text_encoder", loader=loader, policy="free")
    assert not offload.is_loaded("text_encoder") and not loads  # nothing loaded until needed
    x = torch.randn(3, 8)
    with offload.use("text_encoder") as module:
        first = module(x)
    assert not offload.is_loaded("text_encoder")
    with offload.use("text_encoder") as module:
        second = module(x)
    assert offload.loads("text_encoder") == 2 and loads[0] is not loads[1]
    resident = nn.Linear(8, 4)
    resident.load_state_dict(state)
    assert torch.equal(first, resident(x)) and torch.equal(second, first)


def test_cpu_and_keep_policies_move_as_scheduled():
    offload = ComponentOffload("cpu", offload_device="cpu")
    moved, kept = RecordingLinear(), RecordingLinear()
    offload.add("vae", moved, policy="cpu")
    offload.add("clip", kept, policy="keep")
    assert moved.moves == ["cpu"] and kept.moves == []  # "cpu" components leave the device at once
    for _ in range(2):
        with offload.use("vae"), offload.use("clip"):
            pass
    assert moved.moves == ["cpu", "cpu", "cpu", "cpu", "cpu"]  # to the device, back, twice
    assert kept.moves == ["cpu", "cpu"]  # only brought to the device
    assert offload.loads("vae") == 0 and offload.is_loaded("vae")
    assert "vae" in offload and "text_encoder" not in offload


def test_offload_errors_name_the_fix():
    offload = ComponentOffload("cpu")
    with pytest.raises(ValueError, match="loader"):
        offload.add("te", nn.Linear(2, 2), policy="free")
    with pytest.raises(ValueError, match="keep, cpu, free"):
        offload.add("te", nn.Linear(2, 2), policy="gpu")
    with pytest.raises(KeyError, match="te"):
        with offload.use("te"):
            pass


def _key(prompt="a cat", negative="bad", style=True, encoder="umt5:1"):
    return PromptKey(prompt, negative, style, encoder)


def _embeddings(value):
    return torch.full((1, 512, 4), float(value)), torch.full((1, 512, 4), -float(value)), f"prompt {value}"


def test_cache_encodes_each_key_once():
    cache = EmbeddingCache()
    calls = []

    def encode(value):
        def run():
            calls.append(value)
            return _embeddings(value)
        return run

    positive, negative, prompt = cache.get_or_encode(_key(), encode(1))
    again = cache.get_or_encode(_key(), encode(99))
    assert calls == [1] and torch.equal(again[0], positive) and torch.equal(again[1], negative)
    assert again[2] == prompt == "prompt 1" and (cache.hits, cache.misses) == (1, 1)
    for other in (_key(prompt="a dog"), _key(negative=None), _key(style=False), _key(encoder="umt5:2")):
        cache.get_or_encode(other, encode(len(calls) + 1))
    assert len(calls) == 5  # every part of the key matters
    again[0].add_(5)  # callers get copies
    assert torch.equal(cache.get(_key())[0], positive)


def test_cache_evicts_least_recently_used():
    cache = EmbeddingCache(max_entries=2)
    for i in range(3):
        cache.put(_key(prompt=str(i)), _embeddings(i))
    assert cache.get(_key(prompt="0")) is None and len(cache) == 2


def test_cache_persists_on_disk_across_instances(tmp_path):
    EmbeddingCache(directory=tmp_path).put(_key(), _embeddings(3))
    fresh = EmbeddingCache(directory=tmp_path)
    positive, negative, prompt = fresh.get_or_encode(_key(), lambda: pytest.fail("the text encoder must not run"))
    assert torch.equal(positive, _embeddings(3)[0]) and torch.equal(negative, _embeddings(3)[1])
    assert prompt == "prompt 3"
    EmbeddingCache(directory=tmp_path).put(_key(negative=None), (torch.ones(1, 512, 4), None, "p"))
    assert EmbeddingCache(directory=tmp_path).get(_key(negative=None))[1] is None
    assert EmbeddingCache(directory=tmp_path).get(_key(prompt="never seen")) is None


def test_cache_hit_never_loads_a_freed_text_encoder():
    offload = ComponentOffload("cpu")
    offload.add("text_encoder", loader=lambda: nn.Linear(4, 4), policy="free")
    cache = EmbeddingCache()

    def encode():
        with offload.use("text_encoder") as encoder:
            return encoder(torch.ones(1, 512, 4)), None, "p"

    first = cache.get_or_encode(_key(), encode)
    second = cache.get_or_encode(_key(), encode)
    assert offload.loads("text_encoder") == 1 and torch.equal(first[0], second[0])


def test_file_identity_changes_with_the_file(tmp_path):
    weights = tmp_path / "umt5.safetensors"
    weights.write_bytes(b"1234")
    before = file_identity(weights, dtype=torch.bfloat16)
    assert before == file_identity(weights, dtype=torch.bfloat16) != file_identity(weights, dtype=torch.float16)
    weights.write_bytes(b"123456")
    assert file_identity(weights, dtype=torch.bfloat16) != before
    (tmp_path / "spiece.model").write_bytes(b"tokenizer")
    assert file_identity(tmp_path) != file_identity(weights)  # a folder: every file in it counts
    with pytest.raises(FileNotFoundError):
        file_identity(tmp_path / "empty_dir_missing")
