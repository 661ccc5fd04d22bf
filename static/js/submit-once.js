// A second submit of a form while its first is still on its way is ignored, so that a double
// click on "Open case" or "Add lesion" creates one record, not two. The button is not disabled:
// a disabled button's name/value would not be posted with the form. The page that answers
// replaces this one; a page the browser brings back from its back/forward cache may send again.
(function () {
  "use strict";
  var SENT = "data-submitting";

  // on the document, so it runs after the form's own handlers (a declined confirm(), too many
  // files): a submit they stopped never went out and must not block the next one
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement) || (form.getAttribute("method") || "").toLowerCase() !== "post") { return; }
    if (form.target && form.target !== "_self") { return; }  // answered in another tab: this page stays
    if (form.hasAttribute(SENT)) {
      event.preventDefault();
      return;
    }
    if (!event.defaultPrevented) { form.setAttribute(SENT, ""); }
  });

  window.addEventListener("pageshow", function () {
    Array.prototype.forEach.call(document.querySelectorAll("form[" + SENT + "]"), function (form) {
      form.removeAttribute(SENT);
    });
  });
})();
