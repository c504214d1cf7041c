"""Component offload: each big encoder lives on the GPU only for the stage that needs it.

A 4DNeX run uses five networks one after the other: UMT5 (text, ~11 GB in bf16), CLIP vision
(~1.2 GB), the VAE (encode), the transformer (sampling), the VAE again (decode). On a 24 GB GPU
they cannot all stay resident. :class:`ComponentOffload` holds each component with a policy
for what happens after its stage:

- ``"keep"``: stays on the compute device (fast re-runs, most memory);
- ``"cpu"``: moves back to CPU memory (re-runs pay one host-to-device copy);
- ``"free"``: is dropped (GPU and CPU memory released) and loaded again by its ``loader`` the next
  time it is needed (re-runs pay a load from disk; pair it with the
  :class:`~fourdnex_core.lowvram.embedding_cache.EmbeddingCache` so a repeated prompt never
  loads the text encoder).

Moving a module between devices does not change its weights, so outputs are bit-identical to
a run with the module resident.

Usage::

    offload = ComponentOffload("cuda")
    offload.add("text_encoder", loader=lambda: load_text_encoder(path, dtype=torch.bfloat16)[0], policy="free")
    offload.add("vae", vae, policy="cpu")
    with offload.use("text_encoder") as text_encoder:
        embeds = encode_prompt(text_encoder, tokenizer, [prompt], device="cuda", dtype=torch.bfloat16)
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import gc
import logging
from collections.abc import Callable, Iterator

import torch
from torch import nn

logger = logging.getLogger(__name__)


class OffloadPolicy(str, enum.Enum):
    """What happens to a component after its stage (see the module docstring)."""

    KEEP = "keep"
    CPU = "cpu"
    FREE = "free"


@dataclasses.dataclass
class _Component:
    name: str
    policy: OffloadPolicy
    module: nn.Module | None
    loader: Callable[[], nn.Module] | None
    loads: int = 0


def release_device_memory(device: torch.device) -> None:
    """Collect garbage and hand cached CUDA blocks back to the driver (no-op off CUDA)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class ComponentOffload:
    """Named components brought onto ``device`` for their stage and offloaded after it.

    Args:
        device: the compute device.
        offload_device: where ``"cpu"``-policy components wait between stages.
    """

    def __init__(self, device: torch.device | str, *, offload_device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.offload_device = torch.device(offload_device)
        self._components: dict[str, _Component] = {}

    def add(
        self,
        name: str,
        module: nn.Module | None = None,
        *,
        loader: Callable[[], nn.Module] | None = None,
        policy: OffloadPolicy | str = OffloadPolicy.CPU,
    ) -> None:
        """Register a component: an already loaded ``module``, a ``loader`` (called when first needed), or both.

        ``"free"`` needs a ``loader`` (the component must be loadable again after being dropped).
        A component added with a module and the ``"cpu"`` or ``"free"`` policy is moved off the device now.
        """
        try:
            policy = OffloadPolicy(policy)
        except ValueError:
            raise ValueError(f"Unknown offload policy {policy!r}; use one of "
                             f"{', '.join(p.value for p in OffloadPolicy)}.") from None
        if module is None and loader is None:
            raise ValueError(f"Component {name!r} needs a module or a loader.")
        if policy is OffloadPolicy.FREE and loader is None:
            raise ValueError(f"Component {name!r} has policy 'free' but no loader: it could not be loaded again. "
                             "Pass loader=... or use policy 'cpu'.")
        component = _Component(name, policy, module, loader)
        self._components[name] = component
        if module is not None:
            self._after_stage(component)

    def _component(self, name: str) -> _Component:
        if name not in self._components:
            raise KeyError(f"No component {name!r}; registered: {', '.join(self._components) or 'none'}.")
        return self._components[name]

    def __contains__(self, name: str) -> bool:
        return name in self._components

    def is_loaded(self, name: str) -> bool:
        """Whether ``name`` is in memory (on any device)."""
        return self._component(name).module is not None

    def loads(self, name: str) -> int:
        """How many times ``name``'s loader has run."""
        return self._component(name).loads

    @contextlib.contextmanager
    def use(self, name: str) -> Iterator[nn.Module]:
        """Load ``name`` if needed, put it on the device, yield it, then apply its policy."""
        component = self._component(name)
        if component.module is None:
            logger.info("Loading %s for this stage.", name)
            component.module = component.loader()
            component.loads += 1
        component.module.to(self.device)
        try:
            yield component.module
        finally:
            self._after_stage(component)

    def _after_stage(self, component: _Component) -> None:
        if component.policy is OffloadPolicy.KEEP:
            return
        if component.policy is OffloadPolicy.CPU:
            component.module.to(self.offload_device)
        else:
            component.module = None
        logger.debug("%s offloaded (%s).", component.name, component.policy.value)
        release_device_memory(self.device)
