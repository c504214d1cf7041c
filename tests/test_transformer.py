"""The 4DNeX transformer against stock diffusers, RoPE sharing and domain embeddings."""

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

from fourdnex_core.transformer import FourDNeXTransformer3DModel, SharedRotaryPosEmbed
from tiny_configs import TINY_TRANSFORMER


def _inputs(batch=1, frames=2, height=4, width=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(batch, 36, frames, height, width, generator=generator),
        timestep=torch.tensor([700.0] * batch),
        encoder_hidden_states=torch.randn(batch, 512, 32, generator=generator),
        encoder_hidden_states_image=torch.randn(batch, 257, 24, generator=generator),
        return_dict=False,
    )


def _pair(shared_rope):
    torch.manual_seed(0)
    stock = WanTransformer3DModel(**TINY_TRANSFORMER).eval()
    ours = FourDNeXTransformer3DModel(shared_rope=shared_rope, **TINY_TRANSFORMER).eval()
    result = ours.load_state_dict(stock.state_dict(), strict=False)
    assert result.missing_keys == ["domain_embeddings"] and not result.unexpected_keys
    return stock, ours


@torch.no_grad()
def test_equals_stock_diffusers_exactly_when_changes_are_off():
    stock, ours = _pair(shared_rope=False)
    assert torch.count_nonzero(ours.domain_embeddings) == 0
    assert torch.equal(stock(**_inputs())[0], ours(**_inputs())[0])


@torch.no_grad()
def test_changes_on_differ_from_stock():
    stock, ours = _pair(shared_rope=True)
    assert not torch.allclose(stock(**_inputs())[0], ours(**_inputs())[0])


def test_shared_rope_gives_both_halves_the_positions_of_one_half():
    head_dim, frames, rows, half_cols = 12, 3, 2, 4
    shared = SharedRotaryPosEmbed(head_dim, (1, 2, 2), 1024)
    stock = WanRotaryPosEmbed(head_dim, (1, 2, 2), 1024)
    latent = torch.zeros(1, 16, frames, rows * 2, half_cols * 2 * 2)  # wide latent
    for wide, single in zip(shared(latent), stock(latent[..., : latent.shape[-1] // 2])):
        grid = wide.reshape(frames, rows, 2 * half_cols, -1)
        single_grid = single.reshape(frames, rows, half_cols, -1)
        for f in range(frames):
            for h in range(rows):
                for w in range(half_cols):
                    assert torch.equal(grid[f, h, w], grid[f, h, w + half_cols])  # XYZ token == RGB token
                    assert torch.equal(grid[f, h, w], single_grid[f, h, w])  # == stock RoPE of (f, h, w)
        # and positions still differ across columns, rows and frames
        assert not torch.equal(grid[0, 0, 0], grid[0, 0, 1])
        assert not torch.equal(grid[0, 0, 0], grid[0, 1, 0])
        assert not torch.equal(grid[0, 0, 0], grid[1, 0, 0])


def test_domain_embeddings_are_added_per_half_after_patch_embedding():
    torch.manual_seed(0)
    model = FourDNeXTransformer3DModel(**TINY_TRANSFORMER).eval()
    latent = torch.randn(1, 36, 2, 4, 8)
    with torch.no_grad():
        plain = torch.nn.functional.conv3d(
            latent, model.patch_embedding.weight, model.patch_embedding.bias, stride=(1, 2, 2)
        )
        model.domain_embeddings.copy_(torch.randn(2, 24))
        patched = model.patch_embedding(latent)
    difference = patched - plain  # [1, 24, 2, 2, 4]; columns 0-1 RGB, 2-3 XYZ
    rgb_columns, xyz_columns = difference[..., :2], difference[..., 2:]
    torch.testing.assert_close(rgb_columns, model.domain_embeddings[0].view(1, 24, 1, 1, 1).expand_as(rgb_columns))
    torch.testing.assert_close(xyz_columns, model.domain_embeddings[1].view(1, 24, 1, 1, 1).expand_as(xyz_columns))


def test_config_and_domain_embeddings_survive_save_and_load(tmp_path):
    model = FourDNeXTransformer3DModel(shared_rope=False, **TINY_TRANSFORMER)
    with torch.no_grad():
        model.domain_embeddings.copy_(torch.randn(2, 24))
    model.save_pretrained(tmp_path)
    loaded = FourDNeXTransformer3DModel.from_pretrained(tmp_path)
    assert loaded.config.shared_rope is False and loaded.config.num_layers == 2
    assert type(loaded.rope) is WanRotaryPosEmbed
    assert torch.equal(loaded.domain_embeddings, model.domain_embeddings)
    assert type(FourDNeXTransformer3DModel(**TINY_TRANSFORMER).rope) is SharedRotaryPosEmbed


def test_an_odd_patch_width_is_a_clear_error():
    model = FourDNeXTransformer3DModel(**TINY_TRANSFORMER).eval()
    inputs = _inputs(width=6)  # 3 patch columns: no RGB | XYZ halves
    with pytest.raises(ValueError, match="multiples of 16"):
        model(**inputs)
