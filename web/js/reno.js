// ReNO for ComfyUI front end.
//
// * ReNO Sampler: a gallery of the iterations and a chart of the rewards that grow live from the
//   `reno.iteration` events, then the chart from the `reno_chart` UI output (kept after the run), and
//   the run's summary under the gallery.
// * ReNO Sampler (custom): the same live gallery and chart while SamplerCustomAdvanced runs it (the
//   events name this node). Its own node finishes before the run and has no UI output, so when the
//   run ends (another node executes, or the prompt ends) the views keep what the events said, and the
//   summary is made from them.
// * ReNO Iteration Preview: the gallery from its `images` UI output and the chart from `reno_chart`, and
//   the sampling chain of the run ("4 steps · euler · exact", from the chart's `chain`) under the gallery.
// * ReNO Score Images: a gallery of the scored images (from its `images` UI output), no chart.
// * Preference picks (reno_preferences.js): on ReNO Sampler, ReNO Iteration Preview and ReNO Score Images the
//   image the gallery shows can be marked preferred / rejected (✓ / ✕ buttons, or P/+, X/−, 0/Backspace with
//   the pointer over the gallery); each mark is a record in the user's dataset on the server (setting
//   ReNO.Preferences.Dataset), clearing it deletes the record. The UI outputs carry the images' /view
//   references (ReNO Sampler: `reno_images`) and the prompt (`reno_prompt`).
//
// * ReNO Load Reward: picking another reward moves a weight still at the previous reward's suggested
//   weight to the new reward's (reno_weights.js); loaded workflows keep their weights.
// * Workflow templates (reno_templates.js): the pack's list comes sorted by name, so "ReNO 01 ..." is first.
// * Reward downloads (reno_download.js): while ReNO Load Reward (or ReNO Train Preference Reward) downloads
//   missing reward files, a status line on that node says which file, bytes of its size, and how it ended
//   (from the `reno.download` events; ComfyUI's progress bar on the node shows the same bytes).
//
// The gallery and chart are made with the node (empty until it runs) at their full height, fixed (the image
// scales inside, the summary scrolls inside): a run never makes the node taller, so it never grows over the
// nodes below it. The core's own image preview of these nodes is off (our gallery shows the same images).
// A linked `prompt` leaves no blank row where the frontend hides a linked text box (1.58: one row, its input).
//
// Nothing from a workflow, a prompt or the server is inserted as HTML (DOM built with createElement and
// textContent), and the gallery/chart widgets are not serialized (nothing goes into widgets_values).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { DOWNLOAD_EVENT, DownloadStatus, STATUS_HEIGHT } from "./reno_download.js";
import { chainLine, summaryLines, trainingLines } from "./reno_summary.js";
import {
  CUSTOM_SAMPLER, PREVIEW, SAMPLER, SCORE, TRAINER, chartFromHistory, chartFromRun, finishRun, framesFromImages, framesFromRun, framesFromTraining,
  hasViews, reduceIteration, runEnded, showsLiveRun, startsNewRun, summaryOfRun, withImageRefs,
} from "./reno_model.js";
import {
  DATASET_SETTING, DEFAULT_DATASET, datasetName, deleteBody, imageKey, markBody, marksImages, nextMark, planChange,
  queuedMarks, relink, settle,
} from "./reno_preferences.js";
import { addSearchAliases } from "./reno_search.js";
import { renoSettings } from "./reno_settings.js";
import { installTemplateOrder, packFolder } from "./reno_templates.js";
import { ChartView, GalleryView } from "./reno_views.js";
import { LOADER, followingWeight } from "./reno_weights.js";

const EVENT = "reno.iteration";
const PREFERENCE_TRAINER = "ReNOTrainPreferenceReward";
const LINE_HEIGHT = 16;
const MIN_WIDTH = 340;
/** Summary lines each node's gallery keeps room for (more scroll inside it): best + chain; the chain; training. */
const SUMMARY_ROWS = { [SAMPLER]: 2, [CUSTOM_SAMPLER]: 2, [PREVIEW]: 1, [TRAINER]: 2, [SCORE]: 0 };

