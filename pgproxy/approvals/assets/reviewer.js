// What the request page (approval.js) and the inbox (inbox.js) share: the reviewer's token,
// the API, the class of invisible characters, local times, and signing in. Loaded before them.
"use strict";
const $ = (name) => document.getElementById(name);
let token = sessionStorage.getItem("pgproxy-reviewer-token") || "";

async function api(path, options = {}) {
  // Without a pasted token, an SSO proxy in front of pgproxy may supply one on every request.
  const headers = {"Content-Type": "application/json"};
  if (token) headers["Authorization"] = "Bearer " + token;
  const response = await fetch(path, {...options, headers});
  const body = await response.json().catch(() => ({}));
  return {status: response.status, body};
}

// Characters that show as nothing, as a space, or reorder what surrounds them (a right-to-left
// override makes "txt.exe" of "exe.txt"): the same class as pgproxy/approvals/display.py's
// INVISIBLE_CLASS. Each is shown as a marker, and a banner says where they are.
const INVISIBLE = new RegExp("[\\p{Cf}\\p{Zl}\\p{Zp}\\x00-\\x08\\x0B\\x0C\\x0E-\\x1F\\x7F-\\x9F\\xA0\\u1680\\u2000-\\u200A\\u202F\\u205F" +
                             "\\u3000\\u115F\\u1160\\u3164\\uFFA0\\u034F\\u180B-\\u180F\\uFE00-\\uFE0F\\u2800\\u{E0100}-\\u{E01EF}]", "gu");

function codePoint(character) { return "U+" + character.codePointAt(0).toString(16).toUpperCase().padStart(4, "0"); }

// A time as the reviewer's local time, with its UTC offset and the zone's name:
// "2026-12-02 05:12:00 +01:00 (Europe/Paris)".
function when(seconds) {
  if (seconds == null) return "";
  const date = new Date(seconds * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  const minutes = -date.getTimezoneOffset();
  const offset = `${minutes < 0 ? "-" : "+"}${pad(Math.floor(Math.abs(minutes) / 60))}:${pad(Math.abs(minutes) % 60)}`;
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
         `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())} ${offset} (${zone})`;
}

// Signing in: a pasted token, or the demo's code; then the page's own `load()` runs again.
function signIn(value) {
  token = value.trim();
  sessionStorage.setItem("pgproxy-reviewer-token", token);
  $("signin-error").textContent = "";
  load();
}

async function wireSignIn() {
  $("signin-button").addEventListener("click", () => signIn($("token").value));
  const demo = await fetch("/api/demo-login").then((r) => r.json()).catch(() => ({enabled: false}));
  if (demo.enabled) {
    // The demo hands its reviewer's token only for the code printed on its terminal: nothing
    // an agent holds (its token, a request's link) signs in as the reviewer.
    $("demo").hidden = false;
    $("demo-login").addEventListener("click", async () => {
      const answer = await fetch("/api/demo-login", {
        method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify({code: $("demo-code").value}),
      }).then((r) => r.json()).catch(() => ({error: "the demo sign-in failed"}));
      if (answer.token) signIn(answer.token); else $("signin-error").textContent = answer.error;
    });
  }
}
