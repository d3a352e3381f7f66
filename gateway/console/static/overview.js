// The overview: ledger totals, the running service's figures, the last hour's plots.
"use strict";
header("");
let ratePlot = null, refusedPlot = null, refusedKeys = "";

function card(k, v, id) {
  return el("div", {class: "card", id: id || ""}, el("div", {class: "k"}, k), el("div", {class: "v"}, v));
}

function plotInto(id, series, data, old) {
  const box = document.getElementById(id);
  const width = Math.max(300, (box.clientWidth || 800) - 24);
  if (old) { old.setData(data); return old; }
  return new uPlot({width: width, height: 200, series: series,
                    scales: {x: {time: true}}, axes: [{}, {size: 60}]}, data, box);
}

async function refresh() {
  const o = await api("/api/overview");
  const L = o.ledger, live = o.live;
  const cards = document.getElementById("cards");
  cards.replaceChildren(
    card("readings anchored (ledger)", num(L.readings), "c-readings"),
    card("readings per second", o.rate === null ? "–" : o.rate.toFixed(1), "c-rate"),
    card("refused (ledger)", num(Object.values(L.rejected).reduce((a, b) => a + b, 0)), "c-refused"),
    card("devices", num(L.devices) + (L.revoked ? " (" + L.revoked + " revoked)" : ""), "c-devices"),
    card("ledger entries", num(L.entries), "c-entries"),
    card("checkpoint size", L.checkpoint ? num(L.checkpoint.size) : "none yet", "c-cp"),
    card("last commit", L.checkpoint ? ago(L.checkpoint.time) : "–", "c-cptime"),
    card("witness cosignatures", L.checkpoint ? num(L.checkpoint.cosignatures) : "–", "c-cosig"),
    ...L.witnesses.map(w => card("witness " + w.witness, w.state + " at size " + num(w.size)
                                 + ", " + ago(w.t))));
  if (live) {
    const mean = live.commit_count ? 1000 * live.commit_seconds_sum / live.commit_count : null;
    cards.append(
      card("broker", live.connected ? "connected" : "disconnected", "c-broker"),
      card("batch latency (last / mean)", live.last_commit_ms.toFixed(1) + " / "
           + (mean === null ? "–" : mean.toFixed(1)) + " ms", "c-latency"),
      card("last batch", num(live.last_batch) + " readings", "c-batch"),
      card("acks in flight / waiting", num(live.acks_in_flight) + " / " + num(live.acks_waiting), "c-acks"),
      card("verify queue / inbox", num(live.verifying) + " / " + num(live.inbox), "c-queue"),
      card("anchored since start", num(live.anchored || 0), "c-since"));
  } else {
    cards.append(card("service", "not running here (serve)", "c-broker"));
  }
  const rej = document.querySelector("#refused tbody");
  const reasons = Object.entries(L.rejected);
  rej.replaceChildren(...(reasons.length ? reasons.map(([r, n]) =>
    el("tr", {}, el("td", {}, r), el("td", {class: "num"}, num(n))))
    : [el("tr", {}, el("td", {class: "muted", colspan: "2"}, "nothing refused"))]));
  document.getElementById("checkpoint").textContent = L.checkpoint ? L.checkpoint.note : "(none yet)";
  const ev = document.querySelector("#events tbody");
  ev.replaceChildren(...(L.recent_events.length ? L.recent_events.map(e => el("tr", {},
    el("td", {}, when(e.t)), el("td", {class: "bad"}, e.kind),
    el("td", {}, el("a", {href: "/console/device?id=" + encodeURIComponent(e.dev)}, e.dev)),
    el("td", {class: "num"}, e.seq), el("td", {}, e.detail)))
    : [el("tr", {}, el("td", {class: "muted", colspan: "5"}, "none"))]));
  if (!haveCharts()) { chartsMissing("error"); return; }
  const h = o.history;
  ratePlot = plotInto("plot-rate", [{}, {label: "anchored/s", stroke: "#1f5fbf", width: 2}],
                      [h.t, h.anchored_per_s], ratePlot);
  const keys = Object.keys(h.refused_per_s).join(",");
  if (keys !== refusedKeys && refusedPlot) { refusedPlot.destroy(); refusedPlot = null; }
  refusedKeys = keys;
  const colors = ["#b3261e", "#e37400", "#7b1fa2", "#00796b", "#5d4037", "#455a64"];
  const names = Object.keys(h.refused_per_s);
  refusedPlot = plotInto("plot-refused",
    [{}, ...(names.length ? names : ["refused"]).map((n, k) =>
      ({label: n, stroke: colors[k % colors.length], width: 2}))],
    [h.t, ...(names.length ? names.map(n => h.refused_per_s[n]) : [h.t.map(() => 0)])],
    refusedPlot);
}

document.addEventListener("DOMContentLoaded", () => poll(refresh, 2));
