"""ComfyUI's core text and CLIP vision encoders against ours, on the same weight files.

Loads ``umt5_xxl_fp16.safetensors`` with ComfyUI's own API (``comfy.sd.load_clip``, type wan, as
``CLIPLoader`` + ``CLIPTextEncode`` do) and with ``fourdnex_core`` (``load_text_encoder`` +
``encode_prompt``, then the nodes' ``text_embeds`` (``nodes/comfy_values.py``), their padding to
512), and ``clip_vision_h.safetensors`` with ``comfy.clip_vision.load`` + ``encode_image(crop=
"center")`` (``CLIPVisionEncode``) and with ``load_clip_vision`` + ``encode_image``; prints one
table row per comparison. One model is in memory at a time (UMT5-XXL is 11.4 GB in fp16).
A last text check runs both sides in fp32 on a narrow UMT5 (UMT5-XXL's width, depth and heads,
small attention and feed-forward) written to a temporary file, to tell implementation
differences from precision. Results and their reading: BENCHMARKS.md, "ComfyUI core encoders
against ours".

Run with the ComfyUI harness's python (ComfyUI's requirements plus this pack's)::

    /tmp/comfy-harness/venv/bin/python scripts/compare_core_encoders.py \\
        --models /tmp/comfy-harness/ComfyUI/models --comfyui /tmp/comfy-harness/ComfyUI

The files are typically ``fourdnex make-tiny DIR --full-size-encoders``'s (random full-size
weights, the tiny tokenizer inside the UMT5 file).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def comfy_values():
    """The pack's ``nodes/comfy_values.py``, loaded from its file: ``nodes`` is ComfyUI's own module here."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fourdnex_comfy_values", REPO / "nodes" / "comfy_values.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
PROMPTS = {
    "boat + POINTMAP_STYLE.": "a small boat drifting on a calm lake, gentle waves POINTMAP_STYLE.",
    "camera (plain)": "The camera slowly orbits a red ball on a checkered floor.",
}


def _metrics(ours: torch.Tensor, theirs: torch.Tensor) -> dict:
    ours, theirs = ours.double().flatten(), theirs.double().flatten()
    diff = ours - theirs
    return {
        "max_abs_diff": diff.abs().max().item(),
        "rel_l2": (diff.norm() / theirs.norm()).item(),
        "cosine": torch.nn.functional.cosine_similarity(ours, theirs, dim=0).item(),
        "max_abs_ref": theirs.abs().max().item(),
    }


def _row(table: list, what: str, ours: torch.Tensor, theirs: torch.Tensor, **extra) -> None:
    row = {"what": what, "ours_shape": list(ours.shape), "comfy_shape": list(theirs.shape), **_metrics(ours, theirs),
           **extra}
    table.append(row)
    print(json.dumps(row), flush=True)


def _free() -> None:
    gc.collect()


def comfy_text(path: Path, prompts: dict[str, str]) -> dict[str, dict]:
    """ComfyUI's CLIPLoader(type wan) + CLIPTextEncode outputs and token ids per prompt."""
    import comfy.sd

    start = time.perf_counter()
    clip = comfy.sd.load_clip([str(path)], clip_type=comfy.sd.CLIPType.WAN)
    print(f"ComfyUI UMT5 loaded in {time.perf_counter() - start:.1f}s", flush=True)
    results = {}
    for name, prompt in prompts.items():
        tokens = clip.tokenize(prompt)
        start = time.perf_counter()
        cond = clip.encode_from_tokens_scheduled(tokens)
        ids = [int(token) for token, _ in tokens["umt5xxl"][0]]
        results[name] = {"cond": cond, "ids": ids, "seconds": time.perf_counter() - start}
    del clip
    _free()
    return results


