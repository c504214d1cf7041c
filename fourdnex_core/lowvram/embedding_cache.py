"""Prompt embeddings cached by prompt, so a re-run with the same text never touches UMT5.

UMT5-XXL is the second-largest network of a 4DNeX run (~11 GB in bf16) and its output for one
prompt is small ([1, 512, 4096]: 4 MB in bf16). :class:`EmbeddingCache` keys the embeddings on
everything that determines them — :class:`PromptKey`: the prompt, the negative prompt, whether
the ``POINTMAP_STYLE.`` suffix is appended, and the text encoder's identity (which file, which
dtype) — and keeps them in CPU memory (least recently used first out) and, optionally, in a
folder as safetensors files, so a new process (the CLI) re-uses them too.

Usage (the encode function runs only on a miss)::

    cache = EmbeddingCache(directory=Path("~/.cache/fourdnex/prompts").expanduser())
    key = PromptKey(prompt, negative_prompt, pointmap_style=True,
                    encoder=file_identity(text_encoder_path, dtype=torch.bfloat16))
    positive, negative, used_prompt = cache.get_or_encode(key, lambda: pipe.encode_text(prompt, negative_prompt))
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fourdnex_core.loading.safetensors_io import save_tensors

logger = logging.getLogger(__name__)

TextEmbeddings = tuple[torch.Tensor, torch.Tensor | None, str]
"""(prompt_embeds [1, 512, D], negative_prompt_embeds [1, 512, D] or None, the prompt as encoded)."""

_KEY_METADATA = "fourdnex.prompt_key"
_PROMPT_METADATA = "fourdnex.encoded_prompt"


@dataclasses.dataclass(frozen=True)
class PromptKey:
    """Everything the text embeddings depend on.

    encoder: the text encoder's identity, e.g. :func:`file_identity` of its weight file(s) and
        dtype. Two different encoders must never share an identity.
    """

    prompt: str
    negative_prompt: str | None
    pointmap_style: bool
    encoder: str

    def digest(self) -> str:
        """A stable hex name for this key (the cache file name)."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def file_identity(*paths: str | os.PathLike[str], dtype: torch.dtype | None = None) -> str:
    """Identity of a text encoder loaded from ``paths`` (files or folders) in ``dtype``.

    Each path contributes its resolved location, size and modification time (for a folder, those
    of every file in it), so replacing a file changes the identity.
    """
    parts = []
    for path in paths:
        path = Path(path).resolve()
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        if not files:
            raise FileNotFoundError(f"No text encoder file at {path}.")
        for file in files:
            stat = file.stat()
            parts.append(f"{file}:{stat.st_size}:{stat.st_mtime_ns}")
    if dtype is not None:
        parts.append(str(dtype))
    return "|".join(parts)


class EmbeddingCache:
    """Text embeddings by :class:`PromptKey`, in memory (LRU) and optionally on disk.

    Args:
        max_entries: embeddings kept in memory (least recently used dropped first).
        directory: a folder to also persist them in (created when needed); None keeps memory only.
    """

    def __init__(self, max_entries: int = 16, directory: str | os.PathLike[str] | None = None) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}.")
        self.max_entries = max_entries
        self.directory = Path(directory) if directory is not None else None
        self._memory: collections.OrderedDict[PromptKey, TextEmbeddings] = collections.OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._memory)

    def get(self, key: PromptKey) -> TextEmbeddings | None:
        """Cached embeddings for ``key`` (copies on the CPU), or None."""
        entry = self._memory.get(key)
        if entry is None and self.directory is not None:
            entry = self._read(key)
            if entry is not None:
                self._remember(key, entry)
        if entry is None:
            return None
        self._memory.move_to_end(key)
        positive, negative, prompt = entry
        return positive.clone(), None if negative is None else negative.clone(), prompt

    def put(self, key: PromptKey, embeddings: TextEmbeddings) -> None:
        """Store CPU copies of ``embeddings`` under ``key``."""
        positive, negative, prompt = embeddings
        entry = (positive.detach().to("cpu", copy=True),
                 None if negative is None else negative.detach().to("cpu", copy=True), prompt)
        self._remember(key, entry)
        if self.directory is not None:
            self._write(key, entry)

    def get_or_encode(self, key: PromptKey, encode: Callable[[], TextEmbeddings]) -> TextEmbeddings:
        """The cached embeddings for ``key``, or ``encode()``'s result (then cached)."""
        cached = self.get(key)
        if cached is not None:
            self.hits += 1
            logger.info("Prompt embeddings found in the cache: the text encoder is not needed.")
            return cached
        self.misses += 1
        embeddings = encode()
        self.put(key, embeddings)
        return embeddings

    def _remember(self, key: PromptKey, entry: TextEmbeddings) -> None:
        self._memory[key] = entry
        self._memory.move_to_end(key)
        while len(self._memory) > self.max_entries:
            self._memory.popitem(last=False)

    def _path(self, key: PromptKey) -> Path:
        return self.directory / f"{key.digest()}.safetensors"

    def _write(self, key: PromptKey, entry: TextEmbeddings) -> None:
        positive, negative, prompt = entry
        tensors = {"prompt_embeds": positive.contiguous()}
        if negative is not None:
            tensors["negative_prompt_embeds"] = negative.contiguous()
        metadata = {_KEY_METADATA: json.dumps(dataclasses.asdict(key), sort_keys=True), _PROMPT_METADATA: prompt}
        save_tensors(self._path(key), tensors, metadata)

    def _read(self, key: PromptKey) -> TextEmbeddings | None:
        path = self._path(key)
        if not path.is_file():
            return None
        with safe_open(path, "pt") as handle:
            metadata = handle.metadata() or {}
        if metadata.get(_KEY_METADATA) != json.dumps(dataclasses.asdict(key), sort_keys=True):
            logger.warning("%s holds embeddings for another prompt key; ignoring it.", path)
            return None
        tensors = load_file(path)
        return tensors["prompt_embeds"], tensors.get("negative_prompt_embeds"), metadata[_PROMPT_METADATA]