const SETTINGS = renoSettings(() => applySettings());

// The template browser lists our workflows ("ReNO 01 ...", "ReNO 02 ...") in file-system order: sort them (at import,
// before the browser is first opened).
try {
  installTemplateOrder(api, packFolder(import.meta.url));
} catch (e) {
  console.warn("ReNO: could not order the workflow templates", e);
}

/**
 * ReNO Sampler also sends each iteration's picture as ComfyUI's progress preview (for other clients). Nodes 2.0 shows
 * that preview under the node, below our gallery that already shows it, and the node grows with it during the run:
 * where a node with our views is drawn by Nodes 2.0, its previews are not passed on (the classic canvas never draws
 * them: onDrawBackground below).
 */
function installPreviewFilter() {
  const dispatch = api?.dispatchCustomEvent;
  if (typeof dispatch !== "function" || dispatch.renoFiltered) return;
  const filtered = function (type, detail) {
    if (type === "b_preview_with_metadata" && showsOwnPreview(detail)) return false;
    return dispatch.apply(this, arguments);
  };
  filtered.renoFiltered = true;
  api.dispatchCustomEvent = filtered;
}

function showsOwnPreview(detail) {
  for (const id of [detail?.displayNodeId, detail?.nodeId]) {
    const node = getNode(id);
    if (node?.renoViews && typeof document !== "undefined" && document.querySelector(`[data-node-id="${node.id}"]`)) {
      return true;
    }
  }
  return false;
}

try {
  installPreviewFilter();
} catch (e) {
  console.warn("ReNO: could not install the preview filter", e);
}

const liveNodes = new Set();
const customRuns = new Set(); // ReNO Sampler (custom) nodes whose run is still live
let executingId = null; // the node executing now (from the `executing` events)

function setting(id, fallback) {
  try {
    const v = app.extensionManager?.setting?.get?.(id);
    if (v !== undefined && v !== null) return v;
  } catch {
    // older frontend: fall through
  }
  try {
    const v = app.ui?.settings?.getSettingValue?.(id, fallback);
    if (v !== undefined && v !== null) return v;
  } catch {
    // no settings at all
  }
  return fallback;
}

function getNode(id) {
  if (id === null || id === undefined || !app.graph) return null;
  return app.graph.getNodeById?.(id) ?? app.graph.getNodeById?.(Number(id)) ?? null;
}

/** Grow the node so its widgets fit (never shrink what the user sized); a gallery node at least `minWidth` wide. */
function fit(node, minWidth = MIN_WIDTH) {
  try {
    const want = node.computeSize?.() ?? node.size;
    const size = [Math.max(node.size[0], want[0], minWidth), Math.max(node.size[1], want[1])];
    node.setSize?.(size);
  } catch (e) {
    console.warn("ReNO: could not resize node", e);
  }
  node.setDirtyCanvas?.(true, true);
}

function applySettings() {
  const imageHeight = Number(setting("ReNO.PreviewSize", 256)) || 256;
  const showChart = setting("ReNO.ShowChart", true) !== false;
  for (const node of liveNodes) {
    const v = node.renoViews;
    if (!v) continue;
    v.gallery.setImageHeight(imageHeight);
    if (v.chart) {
      v.showChart = showChart;
      v.chart.root.style.display = showChart ? "" : "none";
      if (showChart) v.chart.draw();
    }
    fit(node);
  }
}

function addWidget(node, name, view, heightOf) {
  const widget = node.addDOMWidget(name, name, view.root, {
    hideOnZoom: false,
    getValue: () => undefined,
    setValue: () => {},
    getMinHeight: heightOf,
    getMaxHeight: heightOf,
    getHeight: heightOf,
  });
  widget.serialize = false; // nothing of ours in widgets_values
  // ...nor in the API prompt (graphToPrompt skips widgets whose options say so). Set after creation:
  // passed to addDOMWidget, some frontends wrote "" into widgets_values for it.
  if (widget.options) widget.options.serialize = false;
  return widget;
}

