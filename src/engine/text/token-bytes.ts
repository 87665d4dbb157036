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

/** GPT-2's bytes_to_unicode, inverted: char code that spells a byte → the byte (-1: none). All such codes are < 0x144. */
function byteOfChar(): Int16Array {
  const m = new Int16Array(0x144).fill(-1);
  let next = 256;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
    m[printable ? b : next++] = b;
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
  const byteOf = byteOfChar();
  // Plain loops over char codes: this runs at engine open over ~152k pieces (65 ms; a Map and for…of took 0.4 s).
  const pieceOf: string[] = [];
  let size = 0;
  for (const piece in vocab) {
    const id = vocab[piece]!;
    size = Math.max(size, id + 1);
    if (added.has(id)) continue;
    let ok = piece.length > 0;
    for (let i = 0; ok && i < piece.length; i++) {
      const c = piece.charCodeAt(i);
      ok = c < byteOf.length && byteOf[c]! >= 0; // else not a byte-level spelling: unusable rather than guessed
    }
    if (ok) pieceOf[id] = piece;
  }
  for (const id of added) size = Math.max(size, id + 1);
  const offsets = new Uint32Array(size + 1);
  for (let id = 0; id < size; id++) offsets[id + 1] = offsets[id]! + (pieceOf[id]?.length ?? 0);
  const bytes = new Uint8Array(offsets[size]!);
  for (let id = 0; id < size; id++) {
    const piece = pieceOf[id];
    if (piece) for (let i = 0, at = offsets[id]!; i < piece.length; i++) bytes[at + i] = byteOf[piece.charCodeAt(i)]!;
  }
  return { offsets, bytes };
}
