"""ComfyUI's native Wan2.1 I2V model with the 4DNeX patch against the pack's own transformer.

Runs inside a ComfyUI install (no server): builds a small random Wan2.1 I2V transformer whose
shapes ComfyUI's model detection accepts (width 256 = 2 heads of 128, text width 4096, CLIP width
1280), a non-zero random 4DNeX LoRA in the release's format with domain embeddings, and a
full-size random Wan2.1 VAE (ComfyUI builds that VAE at a fixed size); writes them in the real
formats (ComfyUI single files, the released LoRA layout) and compares, in fp32:

1. **forward**: ComfyUI's ``load_diffusion_model`` (what ``UNETLoader`` calls) + the pack's
   **4DNeX Apply to Wan Model** node against ``FourDNeXTransformer3DModel`` loaded by the pack;
2. **condition**: **4DNeX Wan Image to Video** (ComfyUI's VAE) against the library's
   ``encode_condition`` (diffusers' VAE on the same file): latent and mask;
3. **sampling**: a complete Euler run with CFG from the same noise, ComfyUI's ``SamplerCustom``
   path (``comfy.sample.sample_custom``, ComfyUI's ``euler`` on the sigmas of **4DNeX Release
   Schedule**) against the pack's ``sample``; final latents compared in Wan's normalized space;
4. **composition**: a second LoRA through ``LoraLoaderModelOnly``'s code (before and after the
   4DNeX node), ``ModelSamplingSD3`` and a ``patches_replace`` block patch on the same MODEL;
5. **fp8**: the forward again with ``UNETLoader``'s weight_dtype ``fp8_e4m3fn`` (deviation);
6. **GGUF**: the small model written as a GGUF file (Q8_0 block weights, as ComfyUI-GGUF's
   converter lays it out) and loaded by city96/ComfyUI-GGUF's ``UnetLoaderGGUF`` when that pack is
   in ``custom_nodes/ComfyUI-GGUF`` (``gguf`` installed), the same forward (deviation);
7. **UniPC**: the pack's UniPC (the release's sampler) against **4DNeX Release Schedule**'s SAMPLER
   (unipc) in ``SamplerCustom``, and against ComfyUI's own ``uni_pc_bh2`` on the same sigmas (another
   UniPC: a deviation, reported);
8. **speed**: seconds per forward of both paths at the same token count;
9. **bad input**: a text-to-video Wan MODEL, a LoRA for another model, a width that is not a multiple
   of 16 and a length that is not 4k+1, each refused by the nodes with its message (printed).

Run with the ComfyUI harness's python from the ComfyUI folder::

    cd /tmp/comfy-harness/ComfyUI && ../venv/bin/python /path/to/pack/scripts/native_equivalence.py \
        [--attention pytorch] [--out results.json]

Conventions bridged (see BENCHMARKS.md, "Native ComfyUI path"): the text context is given as the
512 zero-padded tokens Wan expects; ComfyUI starts sampling from ``sigma_0 * noise + (1 - sigma_0)
* latent_image`` where diffusers starts from ``noise``, so the script passes ``noise / sigma_0`` and
the latent whose normalized value is 0; ComfyUI returns latents in the VAE's space (before Wan's
normalization), the pack in the normalized space.
"""

from __future__ import annotations

import argparse
import os
import statistics
import importlib
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RANK = 8


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attention", choices=("default", "pytorch"), default="default",
                        help="ComfyUI's attention on the CPU: its default (sub-quadratic) or PyTorch's")
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--speed-size", default="9x240x368", help="frames x height x width for the timing")
    parser.add_argument("--speed-repeats", type=int, default=7)
    parser.add_argument("--speed-only", action="store_true", help="only the timing (8.)")
    parser.add_argument("--out", type=Path, help="write the table as JSON here")
    args, _ = parser.parse_known_args()
    return args


ARGS = _args()
sys.argv = [sys.argv[0], "--cpu"] + (["--use-pytorch-cross-attention"] if ARGS.attention == "pytorch" else [])
sys.path.insert(0, str(REPO))
sys.path.insert(0, ".")  # the ComfyUI folder

import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()

