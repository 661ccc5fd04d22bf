// Drag-and-drop onto the upload area. The plain <input type=file multiple> keeps working without JS;
// this only lets a drop fill that same input and lists what was chosen.
(function () {
  "use strict";
  function listFiles(input, list) {
    list.textContent = "";
    Array.prototype.forEach.call(input.files, function (file) {
      var item = document.createElement("li");
      item.textContent = file.name + " (" + Math.round(file.size / 1024) + " KB)";
      list.appendChild(item);
    });
  }
  document.querySelectorAll("[data-dropzone]").forEach(function (zone) {
    var input = zone.querySelector("input[type=file]");
    var list = zone.querySelector("[data-chosen]");
    if (!input || !list) { return; }
    input.addEventListener("change", function () { listFiles(input, list); });
    ["dragenter", "dragover"].forEach(function (name) {
      zone.addEventListener(name, function (event) {
        event.preventDefault();
        zone.classList.add("dragging");
      });
    });
    ["dragleave", "drop"].forEach(function (name) {
      zone.addEventListener(name, function () { zone.classList.remove("dragging"); });
    });
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      if (!event.dataTransfer || !event.dataTransfer.files.length) { return; }
      try {
        input.files = event.dataTransfer.files;  // supported by current browsers
      } catch (err) {
        return;  // older browsers: the file picker still works
      }
      listFiles(input, list);
    });
  });
})();
