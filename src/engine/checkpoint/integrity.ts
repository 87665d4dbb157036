/**
 * Cross-file integrity: index ↔ shard headers, total_size, DeepSeek FP8 block scales, and the
 * tensors the architecture implies (missing, wrong shape, unexpected). Per-file header problems
 * (offsets, truncation, byte sizes) were already found while reading headers. Findings of one kind
 * are capped so a systematic problem gives a readable report, with a count of the rest.
 */
import type { ArchDef } from "../arch/types.js";
import { detectQuantization } from "./quant.js";
import type { Checkpoint, Finding } from "./types.js";

const CAP_PER_CODE = 25;

class Findings {
  private counts = new Map<string, number>();
  private over = new Map<string, Finding>();
  constructor(private out: Finding[]) {}
  add(f: Finding): void {
    const n = (this.counts.get(f.code) ?? 0) + 1;
    this.counts.set(f.code, n);
    if (n <= CAP_PER_CODE) this.out.push(f);
    else this.over.set(f.code, f);
  }
  flush(): void {
    for (const [code, f] of this.over) {
      const more = this.counts.get(code)! - CAP_PER_CODE;
      this.out.push({ severity: f.severity, code, message: `…and ${more} more ${code} finding${more === 1 ? "" : "s"} (last: ${f.message})` });
    }
  }
}

const shape = (s: readonly number[]) => `[${s.join(", ")}]`;

export function checkIntegrity(ck: Checkpoint, arch: ArchDef): void {
  const fs = new Findings(ck.findings);
  const status = new Map(ck.shards.map((s) => [s.file, s.status]));
  const allRead = ck.shards.every((s) => s.status === "ok");

  if (ck.index) {
    const idx = ck.index;
    let matched = 0;
    for (const [tensor, file] of idx.weightMap) {
      if (status.get(file) !== "ok") continue; // the missing/unreadable shard is reported once
      const t = ck.tensors.get(tensor);
      if (t && t.file === file) matched++;
      if (!t) {
        fs.add({ severity: "error", code: "DSR_INDEX_TENSOR_ABSENT", file, tensor, message: `${idx.file} maps "${tensor}" to ${file}, but no shard holds it` });
      } else if (t.file !== file) {
        fs.add({ severity: "error", code: "DSR_INDEX_WRONG_SHARD", file, tensor, message: `${idx.file} maps "${tensor}" to ${file}, but it is in ${t.file}` });
      }
    }
    // Names are unique on both sides: if every tensor read matched an index entry, none is unindexed.
    for (const [name, t] of matched === ck.tensors.size ? [] : ck.tensors) {
      if (!idx.weightMap.has(name)) {
        fs.add({ severity: "error", code: "DSR_TENSOR_NOT_IN_INDEX", file: t.file, tensor: name, message: `${t.file}: tensor "${name}" is not in ${idx.file}; loaders will not find it` });
      }
    }
    if (idx.totalSize !== undefined && allRead) {
      const sum = ck.shards.reduce((a, s) => a + s.dataBytes, 0);
      if (sum !== idx.totalSize) {
        fs.add({
          severity: "error",
          code: "DSR_INDEX_TOTAL_SIZE",
          file: idx.file,
          message: `${idx.file}: metadata.total_size is ${idx.totalSize} but the shards hold ${sum} bytes of tensor data`,
        });
      }
    }
  }

  const quant = detectQuantization(ck);
  if (quant.configSays && quant.configSays !== quant.method) {
    fs.add({
      severity: "error",
      code: "DSR_QUANT_CONFIG_MISMATCH",
      file: "config.json",
      message: `config.json declares ${quant.configSays} quantization but the weights are ${quant.method === "none" ? "unquantised" : quant.method}${quant.configSays.startsWith("fp8") ? "; remove quantization_config (fp8_cast_bf16 leaves it behind)" : ""}`,
    });
  }
  checkFp8Scales(ck, quant.blockSize ?? [128, 128], quant.method === "fp8-block", fs, status);
  if (ck.config && arch.id !== "generic") checkExpected(ck, arch, quant.method, fs, status);
  fs.flush();
}

type Status = Map<string, string>;

