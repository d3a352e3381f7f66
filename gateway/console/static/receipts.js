// The receipt page: load a receipt (pasted, a file, or ?dev=&seq= from this gateway) and
// check it with verify.js against the vkey the user enters.
"use strict";
header("receipts");

async function check() {
  const res = await verifyReceipt(document.getElementById("receipt").value,
                                  document.getElementById("vkey").value,
                                  document.getElementById("devkey").value);
  const out = document.getElementById("result"), steps = document.getElementById("steps");
  steps.replaceChildren(...STEPS.map((name, k) => {
    const n = k + 1, passed = res.steps.includes(n), failed = !res.ok && res.step === n;
    return el("li", {class: passed ? "ok" : failed ? "bad" : "muted"},
              name + (passed ? ": holds" : failed ? ": FAILS" : ": not checked"));
  }));
  if (res.ok) {
    out.className = "ok";
    out.dataset.result = "valid";
    out.textContent = res.device !== undefined
      ? `valid: ${res.device} seq ${res.seq} is in ledger entry ${res.entry} of the tree of size ${res.size}`
        + (res.signed ? ", signed by the device key" : " (device signature not checked: no device key given)")
      : `valid: the ${res.kind} entry ${res.entry} is in the tree of size ${res.size}`;
  } else {
    out.className = "bad";
    out.dataset.result = "invalid";
    out.dataset.step = String(res.step);
    out.textContent = `invalid at step ${res.step} (${res.stepName}): ${res.reason}`;
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  const q = new URLSearchParams(location.search);
  document.getElementById("check").addEventListener("click", () => check().catch(e => showError("result", e)));
  document.getElementById("file").addEventListener("change", async e => {
    const f = e.target.files[0];
    if (f) document.getElementById("receipt").value = await f.text();
  });
  if (q.get("dev") && q.get("seq")) {
    try {
      const r = await api("/receipt/" + encodeURIComponent(q.get("dev")) + "/" + encodeURIComponent(q.get("seq")));
      document.getElementById("receipt").value = JSON.stringify(r, null, 2);
    } catch (e) { showError("result", e); }
  }
  document.getElementById("live-status").textContent = "checks run in this page";
});
