// Workspace (admins): users and groups with their tokens (a new token's secret shown once, revoke),
// the models, the hosted tools (Genie spaces, functions, knowledge assistants with re-ingest,
// connections), the grants, the rate limits and the usage by day and model, through the admin API.

import { api, ApiError } from "./api.js";
import { h, when } from "./dom.js";

export async function workspacePage() {
  const [principals, tokens, models, grants, usage, tools, functions, connections, assistants, limits] = await Promise.all([
    api("GET", "/admin/v1/principals"), api("GET", "/admin/v1/tokens"), api("GET", "/v1/models"),
    api("GET", "/admin/v1/grants"), api("GET", "/admin/v1/usage?group_by=day,model"), api("GET", "/v1/tools"),
    api("GET", "/admin/v1/functions"), api("GET", "/admin/v1/connections"), api("GET", "/admin/v1/knowledge_assistants"),
    api("GET", "/admin/v1/rate-limits")]);
  const byPrincipalUsage = await api("GET", "/admin/v1/usage?group_by=principal");
  const secret = h("div", { id: "new-secret", role: "status" });
  const people = h("tbody");
  const byPrincipal = new Map();
  for (const t of tokens.data) {
    if (!byPrincipal.has(t.principal)) byPrincipal.set(t.principal, []);
    byPrincipal.get(t.principal).push(t);
  }
  const reload = async () => { location.hash = `#/workspace?${Date.now()}`; };
  for (const p of principals.data) {
    const mine = byPrincipal.get(p.name) || byPrincipal.get(p.id) || [];
    const issue = h("button", { type: "button", class: "quiet", text: "New token", "aria-label": `New token for ${p.name}`,
      onclick: async () => {
        const made = await api("POST", `/admin/v1/principals/${encodeURIComponent(p.name)}/tokens`, { comment: "console" });
        secret.replaceChildren(h("div", { class: "card" }, h("p", {}, "The new token of ", h("strong", { text: p.name }),
          ". It is shown once: copy it now."), h("pre", { class: "code", "data-secret": made.id, text: made.token }),
          h("button", { type: "button", class: "quiet", text: "Done", onclick: reload })));
        secret.querySelector("pre").focus();
      } });
    const list = h("ul", {}, ...mine.map((t) => h("li", { "data-token": t.id }, `${t.id} `,
      h("span", { class: "muted", text: `${t.comment || ""} ${when(t.created_at)}${t.expires_at ? ` · expires ${when(t.expires_at)}` : ""}` }),
      t.revoked ? h("span", { class: "error", text: " revoked" }) : h("button", { type: "button", class: "quiet",
        text: "Revoke", "aria-label": `Revoke ${t.id}`, onclick: async () => {
          await api("DELETE", `/admin/v1/tokens/${encodeURIComponent(t.id)}`);
          await reload();
        } }))));
    people.append(h("tr", { "data-principal": p.name }, h("td", { text: p.name }), h("td", { text: p.kind }),
      h("td", { text: p.admin ? "admin" : "" }), h("td", { text: (p.groups || []).join(", ") }), h("td", {}, list, issue)));
  }
  const name = h("input", { type: "text", id: "new-name", required: true });
  const kind = h("select", { id: "new-kind" }, ...["user", "service_principal", "group"].map((k) => h("option", { value: k, text: k })));
  const error = h("p", { class: "error", role: "alert" });
  const create = h("form", { class: "card filters", "aria-label": "New principal", onsubmit: async (event) => {
    event.preventDefault();
    try {
      await api("POST", "/admin/v1/principals", { name: name.value.trim(), kind: kind.value });
      await reload();
    } catch (err) {
      error.textContent = err instanceof ApiError ? err.message : String(err);
    }
  } }, h("div", {}, h("label", { for: "new-name", text: "Name" }), name), h("div", {}, h("label", { for: "new-kind", text: "Kind" }), kind),
  h("div", {}, h("button", { type: "submit", text: "Add" })), error);
  const table = (heads, rows) => h("div", { class: "scroll" }, h("table", {}, h("thead", {}, h("tr", {}, ...heads.map((t) => h("th", { scope: "col", text: t })))),
    h("tbody", {}, ...rows)));
  return h("section", { "aria-labelledby": "ws-title" }, h("h1", { id: "ws-title", text: "Workspace" }),
    h("h2", { text: "Users, groups and tokens" }), secret, create,
    table(["Name", "Kind", "Role", "Groups", "Tokens"], [...people.children]),
    h("h2", { text: "Models" }), table(["Model", "Description"], models.data.map((m) => h("tr", {}, h("td", { text: m.id }), h("td", { text: m.description || "" })))),
    h("h2", { text: "Genie spaces" }), table(["Space", "Description"], tools.data.filter((t) => t.type === "genie_space")
      .map((t) => h("tr", {}, h("td", { text: t.name }), h("td", { text: t.description || "" })))),
    h("h2", { text: "Functions" }), table(["Function", "Language", "Description"], functions.data.map((f) => h("tr", {},
      h("td", { text: f.name }), h("td", { text: f.language }), h("td", { text: f.description || "" })))),
    h("h2", { text: "Knowledge assistants" }), table(["Assistant", "Description", "Sources", "Index"],
      assistants.data.map(assistantRow)),
    h("h2", { text: "Connections" }), table(["Connection", "URL", "Auth", "Approval"], connections.data.map((c) => h("tr", {},
      h("td", { text: c.name }), h("td", { text: c.url }), h("td", { text: c.auth }), h("td", { text: c.require_approval })))),
    h("h2", { text: "Rate limits" }), limits.data.length ? table(["Model", "Limits", "From"], limits.data.map((l) => h("tr", {},
      h("td", { text: l.model }), h("td", {}, h("pre", { text: JSON.stringify(l.rate_limits, null, 1) })), h("td", { text: l.source }))))
      : h("p", { class: "muted", text: "No rate limits are set." }),
    limitsForm(models.data.map((m) => m.id), limits.data, reload),
    h("h2", { text: "Grants" }), table(["Object", "Principals"], (grants.data || []).map((g) => h("tr", {}, h("td", { text: g.object }),
      h("td", { text: (g.principals || []).join(", ") })))),
    h("h2", { text: "Usage" }), usageCharts(usage.data || [], byPrincipalUsage.data || []),
    h("h2", { text: "Usage by day and model" }), table(["Day", "Model", "Responses", "Tokens in", "Tokens out"],
      (usage.data || []).map((u) => h("tr", {}, h("td", { text: u.day }), h("td", { text: u.model }), h("td", { text: u.responses }),
        h("td", { text: u.input_tokens }), h("td", { text: u.output_tokens })))));
}

