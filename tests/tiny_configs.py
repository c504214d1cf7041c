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
