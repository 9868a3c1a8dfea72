// The pack's settings (Settings → ReNO). `category` is [panel, section heading, key]: without it the settings dialog
// splits the id ("ReNO.AllowDownloads") and shows "AllowDownloads" as a section heading. The ids are what the server
// side reads (nodes/settings.py) and what users' saved settings are stored under: never rename them.
import { DATASET_SETTING, DEFAULT_DATASET } from "./reno_preferences.js";

export const PANEL = "ReNO";

/** The settings, with `onViewChange` called when a gallery/chart setting changes. */
export function renoSettings(onViewChange = () => {}) {
  return [
    {
      id: "ReNO.AllowDownloads",
      category: [PANEL, "Reward models", "AllowDownloads"],
      name: "Download missing reward models automatically",
      tooltip: "When a reward's files are not in models/reno_rewards/, fetch them from their public sources (the node " +
        "shows each file's progress; Cancel stops a download and keeps nothing of it).",
      type: "boolean",
      defaultValue: true,
    },
    {
      id: "ReNO.TorchCompile",
      category: [PANEL, "Reward models", "TorchCompile"],
      name: "Compile the reward models with torch.compile",
      tooltip:
        "Faster iterations after a slow first run (each reward compiles once per image batch size, a minute or more). " +
        "Needs a working torch.compile (Triton on NVIDIA GPUs, a C++ compiler on CPUs).",
      type: "boolean",
      defaultValue: false,
    },
    {
      id: "ReNO.PreviewSize",
      category: [PANEL, "Gallery and chart", "PreviewSize"],
      name: "Height of the iteration gallery image (px)",
      tooltip: "Height of the image in the gallery of the ReNO Sampler and ReNO Iteration Preview nodes.",
      type: "slider",
      attrs: { min: 96, max: 768, step: 16 },
      defaultValue: 256,
      onChange: () => onViewChange(),
    },
    {
      id: "ReNO.ShowChart",
      category: [PANEL, "Gallery and chart", "ShowChart"],
      name: "Show the reward chart",
      tooltip: "Chart each reward and the weighted total over the iterations on the ReNO nodes.",
      type: "boolean",
      defaultValue: true,
      onChange: () => onViewChange(),
    },
    {
      id: DATASET_SETTING,
      category: [PANEL, "Preferences", "Dataset"],
      name: "Preference dataset (where gallery marks are saved)",
      tooltip:
        "The images you mark preferred / rejected in the ReNO galleries are saved in user/<you>/reno_preferences/<name>/ " +
        "on the server (letters, digits, - _ . ; up to 64 characters). GET /reno/preferences/export?dataset=<name> downloads it.",
      type: "text",
      defaultValue: DEFAULT_DATASET,
    },
  ];
}
