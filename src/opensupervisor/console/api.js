// The console's only way to the server: its public and admin HTTP APIs, with the session cookie
// and, on every request that changes something, the session's CSRF token.

let csrf = null;

export function setCsrf(token) { csrf = token; }

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.param = error.param || null;
    this.code = error.code || null;
  }
}

function headers(method, extra) {
  const out = { "Accept": "application/json", ...extra };
  if (method !== "GET" && method !== "HEAD" && csrf) out["X-CSRF-Token"] = csrf;
  return out;
}

export async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: headers(method, body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

// POST a streamed request (or GET a stored response's log) and call onEvent for each SSE event.
export async function stream(method, path, body, onEvent, signal) {
  const init = { method, credentials: "same-origin", signal,
    headers: headers(method, { "Accept": "text/event-stream", ...(body ? { "Content-Type": "application/json" } : {}) }) };
  if (body) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = frame.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (!data || data === "[DONE]") continue;
      onEvent(JSON.parse(data));
    }
  }
}
