/*
 * The gateway's native relay: moves an upstream's SSE answer to the client socket while its reads
 * are plain, with no JavaScript per read (relay-native.ts loads it; relay-handoff.ts hands streams
 * to it).
 *
 * Why C: at 64-token streams the gateway's CPU per stream was 40-60% above nginx's, and profiles put
 * the difference in what every read costs in JS (the read callback, the chunk decoder, the relay's
 * scan, the socket write through a Writable). Here a read costs a read(2), a byte scan and a
 * send(2). No npm library does this (uWebSockets.js is not published to the registry, and it
 * replaces the whole server).
 *
 * A "plain" chunk is one the JS relay would forward unchanged (hex size, CRLF, data, CRLF; no
 * extensions, not the zero-size one), holding whole one-line `data: {...}` events that name no key
 * the relay acts on (usage, error, reasoning when it renames), or reasoning events that fit the
 * stream's templates (rewritten as JS rewrites them; given by JS, or learnt here from the first event
 * of each kind, learn()), or whose one reasoning key is null (renamed in place). Events the relay takes besides: a token with
 * a finish_reason string (noted for JS), `data: [DONE]`, and the usage-only chunk (`"choices":[]`:
 * its two counts noted, and dropped when the gateway asked for it rather than the client). When JS
 * allows it, the zero-size chunk that ends the body goes too, and the stream comes back ended. A
 * read's chunks are forwarded; a chunk the read ends inside waits for the next read (the sender's
 * write can be seen half done). At the first chunk the relay cannot take (an error, an event JSON
 * must rewrite) the chunks before it go, and the rest is handed back to JS unforwarded, with the
 * counts of what was relayed; so is an upstream that closes, a client write that fails, and one
 * that would block (with the unsent bytes).
 *
 * Sockets. The upstream: each upstream connection gets a dup of its fd and a uv_poll on that dup,
 * made the first time one of its answers is handed over and kept for the connection's life (JS
 * closes it when the socket closes). A hand-off stops libuv's reading of the socket (nothing may be
 * queued to write) and starts the poll; giving back stops it. That is an epoll add and remove per
 * hand-off, and libuv drops and re-adds the original fd: four epoll_ctl calls per stream, and no
 * extra syscall per read (a private epoll set nested in libuv's cost an epoll_wait per wakeup, a
 * uv_poll made per hand-off six syscalls to set up and tear down). The client: Node keeps reading
 * it, so a hang-up or pipelined bytes are seen as on any other stream; the relay writes through its
 * own dup of the fd, made per hand-off, so a socket Node closes meanwhile can never be confused
 * with a new one given the same number, and JS writes nothing while the relay holds it.
 */
#define _GNU_SOURCE /* memmem */
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define READ_BYTES (64 * 1024)

enum reason {
  R_HELD = 1,      /* a read that is not plain: JS takes it (the held bytes) */
  R_UP_CLOSED = 2, /* the upstream closed or failed: JS reads it again and sees why */
  R_CLIENT = 3,    /* a write to the client failed (it went away) */
  R_BLOCKED = 4,   /* the client's socket buffer is full: JS writes the unsent bytes and waits */
  R_END = 5,       /* the body ended and its end was sent (or is in the unsent bytes): JS only closes the books */
};

/* start()'s flags, set by relay-handoff.ts */
#define F_REASONING 1  /* the gateway renames reasoning: reasoning events go only when a template fits */
#define F_ROLE_CHECK 2 /* no token counted yet: a read's first event that only opens the role is not one */
#define F_DROP_USAGE 4 /* the usage-only chunk was the gateway's request, not the client's: dropped */
#define F_MAY_END 8    /* the relay may send the body's end (JS has nothing to do before the client sees it) */

static int hex(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static int starts(const char *p, const char *end, const char *lit, size_t n) {
  return (size_t)(end - p) >= n && memcmp(p, lit, n) == 0;
}

/* What keys() finds in an event. */
#define K_CR 1        /* a CR: JS's CRLF path */
#define K_USAGE 2     /* `"usage"` not followed by `:null` */
#define K_ERROR 4     /* `"error"` */
#define K_REASONING 8 /* `"reasoning` (counted only when renaming) */
#define K_FINISH 16   /* `"finish_reason":"`: its string starts at *finish */

/* The key at `n` (just after a quote in [.., end)), added to the K_ bits `k` (see keys()). */
static int key_at(const char *n, const char *end, int reasoning, const char **finish, int k) {
  switch (*n) {
    case 'u':
      if (starts(n, end, "usage\"", 6) && !starts(n + 6, end, ":null", 5)) k |= K_USAGE;
      break;
    case 'e':
      if (starts(n, end, "error\"", 6)) k |= K_ERROR;
      break;
    case 'r':
      if (reasoning && starts(n, end, "reasoning", 9)) k |= K_REASONING;
      break;
    case 'f':
      if (starts(n, end, "finish_reason\":\"", 16)) {
        k |= K_FINISH;
        *finish = n + 16;
      }
      break;
  }
  return k;
}

/*
 * The keys the JS relay acts on in the event [p, end) (sse-relay.ts keyAt), as K_ bits; `*finish` is
 * where the last finish_reason string starts. It looks at every quote followed by a key's first
 * letter, so it never misses a key the relay's regex would see. Sixteen bytes at a time where SSE2 is
 * there (every x86-64): an event is a few hundred bytes with a quote every few, and the byte loop
 * cost ~330 ns per vLLM token event, the largest user-space cost per read in a profile of the relay
 * (perf, session 15); a memchr call per quote cost more than the byte loop.
 */
static int keys(const char *p, const char *end, int reasoning, const char **finish) {
  int k = 0;
  const char *q = p;
#ifdef __SSE2__
  const __m128i quote = _mm_set1_epi8('"'), cr = _mm_set1_epi8('\r'), u = _mm_set1_epi8('u'), e = _mm_set1_epi8('e'), r = _mm_set1_epi8('r'),
                f = _mm_set1_epi8('f');
  for (; end - q > 16; q += 16) { /* the load at q + 1 stays inside [p, end) */
    __m128i v = _mm_loadu_si128((const __m128i *)q), next = _mm_loadu_si128((const __m128i *)(q + 1));
    if (_mm_movemask_epi8(_mm_cmpeq_epi8(v, cr))) return K_CR;
    __m128i first = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(next, u), _mm_cmpeq_epi8(next, e)), _mm_or_si128(_mm_cmpeq_epi8(next, r), _mm_cmpeq_epi8(next, f)));
    for (unsigned m = (unsigned)_mm_movemask_epi8(_mm_and_si128(_mm_cmpeq_epi8(v, quote), first)); m != 0; m &= m - 1)
      k = key_at(q + __builtin_ctz(m) + 1, end, reasoning, finish, k);
  }
#endif
  for (; q < end; q++) {
    if (*q == '\r') return K_CR;
    if (*q == '"' && q + 1 < end) k = key_at(q + 1, end, reasoning, finish, k);
  }
  return k;
}

static const char *find(const char *p, const char *end, const char *lit, size_t n) {
  return end - p >= (long)n ? memmem(p, (size_t)(end - p), lit, n) : NULL;
}

/*
 * What the JS relay's /"<key>":\s*(\d+)/ finds in [p, end): the first such count, -1 when there is
 * none, -2 when JS's answer is not certain here (more digits than a double holds exactly, or a byte
 * of a non-ASCII character where \s might match).
 */
