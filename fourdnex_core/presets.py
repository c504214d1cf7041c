"""Named generation settings: ``release`` (exactly the 4DNeX release's call) and ``fast`` (for trying).

The release (3DTopia/4DNeX on diffusers 0.34) calls Wan2.1 I2V 480p with 49 frames, the input's
aspect ratio at the area of 480 x 720 (no crop), 50 UniPC steps on diffusers 0.34's flow sigmas
at shift 3, CFG 5 against the empty negative prompt "", seed 42, " POINTMAP_STYLE." appended to
the prompt and the LoRA at its training scale. Every default of the library, the CLI and the
nodes is the ``release`` preset; tests/test_release_defaults.py holds them to it.
"""

from __future__ import annotations

import dataclasses

from .sampler import SamplingSettings

WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
"""Wan2.1's own default negative prompt (its generate script's); not the release's, which is ""."""

NEGATIVE_PROMPT_NAMES = {"wan": WAN_NEGATIVE_PROMPT}
"""Negative prompts by name (the CLI's ``--negative-prompt wan``)."""


@dataclasses.dataclass(frozen=True)
class Preset:
    """One generation call's settings, named as the CLI's options (``fourdnex generate --help``).

    height x width is the size per modality (the area to keep with resize "area").
    lora_strength 1.0 is the LoRA's training scale (alpha / rank = 0.5, which the release fuses).
    """

    frames: int
    height: int
    width: int
    resize: str
    steps: int
    cfg: float
    shift: float
    sampler: str
    schedule: str
    seed: int
    negative_prompt: str
    pointmap_style: bool
    lora_strength: float

    def sampling_settings(self) -> SamplingSettings:
        return SamplingSettings(num_inference_steps=self.steps, guidance_scale=self.cfg, flow_shift=self.shift,
                                sampler=self.sampler, seed=self.seed, schedule=self.schedule)


RELEASE = Preset(frames=49, height=480, width=720, resize="area", steps=50, cfg=5.0, shift=3.0, sampler="unipc",
                 schedule="release", seed=42, negative_prompt="", pointmap_style=True, lora_strength=1.0)
FAST = dataclasses.replace(RELEASE, frames=9, height=240, width=368, steps=20)
"""The release's call at a small size and fewer steps (the example workflows' size), for trying."""

PRESETS = {"release": RELEASE, "fast": FAST}


def negative_prompt_text(value: str) -> str:
    """A negative prompt as given, or the text of a named one ("wan": Wan2.1's default)."""
    return NEGATIVE_PROMPT_NAMES.get(value.strip().lower(), value)
