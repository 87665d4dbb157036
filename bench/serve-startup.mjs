// How long `dsr serve` takes from spawn to its "serving … at" line, and its resident memory then: a
// proxy-only gateway (an --upstream that need not answer; --served-model-name lets it start
// unready). Prints one JSON document.
//   node bench/serve-startup.mjs [--cli bin/dsr] [--runs 7] [--compare-cli OTHER/bin/dsr]
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

const { values: a } = parseArgs({ options: { cli: { type: "string", default: "bin/dsr" }, runs: { type: "string", default: "7" }, "compare-cli": { type: "string" } } });
const runs = Number(a.runs);

async function once(cli) {
  const t0 = performance.now();
  const p = spawn(process.execPath, [cli, "serve", "--upstream", "http://127.0.0.1:9", "--served-model-name", "x", "--port", "0"], { stdio: ["ignore", "ignore", "pipe"] });
  await new Promise((resolve, reject) => {
    let err = "";
    p.stderr.on("data", (d) => ((err += d), /^serving /m.test(err) && resolve()));
    p.on("exit", (c) => reject(new Error(`exited ${c}: ${err}`)));
  });
  const ms = performance.now() - t0;
  const rss = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${p.pid}/status`, "utf8"))[1]) / 1024;
  p.removeAllListeners("exit");
  p.kill("SIGKILL");
  await new Promise((r) => p.on("exit", r));
  return { ms, rss };
}

const median = (xs) => xs.sort((x, y) => x - y)[xs.length >> 1];
const targets = { dsr: a.cli, ...(a["compare-cli"] ? { baseline: a["compare-cli"] } : {}) };
const out = {};
for (const name of Object.keys(targets)) out[name] = { ms: [], rss: [] };
for (let i = 0; i < runs; i++) {
  for (const [name, cli] of Object.entries(targets)) {
    const r = await once(cli);
    out[name].ms.push(r.ms);
    out[name].rss.push(r.rss);
  }
}
console.log(JSON.stringify(Object.fromEntries(Object.entries(out).map(([k, v]) => [k, { startup_ms_median: Math.round(median(v.ms)), rss_mb_median: Math.round(median(v.rss)), runs }])), null, 2));
