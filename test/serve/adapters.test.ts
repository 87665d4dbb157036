/**
 * One model with LoRA adapters (vLLM's `--lora-modules NAME=PATH`) behind `dsr serve --upstream`:
 * the adapters the upstream lists beside its model are served under their own ids and passed on as
 * they are, while the gateway's --served-model-name is still mapped to the upstream's model.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startStandin, type Standin } from "../support/standin-upstream.js";
import { startServe } from "./helpers.js";

let up: Standin;
beforeAll(async () => {
  up = await startStandin({ tokens: 3, paceMs: 1, model: "r1-upstream", adapters: ["sql-lora", "chem-lora"] });
});
afterAll(async () => up?.close());

describe("an upstream with LoRA adapters", () => {
  for (const workers of [1, 2]) {
    it(`--workers ${workers}: /v1/models lists the served name and the adapters; an adapter's id goes upstream as it is, the served name as the upstream's`, async () => {
      const g = await startServe(["--upstream", up.url, "--served-model-name", "dsr-r1", "--workers", String(workers)]);
      try {
        const models = (await (await fetch(`${g.url}/v1/models`)).json()) as { data: { id: string; root: string }[] };
        expect(models.data.map((m) => [m.id, m.root])).toEqual([["dsr-r1", "r1-upstream"], ["sql-lora", "sql-lora"], ["chem-lora", "chem-lora"]]);
        for (const [model, upstream] of [["sql-lora", "sql-lora"], ["dsr-r1", "r1-upstream"], ["chem-lora", "chem-lora"]] as const) {
          for (const stream of [false, true]) {
            const rid = `${model}-${stream}-${workers}`;
            const r = await fetch(`${g.url}/v1/chat/completions`, { method: "POST", headers: { "x-request-id": rid, connection: "close" }, body: JSON.stringify({ model, messages: [{ role: "user", content: "hi" }], max_tokens: 3, stream }) });
            expect(r.status, rid).toBe(200);
            await r.text();
            expect(up.requests.find((q) => q.id === rid)!.body.model).toBe(upstream);
          }
        }
        expect((await fetch(`${g.url}/v1/completions`, { method: "POST", body: JSON.stringify({ model: "other-lora", prompt: "x" }) })).status).toBe(404);
      } finally {
        expect(await g.stop()).toBe(0);
      }
    }, 60_000);
  }
});
