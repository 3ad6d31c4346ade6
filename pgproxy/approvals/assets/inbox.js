// The inbox: the pending requests the reviewer may decide, filtered by database, agent and rule,
// each linking to its page. Everything comes from the API with the reviewer's token (or an SSO
// proxy's header), and is written with textContent (never as HTML).
"use strict";
const $ = (name) => document.getElementById(name);
let token = sessionStorage.getItem("pgproxy-reviewer-token") || "";
let requests = [];
const FILTERS = ["database", "agent", "rule"];

async function api(path, options = {}) {
  const headers = {"Content-Type": "application/json"};
  if (token) headers["Authorization"] = "Bearer " + token;
  const response = await fetch(path, {...options, headers});
  const body = await response.json().catch(() => ({}));
  return {status: response.status, body};
}

// The same class as the request page's (approval.js) and display.py's INVISIBLE_CLASS: each such
// character is shown as a ⟨U+XXXX⟩ marker.
const INVISIBLE = new RegExp("[\\p{Cf}\\p{Zl}\\p{Zp}\\x00-\\x08\\x0B\\x0C\\x0E-\\x1F\\x7F-\\x9F\\xA0\\u1680\\u2000-\\u200A\\u202F\\u205F" +
                             "\\u3000\\u115F\\u1160\\u3164\\uFFA0\\u034F\\u180B-\\u180F\\uFE00-\\uFE0F\\u2800\\u{E0100}-\\u{E01EF}]", "gu");

function visible(value) {
  return value.replace(INVISIBLE, (c) => `⟨U+${c.codePointAt(0).toString(16).toUpperCase().padStart(4, "0")}⟩`);
}

// As on the request page: the reviewer's local time, with the UTC offset and the zone's name.
function when(seconds) {
  const date = new Date(seconds * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  const minutes = -date.getTimezoneOffset();
  const offset = `${minutes < 0 ? "-" : "+"}${pad(Math.floor(Math.abs(minutes) / 60))}:${pad(Math.abs(minutes) % 60)}`;
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
         `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())} ${offset} (${zone})`;
}

function chosen() {
  return Object.fromEntries(FILTERS.map((name) => [name, $(`filter-${name}`).value]));
}

function fillFilters() {
  // Each filter offers the values pending requests have (and keeps the one chosen).
  const params = new URLSearchParams(location.search);
  for (const name of FILTERS) {
    const select = $(`filter-${name}`);
    const keep = select.dataset.loaded ? select.value : (params.get(name) || "");
    const values = [...new Set([...requests.map((r) => r[name]), ...(keep ? [keep] : [])])].sort();
    select.replaceChildren(Object.assign(document.createElement("option"), {value: "", textContent: "all"}),
                           ...values.map((v) => Object.assign(document.createElement("option"), {value: v, textContent: visible(v)})));
    select.value = keep;
    select.dataset.loaded = "1";
  }
}

function show() {
  const filter = chosen();
  const params = new URLSearchParams(Object.entries(filter).filter(([, v]) => v));
  history.replaceState(null, "", [...params].length ? `?${params}` : location.pathname);
  const shown = requests.filter((r) => FILTERS.every((name) => !filter[name] || r[name] === filter[name]));
  $("count").textContent = `${shown.length} of ${requests.length} pending request${requests.length === 1 ? "" : "s"}`;
  $("requests").replaceChildren(...shown.map((request) => {
    const li = document.createElement("li");
    const link = Object.assign(document.createElement("a"), {href: `/approvals/${encodeURIComponent(request.id)}`,
                                                             textContent: visible(request.statement.slice(0, 300))});
    const about = Object.assign(document.createElement("p"), {className: "muted", textContent:
      `${visible(request.agent)} on ${visible(request.database)} · rule ${visible(request.rule)} · ` +
      `requested ${when(request.created_at)} · expires ${when(request.expires_at)}`});
    li.append(link, about);
    return li;
  }));
}

async function load() {
  if (!token) {
    const who = await api("/api/whoami");
    if (!who.body.reviewer) { $("signin").hidden = false; return; }  // no token and no SSO: sign in
  }
  const {status, body} = await api("/api/approvals?status=pending&limit=1000");
  if (status === 401) {
    sessionStorage.removeItem("pgproxy-reviewer-token");
    token = "";
    $("signin").hidden = false;
    $("signin-error").textContent = body.error || "sign in again";
    return;
  }
  if (status !== 200) { $("signin-error").textContent = body.error || `error ${status}`; $("signin").hidden = false; return; }
  $("signin").hidden = true;
  $("inbox").hidden = false;
  requests = body.approvals;
  fillFilters();
  show();
}

function signIn(value) {
  token = value.trim();
  sessionStorage.setItem("pgproxy-reviewer-token", token);
  $("signin-error").textContent = "";
  load();
}

document.addEventListener("DOMContentLoaded", async () => {
  $("signin-button").addEventListener("click", () => signIn($("token").value));
  for (const name of FILTERS) $(`filter-${name}`).addEventListener("change", show);
  const demo = await fetch("/api/demo-login").then((r) => r.json()).catch(() => ({enabled: false}));
  if (demo.enabled) {
    $("demo").hidden = false;
    $("demo-login").addEventListener("click", async () => {
      const answer = await fetch("/api/demo-login", {
        method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify({code: $("demo-code").value}),
      }).then((r) => r.json()).catch(() => ({error: "the demo sign-in failed"}));
      if (answer.token) signIn(answer.token); else $("signin-error").textContent = answer.error;
    });
  }
  await load();
  setInterval(() => { if (!$("inbox").hidden) load(); }, 5000);  // new requests come, others are decided
});
