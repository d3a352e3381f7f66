// Shared by the console's pages: the header, JSON fetches, formatting, polling.
"use strict";

const PAGES = [["", "Overview"], ["devices", "Devices"], ["receipts", "Receipts"],
               ["records", "Rules, datasets, models"]];

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function header(here) {
  const h = el("header", {}, el("b", {}, "iot-anchor console"));
  for (const [path, name] of PAGES) {
    h.append(el("a", {href: "/console/" + path, class: path === here ? "here" : ""}, name));
  }
  h.append(el("span", {class: "status", id: "live-status"}, ""));
  document.body.prepend(h);
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// GET a JSON answer; an error answer's {"error": ...} (the console's API) or text (the log's
// routes) becomes the ApiError's message.
async function api(path) {
  const r = await fetch(path, {headers: {"Accept": "application/json"}});
  const text = await r.text();
  let body = null;
  try { body = JSON.parse(text); } catch (e) { body = null; }
  if (!r.ok) throw new ApiError(r.status, (body && body.error) || text.trim() || r.status + " " + r.statusText);
  if (body === null) throw new ApiError(r.status, path + " did not answer JSON");
  return body;
}

function num(n) { return n === null || n === undefined ? "–" : Number(n).toLocaleString("en"); }

function when(ms) {
  if (ms === null || ms === undefined) return "–";
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

function ago(ms) {
  if (ms === null || ms === undefined) return "never";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 172800) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " days ago";
}

function showError(where, err) {
  const box = document.getElementById(where);
  if (box) box.textContent = err ? String(err.message || err) : "";
}

// Calls fn now and every `seconds` while the page is open; the header says when it last
// succeeded. A failing call keeps polling (the server may be restarting).
function poll(fn, seconds) {
  const status = () => document.getElementById("live-status");
  async function tick() {
    try {
      await fn();
      status().textContent = "live: updated " + new Date().toLocaleTimeString("en-GB");
    } catch (e) {
      status().textContent = "live: " + (e.message || e);
    }
    setTimeout(tick, seconds * 1000);
  }
  tick();
}

function haveCharts() {
  return typeof uPlot !== "undefined";
}

function chartsMissing(where) {
  const box = document.getElementById(where);
  if (box) box.textContent = "The charting library (uPlot) is not installed on this gateway: "
    + "run 'make setup' in the iot-anchor checkout, or reinstall the package.";
}