static double count_of(const char *p, const char *end, const char *key, size_t n) {
  for (const char *q = find(p, end, key, n); q != NULL; q = find(q + 1, end, key, n)) {
    const char *d = q + n;
    while (d < end && (*d == ' ' || *d == '\t' || *d == '\n' || *d == '\v' || *d == '\f' || *d == '\r')) d++;
    if (d < end && (unsigned char)*d >= 0x80) return -2;
    double v = 0;
    int digits = 0;
    for (; d < end && *d >= '0' && *d <= '9'; d++, digits++) v = v * 10 + (*d - '0');
    if (digits > 15) return -2;
    if (digits > 0) return v;
  }
  return -1;
}

/*
 * A reasoning template, as the JS relay learnt it (reasoning-template.ts, encoded by its encode()):
 * an event is one of it when it is `head`, a JSON string body, then `tail`; it becomes the pieces
 * with a copy of the body between each two (the last piece ends with the blank line), or stays as
 * it is (`unchanged`: the configured name is already the event's).
 */
typedef struct tmpl {
  const char *head, *tail;
  size_t head_len, tail_len;
  int unchanged;
  int n_pieces;
  const char *pieces[4];
  size_t piece_lens[4];
} tmpl_t;

#define MAX_TEMPLATES 2

/* JSON's simple escapes besides \u: " \ / b f n r t. */
static int simple_escape(unsigned char c) {
  return c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' || c == 't';
}

/* True when [p, end) is the body of a JSON string (reasoning-template.ts isStringBody). */
static int string_body(const char *p, const char *end) {
  for (; p < end; p++) {
    unsigned char c = (unsigned char)*p;
    if (c == '\\') {
      if (++p >= end) return 0;
      if (*p == 'u') {
        if (p + 4 >= end) return 0;
        for (int h = 1; h <= 4; h++)
          if (hex(p[h]) < 0) return 0;
        p += 4;
      } else if (!simple_escape((unsigned char)*p)) return 0;
    } else if (c == '"' || c < 0x20) return 0;
  }
  return 1;
}

static int fits(const tmpl_t *t, const char *p, const char *end) {
  size_t len = (size_t)(end - p);
  return len >= t->head_len + t->tail_len && memcmp(p, t->head, t->head_len) == 0 && memcmp(end - t->tail_len, t->tail, t->tail_len) == 0 &&
         string_body(p + t->head_len, end - t->tail_len);
}

/* The size event [p, end) takes in the output (with its blank line) under template t. */
static size_t rewritten_size(const tmpl_t *t, const char *p, const char *end) {
  if (t->unchanged) return (size_t)(end - p) + 2;
  size_t body = (size_t)(end - p) - t->head_len - t->tail_len, size = body * (size_t)(t->n_pieces - 1);
  for (int i = 0; i < t->n_pieces; i++) size += t->piece_lens[i];
  return size;
}

static char *put_rewritten(char *o, const tmpl_t *t, const char *p, const char *end) {
  if (t->unchanged) {
    memcpy(o, p, (size_t)(end - p) + 2);
    return o + (end - p) + 2;
  }
  const char *body = p + t->head_len;
  size_t body_len = (size_t)(end - p) - t->head_len - t->tail_len;
  for (int i = 0; i < t->n_pieces; i++) {
    if (i > 0) {
      memcpy(o, body, body_len);
      o += body_len;
    }
    memcpy(o, t->pieces[i], t->piece_lens[i]);
    o += t->piece_lens[i];
  }
  return o;
}

#define MAX_FIELDS 2

/*
 * What the relay sets for a read (flags of start()), with the stream's reasoning templates, and the
 * configured reasoning names when the relay may learn a template itself (learn()).
 */
typedef struct rules {
  int flags;
  int n;
  tmpl_t t[MAX_TEMPLATES];
  int n_fields;
  const char *fields[MAX_FIELDS];
  size_t field_lens[MAX_FIELDS];
  char *owned[MAX_TEMPLATES]; /* the bytes of templates learnt here (freed with the rules) */
} rules_t;

static void free_learnt(rules_t *r) {
  for (int i = 0; i < MAX_TEMPLATES; i++) {
    free(r->owned[i]);
    r->owned[i] = NULL;
  }
}

/*
 * JSON (RFC 8259) as JSON.parse accepts it, checked only where a template is learnt (once per
 * stream): the JS relay forwards an event that does not parse unchanged, so one is never learnt
 * from. Each returns the end of what it read, or NULL.
 */
#define JSON_DEPTH 32
static const char *json_value(const char *p, const char *end, int depth);

static const char *json_ws(const char *p, const char *end) {
  while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
  return p;
}

/* Where the JSON string whose body starts at `p` closes (its quote), before `end`; NULL if it does not (reasoning-template.ts stringEnd). */
static const char *string_end(const char *p, const char *end) {
  for (; p < end; p++) {
    if (*p == '\\') p++;
    else if (*p == '"') return p;
    else if ((unsigned char)*p < 0x20) return NULL;
  }
  return NULL;
}

static const char *json_string(const char *p, const char *end) {
  const char *q = p < end && *p == '"' ? string_end(p + 1, end) : NULL;
  return q != NULL && string_body(p + 1, q) ? q + 1 : NULL;
}

static const char *json_digits(const char *p, const char *end) {
  const char *q = p;
  while (q < end && *q >= '0' && *q <= '9') q++;
  return q > p ? q : NULL;
}

static const char *json_number(const char *p, const char *end) {
  if (p < end && *p == '-') p++;
  if (p < end && *p == '0') p++;
  else if ((p = json_digits(p, end)) == NULL) return NULL;
  if (p < end && *p == '.' && (p = json_digits(p + 1, end)) == NULL) return NULL;
  if (p < end && (*p == 'e' || *p == 'E')) {
    p++;
    if (p < end && (*p == '+' || *p == '-')) p++;
    p = json_digits(p, end);
  }
  return p;
}

/* The members of an object or the elements of an array after its opening bracket, up to and with its closing one. */
static const char *json_members(const char *p, const char *end, int depth, char close, int keyed) {
  p = json_ws(p, end);
  if (p < end && *p == close) return p + 1;
  for (;;) {
    if (keyed) {
      if ((p = json_string(p, end)) == NULL) return NULL;
      p = json_ws(p, end);
      if (p >= end || *p != ':') return NULL;
      p++;
    }
    if ((p = json_value(p, end, depth)) == NULL) return NULL;
    p = json_ws(p, end);
    if (p < end && *p == close) return p + 1;
    if (p >= end || *p != ',') return NULL;
    p = json_ws(p + 1, end);
  }
}

static const char *json_value(const char *p, const char *end, int depth) {
  p = json_ws(p, end);
  if (p >= end || depth > JSON_DEPTH) return NULL;
  switch (*p) {
    case '{': return json_members(p + 1, end, depth + 1, '}', 1);
    case '[': return json_members(p + 1, end, depth + 1, ']', 0);
    case '"': return json_string(p, end);
    case 't': return starts(p, end, "true", 4) ? p + 4 : NULL;
    case 'f': return starts(p, end, "false", 5) ? p + 5 : NULL;
    case 'n': return starts(p, end, "null", 4) ? p + 4 : NULL;
    default: return json_number(p, end);
  }
}

