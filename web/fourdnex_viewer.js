// In-node 4D point-cloud viewer for "4DNeX Point Cloud Preview".
// The node writes a small binary file (fourdnex_core.geometry.export_viewer.write_viewer_points) into ComfyUI's
// temp folder and names it in its "fourdnex_points" UI output; this extension fetches it through
// /view and shows it with three.js (bundled in ./lib, no network): orbit controls, a frame slider,
// play/pause, point size and a point budget. Without WebGL it falls back to a 2D canvas.
// "add view" stores the current camera as a keyframe in the node's camera_keyframes widget (saved with the
// workflow; 4DNeX Render Novel View follows them): JSON read by fourdnex_core/geometry/keyframes.py, in the scene's
// OpenCV axes. The points are drawn with y and z negated (F = diag(1, -1, -1)); three's camera looks down -z with
// y up, so its matrixWorld M is the OpenCV camera-to-world F M F.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import * as THREE from "./lib/three-points.min.js";

const NODE_TYPE = "FourDNeXPointCloudPreview";
const MAGIC = "4DNXPTS1";
const KEYFRAMES_WIDGET = "camera_keyframes";
const CONVENTION = "opencv-cam2world";
const FLIP = [1, -1, -1, 1];  // F = diag(1, -1, -1, 1): OpenCV <-> three axes

// The stored keyframes: [] for an empty widget, null for text that is not a keyframe list (hand-edited).
function readKeyframes(text) {
  if (!text || !text.trim()) return [];
  try {
    const list = JSON.parse(text).keyframes;
    return Array.isArray(list) ? list : null;
  } catch { return null; }
}

function keyframesText(list) {
  return list.length ? JSON.stringify({ convention: CONVENTION, keyframes: list }) : "";
}

function parsePoints(buffer) {
  const bytes = new Uint8Array(buffer);
  if (new TextDecoder().decode(bytes.subarray(0, 8)) !== MAGIC) throw new Error("not a 4DNeX viewer file");
  const headerLength = new DataView(buffer).getUint32(8, true);
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(12, 12 + headerLength)));
  const start = 12 + headerLength;
  const frames = header.frames.map(({ count, offset }) => {
    const positions = new Float32Array(buffer, start + offset, count * 3).slice();
    for (let i = 0; i < positions.length; i += 3) { positions[i + 1] *= -1; positions[i + 2] *= -1; } // OpenCV -> three
    const colors = new Uint8Array(buffer, start + offset + count * 12, count * 3);
    return { count, positions, colors: Float32Array.from(colors, (c) => c / 255) };
  });
  return { header, frames };
}

function webglAvailable() {
  try {
    const canvas = document.createElement("canvas");
    return !!(canvas.getContext("webgl2") || canvas.getContext("webgl"));
  } catch { return false; }
}

function control(label, input) {
  const wrap = document.createElement("label");
  wrap.style.cssText = "display:flex;align-items:center;gap:4px;font:11px sans-serif;color:#ddd;white-space:nowrap";
  wrap.append(label, input);
  return wrap;
}

function slider(min, max, step, value) {
  const input = document.createElement("input");
  Object.assign(input, { type: "range", min, max, step, value });
  input.style.cssText = "flex:1;min-width:40px";
  return input;
}

