// One device: its figures, a zoomable plot per sensor over a chosen range (read from the
// anchored readings), its newest readings with receipts, its security events and keys.
"use strict";
header("devices");
const dev = new URLSearchParams(location.search).get("id") || "";
const range = {span: 3600, from: null, to: null};  // span: seconds before the newest reading
let newest = null, plots = [];

function card(k, v) {
  return el("div", {class: "card"}, el("div", {class: "k"}, k), el("div", {class: "v"}, v));
}

function utc(s) { return new Date(s * 1000).toISOString().slice(0, 19); }

async function loadDevice() {
  let d;
  try { d = await api("/api/devices/" + encodeURIComponent(dev)); showError("error", null); }
  catch (e) { showError("error", e); throw e; }
  document.getElementById("title").textContent = "Device " + d.id;
  document.title = "iot-anchor: " + d.id;
  document.getElementById("cards").replaceChildren(
    card("status", d.status), card("readings", num(d.readings)),
    card("last seq", d.last_seq === null ? "–" : num(d.last_seq)),
    card("missing seqs", num(d.missing)), card("readings today", num(d.today)),
    card("refused today", num(d.rejected_today)), card("last seen", ago(d.last_seen)),
    card("key fingerprint", d.fingerprint));
  const lt = d.latest[0];
  newest = lt ? (lt.ts !== null ? lt.ts : lt.anchored / 1000) : null;
  document.querySelector("#latest tbody").replaceChildren(...d.latest.map(r => el("tr", {},
    el("td", {class: "num"}, r.seq),
    el("td", {}, r.ts === null ? "(no clock)" : when(r.ts * 1000)),
    el("td", {}, when(r.anchored)),
    el("td", {}, Object.entries(r.data).map(([k, v]) => k + "=" + v).join("  ")),
    el("td", {}, el("a", {href: "/console/receipts?dev=" + encodeURIComponent(d.id) + "&seq=" + r.seq},
                    "check"), " ",
       el("a", {href: "/receipt/" + encodeURIComponent(d.id) + "/" + r.seq,
                download: d.id + "-" + r.seq + ".json"}, "JSON")))));
  const gaps = document.getElementById("gaps");
  gaps.replaceChildren(d.missing === 0 ? el("span", {class: "muted"}, "none: every seq up to "
      + (d.last_seq === null ? "–" : num(d.last_seq)) + " is anchored")
    : el("span", {}, num(d.missing) + " missing: " + d.gaps.map(([a, b]) =>
        a === b ? String(a) : a + "–" + b).join(", ")
      + (d.gaps_checked_to !== null ? ` … (listed up to seq ${num(d.gaps_checked_to)})` : "")));
  document.querySelector("#events tbody").replaceChildren(...(d.events.length ? d.events.map(e =>
    el("tr", {}, el("td", {}, when(e.t)), el("td", {class: "bad"}, e.kind),
       el("td", {class: "num"}, e.seq), el("td", {}, e.detail)))
    : [el("tr", {}, el("td", {class: "muted", colspan: "4"}, "none"))]));
  document.querySelector("#keys tbody").replaceChildren(...d.keys.map(k => el("tr", {},
    el("td", {}, el("code", {}, k.fingerprint)),
    el("td", {}, "entry " + k.from_entry + " (" + when(k.from_t) + ")"),
    el("td", {}, k.until_entry === null ? (d.status === "revoked" ? "revoked" : "in use")
                 : "entry " + k.until_entry + " (" + when(k.until_t) + ")"))));
  document.querySelector("#days tbody").replaceChildren(...d.days.map(x => el("tr", {},
    el("td", {}, new Date(x.day * 86400000).toISOString().slice(0, 10)),
    el("td", {class: "num"}, num(x.readings)), el("td", {class: "num"}, num(x.rejected)))));
}

async function loadSeries() {
  const p = new URLSearchParams();
  if (range.span === "all") { p.set("from", "0"); p.set("to", "99999999999"); }
  else if (range.span !== null) {
    if (newest === null) return;
    p.set("from", String(newest - range.span)); p.set("to", String(newest));
  } else { p.set("from", String(range.from)); p.set("to", String(range.to)); }
  let s;
  try { s = await api("/api/devices/" + encodeURIComponent(dev) + "/series?" + p);
        showError("series-error", null); }
  catch (e) { showError("series-error", e); return; }
  const box = document.getElementById("plots");
  box.dataset.points = String(s.count);
  document.getElementById("count").textContent = num(s.count) + " readings from "
    + when(s.from * 1000) + " to " + when(s.to * 1000) + ".";
  if (!haveCharts()) { chartsMissing("series-error"); return; }
  const names = Object.keys(s.sensors).sort();
  if (plots.length !== names.length || plots.some((p, k) => p.name !== names[k])) {
    for (const p of plots) p.plot.destroy();
    box.replaceChildren();
    plots = names.map(name => {
      const div = el("div", {class: "plot", "data-sensor": name});
      box.append(div);
      const plot = new uPlot({width: Math.max(300, (box.clientWidth || 900) - 24), height: 220,
        title: name, cursor: {sync: {key: "device"}}, scales: {x: {time: true}},
        series: [{}, {label: name, stroke: "#1f5fbf", width: 1.5, points: {show: s.count < 400}}],
        axes: [{}, {size: 60}]}, [s.t, s.sensors[name]], div);
      return {name, plot, div};
    });
  } else {
    for (const p of plots) p.plot.setData([s.t, s.sensors[p.name]]);
  }
  for (const p of plots) p.div.dataset.points = String(s.sensors[p.name].filter(v => v !== null).length);
  if (!names.length) box.replaceChildren(el("div", {class: "muted"}, "no readings in this range"));
}

async function refresh() {
  await loadDevice();
  if (range.span !== null) await loadSeries();  // a range that follows the newest reading
}

document.addEventListener("DOMContentLoaded", () => {
  if (!dev) { showError("error", "no device: open this page from the devices table"); return; }
  for (const b of document.querySelectorAll("#ranges button[data-span]")) {
    b.addEventListener("click", () => {
      range.span = b.dataset.span === "all" ? "all" : Number(b.dataset.span);
      for (const o of document.querySelectorAll("#ranges button")) o.classList.toggle("on", o === b);
      loadSeries();
    });
  }
  document.getElementById("apply").addEventListener("click", () => {
    const f = document.getElementById("from").value, t = document.getElementById("to").value;
    if (!f || !t) { showError("series-error", "give both times"); return; }
    range.span = null;
    range.from = Date.parse(f + "Z") / 1000; range.to = Date.parse(t + "Z") / 1000;
    for (const o of document.querySelectorAll("#ranges button")) o.classList.remove("on");
    loadSeries();
  });
  (async () => {
    try { await loadDevice(); } catch (e) { return; }
    if (newest !== null) {
      document.getElementById("from").value = utc(newest - 3600);
      document.getElementById("to").value = utc(newest);
    }
    await loadSeries();
    setTimeout(() => poll(refresh, 5), 5000);
  })();
});