def our_text(path: Path, prompts: dict[str, str], dtype: str) -> dict[str, dict]:
    conditioning = comfy_values().conditioning
    from fourdnex_core.encoders import clean_prompt, encode_prompt
    from fourdnex_core.loading.text_encoder_loader import load_text_encoder

    start = time.perf_counter()
    model, tokenizer = load_text_encoder(path, dtype=dtype)
    print(f"our UMT5 ({dtype}) loaded in {time.perf_counter() - start:.1f}s", flush=True)
    results = {}
    for name, prompt in prompts.items():
        start = time.perf_counter()
        embeds = encode_prompt(model, tokenizer, [prompt], device="cpu", dtype=torch.float32)
        ids = tokenizer(clean_prompt(prompt)).input_ids
        results[name] = {"cond": conditioning(embeds), "ids": ids, "seconds": time.perf_counter() - start}
    del model
    _free()
    return results


# A UMT5 with UMT5-XXL's width, depth and heads (so ComfyUI detects it as UMT5-XXL) but narrow
# attention and feed-forward: small enough to compare in fp32 on both sides.
NARROW_UMT5 = {"d_kv": 8, "d_ff": 64, "vocab_size": 512}


def compare_narrow_text(spiece_source: Path, prompts: dict[str, str], table: list) -> None:
    """Both implementations in fp32 on a narrow UMT5 file (fp32 weights): what is left is not precision."""
    import comfy.sd

    values = comfy_values()
    conditioning, text_embeds = values.conditioning, values.text_embeds
    from fourdnex_core.encoders import encode_prompt
    from fourdnex_core.writing.encoders import write_random_text_encoder
    from fourdnex_core.loading.safetensors_io import SafetensorsReader, read_header
    from fourdnex_core.loading.text_encoder_loader import SPIECE_KEY, load_text_encoder, umt5_xxl_config

    with SafetensorsReader() as reader:
        spiece = reader.read(read_header(spiece_source).entries[SPIECE_KEY]).numpy().tobytes()
    config = umt5_xxl_config()
    for key, value in NARROW_UMT5.items():
        setattr(config, key, value)
    with tempfile.TemporaryDirectory() as scratch:
        path = write_random_text_encoder(config, spiece, Path(scratch) / "narrow_umt5.safetensors",
                                         dtype=torch.float32, seed=1)
        clip = comfy.sd.load_clip([str(path)], clip_type=comfy.sd.CLIPType.WAN,
                                  model_options={"umt5xxl_model_config": dict(NARROW_UMT5)})
        theirs = {name: clip.encode_from_tokens_scheduled(clip.tokenize(prompt)) for name, prompt in prompts.items()}
        del clip
        model, tokenizer = load_text_encoder(path, dtype="fp32")
        for name, prompt in prompts.items():
            ours = encode_prompt(model, tokenizer, [prompt], device="cpu", dtype=torch.float32)
            _row(table, f"text '{name}', narrow UMT5, both fp32", text_embeds(conditioning(ours)),
                 text_embeds(theirs[name]))
        del model
    _free()


