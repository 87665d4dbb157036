/**
 * Incremental detokenization. Byte-level BPE splits one UTF-8 character across tokens, so decoding
 * each token alone prints U+FFFD. We keep a small window of ids: text is emitted only once the window
 * decodes to something that does not end in an incomplete character (the approach TGI and vLLM use).
 */
export interface IncrementalDecoder {
  push(ids: number[]): string;
  flush(): string;
}

export function createIncrementalDecoder(decode: (ids: number[]) => string, skip: ReadonlySet<number>): IncrementalDecoder {
  const ids: number[] = [];
  // ids[prefix, read) have been emitted; ids[prefix, …) is re-decoded to give context (leading spaces, merges).
  let prefix = 0;
  let read = 0;
  const step = (final: boolean): string => {
    if (read >= ids.length) return "";
    const before = decode(ids.slice(prefix, read));
    const after = decode(ids.slice(prefix));
    if (!final && after.endsWith("\uFFFD")) return "";
    if (after.length <= before.length || !after.startsWith(before)) {
      // Should not happen with byte-level BPE; fall back to emitting the decoded tail.
      const tail = decode(ids.slice(read));
      prefix = read;
      read = ids.length;
      return tail;
    }
    prefix = read;
    read = ids.length;
    return after.slice(before.length);
  };
  return {
    push(newIds) {
      for (const id of newIds) if (!skip.has(id)) ids.push(id);
      return step(false);
    },
    flush() {
      return step(true);
    },
  };
}
