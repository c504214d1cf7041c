"""LoRA for the 4DNeX transformer: read any format, apply fused or unfused, convert.

Strength: a LoRA at ``strength`` s changes a Linear weight by ``s * alpha / rank * up @ down``, so
**1.0 is the LoRA's own training scale**. The released 4DNeX LoRA (diffusers format, no alpha)
is read with alpha = 0.5 * rank, its training alpha/rank (r 64, alpha 32): strength 1.0 gives
exactly the release's ``fuse_lora(lora_scale=0.5)``. See :mod:`.formats` for every rule.

Typical use::

    lora = read_lora("pytorch_lora_weights.safetensors", transformer)
    fused = fuse_lora(transformer, lora.layers, strength=1.0)   # or attach_lora(...)
    set_domain_embeddings(transformer, load_domain_embeddings("learnable_domain_embeddings.pt"))
    fused.remove()  # unfuse
"""

from fourdnex_core.lora.apply import AttachedLora, FusedLora, attach_lora, bind_lora, eight_bit_targets, fuse_lora
from fourdnex_core.lora.convert import (
    convert_release_lora,
    to_comfyui_state_dict,
    to_fourdnex_state_dict,
    write_fourdnex_lora,
)
from fourdnex_core.lora.domain_embeddings import check_domain_embeddings, load_domain_embeddings, set_domain_embeddings
from fourdnex_core.lora.formats import (
    RELEASE_ALPHA_OVER_RANK,
    LoraFile,
    LoraFormat,
    LoraLayer,
    linear_module_names,
    parse_lora_state_dict,
    read_lora,
)

__all__ = [
    "RELEASE_ALPHA_OVER_RANK",
    "AttachedLora",
    "FusedLora",
    "LoraFile",
    "LoraFormat",
    "LoraLayer",
    "attach_lora",
    "bind_lora",
    "check_domain_embeddings",
    "convert_release_lora",
    "eight_bit_targets",
    "fuse_lora",
    "linear_module_names",
    "load_domain_embeddings",
    "parse_lora_state_dict",
    "read_lora",
    "set_domain_embeddings",
    "to_comfyui_state_dict",
    "to_fourdnex_state_dict",
    "write_fourdnex_lora",
]