function checkFp8Scales(ck: Checkpoint, [bo, bi]: [number, number], blockMode: boolean, fs: Findings, status: Status): void {
  for (const [name, t] of ck.tensors) {
    if (name.endsWith(".weight_scale_inv")) {
      const w = name.slice(0, -"_scale_inv".length);
      const wFile = ck.index?.weightMap.get(w);
      const wUnread = wFile !== undefined && status.get(wFile) !== "ok";
      if (!ck.tensors.has(w) && !wUnread) fs.add({ severity: "warning", code: "DSR_FP8_SCALE_ORPHAN", file: t.file, tensor: name, message: `${t.file}: scale "${name}" has no weight "${w}"` });
      continue;
    }
    if (!blockMode || (t.dtype !== "F8_E4M3" && t.dtype !== "F8_E5M2") || !name.endsWith(".weight") || t.shape.length !== 2) continue;
    const sName = name + "_scale_inv";
    const s = ck.tensors.get(sName);
    const want = [Math.ceil(t.shape[0] / bo), Math.ceil(t.shape[1] / bi)];
    if (!s) {
      // The scale may sit in a shard that could not be read: then the shard finding covers it.
      const mapped = ck.index?.weightMap.get(sName);
      if (mapped && status.get(mapped) !== "ok") continue;
      fs.add({ severity: "error", code: "DSR_FP8_SCALE_MISSING", file: t.file, tensor: name, message: `${t.file}: FP8 weight "${name}" ${shape(t.shape)} has no "${sName}" (expected ${shape(want)} F32)` });
    } else if (s.shape.length !== 2 || s.shape[0] !== want[0] || s.shape[1] !== want[1]) {
      fs.add({
        severity: "error",
        code: "DSR_FP8_SCALE_SHAPE",
        file: s.file,
        tensor: sName,
        message: `${s.file}: "${sName}" is ${shape(s.shape)} but weight ${shape(t.shape)} in ${bo}×${bi} blocks needs ${shape(want)}`,
      });
    } else if (s.dtype !== "F32") {
      fs.add({ severity: "warning", code: "DSR_FP8_SCALE_DTYPE", file: s.file, tensor: sName, message: `${s.file}: "${sName}" is ${s.dtype}, DeepSeek FP8 scales are F32` });
    }
  }
}

function checkExpected(ck: Checkpoint, arch: ArchDef, method: string, fs: Findings, status: Status): void {
  const cfg = ck.config!;
  const expected = arch.expectedTensors(cfg);
  let found = 0;
  const readable = (n: string) => {
    const f = ck.index?.weightMap.get(n);
    return !f || status.get(f) === "ok";
  };
  const packed = method === "awq" || method === "gptq" || method === "compressed-tensors";
  const fp8Weights = method === "fp8-block" || method === "fp8";
  for (const e of expected) {
    const t = ck.tensors.get(e.name);
    if (t) found++;
    // Scale tensors are checked against their weights above, with a better message.
    if (e.role === "quant_aux") continue;
    if (!t && packed && e.role === "linear") {
      const mod = e.name.slice(0, -".weight".length);
      if (ck.tensors.has(mod + ".qweight") || ck.tensors.has(mod + ".weight_packed")) continue;
    }
    if (!t) {
      if (e.role === "lm_head" && cfg.tieWordEmbeddings) continue;
      if (!allShardsListed(ck) || !readable(e.name)) continue;
      fs.add({ severity: "error", code: "DSR_TENSOR_MISSING", tensor: e.name, message: `tensor "${e.name}" ${shape(e.shape)} that ${arch.id} config.json implies is in no shard` });
      continue;
    }
    const sameShape = t.shape.length === e.shape.length && t.shape.every((d, i) => d === e.shape[i]);
    if (!sameShape) {
      fs.add({ severity: "error", code: "DSR_TENSOR_SHAPE", file: t.file, tensor: e.name, message: `${t.file}: tensor "${e.name}" is ${shape(t.shape)}, config.json implies ${shape(e.shape)}` });
    }
  }
  // Every actual tensor was expected: nothing unexpected to look for (the common, 92k-tensor case).
  if (found === ck.tensors.size) return;
  const names = new Set(expected.map((e) => e.name));
  for (const [name, t] of ck.tensors) {
    if (names.has(name)) continue;
    if (packed || fp8Weights || arch.role(name) === "quant_aux") {
      // Quantised layouts add side tensors and rename weights; only flag what is clearly foreign.
      if (/\.(qweight|qzeros|scales|g_idx|weight_packed|weight_scale|weight_zero_point|weight_shape|weight_g_idx|input_scale|weight_scale_inv|bias)$/.test(name)) continue;
    }
    fs.add({ severity: "warning", code: "DSR_TENSOR_UNEXPECTED", file: t.file, tensor: name, message: `${t.file}: tensor "${name}" is not part of the ${arch.id} layout config.json describes` });
  }
}

/** Without an index we cannot tell "missing" from "in a shard we could not read". */
function allShardsListed(ck: Checkpoint): boolean {
  return ck.index !== undefined || ck.shards.every((s) => s.status === "ok");
}
