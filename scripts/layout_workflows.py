"""Lay out the example workflows: one column per stage, left to right, in groups titled by stage.

Node sizes are the larger of the size saved in the workflow and the size the ComfyUI frontend
draws the node at (``tests/fixtures/frontend_node_sizes.json``, exported from a harness run, see
``--help``), so no two nodes overlap on a person's first look. Within a stage the nodes keep their
data-flow order (then their current top-to-bottom order; the outputs keep theirs). Frontend-only notes go above the first
column. A node's stage comes from its type, or from its ``properties["stage"]`` (a stage title below) where a
workflow uses a type in another role (workflow 7's KSampler runs the VACE model, not 4DNeX).

    python scripts/layout_workflows.py workflows/*.json

To refresh the sizes after a node's inputs changed: with the harness's server running,
``run_workflow.py SERVER WORKFLOW --convert-only --export-ui OUT.json`` on a copy of each workflow
whose node sizes are set to [1, 1] gives the frontend's own sizes; ``--update-sizes OUT.json ...``
reads them into the fixture.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZES = REPO / "tests" / "fixtures" / "frontend_node_sizes.json"
TITLE_HEIGHT = 30  # LiteGraph draws a node's title bar above its position
GAP = 40  # between nodes, both ways
GROUP_PADDING = 20
GROUP_TITLE = 50  # room for the group's title above its first node's title bar
NOTE_TYPES = ("Note", "MarkdownNote")
# Nodes that show images or video after a run grow to show them: room for that from the start.
SHOWS_OUTPUT = {"PreviewImage": [320, 300], "SaveAnimatedWEBP": [320, 340], "SaveVideo": [320, 340],
                "Preview3D": [400, 550]}

STAGES = (
    ("Load", ("LoadImage", "UNETLoader", "CLIPLoader", "CLIPVisionLoader", "VAELoader", "FourDNeXModelLoader",
              "FourDNeXVAELoader", "FourDNeXTextEncoderLoader", "FourDNeXCLIPVisionLoader", "FourDNeXMemoryOptions",
              "FourDNeXLoadScene", "FourDNeXSyntheticScene", "LoraLoaderModelOnly")),
    ("Model patch and encoding", ("FourDNeXApplyToWanModel", "ModelSamplingSD3", "CLIPTextEncode", "CLIPVisionEncode",
                                  "FourDNeXTextEncode", "FourDNeXCLIPVisionEncode", "FourDNeXXYZInit")),
    ("4DNeX sampling", ("FourDNeXWanImageToVideo", "FourDNeXReleaseSchedule", "KSamplerSelect", "SamplerCustom",
                        "KSampler", "FourDNeXSampler")),
    ("Decode and geometry", ("FourDNeXDecode", "FourDNeXWanDecode", "FourDNeXPostOptimize", "FourDNeXPointClouds",
                             "FourDNeXRenderNovelView")),
    ("Novel-view video (VACE)", ("WanVaceToVideo", "TrimVideoLatent", "VAEDecode", "MaskToImage")),
    ("Preview and save", ("FourDNeXPointCloudPreview", "Preview3D", "FourDNeXSave", "SaveAnimatedWEBP", "PreviewImage",
                          "CreateVideo", "SaveVideo")),
)
STAGE_OF = {node_type: index for index, (_, types) in enumerate(STAGES) for node_type in types}
STAGE_NAMED = {title: index for index, (title, _) in enumerate(STAGES)}


def stage_of(node: dict) -> int | None:
    """The index in STAGES of a node's stage (its ``properties["stage"]``, else its type's); None for notes."""
    named = node.get("properties", {}).get("stage")
    if named is not None and named not in STAGE_NAMED:
        raise ValueError(f"Node #{node['id']}: no stage titled {named!r}; use one of {list(STAGE_NAMED)}.")
    return STAGE_NAMED[named] if named is not None else STAGE_OF.get(node["type"])


def frontend_sizes() -> dict[str, dict[str, list[float]]]:
    return json.loads(SIZES.read_text(encoding="utf-8")) if SIZES.is_file() else {}


def drawn_size(node: dict, sizes: dict[str, list[float]]) -> list[float]:
    """The size the frontend draws ``node`` at: the larger of the saved and the frontend's own size
    (and, for nodes that show outputs, the room they take after a run)."""
    frontend = sizes.get(str(node["id"]), [0, 0])
    room = SHOWS_OUTPUT.get(node["type"], [0, 0])
    return [max(node["size"][0], frontend[0], room[0]), max(node["size"][1], frontend[1], room[1])]


def data_flow_depth(workflow: dict) -> dict[int, int]:
    """{node id: the number of links on the longest path from a node without inputs}."""
    inputs: dict[int, list[int]] = {node["id"]: [] for node in workflow["nodes"]}
    for _, source, _, target, _, _ in workflow["links"]:
        inputs[target].append(source)
    depth: dict[int, int] = {}

    def visit(node_id: int) -> int:
        if node_id not in depth:
            depth[node_id] = 1 + max((visit(source) for source in inputs[node_id]), default=-1)
        return depth[node_id]

    for node_id in inputs:
        visit(node_id)
    return depth


def layout(workflow: dict, sizes: dict[str, list[float]]) -> dict:
    """Positions, sizes and stage groups for every node of a UI-format workflow (changed in place)."""
    nodes = workflow["nodes"]
    unknown = [n["type"] for n in nodes if n["type"] not in STAGE_OF and n["type"] not in NOTE_TYPES]
    if unknown:
        raise ValueError(f"No stage for node types {unknown}: add them to STAGES in {Path(__file__).name}.")
    for node in nodes:
        node["size"] = drawn_size(node, sizes)
    notes = [n for n in nodes if n["type"] in NOTE_TYPES]
    top = 0.0
    x = 0.0
    for note in notes:  # above everything, left to right
        note["pos"] = [x, top]
        x += note["size"][0] + GAP
    if notes:
        top += max(n["size"][1] for n in notes) + GAP + GROUP_TITLE
    depth = data_flow_depth(workflow)
    groups, x = [], 0.0
    for index, (title, _) in enumerate(STAGES):
        last = index == len(STAGES) - 1  # the outputs keep the author's order (the 4D viewer first)
        column = sorted((n for n in nodes if stage_of(n) == index),
                        key=lambda n: (0 if last else depth[n["id"]], n["pos"][1], n["pos"][0]))
        if not column:
            continue
        width = max(n["size"][0] for n in column)
        y = top + GROUP_TITLE + TITLE_HEIGHT
        for node in column:
            node["pos"] = [x + GROUP_PADDING, y]
            y += node["size"][1] + TITLE_HEIGHT + GAP
        groups.append({"id": len(groups) + 1, "title": f"{len(groups) + 1} {title}",
                       "bounding": [x, top, width + 2 * GROUP_PADDING, y - top], "color": "#3f789e",
                       "font_size": 24, "flags": {}})
        x += width + 2 * GROUP_PADDING + GAP
    workflow["groups"] = groups
    return workflow


def update_sizes(exports: list[Path], names: list[str]) -> None:
    """Read the node sizes of frontend exports (one per workflow, in the same order) into the fixture."""
    fixture = frontend_sizes()
    for export, name in zip(exports, names, strict=True):
        graph = json.loads(export.read_text(encoding="utf-8"))
        fixture[name] = {str(n["id"]): [round(v, 1) for v in n["size"]] for n in graph["nodes"]}
    SIZES.write_text(json.dumps(fixture, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workflows", nargs="+", type=Path)
    parser.add_argument("--update-sizes", nargs="+", type=Path, metavar="EXPORT",
                        help="frontend exports, one per workflow given, to read the sizes from first")
    args = parser.parse_args()
    if args.update_sizes:
        update_sizes(args.update_sizes, [p.name for p in args.workflows])
    sizes = frontend_sizes()
    for path in args.workflows:
        text = path.read_text(encoding="utf-8")
        indent = len(text.splitlines()[1]) - len(text.splitlines()[1].lstrip())  # keep the file's own indent
        workflow = layout(json.loads(text), sizes.get(path.name, {}))
        ending = "\n" if text.endswith("\n") else ""
        path.write_text(json.dumps(workflow, indent=indent, ensure_ascii=False) + ending, encoding="utf-8")
        print(f"{path.name}: {len(workflow['nodes'])} nodes in {len(workflow['groups'])} stage groups")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
