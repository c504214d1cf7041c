"""The UMT5 tokenizer: from a tokenizer folder, from raw ``spiece.model`` bytes, or tiny for tests.

Wan2.1 tokenizes prompts with the UMT5 SentencePiece model. It reaches us in three forms:

- a diffusers ``tokenizer/`` folder (``tokenizer.json`` and/or ``spiece.model``);
- the bytes of ``spiece.model`` that ComfyUI embeds in its text-encoder files as a uint8 tensor
  named ``spiece_model``;
- for tests, a tiny SentencePiece model trained offline in a fraction of a second.

Converting ``spiece.model`` with transformers' own converter needs the ``protobuf`` package;
this module avoids that dependency: the pieces and scores come from the ``sentencepiece``
runtime and the normalization table (``precompiled_charsmap``) is read from the model proto with
a few lines of wire-format parsing. The result is transformers' public ``T5Tokenizer`` (eos
appended to every sequence, right padding with the pad piece), the tokenizer Wan's pipelines use.
"""

from __future__ import annotations

import io
import logging
import os
import random
from pathlib import Path

import sentencepiece
from tokenizers.models import Unigram
from transformers import AutoTokenizer, PreTrainedTokenizerBase, T5Tokenizer

from fourdnex_core.atomic_write import atomic_path
from fourdnex_core.loading.locate import file_or_file_in

logger = logging.getLogger(__name__)

SPIECE_FILE = "spiece.model"
TOKENIZER_JSON = "tokenizer.json"

# T5's token ids, used by the tiny tokenizer.
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2

# Field numbers in sentencepiece_model.proto: ModelProto.normalizer_spec = 3,
# NormalizerSpec.precompiled_charsmap = 2.
_NORMALIZER_SPEC_FIELD = 3
_PRECOMPILED_CHARSMAP_FIELD = 2
_WIRE_VARINT, _WIRE_FIXED64, _WIRE_BYTES, _WIRE_FIXED32 = 0, 1, 2, 5


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint in the SentencePiece model proto")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _length_delimited_fields(data: bytes, field_number: int) -> list[bytes]:
    """Payloads of every length-delimited field ``field_number`` of one protobuf message."""
    found, pos = [], 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == _WIRE_VARINT:
            _, pos = _read_varint(data, pos)
        elif wire == _WIRE_FIXED64:
            pos += 8
        elif wire == _WIRE_FIXED32:
            pos += 4
        elif wire == _WIRE_BYTES:
            length, pos = _read_varint(data, pos)
            if number == field_number:
                found.append(data[pos:pos + length])
            pos += length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} in the SentencePiece model proto")
    return found


def precompiled_charsmap(spiece_model: bytes) -> bytes | None:
    """The normalizer's precompiled character map stored in a ``spiece.model`` proto, if any."""
    for spec in _length_delimited_fields(spiece_model, _NORMALIZER_SPEC_FIELD):
        maps = _length_delimited_fields(spec, _PRECOMPILED_CHARSMAP_FIELD)
        if maps and maps[-1]:
            return bytes(maps[-1])
    return None


def tokenizer_from_spiece_bytes(spiece_model: bytes) -> T5Tokenizer:
    """A transformers ``T5Tokenizer`` equivalent to the SentencePiece model ``spiece_model``.

    Args:
        spiece_model: the bytes of a ``spiece.model`` file (a serialized SentencePiece
            ``ModelProto``), e.g. ComfyUI's ``spiece_model`` tensor as bytes.

    Returns:
        A tokenizer whose ``input_ids`` equal ``SentencePieceProcessor.encode(text) + [eos]``, with
        the model's own pad, eos and unk pieces and ids.
    """
    try:
        processor = sentencepiece.SentencePieceProcessor(model_proto=bytes(spiece_model))
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"the tokenizer data is not a valid SentencePiece model ({error}); pass the bytes of a "
            "spiece.model file, or the tokenizer/ folder of Wan2.1-I2V-14B-480P-Diffusers"
        ) from error
    if processor.pad_id() < 0 or processor.eos_id() < 0:
        raise ValueError(
            "the SentencePiece model has no pad or eos piece, which T5 tokenization needs; use the UMT5 "
            "spiece.model shipped with Wan2.1 (tokenizer/ folder of Wan2.1-I2V-14B-480P-Diffusers)"
        )
    size = processor.get_piece_size()
    vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(size)]
    tokenizer = T5Tokenizer(
        vocab=vocab,
        eos_token=processor.id_to_piece(processor.eos_id()),
        unk_token=processor.id_to_piece(processor.unk_id()),
        pad_token=processor.id_to_piece(processor.pad_id()),
        _spm_precompiled_charsmap=precompiled_charsmap(bytes(spiece_model)),
        extra_ids=0,
    )
    byte_fallback = any(processor.is_byte(i) for i in range(size))
    tokenizer.backend_tokenizer.model = Unigram(vocab, unk_id=processor.unk_id(), byte_fallback=byte_fallback)
    return tokenizer