def load_image(path: Path) -> torch.Tensor:
    """The image as ComfyUI's LoadImage gives it: float [1, H, W, 3] in [0, 1]."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(rgb)[None]


def compare_image(path: Path, image: torch.Tensor, table: list) -> None:
    import comfy.clip_vision

    image_embeds = comfy_values().image_embeds
    from fourdnex_core.encoders import encode_image
    from fourdnex_core.loading.clip_vision_loader import load_clip_vision

    clip_vision = comfy.clip_vision.load(str(path))
    theirs = image_embeds(clip_vision.encode_image(image, crop=True))  # CLIPVisionEncode, crop "center"
    comfy_pixels = comfy.clip_vision.clip_preprocess(image, size=clip_vision.image_size, crop=True).float()
    del clip_vision
    _free()
    for dtype in ("fp32", "fp16"):
        model, processor = load_clip_vision(path, dtype=dtype)
        ours = encode_image(model, processor, image, device="cpu", dtype=torch.float32)
        _row(table, f"image penultimate, ours {dtype}", ours, theirs)
        if dtype == "fp32":
            # What encode_image hands the processor: the picture rounded to 8 bits, channels last.
            eight_bit = list((image * 255).round().to(torch.uint8).numpy())
            our_pixels = processor(images=eight_bit, input_data_format="channels_last",
                                   return_tensors="pt").pixel_values
            _row(table, "image preprocessing: pixel_values", our_pixels, comfy_pixels)
            # Before rounding to 8 bits was added: float pixels (torchvision backend: no clamping).
            float_pixels = processor(images=[image[0].permute(2, 0, 1)], return_tensors="pt",
                                     do_rescale=False).pixel_values
            _row(table, f"image preprocessing: float pixels ({type(processor).__name__})", float_pixels,
                 comfy_pixels)
            with torch.no_grad():
                same_pixels = model(pixel_values=comfy_pixels, output_hidden_states=True).hidden_states[-2]
            _row(table, "image penultimate, ours fp32 on ComfyUI's pixels", same_pixels, theirs)
        del model
        _free()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("/tmp/comfy-harness/ComfyUI/models"),
                        help="ComfyUI models/ folder with text_encoders/umt5_xxl_fp16 and clip_vision/clip_vision_h")
    parser.add_argument("--comfyui", type=Path, default=Path("/tmp/comfy-harness/ComfyUI"), help="ComfyUI tree")
    parser.add_argument("--image", type=Path, default=REPO / "fourdnex_core/assets/example.png")
    parser.add_argument("--text-dtypes", default="fp16,bf16", help="our UMT5 precisions to compare, comma-separated")
    parser.add_argument("--skip-text", action="store_true", help="compare the image encoders only")
    parser.add_argument("--skip-narrow", action="store_true", help="skip the fp32 check on a narrow UMT5")
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args()
    sys.path[:0] = [str(args.comfyui), str(REPO)]
    import comfy.options

    comfy.options.enable_args_parsing()
    sys.argv = [sys.argv[0], "--cpu"]  # ComfyUI reads its own command line when comfy.cli_args is imported
    torch.set_grad_enabled(False)

    text_embeds = comfy_values().text_embeds
    from fourdnex_core.presets import WAN_NEGATIVE_PROMPT

    table: list[dict] = []
    prompts = {**PROMPTS, "Wan negative (zh)": WAN_NEGATIVE_PROMPT}
    text_path = args.models / "text_encoders/umt5_xxl_fp16.safetensors"
    if not args.skip_text:
        theirs = comfy_text(text_path, prompts)
        for dtype in args.text_dtypes.split(","):
            ours = our_text(text_path, prompts, dtype)
            for name in prompts:
                our_ids, comfy_ids = ours[name]["ids"], theirs[name]["ids"]
                comfy_ids = comfy_ids[: comfy_ids.index(1) + 1] if 1 in comfy_ids else comfy_ids
                _row(table, f"text '{name}', ours {dtype}", text_embeds(ours[name]["cond"]),
                     text_embeds(theirs[name]["cond"]), tokens=len(our_ids), same_token_ids=our_ids == comfy_ids,
                     ours_s=round(ours[name]["seconds"], 1), comfy_s=round(theirs[name]["seconds"], 1))
        del theirs
        _free()
    if not args.skip_narrow:
        compare_narrow_text(text_path, prompts, table)
    compare_image(args.models / "clip_vision/clip_vision_h.safetensors", load_image(args.image), table)

    print("\n| comparison | shapes (ours / ComfyUI) | max abs diff | rel. L2 diff | cosine |")
    print("|---|---|---|---|---|")
    for row in table:
        print(f"| {row['what']} | {row['ours_shape']} / {row['comfy_shape']} | {row['max_abs_diff']:.3g} "
              f"(of {row['max_abs_ref']:.3g}) | {row['rel_l2']:.3g} | {row['cosine']:.6f} |")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
