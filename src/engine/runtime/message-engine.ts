/**
 * A TokenEngine whose engine runs elsewhere and speaks engine-protocol.ts over a port: the embedded
 * engine's worker thread or the torch worker process. Requests are validated here first, so errors
 * such as a context overflow still throw from submit() synchronously; stats() returns the snapshot
 * the engine sends after every step. When the engine dies, every open stream fails at once and
 * later submits throw.
 */
import { DsrError } from "../errors.js";
import { Channel } from "./embedded/channel.js";
import { fromWire, type EngineCounters, type FromEngine, type ToEngine } from "./engine-protocol.js";
import type { RemoteConstraints, Verdict } from "./remote-constraints.js";
import type { EngineStats, SubmitRequest, TokenChunk, TokenEngine } from "./types.js";

/** Where the messages go: a worker thread's port or a socket (the transport frames them). */
export interface EnginePort<S extends EngineStats> {
  send(m: ToEngine | Record<string, unknown>): void;
  /** Sets the message handler (replacing the previous one). */
  onMessage(cb: (m: FromEngine<S>) => void): void;
  /** Sets the handler called once when the engine is gone (crash, exit, socket closed), replacing the previous one. */
  onGone(cb: (why: string) => void): void;
  /** Ends the engine at once. */
  terminate(): Promise<void>;
}

export interface MessageEngineOptions<S extends EngineStats> {
  /** The engine's name in errors ("embedded engine", "torch worker"). */
  name: string;
  /** Throws for a request the engine would refuse (checked before it is sent). */
  validate: (req: SubmitRequest, vocab: number) => void;
  /** Called once if the engine dies (not on close()), after its open streams were failed. */
  onGone?: (e: DsrError) => void;
  /** For an engine that samples elsewhere and asks here whether its drawn tokens may follow (the torch worker). */
  constraints?: RemoteConstraints;
  /** Stats until the engine's first snapshot. */
  initialStats: (opened: FromEngine<S> & { type: "opened" }) => S;
}

export class MessageEngine<S extends EngineStats = EngineStats> implements TokenEngine {
  private nextId = 1;
  private readonly channels = new Map<number, Channel<TokenChunk>>();
  private snapshot: S;
  counters: EngineCounters = { prefillTokens: 0, decodeTokens: 0, prefillMs: 0, decodeMs: 0, decodeSteps: 0 };
  private closing?: Promise<void>;
  private closed?: () => void;
  /** Set when the engine died: later submits fail at once instead of waiting forever. */
  private crashed?: DsrError;

  private constructor(
    private readonly port: EnginePort<S>,
    private readonly opts: MessageEngineOptions<S>,
    readonly opened: FromEngine<S> & { type: "opened" },
  ) {
    this.snapshot = opts.initialStats(opened);
    port.onMessage((m) => this.onMessage(m));
    port.onGone((why) => {
      this.closed?.();
      if (this.closing) return;
      this.crashed ??= new DsrError("DSR_ENGINE_FAILED", `${opts.name} ${why}`, { hint: "restart the engine; re-run with --verbose and report it" });
      for (const c of this.channels.values()) c.fail(this.crashed);
      this.channels.clear();
      opts.constraints?.clear();
      opts.onGone?.(this.crashed);
    });
  }

  /** Sends the engine its `open` message and resolves once it answers `opened` (rejects on `open-error` or death). */
  static async open<S extends EngineStats>(port: EnginePort<S>, open: Record<string, unknown>, opts: MessageEngineOptions<S>): Promise<MessageEngine<S>> {
    const opened = await new Promise<FromEngine<S> & { type: "opened" }>((resolve, reject) => {
      port.onMessage((m) => {
        if (m.type === "opened") resolve(m);
        else if (m.type === "open-error") reject(fromWire(m.error));
      });
      port.onGone((why) => {
        reject(new DsrError("DSR_ENGINE_FAILED", `${opts.name} ${why} while loading`, { hint: "see the engine's log lines above" }));
      });
      port.send({ ...open, type: "open" });
    }).catch(async (e) => {
      await port.terminate();
      throw e;
    });
    return new MessageEngine(port, opts, opened);
  }

