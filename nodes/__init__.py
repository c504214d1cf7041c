"""ComfyUI nodes of the 4DNeX pack (thin adapters over ``fourdnex_core``)."""

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
