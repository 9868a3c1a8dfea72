// The gallery and chart DOM elements of the ReNO nodes. No ComfyUI imports; every text goes in
// with textContent and every image URL is either a data:image URL or a /view route.
import { fmt } from "./reno_summary.js";
import {
  caption, hoverLines, iterationAtX, niceTicks, normalize, valueRange, xOfIteration,
} from "./reno_model.js";
import { KEY_HINT, PREFERRED, REJECTED, actionForKey, markView } from "./reno_preferences.js";

const STYLE_ID = "reno-views-style";
const CSS = `
.reno-view { box-sizing: border-box; font: 11px sans-serif; color: #ddd; overflow: hidden; }
.reno-gallery { display: flex; flex-direction: column; gap: 3px; }
.reno-gallery-frame { position: relative; flex: 1 1 auto; min-height: 0; display: flex; align-items: center;
  justify-content: center; background: #111; border-radius: 4px; overflow: hidden; box-sizing: border-box;
  border: 2px solid transparent; }
.reno-gallery[data-mark="preferred"] .reno-gallery-frame { border-color: #66bb6a; }
.reno-gallery[data-mark="rejected"] .reno-gallery-frame { border-color: #ef5350; }
.reno-mark-badge { position: absolute; top: 4px; left: 4px; padding: 1px 6px; border-radius: 3px; font-weight: bold;
  pointer-events: none; background: rgba(0,0,0,0.7); }
.reno-mark-badge:empty { display: none; }
.reno-gallery[data-mark="preferred"] .reno-mark-badge { color: #a5d6a7; }
.reno-gallery[data-mark="rejected"] .reno-mark-badge { color: #ef9a9a; }
.reno-gallery[data-mark-error="true"] .reno-mark-badge { color: #ffcc80; }
.reno-gallery-controls button.reno-mark-preferred.active { background: #2e7d32; border-color: #66bb6a; }
.reno-gallery-controls button.reno-mark-rejected.active { background: #c62828; border-color: #ef5350; }
.reno-gallery-frame img { width: 100%; height: 100%; object-fit: contain; }
.reno-gallery-empty { color: #888; font-style: italic; }
.reno-gallery-controls { display: flex; align-items: center; gap: 4px; flex: 0 0 auto; }
.reno-gallery-controls button { background: #333; color: #eee; border: 1px solid #555; border-radius: 3px;
  padding: 0 6px; height: 20px; cursor: pointer; font-size: 11px; }
.reno-gallery-track { position: relative; flex: 1 1 auto; height: 20px; }
.reno-gallery-track input { position: absolute; left: 0; right: 0; top: 2px; width: 100%; margin: 0; }
.reno-gallery-best { position: absolute; top: -3px; width: 0; height: 0; border-left: 5px solid transparent;
  border-right: 5px solid transparent; border-top: 7px solid #ffd54f; transform: translateX(-5px); pointer-events: none; }
.reno-caption { flex: 0 0 auto; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; color: #cfd8dc; }
.reno-summary { flex: 0 0 auto; overflow-y: auto; color: #9fd3a0; font-size: 12px; line-height: 15px; }
.reno-summary div { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.reno-chart { display: flex; flex-direction: column; gap: 2px; }
.reno-chart canvas { flex: 1 1 auto; min-height: 0; width: 100%; background: #161616; border-radius: 4px; cursor: crosshair; }
`;

export const COLORS = ["#4fc3f7", "#ffb74d", "#ba68c8", "#81c784", "#f06292", "#e0e0a0"];
export const TOTAL_COLOR = "#ffffff";
export const BEST_COLOR = "#ffd54f";
/** Height of one summary line under the gallery (CSS px; .reno-summary's line-height). */
export const SUMMARY_LINE = 15;

function installStyle() {
  if (typeof document === "undefined" || document.getElementById(STYLE_ID)) return;
  const style = document.createElement("style");
  style.id = STYLE_ID;
  style.textContent = CSS;
  document.head.appendChild(style);
}

