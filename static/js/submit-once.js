// A second submit of a form while its first is still on its way is ignored, so that a double
// click on "Open case" or "Add lesion" creates one record, not two. The button is not disabled:
// a disabled button's name/value would not be posted with the form. The page that answers
// replaces this one; a page the browser brings back from its back/forward cache may send again.
// An upload (form[data-upload]) can take longer than any fixed hold: it stays held until the page
// goes, says "Uploading N files…" and is aria-busy meanwhile.
(function () {
  "use strict";
  var SENT = "data-submitting";  // when the first submit went out (ms)
  var HOLD_MS = 10000;

  function fileCount(form) {
    var count = 0;
    Array.prototype.forEach.call(form.querySelectorAll("input[type=file]"), function (input) {
      count += input.files ? input.files.length : 0;
    });
    return count;
  }

  function busy(form, on) {
    var status = form.querySelector("[data-upload-status]");
    if (on) {
      var count = fileCount(form);
      form.setAttribute("aria-busy", "true");
      if (status) { status.textContent = "Uploading " + count + (count === 1 ? " file…" : " files…"); }
    } else {
      form.removeAttribute("aria-busy");
      if (status) { status.textContent = ""; }
    }
  }

  // on the document, so it runs after the form's own handlers (a declined confirm(), too many
  // files): a submit they stopped never went out and must not block the next one
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement) || (form.getAttribute("method") || "").toLowerCase() !== "post") { return; }
    if (form.target && form.target !== "_self") { return; }  // answered in another tab: this page stays
    var upload = form.hasAttribute("data-upload");
    // only for a while: after the user pressed Stop (Esc) the page stays, and a later click must send;
    // an upload of many large files may take minutes: held until the page goes (or comes back)
    var sentAt = Number(form.getAttribute(SENT));
    if (sentAt && (upload || Date.now() - sentAt < HOLD_MS)) {
      event.preventDefault();
      return;
    }
    if (!event.defaultPrevented) {
      form.setAttribute(SENT, String(Date.now()));
      if (upload) { busy(form, true); }
    }
  });

  function release() {
    Array.prototype.forEach.call(document.querySelectorAll("form[" + SENT + "]"), function (form) {
      form.removeAttribute(SENT);
      if (form.hasAttribute("data-upload")) { busy(form, false); }
    });
  }
  window.addEventListener("pageshow", release);
  window.addEventListener("pagehide", release);

  // A form that came back refused (form[data-focus-invalid]): its first invalid field gets the focus,
  // so that the clinician lands on what to correct (the error summary above it says why). On load:
  // the browser's scroll to the URL's #fragment, done while the page loads, clears an earlier focus.
  window.addEventListener("load", function () {
    var form = document.querySelector("form[data-focus-invalid]");
    var field = form && form.querySelector('[aria-invalid="true"]');
    var elsewhere = document.activeElement && document.activeElement !== document.body;
    if (field && !elsewhere) { field.focus(); }
  });
})();
