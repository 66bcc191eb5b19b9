/* Small behaviours of the pages, declared with data attributes instead of inline handlers, so the
   Content-Security-Policy can forbid inline scripts (docs/security.md, "Pages and browsers"). */
(function () {
  "use strict";
  function ready() {
    document.querySelectorAll("[data-submit-on-change]").forEach(function (field) {
      field.addEventListener("change", function () { field.form.requestSubmit(); });
    });
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.dataset.confirm)) event.preventDefault();
      });
    });
    document.querySelectorAll("[data-select-on-click]").forEach(function (field) {
      field.addEventListener("click", function () { field.select(); });
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", ready);
  else ready();
})();