/**
 * Give a widget's root a fixed height. Nodes 2.0 lays DOM widgets out in a flex column whose items grow with their
 * content (flex: 1, basis 0: a height alone is ignored), so the node would grow when the first image arrives.
 */
export function fixHeight(element, px) {
  const h = `${Math.max(0, Math.round(px))}px`;
  Object.assign(element.style, { flex: "0 0 auto", height: h, minHeight: h, maxHeight: h });
}

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

// Keep the canvas from seeing pointer/wheel events that belong to our controls.
function isolate(element) {
  for (const type of ["pointerdown", "mousedown", "wheel", "keydown"]) {
    element.addEventListener(type, (e) => e.stopPropagation());
  }
}

// The gallery under the pointer (or focused) gets the mark keys; one listener for the whole page, in the capture
// phase so that the canvas never sees a key we handle (Backspace would delete the selected node).
let hoveredGallery = null;
let keysInstalled = false;

function editable(target) {
  const tag = target?.tagName;
  return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || Boolean(target?.isContentEditable);
}

function installMarkKeys() {
  if (keysInstalled || typeof window === "undefined") return;
  keysInstalled = true;
  window.addEventListener("keydown", (e) => {
    const g = hoveredGallery;
    if (!g || !g.marking || editable(e.target) || e.repeat) return;
    const action = actionForKey(e.key, { ctrl: e.ctrlKey, meta: e.metaKey, alt: e.altKey });
    if (!action || !g.canMark()) return;
    e.preventDefault();
    e.stopImmediatePropagation();
    g.markCurrent(action, false);
  }, true);
}

/** Scrubbable gallery: image, play/pause, slider with the best iteration marked, caption, preference marks. */
export class GalleryView {
  constructor({ imageHeight = 256, fps = 4, summaryRows = 0 } = {}) {
    installStyle();
    this.frames = [];
    this.iterations = 0;
    this.best = null;
    this.index = -1;
    this.follow = true; // live: show the newest frame until the user scrubs
    this.timer = null;
    this.fps = fps;
    this.imageHeight = imageHeight;
    this.summaryRows = Math.max(0, Number(summaryRows) || 0); // room kept for the run's summary lines

    this.root = el("div", "reno-view reno-gallery");
    this.root.dataset.renoWidget = "gallery";
    this.frame = el("div", "reno-gallery-frame");
    this.img = el("img");
    this.img.alt = "ReNO iteration";
    this.img.draggable = false;
    this.placeholder = el("span", "reno-gallery-empty", "no iterations yet: the images appear here as it runs");
    this.badge = el("span", "reno-mark-badge", "");
    this.frame.append(this.placeholder, this.badge);
    this.marking = null; // {entry(frame), mark(frame, action, toggle), blocked(frame) -> why not, "" when it can}

    const controls = el("div", "reno-gallery-controls");
    this.playButton = el("button", "reno-play", "▶");
    this.playButton.title = "Play / pause";
    this.playButton.addEventListener("click", () => (this.timer ? this.pause() : this.play()));
    this.bestButton = el("button", "reno-best", "★");
    this.bestButton.title = "Show the best iteration";
    this.bestButton.addEventListener("click", () => {
      this.pause();
      this.follow = false;
      this.showIteration(this.best);
    });
    const track = el("div", "reno-gallery-track");
    this.slider = el("input");
    this.slider.type = "range";
    this.slider.min = "0";
    this.slider.max = "0";
    this.slider.step = "1";
    this.slider.value = "0";
    this.slider.addEventListener("input", () => {
      this.pause();
      this.show(Number(this.slider.value));
      this.follow = this.index === this.frames.length - 1;
    });
    this.bestMark = el("div", "reno-gallery-best");
    this.bestMark.title = "best iteration";
    track.append(this.slider, this.bestMark);
    this.preferButton = el("button", "reno-mark-preferred", "✓");
    this.rejectButton = el("button", "reno-mark-rejected", "✕");
    this.preferButton.addEventListener("click", () => this.markCurrent(PREFERRED, true));
    this.rejectButton.addEventListener("click", () => this.markCurrent(REJECTED, true));
    this.markButtons = el("span", "reno-mark-buttons");
    this.markButtons.style.display = "none";
    this.markButtons.append(this.preferButton, this.rejectButton);
    controls.append(this.playButton, track, this.bestButton, this.markButtons);
    this.captionEl = el("div", "reno-caption", "");
    this.summaryEl = el("div", "reno-summary");
    this.summaryEl.style.height = `${this.summaryRows * SUMMARY_LINE}px`;
    if (!this.summaryRows) this.summaryEl.style.display = "none";
    this.root.append(this.frame, controls, this.captionEl, this.summaryEl);
    fixHeight(this.root, this.preferredHeight()); // the same before, during and after a run
    isolate(controls);
    this.root.tabIndex = -1; // focusable by a click, so the keys also work on the gallery last clicked
    const enter = () => {
      hoveredGallery = this;
    };
    const leave = () => {
      if (hoveredGallery === this && document.activeElement !== this.root) hoveredGallery = null;
    };
    this.root.addEventListener("pointerenter", enter);
    this.root.addEventListener("pointerleave", leave);
    this.root.addEventListener("focus", enter);
    this.root.addEventListener("blur", leave);
    this.update();
  }

