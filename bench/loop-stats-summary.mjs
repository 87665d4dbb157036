/**
 * Summarises bench/loop-stats.mjs files: for each process, the seconds when its loop was busy
 * (utilisation over 0.8, i.e. under the throughput run's load) averaged. Prints one JSON line per
 * process. Usage: `node bench/loop-stats-summary.mjs DIR`.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

const dir = process.argv[2];
if (!dir) throw new Error("usage: node bench/loop-stats-summary.mjs DIR (the DSR_LOOP_STATS_DIR of a run)");
const avg = (xs) => (xs.length ? +(xs.reduce((a, b) => a + b, 0) / xs.length).toFixed(3) : null);
for (const f of readdirSync(dir).filter((n) => /^loop-\d+\.json$/.test(n)).sort()) {
  const d = JSON.parse(readFileSync(join(dir, f), "utf8"));
  const busy = d.series.filter((s) => s.elu > 0.8);
  if (busy.length === 0) continue;
  const gc = (k, field) => avg(busy.map((s) => s.gc[k][field]));
  console.log(
    JSON.stringify({
      pid: d.pid,
      role: d.worker ? "worker" : "main",
      exec_argv: d.exec_argv,
      busy_seconds: busy.length,
      elu: avg(busy.map((s) => s.elu)),
      timer_ms_mean: avg(busy.map((s) => s.timer_ms.mean)),
      timer_ms_p99: avg(busy.map((s) => s.timer_ms.p99)),
      young_mb: busy[busy.length - 1].young_mb,
      scavenges_per_s: gc("minor", "n"),
      scavenge_ms_per_s: gc("minor", "ms"),
      scavenge_max_ms: Math.max(...busy.map((s) => s.gc.minor.max_ms)),
      major_gc_ms_per_s: gc("major", "ms"),
    }),
  );
}
