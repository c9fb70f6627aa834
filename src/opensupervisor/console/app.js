// The console: sign-in, then its pages by the URL's hash (#/playground, #/runs, #/runs/<id>).

import { api, ApiError, setCsrf } from "./api.js";
import { approvalsPage } from "./approvals.js";
import { h } from "./dom.js";
import { playground } from "./playground.js";
import { runPage, runsPage } from "./runs.js";
import { workspacePage } from "./workspace.js";

const main = document.getElementById("main");
let me = null;

function show(...nodes) {
  main.replaceChildren(...nodes);
  main.focus({ preventScroll: true });
}

function signInPage(message) {
  const error = h("p", { class: "error", role: "alert", id: "signin-error", text: message || "" });
  const token = h("input", { type: "password", id: "token", name: "token", autocomplete: "off", required: true,
    "aria-describedby": "signin-error" });
  const form = h("form", { class: "card signin", "aria-labelledby": "signin-title", onsubmit: async (event) => {
    event.preventDefault();
    try {
      await api("POST", "/console/session", { token: token.value });
      await start();
    } catch (err) {
      error.textContent = err instanceof ApiError ? err.message : String(err);
    }
  } },
  h("h1", { id: "signin-title", text: "Sign in to OpenSupervisor" }),
  h("label", { for: "token", text: "Token" }), token,
  h("p", { class: "muted", text: "A personal access token (osp_…) or the admin token. It stays in an HttpOnly cookie of this site." }),
  error, h("button", { type: "submit", text: "Sign in" }));
  document.querySelector(".top").hidden = true;
  show(form);
  token.focus();
}

async function route() {
  if (!me) return;
  const hash = (location.hash || "#/playground").split("?")[0]; // "?<time>" only makes a page load again
  const [, page, id] = hash.split("/");
  for (const link of document.querySelectorAll(".top nav a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  try {
    if (page === "runs" && id) show(await runPage(decodeURIComponent(id), me));
    else if (page === "runs") show(await runsPage(me));
    else if (page === "approvals") show(await approvalsPage());
    else if (page === "workspace" && me.admin) show(await workspacePage());
    else show(await playground(me));
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return signInPage("Your session ended: sign in again.");
    show(h("p", { class: "error", role: "alert", text: String(err.message || err) }));
  }
}

async function start() {
  try {
    me = await api("GET", "/console/session");
  } catch (err) {
    me = null;
    return signInPage();
  }
  setCsrf(me.csrf_token);
  document.querySelector(".top").hidden = false;
  document.querySelector('[data-page="workspace"]').hidden = !me.admin;
  document.getElementById("who").textContent = `${me.name}${me.admin ? " (admin)" : ""}`;
  await route();
}

document.getElementById("sign-out").addEventListener("click", async () => {
  await api("DELETE", "/console/session").catch(() => null);
  me = null;
  setCsrf(null);
  signInPage("Signed out.");
});
window.addEventListener("hashchange", route);
start();