/** The node's gallery and chart (`withChart`), created on first use; null where the frontend has no DOM widgets. */
function ensureViews(node, { withChart = true, type = typeOf(node) } = {}) {
  if (node.renoViews !== undefined) return node.renoViews;
  if (typeof node.addDOMWidget !== "function") {
    node.renoViews = null;
    console.info("ReNO: this ComfyUI frontend has no DOM widgets; the gallery and chart are not shown.");
    return null;
  }
  try {
    const gallery = new GalleryView({ imageHeight: Number(setting("ReNO.PreviewSize", 256)) || 256,
                                      summaryRows: SUMMARY_ROWS[type] ?? 0 });
    const chart = withChart ? new ChartView() : null;
    const v = { gallery, chart, showChart: setting("ReNO.ShowChart", true) !== false };
    v.galleryWidget = addWidget(node, "reno_gallery", gallery, () => gallery.preferredHeight());
    if (chart) {
      v.chartWidget = addWidget(node, "reno_chart", chart, () => (v.showChart ? chart.preferredHeight() : 0));
      chart.root.style.display = v.showChart ? "" : "none";
    }
    node.renoViews = v;
    liveNodes.add(node);
    fit(node);
    return v;
  } catch (e) {
    console.warn("ReNO: could not add the gallery/chart widgets", e);
    node.renoViews = null;
    return null;
  }
}

/** The download status line of `node`, created on the first `reno.download` event for it (never serialized). */
function ensureDownloadStatus(node) {
  if (node.renoDownload !== undefined) return node.renoDownload;
  node.renoDownload = null;
  if (typeof node.addDOMWidget !== "function") return null; // the progress bar still shows the bytes
  try {
    const view = new DownloadStatus();
    addWidget(node, "reno_download", view, () => STATUS_HEIGHT);
    node.renoDownload = view;
    fit(node, 0); // one line taller, never wider (the status line's text is cut to the node's width)
  } catch (e) {
    console.warn("ReNO: could not add the download status line", e);
  }
  return node.renoDownload;
}

function onDownload(detail) {
  const node = getNode(detail?.node ?? executingId);
  if (!node) return;
  ensureDownloadStatus(node)?.show(detail);
  node.setDirtyCanvas?.(true, true);
}

/** The 2024 frontend writes every widget's value into widgets_values: drop our trailing ones. */
function trimOwnWidgetValues(proto) {
  const onSerialize = proto.onSerialize;
  proto.onSerialize = function (o) {
    onSerialize?.apply(this, arguments);
    const widgets = this.widgets ?? [];
    let keep = widgets.length;
    while (keep > 0 && widgets[keep - 1]?.serialize === false && String(widgets[keep - 1].name).startsWith("reno_")) keep--;
    if (Array.isArray(o?.widgets_values) && o.widgets_values.length > keep) o.widgets_values.length = keep;
  };
}

const typeOf = (node) => node?.comfyClass ?? node?.type;

/** The run's summary lines: shown under the node's gallery (drawn under the node where there are no DOM widgets). */
function setSummary(node, lines) {
  node.renoSummaryLines = lines;
  node.renoViews?.gallery.setSummary(lines);
}

/**
 * Where the frontend hides a linked text box but keeps its height (1.58: the row is "suppressed by the connection",
 * nothing drawn in it), the linked `prompt` takes one widget row (its input dot) instead of a blank gap; an older
 * frontend shows the linked text greyed out and keeps its size. The node gives back the rows it no longer needs.
 */
function collapseLinkedPrompt(node) {
  const w = widgetNamed(node, "prompt");
  if (!w || w.renoCollapses || typeof w.computeLayoutSize !== "function" || !("connectionSuppressed" in w)) return;
  w.renoCollapses = true;
  const layoutSize = w.computeLayoutSize;
  const linked = () => node.inputs?.some((i) => i.widget?.name === "prompt" && i.link !== null && i.link !== undefined);
  w.computeLayoutSize = function () {
    if (!linked()) return layoutSize.apply(this, arguments);
    const row = (globalThis.LiteGraph?.NODE_WIDGET_HEIGHT ?? 20) + 4;
    return { minHeight: row, maxHeight: row, minWidth: 0 };
  };
  const onConnectionsChange = node.onConnectionsChange;
  node.onConnectionsChange = function (type, index) {
    const out = onConnectionsChange?.apply(this, arguments);
    if (this.inputs?.[index]?.widget?.name === "prompt") {
      try {
        const want = this.computeSize?.();
        if (want) this.setSize?.([this.size[0], want[1]]); // one row when linked, the text box when not
        this.setDirtyCanvas?.(true, true);
      } catch (e) {
        console.warn("ReNO: could not resize the node", e);
      }
    }
    return out;
  };
}
const widgetNamed = (node, name) => node?.widgets?.find((w) => w.name === name) ?? null;

