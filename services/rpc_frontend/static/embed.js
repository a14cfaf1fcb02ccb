/* Habla loader (/embed.js). The snippet runs this inside a hidden frame of its own,
   after that frame has loaded, so nothing here can delay the host page's load event
   and no host global can reach our code. It only adds the widget script to the same
   frame; the widget draws itself into a visible frame of the host page. */
(function () {
  var base = "__HABLA_BASE__";
  var host = window.parent;
  var api = host && host.habla;
  if (!api || api.loading) return; // no snippet on the page, or loaded already
  if (!/^\d{4}-\d{5}-\d{2}-\d{4}$/.test(String(api.site))) {
    if (host.console) host.console.warn("habla: " + api.site + " is not a site id; check the snippet");
    return;
  }
  api.loading = 1;
  var s = document.createElement("script");
  s.src = base + "/widget.js?v=__HABLA_VERSION__";
  s.async = true;
  document.body.appendChild(s);
})();
