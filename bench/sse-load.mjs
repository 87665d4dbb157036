// A small closed-loop SSE load for profiling (bench/gateway-device-profile.sh): node bench/sse-load.mjs PORT CONCURRENCY SECONDS
// prints {done, errors, perS}. bench/gateway.ts is the benchmark; this only keeps a gateway busy while perf samples it.
import { Pool } from "undici";
const [port, conc, secs] = process.argv.slice(2).map(Number);
const pool = new Pool(`http://127.0.0.1:${port}`, { connections: conc, pipelining: 1 });
// CHAT=1: chat completions (R1-shaped when the stand-in sends reasoning), else completions
const chat = process.env.CHAT === "1";
const path = chat ? "/v1/chat/completions" : "/v1/completions";
const body = JSON.stringify(chat ? { model: "standin", messages: [{ role: "user", content: "hi" }], stream: true } : { model: "standin", prompt: "hi", stream: true });
let done = 0, errors = 0;
const end = Date.now() + secs * 1000;
async function loop() {
  while (Date.now() < end) {
    try {
      const r = await pool.request({ path, method: "POST", body, headers: { "content-type": "application/json" } });
      for await (const _ of r.body) {}
      if (r.statusCode === 200) done++;
      else errors++;
    } catch { errors++; }
  }
}
await Promise.all(Array.from({ length: conc }, loop));
console.log(JSON.stringify({ done, errors, perS: done / secs }));
await pool.close();
