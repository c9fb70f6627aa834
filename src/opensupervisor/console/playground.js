// The playground: a model, the workspace's hosted tools, client functions, instructions, and a
// chat whose answer streams in, each tool call a card; MCP approval requests and client function
// calls answered inline; "View code" shows the same request for DatabricksOpenAI, the openai SDK
// and curl.

import { api, stream } from "./api.js";
import { h, toolCard } from "./dom.js";

const KIND_NAMES = { genie_space: "Genie spaces", uc_function: "Functions", knowledge_assistant: "Knowledge assistants",
  app: "Apps", uc_connection: "Connections" };
const TOOL_ITEMS = new Set(["mcp_call", "function_call", "mcp_list_tools", "web_search_call", "file_search_call"]);

export async function playground(me) {
  const [models, tools] = await Promise.all([api("GET", "/v1/models"), api("GET", "/v1/tools")]);
  const state = { previous: null };
  const model = h("select", { id: "model", name: "model" },
    ...models.data.map((m) => h("option", { value: m.id, text: m.id })));
  const instructions = h("textarea", { id: "instructions", name: "instructions", rows: 3 });
  const background = h("input", { type: "checkbox", id: "background" });
  const keepTrace = h("input", { type: "checkbox", id: "keep-trace", checked: true });
  const functions = h("textarea", { id: "functions", name: "functions", rows: 4, spellcheck: "false",
    placeholder: '[{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]' });
  const functionsError = h("p", { class: "error", role: "alert" });
  const declared = () => {
    functionsError.textContent = "";
    if (!functions.value.trim()) return [];
    try {
      const value = JSON.parse(functions.value);
      return Array.isArray(value) ? value : [value];
    } catch (err) {
      functionsError.textContent = `Client functions: ${err.message}`;
      throw err;
    }
  };
  const boxes = [];
  const groups = Object.entries(KIND_NAMES).map(([kind, title]) => {
    const mine = tools.data.filter((t) => t.type === kind);
    if (!mine.length) return null;
    return h("fieldset", {}, h("legend", { text: title }), ...mine.map((tool) => {
      const id = `tool-${kind}-${tool.name}`.replace(/[^A-Za-z0-9_-]/g, "_");
      const box = h("input", { type: "checkbox", id, value: tool.name });
      boxes.push({ box, tool });
      return h("label", { class: "check", for: id }, box, h("span", {}, tool.name, tool.description ? h("small", { text: tool.description }) : null));
    }));
  });
  const chat = h("div", { class: "chat", id: "chat", "aria-live": "polite" });
  const message = h("textarea", { id: "message", name: "message", rows: 3, placeholder: "Ask something…" });
  const send = h("button", { type: "submit", id: "send", text: "Send" });
  const code = h("div", { id: "code", hidden: true });

  const request = (input) => {
    const body = { model: model.value, input, stream: true };
    const chosen = [...boxes.filter((b) => b.box.checked).map((b) => b.tool.tool), ...declared()];
    if (chosen.length) body.tools = chosen;
    if (instructions.value.trim()) body.instructions = instructions.value.trim();
    if (background.checked) body.background = true;
    if (keepTrace.checked) body.databricks_options = { return_trace: true };  // the run's page shows it
    if (state.previous) body.previous_response_id = state.previous;
    return body;
  };

  const run = async (input, shown) => {
    let body;
    try { body = request(input); } catch { return; }
    if (shown) chat.append(h("div", { class: "msg user", text: shown }));
    send.disabled = true;
    const answers = {
      approval: (approval, approve) => run([{ type: "mcp_approval_response", approval_request_id: approval.id, approve }],
        approve ? "Approved." : "Denied."),
      call: (call, output) => run([{ type: "function_call_output", call_id: call.call_id, output }], `${call.name} → ${output}`),
      client: new Set(body.tools ? body.tools.filter((t) => t.type === "function").map((t) => t.name) : []),
    };
    try {
      await follow(body, chat, state, answers);
    } catch (err) {
      chat.append(h("p", { class: "error", role: "alert", text: err.message }));
    } finally {
      send.disabled = false;
    }
  };

  const form = h("form", { class: "card", "aria-label": "Compose", onsubmit: (event) => {
    event.preventDefault();
    const text = message.value.trim();
    if (!text) return;
    try { declared(); } catch { return; }  // the message stays for another try
    message.value = "";
    run([{ type: "message", role: "user", content: text }], text);
  } }, h("label", { for: "message", text: "Message" }), message, h("div", { class: "row" }, send,
    h("button", { type: "button", class: "quiet", text: "New chat", onclick: () => { state.previous = null; chat.replaceChildren(); } }),
    h("button", { type: "button", class: "quiet", id: "view-code", text: "View code", onclick: () => {
      code.hidden = !code.hidden;
      code.replaceChildren(...snippets(request([{ type: "message", role: "user", content: message.value || "Hello" }])));
    } })), code);

  const side = h("section", { class: "card", "aria-label": "Request" },
    h("h1", { text: "Playground" }),
    h("label", { for: "model", text: "Model" }), model,
    h("label", { for: "instructions", text: "Instructions" }), instructions,
    h("label", { class: "check", for: "background" }, background, h("span", { text: "Run in the background" })),
    h("label", { class: "check", for: "keep-trace" }, keepTrace, h("span", { text: "Keep the trace (shown on the run's page)" })),
    h("label", { for: "functions", text: "Client functions (JSON)" }), functions, functionsError,
    h("h2", { text: "Hosted tools" }), ...(groups.some(Boolean) ? groups : [h("p", { class: "muted", text: "No hosted tools you may use." })]));
  return h("div", { class: "grid" }, side, h("section", { "aria-label": "Chat" }, chat, form));
}