/** ReNO Load Reward: the user picked another reward; move an untouched weight to the new reward's. */
function onRewardChanged(node, value) {
  const previous = node.renoReward;
  node.renoReward = value;
  if (node.renoConfiguring) return; // a workflow being loaded: its weights stay as saved
  const weight = widgetNamed(node, "weight");
  const next = weight ? followingWeight(previous, value, weight.value) : null;
  if (next === null) return;
  weight.value = next;
  weight.callback?.(next);
  node.setDirtyCanvas?.(true, true);
}

function followWeights(node) {
  const reward = widgetNamed(node, "reward");
  if (!reward || reward.renoFollows) return;
  reward.renoFollows = true;
  node.renoReward = reward.value;
  const callback = reward.callback;
  reward.callback = function (value) {
    const out = callback?.apply(this, arguments);
    try {
      onRewardChanged(node, reward.value ?? value);
    } catch (e) {
      console.warn("ReNO: could not update the weight", e);
    }
    return out;
  };
}

/** Weights follow the reward on user changes only: not while a saved workflow (or a paste, an undo) configures the node. */
function installWeightFollowing(nodeType) {
  const proto = nodeType.prototype;
  const configure = proto.configure;
  if (typeof configure === "function") {
    proto.configure = function () {
      this.renoConfiguring = true;
      try {
        return configure.apply(this, arguments);
      } finally {
        this.renoConfiguring = false;
        this.renoReward = widgetNamed(this, "reward")?.value;
      }
    };
  }
  const onNodeCreated = proto.onNodeCreated;
  proto.onNodeCreated = function () {
    const out = onNodeCreated?.apply(this, arguments);
    try {
      followWeights(this);
    } catch (e) {
      console.warn("ReNO: could not follow the reward weights", e);
    }
    return out;
  };
}

/** Redraw a node's gallery (its marks changed). */
function refreshMarks(node) {
  node.renoViews?.gallery.update();
  node.setDirtyCanvas?.(true, true);
}

