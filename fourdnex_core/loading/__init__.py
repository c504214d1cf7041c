"""Offline loading of Wan2.1 components from diffusers folders and ComfyUI single files."""
