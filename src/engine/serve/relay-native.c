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
 * Sockets. The upstream: JS stops libuv's reading of it (nothing may be queued to write), and its
 * fd joins one private epoll set per Node environment, itself watched by a single uv_poll: a stream
 * costs two epoll_ctl calls there, where a uv_poll per fd cost six syscalls (uv_poll_init checks the
 * fd by adding and removing it, sets O_NONBLOCK again, and closing it removes it once more). The
 * client: Node keeps reading it, so a hang-up or pipelined bytes are seen as on any other stream;
 * the relay writes through its own dup of the fd, so a socket Node closes meanwhile can never be
 * confused with a new one given the same number, and JS writes nothing while the relay holds it.
 */
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#define READ_BYTES (64 * 1024)
#define EVENTS 256

enum reason {
  R_HELD = 1,      /* a read that is not plain: JS takes it (the held bytes) */
  R_UP_CLOSED = 2, /* the upstream closed or failed: JS reads it again and sees why */
  R_CLIENT = 3,    /* a write to the client failed (it went away) */
  R_BLOCKED = 4,   /* the client's socket buffer is full: JS writes the unsent bytes and waits */
};

typedef struct relay {
  struct addon *addon;
  napi_ref cb;
  int up_fd, client_fd; /* client_fd is the relay's own dup */
  int reasoning_special;
  uint32_t slot, generation;
  /* per relayed read: its time (ms on JS's performance.now() clock) and its token events */
  double *marks;
  size_t n_marks, cap_marks;
  double clock_offset_ms;
} relay_t;

/*
 * Per Node environment (a worker thread loading the addon gets its own). Relays live in slots,
 * named in epoll by slot and generation, so an event still queued for a relay that stopped earlier
 * in the same batch finds nothing rather than freed memory; JS holds the same id as a number.
 */
typedef struct addon {
  napi_env env;
  napi_async_context async_ctx;
  napi_ref async_resource;
  int epfd;
  uv_poll_t poll;
  relay_t **slots;
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


static void mark(relay_t *r, int tokens) {
  if (r->n_marks + 2 > r->cap_marks) {
    size_t cap = r->cap_marks ? r->cap_marks * 2 : 64;
    double *m = realloc(r->marks, cap * sizeof(double));
    if (m == NULL) return; /* the counts go short; the bytes were relayed all the same */
    r->marks = m;
    r->cap_marks = cap;
  }
  r->marks[r->n_marks++] = (double)uv_hrtime() / 1e6 + r->clock_offset_ms;
  r->marks[r->n_marks++] = tokens;
}

/* The marks as a Float64Array: [time, tokens, time, tokens, …]. */
static napi_value marks_array(napi_env env, relay_t *r) {
  void *data;
  napi_value ab, arr;
  napi_create_arraybuffer(env, r->n_marks * sizeof(double), &data, &ab);
  if (r->n_marks) memcpy(data, r->marks, r->n_marks * sizeof(double));
  napi_create_typedarray(env, napi_float64_array, r->n_marks, ab, 0, &arr);
  return arr;
}

/* Leaves the fds (the upstream's epoll entry now, before JS reads it again) and frees the relay. */
static void release(relay_t *r) {
  addon_t *a = r->addon;
  epoll_ctl(a->epfd, EPOLL_CTL_DEL, r->up_fd, NULL);
  close(r->client_fd);
  a->slots[r->slot] = NULL;
  a->free_hint = r->slot;
  if (r->cb != NULL) napi_delete_reference(a->env, r->cb);
  free(r->marks);
  free(r);
}

/* Hands the stream back to JS: callback(reason, bytes | null, marks). */
static void hand_back(relay_t *r, int reason, const char *bytes, size_t len) {
  addon_t *a = r->addon;
  napi_env env = a->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value argv[3], cb, resource, result;
  napi_create_int32(env, reason, &argv[0]);
  if (bytes != NULL) napi_create_buffer_copy(env, len, bytes, NULL, &argv[1]);
  else napi_get_null(env, &argv[1]);
  argv[2] = marks_array(env, r);
  napi_get_reference_value(env, r->cb, &cb);
  napi_get_reference_value(env, a->async_resource, &resource);
  release(r);
  /* make_callback, not call_function: JS's microtasks and nextTicks run after it, as after any I/O callback */
  if (napi_make_callback(env, a->async_ctx, resource, cb, 3, argv, &result) == napi_pending_exception) {
    napi_value err;
    napi_get_and_clear_last_exception(env, &err);
    napi_fatal_exception(env, err);
  }
  napi_close_handle_scope(env, scope);
}

/* The upstream is readable: forward its plain reads until it would block or a read is not plain. */
static void relay_reads(relay_t *r) {
  char *buf = r->addon->read_buf;
  for (;;) {
    ssize_t n = read(r->up_fd, buf, READ_BYTES);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n <= 0) return hand_back(r, R_UP_CLOSED, NULL, 0);
    int tokens = plain_read(buf, (size_t)n, r->reasoning_special);
    if (tokens <= 0) return hand_back(r, R_HELD, buf, (size_t)n);
    size_t sent = 0;
    while (sent < (size_t)n) {
      ssize_t w = send(r->client_fd, buf + sent, (size_t)n - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w >= 0) sent += (size_t)w;
      else if (errno == EINTR) continue;
      else if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      else {
        mark(r, tokens);
        return hand_back(r, R_CLIENT, NULL, 0);
      }
    }
    mark(r, tokens);
    if (sent < (size_t)n) return hand_back(r, R_BLOCKED, buf + sent, (size_t)n - sent);
    if (n < READ_BYTES) return; /* a short read: the socket is drained */
  }
}

