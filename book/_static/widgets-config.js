// Loaded after require.js and before the widget manager (embed-amd.js) on pages with widgets.
(function () {
  // embed-amd.js loads its icon fonts from the folder of its own require.js module. Without this
  // that folder is "@jupyter-widgets/html-manager/dist" next to the page (which does not exist);
  // point it at the copy in _static/vendor so nothing is fetched from anywhere else.
  var base = new URL("vendor/html-manager", document.currentScript.src).href;
  window.require.config({ paths: { "@jupyter-widgets/html-manager/dist": base } });
  // The bundled widget libraries read their asset folder from this global instead.
  window.__jupyter_widgets_assets_path__ = base + "/";

  // The widgets typeset their labels with the MathJax 2 API (MathJax.Hub.Queue); the book uses
  // MathJax 3. Give MathJax 3 that one entry point, once it has loaded (deferred, so before
  // DOMContentLoaded), so that a widget description is typeset instead of throwing a TypeError.
  document.addEventListener("DOMContentLoaded", function () {
    var mj = window.MathJax;
    if (!mj || !mj.version || mj.Hub) return;
    mj.Hub = {
      Queue: function (job) {
        var element = Array.isArray(job) ? job[2] : undefined;
        if (!element) return;
        mj.startup.promise.then(function () {
          return mj.typesetPromise([element]);
        });
      },
    };
  });
})();
