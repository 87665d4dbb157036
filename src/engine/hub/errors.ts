/**
 * HTTP statuses and hub error codes → one-line DsrErrors naming the repo / revision / file, with a
 * hint. The Hub answers 401 alike for private, gated-without-token and missing repos (facts §1.5),
 * so a bare 401 says both things; X-Error-Code, when present, narrows it down.
 */
import { DsrError, ExitCode } from "../errors.js";
import type { HubSource } from "./repo-spec.js";

export interface RequestContext {
  source: HubSource;
  repoId: string;
  revision?: string;
  /** Repo-relative file path, for file downloads. */
  file?: string;
  /** The hub web page base (for "accept the licence at …" hints). */
  webBase: string;
  /** What the request was for: repo info/listing or a file's bytes. */
  kind: "repo" | "tree" | "file";
}

const hubName = (s: HubSource) => (s === "hf" ? "Hugging Face" : "ModelScope");
const tokenHint = (s: HubSource) =>
  s === "hf" ? "pass --token or set HF_TOKEN (a token with read access)" : "pass --token or set MODELSCOPE_API_TOKEN";

export function hubHttpError(status: number, headers: Headers, body: string, ctx: RequestContext): DsrError {
  const code = headers.get("x-error-code") ?? "";
  const serverMsg = headers.get("x-error-message") ?? extractMessage(body);
  const repo = `${ctx.repoId}`;
  const where = ctx.file ? `${repo}/${ctx.file}` : repo;
  const page = `${ctx.webBase}/${ctx.repoId}`;
  const details = { status, source: ctx.source, repo: ctx.repoId, revision: ctx.revision, file: ctx.file, errorCode: code || undefined, serverMessage: serverMsg || undefined };
  const mk = (c: string, message: string, hint: string) => new DsrError(c, message, { hint, details, exitCode: ExitCode.failure });

  if (code === "GatedRepo" || (status === 403 && /gated|restricted|authorized list/i.test(serverMsg))) {
    return status === 401
      ? mk("DSR_HUB_GATED", `${repo} on ${hubName(ctx.source)} is gated and this request carried no token`, `accept the licence at ${page}, then ${tokenHint(ctx.source)}`)
      : mk("DSR_HUB_GATED", `${repo} on ${hubName(ctx.source)} is gated and your token is not approved for it`, `accept the licence at ${page} (log in with the token's account), then retry`);
  }
  if (status === 401) {
    if (/invalid credentials|invalid.*token/i.test(serverMsg)) {
      return mk("DSR_HUB_BAD_TOKEN", `${hubName(ctx.source)} rejected the token for ${repo}`, `check the token (${tokenHint(ctx.source)}); an expired or mistyped token fails even for public repos`);
    }
    return mk("DSR_HUB_UNAUTHORIZED", `${repo} was not found on ${hubName(ctx.source)}, or it is private and needs a token`, `check the repo id; for a private repo ${tokenHint(ctx.source)}`);
  }
  if (status === 403) {
    return mk("DSR_HUB_FORBIDDEN", `${hubName(ctx.source)} refused access to ${where} (403)`, `check that your token may read ${repo} (${tokenHint(ctx.source)})`);
  }
  if (status === 404) {
    if (code === "RevisionNotFound" || (ctx.kind !== "file" && /revision/i.test(serverMsg))) {
      return mk("DSR_HUB_REVISION_NOT_FOUND", `revision "${ctx.revision ?? "?"}" not found in ${repo}`, `list the branches and tags on ${page}, or omit --revision`);
    }
    if (code === "EntryNotFound" || (ctx.kind === "file" && code !== "RepoNotFound")) {
      return mk("DSR_HUB_FILE_NOT_FOUND", `${ctx.file ?? "file"} not found in ${repo}${ctx.revision ? `@${ctx.revision}` : ""}`, "the file list changed on the hub; re-run to refresh the listing");
    }
    return mk("DSR_HUB_REPO_NOT_FOUND", `${repo} was not found on ${hubName(ctx.source)}`, `check the spelling of the repo id (${page})${ctx.source === "hf" ? "; try --source modelscope if it lives there" : ""}`);
  }
  if (status === 416) {
    return mk("DSR_HUB_RANGE", `${where}: the server rejected a byte range (416)`, "the file changed size on the hub; re-run to refresh the listing");
  }
  if (status === 429) {
    return mk("DSR_HUB_RATE_LIMITED", `${hubName(ctx.source)} kept rate-limiting requests for ${where} (429)`, "wait a few minutes, use a token (higher limits), or lower --connections");
  }
  return mk("DSR_HUB_HTTP", `${hubName(ctx.source)} answered ${status} for ${where}${serverMsg ? `: ${oneLine(serverMsg)}` : ""}`, status >= 500 ? "the hub is having trouble; retry later" : "re-run with --verbose for details");
}

export function networkError(ctx: RequestContext, cause: unknown, attempts: number): DsrError {
  const why = describeCause(cause);
  const where = ctx.file ? `${ctx.repoId}/${ctx.file}` : ctx.repoId;
  return new DsrError("DSR_HUB_NETWORK", `network error talking to ${hubName(ctx.source)} for ${where} after ${attempts} attempts: ${why}`, {
    hint: "check the connection (or HF_ENDPOINT / MODELSCOPE_DOMAIN); re-running resumes where it stopped",
    cause,
    details: { source: ctx.source, repo: ctx.repoId, file: ctx.file },
  });
}

export function describeCause(e: unknown): string {
  if (!(e instanceof Error)) return String(e);
  const c = (e as { cause?: unknown }).cause;
  const code = (c as { code?: string } | undefined)?.code ?? (e as { code?: string }).code;
  const msg = c instanceof Error ? c.message : e.message;
  return oneLine(code && !msg.includes(code) ? `${code} ${msg}` : msg);
}

function extractMessage(body: string): string {
  try {
    const j = JSON.parse(body) as { error?: unknown; Message?: unknown; message?: unknown };
    const m = j.error ?? j.Message ?? j.message;
    return typeof m === "string" ? m : "";
  } catch {
    return body.length < 200 ? body.trim() : "";
  }
}

const oneLine = (s: string) => s.replace(/\s+/g, " ").trim().slice(0, 200);
