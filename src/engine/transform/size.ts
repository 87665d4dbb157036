/**
 * Byte sizes as huggingface_hub's `max_shard_size` spells them: "5GB" is 5·10⁹ bytes (decimal,
 * like the Hub), "5GiB" is 5·2³⁰; a bare number is bytes.
 */
import { usageError } from "../errors.js";

const UNITS: Record<string, number> = {
  "": 1,
  B: 1,
  KB: 1e3,
  MB: 1e6,
  GB: 1e9,
  TB: 1e12,
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
