// The approval page: everything about the request comes from the API with the reviewer's token,
// and is written with textContent (never as HTML). reviewer.js, loaded before it, has what it
// shares with the inbox ($, token, api, INVISIBLE, codePoint, when, signIn, wireSignIn).
"use strict";
const id = decodeURIComponent(location.pathname.split("/").pop());
let current = null;
let flagged = new Map();  // where invisible characters were found -> their code points

function flag(where, points) {
  if (!points.length) return;
  const found = flagged.get(where) || new Set();
  for (const point of points) found.add(point);
  flagged.set(where, found);
}

// Write `value` into `element` as text, each invisible character as a visible ⟨U+XXXX⟩ marker.
function marked(element, value, where) {
  const parts = [];
  let last = 0;
  const points = [];
  for (const match of value.matchAll(INVISIBLE)) {
    if (match.index > last) parts.push(document.createTextNode(value.slice(last, match.index)));
    const point = codePoint(match[0]);
    points.push(point);
    parts.push(Object.assign(document.createElement("span"), {
      className: "invisible", textContent: `⟨${point}⟩`, title: `invisible character ${point}`}));
    last = match.index + match[0].length;
  }
  if (last < value.length) parts.push(document.createTextNode(value.slice(last)));
  element.replaceChildren(...parts);
  flag(where, points);
}

function text(name, value, where = name) {
  if (value == null || value === "") { $(name).textContent = "—"; return; }
  marked($(name), String(value), where);
}

function showWarnings() {
  const banner = $("invisible-warning");
  if (!flagged.size) { banner.hidden = true; return; }
  const places = [...flagged].map(([where, points]) => `${where} (${[...points].join(", ")})`);
  $("invisible-where").textContent = places.join("; ");
  banner.hidden = false;
}

// The whole text behind a cut one: fetched with the reviewer's token, saved as a file.
async function download(path, name) {
  const headers = token ? {"Authorization": "Bearer " + token} : {};
  const response = await fetch(path, {headers});
  if (response.status !== 200) { text("decide-error", `download failed: error ${response.status}`); return; }
  const link = Object.assign(document.createElement("a"), {href: URL.createObjectURL(await response.blob()), download: name});
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60000);
}

function cutNotice(element, shown, path, name, what) {
  // A text too long to show whole: what is shown, the whole text's hash, and a download.
  element.hidden = !shown || !shown.truncated;
  if (element.hidden) return;
  const button = Object.assign(document.createElement("button"), {type: "button", className: "secondary download",
                                                                  textContent: `Download the whole ${what}`});
  button.addEventListener("click", () => download(path, name));
  const hash = Object.assign(document.createElement("code"), {className: "sha", textContent: shown.sha256});
  element.replaceChildren(
    document.createTextNode(`Only the first ${shown.text.length.toLocaleString("en")} characters of this ${what} are shown; ` +
                            `it has ${shown.bytes.toLocaleString("en")} bytes. SHA-256 of the whole ${what}: `),
    hash, document.createElement("br"), button);
}

// What the request's status means for the statement, in a sentence.
const SUMMARY = {
  pending: "An AI agent's statement is waiting for a reviewer. Nothing of it has run.",
  approved: "Approved: the statement was released to run once for the agent's session; its rows (or its effect) went to the agent.",
  approved_masked: "Approved with masking: the statement was released to run once for the agent's session; its rows went to the agent with their tagged columns masked.",
  denied: "Denied: the statement did not run. The agent received an error with the reason.",
  expired: "Expired: nobody decided in time. The statement did not run; the agent received an error.",
  withdrawn: "Withdrawn: the agent cancelled or disconnected before a decision. The statement did not run.",
  abandoned: "Abandoned: pgproxy restarted while this request was pending. The statement did not run and never will.",
};

// What approving a statement of each kind changes; a kind missing here (reads) changes nothing.
// A request pgproxy could not analyse (no statements listed) is treated as a change: confirmed.
const CHANGES = {write: "writes data", ddl: "changes the schema", grant: "changes privileges", role: "changes roles",
                 copy_from: "writes data", session: "changes the session", transaction: "ends or changes a transaction",
                 utility: "runs a utility command", unknown: "does something pgproxy could not analyse",
                 copy_to: "exports data"};

function changes(request) {
  const statements = request.analysis.statements || [];
  if (!statements.length) return [CHANGES.unknown];
  return [...new Set(statements.map((s) => CHANGES[s.kind]).filter((what) => what))];
}

