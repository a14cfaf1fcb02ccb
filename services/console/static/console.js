/* Habla console: copy buttons, and the customiser's live preview and contrast warnings.
   Texts are only ever set with textContent; colours only if they are #rrggbb. */
(function () {
  "use strict";
  var COLOUR = /^#[0-9a-fA-F]{6}$/;

  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var box = document.getElementById(button.getAttribute("data-copy"));
      if (!box) return;
      // "Copied" for 2 s: long enough to read, short enough to copy again.
      var done = function () { button.textContent = "Copied"; setTimeout(function () { button.textContent = "Copy"; }, 2000); };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(box.value).then(done, function () { box.select(); });
      } else {
        box.select();
        try { document.execCommand("copy"); done(); } catch (e) { /* the text stays selected to copy by hand */ }
      }
    });
  });

  var form = document.getElementById("theme-form");
  if (!form) return;
  var mocks = [document.getElementById("mock-widget"), document.getElementById("mock-status")];
  var frame = document.getElementById("live-preview");
  var minimum = parseFloat(form.getAttribute("data-min-contrast")) || 4.5;
  var pairs = Array.prototype.map.call(document.querySelectorAll("#contrast-pairs li"), function (li) {
    return { text: li.getAttribute("data-text-colour"), background: li.getAttribute("data-background-colour"), where: li.getAttribute("data-where") };
  });

  function currentTheme() {
    var theme = { colours: {}, texts: {} };
    form.querySelectorAll("[data-colour]").forEach(function (input) { theme.colours[input.getAttribute("data-colour")] = input.value; });
    form.querySelectorAll("[data-text-key]").forEach(function (input) { theme.texts[input.getAttribute("data-text-key")] = input.value; });
    return theme;
  }

  // WCAG 2.x relative luminance and contrast ratio (same as services/console/contrast.py).
  function channel(v) { v = v / 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); }
  function luminance(hex) {
    var r = parseInt(hex.substr(1, 2), 16), g = parseInt(hex.substr(3, 2), 16), b = parseInt(hex.substr(5, 2), 16);
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
  }
  function ratio(a, b) { var x = luminance(a), y = luminance(b); return (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05); }

  function apply() {
    var theme = currentTheme();
    Object.keys(theme.colours).forEach(function (key) {
      var value = theme.colours[key];
      if (!COLOUR.test(value)) return;
      mocks.forEach(function (mock) { if (mock) mock.style.setProperty("--habla-" + key.replace(/_/g, "-"), value); });
    });
    Object.keys(theme.texts).forEach(function (key) {
      document.querySelectorAll('.mock [data-text="' + key + '"], .mock-status [data-text="' + key + '"]').forEach(function (el) {
        el.textContent = theme.texts[key];
      });
    });
    pairs.forEach(function (pair) {
      var fg = theme.colours[pair.text], bg = theme.colours[pair.background];
      var note = form.querySelector('[data-contrast-for="' + pair.text + '"]');
      if (!note || !COLOUR.test(fg) || !COLOUR.test(bg)) return;
      var r = ratio(fg, bg);
      note.textContent = r < minimum
        ? "Hard to read in the " + pair.where + ": contrast " + r.toFixed(1) + ":1, at least " + minimum + ":1 is recommended (WCAG AA)."
        : "";
    });
    if (frame && frame.contentWindow) {
      frame.contentWindow.postMessage({ type: "habla:theme", theme: theme }, frame.getAttribute("data-origin") || "*");
    }
  }

  form.addEventListener("input", apply);
  form.addEventListener("change", apply);
  if (frame) frame.addEventListener("load", apply);
  apply();
})();
