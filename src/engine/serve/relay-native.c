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
 * A "plain" read is one the JS relay would forward unchanged: whole chunks (hex size, CRLF, data,
 * CRLF; no extensions, not the zero-size one), each holding whole one-line `data: {...}` events
 * that name no key the relay acts on (usage, error, finish_reason as a string, and reasoning when
 * it renames). Anything else (the stream's end, a split chunk, a usage event) is handed back to JS
 * unforwarded, with the counts of the reads relayed so far; so is an upstream that closes, a client
 * write that fails, and one that would block (with the unsent bytes).
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
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#define READ_BYTES (64 * 1024)

enum reason {
  R_HELD = 1,      /* a read that is not plain: JS takes it (the held bytes) */
  R_UP_CLOSED = 2, /* the upstream closed or failed: JS reads it again and sees why */
  R_CLIENT = 3,    /* a write to the client failed (it went away) */
  R_BLOCKED = 4,   /* the client's socket buffer is full: JS writes the unsent bytes and waits */
};

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
  int reasoning_special;
  double *marks; /* per relayed read: its time (ms on JS's performance.now() clock) and token events */
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
} addon_t;

static int hex(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static int starts(const char *p, const char *end, const char *lit, size_t n) {
  return (size_t)(end - p) >= n && memcmp(p, lit, n) == 0;
}

/*
 * True when the event [p, end) holds a CR or names a key the JS relay acts on (sse-relay.ts keyAt:
 * a quoted `"usage"` that is not `:null`, `"error"`, `"finish_reason":"`, and `"reasoning` when
 * renaming). It looks at every quote, so it never misses a key the relay's regex would see. A plain
 * byte loop: an event is a few hundred bytes, and a memchr call per quote cost more than the loop.
 */
static int special(const char *p, const char *end, int reasoning) {
  for (const char *q = p; q < end; q++) {
    if (*q == '\r') return 1;
    if (*q != '"' || q + 1 >= end) continue;
    const char *k = q + 1;
    switch (*k) {
      case 'u':
        if (starts(k, end, "usage\"", 6) && !starts(k + 6, end, ":null", 5)) return 1;
        break;
      case 'e':
        if (starts(k, end, "error\"", 6)) return 1;
        break;
      case 'r':
        if (reasoning && starts(k, end, "reasoning", 9)) return 1;
        break;
      case 'f':
        if (starts(k, end, "finish_reason\":\"", 16)) return 1;
        break;
    }
  }
  return 0;
}

/* Token events in one chunk's data, or -1 unless it is only whole one-line `data: {` events. */
static int plain_events(const char *p, const char *end, int reasoning) {
  int n = 0;
  while (p < end) {
    const char *lf = memchr(p, '\n', end - p);
    if (lf == NULL || lf + 1 >= end || lf[1] != '\n') return -1;
    if (!starts(p, lf, "data: {", 7) || special(p, lf, reasoning)) return -1;
    n++;
    p = lf + 2;
  }
  return n;
}

/* Token events in a read of whole chunks, or -1 when the read is not plain (see the top). */
static int plain_read(const char *b, size_t len, int reasoning) {
  const char *p = b, *end = b + len;
  int tokens = 0;
  if (len == 0) return -1;
  while (p < end) {
    size_t size = 0;
    int digits = 0;
    for (int v; p + digits < end && digits <= 12 && (v = hex(p[digits])) >= 0; digits++) size = size * 16 + v;
    if (digits == 0 || digits > 12 || size == 0) return -1;
    const char *data = p + digits + 2;
    if (data > end || p[digits] != '\r' || p[digits + 1] != '\n') return -1;
    if ((size_t)(end - data) < size + 2 || data[size] != '\r' || data[size + 1] != '\n') return -1;
    int n = plain_events(data, data + size, reasoning);
    if (n <= 0) return -1;
    tokens += n;
    p = data + size + 2;
  }
  return tokens;
}


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

/* Ends the stream in hand: the poll stops (its fd leaves epoll now, before JS reads the socket again). */
static void deactivate(channel_t *c) {
  c->active = 0;
  uv_poll_stop(&c->poll);
  close(c->client_fd);
  c->client_fd = -1;
  if (c->cb != NULL) napi_delete_reference(c->addon->env, c->cb);
  c->cb = NULL;
}

/* Hands the stream back to JS: callback(reason, bytes | null, marks). */
static void hand_back(channel_t *c, int reason, const char *bytes, size_t len) {
  addon_t *a = c->addon;
  napi_env env = a->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value argv[3], cb, resource, result;
  napi_create_int32(env, reason, &argv[0]);
  if (bytes != NULL) napi_create_buffer_copy(env, len, bytes, NULL, &argv[1]);
  else napi_get_null(env, &argv[1]);
  argv[2] = marks_array(env, c);
  napi_get_reference_value(env, c->cb, &cb);
  napi_get_reference_value(env, a->async_resource, &resource);
  deactivate(c);
  /* make_callback, not call_function: JS's microtasks and nextTicks run after it, as after any I/O callback */
  if (napi_make_callback(env, a->async_ctx, resource, cb, 3, argv, &result) == napi_pending_exception) {
    napi_value err;
    napi_get_and_clear_last_exception(env, &err);
    napi_fatal_exception(env, err);
  }
  napi_close_handle_scope(env, scope);
}

/* The upstream is readable: forward its plain reads until it would block or a read is not plain. */
static void on_upstream(uv_poll_t *h, int status, int events) {
  channel_t *c = (channel_t *)h; /* the poll is the channel's first member */
  char *buf = c->addon->read_buf;
  (void)events;
  if (!c->active) return;
  if (status < 0) return hand_back(c, R_UP_CLOSED, NULL, 0);
  for (;;) {
    ssize_t n = read(c->fd, buf, READ_BYTES);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n <= 0) return hand_back(c, R_UP_CLOSED, NULL, 0);
    int tokens = plain_read(buf, (size_t)n, c->reasoning_special);
    if (tokens <= 0) return hand_back(c, R_HELD, buf, (size_t)n);
    size_t sent = 0;
    while (sent < (size_t)n) {
      ssize_t w = send(c->client_fd, buf + sent, (size_t)n - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w >= 0) sent += (size_t)w;
      else if (errno == EINTR) continue;
      else if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      else {
        mark(c, tokens);
        return hand_back(c, R_CLIENT, NULL, 0);
      }
    }
    mark(c, tokens);
    if (sent < (size_t)n) return hand_back(c, R_BLOCKED, buf + sent, (size_t)n - sent);
    if (n < READ_BYTES) return; /* a short read: the socket is drained */
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
  free(c->marks);
  free(c);
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
 * start(id, clientFd, reasoningSpecial, nowMs, callback) → 0, or a negative errno when it could not
 * start (nothing changed: the stream stays in JS). libuv must have stopped reading the upstream.
 */
static napi_value start(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5], out;
  addon_t *a;
  int32_t client_fd;
  bool reasoning;
  double now_ms;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_instance_data(env, (void **)&a));
  CHECK(napi_get_value_int32(env, argv[1], &client_fd));
  CHECK(napi_get_value_bool(env, argv[2], &reasoning));
  CHECK(napi_get_value_double(env, argv[3], &now_ms));
  channel_t *c = channel_of(env, a, argv[0]);
  int err = c == NULL ? -EBADF : c->active ? -EBUSY : 0;
  int dup_fd = err == 0 ? fcntl(client_fd, F_DUPFD_CLOEXEC, 0) : -1;
  if (err == 0 && dup_fd < 0) err = -errno;
  if (err == 0) err = uv_poll_start(&c->poll, UV_READABLE, on_upstream);
  if (err != 0) {
    if (dup_fd >= 0) close(dup_fd);
    CHECK(napi_create_int32(env, err, &out));
    return out;
  }
  c->client_fd = dup_fd;
  c->reasoning_special = reasoning;
  c->n_marks = 0;
  c->clock_offset_ms = now_ms - (double)uv_hrtime() / 1e6;
  c->active = 1;
  CHECK(napi_create_reference(env, argv[4], 1, &c->cb));
  CHECK(napi_create_int32(env, 0, &out));
  return out;
}

/* stop(id) → the marks so far (Float64Array), or null when no stream is in hand. No callback follows. */
static napi_value stop(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out;
  addon_t *a;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_instance_data(env, (void **)&a));
  channel_t *c = channel_of(env, a, argv[0]);
  if (c == NULL || !c->active) {
    CHECK(napi_get_null(env, &out));
    return out;
  }
  out = marks_array(env, c);
  deactivate(c);
  return out;
}

/* plainTokens(buffer, reasoningSpecial) → the read's token events or -1: the scan alone, for tests and fuzzing. */
static napi_value plain_tokens(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], out;
  void *data;
  size_t len;
  bool reasoning;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_buffer_info(env, argv[0], &data, &len));
  CHECK(napi_get_value_bool(env, argv[1], &reasoning));
  CHECK(napi_create_int32(env, plain_read(data, len, reasoning), &out));
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
    {"open", open_channel}, {"close", close_channel}, {"start", start}, {"stop", stop}, {"plainTokens", plain_tokens},
  };
  for (size_t i = 0; i < sizeof(fns) / sizeof(fns[0]); i++) {
    napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].fn, NULL, &fn);
    napi_set_named_property(env, exports, fns[i].name, fn);
  }
  return exports;
}
