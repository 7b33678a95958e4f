// Worklist page: asks for an API token once (kept in sessionStorage), polls
// /api/v1/worklist and renders the rows in triage-priority order. No framework, no CDN.
"use strict";

(function () {
  const API = "/api/v1";
  const KEY = "ct-triage-token";
  const REFRESH_MS = 5000;
  const previews = new Map(); // job id -> blob URL (a done job's preview never changes)
  let timer = null;

  const $ = (id) => document.getElementById(id);

  function token() { return sessionStorage.getItem(KEY); }

  async function api(path, asBlob) {
    const r = await fetch(API + path, { headers: { Authorization: "Bearer " + token() } });
    if (r.status === 401) { logout("The token was refused; enter a valid token."); throw new Error("401"); }
    if (!r.ok) { throw new Error(r.status + " " + (await r.text())); }
    return asBlob ? r.blob() : r.json();
  }

  function fmt(v, digits) { return v === null || v === undefined ? "–" : Number(v).toFixed(digits); }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function showFull(item, url) {
    const dialog = $("preview-dialog");
    const img = $("preview-full");
    img.src = url;
    img.alt = "Key slice of " + who(item) + " with the lesion overlay, at full size";
    $("preview-disclaimer").textContent = $("disclaimer").textContent;
    if (!dialog.open) dialog.showModal();
  }

  function who(item) {
    return [item.patient_name, item.patient_id, item.accession].filter(Boolean).join(" · ") ||
      item.study_uid || item.job_id;
  }

  async function preview(item, td) {
    if (!item.preview) { td.textContent = "–"; return; }
    let url = previews.get(item.job_id);
    if (!url) {
      try { url = URL.createObjectURL(await api(item.preview.slice(API.length), true)); }
      catch (e) { td.textContent = "–"; return; }
      previews.set(item.job_id, url);
    }
    const button = document.createElement("button");
    button.type = "button";
    button.className = "thumb-button";
    button.title = "Show at full size";
    const img = document.createElement("img");
    img.className = "thumb";
    img.src = url;
    img.alt = "Key slice of " + who(item) + " with the lesion overlay, triage " +
      (item.triage || "unknown") + " (click for full size)";
    button.appendChild(img);
    button.addEventListener("click", () => showFull(item, url));
    td.appendChild(button);
  }

  function line(parent, text, cls) {
    if (!text) return;
    const div = document.createElement("div");
    div.textContent = text;
    if (cls) div.className = cls;
    parent.appendChild(div);
  }

  function patientCell(tr, item) {
    const td = cell(tr, "", "patient");
    if (!item.patient_name && !item.patient_id) {
      // Not known until the images are read (a queued pull) or not readable.
      td.textContent = "–";
      return;
    }
    line(td, item.patient_name || "(no name)", "patient-name");
    line(td, ["ID " + (item.patient_id || "–"), item.sex, item.age].filter(Boolean).join(" · "));
    if (item.birth_date) line(td, "born " + item.birth_date);
  }

  function studyCell(tr, item) {
    const td = cell(tr, "", "study");
    line(td, [item.study_date, item.study_time].filter(Boolean).join(" ") || "date –");
    line(td, "Acc. " + (item.accession || "–"), "accession");
    line(td, [item.modality, item.series_description].filter(Boolean).join(" · "));
    if (item.viewer_url) {
      const a = document.createElement("a");
      a.href = item.viewer_url;
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      a.className = "viewer-link";
      a.textContent = "Open in viewer";
      td.appendChild(a);
    }
    const uid = document.createElement("div");
    uid.className = "uid";
    uid.textContent = item.study_uid || "";
    td.appendChild(uid);
  }

  // A normal study's small measured volumes are below the triage thresholds (false-positive
  // level): they are shown as "below threshold", the measurement in the tooltip.
  function measure(tr, item, value, digits, unit) {
    if (item.triage === "normal" && value !== null && value !== undefined) {
      const td = cell(tr, "below threshold", "num muted");
      td.title = "measured " + fmt(value, digits) + unit + ", below the triage thresholds";
      return td;
    }
    return cell(tr, fmt(value, digits), "num");
  }

  function render(data) {
    const tbody = document.querySelector("#worklist tbody");
    const rows = [];
    for (const item of data.items) {
      const tr = document.createElement("tr");
      tr.dataset.jobId = item.job_id;
      tr.dataset.triage = item.triage || "";
      cell(tr, String(item.rank), "num");
      preview(item, cell(tr, ""));
      const t = cell(tr, "");
      const badge = document.createElement("span");
      const cat = item.triage || "none";
      badge.className = "triage triage-" + cat;
      badge.textContent = item.triage ? item.triage.toUpperCase() : "—";
      t.appendChild(badge);
      line(t, item.finding, item.quality_flags && item.quality_flags.length ? "quality" : "finding");
      patientCell(tr, item);
      studyCell(tr, item);
      cell(tr, item.state + (item.error ? ": " + item.error : ""));
      measure(tr, item, item.percent_involvement_total, 1, " %");
      measure(tr, item, item.lesion_volume_ml_total, 1, " mL");
      if (item.triage === "normal") {
        const td = cell(tr, "–", "num muted");
        td.title = "severity " + item.severity_score + "/25 from volumes below the triage thresholds";
      } else {
        cell(tr, item.severity_score === null ? "–" : String(item.severity_score), "num");
      }
      rows.push(tr);
    }
    tbody.replaceChildren(...rows);
    $("worklist").hidden = false;
    $("disclaimer").textContent = data.disclaimer;
    const done = data.items.filter((i) => i.state === "done").length;
    $("status").textContent = data.items.length
      ? done + " of " + data.items.length + " studies analysed; updated " + new Date().toLocaleTimeString()
      : "No studies " + (data.batch_id ? "in this batch." : "for this day.");
  }

  async function refresh() {
    const q = new URLSearchParams();
    if ($("batch").value.trim()) q.set("batch", $("batch").value.trim());
    if ($("date").value) q.set("date", $("date").value);
    try { render(await api("/worklist?" + q.toString())); }
    catch (e) { if (e.message !== "401") $("status").textContent = "Could not load the worklist: " + e.message; }
  }

  function start() {
    $("login").hidden = true;
    $("filters").hidden = false;
    if (timer) clearInterval(timer);
    refresh();
    timer = setInterval(refresh, REFRESH_MS);
  }

  function logout(message) {
    sessionStorage.removeItem(KEY);
    if (timer) clearInterval(timer);
    timer = null;
    for (const url of previews.values()) URL.revokeObjectURL(url);
    previews.clear();
    $("worklist").hidden = true;
    $("filters").hidden = true;
    $("login").hidden = false;
    $("status").textContent = message || "";
    $("token").focus();
  }

  document.addEventListener("DOMContentLoaded", () => {
    const params = new URLSearchParams(location.search);
    if (params.get("batch")) $("batch").value = params.get("batch");
    if (params.get("date")) $("date").value = params.get("date");
    $("login").addEventListener("submit", (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(KEY, $("token").value.trim());
      $("token").value = "";
      start();
    });
    $("filters").addEventListener("submit", (ev) => { ev.preventDefault(); refresh(); });
    $("logout").addEventListener("click", () => logout(""));
    $("preview-close").addEventListener("click", () => $("preview-dialog").close());
    $("preview-dialog").addEventListener("click", (ev) => {
      if (ev.target === $("preview-dialog")) $("preview-dialog").close();
    });
    if (token()) start(); else logout("");
  });
})();