  /** Let the artist mark the frames (see reno_preferences.js); null turns the marks off. */
  setMarking(marking) {
    this.marking = marking ?? null;
    if (this.marking) installMarkKeys();
    this.update();
  }

  current() {
    return this.frames.length && this.index >= 0 ? this.frames[this.index] : null;
  }

  canMark() {
    const f = this.current();
    return Boolean(this.marking && f && !this.marking.blocked(f));
  }

  /** Mark the frame shown: `action` preferred / rejected / clear; `toggle` (a button) clears an active mark. */
  markCurrent(action, toggle = false) {
    const f = this.current();
    if (!this.canMark()) return;
    this.marking.mark(f, action, toggle);
  }

  /** Height the node gives the widget (CSS px): the same before, during and after a run (the node never grows). */
  preferredHeight() {
    return this.imageHeight + 56 + this.summaryRows * SUMMARY_LINE;
  }

  /** The run's summary lines (text only) under the caption; more lines than the room kept scroll. */
  setSummary(lines) {
    const list = Array.isArray(lines) ? lines.map(String) : [];
    this.summaryEl.replaceChildren(...list.map((line) => el("div", "", line)));
    this.summaryEl.title = list.join("\n");
    this.root.dataset.summary = String(list.length);
  }

  setImageHeight(px) {
    this.imageHeight = Math.max(64, Number(px) || 256);
    fixHeight(this.root, this.preferredHeight());
  }

  /** frames: [{iteration, total, src}] in iteration order; `live` keeps following the newest one. */
  setFrames(frames, { iterations, best, live = false } = {}) {
    const had = this.frames.length;
    this.frames = Array.isArray(frames) ? frames : [];
    this.iterations = Math.max(iterations || 0, this.frames.length);
    this.best = Number.isInteger(best) ? best : null;
    if (!this.frames.length) {
      this.index = -1;
      this.follow = true;
      this.pause();
    } else if (live ? this.follow : had === 0 || this.index < 0 || this.index >= this.frames.length) {
      this.index = live ? this.frames.length - 1 : this.bestIndex() ?? this.frames.length - 1;
    }
    this.update();
  }

  bestIndex() {
    const k = this.frames.findIndex((f) => f.iteration === this.best);
    return k >= 0 ? k : null;
  }

  show(index) {
    if (!this.frames.length) return;
    this.index = Math.min(this.frames.length - 1, Math.max(0, Math.round(index)));
    this.update();
  }

  showIteration(iteration) {
    const k = this.frames.findIndex((f) => f.iteration === iteration);
    if (k >= 0) this.show(k);
  }

