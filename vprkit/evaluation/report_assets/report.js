// Renders window.VPRKIT_REPORT (written by vprkit.evaluation.report) page by page.
(function () {
  "use strict";
  var D = window.VPRKIT_REPORT;
  var FILES = document.querySelector('script[src$="data.js"]').getAttribute("src").replace(/data\.js$/, "");
  var LABELS = {all: "all", wrong: "wrong", right: "right", nopos: "no positive", nogt: "no ground truth",
                fixed: "fixed", broken: "broken"};
  LABELS.fixed = D.labels.fixed;
  LABELS.broken = D.labels.broken;
  var state = {filter: "all", page: 0, size: 50};

  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    (children || []).forEach(function (c) {
      e.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return e;
  }

  function fmt(v) { return typeof v === "number" && !Number.isInteger(v) ? v.toFixed(3) : String(v); }

  function metrics() {
    var names = Object.keys(D.metrics);
    if (!names.length) return;
    var keys = [];
    names.forEach(function (n) { Object.keys(D.metrics[n]).forEach(function (k) {
      if (keys.indexOf(k) < 0) keys.push(k); }); });
    var head = el("tr", {}, [el("th", {}, ["metric"])].concat(names.map(function (n) { return el("th", {}, [n]); })));
    var rows = keys.map(function (k) {
      return el("tr", {}, [el("th", {}, [k])].concat(names.map(function (n) {
        return el("td", {}, [k in D.metrics[n] ? fmt(D.metrics[n][k]) : ""]); })));
    });
    document.getElementById("metrics").appendChild(el("table", {}, [head].concat(rows)));
  }

  function table() {  // a comparison's table, cells as table.csv holds them
    if (!D.table) return;
    var T = D.table, box = document.getElementById("table");
    var head = el("tr", {}, T.columns.map(function (c) { return el("th", {}, [c]); }));
    var rows = T.rows.map(function (r) {
      return el("tr", {}, r.map(function (c, i) { return el(i ? "td" : "th", {}, [c]); })); });
    box.appendChild(el("table", {}, [head].concat(rows)));
    box.appendChild(el("p", {}, [T.note]));
  }

  function plots() {
    var box = document.getElementById("plots");
    D.plots.forEach(function (p) {
      box.appendChild(el("figure", {}, [el("img", {src: FILES + p.src, alt: p.caption}),
                                        el("figcaption", {}, [p.caption])]));
    });
  }

  function selected() {
    var f = state.filter;
    return D.queries.filter(function (q) {
      return f === "all" || q[2] === f || (f === "fixed" && q[7] > 0) || (f === "broken" && q[7] < 0);
    });
  }

  function img(folder, file) {
    return file ? el("img", {src: FILES + "thumbs/" + folder + "/" + file, loading: "lazy"}) : el("div", {class: "noimg"});
  }

  function mapCell(ref, cls, text) {
    var m = D.maps[ref];
    return el("td", {class: cls}, [img("m", m[1]), text, el("br"), m[0]]);
  }

  function row(q) {
    var tags = [el("span", {class: "tag " + q[2]}, [LABELS[q[2]]])];
    if (q[7]) tags.push(el("span", {class: "tag " + (q[7] > 0 ? "fixed" : "broken")}, [LABELS[q[7] > 0 ? "fixed" : "broken"]]));
    var cells = [el("td", {class: "q"}, [img("q", q[1])].concat(tags, [el("br"), q[0]]))];
    for (var r = 0; r < D.top; r++) {
      if (r >= q[3].length) { cells.push(el("td", {class: "na"}, [])); continue; }
      var cls = D.has_gt ? (q[5][r] ? "ok" : "bad") : "na";
      var mark = D.has_gt ? (q[5][r] ? " \u2714" : " \u2718") : "";
      cells.push(mapCell(q[3][r], cls, "#" + (r + 1) + mark + " " + q[4][r].toFixed(3)));
    }
    cells.push(q[6] >= 0 ? mapCell(q[6], "pos", "a positive") : el("td", {}, []));
    var extra = [];
    if (D.labels.baseline) extra.push(q[8] >= 0 ? mapCell(q[8], "na", D.labels.baseline + " #1")
                                                : el("td", {}, []));
    if (D.matches) extra.push(matchCell(q[9]));
    return el("tr", {"data-status": q[2]}, cells.concat(extra));
  }

  // q[9]: [figure file, {patch size: inliers}] or 0 (beyond the figure budget, or no features)
  function matchCell(fig) {
    if (!fig) return el("td", {class: "match na"}, ["no figure"]);
    var sizes = Object.keys(fig[1]);
    var total = sizes.reduce(function (t, s) { return t + fig[1][s]; }, 0);
    var text = total + " inliers" + (sizes.length > 1 ? " (" + sizes.map(function (s) {
      return "p" + s + ": " + fig[1][s]; }).join(", ") + ")" : "");
    return el("td", {class: "match"}, [el("img", {src: FILES + "matches/" + fig[0], loading: "lazy",
                                                  alt: "query | top 1, " + text}), text]);
  }

  function matchNote() {
    var M = D.matches;
    var text = "Match figures: the query (left) and its top 1 (right), lines join the patch correspondences that " +
      "survive RANSAC (one colour per patch size). ";
    text += M.limit !== null && M.limit < M.queries ? "Drawn for the first " + M.limit + " of " + M.queries +
      " queries in the failures-first order (" + M.drawn + " figures); vprkit rerank --match-figures N " +
      "draws more." : "Drawn for every query (" + M.drawn + " figures).";
    return el("p", {id: "match-note"}, [text]);
  }

  function render() {
    var rows = selected();
    var pages = Math.max(1, Math.ceil(rows.length / state.size));
    state.page = Math.min(state.page, pages - 1);
    var table = document.getElementById("queries");
    table.textContent = "";
    var head = [el("th", {}, ["query"])];
    for (var r = 0; r < D.top; r++) head.push(el("th", {}, ["top " + (r + 1)]));
    head.push(el("th", {}, ["positive (wrong only)"]));
    if (D.labels.baseline) head.push(el("th", {}, [D.labels.baseline + " #1 (when it differs in outcome)"]));
    if (D.matches) head.push(el("th", {}, ["verified matches with top 1"]));
    table.appendChild(el("tr", {}, head));
    rows.slice(state.page * state.size, (state.page + 1) * state.size).forEach(function (q) {
      table.appendChild(row(q)); });
    var pager = document.getElementById("pager");
    pager.textContent = "";
    var prev = el("button", {id: "prev"}, ["\u2190 previous"]);
    var next = el("button", {id: "next"}, ["next \u2192"]);
    prev.disabled = state.page === 0;
    next.disabled = state.page >= pages - 1;
    prev.onclick = function () { state.page--; render(); };
    next.onclick = function () { state.page++; render(); };
    pager.appendChild(prev);
    pager.appendChild(el("span", {id: "page-info"}, [" page " + (state.page + 1) + " of " + pages + " (" +
                                                     rows.length + " queries) "]));
    pager.appendChild(next);
    document.querySelectorAll("#controls button").forEach(function (b) {
      b.className = b.getAttribute("data-filter") === state.filter ? "active" : ""; });
  }

  function controls() {
    var box = document.getElementById("controls");
    var names = ["all", "wrong", "right", "nopos"];
    if (!D.has_gt) names = ["all"];
    if (D.labels.baseline && D.has_gt) names = names.concat(["fixed", "broken"]);
    box.appendChild(document.createTextNode("show: "));
    names.forEach(function (f) {
      var b = el("button", {"data-filter": f}, [LABELS[f] + " (" + D.counts[f] + ")"]);
      b.onclick = function () { state.filter = f; state.page = 0; render(); };
      box.appendChild(b);
    });
    if (D.matches) box.appendChild(matchNote());
  }

  table();
  metrics();
  plots();
  controls();
  render();
  if (window.performance && performance.mark) performance.mark("vprkit-rows-rendered");
})();