/** Send the change a mark action asks for on `frame` of `node`, and show the answer. */
async function requestMark(node, frame, action, toggle) {
  const key = imageKey(frame.ref);
  const marks = node.renoMarks;
  const entry = marks.get(key);
  if (entry?.pending) return; // one request per image at a time
  const plan = planChange(entry, nextMark(entry?.mark, action, { toggle }));
  if (!plan) return;
  const dataset = plan.kind === "delete" ? entry.dataset : datasetName(setting(DATASET_SETTING, DEFAULT_DATASET));
  if (!dataset) {
    marks.set(key, { ...entry, pending: false, error: `the setting '${DATASET_SETTING}' is not a valid dataset name ` +
      "(letters, digits, - _ . ; up to 64 characters)" });
    refreshMarks(node);
    return;
  }
  marks.set(key, { ...entry, pending: true, error: null });
  refreshMarks(node);
  let response;
  try {
    const body = plan.kind === "mark"
      ? markBody({ ref: frame.ref, prompt: node.renoPrompt, mark: plan.mark, dataset, node: typeOf(node) })
      : deleteBody({ ids: plan.ids, dataset });
    const r = await api.fetchApi(`/reno/preferences/${plan.kind}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    let json = null;
    try {
      json = await r.json();
    } catch {
      // not JSON: the status says enough
    }
    response = { ok: r.ok, status: r.status, json };
  } catch (e) {
    response = { ok: false, status: 0, json: { error: String(e?.message ?? e) } };
  }
  const settled = { ...settle(entry, plan, response) };
  settled.dataset = settled.id ? (plan.kind === "mark" ? dataset : entry?.dataset) : null;
  marks.set(key, settled);
  if (!response.ok) console.warn(`ReNO: the preference mark was not saved: ${settled.error ?? response.status}`);
  // The same image shown by another gallery (the sampler's and the preview's are the same pictures): the server
  // replaced (a new mark) or deleted its record; show that there too.
  if (response.ok) {
    const ids = plan.kind === "mark" ? response.json?.replaced : response.json?.deleted;
    for (const other of liveNodes) {
      if (other.renoMarks && relink(other.renoMarks, ids, plan.kind === "mark" ? settled : null)) refreshMarks(other);
    }
  }
  refreshMarks(node);
}

/** The node's gallery takes marks on the frames that have a saved image (and a prompt). New images: no marks yet. */
function installMarking(node, prompt) {
  const v = node.renoViews;
  if (!v) return;
  node.renoPrompt = typeof prompt === "string" ? prompt : null;
  node.renoMarks = new Map();
  v.gallery.setMarking({
    entry: (f) => (f.ref ? node.renoMarks.get(imageKey(f.ref)) : undefined),
    blocked: (f) => {
      if (!f.ref) return "Marks are available when the run has ended (its images are saved then)";
      if (node.renoPrompt === null) return "No prompt came with these images: run the workflow again";
      return "";
    },
    mark: (f, action, toggle) => {
      requestMark(node, f, action, toggle).catch((e) => console.warn("ReNO: could not mark the image", e));
    },
  });
}

/**
 * During a live ReNO Sampler run the images are not saved yet: marks are queued per iteration, shown as such, and
 * sent when the run ends (`flushQueuedMarks`); a run that fails or is cancelled saves none of them.
 */
function installLiveMarking(node) {
  const v = node.renoViews;
  if (!v) return;
  node.renoQueued = new Map();
  node.renoMarks = new Map();
  v.gallery.setMarking({
    entry: (f) => (node.renoQueued.has(f.iteration) ? { mark: node.renoQueued.get(f.iteration), queued: true } : undefined),
    blocked: () => "",
    mark: (f, action, toggle) => {
      const next = nextMark(node.renoQueued.get(f.iteration), action, { toggle });
      if (next) node.renoQueued.set(f.iteration, next);
      else node.renoQueued.delete(f.iteration);
      refreshMarks(node);
    },
  });
}

/** Send the marks queued during the run, now that its frames have saved images. */
function flushQueuedMarks(node) {
  const queued = node.renoQueued;
  node.renoQueued = null;
  for (const { frame, mark } of queuedMarks(queued, node.renoViews?.gallery.frames)) {
    requestMark(node, frame, mark, false).catch((e) => console.warn("ReNO: could not mark the image", e));
  }
}

function onIteration(detail) {
  const node = getNode(detail?.node);
  const type = typeOf(node);
  if (!showsLiveRun(type)) return;
  const fresh = startsNewRun(node.renoRun, detail);
  if (fresh) setSummary(node, []);
  node.renoRun = reduceIteration(node.renoRun, detail, 0, executingId);
  if (type === CUSTOM_SAMPLER) customRuns.add(node);
  const v = ensureViews(node);
  if (!v) return;
  if (fresh) v.gallery.setFrames([]); // a new run: follow it from its first frame, even after a scrub
  if (type === SAMPLER && (fresh || !node.renoQueued)) installLiveMarking(node);
  const run = node.renoRun;
  const hadFrames = v.gallery.frames.length > 0;
  v.gallery.setFrames(framesFromRun(run), { iterations: run.iterations, best: run.best, live: true });
  v.chart.setModel(chartFromRun(run));
  if (!hadFrames && v.gallery.frames.length) fit(node); // (the size is fixed: this only repairs a node made smaller)
  node.setDirtyCanvas?.(true, true);
}

/** Ends the custom-sampler runs that are over now that `executing` runs (null: the prompt ended). */
function finishCustomRuns(executing) {
  for (const node of [...customRuns]) {
    if (!runEnded(node.renoRun, executing)) continue;
    customRuns.delete(node);
    const run = finishRun(node.renoRun);
    node.renoRun = run;
    setSummary(node, summaryLines(summaryOfRun(run)));
    const v = node.renoViews;
    if (v) {
      v.gallery.setFrames(framesFromRun(run), { iterations: run.iterations, best: run.best });
      v.chart.setModel(chartFromRun(run));
    }
    node.setDirtyCanvas?.(true, true);
  }
}

function onExecuting(detail) {
  const id = detail && typeof detail === "object" ? detail.node : detail;
  executingId = id ?? null;
  finishCustomRuns(executingId);
  const node = getNode(id);
  // Make the views before the first preview arrives, so the core's own preview image never shows.
  if (node && typeOf(node) === SAMPLER) ensureViews(node);
}

function onPromptBoundary() {
  executingId = null;
  finishCustomRuns(null);
}

app.registerExtension({
  name: "reno.summary",
  settings: SETTINGS,

  init() {
    // The 2024 frontend has no `settings` in extensions: register them the old way.
    if (!app.extensionManager && typeof app.ui?.settings?.addSetting === "function") {
      for (const s of SETTINGS) {
        try {
          app.ui.settings.addSetting(s);
        } catch (e) {
          console.warn(`ReNO: could not add setting ${s.id}`, e);
        }
      }
    }
  },

  // Servers before 0.33 send no search_aliases: add ours, so the node search finds "pickscore", "noise optimization"...
  addCustomNodeDefs(defs) {
    try {
      addSearchAliases(defs);
    } catch (e) {
      console.warn("ReNO: could not add the search aliases", e);
    }
  },

  setup() {
    api.addEventListener(EVENT, (e) => {
      try {
        onIteration(e?.detail);
      } catch (err) {
        console.warn("ReNO: could not show an iteration", err);
      }
    });
    api.addEventListener(DOWNLOAD_EVENT, (e) => {
      try {
        onDownload(e?.detail);
      } catch (err) {
        console.warn("ReNO: could not show a download", err);
      }
    });
    api.addEventListener("executing", (e) => {
      try {
        onExecuting(e?.detail);
      } catch (err) {
        console.warn("ReNO: executing handler failed", err);
      }
    });
    for (const type of ["execution_start", "execution_success", "execution_error", "execution_interrupted"]) {
      api.addEventListener(type, () => {
        try {
          onPromptBoundary();
        } catch (err) {
          console.warn(`ReNO: ${type} handler failed`, err);
        }
      });
    }
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    const name = nodeData?.name;
    if (name === LOADER || name === PREFERENCE_TRAINER) trimOwnWidgetValues(nodeType.prototype); // download status
    if (name === LOADER) {
      installWeightFollowing(nodeType);
      return;
    }
    if (!hasViews(name) && !marksImages(name)) return;
    const proto = nodeType.prototype;

    const onExecuted = proto.onExecuted;
    proto.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      try {
        const model = chartFromHistory(output?.reno_chart?.[0]);
        if (name === SAMPLER) {
          setSummary(this, summaryLines(output?.reno_summary?.[0]));
          const v = model ? ensureViews(this) : this.renoViews;
          if (v && model) {
            v.chart.setModel(model);
            const run = this.renoRun;
            const frames = framesFromRun(run).map((f) => ({ ...f, total: model.total[f.iteration] ?? f.total }));
            v.gallery.setFrames(withImageRefs(frames, output?.reno_images), { iterations: model.iterations, best: model.best });
            const queued = this.renoQueued;
            installMarking(this, output?.reno_prompt?.[0]);
            this.renoQueued = queued;
            flushQueuedMarks(this);
          }
        } else if (name === PREVIEW) {
          // (ReNO Sampler (custom) has no UI output: its views come from the events alone)
          const chain = chainLine(output?.reno_chart?.[0]?.chain);
          setSummary(this, chain ? [chain] : []);
          const frames = framesFromImages(output?.images, model, 0, (route) => api.apiURL(route));
          const v = frames.length || model ? ensureViews(this) : this.renoViews;
          if (v) {
            v.gallery.setFrames(frames, { iterations: model?.iterations ?? frames.length, best: model?.best ?? null });
            v.chart.setModel(model);
            installMarking(this, output?.reno_prompt?.[0]);
            fit(this);
          }
        } else if (name === TRAINER) {
          // live: each training step's image and the curves (events); done: the held-out image per evaluation
          const training = output?.reno_training?.[0];
          setSummary(this, trainingLines(training));
          const frames = framesFromTraining(output?.images, training, (route) => api.apiURL(route));
          const v = frames.length || model ? ensureViews(this) : this.renoViews;
          if (v) {
            if (model) v.chart.setModel(model);
            if (frames.length) {
              const best = frames.reduce((b, f) => (f.total !== null && (b === null || f.total > b.total) ? f : b), null);
              v.gallery.setFrames(frames, { iterations: Number(training?.steps) + 1 || frames.length,
                                            best: best?.iteration ?? null });
            }
            fit(this);
          }
        } else if (name === SCORE) {
          const scores = Array.isArray(output?.reno_scores) ? output.reno_scores : [];
          const frames = framesFromImages(output?.images, { total: scores }, 0, (route) => api.apiURL(route))
            .map((f) => ({ ...f, label: "image" }));
          const v = frames.length ? ensureViews(this, { withChart: false }) : this.renoViews;
          if (v) {
            const best = frames.reduce((b, f) => (f.total !== null && (b === null || f.total > b.total) ? f : b), null);
            v.gallery.setFrames(frames, { iterations: frames.length, best: best?.iteration ?? null });
            installMarking(this, output?.reno_prompt?.[0]);
            fit(this);
          }
        }
      } catch (e) {
        console.warn("ReNO: could not show the run", e);
      }
      this.setDirtyCanvas?.(true, true);
    };

    // The views exist from the start, at their full height, so the node is as tall before a run as after it.
    const onNodeCreated = proto.onNodeCreated;
    proto.onNodeCreated = function () {
      const out = onNodeCreated?.apply(this, arguments);
      try {
        this.hideOutputImages = true; // the current frontend's own preview (Nodes 2.0): our gallery shows them
        ensureViews(this, { withChart: name !== SCORE, type: name });
        collapseLinkedPrompt(this);
      } catch (e) {
        console.warn("ReNO: could not add the gallery/chart widgets", e);
      }
      return out;
    };
    const onConfigure = proto.onConfigure;
    proto.onConfigure = function () {
      const out = onConfigure?.apply(this, arguments);
      if (this.renoViews) fit(this); // a workflow saved with a smaller node
      return out;
    };

    // Our gallery replaces the core's image preview (the same images, scrubbable).
    const onDrawBackground = proto.onDrawBackground;
    proto.onDrawBackground = function () {
      if (this.renoViews) return undefined;
      return onDrawBackground?.apply(this, arguments);
    };

    if (name !== PREFERENCE_TRAINER) trimOwnWidgetValues(proto);

    const onRemoved = proto.onRemoved;
    proto.onRemoved = function () {
      this.renoViews?.gallery.destroy();
      this.renoViews?.chart?.destroy();
      liveNodes.delete(this);
      customRuns.delete(this);
      return onRemoved?.apply(this, arguments);
    };

    // the run's summary (ReNO Iteration Preview: the chain it ran) drawn under the node, where the frontend has no
    // DOM widgets (elsewhere it is in the gallery)
    const onDrawForeground = proto.onDrawForeground;
    proto.onDrawForeground = function (ctx) {
      onDrawForeground?.apply(this, arguments);
      const lines = this.renoSummaryLines;
      if (this.renoViews || !lines?.length || this.flags?.collapsed) return;
      ctx.save();
      ctx.font = "12px sans-serif";
      ctx.fillStyle = "#9fd3a0";
      ctx.textAlign = "left";
      const top = this.size[1] + 4;
      lines.forEach((line, i) => ctx.fillText(line, 8, top + LINE_HEIGHT * (i + 1) - 4));
      ctx.restore();
    };
  },
});