class PointViewer {
  constructor() {
    this.root = document.createElement("div");
    this.root.style.cssText = "display:flex;flex-direction:column;width:100%;height:100%;background:#111;border-radius:4px;overflow:hidden";
    this.view = document.createElement("div");
    this.view.style.cssText = "position:relative;flex:1;min-height:120px";
    this.status = document.createElement("div");
    this.status.style.cssText = "position:absolute;left:6px;top:4px;font:11px sans-serif;color:#aaa;pointer-events:none";
    this.status.textContent = "Run the workflow to see the 4D point cloud.";
    this.view.append(this.status);
    const bar = document.createElement("div");
    bar.style.cssText = "display:flex;flex-wrap:wrap;gap:6px;padding:4px;align-items:center;background:#1b1b1b";
    this.play = document.createElement("button");
    this.play.textContent = "❚❚";
    this.play.title = "play / pause";
    this.play.style.cssText = "width:28px";
    this.frame = slider(0, 0, 1, 0);
    this.frameLabel = document.createElement("span");
    this.frameLabel.style.cssText = "font:11px monospace;color:#ddd;min-width:52px";
    this.size = slider(0.5, 10, 0.5, 2);
    this.budget = slider(1, 100, 1, 100);
    this.addView = document.createElement("button");
    this.addView.textContent = "add view";
    this.addView.title = "store this camera as a keyframe for 4DNeX Render Novel View (viewer-path / viewer-view)";
    this.clearViews = document.createElement("button");
    this.clearViews.textContent = "clear views";
    this.viewsLabel = document.createElement("span");
    this.viewsLabel.style.cssText = "font:11px monospace;color:#ddd";
    this.onAddView = null; this.onClearViews = null;
    this.addView.onclick = () => this.onAddView?.(this.keyframe());
    this.clearViews.onclick = () => this.onClearViews?.();
    bar.append(this.play, control("frame", this.frame), this.frameLabel, control("size", this.size),
      control("points %", this.budget), this.addView, this.clearViews, this.viewsLabel);
    this.setViewCount(0);
    this.root.append(this.view, bar);

    this.data = null; this.index = 0; this.playing = true; this.last = 0; this.fps = 24;
    this.scene = new THREE.Scene();
    this.scene.background = new THREE.Color(0x111111);
    this.camera = new THREE.PerspectiveCamera(50, 1, 0.001, 1000);
    this.webgl = webglAvailable();
    if (this.webgl) {
      this.renderer = new THREE.WebGLRenderer({ antialias: false, preserveDrawingBuffer: true });
      this.canvas = this.renderer.domElement;
    } else {
      this.canvas = document.createElement("canvas");
    }
    this.canvas.style.cssText = "width:100%;height:100%;display:block";
    this.view.prepend(this.canvas);
    this.controls = new THREE.OrbitControls(this.camera, this.canvas);
    this.material = new THREE.PointsMaterial({ size: 2, sizeAttenuation: false, vertexColors: true });
    this.points = new THREE.Points(new THREE.BufferGeometry(), this.material);
    this.scene.add(this.points);

    this.play.onclick = () => { this.playing = !this.playing; this.play.textContent = this.playing ? "❚❚" : "▶"; };
    this.frame.oninput = () => { this.playing = false; this.play.textContent = "▶"; this.show(+this.frame.value); };
    this.size.oninput = () => { this.material.size = +this.size.value; };
    this.budget.oninput = () => this.show(this.index);
    const tick = (time) => { this.animate(time); this.raf = requestAnimationFrame(tick); };
    this.raf = requestAnimationFrame(tick);
  }

  async load(info) {
    this.status.textContent = "loading points…";
    const params = new URLSearchParams({ filename: info.filename, subfolder: info.subfolder, type: info.type });
    const response = await fetch(api.apiURL(`/view?${params}`));
    if (!response.ok) throw new Error(`GET /view: ${response.status}`);
    this.data = parsePoints(await response.arrayBuffer());
    this.fps = info.fps || this.data.header.fps || 24;
    this.size.value = info.point_size || 2;
    this.material.size = +this.size.value;
    this.frame.max = String(this.data.frames.length - 1);
    const [cx, cy, cz] = this.data.header.center;
    const target = new THREE.Vector3(cx, -cy, -cz);
    const radius = this.data.header.radius || 1;
    const sameScene = this.sceneKey === JSON.stringify([this.data.header.center, radius]);
    this.sceneKey = JSON.stringify([this.data.header.center, radius]);
    if (!sameScene) {  // a re-run of the same scene (e.g. after "add view") keeps the camera where it was
      this.camera.near = radius / 1000; this.camera.far = radius * 100;
      this.camera.position.set(target.x, target.y, target.z + radius * 1.8);
      this.controls.target.copy(target);
      this.controls.update();
    }
    this.show(0);
  }

  show(index) {
    if (!this.data) return;
    this.index = index;
    const frame = this.data.frames[index];
    const stride = Math.max(1, Math.round(100 / +this.budget.value));
    const count = Math.ceil(frame.count / stride);
    const positions = stride === 1 ? frame.positions : new Float32Array(count * 3);
    const colors = stride === 1 ? frame.colors : new Float32Array(count * 3);
    if (stride !== 1) {
      for (let i = 0, j = 0; i < frame.count; i += stride, j += 3) {
        positions.set(frame.positions.subarray(i * 3, i * 3 + 3), j);
        colors.set(frame.colors.subarray(i * 3, i * 3 + 3), j);
      }
    }
    const geometry = new THREE.BufferGeometry();
    geometry.setAttribute("position", new THREE.BufferAttribute(positions, 3));
    geometry.setAttribute("color", new THREE.BufferAttribute(colors, 3));
    this.points.geometry.dispose();
    this.points.geometry = geometry;
    this.frame.value = String(index);
    this.frameLabel.textContent = `${index + 1}/${this.data.frames.length}`;
    this.status.textContent = `${count.toLocaleString()} points${this.webgl ? "" : " (2D fallback: no WebGL)"}`;
  }