static int is_json(const char *p, const char *end) {
  const char *q = json_value(p, end, 0);
  return q != NULL && json_ws(q, end) == end;
}

/* True when [q, to) is compact `"key":value,` members with scalar values (no object or array). */
static int scalars(const char *q, const char *to) {
  while (q != to) {
    if (q > to || *q != '"' || (q = string_end(q + 1, to)) == NULL || ++q >= to || *q++ != ':') return 0;
    if (*q == '"') {
      if ((q = string_end(q + 1, to)) != NULL) q++;
    } else if (starts(q, to, "null", 4) || starts(q, to, "true", 4)) q += 4;
    else if (starts(q, to, "false", 5)) q += 5;
    else q = json_number(q, to);
    if (q == NULL || q >= to || *q++ != ',') return 0;
  }
  return 1;
}

/* How often `lit` occurs in [p, end), counting up to 2. */
static int mentions(const char *p, const char *end, const char *lit, size_t n) {
  const char *q = find(p, end, lit, n);
  return q == NULL ? 0 : find(q + 1, end, lit, n) == NULL ? 1 : 2;
}

/*
 * True when `key` (a quote in the event `data: {…` at p) is a member of the delta of the first
 * choice, where the JS relay's JSON pass would rename it: the event's members before `"choices":[{`,
 * the choice's before `"delta":{` and the delta's before `key` are compact members with scalar
 * values (as vLLM and SGLang send them), each of those names occurs once, and no `"message"` (which
 * JS would rename instead) is there.
 */
static int in_first_delta(const char *p, const char *lf, const char *key) {
  const char *c = find(p, key, "\"choices\":[{", 12), *d = c == NULL ? NULL : find(c, key, "\"delta\":{", 9);
  return d != NULL && scalars(p + 7, c) && scalars(c + 12, d) && scalars(d + 9, key) && mentions(p, lf, "\"choices\"", 9) == 1 &&
         mentions(p, lf, "\"delta\"", 7) == 1 && mentions(p, lf, "\"message\"", 9) == 0;
}

/*
 * True when every `"finish_reason"` in [p, lf) is null, or with `strings` a compact string (keys()
 * notes those as JS does); a spaced one is JS's to note.
 */
static int finish_plain(const char *p, const char *lf, int strings) {
  for (const char *q = find(p, lf, "\"finish_reason\"", 15); q != NULL; q = find(q + 1, lf, "\"finish_reason\"", 15))
    if (!starts(q + 15, lf, ":null", 5) && !(strings && starts(q + 15, lf, ":\"", 2))) return 0;
  return 1;
}

/*
 * The event's one mention of a reasoning name, when it is a `"reasoning":` or `"reasoning_content":`
 * member of the first choice's delta and the event names no usage or error (the JS relay's JSON
 * pass would rename that key and nothing else); `*key_len` is the name's length. NULL otherwise.
 */
static const char *sole_reasoning(const char *p, const char *lf, const rules_t *r, int k, size_t *key_len) {
  if (r->n_fields == 0 || (k & (K_CR | K_USAGE | K_ERROR)) || !(k & K_REASONING)) return NULL;
  const char *m = find(p, lf, "\"reasoning", 10);
  if (m == NULL || find(m + 1, lf, "\"reasoning", 10) != NULL) return NULL;
  *key_len = starts(m, lf, "\"reasoning\":", 12) ? 9 : starts(m, lf, "\"reasoning_content\":", 20) ? 17 : 0;
  return *key_len != 0 && in_first_delta(p, lf, m) ? m : NULL;
}

static char *put(char *o, const void *from, size_t n) {
  memcpy(o, from, n);
  return o + n;
}

/* [a, b) with the null key [s, s + n) (when it lies inside) written as each configured name, null. */
static char *put_renamed_null(char *o, const char *a, const char *b, const char *s, size_t n, const rules_t *r) {
  if (s < a || s + n > b) return put(o, a, (size_t)(b - a));
  o = put(o, a, (size_t)(s - a));
  for (int i = 0; i < r->n_fields; i++) {
    o = put(o, i == 0 ? "\"" : ",\"", i == 0 ? 1 : 2);
    o = put(o, r->fields[i], r->field_lens[i]);
    o = put(o, "\":null", 6);
  }
  return put(o, s + n, (size_t)(b - s - n));
}

/*
 * Learns one of the stream's reasoning templates from the event [p, lf), as reasoning-template.ts
 * does after the JS relay's JSON pass, so that an R1 stream needs no JS for its first reasoning
 * token, nor at its first answer token in DeepSeek's API shape. The event is valid JSON whose only
 * mention of a reasoning name is a member of the first choice's delta, with no usage, error or
 * finish reason: either a string (learnText: the text varies and is written under each configured
 * name), or null beside a string `"content"` of the same delta (learnNullPartner: the content
 * varies, and the null key becomes each configured name, null). The JS relay would re-serialise
 * this one event (the renamed keys last); the template keeps its bytes and key order: the same
 * JSON. False when it cannot (JS takes the event, and learns the template its own way).
 */
static int learn(rules_t *r, const char *p, const char *lf, int k) {
  size_t key_len;
  const char *m = r->n < MAX_TEMPLATES && !(k & K_FINISH) ? sole_reasoning(p, lf, r, k, &key_len) : NULL;
  if (m == NULL) return 0;
  const char *value = m + key_len + 3;
  int text = starts(value, lf, "\"", 1);
  const char *at; /* the body of the string that varies */
  if (text) at = value + 1;
  else {
    const char *c = find(p, lf, "\"content\":\"", 11);
    if (!starts(value, lf, "null", 4) || c == NULL || mentions(p, lf, "\"content\"", 9) != 1 || !in_first_delta(p, lf, c)) return 0;
    at = c + 11;
  }
  const char *close = string_end(at, lf);
  /* an empty text beside a role is an opening chunk, whose token JS does not count */
  if (close == NULL || (close == at && find(p, lf, "\"role\"", 6) != NULL) || !string_body(at, close) || !finish_plain(p, lf, 0) || !is_json(p + 5, lf)) return 0;
  size_t head_len = (size_t)(at - p), tail_len = (size_t)(lf - close);
  int same = r->n_fields == 1 && r->field_lens[0] == key_len && memcmp(r->fields[0], m + 1, key_len) == 0;
  /* room for the head and tail, and for the pieces around the body's copies */
  size_t size = 2 * (head_len + tail_len) + 2;
  for (int i = 0; i < r->n_fields; i++) size += r->field_lens[i] + 8;
  char *b = malloc(size);
  if (b == NULL) return 0;
  tmpl_t *t = &r->t[r->n];
  memset(t, 0, sizeof(*t));
  t->head = b;
  t->head_len = head_len;
  t->tail = put(b, p, head_len);
  t->tail_len = tail_len;
  char *o = put((char *)t->tail, close, tail_len);
  t->unchanged = same;
  if (same) t->n_pieces = 0;
  else if (text) { /* `…"f0":"`, then `","f1":"` per other name, then the tail with the blank line */
    for (int i = 0; i <= r->n_fields; i++) {
      t->pieces[i] = o;
      if (i == 0) o = put(o, p, (size_t)(m - p));
      if (i < r->n_fields) {
        o = put(o, i == 0 ? "\"" : "\",\"", i == 0 ? 1 : 3);
        o = put(o, r->fields[i], r->field_lens[i]);
        o = put(o, "\":\"", 3);
      } else o = put(put(o, close, tail_len), "\n\n", 2);
      t->piece_lens[i] = (size_t)(o - t->pieces[i]);
    }
    t->n_pieces = r->n_fields + 1;
  } else { /* the head and the tail, the null key renamed where it is, the tail with the blank line */
    t->pieces[0] = o;
    o = put_renamed_null(o, p, at, m, key_len + 7, r);
    t->piece_lens[0] = (size_t)(o - t->pieces[0]);
    t->pieces[1] = o;
    o = put(put_renamed_null(o, close, lf, m, key_len + 7, r), "\n\n", 2);
    t->piece_lens[1] = (size_t)(o - t->pieces[1]);
    t->n_pieces = 2;
  }
  r->owned[r->n++] = b;
  return 1;
}