import comfy.clip_vision  # noqa: E402, I001
import comfy.model_management  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.utils  # noqa: E402
import folder_paths  # noqa: E402
import torch  # noqa: E402
from diffusers import AutoencoderKLWan, WanTransformer3DModel  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from fourdnex_core.conditioning import encode_condition  # noqa: E402
from fourdnex_core.writing.single_files import save_transformer_single_file, save_vae_single_file  # noqa: E402
from fourdnex_core.loading.transformer_loader import load_transformer  # noqa: E402
from fourdnex_core.loading.vae_loader import load_vae  # noqa: E402
from fourdnex_core.model_set import apply_4dnex_lora  # noqa: E402
from fourdnex_core.representation import condition_mask, xyz_init_map  # noqa: E402
from fourdnex_core.sampler import Conditioning, SamplingSettings, sample  # noqa: E402
from fourdnex_core.tiny import NATIVE_TRANSFORMER_CONFIG  # noqa: E402
from fourdnex_core.transformer import FourDNeXTransformer3DModel  # noqa: E402
from fourdnex_core.vae_io import wan_latent_stats  # noqa: E402

# the pack as ComfyUI loads it (a package named after its folder), so nodes/ imports relatively
_spec = importlib.util.spec_from_file_location("fourdnex_pack", REPO / "__init__.py", submodule_search_locations=[str(REPO)])
sys.modules["fourdnex_pack"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sys.modules["fourdnex_pack"])
pack = importlib.import_module("fourdnex_pack.nodes.native")

TABLE: list[dict] = []


def row(what: str, ours: torch.Tensor, theirs: torch.Tensor, **extra) -> dict:
    """Deviation of the native result ``theirs`` from the pack's ``ours``."""
    ours, theirs = ours.double().flatten(), theirs.double().flatten()
    scale = ours.abs().max().item()
    diff = (ours - theirs).abs().max().item()
    entry = {"what": what, "max_abs_diff": diff, "output_scale": scale, "diff_over_scale": diff / max(scale, 1e-30),
             "rel_l2": ((ours - theirs).norm() / ours.norm()).item(), **extra}
    TABLE.append(entry)
    print(json.dumps(entry), flush=True)
    return entry