  private onMessage(m: FromEngine<S>): void {
    if (m.type === "stats") {
      this.snapshot = m.stats;
      this.counters = m.counters;
      return;
    }
    if (m.type === "closed") return this.closed?.();
    if (m.type === "check") return this.check(m.rows);
    if (m.type !== "chunk" && m.type !== "end" && m.type !== "error") return;
    const ch = this.channels.get(m.id);
    if (!ch) return;
    if (m.type === "chunk") {
      if (this.opts.constraints?.has(m.id)) return this.constrainedChunk(m.id, ch, m.chunk);
      ch.push(m.chunk);
    } else {
      this.forget(m.id);
      if (m.type === "end") ch.end();
      else ch.fail(fromWire(m.error));
    }
  }

  private forget(id: number): void {
    this.channels.delete(id);
    this.opts.constraints?.remove(id);
  }

  /** A constrained request's tokens: the one that completes its JSON value ends the stream ("stop"), and the engine drops the row. */
  private constrainedChunk(id: number, ch: Channel<TokenChunk>, chunk: TokenChunk): void {
    let done: boolean;
    try {
      done = this.opts.constraints!.accept(id, chunk.ids);
    } catch (e) {
      return this.end(id, ch, e as Error);
    }
    if (!done) return void ch.push(chunk);
    ch.push({ ...chunk, finish: "stop" });
    if (!chunk.finish) this.end(id, ch); // else the engine's own end follows
  }

  /** Ends a stream here, before the engine does (it is told to drop the row; what it still sends for it is ignored). */
  private end(id: number, ch: Channel<TokenChunk>, e?: Error): void {
    this.forget(id);
    this.port.send({ type: "cancel", id });
    if (e) ch.fail(e);
    else ch.end();
  }

  private check(rows: number[]): void {
    const verdicts: Verdict[] = [];
    for (let i = 0; i < rows.length; i += 2) {
      const id = rows[i]!;
      try {
        verdicts.push(this.opts.constraints?.verdict(id, rows[i + 1]!) ?? false);
      } catch (e) {
        verdicts.push(false); // a dead end fails this request, not the batch
        const ch = this.channels.get(id);
        if (ch) this.end(id, ch, e as Error);
      }
    }
    this.port.send({ type: "verdict", rows: verdicts });
  }

  submit(req: SubmitRequest): AsyncIterable<TokenChunk> {
    if (this.closing) throw new DsrError("DSR_ENGINE_CLOSED", `the ${this.opts.name} is closed`, { hint: "open a new engine" });
    if (this.crashed) throw this.crashed;
    this.opts.validate(req, this.opened.vocab);
    const id = this.nextId++;
    const cancel = () => {
      if (this.channels.has(id)) this.port.send({ type: "cancel", id });
    };
    const ch = new Channel<TokenChunk>(cancel);
    this.channels.set(id, ch);
    if (req.constraint) this.opts.constraints?.add(id, req.constraint);
    const { signal, ...rest } = req;
    if (signal) {
      if (signal.aborted) queueMicrotask(cancel);
      else signal.addEventListener("abort", cancel, { once: true });
    }
    this.port.send({ type: "submit", id, req: rest });
    return ch;
  }

  stats(): S {
    return this.snapshot;
  }

  /** Asks the engine to finish (open streams end with "abort"), waits for `closed`, then ends it. */
  close(): Promise<void> {
    if (this.crashed) return (this.closing ??= this.port.terminate());
    this.closing ??= new Promise<void>((resolve) => {
      this.closed = resolve;
      this.port.send({ type: "close" });
    }).then(() => this.port.terminate());
    return this.closing;
  }
}
