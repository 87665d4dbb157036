/**
 * Progress bars (bytes, throughput, ETA) on a TTY via cli-progress; a no-op otherwise, so commands
 * stay quiet and machine-readable when piped. One Progress owns a MultiBar: an overall bar plus
 * optional per-item bars (pull shows one per file in flight).
 */
import cliProgress from "cli-progress";
import type { Output } from "./output.js";
import { formatBytes, formatDuration } from "./table.js";

export interface Bar {
  update(done: number): void;
  increment(n: number): void;
  setTotal(total: number): void;
  stop(): void;
}

const noopBar: Bar = { update() {}, increment() {}, setTotal() {}, stop() {} };

export class Progress {
  private multi?: cliProgress.MultiBar;
  private readonly started = Date.now();

  constructor(private readonly out: Output, readonly unit: "bytes" | "items" = "bytes") {
    if (out.interactive) {
      this.multi = new cliProgress.MultiBar(
        {
          format: (options, params, payload: { label: string; startedAt: number }) => this.format(options, params, payload),
          hideCursor: true,
          clearOnComplete: false,
          stopOnComplete: false,
          barsize: 24,
          fps: 8,
          stream: out.stderr as NodeJS.WriteStream,
        },
        cliProgress.Presets.shades_classic,
      );
    }
  }

  private format(options: cliProgress.Options, params: cliProgress.Params, payload: { label: string; startedAt: number }): string {
    const size = options.barsize ?? 24;
    const filled = Math.round(Math.min(1, params.progress) * size);
    const bar = "█".repeat(filled) + "░".repeat(size - filled);
    const elapsed = (Date.now() - payload.startedAt) / 1000;
    const rate = elapsed > 0 ? params.value / elapsed : 0;
    const eta = rate > 0 ? (params.total - params.value) / rate : Infinity;
    const amount =
      this.unit === "bytes"
        ? `${formatBytes(params.value)}/${formatBytes(params.total)} ${formatBytes(rate)}/s`
        : `${params.value}/${params.total} ${rate.toFixed(1)}/s`;
    const pct = `${(Math.min(1, params.progress) * 100).toFixed(0).padStart(3)}%`;
    return `${payload.label.padEnd(28).slice(0, 28)} ${bar} ${pct} ${amount} ETA ${params.value >= params.total ? "0s" : formatDuration(eta)}`;
  }

  bar(label: string, total: number): Bar {
    if (!this.multi) return noopBar;
    const b = this.multi.create(Math.max(total, 1), 0, { label, startedAt: Date.now() });
    const multi = this.multi;
    return {
      update: (done) => b.update(done),
      increment: (n) => b.increment(n),
      setTotal: (t) => b.setTotal(Math.max(t, 1)),
      stop: () => {
        b.stop();
        multi.remove(b);
      },
    };
  }

  /** Print a line above the bars (or plainly when no bars are drawn). */
  log(text: string): void {
    if (this.multi) this.multi.log(text + "\n");
    else this.out.note(text);
  }

  get elapsedSeconds(): number {
    return (Date.now() - this.started) / 1000;
  }

  stop(): void {
    this.multi?.stop();
  }
}