def write_models(root: Path) -> dict[str, Path]:
    """The small Wan I2V as a ComfyUI single file, the released-format LoRA + embeddings, a full Wan VAE."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = WanTransformer3DModel(**NATIVE_TRANSFORMER_CONFIG).eval()  # a Wan file: no domain embeddings
    with torch.no_grad():  # every parameter non-trivial (diffusers zero- or one-initialises some)
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    paths = {"transformer": save_transformer_single_file(model, root / "diffusion_models" / "small_wan_i2v.safetensors",
                                                         dtype=torch.float32, prefix=True)}
    lora_dir = root / "loras" / "4dnex"
    lora_dir.mkdir(parents=True)
    lora = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith("blocks.") and ".attn" in name:
            lora[f"transformer.{name}.lora_A.weight"] = torch.randn(RANK, module.in_features, generator=generator) * 0.05
            lora[f"transformer.{name}.lora_B.weight"] = torch.randn(module.out_features, RANK, generator=generator) * 0.05
    save_file(lora, str(lora_dir / "pytorch_lora_weights.safetensors"))
    width = NATIVE_TRANSFORMER_CONFIG["num_attention_heads"] * NATIVE_TRANSFORMER_CONFIG["attention_head_dim"]
    torch.save(torch.randn(2, width, generator=generator), lora_dir / "learnable_domain_embeddings.pt")
    paths["lora"] = lora_dir / "pytorch_lora_weights.safetensors"
    vae = AutoencoderKLWan().eval()  # diffusers' default config is Wan2.1's VAE
    paths["vae"] = save_vae_single_file(vae, root / "vae" / "wan_2.1_vae.safetensors")
    print(f"wrote {len(lora) // 2} LoRA layers, transformer and VAE under {root}", flush=True)
    return paths


def pack_transformer(paths: dict[str, Path]) -> FourDNeXTransformer3DModel:
    transformer = load_transformer(paths["transformer"], model_cls=FourDNeXTransformer3DModel, dtype=torch.float32)
    apply_4dnex_lora(transformer, paths["lora"], strength=1.0)
    return transformer


def native_model(paths: dict[str, Path], root: Path, weight_dtype: torch.dtype | None = None):
    """UNETLoader's load + 4DNeX Apply to Wan Model, loaded onto ComfyUI's device (patches applied)."""
    options = {} if weight_dtype is None else {"dtype": weight_dtype}
    model = comfy.sd.load_diffusion_model(str(paths["transformer"]), model_options=options)
    folder_paths.add_model_folder_path("loras", str(root / "loras"))
    (patched,) = pack.FourDNeXApplyToWanModel().patch(model, "4dnex/pytorch_lora_weights.safetensors", "auto", 1.0)
    return model, patched


def native_velocity(patched, x, timestep, context, clip_fea):
    comfy.model_management.load_models_gpu([patched])
    options = {"wrappers": patched.wrappers}
    return patched.model.diffusion_model(x, timestep, context, clip_fea=clip_fea, transformer_options=options)


def forward_inputs(frames: int, height: int, width: int, generator: torch.Generator) -> dict:
    latent_frames = (frames - 1) // 4 + 1
    return {
        "x": torch.randn(1, 36, latent_frames, height // 8, 2 * width // 8, generator=generator),
        "timestep": torch.tensor([937.5]),
        "context": torch.cat([torch.randn(1, 20, 4096, generator=generator), torch.zeros(1, 492, 4096)], dim=1),
        "clip_fea": torch.randn(1, 257, 1280, generator=generator),
    }


def pack_velocity(transformer, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return transformer(hidden_states=inputs["x"], timestep=inputs["timestep"],
                           encoder_hidden_states=inputs["context"], encoder_hidden_states_image=inputs["clip_fea"],
                           return_dict=False)[0]


def check_forward(transformer, patched, inputs: dict, what: str) -> dict:
    ours = pack_velocity(transformer, inputs)
    with torch.no_grad():
        theirs = native_velocity(patched, inputs["x"], inputs["timestep"], inputs["context"], inputs["clip_fea"])
    return row(what, ours, theirs)


def check_conditioning_and_sampling(transformer, patched, paths: dict[str, Path], generator: torch.Generator) -> None:
    frames, height, width = ARGS.frames, ARGS.height, ARGS.width
    image = torch.rand(1, height, width, 3, generator=generator)
    comfy_vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(paths["vae"])))
    text = torch.cat([torch.randn(1, 12, 4096, generator=generator), torch.zeros(1, 500, 4096)], dim=1)
    negative_text = torch.zeros(1, 512, 4096)
    clip_output = comfy.clip_vision.Output()
    clip_output.penultimate_hidden_states = torch.randn(1, 257, 1280, generator=generator)
    positive, negative, latent = pack.FourDNeXWanImageToVideo().encode(
        [[text, {}]], [[negative_text, {}]], comfy_vae, clip_output, image, width, height, frames, "stretch")

    diffusers_vae = load_vae(paths["vae"], dtype=torch.float32)
    condition = encode_condition(diffusers_vae, image[0].permute(2, 0, 1), xyz_init_map(height, width), frames,
                                 progress=False)
    mean, std = (s.view(1, -1, 1, 1, 1) for s in wan_latent_stats())
    concat = positive[0][1]["concat_latent_image"]
    row("condition latent (Wan-normalized)", condition[:, 4:], (concat - mean) / std)
    row("condition mask (kept = 1 - concat_mask)", condition[:, :4], 1 - positive[0][1]["concat_mask"])

    sigmas, _ = pack.FourDNeXReleaseSchedule().schedule(ARGS.steps, 3.0, "release", "euler")
    noise = torch.randn(latent["samples"].shape, generator=generator)
    settings = SamplingSettings(num_inference_steps=ARGS.steps, guidance_scale=ARGS.cfg, flow_shift=3.0,
                                sampler="euler", schedule="release")
    conditioning = Conditioning(condition=condition, prompt_embeds=text, image_embeds=clip_output.penultimate_hidden_states,
                                negative_prompt_embeds=negative_text)
    start = time.perf_counter()
    ours = sample(transformer, conditioning, settings, latents=noise, progress=False)
    pack_seconds = time.perf_counter() - start
    sampler = comfy.samplers.sampler_object("euler")
    start = time.perf_counter()
    theirs = comfy.sample.sample_custom(patched, noise / sigmas[0], ARGS.cfg, sampler, sigmas, positive, negative,
                                        mean.expand_as(noise).clone(), disable_pbar=True, seed=0)
    native_seconds = time.perf_counter() - start
    row(f"Euler, {ARGS.steps} steps, CFG {ARGS.cfg}: final latent (normalized)", ours, (theirs - mean) / std,
        pack_seconds=pack_seconds, native_seconds=native_seconds)
    plain = comfy.sample.sample_custom(patched, noise, ARGS.cfg, sampler, sigmas, positive, negative,
                                       torch.zeros_like(noise), disable_pbar=True, seed=0)
    row("the same, ComfyUI's own start (sigma_0 * noise + (1 - sigma_0) * empty latent)", ours, (plain - mean) / std)
    check_unipc(transformer, patched, generator, positive, negative, condition, text,
                clip_output.penultimate_hidden_states, negative_text, noise)


def check_unipc(transformer, patched, generator: torch.Generator, positive, negative, condition, text,
                clip_states, negative_text, noise) -> None:
    mean, std = (s.view(1, -1, 1, 1, 1) for s in wan_latent_stats())
    sigmas, release_sampler = pack.FourDNeXReleaseSchedule().schedule(ARGS.steps, 3.0, "release", "unipc")
    settings = SamplingSettings(num_inference_steps=ARGS.steps, guidance_scale=ARGS.cfg, flow_shift=3.0,
                                sampler="unipc", schedule="release")
    conditioning = Conditioning(condition=condition, prompt_embeds=text, image_embeds=clip_states,
                                negative_prompt_embeds=negative_text)
    ours = sample(transformer, conditioning, settings, latents=noise, progress=False)
    for name, sampler in (("4DNeX Release Schedule's unipc", release_sampler),
                          ("ComfyUI's uni_pc_bh2", comfy.samplers.sampler_object("uni_pc_bh2"))):
        theirs = comfy.sample.sample_custom(patched, noise / sigmas[0], ARGS.cfg, sampler, sigmas, positive, negative,
                                            mean.expand_as(noise).clone(), disable_pbar=True, seed=0)
        row(f"UniPC, {ARGS.steps} steps, CFG {ARGS.cfg}: the pack's (the release's) against {name}", ours,
            (theirs - mean) / std)


def check_composition(paths: dict[str, Path], root: Path, inputs: dict, generator: torch.Generator) -> None:
    """A second LoRA (LoraLoaderModelOnly's code) before and after the 4DNeX node, ModelSamplingSD3 and a
    block patch on the same MODEL, against the pack's transformer with both LoRAs fused."""
    import comfy_extras.nodes_model_advanced as model_advanced

    from fourdnex_core.lora import fuse_lora, read_lora

    second = {}
    for index in range(NATIVE_TRANSFORMER_CONFIG["num_layers"]):
        for name, (out_features, in_features) in {"ffn.0": (512, 256), "ffn.2": (256, 512)}.items():
            base = f"diffusion_model.blocks.{index}.{name}"
            second[f"{base}.lora_down.weight"] = torch.randn(4, in_features, generator=generator) * 0.05
            second[f"{base}.lora_up.weight"] = torch.randn(out_features, 4, generator=generator) * 0.05
            second[f"{base}.alpha"] = torch.tensor(4.0)
    second_path = root / "loras" / "second.safetensors"
    save_file(second, str(second_path))
    transformer = pack_transformer(paths)
    fuse_lora(transformer, list(read_lora(second_path, transformer).layers), 0.7)
    ours = pack_velocity(transformer, inputs)

    base_model = comfy.sd.load_diffusion_model(str(paths["transformer"]))
    calls = []

    def block_patch(args, extra):  # a patches_replace block patch that runs the block as it is
        calls.append(1)
        return extra["original_block"](args)

    for order in ("4DNeX first", "second LoRA first"):
        model = base_model
        if order == "second LoRA first":
            model, _ = comfy.sd.load_lora_for_models(model, None, comfy.utils.load_torch_file(str(second_path)), 0.7, 0)
        (model,) = pack.FourDNeXApplyToWanModel().patch(model, "4dnex/pytorch_lora_weights.safetensors", "auto", 1.0)
        if order == "4DNeX first":
            model, _ = comfy.sd.load_lora_for_models(model, None, comfy.utils.load_torch_file(str(second_path)), 0.7, 0)
        (model,) = model_advanced.ModelSamplingSD3().patch(model, 3.0)
        model = model.clone()
        model.set_model_patch_replace(block_patch, "dit", "double_block", 0)
        comfy.model_management.load_models_gpu([model])
        options = {"wrappers": model.wrappers, "patches_replace": model.model_options["transformer_options"]["patches_replace"]}
        with torch.no_grad():
            theirs = model.model.diffusion_model(inputs["x"], inputs["timestep"], inputs["context"],
                                                 clip_fea=inputs["clip_fea"], transformer_options=options)
        row(f"forward with a second LoRA ({order}), ModelSamplingSD3 and a block patch", ours, theirs,
            block_patch_calls=len(calls))
        calls.clear()


def write_gguf(source: Path, target: Path) -> Path:
    """The single file as GGUF the way ComfyUI-GGUF's converter lays it out: arch "wan", 2D block weights Q8_0,
    the rest F32, the 5D patch embedding flattened with its ``comfy.gguf.orig_shape``."""
    import gguf
    from safetensors.torch import load_file

    writer = gguf.GGUFWriter(path=None, arch="wan")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    for key, tensor in load_file(str(source)).items():
        key = key.removeprefix("model.diffusion_model.")
        data = tensor.float().numpy()
        quantized = data.ndim == 2 and key.startswith("blocks.") and data.shape[-1] % 32 == 0
        qtype = gguf.GGMLQuantizationType.Q8_0 if quantized else gguf.GGMLQuantizationType.F32
        if data.ndim > 2 and not quantized:
            writer.add_array(f"comfy.gguf.orig_shape.{key}", [int(d) for d in data.shape])
            data = data.reshape(data.shape[0], -1)
        writer.add_tensor(key, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    writer.write_header_to_file(path=str(target))
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


def check_gguf(transformer, paths: dict[str, Path], root: Path, inputs: dict) -> None:
    gguf_pack = Path("custom_nodes") / "ComfyUI-GGUF"
    if not (gguf_pack / "__init__.py").is_file():
        print(json.dumps({"what": "GGUF", "skipped": f"no {gguf_pack} (copy city96/ComfyUI-GGUF there, pip install gguf)"}))
        return
    spec = importlib.util.spec_from_file_location("ComfyUI_GGUF", gguf_pack / "__init__.py",
                                                  submodule_search_locations=[str(gguf_pack)])
    sys.modules["ComfyUI_GGUF"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules["ComfyUI_GGUF"])
    loader = importlib.import_module("ComfyUI_GGUF.nodes").UnetLoaderGGUF
    gguf_file = write_gguf(paths["transformer"], paths["transformer"].with_suffix(".gguf"))
    folder_paths.add_model_folder_path("diffusion_models", str(gguf_file.parent))
    (model,) = loader().load_unet(gguf_file.name)
    (patched,) = pack.FourDNeXApplyToWanModel().patch(model, "4dnex/pytorch_lora_weights.safetensors", "auto", 1.0)
    check_forward(transformer, patched, inputs, f"forward, GGUF Q8_0 through ComfyUI-GGUF's UnetLoaderGGUF "
                                                f"({type(patched).__name__})")


def check_bad_input(paths: dict[str, Path], root: Path) -> None:
    """Each bad input must raise a ValueError naming the problem, before any sampling."""
    t2v = WanTransformer3DModel(**{**NATIVE_TRANSFORMER_CONFIG, "in_channels": 16, "image_dim": None,
                                   "added_kv_proj_dim": None})
    t2v_path = save_transformer_single_file(t2v, root / "diffusion_models" / "small_wan_t2v.safetensors",
                                            dtype=torch.float32)
    flux_lora = root / "loras" / "flux_lora.safetensors"
    save_file({"diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": torch.zeros(4, 256),
               "diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight": torch.zeros(768, 4)}, str(flux_lora))
    i2v = comfy.sd.load_diffusion_model(str(paths["transformer"]))
    image, conditioning = torch.rand(1, 64, 96, 3), [[torch.zeros(1, 512, 4096), {}]]
    cases = {
        "text-to-video MODEL": lambda: pack.FourDNeXApplyToWanModel().patch(
            comfy.sd.load_diffusion_model(str(t2v_path)), "4dnex/pytorch_lora_weights.safetensors", "auto", 1.0),
        "LoRA for another model": lambda: pack.FourDNeXApplyToWanModel().patch(i2v, "flux_lora.safetensors", "auto", 1.0),
        "width 100": lambda: pack.FourDNeXWanImageToVideo().encode(conditioning, conditioning, None, None, image, 100,
                                                                   64, 5, "stretch"),
        "length 8": lambda: pack.FourDNeXWanImageToVideo().encode(conditioning, conditioning, None, None, image, 96,
                                                                  64, 8, "stretch"),
    }
    for what, call in cases.items():
        try:
            call()
        except ValueError as error:
            entry = {"what": f"bad input: {what}", "refused": True, "message": str(error)}
        else:
            entry = {"what": f"bad input: {what}", "refused": False}
        TABLE.append(entry)
        print(json.dumps(entry), flush=True)


def check_speed(transformer, patched, generator: torch.Generator) -> None:
    frames, height, width = (int(v) for v in ARGS.speed_size.split("x"))
    inputs = forward_inputs(frames, height, width, generator)
    tokens = inputs["x"].shape[2] * inputs["x"].shape[3] * inputs["x"].shape[4] // 4

    def timed(call) -> float:
        start = time.perf_counter()
        call()
        return time.perf_counter() - start

    def pack_call():
        return pack_velocity(transformer, inputs)

    def native_call():
        return native_velocity(patched, inputs["x"], inputs["timestep"], inputs["context"], inputs["clip_fea"])

    with torch.no_grad():
        pack_call(), native_call()  # warm-up
        # interleaved, so that load from other processes hits both alike; medians
        pairs = [(timed(pack_call), timed(native_call)) for _ in range(ARGS.speed_repeats)]
    pack_s = statistics.median(p for p, _ in pairs)
    native_s = statistics.median(n for _, n in pairs)
    ratio = statistics.median(n / p for p, n in pairs)
    entry = {"what": f"seconds per forward at {tokens} tokens ({ARGS.speed_size}), ComfyUI attention "
                     f"{ARGS.attention}", "pack_s": pack_s, "native_s": native_s, "native_over_pack": ratio,
             "repeats": ARGS.speed_repeats, "threads": torch.get_num_threads(), "load_average": os.getloadavg()[0]}
    TABLE.append(entry)
    print(json.dumps(entry), flush=True)


def check_equivalence(transformer, base, patched, paths: dict[str, Path], root: Path,
                      generator: torch.Generator) -> None:
    """Checks 1. to 7. and 9. of the module docstring."""
    inputs = forward_inputs(ARGS.frames, ARGS.height, ARGS.width, generator)
    check_forward(transformer, patched, inputs, "forward, fp32, LoRA + shared RoPE + domain embeddings")
    with torch.no_grad():
        stock = native_velocity(base, inputs["x"], inputs["timestep"], inputs["context"], inputs["clip_fea"])
    row("(control) the unpatched native model against the pack's", pack_velocity(transformer, inputs), stock)
    check_conditioning_and_sampling(transformer, patched, paths, generator)
    check_composition(paths, root, inputs, generator)
    _, patched_fp8 = native_model(paths, root, torch.float8_e4m3fn)
    check_forward(transformer, patched_fp8, inputs, "forward, UNETLoader weight_dtype fp8_e4m3fn")
    check_gguf(transformer, paths, root, inputs)
    check_bad_input(paths, root)


def main() -> int:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        paths = write_models(root)
        transformer = pack_transformer(paths)
        base, patched = native_model(paths, root)
        if not ARGS.speed_only:
            check_equivalence(transformer, base, patched, paths, root, generator)
        check_speed(transformer, patched, generator)
    if ARGS.out:
        ARGS.out.write_text(json.dumps(TABLE, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
