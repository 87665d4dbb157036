/**
 * Environment → HubOptions, for the CLI layer (the engine never reads process.env itself).
 * HF: HF_ENDPOINT; token from HF_TOKEN, then HUGGING_FACE_HUB_TOKEN, then the file HF_TOKEN_PATH or
 * $HF_HOME/token (huggingface_hub's order, facts §1.1). ModelScope: MODELSCOPE_DOMAIN (a bare domain,
 * https implied) or DSR_MODELSCOPE_ENDPOINT (a full URL, e.g. a mirror or http://127.0.0.1:port);
 * token from MODELSCOPE_API_TOKEN.
 */
import { readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { HF_DEFAULT_ENDPOINT } from "./hf.js";
import { MS_DEFAULT_ENDPOINT } from "./modelscope.js";
import type { HubOptions } from "./types.js";

export function hfHome(env: NodeJS.ProcessEnv): string {
  return env.HF_HOME || join(env.XDG_CACHE_HOME || join(homedir(), ".cache"), "huggingface");
}

function readTokenFile(path: string): string | undefined {
  try {
    const t = readFileSync(path, "utf8").trim();
    return t || undefined;
  } catch {
    return undefined;
  }
}

export function hubOptionsFromEnv(env: NodeJS.ProcessEnv, overrides: Partial<HubOptions> = {}): HubOptions {
  const hfEndpoint = (env.HF_ENDPOINT || HF_DEFAULT_ENDPOINT).replace(/\/+$/, "");
  const domain = env.MODELSCOPE_DOMAIN?.trim();
  const msEndpoint = (env.DSR_MODELSCOPE_ENDPOINT || (domain ? (/^https?:\/\//.test(domain) ? domain : `https://${domain}`) : MS_DEFAULT_ENDPOINT)).replace(/\/+$/, "");
  const hfToken =
    env.HF_TOKEN?.trim() || env.HUGGING_FACE_HUB_TOKEN?.trim() || readTokenFile(env.HF_TOKEN_PATH || join(hfHome(env), "token"));
  const msToken = env.MODELSCOPE_API_TOKEN?.trim() || undefined;
  const base: HubOptions = { hfEndpoint, msEndpoint, hfToken, msToken };
  for (const [k, v] of Object.entries(overrides)) if (v !== undefined) (base as Record<string, unknown>)[k] = v;
  return base;
}

/** HF cache root: HF_HUB_CACHE, then the legacy HUGGINGFACE_HUB_CACHE, then $HF_HOME/hub (facts §1.6). */
export function hfHubCache(env: NodeJS.ProcessEnv): string {
  return env.HF_HUB_CACHE || env.HUGGINGFACE_HUB_CACHE || join(hfHome(env), "hub");
}

/** ModelScope cache root: MODELSCOPE_CACHE, else ~/.cache/modelscope/hub (facts §2). */
export function msCache(env: NodeJS.ProcessEnv): string {
  return env.MODELSCOPE_CACHE || join(homedir(), ".cache", "modelscope", "hub");
}
