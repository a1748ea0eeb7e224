// q2-aam pages: a selector shows one figure of a section at a time. The page also
// records script errors and how many plots loaded, on <body> (data-js-errors,
// data-plots-loaded, data-plots-total), for the browser test.
(function () {
  var errors = [];
  window.addEventListener("error", function (event) {
    errors.push(String(event.message || event));
    if (document.body) { document.body.setAttribute("data-js-errors", errors.join(" | ")); }
  });
  function show(select) {
    var section = select.getAttribute("data-section");
    var figures = document.querySelectorAll('.aam-figure[data-section="' + section + '"]');
    for (var i = 0; i < figures.length; i++) {
      figures[i].style.display = figures[i].getAttribute("data-choice") === select.value ? "" : "none";
    }
  }
  window.addEventListener("load", function () {
    var selects = document.querySelectorAll("select.aam-choice");
    for (var i = 0; i < selects.length; i++) {
      selects[i].addEventListener("change", function (event) { show(event.target); });
    }
    var plots = document.querySelectorAll("img.aam-plot");
    var loaded = 0;
    for (var j = 0; j < plots.length; j++) {
      if (plots[j].complete && plots[j].naturalWidth > 0) { loaded++; }
    }
    document.body.setAttribute("data-plots-loaded", String(loaded));
    document.body.setAttribute("data-plots-total", String(plots.length));
    document.body.setAttribute("data-js-errors", errors.join(" | "));
  });
})();
