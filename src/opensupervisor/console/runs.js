// Runs: the caller's stored responses (everyone's, for admins), filtered, newest first, a page at
// a time; a run's page shows its input, output, usage and event log, cancels a running one, and
// follows a running background one live (its events when it was streamed, else by polling) until
// it ends, after a reload too.

import { api, stream } from "./api.js";
import { h, pretty, statusBadge, toolCard, when } from "./dom.js";
import { waterfall } from "./trace.js";

const STATUSES = ["", "queued", "in_progress", "completed", "incomplete", "failed", "cancelled"];

export async function runsPage(me) {
  const filters = { status: "", model: "", background: "", user: "", since: "", until: "" };
  const body = h("tbody");
  const more = h("button", { type: "button", class: "quiet", id: "more", text: "Older runs", hidden: true });
  let after = null;
  const status = h("select", { id: "f-status" }, ...STATUSES.map((s) => h("option", { value: s, text: s || "any" })));
  const model = h("input", { type: "text", id: "f-model" });
  const background = h("select", { id: "f-background" }, h("option", { value: "", text: "any" }),
    h("option", { value: "true", text: "background" }), h("option", { value: "false", text: "foreground" }));
  const user = h("input", { type: "text", id: "f-user" });
  const since = h("input", { type: "date", id: "f-since" });
  const until = h("input", { type: "date", id: "f-until" });
  // A day's start in UTC as epoch seconds; "until" takes the whole day it names.
  const day = (input, extra) => (input.value ? String(Date.parse(`${input.value}T00:00:00Z`) / 1000 + extra) : "");

  const load = async (reset) => {
    if (reset) { body.replaceChildren(); after = null; }
    const query = new URLSearchParams({ limit: "20" });
    for (const [key, value] of Object.entries(filters)) if (value) query.set(key, value);
    if (after) query.set("after", after);
    const page = await api("GET", `/v1/responses?${query}`);
    for (const r of page.data) {
      body.append(h("tr", {}, h("td", {}, h("a", { href: `#/runs/${encodeURIComponent(r.id)}`, text: r.id })),
        h("td", {}, statusBadge(r.status)), h("td", { text: r.model }), h("td", { text: r.user }),
        h("td", { text: r.background ? "yes" : "" }), h("td", { text: when(r.created_at) }),
        h("td", { text: r.usage ? r.usage.total_tokens : "" })));
    }
    if (!page.data.length && reset) body.append(h("tr", {}, h("td", { colspan: 7, class: "muted", text: "No runs." })));
    after = page.last_id;
    more.hidden = !page.has_more;
  };
  more.addEventListener("click", () => load(false));
  const form = h("form", { class: "card filters", "aria-label": "Filters", onsubmit: (event) => {
    event.preventDefault();
    Object.assign(filters, { status: status.value, model: model.value.trim(), background: background.value, user: user.value.trim(),
      since: day(since, 0), until: day(until, 86400) });
    load(true);
  } },
  h("div", {}, h("label", { for: "f-status", text: "Status" }), status),
  h("div", {}, h("label", { for: "f-model", text: "Model" }), model),
  h("div", {}, h("label", { for: "f-background", text: "Kind" }), background),
  me.admin ? h("div", {}, h("label", { for: "f-user", text: "User" }), user) : null,
  h("div", {}, h("label", { for: "f-since", text: "From (UTC)" }), since),
  h("div", {}, h("label", { for: "f-until", text: "To (UTC)" }), until),
  h("div", {}, h("button", { type: "submit", text: "Filter" })));
  await load(true);
  return h("section", { "aria-labelledby": "runs-title" }, h("h1", { id: "runs-title", text: "Runs" }), form,
    h("div", { class: "scroll" }, h("table", {}, h("thead", {}, h("tr", {}, ...["Response", "Status", "Model", "User",
      "Background", "Created", "Tokens"].map((t) => h("th", { scope: "col", text: t })))), body)), more);
}

