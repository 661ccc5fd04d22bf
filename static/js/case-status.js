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

  function apply(data) {
    data.predictions.forEach(function (p) {
      var box = root.querySelector('[data-prediction-id="' + p.id + '"]');
      if (!box) { return; }
      var current = box.querySelector("[data-status]");
      if (current && current.getAttribute("data-status") === p.status && p.status !== "running") { return; }
      box.innerHTML = p.html;
    });
    (data.flagged_lesions || []).forEach(function (id) {
      var flag = root.querySelector('[data-lesion-flag="' + id + '"]');
      if (flag) { flag.hidden = false; }
    });
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
