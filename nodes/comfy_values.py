"""The values that flow between the ComfyUI nodes, and the conversions to and from ComfyUI's own.

Nothing here imports ComfyUI, so every conversion is testable on its own. Value types (the ComfyUI
type name in brackets):

* :class:`FourDNeXModel` [FOURDNEX_MODEL]: the patched Wan transformer with the LoRA applied.
* :class:`TextEncoder` [UMT5], :class:`ImageEncoder` [CLIP_VISION_4DNEX]: encoders + their
  tokenizer / processor.
* ComfyUI's own CONDITIONING (``[[embeds [1, T, D], {...}], ...]``) and CLIP_VISION_OUTPUT
  (an object with ``penultimate_hidden_states`` [1, 257, 1280]): :func:`conditioning` and
  :class:`ClipVisionOutput` produce them, :func:`text_embeds` and :func:`image_embeds` read them
  back, whichever node (ours or ComfyUI's core) made them.
* [POINTMAPS] and [CAMERAS] are the library's :class:`~fourdnex_core.geometry.point_maps.PointMaps`
  and :class:`~fourdnex_core.geometry.point_maps.Cameras`.
* :class:`PointClouds` [POINTCLOUDS]: a :class:`~fourdnex_core.scene_file.Scene` plus the
  point filter and budget that turn each frame into a point cloud.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from fourdnex_core.encoders import TEXT_LENGTH
from fourdnex_core.geometry.pointcloud import PointFilter, ScenePointClouds
from fourdnex_core.lowvram import LowVramOptions
from fourdnex_core.scene_file import Scene


@dataclasses.dataclass
class FourDNeXModel:
    """transformer: FourDNeXTransformer3DModel (LoRA applied); dtype: its compute dtype; memory: the
    :class:`~fourdnex_core.lowvram.LowVramOptions` applied to it (placement and step cache per run)."""

    transformer: torch.nn.Module
    dtype: torch.dtype
    lora: str | None = None
    lora_strength: float = 0.0
    memory: LowVramOptions = dataclasses.field(default_factory=LowVramOptions)


@dataclasses.dataclass
class TextEncoder:
    """UMT5 encoder and its tokenizer."""

    model: torch.nn.Module
    tokenizer: Any


@dataclasses.dataclass
class ImageEncoder:
    """CLIP vision encoder and its image processor."""

    model: torch.nn.Module
    processor: Any


@dataclasses.dataclass
class ClipVisionOutput:
    """What ComfyUI's CLIP_VISION_OUTPUT carries that Wan uses: ``penultimate_hidden_states``
    [B, 257, 1280]. Item access works too, as on ComfyUI's own output object."""

    penultimate_hidden_states: torch.Tensor

    def __getitem__(self, key: str) -> torch.Tensor:
        return getattr(self, key)


@dataclasses.dataclass
class PointClouds:
    """A scene and how its frames become point clouds (filter, per-frame budget, downsampling)."""

    scene: Scene
    point_filter: PointFilter = dataclasses.field(default_factory=PointFilter)
    max_points: int | None = None
    method: str = "stride"

    def clouds(self, max_points: int | None = None) -> ScenePointClouds:
        """Per-frame point clouds; ``max_points`` (if given) tightens the stored budget."""
        budget = self.max_points
        if max_points:
            budget = min(budget, max_points) if budget else max_points
        return ScenePointClouds(self.scene, self.point_filter, budget, self.method)


def conditioning(embeds: torch.Tensor) -> list:
    """Embeddings [B, T, D] as ComfyUI CONDITIONING: ``[[embeds, {"pooled_output": None}]]``."""
    return [[embeds, {"pooled_output": None}]]


def text_embeds(cond: list, length: int = TEXT_LENGTH) -> torch.Tensor:
    """The [1, 512, D] text embeddings of a CONDITIONING, from our encoder or ComfyUI's.

    ComfyUI's UMT5 (a ``wan`` CLIPLoader) may return fewer than 512 tokens; Wan pads the context
    with zeros to 512, so the same is done here. Longer contexts are refused.
    """
    if not isinstance(cond, (list, tuple)) or not cond or not isinstance(cond[0], (list, tuple)):
        raise TypeError("Expected a CONDITIONING (a list of [embeddings, options] pairs); connect a text encode node.")
    if len(cond) > 1:
        raise ValueError(f"The conditioning holds {len(cond)} entries (combined or concatenated prompts); "
                         "4DNeX takes one prompt: connect a single text encode node.")
    embeds = cond[0][0]
    if embeds.ndim != 3 or embeds.shape[0] != 1:
        raise ValueError(f"Text embeddings must be [1, T, D], got {tuple(embeds.shape)}.")
    if embeds.shape[1] > length:
        raise ValueError(f"The prompt encodes to {embeds.shape[1]} tokens; Wan reads at most {length}. "
                         "Shorten the prompt.")
    return torch.nn.functional.pad(embeds, (0, 0, 0, length - embeds.shape[1]))


def image_embeds(clip_vision_output: Any) -> torch.Tensor:
    """The [1, 257, D] CLIP penultimate states of a CLIP_VISION_OUTPUT (ours or ComfyUI's)."""
    states = getattr(clip_vision_output, "penultimate_hidden_states", None)
    if states is None:
        raise TypeError("The CLIP vision output has no penultimate_hidden_states; encode the image with "
                        "4DNeX CLIP Vision Encode or ComfyUI's CLIPVisionEncode.")
    if states.ndim != 3:
        raise ValueError(f"CLIP penultimate states must be [B, tokens, D], got {tuple(states.shape)}.")
    return states[:1]
