// Live scoring status on the case page: while any prediction is pending or running, or an image
// waits for a model (no prediction yet), poll the case's status JSON and swap in each prediction's
// freshly rendered summary (aria-live regions). A poll answered by the log-in page (the session
// expired) or that keeps failing says "Live status stopped" instead of "Scoring…" for ever.
(function () {
  "use strict";
  var root = document.getElementById("lesions");
  if (!root) { return; }
  var url = root.getAttribute("data-case-status-url");
  var active = root.getAttribute("data-active") === "true";
  var intervalMs = 1500;
  var waitingMs = 10000;  // only images waiting for a model: the sweep that scores them runs every ~30 s
  var maxFailures = 3;    // consecutive failed polls before the page says the live status stopped
  var failures = 0;
  var live = document.querySelector("[data-live-status]");
  var STOPPED = "Live status stopped — reload the page.";
  var rendered = {};  // image id -> the summary HTML last put in its box

  function apply(data) {
    data.predictions.forEach(function (p) {
      // one box per image: the prediction in force may change (a finished re-score replaces it)
      var box = root.querySelector('[data-image-id="' + p.image + '"]');
      if (!box) { return; }
      var current = box.querySelector("[data-status]");
      var same = box.getAttribute("data-prediction-id") === String(p.id);
      if (same && current && current.getAttribute("data-status") === p.status && p.status !== "running"
          && !box.querySelector(".rescore-note")) { return; }
      // unchanged since the last poll (a re-score still waiting): leave the live region alone
      if (rendered[p.image] === p.html) { return; }
      rendered[p.image] = p.html;
      box.innerHTML = p.html;
      box.setAttribute("data-prediction-id", String(p.id));
    });
    (data.lesions || []).forEach(updateFlag);
  }

  // The badge's words come from the server (awaiting review or reviewed): a reviewed lesion that a
  // new image flags again must not keep saying "reviewed" until the page is reloaded.
  function updateFlag(lesion) {
    var flag = root.querySelector('[data-lesion-flag="' + lesion.id + '"]');
    var badge = flag && flag.querySelector(".flag-badge");
    if (!badge) { return; }
    // rewriting the same words would make the live region announce them again at every poll
    if (badge.textContent !== lesion.badge) { badge.textContent = lesion.badge; }
    badge.hidden = !lesion.badge;
    var card = document.getElementById("lesion-" + lesion.id);
    if (card) { card.classList.toggle("is-flagged", Boolean(lesion.awaiting_review)); }
  }

  function stopped(shown) {
    if (!live) { return; }
    if (shown && !live.textContent) {
      var note = document.createElement("p");
      note.className = "message error";
      note.textContent = STOPPED;
      live.appendChild(note);  // added to the live region, so that a screen reader hears it
    } else if (!shown && live.textContent) {
      live.textContent = "";
    }
  }

  function poll() {
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        // an expired session is redirected to the log-in page: a 200 of HTML, never the status
        var type = response.headers.get("Content-Type") || "";
        if (response.redirected || type.indexOf("application/json") === -1) {
          var err = new Error("not the status JSON");
          err.loggedOut = true;
          throw err;
        }
        return response.json();
      })
      .then(function (data) {
        failures = 0;
        stopped(false);
        apply(data);
        if (data.active) { window.setTimeout(poll, intervalMs); }
        else if (data.waiting) { window.setTimeout(poll, waitingMs); }
      })
      .catch(function (err) {
        failures += 1;
        if (failures >= maxFailures) { stopped(true); }
        // logged out: asking again cannot help once the page has said so
        if (err && err.loggedOut && failures >= maxFailures) { return; }
        // back off while the server is unreachable, but keep trying
        window.setTimeout(poll, Math.min(30000, intervalMs * Math.pow(2, failures)));
      });
  }

  if (active) { window.setTimeout(poll, intervalMs); }
})();
