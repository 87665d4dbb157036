/**
 * Parsers for numeric flags, shared by every subcommand so sizes and counts read the same
 * everywhere and a bad value is one usage error (exit 2) naming the flag.
 *
 * Sizes follow huggingface_hub's `max_shard_size` spelling: "5GB" is 5·10⁹ bytes (decimal, like the
 * Hub), "5GiB" is 5·2³⁰; a bare unit letter ("64M", as curl and dd write it) is binary; a bare number
 * is bytes.
 */
import { usageError } from "../engine/errors.js";

const UNITS: Record<string, number> = {
  "": 1,
  B: 1,
  KB: 1e3,
  MB: 1e6,
  GB: 1e9,
  TB: 1e12,
  K: 2 ** 10,
  M: 2 ** 20,
  G: 2 ** 30,
  T: 2 ** 40,
  KIB: 2 ** 10,
  MIB: 2 ** 20,
  GIB: 2 ** 30,
  TIB: 2 ** 40,
};

export function parseByteSize(text: string, flag = "--max-shard-size"): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = m ? UNITS[m[2].toUpperCase()] : undefined;
  if (!m || unit === undefined) {
    throw usageError(`${flag}: cannot read "${text}" as a size`, "use a number with a unit, e.g. 5GB, 500MB or 2GiB");
  }
  const n = Math.floor(Number(m[1]) * unit);
  if (!(n > 0) || !Number.isSafeInteger(n)) throw usageError(`${flag}: "${text}" must be a positive size`, "e.g. 5GB");
  return n;
}

export function parseIntFlag(text: string, flag: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const n = Number(text);
  if (text.trim() === "" || !Number.isInteger(n) || n < min || n > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `≥ ${min}` : `from ${min} to ${max}`;
    throw usageError(`${flag} ${text}: expected an integer ${range}`);
  }
  return n;
}

/** vLLM's spelling of token counts: k, m, g are powers of 1000 (decimals allowed), K, M, G powers of 1024. */
const COUNT_UNITS: Record<string, number> = { "": 1, k: 1e3, m: 1e6, g: 1e9, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30 };

/**
 * A token count as vLLM reads `--max-model-len` and `--max-num-batched-tokens`: `32768`, `32k`
 * (32,000), `32K` (32,768), `25.6k`. The result must be a whole number ≥ 1.
 */
export function parseTokenCount(text: string, flag: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)([kmgKMG]?)\s*$/.exec(text);
  const n = m ? Number(m[1]) * COUNT_UNITS[m[2]] : NaN;
  if (!Number.isSafeInteger(n) || n < 1) throw usageError(`${flag} ${text}: expected a token count such as 32768, 32k (32,000) or 32K (32,768)`);
  return n;
}