/* What one event is to the relay. */
enum kind {
  E_REFUSE, /* JS must take it */
  E_TOKEN,  /* a token event, forwarded as it is */
  E_DONE,   /* `data: [DONE]`, forwarded, no token */
  E_TEMPLATE, /* a reasoning token of one of the templates, rewritten */
  E_USAGE,  /* the usage-only chunk: counts noted, forwarded or dropped */
  E_NULL_RENAMED, /* a token whose one reasoning key is null (no template needed): renamed in place */
};

#define MAX_FINISH 64

typedef struct event {
  enum kind kind;
  const tmpl_t *t;     /* E_TEMPLATE */
  int role_only;       /* E_TOKEN, when asked: it only opens the role (sse-relay.ts isRoleOnly) */
  const char *finish;  /* E_TOKEN: its finish_reason string, if any */
  size_t finish_len;
  double prompt, completion; /* E_USAGE: the counts, -1 when absent */
  int keys;            /* keys()'s bits (0 when it did not look) */
  const char *null_key; /* E_NULL_RENAMED: where `"key":null` is, and its length */
  size_t null_len;
} event_t;

/*
 * Where the event [p, lf) has its one reasoning mention as a null member of the first choice's
 * delta, with nothing else the JS relay's JSON pass would change or note differently: `*len` is
 * that member's length. Such an event (the last of a DeepSeek- or SGLang-shaped stream: a finish
 * reason beside `"reasoning_content":null`, which no template fits) becomes the same JSON with the
 * key written as each configured name, null. Its JSON is checked per event, but only events no
 * template fits get here. Not while no token was counted and a role is named (JS does not count an
 * opening chunk).
 */
static const char *null_reasoning(const char *p, const char *lf, const rules_t *r, int k, int role_check, size_t *len) {
  size_t key_len;
  const char *m = sole_reasoning(p, lf, r, k, &key_len);
  if (m == NULL || !starts(m + key_len + 3, lf, "null", 4) || (role_check && find(p, lf, "\"role\"", 6) != NULL)) return NULL;
  if (!finish_plain(p, lf, 1) || !is_json(p + 5, lf)) return NULL;
  *len = key_len + 7;
  return m;
}

/* The size of the event [p, lf) with its null reasoning key renamed (its blank line included). */
static size_t null_renamed_size(const event_t *e, const rules_t *r, const char *p, const char *lf) {
  size_t size = (size_t)(lf - p) + 2 - e->null_len + (size_t)(r->n_fields - 1);
  for (int i = 0; i < r->n_fields; i++) size += r->field_lens[i] + 7;
  return size;
}

/*
 * Classifies the one-line event [p, lf) as the JS relay's whole-events pass would treat it
 * (sse-relay.ts wholeEvents, special, event): anything the relay is not sure to treat the same is
 * E_REFUSE, and JS takes it. Whether a token only opens the role is looked for only with `role_check`
 * (two memmem calls per event otherwise, for an answer needed once per stream).
 */
/* Notes the event's finish_reason string at `finish` (K_FINISH in `k`); false when it is not one the relay keeps. */
static int finish_of(event_t *e, int k, const char *finish, const char *lf) {
  e->finish = NULL;
  if (!(k & K_FINISH)) return 1;
  /* JS takes the bytes up to the next quote; one that long is not a finish reason the relay keeps */
  const char *q = memchr(finish, '"', (size_t)(lf - finish));
  if (q == NULL || q - finish > MAX_FINISH) return 0;
  e->finish = finish;
  e->finish_len = (size_t)(q - finish);
  return 1;
}

static void classify(const char *p, const char *lf, const rules_t *r, int role_check, event_t *e) {
  e->kind = E_REFUSE;
  e->keys = 0;
  const char *finish = NULL;
  int done = starts(p, lf, "data: [DONE]", 12);
  if (!done && !starts(p, lf, "data: {", 7)) return;
  int k = e->keys = keys(p, lf, r->flags & F_REASONING, &finish);
  if (k & K_CR) return;
  if (done) {
    if ((k & ~K_FINISH) == 0) e->kind = E_DONE;
    return;
  }
  if ((k & ~K_FINISH) == 0) {
    e->role_only = role_check && find(p, lf, "\"role\"", 6) != NULL && find(p, lf, "\"content\":\"\"", 12) != NULL;
    if (finish_of(e, k, finish, lf)) e->kind = E_TOKEN;
    return;
  }
  for (int i = 0; i < r->n; i++)
    if (fits(&r->t[i], p, lf)) {
      e->t = &r->t[i];
      e->kind = E_TEMPLATE;
      return;
    }
  if ((e->null_key = null_reasoning(p, lf, r, k, role_check, &e->null_len)) != NULL) {
    if (finish_of(e, k, finish, lf)) e->kind = E_NULL_RENAMED;
    return;
  }
  /* the usage-only chunk: JS reads its two counts with a regex and does not parse it */
  if ((k & K_USAGE) && !(k & (K_ERROR | K_REASONING)) && find(p, lf, "\"choices\":[]", 12) != NULL) {
    e->prompt = count_of(p, lf, "\"prompt_tokens\":", 16);
    e->completion = count_of(p, lf, "\"completion_tokens\":", 20);
    if (e->prompt > -2 && e->completion > -2) e->kind = E_USAGE;
  }
}

/* The bytes event `e` at [p, lf) becomes (its blank line included): 0 when dropped. */
static size_t out_size(const event_t *e, const rules_t *r, const char *p, const char *lf) {
  if (e->kind == E_TEMPLATE) return rewritten_size(e->t, p, lf);
  if (e->kind == E_NULL_RENAMED) return null_renamed_size(e, r, p, lf);
  if (e->kind == E_USAGE && (r->flags & F_DROP_USAGE)) return 0;
  return (size_t)(lf - p) + 2;
}

/* What a run of chunks holds: the counts, and what JS is told of them. */
typedef struct verdict {
  int plain;     /* token events, counted at once per read */
  int templated; /* templated events, counted one by one */
  int changed;   /* an event rewritten or dropped: the chunks go re-framed */
  int first;     /* the next event is the read's first while no token was counted (the role check) */
  const char *finish; /* the last finish_reason string */
  size_t finish_len;
  int usage;     /* a usage-only chunk was seen: its counts follow */
  double prompt, completion;
} verdict_t;

