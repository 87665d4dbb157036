/*
 * The native relay's scan per read, without N-API or sockets: relay-native.c's process() on vLLM
 * chat token reads (three events per read, as a loaded upstream's reads carry), with and without
 * the role check, and on an R1 stream's first reasoning read, where the relay learns the stream's
 * template (learn()) and rewrites the events to both reasoning names. Prints one JSON line per case.
 *
 * Build and run on the development machine (Node's headers beside its binary; the N-API symbols
 * the relay's other functions call are left unresolved, since none of them runs here):
 *   cc -O2 -I "$(dirname "$(command -v node)")/../include/node" -o /tmp/relay-scan bench/relay-scan.c \
 *     -Wl,--unresolved-symbols=ignore-all -Wl,-z,lazy -no-pie && /tmp/relay-scan
 */
#include "../src/engine/serve/relay-native.c"
#include <stdio.h>
#include <time.h>

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}

/* `n` copies of the event `ev`, each framed as one chunk, into buf; its length. */
static size_t chunks(char *buf, const char *ev, int n) {
  size_t len = strlen(ev), at = 0;
  for (int i = 0; i < n; i++) at += (size_t)sprintf(buf + at, "%zx\r\n%s\r\n", len, ev);
  return at;
}

static void run(const char *name, const char *read, size_t len, int flags, const char *fields, int events) {
  static char out[3 * READ_BYTES];
  const int n = 1000000;
  long tokens = 0;
  double t0 = now_ns();
  for (int i = 0; i < n; i++) {
    rules_t r = {.flags = flags};
    if (fields != NULL) { /* the default: both names, each stream learning its own template */
      r.n_fields = 2;
      r.fields[0] = "reasoning_content", r.field_lens[0] = 17;
      r.fields[1] = "reasoning", r.field_lens[1] = 9;
    }
    outcome_t o;
    if (!process(read, len, &r, flags & F_ROLE_CHECK, out, sizeof(out), &o) || o.taken != len) {
      fprintf(stderr, "relay-scan: %s: the relay did not take the read\n", name);
      exit(1);
    }
    tokens += o.v.plain + o.v.templated;
    free_learnt(&r);
  }
  double ns = (now_ns() - t0) / n;
  printf("{\"case\":\"%s\",\"bytes\":%zu,\"events\":%d,\"ns_per_read\":%.1f,\"ns_per_event\":%.1f,\"tokens_per_read\":%.1f}\n", name, len, events, ns, ns / events, (double)tokens / n);
}

int main(void) {
  static char read[8192];
  const char *token =
      "data: {\"id\":\"chatcmpl-0123456789abcdef0123456789abcdef\",\"object\":\"chat.completion.chunk\",\"created\":1732312345,"
      "\"model\":\"deepseek-ai/DeepSeek-R1-Distill-Qwen-7B\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" tok\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n";
  const char *reasoning =
      "data: {\"id\":\"chatcmpl-0123456789abcdef0123456789abcdef\",\"object\":\"chat.completion.chunk\",\"created\":1732312345,"
      "\"model\":\"deepseek-ai/DeepSeek-R1-Distill-Qwen-7B\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning\":\" Okay\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n";
  size_t len = chunks(read, token, 3);
  run("content tokens", read, len, F_REASONING, NULL, 3);
  run("content tokens, role check", read, len, F_REASONING | F_ROLE_CHECK, NULL, 3);
  len = chunks(read, reasoning, 3);
  run("first reasoning read: template learnt, 3 events renamed to both names", read, len, F_REASONING, "both", 3);
  return 0;
}