  play() {
    if (this.timer || this.frames.length < 2) return;
    this.follow = false;
    if (this.index >= this.frames.length - 1) this.index = -1;
    this.timer = setInterval(() => this.show((this.index + 1) % this.frames.length), 1000 / this.fps);
    this.playButton.textContent = "❚❚";
    this.root.dataset.playing = "true";
  }

  pause() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.playButton.textContent = "▶";
    this.root.dataset.playing = "false";
  }

  destroy() {
    this.pause();
    if (hoveredGallery === this) hoveredGallery = null;
  }

  updateMarks(frame) {
    const m = this.marking;
    this.markButtons.style.display = m ? "" : "none";
    if (!m) {
      this.badge.textContent = "";
      for (const key of ["mark", "markError", "markPending"]) this.root.dataset[key] = "";
      return;
    }
    const why = frame ? m.blocked(frame) : "No image to mark yet";
    const entry = frame && !why ? m.entry(frame) : undefined;
    const view = markView(entry, { enabled: !why, reason: why });
    this.badge.textContent = view.badge;
    this.root.dataset.mark = view.state;
    this.root.dataset.markError = view.error ?? "";
    this.root.dataset.markPending = entry?.pending ? "true" : "";
    for (const [button, mark, label] of [[this.preferButton, PREFERRED, "preferred"], [this.rejectButton, REJECTED,
      "rejected"]]) {
      button.disabled = Boolean(why) || Boolean(entry?.pending);
      button.classList.toggle("active", view.state === mark);
      button.title = why ? view.title : `Mark ${label}, a second click clears (keys: ${KEY_HINT}). ${view.title}`;
    }
    this.frame.title = view.title;
  }

  update() {
    const n = this.frames.length;
    const frame = n ? this.frames[this.index] : null;
    if (frame) {
      if (this.img.getAttribute("src") !== frame.src) this.img.src = frame.src;
      if (this.placeholder.parentNode) this.placeholder.replaceWith(this.img);
    } else if (this.img.parentNode) {
      this.img.replaceWith(this.placeholder);
    }
    this.slider.max = String(Math.max(0, n - 1));
    this.slider.value = String(Math.max(0, this.index));
    this.slider.disabled = n < 2;
    this.playButton.disabled = n < 2;
    const bi = this.bestIndex();
    this.bestButton.disabled = bi === null;
    this.bestMark.style.display = bi === null ? "none" : "";
    if (bi !== null) this.bestMark.style.left = `${n > 1 ? (100 * bi) / (n - 1) : 50}%`;
    this.captionEl.textContent = frame ? caption(frame, this.iterations, this.best) : "";
    this.root.dataset.frames = String(n);
    this.root.dataset.iteration = frame ? String(frame.iteration) : "";
    this.root.dataset.best = this.best === null ? "" : String(this.best);
    this.updateMarks(frame);
  }
}

/** Canvas chart: each reward and the weighted total over the iterations, best marked, hover values. */
export class ChartView {
  constructor({ height = 180 } = {}) {
    installStyle();
    this.model = null;
    this.hover = null;
    this.height = height;
    this.root = el("div", "reno-view reno-chart");
    this.root.dataset.renoWidget = "chart";
    fixHeight(this.root, height);
    this.canvas = el("canvas");
    this.readout = el("div", "reno-caption", "");
    this.root.append(this.canvas, this.readout);
    isolate(this.root);
    this.canvas.addEventListener("pointermove", (e) => this.onPointer(e));
    this.canvas.addEventListener("pointerleave", () => this.setHover(null));
    if (typeof ResizeObserver !== "undefined") {
      this.resizeObserver = new ResizeObserver(() => this.draw());
      this.resizeObserver.observe(this.canvas);
    }
    this.update();
  }

  preferredHeight() {
    return this.height;
  }

  setModel(model) {
    this.model = model ?? null;
    if (this.hover !== null && (!this.model || this.hover >= this.model.iterations)) this.hover = null;
    this.update();
  }

