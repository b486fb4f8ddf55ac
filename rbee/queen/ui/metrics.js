// Metrics at a glance: per model, the last ten minutes of requests/s, TTFT and inter-token latency percentiles
// and refusals, from the queen's own window (GET /v2/traffic, one point per 10 s), drawn as small SVG charts.
// Read again every 10 s: one request per page, not one per chart.

import { OPERATOR, Unauthorized, json } from "./api.js";
import { h, notice, replace } from "./dom.js";

export const role = OPERATOR;
export const title = "Metrics";

const SVG = "http://www.w3.org/2000/svg";
const REFRESH_MS = 10000;

function svg(tag, attributes) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, String(value));
  return element;
}

function chart(label, points, keys, unit) {
  const width = 300;
  const height = 60;
  const values = points.flatMap((point) => keys.map((key) => point[key] ?? 0));
  const top = Math.max(...values, 0) || 1;
  const graphic = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label, class: "chart" });
  keys.forEach((key, index) => {
    const line = points.map((point, i) => `${((i / Math.max(1, points.length - 1)) * width).toFixed(1)},${(height - ((point[key] ?? 0) / top) * (height - 4) - 2).toFixed(1)}`);
    graphic.append(svg("polyline", { points: line.join(" "), class: `series s${index}`, fill: "none" }));
  });
  const latest = points.length ? points[points.length - 1] : {};
  const now = keys.map((key) => `${key.replace(/_/g, " ")} ${latest[key] ?? "–"}`).join(" · ");
  return h("figure", { class: "metric" }, graphic, h("figcaption", {}, h("strong", {}, label), ` (max ${top.toFixed(2)} ${unit}) `, h("span", { class: "dim" }, now)));
}

export function mount(view, context) {
  const body = h("div", {}, "Loading…");
  replace(view, h("h1", {}, "Metrics"), h("p", { class: "dim" }, "The last ten minutes, one point per 10 s; the queen's /metrics endpoint has the same counts for Prometheus."), body);
  async function draw() {
    try {
      const traffic = await json(OPERATOR, "/v2/traffic", { signal: context.signal });
      const models = Object.entries(traffic.models);
      replace(
        body,
        models.length ? null : notice("No requests in the last ten minutes."),
        models.map(([model, points]) =>
          h(
            "section",
            { class: "model-metrics", dataset: { model } },
            h("h2", {}, model, h("span", { class: "dim" }, ` · queued now: ${traffic.queues[model] ?? 0}`)),
            h(
              "div",
              { class: "charts" },
              chart("Requests/s", points, ["requests_per_s"], "/s"),
              chart("Tokens/s", points, ["tokens_per_s"], "/s"),
              chart("TTFT", points, ["ttft_p50_ms", "ttft_p95_ms"], "ms"),
              chart("Inter-token latency", points, ["itl_p50_ms", "itl_p95_ms"], "ms"),
              chart("Queue depth (deepest)", points, ["queued_max"], "requests"),
              chart("Refused, failed, cancelled", points, ["refused", "errors", "cancelled"], "requests"),
            ),
          ),
        ),
      );
    } catch (error) {
      if (error instanceof Unauthorized) context.refused(OPERATOR);
      else if (error.name !== "AbortError") replace(body, notice(error.message, "error"));
    }
  }
  draw();
  const timer = setInterval(draw, REFRESH_MS);
  return () => clearInterval(timer);
}
