// Approvals: the caller's MCP approval requests that no response has acted on yet, across runs.
// Approving or denying one continues its response in the background, with the tools it had.

import { api } from "./api.js";
import { h, when } from "./dom.js";

export async function approvalsPage() {
  const list = h("div", { id: "approvals" });
  const note = h("p", { role: "status", class: "muted" });
  const load = async () => {
    const pending = await api("GET", "/v1/approvals");
    list.replaceChildren(...(pending.data.length ? pending.data.map((a) => card(a, note, load))
      : [h("p", { class: "muted", text: "No approval requests wait for you." })]));
  };
  await load();
  return h("section", { "aria-labelledby": "approvals-title" }, h("h1", { id: "approvals-title", text: "Approvals" }), note, list);
}

function card(approval, note, reload) {
  const item = approval.item;
  const decide = async (approve, buttons) => {
    buttons.forEach((b) => { b.disabled = true; });
    const response = await api("GET", `/v1/responses/${encodeURIComponent(approval.response_id)}`);
    const body = { model: response.model, previous_response_id: response.id, background: true, store: true,
      input: [{ type: "mcp_approval_response", approval_request_id: approval.id, approve }] };
    if (response.tools && response.tools.length) body.tools = response.tools;
    if (response.instructions) body.instructions = response.instructions;
    const next = await api("POST", "/v1/responses", body);
    note.replaceChildren(`${approve ? "Approved" : "Denied"}: the run goes on as `,
      h("a", { href: `#/runs/${encodeURIComponent(next.id)}`, text: next.id }), ".");
    await reload();
  };
  const approve = h("button", { type: "button", text: "Approve" });
  const deny = h("button", { type: "button", class: "quiet", text: "Deny" });
  approve.addEventListener("click", () => decide(true, [approve, deny]));
  deny.addEventListener("click", () => decide(false, [approve, deny]));
  return h("article", { class: "card", "aria-label": `Approval request ${approval.id}`, "data-approval": approval.id },
    h("p", {}, h("strong", { text: item.name }), ` on ${item.server_label}`, h("span", { class: "muted", text: ` · asked ${when(approval.issued_at / 1000)}` })),
    h("pre", { text: item.arguments }),
    h("p", { class: "muted" }, "From ", h("a", { href: `#/runs/${encodeURIComponent(approval.response_id)}`, text: approval.response_id })),
    h("div", { class: "row" }, approve, deny));
}
