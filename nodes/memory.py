"""4DNeX Memory Options: block swap, fp8, attention kernel, compile, step cache and VAE tiling.

The node only builds a :class:`fourdnex_core.lowvram.LowVramOptions`; the model loader, the VAE
loader and the sampler apply it. Component offload is ComfyUI's own model management here.
"""

from __future__ import annotations

from fourdnex_core.lowvram import LowVramOptions
from fourdnex_core.lowvram.attention import BACKENDS
from fourdnex_core.lowvram.options import FP8_MODES

AUTO_SWAP = -1
MAX_BLOCKS = 40  # Wan2.1 14B


class FourDNeXMemoryOptions:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "blocks_to_swap": ("INT", {
                "default": 0, "min": AUTO_SWAP, "max": MAX_BLOCKS,
                "tooltip": "Transformer blocks kept in CPU memory and copied to the GPU just before they run "
                           "(exact, slower per step). -1: as many as needed to fit the free VRAM. 0: none."}),
            "prefetch": ("BOOLEAN", {"default": True, "tooltip": "Copy the next swapped block while the current "
                                                                 "one runs (a CUDA side stream)."}),
            "fp8": (list(FP8_MODES), {
                "default": "off",
                "tooltip": "weights: fp8 storage, half the memory, upcast per layer (about 1% off). matmul: fp8 "
                           "matrix products too (RTX 40xx, L40, H100 and newer). fp8 model files are fp8 anyway."}),
            "attention": (list(BACKENDS), {
                "default": "sdpa",
                "tooltip": "Attention kernel. sage / flash / flash3 / xformers need their package installed."}),
            "compile": ("BOOLEAN", {"default": False,
                                    "tooltip": "torch.compile the transformer blocks (needs Triton on CUDA; the "
                                               "first step is slow)."}),
            "step_cache_threshold": ("FLOAT", {
                "default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                "tooltip": "Skip transformer steps whose input barely changed (TeaCache-style; 0 = off, 0.1-0.3 "
                           "typical). The log says how many steps were skipped."}),
            "vae_tiling": ("BOOLEAN", {"default": False,
                                       "tooltip": "Encode and decode in overlapping tiles (for 480 x 1440 frames "
                                                  "on small GPUs; approximate at the seams)."}),
            "vae_tile_size": ("INT", {"default": 256, "min": 64, "max": 2048, "step": 32,
                                      "tooltip": "Tile side in pixels."}),
            "vae_tile_overlap": ("INT", {"default": 64, "min": 0, "max": 1024, "step": 16,
                                         "tooltip": "Overlap of neighbouring tiles in pixels (blended)."}),
        }}

    RETURN_TYPES = ("FOURDNEX_MEMORY",)
    RETURN_NAMES = ("memory",)
    FUNCTION = "make"
    CATEGORY = "4DNeX/loaders"
    DESCRIPTION = ("Memory and speed options for the 14B on small GPUs (see the README's Low VRAM table). Connect "
                   "to 4DNeX Model Loader (block swap, fp8, attention, compile, step cache) and 4DNeX VAE Loader "
                   "(tiling).")

    def make(self, blocks_to_swap, prefetch, fp8, attention, compile, step_cache_threshold, vae_tiling,
             vae_tile_size, vae_tile_overlap):
        return (LowVramOptions(
            blocks_to_swap="auto" if blocks_to_swap == AUTO_SWAP else blocks_to_swap, prefetch=prefetch, fp8=fp8,
            attention=attention, compile=compile, step_cache_threshold=step_cache_threshold, vae_tiling=vae_tiling,
            vae_tile_size=vae_tile_size, vae_tile_overlap=vae_tile_overlap,
        ),)


NODE_CLASS_MAPPINGS = {"FourDNeXMemoryOptions": FourDNeXMemoryOptions}
NODE_DISPLAY_NAME_MAPPINGS = {"FourDNeXMemoryOptions": "4DNeX Memory Options (low VRAM)"}