def load_tokenizer(folder: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The tokenizer saved in ``folder`` (a diffusers ``tokenizer/`` folder), offline.

    ``tokenizer.json`` is preferred; a folder with only ``spiece.model`` is converted with
    :func:`tokenizer_from_spiece_bytes`.
    """
    folder = Path(folder)
    if (folder / TOKENIZER_JSON).is_file():
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if (folder / SPIECE_FILE).is_file():
        return tokenizer_from_spiece_bytes((folder / SPIECE_FILE).read_bytes())
    raise FileNotFoundError(
        f"no tokenizer in {folder}: expected {TOKENIZER_JSON} or {SPIECE_FILE}; point to the tokenizer/ "
        "folder of Wan2.1-I2V-14B-480P-Diffusers"
    )


def spiece_bytes(source: bytes | str | os.PathLike | PreTrainedTokenizerBase) -> bytes:
    """The ``spiece.model`` bytes behind ``source``.

    Args:
        source: the bytes themselves, a ``spiece.model`` file, a tokenizer folder holding one, or a
            tokenizer loaded from such a folder (its ``vocab_file``).
    """
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    if isinstance(source, PreTrainedTokenizerBase):
        vocab_file = getattr(source, "vocab_file", None)
        if not vocab_file or not Path(vocab_file).is_file():
            raise ValueError(
                "this tokenizer does not know its spiece.model file; pass the spiece.model bytes or the "
                "tokenizer folder that holds spiece.model instead"
            )
        return Path(vocab_file).read_bytes()
    path = file_or_file_in(source, SPIECE_FILE, fix="pass a spiece.model file or a tokenizer folder that holds one")
    return path.read_bytes()


def tiny_corpus(num_lines: int, seed: int) -> list[str]:
    """Pseudo-English sentences from random syllables (2000 lines give enough pieces for 1024 tokens)."""
    rng = random.Random(seed)
    onsets = "b c d f g h k l m n p r s t v w z st tr br pl ch sh th".split()
    nuclei = "a e i o u ai ou ee".split()
    words = [
        "".join(rng.choice(onsets) + rng.choice(nuclei) for _ in range(rng.randint(1, 3)))
        for _ in range(3000)
    ]
    words += "the a camera scene point map style moves slowly over POINTMAP_STYLE".split()
    return [
        " ".join(rng.choice(words) for _ in range(rng.randint(4, 14))) + rng.choice(".,!?")
        for _ in range(num_lines)
    ]


def build_tiny_tokenizer(
    directory: str | os.PathLike, *, vocab_size: int = 512, seed: int = 0
) -> PreTrainedTokenizerBase:
    """Train a tiny T5-style SentencePiece unigram model offline and save it as a tokenizer folder.

    The folder holds ``spiece.model``, ``tokenizer.json`` and ``tokenizer_config.json``, so
    ``AutoTokenizer.from_pretrained(directory)`` and :func:`load_tokenizer` both load it offline.
    Special ids follow T5: pad 0, eos 1, unk 2, no bos.

    Args:
        directory: output folder (created if missing).
        vocab_size: number of pieces, 64 to 1024 (trains in well under a second).
        seed: seed of the generated training text.

    Returns:
        The tokenizer loaded back from ``directory``; ``len(tokenizer) == vocab_size``.
    """
    if not 64 <= vocab_size <= 1024:
        raise ValueError(
            f"vocab_size={vocab_size} is outside 64..1024, the sizes the tiny training text supports; pick one inside"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(tiny_corpus(2000, seed)),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        bos_id=-1,
        character_coverage=1.0,
        minloglevel=2,
    )
    with atomic_path(directory / SPIECE_FILE) as temporary:
        temporary.write_bytes(model.getvalue())
    tokenizer_from_spiece_bytes(model.getvalue()).save_pretrained(directory)
    logger.debug("tiny tokenizer with %d pieces written to %s", vocab_size, directory)
    return load_tokenizer(directory)