/* Classifies the events of one chunk's data, each a whole one-line event, into `v`; -1 when one must go to JS. */
static int chunk_events(const char *p, const char *end, rules_t *r, verdict_t *v) {
  while (p < end) {
    const char *lf = memchr(p, '\n', (size_t)(end - p));
    if (lf == NULL || lf + 1 >= end || lf[1] != '\n') return -1;
    event_t e;
    classify(p, lf, r, v->first, &e);
    /* a template learnt now serves the stream's later events too (a null key renamed alone serves one) */
    if ((e.kind == E_REFUSE || e.kind == E_NULL_RENAMED) && learn(r, p, lf, e.keys)) classify(p, lf, r, v->first, &e);
    switch (e.kind) {
      case E_REFUSE:
        return -1;
      case E_TOKEN:
        if (!e.role_only) v->plain++;
        if (e.finish != NULL) {
          v->finish = e.finish;
          v->finish_len = e.finish_len;
        }
        break;
      case E_TEMPLATE:
        v->templated++;
        if (!e.t->unchanged) v->changed = 1;
        break;
      case E_NULL_RENAMED:
        v->templated++; /* counted one by one, as the JSON pass counts it */
        v->changed = 1;
        if (e.finish != NULL) {
          v->finish = e.finish;
          v->finish_len = e.finish_len;
        }
        break;
      case E_USAGE:
        v->usage = 1;
        v->prompt = e.prompt;
        v->completion = e.completion;
        if (r->flags & F_DROP_USAGE) v->changed = 1;
        break;
      case E_DONE:
        break;
    }
    v->first = 0;
    p = lf + 2;
  }
  return 0;
}

/* The chunk at `p`, whose framing whole_prefix() checked: where its data starts, and `*size` its length. */
static const char *chunk_data(const char *p, size_t *size) {
  size_t n = 0;
  int d = 0;
  for (int v; (v = hex(p[d])) >= 0; d++) n = n * 16 + v;
  *size = n;
  return p + d + 2;
}

/* A partial chunk kept for the next read: at most this much (a longer one goes to JS). */
#define CARRY_MAX (32 * 1024)

/*
 * How much of `b` is whole chunks. It stops at the first chunk that has not fully arrived (the rest
 * waits for the next read), or at one JS must take (`*stop` set): the zero-size chunk (the end), a
 * size line that is not plain hex.
 */
static size_t whole_prefix(const char *b, size_t len, int *stop) {
  const char *p = b, *e = b + len;
  *stop = 0;
  while (p < e) {
    size_t size = 0;
    int digits = 0;
    for (int v; p + digits < e && digits <= 12 && (v = hex(p[digits])) >= 0; digits++) size = size * 16 + v;
    if (digits > 12) break;
    if (p + digits == e) return (size_t)(p - b); /* the size line goes on in the next read */
    if (digits == 0 || p[digits] != '\r' || size == 0 || (p + digits + 1 < e && p[digits + 1] != '\n')) break;
    const char *data = p + digits + 2;
    if (data > e || (size_t)(e - data) < size + 2) return (size_t)(p - b); /* its data or CRLF go on in the next read */
    p = data + size + 2;
  }
  *stop = p < e;
  return (size_t)(p - b);
}

/*
 * The verdict on the whole chunks b[0, len) (see the top): how many bytes of them, from the start,
 * are chunks the relay can take (all of them, or up to the first it cannot); `v` holds what those
 * are. `v->first` says whether the read's first event gets the role check.
 */
static size_t judge(const char *b, size_t len, rules_t *r, verdict_t *v) {
  const char *p = b, *e = b + len;
  while (p < e) {
    size_t size;
    const char *data = chunk_data(p, &size);
    verdict_t mine = *v; /* this chunk's events count only if all of them can go */
    if (chunk_events(data, data + size, r, &mine) != 0) break;
    *v = mine;
    p = data + size + 2;
  }
  return (size_t)(p - b);
}

/*
 * Writes judged chunks with their events rewritten or dropped, one chunk per chunk (none for a chunk
 * left empty: a zero-size one would end the body); the size, or -1 when over `cap`.
 */
static long rewrite(const char *b, size_t len, const rules_t *r, char *out, size_t cap) {
  char *o = out, *o_end = out + cap;
  for (const char *p = b; p < b + len;) {
    size_t in_size;
    const char *data = chunk_data(p, &in_size), *dend = data + in_size;
    p = dend + 2;
    size_t size = 0;
    event_t e;
    for (const char *q = data; q < dend;) {
      const char *lf = memchr(q, '\n', (size_t)(dend - q));
      classify(q, lf, r, 0, &e);
      size += out_size(&e, r, q, lf);
      q = lf + 2;
    }
    if (size == 0) continue;
    if ((size_t)(o_end - o) < size + 20) return -1;
    int digits = 1;
    for (size_t x = size; x >= 16; x /= 16) digits++;
    for (int i = digits - 1, x = 0; i >= 0; i--, x++) o[i] = "0123456789abcdef"[(size >> (4 * x)) & 15];
    o += digits;
    *o++ = '\r';
    *o++ = '\n';
    for (const char *q = data; q < dend;) {
      const char *lf = memchr(q, '\n', (size_t)(dend - q));
      classify(q, lf, r, 0, &e);
      if (e.kind == E_TEMPLATE) o = put_rewritten(o, e.t, q, lf);
      else if (e.kind == E_NULL_RENAMED) o = put(put_renamed_null(o, q, lf, e.null_key, e.null_len, r), "\n\n", 2);
      else if (out_size(&e, r, q, lf) > 0) {
        memcpy(o, q, (size_t)(lf - q) + 2);
        o += (lf - q) + 2;
      }
      q = lf + 2;
    }
    *o++ = '\r';
    *o++ = '\n';
  }
  return (long)(o - out);
}

static const char LAST_CHUNK[] = "0\r\n\r\n";
#define LAST_CHUNK_LEN 5

/* What the relay does with one read (the carry before it included). */
typedef struct outcome {
  size_t taken;   /* bytes of the read it takes: whole chunks it can forward, and the body's end when `end` */
  int stop;       /* what follows `taken` goes to JS (a chunk it cannot take, the end when it may not send it) */
  int end;        /* the body's end is in `taken` */
  const char *out; /* what to send for them (the read itself, or out_buf when re-framed) */
  size_t out_len;
  verdict_t v;
} outcome_t;

/*
 * Judges one read: false when the read needed re-framing beyond out_buf (JS then takes all of it).
 * What follows `taken` when not `stop` is a chunk that has not fully arrived.
 */
static int process(const char *buf, size_t total, rules_t *r, int role_check, char *out_buf, size_t cap, outcome_t *o) {
  memset(o, 0, sizeof(*o));
  o->v.first = role_check;
  o->v.prompt = o->v.completion = -1;
  size_t whole = whole_prefix(buf, total, &o->stop);
  size_t ok = whole > 0 ? judge(buf, whole, r, &o->v) : 0;
  if (ok < whole) o->stop = 1;
  /* the zero-size chunk with nothing after it (no trailers) right after the chunks it takes */
  o->end = (r->flags & F_MAY_END) && ok == whole && total - ok == LAST_CHUNK_LEN && memcmp(buf + ok, LAST_CHUNK, LAST_CHUNK_LEN) == 0;
  if (o->end) o->stop = 0;
  o->taken = ok + (o->end ? LAST_CHUNK_LEN : 0);
  o->out = buf;
  o->out_len = o->taken;
  if (!o->v.changed) return 1;
  long n = ok > 0 ? rewrite(buf, ok, r, out_buf, cap) : 0;
  if (n < 0 || (size_t)n + LAST_CHUNK_LEN > cap) return 0;
  if (o->end) memcpy(out_buf + n, LAST_CHUNK, LAST_CHUNK_LEN);
  o->out = out_buf;
  o->out_len = (size_t)n + (o->end ? LAST_CHUNK_LEN : 0);
  return 1;
}

