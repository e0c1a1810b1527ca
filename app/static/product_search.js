// Product search for the form: fills the <datalist> from GET /api/v1/items as the person types, and says in
// #item-status (a polite live region, read out by screen readers) how many products match, that none does, or
// that the search is not answering. Plain JavaScript, no libraries; without it the field still accepts an item
// number, and a product typed as words comes back with its matches listed.
(function () {
  "use strict";
  var input = document.getElementById("item");
  var list = document.getElementById("item-options");
  var status = document.getElementById("item-status");
  if (!input || !list || !window.fetch) { return; }
  var url = input.getAttribute("data-search-url");
  var MAX_QUERY = 100;  // the API's limit, in characters (code points, as the server counts them)
  var timer = null;
  var latest = 0;

  function say(text) {
    if (status && status.textContent !== text) { status.textContent = text; }
  }

  function show(query, body) {
    var items = body.items || [];
    list.textContent = "";
    items.forEach(function (item) {
      var option = document.createElement("option");
      option.value = String(item.item_nbr);
      option.textContent = item.label;
      list.appendChild(option);
    });
    var total = typeof body.total === "number" ? body.total : items.length;
    if (!query) {
      say("");
    } else if (!total) {
      say("No product matches \u201c" + query + "\u201d.");
    } else {
      say((total === 1 ? "1 product matches" : total.toLocaleString() + " products match")
          + (total > items.length ? "; the first " + items.length + " are listed." : "."));
    }
  }

  function unavailable(why) {
    list.textContent = "";
    say("The product search is not answering (" + why + "); you can still type an item number.");
  }

  function search() {
    var query = input.value.trim();
    if (/^\d+$/.test(query) && list.querySelector('option[value="' + query + '"]')) { return; }
    var ticket = ++latest;
    // Cut by characters, not UTF-16 units: cutting an emoji in half made encodeURIComponent throw, and the
    // search stopped without a word.
    var sent = Array.from(query).slice(0, MAX_QUERY).join("");
    fetch(url + "?limit=20&q=" + encodeURIComponent(sent))
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(function (body) { if (ticket === latest) { show(query, body); } })
      .catch(function (error) {
        if (ticket !== latest) { return; }
        unavailable(/^HTTP /.test(error.message) ? error.message : "the server cannot be reached");
      });
  }

  input.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(search, 150);
  });
  input.addEventListener("focus", function () { if (!list.children.length) { search(); } });
})();
