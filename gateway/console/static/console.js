// OneWindow Gateway console: the only script. Refreshes the element marked data-refresh by
// fetching its fragment and swapping it in (no full reload). Served from /console/static
// (CSP script-src 'self': no inline script anywhere).
"use strict";
(function () {
  function refresh(box) {
    var url = box.getAttribute("data-refresh");
    var every = parseInt(box.getAttribute("data-every") || "5000", 10);
    function tick() {
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) {
          if (r.redirected || !r.ok) { window.location.reload(); return null; }
          return r.text();
        })
        .then(function (html) {
          if (html !== null) { box.innerHTML = html; }
        })
        .catch(function () { /* the next tick tries again */ })
        .finally(function () { window.setTimeout(tick, every); });
    }
    window.setTimeout(tick, every);
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh]").forEach(refresh);
  });
})();
