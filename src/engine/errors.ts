/**
 * The one error type of dsr. The CLI prints `message` (one line naming what failed: file, tensor,
 * flag or field) and `hint` (what to do), then exits with `exitCode`. Engine code throws only these
 * for expected failures; anything else is a bug and is reported as an internal error (exit 1).
 */
export const ExitCode = {
  ok: 0,
  failure: 1,
  usage: 2,
  integrity: 3,
  interrupted: 130,
} as const;
export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

export interface DsrErrorOptions {
  hint?: string;
  exitCode?: ExitCodeValue;
  cause?: unknown;
  /** Extra machine-readable context (HTTP status, url, file, tensor…) shown in --json output. */
  details?: Record<string, unknown>;
}

export class DsrError extends Error {
  readonly code: string;
  readonly hint?: string;
  readonly exitCode: ExitCodeValue;
  readonly details?: Record<string, unknown>;

  constructor(code: string, message: string, opts: DsrErrorOptions = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = "DsrError";
    this.code = code;
    this.hint = opts.hint;
    this.exitCode = opts.exitCode ?? ExitCode.failure;
    this.details = opts.details;
  }

  toJSON(): Record<string, unknown> {
    return { code: this.code, message: this.message, hint: this.hint, exitCode: this.exitCode, ...this.details };
  }
}

/** Bad flags or arguments: exit 2. */
export function usageError(message: string, hint?: string): DsrError {
  return new DsrError("DSR_USAGE", message, { hint, exitCode: ExitCode.usage });
}

/** A file or checkpoint that fails validation: exit 3. */
export function integrityError(code: string, message: string, opts: Omit<DsrErrorOptions, "exitCode"> = {}): DsrError {
  return new DsrError(code, message, { ...opts, exitCode: ExitCode.integrity });
}

/** Raised when an AbortSignal fires (Ctrl-C): exit 130. */
export function interruptedError(what = "operation"): DsrError {
  return new DsrError("DSR_INTERRUPTED", `${what} interrupted`, {
    exitCode: ExitCode.interrupted,
    hint: "run the same command again to resume",
  });
}

export function isDsrError(e: unknown): e is DsrError {
  return e instanceof DsrError;
}
