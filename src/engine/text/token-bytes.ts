/**
 * Token id → the exact bytes the token stands for, read from tokenizer.json, for engines that check
 * tokens against a byte-level grammar (constrained decoding: response_format json_object). Decoding
 * one token at a time through the tokenizer cannot give this: a token holding half of a UTF-8
 * character decodes to U+FFFD. Byte-level BPE (GPT-2's scheme, used by the whole R1 family: Qwen2
 * and Llama 3 tokenizers) spells every byte as one printable character, so the vocabulary's strings
 * map back to bytes exactly.
 */

/** Token i is bytes[offsets[i], offsets[i + 1]); an empty token is never part of constrained text. */
export interface TokenByteTable {
  offsets: Uint32Array;
  bytes: Uint8Array;
}

/** GPT-2's bytes_to_unicode, inverted: the character that spells each byte → the byte. */
function byteOfChar(): Map<number, number> {
  const m = new Map<number, number>();
  let next = 256;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
    m.set(printable ? b : next++, b);
  }
  return m;
}

type Json = Record<string, unknown>;

const isByteLevel = (d: unknown): boolean => {
  const x = d as Json | null | undefined;
  if (!x || typeof x !== "object") return false;
  if (x.type === "ByteLevel") return true;
  return x.type === "Sequence" && Array.isArray(x.decoders) && (x.decoders as unknown[]).some(isByteLevel);
};

/**
 * The table for a byte-level BPE tokenizer.json; undefined for any other kind (its pieces do not
 * spell bytes). Added tokens (BOS/EOS, `<think>`, tool and FIM markers) are empty: they are control
 * tokens, never text inside a constrained answer.
 */
export function tokenByteTable(tokenizer: Json): TokenByteTable | undefined {
  const model = tokenizer.model as Json | undefined;
  if (model?.type !== "BPE" || !isByteLevel(tokenizer.decoder) || typeof model.vocab !== "object" || model.vocab === null) return undefined;
  const vocab = model.vocab as Record<string, number>;
  const added = new Set(((tokenizer.added_tokens as { id: number }[] | undefined) ?? []).map((t) => t.id));
  const byChar = byteOfChar();
  let size = 0;
  for (const id of Object.values(vocab)) size = Math.max(size, id + 1);
  for (const id of added) size = Math.max(size, id + 1);
  const pieces = new Array<Uint8Array | undefined>(size);
  let total = 0;
  for (const [piece, id] of Object.entries(vocab)) {
    if (added.has(id)) continue;
    const out = new Uint8Array(piece.length);
    let n = 0;
    for (const ch of piece) {
      const b = byChar.get(ch.codePointAt(0)!);
      if (b === undefined) {
        n = -1; // not a byte-level spelling: leave the token unusable rather than guess its bytes
        break;
      }
      out[n++] = b;
    }
    if (n > 0) (pieces[id] = out.subarray(0, n)), (total += n);
  }
  const offsets = new Uint32Array(size + 1);
  const bytes = new Uint8Array(total);
  for (let id = 0, at = 0; id < size; id++) {
    const p = pieces[id];
    if (p) bytes.set(p, at), (at += p.length);
    offsets[id + 1] = at;
  }
  return { offsets, bytes };
}
