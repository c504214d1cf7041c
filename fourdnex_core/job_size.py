"""A generation's size against the memory of the machine that runs it, checked before any model loads.

A job of ``F`` frames at ``H x W`` per modality must hold, at the very least:

- on the compute device, one transformer block's feed-forward over every token at once: input,
  hidden and output, ``tokens * (ffn_dim + 2 * inner_dim)`` elements in the compute dtype, where
  ``tokens = ((F - 1) / 4 + 1) * (H / 16) * (2W / 16)`` (the wide latent, patches of 2 x 2);
- in CPU memory, the result: RGB and XYZ frames in float32, ``F * H * 2W * 3 * 4`` bytes.

Both are lower bounds (the weights, attention and the VAE need more), so a job over either can
never run: :func:`check_job_fits` refuses it at once with the largest frame count that could,
instead of an allocator error after every model has loaded (``--frames 100001`` at 480 x 720
asked the allocator for 829 GB).
"""

from __future__ import annotations

import dataclasses

import psutil  # a dependency of accelerate
import torch

from .representation import TEMPORAL_COMPRESSION

GIB = 1024**3
_PATCH = 16  # VAE x8 then transformer patches of 2 pixels
_FLOAT32 = 4


@dataclasses.dataclass(frozen=True)
class JobMemory:
    """Lower bounds, in bytes, of what a job holds at once: ``device`` on the compute device (the
    feed-forward activations), ``host`` in CPU memory (the float32 result frames)."""

    device: int
    host: int


def job_memory(num_frames: int, height: int, width: int, *, inner_dim: int, ffn_dim: int,
               dtype: torch.dtype) -> JobMemory:
    """The :class:`JobMemory` of ``num_frames`` frames of ``height x width`` per modality."""
    latent_frames = (num_frames - 1) // TEMPORAL_COMPRESSION + 1
    tokens = latent_frames * (height // _PATCH) * (2 * width // _PATCH)
    element = torch.empty((), dtype=dtype).element_size()
    return JobMemory(device=tokens * (ffn_dim + 2 * inner_dim) * element,
                     host=num_frames * height * 2 * width * 3 * _FLOAT32)


def memory_totals(device: torch.device) -> tuple[int | None, int]:
    """(the compute device's memory or None when unknown, CPU memory) in bytes; for the CPU both
    are the machine's RAM."""
    host = psutil.virtual_memory().total
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory, host
    return (host if device.type == "cpu" else None), host


def check_job_fits(num_frames: int, height: int, width: int, *, device: torch.device | str, dtype: torch.dtype,
                   inner_dim: int, ffn_dim: int) -> JobMemory:
    """Raise a ValueError saying what fits when the job cannot fit ``device`` and CPU memory.

    inner_dim, ffn_dim: the transformer's width and feed-forward width (5120 and 13824 for
    Wan2.1 14B; its config's ``num_attention_heads * attention_head_dim`` and ``ffn_dim``).
    Returns the job's :class:`JobMemory`.
    """
    device = torch.device(device)
    device_total, host_total = memory_totals(device)

    def need(frames: int) -> JobMemory:
        return job_memory(frames, height, width, inner_dim=inner_dim, ffn_dim=ffn_dim, dtype=dtype)

    def fits(memory: JobMemory) -> bool:
        return (device_total is None or memory.device <= device_total) and memory.host <= host_total

    memory = need(num_frames)
    if fits(memory):
        return memory
    low, high = 0, (num_frames - 1) // TEMPORAL_COMPRESSION  # frames = 4k + 1
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(need(TEMPORAL_COMPRESSION * middle + 1)) else (low, middle - 1)
    largest = TEMPORAL_COMPRESSION * low + 1
    if device_total is not None and memory.device > device_total:
        what = (f"at least {memory.device / GIB:.1f} GiB on {device} for the transformer's activations alone, "
                f"which has {device_total / GIB:.1f} GiB")
    else:
        what = f"at least {memory.host / GIB:.1f} GiB of CPU memory for the result frames, which has " \
               f"{host_total / GIB:.1f} GiB"
    fix = (f"at this size at most {largest} frames can fit" if fits(need(largest))
           else "not even 1 frame fits at this size")
    raise ValueError(f"{num_frames} frames at {height}x{width} need {what}: {fix}; lower the frame count or the "
                     "size.")
