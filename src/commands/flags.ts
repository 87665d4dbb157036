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