/*
 * One upstream connection as the relay sees it: a dup of its fd and a poll on the dup, and the
 * stream being relayed now (active) with where it goes and what it counted.
 */
typedef struct channel {
  uv_poll_t poll;
  struct addon *addon;
  int fd;
  uint32_t slot, generation;
  /* the stream in hand */
  int active;
  napi_ref cb;
  int client_fd; /* the relay's own dup, per hand-off */
  rules_t rules; /* the stream's flags and reasoning templates (pointing into rules_bytes) */
  char *rules_bytes;
  int role_check; /* no token counted yet (F_ROLE_CHECK, until the relay counts one) */
  /* what JS is told with the stream: the last finish_reason string relayed (-1: none), the usage-only chunk's counts */
  char finish[MAX_FINISH];
  int finish_len;
  int usage;
  double prompt, completion;
  double *marks; /* per relayed read: its time (ms on JS's performance.now() clock) and token events */
  /* the start of a chunk whose end has not arrived (a read may end anywhere: the sender's write can
     be seen half done), sent with the read that completes it */
  char *carry;
  size_t carry_len, carry_cap;
  size_t n_marks, cap_marks;
  double clock_offset_ms;
} channel_t;

/*
 * Per Node environment (a worker thread loading the addon gets its own). Channels live in slots,
 * named to JS by slot and generation as one number, so a stale id finds nothing.
 */
typedef struct addon {
  napi_env env;
  napi_async_context async_ctx;
  napi_ref async_resource;
  channel_t **slots;
  uint32_t n_slots, free_hint, generation;
  char read_buf[READ_BYTES];
  /* a read with events rewritten: renaming copies each reasoning text once per configured name */
  char out_buf[3 * READ_BYTES];
} addon_t;

static void mark(channel_t *c, int tokens) {
  if (c->n_marks + 2 > c->cap_marks) {
    size_t cap = c->cap_marks ? c->cap_marks * 2 : 64;
    double *m = realloc(c->marks, cap * sizeof(double));
    if (m == NULL) return; /* the counts go short; the bytes were relayed all the same */
    c->marks = m;
    c->cap_marks = cap;
  }
  c->marks[c->n_marks++] = (double)uv_hrtime() / 1e6 + c->clock_offset_ms;
  c->marks[c->n_marks++] = tokens;
}

/* The marks as a Float64Array: [time, tokens, time, tokens, …]. */
static napi_value marks_array(napi_env env, channel_t *c) {
  void *data;
  napi_value ab, arr;
  napi_create_arraybuffer(env, c->n_marks * sizeof(double), &data, &ab);
  if (c->n_marks) memcpy(data, c->marks, c->n_marks * sizeof(double));
  napi_create_typedarray(env, napi_float64_array, c->n_marks, ab, 0, &arr);
  c->n_marks = 0;
  return arr;
}

/* What the relayed events told (JS's relay notes the same): the last finish reason (a string, or null), the usage counts ([prompt, completion], undefined where absent, or null). */
static void books(napi_env env, channel_t *c, napi_value *finish, napi_value *usage) {
  if (c->finish_len >= 0) napi_create_string_latin1(env, c->finish, (size_t)c->finish_len, finish);
  else napi_get_null(env, finish);
  if (!c->usage) {
    napi_get_null(env, usage);
    return;
  }
  napi_create_array_with_length(env, 2, usage);
  double counts[2] = {c->prompt, c->completion};
  for (uint32_t i = 0; i < 2; i++) {
    napi_value v;
    if (counts[i] >= 0) napi_create_double(env, counts[i], &v);
    else napi_get_undefined(env, &v);
    napi_set_element(env, *usage, i, v);
  }
}

/* Ends the stream in hand: the poll stops (its fd leaves epoll now, before JS reads the socket again). */
static void deactivate(channel_t *c) {
  c->active = 0;
  c->carry_len = 0;
  free_learnt(&c->rules);
  free(c->rules_bytes);
  c->rules_bytes = NULL;
  c->rules.n = 0;
  uv_poll_stop(&c->poll);
  close(c->client_fd);
  c->client_fd = -1;
  if (c->cb != NULL) napi_delete_reference(c->addon->env, c->cb);
  c->cb = NULL;
}

/*
 * Hands the stream back to JS: callback(reason, held | null, unsent | null, marks, finish, usage).
 * `held`: bytes read and not forwarded, for JS to take as the exchange's next read; `unsent`: bytes
 * forwarded in part, for JS to write before anything else; finish and usage: see books().
 */
static void hand_back(channel_t *c, int reason, const char *held, size_t held_len, const char *unsent, size_t unsent_len) {
  addon_t *a = c->addon;
  napi_env env = a->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value argv[6], cb, resource, result;
  napi_create_int32(env, reason, &argv[0]);
  if (held != NULL && held_len > 0) napi_create_buffer_copy(env, held_len, held, NULL, &argv[1]);
  else napi_get_null(env, &argv[1]);
  if (unsent != NULL && unsent_len > 0) napi_create_buffer_copy(env, unsent_len, unsent, NULL, &argv[2]);
  else napi_get_null(env, &argv[2]);
  argv[3] = marks_array(env, c);
  books(env, c, &argv[4], &argv[5]);
  napi_get_reference_value(env, c->cb, &cb);
  napi_get_reference_value(env, a->async_resource, &resource);
  deactivate(c);
  /* make_callback, not call_function: JS's microtasks and nextTicks run after it, as after any I/O callback */
  if (napi_make_callback(env, a->async_ctx, resource, cb, 6, argv, &result) == napi_pending_exception) {
    napi_value err;
    napi_get_and_clear_last_exception(env, &err);
    napi_fatal_exception(env, err);
  }
  napi_close_handle_scope(env, scope);
}

/* Keeps the `n` bytes at `from` as the carry; false when they are too many (JS then takes them). */
static int keep(channel_t *c, const char *from, size_t n) {
  if (n > CARRY_MAX) return 0;
  if (n > c->carry_cap) {
    char *m = realloc(c->carry, n);
    if (m == NULL) return 0;
    c->carry = m;
    c->carry_cap = n;
  }
  memmove(c->carry, from, n);
  c->carry_len = n;
  return 1;
}

/* Notes what a forwarded run of chunks told: the marks (counted as the JS relay counts a read: each templated event on its own, then the plain ones at once), the finish reason, the usage. */
static void note(channel_t *c, const verdict_t *v) {
  for (int i = 0; i < v->templated; i++) mark(c, 1);
  if (v->plain > 0) mark(c, v->plain);
  if (v->plain + v->templated > 0) c->role_check = 0;
  if (v->finish != NULL) {
    memcpy(c->finish, v->finish, v->finish_len);
    c->finish_len = (int)v->finish_len;
  }
  if (v->usage) {
    c->usage = 1;
    c->prompt = v->prompt;
    c->completion = v->completion;
  }
}