export async function runPage(id, me) {
  const path = `/v1/responses/${encodeURIComponent(id)}`;
  const [response, input] = await Promise.all([api("GET", path), api("GET", `${path}/input_items?order=asc&limit=100`)]);
  const events = h("ol", { id: "events", class: "muted", start: "0" });
  const trace = response.databricks_output && response.databricks_output.trace;
  const running = response.status === "queued" || response.status === "in_progress";
  const cancel = running && response.background ? h("button", { type: "button", id: "cancel", text: "Cancel run", onclick: async () => {
    cancel.disabled = true;
    await api("POST", `${path}/cancel`);
    location.hash = `#/runs/${encodeURIComponent(id)}?${Date.now()}`;
  } }) : null;
  const page = h("section", { "aria-labelledby": "run-title" },
    h("h1", { id: "run-title", text: id }),
    h("div", { class: "row" }, statusBadge(response.status), h("span", { text: response.model }),
      response.background ? h("span", { class: "muted", text: "background" }) : null, cancel),
    h("h2", { text: "Input" }), ...input.data.map(itemView),
    h("h2", { text: "Output" }), ...(response.output.length ? paired(response.output).map(itemView) : [h("p", { class: "muted", text: "Nothing yet." })]),
    h("h2", { text: "Usage" }), h("pre", { class: "card", text: pretty(response.usage || {}) }),
    h("h2", { text: "Trace" }), trace ? waterfall(trace)
      : h("p", { class: "muted", text: "No trace: the request did not ask to keep one (databricks_options.return_trace)." }),
    h("h2", { text: "Event log" }), events);
  if (running && response.background) follow(path, id, events);
  api("GET", `${path}/events`).then((log) => {
    events.replaceChildren(...log.data.map((event) => h("li", { text: event.type })));
  }).catch((err) => events.append(h("li", { class: err.status === 400 ? "muted" : "error", text: err.status === 400
    ? "This response keeps no event log (it was answered as JSON)." : `The event log could not be read: ${err.message}` })));
  return page;
}

// Each function call with its output, as one card.
function paired(items) {
  const outputs = new Map(items.filter((i) => i.type === "function_call_output").map((i) => [i.call_id, i.output]));
  return items.filter((i) => i.type !== "function_call_output" || !items.some((c) => c.type === "function_call" && c.call_id === i.call_id))
    .map((i) => (i.type === "function_call" && outputs.has(i.call_id) ? { ...i, output: outputs.get(i.call_id) } : i));
}

function itemView(item) {
  if (item.type === "message") {
    const text = (Array.isArray(item.content) ? item.content : [{ text: item.content }]).map((p) => p.text || "").join("");
    return h("div", { class: `msg ${item.role === "user" ? "user" : "assistant"}` }, h("strong", { text: `${item.role}: ` }), text);
  }
  return toolCard(item);
}

// A running background response: its events as they come (``?stream=true`` replays and follows a
// streamed one), then the page again once it has ended; a response created without stream is polled.
async function follow(path, id, events) {
  const again = () => { if (location.hash.startsWith(`#/runs/${encodeURIComponent(id)}`)) location.hash = `#/runs/${encodeURIComponent(id)}?${Date.now()}`; };
  const live = h("p", { role: "status", class: "muted", id: "live", text: "Following this run live…" });
  events.before(live);
  try {
    let ended = false;
    await stream("GET", `${path}?stream=true`, null, (event) => {
      live.textContent = `Following this run live… ${event.type}`;
      if (event.type === "response.completed" || event.type === "response.failed" || event.type === "response.incomplete") ended = true;
    });
    if (ended) return again();
  } catch (err) {
    if (err.status !== 400) { live.textContent = `Could not follow this run: ${err.message}`; return; }
  }
  for (;;) {  // not streamed: ask again until it has ended
    await new Promise((resolve) => setTimeout(resolve, 1000));
    if (!document.body.contains(live)) return;  // the page was left
    const now = await api("GET", path);
    if (now.status !== "queued" && now.status !== "in_progress") return again();
  }
}
