"""Standalone LoRA trainer and data preparation for 4DNeX (runs without ComfyUI).

Stages, one module each: the folder layouts (:mod:`train.data_layout`, the 4DNeX-10M release's
in :mod:`train.layout_4dnex10m`, both built on :mod:`train.clip_source`), clip processing
(:mod:`train.pointmaps`), the per-clip cache (:mod:`train.cache`, :mod:`train.prepare`),
curation metrics (:mod:`train.curation`), the flow-matching objective
(:mod:`train.flow_matching`), LoRA setup and export (:mod:`train.lora_setup`), checkpoints
(:mod:`train.checkpoint`) and the loop (:mod:`train.trainer`). See ``train/README.md``.
"""