/* The private epoll set is readable: its ready upstreams, by slot and generation. */
static void on_epoll(uv_poll_t *h, int status, int events) {
  addon_t *a = h->data;
  struct epoll_event ev[EVENTS];
  (void)status;
  (void)events;
  int n = epoll_wait(a->epfd, ev, EVENTS, 0);
  for (int i = 0; i < n; i++) {
    uint32_t slot = (uint32_t)ev[i].data.u64, generation = (uint32_t)(ev[i].data.u64 >> 32);
    relay_t *r = slot < a->n_slots ? a->slots[slot] : NULL;
    if (r != NULL && r->generation == generation) relay_reads(r);
  }
}

#define CHECK(call)                                  \
  do {                                               \
    if ((call) != napi_ok) {                         \
      napi_throw_error(env, NULL, "relay: " #call); \
      return NULL;                                   \
    }                                                \
  } while (0)

/* The private epoll set and its uv_poll, made on first use; unref'd: it never keeps the process alive. */
static int ensure_epoll(addon_t *a) {
  if (a->epfd >= 0) return 0;
  uv_loop_t *loop;
  if (napi_get_uv_event_loop(a->env, &loop) != napi_ok) return UV_EINVAL;
  int fd = epoll_create1(EPOLL_CLOEXEC);
  if (fd < 0) return -errno;
  int err = uv_poll_init(loop, &a->poll, fd);
  if (err == 0) err = uv_poll_start(&a->poll, UV_READABLE, on_epoll);
  if (err != 0) {
    close(fd);
    return err;
  }
  a->poll.data = a;
  uv_unref((uv_handle_t *)&a->poll);
  a->epfd = fd;
  return 0;
}

/* JS names a relay by one number: generation × 2^20 + slot, exact in a double (slots stay below 2^20). */
#define SLOT_BITS 20
#define MAX_SLOTS (1u << SLOT_BITS)
#define GENERATIONS (1u << 30)

static int free_slot(addon_t *a) {
  if (a->free_hint < a->n_slots && a->slots[a->free_hint] == NULL) return (int)a->free_hint;
  for (uint32_t i = 0; i < a->n_slots; i++)
    if (a->slots[i] == NULL) return (int)i;
  if (a->n_slots >= MAX_SLOTS) return -1;
  uint32_t n = a->n_slots ? a->n_slots * 2 : 64;
  relay_t **s = realloc(a->slots, n * sizeof(relay_t *));
  if (s == NULL) return -1;
  memset(s + a->n_slots, 0, (n - a->n_slots) * sizeof(relay_t *));
  a->slots = s;
  int i = (int)a->n_slots;
  a->n_slots = n;
  return i;
}

/*
 * start(upstreamFd, clientFd, reasoningSpecial, nowMs, callback) → the relay's id (a number ≥ 0), or
 * a negative errno when it could not start (nothing changed: the stream stays in JS).
 */
static napi_value start(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5], out;
  addon_t *a;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_instance_data(env, (void **)&a));
  int32_t up_fd, client_fd;
  bool reasoning;
  double now_ms;
  CHECK(napi_get_value_int32(env, argv[0], &up_fd));
  CHECK(napi_get_value_int32(env, argv[1], &client_fd));
  CHECK(napi_get_value_bool(env, argv[2], &reasoning));
  CHECK(napi_get_value_double(env, argv[3], &now_ms));
  int err = ensure_epoll(a);
  int slot = err == 0 ? free_slot(a) : -1;
  relay_t *r = slot >= 0 ? calloc(1, sizeof(relay_t)) : NULL;
  int dup_fd = r != NULL ? fcntl(client_fd, F_DUPFD_CLOEXEC, 0) : -1;
  if (dup_fd < 0) {
    free(r);
    CHECK(napi_create_int32(env, err != 0 ? err : -ENOMEM, &out));
    return out;
  }
  r->addon = a;
  r->up_fd = up_fd;
  r->client_fd = dup_fd;
  r->reasoning_special = reasoning;
  r->slot = (uint32_t)slot;
  r->generation = a->generation = (a->generation + 1) % GENERATIONS;
  r->clock_offset_ms = now_ms - (double)uv_hrtime() / 1e6;
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = ((uint64_t)r->generation << 32) | r->slot};
  if (epoll_ctl(a->epfd, EPOLL_CTL_ADD, up_fd, &ev) != 0) {
    err = -errno;
    close(dup_fd);
    free(r);
    CHECK(napi_create_int32(env, err, &out));
    return out;
  }
  a->slots[slot] = r;
  CHECK(napi_create_reference(env, argv[4], 1, &r->cb));
  CHECK(napi_create_double(env, (double)r->generation * MAX_SLOTS + r->slot, &out));
  return out;
}

