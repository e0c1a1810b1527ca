// Product search for the form: fills the <datalist> from GET /api/v1/items as the person types.
// Plain JavaScript, no libraries; without it the field still accepts an item number.
(function () {
  "use strict";
  var input = document.getElementById("item");
  var list = document.getElementById("item-options");
  if (!input || !list || !window.fetch) { return; }
  var url = input.getAttribute("data-search-url");
  var timer = null;
  var latest = 0;

  function show(items) {
    list.textContent = "";
    items.forEach(function (item) {
      var option = document.createElement("option");
      option.value = String(item.item_nbr);
      option.textContent = item.label;
      list.appendChild(option);
    });
  }

  function search() {
    var query = input.value.trim();
    if (/^\d+$/.test(query) && list.querySelector('option[value="' + query + '"]')) { return; }
    var ticket = ++latest;
    fetch(url + "?limit=20&q=" + encodeURIComponent(query.slice(0, 100)))
      .then(function (response) { return response.ok ? response.json() : { items: [] }; })
      .then(function (body) { if (ticket === latest) { show(body.items || []); } })
      .catch(function () { /* offline or the server restarting: typing a number still works */ });
  }

  input.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(search, 150);
  });
  input.addEventListener("focus", function () { if (!list.children.length) { search(); } });
})();