// A knowledge assistant's row: re-ingest its sources now, the button busy until the report comes.
function assistantRow(ka) {
  const state = h("span", { class: "muted", "data-ingest": ka.id, text: ka.ingesting ? "ingesting…" : `version ${ka.version}` });
  const button = h("button", { type: "button", class: "quiet", text: "Re-ingest", "aria-label": `Re-ingest ${ka.id}`,
    onclick: async () => {
      button.disabled = true;
      state.textContent = "ingesting…";
      try {
        const report = await api("POST", `/admin/v1/knowledge_assistants/${encodeURIComponent(ka.id)}/ingest`, {});
        const count = (key) => (Array.isArray(report[key]) ? report[key].length : report[key] || 0);
        state.textContent = `done: ${count("added")} added, ${count("updated")} updated, ${count("unchanged")} unchanged, `
          + `${count("removed")} removed, ${Object.keys(report.failed || {}).length} failed, ${count("chunks")} chunks`;
      } catch (err) {
        state.textContent = err.message;
        state.className = "error";
      } finally {
        button.disabled = false;
      }
    } });
  return h("tr", {}, h("td", { text: ka.id }), h("td", { text: ka.description || "" }), h("td", { text: (ka.sources || []).join(", ") }),
    h("td", {}, state, " ", button));
}

