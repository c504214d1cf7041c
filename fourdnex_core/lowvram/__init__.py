"""Run the 14B on small GPUs and fast on big ones: memory and speed options for 4DNeX.

Each option is a small module that wraps or re-places a model without changing the library's
stages (the sampler sees the transformer only as a callable):

- :mod:`.block_swap`: transformer blocks in pinned CPU memory, prefetched just in time (exact).
- :mod:`.activation_offload`: training's checkpointed block inputs in CPU memory (exact).
- :mod:`.offload`: text encoder, CLIP vision and VAE on the GPU only for their stage (exact).
- :mod:`.embedding_cache`: prompt embeddings re-used across runs (exact).
- :mod:`.fp8_weights`, :mod:`.fp8_matmul`: fp8 storage, fp8 matmuls (approximate).
- :mod:`.attention`: SDPA / FlashAttention / SageAttention by name (kernel-dependent).
- :mod:`.step_cache`: TeaCache-style step skipping (approximate).
- :mod:`.compile`: torch.compile of the blocks.
- :mod:`.vae_tiling`: tiled VAE for 480 x 1440 frames (approximate near seams).
- :mod:`.options`: :class:`LowVramOptions`, applied in the right order; recommended settings.
"""

from .activation_offload import offloaded_checkpoint
from .attention import available_attention_backends, set_attention_backend
from .block_swap import BlockSwap, auto_blocks_to_swap, blocks_to_swap_for_budget
from .compile import compile_blocks, uncompile_blocks
from .embedding_cache import EmbeddingCache, PromptKey, file_identity
from .fp8_matmul import FP8MatmulLinear, disable_fp8_matmul, enable_fp8_matmul
from .fp8_weights import quantize_block_linears
from .offload import ComponentOffload, OffloadPolicy
from .options import (
    RECOMMENDED,
    LowVramOptions,
    PreparedTransformer,
    apply_fp8_weights,
    apply_model_options,
    place_transformer,
    prepare_transformer,
    prepare_vae,
    recommended_options,
    sampling_transformer,
    transformer_on_device,
)
from .step_cache import StepCache, StepCacheStats
from .vae_tiling import enable_vae_tiling, vae_tiling

__all__ = [
    "RECOMMENDED",
    "BlockSwap",
    "ComponentOffload",
    "EmbeddingCache",
    "FP8MatmulLinear",
    "LowVramOptions",
    "OffloadPolicy",
    "PreparedTransformer",
    "PromptKey",
    "StepCache",
    "StepCacheStats",
    "apply_fp8_weights",
    "apply_model_options",
    "auto_blocks_to_swap",
    "available_attention_backends",
    "blocks_to_swap_for_budget",
    "compile_blocks",
    "disable_fp8_matmul",
    "enable_fp8_matmul",
    "enable_vae_tiling",
    "file_identity",
    "offloaded_checkpoint",
    "place_transformer",
    "prepare_transformer",
    "prepare_vae",
    "quantize_block_linears",
    "recommended_options",
    "sampling_transformer",
    "set_attention_backend",
    "transformer_on_device",
    "uncompile_blocks",
    "vae_tiling",
]
