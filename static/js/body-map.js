// The lesion form's body map: a click (or Enter/Space on a focused region) sets the ISIC site,
// the patient's side and the point, in the form's own fields; the lists stay usable without it.
(function () {
  "use strict";
  const svg = document.querySelector(".body-map.is-interactive svg");
  if (!svg) return;
  const form = svg.closest("form");
  const field = (name) => form.querySelector(`[name="${name}"]`);
  const figureW = Number(svg.dataset.figureWidth), backX = Number(svg.dataset.backX), height = Number(svg.dataset.height);
  const marker = svg.querySelector(".chosen-point");
  const caption = document.getElementById("body-map-choice");
  const midlineBand = 5;

  function sideAt(view, x) {
    if (Math.abs(x - figureW / 2) <= midlineBand) return "midline";
    const viewerLeft = x < figureW / 2;
    return view === "front" ? (viewerLeft ? "right" : "left") : (viewerLeft ? "left" : "right");
  }

  function choose(region, fx, fy) {
    const view = region.dataset.view;
    const x = fx * figureW;
    const site = field("anatomic_site");  // absent where only the place is corrected
    if (site) site.value = region.dataset.site;
    const side = sideAt(view, x);
    field("side").value = side;
    field("map_view").value = view;
    field("map_x").value = fx.toFixed(4);
    field("map_y").value = fy.toFixed(4);
    marker.setAttribute("cx", (view === "back" ? backX : 0) + x);
    marker.setAttribute("cy", fy * height);
    svg.querySelectorAll(".region.is-chosen").forEach((el) => el.classList.remove("is-chosen"));
    region.classList.add("is-chosen");
    const name = region.querySelector("title").textContent;
    caption.textContent = `Chosen: ${name} — site “${region.dataset.site}”, ${side}.`;
    const clearButton = form.querySelector(".map-clear");
    if (clearButton) clearButton.hidden = false;
  }

  const clear = form.querySelector(".map-clear");
  if (clear) {
    clear.addEventListener("click", () => {
      ["map_view", "map_x", "map_y"].forEach((name) => { field(name).value = ""; });
      marker.setAttribute("cx", -20);
      marker.setAttribute("cy", -20);
      svg.querySelectorAll(".region.is-chosen").forEach((el) => el.classList.remove("is-chosen"));
      caption.textContent = "No point on the map: the site and side come from the lists.";
      clear.hidden = true;
    });
  }

  // A form sent back with an error keeps its point: show it again.
  if (field("map_view").value && field("map_x").value && field("map_y").value) {
    const view = field("map_view").value;
    marker.setAttribute("cx", (view === "back" ? backX : 0) + Number(field("map_x").value) * figureW);
    marker.setAttribute("cy", Number(field("map_y").value) * height);
    if (clear) clear.hidden = false;
  }

  svg.addEventListener("click", (event) => {
    const region = event.target.closest(".region");
    if (!region) return;
    const point = svg.createSVGPoint();
    point.x = event.clientX;
    point.y = event.clientY;
    const local = point.matrixTransform(svg.getScreenCTM().inverse());
    const x = region.dataset.view === "back" ? local.x - backX : local.x;
    choose(region, Math.min(Math.max(x / figureW, 0), 1), Math.min(Math.max(local.y / height, 0), 1));
  });
  svg.addEventListener("keydown", (event) => {
    const region = event.target.closest(".region");
    if (!region || (event.key !== "Enter" && event.key !== " ")) return;
    event.preventDefault();
    choose(region, Number(region.dataset.cx), Number(region.dataset.cy));
  });
})();
