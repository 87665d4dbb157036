/**
 * The loopback hub speaks the real protocol: checked with @huggingface/hub's own client functions
 * and with raw HTTP (HEAD metadata headers, 302 to the CDN, Range/206/416, X-Error-Code).
 */
import { createHash } from "node:crypto";
import { downloadFile, fileDownloadInfo, listFiles, modelInfo } from "@huggingface/hub";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bytesFile, patternFile, startHubServer, type HubServer } from "../support/hub-server.js";

const COMMIT = "f".repeat(40);
const big = patternFile("w/model.safetensors", 2_000_000, 9);
const cfg = bytesFile("config.json", '{"x":1}');
let hub: HubServer;

beforeAll(async () => {
  hub = await startHubServer({ repos: [{ id: "o/r", commit: COMMIT, files: [cfg, big] }], treePageSize: 1 });
});
afterAll(() => hub.close());

const sha256 = async (f: typeof big) => createHash("sha256").update(await f.read(0, f.size)).digest("hex");

describe("loopback hub vs @huggingface/hub", () => {
  it("modelInfo, listFiles (paginated) and fileDownloadInfo agree with the served repo", async () => {
    const info = await modelInfo({ name: "o/r", hubUrl: hub.hfEndpoint, additionalFields: ["sha"] });
    expect((info as unknown as { sha: string }).sha).toBe(COMMIT);
    const entries = [];
    for await (const e of listFiles({ repo: "o/r", recursive: true, hubUrl: hub.hfEndpoint })) entries.push(e);
    expect(entries.map((e) => `${e.type}:${e.path}`)).toEqual(["directory:w", "file:config.json", "file:w/model.safetensors"]);
    expect(entries[2].lfs?.oid).toBe(await sha256(big));
    const di = await fileDownloadInfo({ repo: "o/r", path: "w/model.safetensors", hubUrl: hub.hfEndpoint });
    expect(di?.size).toBe(2_000_000);
    expect(di?.etag).toBe(`"${await sha256(big)}"`);
    expect(await fileDownloadInfo({ repo: "o/r", path: "nope.bin", hubUrl: hub.hfEndpoint })).toBeNull();
    const blob = await downloadFile({ repo: "o/r", path: "w/model.safetensors", hubUrl: hub.hfEndpoint, xet: false });
    expect(Buffer.from(await blob!.slice(100, 200).arrayBuffer()).equals(Buffer.from(await big.read(100, 200)))).toBe(true);
  });
});

describe("raw protocol", () => {
  it("HEAD on resolve: 302 to the CDN with X-Repo-Commit, X-Linked-Etag and X-Linked-Size for LFS; ETag for small files", async () => {
    const lfs = await fetch(`${hub.hfEndpoint}/o/r/resolve/main/w/model.safetensors`, { method: "HEAD", redirect: "manual" });
    expect(lfs.status).toBe(302);
    expect(lfs.headers.get("x-repo-commit")).toBe(COMMIT);
    expect(lfs.headers.get("x-linked-etag")).toBe(`"${await sha256(big)}"`);
    expect(lfs.headers.get("x-linked-size")).toBe("2000000");
    expect(new URL(lfs.headers.get("location")!).origin).toBe(hub.cdnOrigin);
    const small = await fetch(`${hub.hfEndpoint}/o/r/resolve/main/config.json`, { method: "HEAD" });
    expect(small.status).toBe(200);
    expect(small.headers.get("etag")).toBe(`"${createHash("sha1").update('blob 7\0{"x":1}').digest("hex")}"`);
  });

  it("Range answers 206 with Content-Range, 416 past the end; errors carry X-Error-Code", async () => {
    const r = await fetch(`${hub.hfEndpoint}/o/r/resolve/${COMMIT}/w/model.safetensors`, { headers: { range: "bytes=10-19" } });
    expect(r.status).toBe(206);
    expect(r.headers.get("content-range")).toBe("bytes 10-19/2000000");
    expect(Buffer.from(await r.arrayBuffer()).equals(Buffer.from(await big.read(10, 20)))).toBe(true);
    const bad = await fetch(`${hub.hfEndpoint}/o/r/resolve/main/w/model.safetensors`, { headers: { range: "bytes=2000000-" } });
    expect(bad.status).toBe(416);
    expect(bad.headers.get("content-range")).toBe("bytes */2000000");
    const withAuth = await fetch(`${hub.hfEndpoint}/o/r/resolve/main/w/model.safetensors`, { headers: { authorization: "Bearer x" }, redirect: "follow" });
    expect(withAuth.status).toBe(401); // wrong token at the hub
    const missing = await fetch(`${hub.hfEndpoint}/o/r/resolve/main/nope`);
    expect([missing.status, missing.headers.get("x-error-code"), missing.headers.get("x-repo-commit")]).toEqual([404, "EntryNotFound", COMMIT]);
    const rev = await fetch(`${hub.hfEndpoint}/api/models/o/r/revision/v9`);
    expect([rev.status, rev.headers.get("x-error-code")]).toEqual([404, "RevisionNotFound"]);
  });

  it("ModelScope envelope, Range download and per-path byte counters", async () => {
    const list = await (await fetch(`${hub.msEndpoint}/api/v1/models/o/r/repo/files?Revision=master&Recursive=True`)).json();
    expect(list).toMatchObject({ Code: 200, Success: true });
    expect(list.Data.Files.find((f: { Path: string }) => f.Path === "config.json")).toMatchObject({ Type: "blob", Size: 7, Sha256: createHash("sha256").update('{"x":1}').digest("hex") });
    hub.resetStats();
    const r = await fetch(`${hub.msEndpoint}/api/v1/models/o/r/repo?Revision=master&FilePath=${encodeURIComponent(big.path)}`, { headers: { range: "bytes=0-999" } });
    expect(r.status).toBe(206);
    expect((await r.arrayBuffer()).byteLength).toBe(1000);
    expect(hub.stats.byPath.get(big.path)).toBe(1000);
    expect(hub.stats.rangeRequests).toBe(1);
  });
});
