"""Writing model files in the layouts users have, from any weights (random ones for tests and demos).

- :mod:`.single_files`: the Wan2.1 transformer and VAE as ComfyUI-style single files (original names);
- :mod:`.encoders`: UMT5 and CLIP vision as ComfyUI-style single files, and tiny encoder configs.

:mod:`fourdnex_core.tiny` builds a whole random-weight model set with them; :mod:`fourdnex_core.loading`
reads what they write.
"""
