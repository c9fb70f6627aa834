// A few helpers for building the page: elements from tag, attributes and children (text is always
// set as text, never parsed as HTML).

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "text") el.textContent = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function pretty(value) {
  if (typeof value === "string") {
    try { return JSON.stringify(JSON.parse(value), null, 2); } catch { return value; }
  }
  return JSON.stringify(value, null, 2);
}

export function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "";
}

export function statusBadge(status) {
  return h("span", { class: `status ${status}`, text: status });
}

// A tool call's card: its tool, arguments, output, duration and error, closed until opened.
export function toolCard(item, ms) {
  const name = item.name || item.server_label || item.type;
  const failed = Boolean(item.error) || item.status === "failed";
  const summary = h("summary", {}, h("strong", { text: name }), " ", h("span", { class: "muted", text: item.type }),
    ms !== undefined ? h("span", { class: "muted", text: ` · ${ms} ms` }) : null, failed ? h("span", { class: "error", text: " · error" }) : null);
  const parts = [summary];
  if (item.arguments !== undefined) parts.push(h("div", { class: "muted", text: "arguments" }), h("pre", { text: pretty(item.arguments) }));
  if (item.output !== undefined && item.output !== null) parts.push(h("div", { class: "muted", text: "output" }), h("pre", { text: pretty(item.output) }));
  if (item.error) parts.push(h("div", { class: "error", text: "error" }), h("pre", { text: pretty(item.error) }));
  return h("details", { class: `tool-card${failed ? " failed" : ""}`, "data-tool": name }, ...parts);
}