/* The upstream is readable: forward what the relay can take until it would block, the body ends, or JS must take a read. */
static void on_upstream(uv_poll_t *h, int status, int events) {
  channel_t *c = (channel_t *)h; /* the poll is the channel's first member */
  addon_t *a = c->addon;
  char *buf = a->read_buf;
  (void)events;
  if (!c->active) return;
  if (status < 0) return hand_back(c, R_UP_CLOSED, c->carry, c->carry_len, NULL, 0);
  for (;;) {
    /* the carry goes first, then what this read brings */
    size_t k = c->carry_len;
    if (k) memcpy(buf, c->carry, k);
    ssize_t n = read(c->fd, buf + k, READ_BYTES - k);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n <= 0) return hand_back(c, R_UP_CLOSED, buf, k, NULL, 0);
    size_t total = k + (size_t)n;
    outcome_t o;
    if (!process(buf, total, &c->rules, c->role_check, a->out_buf, sizeof(a->out_buf), &o)) return hand_back(c, R_HELD, buf, total, NULL, 0);
    size_t rest = total - o.taken; /* from a chunk JS must take (stop), or a partial chunk */
    if (o.taken == 0) {
      if (o.stop || !keep(c, buf, total)) return hand_back(c, R_HELD, buf, total, NULL, 0);
      if ((size_t)n < READ_BYTES - k) return;
      continue;
    }
    if (rest > CARRY_MAX && !o.stop) return hand_back(c, R_HELD, buf, total, NULL, 0);
    note(c, &o.v);
    size_t sent = 0;
    while (sent < o.out_len) {
      ssize_t w = send(c->client_fd, o.out + sent, o.out_len - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w >= 0) sent += (size_t)w;
      else if (errno == EINTR) continue;
      else if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      else return hand_back(c, R_CLIENT, NULL, 0, NULL, 0);
    }
    if (o.end) return hand_back(c, R_END, NULL, 0, o.out + sent, o.out_len - sent);
    if (sent < o.out_len) return hand_back(c, R_BLOCKED, buf + o.taken, rest, o.out + sent, o.out_len - sent);
    if (o.stop) return hand_back(c, R_HELD, buf + o.taken, rest, NULL, 0);
    /* a partial chunk after the whole ones waits for the next read (copied before buf is reused) */
    if (!keep(c, buf + o.taken, rest)) return hand_back(c, R_HELD, buf + o.taken, rest, NULL, 0);
    if ((size_t)n < READ_BYTES - k) return; /* a short read: the socket is drained */
  }
}

#define CHECK(call)                                  \
  do {                                               \
    if ((call) != napi_ok) {                         \
      napi_throw_error(env, NULL, "relay: " #call); \
      return NULL;                                   \
    }                                                \
  } while (0)

/* JS names a channel by one number: generation × 2^20 + slot, exact in a double (slots stay below 2^20). */
#define SLOT_BITS 20
#define MAX_SLOTS (1u << SLOT_BITS)
#define GENERATIONS (1u << 30)

static int free_slot(addon_t *a) {
  if (a->free_hint < a->n_slots && a->slots[a->free_hint] == NULL) return (int)a->free_hint;
  for (uint32_t i = 0; i < a->n_slots; i++)
    if (a->slots[i] == NULL) return (int)i;
  if (a->n_slots >= MAX_SLOTS) return -1;
  uint32_t n = a->n_slots ? a->n_slots * 2 : 64;
  channel_t **s = realloc(a->slots, n * sizeof(channel_t *));
  if (s == NULL) return -1;
  memset(s + a->n_slots, 0, (n - a->n_slots) * sizeof(channel_t *));
  a->slots = s;
  int i = (int)a->n_slots;
  a->n_slots = n;
  return i;
}

static channel_t *channel_of(napi_env env, addon_t *a, napi_value v) {
  double id;
  if (napi_get_value_double(env, v, &id) != napi_ok || !(id >= 0)) return NULL;
  uint64_t u = (uint64_t)id;
  uint32_t slot = (uint32_t)(u % MAX_SLOTS), generation = (uint32_t)(u / MAX_SLOTS);
  channel_t *c = slot < a->n_slots ? a->slots[slot] : NULL;
  return c != NULL && c->generation == generation ? c : NULL;
}

static void free_channel(uv_handle_t *h) {
  channel_t *c = (channel_t *)h;
  free(c->carry);
  free(c->marks);
  free(c);
}

/* A little-endian u32 at p, if 4 bytes are left before end. */
static int u32(const char **p, const char *end, uint32_t *v) {
  if (end - *p < 4) return -1;
  const unsigned char *b = (const unsigned char *)*p;
  *v = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
  *p += 4;
  return 0;
}

static int bytes(const char **p, const char *end, const char **at, size_t *len) {
  uint32_t n;
  if (u32(p, end, &n) != 0 || (size_t)(end - *p) < n) return -1;
  *at = *p;
  *len = n;
  *p += n;
  return 0;
}

/*
 * Reads templates as ReasoningTemplate.encodeAll() writes them: a count, then per template its head,
 * its tail and its pieces (a count, 0xFFFFFFFF for none: the event stays as it is), each a u32
 * length and the bytes; then, optionally, the configured reasoning names (a count, each a u32 length
 * and the bytes), with which the relay learns a template itself. `ts` points into `b`, which must
 * outlive it. -1 when malformed.
 */
static int decode_templates(const char *b, size_t len, rules_t *ts) {
  const char *p = b, *end = b + len;
  uint32_t n;
  if (u32(&p, end, &n) != 0 || n > MAX_TEMPLATES) return -1;
  ts->n = (int)n;
  for (uint32_t i = 0; i < n; i++) {
    tmpl_t *t = &ts->t[i];
    uint32_t pieces;
    if (bytes(&p, end, &t->head, &t->head_len) != 0 || bytes(&p, end, &t->tail, &t->tail_len) != 0 || u32(&p, end, &pieces) != 0) return -1;
    t->unchanged = pieces == 0xFFFFFFFFu;
    t->n_pieces = t->unchanged ? 0 : (int)pieces;
    if (!t->unchanged && (pieces < 2 || pieces > 4)) return -1;
    for (int j = 0; j < t->n_pieces; j++)
      if (bytes(&p, end, &t->pieces[j], &t->piece_lens[j]) != 0) return -1;
  }
  if (p == end) return 0;
  /* the configured reasoning names, when the relay may learn a template (learn()) */
  if (u32(&p, end, &n) != 0 || n > MAX_FIELDS) return -1;
  ts->n_fields = (int)n;
  for (uint32_t i = 0; i < n; i++)
    if (bytes(&p, end, &ts->fields[i], &ts->field_lens[i]) != 0) return -1;
  return p == end ? 0 : -1;
}

/* open(upstreamFd) → a channel id (≥ 0) for that connection, or a negative errno. Its own dup and poll, until close(id). */
static napi_value open_channel(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out;
  addon_t *a;
  int32_t fd;
  uv_loop_t *loop;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_instance_data(env, (void **)&a));
  CHECK(napi_get_value_int32(env, argv[0], &fd));
  CHECK(napi_get_uv_event_loop(env, &loop));
  int slot = free_slot(a);
  channel_t *c = slot >= 0 ? calloc(1, sizeof(channel_t)) : NULL;
  int dup_fd = c != NULL ? fcntl(fd, F_DUPFD_CLOEXEC, 0) : -1;
  int err = dup_fd < 0 ? (c == NULL ? -ENOMEM : -errno) : uv_poll_init(loop, &c->poll, dup_fd);
  if (err != 0) {
    if (dup_fd >= 0) close(dup_fd);
    free(c);
    CHECK(napi_create_int32(env, err, &out));
    return out;
  }
  c->addon = a;
  c->fd = dup_fd;
  c->client_fd = -1;
  c->slot = (uint32_t)slot;
  c->generation = a->generation = (a->generation + 1) % GENERATIONS;
  a->slots[slot] = c;
  CHECK(napi_create_double(env, (double)c->generation * MAX_SLOTS + c->slot, &out));
  return out;
}

