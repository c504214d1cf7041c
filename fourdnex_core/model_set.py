"""Load a complete 4DNeX model set (Wan2.1 I2V components + the 4DNeX LoRA) into a pipeline.

Every component can come from a diffusers folder (``Wan2.1-I2V-14B-480P-Diffusers``) or from
the ComfyUI single files users already have (``models/diffusion_models``, ``vae``,
``text_encoders``, ``clip_vision``); :mod:`.loading.locate` finds them, the loaders in
:mod:`.loading` read them offline.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection
from pathlib import Path

import torch

from .loading.clip_vision_loader import load_clip_vision
from .loading.locate import file_or_file_in, locate
from .loading.text_encoder_loader import load_text_encoder, text_encoder_precision
from .loading.transformer_loader import load_transformer
from .loading.vae_loader import load_vae
from .lora import (
    LoraLayer,
    attach_lora,
    eight_bit_targets,
    fuse_lora,
    linear_module_names,
    load_domain_embeddings,
    read_lora,
    set_domain_embeddings,
)
from .lowvram import (
    ComponentOffload,
    EmbeddingCache,
    LowVramOptions,
    OffloadPolicy,
    apply_model_options,
    file_identity,
    prepare_transformer,
    prepare_vae,
)
from .lowvram.attention import check_attention_backend
from .pipeline import FourDNeXPipeline
from .transformer import FourDNeXTransformer3DModel

logger = logging.getLogger(__name__)

RELEASED_LORA_FILE = "pytorch_lora_weights.safetensors"
RELEASED_DOMAIN_EMBEDDINGS_FILE = "learnable_domain_embeddings.pt"


@dataclasses.dataclass
class WanLocations:
    """Where the Wan2.1 I2V weights are (the CLI's ``--models`` ..., the trainer's ``[models]``).

    ``root`` is a diffusers model folder or a ComfyUI ``models/`` folder and serves every
    component; the per-component fields (a file or folder) override it; ``tokenizer`` is a UMT5
    tokenizer folder for text-encoder files that carry none.
    """

    root: Path | None = None
    transformer: Path | None = None
    vae: Path | None = None
    text_encoder: Path | None = None
    clip_vision: Path | None = None
    tokenizer: Path | None = None

    def source(self, component: str):
        """The :class:`~.loading.locate.ModelSource` of ``component``, or a clear error."""
        path = getattr(self, component) or self.root
        if path is None:
            raise FileNotFoundError(
                f"No location for the {component}: pass a models folder (a diffusers "
                f"Wan2.1-I2V-14B-480P-Diffusers folder or ComfyUI's models/) or the {component} file itself."
            )
        return locate(path, component)


@dataclasses.dataclass
class ModelLocations(WanLocations):
    """Where a 4DNeX model set's weights are: the Wan2.1 I2V components and the 4DNeX LoRA.

    ``lora`` is a LoRA file (any supported format) or the released 4DNeX folder holding
    ``pytorch_lora_weights.safetensors`` and ``learnable_domain_embeddings.pt``;
    ``domain_embeddings`` overrides the embeddings.
    """

    lora: Path | None = None
    domain_embeddings: Path | None = None


def resolve_lora(path: Path, domain_embeddings: Path | None) -> tuple[Path, Path | None]:
    """A LoRA file and its domain-embeddings file from a file or the released folder layout.

    The released 4DNeX folder has ``pytorch_lora_weights.safetensors`` and, beside it,
    ``learnable_domain_embeddings.pt``; the latter is picked up automatically when present.
    """
    path = file_or_file_in(path, RELEASED_LORA_FILE, fix="pass the LoRA .safetensors file itself or the released "
                           f"4DNeX folder ({RELEASED_LORA_FILE} + {RELEASED_DOMAIN_EMBEDDINGS_FILE}).")
    if domain_embeddings is None and (path.parent / RELEASED_DOMAIN_EMBEDDINGS_FILE).is_file():
        domain_embeddings = path.parent / RELEASED_DOMAIN_EMBEDDINGS_FILE
    return path, domain_embeddings


def read_4dnex_lora(
    lora: Path,
    domain_embeddings: Path | None = None,
    linear_names: Collection[str] | None = None,
) -> tuple[list[LoraLayer], torch.Tensor | None]:
    """The 4DNeX LoRA's layers and its domain embeddings [2, D] (None, with a warning, when there are none).

    ``lora`` is a LoRA file of any format or the released folder (see :func:`resolve_lora`);
    ``linear_names`` are the target's Linear module paths in diffusers names (see
    :func:`~fourdnex_core.lora.read_lora`), which resolve kohya names and check every layer.
    """
    lora_path, embeddings_path = resolve_lora(lora, domain_embeddings)
    lora_file = read_lora(lora_path, linear_names=linear_names)
    embeddings = load_domain_embeddings(embeddings_path) if embeddings_path else lora_file.domain_embeddings
    if embeddings is None:
        logger.warning(
            "%s carries no domain embeddings and no %s was found beside it: the RGB and XYZ halves stay "
            "unmarked and the XYZ output will be poor. Pass the released learnable_domain_embeddings.pt.",
            lora_path, RELEASED_DOMAIN_EMBEDDINGS_FILE,
        )
    return list(lora_file.layers), embeddings


def apply_4dnex_lora(
    transformer: FourDNeXTransformer3DModel,
    lora: Path,
    *,
    domain_embeddings: Path | None = None,
    strength: float = 1.0,
    fuse: bool = True,
):
    """Apply the 4DNeX LoRA and domain embeddings to ``transformer`` (in place).

    Strength 1.0 is the LoRA's own training scale alpha/rank (for the released LoRA: the
    release's fuse at 0.5). ``fuse`` adds the update to the weights (no cost per step); fp8
    weights (ComfyUI's ``_fp8_scaled`` / ``_fp8_e4m3fn`` files) cannot hold it, so the LoRA is
    attached unfused to those whatever ``fuse`` says. Returns the fused/attached handle
    (``.remove()`` undoes the LoRA).
    """
    layers, embeddings = read_4dnex_lora(lora, domain_embeddings, linear_module_names(transformer))
    if embeddings is not None:
        set_domain_embeddings(transformer, embeddings)
    eight_bit = eight_bit_targets(transformer, layers) if fuse else []
    if eight_bit:
        logger.info("%d LoRA target weights are fp8: attaching the LoRA unfused (fusing would round it away).",
                    len(eight_bit))
    apply = fuse_lora if fuse and not eight_bit else attach_lora
    return apply(transformer, layers, strength)


def load_pipeline(
    locations: ModelLocations,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    lora_strength: float = 1.0,
    fuse_lora_weights: bool = True,
    memory: LowVramOptions | None = None,
    embedding_cache: EmbeddingCache | None = None,
    text_encoder_dtype: torch.dtype | str | None = None,
) -> FourDNeXPipeline:
    """Load every component for ``device`` in ``dtype`` (the VAE stays fp32 on CPU) and apply the LoRA.

    ``text_encoder_dtype`` (default: ``dtype``) may be ``"auto"``, which never widens a 16-bit
    or fp8 text encoder file to fp32 on the CPU (see
    :func:`~fourdnex_core.loading.text_encoder_loader.text_encoder_precision`).

    ``memory`` (:class:`~fourdnex_core.lowvram.LowVramOptions`, default: everything resident) prepares
    the transformer (fp8, attention, block swap, compile; it is loaded to CPU memory first when blocks
    are swapped or weights quantized) and, with ``offload`` "cpu" or "free", hands the VAE, text
    encoder and CLIP vision to a :class:`~fourdnex_core.lowvram.ComponentOffload`: each is loaded
    when first needed and comes to ``device`` for its stage only. The transformer then stays in CPU
    memory too and is placed for each sampling run (see :meth:`FourDNeXPipeline.transformer_stage`):
    on a 24 GB card the fp8 transformer (15.5 GiB) and UMT5-XXL (11 GB) do not fit together.
    ``embedding_cache`` re-uses the text embeddings of prompts seen before. Every file is located
    before anything loads, so a missing file fails at once.
    """
    memory = memory or LowVramOptions()
    device = torch.device(device)
    sources = {name: locations.source(name) for name in ("transformer", "vae", "text_encoder", "clip_vision")}
    text_dtype = text_encoder_precision(dtype if text_encoder_dtype is None else text_encoder_dtype, device,
                                        sources["text_encoder"])
    check_attention_backend(memory.attention, device)  # a missing kernel package fails before anything loads
    resident = memory.offload == OffloadPolicy.KEEP.value
    staging = device if resident and memory.blocks_to_swap == 0 and memory.fp8 == "off" else torch.device("cpu")
    transformer = load_transformer(
        sources["transformer"], model_cls=FourDNeXTransformer3DModel, dtype=dtype, device=staging
    )
    if locations.lora is not None:
        apply_4dnex_lora(transformer, locations.lora, domain_embeddings=locations.domain_embeddings,
                         strength=lora_strength, fuse=fuse_lora_weights)
    else:
        logger.warning("No 4DNeX LoRA given: running the base Wan2.1 model, whose XYZ half will be meaningless.")
    if resident:
        block_swap = prepare_transformer(transformer, memory, device).block_swap
    else:  # placed for each sampling run by the pipeline
        apply_model_options(transformer, memory, device)
        block_swap = None

    pipeline = FourDNeXPipeline(
        transformer=transformer, vae=None, text_encoder=None, tokenizer=None, image_encoder=None,
        image_processor=None, memory=memory, block_swap=block_swap, embedding_cache=embedding_cache,
        text_encoder_identity=None if embedding_cache is None else file_identity(
            *filter(None, (sources["text_encoder"].path, locations.tokenizer)), dtype=text_dtype),
        device=device,
    )
    load_device = device if resident else torch.device("cpu")
    vae_dtype = torch.float32 if device.type == "cpu" else dtype

    def load_vae_component() -> torch.nn.Module:
        vae = load_vae(sources["vae"], dtype=vae_dtype, device=load_device)
        prepare_vae(vae, memory)
        return vae

    def load_text_component() -> torch.nn.Module:
        model, pipeline.tokenizer = load_text_encoder(sources["text_encoder"].path, tokenizer_path=locations.tokenizer,
                                                      dtype=text_dtype, device=load_device)
        return model

    def load_image_component() -> torch.nn.Module:
        model, pipeline.image_processor = load_clip_vision(sources["clip_vision"].path, dtype=dtype,
                                                           device=load_device)
        return model

    loaders = {"vae": load_vae_component, "text_encoder": load_text_component, "image_encoder": load_image_component}
    if resident:
        for name, loader in loaders.items():
            setattr(pipeline, name, loader())
    else:
        pipeline.offload = ComponentOffload(device)
        for name, loader in loaders.items():
            pipeline.offload.add(name, loader=loader, policy=memory.offload)
    return pipeline
