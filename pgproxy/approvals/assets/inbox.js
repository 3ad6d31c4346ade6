// The inbox: the pending requests the reviewer may decide, filtered by database, agent and rule,
// each linking to its page. Everything comes from the API with the reviewer's token (or an SSO
// proxy's header), and is written with textContent (never as HTML). reviewer.js, loaded before it,
// has what it shares with the request page.
"use strict";
let requests = [];
const FILTERS = ["database", "agent", "rule"];

function visible(value) {
  return value.replace(INVISIBLE, (c) => `⟨${codePoint(c)}⟩`);
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

document.addEventListener("DOMContentLoaded", async () => {
  for (const name of FILTERS) $(`filter-${name}`).addEventListener("change", show);
  await wireSignIn();
  await load();
  setInterval(() => { if (!$("inbox").hidden) load(); }, 5000);  // new requests come, others are decided
});