// Set a model's rate limits (the gateway's shape: key, principal, calls and tokens per minute).
function limitsForm(models, limits, reload) {
  const model = h("select", { id: "limits-model" }, ...models.map((m) => h("option", { value: m, text: m })));
  const value = h("textarea", { id: "limits-json", rows: 3, spellcheck: "false" });
  const error = h("p", { class: "error", role: "alert" });
  const fill = () => {
    const found = limits.find((l) => l.model === model.value);
    value.value = JSON.stringify(found ? found.rate_limits : [{ key: "user", calls: 60 }]);
  };
  model.addEventListener("change", fill);
  fill();
  return h("form", { class: "card", "aria-label": "Set rate limits", onsubmit: async (event) => {
    event.preventDefault();
    error.textContent = "";
    try {
      await api("PUT", `/admin/v1/rate-limits/${encodeURIComponent(model.value)}`, { rate_limits: JSON.parse(value.value) });
      await reload();
    } catch (err) {
      error.textContent = err instanceof ApiError ? `${err.param ? `${err.param}: ` : ""}${err.message}` : String(err);
    }
  } }, h("label", { for: "limits-model", text: "Model" }), model,
  h("label", { for: "limits-json", text: "Rate limits (JSON)" }), value, error,
  h("div", { class: "row" }, h("button", { type: "submit", text: "Save limits" })));
}

// Tokens by day (a bar a day, stacked by model) and by principal, as SVG drawn here.
function usageCharts(byDayModel, byPrincipal) {
  if (!byDayModel.length) return h("p", { class: "muted", text: "No usage yet." });
  const svg = (tag, attrs, ...children) => {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    el.append(...children);
    return el;
  };
  const days = [...new Set(byDayModel.map((u) => u.day))].sort();
  const models = [...new Set(byDayModel.map((u) => u.model))].sort();
  const tokens = (u) => (u.input_tokens || 0) + (u.output_tokens || 0);
  const totals = days.map((d) => byDayModel.filter((u) => u.day === d).reduce((a, u) => a + tokens(u), 0));
  const top = Math.max(...totals, 1);
  const width = 60 * days.length + 40, height = 180;
  const colours = ["#0a58ca", "#1a7f37", "#9a6700", "#8250df", "#cf222e", "#57606a"];
  const bars = [];
  days.forEach((day, i) => {
    let y = height - 20;
    for (const [m, model] of models.entries()) {
      const row = byDayModel.find((u) => u.day === day && u.model === model);
      if (!row) continue;
      const h_ = (tokens(row) / top) * (height - 40);
      y -= h_;
      bars.push(svg("rect", { x: 30 + i * 60, y, width: 40, height: Math.max(h_, 1), fill: colours[m % colours.length] },
        svg("title", {}, `${day} · ${model}: ${tokens(row)} tokens, ${row.responses} responses`)));
    }
    bars.push(svg("text", { x: 50 + i * 60, y: height - 5, "text-anchor": "middle", "font-size": 10 }, day.slice(5)));
  });
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, width: "100%", height, role: "img",
    "aria-label": `Tokens by day: ${days.map((d, i) => `${d} ${totals[i]}`).join(", ")}` }, ...bars);
  const legend = h("p", { class: "muted" }, ...models.map((m, i) => h("span", { class: "legend", "data-colour": colours[i % colours.length], text: `■ ${m}  ` })));
  for (const item of legend.querySelectorAll(".legend")) item.style.color = item.dataset.colour;
  const people = h("ul", { class: "muted" }, ...byPrincipal.map((u) => h("li", { text: `${u.principal}: ${tokens(u)} tokens, ${u.responses} responses, ${u.tool_calls} tool calls` })));
  return h("div", { class: "card", id: "usage-chart" }, h("div", { class: "muted", text: "Tokens by day, by model" }), chart, legend,
    h("div", { class: "muted", text: "By principal" }), people);
}