  setHover(i) {
    if (i === this.hover) return;
    this.hover = i;
    this.update();
  }

  onPointer(e) {
    if (!this.model || !this.layout) return;
    const rect = this.canvas.getBoundingClientRect();
    const scale = rect.width ? this.canvas.clientWidth / rect.width : 1; // the legacy frontend scales the element
    const x = (e.clientX - rect.left) * scale;
    const { left, width } = this.layout;
    this.setHover(iterationAtX(x, left, width, this.model.iterations));
  }

  destroy() {
    this.resizeObserver?.disconnect();
  }

  update() {
    const m = this.model;
    let text = "";
    if (m && this.hover !== null) {
      text = hoverLines(m, this.hover).join(" · ");
    } else if (m) {
      const last = m.total.reduce((k, v, i) => (v === null ? k : i), -1);
      const first = m.total.findIndex((v) => v !== null);
      const parts = [`weighted total ${fmt(m.total[first])} → ${fmt(m.total[last])}`];
      if (m.best !== null) parts.push(`best iteration ${m.best} (${fmt(m.total[m.best])})`);
      if (m.stopReason) parts.push(`stopped: ${m.stopReason}`);
      text = parts.join(" · ");
    }
    this.readout.textContent = text || "no scores yet";
    this.root.dataset.iterations = m ? String(m.iterations) : "0";
    this.root.dataset.points = m ? String(m.total.filter((v) => v !== null).length) : "0";
    this.root.dataset.best = m?.best === null || m?.best === undefined ? "" : String(m.best);
    this.root.dataset.hover = this.hover === null ? "" : String(this.hover);
    this.draw();
  }

  draw() {
    const c = this.canvas;
    const w = c.clientWidth;
    const h = c.clientHeight;
    if (!w || !h) return;
    const dpr = (typeof window !== "undefined" && window.devicePixelRatio) || 1;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(h * dpr);
    }
    const ctx = c.getContext("2d");
    if (!ctx) return;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.font = "10px sans-serif";
    const m = this.model;
    if (!m) {
      ctx.fillStyle = "#777";
      ctx.textAlign = "center";
      ctx.fillText("the chart fills in while ReNO runs", w / 2, h / 2);
      return;
    }

    // Legend rows (wrapped) at the bottom: total first, then each reward with its range.
    const entries = [{ color: TOTAL_COLOR, text: "weighted total", bold: true }];
    const ranges = m.rewards.map((r) => valueRange(r.values));
    m.rewards.forEach((r, k) => {
      const rg = ranges[k];
      const span = rg ? ` ${fmt(rg[0])}…${fmt(rg[1])}` : "";
      entries.push({ color: COLORS[k % COLORS.length], text: `${r.label} ×${fmt(r.weight)}${span}` });
    });
    const rows = [[]];
    let x = 6;
    for (const e of entries) {
      const ew = 14 + ctx.measureText(e.text).width + 10;
      if (x + ew > w - 4 && rows[rows.length - 1].length) {
        rows.push([]);
        x = 6;
      }
      rows[rows.length - 1].push({ ...e, x });
      x += ew;
    }
    const legendH = rows.length * 13 + 2;

    const totalRange = valueRange(m.total);
    const ticks = totalRange ? niceTicks(totalRange[0], totalRange[1], 3) : [];
    const yr = totalRange && ticks.length
      ? [Math.min(totalRange[0], ticks[0]), Math.max(totalRange[1], ticks[ticks.length - 1])]
      : totalRange;
    const tickW = Math.max(0, ...ticks.map((t) => ctx.measureText(fmt(t)).width));
    const left = Math.ceil(tickW) + 10;
    const right = 10;
    const top = 8;
    const bottom = 14 + legendH;
    const width = Math.max(10, w - left - right);
    const height = Math.max(10, h - top - bottom);
    this.layout = { left, width, top, height };
    const n = m.iterations;
    const X = (i) => xOfIteration(i, left, width, n);
    const Y = (t) => top + height * (1 - t);

