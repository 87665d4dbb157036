/**
 * Everything a command prints goes through Output: human text on a TTY, one JSON document with
 * --json, nothing but errors with --quiet. Progress (src/ui/progress.ts) draws only on a TTY.
 */
import { DsrError, ExitCode, isDsrError } from "../engine/errors.js";

export interface OutputOptions {
  json: boolean;
  quiet: boolean;
  verbose: boolean;
  color: boolean;
  stdout?: NodeJS.WriteStream | NodeJS.WritableStream;
  stderr?: NodeJS.WriteStream | NodeJS.WritableStream;
}

const ESC = "\u001b[";

export class Output {
  readonly json: boolean;
  readonly quiet: boolean;
  readonly verbose: boolean;
  readonly color: boolean;
  readonly stdout: NodeJS.WritableStream;
  readonly stderr: NodeJS.WritableStream;

  constructor(o: OutputOptions) {
    this.json = o.json;
    this.quiet = o.quiet;
    this.verbose = o.verbose;
    this.stdout = o.stdout ?? process.stdout;
    this.stderr = o.stderr ?? process.stderr;
    this.color = o.color && !o.json && (this.stderr as NodeJS.WriteStream).isTTY === true && !("NO_COLOR" in process.env);
  }

  /** True when progress bars and live views may be drawn (stderr is a TTY, not --json/--quiet). */
  get interactive(): boolean {
    return !this.json && !this.quiet && (this.stderr as NodeJS.WriteStream).isTTY === true;
  }

  /** Human-readable line to stdout (suppressed by --json and --quiet). */
  line(text = ""): void {
    if (!this.json && !this.quiet) this.stdout.write(text + "\n");
  }

  /** Status/progress note to stderr (suppressed by --quiet and --json). */
  note(text: string): void {
    if (!this.quiet && !this.json) this.stderr.write(text + "\n");
  }

  /** Diagnostic detail shown with --verbose only. */
  debug(text: string): void {
    if (this.verbose) this.stderr.write(this.dim(text) + "\n");
  }

  warn(text: string): void {
    if (!this.quiet) this.stderr.write(this.paint("33", "warning: ") + text + "\n");
  }

  /** The machine-readable result of a command: printed only with --json. */
  result(obj: unknown): void {
    if (this.json) this.stdout.write(JSON.stringify(obj, null, 2) + "\n");
  }

  /** Prints an error as one line (+ hint), or as JSON with --json; returns the exit code. */
  error(e: unknown): number {
    const err = isDsrError(e)
      ? e
      : new DsrError("DSR_INTERNAL", e instanceof Error ? e.message : String(e), {
          hint: "this is a bug in dsr; re-run with --verbose and report the stack trace",
          cause: e,
        });
    if (this.json) {
      this.stdout.write(JSON.stringify({ error: err.toJSON() }, null, 2) + "\n");
    } else {
      this.stderr.write(this.paint("31", "error: ") + err.message + "\n");
      if (err.hint) this.stderr.write(this.dim("hint: " + err.hint) + "\n");
    }
    if (this.verbose) {
      const stack = (isDsrError(e) ? (e.cause as Error | undefined)?.stack ?? e.stack : (e as Error)?.stack) ?? "";
      this.stderr.write(stack + "\n");
    }
    return err.exitCode ?? ExitCode.failure;
  }

  paint(code: string, s: string): string {
    return this.color ? `${ESC}${code}m${s}${ESC}0m` : s;
  }
  dim(s: string): string {
    return this.paint("2", s);
  }
  bold(s: string): string {
    return this.paint("1", s);
  }
}
