// The review page sent back with errors (nothing saved): the error summary (#review-errors,
// role="alert") takes the focus, so that a screen reader announces it and the keyboard starts
// there; each of its links moves the focus to the field it names (a plain #fragment link only
// scrolls). On load, as submit-once.js does: the scroll to a URL's #fragment clears an earlier focus.
(function () {
  "use strict";

  window.addEventListener("load", function () {
    var summary = document.getElementById("review-errors");
    if (summary) { summary.focus(); }
  });

  document.addEventListener("click", function (event) {
    var link = event.target.closest && event.target.closest("#review-errors a[href^='#']");
    if (!link) { return; }
    var field = document.getElementById(decodeURIComponent(link.getAttribute("href").slice(1)));
    if (!field) { return; }
    event.preventDefault();
    field.scrollIntoView({block: "center"});
    field.focus();
  });
})();
