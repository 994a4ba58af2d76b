// i2vd web page: drag and drop onto the form, and live updates pushed by server-sent events.
// Served as a file (the Content-Security-Policy allows no inline script).
"use strict";

function setUpDrop() {
  const drop = document.getElementById("drop");
  const input = document.getElementById("image");
  const chosen = document.getElementById("chosen");
  if (!drop || !input) return;
  const show = () => {
    chosen.textContent = Array.from(input.files).map((f) => f.name).join(", ");
  };
  input.addEventListener("change", show);
  ["dragenter", "dragover"].forEach((type) => drop.addEventListener(type, (e) => {
    e.preventDefault();
    drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((type) => drop.addEventListener(type, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer && e.dataTransfer.files.length) {
      input.files = e.dataTransfer.files;
      show();
    }
  });
}

// Re-render the live parts of the page (their HTML comes from the server) after events, at most
// a few times a second, and never under the user's cursor (a priority being typed).
let refreshTimer = null;
function refreshLive() {
  refreshTimer = null;
  document.querySelectorAll("[data-live]").forEach((el) => {
    if (el.contains(document.activeElement)) {
      scheduleRefresh();
      return;
    }
    fetch(el.dataset.live, {credentials: "same-origin"})
      .then((r) => (r.ok ? r.text() : null))
      .then((html) => { if (html !== null) el.innerHTML = html; })
      .catch(() => {});
  });
}
function scheduleRefresh() {
  if (refreshTimer === null) refreshTimer = setTimeout(refreshLive, 300);
}

const TERMINAL = ["job.succeeded", "job.failed", "job.cancelled"];

function listen() {
  const url = document.body.dataset.events;
  if (!url || !window.EventSource) return;
  const jobPage = document.body.dataset.jobPage;
  const source = new EventSource(url);
  source.onmessage = (message) => {
    let event;
    try { event = JSON.parse(message.data); } catch (e) { return; }
    if (jobPage && String(event.job_id) === jobPage && TERMINAL.includes(event.type)) {
      window.location.reload();  // the video, attempts and metadata appear with the whole page
      return;
    }
    if (!jobPage || String(event.job_id) === jobPage) scheduleRefresh();
  };
}

document.addEventListener("DOMContentLoaded", () => {
  setUpDrop();
  listen();
});
