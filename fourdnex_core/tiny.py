"""A complete tiny random-weight 4DNeX model set, written in both real layouts.

Everything a real run loads, at toy size and built from configs in seconds: the Wan2.1 I2V
transformer, the Wan VAE, UMT5 with an offline sentencepiece tokenizer, CLIP vision with its
processor, and a 4DNeX LoRA in the released format (plus domain embeddings). Written as

* ``diffusers/Wan2.1-I2V-14B-480P-Diffusers/`` (a real diffusers ``WanImageToVideoPipeline``
  folder) and ``diffusers/4DNeX/`` (``pytorch_lora_weights.safetensors`` +
  ``learnable_domain_embeddings.pt``, as released);
* ``comfyui/models/`` with the real ComfyUI file names (``diffusion_models/
  wan2.1_i2v_480p_14B_bf16.safetensors``, ``vae/wan_2.1_vae.safetensors``,
  ``text_encoders/umt5_xxl_fp16.safetensors`` with the tokenizer inside, ``clip_vision/
  clip_vision_h.safetensors``, ``loras/4dnex_lora.safetensors``), so a workflow written for the
  real weights runs unchanged on these.

Nothing here is committed: ``fourdnex make-tiny DIR`` writes it when needed.

With ``full_size_encoders`` (``fourdnex make-tiny DIR --full-size-encoders``) the two encoders
in ``comfyui/models/`` are instead full-size random-weight UMT5-XXL (fp16, 11.4 GB, still with
the tiny tokenizer inside) and CLIP ViT-H/14 (fp16, 1.3 GB), the sizes ComfyUI's own
``CLIPLoader`` (type wan) and ``CLIPVisionLoader`` build, and the tiny transformer takes their
4096- and 1280-wide embeddings. They are streamed to disk one tensor at a time (about 2 minutes
and 2.6 GB of memory on 2 CPU cores); the diffusers model folder is not written in that mode.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from pathlib import Path

import torch
import diffusers
from diffusers import AutoencoderKLWan, WanTransformer3DModel, WanVACETransformer3DModel
from transformers import CLIPVisionModel, PreTrainedTokenizerBase, UMT5EncoderModel

from .atomic_write import atomic_path
from .loading.clip_vision_loader import clip_image_processor, clip_vision_h_config
from .loading.safetensors_io import save_tensors
from .loading.text_encoder_loader import umt5_xxl_config
from .loading.tokenizer import build_tiny_tokenizer, spiece_bytes
from .writing.encoders import (
    save_clip_vision_single_file,
    save_text_encoder_single_file,
    tiny_clip_vision_config,
    tiny_text_encoder_config,
    write_random_clip_vision,
    write_random_text_encoder,
)
from .writing.single_files import save_transformer_single_file, save_vae_single_file
from .lora import convert_release_lora
from .model_set import RELEASED_DOMAIN_EMBEDDINGS_FILE, RELEASED_LORA_FILE
from .schedulers import make_scheduler

logger = logging.getLogger(__name__)

TINY_TRANSFORMER_CONFIG = dict(
    num_attention_heads=2, attention_head_dim=12, in_channels=36, out_channels=16, text_dim=32, freq_dim=16,
    ffn_dim=32, num_layers=2, image_dim=24, added_kv_proj_dim=24,
)
# The tiny transformer's embedding inputs when the encoders are full size (UMT5-XXL, ViT-H/14).
FULL_SIZE_ENCODER_DIMS = dict(text_dim=4096, image_dim=1280)
# The smallest Wan2.1 I2V that ComfyUI's own model detection takes for one (it reads the width from
# the weights and fixes heads = width // 128, text width 4096, CLIP width 1280, freq_dim 256): for
# the native-ComfyUI path (UNETLoader). 2 blocks of width 256, 22 MB in fp32.
NATIVE_TRANSFORMER_CONFIG = dict(
    num_attention_heads=2, attention_head_dim=128, in_channels=36, out_channels=16, text_dim=4096, freq_dim=256,
    ffn_dim=512, num_layers=2, image_dim=1280, added_kv_proj_dim=256, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6,
)
# The smallest Wan2.1 VACE (text-to-video + control) that ComfyUI's detection takes as WAN21_Vace: the
# native transformer's width without the image inputs, and 2 VACE blocks (ComfyUI counts them and
# adds block i's hint after main block i, vace_layers = [0, 1]) reading the 96 control channels
# (WanVaceToVideo's 16 inactive + 16 reactive latent channels + 64 mask channels).
NATIVE_VACE_CONFIG = dict(
    num_attention_heads=2, attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096, freq_dim=256,
    ffn_dim=512, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
    vace_layers=[0, 1], vace_in_channels=96,
)
NATIVE_VACE_FILE = "diffusion_models/wan2.1_vace_14B_fp16.safetensors"  # Comfy-Org/Wan_2.1_ComfyUI_repackaged's name
TINY_VAE_CONFIG = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                       temperal_downsample=[False, True, True])
TINY_LORA_RANK = 4
LORA_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
DIFFUSERS_MODEL = "diffusers/Wan2.1-I2V-14B-480P-Diffusers"
DIFFUSERS_LORA = "diffusers/4DNeX"
COMFY_MODELS = "comfyui/models"
COMFY_FILES = {
    "transformer": "diffusion_models/wan2.1_i2v_480p_14B_bf16.safetensors",
    "vae": "vae/wan_2.1_vae.safetensors",
    "text_encoder": "text_encoders/umt5_xxl_fp16.safetensors",
    "clip_vision": "clip_vision/clip_vision_h.safetensors",
    "lora": "loras/4dnex_lora.safetensors",
}


@dataclasses.dataclass
class TinyModelSet:
    """Paths of a written tiny set (see the module docstring)."""

    root: Path

    @property
    def diffusers_model(self) -> Path:
        return self.root / DIFFUSERS_MODEL

    @property
    def diffusers_lora(self) -> Path:
        return self.root / DIFFUSERS_LORA

    @property
    def comfy_models(self) -> Path:
        return self.root / COMFY_MODELS

    @property
    def comfy_lora(self) -> Path:
        return self.comfy_models / COMFY_FILES["lora"]


def _random_release_lora(transformer: WanTransformer3DModel, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A LoRA on the attention projections, keyed as diffusers' ``save_lora_weights`` writes it (no alpha)."""
    tensors = {}
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(LORA_TARGETS):
            down = torch.randn(TINY_LORA_RANK, module.in_features, generator=generator) / module.in_features**0.5
            up = torch.randn(module.out_features, TINY_LORA_RANK, generator=generator) * 0.5
            tensors[f"transformer.{name}.lora_A.weight"] = down
            tensors[f"transformer.{name}.lora_B.weight"] = up
    return tensors


