// ReNO for ComfyUI: shows the outcome of a run on the ReNO Sampler node.
// Text is drawn on the canvas (never inserted as HTML) and no widget is added, so nothing is
// written into the workflow's widgets_values.
import { app } from "../../scripts/app.js";
import { summaryLines } from "./reno_summary.js";

const LINE_HEIGHT = 16;

app.registerExtension({
  name: "reno.summary",
  settings: [
    {
      id: "ReNO.AllowDownloads",
      name: "ReNO: download missing reward models automatically",
      tooltip: "When a reward's files are not in models/reno_rewards/, fetch them from their public sources.",
      type: "boolean",
      defaultValue: true,
    },
  ],
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== "ReNOSampler") return;

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      this.renoSummaryLines = summaryLines(output?.reno_summary?.[0]);
      this.setDirtyCanvas?.(true, true);
    };

    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      onDrawForeground?.apply(this, arguments);
      const lines = this.renoSummaryLines;
      if (!lines?.length || this.flags?.collapsed) return;
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