// Stream one response into the chat: text as it comes, a card per tool call, approvals inline.
async function follow(body, chat, state, answers) {
  const bubble = h("div", { class: "msg assistant", "data-role": "assistant" });
  const status = h("p", { class: "muted", "data-role": "status" });
  chat.append(bubble, status);
  const started = new Map();
  const calls = new Map(); // call_id → its card, until its output comes
  await stream("POST", "/v1/responses", body, (event) => {
    const type = event.type;
    if (type === "response.created") status.textContent = `${event.response.id} · ${event.response.status}`;
    else if (type === "response.output_text.delta") bubble.textContent += event.delta;
    else if (type === "response.output_item.added" && TOOL_ITEMS.has(event.item.type)) started.set(event.item.id, performance.now());
    else if (type === "response.output_item.done") {
      const item = event.item;
      const since = started.get(item.id);
      const ms = since === undefined ? undefined : Math.round(performance.now() - since);
      if (item.type === "function_call" && answers.client.has(item.name)) {
        chat.insertBefore(callCard(item, answers.call), bubble);  // the page answers it
      } else if (TOOL_ITEMS.has(item.type)) {
        const card = toolCard(item, ms);
        if (item.type === "function_call") calls.set(item.call_id, { item, card, since });
        chat.insertBefore(card, bubble);
      } else if (item.type === "function_call_output" && calls.has(item.call_id)) {
        // A hosted call's output: its card shows it, and the time from the call to its output.
        const call = calls.get(item.call_id);
        const took = call.since === undefined ? undefined : Math.round(performance.now() - call.since);
        call.card.replaceWith(toolCard({ ...call.item, output: item.output }, took));
      } else if (item.type === "mcp_approval_request") {
        chat.insertBefore(approvalCard(item, answers.approval), bubble);
      }
    } else if (type === "response.completed" || type === "response.failed" || type === "response.incomplete") {
      const response = event.response;
      state.previous = response.id;
      status.textContent = `${response.id} · ${response.status}` + (response.usage ? ` · ${response.usage.total_tokens} tokens` : "")
        + (response.error ? ` · ${response.error.message}` : "");
    } else if (type === "error") {
      status.textContent = event.message;
    }
  });
}

function approvalCard(item, answer) {
  const card = h("div", { class: "card", role: "group", "aria-label": `Approval for ${item.name}` },
    h("p", {}, "Approve a call of ", h("strong", { text: item.name }), ` on ${item.server_label}?`),
    h("pre", { text: item.arguments }));
  const decide = (approve) => { card.querySelectorAll("button").forEach((b) => { b.disabled = true; }); answer(item, approve); };
  card.append(h("div", { class: "row" }, h("button", { type: "button", text: "Approve", onclick: () => decide(true) }),
    h("button", { type: "button", class: "quiet", text: "Deny", onclick: () => decide(false) })));
  return card;
}

// A client function's call: the page writes its output, sent back with previous_response_id.
function callCard(item, answer) {
  const id = `output-${item.call_id}`.replace(/[^A-Za-z0-9_-]/g, "_");
  const output = h("textarea", { id, rows: 2 });
  const card = h("form", { class: "card", "aria-label": `Answer ${item.name}`, "data-call": item.name, onsubmit: (event) => {
    event.preventDefault();
    card.querySelectorAll("button, textarea").forEach((el) => { el.disabled = true; });
    answer(item, output.value);
  } }, h("p", {}, "The model calls your function ", h("strong", { text: item.name }), ":"), h("pre", { text: item.arguments }),
  h("label", { for: id, text: `Output of ${item.name}` }), output, h("div", { class: "row" }, h("button", { type: "submit", text: "Send output" })));
  return card;
}

function snippets(body) {
  const { model, input, stream: _stream, ...rest } = body;
  const host = location.origin;
  const py = (value) => JSON.stringify(value, null, 4).replace(/\btrue\b/g, "True").replace(/\bfalse\b/g, "False").replace(/\bnull\b/g, "None");
  // The SDKs' own parameters as keywords; the Databricks extensions go in extra_body.
  const sdk = new Set(["tools", "instructions", "background", "previous_response_id", "store", "metadata"]);
  const extra = Object.fromEntries(Object.entries(rest).filter(([k]) => !sdk.has(k)));
  const args = [`    model=${JSON.stringify(model)},`, `    input=${py(input)},`,
    ...Object.entries(rest).filter(([k]) => sdk.has(k)).map(([k, v]) => `    ${k}=${py(v)},`),
    ...(Object.keys(extra).length ? [`    extra_body=${py(extra)},`] : []), "    stream=True,"].join("\n");
  const databricks = `from databricks_openai import DatabricksOpenAI\n\n# DATABRICKS_HOST=${host} DATABRICKS_TOKEN=<your token>\nclient = DatabricksOpenAI(use_ai_gateway=True)\nresponse = client.responses.create(\n${args}\n)\nfor event in response:\n    print(event)\n`;
  const openai = `from openai import OpenAI\n\nclient = OpenAI(base_url="${host}/v1", api_key="<your token>")\nresponse = client.responses.create(\n${args}\n)\nfor event in response:\n    print(event)\n`;
  const curl = `curl -N ${host}/v1/responses \\\n  -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" \\\n  -d '${JSON.stringify(body).replace(/'/g, "'\\''")}'\n`;
  return [["DatabricksOpenAI", databricks], ["openai", openai], ["curl", curl]].map(([title, text]) => h("div", {},
    h("div", { class: "row" }, h("h2", { text: title }), h("button", { type: "button", class: "quiet", text: "Copy",
      onclick: () => navigator.clipboard && navigator.clipboard.writeText(text) })),
    h("pre", { class: "code", "data-snippet": title, text })));
}
