"""Standalone LoRA trainer and data preparation for 4DNeX (runs without ComfyUI).

Stages, one module each: the folder layouts (:mod:`fourdnex_train.data_layout`, the 4DNeX-10M release's
in :mod:`fourdnex_train.layout_4dnex10m`, both built on :mod:`fourdnex_train.clip_source`), clip processing
(:mod:`fourdnex_train.pointmaps`), the per-clip cache (:mod:`fourdnex_train.cache`, :mod:`fourdnex_train.prepare`),
curation metrics (:mod:`fourdnex_train.curation`), the flow-matching objective
(:mod:`fourdnex_train.flow_matching`), LoRA setup and export (:mod:`fourdnex_train.lora_setup`), checkpoints
(:mod:`fourdnex_train.checkpoint`) and the loop (:mod:`fourdnex_train.trainer`). See ``fourdnex_train/README.md``.
"""
