// The approval page: everything about the request comes from the API with the reviewer's token,
// and is written with textContent (never as HTML).
"use strict";
const id = decodeURIComponent(location.pathname.split("/").pop());
const $ = (name) => document.getElementById(name);
let token = sessionStorage.getItem("pgproxy-reviewer-token") || "";
let current = null;

async function api(path, options = {}) {
  // Without a pasted token, an SSO proxy in front of pgproxy may supply one on every request.
  const headers = {"Content-Type": "application/json"};
  if (token) headers["Authorization"] = "Bearer " + token;
  const response = await fetch(path, {...options, headers});
  const body = await response.json().catch(() => ({}));
  return {status: response.status, body};
}

function text(name, value) { $(name).textContent = value == null || value === "" ? "—" : String(value); }

function render(request) {
  current = request;
  $("signin").hidden = true;
  $("request").hidden = false;
  text("status", request.status);
  const detail = request.status === "pending"
    ? (request.required_approvals > 1 ? `${request.approved_by.length} of ${request.required_approvals} approvals` : "")
    : (request.decided_by ? `by ${request.decided_by}: ${request.decision_reason || ""}` : "");
  text("status-detail", detail);
  text("agent", `${request.agent} (${request.groups.join(", ") || "no groups"})`);
  text("database", request.database);
  text("application", request.application_name);
  text("client", request.client_address);
  text("rule", `${request.rule}: ${request.reason}`);
  text("expires", new Date(request.expires_at * 1000).toLocaleString());
  text("statement", request.statement_formatted || request.statement);
  text("hash", request.statement_sha256);
  const params = $("parameters");
  params.replaceChildren(...request.parameters.map((p) => {
    const li = document.createElement("li");
    li.textContent = p === null ? "NULL" : p;
    return li;
  }));
  if (!request.parameters.length) params.replaceChildren(Object.assign(document.createElement("li"), {textContent: "none"}));
  const columns = [];
  for (const statement of (request.analysis.statements || [])) {
    // What DDL makes: the objects that will carry the tags of what it reads.
    const derived = (statement.derives || []).map((d) => ({column: d.object, tags: d.tags}));
    for (const [how, list] of [["read", statement.reads], ["written", statement.writes], ["will carry", derived]]) {
      for (const column of list) {
        if (!column.tags.length) continue;
        const li = document.createElement("li");
        li.textContent = `${column.column} (${how})`;
        for (const tag of column.tags) li.append(Object.assign(document.createElement("span"), {className: "tag", textContent: tag}));
        columns.push(li);
      }
    }
  }
  $("columns").replaceChildren(...(columns.length ? columns : [Object.assign(document.createElement("li"), {textContent: "none"})]));
  $("decide").hidden = request.status !== "pending";
  $("grant-label").hidden = !request.max_grant_minutes;
  $("grant").max = request.max_grant_minutes;
}

async function load() {
  if (!token) {
    const who = await api("/api/whoami");
    if (!who.body.reviewer) { $("signin").hidden = false; return; }  // no token and no SSO: sign in
  }
  const {status, body} = await api(`/api/approvals/${encodeURIComponent(id)}`);
  if (status === 401) {
    sessionStorage.removeItem("pgproxy-reviewer-token");
    token = "";
    $("signin").hidden = false;
    text("signin-error", body.error || "sign in again");
    return;
  }
  if (status !== 200) { text("signin-error", body.error || `error ${status}`); $("signin").hidden = false; return; }
  render(body);
}

async function decide(decision) {
  const grant = Number($("grant").value || 0);
  const {status, body} = await api(`/api/approvals/${encodeURIComponent(id)}/decision`, {
    method: "POST",
    body: JSON.stringify({decision, reason: $("reason").value, statement_sha256: current.statement_sha256,
                          grant_minutes: decision === "approve" ? grant : 0}),
  });
  if (status !== 200) { text("decide-error", body.error || `error ${status}`); return; }
  text("decide-error", "");
  await load();
}

function signIn(value) {
  token = value.trim();
  sessionStorage.setItem("pgproxy-reviewer-token", token);
  text("signin-error", "");
  load();
}

document.addEventListener("DOMContentLoaded", async () => {
  $("signin-button").addEventListener("click", () => signIn($("token").value));
  $("approve").addEventListener("click", () => decide("approve"));
  $("deny").addEventListener("click", () => decide("deny"));
  const demo = await fetch("/api/demo-login").then((r) => r.json()).catch(() => ({enabled: false}));
  if (demo.enabled) {
    // The demo hands its reviewer's token only for the code printed on its terminal: nothing
    // an agent holds (its token, this link) signs in as the reviewer.
    $("demo").hidden = false;
    $("demo-login").addEventListener("click", async () => {
      const answer = await fetch("/api/demo-login", {
        method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify({code: $("demo-code").value}),
      }).then((r) => r.json()).catch(() => ({error: "the demo sign-in failed"}));
      if (answer.token) signIn(answer.token); else text("signin-error", answer.error);
    });
  }
  await load();
  // Another reviewer may decide meanwhile: keep the page current.
  setInterval(() => { if (current && current.status === "pending") load(); }, 2000);
});
