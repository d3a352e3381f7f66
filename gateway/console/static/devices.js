// The devices table: sorted, filtered and paged by the server (GET /api/devices), so it
// stays fast with thousands of devices; the page refreshes itself every 5 s.
"use strict";
header("devices");
const state = {sort: "id", desc: false, q: "", status: "", offset: 0, limit: 100, total: 0};

async function load() {
  const p = new URLSearchParams({sort: state.sort, desc: state.desc ? "1" : "", q: state.q,
                                 status: state.status, offset: state.offset, limit: state.limit});
  let d;
  try { d = await api("/api/devices?" + p); showError("error", null); }
  catch (e) { showError("error", e); throw e; }
  state.total = d.total;
  const body = document.querySelector("#devices tbody");
  body.replaceChildren(...d.devices.map(r => el("tr", {"data-device": r.id},
    el("td", {}, el("a", {href: "/console/device?id=" + encodeURIComponent(r.id)}, r.id)),
    el("td", {class: r.status === "revoked" ? "revoked" : ""}, r.status),
    el("td", {title: when(r.last_t)}, ago(r.last_t)),
    el("td", {class: "num"}, r.last_seq === null ? "–" : num(r.last_seq)),
    el("td", {class: "num" + (r.missing ? " bad" : "")}, num(r.missing)),
    el("td", {class: "num"}, num(r.today)),
    el("td", {class: "num" + (r.rejected_today ? " bad" : "")}, num(r.rejected_today)),
    el("td", {class: "num"}, num(r.readings)),
    el("td", {}, el("code", {}, r.fingerprint)))));
  const last = Math.min(d.total, state.offset + d.devices.length);
  document.getElementById("range").textContent = d.total
    ? `${num(state.offset + 1)}–${num(last)} of ${num(d.total)} devices` : "no devices";
  document.getElementById("prev").disabled = state.offset === 0;
  document.getElementById("next").disabled = last >= d.total;
  for (const th of document.querySelectorAll("th.sort")) {
    th.classList.toggle("on", th.dataset.sort === state.sort);
    th.classList.toggle("asc", !state.desc);
  }
}

function reload() { load().catch(() => {}); }

document.addEventListener("DOMContentLoaded", () => {
  for (const th of document.querySelectorAll("th.sort")) {
    th.addEventListener("click", () => {
      if (state.sort === th.dataset.sort) state.desc = !state.desc;
      else { state.sort = th.dataset.sort; state.desc = th.dataset.sort !== "id"; }
      state.offset = 0; reload();
    });
  }
  let timer = null;
  document.getElementById("q").addEventListener("input", e => {
    clearTimeout(timer);
    timer = setTimeout(() => { state.q = e.target.value; state.offset = 0; reload(); }, 200);
  });
  document.getElementById("status").addEventListener("change", e => {
    state.status = e.target.value; state.offset = 0; reload(); });
  document.getElementById("limit").addEventListener("change", e => {
    state.limit = Number(e.target.value); state.offset = 0; reload(); });
  document.getElementById("prev").addEventListener("click", () => {
    state.offset = Math.max(0, state.offset - state.limit); reload(); });
  document.getElementById("next").addEventListener("click", () => {
    state.offset += state.limit; reload(); });
  poll(load, 5);
});
