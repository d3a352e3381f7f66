// Record entries of the kinds the ledger holds (rules, action, dataset, model, ...): the
// newest 50 of each, with their fields as stored.
"use strict";
header("records");

async function load() {
  const {kinds} = await api("/api/records");
  const box = document.getElementById("lists");
  if (!kinds.length) {
    box.replaceChildren(el("p", {class: "muted"}, "This ledger has no rules, actions, datasets or models yet."));
    return;
  }
  const panels = [];
  for (const kind of kinds) {
    const {records} = await api("/api/records/" + encodeURIComponent(kind) + "?limit=50");
    panels.push(el("div", {class: "panel", "data-kind": kind}, el("h2", {}, kind + " (newest " + records.length + ")"),
      el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "entry"), el("th", {}, "time"), el("th", {}, "fields"))),
        el("tbody", {}, ...records.map(r => el("tr", {}, el("td", {}, r.i), el("td", {}, when(r.t)),
          el("td", {}, el("pre", {}, JSON.stringify(r.fields, null, 1)))))))));
  }
  box.replaceChildren(...panels);
}

document.addEventListener("DOMContentLoaded", () => poll(load, 10));