def make_tiny_models(root: str | Path, *, seed: int = 0, full_size_encoders: bool = False,
                     native: bool = False) -> TinyModelSet:
    """Build the tiny random-weight set and write it in both layouts under ``root``.

    With ``full_size_encoders`` the ComfyUI text encoder and CLIP vision files are full-size
    UMT5-XXL and ViT-H/14 (about 13 GB together, see the module docstring) and the diffusers model
    folder is skipped. ``native`` (implies ``full_size_encoders``) also makes every ComfyUI file
    loadable by ComfyUI's own loaders: the transformer is :data:`NATIVE_TRANSFORMER_CONFIG` and the
    VAE the full-size Wan2.1 VAE (random, 0.5 GB in fp32), the sizes ``UNETLoader`` and
    ``VAELoader`` detect; and a small Wan2.1 VACE (:func:`write_native_vace`) for workflow 7.
    """
    tiny = TinyModelSet(Path(root))
    full_size_encoders = full_size_encoders or native
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if native:
        transformer_config = NATIVE_TRANSFORMER_CONFIG
    else:
        transformer_config = {**TINY_TRANSFORMER_CONFIG, **(FULL_SIZE_ENCODER_DIMS if full_size_encoders else {})}
    transformer = WanTransformer3DModel(**transformer_config).eval()
    vae = AutoencoderKLWan(**({} if native else TINY_VAE_CONFIG)).eval()  # diffusers' default is Wan2.1's VAE
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = build_tiny_tokenizer(scratch, seed=seed)
        sentencepiece_model = spiece_bytes(scratch)
    models = tiny.comfy_models
    if full_size_encoders:
        write_random_text_encoder(umt5_xxl_config(), sentencepiece_model, models / COMFY_FILES["text_encoder"], seed=seed)
        write_random_clip_vision(clip_vision_h_config(), models / COMFY_FILES["clip_vision"], seed=seed)
    else:
        _write_tiny_encoders(tiny, tokenizer, sentencepiece_model, transformer, vae)

    save_tensors(tiny.diffusers_lora / RELEASED_LORA_FILE, _random_release_lora(transformer, generator))
    inner_dim = transformer_config["num_attention_heads"] * transformer_config["attention_head_dim"]
    with atomic_path(tiny.diffusers_lora / RELEASED_DOMAIN_EMBEDDINGS_FILE) as temporary:
        torch.save(torch.randn(2, inner_dim, generator=generator) * 0.5, temporary)

    save_transformer_single_file(transformer, models / COMFY_FILES["transformer"], dtype=torch.bfloat16, prefix=True)
    save_vae_single_file(vae, models / COMFY_FILES["vae"])
    if native:
        write_native_vace(models, seed=seed)
    tiny.comfy_lora.parent.mkdir(parents=True, exist_ok=True)
    convert_release_lora(tiny.diffusers_lora / RELEASED_LORA_FILE,
                         tiny.diffusers_lora / RELEASED_DOMAIN_EMBEDDINGS_FILE, tiny.comfy_lora, overwrite=True)
    logger.info("tiny 4DNeX model set written to %s", tiny.root)
    return tiny


