// quo-sync console: refreshes the page body every 5 s while it is open and visible. The page
// works without this file (forms post and redirect; <noscript> falls back to a meta refresh).
"use strict";
(function () {
  var busy = false;
  function refresh() {
    if (busy || document.hidden) return;
    busy = true;
    fetch(location.pathname, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.text(); })
      .then(function (html) {
        var next = new DOMParser().parseFromString(html, "text/html").getElementById("console");
        var now = document.getElementById("console");
        if (next && now) now.replaceWith(next);
      })
      .catch(function () {})
      .then(function () { busy = false; });
  }
  setInterval(refresh, 5000);
  document.addEventListener("visibilitychange", refresh);
})();
