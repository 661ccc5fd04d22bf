// Live scoring status on the case page: while any prediction is pending or running, poll the
// case's status JSON and swap in each prediction's freshly rendered summary (aria-live regions).
(function () {
  "use strict";
  var root = document.getElementById("lesions");
  if (!root) { return; }
  var url = root.getAttribute("data-case-status-url");
  var active = root.getAttribute("data-active") === "true";
  var intervalMs = 1500;
  var failures = 0;
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

  function poll() {
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(function (data) {
        failures = 0;
        apply(data);
        if (data.active) { window.setTimeout(poll, intervalMs); }
      })
      .catch(function () {
        failures += 1;  // back off while the server is unreachable, but keep trying
        window.setTimeout(poll, Math.min(30000, intervalMs * Math.pow(2, failures)));
      });
  }

  if (active) { window.setTimeout(poll, intervalMs); }
})();
