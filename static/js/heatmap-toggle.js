// Swap the result image between the original and its Grad-CAM overlay.
(function () {
  "use strict";
  var button = document.getElementById("heatmap-toggle");
  var img = document.getElementById("result-img");
  if (!button || !img) { return; }
  button.addEventListener("click", function () {
    var showing = button.getAttribute("aria-pressed") === "true";
    img.src = showing ? img.dataset.originalSrc : img.dataset.heatmapSrc;
    img.alt = showing ? img.dataset.originalAlt : img.dataset.heatmapAlt;
    // a toggle button keeps one label; its pressed state says which image is shown
    button.setAttribute("aria-pressed", showing ? "false" : "true");
  });
})();
