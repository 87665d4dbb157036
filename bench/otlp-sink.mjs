// An OTLP/HTTP receiver for measuring the cost of `dsr serve --otlp-traces-endpoint`: it takes
// POST /v1/traces (protobuf or JSON) and answers at once, counting requests and bytes. Usage:
// `node bench/otlp-sink.mjs [PORT]`; on SIGINT/SIGTERM it prints one JSON document
// {requests, bytes, seconds}. With it running, e.g.
// `npx tsx bench/gateway.ts --runs latency --dsr-workers 1 --compare-cli bin/dsr --compare-env OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://127.0.0.1:4318`
// measures the same build with tracing (the baseline targets) and without (the dsr targets).
import { createServer } from "node:http";

const port = Number(process.argv[2] ?? 4318);
let requests = 0;
let bytes = 0;
const t0 = Date.now();
const server = createServer((req, res) => {
  req.on("data", (d) => (bytes += d.length));
  req.on("end", () => {
    requests++;
    const json = String(req.headers["content-type"]).includes("json");
    res.writeHead(200, { "content-type": json ? "application/json" : "application/x-protobuf" }).end(json ? "{}" : "");
  });
});
server.listen(port, "127.0.0.1", () => console.error(`otlp-sink listening on http://127.0.0.1:${port}`));
const done = () => {
  console.log(JSON.stringify({ requests, bytes, seconds: (Date.now() - t0) / 1000 }));
  process.exit(0);
};
process.on("SIGINT", done);
process.on("SIGTERM", done);
