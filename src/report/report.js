// Draws the charts of a `pgshift report` page from the JSON in #pgshift-data with uPlot.
// Each drawn chart is recorded in window.pgshiftCharts (id, uPlot instance, series colours)
// so a test can check that it really drew data.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("pgshift-data").textContent);
  var charts = [];
  window.pgshiftCharts = charts;

  var C = {
    blue: "#1f6fd1", orange: "#e8710a", green: "#188038", red: "#d93025",
    purple: "#8430ce", grey: "#5f6368", cut: "#b00020"
  };

  function utc(ts) { return uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"); }
  function hms(ts) { return new Date(ts * 1e3).toISOString().substr(11, 8); }
  // Whole seconds at least (the data is per second), labelled HH:MM:SS UTC.
  var xAxis = { space: 70, incrs: [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200],
                values: function (u, vs) { return vs.map(hms); } };

  function fmtBytes(v) {
    if (v == null) return "-";
    var u = ["B", "kB", "MB", "GB", "TB"], i = 0;
    while (Math.abs(v) >= 1024 && i < u.length - 1) { v /= 1024; i++; }
    return (i === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + u[i];
  }
  function fmtSeconds(v) {
    if (v == null) return "-";
    if (v === 0) return "0 s";
    return Math.abs(v) < 1 ? +(v * 1000).toPrecision(2) + " ms" : +v.toPrecision(3) + " s";
  }
  function fixed(d, unit) {
    return function (u, v) { return v == null ? "-" : v.toFixed(d) + (unit || ""); };
  }

  // Vertical dashed lines at each cutover (pause start), labelled with the pause.
  function cutoverPlugin() {
    return {
      hooks: {
        draw: [function (u) {
          var ctx = u.ctx, top = u.bbox.top, h = u.bbox.height;
          ctx.save();
          data.cutovers.forEach(function (c) {
            var x = Math.round(u.valToPos(c.t, "x", true));
            if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) return;
            ctx.strokeStyle = c.succeeded ? C.cut : C.grey;
            ctx.lineWidth = 2 * uPlot.pxRatio;
            ctx.setLineDash([6 * uPlot.pxRatio, 4 * uPlot.pxRatio]);
            ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + h); ctx.stroke();
            ctx.setLineDash([]);
            ctx.fillStyle = ctx.strokeStyle;
            ctx.font = (11 * uPlot.pxRatio) + "px sans-serif";
            ctx.fillText((c.direction === "rollback" ? "rollback " : "cutover ") +
                         c.pause_ms.toFixed(1) + " ms" + (c.succeeded ? "" : " (undone)"),
                         x + 4 * uPlot.pxRatio, top + 12 * uPlot.pxRatio);
          });
          ctx.restore();
        }]
      }
    };
  }

  function width(el) { return Math.max(320, Math.min(el.clientWidth || 900, 1100)); }

  function draw(id, series, axes, cols, scales) {
    var el = document.getElementById(id);
    if (!el) return;
    var opts = {
      width: width(el), height: 260, tzDate: utc,
      plugins: [cutoverPlugin()],
      // Wide enough to show the cutover marks even after the last sample.
      scales: Object.assign({ x: { time: true, range: function (u, min, max) {
        data.cutovers.forEach(function (c) { min = Math.min(min, c.t - 1); max = Math.max(max, c.t + 1); });
        return [min, max];
      } } }, scales || {}),
      series: [{ label: "UTC", value: function (u, v) { return v == null ? "-" : hms(v); } }]
        .concat(series),
      axes: [xAxis].concat(axes),
      legend: { live: true }
    };
    series.forEach(function (s) { if (s.scale && !opts.scales[s.scale]) opts.scales[s.scale] = {}; });
    var u = new uPlot(opts, cols, el);
    charts.push({ id: id, plot: u, colors: series.map(function (s) { return s.stroke; }) });
  }

  function line(label, color, scale, value, extra) {
    var s = { label: label, stroke: color, width: 2, scale: scale, value: value, spanGaps: false,
              points: { show: true, size: 4 } };
    for (var k in extra || {}) s[k] = extra[k];
    return s;
  }

  if (document.getElementById("chart-lag")) {
    draw("chart-lag",
         [line("lag bytes", C.blue, "bytes", function (u, v) { return fmtBytes(v); }),
          line("lag seconds", C.orange, "s", function (u, v) { return fmtSeconds(v); }),
          line("ready in", C.green, "s", function (u, v) { return fmtSeconds(v); }, { dash: [6, 4] })],
         [{ scale: "bytes", values: function (u, vs) { return vs.map(fmtBytes); }, size: 70 },
          { scale: "s", side: 1, grid: { show: false },
            values: function (u, vs) { return vs.map(fmtSeconds); } }],
         [data.lag.t, data.lag.bytes, data.lag.seconds, data.lag.ready_in]);
  }
  if (document.getElementById("chart-copy")) {
    draw("chart-copy",
         [line("bytes copied %", C.blue, "%", fixed(1, " %")),
          line("tables synced %", C.green, "%", fixed(1, " %"))],
         [{ scale: "%", values: function (u, vs) { return vs.map(function (v) { return v + " %"; }); } }],
         [data.copy.t, data.copy.bytes_pct, data.copy.tables_pct],
         { "%": { range: [0, 100] } });
  }
  if (document.getElementById("chart-verify")) {
    draw("chart-verify",
         [line("tables done", C.green, "n", fixed(0)),
          line("tables total", C.grey, "n", fixed(0), { dash: [4, 4] }),
          line("mismatches", C.red, "n", fixed(0))],
         [{ scale: "n" }],
         [data.verify.t, data.verify.done, data.verify.total, data.verify.mismatches]);
  }
  if (data.load && document.getElementById("chart-throughput")) {
    draw("chart-throughput",
         [line("ops/s", C.blue, "ops", fixed(0)),
          line("writes/s", C.purple, "ops", fixed(0)),
          line("reads/s", C.green, "ops", fixed(0))],
         [{ scale: "ops" }],
         [data.load.t, data.load.ops, data.load.writes, data.load.reads]);
    draw("chart-latency",
         [line("max latency ms", C.orange, "ms", fixed(1, " ms")),
          line("errors/s", C.red, "err", fixed(0), { paths: uPlot.paths.bars({ size: [0.6, 40] }),
                                                     fill: C.red + "66" })],
         [{ scale: "ms", values: function (u, vs) { return vs.map(function (v) { return v + " ms"; }); }, size: 70 },
          { scale: "err", side: 1, grid: { show: false } }],
         [data.load.t, data.load.max_latency_ms, data.load.errors]);
  }
})();
