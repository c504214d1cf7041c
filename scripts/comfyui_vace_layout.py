"""Load the tiny set's Wan2.1 VACE file with ComfyUI's own loader and write what ComfyUI made of it.

Run with the harness's Python from its ComfyUI folder (ComfyUI is never a dependency of the pack)::

    cd /tmp/comfy-harness/ComfyUI && ../venv/bin/python /work/main/scripts/comfyui_vace_layout.py \\
        MODELS/diffusion_models/wan2.1_vace_14B_fp16.safetensors tests/fixtures/comfyui_vace_layout.json

It prints and writes (JSON) the model class ComfyUI's detection picked (``WAN21_Vace``), the config it
read from the weights, the keys the loader left unused or missing, and the name and shape of every
parameter of the model ComfyUI built: the fixture ``tests/test_vace_file.py`` compares our writer with.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    sys.argv[1:] = ["--cpu"]
    sys.path.insert(0, str(Path.cwd()))
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.sd
    import comfy.utils

    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    patcher = comfy.sd.load_diffusion_model(str(source))
    model = patcher.model
    unet = model.diffusion_model
    config = {key: (list(value) if isinstance(value, tuple) else value) for key, value in model.model_config.unet_config.items()
              if isinstance(value, (int, float, str, bool, list, tuple)) or value is None}
    layout = {
        "comfyui_model": type(model.model_config).__name__,
        "network": type(unet).__name__,
        "unet_config": config,
        "vace_layers_mapping": {str(k): v for k, v in getattr(unet, "vace_layers_mapping", {}).items()},
        "loader_messages": [m for m in messages if "missing" in m.lower() or "unexpected" in m.lower() or
                            "left over" in m.lower()],
        "parameters": {name: list(tensor.shape) for name, tensor in unet.state_dict().items()},
    }
    target.write_text(json.dumps(layout, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in layout.items() if k != "parameters"}, indent=1))
    print(f"{len(layout['parameters'])} parameters -> {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
