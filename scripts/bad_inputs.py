"""Try bad inputs and faults on the CLI and the trainer, and write what each gets into docs/BAD_INPUTS.md.

    .venv/bin/python scripts/bad_inputs.py [--check]

Every case runs for real on the tiny random-weight model set (CPU, a few minutes): the command's
exit code and its last stderr line are recorded, plus what the case must leave behind (earlier
files intact, nothing written). The table between the markers of docs/BAD_INPUTS.md is replaced;
``--check`` only prints it. A case whose outcome is not the expected one is marked "NO".
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fourdnex_core.cli import main  # noqa: E402
from fourdnex_core.geometry.synthetic import make_synthetic_scene  # noqa: E402
from fourdnex_core.writing.single_files import save_transformer_single_file  # noqa: E402
from fourdnex_core.scene_file import load_scene, save_scene  # noqa: E402
from fourdnex_core.tiny import COMFY_FILES, make_tiny_models  # noqa: E402
from fourdnex_core.transformer import FourDNeXTransformer3DModel  # noqa: E402
from fourdnex_train.cache import CachedClip, cache_path, write_cached_clip  # noqa: E402
from fourdnex_train.cli import main as train_main  # noqa: E402

DOC = REPO / "docs" / "BAD_INPUTS.md"
START, END = "<!-- table:start -->", "<!-- table:end -->"
EXAMPLE = REPO / "fourdnex_core" / "assets" / "example.png"
SMALL = ["--frames", "5", "--height", "32", "--width", "48", "--steps", "2"]


@dataclasses.dataclass
class Outcome:
    area: str
    case: str
    code: int
    line: str
    expected: bool


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("INFO", "WARNING", "DEBUG"))
             and "%|" not in line and "it/s" not in line]
    return lines[-1] if lines else ""


def run_case(area: str, case: str, command: Callable[[], int], expected_code: int,
             must: Callable[[str], bool] = lambda line: True) -> Outcome:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = command()
        except SystemExit as exit_:  # argparse
            code = int(exit_.code or 0)
    line = _last_line(err.getvalue())
    ok = code == expected_code and must(line)
    print(f"[{'ok' if ok else 'NO'}] {area}: {case} -> {code} {line[:150]}", file=sys.__stderr__)
    return Outcome(area, case, code, line, ok)


def _nan_copy(source: Path, target: Path, name_part: str) -> None:
    tensors = load_file(source)
    name = next(key for key in sorted(tensors) if name_part in key and tensors[key].is_floating_point())
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    with safe_open(source, "pt") as opened:
        metadata = opened.metadata()
    save_file(tensors, target, metadata=metadata)


def generate_cases(work: Path, tiny) -> list[Outcome]:
    models = str(tiny.comfy_models)

    def gen(out: str, *extra: str, image: Path = EXAMPLE) -> Callable[[], int]:
        return lambda: main(["generate", str(image), "--out", str(work / out), "--models", models, *SMALL, *extra])

    outcomes = []

    def case(name: str, command: Callable[[], int], code: int = 2, must=lambda line: True) -> None:
        outcomes.append(run_case("generate", name, command, code, must))

    for name, extra in [
        ("`--frames 100001` at 480x720", ["--frames", "100001", "--height", "480", "--width", "720"]),
        ("`--cfg nan`", ["--cfg", "nan"]), ("`--cfg -1`", ["--cfg", "-1"]), ("`--shift 0`", ["--shift", "0"]),
        ("`--shift inf`", ["--shift", "inf"]), ("`--steps 0`", ["--steps", "0"]), ("`--seed -1`", ["--seed", "-1"]),
        ("`--seed 2**64`", ["--seed", str(2**64)]), ("`--fps 0`", ["--fps", "0"]), ("`--fps nan`", ["--fps", "nan"]),
        ("`--lora-strength nan`", ["--lora-strength", "nan"]), ("`--frames 6`", ["--frames", "6"]),
        ("`--width 50`", ["--width", "50"]), ("`--device cuda` without a GPU", ["--device", "cuda"]),
        ("`--resize` unknown", ["--resize", "fill"]),
    ]:
        out = f"refused_{len(outcomes)}"
        case(name + " (nothing loaded, no folder made)", gen(out, *extra),
             must=lambda line, out=out: not (work / out).exists())
    case("image path that does not exist", gen("missing", image=work / "nope.png"))
    garbage = work / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    case("image file that is not an image", gen("garbage", image=garbage))
    gray16 = work / "gray16.png"
    Image.fromarray((np.linspace(0, 65535, 64 * 96).reshape(64, 96)).astype(np.uint16)).save(gray16)
    case("16-bit grayscale PNG (runs; its tones kept, see tests/test_image_modes.py)", gen("gray16", image=gray16), 0)
    rgba = work / "rgba.png"
    pixels = np.zeros((64, 96, 4), np.uint8)
    pixels[16:48, 24:72] = (200, 40, 40, 255)  # an opaque red square on a transparent black background
    Image.fromarray(pixels, "RGBA").save(rgba)
    case("RGBA PNG with a transparent background (runs; shown over white)", gen("rgba", image=rgba), 0)

    case("first run into `--out run`", gen("run"), 0)
    earlier = (work / "run" / "scene.npz").read_bytes()
    case("second run into the same `--out` (earlier files byte-identical)", gen("run", "--seed", "1"),
         must=lambda line: (work / "run" / "scene.npz").read_bytes() == earlier)
    case("second run with `--overwrite`", gen("run", "--seed", "1", "--overwrite"), 0)
    before = (work / "run" / "scene.npz").read_bytes()

    def interrupted() -> int:
        def ctrl_c(*args, **kwargs):
            raise KeyboardInterrupt
        with mock.patch("fourdnex_core.cli.generate.save_scene", ctrl_c):
            return gen("run", "--seed", "2", "--overwrite")()

    case("Ctrl-C while writing over an earlier run (its scene.npz intact, no partial file)", interrupted, 130,
         must=lambda line: (work / "run" / "scene.npz").read_bytes() == before
         and not list((work / "run").glob(".*partial*")))
    (work / "a_file").write_text("x")
    case("`--out` below a regular file", lambda: main(["generate", str(EXAMPLE), "--out", str(work / "a_file" / "o"),
                                                        "--models", models, *SMALL]))
    case("`--out` name of 300 characters", gen("x" * 300))
    broken_models = work / "nan_models"
    shutil.copytree(tiny.comfy_models, broken_models)
    transformer = broken_models / COMFY_FILES["transformer"]
    _nan_copy(transformer, transformer, "blocks.0.self_attn.q.weight")
    case("transformer file holding one NaN weight", lambda: main(
        ["generate", str(EXAMPLE), "--out", str(work / "nan_t"), "--models", str(broken_models), *SMALL]))
    nan_lora = work / "nan_lora.safetensors"
    _nan_copy(tiny.comfy_lora, nan_lora, "lora")
    case("LoRA whose tensors hold NaN", gen("nan_lora", "--lora", str(nan_lora)))
    pickled = work / "pickle.safetensors"
    torch.save({"w": torch.ones(2)}, pickled)
    case("a pickle named .safetensors given as `--lora`", gen("pickle", "--lora", str(pickled)))
    case("a pickle given as `--transformer`", gen("pickle_t", "--transformer", str(pickled)))
    truncated = work / "truncated.safetensors"
    truncated.write_bytes(tiny.comfy_lora.read_bytes()[:200])
    case("truncated LoRA", gen("truncated", "--lora", str(truncated)))
    case("`--models` folder that does not exist", lambda: main(
        ["generate", str(EXAMPLE), "--out", str(work / "nomodels"), "--models", str(work / "none"), *SMALL]))
    return outcomes


def scene_cases(work: Path) -> list[Outcome]:
    outcomes = []

    def case(command: str, name: str, scene_dir: Path, *extra: str, code: int = 2, must=lambda line: True) -> None:
        outcomes.append(run_case(command, name, lambda: main([command, str(scene_dir), *extra]), code, must))

    def scene(name: str, change: Callable | None = None, **replace) -> Path:
        folder = work / "scenes" / name
        base = dataclasses.replace(make_synthetic_scene(3, 24, 36, seed=3).to_scene_file(), **replace)
        if change is not None:
            change(base)
        save_scene(base, folder / "scene.npz")
        return folder

    all_nan = scene("nan", lambda s: s.xyz.fill(np.nan))
    all_zero = scene("zero", lambda s: s.xyz.fill(0.0))
    for command in ("postopt", "export", "render"):
        case(command, "scene whose xyz is all NaN", all_nan)
        case(command, "scene whose xyz is all zero", all_zero)
    (work / "scenes" / "garbage").mkdir(parents=True)
    (work / "scenes" / "garbage" / "scene.npz").write_bytes(b"not a zip")
    case("postopt", "scene.npz that is not an npz", work / "scenes" / "garbage")
    case("postopt", "folder without scene.npz", work / "scenes")
    confidence = np.random.default_rng(0).uniform(0, 1, (3, 24, 36)).astype(np.float32)
    good = scene("confidence", confidence=confidence)
    case("postopt", "`--min-confidence 0.8`, then a run without it", good, "--min-confidence", "0.8", code=0)
    strict = load_scene(good / "scene.npz").valid
    strict_valid = int(strict.sum()) if strict is not None else 0
    case("postopt", f"... second run (the {strict_valid} points of the first come back to all usable)", good, code=0,
         must=lambda line: int(load_scene(good / "scene.npz").valid.sum()) > 3 * strict_valid
         and np.array_equal(load_scene(good / "scene.npz").confidence, confidence))
    case("export", "`--fps -1`", good, "--fps", "-1")
    case("render", "`--fps nan`", good, "--fps", "nan")
    (work / "scenes" / "file").write_text("x")
    case("export", "`--out` below a regular file", good, "--out", str(work / "scenes" / "file" / "out"))
    return outcomes


TRAIN_TOML = """
[data]
cache_dir = "cache"
[models]
transformer = "transformer.safetensors"
[lora]
rank = 4
alpha = 2.0
[optim]
lr = {lr}
warmup_steps = 0
scheduler = "constant"
[train]
output_dir = "out"
max_steps = 20
gradient_checkpointing = false
[checkpoint]
every_n_steps = 1
[log]
tensorboard = false
progress = false
"""


def train_cases(work: Path) -> list[Outcome]:
    from tiny_configs import TINY_TRANSFORMER

    outcomes = []
    folder = work / "train"
    torch.manual_seed(0)
    save_transformer_single_file(FourDNeXTransformer3DModel(**TINY_TRANSFORMER), folder / "transformer.safetensors",
                                 dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    for index in range(3):
        write_cached_clip(cache_path(folder / "cache", f"clip_{index}"), CachedClip(
            name=f"clip_{index}", rgb_latent=torch.randn(16, 2, 4, 4, generator=generator),
            xyz_latent=torch.randn(16, 2, 4, 4, generator=generator), condition=torch.randn(20, 2, 4, 8),
            image_embeds=torch.randn(257, 24), prompt_embeds=torch.randn(512, 32), xyz_center=torch.zeros(5, 3),
            metadata={"fingerprint": "x", "prompt": "p"}))
    (folder / "run.toml").write_text(TRAIN_TOML.format(lr=1e30))

    def case(name: str, *args: str, code: int = 2, must=lambda line: True) -> None:
        outcomes.append(run_case("fourdnex-train", name, lambda: train_main(list(args)), code, must))

    case("`[optim] lr = 1e30` (diverges; no LoRA written)", "run", str(folder / "run.toml"),
         must=lambda line: not (folder / "out" / "4dnex_lora.safetensors").exists())
    clip = cache_path(folder / "cache", "clip_1")
    clip.write_bytes(clip.read_bytes()[:300])
    (folder / "run.toml").write_text(TRAIN_TOML.format(lr=1e-3))
    case("one of 3 cache files truncated", "run", str(folder / "run.toml"))
    case("config file that does not exist", "run", str(folder / "none.toml"))
    case("`--optim.lr` not a number", "run", str(folder / "run.toml"), "--optim.lr", "fast")
    case("curate a folder that does not exist", "curate", str(folder / "none"), "--out", str(folder / "report"))
    return outcomes


def table(outcomes: list[Outcome]) -> str:
    rows = ["| command | bad input or fault | exit | what the user gets (stderr, last line) | as expected |",
            "|---|---|---|---|---|"]
    for outcome in outcomes:
        line = outcome.line.replace("|", "\\|")
        for path in (tempfile.gettempdir(),):
            line = line.replace(path, "/tmp")
        rows.append(f"| {outcome.area} | {outcome.case} | {outcome.code} | {line[:400]} | "
                    f"{'yes' if outcome.expected else 'NO'} |")
    return "\n".join(rows)


def main_script() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="print the table instead of writing the doc")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    sys.path.insert(0, str(REPO / "tests"))
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            tiny = make_tiny_models(work / "tiny")
        outcomes = generate_cases(work, tiny) + scene_cases(work) + train_cases(work)
        text = table(outcomes).replace(scratch, "/tmp/work")
    if args.check:
        print(text)
    else:
        document = DOC.read_text(encoding="utf-8")
        head, _, rest = document.partition(START)
        _, _, tail = rest.partition(END)
        DOC.write_text(f"{head}{START}\n{text}\n{END}{tail}", encoding="utf-8")
    failed = [outcome for outcome in outcomes if not outcome.expected]
    print(f"{len(outcomes)} cases, {len(failed)} not as expected", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main_script())
