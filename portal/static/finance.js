// The finance console's charts (docs/finance-console.md): fetch the day's figures as JSON from
// the page's data-source and draw each [data-chart] element with Apache ECharts (served from
// /static/vendor). No inline script, no eval, no HTML tooltips (the CSP allows no inline style):
// tooltips are drawn on the canvas (renderMode richText). Money arrives as integer fen and stays
// integer fen in the chart data; only the axis and tooltip labels show yuan.
(function () {
  "use strict";

  function yuan(fen) {
    var n = Math.round(Number(fen) || 0);
    var sign = n < 0 ? "-" : "";
    var a = Math.abs(n);
    var cents = String(a % 100);
    return sign + "¥" + String(Math.floor(a / 100)) + "." + (cents.length < 2 ? "0" + cents : cents);
  }

  function base(labels) {
    return {
      aria: { enabled: true },
      animation: false,
      tooltip: { trigger: "axis", renderMode: "richText" },
      grid: { left: 64, right: 24, top: 40, bottom: 48, containLabel: true },
      textStyle: { fontFamily: "system-ui, sans-serif" },
      title: { show: false, text: labels.none || "", left: "center", top: "middle" }
    };
  }

  function empty(option, rows) {
    if (!rows.length) {
      option.title.show = true;
    }
    return option;
  }

  function bars(labels, names, values, seriesName, money) {
    var option = base(labels);
    option.xAxis = { type: "category", data: names, axisLabel: { interval: 0, rotate: names.length > 6 ? 30 : 0 } };
    option.yAxis = { type: "value", axisLabel: money ? { formatter: yuan } : {} };
    option.tooltip.valueFormatter = money ? yuan : undefined;
    option.series = [{ name: seriesName, type: "bar", data: values, barMaxWidth: 48 }];
    return empty(option, values);
  }

  var builders = {
    hours: function (data, labels) {
      var h = data.hours;
      var option = base(labels);
      option.legend = { top: 0 };
      option.xAxis = { type: "category", data: h.labels, name: labels.hour };
      option.yAxis = { type: "value", minInterval: 1, name: labels.taps };
      option.series = ["accepted", "suspect", "rejected", "forwarded"].map(function (verdict) {
        return { name: labels[verdict] || verdict, type: "bar", stack: "taps", data: h[verdict] };
      });
      return option;
    },
    operators: function (data, labels) {
      return bars(labels, data.operators.map(function (p) { return p.name || p.payee_id; }),
        data.operators.map(function (p) { return p.sales_fen; }), labels.sales, true);
    },
    routes: function (data, labels) {
      return bars(labels, data.routes.map(function (r) { return r.route_id; }),
        data.routes.map(function (r) { return r.posted_fen; }), labels.fares, true);
    },
    merchants: function (data, labels) {
      return bars(labels, data.merchants.map(function (p) { return p.name || p.payee_id; }),
        data.merchants.map(function (p) { return p.sales_fen; }), labels.sales, true);
    },
    issues: function (data, labels) {
      return bars(labels, data.issues.map(function (i) { return (labels[i.kind] || i.kind) + " " + i.code; }),
        data.issues.map(function (i) { return i.count; }), labels.records, false);
    },
    payouts: function (data, labels) {
      var option = base(labels);
      option.tooltip = { trigger: "item", renderMode: "richText" };
      option.legend = { top: 0 };
      option.series = [{
        name: labels.payees, type: "pie", radius: ["35%", "65%"], top: 24,
        data: data.payout_statuses.map(function (s) {
          return { name: labels[s.status] || s.status, value: s.payees, status: s.status };
        })
      }];
      return empty(option, data.payout_statuses);
    },
    map: function (data, labels) {
      var stops = data.map.stops;
      var lons = stops.map(function (s) { return s.lon; });
      var lats = stops.map(function (s) { return s.lat; });
      var pad = 0.01;
      var most = Math.max.apply(null, [1].concat(stops.map(function (s) { return s.taps; })));
      var option = base(labels);
      option.tooltip = { trigger: "item", renderMode: "richText" };
      option.legend = { top: 0 };
      var degrees = { formatter: function (v) { return Number(v).toFixed(3); } };
      option.grid = { left: 64, right: 112, top: 48, bottom: 48, containLabel: true };
      option.xAxis = { type: "value", name: labels.lon, scale: true, axisLabel: degrees,
        min: lons.length ? Math.min.apply(null, lons) - pad : 0, max: lons.length ? Math.max.apply(null, lons) + pad : 1 };
      option.yAxis = { type: "value", name: labels.lat, scale: true, axisLabel: degrees,
        min: lats.length ? Math.min.apply(null, lats) - pad : 0, max: lats.length ? Math.max.apply(null, lats) + pad : 1 };
      option.series = data.map.routes.map(function (r) {
        // above the stops: the urban stops sit close together and their symbols would hide the line
        return { name: labels.route + " " + r.route_id, type: "line", data: r.path, symbol: "none", z: 3,
          lineStyle: { width: 3, opacity: 0.85 } };
      });
      option.series.push({
        name: labels.stops, type: "scatter", z: 2,
        data: stops.map(function (s) {
          // labels of the eastern half go to the left of their stop, so none runs off the canvas
          var east = lons.length && s.lon > (Math.min.apply(null, lons) + Math.max.apply(null, lons)) / 2;
          return { name: s.name, value: [s.lon, s.lat, s.taps], stop_id: s.stop_id,
            label: { position: east ? "left" : "right" } };
        }),
        labelLayout: { hideOverlap: true },
        symbolSize: function (value) { return 8 + 24 * Math.sqrt(value[2] / most); },
        itemStyle: { opacity: 0.7 },
        label: { show: true, position: "right", formatter: function (p) { return p.name + " (" + p.value[2] + ")"; } }
      });
      return empty(option, stops);
    }
  };

  function draw(root, data) {
    var labels = {};
    try {
      labels = JSON.parse(root.getAttribute("data-labels") || "{}");
    } catch (e) {
      labels = {};
    }
    var charts = root.querySelectorAll("[data-chart]");
    Array.prototype.forEach.call(charts, function (el) {
      var build = builders[el.getAttribute("data-chart")];
      if (!build) {
        return;
      }
      var chart = window.echarts.getInstanceByDom(el) || window.echarts.init(el, null, { renderer: "canvas" });
      chart.setOption(build(data, labels), true);
      el.setAttribute("data-drawn", data.business_day);
    });
    window.addEventListener("resize", function () {
      Array.prototype.forEach.call(charts, function (el) {
        var chart = window.echarts.getInstanceByDom(el);
        if (chart) {
          chart.resize();
        }
      });
    });
  }

  function start() {
    var root = document.getElementById("finance");
    if (!root || !window.echarts) {
      return;
    }
    fetch(root.getAttribute("data-source"), { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (answer) {
        if (!answer.ok) {
          throw new Error("HTTP " + answer.status);
        }
        return answer.json();
      })
      .then(function (data) { draw(root, data); })
      .catch(function (error) {
        root.setAttribute("data-error", String(error));
      });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
