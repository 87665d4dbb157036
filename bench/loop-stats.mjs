/**
 * A preload for benchmarks (`node --import bench/loop-stats.mjs …`, or bench/gateway's
 * `--dsr-node-args "--import …"`, which cluster workers inherit): once a second it records this
 * process's event-loop utilisation, the delay of a 1 ms timer (a loop turn's length, roughly), the
 * size of V8's young generation and the time spent in each kind of GC; at exit it writes them to
 * `$DSR_LOOP_STATS_DIR/loop-PID.json`. Without that variable it does nothing.
 *
 * Why it exists: a proxy whose loop is busy 96% of the time makes every new request and every
 * stream's first token wait about one turn (2-3 ms at that load), and in a closed loop that wait is
 * what lowers streams/s. CPU time per stream alone does not show it; this does.
 */
import { monitorEventLoopDelay, performance, PerformanceObserver, constants } from "node:perf_hooks";
import { writeFileSync } from "node:fs";
import v8 from "node:v8";

const dir = process.env.DSR_LOOP_STATS_DIR;
if (dir) {
  const delay = monitorEventLoopDelay({ resolution: 1 });
  delay.enable();
  let elu = performance.eventLoopUtilization();
  // per GC kind: count, total ms, longest ms, since the last sample
  const kinds = {
    [constants.NODE_PERFORMANCE_GC_MINOR]: "minor",
    [constants.NODE_PERFORMANCE_GC_MAJOR]: "major",
    [constants.NODE_PERFORMANCE_GC_INCREMENTAL]: "incremental",
    [constants.NODE_PERFORMANCE_GC_WEAKCB]: "weakcb",
  };
  const gc = Object.fromEntries(Object.values(kinds).map((k) => [k, [0, 0, 0]]));
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      const g = gc[kinds[e.detail?.kind]];
      if (!g) continue;
      g[0]++;
      g[1] += e.duration;
      g[2] = Math.max(g[2], e.duration);
    }
  }).observe({ entryTypes: ["gc"] });
  const ms = (ns) => +(ns / 1e6).toFixed(3);
  const series = [];
  setInterval(() => {
    const used = performance.eventLoopUtilization(elu);
    elu = performance.eventLoopUtilization();
    const young = v8.getHeapSpaceStatistics().find((s) => s.space_name === "new_space");
    series.push({
      t_ms: Math.round(performance.now()),
      elu: +used.utilization.toFixed(3),
      timer_ms: { mean: ms(delay.mean), p50: ms(delay.percentile(50)), p99: ms(delay.percentile(99)), max: ms(delay.max) },
      young_mb: +(young.space_size / 1048576).toFixed(1),
      gc: Object.fromEntries(Object.entries(gc).map(([k, v]) => [k, { n: v[0], ms: +v[1].toFixed(2), max_ms: +v[2].toFixed(2) }])),
    });
    for (const v of Object.values(gc)) v.fill(0);
    delay.reset();
  }, 1000).unref();
  process.on("exit", () => {
    const doc = { pid: process.pid, argv: process.argv.slice(2).join(" "), exec_argv: process.execArgv.join(" "), worker: process.env.DSR_SERVE_WORKER_SPEC !== undefined, series };
    writeFileSync(`${dir}/loop-${process.pid}.json`, JSON.stringify(doc));
  });
}
