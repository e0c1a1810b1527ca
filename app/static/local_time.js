// Shows every <time datetime="..."> in the reader's own time zone and format (the server writes
// a readable UTC fallback: "1 Dec 2026, 11:31 UTC"). Date-only values are left as they are.
(function () {
  "use strict";
  var format = { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" };
  Array.prototype.forEach.call(document.querySelectorAll("time[datetime*='T']"), function (node) {
    var when = new Date(node.getAttribute("datetime"));
    if (isNaN(when.getTime())) { return; }
    node.title = node.getAttribute("datetime");
    node.textContent = when.toLocaleString(undefined, format);
  });
})();
