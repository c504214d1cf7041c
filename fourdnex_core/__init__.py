"""4DNeX core library: image to dynamic point cloud with a LoRA on Wan2.1 image-to-video.

No ComfyUI imports live here; ``nodes/`` and the ``fourdnex`` CLI are thin faces on this
package.
"""

__version__ = "0.1.0"
