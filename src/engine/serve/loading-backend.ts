/**
 * The backend of a gateway that listens while its in-process engine loads (a torch worker can take
 * minutes on a large model): /v1/models lists the names it will serve, /ready says what loads, and
 * generation and /tokenize answer 503 with Retry-After, as vLLM's clients expect from a server that
 * is up but not ready. The gateway swaps the real backend in once it has loaded (Gateway.setBackend).
 */
import { HttpError } from "./http-error.js";
import type { Backend, ModelCard } from "./types.js";

export class LoadingBackend implements Backend {
  private readonly created = Math.floor(Date.now() / 1000);
  private readonly since = Date.now();

  constructor(private readonly o: { servedNames: string[]; root: string; engine: string }) {}

  modelIds(): readonly string[] {
    return this.o.servedNames;
  }

  models(): ModelCard[] {
    return this.o.servedNames.map((id) => ({ id, object: "model" as const, created: this.created, owned_by: "dsr", root: this.o.root }));
  }

  ready(): boolean {
    return false;
  }

  describe(): Record<string, unknown> {
    return { loading: { engine: this.o.engine, model: this.o.root, seconds: Math.round((Date.now() - this.since) / 1000) } };
  }

  handle(): Promise<void> {
    return Promise.reject(this.unavailable());
  }

  tokens(): Promise<{ status: number; body: unknown }> {
    return Promise.reject(this.unavailable());
  }

  async close(): Promise<void> {}

  private unavailable(): HttpError {
    return new HttpError(503, `the model is still loading on the ${this.o.engine} engine`, { code: "model_loading", headers: { "retry-after": "5" } });
  }
}
