// The status line of a reward download, shown on the node that downloads (ReNO Load Reward, ReNO Train Preference
// Reward) from the server's `reno.download` events: {reward, file, index, count, phase, done, total}, phase one of
// "download" (bytes arriving), "verify" (size and hash check), "done" (the file is in place), "stopped" (Cancel:
// the unfinished file is not kept) or "failed" (the node's error says why). ComfyUI's own progress bar on the node
// shows the same bytes; this line says which file and how far. Built with textContent only.

export const DOWNLOAD_EVENT = "reno.download";
export const STATUS_HEIGHT = 22;

const UNITS = ["B", "KB", "MB", "GB", "TB"];

/** 1234567 -> "1.2 MB" (decimal units, as download sizes are given); "?" when not a number. */
export function formatBytes(n) {
  const v = typeof n === "number" ? n : NaN;
  if (!Number.isFinite(v) || v < 0) return "?";
  let i = 0;
  let x = v;
  while (x >= 1000 && i < UNITS.length - 1) {
    x /= 1000;
    i++;
  }
  return i === 0 ? `${Math.round(x)} B` : `${x >= 100 ? x.toFixed(0) : x.toFixed(1)} ${UNITS[i]}`;
}

const text = (v) => (typeof v === "string" ? v : v === undefined || v === null ? "" : String(v));

function amount(done, total) {
  const t = Number(total);
  if (!Number.isFinite(t) || t <= 0) return formatBytes(done);
  const pct = Math.max(0, Math.min(100, Math.floor((100 * Number(done)) / t)));
  return `${formatBytes(done)} / ${formatBytes(t)} (${pct} %)`;
}

/** The status line for one `reno.download` event; "" for anything that is not one. */
export function downloadLine(d) {
  if (!d || typeof d !== "object") return "";
  const reward = text(d.reward);
  const file = text(d.file);
  const count = Number(d.count) || 1;
  const index = Number(d.index) || 1;
  const which = count > 1 ? ` (file ${index} of ${count})` : "";
  switch (d.phase) {
    case "download":
      return `Downloading ${reward}: ${file}${which} ${amount(d.done, d.total)}`;
    case "verify":
      return `Checking ${reward}: ${file}${which} ${formatBytes(d.total ?? d.done)}`;
    case "done":
      return index >= count
        ? `Downloaded ${reward}: ${count} file${count === 1 ? "" : "s"}, ready`
        : `Downloaded ${reward}: ${file}${which}`;
    case "stopped":
      return `Download of ${reward} cancelled at ${file}${which}: unfinished files are not kept; queue again to resume`;
    case "failed":
      return `Download of ${reward} failed at ${file}${which}: see the error`;
    default:
      return "";
  }
}

/** A one-line status element; `doc` is the document to build it in (a stand-in in the tests). */
export class DownloadStatus {
  constructor(doc = globalThis.document) {
    this.root = doc.createElement("div");
    const s = this.root.style;
    if (s) {
      s.font = "12px sans-serif";
      s.color = "#cfd8dc";
      s.whiteSpace = "nowrap";
      s.overflow = "hidden";
      s.textOverflow = "ellipsis";
      s.lineHeight = `${STATUS_HEIGHT}px`;
      s.padding = "0 6px";
    }
    this.phase = null;
  }

  /** Show one event; returns the line shown ("" for an event that is not a download's: the line is kept). */
  show(detail) {
    const line = downloadLine(detail);
    if (!line) return "";
    this.root.textContent = line;
    this.root.title = line; // the whole line where the node is too narrow
    this.phase = detail.phase;
    return line;
  }
}
