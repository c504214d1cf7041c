"""Small model configs shared by tests (random weights, seconds to build)."""

TINY_TRANSFORMER = dict(
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=36,
    out_channels=16,
    text_dim=32,
    freq_dim=16,
    ffn_dim=32,
    num_layers=2,
    image_dim=24,
    added_kv_proj_dim=24,
)

TINY_VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, temperal_downsample=[False, True, True])
