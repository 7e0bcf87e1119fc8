// The console's own script, for conveniences only: every page works without it.
"use strict";

// A filter left empty stays out of the address, so a view's link says only what it filters.
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!(form instanceof HTMLFormElement) || !form.matches("form.filters")) return;
  for (const field of form.elements) {
    if (field.name && field.value === "") field.disabled = true;
  }
});
// Coming back to the page (the browser's back button), the fields are usable again.
window.addEventListener("pageshow", () => {
  for (const field of document.querySelectorAll("form.filters [disabled]")) field.disabled = false;
});
