/**
 * Stop strings over a streamed text. Text that could be the beginning of a stop string is held back
 * until the next chunk proves it is not; on a match, everything before the stop string is emitted
 * and the stream is over (the stop string itself is not emitted, as in the OpenAI API, unless
 * `includeStop`: vLLM's include_stop_str_in_output).
 */
export interface StopMatcher {
  push(text: string): { emit: string; stopped: boolean };
  /** End of stream: returns the held-back text (no stop string matched). */
  flush(): string;
}

export function createStopMatcher(stops: string[], opts: { includeStop?: boolean } = {}): StopMatcher {
  const list = stops.filter((s) => s.length > 0);
  let held = "";
  let stopped = false;
  return {
    push(text) {
      if (stopped) return { emit: "", stopped: true };
      if (list.length === 0) return { emit: text, stopped: false };
      held += text;
      let first = -1;
      let len = 0; // of the stop string found at `first` (the longest there)
      for (const s of list) {
        const i = held.indexOf(s);
        if (i >= 0 && (first < 0 || i < first || (i === first && s.length > len))) [first, len] = [i, s.length];
      }
      if (first >= 0) {
        stopped = true;
        const emit = held.slice(0, first + (opts.includeStop ? len : 0));
        held = "";
        return { emit, stopped: true };
      }
      // Hold back the longest suffix of `held` that is a prefix of some stop string.
      let keep = 0;
      for (const s of list) {
        for (let k = Math.min(s.length - 1, held.length); k > keep; k--) {
          if (held.endsWith(s.slice(0, k))) {
            keep = k;
            break;
          }
        }
      }
      const emit = held.slice(0, held.length - keep);
      held = held.slice(held.length - keep);
      return { emit, stopped: false };
    },
    flush() {
      const rest = stopped ? "" : held;
      held = "";
      return rest;
    },
  };
}
