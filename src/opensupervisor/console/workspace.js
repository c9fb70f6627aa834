// Workspace (admins): users and groups with their tokens (a new token's secret shown once, revoke),
// the models, the grants and the usage by day and model, through the admin API.

import { api, ApiError } from "./api.js";
import { h, when } from "./dom.js";

export async function workspacePage() {
  const [principals, tokens, models, grants, usage] = await Promise.all([
    api("GET", "/admin/v1/principals"), api("GET", "/admin/v1/tokens"), api("GET", "/v1/models"),
    api("GET", "/admin/v1/grants"), api("GET", "/admin/v1/usage?group_by=day,model")]);
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
    h("h2", { text: "Grants" }), table(["Object", "Principals"], (grants.data || []).map((g) => h("tr", {}, h("td", { text: g.object }),
      h("td", { text: (g.principals || []).join(", ") })))),
    h("h2", { text: "Usage by day and model" }), table(["Day", "Model", "Responses", "Tokens in", "Tokens out"],
      (usage.data || []).map((u) => h("tr", {}, h("td", { text: u.day }), h("td", { text: u.model }), h("td", { text: u.responses }),
        h("td", { text: u.input_tokens }), h("td", { text: u.output_tokens })))));
}
