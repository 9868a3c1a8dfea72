// Pure logic of the gallery's preference picks (no DOM, no ComfyUI imports: Node's test runner loads it).
//
// On ReNO Sampler, ReNO Iteration Preview and ReNO Score Images the artist marks the image the gallery shows
// as preferred or rejected (buttons, or keys over the gallery). Each mark is a record on the server
// (POST /reno/preferences/mark, stored under the user's folder, reno_preferences/<dataset>/); clearing a mark
// deletes its record (POST /reno/preferences/delete). A node's marks are a Map from an image key to
// {mark, id, pending, error}.

export const PREFERRED = "preferred";
export const REJECTED = "rejected";
export const CLEAR = "clear";
export const DATASET_SETTING = "ReNO.Preferences.Dataset";
export const DEFAULT_DATASET = "default";
export const MARK_NODES = ["ReNOSampler", "ReNOIterationPreview", "ReNOScoreImages"];
export const KEY_HINT = "P or + preferred · X or − rejected · 0 or Backspace clears";

/** Whether nodes of `type` let the artist mark their gallery images. */
export function marksImages(type) {
  return MARK_NODES.includes(type);
}

/** The action a key press asks for (KeyboardEvent.key), or null when the key is not ours. */
export function actionForKey(key, { ctrl = false, meta = false, alt = false } = {}) {
  if (ctrl || meta || alt || typeof key !== "string") return null;
  if (key === "p" || key === "P" || key === "+") return PREFERRED;
  if (key === "x" || key === "X" || key === "-" || key === "−") return REJECTED;
  if (key === "0" || key === "Backspace" || key === "Delete") return CLEAR;
  return null;
}

/** The mark an action leaves: a button on its own active mark toggles it off (`toggle`); keys set it. */
export function nextMark(current, action, { toggle = false } = {}) {
  const now = current === PREFERRED || current === REJECTED ? current : null;
  if (action === CLEAR) return null;
  if (action !== PREFERRED && action !== REJECTED) return now;
  return toggle && now === action ? null : action;
}

/** A safe dataset name (the server's rule: letters, digits, - _ ., 1 to 64, no leading dot) or null. */
export function datasetName(value) {
  const name = typeof value === "string" ? value.trim() : "";
  if (!name) return DEFAULT_DATASET;
  return /^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$/.test(name) ? name : null;
}

/** The {filename, subfolder, type} of a UI output image, or null when it names none. */
export function imageRef(image) {
  if (!image || typeof image !== "object" || typeof image.filename !== "string" || !image.filename) return null;
  return {
    filename: image.filename,
    subfolder: typeof image.subfolder === "string" ? image.subfolder : "",
    type: typeof image.type === "string" ? image.type : "output",
  };
}

/** The key of an image in a node's marks. */
export function imageKey(ref) {
  return ref ? `${ref.type}\u0000${ref.subfolder}\u0000${ref.filename}` : "";
}

/**
 * What to send to move an image from `entry` (its marks entry, or undefined) to `wanted` (a mark or null):
 * null (nothing), {kind: "mark", mark} (the server replaces an earlier mark of the same image and prompt)
 * or {kind: "delete", ids} (to send to the dataset the entry was saved in, `entry.dataset`).
 */
export function planChange(entry, wanted) {
  const current = entry?.mark ?? null;
  if (current === wanted) return null;
  if (wanted === PREFERRED || wanted === REJECTED) return { kind: "mark", mark: wanted };
  return entry?.id ? { kind: "delete", ids: [entry.id] } : null;
}

/** The JSON body of POST /reno/preferences/mark. */
export function markBody({ ref, prompt, mark, dataset, node }) {
  return { image: ref, prompt: String(prompt ?? ""), mark, dataset, node };
}

/** The JSON body of POST /reno/preferences/delete. */
export function deleteBody({ ids, dataset }) {
  return { ids, dataset };
}

/** The marks entry after the server answered `plan` with `response` ({ok, status, json}). */
export function settle(entry, plan, response) {
  const ok = Boolean(response?.ok);
  const error = ok ? null : String(response?.json?.error ?? `HTTP ${response?.status ?? "error"}`);
  if (!ok) {
    // a record the server no longer has is as good as deleted
    if (plan?.kind === "delete" && response?.status === 404) return { mark: null, id: null, pending: false, error: null };
    return { mark: entry?.mark ?? null, id: entry?.id ?? null, pending: false, error };
  }
  if (plan?.kind === "mark") {
    const record = response.json?.record;
    return { mark: record?.mark ?? plan.mark, id: typeof record?.id === "string" ? record.id : null, pending: false,
      error: null };
  }
  return { mark: null, id: null, pending: false, error: null };
}

/**
 * The server replaced or deleted the records `ids` (another gallery showing the same image may hold them): every
 * entry of `marks` saved as one of them becomes `entry` (null: cleared). Returns how many changed.
 */
export function relink(marks, ids, entry) {
  if (!marks?.entries || !Array.isArray(ids) || !ids.length) return 0;
  let n = 0;
  for (const [key, e] of marks.entries()) {
    if (e?.id && ids.includes(e.id) && !e.pending) {
      marks.set(key, entry ? { ...entry, pending: false, error: null } : { mark: null, id: null, pending: false,
        error: null, dataset: null });
      n += 1;
    }
  }
  return n;
}

/** The badge and tooltip the gallery shows for a marks entry. */
export function markView(entry, { enabled = true, reason = "" } = {}) {
  if (!enabled) return { badge: "", state: "", title: reason || "Marks are available when the images are saved" };
  const mark = entry?.mark ?? null;
  const badge = mark === PREFERRED ? "✓ preferred" : mark === REJECTED ? "✕ rejected" : "";
  let title = `Mark this image for your preference dataset (${KEY_HINT}, with the pointer over the gallery)`;
  if (entry?.pending) title = "saving the mark…";
  if (entry?.error) title = `the mark was not saved: ${entry.error}`;
  if (entry?.queued && mark) {
    return { badge: `${badge} (saved when the run ends)`, state: mark,
      title: `Marked during the run: saved when the run ends and its images are written (${KEY_HINT})`, error: "" };
  }
  return { badge: entry?.pending ? "saving…" : entry?.error ? `${badge} (not saved)`.trim() : badge, state: mark ?? "",
    title, error: entry?.error ? "true" : "" };
}

/**
 * Marks made during a live run (`queued`: iteration -> mark), matched to the finished run's frames that have a
 * saved image: [{frame, mark}] in iteration order, to send then. Iterations without a saved image are dropped.
 */
export function queuedMarks(queued, frames) {
  if (!queued?.entries || !Array.isArray(frames)) return [];
  const out = [];
  for (const [iteration, mark] of [...queued.entries()].sort((a, b) => a[0] - b[0])) {
    if (mark !== PREFERRED && mark !== REJECTED) continue;
    const frame = frames.find((f) => f?.iteration === iteration && f.ref);
    if (frame) out.push({ frame, mark });
  }
  return out;
}

/** How many of the marks are each mark (for a node's summary). */
export function markCounts(marks) {
  const out = { preferred: 0, rejected: 0 };
  for (const entry of marks?.values?.() ?? []) if (entry?.mark in out) out[entry.mark] += 1;
  return out;
}