/* close(id): the channel goes (a stream in hand is dropped without a callback); its dup is closed. */
static napi_value close_channel(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  addon_t *a;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_instance_data(env, (void **)&a));
  channel_t *c = channel_of(env, a, argv[0]);
  if (c == NULL) return NULL;
  if (c->active) deactivate(c);
  a->slots[c->slot] = NULL;
  a->free_hint = c->slot;
  uv_close((uv_handle_t *)&c->poll, free_channel); /* takes the dup out of epoll now */
  close(c->fd);
  return NULL;
}

/*
 * start(id, clientFd, flags, templates, nowMs, callback) → 0, or a negative errno when it could not
 * start (nothing changed: the stream stays in JS). libuv must have stopped reading the upstream.
 * `flags`: F_ bits; `templates`: a Buffer from ReasoningTemplate.encodeAll(), or null.
 */
static napi_value start(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6], out;
  addon_t *a;
  int32_t client_fd, flags;
  double now_ms;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_instance_data(env, (void **)&a));
  CHECK(napi_get_value_int32(env, argv[1], &client_fd));
  CHECK(napi_get_value_int32(env, argv[2], &flags));
  CHECK(napi_get_value_double(env, argv[4], &now_ms));
  channel_t *c = channel_of(env, a, argv[0]);
  int err = c == NULL ? -EBADF : c->active ? -EBUSY : 0;
  rules_t rules = {.flags = flags, .n = 0};
  char *rules_bytes = NULL;
  bool is_buffer = false;
  napi_is_buffer(env, argv[3], &is_buffer);
  if (err == 0 && is_buffer) {
    void *data;
    size_t len;
    CHECK(napi_get_buffer_info(env, argv[3], &data, &len));
    rules_bytes = malloc(len ? len : 1);
    if (rules_bytes == NULL) err = -ENOMEM;
    else {
      memcpy(rules_bytes, data, len);
      if (decode_templates(rules_bytes, len, &rules) != 0) err = -EINVAL;
    }
  }
  int dup_fd = err == 0 ? fcntl(client_fd, F_DUPFD_CLOEXEC, 0) : -1;
  if (err == 0 && dup_fd < 0) err = -errno;
  if (err == 0) err = uv_poll_start(&c->poll, UV_READABLE, on_upstream);
  if (err != 0) {
    if (dup_fd >= 0) close(dup_fd);
    free(rules_bytes);
    CHECK(napi_create_int32(env, err, &out));
    return out;
  }
  c->client_fd = dup_fd;
  c->rules = rules;
  c->rules_bytes = rules_bytes;
  c->role_check = (flags & F_ROLE_CHECK) != 0;
  c->finish_len = -1;
  c->usage = 0;
  c->n_marks = 0;
  c->clock_offset_ms = now_ms - (double)uv_hrtime() / 1e6;
  c->active = 1;
  CHECK(napi_create_reference(env, argv[5], 1, &c->cb));
  CHECK(napi_create_int32(env, 0, &out));
  return out;
}

/* stop(id) → [marks so far (Float64Array), finish, usage] (see books()), or null when no stream is in hand. No callback follows. */
static napi_value stop(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out, v[3];
  addon_t *a;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_instance_data(env, (void **)&a));
  channel_t *c = channel_of(env, a, argv[0]);
  if (c == NULL || !c->active) {
    CHECK(napi_get_null(env, &out));
    return out;
  }
  v[0] = marks_array(env, c);
  books(env, c, &v[1], &v[2]);
  deactivate(c);
  CHECK(napi_create_array_with_length(env, 3, &out));
  for (uint32_t i = 0; i < 3; i++) CHECK(napi_set_element(env, out, i, v[i]));
  return out;
}

/*
 * scan(read, flags, templates | null) → what the relay would do with one read as the only read of a
 * hand-off, for tests and fuzzing: null when JS would get any of it, else [plain token events,
 * templated events, the bytes it sends, finish, usage (see books()), whether the body ended].
 */
static napi_value scan(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], out, v[6];
  void *data;
  size_t len;
  int32_t flags;
  bool is_buffer = false;
  addon_t *a;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_instance_data(env, (void **)&a));
  CHECK(napi_get_buffer_info(env, argv[0], &data, &len));
  CHECK(napi_get_value_int32(env, argv[1], &flags));
  rules_t rules = {.flags = flags, .n = 0};
  napi_is_buffer(env, argv[2], &is_buffer);
  if (is_buffer) {
    void *tb;
    size_t tl;
    CHECK(napi_get_buffer_info(env, argv[2], &tb, &tl));
    if (decode_templates(tb, tl, &rules) != 0) {
      napi_throw_error(env, NULL, "relay: malformed templates");
      return NULL;
    }
  }
  outcome_t o;
  int taken = len > 0 && process(data, len, &rules, (flags & F_ROLE_CHECK) != 0, a->out_buf, sizeof(a->out_buf), &o) && o.taken == len;
  free_learnt(&rules); /* the output was written (out_buf) before the templates go */
  if (!taken) {
    CHECK(napi_get_null(env, &out));
    return out;
  }
  channel_t books_of = {.finish_len = -1};
  note(&books_of, &o.v);
  free(books_of.marks);
  CHECK(napi_create_int32(env, o.v.plain, &v[0]));
  CHECK(napi_create_int32(env, o.v.templated, &v[1]));
  CHECK(napi_create_buffer_copy(env, o.out_len, o.out, NULL, &v[2]));
  books(env, &books_of, &v[3], &v[4]);
  CHECK(napi_get_boolean(env, o.end, &v[5]));
  CHECK(napi_create_array_with_length(env, 6, &out));
  for (uint32_t i = 0; i < 6; i++) CHECK(napi_set_element(env, out, i, v[i]));
  return out;
}

static void free_addon(napi_env env, void *data, void *hint) {
  addon_t *a = data;
  (void)hint;
  napi_async_destroy(env, a->async_ctx);
  napi_delete_reference(env, a->async_resource);
  /* the environment is going away with its loop; channels still open go with the process */
}

NAPI_MODULE_INIT() {
  napi_value fn, name, resource;
  addon_t *a = calloc(1, sizeof(addon_t));
  if (a == NULL) return NULL;
  a->env = env;
  napi_create_object(env, &resource);
  napi_create_reference(env, resource, 1, &a->async_resource);
  napi_create_string_utf8(env, "dsr.relay", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, resource, name, &a->async_ctx);
  napi_set_instance_data(env, a, free_addon, NULL);
  const struct { const char *name; napi_callback fn; } fns[] = {
    {"open", open_channel}, {"close", close_channel}, {"start", start}, {"stop", stop}, {"scan", scan},
  };
  for (size_t i = 0; i < sizeof(fns) / sizeof(fns[0]); i++) {
    napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].fn, NULL, &fn);
    napi_set_named_property(env, exports, fns[i].name, fn);
  }
  return exports;
}
