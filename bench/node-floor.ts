/**
 * The floor of a streaming proxy written in Node: what bench/gateway measures `dsr serve` against
 * besides nginx. It forwards an upstream's streamed answer byte for byte (chunk framing included)
 * and does nothing else: no header parsing beyond Content-Length, no validation, no JSON, no event
 * framing, no metrics, no error handling worth the name. It is not a proxy anyone should run; it
 * shows how much CPU per stream Node's own sockets cost, so dsr's overhead above that is visible.
 *
 * Speaks the command line bench/gateway gives dsr: `node-floor.ts serve --upstream URL --port 0
 * [--workers N] [--ssl-keyfile K --ssl-certfile C]` (other flags ignored), prints `serving floor at
 * http(s)://HOST:PORT/v1`.
 */
import cluster from "node:cluster";
import { readFileSync } from "node:fs";
import net from "node:net";
import tls from "node:tls";

const arg = (name: string, d: string) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : d;
};
const upstream = new URL(arg("--upstream", "http://127.0.0.1:8000"));
const workers = Number(arg("--workers", "1"));
const CRLF2 = Buffer.from("\r\n\r\n");
const keyfile = arg("--ssl-keyfile", "");
const secure = keyfile ? { key: readFileSync(keyfile), cert: readFileSync(arg("--ssl-certfile", "")) } : undefined;
const scheme = secure ? "https" : "http";

/** An upstream connection reading into its own buffer; `onRead` belongs to the request it serves. */
interface Upstream {
  socket: net.Socket;
  onRead?: (n: number, buf: Buffer) => void;
}

function serve(port: number): net.Server {
  const idle: Upstream[] = [];
  const connect = (): Upstream => {
    const u: Upstream = { socket: undefined as unknown as net.Socket };
    u.socket = net.connect({
      host: upstream.hostname,
      port: Number(upstream.port),
      noDelay: true,
      onread: {
        buffer: Buffer.allocUnsafe(16384),
        callback: (n, buf) => {
          u.onRead?.(n, buf as Buffer);
          return true;
        },
      },
    });
    u.socket.on("error", () => u.socket.destroy());
    return u;
  };
  /** A pooled connection, skipping those the upstream closed while idle (its keep-alive timeout). */
  const take = (): Upstream => {
    for (let u = idle.pop(); u; u = idle.pop()) if (!u.socket.destroyed) return u;
    return connect();
  };
  const accept = (client: net.Socket) => {
    let acc: Buffer | undefined;
    client.on("error", () => client.destroy());
    client.on("data", (d: Buffer) => {
      acc = acc ? Buffer.concat([acc, d]) : d;
      const headEnd = acc.indexOf(CRLF2);
      if (headEnd < 0) return;
      const head = acc.toString("latin1", 0, headEnd);
      const len = Number(/content-length:\s*(\d+)/i.exec(head)?.[1] ?? 0);
      if (acc.length < headEnd + 4 + len) return;
      const body = acc.subarray(headEnd + 4, headEnd + 4 + len);
      acc = undefined;
      const path = head.slice(head.indexOf(" ") + 1, head.indexOf(" ", head.indexOf(" ") + 1));
      const up = take();
      up.onRead = (n, buf) => {
        // the read buffer is reused: copy what the client socket may still hold
        client.write(Buffer.from(buf.subarray(0, n)));
        // the zero-size chunk ends the answer: the connection goes back to the pool
        if (n >= 5 && buf.toString("latin1", n - 5, n) === "0\r\n\r\n") {
          up.onRead = undefined;
          idle.push(up);
        }
      };
      up.socket.write(`POST ${path} HTTP/1.1\r\nhost: ${upstream.host}\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body.toString("latin1")}`, "latin1");
    });
  };
  const server = secure ? tls.createServer({ ...secure, ALPNProtocols: ["http/1.1"] }, (c) => accept(c.setNoDelay(true))) : net.createServer({ noDelay: true }, accept);
  return server.listen(port, "127.0.0.1");
}

if (workers > 1 && cluster.isPrimary) {
  // a free port first, so that every worker listens on the same one
  const probe = net.createServer().listen(0, "127.0.0.1");
  await new Promise((r) => probe.once("listening", r));
  const port = (probe.address() as net.AddressInfo).port;
  await new Promise((r) => probe.close(r));
  let up = 0;
  for (let i = 0; i < workers; i++) {
    cluster.fork({ FLOOR_PORT: String(port) }).on("listening", () => {
      if (++up === workers) console.log(`serving floor at ${scheme}://127.0.0.1:${port}/v1`);
    });
  }
  process.on("SIGTERM", () => {
    for (const w of Object.values(cluster.workers ?? {})) w?.kill();
    process.exit(0);
  });
} else {
  const s = serve(Number(process.env.FLOOR_PORT ?? arg("--port", "0")));
  s.on("listening", () => {
    if (cluster.isPrimary) console.log(`serving floor at ${scheme}://127.0.0.1:${(s.address() as net.AddressInfo).port}/v1`);
  });
}
