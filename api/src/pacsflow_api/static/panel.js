// The reviewer panel's only script: reveal (audited by the API), the marker toggle, the verdict form.
"use strict";

function text(el, value) { el.textContent = value; }

async function problemDetail(response) {
  try { return (await response.json()).detail || response.statusText; } catch (e) { return response.statusText; }
}

function imageUrl(result, marker) { return result.image + "?marker=" + (marker ? "true" : "false"); }

async function loadDraft() {
  const section = document.getElementById("draft-section");
  if (!section) { return; }
  const response = await fetch("/api/v1/studies/" + encodeURIComponent(section.dataset.study) + "/draft",
                               {credentials: "same-origin"});
  if (!response.ok) { return; }
  document.getElementById("draft-text").value = (await response.json()).text;
  section.hidden = false;
}

function wireCopy() {
  const button = document.getElementById("copy-draft");
  if (!button) { return; }
  button.addEventListener("click", async () => {
    const area = document.getElementById("draft-text");
    area.select();
    let copied = false;
    try { await navigator.clipboard.writeText(area.value); copied = true; } catch (e) { copied = document.execCommand("copy"); }
    text(document.getElementById("copy-status"), copied ? "Draft copied." : "Select the text and copy it.");
  });
}

// A critical result whose priority outputs are held (triage.requireApproval): offer the decision after the reveal.
async function offerApproval(section, tracking) {
  const box = section.querySelector(".approval");
  const response = await fetch("/api/v1/approvals?limit=500", {credentials: "same-origin"});
  if (!box || !response.ok) { return; }
  if (!(await response.json()).some((item) => item.tracking_uid === tracking)) { return; }
  box.hidden = false;
  const decide = async (verb) => {
    const answer = await fetch("/api/v1/results/" + encodeURIComponent(tracking) + "/" + verb,
                               {method: "POST", credentials: "same-origin"});
    if (answer.ok) {
      const state = (await answer.json()).state;
      text(box.querySelector(".approval-status"),
           state === "approved" ? "Approved: the priority outputs are released." : "Rejected: they will not be sent.");
      box.querySelectorAll("button").forEach((b) => { b.hidden = true; });
    } else {
      text(box.querySelector(".approval-status"), "Not saved: " + await problemDetail(answer));
    }
  };
  box.querySelector("button.approve").addEventListener("click", () => decide("approve"));
  box.querySelector("button.reject-priority").addEventListener("click", () => decide("reject"));
}

function wire(section) {
  const tracking = section.dataset.tracking;
  const button = section.querySelector("button.reveal");
  const panel = section.querySelector(".revealed");
  const img = section.querySelector("img.key-image");
  const toggle = section.querySelector("input.marker-toggle");
  const form = section.querySelector("form.feedback");
  const status = section.querySelector(".status");
  let result = null;

  button.addEventListener("click", async () => {
    const response = await fetch("/api/v1/results/" + encodeURIComponent(tracking) + "/reveal",
                                 {method: "POST", credentials: "same-origin"});
    if (!response.ok) { text(status, await problemDetail(response)); panel.hidden = false; return; }
    result = (await response.json()).result;
    text(section.querySelector(".finding"),
         result.finding.meaning + (result.present ? ": present" : ": absent") + (result.critical ? " (CRITICAL)" : ""));
    text(section.querySelector(".probability"), result.probability.toFixed(3));
    text(section.querySelector(".model"), result.model_name + " version " + result.model_version);
    img.src = imageUrl(result, toggle.checked);
    panel.hidden = false;
    button.hidden = true;
    panel.focus();  // the button is gone: keyboard focus moves to what it revealed
    loadDraft();
    if (result.critical) { offerApproval(section, tracking); }
  });

  toggle.addEventListener("change", () => { if (result) { img.src = imageUrl(result, toggle.checked); } });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const body = {verdict: data.get("verdict"), comment: data.get("comment") || null};
    if (body.verdict === "modify" && data.get("corrected_finding")) { body.corrected_finding = data.get("corrected_finding"); }
    const response = await fetch("/api/v1/results/" + encodeURIComponent(tracking) + "/feedback", {
      method: "POST", credentials: "same-origin", headers: {"Content-Type": "application/json"},
      body: JSON.stringify(body)});
    text(status, response.ok ? "Verdict saved: " + body.verdict + "." : "Not saved: " + await problemDetail(response));
  });
}

document.querySelectorAll("section.result").forEach(wire);
wireCopy();