  keyframe() {  // the camera shown, in the scene's OpenCV axes (see the top of this file)
    this.camera.updateMatrixWorld();
    const e = this.camera.matrixWorld.elements;  // column-major
    const cam2world = [0, 1, 2, 3].map((r) => [0, 1, 2, 3].map((c) => FLIP[r] * FLIP[c] * e[c * 4 + r]));
    return { cam2world, fov_y_degrees: this.camera.fov, aspect: this.camera.aspect, frame: this.index };
  }

  setViewCount(count) {  // null: the stored text is unreadable, and 'clear views' is the way out
    this.viewsLabel.textContent = count === null ? "views unreadable: clear views"
      : `${count} view${count === 1 ? "" : "s"}`;
    this.clearViews.disabled = count === 0;
  }

  animate(time) {
    const { clientWidth: w, clientHeight: h } = this.view;
    if (!w || !h) return;
    if (this.data && this.playing && time - this.last > 1000 / this.fps) {
      this.last = time;
      this.show((this.index + 1) % this.data.frames.length);
    }
    this.camera.aspect = w / h;
    this.camera.updateProjectionMatrix();
    this.controls.update();
    if (this.webgl) {
      this.renderer.setSize(w, h, false);
      this.renderer.render(this.scene, this.camera);
    } else {
      this.draw2d(w, h);
    }
  }

  draw2d(w, h) {  // software fallback: project and splat each point
    this.canvas.width = w; this.canvas.height = h;
    const ctx = this.canvas.getContext("2d");
    ctx.fillStyle = "#111"; ctx.fillRect(0, 0, w, h);
    const geometry = this.points.geometry;
    const position = geometry.getAttribute("position");
    if (!position) return;
    const color = geometry.getAttribute("color");
    const v = new THREE.Vector3();
    const s = +this.size.value;
    for (let i = 0; i < position.count; i++) {
      v.fromBufferAttribute(position, i).project(this.camera);
      if (v.z < -1 || v.z > 1) continue;
      ctx.fillStyle = `rgb(${color.getX(i) * 255 | 0},${color.getY(i) * 255 | 0},${color.getZ(i) * 255 | 0})`;
      ctx.fillRect((v.x + 1) * w / 2 - s / 2, (1 - v.y) * h / 2 - s / 2, s, s);
    }
  }

  dispose() {
    cancelAnimationFrame(this.raf);
    this.controls.dispose();
    this.points.geometry.dispose();
    this.renderer?.dispose();
  }
}

app.registerExtension({
  name: "fourdnex.pointCloudViewer",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_TYPE) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      this.fourdnexViewer = new PointViewer();
      const widget = this.addDOMWidget("fourdnex_viewer", "fourdnex_viewer", this.fourdnexViewer.root,
        { serialize: false, hideOnZoom: false, getMinHeight: () => 320 });
      widget.serialize = false;  // not in the workflow's widgets_values either
      const keyframes = this.widgets?.find((w) => w.name === KEYFRAMES_WIDGET);
      if (keyframes) {  // shown as the viewer's "N views", edited by its buttons; its value is saved with the workflow
        keyframes.hidden = true;
        keyframes.computeSize = () => [0, -4];
        const viewer = this.fourdnexViewer;
        const store = (list) => {
          keyframes.value = keyframesText(list);
          keyframes.callback?.(keyframes.value);
          viewer.setViewCount(list.length);
          this.setDirtyCanvas?.(true, true);
        };
        viewer.onAddView = (keyframe) => store([...(readKeyframes(keyframes.value) ?? []), keyframe]);
        viewer.onClearViews = () => store([]);
        this.fourdnexKeyframes = keyframes;
      }
      this.setSize([Math.max(this.size[0], 420), Math.max(this.size[1], 560)]);
      return result;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const info = message?.fourdnex_points?.[0];
      if (info && this.fourdnexViewer) {
        this.fourdnexViewer.load(info).catch((error) => {
          this.fourdnexViewer.status.textContent = `viewer: ${error.message}`;
        });
      }
    };
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {  // a loaded workflow: count its stored keyframes
      const result = onConfigure?.apply(this, arguments);
      if (this.fourdnexKeyframes && this.fourdnexViewer) {
        this.fourdnexViewer.setViewCount(readKeyframes(this.fourdnexKeyframes.value)?.length ?? null);
      }
      return result;
    };
    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      this.fourdnexViewer?.dispose();
      return onRemoved?.apply(this, arguments);
    };
  },
});
