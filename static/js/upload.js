// Drag-and-drop onto the upload area. The plain <input type=file multiple> keeps working without JS;
// this only lets a drop fill that same input, lists what was chosen, and refuses before sending more
// files than the form's data-max-files (the server refuses them too, after the whole upload).
(function () {
  "use strict";
  function withinLimit(form, input, notice) {
    var max = parseInt(form.getAttribute("data-max-files") || "", 10);
    var over = max > 0 && input.files.length > max;
    notice.textContent = over ? input.files.length + " files were chosen; upload at most " + max + " at a time." : "";
    notice.hidden = !over;
    return !over;
  }
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
    var form = zone.closest("form");
    var notice = zone.querySelector("[data-too-many]");
    if (!input || !list) { return; }
    var check = function () { return !form || !notice || withinLimit(form, input, notice); };
    input.addEventListener("change", function () { listFiles(input, list); check(); });
    if (form) {
      form.addEventListener("submit", function (event) {
        if (!check()) {
          event.preventDefault();
          input.focus();
        }
      });
    }
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
      check();
    });
  });
})();
