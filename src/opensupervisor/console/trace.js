// A run's trace as a waterfall: one row per span (model calls, tool calls, SQL, retrieval), indented
// under its parent, its bar placed on the run's time line, so concurrent calls sit side by side;
// a row opens on its inputs, outputs and tokens; failed spans are marked. The spans are those of
// the MLflow trace the response carries (``databricks_options.return_trace``).

import { h, pretty } from "./dom.js";

const TYPE = "mlflow.spanType";
const INPUTS = "mlflow.spanInputs";
const OUTPUTS = "mlflow.spanOutputs";
const TOKENS = "mlflow.chat.tokenUsage";

function attribute(span, key) {
  const value = (span.attributes || {})[key];
  if (value === undefined) return undefined;
  try { return typeof value === "string" ? JSON.parse(value) : value; } catch { return value; }
}

export function waterfall(trace) {
  const spans = [...trace.data.spans].sort((a, b) => a.start_time_unix_nano - b.start_time_unix_nano);
  if (!spans.length) return h("p", { class: "muted", text: "The trace has no spans." });
  const start = Math.min(...spans.map((s) => s.start_time_unix_nano));
  const end = Math.max(...spans.map((s) => s.end_time_unix_nano || s.start_time_unix_nano));
  const total = Math.max(end - start, 1);
  const byId = new Map(spans.map((s) => [s.span_id, s]));
  const depth = (span) => {
    let d = 0;
    for (let p = byId.get(span.parent_span_id); p && d < 32; p = byId.get(p.parent_span_id)) d += 1;
    return d;
  };
  const rows = spans.map((span) => {
    const took = ((span.end_time_unix_nano || span.start_time_unix_nano) - span.start_time_unix_nano) / 1e6;
    const failed = span.status && span.status.code === "STATUS_CODE_ERROR";
    const tokens = attribute(span, TOKENS);
    const left = ((span.start_time_unix_nano - start) / total) * 100;
    const width = Math.max((took * 1e6 / total) * 100, 0.4);
    const details = [];
    const inputs = attribute(span, INPUTS);
    const outputs = attribute(span, OUTPUTS);
    if (inputs !== undefined) details.push(h("div", { class: "muted", text: "inputs" }), h("pre", { text: pretty(inputs) }));
    if (outputs !== undefined) details.push(h("div", { class: "muted", text: "outputs" }), h("pre", { text: pretty(outputs) }));
    if (failed) details.push(h("div", { class: "error", text: `error: ${span.status.message}` }));
    return h("details", { class: `span${failed ? " failed" : ""}`, "data-span": span.name },
      h("summary", {},
        h("span", { class: "span-name", "data-depth": String(depth(span)) }, span.name,
          h("small", { class: "muted", text: ` ${attribute(span, TYPE) || ""}` })),
        h("span", { class: "span-time", text: `${took.toFixed(1)} ms${tokens ? ` · ${tokens.total_tokens} tokens` : ""}` }),
        h("span", { class: "span-track", "aria-hidden": "true" },
          h("span", { class: "span-bar", "data-left": left.toFixed(2), "data-width": width.toFixed(2) }))),
      ...details);
  });
  const box = h("div", { class: "waterfall", id: "trace", role: "list", "aria-label": `Trace ${trace.info.trace_id}` }, ...rows);
  // Placed after they exist: the page's policy allows no inline style attributes, only the CSSOM.
  for (const bar of box.querySelectorAll(".span-bar")) {
    bar.style.left = `${bar.dataset.left}%`;
    bar.style.width = `${bar.dataset.width}%`;
  }
  for (const name of box.querySelectorAll(".span-name")) name.style.paddingLeft = `${Number(name.dataset.depth) * 16}px`;
  return h("div", {}, h("p", { class: "muted", text: `${spans.length} spans over ${(total / 1e6).toFixed(1)} ms · trace ${trace.info.trace_id}` }), box);
}