def write_native_vace(comfy_models: str | Path, *, seed: int = 0) -> Path:
    """Write :data:`NATIVE_VACE_FILE` under a ComfyUI ``models/`` folder: a random-weight
    :data:`NATIVE_VACE_CONFIG` Wan2.1 VACE in the original key layout (``model.diffusion_model.``
    prefix, ``vace_blocks.{i}.before_proj`` ...), fp16, 10 MB; it pairs with the native set's UMT5-XXL
    and VAE. Returns the file's path."""
    torch.manual_seed(seed)
    vace = WanVACETransformer3DModel(**NATIVE_VACE_CONFIG).eval()
    return save_transformer_single_file(vace, Path(comfy_models) / NATIVE_VACE_FILE, dtype=torch.float16, prefix=True)


def _save_diffusers_pipeline(folder: Path, components: dict) -> None:
    """A ``WanImageToVideoPipeline`` folder as diffusers writes it (a subfolder per component and
    ``model_index.json``), without importing diffusers' pipeline, whose import makes transformers
    warn that torchvision is missing. The processor is listed as ``CLIPImageProcessor``, as in the
    released folder."""
    index = {"_class_name": "WanImageToVideoPipeline", "_diffusers_version": diffusers.__version__}
    for name, component in components.items():
        component.save_pretrained(folder / name)
        class_name = type(component).__name__.removesuffix("Pil")
        index[name] = [type(component).__module__.split(".")[0], class_name]
    with atomic_path(folder / "model_index.json") as temporary:
        temporary.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_tiny_encoders(
    tiny: TinyModelSet, tokenizer: PreTrainedTokenizerBase, sentencepiece_model: bytes,
    transformer: WanTransformer3DModel, vae: AutoencoderKLWan,
) -> None:
    """The tiny UMT5 and CLIP vision: the diffusers model folder and the two ComfyUI encoder files."""
    text_encoder = UMT5EncoderModel(tiny_text_encoder_config(vocab_size=len(tokenizer))).eval()
    image_encoder = CLIPVisionModel(tiny_clip_vision_config()).eval()
    image_processor = clip_image_processor(image_encoder.config.image_size)
    _save_diffusers_pipeline(tiny.diffusers_model, dict(
        tokenizer=tokenizer, text_encoder=text_encoder, image_encoder=image_encoder,
        image_processor=image_processor, transformer=transformer, vae=vae, scheduler=make_scheduler("unipc"),
    ))
    (tiny.diffusers_model / "tokenizer" / "spiece.model").write_bytes(sentencepiece_model)  # as in the real folder
    models = tiny.comfy_models
    save_text_encoder_single_file(text_encoder, sentencepiece_model, models / COMFY_FILES["text_encoder"], dtype=torch.float16)
    save_clip_vision_single_file(image_encoder, models / COMFY_FILES["clip_vision"], dtype=torch.float16)
