// A second submit of a form while its first is still on its way is ignored, so that a double
// click on "Open case" or "Add lesion" creates one record, not two. The button is not disabled:
// a disabled button's name/value would not be posted with the form. The page that answers
// replaces this one; a page the browser brings back from its back/forward cache may send again.
(function () {
  "use strict";
  var SENT = "data-submitting";  // when the first submit went out (ms)
  var HOLD_MS = 10000;

  // on the document, so it runs after the form's own handlers (a declined confirm(), too many
  // files): a submit they stopped never went out and must not block the next one
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement) || (form.getAttribute("method") || "").toLowerCase() !== "post") { return; }
    if (form.target && form.target !== "_self") { return; }  // answered in another tab: this page stays
    // only for a while: after the user pressed Stop (Esc) the page stays, and a later click must send
    var sentAt = Number(form.getAttribute(SENT));
    if (sentAt && Date.now() - sentAt < HOLD_MS) {
      event.preventDefault();
      return;
    }
    if (!event.defaultPrevented) { form.setAttribute(SENT, String(Date.now())); }
  });

  window.addEventListener("pageshow", function () {
    Array.prototype.forEach.call(document.querySelectorAll("form[" + SENT + "]"), function (form) {
      form.removeAttribute(SENT);
    });
  });
})();