    // Grid and y ticks (the weighted total's own values; each reward is scaled to its own range).
    ctx.strokeStyle = "#2c2c2c";
    ctx.lineWidth = 1;
    ctx.fillStyle = "#999";
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const t of ticks) {
      const y = Y(normalize(t, yr));
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(left + width, y);
      ctx.stroke();
      ctx.fillText(fmt(t), left - 4, y);
    }
    // x ticks
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const xticks = niceTicks(0, n - 1, Math.max(1, Math.min(8, Math.floor(width / 40)))).filter(
      (t) => Number.isInteger(t),
    );
    for (const t of xticks) ctx.fillText(String(t), X(t), top + height + 2);

    // Best iteration.
    if (m.best !== null && m.best < n) {
      const bx = X(m.best);
      ctx.save();
      ctx.strokeStyle = BEST_COLOR;
      ctx.setLineDash([3, 3]);
      ctx.beginPath();
      ctx.moveTo(bx, top);
      ctx.lineTo(bx, top + height);
      ctx.stroke();
      ctx.restore();
      ctx.fillStyle = BEST_COLOR;
      ctx.textAlign = bx > left + width - 20 ? "right" : "left";
      ctx.textBaseline = "top";
      ctx.fillText("★ best", bx + (ctx.textAlign === "right" ? -3 : 3), top);
    }

    const line = (values, range, color, lw) => {
      ctx.strokeStyle = color;
      ctx.fillStyle = color;
      ctx.lineWidth = lw;
      ctx.beginPath();
      let open = false;
      values.forEach((v, i) => {
        const t = normalize(v, range);
        if (t === null) {
          open = false;
          return;
        }
        if (open) ctx.lineTo(X(i), Y(t));
        else ctx.moveTo(X(i), Y(t));
        open = true;
      });
      ctx.stroke();
      values.forEach((v, i) => {
        const t = normalize(v, range);
        if (t === null) return;
        ctx.beginPath();
        ctx.arc(X(i), Y(t), lw + 0.5, 0, 2 * Math.PI);
        ctx.fill();
      });
    };
    m.rewards.forEach((r, k) => line(r.values, ranges[k], COLORS[k % COLORS.length], 1.25));
    line(m.total, yr, TOTAL_COLOR, 2);

    // Hover.
    if (this.hover !== null && this.hover < n) {
      const hx = X(this.hover);
      ctx.strokeStyle = "rgba(255,255,255,0.45)";
      ctx.lineWidth = 1;
      ctx.beginPath();
      ctx.moveTo(hx, top);
      ctx.lineTo(hx, top + height);
      ctx.stroke();
      const lines = hoverLines(m, this.hover);
      const bw = Math.max(...lines.map((s) => ctx.measureText(s).width)) + 10;
      const bh = lines.length * 12 + 6;
      const bx = hx + 8 + bw > left + width ? hx - 8 - bw : hx + 8;
      ctx.fillStyle = "rgba(20,20,20,0.9)";
      ctx.fillRect(bx, top + 2, bw, bh);
      ctx.strokeStyle = "#555";
      ctx.strokeRect(bx, top + 2, bw, bh);
      ctx.textAlign = "left";
      ctx.textBaseline = "top";
      lines.forEach((s, k) => {
        ctx.fillStyle = k === 1 ? TOTAL_COLOR : k >= 2 ? COLORS[(k - 2) % COLORS.length] : "#ccc";
        ctx.fillText(s, bx + 5, top + 5 + 12 * k);
      });
    }

    // Legend.
    ctx.textBaseline = "middle";
    ctx.textAlign = "left";
    rows.forEach((row, r) => {
      const y = h - legendH + 6 + 13 * r;
      for (const e of row) {
        ctx.fillStyle = e.color;
        ctx.fillRect(e.x, y - 1, 10, e.bold ? 3 : 2);
        ctx.fillStyle = "#bbb";
        ctx.fillText(e.text, e.x + 14, y);
      }
    });
  }
}