function render(request) {
  current = request;
  flagged = new Map();
  $("signin").hidden = true;
  $("request").hidden = false;
  text("status", request.status);
  $("summary").textContent = SUMMARY[request.status === "approved" && request.masked ? "approved_masked" : request.status] ||
    `This request is ${request.status}.`;
  const detail = request.status === "pending"
    ? (request.required_approvals > 1 ? `${request.approved_by.length} of ${request.required_approvals} approvals` : "")
    : (request.decided_by ? `by ${request.decided_by}: ${request.decision_reason || ""}` +
                            (request.decided_at ? ` (${when(request.decided_at)})` : "") : "");
  text("status-detail", detail);
  text("agent", `${request.agent} (${request.groups.join(", ") || "no groups"})`);
  text("database", request.database);
  text("application", request.application_name);
  text("client", request.client_address);
  text("rule", `${request.rule}: ${request.reason}`);
  // The agent's justification (its leading /* pgproxy: reason="…" */ comment), shown as its claim.
  text("justification", request.justification || "none given", "agent's reason");
  $("justification-note").hidden = !request.justification;
  text("created", when(request.created_at));
  text("expires", when(request.expires_at));
  text("statement", request.statement_formatted || request.statement, "statement");
  const whole = request.statement_text;
  if (whole) flag("statement", whole.invisible);  // also in what is not shown
  cutNotice($("statement-cut"), whole, request.download_url, `approval-${request.id}-statement.sql`, "statement");
  text("hash", request.statement_sha256);
  const params = $("parameters");
  const details = request.parameter_texts || [];
  params.replaceChildren(...request.parameters.map((p, index) => {
    const li = document.createElement("li");
    const where = `parameter $${index + 1}`;
    if (p === null) { li.textContent = "NULL"; return li; }
    const value = document.createElement("span");
    marked(value, p, where);
    li.append(value);
    const detail = details[index];
    if (detail) {
      flag(where, detail.invisible);
      const cut = document.createElement("p");
      cutNotice(cut, detail, `${request.download_url}?parameter=${index}`, `approval-${request.id}-parameter-${index + 1}.txt`,
                "parameter");
      if (!cut.hidden) li.append(cut);
    }
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
  showEffect(request);
  $("columns").replaceChildren(...(columns.length ? columns : [Object.assign(document.createElement("li"), {textContent: "none"})]));
  showWarnings();
  $("decide").hidden = request.status !== "pending";
  $("grant-label").hidden = !request.max_grant_minutes;
  // Approving with masking is offered only when pgproxy can mask the result; otherwise the page says why.
  const masking = request.analysis.masking || {};
  $("approve-masked").hidden = $("masked-means").hidden = masking.possible !== true;
  $("masked-not").hidden = masking.possible === true || !masking.reason;
  text("masked-not", masking.reason ? `Approving with masking is not possible: ${masking.reason}.` : "");
  $("grant-means").hidden = !request.max_grant_minutes;
  $("grant").max = request.max_grant_minutes;
}

// What the statement will do: the planner's estimate (EXPLAIN, run by pgproxy in the
// background while the request waits) and plan, or why there is none; what DDL changes.
function showEffect(request) {
  const statements = request.analysis.statements || [];
  const preview = request.preview || {state: "none", note: ""};
  let sentence = preview.note;
  if (preview.state === "estimating") sentence = "Estimating… (pgproxy is asking the planner; nothing of the statement runs)";
  if (preview.state === "ready") {
    const rows = preview.rows == null ? "an unknown number of" : `about ${preview.rows.toLocaleString("en")}`;
    const writes = statements.length === 1 && statements[0].kind === "write" && statements[0].command !== "SELECT";
    sentence = `The planner estimates it ${writes ? "changes" : "returns"} ${rows} row${preview.rows === 1 ? "" : "s"}.`;
  }
  text("estimate", sentence, "estimate");
  $("plan-box").hidden = preview.state !== "ready";
  if (preview.state === "ready") marked($("plan"), preview.plan, "plan");
  const targets = [];
  for (const statement of statements) {
    for (const target of statement.ddl_targets || []) {
      targets.push(Object.assign(document.createElement("li"), {textContent: `${statement.command} changes ${target}`}));
    }
  }
  $("ddl-targets").replaceChildren(...targets);
  $("ddl-targets").hidden = !targets.length;
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

document.addEventListener("DOMContentLoaded", async () => {
  $("approve").addEventListener("click", () => {
    // A statement that changes something is approved in two steps: the dialog names what it changes.
    const what = current ? changes(current) : [];
    if (!what.length) { decide("approve"); return; }
    $("confirm-what").textContent = what.join(", ");
    $("confirm").showModal();
  });
  $("confirm-approve").addEventListener("click", () => { $("confirm").close(); decide("approve"); });
  $("confirm-cancel").addEventListener("click", () => $("confirm").close());
  $("approve-masked").addEventListener("click", () => decide("approve_masked"));  // only reads can be masked
  $("deny").addEventListener("click", () => decide("deny"));
  await wireSignIn();
  await load();
  // Another reviewer may decide meanwhile: keep the page current.
  setInterval(() => { if (current && current.status === "pending") load(); }, 2000);
});