/* stop(id) → the marks so far (Float64Array), or null when the relay already handed back. No callback follows. */
static napi_value stop(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out;
  addon_t *a;
  double id;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_instance_data(env, (void **)&a));
  CHECK(napi_get_value_double(env, argv[0], &id));
  uint64_t v = id >= 0 ? (uint64_t)id : 0;
  uint32_t slot = (uint32_t)(v % MAX_SLOTS), generation = (uint32_t)(v / MAX_SLOTS);
  relay_t *r = slot < a->n_slots ? a->slots[slot] : NULL;
  if (r == NULL || r->generation != generation) {
    CHECK(napi_get_null(env, &out));
    return out;
  }
  out = marks_array(env, r);
  release(r);
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
  /* the environment is going away: its loop with it; relays still held leave their fds to it */
  if (a->epfd >= 0) {
    uv_close((uv_handle_t *)&a->poll, NULL);
    close(a->epfd);
  }
  /* the addon's memory stays: the closing poll handle lives in it until the loop's last turn */
}

NAPI_MODULE_INIT() {
  napi_value fn, name, resource;
  addon_t *a = calloc(1, sizeof(addon_t));
  if (a == NULL) return NULL;
  a->env = env;
  a->epfd = -1;
  napi_create_object(env, &resource);
  napi_create_reference(env, resource, 1, &a->async_resource);
  napi_create_string_utf8(env, "dsr.relay", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, resource, name, &a->async_ctx);
  napi_set_instance_data(env, a, free_addon, NULL);
  napi_create_function(env, "start", NAPI_AUTO_LENGTH, start, NULL, &fn);
  napi_set_named_property(env, exports, "start", fn);
  napi_create_function(env, "stop", NAPI_AUTO_LENGTH, stop, NULL, &fn);
  napi_set_named_property(env, exports, "stop", fn);
  napi_create_function(env, "plainTokens", NAPI_AUTO_LENGTH, plain_tokens, NULL, &fn);
  napi_set_named_property(env, exports, "plainTokens", fn);
  return exports;
}
