/*
 * sse.c - an embeddable Server-Sent Events server for Linux (MIT licence). See sse.h.
 *
 * What goes over the wire. A browser runs `new EventSource("/events?topic=time")`, which
 * sends a GET. We answer with one response that never ends:
 *
 *     HTTP/1.1 200 OK
 *     Content-Type: text/event-stream
 *     Cache-Control: no-cache, no-transform
 *     X-Accel-Buffering: no
 *
 *     retry: 3000                  <- reconnect after 3 s if the connection drops
 *
 *     id: 1763781645000001         <- remembered by the browser as its last event id
 *     event: time                  <- fires listeners of "time" (default type: "message")
 *     data: 2026-11-22T03:20:45Z   <- one data: line per line of the payload
 *                                  <- a blank line dispatches the event
 *     :                            <- a comment: the heartbeat that keeps proxies from
 *                                     closing a quiet connection
 *
 * When the connection drops the browser waits `retry` ms and asks again with the header
 * `Last-Event-ID: 1763781645000001`; we replay what it missed from a backlog.
 *
 * Map of this file. A section uses only what is above it, so it reads top to bottom.
 *
 * Part I, the core: a server on its own, with the in-memory backlog as its history. It
 * names no part; the parts reach it through its seams (section 6).
 *   1. Basics            limits, clock, logging, random numbers, byte buffers, event ids
 *   2. Wire format       UTF-8, event framing, the event-stream reader, JSON
 *   3. Events and topics shared reference-counted bytes, the topic table, the backlog
 *   4. HTTP parsing      request heads, percent-decoding, queries, Accept, tokens, dates
 *   5. Static files      path resolution that never leaves the root, content types
 *   6. Connections       per-client state; the seams (a handle's on_event, conn_ops, part_ops
 *                        for routes, /metrics rows, /healthz and loop hooks, history_ops for
 *                        Last-Event-ID and receipts); flow control, output queue, timers, closing
 *   7. Endpoints         responses, the stream (replay, reset, heartbeats), publishing,
 *                        metrics, static files
 *   8. Request dispatch  checking, decoding and routing a request; reading requests
 *   9. Inputs            publishing what arrives on a file descriptor
 *  10. The event loop    epoll, accepting, timers, the graceful stop
 * Part II, the parts, each behind its switch (sse.h, default on), plugged into the seams and
 * depending on the core only:
 *      The journal       SSE_ENABLE_JOURNAL: events on disk before they are acknowledged
 *      Redis Streams     SSE_ENABLE_REDIS: many servers, one history (a RESP2 client for
 *                        XADD and XREAD); Redis assigns the ids
 *      Proxy and relay   SSE_ENABLE_PROXY: upstream connections, unbuffered forwarding
 *      Authorization     SSE_ENABLE_AUTH: who may hear and publish what (SHA-256, HMAC, HS256
 *                        JWTs with their grants, --auth-url)
 * Part III, assembly:
 *  11. The public API    sse_server_new() plugs the enabled parts in
 * Sections 1 to 4 make no system calls but the clock and are unit-tested (tests/unit.c), as
 * are section 5's path rules, the journal's record format, the Redis reply reader, the
 * proxy's path, response-head and chunked-coding rules, and authorization's SHA-256, HMAC,
 * base64url, JSON reader and token verifier.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "sse.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <linux/sockios.h> /* SIOCOUTQ */

/* ==========================================================================================
 * 1. Basics
 *
 * Every buffer has a bound, named here. The design is measured by memory per idle subscriber
 * (a few hundred bytes): nothing is allocated per connection unless a request needs it.
 * ======================================================================================== */

#ifndef SSE_HEAD_MAX
#define SSE_HEAD_MAX 8192 /* request line plus headers; RFC 9112 suggests at least 8000 */
#endif
#ifndef SSE_MAX_HEADERS
#define SSE_MAX_HEADERS 64
#endif
#ifndef SSE_MAX_TOPICS_PER_STREAM
#define SSE_MAX_TOPICS_PER_STREAM 32
#endif
#ifndef SSE_RETIRED_MAX
#define SSE_RETIRED_MAX 4096 /* retired topics remembered; the oldest is forgotten first */
#endif

#define TOPIC_NAME_MAX      64          /* topic names are [A-Za-z0-9._-]{1,64} */
#define SSE_ID_MAX          512         /* longest upstream event id the relay keeps */
#define EVENT_TYPE_MAX      256         /* longest event: type we accept */
#define EVENT_BYTES_LIMIT   (64u << 20) /* the largest max_event_bytes one may configure */
#define QUERY_PARAMS_MAX    64          /* parameters in one query string */
#define WRITE_IOV_MAX       64          /* queued blobs handed to one sendmsg() */
#define ACCEPT_BATCH        64          /* accepts per wake-up, so accepting cannot starve others */
#define OVERFLOW_MAX        256         /* connections over max_clients held just to answer them */
#define FD_OWN              64          /* descriptors of our own: listener, epoll, journal... */
#define FD_RESERVE          320         /* OVERFLOW_MAX + FD_OWN, kept from max_clients' default */
#define DRAIN_MS            500         /* how long sse_stop() lets queued bytes go out */
#define LINGER_MS           2000        /* how long a closing connection may take to drain */
#define SEND_TIMEOUT_MS     60000       /* an ordinary response making no progress is dropped */
#define TCP_USER_TIMEOUT_MS 60000       /* unacknowledged data this old means the peer vanished */
#define INPUT_CHUNK         65536       /* bytes read from an input per wake-up */
#define NEVER_MS            (INT64_MAX / 4) /* a timer that never fires, yet adds to a clock */
/* The max_clients default keeps back a descriptor for each connection held over max_clients,
 * so the documented 200 + retry: can always be sent, and FD_OWN for the server's own: stdio,
 * listener, epoll, the spare, static root, journal (three), Redis (two), inputs, the host's. */
_Static_assert(FD_RESERVE == OVERFLOW_MAX + FD_OWN, "the reserve covers the over-limit answers");

/* FOR_PARTS marks the seams' helpers only parts call (unused without them: worth no warning);
 * PRINTF_LIKE has the compiler check a printf-style format. */
#if defined(__GNUC__)
#define FOR_PARTS            __attribute__((unused))
#define PRINTF_LIKE(fmt, va) __attribute__((format(printf, fmt, va)))
#else
#define FOR_PARTS
#define PRINTF_LIKE(fmt, va)
#endif

#define DEFAULT_TOPIC "default"

/* Milliseconds on the monotonic clock: immune to wall-clock jumps. */
static int64_t clock_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Where log lines go: the host's callback, or nowhere. */
struct logger {
    void (*fn)(enum sse_log_level level, const char *msg, void *user); /* NULL = silent */
    void *user;                                                        /* for fn */
    unsigned *depth; /* calls of fn under way (the API refuses re-entry from fn), or NULL */
};

PRINTF_LIKE(3, 4)
static void log_say(const struct logger *log, enum sse_log_level level, const char *fmt, ...) {
    if (!log->fn)
        return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (log->depth)
        ++*log->depth;
    log->fn(level, msg, log->user);
    if (log->depth)
        --*log->depth;
}

/* A small fast generator (splitmix64) for retry jitter and hash seeds; not for secrets. */
struct rng {
    uint64_t state; /* advanced by every draw */
};

static uint64_t rng_next(struct rng *r) {
    uint64_t z = (r->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* A counting writer: bytes go into p[0..cap) while they fit, len counts what was asked for,
 * so every formatter can size its output with a first pass. */
struct wbuf {
    char *p;    /* output, may be NULL when cap is 0 */
    size_t cap; /* bytes available at p */
    size_t len; /* bytes asked for so far; the output is complete when len <= cap */
};

static void wb_put(struct wbuf *w, const void *s, size_t n) {
    if (n && w->len <= w->cap && n <= w->cap - w->len)
        memcpy(w->p + w->len, s, n);
    w->len += n;
}

static void wb_str(struct wbuf *w, const char *s) {
    wb_put(w, s, strlen(s));
}

static void wb_u64(struct wbuf *w, uint64_t v) {
    char digits[20];
    size_t n = 0;
    do {
        digits[sizeof digits - ++n] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    wb_put(w, digits + sizeof digits - n, n);
}

/* Parses ASCII digits only (no sign, no space) into *out; false on anything else, overflow. */
static bool parse_u64(const char *s, size_t len, uint64_t *out) {
    if (len == 0 || len > 20)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

static bool ascii_alnum(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static char ascii_lower(char c) {
    return c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
}

/* Case-insensitive comparison of two byte ranges (ASCII letters only). */
static bool ascii_ieq_range(const char *a, size_t alen, const char *b, size_t blen) {
    if (alen != blen)
        return false;
    for (size_t i = 0; i < alen; i++)
        if (ascii_lower(a[i]) != ascii_lower(b[i]))
            return false;
    return true;
}

/* Case-insensitive comparison of a byte range with a NUL-terminated ASCII string. */
static bool ascii_ieq(const char *s, size_t len, const char *lit) {
    return ascii_ieq_range(s, len, lit, strlen(lit));
}

static bool bytes_eq(const char *s, size_t len, const char *lit) {
    return len == strlen(lit) && memcmp(s, lit, len) == 0;
}

/* ==========================================================================================
 * 2. Wire format (WHATWG HTML, "Server-sent events", 9.2.5 and 9.2.6)
 *
 * The stream is UTF-8, made of lines ended by CRLF, LF or a lone CR. A line "name: value"
 * sets a field (one space after the colon is dropped), a line starting with ":" is a
 * comment, a blank line dispatches the event. So the server must:
 *   - split a payload on all three line ends and send one "data:" line per line;
 *   - keep CR, LF (and for ids NUL) out of id and event values, where they would end the
 *     line early and let a publisher forge fields;
 *   - end every event with a blank line (an unterminated event is dropped at end of stream).
 * Payloads must be valid UTF-8: a browser would silently turn bad bytes into U+FFFD.
 * ======================================================================================== */

/* Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above U+10FFFF. */
static bool wire_utf8_valid(const char *s, size_t len) {
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    while (p < end) {
        unsigned c = *p;
        size_t n = c < 0x80 ? 0 : c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : 1; /* continuation bytes */
        if ((n && (c < 0xC2 || c > 0xF4)) || (size_t)(end - p) <= n)
            return false;
        uint32_t cp = c & (0x3Fu >> n);
        for (size_t i = 1; i <= n; i++) {
            if ((p[i] & 0xC0) != 0x80)
                return false;
            cp = cp << 6 | (p[i] & 0x3F);
        }
        if ((n == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (n == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
            return false;
        p += n + 1;
    }
    return true;
}

/* Topic names are our own rule: safe unescaped in a URL path, a log line, a metric label. */
static bool wire_topic_valid(const char *s, size_t len) {
    if (len == 0 || len > TOPIC_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!ascii_alnum(s[i]) && s[i] != '.' && s[i] != '_' && s[i] != '-')
            return false;
    return true;
}

/* An event type becomes one "event:" line: no line ends, no NUL, valid UTF-8, bounded. */
static bool wire_event_type_valid(const char *s, size_t len) {
    return len && len <= EVENT_TYPE_MAX && !memchr(s, '\r', len) && !memchr(s, '\n', len) &&
           !memchr(s, '\0', len) && wire_utf8_valid(s, len);
}

/* Whether s[0..len) ends with a blank line (CRLF, LF or CR after another line end), so the
 * last event in it is complete and nothing the server queues next is read as part of it. */
static bool wire_ends_event(const char *s, size_t len) {
    if (len && s[len - 1] == '\n')
        len -= len > 1 && s[len - 2] == '\r' ? 2 : 1;
    else if (len && s[len - 1] == '\r')
        len--;
    else
        return false;
    return len && (s[len - 1] == '\n' || s[len - 1] == '\r');
}

/* Writes "name: value\n", or "name:\n" for an empty value. */
static void wire_field(struct wbuf *w, const char *name, const char *value, size_t len) {
    wb_str(w, name);
    wb_put(w, ":", 1);
    if (len) {
        wb_put(w, " ", 1);
        wb_put(w, value, len);
    }
    wb_put(w, "\n", 1);
}

/* One data: line per payload line; CRLF, LF and a lone CR end one, as in the client's parser. */
static void wire_data_lines(struct wbuf *w, const char *data, size_t len) {
    size_t start = 0;
    for (size_t i = 0;; i++) {
        if (i < len && data[i] != '\r' && data[i] != '\n')
            continue;
        wire_field(w, "data", data + start, i - start);
        if (i >= len)
            break;
        if (data[i] == '\r' && i + 1 < len && data[i + 1] == '\n')
            i++;
        start = i + 1;
    }
}

/* An event with its id already as text (idlen 0: no id line); see sse_format_event(). */
static size_t wire_format_event(char *buf, size_t cap, const char *id, size_t idlen,
                                const char *event, const char *data, size_t len) {
    struct wbuf w = {buf, buf ? cap : 0, 0};
    size_t elen = event ? strlen(event) : 0;
    if (event && (elen == 0 || memchr(event, '\r', elen) || memchr(event, '\n', elen)))
        return 0;
    if (idlen)
        wire_field(&w, "id", id, idlen);
    if (event)
        wire_field(&w, "event", event, elen);
    wire_data_lines(&w, data ? data : "", data ? len : 0);
    wb_put(&w, "\n", 1);
    return w.len;
}

size_t sse_format_event(char *buf, size_t cap, uint64_t id, const char *event, const char *data,
                        size_t len) {
    char text[24];
    struct wbuf w = {text, sizeof text, 0};
    if (id)
        wb_u64(&w, id);
    return wire_format_event(buf, cap, text, w.len, event, data, len);
}

/* Event ids. A server on its own numbers events in decimal, seeded from the clock so a restart
 * goes on above the last run. Inside, an id is a uint64 "key" that orders events; a history may
 * spell keys its own way (history_ops.format_id). Only canonical text (no sign, no leading
 * zeros) is accepted, so each key has exactly one spelling. */
static bool id_decimal(const char *s, size_t len, uint64_t *out) {
    return (len == 1 || (len > 1 && s[0] != '0')) && parse_u64(s, len, out);
}

/* A JSON string literal for any bytes: quotes, backslashes and controls escaped, non-UTF-8
 * bytes replaced by U+FFFD, so the result is always valid UTF-8 and valid JSON. */
static void wire_json_string(struct wbuf *w, const char *s, size_t len) {
    wb_put(w, "\"", 1);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        size_t n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2; /* bytes of a multi-byte sequence */
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            wb_put(w, esc, 2);
        } else if (c < 0x20 || c == 0x7F) {
            char esc[7];
            snprintf(esc, sizeof esc, "\\u%04x", c);
            wb_put(w, esc, 6);
        } else if (c < 0x80) {
            wb_put(w, s + i, 1);
        } else if (i + n <= len && wire_utf8_valid(s + i, n)) {
            wb_put(w, s + i, n);
            i += n - 1;
        } else {
            wb_str(w, "\\ufffd");
        }
    }
    wb_put(w, "\"", 1);
}

/* The reader for inputs (sse_publish_from_fd): bytes in, events out, incrementally.
 * SSE_INPUT_LINES: each LF-ended line (one CR before the LF dropped) is an event.
 * SSE_INPUT_SSE: the WHATWG line processing, with "topic" as one more field; "data" appends
 * a line, a blank line dispatches when data was seen, "id" and "retry" are ignored because
 * the server assigns ids. Bounded: a line or an event over max_data is skipped and reported. */
typedef void (*wire_emit_fn)(void *ctx, const char *topic, const char *event, const char *data,
                             size_t len, const char *skipped);

struct wire_reader {
    enum sse_input_format format;   /* lines or text/event-stream blocks */
    size_t max_data;                /* largest payload; longer lines or blocks are skipped */
    char *line;                     /* the line being collected (heap, to the feed's limit) */
    size_t line_len;                /* bytes in line */
    size_t line_cap;                /* allocated bytes at line */
    bool line_too_long;             /* the current line went over; skip to its end */
    bool after_cr;                  /* last byte was CR: a following LF belongs to it */
    char *data;                     /* SSE: data buffer of the block (heap) */
    size_t data_len;                /* bytes in data, with a LF after every line */
    size_t data_cap;                /* allocated bytes at data */
    bool has_data;                  /* SSE: the block had a data field */
    const char *block_error;        /* SSE: why this block will be skipped, or NULL */
    char event[EVENT_TYPE_MAX + 1]; /* SSE: event type of the block, "" = default */
    char topic[TOPIC_NAME_MAX + 1]; /* SSE: topic of the block, "" = default */
    bool whatwg;                    /* read as an EventSource does (the relay): id, retry count,
                                       topic is unknown */
    uint8_t bom_seen;               /* SSE: BOM bytes matched at the start; 4 = past it */
    char id_buf[SSE_ID_MAX + 1];    /* whatwg: the last event ID buffer */
    char last_id[SSE_ID_MAX + 1];   /* whatwg: the last event ID string, set at dispatch */
    int64_t retry_ms;               /* whatwg: reconnection time from retry:, -1 = none */
};

static void wire_reader_init(struct wire_reader *r, enum sse_input_format format, size_t max_data) {
    *r = (struct wire_reader){.format = format, .max_data = max_data, .retry_ms = -1};
}

static void wire_reader_free(struct wire_reader *r) {
    free(r->line);
    free(r->data);
    r->line = r->data = NULL;
}

/* Appends n bytes to a growing heap buffer, never past limit. False when it would. */
static bool wire_grow_append(char **buf, size_t *len, size_t *cap, const char *s, size_t n,
                             size_t limit) {
    if (n > limit || *len > limit - n)
        return false;
    if (n == 0)
        return true;
    if (*len + n > *cap) {
        size_t ncap = *cap ? *cap : 256;
        while (ncap < *len + n)
            ncap *= 2;
        if (ncap > limit)
            ncap = limit;
        char *p = realloc(*buf, ncap);
        if (!p)
            return false;
        *buf = p;
        *cap = ncap;
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    return true;
}

static void wire_reset_block(struct wire_reader *r) {
    r->data_len = 0;
    r->has_data = false;
    r->block_error = NULL;
    r->event[0] = r->topic[0] = '\0';
}

/* Handles one complete line of a text/event-stream input. */
static void wire_sse_line(struct wire_reader *r, const char *line, size_t len, wire_emit_fn emit,
                          void *ctx) {
    if (len == 0) {
        if (r->whatwg) /* dispatch step 1: even without data the id takes effect */
            memcpy(r->last_id, r->id_buf, sizeof r->last_id);
        if (r->has_data) {
            if (r->block_error)
                emit(ctx, NULL, NULL, NULL, 0, r->block_error);
            else
                emit(ctx, r->topic[0] ? r->topic : NULL, r->event[0] ? r->event : NULL, r->data,
                     r->data_len - 1, NULL);
        }
        wire_reset_block(r);
        return;
    }
    if (line[0] == ':')
        return;
    const char *colon = memchr(line, ':', len);
    size_t name_len = colon ? (size_t)(colon - line) : len;
    const char *value = colon ? colon + 1 : line + len;
    size_t vlen = colon ? len - name_len - 1 : 0;
    if (vlen && value[0] == ' ') {
        value++;
        vlen--;
    }
    if (bytes_eq(line, name_len, "data")) {
        r->has_data = true;
        if (!r->block_error &&
            (!wire_grow_append(&r->data, &r->data_len, &r->data_cap, value, vlen,
                               r->max_data + 1) ||
             !wire_grow_append(&r->data, &r->data_len, &r->data_cap, "\n", 1, r->max_data + 1)))
            r->block_error = "event over max_event_bytes";
    } else if (bytes_eq(line, name_len, "event")) {
        if (vlen && !wire_event_type_valid(value, vlen))
            r->block_error = "invalid event type";
        else {
            memcpy(r->event, value, vlen);
            r->event[vlen] = '\0';
        }
    } else if (r->whatwg && bytes_eq(line, name_len, "id")) {
        if (!memchr(value, '\0', vlen) && vlen <= SSE_ID_MAX) { /* NUL: ignore the field */
            memcpy(r->id_buf, value, vlen);
            r->id_buf[vlen] = '\0';
        }
    } else if (r->whatwg && bytes_eq(line, name_len, "retry")) {
        uint64_t ms;
        if (parse_u64(value, vlen, &ms)) /* only ASCII digits count */
            r->retry_ms = ms > INT32_MAX ? INT32_MAX : (int64_t)ms;
    } else if (!r->whatwg && bytes_eq(line, name_len, "topic")) {
        if (vlen && !wire_topic_valid(value, vlen))
            r->block_error = "invalid topic name";
        else {
            memcpy(r->topic, value, vlen);
            r->topic[vlen] = '\0';
        }
    }
}

/* A line is complete: hand it on according to the format. */
static void wire_line_done(struct wire_reader *r, wire_emit_fn emit, void *ctx) {
    if (r->format == SSE_INPUT_LINES && r->line_len > r->max_data)
        r->line_too_long = true; /* it had room for a CR that turned out not to end it */
    if (r->line_too_long) {
        if (r->format == SSE_INPUT_LINES)
            emit(ctx, NULL, NULL, NULL, 0, "line over max_event_bytes");
        else
            r->block_error = "line over max_event_bytes";
    } else if (r->format == SSE_INPUT_LINES) {
        emit(ctx, NULL, NULL, r->line ? r->line : "", r->line_len, NULL);
    } else {
        wire_sse_line(r, r->line ? r->line : "", r->line_len, emit, ctx);
    }
    r->line_len = 0;
    r->line_too_long = false;
}

/* Feeds bytes; calls emit for every event completed (or skipped, with a reason). */
static void wire_reader_feed(struct wire_reader *r, const char *buf, size_t len, wire_emit_fn emit,
                             void *ctx) {
    /* WHATWG 9.2.6: the UTF-8 decode drops one leading BOM (a file saved by an editor that
     * writes one must not lose its first block), in a relay's stream and --stdin-format sse
     * alike. It may arrive split. */
    static const char bom[3] = {'\xEF', '\xBB', '\xBF'};
    while (r->format == SSE_INPUT_SSE && r->bom_seen < sizeof bom && len) {
        if (buf[0] == bom[r->bom_seen]) {
            buf++;
            len--;
            r->bom_seen = r->bom_seen == 2 ? 4 : (uint8_t)(r->bom_seen + 1);
            continue;
        }
        uint8_t matched = r->bom_seen;
        r->bom_seen = 4;
        wire_reader_feed(r, bom, matched, emit, ctx); /* not a BOM after all */
    }
    bool sse = r->format == SSE_INPUT_SSE;
    /* A text/event-stream line is a field name and its value: room for "data: " and a whole
     * payload, and for the longest id or event type even when max_data is tiny (an id line
     * over the bound would spoil every event of a relayed stream). */
    size_t limit =
        sse ? (r->max_data > SSE_ID_MAX ? r->max_data : SSE_ID_MAX) + 8 : r->max_data + 1;
    size_t i = 0;
    while (i < len) {
        if (r->after_cr) {
            r->after_cr = false;
            if (buf[i] == '\n') {
                i++;
                continue;
            }
        }
        size_t j = i; /* in the lines format a CR ends nothing: it is dropped before an LF */
        while (j < len && buf[j] != '\n' && (buf[j] != '\r' || !sse))
            j++;
        if (!r->line_too_long &&
            !wire_grow_append(&r->line, &r->line_len, &r->line_cap, buf + i, j - i, limit))
            r->line_too_long = true;
        if (j == len)
            break;
        if (buf[j] == '\r')
            r->after_cr = true;
        else if (!sse && r->line_len && r->line[r->line_len - 1] == '\r')
            r->line_len--;
        wire_line_done(r, emit, ctx);
        i = j + 1;
    }
}

/* End of input: a last line without LF counts in the lines format; an unterminated block is
 * dropped, as the WHATWG parser drops it. */
static void wire_reader_finish(struct wire_reader *r, wire_emit_fn emit, void *ctx) {
    if (r->format == SSE_INPUT_LINES && (r->line_len || r->line_too_long)) {
        if (r->line_len && r->line[r->line_len - 1] == '\r')
            r->line_len--;
        wire_line_done(r, emit, ctx);
    }
    r->line_len = 0;
    wire_reset_block(r);
}

/* ==========================================================================================
 * 3. Events, topics and the backlog
 *
 * An event is formatted once, into a "blob": reference-counted bytes every subscriber's output
 * queue points at, so a fan-out to ten thousand subscribers costs pointers, not copies. Blobs
 * carry everything else a connection sends too (heads, heartbeats): one output path serves all.
 *
 * Ids increase strictly across all topics, so one Last-Event-ID describes a position in a
 * multi-topic stream. The backlog keeps the last N events of all topics for replay
 * (WHATWG 9.2.4: the client sends Last-Event-ID when it reconnects).
 * ======================================================================================== */

struct topic;

struct blob {
    uint32_t refs;       /* owners: the backlog, output queues, server caches */
    uint32_t len;        /* bytes at bytes[] */
    uint64_t id;         /* the event id; 0 when these bytes are not an event */
    struct topic *topic; /* the event's topic (one reference held); NULL if not an event */
    char bytes[];        /* what goes on the wire */
};

/* A chained hash table whose entries start with a struct hash_node: the topics by name, the
 * addresses served. Its seed is random, so keys cannot be chosen to collide. The chains
 * double when there are as many entries as chains, and halve (down to 64) below a quarter,
 * so what a flood grew is given back. */
struct hash_node {
    struct hash_node *next; /* next in the chain */
    uint32_t hash;          /* of the key, with the table's seed */
};

struct hash_table {
    struct hash_node **buckets; /* chains; nbuckets is a power of two */
    uint32_t nbuckets;          /* allocated chains */
    uint32_t count;             /* entries */
    uint32_t seed;              /* random */
};

static uint32_t hash_bytes(uint32_t seed, const void *key, size_t len) {
    uint32_t h = 2166136261u ^ seed; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ ((const unsigned char *)key)[i]) * 16777619u;
    return h;
}

/* The chain where entries of hash h are, or NULL in an empty table. */
static struct hash_node *hash_chain(const struct hash_table *t, uint32_t h) {
    return t->nbuckets ? t->buckets[h & (t->nbuckets - 1)] : NULL;
}

/* Rehashes into n chains (a power of two). False when out of memory. */
static bool hash_resize(struct hash_table *t, uint32_t n) {
    struct hash_node **b = calloc(n, sizeof *b);
    if (!b)
        return false;
    for (uint32_t i = 0; i < t->nbuckets; i++) {
        for (struct hash_node *e = t->buckets[i], *next; e; e = next) {
            next = e->next;
            e->next = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
        }
    }
    free(t->buckets);
    t->buckets = b;
    t->nbuckets = n;
    return true;
}

/* Links e (its hash set), growing the table first if full. False when out of memory. */
static bool hash_insert(struct hash_table *t, struct hash_node *e) {
    if (t->count >= t->nbuckets && !hash_resize(t, t->nbuckets ? t->nbuckets * 2 : 64))
        return false;
    struct hash_node **chain = &t->buckets[e->hash & (t->nbuckets - 1)];
    e->next = *chain;
    *chain = e;
    t->count++;
    return true;
}

static void hash_remove(struct hash_table *t, struct hash_node *e) {
    struct hash_node **pp = &t->buckets[e->hash & (t->nbuckets - 1)];
    while (*pp != e)
        pp = &(*pp)->next;
    *pp = e->next;
    t->count--;
    if (t->nbuckets > 64 && t->count < t->nbuckets / 4)
        hash_resize(t, t->nbuckets / 2); /* (kept as is if out of memory) */
}

/* A subscriber's membership in one topic: a node in the topic's list of subscribers. */
struct conn;
struct sub {
    struct sub *prev, *next; /* neighbours in topic->subs */
    struct topic *topic;     /* the topic (one reference held) */
    struct conn *conn;       /* the subscriber */
};

struct topic_table;
struct topic {
    struct hash_node node;     /* in the topic table, by name; first */
    struct topic_table *table; /* the table it lives in, to unlink itself */
    struct sub *subs;          /* subscribers, newest first */
    uint32_t refs;             /* subscriptions + events + 1 while retired */
    uint32_t retire_seq;       /* while retired: its retirement's number (its ring slot) */
    bool retired;              /* new subscriptions get 204 until the next publish */
    char name[TOPIC_NAME_MAX + 1];
};

/* Topics live while a subscription, an event (in the backlog or a queue) or retirement holds
 * them. Retirements are bounded by SSE_RETIRED_MAX, the oldest forgotten first (freeing its
 * topic if nothing else holds it), so a flood of DELETEs on new names costs bounded memory. */
struct topic_table {
    struct hash_table names; /* the topics */
    struct topic **retired;  /* ring of the last SSE_RETIRED_MAX retirements: each slot holds
                                its topic's reference, NULL once published to again; lazy */
    uint32_t retired_head;   /* slot of the oldest retirement */
    uint32_t nretired;       /* slots in use from retired_head, NULL ones included */
    uint32_t retire_seq;     /* retirements so far: the newest slot's number */
};

static struct blob *blob_new(size_t len) {
    if (len > UINT32_MAX)
        return NULL;
    struct blob *b = malloc(sizeof *b + len);
    if (b)
        *b = (struct blob){.refs = 1, .len = (uint32_t)len};
    return b;
}

/* A blob holding a copy of s[0..len). */
static struct blob *blob_from(const char *s, size_t len) {
    struct blob *b = blob_new(len);
    if (b)
        memcpy(b->bytes, s, len);
    return b;
}

static struct blob *blob_ref(struct blob *b) {
    b->refs++;
    return b;
}

static void topic_unref(struct topic *t);

static void blob_unref(struct blob *b) {
    if (b && --b->refs == 0) {
        if (b->topic)
            topic_unref(b->topic);
        free(b);
    }
}

static struct topic *topic_find(struct topic_table *tt, const char *name, size_t len) {
    uint32_t h = hash_bytes(tt->names.seed, name, len);
    for (struct hash_node *e = hash_chain(&tt->names, h); e; e = e->next)
        if (e->hash == h && bytes_eq(name, len, ((struct topic *)e)->name))
            return (struct topic *)e;
    return NULL;
}

/* Finds or creates a valid-named topic and takes a reference; NULL when out of memory. */
static struct topic *topic_get(struct topic_table *tt, const char *name, size_t len) {
    struct topic *t = topic_find(tt, name, len);
    if (t) {
        t->refs++;
        return t;
    }
    if (!(t = malloc(sizeof *t)))
        return NULL;
    *t = (struct topic){.node.hash = hash_bytes(tt->names.seed, name, len), .table = tt, .refs = 1};
    memcpy(t->name, name, len);
    if (!hash_insert(&tt->names, &t->node)) {
        free(t);
        return NULL;
    }
    return t;
}

/* Drops a reference; the last one unlinks and frees the topic. */
static void topic_unref(struct topic *t) {
    if (--t->refs)
        return;
    hash_remove(&t->table->names, &t->node);
    free(t);
}

/* Ring slot of a retired topic: its retirement's number counted from the oldest slot's
 * (unsigned arithmetic: numbers may wrap, the ring is far smaller). */
static struct topic **topic_retired_slot(struct topic_table *tt, const struct topic *t) {
    uint32_t oldest = tt->retire_seq - tt->nretired + 1;
    return &tt->retired[(tt->retired_head + (t->retire_seq - oldest)) % SSE_RETIRED_MAX];
}

/* Marks a topic retired (held by the ring's newest slot) or live again (its slot let go,
 * which may free it); past SSE_RETIRED_MAX the oldest retirement is forgotten. False only
 * when retiring needs the ring and there is no memory for it. */
static bool topic_retire_flag(struct topic *t, bool retired) {
    struct topic_table *tt = t->table;
    if (t->retired == retired)
        return true;
    if (!retired) {
        struct topic **slot = topic_retired_slot(tt, t);
        *slot = NULL;
        t->retired = false;
        topic_unref(t);
        return true;
    }
    if (!tt->retired && !(tt->retired = malloc(SSE_RETIRED_MAX * sizeof *tt->retired)))
        return false;
    if (tt->nretired == SSE_RETIRED_MAX) {
        struct topic *old = tt->retired[tt->retired_head];
        tt->retired_head = (tt->retired_head + 1) % SSE_RETIRED_MAX;
        tt->nretired--;
        if (old) {
            old->retired = false;
            topic_unref(old);
        }
    }
    t->retired = true;
    t->retire_seq = ++tt->retire_seq;
    t->refs++;
    tt->retired[(tt->retired_head + tt->nretired++) % SSE_RETIRED_MAX] = t;
    return true;
}

/* The backlog: a ring of the last events, oldest at head, bounded twice: at most cap events
 * and max_bytes bytes (a blob's len: the event as it goes on the wire). Ids in it increase
 * but need not be consecutive, and every event published after `base` is in it, so a client
 * whose last id is base or later is replayed exactly. */
struct backlog {
    struct blob **ring; /* cap slots */
    uint32_t cap;       /* 0 = replay disabled */
    uint32_t head;      /* index of the oldest event */
    uint32_t count;     /* events held */
    uint64_t base;      /* the id just before the oldest event held */
    size_t bytes;       /* sum of the len of the events held */
    size_t max_bytes;   /* bytes may not pass this: the oldest events go first */
};

static struct blob *backlog_at(const struct backlog *bl, uint32_t i) {
    return bl->ring[(bl->head + i) % bl->cap];
}

/* Evicts the oldest event; base moves up to its id, so a resume from before it is a reset. */
static void backlog_evict(struct backlog *bl) {
    struct blob *old = bl->ring[bl->head];
    bl->base = old->id;
    bl->bytes -= old->len;
    blob_unref(old);
    bl->head = (bl->head + 1) % bl->cap;
    bl->count--;
}

/* Adds an event (prev: the id published just before it), evicting the oldest while either
 * bound would be passed. An event over max_bytes alone is not kept: the backlog is left
 * empty with base at its id, so only a client that has it already resumes exactly. */
static void backlog_push(struct backlog *bl, struct blob *ev, uint64_t prev) {
    if (!bl->cap)
        return;
    if (bl->count == 0)
        bl->base = prev;
    while (bl->count && (bl->count == bl->cap || bl->bytes + ev->len > bl->max_bytes))
        backlog_evict(bl);
    if (ev->len > bl->max_bytes) {
        bl->base = ev->id;
        return;
    }
    bl->ring[(bl->head + bl->count) % bl->cap] = blob_ref(ev);
    bl->count++;
    bl->bytes += ev->len;
}

/* Index of the first retained event with an id greater than id (count if none). */
static uint32_t backlog_after(const struct backlog *bl, uint64_t id) {
    uint32_t lo = 0, hi = bl->count;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (backlog_at(bl, mid)->id <= id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Whether replay from last id `last` is exact: nothing after it was evicted. */
static bool backlog_covers(const struct backlog *bl, uint64_t last, uint64_t current) {
    return last == current || (last < current && bl->count && last >= bl->base);
}

static void backlog_free(struct backlog *bl) {
    for (uint32_t i = 0; i < bl->count; i++)
        blob_unref(backlog_at(bl, i));
    free(bl->ring);
    memset(bl, 0, sizeof *bl);
}

/* ==========================================================================================
 * 4. HTTP parsing (RFC 9110, RFC 9112)
 *
 * Written for hostile input: the parser is stateless, allocates nothing, returns views into
 * the caller's buffer, and refuses all RFC 9112 lets a server refuse where accepting it has
 * led to request smuggling elsewhere: bare CR, obs-fold lines, spaces before a header's
 * colon, control characters. A line may end in CRLF or a lone LF (RFC 9112 2.2 allows it).
 * ======================================================================================== */

struct http_header {
    const char *name;  /* field name as sent */
    size_t name_len;   /* bytes at name */
    const char *value; /* field value without surrounding whitespace */
    size_t value_len;  /* bytes at value */
};

struct http_request {
    const char *method; /* token, e.g. "GET" */
    size_t method_len;
    const char *target; /* request-target as sent (not decoded) */
    size_t target_len;
    int minor;          /* HTTP/1.<minor> */
    size_t num_headers; /* used entries of headers */
    struct http_header headers[SSE_MAX_HEADERS];
};

enum {
    HTTP_INCOMPLETE = 0,  /* need more bytes */
    HTTP_BAD = -1,        /* malformed: 400 */
    HTTP_TOO_LARGE = -2,  /* too many headers: 431 */
    HTTP_BAD_VERSION = -3 /* well-formed, but not HTTP/1.0 or 1.1: 505 */
};

/* tchar (RFC 9110 5.6.2): the characters of methods and field names. */
static bool http_is_tchar(unsigned char c) {
    return ascii_alnum((char)c) || (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* Offset just past the blank line that ends a head, searching from `from`; 0 if absent. */
static size_t http_head_end(const char *buf, size_t len, size_t from) {
    for (size_t i = from; i < len; i++) {
        if (buf[i] != '\n')
            continue;
        if (i + 1 < len && buf[i + 1] == '\n')
            return i + 2;
        if (i + 2 < len && buf[i + 1] == '\r' && buf[i + 2] == '\n')
            return i + 3;
    }
    return 0;
}

/* The next line in [*pos, end): its start and length without CRLF/LF. */
static const char *http_next_line(const char *buf, size_t *pos, size_t end, size_t *len) {
    const char *line = buf + *pos;
    const char *lf = memchr(line, '\n', end - *pos);
    size_t n = lf ? (size_t)(lf - line) : end - *pos;
    *pos += n + (lf ? 1 : 0);
    if (n && line[n - 1] == '\r')
        n--;
    *len = n;
    return line;
}

static int http_parse_request_line(const char *s, size_t len, struct http_request *req) {
    size_t i = 0;
    while (i < len && http_is_tchar((unsigned char)s[i]))
        i++;
    if (i == 0 || i >= len || s[i] != ' ')
        return HTTP_BAD;
    req->method = s;
    req->method_len = i++;
    size_t t = i;
    while (i < len && s[i] > 0x20 && s[i] < 0x7F)
        i++;
    if (i == t || i >= len || s[i] != ' ')
        return HTTP_BAD;
    req->target = s + t;
    req->target_len = i - t;
    i++;
    const char *v = s + i;
    if (len - i != 8 || memcmp(v, "HTTP/", 5) != 0 || v[5] < '0' || v[5] > '9' || v[6] != '.' ||
        v[7] < '0' || v[7] > '9')
        return HTTP_BAD;
    if (v[5] != '1' || v[7] > '1')
        return HTTP_BAD_VERSION;
    req->minor = v[7] - '0';
    return 0;
}

static int http_parse_header_line(const char *s, size_t len, struct http_header *h) {
    size_t i = 0;
    while (i < len && http_is_tchar((unsigned char)s[i]))
        i++;
    if (i == 0 || i >= len || s[i] != ':')
        return HTTP_BAD; /* also catches obs-fold and whitespace before the colon */
    h->name = s;
    h->name_len = i++;
    while (i < len && (s[i] == ' ' || s[i] == '\t'))
        i++;
    size_t start = i, end = i;
    for (; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c != '\t' && (c < 0x20 || c == 0x7F))
            return HTTP_BAD; /* CR, NUL and other controls */
        if (c != ' ' && c != '\t')
            end = i + 1;
    }
    h->value = s + start;
    h->value_len = end - start;
    return 0;
}

/* The header lines of a head from pos to its end (the empty line that ends it). Returns the
 * head's length, HTTP_BAD or HTTP_TOO_LARGE (more than SSE_MAX_HEADERS). */
static long http_parse_headers(const char *buf, size_t pos, size_t end, struct http_header *h,
                               size_t *n) {
    *n = 0;
    for (;;) {
        size_t len;
        const char *line = http_next_line(buf, &pos, end, &len);
        if (len == 0)
            return pos == end ? (long)end : HTTP_BAD;
        if (*n == SSE_MAX_HEADERS)
            return HTTP_TOO_LARGE;
        if (http_parse_header_line(line, len, &h[(*n)++]))
            return HTTP_BAD;
    }
}

/* Parses a request head in buf[0..len). Returns the head's length (> 0) when complete, or
 * HTTP_INCOMPLETE, HTTP_BAD, HTTP_TOO_LARGE, HTTP_BAD_VERSION. Views in *req point into buf.
 * Empty lines before the request line are skipped (RFC 9112 2.2). */
static long http_parse_request(const char *buf, size_t len, struct http_request *req) {
    size_t pos = 0;
    while (pos < len && (buf[pos] == '\n' || buf[pos] == '\r')) {
        if (buf[pos] == '\r' && (pos + 1 >= len || buf[pos + 1] != '\n'))
            return pos + 1 >= len ? HTTP_INCOMPLETE : HTTP_BAD;
        pos += buf[pos] == '\r' ? 2 : 1;
    }
    size_t end = http_head_end(buf, len, pos);
    if (!end)
        return HTTP_INCOMPLETE;
    size_t line_len;
    const char *line = http_next_line(buf, &pos, end, &line_len);
    int rc = http_parse_request_line(line, line_len, req);
    if (rc)
        return rc;
    return http_parse_headers(buf, pos, end, req->headers, &req->num_headers);
}

/* The first header named name (case-insensitive), or NULL. */
static const struct http_header *http_header(const struct http_request *req, const char *name) {
    for (size_t i = 0; i < req->num_headers; i++)
        if (ascii_ieq(req->headers[i].name, req->headers[i].name_len, name))
            return &req->headers[i];
    return NULL;
}

static size_t http_header_count(const struct http_request *req, const char *name) {
    size_t n = 0;
    for (size_t i = 0; i < req->num_headers; i++)
        n += ascii_ieq(req->headers[i].name, req->headers[i].name_len, name);
    return n;
}

/* The next non-empty item of a sep-separated list, trimmed; *pos goes on. False at the end. */
static bool http_next_item(const char *v, size_t len, size_t *pos, char sep, const char **item,
                           size_t *item_len) {
    size_t i = *pos;
    while (i < len) {
        while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == sep))
            i++;
        size_t s = i;
        while (i < len && v[i] != sep)
            i++;
        size_t e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        if (e > s) {
            *pos = i;
            *item = v + s;
            *item_len = e - s;
            return true;
        }
    }
    *pos = len;
    return false;
}

/* Whether a comma-separated header value (like Connection) holds token, case-insensitive. */
static bool http_list_has(const char *v, size_t len, const char *token) {
    const char *item;
    size_t n, pos = 0;
    while (http_next_item(v, len, &pos, ',', &item, &n))
        if (ascii_ieq(item, n, token))
            return true;
    return false;
}

static int http_hex(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    c = ascii_lower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Percent-decodes in[0..len) into out (room for len bytes). In queries '+' means a space
 * (HTML form encoding, what URLSearchParams produces). Returns the decoded length, or -1
 * for a malformed escape or %00 (a NUL would truncate names further down). */
static long http_percent_decode(const char *in, size_t len, char *out, bool plus_is_space) {
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char c = in[i];
        if (c == '%') {
            if (i + 2 >= len)
                return -1;
            int hi = http_hex(in[i + 1]), lo = http_hex(in[i + 2]);
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                return -1;
            out[o++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            out[o++] = c == '+' && plus_is_space ? ' ' : c;
        }
    }
    return (long)o;
}

/* Whether c is unreserved (RFC 3986 2.3): an escape of it means the character itself. */
static bool http_is_unreserved(unsigned char c) {
    return ascii_alnum((char)c) || (c && strchr("-._~", c));
}

/* Appends the decoded path p[0..len) as a path-absolute URL path: all but unreserved,
 * sub-delims, ':', '@' and '/' escaped (RFC 3986 3.3), leading slashes collapsed into one so
 * it never reads as "//host/..." (a network-path reference to another host) nor "/\\host"
 * (browsers read '\\' as '/'). */
static void http_path_encode(struct wbuf *w, const char *p, size_t len) {
    static const char hex[] = "0123456789ABCDEF";
    while (len > 1 && p[0] == '/' && p[1] == '/') {
        p++;
        len--;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)p[i];
        if (http_is_unreserved(c) || (c && strchr("!$&'()*+,;=:@/", c))) {
            wb_put(w, p + i, 1);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            wb_put(w, e, 3);
        }
    }
}

struct http_param {
    const char *key; /* decoded name */
    size_t key_len;
    const char *value; /* decoded value ("" when the parameter had no '=') */
    size_t value_len;
};

struct http_query {
    size_t n;                                   /* parameters found */
    struct http_param params[QUERY_PARAMS_MAX]; /* in order of appearance */
};

/* A request's target, checked and decoded once, as routing sees it. */
struct http_target {
    const char *raw;            /* the target as sent (origin form), path and query */
    size_t raw_len;             /* bytes at raw */
    size_t raw_path_len;        /* of them, the path (up to '?') */
    const char *path;           /* the percent-decoded path, NUL-terminated */
    size_t path_len;            /* bytes at path */
    const struct http_query *q; /* the decoded query */
    uint64_t content_length;    /* of the body, 0 without one */
};

/* Splits and decodes a query string (without '?'). scratch must hold len bytes; the views
 * point into it. Returns 0, or -1 for a bad escape or more than QUERY_PARAMS_MAX params. */
static int http_parse_query(const char *q, size_t len, char *scratch, struct http_query *out) {
    out->n = 0;
    size_t i = 0, o = 0;
    while (i < len) {
        size_t s = i;
        while (i < len && q[i] != '&')
            i++;
        size_t e = i++;
        if (e == s)
            continue;
        if (out->n == QUERY_PARAMS_MAX)
            return -1;
        const char *eq = memchr(q + s, '=', e - s);
        size_t klen = eq ? (size_t)(eq - (q + s)) : e - s, voff = eq ? klen + 1 : e - s;
        long k = http_percent_decode(q + s, klen, scratch + o, true);
        long v =
            k < 0 ? -1 : http_percent_decode(q + s + voff, e - s - voff, scratch + o + k, true);
        if (v < 0)
            return -1;
        out->params[out->n++] =
            (struct http_param){scratch + o, (size_t)k, scratch + o + k, (size_t)v};
        o += (size_t)(k + v);
    }
    return 0;
}

/* The first parameter named key, or NULL. */
static const struct http_param *http_query_get(const struct http_query *q, const char *key) {
    for (size_t i = 0; i < q->n; i++)
        if (bytes_eq(q->params[i].key, q->params[i].key_len, key))
            return &q->params[i];
    return NULL;
}

/* Whether the parameters of a media range ("q=0; x=y") set its weight q to zero. */
static bool http_q_is_zero(const char *p, size_t len) {
    const char *item;
    size_t n, pos = 0;
    while (http_next_item(p, len, &pos, ';', &item, &n)) {
        if (n < 3 || ascii_lower(item[0]) != 'q' || item[1] != '=')
            continue;
        if (item[2] != '0')
            return false;
        for (size_t d = 3; d < n; d++)
            if (item[d] != '0' && !(d == 3 && item[d] == '.'))
                return false;
        return true;
    }
    return false;
}

/* Whether an Accept value admits text/event-stream (RFC 9110 12.5.1): a media range
 * text/event-stream or, with wildcards, text/(any) or (any)/(any), with a nonzero q. */
static bool http_accepts_event_stream(const char *v, size_t len, bool wildcards) {
    const char *item;
    size_t n, pos = 0;
    while (http_next_item(v, len, &pos, ',', &item, &n)) {
        const char *semi = memchr(item, ';', n);
        size_t range = semi ? (size_t)(semi - item) : n;
        while (range && (item[range - 1] == ' ' || item[range - 1] == '\t'))
            range--;
        bool match =
            ascii_ieq(item, range, "text/event-stream") ||
            (wildcards && (ascii_ieq(item, range, "text/*") || ascii_ieq(item, range, "*/*")));
        size_t params = semi ? (size_t)(semi - item) + 1 : n;
        if (match && !http_q_is_zero(item + params, n - params))
            return true;
    }
    return false;
}

/* The token of an "Authorization: Bearer TOKEN" value (RFC 6750), or false. */
static bool http_bearer(const char *v, size_t len, const char **tok, size_t *tok_len) {
    if (len < 7 || !ascii_ieq(v, 6, "bearer") || (v[6] != ' ' && v[6] != '\t'))
        return false;
    size_t i = 7;
    while (i < len && (v[i] == ' ' || v[i] == '\t'))
        i++;
    *tok = v + i;
    *tok_len = len - i;
    return i < len;
}

/* Compares a presented token with the secret in time that depends only on the secret's
 * length, so response timing does not reveal how much of a guess was right. */
static bool ct_equal(const char *given, size_t given_len, const char *secret, size_t secret_len) {
    volatile unsigned char diff = (unsigned char)(given_len != secret_len);
    for (size_t i = 0; i < secret_len; i++) {
        unsigned char g = given_len ? (unsigned char)given[i % given_len] : 0;
        diff |= (unsigned char)(g ^ (unsigned char)secret[i]);
    }
    return diff == 0;
}

static const char http_wdays[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
static const char http_months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                        "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

/* IMF-fixdate (RFC 9110 5.6.7), e.g. "Sun, 06 Nov 1994 08:49:37 GMT": 29 bytes + NUL. */
static void http_format_date(time_t t, char out[32]) {
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(out, 32, "%s, %02u %s %04u %02u:%02u:%02u GMT", http_wdays[(unsigned)tm.tm_wday % 7],
             (unsigned)tm.tm_mday % 100, http_months[(unsigned)tm.tm_mon % 12],
             (unsigned)(tm.tm_year + 1900) % 10000, (unsigned)tm.tm_hour % 100,
             (unsigned)tm.tm_min % 100, (unsigned)tm.tm_sec % 100);
}

static bool http_digits(const char *s, size_t n, int *out) {
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

/* Parses an IMF-fixdate; false for anything else (the caller then ignores the header, as
 * RFC 9110 13.1.3 allows for an invalid If-Modified-Since). */
static bool http_parse_date(const char *s, size_t len, time_t *out) {
    struct tm tm = {.tm_mon = -1};
    if (len != 29 || s[3] != ',' || s[4] != ' ' || s[7] != ' ' || s[11] != ' ' || s[16] != ' ' ||
        s[19] != ':' || s[22] != ':' || memcmp(s + 25, " GMT", 4) != 0)
        return false;
    if (!http_digits(s + 5, 2, &tm.tm_mday) || !http_digits(s + 12, 4, &tm.tm_year) ||
        !http_digits(s + 17, 2, &tm.tm_hour) || !http_digits(s + 20, 2, &tm.tm_min) ||
        !http_digits(s + 23, 2, &tm.tm_sec))
        return false;
    for (int m = 0; m < 12; m++)
        if (memcmp(s + 8, http_months[m], 3) == 0)
            tm.tm_mon = m;
    if (tm.tm_mon < 0 || tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_hour > 23 || tm.tm_min > 59 ||
        tm.tm_sec > 60)
        return false;
    tm.tm_year -= 1900;
    *out = timegm(&tm);
    return true;
}

/* ==========================================================================================
 * 5. Static files
 *
 * The decoded path is made relative to the root without consulting the file system: empty
 * and "." segments vanish, any ".." segment refuses the request outright (normalising is
 * where traversal bugs live). The kernel enforces the rest: openat2(RESOLVE_BENEATH) lets no
 * symbolic link lead out of the root either.
 * ======================================================================================== */

/* Writes the root-relative form of path[0..len) into out (cap bytes, NUL-terminated):
 * "/a//./b/" gives "a/b", "/" gives ".". Returns its length, or -1 if the path does not
 * start with '/', holds a ".." segment or a NUL, or does not fit. */
static long static_resolve(const char *path, size_t len, char *out, size_t cap) {
    if (len == 0 || path[0] != '/' || memchr(path, '\0', len) || cap < 2)
        return -1;
    size_t o = 0, i = 0;
    while (i < len) {
        while (i < len && path[i] == '/')
            i++;
        size_t s = i;
        while (i < len && path[i] != '/')
            i++;
        size_t n = i - s;
        if (n == 0 || (n == 1 && path[s] == '.'))
            continue;
        if (n == 2 && path[s] == '.' && path[s + 1] == '.')
            return -1;
        if (o + (o > 0) + n + 1 > cap)
            return -1;
        if (o > 0)
            out[o++] = '/';
        memcpy(out + o, path + s, n);
        o += n;
    }
    if (o == 0)
        out[o++] = '.';
    out[o] = '\0';
    return (long)o;
}

/* Content-Type by file extension; text types are declared UTF-8. */
static const char *static_content_type(const char *name) {
    /* clang-format off */
    static const char *const types[][2] = {
        {"html", "text/html; charset=utf-8"}, {"htm", "text/html; charset=utf-8"},
        {"css", "text/css; charset=utf-8"}, {"js", "text/javascript; charset=utf-8"},
        {"mjs", "text/javascript; charset=utf-8"}, {"txt", "text/plain; charset=utf-8"},
        {"md", "text/markdown; charset=utf-8"}, {"json", "application/json"},
        {"map", "application/json"}, {"xml", "application/xml"}, {"wasm", "application/wasm"},
        {"pdf", "application/pdf"}, {"svg", "image/svg+xml"}, {"png", "image/png"},
        {"jpg", "image/jpeg"}, {"jpeg", "image/jpeg"}, {"gif", "image/gif"},
        {"webp", "image/webp"}, {"avif", "image/avif"}, {"ico", "image/x-icon"},
        {"woff", "font/woff"}, {"woff2", "font/woff2"}, {"mp4", "video/mp4"},
        {"webm", "video/webm"}, {"mp3", "audio/mpeg"},
    };
    /* clang-format on */
    const char *slash = strrchr(name, '/');
    const char *dot = strrchr(slash ? slash : name, '.');
    for (size_t i = 0; dot && dot[1] && i < sizeof types / sizeof types[0]; i++)
        if (ascii_ieq(dot + 1, strlen(dot + 1), types[i][0]))
            return types[i][1];
    return "application/octet-stream";
}

/* openat2(2) arguments, declared here so older headers still compile this file. */
struct static_open_how {
    uint64_t flags;   /* open(2) flags */
    uint64_t mode;    /* unused for reading */
    uint64_t resolve; /* RESOLVE_* */
};
#define STATIC_RESOLVE_NO_MAGICLINKS 0x02
#define STATIC_RESOLVE_BENEATH       0x08
#ifndef SYS_openat2
#define SYS_openat2 437
#endif

/* Opens rel beneath root_fd for reading, never following a link out of the root; before
 * Linux 5.6 (no openat2) it opens normally and checks the real path against root_real.
 * O_NONBLOCK keeps a FIFO from blocking the loop. Returns an fd or -1 with errno set
 * (EXDEV/ELOOP/ENOENT for refused paths). */
static int static_open(int root_fd, const char *root_real, const char *rel) {
    struct static_open_how how = {
        .flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY,
        .resolve = STATIC_RESOLVE_BENEATH | STATIC_RESOLVE_NO_MAGICLINKS,
    };
    long fd = syscall(SYS_openat2, root_fd, rel, &how, sizeof how);
    if (fd >= 0 || errno != ENOSYS)
        return (int)fd;
    int f = openat(root_fd, rel, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (f < 0)
        return -1;
    char link[64], real[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", f);
    ssize_t n = readlink(link, real, sizeof real - 1);
    size_t rl = strlen(root_real);
    if (n < 0 || (size_t)n < rl || memcmp(real, root_real, rl) != 0 ||
        ((size_t)n > rl && real[rl] != '/' && rl > 1)) {
        close(f);
        errno = EXDEV;
        return -1;
    }
    return f;
}

/* ==========================================================================================
 * 6. Connections
 *
 * A connection reads a request, then answers it (and, with keep-alive, reads the next) or
 * becomes a subscriber for good. Its output is one queue of blobs, written with sendmsg()
 * (one system call for many events) at the end of each loop iteration, then an optional file
 * with sendfile(). Sockets are registered once, edge-triggered both ways, so a busy
 * subscriber costs no epoll_ctl(). Timers are FIFO lists, one per duration, so appending
 * keeps each sorted. Closing is deferred: a closed connection is freed at the end of the
 * iteration, so no handler frees a connection another still holds.
 * ======================================================================================== */

enum conn_state {
    CONN_REQUEST,  /* reading a request head, or idle between keep-alive requests */
    CONN_BODY,     /* reading a publish body */
    CONN_RESPOND,  /* writing an ordinary response */
    CONN_STREAM,   /* a subscriber */
    CONN_LINGER,   /* writing what is left, then half-closing and waiting for the peer */
    CONN_PASSED,   /* a client a part took over (c->part: the proxy passing it upstream) */
    CONN_OUTBOUND, /* a connection a part opened (an upstream); not a client */
    CONN_WAIT,     /* a publish waiting for the history to store the event */
    CONN_PACED,    /* a publish held (body read) until the subscribers catch up */
    CONN_ACCESS,   /* a stream request waiting for its authorization (access_ops) */
    CONN_DEAD      /* closed; freed at the end of the loop iteration */
};

enum conn_flag {
    CF_KEEP_ALIVE = 1,   /* the current request allows another after it */
    CF_OVER_LIMIT = 2,   /* accepted over max_clients, only to be told to come back */
    CF_IN_FLUSH = 4,     /* in the server's flush list */
    CF_SUBSCRIBER = 8,   /* has been a stream: count its bytes and events as deliveries */
    CF_WR_SHUT = 16,     /* write side shut down while lingering */
    CF_HTTP10 = 32,      /* the current request is HTTP/1.0 */
    CF_BODY_UNREAD = 64, /* the current request has a body we have not read */
    CF_REPLAYING = 128   /* its history answers later: live events wait (in the backlog) */
};

enum timer_id {
    TIMER_REQUEST, /* header_timeout: a request head (or body) must arrive by then */
    TIMER_SEND,    /* SEND_TIMEOUT_MS: a response (or an outbound peer's answer) stalls */
    TIMER_STREAM,  /* heartbeat_ms: a subscriber's heartbeat */
    TIMER_LINGER,  /* LINGER_MS: a closing connection's last chance */
    TIMER_CONNECT, /* an outbound connect; its part sets the duration */
    TIMER_PART,    /* a part's own beat for connections it took over (the proxy's heartbeat) */
    TIMER_PACED,   /* publish_wait_ms: a held publish is answered 503 by then */
    TIMER_NEVER,   /* no deadline (outbound connections, passed non-stream responses) */
    TIMER_COUNT
};
#define TIMER_NONE 0xFF

/* Why a connection closed: each client connection is counted once, under its reason, in
 * conn_close() (sse_connections_closed_total). */
enum close_reason {
    R_CLIENT_CLOSED,  /* the peer closed its side (end of input) */
    R_DONE,           /* answered, without keep-alive */
    R_SLOW,           /* a subscriber more than client_buffer behind */
    R_HEADER_TIMEOUT, /* no complete request head (or body) within header_timeout */
    R_BAD_REQUEST,    /* answered 4xx/505 for a request whose framing can't be trusted */
    R_SHUTDOWN,       /* sse_stop() */
    R_RETIRED,        /* its topics were retired */
    R_ERROR,          /* our failure: out of memory or buffer space */
    R_SEND_TIMEOUT,   /* a response made no progress for SEND_TIMEOUT_MS */
    R_OVERLOAD,       /* over max_clients, or no stream position yet: told to come back */
    R_PEER_FAILED,    /* the outbound peer a part connected it to failed (an upstream) */
    R_RECONNECT,      /* its stream was ended so that it reconnects */
    R_RESET,          /* the socket failed: reset, broken pipe, timed out (EPOLLERR) */
    R_EXPIRED,        /* its access ended (a signed token's exp): it comes back renewed */
    R_COUNT
};
static const char *const close_reason_text[R_COUNT] = {
    "client closed", "done",           "slow subscriber", "header timeout",
    "bad request",   "shutdown",       "retired",         "error",
    "send timeout",  "overload",       "upstream failed", "told to reconnect",
    "reset",         "access expired",
};
static const char *const close_reason_label[R_COUNT] = {
    "client_closed",   "done",      "slow_subscriber", "header_timeout", "bad_request",
    "shutdown",        "retired",   "error",           "send_timeout",   "overload",
    "upstream_failed", "reconnect", "reset",           "expired",
};

/* What epoll hands back (a seam): every registered object starts with one, and the loop calls
 * its on_event without knowing what is behind it (as redis's ae.c calls a file event's procs). */
struct handle {
    int fd; /* the descriptor */
    void (*on_event)(struct sse_server *srv, struct handle *h, uint32_t events); /* EPOLL* */
};

/* Connections a part holds (a seam). A part may take a client over once its route answered
 * (the proxy passes it upstream), or open connections of its own (its upstreams). The core
 * still owns the socket, the output queue, the timers and the close, and asks the part what
 * only it knows. The part's state for a connection starts with a struct conn_part. */
struct conn;
struct conn_ops {
    void (*closed)(struct sse_server *srv, struct conn *c); /* c is CONN_DEAD: let go of it */
    void (*wrote)(struct sse_server *srv, struct conn *c);  /* output went out: room. NULL: none */
    bool (*holding)(const struct conn *c); /* output must wait (connect under way). NULL: never */
    /* Bytes a CONN_PASSED client sent after its request head; returns the bytes taken. */
    size_t (*body)(struct sse_server *srv, struct conn *c, const char *p, size_t n);
    /* A CONN_PASSED client is readable (events: EPOLLIN, EPOLLRDHUP). */
    void (*readable)(struct sse_server *srv, struct conn *c, uint32_t events);
    /* c's timer fired: TIMER_PART, or any timer of a CONN_OUTBOUND connection. */
    void (*timer)(struct sse_server *srv, struct conn *c, int timer);
    /* The server is stopping. NULL: a passed client is closed. */
    void (*stop)(struct sse_server *srv, struct conn *c);
};

struct conn_part {
    const struct conn_ops *ops;
};

/* A request head collected across reads, or bytes pipelined after a request. */
struct inbuf {
    uint32_t len;     /* bytes in data */
    uint32_t scanned; /* bytes already searched for the end of the head */
    char data[SSE_HEAD_MAX];
};

/* A publish whose body is still arriving. */
struct body {
    size_t need;                    /* Content-Length */
    size_t have;                    /* bytes in data */
    char topic[TOPIC_NAME_MAX + 1]; /* validated topic */
    char event[EVENT_TYPE_MAX + 1]; /* validated event type, or "" */
    char data[];                    /* need bytes */
};

/* A stream request waiting for its authorization (CONN_ACCESS): what stream_open() needs,
 * kept once the request head is gone. */
struct stream_wait {
    size_t n;                                              /* topics asked for */
    uint8_t lens[SSE_MAX_TOPICS_PER_STREAM];               /* their lengths */
    char names[SSE_MAX_TOPICS_PER_STREAM][TOPIC_NAME_MAX]; /* their names, not terminated */
    bool eventsource;                                      /* asked as an EventSource does */
    size_t last_len;                                       /* bytes of its last event id */
    char last[];                                           /* its last event id, or nothing */
};

struct conn {
    struct handle h;            /* fd and conn_on_event (or a part's); first, for epoll */
    uint8_t state;              /* enum conn_state */
    uint8_t flags;              /* enum conn_flag */
    uint8_t timer;              /* enum timer_id it is listed in, or TIMER_NONE */
    uint8_t reason;             /* enum close_reason to log when a linger ends */
    uint16_t nsubs;             /* entries in subs */
    uint8_t lag;                /* enum lag_state and LAG_WROTE (subscribers): flow control */
    uint32_t serial;            /* number for log lines */
    uint32_t ending;            /* 1 + its place in srv->ending (its stream ends at a set
                                   time), or 0 */
    struct conn *tprev, *tnext; /* neighbours in the timer list (tnext: dead list too) */
    struct conn *flush_next;    /* next in the flush list */
    int64_t deadline;           /* when its timer fires, monotonic ms */
    struct inbuf *in;           /* partial head or pipelined bytes; NULL when none */
    union {
        struct body *body;        /* publish body being read; NULL when none */
        struct stream_wait *wait; /* CONN_ACCESS: the stream request kept; NULL when none */
    };
    struct blob **q;            /* output queue: a ring of qcap (power of two) slots */
    uint32_t qhead, qlen, qcap; /* ring index of the first blob, blobs queued, slots */
    uint32_t qoff;              /* bytes of the first blob already written */
    size_t qbytes;              /* bytes queued and not yet written */
    int file_fd;                /* file to send after the queue, or -1 */
    off_t file_off, file_end;   /* what of it is left to send */
    struct sub *subs;           /* topics followed (subscribers only) */
    struct conn_part *part;     /* the part that took it over or opened it, else NULL */
    struct ip_count *ip;        /* its address's count (max_clients_per_ip), else NULL */
};

/* Client connections per address (max_clients_per_ip), keyed by the address (IPv4 mapped
 * to IPv6). An entry lives while its count is above zero: never more entries than
 * connections. */
struct ip_count {
    struct hash_node node;  /* in srv->per_ip; first */
    uint32_t n;             /* connections served from addr */
    unsigned char addr[16]; /* the address */
};

/* The entry of a peer's address, created with count 0 if new; NULL when out of memory. */
static struct ip_count *ip_table_get(struct hash_table *t, const struct sockaddr_storage *sa) {
    unsigned char key[16] = {0};
    if (sa->ss_family == AF_INET6) {
        memcpy(key, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
    } else if (sa->ss_family == AF_INET) {
        key[10] = key[11] = 0xFF;
        memcpy(key + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    }
    uint32_t h = hash_bytes(t->seed, key, sizeof key);
    for (struct hash_node *e = hash_chain(t, h); e; e = e->next)
        if (e->hash == h && memcmp(((struct ip_count *)e)->addr, key, sizeof key) == 0)
            return (struct ip_count *)e;
    struct ip_count *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    memcpy(e->addr, key, sizeof key);
    e->node.hash = h;
    if (!hash_insert(t, &e->node)) {
        free(e);
        return NULL;
    }
    return e;
}

/* Counts one connection less from e's address; at zero the entry goes. */
static void ip_table_put(struct hash_table *t, struct ip_count *e) {
    if (!e || (e->n && --e->n))
        return;
    hash_remove(t, &e->node);
    free(e);
}

struct timer_list {
    struct conn *head, *tail; /* soonest deadline first */
    int64_t duration;         /* ms from being listed to the deadline */
};

/* Streams that end at a time of their own (an access that expires): unlike the timer lists,
 * whose entries share one duration, they need a binary heap, soonest first. */
struct ending {
    struct ending_at {
        int64_t at;     /* when, monotonic ms */
        struct conn *c; /* whose stream; c->ending is 1 + its index */
    } * heap;
    uint32_t n, cap; /* entries in heap, and its room */
};

/* Counters behind /metrics. */
struct metrics {
    uint64_t connections_total;  /* accepted */
    uint64_t rejected_total;     /* turned away: over max_clients or out of descriptors */
    uint64_t published_total;    /* events published */
    uint64_t delivered_total;    /* events written out completely to subscribers */
    uint64_t bytes_total;        /* bytes written to subscribers */
    uint64_t dropped_total;      /* subscribers dropped for being too slow */
    uint64_t replays_total;      /* subscriptions resumed exactly from a Last-Event-ID */
    uint64_t resets_total;       /* subscriptions sent the reset event instead */
    uint64_t bad_requests_total; /* requests answered 400, 411, 413, 431 or 505 */
    uint64_t closed[R_COUNT];    /* client connections closed, by enum close_reason */
};

/* A descriptor whose bytes are published (sse_publish_from_fd). */
struct input {
    struct handle h;           /* fd and input_on_event; first, for epoll */
    struct input *next;        /* next input */
    bool polled;               /* in epoll; false for regular files, read every iteration */
    bool held;                 /* not read (out of epoll): the gate is closed (pace_gate) */
    struct wire_reader reader; /* turns its bytes into events */
};

/* Flow control's state (see "flow control" below). */
struct pace {
    size_t high, low;           /* queued bytes: a subscriber lags from high until back at low */
    uint32_t lagging;           /* subscribers lagging and counted (LAG_HIGH) */
    uint32_t behind;            /* subscribers lagging but left behind (LAG_BEHIND) */
    bool held;                  /* too many lag: publishers are held */
    bool resume_due;            /* the hold just ended: held publishers are to be resumed */
    uint8_t cause;              /* enum pace_cause of the hold being timed, PACE_OPEN if none */
    int64_t held_since;         /* when held last became true */
    int64_t minority_since;     /* in a hold: since when the lagging are at most a quarter, or 0 */
    int64_t next_check;         /* in a hold: when the silent lagging are left behind; 0 = next
                                   iteration, which starts the watch */
    int64_t gate_since;         /* when the gate last closed, for the time held */
    uint64_t held_ms[3];        /* ms the gate was closed, by enum pace_cause */
    uint64_t holds[3];          /* times it closed, by enum pace_cause */
    uint64_t left_behind_total; /* subscribers left behind */
    uint64_t publish_timeouts;  /* HTTP publishes answered 503 after waiting */
    bool (*can_take)(const struct sse_server *srv); /* a storing part's own answer, or NULL */
    const char *store;                              /* its name for log lines, with can_take */
};

/* Parts (a seam). What an optional part adds to HTTP: routes (after the core's paths, before
 * static files), /metrics rows, a reason for /healthz to answer 503; and to the loop: work
 * each iteration, when it is due, what to resume when the publishers' gate opens. A part
 * registers at sse_server_new() whether or not the configuration uses it, so /metrics has
 * the same families either way. */
#define PARTS_MAX     4  /* parts registered: the proxy, the journal, Redis, one to come */
#define PART_ROWS_MAX 16 /* /metrics rows one part may add */

/* One /metrics family with its one sample; or, with help NULL, one more sample of the family
 * above it, its name carrying labels (`x_total{reason="a"}`). */
struct metrics_row {
    const char *name, *type, *help; /* metric name, "gauge" or "counter", # HELP text */
    uint64_t value;                 /* the sample */
};

struct part_ops {
    /* Answers a request that is the part's and returns true, or returns false. NULL: none. */
    bool (*route)(struct sse_server *srv, struct conn *c, const struct http_request *req,
                  const struct http_target *t);
    /* Fills up to PART_ROWS_MAX rows, returns how many. NULL: none. */
    size_t (*metrics)(const struct sse_server *srv, struct metrics_row *rows);
    /* Why the server is unhealthy (/healthz says it with a 503), or NULL. NULL: never. */
    const char *(*unhealthy)(const struct sse_server *srv);
    void (*tick)(struct sse_server *srv);              /* once an iteration, or NULL */
    int64_t (*deadline)(const struct sse_server *srv); /* when tick is due, INT64_MAX: never */
    void (*resume)(struct sse_server *srv); /* the publishers' gate opened again, or NULL */
    void (*free)(struct sse_server *srv);   /* at sse_server_free(), or NULL */
};

struct part {
    const struct part_ops *ops; /* what it adds */
    void *self;                 /* its own state, or NULL */
};

/* Access (a seam): who may hear and publish what. The core checks its own shared tokens
 * (subscribe_token, publish_token); a part that authorizes (per-subscriber grants) is asked
 * before a stream opens and before a publish. It may narrow the topics and end the stream at
 * a set time, refuse (answering 401 or 403, which ends an EventSource for good: WHATWG 9.2.3
 * fails the connection on any status but 200; a 200 + retry: would only bring it back), or
 * answer later through access_decided() when it must ask elsewhere. */
enum access_answer {
    ACCESS_ALLOW,    /* go on (a publish: granted by the part, whatever publish_token says) */
    ACCESS_PASS,     /* a publish the part has no say in: publish_token decides */
    ACCESS_ANSWERED, /* refused: the part answered */
    ACCESS_LATER     /* a stream: the part answers through access_decided() */
};

/* A stream request as the access part sees it. It may narrow names and lens (in place, in
 * order, updating n) and set until. */
struct access_ask {
    const struct http_request *req; /* the request head */
    const struct http_query *q;     /* its decoded parameters */
    const char **names;             /* the topics asked for: names[i], lens[i] bytes */
    size_t *lens, n;
    int64_t until; /* out: when the stream ends (monotonic ms), 0 = never */
};

struct access_ops {
    enum access_answer (*subscribe)(struct sse_server *srv, struct conn *c, struct access_ask *a);
    /* A publish to topic (checked valid) not made with publish_token. NULL: ACCESS_PASS. */
    enum access_answer (*publish)(struct sse_server *srv, struct conn *c,
                                  const struct http_request *req, const struct http_query *q,
                                  const char *topic);
    void (*forget)(struct sse_server *srv, const struct conn *c); /* a CONN_ACCESS one closed */
};

/* The history (a seam): what stands behind Last-Event-ID. The core always keeps the backlog;
 * a history decides how events get their ids and whether an id a client comes back with can
 * be replayed exactly. The backlog alone is the default (history_backlog); the journal wraps
 * it (an event is on disk before anyone hears of it); Redis assigns the ids and serves what
 * is older than the backlog. The answer (replay or reset) is given in one place,
 * stream_answer(), whichever history decided. A NULL hook is the backlog's behaviour. */
enum history_answer {
    HISTORY_RESET,   /* the id cannot be replayed exactly: the reset event */
    HISTORY_COVERED, /* the backlog holds every event after the id */
    HISTORY_LATER    /* the history answers later, through stream_answer_later() */
};

struct receipt;

/* An event on its way in (checked by publish_check) and who waits for its outcome. */
struct publish_in {
    const char *topic, *event, *data;
    size_t len;
    struct conn *c;                /* an HTTP publisher answered once the id is known, or NULL */
    const struct receipt *receipt; /* or a publisher told later whether it was stored, or NULL */
};

/* A receipt (a seam): a publisher that must know whether an event stored elsewhere was stored
 * (the relay moves its resume position only past stored events). The history calls done once
 * for every append that returned 0 with *id 0 (unless the server is freed first). */
struct receipt {
    void (*done)(struct sse_server *srv, void *who, const char *mark, bool stored);
    void *who;        /* the publisher */
    const char *mark; /* its position after this event; the history keeps a copy */
};

struct history_ops {
    /* Publishes a checked event without id: returns the subscribers it was queued to with *id
     * set; or 0 with *id 0 when the id comes later (then in->c is answered, in->receipt told);
     * or a negative errno, -EAGAIN when it cannot take it now. NULL: the next id, at once. */
    int (*append)(struct sse_server *srv, const struct publish_in *in, uint64_t *id);
    /* Stores an event with its id before the backlog keeps it; negative: nobody hears of it. */
    int (*store)(struct sse_server *srv, const struct blob *ev);
    /* After the backlog kept an event (the journal compacts). NULL: nothing. */
    void (*kept)(struct sse_server *srv, uint64_t id);
    /* Whether every event after id can be replayed. NULL: backlog_covers(). */
    enum history_answer (*covers)(struct sse_server *srv, struct conn *c, uint64_t id);
    /* A connection waiting for the history (a publish or a replay) closed. NULL: none. */
    void (*forget)(struct sse_server *srv, const struct conn *c);
    void (*tick)(struct sse_server *srv);              /* once an iteration, or NULL */
    int64_t (*deadline)(const struct sse_server *srv); /* when tick is due, INT64_MAX: never */
    void (*format_id)(struct wbuf *w, uint64_t key);   /* an id as the wire spells it */
    bool (*parse_id)(const char *s, size_t len, uint64_t *key); /* and back: canonical only */
    void (*free)(struct sse_server *srv);                       /* at sse_server_free(), or NULL */
    /* Whether the current id is known (Redis: once read); until then subscribers are told to
     * come back. NULL: always. */
    bool (*positioned)(const struct sse_server *srv);
};

static void history_decimal_id(struct wbuf *w, uint64_t key) {
    wb_u64(w, key);
}

static bool history_decimal_parse(const char *s, size_t len, uint64_t *key) {
    return id_decimal(s, len, key);
}

/* The default history: decimal ids from this server, the backlog alone answers. */
static const struct history_ops history_backlog = {
    .format_id = history_decimal_id,
    .parse_id = history_decimal_parse,
};

struct sse_server {
    /* configuration, defaults applied, strings owned */
    char *stream_path; /* e.g. "/events" */
    size_t stream_path_len;
    char *index_page; /* built-in page, or NULL */
    size_t index_page_len;
    char *publish_token;       /* NULL = publishing over HTTP is off */
    char *subscribe_token;     /* NULL = open subscriptions */
    char *cors_headers;        /* ready-made Access-Control-Allow-* lines, or "" */
    char *root_real;           /* real path of the static root, or NULL */
    int64_t heartbeat_ms;      /* 0 = none */
    int64_t retry_ms;          /* 0 = no retry: line */
    bool position_event;       /* open with the position event, not the id-only block */
    uint32_t max_clients;      /* client connections served */
    uint32_t max_per_ip;       /* of them from one address; 0 = no limit */
    int64_t header_timeout_ms; /* deadline for a request head */
    size_t client_buffer;      /* queued bytes at which a subscriber is dropped */
    size_t max_event_bytes;    /* largest payload */
    struct logger log;         /* where log lines go */
    unsigned log_depth;        /* on_log, on_request calls under way: sse_poll() says -EBUSY */
    int (*on_request)(struct sse_server *, const struct sse_request *, void *); /* or NULL */
    bool busy; /* publishing, retiring or freeing: sse_publish() and sse_retire_topic() from
                  on_log answer -EBUSY instead of re-entering */

    /* descriptors */
    int epfd;               /* the epoll instance, also sse_fd() */
    struct handle listener; /* listening socket; fd -1 once stopping */
    int reserve_fd;         /* spare descriptor released to shed load on EMFILE */
    int root_fd;            /* static root directory, or -1 */
    char url[80];           /* "http://HOST:PORT/" */
    int port;               /* the port listened on, for X-Forwarded-Port */

    /* time */
    int64_t now;     /* monotonic ms, refreshed every iteration */
    time_t date_sec; /* second that date describes */
    char date[32];   /* IMF-fixdate of date_sec, for Date headers */

    /* events */
    uint64_t last_id;                  /* last id assigned (the seed before any publish) */
    struct rng rng;                    /* for jitter and the hash seed */
    struct topic_table topics;         /* every topic with a subscriber, an event or retired */
    struct backlog backlog;            /* retained events */
    const struct history_ops *history; /* behind Last-Event-ID: history_backlog or a part's */
    void *history_self;                /* the history's own state, NULL for the backlog */
    struct blob *stream_head;          /* cached stream response head for date_sec, or NULL */
    struct blob *retry_line;           /* "retry: N\n\n", or NULL when retry is off */
    struct blob *heartbeat;            /* ":\n" */
    struct blob *id_line;              /* cached position event or id-only block, or NULL */
    struct blob *continue_100;         /* "HTTP/1.1 100 Continue\r\n\r\n" */

    /* connections */
    struct timer_list timers[TIMER_COUNT];
    struct conn *flush_list;     /* connections with output to attempt */
    struct conn *dead_list;      /* closed, to free */
    uint32_t nconns;             /* open client connections (not counting over-limit ones) */
    uint32_t noverflow;          /* over-limit connections being answered */
    struct hash_table per_ip;    /* served connections by address (max_clients_per_ip) */
    uint32_t nsubscribers;       /* connections in CONN_STREAM */
    uint32_t noutbound;          /* connections in CONN_OUTBOUND */
    uint32_t next_serial;        /* for log lines */
    int64_t emfile_logged;       /* last time EMFILE was logged (rate limit) */
    int64_t accept_paused_until; /* listener muted after EMFILE until then; 0 = not */
    struct input *inputs;        /* descriptors being published from */
    bool stop_requested;         /* sse_stop() was called; acted on inside sse_poll() */
    bool stopping;               /* draining: not accepting, subscribers told to retry */
    bool stopped;                /* everything closed after sse_stop() */
    int64_t stop_deadline;       /* when stopping turns into closing everything */
    struct pace pace;            /* flow control */
    struct metrics m;
    struct part parts[PARTS_MAX];    /* what the enabled parts add */
    size_t nparts;                   /* entries in parts */
    const struct access_ops *access; /* who may hear and publish what, or NULL: the tokens */
    struct ending ending;            /* streams that end at a set time */

    char scratch[SSE_HEAD_MAX]; /* a request head read in one go */
    char decoded[SSE_HEAD_MAX]; /* decoded query of the request being handled */
    char path[SSE_HEAD_MAX];    /* decoded path of the request being handled */
};

/* A part's own state, found by its ops; NULL when it is not plugged in. */
FOR_PARTS static void *part_self(const struct sse_server *srv, const struct part_ops *ops) {
    for (size_t i = 0; i < srv->nparts; i++)
        if (srv->parts[i].ops == ops)
            return srv->parts[i].self;
    return NULL;
}

/* Plugs a part in at sse_server_new() (its free hook runs at sse_server_free()). False when
 * PARTS_MAX are in already. */
FOR_PARTS static bool part_add(struct sse_server *srv, const struct part_ops *ops, void *self) {
    if (srv->nparts == PARTS_MAX)
        return false;
    srv->parts[srv->nparts++] = (struct part){ops, self};
    return true;
}

static void timer_unlink(struct sse_server *srv, struct conn *c) {
    if (c->timer == TIMER_NONE)
        return;
    struct timer_list *tl = &srv->timers[c->timer];
    *(c->tprev ? &c->tprev->tnext : &tl->head) = c->tnext;
    *(c->tnext ? &c->tnext->tprev : &tl->tail) = c->tprev;
    c->tprev = c->tnext = NULL;
    c->timer = TIMER_NONE;
}

/* (Re)starts a connection's timer: it fires the list's duration from now. */
static void timer_set(struct sse_server *srv, struct conn *c, enum timer_id which) {
    timer_unlink(srv, c);
    struct timer_list *tl = &srv->timers[which];
    c->timer = (uint8_t)which;
    c->deadline = srv->now + tl->duration;
    c->tprev = tl->tail;
    c->tnext = NULL;
    *(tl->tail ? &tl->tail->tnext : &tl->head) = c;
    tl->tail = c;
}

static void ending_put(struct ending *e, uint32_t i, struct ending_at x) {
    e->heap[i] = x;
    x.c->ending = i + 1;
}

/* Moves x, meant for slot i, up or down to where the heap order wants it. */
static void ending_settle(struct ending *e, uint32_t i, struct ending_at x) {
    while (i > 0 && e->heap[(i - 1) / 2].at > x.at) {
        ending_put(e, i, e->heap[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
    for (uint32_t k; (k = 2 * i + 1) < e->n; i = k) {
        if (k + 1 < e->n && e->heap[k + 1].at < e->heap[k].at)
            k++;
        if (e->heap[k].at >= x.at)
            break;
        ending_put(e, i, e->heap[k]);
    }
    ending_put(e, i, x);
}

/* c's stream ends at `at`. False when out of memory. */
static bool ending_add(struct ending *e, struct conn *c, int64_t at) {
    if (e->n == e->cap) {
        uint32_t cap = e->cap ? 2 * e->cap : 64;
        struct ending_at *h = realloc(e->heap, cap * sizeof *h);
        if (!h)
            return false;
        e->heap = h;
        e->cap = cap;
    }
    ending_settle(e, e->n++, (struct ending_at){at, c});
    return true;
}

/* c's stream no longer ends at a set time (it closed, or its time came). */
static void ending_remove(struct ending *e, struct conn *c) {
    uint32_t i = c->ending - 1;
    c->ending = 0;
    struct ending_at last = e->heap[--e->n];
    if (i < e->n)
        ending_settle(e, i, last);
}

static void conn_flush_later(struct sse_server *srv, struct conn *c) {
    if (c->flags & CF_IN_FLUSH)
        return;
    c->flags |= CF_IN_FLUSH;
    c->flush_next = srv->flush_list;
    srv->flush_list = c;
}

/* ---- flow control: publishers wait for the subscribers --------------------------------
 *
 * An input can be read faster than a thousand sockets are written; queueing the difference
 * only delays dropping every subscriber at client_buffer. So the core paces publishers to
 * subscribers, as TCP paces a sender: when more than one subscriber in PACE_SHARE has more
 * than the high-water mark queued, no new event is taken (inputs and relays are not read, so
 * TCP pushes back on their writers; HTTP publishes wait; sse_publish() says -EAGAIN) until
 * at most one in 2 * PACE_SHARE is above the low-water mark. One slow subscriber must not
 * pace the rest: with many it is under the share; with few it is left behind (not counted;
 * dropped at client_buffer as before, to resume with Last-Event-ID) when it took no bytes
 * for PACE_PATIENCE_MS of a hold (stalled), or the lagging were a quarter or less for
 * PACE_MINORITY_MS (the others caught up; a larger share is the pace, not a straggler).
 * Nor may clients that stopped reading (stalled phones, one client with many unread streams)
 * stop publishing for good: a hold of PACE_MAX_HOLD_MS leaves every lagging one behind. A
 * part that stores events first (Redis) may close the gate too, through can_take. */

/* clang-format off */
#define PACE_SHARE           10    /* hold when more than 1 subscriber in 10 lags */
#define PACE_PATIENCE_MS     1000  /* took nothing this long in a hold: left behind */
#define PACE_MINORITY_MS     2000  /* a lagging minority this long in a hold: left behind */
#define PACE_MAX_HOLD_MS     10000 /* a hold this long leaves every lagging subscriber behind */
/* clang-format on */

enum lag_state {
    LAG_NONE,      /* at most the low-water mark queued, or between the marks on its way down */
    LAG_HIGH,      /* passed the high-water mark and not back under the low one: counted */
    LAG_BEHIND,    /* lagging, but left behind by the others: not counted */
    LAG_STATE = 3, /* the bits of conn.lag that hold the state */
    LAG_WROTE = 4, /* conn.lag: bytes went out since the last check of a hold */
};

enum pace_cause { PACE_OPEN, PACE_SUBSCRIBERS, PACE_STORE, PACE_CAUSES };
static const char *const pace_cause_label[PACE_CAUSES] = {"", "subscribers", "store"};

/* May the core take another event now? PACE_OPEN, or why not. */
static enum pace_cause pace_gate(const struct sse_server *srv) {
    if (srv->pace.held)
        return PACE_SUBSCRIBERS;
    if (srv->pace.can_take && !srv->pace.can_take(srv))
        return PACE_STORE;
    return PACE_OPEN;
}

/* Subscribers that count: those not left behind. */
static uint32_t pace_counted(const struct sse_server *srv) {
    return srv->nsubscribers - srv->pace.behind;
}

/* Re-decides the hold after the lagging or the subscribers changed (cheap: two compares). */
static void pace_check(struct sse_server *srv) {
    struct pace *p = &srv->pace;
    uint64_t n = pace_counted(srv);
    if (!p->held && (uint64_t)p->lagging * PACE_SHARE > n) {
        p->held = true;
        p->held_since = srv->now;
        p->minority_since = 0;
        p->next_check = 0;
    } else if (p->held && (uint64_t)p->lagging * 2 * PACE_SHARE <= n) {
        p->held = false;
        p->resume_due = true; /* acted on at the end of the loop iteration */
    }
}

/* Has a subscriber left behind really caught up? Our queue is low, but the kernel's send
 * buffer grows to megabytes and takes what a client that stopped reading does not: only
 * with little unsent there too (SIOCOUTQ; one call, only for those left behind) may it be
 * counted again. Otherwise a stopped client would be counted, lag, hold everyone for a
 * watch, be left behind, and come back, as long as the kernel kept taking its bytes. */
static bool pace_caught_up(const struct sse_server *srv, const struct conn *c) {
    int unsent = 0;
    return ioctl(c->h.fd, SIOCOUTQ, &unsent) != 0 || (size_t)unsent <= srv->pace.high;
}

/* A subscriber's queue changed: it starts lagging at the high-water mark, and stops at the
 * low one (the gap keeps a subscriber near the mark from flapping the hold). */
static void pace_note(struct sse_server *srv, struct conn *c) {
    struct pace *p = &srv->pace;
    unsigned state = c->lag & LAG_STATE;
    if (state == LAG_NONE && c->qbytes >= p->high) {
        c->lag = (uint8_t)((c->lag & ~LAG_STATE) | LAG_HIGH);
        p->lagging++;
    } else if (state != LAG_NONE && c->qbytes <= p->low &&
               (state == LAG_HIGH || pace_caught_up(srv, c))) {
        if (state == LAG_HIGH)
            p->lagging--;
        else
            p->behind--;
        c->lag = (uint8_t)(c->lag & ~LAG_STATE);
    } else {
        return;
    }
    pace_check(srv);
}

/* A subscriber stops being one (closed, lingering): it no longer counts either way. */
static void pace_forget(struct sse_server *srv, struct conn *c) {
    if ((c->lag & LAG_STATE) == LAG_HIGH)
        srv->pace.lagging--;
    else if ((c->lag & LAG_STATE) == LAG_BEHIND)
        srv->pace.behind--;
    c->lag = LAG_NONE;
}

/* Appends a reference to b to the output queue. False when out of memory. */
static bool conn_enqueue(struct sse_server *srv, struct conn *c, struct blob *b) {
    if (c->qlen == c->qcap) {
        uint32_t ncap = c->qcap ? c->qcap * 2 : 4;
        struct blob **q = malloc(ncap * sizeof *q);
        if (!q)
            return false;
        for (uint32_t i = 0; i < c->qlen; i++)
            q[i] = c->q[(c->qhead + i) & (c->qcap - 1)];
        free(c->q);
        c->q = q;
        c->qcap = ncap;
        c->qhead = 0;
    }
    c->q[(c->qhead + c->qlen) & (c->qcap - 1)] = blob_ref(b);
    c->qlen++;
    c->qbytes += b->len;
    if (c->state == CONN_STREAM)
        pace_note(srv, c);
    conn_flush_later(srv, c);
    return true;
}

/* Takes a blob we own (refs 1) into the queue and drops our reference. */
static bool conn_enqueue_owned(struct sse_server *srv, struct conn *c, struct blob *b) {
    bool ok = b && conn_enqueue(srv, c, b);
    blob_unref(b);
    return ok;
}

static void conn_drop_output(struct conn *c) {
    for (uint32_t i = 0; i < c->qlen; i++)
        blob_unref(c->q[(c->qhead + i) & (c->qcap - 1)]);
    free(c->q);
    c->q = NULL;
    c->qlen = c->qcap = c->qhead = c->qoff = 0;
    c->qbytes = 0;
    if (c->file_fd >= 0)
        close(c->file_fd);
    c->file_fd = -1;
}

/* c, formerly in state, stops following topics and reading: a subscriber no longer counts. */
static void conn_let_go(struct sse_server *srv, struct conn *c, enum conn_state state) {
    if (state == CONN_STREAM) {
        srv->nsubscribers--;
        pace_forget(srv, c);
        pace_check(srv);
    }
    for (uint16_t i = 0; i < c->nsubs; i++) {
        struct sub *s = &c->subs[i];
        *(s->prev ? &s->prev->next : &s->topic->subs) = s->next;
        if (s->next)
            s->next->prev = s->prev;
        topic_unref(s->topic);
    }
    free(c->subs);
    c->subs = NULL;
    c->nsubs = 0;
    if (c->ending)
        ending_remove(&srv->ending, c);
    free(c->in);
    free(c->body);
    c->in = NULL;
    c->body = NULL;
}

/* Closes at once: the descriptor now, the memory at the end of the iteration. */
static void conn_close(struct sse_server *srv, struct conn *c, enum close_reason reason) {
    if (c->state == CONN_DEAD)
        return;
    enum conn_state state = (enum conn_state)c->state;
    c->state = CONN_DEAD; /* first: a part below may close the peer, which looks back */
    if ((state == CONN_WAIT || (c->flags & CF_REPLAYING)) && srv->history->forget)
        srv->history->forget(srv, c);
    if (state == CONN_ACCESS && srv->access->forget)
        srv->access->forget(srv, c);
    if (c->part)
        c->part->ops->closed(srv, c);
    timer_unlink(srv, c);
    conn_let_go(srv, c, state);
    conn_drop_output(c);
    close(c->h.fd);
    c->h.fd = -1;
    if (state == CONN_OUTBOUND)
        srv->noutbound--;
    else if (c->flags & CF_OVER_LIMIT)
        srv->noverflow--;
    else
        srv->nconns--;
    ip_table_put(&srv->per_ip, c->ip);
    c->ip = NULL;
    if (state != CONN_OUTBOUND) /* every accepted connection passes here once */
        srv->m.closed[reason]++;
    c->tnext = srv->dead_list;
    srv->dead_list = c;
    /* Last: the host's on_log may publish, which must find this connection gone. */
    log_say(&srv->log, SSE_LOG_DEBUG, "connection #%u closed (%s)", c->serial,
            close_reason_text[reason]);
}

/* Why a client closes when its socket ends: a lingering one for the reason it was closing;
 * else a reset if the socket failed (ECONNRESET, EPIPE, ETIMEDOUT, EPOLLERR), or end of input. */
static enum close_reason conn_gone(const struct conn *c, bool failed) {
    if (c->state == CONN_LINGER)
        return (enum close_reason)c->reason;
    return failed ? R_RESET : R_CLIENT_CLOSED;
}

/* Marks n written bytes as sent: releases finished blobs and counts deliveries. */
static void conn_consume(struct sse_server *srv, struct conn *c, size_t n) {
    if (c->flags & CF_SUBSCRIBER)
        srv->m.bytes_total += n;
    c->qbytes -= n;
    if (c->state == CONN_STREAM) {
        c->lag |= LAG_WROTE;
        pace_note(srv, c);
    }
    while (n) {
        struct blob *b = c->q[c->qhead];
        size_t left = b->len - c->qoff;
        if (n < left) {
            c->qoff += (uint32_t)n;
            return;
        }
        n -= left;
        if (b->topic && (c->flags & CF_SUBSCRIBER))
            srv->m.delivered_total++;
        blob_unref(b);
        c->qhead = (c->qhead + 1) & (c->qcap - 1);
        c->qlen--;
        c->qoff = 0;
    }
    if (c->qlen == 0 && c->qcap > 8) {
        free(c->q);
        c->q = NULL;
        c->qcap = c->qhead = 0;
    }
}

/* sendfile() can raise SIGPIPE and has no MSG_NOSIGNAL, so SIGPIPE is blocked around it in
 * this thread and a SIGPIPE it raised is consumed, leaving the host's handling untouched. */
static ssize_t conn_sendfile(int out, int in, off_t *off, size_t n) {
    sigset_t pipe_set, old, pending;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    sigpending(&pending);
    bool was_pending = sigismember(&pending, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    ssize_t r = sendfile(out, in, off, n);
    int saved = errno;
    if (r < 0 && errno == EPIPE && !was_pending) {
        struct timespec zero = {0, 0};
        sigtimedwait(&pipe_set, NULL, &zero);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = saved;
    return r;
}

/* Writes as much of the queue, then the file, as the socket takes. 0: all written; 1: the
 * socket is full (an EPOLLOUT edge will come); -1: a dead peer; -2: the file shrank. */
static int conn_write(struct sse_server *srv, struct conn *c) {
    while (c->qlen) {
        struct iovec iov[WRITE_IOV_MAX];
        size_t n = 0, total = 0;
        for (uint32_t i = 0; i < c->qlen && n < WRITE_IOV_MAX; i++, n++) {
            struct blob *b = c->q[(c->qhead + i) & (c->qcap - 1)];
            size_t off = i == 0 ? c->qoff : 0;
            iov[n].iov_base = b->bytes + off;
            iov[n].iov_len = b->len - off;
            total += iov[n].iov_len;
        }
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = n};
        ssize_t w = sendmsg(c->h.fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? 1 : -1;
        }
        conn_consume(srv, c, (size_t)w);
        if (c->state == CONN_RESPOND)
            timer_set(srv, c, TIMER_SEND);
        if ((size_t)w < total)
            return 1;
    }
    while (c->file_fd >= 0 && c->file_off < c->file_end) {
        size_t chunk = (size_t)(c->file_end - c->file_off);
        ssize_t w =
            conn_sendfile(c->h.fd, c->file_fd, &c->file_off, chunk > 1u << 20 ? 1u << 20 : chunk);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 1;
        if (w <= 0)
            return w < 0 ? -1 : -2;
        timer_set(srv, c, TIMER_SEND);
    }
    if (c->file_fd >= 0) {
        close(c->file_fd);
        c->file_fd = -1;
    }
    return 0;
}

/* Reads and throws away what the peer sends (subscribers and closing connections have
 * nothing more to say); closes at end of input or on an error. */
static void conn_discard_input(struct sse_server *srv, struct conn *c) {
    char sink[4096];
    ssize_t n;
    do
        n = read(c->h.fd, sink, sizeof sink);
    while (n > 0 || (n < 0 && errno == EINTR));
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return;
    conn_close(srv, c, conn_gone(c, n < 0));
}

/* Stops reading requests and following topics; what is queued goes out, then the write side
 * is shut and the peer has LINGER_MS to close (so it reads our last bytes, not a reset). */
static void conn_linger(struct sse_server *srv, struct conn *c, enum close_reason reason) {
    if (c->state == CONN_DEAD || c->state == CONN_LINGER)
        return;
    conn_let_go(srv, c, (enum conn_state)c->state);
    c->state = CONN_LINGER;
    c->reason = (uint8_t)reason;
    timer_set(srv, c, TIMER_LINGER);
    conn_flush_later(srv, c);
}

static void http_response_done(struct sse_server *srv, struct conn *c);

/* Whether a part holds c's output back (its connect is in progress). */
static bool conn_holding(const struct conn *c) {
    return c->part && c->part->ops->holding && c->part->ops->holding(c);
}

/* Writes what is pending and moves the connection on when its output is done. */
static void conn_flush(struct sse_server *srv, struct conn *c) {
    if (c->state == CONN_DEAD || conn_holding(c))
        return;
    int r = conn_write(srv, c);
    if (r < 0) {
        enum close_reason why = r == -2 ? R_ERROR : conn_gone(c, true);
        conn_close(srv, c, c->state == CONN_OUTBOUND ? R_PEER_FAILED : why);
        return;
    }
    if (c->part && c->part->ops->wrote)
        c->part->ops->wrote(srv, c); /* room again: the part resumes reading the other side */
    if (r > 0)
        return;
    if (c->state == CONN_RESPOND) {
        http_response_done(srv, c);
    } else if (c->state == CONN_LINGER && !(c->flags & CF_WR_SHUT)) {
        c->flags |= CF_WR_SHUT;
        shutdown(c->h.fd, SHUT_WR);
        conn_discard_input(srv, c);
    }
}

/* Writes every connection with pending output, once per iteration: handlers only queue, so
 * a burst of events leaves in one system call. */
static void conn_flush_all(struct sse_server *srv) {
    while (srv->flush_list) {
        struct conn *c = srv->flush_list;
        srv->flush_list = c->flush_next;
        c->flags &= (uint8_t)~CF_IN_FLUSH;
        conn_flush(srv, c);
    }
}

/* Frees closed connections. Only after conn_flush_all(): the flush list may name them. */
static void conn_reap(struct sse_server *srv) {
    while (srv->dead_list) {
        struct conn *c = srv->dead_list;
        srv->dead_list = c->tnext;
        free(c);
    }
}

#if SSE_ENABLE_PROXY || SSE_ENABLE_REDIS || SSE_ENABLE_AUTH /* the parts that connect out */
/* Where a part connects to (an upstream, Redis): resolved once at start-up, so the loop never
 * waits on DNS. */
struct remote {
    struct sockaddr_storage addr; /* its address */
    socklen_t addr_len;           /* bytes used in addr */
    char *url;                    /* "http://HOST:PORT" as configured, for messages */
    char *host;                   /* "HOST:PORT", a Host header */
    char *path;                   /* what follows HOST:PORT in the URL: a path, and a query */
};

static void remote_free(struct remote *u) {
    free(u->url);
    free(u->host);
    free(u->path);
}

/* Parses "http://HOST[:PORT][/PATH]" and resolves HOST (the only time it is resolved).
 * Returns NULL or what is wrong. */
static const char *remote_resolve(struct remote *u, const char *url) {
    if (strlen(url) < 8 || !ascii_ieq(url, 7, "http://"))
        return "must start with http://";
    const char *h = url + 7, *p, *hs = h, *he;
    char host[256], port[8] = "80";
    if (*h == '[') {
        he = strchr(h, ']');
        if (!he || (size_t)(he - h - 1) >= sizeof host)
            return "has an invalid [IPv6] host";
        hs = h + 1;
        p = he + 1;
    } else {
        p = he = h + strcspn(h, ":/?#");
        if (p == h || (size_t)(p - h) >= sizeof host)
            return "has no host";
    }
    memcpy(host, hs, (size_t)(he - hs));
    host[he - hs] = '\0';
    const char *host_end = p;
    if (*p == ':') {
        size_t n = strspn(p + 1, "0123456789");
        uint64_t v;
        if (n == 0 || n > 5 || !parse_u64(p + 1, n, &v) || v == 0 || v > 65535)
            return "has an invalid port";
        memcpy(port, p + 1, n);
        port[n] = '\0';
        p += 1 + n;
    }
    if (*p && *p != '/')
        return "must have a path starting with /";
    for (const char *c = p; *c; c++)
        if (*c <= 0x20 || *c >= 0x7F || *c == '#')
            return "has a character not allowed in a path";
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    if (getaddrinfo(host, port, &hints, &res) || !res)
        return "has a host that cannot be resolved";
    memcpy(&u->addr, res->ai_addr, res->ai_addrlen);
    u->addr_len = res->ai_addrlen;
    freeaddrinfo(res);
    char named[300]; /* the port always shown, for messages */
    snprintf(named, sizeof named, "http://%.*s:%s", (int)(host_end - h), h, port);
    u->url = strdup(named);
    u->host = strndup(h, (size_t)(p - h));
    u->path = strdup(p);
    if (!u->url || !u->host || !u->path)
        return "could not be stored (out of memory)";
    return NULL;
}
#endif

/* ==========================================================================================
 * 7. Endpoints
 *
 * The stream (WHATWG 9.2.2-9.2.4): the browser fails the EventSource for good on any status
 * but 200 or a Content-Type other than text/event-stream, and reconnects after `retry` ms on
 * a clean end of body. So passing trouble (overload, shutdown) is answered 200 + retry: +
 * close, 204 means "stop for good", 4xx only requests that will stay wrong. The response is
 * close-delimited: the spec warns that chunking by a layer unaware of the timing can hurt
 * streams, and HTTP/1.0 clients know nothing else.
 * Publishing, metrics and static files are ordinary HTTP/1.1 (RFC 9110, RFC 9112).
 * ======================================================================================== */

/* The reason phrase of a status; none for others (it is optional, RFC 9112 4). */
static const char *http_reason(int status) {
    /* clang-format off */
    static const struct {
        int status;
        const char *text;
    } reasons[] = {
        {100, "Continue"}, {200, "OK"}, {201, "Created"}, {202, "Accepted"}, {204, "No Content"},
        {301, "Moved Permanently"}, {302, "Found"}, {303, "See Other"}, {304, "Not Modified"},
        {307, "Temporary Redirect"}, {308, "Permanent Redirect"}, {400, "Bad Request"},
        {401, "Unauthorized"}, {403, "Forbidden"}, {404, "Not Found"}, {405, "Method Not Allowed"},
        {406, "Not Acceptable"}, {409, "Conflict"}, {410, "Gone"}, {411, "Length Required"},
        {413, "Content Too Large"}, {422, "Unprocessable Content"}, {429, "Too Many Requests"},
        {431, "Request Header Fields Too Large"}, {500, "Internal Server Error"},
        {501, "Not Implemented"}, {502, "Bad Gateway"}, {503, "Service Unavailable"},
        {504, "Gateway Timeout"}, {505, "HTTP Version Not Supported"},
    };
    /* clang-format on */
    for (size_t i = 0; i < sizeof reasons / sizeof reasons[0]; i++)
        if (reasons[i].status == status)
            return reasons[i].text;
    return "";
}

/* A response's body; head_only: only its length is told (HEAD, or a file sent after). */
struct http_body {
    const char *type;  /* Content-Type, or NULL */
    const char *bytes; /* len bytes, or NULL when they follow in a file */
    size_t len;        /* Content-Length */
    bool head_only;    /* queue the head alone */
};

/* Queues a whole response: status line, Date, Content-Type (if any), Content-Length (not
 * for 204 and 304), Connection when not the version's default, the CORS lines, extra
 * (ready-made header lines), then the body unless head_only. body NULL: none. */
static void http_respond(struct sse_server *srv, struct conn *c, int status, const char *extra,
                         const struct http_body *body) {
    static const struct http_body none = {NULL, NULL, 0, false};
    const struct http_body *bd = body ? body : &none;
    char head[SSE_HEAD_MAX + 1024];
    struct wbuf w = {head, sizeof head, 0};
    if (c->flags & CF_BODY_UNREAD)
        c->flags &= (uint8_t)~CF_KEEP_ALIVE; /* the unread body would be taken for a request */
    wb_str(&w, "HTTP/1.1 ");
    wb_u64(&w, (uint64_t)status);
    wb_put(&w, " ", 1);
    wb_str(&w, http_reason(status));
    wb_str(&w, "\r\nDate: ");
    wb_str(&w, srv->date);
    wb_str(&w, "\r\n");
    if (bd->type) {
        wb_str(&w, "Content-Type: ");
        wb_str(&w, bd->type);
        wb_str(&w, "\r\n");
    }
    if (status != 204 && status != 304) {
        wb_str(&w, "Content-Length: ");
        wb_u64(&w, bd->len);
        wb_str(&w, "\r\n");
    }
    if (!(c->flags & CF_KEEP_ALIVE))
        wb_str(&w, "Connection: close\r\n");
    else if (c->flags & CF_HTTP10)
        wb_str(&w, "Connection: keep-alive\r\n");
    wb_str(&w, srv->cors_headers);
    if (extra)
        wb_str(&w, extra);
    wb_str(&w, "\r\n");
    size_t blen = bd->head_only || status == 204 || status == 304 ? 0 : bd->len;
    struct blob *b = w.len <= w.cap ? blob_new(w.len + blen) : NULL;
    if (b) {
        memcpy(b->bytes, head, w.len);
        if (blen)
            memcpy(b->bytes + w.len, bd->bytes, blen);
    }
    if (!conn_enqueue_owned(srv, c, b)) {
        conn_close(srv, c, R_ERROR);
        return;
    }
    c->state = CONN_RESPOND;
    c->reason = R_DONE;
    timer_set(srv, c, TIMER_SEND);
}

/* A short text/plain answer: msg plus a newline. */
static void http_text(struct sse_server *srv, struct conn *c, int status, const char *msg,
                      const char *extra) {
    char body[256];
    int n = snprintf(body, sizeof body, "%s\n", msg);
    http_respond(
        srv, c, status, extra,
        &(struct http_body){"text/plain; charset=utf-8", body, n < 0 ? 0 : (size_t)n, false});
}

/* Answers a request that is wrong in itself and closes after: its framing can't be trusted. */
static void http_fail(struct sse_server *srv, struct conn *c, int status, const char *msg) {
    srv->m.bad_requests_total++;
    c->flags &= (uint8_t)~CF_KEEP_ALIVE;
    log_say(&srv->log, SSE_LOG_DEBUG, "connection #%u: %d %s", c->serial, status, msg);
    http_text(srv, c, status, msg, NULL);
    c->reason = R_BAD_REQUEST;
}

static void http_json(struct sse_server *srv, struct conn *c, struct wbuf *w) {
    if (w->len > w->cap) {
        conn_close(srv, c, R_ERROR);
        return;
    }
    http_respond(srv, c, 200, NULL, &(struct http_body){"application/json", w->p, w->len, false});
}

/* ---- the stream ------------------------------------------------------------------------ */

/* The response head every subscriber gets, rebuilt when the Date second changes. */
static struct blob *stream_head(struct sse_server *srv) {
    if (!srv->stream_head) {
        char head[1024];
        struct wbuf w = {head, sizeof head, 0};
        wb_str(&w, "HTTP/1.1 200 OK\r\nDate: ");
        wb_str(&w, srv->date);
        wb_str(&w, "\r\nContent-Type: text/event-stream\r\n"
                   "Cache-Control: no-cache, no-transform\r\n"
                   "X-Accel-Buffering: no\r\n");
        wb_str(&w, srv->cors_headers);
        wb_str(&w, "\r\n");
        if (w.len <= w.cap)
            srv->stream_head = blob_from(head, w.len);
    }
    return srv->stream_head;
}

/* "retry: J" with J drawn from [retry, 2 * retry], so clients sent away at the same moment
 * do not all come back at the same moment. */
static struct blob *stream_retry_jitter(struct sse_server *srv) {
    uint64_t base = srv->retry_ms ? (uint64_t)srv->retry_ms : SSE_DEFAULT_RETRY_MS;
    char line[48];
    struct wbuf w = {line, sizeof line, 0};
    wb_str(&w, "retry: ");
    wb_u64(&w, base + rng_next(&srv->rng) % (base + 1));
    wb_str(&w, "\n\n");
    return blob_from(line, w.len);
}

/* 200 + retry: + close, for a stream request we cannot serve now. */
static void stream_turn_away(struct sse_server *srv, struct conn *c, enum close_reason why) {
    struct blob *head = stream_head(srv);
    if (!head || !conn_enqueue(srv, c, head) ||
        !conn_enqueue_owned(srv, c, stream_retry_jitter(srv))) {
        conn_close(srv, c, R_ERROR);
        return;
    }
    conn_linger(srv, c, why);
}

/* An event under id (spelled as the history spells ids), as a blob; NULL if out of memory. */
static struct blob *stream_event(const struct sse_server *srv, uint64_t id, const char *type,
                                 const char *data, size_t len) {
    char text[48];
    struct wbuf w = {text, sizeof text, 0};
    srv->history->format_id(&w, id);
    size_t n = wire_format_event(NULL, 0, text, w.len, type, data, len);
    struct blob *b = blob_new(n);
    if (b)
        wire_format_event(b->bytes, n, text, w.len, type, data, len);
    return b;
}

/* What a subscriber without a last event id gets first: the current id, so a client that
 * drops before its first event still resumes where it started. By default the position
 * event, "id: CURRENT\nevent: position\ndata:\n\n", dispatched (it has a data line) because
 * only Chromium takes the id of a block that dispatches nothing as WHATWG 9.2.6 says ("set
 * the last event ID string ... If the data buffer is an empty string ... return"); Firefox,
 * Safari and npm eventsource record an id only with an event they fire. Its type keeps it
 * from onmessage. With position_event off, "id: CURRENT" and a blank line (Chromium only). */
static struct blob *stream_id_line(struct sse_server *srv) {
    if (!srv->id_line && srv->position_event) {
        srv->id_line = stream_event(srv, srv->last_id, "position", "", 0);
    } else if (!srv->id_line) {
        char line[56];
        struct wbuf w = {line, sizeof line, 0};
        wb_str(&w, "id: ");
        srv->history->format_id(&w, srv->last_id);
        wb_str(&w, "\n\n");
        srv->id_line = blob_from(line, w.len);
    }
    return srv->id_line;
}

/* The reset event: the id asked for cannot be replayed exactly; the data says which ids are
 * known, so the application can reload its state. */
static struct blob *stream_reset_event(struct sse_server *srv, const char *asked, size_t len) {
    char data[2048];
    struct wbuf w = {data, sizeof data, 0};
    wb_str(&w, "{\"requested\": ");
    wire_json_string(&w, asked, len > 256 ? 256 : len);
    wb_str(&w, ", \"oldest\": ");
    if (srv->backlog.count) {
        wb_str(&w, "\"");
        srv->history->format_id(&w, backlog_at(&srv->backlog, 0)->id);
        wb_str(&w, "\"");
    } else {
        wb_str(&w, "null");
    }
    wb_str(&w, ", \"current\": \"");
    srv->history->format_id(&w, srv->last_id);
    wb_str(&w, "\"}");
    return stream_event(srv, srv->last_id, "reset", data, w.len);
}

static bool stream_follows(const struct conn *c, const struct topic *t) {
    for (uint16_t i = 0; i < c->nsubs; i++)
        if (c->subs[i].topic == t)
            return true;
    return false;
}

/* Queues every retained event after id on the subscriber's topics. */
static bool stream_replay_rest(struct sse_server *srv, struct conn *c, uint64_t id) {
    for (uint32_t i = backlog_after(&srv->backlog, id); i < srv->backlog.count; i++) {
        struct blob *ev = backlog_at(&srv->backlog, i);
        if (stream_follows(c, ev->topic) && !conn_enqueue(srv, c, ev))
            return false;
    }
    return true;
}

/* The answer to a Last-Event-ID, whichever history decided: covered, every retained event
 * after `after` on the subscriber's topics; otherwise the reset event naming the id asked
 * for (WHATWG 9.2.4 leaves it to the server what it sends after a Last-Event-ID; we never
 * pretend a gap is not there). Counts the replay or the reset. */
static bool stream_answer(struct sse_server *srv, struct conn *c, const char *asked,
                          size_t asked_len, uint64_t after, bool covered) {
    if (covered) {
        srv->m.replays_total++;
        return stream_replay_rest(srv, c, after);
    }
    srv->m.resets_total++;
    return conn_enqueue_owned(srv, c, stream_reset_event(srv, asked, asked_len));
}

/* A history that answered HISTORY_LATER answers here: the subscriber gets live events again
 * and stream_answer()'s answer, or is closed if that fails. */
FOR_PARTS static void stream_answer_later(struct sse_server *srv, struct conn *c, uint64_t after,
                                          bool covered) {
    c->flags &= (uint8_t)~CF_REPLAYING;
    char asked[48];
    struct wbuf w = {asked, sizeof asked, 0};
    srv->history->format_id(&w, after);
    if (!stream_answer(srv, c, asked, w.len, after, covered))
        conn_close(srv, c, R_ERROR);
}

/* Queues what a subscriber gets before live events: the retained events after its last id,
 * or the reset event, or (no last id) the current id. A history that must ask elsewhere
 * (Redis) answers later; until then the subscriber is CF_REPLAYING: live events skip it. */
static bool stream_catch_up(struct sse_server *srv, struct conn *c, const char *last,
                            size_t last_len) {
    if (!last)
        return conn_enqueue(srv, c, stream_id_line(srv));
    const struct history_ops *h = srv->history;
    uint64_t id = 0;
    enum history_answer a = HISTORY_RESET;
    if (h->parse_id(last, last_len, &id))
        a = h->covers                                         ? h->covers(srv, c, id)
            : backlog_covers(&srv->backlog, id, srv->last_id) ? HISTORY_COVERED
                                                              : HISTORY_RESET;
    if (a == HISTORY_LATER) {
        c->flags |= CF_REPLAYING;
        return true;
    }
    return stream_answer(srv, c, last, last_len, id, a == HISTORY_COVERED);
}

/* What a new subscriber gets between the response head and live events. */
struct stream_start {
    const char *last;   /* its last event id (not NUL-terminated), or NULL */
    size_t last_len;    /* bytes at last */
    struct blob *first; /* the host's own events (sse_respond_stream()), queued before the
                           catch-up; NULL = none. The caller keeps its reference */
};

/* Turns the connection into a subscriber of the given topics: head, retry:, st->first, then
 * the catch-up for st->last. Out of memory closes the connection. */
static void stream_open(struct sse_server *srv, struct conn *c, const char *const *names,
                        const size_t *lens, size_t n, const struct stream_start *st) {
    c->subs = calloc(n, sizeof *c->subs);
    for (size_t i = 0; c->subs && i < n; i++) {
        struct topic *t = topic_get(&srv->topics, names[i], lens[i]);
        if (!t)
            break;
        struct sub *s = &c->subs[i];
        s->topic = t;
        s->conn = c;
        s->next = t->subs;
        if (t->subs)
            t->subs->prev = s;
        t->subs = s;
        c->nsubs = (uint16_t)(i + 1);
    }
    struct blob *head = stream_head(srv);
    if (c->nsubs != n || !head) {
        conn_close(srv, c, R_ERROR);
        return;
    }
    c->state = CONN_STREAM;
    c->flags |= CF_SUBSCRIBER;
    srv->nsubscribers++;
    pace_check(srv); /* one more subscriber may end a hold */
    free(c->in);     /* anything pipelined after a stream request is meaningless */
    c->in = NULL;
    /* A peer that vanished without a FIN is found by unacknowledged heartbeats timing out
     * (TCP_USER_TIMEOUT), or by keepalive probes when the stream is quiet. */
    static const int opts[][3] = {{SOL_SOCKET, SO_KEEPALIVE, 1},
                                  {IPPROTO_TCP, TCP_KEEPIDLE, 60},
                                  {IPPROTO_TCP, TCP_KEEPINTVL, 10},
                                  {IPPROTO_TCP, TCP_KEEPCNT, 3},
                                  {IPPROTO_TCP, TCP_USER_TIMEOUT, TCP_USER_TIMEOUT_MS}};
    for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++)
        setsockopt(c->h.fd, opts[i][0], opts[i][1], &opts[i][2], sizeof opts[i][2]);
    if (!conn_enqueue(srv, c, head) ||
        (srv->retry_line && !conn_enqueue(srv, c, srv->retry_line)) ||
        (st->first && !conn_enqueue(srv, c, st->first)) ||
        !stream_catch_up(srv, c, st->last, st->last_len)) {
        conn_close(srv, c, R_ERROR);
        return;
    }
    timer_set(srv, c, TIMER_STREAM);
}

/* The one rule for what a subscriber may have queued: an event of len bytes more must not
 * take it past client_buffer, or it is dropped as slow (it comes back with Last-Event-ID);
 * an idle one always takes the event, so one larger than the buffer drops nobody. */
static bool stream_room(struct sse_server *srv, struct conn *c, size_t len) {
    if (!c->qbytes || c->qbytes + len <= srv->client_buffer)
        return true;
    srv->m.dropped_total++;
    conn_close(srv, c, R_SLOW);
    return false;
}

/* Queues a live event, or drops a subscriber too far behind (it reconnects and catches up
 * from the backlog; everyone else keeps real time). */
static bool stream_push(struct sse_server *srv, struct conn *c, struct blob *ev) {
    if (c->flags & CF_REPLAYING)
        return false; /* it takes this event from the backlog when its replay ends */
    if (!stream_room(srv, c, ev->len))
        return false;
    if (!conn_enqueue(srv, c, ev)) {
        conn_close(srv, c, R_ERROR);
        return false;
    }
    timer_set(srv, c, TIMER_STREAM);
    return true;
}

/* Heartbeat (WHATWG 9.2.7 suggests a comment every 15 s or so against proxies that drop
 * quiet connections). Skipped while bytes are queued: then the line is not quiet. */
static void stream_heartbeat(struct sse_server *srv, struct conn *c) {
    if (c->qlen == 0 && !conn_enqueue(srv, c, srv->heartbeat)) {
        conn_close(srv, c, R_ERROR);
        return;
    }
    timer_set(srv, c, TIMER_STREAM);
}

/* A stream's topics: the path segment after the prefix and every topic= parameter, without
 * duplicates; "default" when none. Returns the count, or -1 with *why. */
static int stream_topics(const char *rest, size_t rest_len, const struct http_query *q,
                         const char **names, size_t *lens, const char **why) {
    int n = 0;
    names[0] = DEFAULT_TOPIC; /* unless a topic comes */
    lens[0] = strlen(DEFAULT_TOPIC);
    for (size_t i = 0; i <= q->n; i++) {
        const char *name;
        size_t len;
        if (i == q->n) {
            if (rest_len == 0)
                break;
            name = rest + 1;
            len = rest_len - 1;
        } else if (bytes_eq(q->params[i].key, q->params[i].key_len, "topic")) {
            name = q->params[i].value;
            len = q->params[i].value_len;
        } else {
            continue;
        }
        if (!wire_topic_valid(name, len)) {
            *why = "invalid topic name: use 1 to 64 of A-Z a-z 0-9 . _ -";
            return -1;
        }
        int j = 0;
        while (j < n && !(lens[j] == len && memcmp(names[j], name, len) == 0))
            j++;
        if (j < n)
            continue;
        if (n == SSE_MAX_TOPICS_PER_STREAM) {
            *why = "too many topics for one stream";
            return -1;
        }
        names[n] = name;
        lens[n++] = len;
    }
    return n ? n : 1;
}

/* The client's last event id: the Last-Event-ID header, else a query parameter as polyfills
 * and other servers spell it (an EventSource's first connection cannot send the header). */
static const char *stream_last_id(const struct http_request *req, const struct http_query *q,
                                  size_t *len) {
    const struct http_header *h = http_header(req, "Last-Event-ID");
    if (h && h->value_len) {
        *len = h->value_len;
        return h->value;
    }
    static const char *const names[] = {"lastEventId", "last_event_id", "lastEventID",
                                        "Last-Event-ID"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const struct http_param *p = http_query_get(q, names[i]);
        if (p && p->value_len) {
            *len = p->value_len;
            return p->value;
        }
    }
    return NULL;
}

/* Whether the request carries the token as "Authorization: Bearer", or as ?token= when
 * allow_query (EventSource cannot set headers). */
static bool http_token_ok(const struct http_request *req, const struct http_query *q,
                          const char *secret, bool allow_query) {
    size_t slen = strlen(secret);
    const struct http_header *h = http_header(req, "Authorization");
    const char *tok;
    size_t tlen;
    if (h && http_bearer(h->value, h->value_len, &tok, &tlen) && ct_equal(tok, tlen, secret, slen))
        return true;
    const struct http_param *p = allow_query ? http_query_get(q, "token") : NULL;
    return p && ct_equal(p->value, p->value_len, secret, slen);
}

/* The answers a stream request gets instead of the stream: 204 when every one of its topics
 * is retired (EventSource stops reconnecting), 200 + retry: and close when over the limit or
 * while the history has no current id yet (come back soon). True when none applies. */
static bool stream_admit(struct sse_server *srv, struct conn *c, const char *const *names,
                         const size_t *lens, size_t n) {
    bool all_retired = true;
    for (size_t i = 0; i < n && all_retired; i++) {
        struct topic *t = topic_find(&srv->topics, names[i], lens[i]);
        all_retired = t && t->retired;
    }
    if (all_retired) {
        http_respond(srv, c, 204, NULL, NULL);
        return false;
    }
    if (c->flags & CF_OVER_LIMIT)
        srv->m.rejected_total++;
    if ((c->flags & CF_OVER_LIMIT) ||
        (srv->history->positioned && !srv->history->positioned(srv))) {
        stream_turn_away(srv, c, R_OVERLOAD);
        return false;
    }
    return true;
}

/* An EventSource request: a GET whose Accept names text/event-stream (browsers send exactly
 * that). Such a request must never be answered with a 5xx for a passing failure. */
static bool http_is_eventsource(const struct http_request *req) {
    const struct http_header *accept = http_header(req, "Accept");
    return bytes_eq(req->method, req->method_len, "GET") && accept &&
           http_accepts_event_stream(accept->value, accept->value_len, false);
}

/* stream_open() for what access allowed: the stream ends at a.until, if set. */
static void stream_open_until(struct sse_server *srv, struct conn *c, const struct access_ask *a,
                              const struct stream_start *st) {
    stream_open(srv, c, a->names, a->lens, a->n, st);
    if (a->until && c->state == CONN_STREAM && !ending_add(&srv->ending, c, a->until))
        conn_close(srv, c, R_ERROR);
}

/* Keeps what the stream needs while the access part decides (CONN_ACCESS). */
static void stream_wait(struct sse_server *srv, struct conn *c, const struct access_ask *a,
                        const struct stream_start *st) {
    struct stream_wait *w = malloc(sizeof *w + st->last_len);
    if (!w) {
        conn_close(srv, c, R_ERROR);
        return;
    }
    w->n = a->n;
    for (size_t i = 0; i < a->n; i++) {
        w->lens[i] = (uint8_t)a->lens[i]; /* valid names: at most TOPIC_NAME_MAX */
        memcpy(w->names[i], a->names[i], a->lens[i]);
    }
    w->last_len = st->last ? st->last_len : 0;
    memcpy(w->last, st->last ? st->last : "", w->last_len);
    w->eventsource = http_is_eventsource(a->req);
    free(c->body);
    c->wait = w;
    c->state = CONN_ACCESS;
    c->flags &= (uint8_t)~CF_KEEP_ALIVE; /* pipelined requests are not kept meanwhile */
    timer_set(srv, c, TIMER_SEND);
}

/* A refusal, sooner or later: 401 and 403 end an EventSource for good; anything else means
 * "not now" (the application could not be asked), which an EventSource must get as a 200
 * and a retry: (a 5xx would end it for good), and anything else as a 503. */
FOR_PARTS static void access_refuse(struct sse_server *srv, struct conn *c, bool eventsource,
                                    int status, const char *why) {
    if (status == 401)
        http_text(srv, c, 401, why, "WWW-Authenticate: Bearer\r\n");
    else if (status == 403)
        http_text(srv, c, 403, why, NULL);
    else if (eventsource)
        stream_turn_away(srv, c, R_OVERLOAD);
    else
        http_text(srv, c, 503, why, "Retry-After: 1\r\n");
}

/* The access part's later answer for a CONN_ACCESS connection: status 200 opens the stream on
 * the topics keep[] marks (NULL: all), ending at until (0: never); any other is refused as
 * access_refuse() says, with why. */
FOR_PARTS static void access_decided(struct sse_server *srv, struct conn *c, int status,
                                     const char *why, const bool *keep, int64_t until) {
    struct stream_wait *w = c->wait;
    c->wait = NULL;
    c->state = CONN_REQUEST; /* out of CONN_ACCESS: answered as any request */
    timer_unlink(srv, c);
    const char *names[SSE_MAX_TOPICS_PER_STREAM];
    size_t lens[SSE_MAX_TOPICS_PER_STREAM], n = 0;
    for (size_t i = 0; i < w->n; i++)
        if (!keep || keep[i]) {
            names[n] = w->names[i];
            lens[n++] = w->lens[i];
        }
    struct access_ask a = {NULL, NULL, names, lens, n, until};
    struct stream_start st = {w->last_len ? w->last : NULL, w->last_len, NULL};
    if (status != 200)
        access_refuse(srv, c, w->eventsource, status, why);
    else if (stream_admit(srv, c, names, lens, n))
        stream_open_until(srv, c, &a, &st);
    free(w);
}

/* GET on the stream path: the method, topics, token and Accept checked, then the stream. */
static void stream_handle(struct sse_server *srv, struct conn *c, const struct http_request *req,
                          const struct http_query *q, const char *rest, size_t rest_len) {
    if (ascii_ieq(req->method, req->method_len, "OPTIONS")) {
        http_respond(srv, c, 204, "Allow: GET, OPTIONS\r\n", NULL);
        return;
    }
    if (!bytes_eq(req->method, req->method_len, "GET")) {
        http_text(srv, c, 405, "method not allowed", "Allow: GET, OPTIONS\r\n");
        return;
    }
    const char *names[SSE_MAX_TOPICS_PER_STREAM];
    size_t lens[SSE_MAX_TOPICS_PER_STREAM];
    const char *why = NULL;
    int n = stream_topics(rest, rest_len, q, names, lens, &why);
    if (n < 0) {
        http_text(srv, c, 400, why, NULL);
        return;
    }
    if (srv->subscribe_token && !http_token_ok(req, q, srv->subscribe_token, true)) {
        http_text(srv, c, 401, "subscribing needs a token", "WWW-Authenticate: Bearer\r\n");
        return;
    }
    for (size_t i = 0; i < req->num_headers; i++) {
        const struct http_header *h = &req->headers[i];
        if (ascii_ieq(h->name, h->name_len, "Accept") &&
            !http_accepts_event_stream(h->value, h->value_len, true)) {
            http_text(srv, c, 406, "this endpoint only sends text/event-stream", NULL);
            return;
        }
    }
    struct stream_start st = {NULL, 0, NULL};
    st.last = stream_last_id(req, q, &st.last_len);
    struct access_ask a = {req, q, names, lens, (size_t)n, 0};
    if (srv->access && !(c->flags & CF_OVER_LIMIT)) { /* turned away: no need to ask */
        enum access_answer r = srv->access->subscribe(srv, c, &a);
        if (r == ACCESS_LATER)
            stream_wait(srv, c, &a, &st);
        if (r != ACCESS_ALLOW)
            return;
    }
    if (stream_admit(srv, c, names, lens, a.n))
        stream_open_until(srv, c, &a, &st);
}

/* ---- publishing ------------------------------------------------------------------------ */

/* What every publish checks first: a valid topic (NULL: the default), event type, and UTF-8
 * data within the size limit. 0, -EINVAL or -EMSGSIZE. */
static int publish_check(const struct sse_server *srv, const char **topic, const char *event,
                         const char *data, size_t len) {
    if (!*topic)
        *topic = DEFAULT_TOPIC;
    if (!wire_topic_valid(*topic, strlen(*topic)) ||
        (event && !wire_event_type_valid(event, strlen(event))))
        return -EINVAL;
    if (len > srv->max_event_bytes)
        return -EMSGSIZE;
    if (!wire_utf8_valid(data ? data : "", data ? len : 0))
        return -EINVAL;
    return 0;
}

/* Where every checked event ends up, whoever assigned its id: formatted once, stored by the
 * history, kept in the backlog, queued for its topic's subscribers. Returns how many, or
 * -ENOMEM, or -EIO when the history could not store it (then nobody hears of it). */
static int publish_deliver_now(struct sse_server *srv, uint64_t id, const char *topic,
                               const char *event, const char *data, size_t len) {
    struct topic *t = topic_get(&srv->topics, topic, strlen(topic));
    struct blob *ev = t ? stream_event(srv, id, event, data, len) : NULL;
    if (!ev) {
        if (t)
            topic_unref(t);
        return -ENOMEM;
    }
    ev->id = id;
    ev->topic = t;
    if (srv->history->store && srv->history->store(srv, ev) < 0) {
        blob_unref(ev); /* not stored: nobody hears of it, and the id is not used */
        return -EIO;
    }
    uint64_t prev = srv->last_id;
    srv->last_id = id;
    blob_unref(srv->id_line);
    srv->id_line = NULL;
    topic_retire_flag(t, false);
    backlog_push(&srv->backlog, ev, prev);
    if (srv->history->kept)
        srv->history->kept(srv, id);
    int queued = 0;
    for (struct sub *s = t->subs, *next; s; s = next) {
        next = s->next;
        queued += stream_push(srv, s->conn, ev);
    }
    blob_unref(ev);
    srv->m.published_total++;
    return queued;
}

/* A log line while delivering (a slow subscriber dropped) reaches on_log, which may call
 * sse_publish(): srv->busy makes that fail with -EBUSY, not change the lists being walked. */
static int publish_deliver(struct sse_server *srv, uint64_t id, const char *topic,
                           const char *event, const char *data, size_t len) {
    bool was_busy = srv->busy;
    srv->busy = true;
    int r = publish_deliver_now(srv, id, topic, event, data, len);
    srv->busy = was_busy;
    return r;
}

/* Delivers under the server's next id. Ids never wrap (a smaller id would make clients'
 * Last-Event-ID skip or repeat events, and the journal refuse its file): past UINT64_MAX,
 * -EOVERFLOW, and /healthz answers 503. Otherwise as publish_deliver(). */
static int publish_local(struct sse_server *srv, const char *topic, const char *event,
                         const char *data, size_t len) {
    if (srv->last_id == UINT64_MAX)
        return -EOVERFLOW;
    return publish_deliver(srv, srv->last_id + 1, topic, event, data, len);
}

/* The one publishing path: checks the event (in->topic NULL: the default), then hands it to
 * the history's append (by default: the next id, delivered at once). */
static int publish_event(struct sse_server *srv, const struct publish_in *in, uint64_t *id_out) {
    struct publish_in ev = *in;
    int r = publish_check(srv, &ev.topic, ev.event, ev.data, ev.len);
    if (r < 0)
        return r;
    uint64_t id = 0;
    if (srv->history->append) {
        r = srv->history->append(srv, &ev, &id);
    } else {
        r = publish_local(srv, ev.topic, ev.event, ev.data, ev.len);
        id = r >= 0 ? srv->last_id : 0;
    }
    if (id_out)
        *id_out = id;
    return r;
}

/* Ends the streams of topic's subscribers (with retire, only those following nothing but
 * retired topics) once their queues went out. Returns how many, or -EINVAL, -ENOMEM. */
static int publish_end_subscribers(struct sse_server *srv, const char *topic, bool retire) {
    size_t tlen = strlen(topic);
    if (!wire_topic_valid(topic, tlen))
        return -EINVAL;
    struct topic *t = topic_get(&srv->topics, topic, tlen);
    if (!t)
        return -ENOMEM;
    if (retire && !topic_retire_flag(t, true)) {
        topic_unref(t);
        return -ENOMEM;
    }
    srv->busy = true; /* as in publish_deliver() */
    int ended = 0;
    for (struct sub *s = t->subs, *next; s; s = next) {
        next = s->next;
        struct conn *c = s->conn;
        bool all_retired = true;
        for (uint16_t i = 0; retire && i < c->nsubs; i++)
            all_retired = all_retired && c->subs[i].topic->retired;
        if (all_retired) {
            conn_linger(srv, c, retire ? R_RETIRED : R_RECONNECT);
            ended++;
        }
    }
    srv->busy = false;
    topic_unref(t);
    return ended;
}

/* Retiring closes the subscribers of a topic that follow nothing else, and answers 204 to
 * new ones until the next publish there: the one way to make an EventSource stop (WHATWG
 * 9.2.3: a response other than 200 fails the connection for good). */
static int publish_retire(struct sse_server *srv, const char *topic) {
    return publish_end_subscribers(srv, topic, true);
}

/* Ending a stream without retiring is the opposite message: the end of the body tells an
 * EventSource to reconnect after retry (9.2.3), with Last-Event-ID, and replay fills the gap. */
static int publish_end_streams(struct sse_server *srv, const char *topic) {
    return publish_end_subscribers(srv, topic, false);
}

/* Answers a publish: 200 with the id, topic and subscribers queued to, or the error r. */
static void publish_answer(struct sse_server *srv, struct conn *c, int r, uint64_t id,
                           const char *topic) {
    if (r == -EINVAL) {
        http_text(srv, c, 400, "the body must be valid UTF-8", NULL);
    } else if (r == -EIO) {
        http_text(srv, c, 503, "the event could not be stored; it was not published", NULL);
    } else if (r == -EOVERFLOW) {
        http_text(srv, c, 503,
                  "id space exhausted: the last id is 18446744073709551615; it was not published",
                  NULL);
    } else if (r < 0) {
        http_text(srv, c, 500, "could not publish", NULL);
    } else {
        char out[256];
        struct wbuf w = {out, sizeof out, 0};
        wb_str(&w, "{\"id\": \"");
        srv->history->format_id(&w, id);
        wb_str(&w, "\", \"topic\": \"");
        wb_str(&w, topic);
        wb_str(&w, "\", \"subscribers\": ");
        wb_u64(&w, (uint64_t)r);
        wb_str(&w, "}\n");
        http_json(srv, c, &w);
    }
}

/* The body has arrived: publish it and answer with the id, or wait (CONN_WAIT) for the
 * history to tell it. */
static void publish_finish(struct sse_server *srv, struct conn *c) {
    if (srv->pace.held) { /* flow control: wait for the subscribers, body kept */
        c->state = CONN_PACED;
        timer_set(srv, c, TIMER_PACED);
        return;
    }
    struct body *b = c->body;
    c->body = NULL;
    const char *event = b->event[0] ? b->event : NULL;
    uint64_t id = 0;
    int r =
        publish_event(srv, &(struct publish_in){b->topic, event, b->data, b->have, c, NULL}, &id);
    if (r >= 0 && id == 0) {
        c->state = CONN_WAIT;
        timer_set(srv, c, TIMER_SEND);
    } else {
        publish_answer(srv, c, r, id, b->topic);
    }
    free(b);
}

/* A publish held for publish_wait_ms (or at a stop) is refused: nothing was published. */
static void publish_paced_timeout(struct sse_server *srv, struct conn *c) {
    free(c->body);
    c->body = NULL;
    c->state = CONN_BODY; /* out of CONN_PACED, so the answer is an ordinary one */
    srv->pace.publish_timeouts++;
    http_text(srv, c, 503, "subscribers are behind; the event was not published, send it again",
              "Retry-After: 1\r\n");
}

/* Takes up to n bytes of body; publishes when it is complete. Returns bytes taken. */
static size_t publish_body_feed(struct sse_server *srv, struct conn *c, const char *p, size_t n) {
    struct body *b = c->body;
    size_t take = b->need - b->have < n ? b->need - b->have : n;
    memcpy(b->data + b->have, p, take);
    b->have += take;
    if (b->have == b->need)
        publish_finish(srv, c);
    return take;
}

/* Reads the body from the socket until it is complete or the socket is empty. */
static void publish_body_read(struct sse_server *srv, struct conn *c) {
    while (c->state == CONN_BODY) {
        struct body *b = c->body;
        ssize_t n = read(c->h.fd, b->data + b->have, b->need - b->have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            conn_close(srv, c, conn_gone(c, n < 0));
            return;
        }
        b->have += (size_t)n;
        if (b->have == b->need)
            publish_finish(srv, c);
    }
}

/* Validates the ?topic= and ?event= of a publish into topic (DEFAULT_TOPIC when absent) and
 * event ("" when absent). Returns NULL or what is wrong. */
static const char *publish_params(const struct http_query *q, char *topic, char *event) {
    const struct http_param *t = http_query_get(q, "topic");
    const struct http_param *e = http_query_get(q, "event");
    if (t && !wire_topic_valid(t->value, t->value_len))
        return "invalid topic name: use 1 to 64 of A-Z a-z 0-9 . _ -";
    if (e && !wire_event_type_valid(e->value, e->value_len))
        return "invalid event type: 1 to 256 bytes of UTF-8 without CR, LF or NUL";
    size_t tlen = t ? t->value_len : strlen(DEFAULT_TOPIC), elen = e ? e->value_len : 0;
    memcpy(topic, t ? t->value : DEFAULT_TOPIC, tlen); /* both checked for length above */
    topic[tlen] = '\0';
    memcpy(event, e ? e->value : "", elen);
    event[elen] = '\0';
    return NULL;
}

/* Sets c up to receive a publish body of content_length bytes (asking for it with 100
 * Continue when the client waits for that), or publishes at once when empty. */
static void publish_expect_body(struct sse_server *srv, struct conn *c,
                                const struct http_request *req, const char *topic,
                                const char *event, uint64_t content_length) {
    if (content_length > srv->max_event_bytes) {
        http_fail(srv, c, 413, "event over --max-event-bytes");
        return;
    }
    struct body *b = malloc(sizeof *b + content_length);
    if (!b) {
        http_text(srv, c, 503, "out of memory", "Retry-After: 1\r\n");
        return;
    }
    b->need = (size_t)content_length;
    b->have = 0;
    strcpy(b->topic, topic);
    strcpy(b->event, event);
    c->body = b;
    c->flags &= (uint8_t)~CF_BODY_UNREAD;
    c->state = CONN_BODY;
    timer_set(srv, c, TIMER_REQUEST);
    const struct http_header *expect = http_header(req, "Expect");
    if (expect && content_length && !(c->flags & CF_HTTP10) &&
        ascii_ieq(expect->value, expect->value_len, "100-continue") &&
        !conn_enqueue(srv, c, srv->continue_100)) {
        conn_close(srv, c, R_ERROR);
        return;
    }
    if (content_length == 0)
        publish_finish(srv, c);
}

/* Whether the request may publish to topic (NULL: not a valid name): with publish_token, or
 * as the access part grants. False when it has answered. */
static bool publish_allowed(struct sse_server *srv, struct conn *c, const struct http_request *req,
                            const struct http_query *q, const char *topic) {
    if (srv->publish_token && http_token_ok(req, q, srv->publish_token, false))
        return true;
    enum access_answer a = ACCESS_PASS;
    if (srv->access && srv->access->publish)
        a = srv->access->publish(srv, c, req, q, topic);
    if (a != ACCESS_PASS)
        return a == ACCESS_ALLOW;
    if (!srv->publish_token)
        http_text(srv, c, 403,
                  "publishing over HTTP is disabled: start sse-server with --publish-token", NULL);
    else
        http_text(srv, c, 401, "publishing needs Authorization: Bearer <token>",
                  "WWW-Authenticate: Bearer\r\n");
    return false;
}

static void publish_handle(struct sse_server *srv, struct conn *c, const struct http_request *req,
                           const struct http_query *q, uint64_t content_length) {
    static const char allow[] = "Allow: POST, DELETE, OPTIONS\r\n";
    bool post = bytes_eq(req->method, req->method_len, "POST");
    bool del = bytes_eq(req->method, req->method_len, "DELETE");
    if (bytes_eq(req->method, req->method_len, "OPTIONS")) {
        http_respond(srv, c, 204,
                     *srv->cors_headers ? "Allow: POST, DELETE, OPTIONS\r\n"
                                          "Access-Control-Allow-Methods: POST, DELETE, OPTIONS\r\n"
                                          "Access-Control-Allow-Headers: Authorization, "
                                          "Content-Type, Last-Event-ID\r\n"
                                          "Access-Control-Max-Age: 600\r\n"
                                        : allow,
                     NULL);
        return;
    }
    if (!post && !del) {
        http_text(srv, c, 405, "method not allowed", allow);
        return;
    }
    char topic[TOPIC_NAME_MAX + 1], event[EVENT_TYPE_MAX + 1];
    const char *why = publish_params(q, topic, event);
    if (!publish_allowed(srv, c, req, q, why ? NULL : topic))
        return;
    if (why) {
        http_text(srv, c, 400, why, NULL);
        return;
    }
    if (del) {
        char out[256];
        struct wbuf w = {out, sizeof out, 0};
        int closed = publish_retire(srv, topic);
        wb_str(&w, "{\"topic\": \"");
        wb_str(&w, topic);
        wb_str(&w, "\", \"closed\": ");
        wb_u64(&w, closed > 0 ? (uint64_t)closed : 0);
        wb_str(&w, "}\n");
        http_json(srv, c, &w);
        return;
    }
    publish_expect_body(srv, c, req, topic, event, content_length);
}

/* ---- metrics, health, static files ----------------------------------------------------- */

/* The # HELP and # TYPE lines that open a metric family (its samples follow); name may be a
 * sample's, labels and all. */
static void metrics_family(struct wbuf *w, const char *name, const char *type, const char *help) {
    size_t len = strcspn(name, "{");
    wb_str(w, "# HELP ");
    wb_put(w, name, len);
    wb_put(w, " ", 1);
    wb_str(w, help);
    wb_str(w, "\n# TYPE ");
    wb_put(w, name, len);
    wb_put(w, " ", 1);
    wb_str(w, type);
    wb_put(w, "\n", 1);
}

/* Writes each row as a family with its one sample, or as the sample of the family above. */
static void metrics_rows(struct wbuf *w, const struct metrics_row *rows, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (rows[i].help)
            metrics_family(w, rows[i].name, rows[i].type, rows[i].help);
        wb_str(w, rows[i].name);
        wb_put(w, " ", 1);
        wb_u64(w, rows[i].value);
        wb_put(w, "\n", 1);
    }
}

/* A labelled sample: open (`name{label="`), the label, then the value and frac ("" or ".ms"). */
static void metrics_sample(struct wbuf *w, const char *open, const char *label, uint64_t value,
                           const char *frac) {
    wb_str(w, open);
    wb_str(w, label);
    wb_str(w, "\"} ");
    wb_u64(w, value);
    wb_str(w, frac);
    wb_put(w, "\n", 1);
}

/* Flow control's holds by cause: how often the gate closed and for how long, the hold under
 * way included. */
static void metrics_pace(const struct sse_server *srv, struct wbuf *w) {
    const struct pace *p = &srv->pace;
    metrics_family(w, "sse_publish_holds_total", "counter",
                   "Times publishers were held (inputs and relays not read), by cause.");
    for (int i = PACE_SUBSCRIBERS; i < PACE_CAUSES; i++)
        metrics_sample(w, "sse_publish_holds_total{cause=\"", pace_cause_label[i], p->holds[i], "");
    metrics_family(w, "sse_inputs_held_seconds_total", "counter",
                   "Seconds publishers were held, by cause.");
    for (int i = PACE_SUBSCRIBERS; i < PACE_CAUSES; i++) {
        uint64_t ms = p->held_ms[i] + (p->cause == i ? (uint64_t)(srv->now - p->gate_since) : 0);
        char frac[8];
        snprintf(frac, sizeof frac, ".%03u", (unsigned)(ms % 1000));
        metrics_sample(w, "sse_inputs_held_seconds_total{cause=\"", pace_cause_label[i], ms / 1000,
                       frac);
    }
}

/* The core's own rows. */
static void metrics_core(const struct sse_server *srv, struct wbuf *w) {
    const struct metrics_row rows[] = {
        {"sse_subscribers", "gauge", "Subscribers connected now.", srv->nsubscribers},
        {"sse_connections", "gauge", "Client connections open now, over --max-clients or not.",
         (uint64_t)srv->nconns + srv->noverflow},
        {"sse_backlog_events", "gauge", "Events retained for replay.", srv->backlog.count},
        {"sse_backlog_bytes", "gauge", "Bytes of the events retained for replay, as sent.",
         srv->backlog.bytes},
        {"sse_topics", "gauge", "Topics held: subscribed, in the backlog or retired.",
         srv->topics.names.count},
        {"sse_connections_total", "counter", "Client connections accepted.",
         srv->m.connections_total},
        {"sse_connections_rejected_total", "counter",
         "Connections turned away: over --max-clients or out of file descriptors.",
         srv->m.rejected_total},
        {"sse_events_published_total", "counter", "Events published.", srv->m.published_total},
        {"sse_events_delivered_total", "counter", "Events written out to subscribers.",
         srv->m.delivered_total},
        {"sse_bytes_delivered_total", "counter", "Bytes written to subscribers.",
         srv->m.bytes_total},
        {"sse_subscribers_dropped_total", "counter",
         "Subscribers disconnected for falling more than --client-buffer behind.",
         srv->m.dropped_total},
        {"sse_subscribers_lagging", "gauge",
         "Subscribers past the flow-control high-water mark, counted for holding publishers.",
         srv->pace.lagging},
        {"sse_subscribers_left_behind", "gauge",
         "Subscribers still lagging after the others caught up: not waited for.", srv->pace.behind},
        {"sse_subscribers_left_behind_total", "counter",
         "Subscribers left behind by flow control (then dropped, or caught up).",
         srv->pace.left_behind_total},
        {"sse_publish_wait_timeouts_total", "counter",
         "HTTP publishes answered 503 after waiting for subscribers to catch up.",
         srv->pace.publish_timeouts},
        {"sse_replays_total", "counter", "Subscriptions resumed exactly from a Last-Event-ID.",
         srv->m.replays_total},
        {"sse_resets_total", "counter", "Subscriptions sent the reset event instead.",
         srv->m.resets_total},
        {"sse_bad_requests_total", "counter", "Requests refused as malformed or too large.",
         srv->m.bad_requests_total},
    };
    metrics_rows(w, rows, sizeof rows / sizeof rows[0]);
}

/* The Prometheus text format (0.0.4). Every accepted connection is open, or closed once under
 * one reason, so sum(sse_connections_closed_total) + sse_connections == sse_connections_total
 * at every scrape. Over-limit connections count as accepted and open while answered, and as
 * rejected, as do those closed at accept, never accepted (beyond OVERFLOW_MAX, no fds). */
static void metrics_handle(struct sse_server *srv, struct conn *c, bool head_only) {
    char out[16384];
    struct wbuf w = {out, sizeof out, 0};
    metrics_core(srv, &w);
    for (size_t i = 0; i < srv->nparts; i++) {
        if (srv->parts[i].ops->metrics) {
            struct metrics_row part_rows[PART_ROWS_MAX] = {{NULL, NULL, NULL, 0}};
            metrics_rows(&w, part_rows, srv->parts[i].ops->metrics(srv, part_rows));
        }
    }
    metrics_family(&w, "sse_connections_closed_total", "counter",
                   "Client connections closed, by reason (closed + open = accepted).");
    for (int r = 0; r < R_COUNT; r++)
        metrics_sample(&w, "sse_connections_closed_total{reason=\"", close_reason_label[r],
                       srv->m.closed[r], "");
    metrics_pace(srv, &w);
    if (w.len > w.cap) { /* not with these rows: at 2^64-1 each, under 7 KiB */
        conn_close(srv, c, R_ERROR);
        return;
    }
    http_respond(
        srv, c, 200, NULL,
        &(struct http_body){"text/plain; version=0.0.4; charset=utf-8", out, w.len, head_only});
}

/* Answers 304, or queues the file's head and hands fd (taken) to the writer. */
static void static_send(struct sse_server *srv, struct conn *c, const struct http_request *req,
                        int fd, const struct stat *st, const char *name, bool head_only) {
    char extra[128], modified[32];
    http_format_date(st->st_mtime, modified);
    snprintf(extra, sizeof extra, "Last-Modified: %s\r\nX-Content-Type-Options: nosniff\r\n",
             modified);
    const struct http_header *ims = http_header(req, "If-Modified-Since");
    time_t since;
    if (ims && http_parse_date(ims->value, ims->value_len, &since) && st->st_mtime <= since) {
        close(fd);
        http_respond(srv, c, 304, extra, NULL);
        return;
    }
    /* The head claims st_size bytes: the writer sends that many or closes. */
    http_respond(srv, c, 200, extra,
                 &(struct http_body){static_content_type(name), NULL, (size_t)st->st_size, true});
    if (c->state != CONN_RESPOND || head_only || st->st_size == 0) {
        close(fd);
        return;
    }
    c->file_fd = fd;
    c->file_off = 0;
    c->file_end = st->st_size;
}

static void static_handle(struct sse_server *srv, struct conn *c, const struct http_request *req,
                          const char *path, size_t path_len, bool head_only) {
    char rel[SSE_HEAD_MAX + 16];
    long n = static_resolve(path, path_len, rel, SSE_HEAD_MAX);
    errno = ENOENT;
    int fd = n >= 0 ? static_open(srv->root_fd, srv->root_real, rel) : -1;
    struct stat st;
    bool is_dir = fd >= 0 && fstat(fd, &st) == 0 && S_ISDIR(st.st_mode);
    if (is_dir) {
        close(fd);
        if (path[path_len - 1] != '/') {
            /* To the directory's own URL, so relative links in its index resolve. Built from
             * the resolved path, never the raw target ("http://evil.example/sub" or "//sub"
             * would send the browser to another host); the query as sent (ASCII without
             * spaces or CR/LF: safe in a header). */
            char loc[3 * SSE_HEAD_MAX + 32];
            struct wbuf w = {loc, sizeof loc - 1, 0};
            const char *qm = memchr(req->target, '?', req->target_len);
            wb_str(&w, "Location: /");
            http_path_encode(&w, rel, (size_t)n);
            wb_str(&w, "/");
            if (qm)
                wb_put(&w, qm, req->target_len - (size_t)(qm - req->target));
            wb_str(&w, "\r\n");
            bool fits = w.len <= w.cap;
            loc[fits ? w.len : 0] = '\0';
            http_text(srv, c, fits ? 301 : 404, fits ? "moved" : "not found", fits ? loc : NULL);
            return;
        }
        memcpy(rel + n, "/index.html", sizeof "/index.html");
        fd = static_open(srv->root_fd, srv->root_real, rel);
    }
    /* "/file.txt/" names a directory that is not there, as it would for the kernel. */
    if (fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
        (path[path_len - 1] != '/' || is_dir)) {
        static_send(srv, c, req, fd, &st, rel, head_only);
        return;
    }
    int err = errno;
    if (fd >= 0)
        close(fd);
    if (fd < 0 && (err == EMFILE || err == ENFILE))
        http_text(srv, c, 503, "out of file descriptors", "Retry-After: 1\r\n");
    else
        http_text(srv, c, 404, "not found", NULL);
}

/* ==========================================================================================
 * 8. Request dispatch
 *
 * A parsed request is checked (framing, Host), its path and query decoded once, offered to
 * the host's on_request, and handed to its endpoint. Requests are read into a per-server
 * scratch buffer; a connection holds a buffer of its own only while a head is incomplete or
 * requests are pipelined.
 * ======================================================================================== */

/* Framing checks that keep a request from being read two ways (RFC 9112 6.3): one
 * Content-Length value, digits only, and never together with Transfer-Encoding. */
static int http_framing(const struct http_request *req, uint64_t *content_length,
                        const char **why) {
    *content_length = 0;
    bool have_cl = false, te = false;
    for (size_t i = 0; i < req->num_headers; i++) {
        const struct http_header *h = &req->headers[i];
        if (ascii_ieq(h->name, h->name_len, "Transfer-Encoding"))
            te = true;
        else if (ascii_ieq(h->name, h->name_len, "Content-Length")) {
            uint64_t v;
            if (!parse_u64(h->value, h->value_len, &v) || (have_cl && v != *content_length)) {
                *why = "invalid or conflicting Content-Length";
                return 400;
            }
            have_cl = true;
            *content_length = v;
        }
    }
    if (!te)
        return 0;
    *why = have_cl ? "Content-Length together with Transfer-Encoding"
                   : "request bodies need Content-Length";
    return have_cl ? 400 : 411;
}

/* The path part of a request-target, for origin-form ("/p?q") and absolute-form
 * ("http://host/p?q", RFC 9112 3.2.2). False for anything else. */
static bool http_target_path(const struct http_request *req, const char **path, size_t *len) {
    const char *t = req->target;
    size_t n = req->target_len;
    if (n > 7 && ascii_ieq(t, 7, "http://")) {
        const char *slash = memchr(t + 7, '/', n - 7);
        const char *qm = memchr(t + 7, '?', n - 7);
        if (!slash || (qm && qm < slash))
            return false;
        n -= (size_t)(slash - t);
        t = slash;
    }
    *path = t;
    *len = n;
    return n > 0 && t[0] == '/';
}

/* Sets the connection's flags for this request and refuses requests that are wrong in
 * themselves (RFC 9112 3.2: HTTP/1.1 needs exactly one Host). False when it has answered. */
static bool http_admit(struct sse_server *srv, struct conn *c, const struct http_request *req,
                       uint64_t *content_length) {
    const struct http_header *conn_h = http_header(req, "Connection");
    bool close_asked = conn_h && http_list_has(conn_h->value, conn_h->value_len, "close");
    bool keep_asked = conn_h && http_list_has(conn_h->value, conn_h->value_len, "keep-alive");
    c->flags &= (uint8_t) ~(CF_KEEP_ALIVE | CF_HTTP10 | CF_BODY_UNREAD);
    if (req->minor == 0)
        c->flags |= CF_HTTP10;
    if (!close_asked && (req->minor == 1 || keep_asked) && !srv->stopping)
        c->flags |= CF_KEEP_ALIVE;
    size_t hosts = http_header_count(req, "Host");
    const char *why = "HTTP/1.1 needs exactly one Host header";
    bool host_ok = hosts == 1 || (hosts == 0 && req->minor == 0);
    int status = host_ok ? http_framing(req, content_length, &why) : 400;
    if (status) {
        http_fail(srv, c, status, why);
        return false;
    }
    if (*content_length)
        c->flags |= CF_BODY_UNREAD;
    return true;
}

/* The client's address as text (IPv4-mapped addresses as IPv4), "unknown" if it has none: for
 * X-Forwarded-For, X-Real-IP, sse_request_peer(). */
static void conn_peer(const struct conn *c, char *out, size_t cap) {
    struct sockaddr_storage sa = {0};
    socklen_t len = sizeof sa;
    snprintf(out, cap, "unknown");
    if (getpeername(c->h.fd, (struct sockaddr *)&sa, &len) < 0)
        return;
    if (sa.ss_family == AF_INET) {
        inet_ntop(AF_INET, &((struct sockaddr_in *)&sa)->sin_addr, out, (socklen_t)cap);
    } else if (sa.ss_family == AF_INET6) {
        const struct in6_addr *a = &((struct sockaddr_in6 *)&sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a))
            inet_ntop(AF_INET, &a->s6_addr[12], out, (socklen_t)cap);
        else
            inet_ntop(AF_INET6, a, out, (socklen_t)cap);
    }
}

/* What struct sse_request's impl points at while on_request runs. */
struct host_request {
    struct sse_server *srv;         /* the server asking */
    struct conn *conn;              /* the connection to answer */
    const struct http_request *req; /* the parsed head */
    const struct http_query *query; /* its decoded parameters */
    bool answered;                  /* sse_respond() has queued the answer */
    char peer[INET6_ADDRSTRLEN];    /* the client's address once asked for, or "" */
};

/* Offers the request to the host's on_request. Returns true when the host answered it (or
 * claimed it without an answer, which gets a 500). */
static bool host_route(struct sse_server *srv, struct conn *c, const struct http_request *req,
                       const char *path, const struct http_query *q) {
    char method[32];
    if (!srv->on_request || req->method_len >= sizeof method)
        return false;
    memcpy(method, req->method, req->method_len);
    method[req->method_len] = '\0';
    struct host_request impl = {srv, c, req, q, false, ""};
    struct sse_request hreq = {method, path, req->minor ? "HTTP/1.1" : "HTTP/1.0", &impl};
    srv->log_depth++; /* sse_poll() must not run inside the callback */
    int claimed = srv->on_request(srv, &hreq, srv->log.user);
    srv->log_depth--;
    if (claimed && !impl.answered) {
        log_say(&srv->log, SSE_LOG_WARN, "on_request claimed %s without sse_respond(): 500", path);
        http_text(srv, c, 500, "internal server error", NULL);
    }
    return claimed || impl.answered;
}

/* Why /healthz answers 503: what a part says, or the id space exhausted (ids assigned
 * here, publish_local), or NULL when healthy. */
static const char *http_unhealthy(const struct sse_server *srv) {
    for (size_t i = 0; i < srv->nparts; i++) {
        const char *why = srv->parts[i].ops->unhealthy ? srv->parts[i].ops->unhealthy(srv) : NULL;
        if (why)
            return why;
    }
    return !srv->history->append && srv->last_id == UINT64_MAX ? "id space exhausted" : NULL;
}

/* Hands the request to its endpoint: the host's routes, the stream prefix, /publish, the
 * parts' routes, /metrics, /healthz, then static files or the built-in page. */
static void http_route(struct sse_server *srv, struct conn *c, const struct http_request *req,
                       const struct http_target *t) {
    const char *path = t->path;
    size_t plen = t->path_len, sp = srv->stream_path_len;
    if (!(c->flags & CF_OVER_LIMIT) && host_route(srv, c, req, path, t->q))
        return;
    if (plen >= sp && memcmp(path, srv->stream_path, sp) == 0 && (plen == sp || path[sp] == '/')) {
        stream_handle(srv, c, req, t->q, path + sp, plen - sp);
        return;
    }
    if (c->flags & CF_OVER_LIMIT) { /* EventSource must not see a 5xx (WHATWG 9.2.3) */
        srv->m.rejected_total++;
        c->flags &= (uint8_t)~CF_KEEP_ALIVE;
        if (http_is_eventsource(req))
            stream_turn_away(srv, c, R_OVERLOAD);
        else
            http_text(srv, c, 503, "too many connections", "Retry-After: 1\r\n");
        c->reason = R_OVERLOAD;
        return;
    }
    if (bytes_eq(path, plen, "/publish")) {
        publish_handle(srv, c, req, t->q, t->content_length);
        return;
    }
    bool builtin = bytes_eq(path, plen, "/metrics") || bytes_eq(path, plen, "/healthz");
    for (size_t i = 0; !builtin && i < srv->nparts; i++)
        if (srv->parts[i].ops->route && srv->parts[i].ops->route(srv, c, req, t))
            return;
    static const char read_only[] = "Allow: GET, HEAD, OPTIONS\r\n";
    const char *unhealthy;
    bool head = bytes_eq(req->method, req->method_len, "HEAD");
    if (bytes_eq(req->method, req->method_len, "OPTIONS"))
        http_respond(srv, c, 204, read_only, NULL);
    else if (!head && !bytes_eq(req->method, req->method_len, "GET"))
        http_text(srv, c, 405, "method not allowed", read_only);
    else if (bytes_eq(path, plen, "/metrics"))
        metrics_handle(srv, c, head);
    else if (bytes_eq(path, plen, "/healthz") && (unhealthy = http_unhealthy(srv)))
        http_text(srv, c, 503, unhealthy, NULL);
    else if (bytes_eq(path, plen, "/healthz"))
        http_respond(srv, c, 200, NULL,
                     &(struct http_body){"text/plain; charset=utf-8", "ok\n", 3, head});
    else if (srv->root_fd >= 0)
        static_handle(srv, c, req, path, plen, head);
    else if (srv->index_page && (bytes_eq(path, plen, "/") || bytes_eq(path, plen, "/index.html")))
        http_respond(srv, c, 200, NULL,
                     &(struct http_body){"text/html; charset=utf-8", srv->index_page,
                                         srv->index_page_len, head});
    else
        http_text(srv, c, 404, "not found", NULL);
}

/* Checks a parsed request, decodes its path and query (once, here) and routes it. */
static void http_handle(struct sse_server *srv, struct conn *c, const struct http_request *req) {
    struct http_query q;
    struct http_target t = {.path = srv->path, .q = &q};
    if (!http_admit(srv, c, req, &t.content_length))
        return;
    if (bytes_eq(req->method, req->method_len, "OPTIONS") &&
        bytes_eq(req->target, req->target_len, "*")) {
        http_respond(srv, c, 204, "Allow: GET, HEAD, POST, DELETE, OPTIONS\r\n", NULL);
        return;
    }
    if (!http_target_path(req, &t.raw, &t.raw_len)) {
        http_fail(srv, c, 400, "invalid request target");
        return;
    }
    const char *qm = memchr(t.raw, '?', t.raw_len);
    t.raw_path_len = qm ? (size_t)(qm - t.raw) : t.raw_len;
    long path_len = http_percent_decode(t.raw, t.raw_path_len, srv->path, false);
    if (path_len < 0 || http_parse_query(qm ? qm + 1 : "", qm ? t.raw_len - t.raw_path_len - 1 : 0,
                                         srv->decoded, &q) < 0) {
        http_fail(srv, c, 400, "malformed percent-escape, %00 or too many parameters in URL");
        return;
    }
    srv->path[path_len] = '\0';
    t.path_len = (size_t)path_len;
    http_route(srv, c, req, &t);
}

/* Keeps p[0..len) as c's own buffer: held (which p may point into), or a new one; scanned
 * bytes of it were searched for the end of a head. False when out of memory (c closed). */
static bool http_keep(struct sse_server *srv, struct conn *c, struct inbuf *held, const char *p,
                      size_t len, size_t scanned) {
    if (!held && !(held = malloc(sizeof *held))) {
        conn_close(srv, c, R_ERROR);
        return false;
    }
    if (p != held->data)
        memmove(held->data, p, len);
    held->len = (uint32_t)len;
    held->scanned = (uint32_t)scanned;
    c->in = held;
    return true;
}

/* Parses the request in buf[0..len) (the server's scratch buffer or the connection's own)
 * and handles it; keeps an incomplete head, a body's first bytes and pipelined requests. */
static void http_take(struct sse_server *srv, struct conn *c, char *buf, size_t len) {
    struct inbuf *held = c->in && buf == c->in->data ? c->in : NULL;
    size_t from = held && held->scanned > 3 ? held->scanned - 3 : 0;
    struct http_request req;
    long r = http_head_end(buf, len, from) ? http_parse_request(buf, len, &req) : HTTP_INCOMPLETE;
    if (r == HTTP_INCOMPLETE && len >= SSE_HEAD_MAX)
        http_fail(srv, c, 431, "request head over 8 KiB");
    else if (r == HTTP_INCOMPLETE)
        http_keep(srv, c, held, buf, len, len);
    else if (r == HTTP_TOO_LARGE)
        http_fail(srv, c, 431, "too many header fields");
    else if (r == HTTP_BAD_VERSION)
        http_fail(srv, c, 505, "only HTTP/1.0 and HTTP/1.1 are served");
    else if (r < 0)
        http_fail(srv, c, 400, "malformed request");
    if (r <= 0)
        return;
    c->in = NULL; /* req points into held: keep it alive until we are done */
    http_handle(srv, c, &req);
    size_t used = (size_t)r;
    if (c->state == CONN_BODY)
        used += publish_body_feed(srv, c, buf + used, len - used);
    else if (c->state == CONN_PASSED && c->part)
        used += c->part->ops->body(srv, c, buf + used, len - used);
    bool more = c->state == CONN_RESPOND || c->state == CONN_BODY || c->state == CONN_REQUEST ||
                c->state == CONN_PASSED || c->state == CONN_WAIT || c->state == CONN_PACED;
    if (used < len && more && http_keep(srv, c, held, buf + used, len - used, 0))
        held = NULL; /* it is c->in again */
    free(held);
    if (c->state == CONN_PASSED && c->part) /* the rest of a body may wait in the socket */
        c->part->ops->readable(srv, c, EPOLLIN);
}

/* Reads requests (or a body) from the socket until it is empty or a response is under way. */
static void http_read(struct sse_server *srv, struct conn *c) {
    while (c->state == CONN_REQUEST || c->state == CONN_BODY) {
        if (c->state == CONN_BODY) {
            publish_body_read(srv, c);
            if (c->state == CONN_BODY)
                return; /* the socket is empty */
            continue;
        }
        char *buf = c->in ? c->in->data : srv->scratch;
        size_t len = c->in ? c->in->len : 0;
        ssize_t n = read(c->h.fd, buf + len, SSE_HEAD_MAX - len);
        if (n > 0)
            http_take(srv, c, buf, len + (size_t)n);
        else if (n == 0 || (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK))
            conn_close(srv, c, conn_gone(c, n < 0)); /* and the loop ends */
        else if (errno != EINTR)
            return;
    }
}

/* A response has gone out: close, or wait for the next request on the same connection. */
static void http_response_done(struct sse_server *srv, struct conn *c) {
    if (!(c->flags & CF_KEEP_ALIVE)) {
        conn_linger(srv, c, (enum close_reason)c->reason);
        return;
    }
    c->state = CONN_REQUEST;
    timer_set(srv, c, TIMER_REQUEST);
    if (c->in)
        http_take(srv, c, c->in->data, c->in->len);
    http_read(srv, c);
}

/* ==========================================================================================
 * 9. Inputs: publishing what arrives on a file descriptor
 *
 * Pipes, terminals and sockets are watched by epoll and read once per wake-up. Regular
 * files cannot be watched (epoll refuses them with EPERM) and never block, so they are read
 * a chunk per loop iteration instead, letting the loop serve clients in between.
 * ======================================================================================== */

static void input_emit(void *ctx, const char *topic, const char *event, const char *data,
                       size_t len, const char *skipped) {
    struct sse_server *srv = ctx;
    if (skipped) {
        log_say(&srv->log, SSE_LOG_WARN, "input: skipped an event: %s", skipped);
        return;
    }
    int r = publish_event(srv, &(struct publish_in){topic, event, data, len, NULL, NULL}, NULL);
    if (r == -EINVAL)
        log_say(&srv->log, SSE_LOG_WARN, "input: skipped an event that is not valid UTF-8");
    else if (r < 0)
        log_say(&srv->log, SSE_LOG_WARN, "input: could not publish: %s",
                r == -EOVERFLOW ? "id space exhausted" : strerror(-r));
}

static void input_close(struct sse_server *srv, struct input *in) {
    struct input **pp = &srv->inputs;
    while (*pp != in)
        pp = &(*pp)->next;
    *pp = in->next;
    if (in->polled)
        epoll_ctl(srv->epfd, EPOLL_CTL_DEL, in->h.fd, NULL);
    wire_reader_free(&in->reader);
    free(in);
}

/* Stops or resumes reading an input. Held, a pipe's writer blocks once the pipe is full:
 * nothing is dropped. Out of epoll rather than with no events asked, since epoll reports a
 * hang-up whatever was asked, and a held input would spin on it. */
static void input_hold(struct sse_server *srv, struct input *in, bool hold, enum pace_cause why) {
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = in};
    if (in->polled && epoll_ctl(srv->epfd, hold ? EPOLL_CTL_DEL : EPOLL_CTL_ADD, in->h.fd, &ev) &&
        !hold)
        return; /* still held: input_resume() tries again next iteration */
    in->held = hold;
    /* An outage is worth a line; a hold for pacing may come and go many times a second. */
    log_say(&srv->log, http_unhealthy(srv) ? SSE_LOG_INFO : SSE_LOG_DEBUG, "input: %s%s fd %d",
            !hold || why == PACE_SUBSCRIBERS ? "" : srv->pace.store,
            !hold                     ? "reading again"
            : why == PACE_SUBSCRIBERS ? "subscribers are behind: holding"
                                      : " cannot take events: holding",
            in->h.fd);
}

/* Held inputs are read again once the gate opens (checked each loop iteration). */
static void input_resume(struct sse_server *srv) {
    for (struct input *in = srv->inputs; in; in = in->next)
        if (in->held && pace_gate(srv) == PACE_OPEN)
            input_hold(srv, in, false, PACE_OPEN);
}

/* An input's on_event: readable (or hung up, which read() reports as its end). Regular
 * files, out of epoll, are read this way once an iteration. */
static void input_on_event(struct sse_server *srv, struct handle *h, uint32_t events) {
    struct input *in = (struct input *)h;
    char buf[INPUT_CHUNK];
    (void)events;
    enum pace_cause why = pace_gate(srv);
    if (why != PACE_OPEN) {
        input_hold(srv, in, true, why); /* flow control (section 6): the writer waits */
        return;
    }
    ssize_t n = read(in->h.fd, buf, sizeof buf);
    if (n > 0) {
        wire_reader_feed(&in->reader, buf, (size_t)n, input_emit, srv);
    } else if (n == 0) {
        wire_reader_finish(&in->reader, input_emit, srv);
        log_say(&srv->log, SSE_LOG_INFO, "input: end of input on fd %d", in->h.fd);
        input_close(srv, in);
    } else if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) {
        log_say(&srv->log, SSE_LOG_WARN, "input: read failed on fd %d: %s", in->h.fd,
                strerror(errno));
        input_close(srv, in);
    }
}

/* ==========================================================================================
 * 10. The event loop
 *
 * One epoll instance. Each iteration: wait (no longer than the nearest timer), handle what
 * is ready, fire due timers, write what was queued, free what was closed. Nothing in it
 * blocks: sockets are non-blocking, names were resolved at start-up, and files are only
 * opened and sent with sendfile() from the page cache.
 * ======================================================================================== */

/* Registers h's descriptor with epoll (op EPOLL_CTL_ADD), or changes what it waits for. */
static int loop_watch(struct sse_server *srv, int op, struct handle *h, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = h};
    return epoll_ctl(srv->epfd, op, h->fd, &ev);
}

/* An address as text, for log lines and sse_url(); returns its port. */
static int loop_addr(const struct sockaddr_storage *sa, char addr[INET6_ADDRSTRLEN]) {
    if (sa->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, addr, INET6_ADDRSTRLEN);
        return ntohs(in6->sin6_port);
    }
    const struct sockaddr_in *in4 = (const struct sockaddr_in *)sa;
    inet_ntop(AF_INET, &in4->sin_addr, addr, INET6_ADDRSTRLEN);
    return ntohs(in4->sin_port); /* NOLINT(clang-analyzer-core.CallAndMessage): callers zero sa */
}

/* Refreshes the clocks; a new second also means a new Date header. */
static void loop_clock(struct sse_server *srv) {
    srv->now = clock_ms();
    time_t t = time(NULL);
    if (t != srv->date_sec) {
        srv->date_sec = t;
        http_format_date(t, srv->date);
        blob_unref(srv->stream_head);
        srv->stream_head = NULL;
    }
}

/* A client connection's on_event. */
static void conn_on_event(struct sse_server *srv, struct handle *h, uint32_t events) {
    struct conn *c = (struct conn *)h;
    if (c->state == CONN_DEAD)
        return;
    if (events & (EPOLLERR | EPOLLHUP)) {
        conn_close(srv, c, conn_gone(c, (events & EPOLLERR) != 0));
        return;
    }
    if (events & (EPOLLIN | EPOLLRDHUP)) {
        if (c->state == CONN_REQUEST || c->state == CONN_BODY)
            http_read(srv, c);
        else if (c->state == CONN_STREAM || c->state == CONN_LINGER)
            conn_discard_input(srv, c);
        else if (c->state == CONN_PASSED && c->part)
            c->part->ops->readable(srv, c, events);
        /* CONN_RESPOND, CONN_PASSED: the next request is read when the response is out */
    }
    if ((events & EPOLLOUT) && c->state != CONN_DEAD && (c->qlen || c->file_fd >= 0))
        conn_flush(srv, c);
}

/* Takes an accepted connection: served, or over max_clients or max_clients_per_ip and
 * held only to be told to come back, or (beyond OVERFLOW_MAX of those) closed at once. */
static void conn_new(struct sse_server *srv, int fd, const struct sockaddr_storage *sa) {
    bool per_ip = srv->max_per_ip && srv->nconns < srv->max_clients;
    struct ip_count *ip = per_ip ? ip_table_get(&srv->per_ip, sa) : NULL;
    bool over = srv->nconns >= srv->max_clients || (per_ip && (!ip || ip->n >= srv->max_per_ip));
    if (ip && !over)
        ip->n++;
    else
        ip = NULL;
    struct conn *c = over && srv->noverflow >= OVERFLOW_MAX ? NULL : calloc(1, sizeof *c);
    if (c)
        c->h = (struct handle){fd, conn_on_event};
    if (!c || loop_watch(srv, EPOLL_CTL_ADD, &c->h, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET)) {
        ip_table_put(&srv->per_ip, ip);
        free(c);
        close(fd);
        srv->m.rejected_total++;
        return;
    }
    c->state = CONN_REQUEST;
    c->file_fd = -1;
    c->timer = TIMER_NONE;
    c->serial = ++srv->next_serial;
    c->ip = ip;
    if (over) {
        c->flags |= CF_OVER_LIMIT;
        srv->noverflow++;
    } else {
        srv->nconns++;
    }
    srv->m.connections_total++;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    timer_set(srv, c, TIMER_REQUEST);
    if (srv->log.fn) {
        char addr[INET6_ADDRSTRLEN];
        int port = loop_addr(sa, addr);
        log_say(&srv->log, SSE_LOG_DEBUG, "connection #%u opened from %s:%d%s", c->serial, addr,
                port, over ? " (over the client limits)" : "");
    }
}

/* Out of descriptors with connections waiting: with a level-triggered listener that would
 * spin. Release the spare descriptor, accept and close one connection with it, take the
 * spare back. If even that fails, stop listening for a moment. */
static void loop_shed(struct sse_server *srv) {
    srv->m.rejected_total++;
    if (srv->now - srv->emfile_logged >= 1000) {
        srv->emfile_logged = srv->now;
        log_say(&srv->log, SSE_LOG_WARN, "out of file descriptors: turning connections away");
    }
    if (srv->reserve_fd >= 0) {
        close(srv->reserve_fd);
        int fd = accept4(srv->listener.fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0)
            close(fd);
        srv->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd >= 0)
            return;
    }
    loop_watch(srv, EPOLL_CTL_MOD, &srv->listener, 0);
    srv->accept_paused_until = srv->now + 100;
}

/* The listener's on_event: accepts what is waiting. */
static void loop_accept(struct sse_server *srv, struct handle *h, uint32_t events) {
    (void)h;
    (void)events;
    for (int i = 0; i < ACCEPT_BATCH && srv->listener.fd >= 0; i++) {
        struct sockaddr_storage sa = {0};
        socklen_t salen = sizeof sa;
        int fd =
            accept4(srv->listener.fd, (struct sockaddr *)&sa, &salen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        bool out_of_fds = fd < 0 && (errno == EMFILE || errno == ENFILE);
        if (fd >= 0)
            conn_new(srv, fd, &sa);
        else if (out_of_fds)
            loop_shed(srv);
        else if (errno != EINTR && errno != ECONNABORTED)
            return; /* EAGAIN: nothing more waiting */
        if (out_of_fds && srv->accept_paused_until)
            return; /* not even the spare helped: listening resumes in a moment */
    }
}

/* A stream whose access ended: a last retry: (so its EventSource comes back, renewed, after
 * the usual wait, with Last-Event-ID), then the end of the response. */
static void stream_expire(struct sse_server *srv, struct conn *c) {
    ending_remove(&srv->ending, c);
    if (srv->retry_line && !conn_enqueue(srv, c, srv->retry_line))
        conn_close(srv, c, R_ERROR);
    else
        conn_linger(srv, c, R_EXPIRED);
}

static void loop_timers(struct sse_server *srv) {
    if (srv->accept_paused_until && srv->now >= srv->accept_paused_until && srv->listener.fd >= 0) {
        loop_watch(srv, EPOLL_CTL_MOD, &srv->listener, EPOLLIN);
        srv->accept_paused_until = 0;
    }
    for (int t = 0; t < TIMER_COUNT; t++) {
        struct timer_list *tl = &srv->timers[t];
        while (tl->head && tl->head->deadline <= srv->now) {
            struct conn *c = tl->head;
            if (t == TIMER_STREAM)
                stream_heartbeat(srv, c);
            else if (t == TIMER_PACED)
                publish_paced_timeout(srv, c);
            else if (c->part && (t == TIMER_PART || c->state == CONN_OUTBOUND))
                c->part->ops->timer(srv, c, t);
            else
                conn_close(srv, c,
                           t == TIMER_REQUEST ? R_HEADER_TIMEOUT
                           : t == TIMER_SEND  ? R_SEND_TIMEOUT
                                              : (enum close_reason)c->reason);
        }
    }
    while (srv->ending.n && srv->ending.heap[0].at <= srv->now)
        stream_expire(srv, srv->ending.heap[0].c);
    for (size_t i = 0; i < srv->nparts; i++)
        if (srv->parts[i].ops->tick)
            srv->parts[i].ops->tick(srv);
}

enum leave { LEAVE_NONE, LEAVE_STALLED, LEAVE_ALL };

/* Leaves behind lagging subscribers (flow control, section 6): those that took no bytes
 * since the last watch (LEAVE_STALLED), or all of them (LEAVE_ALL); LEAVE_NONE only starts a
 * watch. They no longer hold the publishers, and are dropped at client_buffer unless they
 * catch up. Every subscriber is in the heartbeat list. */
static void loop_leave_behind(struct sse_server *srv, enum leave which) {
    struct pace *p = &srv->pace;
    uint32_t n = 0;
    for (struct conn *c = srv->timers[TIMER_STREAM].head; c; c = c->tnext) {
        bool wrote = c->lag & LAG_WROTE;
        c->lag &= (uint8_t)~LAG_WROTE; /* the next watch starts now */
        if (which != LEAVE_NONE && c->state == CONN_STREAM && (c->lag & LAG_STATE) == LAG_HIGH &&
            !(which == LEAVE_STALLED && wrote)) {
            c->lag = LAG_BEHIND;
            n++;
        }
    }
    if (n == 0)
        return;
    p->lagging -= n;
    p->behind += n;
    p->left_behind_total += n;
    log_say(&srv->log, SSE_LOG_INFO,
            "flow control: %u subscriber(s) could not keep up with the others; publishing goes "
            "on without waiting for them",
            n);
    pace_check(srv);
}

/* Once per iteration: the lagging minority left behind, the time the gate was closed, and
 * the publishers held by it resumed once it opens. */
static void loop_pace(struct sse_server *srv) {
    struct pace *p = &srv->pace;
    if (p->held && (uint64_t)p->lagging * 4 <= pace_counted(srv)) {
        if (!p->minority_since)
            p->minority_since = srv->now;
        else if (srv->now - p->minority_since >= PACE_MINORITY_MS)
            loop_leave_behind(srv, LEAVE_ALL);
    } else {
        p->minority_since = 0;
    }
    if (p->held && srv->now >= p->next_check) {
        loop_leave_behind(srv, p->next_check ? LEAVE_STALLED : LEAVE_NONE);
        p->next_check = srv->now + PACE_PATIENCE_MS;
    }
    if (p->held && srv->now - p->held_since >= PACE_MAX_HOLD_MS)
        loop_leave_behind(srv, LEAVE_ALL);
    enum pace_cause cause = pace_gate(srv);
    if (cause != p->cause) {
        if (p->cause != PACE_OPEN)
            p->held_ms[p->cause] += (uint64_t)(srv->now - p->gate_since);
        if (cause != PACE_OPEN)
            p->holds[cause]++;
        p->gate_since = srv->now;
        p->cause = (uint8_t)cause;
    }
    while (srv->timers[TIMER_PACED].head && !p->held)
        publish_finish(srv, srv->timers[TIMER_PACED].head); /* in the order they came */
    if (p->resume_due && !p->held) {
        p->resume_due = false;
        for (size_t i = 0; i < srv->nparts; i++)
            if (srv->parts[i].ops->resume)
                srv->parts[i].ops->resume(srv);
    }
    input_resume(srv);
}

/* Milliseconds until something is due; 0 when work is waiting, -1 when nothing is timed. */
static int loop_next_timeout(const struct sse_server *srv) {
    /* A hold may end in the last flush of an iteration, after loop_pace(): the relays and
     * publishes it held are resumed by the next one, at once, not at the next timer. */
    if (srv->flush_list || (srv->stop_requested && !srv->stopping) ||
        (srv->pace.resume_due && !srv->pace.held))
        return 0;
    for (const struct input *in = srv->inputs; in; in = in->next)
        if (!in->polled && !in->held)
            return 0;
    const struct pace *p = &srv->pace;
    int64_t next = INT64_MAX,
            due[] = {
                srv->stopping ? srv->stop_deadline : INT64_MAX,
                srv->accept_paused_until ? srv->accept_paused_until : INT64_MAX,
                p->minority_since ? p->minority_since + PACE_MINORITY_MS : INT64_MAX,
                p->held ? p->held_since + PACE_MAX_HOLD_MS : INT64_MAX,
                p->held ? p->next_check : INT64_MAX,
                srv->history->deadline ? srv->history->deadline(srv) : INT64_MAX,
                srv->ending.n ? srv->ending.heap[0].at : INT64_MAX,
            };
    for (size_t i = 0; i < sizeof due / sizeof due[0]; i++)
        next = due[i] < next ? due[i] : next;
    for (int t = 0; t < TIMER_COUNT; t++)
        if (srv->timers[t].head && srv->timers[t].head->deadline < next)
            next = srv->timers[t].head->deadline;
    for (size_t i = 0; i < srv->nparts; i++) {
        int64_t t = srv->parts[i].ops->deadline ? srv->parts[i].ops->deadline(srv) : INT64_MAX;
        next = t < next ? t : next;
    }
    if (next == INT64_MAX)
        return -1;
    int64_t wait = next - clock_ms();
    return wait <= 0 ? 0 : wait > INT_MAX ? INT_MAX : (int)wait;
}

/* Applies fn to every open connection (each is in exactly one timer list). fn may close
 * any connection, so the list is copied first; closed ones are skipped. */
static void loop_each_conn(struct sse_server *srv, void (*fn)(struct sse_server *, struct conn *)) {
    size_t n = 0, i = 0;
    for (int t = 0; t < TIMER_COUNT; t++)
        for (struct conn *c = srv->timers[t].head; c; c = c->tnext)
            n++;
    struct conn **all = malloc((n ? n : 1) * sizeof *all);
    if (!all) { /* out of memory: only closing is possible, one list head at a time */
        for (int t = 0; t < TIMER_COUNT; t++)
            while (srv->timers[t].head)
                conn_close(srv, srv->timers[t].head, R_ERROR);
        return;
    }
    for (int t = 0; t < TIMER_COUNT; t++)
        for (struct conn *c = srv->timers[t].head; c; c = c->tnext)
            all[i++] = c;
    for (i = 0; i < n; i++)
        if (all[i]->state != CONN_DEAD)
            fn(srv, all[i]);
    free(all);
}

/* The start of a graceful stop, for one connection: subscribers get a jittered retry: so a
 * restart is not met by every client at once; idle and half-read requests are closed. */
static void loop_stop_conn(struct sse_server *srv, struct conn *c) {
    bool by_part = c->state == CONN_PASSED || c->state == CONN_OUTBOUND; /* a part holds it */
    if (c->state == CONN_RESPOND || c->state == CONN_WAIT || c->state == CONN_PACED)
        c->flags &= (uint8_t)~CF_KEEP_ALIVE;
    if (c->state == CONN_PACED)
        publish_paced_timeout(srv, c);
    else if (c->state == CONN_STREAM && !conn_enqueue_owned(srv, c, stream_retry_jitter(srv)))
        conn_close(srv, c, R_ERROR);
    else if (c->state == CONN_STREAM)
        conn_linger(srv, c, R_SHUTDOWN);
    else if (by_part && c->part && c->part->ops->stop)
        c->part->ops->stop(srv, c);
    else if (c->state == CONN_PASSED || c->state == CONN_REQUEST || c->state == CONN_BODY ||
             c->state == CONN_ACCESS)
        conn_close(srv, c, R_SHUTDOWN);
}

static void loop_close_conn(struct sse_server *srv, struct conn *c) {
    conn_close(srv, c, R_SHUTDOWN);
}

static void loop_stop(struct sse_server *srv) {
    srv->stopping = true;
    srv->stop_deadline = srv->now + DRAIN_MS;
    if (srv->listener.fd >= 0) {
        close(srv->listener.fd);
        srv->listener.fd = -1;
    }
    while (srv->inputs)
        input_close(srv, srv->inputs);
    loop_each_conn(srv, loop_stop_conn);
}

int sse_poll(struct sse_server *srv, int timeout_ms) {
    if (srv->log_depth)
        return -EBUSY; /* called from on_log, inside this loop */
    if (srv->stopped)
        return 0;
    loop_clock(srv);
    conn_flush_all(srv);
    conn_reap(srv);
    for (struct input *in = srv->inputs, *next; in; in = next) {
        next = in->next;
        if (!in->polled && !in->held)
            input_on_event(srv, &in->h, EPOLLIN);
    }
    int wait = loop_next_timeout(srv);
    if (timeout_ms >= 0 && (wait < 0 || timeout_ms < wait))
        wait = timeout_ms;
    struct epoll_event events[256];
    int n = epoll_wait(srv->epfd, events, 256, wait);
    if (n < 0 && errno != EINTR)
        return -errno;
    loop_clock(srv);
    for (int i = 0; i < n; i++) {
        struct handle *h = events[i].data.ptr;
        h->on_event(srv, h, events[i].events);
    }
    loop_timers(srv);
    if (srv->history->tick)
        srv->history->tick(srv);
    loop_pace(srv);
    if (srv->stop_requested && !srv->stopping)
        loop_stop(srv);
    conn_flush_all(srv);
    if (srv->stopping && (srv->nconns + srv->noverflow == 0 || srv->now >= srv->stop_deadline)) {
        loop_each_conn(srv, loop_close_conn);
        srv->stopped = true;
    }
    conn_reap(srv);
    return srv->stopped ? 0 : 1;
}

int sse_run(struct sse_server *srv) {
    int r;
    while ((r = sse_poll(srv, -1)) > 0)
        ;
    return r;
}

int sse_fd(const struct sse_server *srv) {
    return srv->epfd;
}

int sse_next_timeout_ms(const struct sse_server *srv) {
    return loop_next_timeout(srv);
}

void sse_stop(struct sse_server *srv) {
    srv->stop_requested = true;
}

#if SSE_ENABLE_JOURNAL
/* ==========================================================================================
 * Part II: the journal (SSE_ENABLE_JOURNAL)
 *
 * Adds: events on disk before they are acknowledged, read back at start. Plugs into the
 * history seam (history_journal: the backlog's ids and answers, with a store before the
 * backlog keeps an event, a compaction after, a batch fdatasync() as its tick) and the parts
 * seam (part_journal: its /metrics rows and /healthz reasons). Uses the core's backlog,
 * topic table and logger; names no other part.
 *
 * With a journal, an event reaches the disk before anyone hears of it: publish_deliver()
 * appends it here, and only then queues it for subscribers and answers the publisher. Once
 * write() has returned the bytes are in the kernel's page cache, so a crash of the process
 * (kill -9 included) loses no acknowledged event. What a power loss may take is the sync
 * mode's trade: "always" calls fdatasync() before acknowledging (nothing acknowledged is
 * lost, every publish waits for the disk), "batch" calls it at most JOURNAL_BATCH_MS after a
 * write (at most that much of the last acknowledged events), "none" leaves it to the kernel
 * (typically 30 s).
 *
 * On start the file is read back into the backlog, so ids continue above the last one and
 * a client reconnecting with Last-Event-ID after a restart gets exactly what it missed
 * (WHATWG 9.2.4). The format is text, so `cat` shows it: a header line, then per event a
 * record line and the event's bytes exactly as they go on the wire:
 *
 *     sse-journal 2 1795335269661017 5d4ad1a0  <- version; ids go on above this one; the
 *                                                 CRC-32 of this line up to the CRC
 *     #E 1795335269661018 news 68 a850b4fd     <- id, topic, length of what follows, and
 *                                                 the CRC-32 of this line up to the CRC
 *                                                 followed by those bytes
 *     id: 1795335269661018
 *     event: headline
 *     data: line one
 *     data: line two
 *                                              <- (the 68 bytes end with the blank line)
 *
 * A crash can tear only the end of the file (it is only ever appended to), so a record that
 * is cut short or fails its CRC with no valid record after it is dropped and the file cut
 * back to the last whole record; a bad record with valid ones after it is damage from
 * elsewhere, and the server refuses to start rather than silently lose the rest. The file
 * is kept under max_bytes by rewriting it with just the backlog (compaction), atomically:
 * a new file, synced, renamed over the old one. An exclusive flock() keeps a second server
 * from writing the same journal.
 *
 * The header is checked as the records are: a floor that changed on disk would make ids
 * jump (up to the end of the id space) or go back below ids clients hold. Version 1 files
 * (written before the header had a CRC) are still read, then compacted at once so the file
 * in use has a checked header; their floor is taken on trust, as it always was.
 * ======================================================================================== */

#define JOURNAL_MAGIC       "sse-journal 2 "
#define JOURNAL_MAGIC_V1    "sse-journal 1 "
#define JOURNAL_HEADER_MAX  64   /* longest header line, with its LF */
#define JOURNAL_PROBE_MS    1000 /* while writes fail: how often to try whether they work */
#define JOURNAL_PROBE_MIN   4096 /* the least space a probe asks for */
#define JOURNAL_RECORD_HEAD 128  /* longest "#E id topic len crc\n" line */
#define JOURNAL_BATCH_MS    1000 /* batch mode: fdatasync() this long after a write at most */
_Static_assert(3 + 20 + 1 + TOPIC_NAME_MAX + 1 + 20 + 1 + 8 + 1 <= JOURNAL_RECORD_HEAD,
               "the longest record line fits");
_Static_assert(sizeof JOURNAL_MAGIC - 1 + 20 + 1 + 8 + 1 <= JOURNAL_HEADER_MAX,
               "the longest header line fits");

/* CRC-32 as in zlib and Python's zlib.crc32 (reflected, polynomial 0xEDB88320; chained by
 * passing the previous result, starting from 0), bit by bit: no table, so no global state;
 * it runs once per event, over bytes just formatted. */
static uint32_t journal_crc32(uint32_t crc, const char *p, size_t n) {
    crc = ~crc;
    for (size_t i = 0; i < n; i++) {
        crc ^= (unsigned char)p[i];
        for (int k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

/* Writes the record line for an event (its wire bytes, their id and topic) into out, which
 * holds JOURNAL_RECORD_HEAD bytes. Returns its length. */
static size_t journal_record_head(char out[JOURNAL_RECORD_HEAD], uint64_t id, const char *topic,
                                  const char *bytes, size_t len) {
    static const char hex[] = "0123456789abcdef";
    struct wbuf w = {out, JOURNAL_RECORD_HEAD, 0};
    wb_str(&w, "#E ");
    wb_u64(&w, id);
    wb_str(&w, " ");
    wb_str(&w, topic);
    wb_str(&w, " ");
    wb_u64(&w, len);
    wb_str(&w, " ");
    uint32_t crc = journal_crc32(journal_crc32(0, out, w.len), bytes, len);
    for (int shift = 28; shift >= 0; shift -= 4)
        wb_put(&w, &hex[(crc >> shift) & 15u], 1);
    wb_str(&w, "\n");
    return w.len;
}

/* One record found in a journal: the event's id, topic and wire bytes (pointers into the
 * buffer parsed). */
struct journal_record {
    uint64_t id;
    const char *topic;
    size_t topic_len;
    const char *bytes;
    size_t len;
};

/* Whether bytes[0..len) are exactly what sse_format_event() makes of some event with this
 * id: parsed back into event type and data and formatted again, byte for byte. So nothing
 * but a well-formed event is ever served from a journal, whatever the file holds. */
static bool journal_event_canonical(uint64_t id, const char *bytes, size_t len) {
    char prefix[32];
    struct wbuf w = {prefix, sizeof prefix, 0};
    wb_str(&w, "id: ");
    wb_u64(&w, id);
    wb_str(&w, "\n");
    if (len < w.len + 1 || memcmp(bytes, prefix, w.len) != 0 || bytes[len - 1] != '\n')
        return false;
    size_t at = w.len;
    char event[EVENT_TYPE_MAX + 1];
    bool has_event = false;
    if (len - at > 7 && memcmp(bytes + at, "event: ", 7) == 0) {
        const char *end = memchr(bytes + at + 7, '\n', len - at - 7);
        size_t elen = end ? (size_t)(end - bytes) - at - 7 : 0;
        if (!end || !wire_event_type_valid(bytes + at + 7, elen))
            return false;
        memcpy(event, bytes + at + 7, elen);
        event[elen] = '\0';
        has_event = true;
        at += 7 + elen + 1;
    }
    char *data = malloc(len); /* the data is shorter than the bytes framing it */
    if (!data)
        return false;
    size_t dlen = 0;
    bool ok = true, first = true;
    while (ok && at < len - 1) { /* data lines, up to the final blank line */
        const char *end = memchr(bytes + at, '\n', len - 1 - at);
        size_t llen = end ? (size_t)(end - bytes) - at : 0;
        ok = end && llen >= 5 && memcmp(bytes + at, "data:", 5) == 0 &&
             (llen == 5 || bytes[at + 5] == ' ');
        if (ok) {
            size_t vlen = llen > 5 ? llen - 6 : 0;
            if (!first)
                data[dlen++] = '\n';
            memcpy(data + dlen, bytes + at + (llen > 5 ? 6 : 5), vlen);
            dlen += vlen;
            first = false;
            at += llen + 1;
        }
    }
    ok = ok && !first && at == len - 1 && wire_utf8_valid(data, dlen) &&
         sse_format_event(NULL, 0, id, has_event ? event : NULL, data, dlen) == len;
    if (ok) {
        size_t cap = len;
        char *again = malloc(cap);
        ok = again &&
             sse_format_event(again, cap, id, has_event ? event : NULL, data, dlen) == len &&
             memcmp(again, bytes, len) == 0;
        free(again);
    }
    free(data);
    return ok;
}

/* Parses the record at buf[0..len). Returns its total length, 0 when buf ends inside it
 * (torn, or more to read), or -1 when it is not a valid record. */
static long journal_parse_record(const char *buf, size_t len, size_t max_bytes,
                                 struct journal_record *rec) {
    const char *nl = memchr(buf, '\n', len < JOURNAL_RECORD_HEAD ? len : JOURNAL_RECORD_HEAD);
    if (!nl)
        return len < JOURNAL_RECORD_HEAD ? 0 : -1;
    size_t hlen = (size_t)(nl - buf);
    if (hlen < 3 || memcmp(buf, "#E ", 3) != 0)
        return -1;
    const char *field[4];
    size_t flen[4], n = 0;
    for (size_t i = 3, start = 3; i <= hlen; i++) {
        if (i < hlen && buf[i] != ' ')
            continue;
        if (n == 4 || i == start)
            return -1;
        field[n] = buf + start;
        flen[n++] = i - start;
        start = i + 1;
    }
    uint64_t id, size;
    if (n != 4 || !parse_u64(field[0], flen[0], &id) || id == 0 ||
        (flen[0] > 1 && field[0][0] == '0') || !wire_topic_valid(field[1], flen[1]) ||
        !parse_u64(field[2], flen[2], &size) || size > max_bytes || flen[3] != 8)
        return -1;
    uint32_t crc = 0;
    for (size_t i = 0; i < 8; i++) {
        char c = field[3][i];
        int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (v < 0)
            return -1;
        crc = crc << 4 | (uint32_t)v;
    }
    if (size > len - hlen - 1)
        return 0;
    const char *bytes = nl + 1;
    uint32_t want = journal_crc32(journal_crc32(0, buf, (size_t)(field[3] - buf)), bytes, size);
    if (want != crc || !journal_event_canonical(id, bytes, size))
        return -1;
    *rec = (struct journal_record){id, field[1], flen[1], bytes, size};
    return (long)(hlen + 1 + size);
}

struct journal {
    int fd;                     /* the open journal, or -1: no journal */
    char *path;                 /* its name, for compaction's rename */
    enum sse_journal_sync sync; /* when to fdatasync() */
    uint64_t max_bytes;         /* compact beyond this size */
    uint64_t size;              /* bytes in the file */
    uint64_t compacted;         /* size right after the last compaction or load */
    bool dirty;                 /* written since the last fdatasync() */
    int64_t dirty_since;        /* when it became dirty (ms) */
    uint64_t syncs;             /* fdatasync() calls, for /metrics */
    uint64_t compactions;       /* compactions done */
    uint64_t errors;            /* failed writes, syncs and compactions */
    bool failing;               /* the last fdatasync() failed (logged once per streak) */
    bool stuck;                 /* a failed record could not be cut off: no more appends */
    bool cannot_write;          /* the last write (append, compaction, probe) failed */
    int64_t probe_at;           /* while cannot_write: when to try again (ms) */
    uint64_t probe_bytes;       /* while cannot_write: the space the failed write needed */
};

/* Writes every byte of the iovecs, resuming after short writes and EINTR. 0 or -errno. */
static int journal_write_all(int fd, struct iovec *iov, int n) {
    while (n > 0) {
        ssize_t w = writev(fd, iov, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        size_t done = (size_t)w;
        while (n > 0 && done >= iov->iov_len) {
            done -= iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + done;
            iov->iov_len -= done;
        }
    }
    return 0;
}

/* A failed fdatasync() leaves unknown which dirty pages reached the disk, and Linux reports
 * the error only once, so a later success says nothing about them. Always mode therefore
 * cuts the unsynced record off (journal_append); batch mode, whose events were
 * acknowledged already, tries again a period later: logged when the failures start and
 * when they end, not on every attempt. */
static int journal_sync_now(struct journal *j, const struct logger *log, int64_t now) {
    if (fdatasync(j->fd) < 0) {
        j->errors++;
        j->dirty_since = now; /* batch mode: the next attempt is a period away */
        if (!j->failing)
            log_say(log, SSE_LOG_ERROR, "journal %s: fdatasync: %s%s", j->path, strerror(errno),
                    j->sync == SSE_JOURNAL_BATCH ? "; trying again every second" : "");
        j->failing = true;
        return -EIO;
    }
    if (j->failing)
        log_say(log, SSE_LOG_INFO, "journal %s: fdatasync works again", j->path);
    j->failing = false;
    j->syncs++;
    j->dirty = false;
    return 0;
}

/* A write to the journal's disk failed (needing bytes of space): /healthz answers 503
 * "journal cannot write" until a write succeeds again, an append or the probe
 * (journal_probe), so a full disk is visible before the next publish fails. */
static void journal_write_failed(struct journal *j, uint64_t bytes, int64_t now) {
    j->errors++;
    j->cannot_write = true;
    j->probe_at = now + JOURNAL_PROBE_MS;
    j->probe_bytes = bytes > JOURNAL_PROBE_MIN ? bytes : JOURNAL_PROBE_MIN;
}

static void journal_write_worked(struct journal *j, const struct logger *log) {
    if (!j->cannot_write)
        return;
    j->cannot_write = false;
    log_say(log, SSE_LOG_INFO, "journal %s: writing works again", j->path);
}

/* While writes fail: asks for the space the failed write needed past the end of the file,
 * without changing its size or contents (fallocate(2), FALLOC_FL_KEEP_SIZE; the blocks are
 * the next appends' anyway). Where the file system cannot do that, only the next append
 * tells. */
static void journal_probe(struct journal *j, const struct logger *log, int64_t now) {
    if (fallocate(j->fd, FALLOC_FL_KEEP_SIZE, (off_t)j->size, (off_t)j->probe_bytes) == 0)
        journal_write_worked(j, log);
    else
        j->probe_at = now + JOURNAL_PROBE_MS;
}

/* Cuts the file back to its last whole record after a failed append. If even that fails
 * the file's end is unknown (a torn or unsynced record may follow), and appending after
 * it would bury that record under valid ones, which a restart refuses as damage: so the
 * journal takes no more events until the server restarts and reads the file back. */
static void journal_cut_back(struct journal *j, const struct logger *log) {
    if (ftruncate(j->fd, (off_t)j->size) == 0)
        return;
    j->stuck = true;
    log_say(log, SSE_LOG_ERROR,
            "journal %s: cannot cut back a failed record: %s; refusing to publish until restart "
            "(the record may be replayed then)",
            j->path, strerror(errno));
}

/* Appends one event. On failure the file is cut back to where it was, so a failed append
 * leaves no torn or unsynced record behind, and the caller must not publish the event. */
static int journal_append(struct journal *j, const struct blob *ev, const struct logger *log,
                          int64_t now) {
    if (j->stuck)
        return -EIO;
    char head[JOURNAL_RECORD_HEAD];
    size_t hlen = journal_record_head(head, ev->id, ev->topic->name, ev->bytes, ev->len);
    struct iovec iov[2] = {{head, hlen}, {(void *)ev->bytes, ev->len}};
    int r = journal_write_all(j->fd, iov, 2);
    if (r < 0) {
        journal_write_failed(j, hlen + ev->len, now);
        log_say(log, SSE_LOG_ERROR, "journal %s: write: %s; the event was not published", j->path,
                strerror(-r));
        journal_cut_back(j, log);
        return -EIO;
    }
    journal_write_worked(j, log);
    if (j->sync == SSE_JOURNAL_ALWAYS) {
        if (journal_sync_now(j, log, now) < 0) {
            journal_cut_back(j, log);
            return -EIO;
        }
        j->size += hlen + ev->len;
        return 0;
    }
    j->size += hlen + ev->len;
    if (!j->dirty)
        j->dirty_since = now;
    j->dirty = true;
    return 0;
}

/* Batch mode: when the next fdatasync() is due (ms on the loop's clock), or -1. */
static int64_t journal_sync_deadline(const struct journal *j) {
    if (j->fd < 0 || !j->dirty || j->sync != SSE_JOURNAL_BATCH)
        return -1;
    return j->dirty_since + JOURNAL_BATCH_MS;
}

/* When the journal next needs the loop: a batch fdatasync() or a probe (ms), or -1. */
static int64_t journal_deadline(const struct journal *j) {
    int64_t due = journal_sync_deadline(j);
    if (j->fd >= 0 && j->cannot_write && !j->stuck && (due < 0 || j->probe_at < due))
        due = j->probe_at;
    return due;
}

static void journal_tick(struct journal *j, const struct logger *log, int64_t now) {
    int64_t due = journal_sync_deadline(j);
    if (due >= 0 && now >= due)
        journal_sync_now(j, log, now);
    if (j->fd >= 0 && j->cannot_write && !j->stuck && now >= j->probe_at)
        journal_probe(j, log, now);
}

/* The header line, with the floor for ids and the CRC-32 of the line up to the CRC (as a
 * record line has). Returns its length. */
static size_t journal_header(char out[JOURNAL_HEADER_MAX], uint64_t last_id) {
    static const char hex[] = "0123456789abcdef";
    struct wbuf w = {out, JOURNAL_HEADER_MAX, 0};
    wb_str(&w, JOURNAL_MAGIC);
    wb_u64(&w, last_id);
    wb_str(&w, " ");
    uint32_t crc = journal_crc32(0, out, w.len);
    for (int shift = 28; shift >= 0; shift -= 4)
        wb_put(&w, &hex[(crc >> shift) & 15u], 1);
    wb_str(&w, "\n");
    return w.len;
}

/* Reads the header at buf[0..len): "sse-journal 2 FLOOR CRC" (or version 1, "sse-journal
 * 1 FLOOR", with *version set to 1). Returns its length with the LF, 0 when buf ends before
 * a header could end (an empty file, or one torn while it was created), -1 when it is not
 * a journal's header, -2 when it is one whose CRC does not match (damaged or edited). */
static long journal_parse_header(const char *buf, size_t len, uint64_t *floor, int *version) {
    const char *nl = memchr(buf, '\n', len < JOURNAL_HEADER_MAX ? len : JOURNAL_HEADER_MAX);
    if (!nl)
        return len < JOURNAL_HEADER_MAX ? 0 : -1;
    size_t hlen = (size_t)(nl - buf), mlen = strlen(JOURNAL_MAGIC);
    if (hlen > mlen && memcmp(buf, JOURNAL_MAGIC_V1, mlen) == 0) {
        *version = 1; /* read as version 1 always was */
        return parse_u64(buf + mlen, hlen - mlen, floor) ? (long)hlen + 1 : -1;
    }
    if (hlen < mlen + 1 + 1 + 8 || memcmp(buf, JOURNAL_MAGIC, mlen) != 0 || buf[hlen - 9] != ' ' ||
        !id_decimal(buf + mlen, hlen - 9 - mlen, floor))
        return -1;
    uint32_t crc = 0;
    for (size_t i = hlen - 8; i < hlen; i++) {
        char c = buf[i];
        int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (v < 0)
            return -1;
        crc = crc << 4 | (uint32_t)v;
    }
    *version = 2;
    return journal_crc32(0, buf, hlen - 8) == crc ? (long)hlen + 1 : -2;
}

/* A new name (a created file, a rename) is durable only once its directory is synced:
 * fdatasync() of the file covers its data, not the entry that finds it. */
static void journal_sync_dir(const char *path, const struct logger *log) {
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : NULL;
    int dfd = open(dir ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) < 0)
        log_say(log, SSE_LOG_WARN, "journal %s: cannot sync its directory: %s", path,
                strerror(errno));
    if (dfd >= 0)
        close(dfd);
    free(dir);
}

/* Rewrites the journal with only the backlog, under a new name renamed over the old one,
 * so a crash at any point leaves one complete journal. The new file is locked before it
 * takes the name. On failure the old file stays in use. */
static void journal_compact(struct journal *j, const struct backlog *bl, uint64_t last_id,
                            const struct logger *log, int64_t now) {
    size_t plen = strlen(j->path);
    char *tmp = malloc(plen + 5);
    if (!tmp)
        return;
    memcpy(tmp, j->path, plen);
    memcpy(tmp + plen, ".new", 5);
    int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int r = fd < 0 || flock(fd, LOCK_EX | LOCK_NB) < 0 ? -errno : 0;
    char header[JOURNAL_HEADER_MAX];
    struct iovec hv = {header, journal_header(header, last_id)};
    uint64_t size = hv.iov_len;
    if (r == 0)
        r = journal_write_all(fd, &hv, 1);
    char heads[16][JOURNAL_RECORD_HEAD];
    struct iovec iov[32];
    for (uint32_t i = 0; r == 0 && i < bl->count;) {
        size_t n = 0;
        for (; n < 16 && i < bl->count; n++, i++) {
            const struct blob *ev = backlog_at(bl, i);
            iov[2 * n].iov_base = heads[n];
            iov[2 * n].iov_len =
                journal_record_head(heads[n], ev->id, ev->topic->name, ev->bytes, ev->len);
            iov[2 * n + 1].iov_base = (void *)ev->bytes;
            iov[2 * n + 1].iov_len = ev->len;
            size += iov[2 * n].iov_len + ev->len;
        }
        r = journal_write_all(fd, iov, (int)(2 * n));
    }
    if (r == 0 && j->sync != SSE_JOURNAL_NONE && fdatasync(fd) < 0)
        r = -errno;
    if (r == 0 && rename(tmp, j->path) < 0)
        r = -errno;
    if (r < 0) {
        journal_write_failed(j, size, now);
        log_say(log, SSE_LOG_ERROR, "journal %s: compaction failed: %s; still appending", j->path,
                strerror(-r));
        j->compacted = j->size; /* next try once the file doubled, not at every publish */
        if (fd >= 0) {
            unlink(tmp);
            close(fd);
        }
        free(tmp);
        return;
    }
    if (j->sync != SSE_JOURNAL_NONE)
        journal_sync_dir(j->path, log);
    free(tmp);
    fcntl(fd, F_SETFL, O_APPEND);
    close(j->fd);
    j->fd = fd;
    j->size = j->compacted = size;
    j->dirty = false;
    j->compactions++;
    journal_write_worked(j, log);
    log_say(log, SSE_LOG_INFO, "journal %s: compacted to %llu bytes (%u events)", j->path,
            (unsigned long long)size, bl->count);
}

/* After an append: compact when over the bound, but not before the file has doubled since
 * the last compaction, so a backlog larger than the bound cannot make every publish
 * rewrite the file. */
static void journal_maybe_compact(struct journal *j, const struct backlog *bl, uint64_t last_id,
                                  const struct logger *log, int64_t now) {
    if (j->size > j->max_bytes && j->size >= 2 * j->compacted)
        journal_compact(j, bl, last_id, log, now);
}

static void journal_close(struct journal *j, const struct logger *log) {
    if (j->fd >= 0) {
        if (j->dirty && j->sync != SSE_JOURNAL_NONE)
            journal_sync_now(j, log, 0);
        close(j->fd);
    }
    j->fd = -1;
    free(j->path);
    j->path = NULL;
}

/* Puts one event read back from the journal into the backlog. */
static bool journal_load_event(const struct journal_record *rec, struct topic_table *tt,
                               struct backlog *bl) {
    struct topic *t = topic_get(tt, rec->topic, rec->topic_len);
    struct blob *ev = t ? blob_from(rec->bytes, rec->len) : NULL;
    if (!ev) {
        if (t)
            topic_unref(t);
        return false;
    }
    ev->id = rec->id;
    ev->topic = t;
    backlog_push(bl, ev, rec->id - 1);
    blob_unref(ev);
    return true;
}

/* Whether a valid record starts anywhere after buf[0] (records start lines). */
static bool journal_valid_record_after(const char *buf, size_t len) {
    struct journal_record rec;
    for (size_t i = 1; i < len; i++)
        if (buf[i - 1] == '\n' && buf[i] == '#' &&
            journal_parse_record(buf + i, len - i, SIZE_MAX, &rec) > 0)
            return true;
    return false;
}

/* Reads the records of buf[0..len) (what follows the header) into the backlog, counting
 * them in *loaded (the backlog keeps fewer when its bounds are passed). Returns how many
 * bytes hold whole valid records (the rest is a torn end to cut off), or -1 with why. */
static long journal_load_records(const char *buf, size_t len, struct topic_table *tt,
                                 struct backlog *bl, uint64_t *last_id, uint32_t *loaded,
                                 const char **why) {
    uint64_t prev = 0;
    size_t at = 0;
    while (at < len) {
        struct journal_record rec;
        long n = journal_parse_record(buf + at, len - at, SIZE_MAX, &rec);
        if (n > 0 && rec.id <= prev)
            n = -1; /* ids only ever increase */
        if (n <= 0 && !journal_valid_record_after(buf + at, len - at))
            return (long)at; /* a torn end */
        if (n <= 0) {
            *why = "a damaged record is followed by valid ones";
            return -1;
        }
        if (!journal_load_event(&rec, tt, bl)) {
            *why = "out of memory";
            return -1;
        }
        prev = rec.id;
        ++*loaded;
        if (rec.id > *last_id)
            *last_id = rec.id;
        at += (size_t)n;
    }
    return (long)at;
}

/* Reads a whole file from offset 0 (start-up only). NULL with errno set on failure. */
static char *journal_read_file(int fd, size_t *len) {
    struct stat st;
    if (fstat(fd, &st) < 0)
        return NULL;
    size_t cap = (size_t)st.st_size + 1, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        ssize_t r = pread(fd, buf + n, cap - n, (off_t)n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            free(buf);
            return NULL;
        }
        if (r == 0)
            break;
        n += (size_t)r;
        if (n == cap) { /* the file grew: only another writer could do that, but be safe */
            char *bigger = realloc(buf, cap *= 2);
            if (!bigger)
                free(buf);
            buf = bigger;
        }
    }
    *len = n;
    return buf;
}

/* Opens or creates the journal, locks it, reads its events into the backlog and raises
 * *last_id to the highest id it knows. Returns NULL, or why it cannot be used. */
static const char *journal_open(struct journal *j, const char *path, struct topic_table *tt,
                                struct backlog *bl, uint64_t *last_id, const struct logger *log) {
    j->path = strdup(path);
    j->fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (!j->path || j->fd < 0)
        return strerror(j->path ? errno : ENOMEM);
    if (flock(j->fd, LOCK_EX | LOCK_NB) < 0)
        return errno == EWOULDBLOCK ? "in use by another process" : strerror(errno);
    size_t len;
    char *buf = journal_read_file(j->fd, &len);
    if (!buf)
        return strerror(errno);
    const char *why = NULL;
    uint64_t floor = 0;
    int version = 2;
    uint32_t loaded = 0;
    long hlen = journal_parse_header(buf, len, &floor, &version), keep = 0;
    if (hlen == -1)
        why = "not an sse-server journal (version 1 or 2)";
    else if (hlen == -2)
        why = "the header fails its CRC check (damaged or edited): refusing to guess where ids "
              "go on";
    else if (hlen > 0) /* 0: empty, or a header torn while the file was being created */
        keep = hlen + journal_load_records(buf + hlen, len - (size_t)hlen, tt, bl, last_id, &loaded,
                                           &why); /* with why, keep is not used */
    free(buf);
    if (why)
        return why;
    if (floor > *last_id)
        *last_id = floor;
    if ((size_t)keep < len) {
        if (keep)
            log_say(log, SSE_LOG_WARN, "journal %s: dropped a torn record at byte %ld (%zu bytes)",
                    path, keep, len - (size_t)keep);
        if (ftruncate(j->fd, keep) < 0)
            return strerror(errno);
    }
    if (keep == 0) {
        char header[JOURNAL_HEADER_MAX];
        struct iovec hv = {header, journal_header(header, *last_id)};
        keep = (long)hv.iov_len;
        int r = journal_write_all(j->fd, &hv, 1);
        if (r == 0 && j->sync != SSE_JOURNAL_NONE && fdatasync(j->fd) < 0)
            r = -errno;
        if (r < 0)
            return strerror(-r);
        if (j->sync != SSE_JOURNAL_NONE)
            journal_sync_dir(path, log);
    }
    j->size = j->compacted = (uint64_t)keep;
    if (loaded > bl->count) /* the file holds events the backlog could not keep (a smaller
                               backlog or backlog_bytes than last time): rewrite it at the
                               first append over max_bytes, rather than once it doubled */
        j->compacted = 0;
    log_say(log, SSE_LOG_INFO, "journal %s: %llu bytes, %u events back in the backlog", path,
            (unsigned long long)j->size, bl->count);
    if (keep > 0 && version == 1) /* rewritten with a checked header; on failure read on */
        journal_compact(j, bl, *last_id, log, clock_ms());
    return NULL;
}

/* ---- the journal as a history ---------------------------------------------------------
 * The backlog's ids and answers, with every event written to the journal before anyone
 * hears of it (journal_append), and compacted after the backlog kept it. */

/* The journal, in a hook of history_journal (so it is the history). */
static struct journal *journal_of(const struct sse_server *srv) {
    return srv->history_self;
}

static void history_journal_free(struct sse_server *srv) {
    journal_close(journal_of(srv), &srv->log);
    free(srv->history_self);
    srv->history_self = NULL;
}

/* The journal, or NULL when the history is another (part_journal's hooks ask). */
static struct journal *journal_of_any(const struct sse_server *srv) {
    return srv->history->free == history_journal_free ? srv->history_self : NULL;
}

static int history_journal_store(struct sse_server *srv, const struct blob *ev) {
    return journal_of(srv)->fd >= 0 ? journal_append(journal_of(srv), ev, &srv->log, srv->now) : 0;
}

static void history_journal_kept(struct sse_server *srv, uint64_t id) {
    if (journal_of(srv)->fd >= 0)
        journal_maybe_compact(journal_of(srv), &srv->backlog, id, &srv->log, srv->now);
}

static void history_journal_tick(struct sse_server *srv) {
    journal_tick(journal_of(srv), &srv->log, srv->now);
}

static int64_t history_journal_deadline(const struct sse_server *srv) {
    int64_t due = journal_deadline(journal_of(srv));
    return due < 0 ? INT64_MAX : due;
}

static size_t history_journal_metrics(const struct sse_server *srv, struct metrics_row *rows) {
    static const struct journal none = {.fd = -1};
    const struct journal *j = journal_of_any(srv) ? journal_of_any(srv) : &none;
    const struct metrics_row mine[] = {
        {"sse_journal_bytes", "gauge", "Size of the journal file (0 without --journal).", j->size},
        {"sse_journal_syncs_total", "counter", "fdatasync() calls on the journal.", j->syncs},
        {"sse_journal_compactions_total", "counter", "Journal rewrites down to the backlog.",
         j->compactions},
        {"sse_journal_errors_total", "counter",
         "Failed journal writes, syncs and compactions (failed writes were not published).",
         j->errors},
    };
    _Static_assert(sizeof mine / sizeof mine[0] <= PART_ROWS_MAX, "rows fit");
    memcpy(rows, mine, sizeof mine);
    return sizeof mine / sizeof mine[0];
}

static const char *history_journal_unhealthy(const struct sse_server *srv) {
    const struct journal *j = journal_of_any(srv);
    return !j                ? NULL
           : j->stuck        ? "journal unusable"
           : j->cannot_write ? "journal cannot write"
                             : NULL;
}

static const struct part_ops part_journal = {.metrics = history_journal_metrics,
                                             .unhealthy = history_journal_unhealthy};

static const struct history_ops history_journal = {
    .store = history_journal_store,
    .kept = history_journal_kept,
    .tick = history_journal_tick,
    .deadline = history_journal_deadline,
    .format_id = history_decimal_id,
    .parse_id = history_decimal_parse,
    .free = history_journal_free,
};

static const char *api_journal(struct sse_server *srv, const struct sse_config *cfg) {
    if (cfg->journal_sync != SSE_JOURNAL_BATCH && cfg->journal_sync != SSE_JOURNAL_ALWAYS &&
        cfg->journal_sync != SSE_JOURNAL_NONE)
        return "invalid journal_sync";
    struct journal *j = calloc(1, sizeof *j);
    if (!j)
        return "out of memory";
    j->fd = -1;
    srv->history = &history_journal; /* from here on history_journal_free() frees it */
    srv->history_self = j;
    j->sync = cfg->journal_sync;
    j->max_bytes = cfg->journal_max_bytes ? cfg->journal_max_bytes : SSE_DEFAULT_JOURNAL_MAX_BYTES;
    return journal_open(j, cfg->journal_path, &srv->topics, &srv->backlog, &srv->last_id,
                        &srv->log);
}
#endif /* SSE_ENABLE_JOURNAL */

#if SSE_ENABLE_REDIS
/* ==========================================================================================
 * Part II: Redis Streams, many servers, one history (SSE_ENABLE_REDIS)
 *
 * Adds: a hub of servers that share one history, a Redis stream. Plugs into the history
 * seam (history_redis: Redis assigns the ids, "MS-SEQ", and answers a Last-Event-ID older
 * than the backlog; publishes are XADDs answered later, an HTTP publisher through CONN_WAIT,
 * a relay through its receipt), the parts seam (part_redis: its /metrics rows, and /healthz
 * says 503 while Redis is unavailable), the publishers' gate (pace.can_take: inputs, relays
 * and HTTP publishing wait while Redis cannot take events) and the handle seam (each link's
 * redis_on_event). Its state hangs from srv->history_self. Names no other part.
 *
 * With a Redis address every server becomes a node of one hub. Publishing anywhere is an
 * XADD to one stream, and every node follows that stream with XREAD BLOCK and delivers its
 * entries to local subscribers through the same path as local events (publish_deliver), so
 * every node delivers every event, in the stream's order, under the stream entry's id
 * ("MS-SEQ"). A client may therefore reconnect to any node with its Last-Event-ID: what the
 * node's backlog lacks, it fetches from Redis with XRANGE (redis_replay). A publish
 * is acknowledged only once Redis has the event and said its id; while Redis cannot be
 * reached publishing answers 503, subscribers stay connected (heartbeats go on), and the
 * node reconnects with back-off and resumes XREAD after the last entry it delivered, so
 * nothing in between is lost or delivered twice.
 *
 * Publishers that cannot be told 503 wait instead. While Redis cannot take events (the
 * command link is down, not through AUTH, or past the hold mark) inputs are not read and a
 * publisher with a receipt (a relay) hears -EAGAIN, or, for XADDs lost with the link, that
 * they were not stored (a relay fetches them again from its last stored event); XADDs
 * from inputs and sse_publish() that were not yet written when the link failed are kept,
 * in order, and sent after AUTH on the next link. A written XADD without its answer may or
 * may not be stored: its HTTP publisher is told exactly that, and others send it again.
 *
 * Redis speaks RESP2 (redis.io/docs/reference/protocol-spec): a command is an array of bulk
 * strings ("*2\r\n$4\r\nPING\r\n..."); a reply is a simple string (+), an error (-), an
 * integer (:), a bulk string ($len, or $-1 for none) or an array (*n, or *-1) of replies.
 * The reader below is bounded in depth, elements and length, and runs incrementally: it
 * answers "incomplete" until a whole reply has arrived. Two connections per node: one for
 * commands (AUTH, XADD), one that only follows the stream (XREAD BLOCK holds it).
 * ======================================================================================== */

#define RESP_MAX_DEPTH    8     /* arrays in arrays; XREAD's reply nests 5 deep */
#define RESP_MAX_VALUES   65536 /* elements in one reply */
#define REDIS_TIMEOUT_MS  5000  /* connecting, and waiting for a command's reply */
#define REDIS_PING_MS     3000  /* a link with no reply due this long is probed with PING */
#define REDIS_BLOCK_MS    10000 /* how long XREAD BLOCK waits for an entry */
#define REDIS_BACKOFF_MAX 5000  /* longest wait between reconnection attempts */
#define REDIS_WAITS_MAX   65536 /* publishes waiting for Redis at once */
/* The hold mark. With this many bytes of commands on the command link not yet answered (sent
 * or not), or this many commands waiting for a reply, the link takes no more, and with as
 * many kept, inputs are not read, relays stop taking events and HTTP publishing answers
 * 503, until Redis catches up. An input is read only below the mark, at most INPUT_CHUNK
 * bytes at a time, so what is kept stays within the mark plus one read's events; beyond
 * that only sse_publish() keeps events, up to REDIS_KEPT_MAX bytes, then says -EAGAIN. */
#define REDIS_HOLD_BYTES (1u << 20)
#define REDIS_HOLD_WAITS 16384
#define REDIS_KEPT_MAX   (8u << 20)

/* A node's event id is the stream entry's id, "MS-SEQ", which every node sees the same; its
 * key is MS << ID_SEQ_BITS | SEQ, so keys order as entries do. Canonical text only. */
#define ID_SEQ_BITS 20

static void redis_id_format(struct wbuf *w, uint64_t key) {
    wb_u64(w, key >> ID_SEQ_BITS);
    wb_put(w, "-", 1);
    wb_u64(w, key & ((1u << ID_SEQ_BITS) - 1));
}

static bool redis_id_parse(const char *s, size_t len, uint64_t *key) {
    const char *dash = memchr(s, '-', len);
    uint64_t ms, seq;
    if (!dash || !id_decimal(s, (size_t)(dash - s), &ms) ||
        !id_decimal(dash + 1, len - (size_t)(dash - s) - 1, &seq) || ms >> (64 - ID_SEQ_BITS) ||
        seq >> ID_SEQ_BITS)
        return false;
    *key = ms << ID_SEQ_BITS | seq;
    return true;
}

/* One value of a reply, in a flat array in reading order: an array's elements follow it. */
struct resp_value {
    char type;       /* '+', '-', ':', '$', '*'; '_' for a null bulk string or array */
    const char *str; /* simple strings, errors, bulk strings: the bytes (in the input) */
    size_t len;      /* their length; an array's element count */
    int64_t integer; /* ':' values */
};

#define RESP_ARGS_MAX 12 /* arguments in one command we send (XADD has the most) */

/* A command to send: its arguments, each bytes and a length. */
struct resp_args {
    int argc;                        /* arguments used */
    const char *argv[RESP_ARGS_MAX]; /* their bytes */
    size_t lens[RESP_ARGS_MAX];      /* their lengths */
};

/* Adds an argument to a command. */
static void resp_arg(struct resp_args *a, const char *s, size_t len) {
    a->argv[a->argc] = s;
    a->lens[a->argc++] = len;
}

/* Appends the command a to w as a RESP array of bulk strings. */
static void resp_command(struct wbuf *w, const struct resp_args *a) {
    int argc = a->argc;
    const char *const *argv = a->argv;
    const size_t *lens = a->lens;
    wb_str(w, "*");
    wb_u64(w, (uint64_t)argc);
    wb_str(w, "\r\n");
    for (int i = 0; i < argc; i++) {
        wb_str(w, "$");
        wb_u64(w, lens[i]);
        wb_str(w, "\r\n");
        wb_put(w, argv[i], lens[i]);
        wb_str(w, "\r\n");
    }
}

/* A line ended by CRLF at buf[at..len): its end (the CR), or 0 when incomplete, -1 when a
 * bare CR or LF is inside. */
static long resp_line_end(const char *buf, size_t len, size_t at) {
    for (size_t i = at; i < len; i++) {
        if (buf[i] == '\r')
            return i + 1 < len ? (buf[i + 1] == '\n' ? (long)i : -1) : 0;
        if (buf[i] == '\n')
            return -1;
    }
    return 0;
}

/* A signed decimal number filling s[0..len) exactly. */
static bool resp_int(const char *s, size_t len, int64_t *out) {
    bool neg = len > 0 && s[0] == '-';
    uint64_t v;
    if (!parse_u64(s + neg, len - neg, &v) || v > (uint64_t)INT64_MAX)
        return false;
    *out = neg ? -(int64_t)v : (int64_t)v;
    return true;
}

/* Reads one whole reply from buf[0..len) into vals (cap entries, *n used). Returns the bytes
 * it took, 0 when the reply is not complete yet, -1 when it is not RESP2 or over a bound
 * (max_bulk bytes in one string, cap values, RESP_MAX_DEPTH arrays deep). */
static long resp_read(const char *buf, size_t len, size_t max_bulk, struct resp_value *vals,
                      size_t cap, size_t *n) {
    size_t at = 0, left[RESP_MAX_DEPTH + 1]; /* elements still due at each open array */
    int depth = 0;
    *n = 0;
    do {
        if (at >= len)
            return 0;
        long end = resp_line_end(buf, len, at + 1);
        if (end <= 0)
            return end;
        if (*n >= cap)
            return -1;
        struct resp_value *v = &vals[(*n)++];
        const char *s = buf + at + 1;
        size_t slen = (size_t)end - at - 1;
        *v = (struct resp_value){buf[at], s, slen, 0};
        at = (size_t)end + 2;
        if (v->type == ':' && !resp_int(s, slen, &v->integer))
            return -1;
        if (v->type == '$' || v->type == '*') {
            int64_t count;
            if (!resp_int(s, slen, &count) || count < -1)
                return -1;
            if (count == -1) {
                v->type = '_';
                v->len = 0;
            } else if (v->type == '$') {
                if ((uint64_t)count > max_bulk)
                    return -1;
                if (len - at < (size_t)count + 2)
                    return 0;
                if (buf[at + (size_t)count] != '\r' || buf[at + (size_t)count + 1] != '\n')
                    return -1;
                v->str = buf + at;
                v->len = (size_t)count;
                at += (size_t)count + 2;
            } else {
                if ((uint64_t)count > cap || depth == RESP_MAX_DEPTH)
                    return -1;
                v->len = (size_t)count;
                v->str = NULL;
                if (count > 0) {
                    left[++depth] = (size_t)count;
                    continue;
                }
            }
        } else if (v->type != '+' && v->type != '-' && v->type != ':') {
            return -1;
        }
        while (depth > 0 && --left[depth] == 0) /* this value ends arrays */
            depth--;
    } while (depth > 0);
    return (long)at;
}

/* The index of the value after vals[i] and everything inside it. */
static size_t resp_skip(const struct resp_value *vals, size_t n, size_t i) {
    size_t due = 1;
    while (due && i < n) {
        due--;
        if (vals[i].type == '*')
            due += vals[i].len;
        i++;
    }
    return i;
}

enum redis_wait_kind {
    RW_AUTH,
    RW_XADD,
    RW_POSITION,
    RW_XREAD,
    RW_XINFO,
    RW_XRANGE,
    RW_XLAST,
    RW_PING
};

/* A reply a link expects, in the order the commands went out. */
struct redis_wait {
    uint8_t kind;                   /* enum redis_wait_kind */
    struct conn *c;                 /* the publisher waiting for an XADD's id, or the
                                       subscriber a replay is for; NULL once it is gone */
    char topic[TOPIC_NAME_MAX + 1]; /* the XADD's topic, for the answer */
    uint64_t after;                 /* a replay's position: entries after this id */
    bool http;                      /* an XADD for POST /publish (c NULL: the client left) */
    struct receipt receipt;         /* an XADD's publisher told the outcome (receipt.done),
                                       or done NULL; receipt.mark is mark */
    char *mark;                     /* the receipt's mark (owned), or NULL */
    size_t end;                     /* where the command ends in all the link ever queued
                                       (out_pos counts): sent whole once written passes it */
    size_t len;                     /* the command's bytes */
};

struct redis_link {
    struct handle h;          /* fd (-1 while down) and redis_on_event; first, for epoll */
    const char *name;         /* "commands" or "stream", for log lines */
    bool connecting;          /* connect() in progress */
    bool up;                  /* connected; what is queued is being sent */
    bool ready;               /* up and AUTH accepted (or none needed): XADDs may go */
    char *in;                 /* bytes read and not yet parsed */
    size_t in_len, in_cap;    /* bytes in `in`, and allocated */
    char *out;                /* commands not yet sent */
    size_t out_len, out_off;  /* bytes in `out`, and already sent */
    size_t out_cap;           /* allocated */
    size_t out_pos;           /* bytes sent and dropped from `out` since connecting */
    struct redis_wait *waits; /* a ring of replies due */
    uint32_t whead, wlen, wcap;
    int64_t deadline;     /* connect, or the oldest reply due, by then; 0 = none (idle) */
    int64_t idle_since;   /* since when no reply is due: PING at idle_since + REDIS_PING_MS */
    int64_t next_attempt; /* when down: when to connect again */
    unsigned failures;    /* attempts in a row that failed, for back-off */
};

/* A subscriber that came back with an id this node's follower has not reached yet (it read
 * the event on a node further ahead): it waits until the follower gets there. */
struct redis_ahead {
    struct conn *c;
    uint64_t last; /* its last event id */
};

struct redis_hub {
    struct sockaddr_storage addr; /* Redis, resolved once at start */
    socklen_t addr_len;
    char where[280];           /* "HOST:PORT", for log lines */
    char key[256];             /* the stream */
    char *password;            /* for AUTH, or NULL */
    uint64_t maxlen;           /* XADD MAXLEN ~ this */
    size_t max_reply;          /* largest reply accepted */
    uint32_t xread_count;      /* entries per XREAD */
    struct redis_link cmd;     /* AUTH, XADD */
    struct redis_link follow;  /* XREAD BLOCK, following the stream */
    bool positioned;           /* srv->last_id is a stream position (known since start) */
    char after[48];            /* the id of the last entry read: XREAD goes on after it */
    struct redis_ahead *ahead; /* subscribers whose last id this node has not read yet */
    uint32_t nahead, ahead_cap;
    struct resp_value *vals;       /* scratch for the reader */
    char *kept;                    /* XADDs from inputs and sse_publish() the command link could
                                      not take (down, or not through AUTH yet), in order */
    size_t kept_len, kept_cap;     /* bytes in kept, and allocated */
    size_t *kept_lens;             /* each kept command's length */
    uint32_t nkept, kept_lens_cap; /* kept commands, and room in kept_lens */
    uint64_t reconnects;           /* links lost, for /metrics */
    uint64_t errors;               /* failed publishes and refused entries */
    uint64_t received;             /* stream entries delivered */
    uint64_t unknown;              /* XADDs written but not answered when the link died */
};

/* The hub, in a hook of history_redis or a function they call (so it is the history). */
static struct redis_hub *redis_of(const struct sse_server *srv) {
    return srv->history_self;
}

/* Room in a link's ring for one more reply, and in its output for n more bytes. */
static bool redis_room(struct redis_link *l, size_t n) {
    if (l->wlen == l->wcap) {
        uint32_t cap = l->wcap ? l->wcap * 2 : 16;
        struct redis_wait *ring = cap <= REDIS_WAITS_MAX ? malloc(cap * sizeof *ring) : NULL;
        if (!ring)
            return false;
        for (uint32_t i = 0; i < l->wlen; i++)
            ring[i] = l->waits[(l->whead + i) % l->wcap];
        free(l->waits);
        l->waits = ring;
        l->wcap = cap;
        l->whead = 0;
    }
    if (l->out_len + n > l->out_cap) {
        size_t cap = (l->out_len + n) * 2;
        char *out = realloc(l->out, cap);
        if (!out)
            return false;
        l->out = out;
        l->out_cap = cap;
    }
    return true;
}

/* The reply due for the len bytes just appended to a link's output (redis_room first). */
static struct redis_wait *redis_expect(struct sse_server *srv, struct redis_link *l,
                                       enum redis_wait_kind kind, struct conn *c, const char *topic,
                                       size_t len) {
    struct redis_wait *rw = &l->waits[(l->whead + l->wlen++) % l->wcap];
    *rw = (struct redis_wait){.kind = (uint8_t)kind, .c = c, .http = c != NULL, .len = len};
    rw->end = l->out_pos + l->out_len;
    snprintf(rw->topic, sizeof rw->topic, "%s", topic ? topic : "");
    if (!l->deadline)
        l->deadline = srv->now + (kind == RW_XREAD ? REDIS_BLOCK_MS : 0) + REDIS_TIMEOUT_MS;
    return rw;
}

/* After a reply (or once connected): the deadline follows the oldest reply still due,
 * REDIS_TIMEOUT_MS from now (plus the BLOCK time for XREAD). With none due there is no
 * deadline, and the link is idle from now: an idle link is never "late", it is probed with
 * a PING of its own after REDIS_PING_MS (redis_tick), whose PONG is due like any reply. */
static void redis_rearm(struct sse_server *srv, struct redis_link *l) {
    const struct redis_wait *next = l->wlen ? &l->waits[l->whead] : NULL;
    l->deadline =
        !next ? 0 : srv->now + REDIS_TIMEOUT_MS + (next->kind == RW_XREAD ? REDIS_BLOCK_MS : 0);
    if (!next)
        l->idle_since = srv->now;
}

/* Appends a command to a link's output and the reply it expects to its queue; returns that
 * entry (for the caller's details), or NULL when out of memory or over REDIS_WAITS_MAX. */
static struct redis_wait *redis_send(struct sse_server *srv, struct redis_link *l,
                                     enum redis_wait_kind kind, struct conn *c, const char *topic,
                                     const struct resp_args *args) {
    struct wbuf w = {NULL, 0, 0};
    resp_command(&w, args); /* measures */
    if (!redis_room(l, w.len))
        return NULL;
    w = (struct wbuf){l->out + l->out_len, w.len, 0};
    resp_command(&w, args);
    l->out_len += w.len;
    return redis_expect(srv, l, kind, c, topic, w.len);
}

/* Bytes of a link's output whose replies are still due: from the oldest waiting command on
 * (what came before it is answered and may be dropped). */
static size_t redis_live(const struct redis_link *l) {
    const struct redis_wait *head = l->wlen ? &l->waits[l->whead] : NULL;
    return head ? l->out_pos + l->out_len - (head->end - head->len) : 0;
}

/* Whether a link is past the hold mark. */
static bool redis_behind(const struct redis_link *l) {
    return redis_live(l) >= REDIS_HOLD_BYTES || l->wlen >= REDIS_HOLD_WAITS;
}

/* Keeps an XADD (n bytes at cmd) for when the command link can take it. */
static bool redis_keep(struct redis_hub *r, const char *cmd, size_t n) {
    if (r->nkept == r->kept_lens_cap) {
        uint32_t cap = r->kept_lens_cap ? r->kept_lens_cap * 2 : 64;
        size_t *lens = realloc(r->kept_lens, cap * sizeof *lens);
        if (!lens)
            return false;
        r->kept_lens = lens;
        r->kept_lens_cap = cap;
    }
    if (r->kept_len + n > r->kept_cap) {
        size_t cap = (r->kept_len + n) * 2;
        char *kept = realloc(r->kept, cap);
        if (!kept)
            return false;
        r->kept = kept;
        r->kept_cap = cap;
    }
    memcpy(r->kept + r->kept_len, cmd, n);
    r->kept_len += n;
    r->kept_lens[r->nkept++] = n;
    return true;
}

/* Moves kept XADDs, oldest first, to the command link once it is through AUTH, up to the
 * hold mark; the rest waits for a later tick. */
static void redis_send_kept(struct sse_server *srv) {
    struct redis_hub *r = redis_of(srv);
    struct redis_link *l = &r->cmd;
    uint32_t i = 0;
    size_t at = 0;
    for (; l->ready && !redis_behind(l) && i < r->nkept && redis_room(l, r->kept_lens[i]); i++) {
        memcpy(l->out + l->out_len, r->kept + at, r->kept_lens[i]);
        l->out_len += r->kept_lens[i];
        redis_expect(srv, l, RW_XADD, NULL, NULL, r->kept_lens[i]);
        at += r->kept_lens[i];
    }
    if (!i)
        return;
    log_say(&srv->log, SSE_LOG_INFO, "redis %s: sending %u kept events", r->where, i);
    memmove(r->kept, r->kept + at, r->kept_len - at);
    r->kept_len -= at;
    memmove(r->kept_lens, r->kept_lens + i, (r->nkept - i) * sizeof *r->kept_lens);
    r->nkept -= i;
}

static void redis_flush(struct sse_server *srv, struct redis_link *l);
static void redis_link_fail(struct sse_server *srv, struct redis_link *l, const char *why);

/* The follower's next read: entries after the last one delivered, waiting up to
 * REDIS_BLOCK_MS for one. */
static void redis_follow_next(struct sse_server *srv) {
    struct redis_hub *r = redis_of(srv);
    char count[24], block[24];
    struct wbuf cw = {count, sizeof count, 0}, bw = {block, sizeof block, 0};
    wb_u64(&cw, r->xread_count);
    wb_u64(&bw, REDIS_BLOCK_MS);
    struct resp_args args = {8,
                             {"XREAD", "COUNT", count, "BLOCK", block, "STREAMS", r->key, r->after},
                             {5, 5, cw.len, 5, bw.len, 7, strlen(r->key), strlen(r->after)}};
    if (!redis_send(srv, &r->follow, RW_XREAD, NULL, NULL, &args))
        redis_link_fail(srv, &r->follow, "out of memory");
}

/* Opens a link (non-blocking) and queues what it must say first: AUTH, and for the follower
 * where to start reading. */
static void redis_connect(struct sse_server *srv, struct redis_link *l) {
    struct redis_hub *r = redis_of(srv);
    int fd = socket(r->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET};
    ev.data.ptr = &l->h;
    if (fd < 0 ||
        (connect(fd, (const struct sockaddr *)&r->addr, r->addr_len) < 0 && errno != EINPROGRESS) ||
        epoll_ctl(srv->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        l->h.fd = -1;
        l->failures++;
        l->next_attempt = srv->now + REDIS_BACKOFF_MAX;
        log_say(&srv->log, SSE_LOG_WARN, "redis %s: %s link: %s", r->where, l->name, strerror(e));
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    l->h.fd = fd;
    l->connecting = true;
    l->deadline = srv->now + REDIS_TIMEOUT_MS;
    bool ok = true;
    if (r->password) {
        struct resp_args args = {2, {"AUTH", r->password}, {4, strlen(r->password)}};
        ok = redis_send(srv, l, RW_AUTH, NULL, NULL, &args);
    }
    if (ok && l == &r->follow && !r->positioned) {
        struct resp_args args = {
            6, {"XREVRANGE", r->key, "+", "-", "COUNT", "1"}, {9, strlen(r->key), 1, 1, 5, 1}};
        ok = redis_send(srv, l, RW_POSITION, NULL, NULL, &args);
    } else if (ok && l == &r->follow) {
        redis_follow_next(srv);
    }
    if (!ok)
        redis_link_fail(srv, l, "out of memory");
}

/* Rotates buf[0..n) left by k bytes, in place: buf[k..n) comes first, then buf[0..k). */
static void redis_rotate(char *buf, size_t n, size_t k) {
    size_t parts[3][2] = {{0, k}, {k, n}, {0, n}};
    for (int p = 0; p < 3; p++)
        for (size_t a = parts[p][0], b = parts[p][1]; a + 1 < b; a++, b--) {
            char t = buf[a];
            buf[a] = buf[b - 1];
            buf[b - 1] = t;
        }
}

/* An XADD still on the command link when it failed. Sent whole, its outcome is unknown:
 * Redis may have stored it and gone before answering. An HTTP publisher hears exactly that
 * (503; it can look before publishing again; one that left is not published for, as it had
 * no answer and may publish again itself); a relay fetches it again from the last
 * upstream id Redis answered for; an input's or sse_publish()'s event cannot be fetched
 * again, so it is sent again: it may be stored twice, but is never lost. Not sent whole,
 * it was not stored (Redis drops a command cut short): the publisher gets 503, the relay
 * fetches it again, the rest is kept and sent after reconnecting. Returns whether it was
 * kept. */
static bool redis_xadd_lost(struct sse_server *srv, struct redis_link *l, struct redis_wait *rw) {
    struct redis_hub *r = redis_of(srv);
    bool sent = rw->end <= l->out_pos + l->out_off;
    r->unknown += sent;
    if (rw->http) {
        r->errors += !sent; /* a publisher that left had no answer: it may publish again */
        if (!rw->c)
            return false;
        rw->c->state = CONN_RESPOND; /* out of CONN_WAIT, so closing it is plain */
        if (sent)
            http_text(srv, rw->c, 503,
                      "Redis went away before answering: the outcome is unknown, the event may "
                      "have been stored; check before publishing it again",
                      NULL);
        else
            publish_answer(srv, rw->c, -EIO, 0, rw->topic);
        return false;
    }
    if (rw->receipt.done) {
        rw->receipt.done(srv, rw->receipt.who, rw->mark, false);
        return false;
    }
    if (redis_keep(r, l->out + (rw->end - rw->len - l->out_pos), rw->len))
        return true;
    r->errors++;
    log_say(&srv->log, SSE_LOG_ERROR, "redis %s: out of memory: an event was lost", r->where);
    return false;
}

/* A link failed: everyone waiting on it hears so, and it is retried after a back-off that
 * doubles from 100 ms up to REDIS_BACKOFF_MAX. A publisher with a receipt hears its XADD
 * was not stored (a relay reconnects, from the last id stored, once Redis can take events
 * again). */
static void redis_link_fail(struct sse_server *srv, struct redis_link *l, const char *why) {
    struct redis_hub *r = redis_of(srv);
    if (l->h.fd >= 0) {
        close(l->h.fd);
        l->h.fd = -1;
        r->reconnects++;
        log_say(&srv->log, SSE_LOG_WARN, "redis %s: %s link lost: %s", r->where, l->name, why);
    }
    l->up = l->connecting = l->ready = false;
    l->in_len = 0;
    l->deadline = 0;
    uint32_t nlater = r->nkept, kept = 0; /* kept already: came after all that is on the link */
    size_t later = r->kept_len;
    while (l->wlen) {
        struct redis_wait *rw = &l->waits[l->whead];
        l->whead = (l->whead + 1) % l->wcap;
        l->wlen--;
        if ((rw->kind == RW_XINFO || rw->kind == RW_XRANGE || rw->kind == RW_XLAST) && rw->c)
            conn_close(srv, rw->c, R_PEER_FAILED); /* it comes back with its last id */
        else if (rw->kind == RW_XADD)
            kept += redis_xadd_lost(srv, l, rw);
        free(rw->mark);
    }
    if (nlater && kept) {
        redis_rotate(r->kept, r->kept_len, later);
        redis_rotate((char *)r->kept_lens, r->nkept * sizeof *r->kept_lens,
                     nlater * sizeof *r->kept_lens);
    }
    l->out_len = l->out_off = l->out_pos = 0;
    unsigned shift = l->failures < 6 ? l->failures : 6;
    int64_t backoff = (int64_t)100 << shift;
    l->next_attempt = srv->now + (backoff < REDIS_BACKOFF_MAX ? backoff : REDIS_BACKOFF_MAX);
    l->failures++;
}

/* How many subscribers of this server follow a topic (for a publish's answer). */
static int redis_local_subscribers(struct sse_server *srv, const char *topic) {
    struct topic *t = topic_find(&srv->topics, topic, strlen(topic));
    int n = 0;
    for (struct sub *s = t ? t->subs : NULL; s; s = s->next)
        n++;
    return n;
}

/* A value as a NUL-terminated string in out (cap bytes); false if it is no string or too
 * long. */
static bool redis_str(const struct resp_value *v, char *out, size_t cap) {
    if (v->type != '$' || v->len >= cap)
        return false;
    if (v->len) /* a null bulk string ($-1) has no bytes, and str may be NULL */
        memcpy(out, v->str, v->len);
    out[v->len] = '\0';
    return true;
}

/* What sse-server writes into a stream entry, [id, [field, value, ...]] at vals[i]. */
struct redis_entry {
    char id[48];                    /* the entry id as Redis wrote it ("" if none) */
    uint64_t key;                   /* the id as a key */
    char topic[TOPIC_NAME_MAX + 1]; /* "topic" */
    char event[EVENT_TYPE_MAX + 1]; /* "event", or "" */
    const struct resp_value *data;  /* "data" */
};

/* Reads an entry; false if it is not an event sse-server would publish (e->id is still set
 * when the entry has an id, so a reader can move past it). */
static bool redis_entry(const struct sse_server *srv, const struct resp_value *vals, size_t n,
                        size_t i, struct redis_entry *e) {
    memset(e, 0, sizeof *e);
    bool ok = i + 2 < n && vals[i].type == '*' && vals[i].len == 2 &&
              redis_str(&vals[i + 1], e->id, sizeof e->id) && vals[i + 2].type == '*' &&
              vals[i + 2].len % 2 == 0;
    ok = ok && redis_id_parse(e->id, strlen(e->id), &e->key);
    for (size_t f = i + 3; ok && f + 1 < i + 3 + vals[i + 2].len && f + 1 < n; f += 2) {
        const struct resp_value *name = &vals[f], *value = &vals[f + 1];
        ok = name->type == '$' && value->type == '$';
        if (ok && bytes_eq(name->str, name->len, "topic"))
            ok = redis_str(value, e->topic, sizeof e->topic);
        else if (ok && bytes_eq(name->str, name->len, "event"))
            ok = redis_str(value, e->event, sizeof e->event) && e->event[0];
        else if (ok && bytes_eq(name->str, name->len, "data"))
            e->data = value;
    }
    const char *t = e->topic;
    return ok && e->data && e->topic[0] &&
           publish_check(srv, &t, e->event[0] ? e->event : NULL, e->data->str, e->data->len) == 0;
}

static void redis_ahead_done(struct sse_server *srv);

/* One stream entry at vals[i] to the local subscribers. Entries not written by sse-server
 * are skipped and counted; the follower moves past them all the same. */
static void redis_deliver_entry(struct sse_server *srv, const struct resp_value *vals, size_t n,
                                size_t i) {
    struct redis_hub *r = redis_of(srv);
    struct redis_entry e;
    bool ok = redis_entry(srv, vals, n, i, &e);
    if (e.id[0])
        memcpy(r->after, e.id, strlen(e.id) + 1); /* read, delivered or not */
    if (ok && e.key > srv->last_id &&
        publish_deliver(srv, e.key, e.topic, e.event[0] ? e.event : NULL, e.data->str,
                        e.data->len) >= 0) {
        r->received++;
        redis_ahead_done(srv);
        return;
    }
    r->errors++;
    log_say(&srv->log, SSE_LOG_WARN, "redis %s: stream entry %s skipped: not an sse-server event",
            r->where, e.id[0] ? e.id : "without an id");
}

/* The follower's answers: where the stream ends (at start), then entries. */
static bool redis_follow_reply(struct sse_server *srv, enum redis_wait_kind kind,
                               const struct resp_value *vals, size_t n) {
    struct redis_hub *r = redis_of(srv);
    if (kind == RW_POSITION) {
        char id[48] = "0-0";
        if (vals[0].type != '*' || (vals[0].len && (n < 3 || !redis_str(&vals[2], id, sizeof id))))
            return false;
        uint64_t key;
        if (!redis_id_parse(id, strlen(id), &key))
            return false;
        srv->last_id = key;
        memcpy(r->after, id, strlen(id) + 1);
        blob_unref(srv->id_line);
        srv->id_line = NULL;
        r->positioned = true;
        log_say(&srv->log, SSE_LOG_INFO, "redis %s: following stream %s after %s", r->where, r->key,
                id);
    } else if (vals[0].type == '*') { /* [[key, [entry, ...]]] */
        if (n < 4 || vals[0].len != 1 || vals[1].type != '*' || vals[1].len != 2 ||
            vals[2].type != '$' || vals[3].type != '*')
            return false;
        for (size_t i = 4, e = 0; e < vals[3].len && i < n; e++) {
            redis_deliver_entry(srv, vals, n, i);
            i = resp_skip(vals, n, i);
        }
    } else if (vals[0].type != '_') { /* '_': BLOCK ran out with nothing new */
        return false;
    }
    redis_follow_next(srv);
    return true;
}

/*
 * Replay from Redis. A client may come back with an id older than this node's backlog (the
 * node started later, or the client was away long). Then the node asks Redis: XINFO STREAM
 * says whether anything after that id was trimmed away (then only the reset event is
 * honest), and XRANGE brings the entries after it, REDIS_REPLAY_PAGE at a time, until they
 * reach what the backlog holds; the backlog then gives the rest, and live events follow.
 * Until then the subscriber is CF_REPLAYING: live events skip it (it takes them from the
 * backlog), so it sees every event once, in order. Replayed entries are formatted for this
 * subscriber alone; a subscriber that falls client_buffer behind is dropped as slow.
 */
#define REDIS_REPLAY_PAGE 256

/* Whether a node's backlog alone replays exactly after `last`: the local rule
 * (backlog_covers), but stream ids are sparse. The backlog holds every entry the follower
 * delivered after `base` (the stream's position when the node started, or the last entry
 * evicted), so an id between base and the first entry held was never an entry this node
 * read: it may come from a stream Redis has since lost (restarted empty) or from an entry
 * deleted before this node read it. Only Redis can say whether such an id is covered
 * (redis_replay_info); the backlog covers base itself and ids from its first entry on. */
static bool redis_backlog_covers(const struct sse_server *srv, uint64_t last) {
    const struct backlog *bl = &srv->backlog;
    if (!backlog_covers(bl, last, srv->last_id))
        return false;
    return last == srv->last_id || last == bl->base || last >= backlog_at(bl, 0)->id;
}

static bool redis_replay_page(struct sse_server *srv, struct conn *c, uint64_t after) {
    struct redis_hub *r = redis_of(srv);
    char from[50] = "(", count[24];
    struct wbuf fw = {from + 1, sizeof from - 1, 0}, cw = {count, sizeof count, 0};
    redis_id_format(&fw, after);
    wb_u64(&cw, REDIS_REPLAY_PAGE);
    struct resp_args args = {6,
                             {"XRANGE", r->key, from, "+", "COUNT", count},
                             {6, strlen(r->key), fw.len + 1, 1, 5, cw.len}};
    struct redis_wait *rw = redis_send(srv, &r->cmd, RW_XRANGE, c, NULL, &args);
    if (rw)
        rw->after = after;
    return rw != NULL;
}

/* Starts a replay from Redis for a subscriber whose last id is `after`. False when Redis
 * cannot be asked now (the caller sends the reset event instead). */
static bool redis_replay(struct sse_server *srv, struct conn *c, uint64_t after) {
    struct redis_hub *r = redis_of(srv);
    struct resp_args args = {3, {"XINFO", "STREAM", r->key}, {5, 6, strlen(r->key)}};
    struct redis_wait *rw =
        r->cmd.ready ? redis_send(srv, &r->cmd, RW_XINFO, c, NULL, &args) : NULL;
    if (!rw)
        return false;
    rw->after = after;
    return true;
}

/* XINFO STREAM's answer, a flat list of field and value. The rule is the backlog's
 * (backlog_covers): a replay is exact only when the history provably holds every entry after
 * the client's id. Stream ids are sparse, so "provably" means: the id is not older than the
 * first entry the stream holds (everything after it is still there), or it is 0-0 (the
 * position of an empty stream) and nothing was ever removed (entries-added equals length);
 * and no entry after it was deleted from the middle (max-deleted-entry-id). An id older
 * than the first entry is never covered, even when nothing was trimmed: the stream may have
 * been created again since the client read it (Redis without persistence restarts empty,
 * and a stream that was deleted starts over), and its entries before the first are gone
 * without a trace. No stream at all (an error) is no proof either. */
static void redis_replay_info(struct sse_server *srv, const struct redis_wait *rw,
                              const struct resp_value *vals, size_t n) {
    uint64_t deleted = 0, first = 0;
    int64_t added = -1, length = -1;
    bool have_first = false;
    for (size_t i = 1; vals[0].type == '*' && i + 1 < n; i = resp_skip(vals, n, i + 1)) {
        char id[48];
        const struct resp_value *name = &vals[i], *value = &vals[i + 1];
        if (name->type != '$' && name->type != '+')
            continue;
        if (bytes_eq(name->str, name->len, "length") && value->type == ':')
            length = value->integer;
        else if (bytes_eq(name->str, name->len, "entries-added") && value->type == ':')
            added = value->integer;
        else if (bytes_eq(name->str, name->len, "max-deleted-entry-id") &&
                 redis_str(value, id, sizeof id))
            redis_id_parse(id, strlen(id), &deleted);
        else if (bytes_eq(name->str, name->len, "first-entry") && value->type == '*' && i + 2 < n &&
                 redis_str(&vals[i + 2], id, sizeof id))
            have_first = redis_id_parse(id, strlen(id), &first);
    }
    bool removed = added < 0 || length < 0 || added != length;
    bool exact = vals[0].type == '*' && rw->after >= deleted &&
                 ((length > 0 && have_first && rw->after >= first) || (rw->after == 0 && !removed));
    if (!exact || !redis_replay_page(srv, rw->c, rw->after))
        stream_answer_later(srv, rw->c, rw->after, false);
}

/* A page of XRANGE: entries up to what the backlog holds go to the subscriber; then the
 * next page, or the backlog. */
static void redis_replay_entries(struct sse_server *srv, const struct redis_wait *rw,
                                 const struct resp_value *vals, size_t n) {
    struct conn *c = rw->c;
    if (vals[0].type != '*') {
        stream_answer_later(srv, c, rw->after, false);
        return;
    }
    uint64_t limit = srv->backlog.count ? srv->backlog.base : srv->last_id, after = rw->after;
    bool done = vals[0].len < REDIS_REPLAY_PAGE;
    for (size_t i = 1, e = 0; e < vals[0].len && i < n; e++, i = resp_skip(vals, n, i)) {
        struct redis_entry ent;
        bool ok = redis_entry(srv, vals, n, i, &ent);
        if (!ent.id[0] || ent.key > limit) {
            done = true; /* the backlog has it from here */
            break;
        }
        after = ent.key;
        struct topic *t = ok ? topic_find(&srv->topics, ent.topic, strlen(ent.topic)) : NULL;
        if (!t || !stream_follows(c, t))
            continue;
        size_t len =
            wire_format_event(NULL, 0, ent.id, strlen(ent.id), ent.event[0] ? ent.event : NULL,
                              ent.data->str, ent.data->len);
        if (!stream_room(srv, c, len))
            return; /* the same rule as for live events */
        struct blob *b = blob_new(len);
        if (b)
            wire_format_event(b->bytes, len, ent.id, strlen(ent.id),
                              ent.event[0] ? ent.event : NULL, ent.data->str, ent.data->len);
        if (!b || !conn_enqueue_owned(srv, c, b)) {
            conn_close(srv, c, R_ERROR);
            return;
        }
    }
    if (done || !redis_replay_page(srv, c, after))
        stream_answer_later(srv, c, after, done);
}

/*
 * A client may come back with an id this node has not read yet: it read the event on a
 * node whose follower is a little ahead. Such an id is not a reset; the subscriber waits
 * (CF_REPLAYING: live events skip it) until this node's follower passes the id, then
 * takes what came after it from the backlog. XREVRANGE first tells whether the id exists
 * at all: one newer than the stream's last entry was never issued, and gets the reset.
 */
static bool redis_ahead(struct sse_server *srv, struct conn *c, uint64_t last) {
    struct redis_hub *r = redis_of(srv);
    struct resp_args args = {
        6, {"XREVRANGE", r->key, "+", "-", "COUNT", "1"}, {9, strlen(r->key), 1, 1, 5, 1}};
    struct redis_wait *rw =
        r->cmd.ready ? redis_send(srv, &r->cmd, RW_XLAST, c, NULL, &args) : NULL;
    if (!rw)
        return false;
    rw->after = last;
    return true;
}

/* Subscribers waiting for the follower whose id it has now reached go on from the backlog
 * (or from Redis, if a burst pushed their id out of the backlog meanwhile). */
static void redis_ahead_done(struct sse_server *srv) {
    struct redis_hub *r = redis_of(srv);
    for (uint32_t i = 0; i < r->nahead; i++) {
        struct redis_ahead a = r->ahead[i];
        if (a.last > srv->last_id)
            continue;
        r->ahead[i--] = r->ahead[--r->nahead];
        if (redis_backlog_covers(srv, a.last))
            stream_answer_later(srv, a.c, a.last, true);
        else if (!redis_replay(srv, a.c, a.last))
            stream_answer_later(srv, a.c, a.last, false);
    }
}

/* XREVRANGE's answer: the stream's last entry. */
static void redis_ahead_last(struct sse_server *srv, const struct redis_wait *rw,
                             const struct resp_value *vals, size_t n) {
    struct redis_hub *r = redis_of(srv);
    char id[48];
    uint64_t newest = 0;
    bool exists = vals[0].type == '*' && vals[0].len == 1 && n >= 3 &&
                  redis_str(&vals[2], id, sizeof id) && redis_id_parse(id, strlen(id), &newest) &&
                  rw->after <= newest;
    if (exists && rw->after <= srv->last_id) {
        stream_answer_later(srv, rw->c, rw->after, true); /* reached while we asked */
        return;
    }
    if (exists && r->nahead == r->ahead_cap) {
        uint32_t cap = r->ahead_cap ? r->ahead_cap * 2 : 8;
        struct redis_ahead *more = realloc(r->ahead, cap * sizeof *more);
        exists = more != NULL;
        if (more) {
            r->ahead = more;
            r->ahead_cap = cap;
        }
    }
    if (!exists) {
        stream_answer_later(srv, rw->c, rw->after, false);
        return;
    }
    r->ahead[r->nahead++] = (struct redis_ahead){rw->c, rw->after};
}

/* The reply to the command at the head of a link's queue. False: the link is unusable. */
static bool redis_reply(struct sse_server *srv, struct redis_link *l, const struct redis_wait *rw,
                        const struct resp_value *vals, size_t n) {
    struct redis_hub *r = redis_of(srv);
    if (rw->kind == RW_XLAST) {
        if (rw->c)
            redis_ahead_last(srv, rw, vals, n);
        return true;
    }
    if (rw->kind == RW_XINFO || rw->kind == RW_XRANGE) {
        if (rw->c && rw->kind == RW_XINFO)
            redis_replay_info(srv, rw, vals, n); /* an error: no stream, so no exact replay */
        else if (rw->c)
            redis_replay_entries(srv, rw, vals, n);
        return true;
    }
    if (vals[0].type == '-' && rw->kind != RW_XADD) {
        log_say(&srv->log, SSE_LOG_ERROR, "redis %s: %s link: %s%.*s", r->where, l->name,
                rw->kind == RW_AUTH ? "AUTH refused (check --redis-password): " : "",
                (int)(vals[0].len < 200 ? vals[0].len : 200), vals[0].str);
        return false;
    }
    if (rw->kind == RW_PING)
        return true; /* PONG: the link is alive */
    if (rw->kind == RW_AUTH) {
        l->ready = true;
        if (l == &r->cmd)
            redis_send_kept(srv);
        return true;
    }
    if (rw->kind != RW_XADD)
        return redis_follow_reply(srv, (enum redis_wait_kind)rw->kind, vals, n);
    char id[48];
    uint64_t key = 0;
    bool stored = redis_str(&vals[0], id, sizeof id) && redis_id_parse(id, strlen(id), &key);
    if (!stored) {
        r->errors++;
        log_say(&srv->log, SSE_LOG_WARN, "redis %s: XADD failed: %.*s", r->where,
                (int)(vals[0].len < 200 ? vals[0].len : 200), vals[0].str ? vals[0].str : "");
    }
    if (rw->receipt.done)
        rw->receipt.done(srv, rw->receipt.who, rw->mark, stored);
    if (rw->c)
        publish_answer(srv, rw->c, stored ? redis_local_subscribers(srv, rw->topic) : -EIO, key,
                       rw->topic);
    return true;
}

/* Drops the output before the oldest command still waiting for its reply: should the link
 * fail first, its bytes may be sent again (redis_xadd_lost). Bytes move only when that frees
 * half the buffer, so trimming costs linear time. */
static void redis_out_trim(struct redis_link *l) {
    size_t from = l->out_len - redis_live(l);
    if (!from || (from < l->out_len && from * 2 < l->out_len))
        return;
    memmove(l->out, l->out + from, l->out_len - from);
    l->out_len -= from;
    l->out_off -= from;
    l->out_pos += from;
}

/* Reads what Redis sent and handles every whole reply in it. */
static void redis_read(struct sse_server *srv, struct redis_link *l) {
    struct redis_hub *r = redis_of(srv);
    for (;;) {
        if (l->in_cap - l->in_len < 16384) {
            size_t cap = l->in_cap ? l->in_cap * 2 : 65536;
            char *in = cap <= r->max_reply + 65536 ? realloc(l->in, cap) : NULL;
            if (!in) {
                redis_link_fail(srv, l, "reply too large");
                return;
            }
            l->in = in;
            l->in_cap = cap;
        }
        ssize_t got = recv(l->h.fd, l->in + l->in_len, l->in_cap - l->in_len, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (got <= 0) {
            redis_link_fail(srv, l, got == 0 ? "closed by Redis" : strerror(errno));
            return;
        }
        l->in_len += (size_t)got;
        size_t at = 0, n;
        long used;
        while ((used = resp_read(l->in + at, l->in_len - at, r->max_reply, r->vals, RESP_MAX_VALUES,
                                 &n)) > 0) {
            if (!l->wlen) {
                redis_link_fail(srv, l, "a reply nobody asked for");
                return;
            }
            struct redis_wait rw = l->waits[l->whead];
            l->whead = (l->whead + 1) % l->wcap;
            l->wlen--;
            at += (size_t)used;
            if (rw.kind == RW_XADD || rw.kind == RW_XREAD || rw.kind == RW_PING)
                l->failures = 0; /* working, not merely connected */
            bool usable = redis_reply(srv, l, &rw, r->vals, n);
            free(rw.mark);
            if (!usable) {
                redis_link_fail(srv, l, "unusable reply");
                return;
            }
            if (l->h.fd < 0)
                return; /* failed while handling the reply */
            redis_rearm(srv, l);
        }
        if (used < 0) {
            redis_link_fail(srv, l, "not RESP2");
            return;
        }
        memmove(l->in, l->in + at, l->in_len - at);
        l->in_len -= at;
        redis_out_trim(l);
    }
}

/* Sends what is queued on a link, as far as the socket takes it. */
static void redis_flush(struct sse_server *srv, struct redis_link *l) {
    while (l->up && l->out_off < l->out_len) {
        ssize_t w = send(l->h.fd, l->out + l->out_off, l->out_len - l->out_off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (w < 0) {
            redis_link_fail(srv, l, strerror(errno));
            return;
        }
        l->out_off += (size_t)w;
    }
}

/* A Redis link's on_event. */
static void redis_on_event(struct sse_server *srv, struct handle *h, uint32_t events) {
    struct redis_link *l = (struct redis_link *)h;
    if (l->connecting) {
        int err = 0;
        socklen_t elen = sizeof err;
        if (getsockopt(l->h.fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
            err = errno;
        if (err) {
            redis_link_fail(srv, l, strerror(err));
            return;
        }
        if (!(events & (EPOLLOUT | EPOLLIN)))
            return;
        l->connecting = false;
        l->up = true;
        l->ready = !redis_of(srv)->password; /* else once AUTH is answered */
        log_say(&srv->log, SSE_LOG_INFO, "redis %s: %s link connected", redis_of(srv)->where,
                l->name);
        redis_rearm(srv, l); /* the connect deadline is over: replies due, if any, or idle */
        if (l->ready && l == &redis_of(srv)->cmd)
            redis_send_kept(srv);
    }
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        redis_read(srv, l);
    if (l->h.fd >= 0)
        redis_flush(srv, l);
}

/* Whether inputs may be read, relays take events and HTTP publish: the command link is
 * through AUTH, and it and what is kept are below the hold mark. */
static bool redis_can_take(const struct sse_server *srv) {
    const struct redis_hub *r = redis_of(srv);
    return r->cmd.ready && !redis_behind(&r->cmd) && r->kept_len < REDIS_HOLD_BYTES &&
           r->nkept < REDIS_HOLD_WAITS;
}

/* An XADD for a publish. From HTTP (in->c, answered when Redis replies): 0, or -EIO when
 * Redis cannot take it now (down, or past the hold mark). With a receipt (a relay): 0 (the
 * receipt is told when Redis replies), or -EAGAIN when Redis cannot take it now (the relay
 * fetches it again later). From an input or sse_publish(): 0 once it is on the link or kept
 * for it (in order: nothing overtakes what is kept), -EAGAIN with REDIS_KEPT_MAX bytes kept
 * already, or -ENOMEM. */
static int redis_xadd(struct sse_server *srv, const struct publish_in *in) {
    struct redis_hub *r = redis_of(srv);
    const struct receipt *receipt = in->receipt;
    bool direct = redis_can_take(srv) && (in->c || receipt || !r->nkept);
    char *mark = receipt && direct ? strdup(receipt->mark) : NULL;
    char maxlen[24];
    struct wbuf mw = {maxlen, sizeof maxlen, 0};
    wb_u64(&mw, r->maxlen);
    struct resp_args args = {8,
                             {"XADD", r->key, "MAXLEN", "~", maxlen, "*", "topic", in->topic},
                             {4, strlen(r->key), 6, 1, mw.len, 1, 5, strlen(in->topic)}};
    if (in->event) {
        resp_arg(&args, "event", 5);
        resp_arg(&args, in->event, strlen(in->event));
    }
    resp_arg(&args, "data", 4);
    resp_arg(&args, in->data ? in->data : "", in->data ? in->len : 0);
    struct redis_wait *rw = direct && (!receipt || mark)
                                ? redis_send(srv, &r->cmd, RW_XADD, in->c, in->topic, &args)
                                : NULL;
    if (rw && receipt) {
        rw->receipt = *receipt;
        rw->receipt.mark = rw->mark = mark;
    }
    if (rw)
        return 0;
    free(mark);
    if (in->c || receipt) {
        r->errors += in->c != NULL;
        return in->c ? -EIO : -EAGAIN;
    }
    if (r->kept_len >= REDIS_KEPT_MAX)
        return -EAGAIN; /* sse_publish(): as many events kept as memory allows */
    struct wbuf w = {NULL, 0, 0};
    resp_command(&w, &args); /* measures */
    char *cmd = malloc(w.len);
    w = (struct wbuf){cmd, cmd ? w.len : 0, 0};
    resp_command(&w, &args);
    bool kept = cmd && redis_keep(r, cmd, w.len);
    free(cmd);
    return kept ? 0 : -ENOMEM;
}

/* A publisher waiting for Redis went away: its answer goes nowhere. */
static void redis_forget(struct sse_server *srv, const struct conn *c) {
    struct redis_hub *r = redis_of(srv);
    struct redis_link *l = &r->cmd;
    for (uint32_t i = 0; i < l->wlen; i++)
        if (l->waits[(l->whead + i) % l->wcap].c == c)
            l->waits[(l->whead + i) % l->wcap].c = NULL;
    for (uint32_t i = 0; i < r->nahead; i++)
        if (r->ahead[i].c == c)
            r->ahead[i--] = r->ahead[--r->nahead];
}

/* Probes an idle link: Redis answers PING with PONG (RESP2 simple string), so a link that
 * died without a FIN or RST (a host gone, a NAT that forgot us) is found within
 * REDIS_PING_MS + REDIS_TIMEOUT_MS instead of at the next publish. */
static void redis_ping(struct sse_server *srv, struct redis_link *l) {
    struct resp_args args = {1, {"PING"}, {4}};
    if (!redis_send(srv, l, RW_PING, NULL, NULL, &args))
        redis_link_fail(srv, l, "out of memory");
}

/* Once per loop iteration: send what was queued, reconnect what is down and due, give up on
 * what has not answered in time, probe what has been idle for REDIS_PING_MS. */
static void redis_tick(struct sse_server *srv) {
    struct redis_link *links[2] = {&redis_of(srv)->cmd, &redis_of(srv)->follow};
    if (redis_of(srv)->nkept)
        redis_send_kept(srv); /* what did not fit when the link came up */
    for (int i = 0; i < 2; i++) {
        struct redis_link *l = links[i];
        bool ping = l->wlen && l->waits[l->whead].kind == RW_PING;
        if (l->h.fd < 0 && !srv->stopping && srv->now >= l->next_attempt)
            redis_connect(srv, l);
        else if (l->h.fd >= 0 && l->deadline && srv->now >= l->deadline)
            redis_link_fail(srv, l,
                            l->connecting ? "connect timed out"
                            : ping        ? "no reply in time (PING unanswered)"
                                          : "no reply in time");
        else if (l->h.fd >= 0 && l->up && !l->wlen && srv->now >= l->idle_since + REDIS_PING_MS)
            redis_ping(srv, l);
        if (l->h.fd >= 0)
            redis_flush(srv, l);
    }
}

/* The next moment redis_tick() has something to do, or INT64_MAX. */
static int64_t redis_next_deadline(const struct sse_server *srv) {
    int64_t next = INT64_MAX;
    const struct redis_link *links[2] = {&redis_of(srv)->cmd, &redis_of(srv)->follow};
    for (int i = 0; i < 2; i++) {
        const struct redis_link *l = links[i];
        int64_t t = l->h.fd < 0         ? (srv->stopping ? INT64_MAX : l->next_attempt)
                    : l->deadline       ? l->deadline
                    : l->up && !l->wlen ? l->idle_since + REDIS_PING_MS
                                        : INT64_MAX;
        if (l->out_len > l->out_off && l->up)
            t = 0;
        if (t < next)
            next = t;
    }
    return next;
}

static bool redis_positioned(const struct sse_server *srv) {
    return redis_of(srv)->positioned;
}

/* Whether the node can take publishes and serve streams: both links through AUTH, position
 * known. */
static bool redis_ready(const struct sse_server *srv) {
    const struct redis_hub *r = redis_of(srv);
    return r->cmd.ready && r->follow.ready && r->positioned;
}

static void redis_free(struct sse_server *srv) {
    struct redis_hub *r = redis_of(srv);
    if (!r)
        return;
    struct redis_link *links[2] = {&r->cmd, &r->follow};
    for (int i = 0; i < 2; i++) {
        if (links[i]->h.fd >= 0)
            close(links[i]->h.fd);
        for (uint32_t w = 0; w < links[i]->wlen; w++)
            free(links[i]->waits[(links[i]->whead + w) % links[i]->wcap].mark);
        free(links[i]->in);
        free(links[i]->out);
        free(links[i]->waits);
    }
    free(r->password);
    free(r->vals);
    free(r->kept);
    free(r->kept_lens);
    free(r->ahead);
    free(r);
    srv->history_self = NULL;
}

/* The hub, or NULL when the history is another (part_redis's hooks ask). */
static struct redis_hub *redis_of_any(const struct sse_server *srv) {
    return srv->history->free == redis_free ? srv->history_self : NULL;
}

/* ---- Redis as a history ------------------------------------------------------------------
 * Redis assigns the ids (stream entry ids, "MS-SEQ"), so a publish goes to the stream and
 * comes back through the follower; an id the backlog cannot answer for is asked of Redis. */

static int redis_history_append(struct sse_server *srv, const struct publish_in *in, uint64_t *id) {
    *id = 0; /* the follower brings it back with its id */
    return redis_xadd(srv, in);
}

/* A client ahead of this node's follower waits for it (redis_ahead); the backlog answers
 * for what it provably holds (redis_backlog_covers); an older id is asked of Redis
 * (redis_replay). What cannot be asked is a reset. */
static enum history_answer redis_history_covers(struct sse_server *srv, struct conn *c,
                                                uint64_t id) {
    if (id > srv->last_id && redis_ahead(srv, c, id))
        return HISTORY_LATER; /* when the follower reaches it (redis_ahead_done) */
    if (redis_backlog_covers(srv, id))
        return HISTORY_COVERED;
    if (id < srv->last_id && redis_replay(srv, c, id))
        return HISTORY_LATER; /* from Redis, then the backlog (stream_replay_rest) */
    return HISTORY_RESET;
}

static size_t redis_metrics(const struct sse_server *srv, struct metrics_row *rows) {
    static const struct redis_hub none;
    const struct redis_hub *r = redis_of_any(srv) ? redis_of_any(srv) : &none;
    const struct metrics_row mine[] = {
        {"sse_redis_up", "gauge", "1 when both Redis links are up and following the stream.",
         r != &none && redis_ready(srv)},
        {"sse_redis_reconnects_total", "counter", "Redis links lost.", r->reconnects},
        {"sse_redis_errors_total", "counter",
         "Publishes Redis did not take (answered 503) and stream entries skipped.", r->errors},
        {"sse_redis_entries_total", "counter", "Stream entries delivered to local subscribers.",
         r->received},
        {"sse_redis_publish_unknown_total", "counter",
         "XADDs sent but not answered when the link died: stored or not, nobody knows.",
         r->unknown},
    };
    _Static_assert(sizeof mine / sizeof mine[0] <= PART_ROWS_MAX, "rows fit");
    memcpy(rows, mine, sizeof mine);
    return sizeof mine / sizeof mine[0];
}

static const char *redis_unhealthy(const struct sse_server *srv) {
    return redis_of_any(srv) && !redis_ready(srv) ? "redis unavailable" : NULL;
}

static const struct part_ops part_redis = {.metrics = redis_metrics, .unhealthy = redis_unhealthy};

static const struct history_ops history_redis = {
    .append = redis_history_append,
    .covers = redis_history_covers,
    .forget = redis_forget,
    .tick = redis_tick,
    .deadline = redis_next_deadline,
    .format_id = redis_id_format,
    .parse_id = redis_id_parse,
    .free = redis_free,
    .positioned = redis_positioned,
};

/* Resolves "HOST:PORT" (HOST may be [IPv6]; no port: 80) once, at start, as the core
 * resolves any remote. NULL, or what is wrong with it. */
static const char *redis_resolve(struct redis_hub *r, const char *spec) {
    if (strchr(spec, '/'))
        return "expected HOST:PORT";
    char url[300];
    snprintf(url, sizeof url, "http://%s", spec);
    struct remote at = {0};
    const char *why = remote_resolve(&at, url);
    if (!why) {
        memcpy(&r->addr, &at.addr, at.addr_len);
        r->addr_len = at.addr_len;
        snprintf(r->where, sizeof r->where, "%s", at.url + 7);
    }
    remote_free(&at);
    return why;
}

/* Makes the server a node of a Redis hub: resolves the address, connects both links (their
 * first commands queue; replies arrive in the loop). */
static const char *api_redis(struct sse_server *srv, const struct sse_config *cfg) {
    struct redis_hub *r = calloc(1, sizeof *r);
    if (!r)
        return "out of memory";
    srv->history = &history_redis; /* from here on redis_free() frees it */
    srv->history_self = r;
    srv->pace.can_take = redis_can_take; /* inputs and relays wait below the hold mark */
    srv->pace.store = "Redis";
    r->cmd.h.fd = r->follow.h.fd = -1;
    r->cmd.h.on_event = r->follow.h.on_event = redis_on_event;
    r->cmd.name = "commands";
    r->follow.name = "stream";
    const char *why = redis_resolve(r, cfg->redis);
    if (why)
        return why;
    const char *key = cfg->redis_stream ? cfg->redis_stream : SSE_DEFAULT_REDIS_STREAM;
    if (!key[0] || strlen(key) >= sizeof r->key)
        return "the stream key must be 1 to 255 bytes";
    memcpy(r->key, key, strlen(key) + 1);
    r->password = cfg->redis_password ? strdup(cfg->redis_password) : NULL;
    r->maxlen = cfg->redis_maxlen ? cfg->redis_maxlen : SSE_DEFAULT_REDIS_MAXLEN;
    size_t per_entry = srv->max_event_bytes + 2048;
    r->xread_count = (uint32_t)((16u << 20) / per_entry);
    r->xread_count = r->xread_count < 1 ? 1 : r->xread_count > 256 ? 256 : r->xread_count;
    r->max_reply = r->xread_count * per_entry + 65536;
    r->vals = malloc(RESP_MAX_VALUES * sizeof *r->vals);
    if ((cfg->redis_password && !r->password) || !r->vals)
        return "out of memory";
    srv->last_id = 0; /* until the stream's position is known */
    redis_connect(srv, &r->cmd);
    redis_connect(srv, &r->follow);
    return NULL;
}
#endif /* SSE_ENABLE_REDIS */

#if SSE_ENABLE_PROXY
/* ==========================================================================================
 * Part II: the proxy and the relay (SSE_ENABLE_PROXY)
 *
 * Adds: a reverse proxy that passes requests under configured prefixes to upstream servers
 * and streams their responses back unbuffered, and relays that follow an upstream event
 * stream and publish its events on a local topic. Plugs into the connection seam (a proxied
 * client is CONN_PASSED, an upstream CONN_OUTBOUND, both with proxy_conn_ops), the parts
 * seam (part_proxy: its routes, /metrics rows, the relays' tick and deadline, resuming them
 * when flow control opens the gate) and the receipt seam (a relay learns which of its
 * events the history stored). Its state hangs from its part (proxy_hub). Names no other
 * part.
 *
 * Proxy. A client connection is paired with a connection to the upstream. The request goes
 * up rebuilt: its path canonical and without dot segments, so it stays under the route's
 * base; hop-by-hop headers dropped (RFC 9110 7.6.1: Connection and the fields it names,
 * but never the framing or Host, Keep-Alive, Proxy-*, TE, Trailer, Upgrade); one
 * Content-Length of our own; X-Forwarded-*, X-Real-IP and Forwarded set by us alone.
 * The response comes down as it arrives: every read from the upstream is queued for the
 * client in the same loop iteration and written at its end, never held back for more. The
 * upstream's framing (Content-Length, chunked or close) is decoded, so an event stream goes
 * to the client close-delimited like our own, with a heartbeat slipped in between two events
 * when the upstream is quiet. Each direction holds at most PROXY_BUFFER bytes; past that,
 * reading the other side stops until the queue drains, so memory stays bounded.
 *
 * Failure. Before the response starts, an ordinary request gets 502 or 504, but an
 * EventSource request gets 200 + retry: + close: any other status makes the browser stop
 * for good (WHATWG 9.2.3). After the response started, the client connection is closed and
 * EventSource reconnects with its Last-Event-ID.
 *
 * Relay. The same upstream machinery with the server itself as the client: the body goes
 * through the WHATWG parser (the wire_reader of section 2) and every event is published on
 * a local topic with a local id. After a drop it reconnects when `retry` has passed (but
 * never sooner than RELAY_RETRY_FLOOR_MS), sending Last-Event-ID, and backs off while
 * attempts deliver no event, so no upstream is ever hammered. When the history stores events
 * elsewhere and answers later (a receipt), the upstream is the relay's memory: when the
 * history cannot take an event the relay drops the connection, and reconnects, once every
 * receipt is in, with the last upstream id whose event was stored, so nothing is missed.
 * ======================================================================================== */

#define PROXY_BUFFER         (64u << 10) /* bytes queued one way before reading the other side stops */
#define PROXY_READ           16384       /* bytes read from either side at a time */
#define RELAY_RETRY_MS       3000        /* reconnection time until the upstream sends retry: */
#define RELAY_RETRY_FLOOR_MS 250   /* the shortest wait between attempts, whatever retry: says */
#define RELAY_BACKOFF_MAX_MS 30000 /* the longest back-off (a longer retry: is still honoured) */

enum body_framing { BODY_NONE, BODY_LENGTH, BODY_CHUNKED, BODY_CLOSE };

/* ---- what the proxy reads and writes: paths, response heads, chunked bodies, where events
 * end in a stream passing through, repaired UTF-8 (section 2 and 4's rules applied) ------ */

/* Writes the canonical form of the raw (still percent-encoded) path in[0..len) into out
 * (room for cap bytes): escapes of unreserved characters decoded ("%2e" is '.', RFC 3986
 * 6.2.2.2), the others in upper case (6.2.2.1), so a dot segment cannot hide in an escape.
 * Returns its length, or -1 for what a proxy must not pass on because some server behind it
 * would read it as another path: a malformed escape or %00; a slash or backslash hidden as
 * %2F or %5C (many servers decode before splitting); a raw backslash (a separator on
 * Windows and to some frameworks); a double-encoded dot, slash or backslash ("%252e", for
 * servers that decode twice, and "%2500" likewise); or an output that does not fit. */
static long http_path_canon(const char *in, size_t len, char *out, size_t cap) {
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c == '\\' || o >= cap)
            return -1;
        if (c != '%') {
            out[o++] = (char)c;
            continue;
        }
        int hi = i + 2 < len ? http_hex(in[i + 1]) : -1, lo = hi >= 0 ? http_hex(in[i + 2]) : -1;
        if (lo < 0 || (hi == 0 && lo == 0))
            return -1;
        unsigned char d = (unsigned char)(hi * 16 + lo);
        i += 2;
        if (d == '/' || d == '\\')
            return -1;
        if (http_is_unreserved(d)) {
            out[o++] = (char)d;
            continue;
        }
        if (o + 3 > cap)
            return -1;
        out[o++] = '%';
        out[o++] = hex[hi];
        out[o++] = hex[lo];
    }
    for (size_t i = 0; i + 4 < o; i++) { /* "%25" then an escape of '.', '/' or '\' */
        if (memcmp(out + i, "%25", 3) != 0)
            continue;
        int hi = http_hex(out[i + 3]), lo = http_hex(out[i + 4]);
        if (hi >= 0 && lo >= 0 && strchr("./\\", hi * 16 + lo))
            return -1;
    }
    return (long)o;
}

/* Removes the dot segments of the path p[0..len) in place (RFC 3986 5.2.4): "/a/./b/../c"
 * becomes "/a/c", "/a/.." becomes "/". Returns the new length, or -1 if p does not start
 * with '/' or a ".." would climb above the root ("/../x"), which RFC 3986 silently drops
 * but which only an attack sends. */
static long http_path_remove_dots(char *p, size_t len) {
    if (len == 0 || p[0] != '/')
        return -1;
    size_t o = 0, i = 1;
    for (;;) {
        size_t s = i;
        while (i < len && p[i] != '/')
            i++;
        size_t n = i - s;
        bool last = i >= len;
        if (n == 2 && p[s] == '.' && p[s + 1] == '.') {
            if (o == 0)
                return -1;
            while (o > 0 && p[--o] != '/') /* drop the last segment and its '/' */
                ;
        } else if (!(n == 1 && p[s] == '.')) {
            p[o++] = '/';
            memmove(p + o, p + s, n);
            o += n;
            if (last)
                break;
            i++;
            continue;
        }
        if (last) {
            p[o++] = '/'; /* "/a/b/.." is the directory "/a/" */
            break;
        }
        i++;
    }
    return (long)o;
}

/* A response head from an upstream (RFC 9112 4): "HTTP/1.x NNN reason" and header lines. */
struct http_response {
    int minor;          /* HTTP/1.<minor> */
    int status;         /* 100 to 999 */
    const char *reason; /* reason phrase (may be empty) */
    size_t reason_len;
    size_t num_headers; /* used entries of headers */
    struct http_header headers[SSE_MAX_HEADERS];
};

/* Parses a response head in buf[0..len). Returns its length (> 0), HTTP_INCOMPLETE,
 * HTTP_BAD or HTTP_TOO_LARGE (too many header lines); views point into buf. */
static long http_parse_response(const char *buf, size_t len, struct http_response *res) {
    size_t end = http_head_end(buf, len, 0);
    if (!end)
        return HTTP_INCOMPLETE;
    size_t pos = 0, n;
    const char *line = http_next_line(buf, &pos, end, &n);
    if (n < 12 || memcmp(line, "HTTP/1.", 7) != 0 || (line[7] != '0' && line[7] != '1') ||
        line[8] != ' ' || !http_digits(line + 9, 3, &res->status) || res->status < 100 ||
        (n > 12 && line[12] != ' '))
        return HTTP_BAD;
    res->minor = line[7] - '0';
    res->reason = n > 12 ? line + 13 : line + 12;
    res->reason_len = n > 12 ? n - 13 : 0;
    for (size_t i = 0; i < res->reason_len; i++) {
        unsigned char c = (unsigned char)res->reason[i];
        if (c != '\t' && (c < 0x20 || c == 0x7F))
            return HTTP_BAD;
    }
    return http_parse_headers(buf, pos, end, res->headers, &res->num_headers);
}

/* Incremental decoder of chunked transfer coding (RFC 9112 7.1). */
enum {
    CH_SIZE,
    CH_EXT,
    CH_SIZE_LF,
    CH_DATA,
    CH_DATA_CR,
    CH_DATA_LF,
    CH_TRAILER_START,
    CH_TRAILER,
    CH_END_LF,
    CH_DONE
};
struct http_chunked {
    uint8_t state;    /* CH_*: where in the framing the next byte is */
    uint8_t digits;   /* hex digits of the current chunk size */
    uint64_t left;    /* bytes of chunk data still to come */
    uint32_t skipped; /* bytes of extensions and trailers seen, bounded */
};

/* One byte of a chunk's size line, or of what follows its size (extensions, the line
 * end). False for malformed framing. */
static bool http_chunk_size_byte(struct http_chunked *d, char c) {
    int v = http_hex(c);
    if (d->state == CH_SIZE && v >= 0 && d->digits < 16) {
        d->left = d->left * 16 + (uint64_t)v;
        d->digits++;
        return true;
    }
    if (d->state == CH_SIZE && (d->digits == 0 || v >= 0))
        return false;
    if (d->state == CH_SIZE_LF && c != '\n')
        return false;
    if (d->state == CH_EXT && ++d->skipped > SSE_HEAD_MAX)
        return false;
    if (d->state == CH_SIZE && (c == ';' || c == ' ' || c == '\t'))
        d->state = CH_EXT;
    else if (c == '\r' && d->state != CH_SIZE_LF)
        d->state = CH_SIZE_LF;
    else if (c == '\n')
        d->state = d->left ? CH_DATA : CH_TRAILER_START;
    else if (d->state == CH_SIZE)
        return false;
    return true;
}

/* One byte after a chunk's data, or of the trailers. False for malformed framing. */
static bool http_chunk_end_byte(struct http_chunked *d, char c) {
    switch (d->state) {
    case CH_DATA_CR:
    case CH_DATA_LF:
        if (c == '\r' && d->state == CH_DATA_CR) {
            d->state = CH_DATA_LF;
            return true;
        }
        d->state = CH_SIZE;
        d->digits = 0;
        d->skipped = 0;
        return c == '\n';
    case CH_TRAILER_START:
        d->state = c == '\r' ? CH_END_LF : c == '\n' ? CH_DONE : CH_TRAILER;
        return true;
    case CH_TRAILER:
        if (c == '\n')
            d->state = CH_TRAILER_START;
        return ++d->skipped <= SSE_HEAD_MAX;
    default: /* CH_END_LF */ d->state = CH_DONE; return c == '\n';
    }
}

/* Decodes buf[0..len) in place: the data bytes move to the front. Returns how many there
 * are, or -1 for malformed framing. The state becomes CH_DONE after the last chunk and its
 * trailers; bytes after that are ignored. */
static long http_dechunk(struct http_chunked *d, char *buf, size_t len) {
    size_t w = 0;
    for (size_t i = 0; i < len && d->state != CH_DONE; i++) {
        if (d->state == CH_DATA) {
            size_t n = len - i < d->left ? len - i : (size_t)d->left;
            memmove(buf + w, buf + i, n);
            w += n;
            i += n - 1;
            d->left -= n;
            if (d->left == 0)
                d->state = CH_DATA_CR;
        } else if (d->state <= CH_SIZE_LF ? !http_chunk_size_byte(d, buf[i])
                                          : !http_chunk_end_byte(d, buf[i])) {
            return -1;
        }
    }
    return (long)w;
}

/*
 * Where events end in a stream passing through (the proxy's heartbeat may only go in
 * between two events): after a blank line, or at the very start. A blank line ended by a
 * lone CR counts too: should a LF follow after all, the client sees one more empty line,
 * which dispatches nothing since no data is buffered (WHATWG 9.2.6).
 */
enum { WB_EVENT_END, WB_LINE_START, WB_MID_LINE };
struct wire_boundary {
    uint8_t state; /* WB_*: where the bytes seen so far end */
    bool after_cr; /* the last byte was CR */
};

static void wire_boundary_scan(struct wire_boundary *b, const char *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '\n' && b->after_cr) {
            b->after_cr = false;
        } else if (c == '\r' || c == '\n') {
            b->state = b->state == WB_MID_LINE ? WB_LINE_START : WB_EVENT_END;
            b->after_cr = c == '\r';
        } else {
            b->state = WB_MID_LINE;
            b->after_cr = false;
        }
    }
}

static bool wire_at_event_end(const struct wire_boundary *b) {
    return b->state == WB_EVENT_END;
}

/* Length of the "maximal subpart" at p (Unicode 3.9, the WHATWG decoder's rule): the longest
 * prefix of a well-formed sequence, or 1 byte. It is replaced by one U+FFFD. */
static size_t wire_utf8_subpart(const unsigned char *p, size_t avail) {
    unsigned c = p[0], lo = 0x80, hi = 0xBF;
    size_t need;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        lo = c == 0xE0 ? 0xA0 : 0x80; /* no overlong forms */
        hi = c == 0xED ? 0x9F : 0xBF; /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        lo = c == 0xF0 ? 0x90 : 0x80;
        hi = c == 0xF4 ? 0x8F : 0xBF; /* nothing above U+10FFFF */
    } else {
        return 1;
    }
    size_t i = 1;
    while (i <= need && i < avail && p[i] >= lo && p[i] <= hi) {
        lo = 0x80;
        hi = 0xBF;
        i++;
    }
    return i;
}

/* Copies s[0..len) as valid UTF-8, each maximal subpart of an ill-formed sequence becoming
 * one U+FFFD, exactly as the WHATWG decoder does (used for relayed events). */
static void wire_utf8_repair(struct wbuf *w, const char *s, size_t len) {
    size_t start = 0, i = 0;
    while (i < len) {
        unsigned char c = (unsigned char)s[i];
        size_t n = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
        if (i + n <= len && wire_utf8_valid(s + i, n)) {
            i += n;
            continue;
        }
        wb_put(w, s + start, i - start);
        wb_put(w, "\xEF\xBF\xBD", 3);
        i += wire_utf8_subpart((const unsigned char *)s + i, len - i);
        start = i;
    }
    wb_put(w, s + start, len - start);
}

/* Sends the bytes of iov[0..n) at once when nothing is queued ahead of them, and queues
 * what the socket did not take. For the proxy, where each read from an upstream should
 * leave without waiting for the end of the iteration. False if the connection failed and
 * was closed. */
static bool conn_send(struct sse_server *srv, struct conn *c, const struct iovec *iov, int n) {
    size_t total = 0, sent = 0;
    for (int i = 0; i < n; i++)
        total += iov[i].iov_len;
    if (c->qlen == 0 && c->file_fd < 0 && !conn_holding(c)) {
        struct msghdr mh = {.msg_iov = (struct iovec *)(uintptr_t)iov, .msg_iovlen = (size_t)n};
        ssize_t w = sendmsg(c->h.fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            conn_close(srv, c, c->state == CONN_OUTBOUND ? R_PEER_FAILED : conn_gone(c, true));
            return false;
        }
        sent = w > 0 ? (size_t)w : 0;
    }
    if (sent == total)
        return true;
    struct blob *b = blob_new(total - sent);
    if (!b) {
        conn_close(srv, c, R_ERROR);
        return false;
    }
    size_t o = 0;
    for (int i = 0; i < n; i++) {
        const char *p = iov[i].iov_base;
        size_t len = iov[i].iov_len, skip = sent < len ? sent : len;
        sent -= skip;
        memcpy(b->bytes + o, p + skip, len - skip);
        o += len - skip;
    }
    if (!conn_enqueue_owned(srv, c, b)) {
        conn_close(srv, c, R_ERROR);
        return false;
    }
    return true;
}

struct proxy_route {
    char *prefix;      /* matched against the path as sent; no final '/' ("" for "/") */
    size_t prefix_len; /* bytes in prefix */
    struct remote up;  /* where matching requests go */
};

struct relay {
    char topic[TOPIC_NAME_MAX + 1]; /* local topic the events are published on */
    struct remote up;               /* the upstream stream */
    struct wire_reader reader;      /* WHATWG parser; keeps the upstream's last event id */
    struct sse_server *srv;         /* for publishing from the reader's callback */
    struct proxy *px;               /* the connection in progress, or NULL between attempts */
    int64_t next_attempt;           /* when to connect next, monotonic ms */
    unsigned failures;              /* attempts in a row that delivered no event (no stream,
                                       or a stream that ended empty), for back-off */
    bool delivered;                 /* the current connection delivered an event */
    char taken[SSE_ID_MAX + 1];     /* the upstream id up to which every event was stored;
                                       the next connection resumes there */
    uint32_t pending;               /* events whose receipt has not come back yet */
    bool halted;                    /* an event could not be stored; the rest of this
                                       connection is ignored, fetched again later */
    bool refused;                   /* a receipt said not stored: the receipts after it no
                                       longer move taken (events before it still do) */
};

/* One proxied exchange or one relay connection; shared by both connections involved. */
struct proxy {
    struct conn_part base;         /* the connection seam: first, so a conn's part is this */
    const struct remote *target;   /* the upstream */
    struct relay *relay;           /* the relay this feeds, or NULL for a proxied request */
    struct conn *client;           /* the client; NULL for a relay or once it has gone */
    struct conn *up;               /* the upstream connection; NULL once closed */
    uint64_t req_left;             /* request body bytes still to forward */
    uint64_t body_left;            /* BODY_LENGTH: response body bytes still to come */
    size_t client_q;               /* the client's queued bytes when last looked at, to tell
                                      progress from the send timeout's point of view */
    struct inbuf *head;            /* the response head being collected, or NULL */
    struct http_chunked chunked;   /* BODY_CHUNKED: the decoder */
    struct wire_boundary boundary; /* event streams: where the events end */
    uint8_t framing;               /* enum body_framing of the response */
    bool connected;                /* the upstream accepted the connection */
    bool head_done;                /* the response head was passed on (or, relay, accepted) */
    bool head_request;             /* the request was HEAD: the response has no body */
    bool eventsource;              /* the client asked for text/event-stream by name */
    bool stream;                   /* the response is text/event-stream */
    bool rechunk;                  /* the client gets the body chunked */
    bool client_paused;            /* not reading the client: the upstream's queue is full */
    bool up_paused;                /* not reading the upstream: the client's queue is full */
};

/* The part's own state: its configuration and its counters for /metrics. */
struct proxy_hub {
    struct proxy_route *routes; /* reverse-proxy routes, longest prefix first */
    size_t nroutes;             /* entries in routes */
    struct relay *relays;       /* relayed upstream streams */
    size_t nrelays;             /* entries in relays */
    uint64_t proxied_total;     /* requests passed to an upstream */
    uint64_t errors_total;      /* upstreams that failed a request or a relay */
    uint64_t relayed_total;     /* events published by relays */
};

static const struct part_ops part_proxy;
static const struct conn_ops proxy_conn_ops;

static struct proxy_hub *proxy_hub(const struct sse_server *srv) {
    return part_self(srv, &part_proxy);
}

static struct proxy *proxy_of(const struct conn *c) {
    return (struct proxy *)c->part;
}

static bool proxy_connecting(const struct conn *c) {
    return c->state == CONN_OUTBOUND && c->part && !proxy_of(c)->connected;
}

static void relay_schedule(struct sse_server *srv, struct relay *r);
static void relay_emit(void *ctx, const char *topic, const char *event, const char *data,
                       size_t len, const char *skipped);

/* Ends an exchange: the client (if still there) goes on alone, the upstream is closed, a
 * relay is scheduled to reconnect. */
static void proxy_release(struct sse_server *srv, struct proxy *px, enum close_reason why) {
    if (px->client)
        px->client->part = NULL;
    if (px->up) {
        px->up->part = NULL;
        conn_close(srv, px->up, why);
    }
    if (px->relay) {
        px->relay->px = NULL;
        relay_schedule(srv, px->relay);
    }
    free(px->head);
    free(px);
}

/* The upstream failed. Before the response started, the client gets an answer (502/504,
 * or 200 + retry: + close for EventSource); after, it is closed once its queue is sent. */
static void proxy_fail(struct sse_server *srv, struct proxy *px, int status, const char *why) {
    proxy_hub(srv)->errors_total++;
    log_say(&srv->log, SSE_LOG_WARN, "upstream %s %s", px->target->url, why);
    struct conn *c = px->client;
    bool started = px->head_done, eventsource = px->eventsource, body_unread = px->req_left > 0;
    char msg[200];
    snprintf(msg, sizeof msg, "upstream %s %s", px->target->url, why);
    proxy_release(srv, px, R_PEER_FAILED);
    if (!c || c->state == CONN_DEAD)
        return;
    if (started) {
        conn_linger(srv, c, R_PEER_FAILED);
        return;
    }
    if (body_unread)
        c->flags &= (uint8_t)~CF_KEEP_ALIVE;
    if (eventsource)
        stream_turn_away(srv, c, R_PEER_FAILED);
    else
        http_text(srv, c, status, msg, NULL);
}

/* The response is complete: the client waits for its queue to drain, then goes on. */
static void proxy_finish(struct sse_server *srv, struct proxy *px) {
    struct conn *c = px->client;
    if (c && px->rechunk && !conn_enqueue_owned(srv, c, blob_from("0\r\n\r\n", 5)))
        c->flags &= (uint8_t)~CF_KEEP_ALIVE;
    if (c && px->req_left)
        c->flags &= (uint8_t)~CF_KEEP_ALIVE; /* the rest of its body would read as a request */
    proxy_release(srv, px, R_DONE);
    if (!c || c->state == CONN_DEAD)
        return;
    c->state = CONN_RESPOND;
    c->reason = R_DONE;
    timer_set(srv, c, TIMER_SEND);
    conn_flush_later(srv, c);
}

/* A connection of either side closed under us (error, reset, timeout). */
static void proxy_conn_closed(struct sse_server *srv, struct conn *c) {
    struct proxy *px = proxy_of(c);
    c->part = NULL;
    if (c == px->client) {
        px->client = NULL;
        proxy_release(srv, px, R_CLIENT_CLOSED);
    } else {
        px->up = NULL;
        proxy_fail(srv, px, 502, "closed the connection");
    }
}

/* Forwards up to n bytes of the client's request body. Returns the bytes taken. */
static size_t proxy_forward_body(struct sse_server *srv, struct proxy *px, const char *p,
                                 size_t n) {
    size_t take = n < px->req_left ? n : (size_t)px->req_left;
    if (!take)
        return 0;
    px->req_left -= take;
    struct iovec iov = {(void *)(uintptr_t)p, take};
    if (px->up && !conn_send(srv, px->up, &iov, 1))
        return take; /* the upstream was closed: the client has its answer */
    if (px->up && px->up->qbytes >= PROXY_BUFFER)
        px->client_paused = true;
    return take;
}

/* Reads the request body from the client while the upstream's queue has room. */
static void proxy_client_read(struct sse_server *srv, struct conn *c) {
    char buf[PROXY_READ];
    struct proxy *px;
    while (c->state == CONN_PASSED && (px = proxy_of(c)) && px->req_left && !px->client_paused) {
        size_t want = px->req_left < sizeof buf ? (size_t)px->req_left : sizeof buf;
        ssize_t n = read(c->h.fd, buf, want);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            conn_close(srv, c, conn_gone(c, n < 0));
            return;
        }
        proxy_forward_body(srv, px, buf, (size_t)n);
    }
}

/* A proxied response that is not an event stream gets the send timeout of our own
 * responses: while bytes wait for the client, SEND_TIMEOUT_MS without one of them taken
 * drops it (and so the upstream). With nothing queued the clock stops: then the upstream is
 * the slow side. Streams keep the client-buffer rule instead (PROXY_BUFFER, then reading
 * the upstream pauses, as a subscriber's queue would). Called after bytes were queued for
 * the client and after each write to it. */
static void proxy_send_timer(struct sse_server *srv, struct proxy *px, struct conn *c) {
    if (px->stream || !px->head_done || c != px->client)
        return;
    if (c->qlen == 0) {
        if (c->timer != TIMER_NEVER)
            timer_set(srv, c, TIMER_NEVER);
    } else if (c->timer != TIMER_SEND || c->qbytes < px->client_q) {
        timer_set(srv, c, TIMER_SEND); /* bytes left the queue: progress */
    }
    px->client_q = c->qbytes;
}

/* Hands decoded response body bytes on: to the client (re-chunked if need be), or to the
 * relay's parser. Returns false if the exchange ended meanwhile. */
static bool proxy_pass(struct sse_server *srv, struct proxy *px, const char *data, size_t n) {
    if (!n)
        return true;
    if (px->relay) {
        struct relay *r = px->relay;
        wire_reader_feed(&r->reader, data, n, relay_emit, r);
        if (r->halted) {
            proxy_release(srv, px, R_PEER_FAILED);
            return false;
        }
        if (!r->pending && !r->halted) /* every event so far was stored */
            memcpy(r->taken, r->reader.last_id, sizeof r->taken);
        return true;
    }
    struct conn *c = px->client;
    char size[24];
    struct iovec iov[3] = {{size, 0}, {(void *)(uintptr_t)data, n}, {"\r\n", 2}};
    if (px->rechunk)
        iov[0].iov_len = (size_t)snprintf(size, sizeof size, "%zx\r\n", n);
    if (!conn_send(srv, c, px->rechunk ? iov : iov + 1, px->rechunk ? 3 : 1))
        return false;
    if (px->stream) {
        wire_boundary_scan(&px->boundary, data, n);
        timer_set(srv, c, TIMER_PART); /* the upstream spoke: restart the heartbeat clock */
    }
    proxy_send_timer(srv, px, c);
    if (c->qbytes >= PROXY_BUFFER)
        px->up_paused = true;
    return true;
}

/* Takes response body bytes as read (framing included); decoded in place. Returns false if
 * the exchange ended. */
static bool proxy_body(struct sse_server *srv, struct proxy *px, char *buf, size_t n) {
    switch (px->framing) {
    case BODY_LENGTH: {
        size_t take = n < px->body_left ? n : (size_t)px->body_left;
        px->body_left -= take;
        if (!proxy_pass(srv, px, buf, take))
            return false;
        if (px->body_left == 0) {
            proxy_finish(srv, px);
            return false;
        }
        return true;
    }
    case BODY_CHUNKED: {
        long d = http_dechunk(&px->chunked, buf, n);
        if (d < 0) {
            proxy_fail(srv, px, 502, "sent malformed chunked framing");
            return false;
        }
        if (!proxy_pass(srv, px, buf, (size_t)d))
            return false;
        if (px->chunked.state == CH_DONE) {
            proxy_finish(srv, px);
            return false;
        }
        return true;
    }
    case BODY_CLOSE: return proxy_pass(srv, px, buf, n);
    default: return true;
    }
}

/* Whether a header of a message with these headers is hop-by-hop (RFC 9110 7.6.1): one of
 * the fixed names, or one that a Connection header names. A Connection token never makes
 * Content-Length, Transfer-Encoding or Host hop-by-hop: they frame and route the message,
 * and a client that names them there (Connection: Content-Length) wants the proxy to drop
 * the framing and forward the body bytes unframed, which the next server would read as a
 * second request of the attacker's choosing (request smuggling). RFC 9110 7.6.1 lets a
 * proxy keep such fields; we ignore the token. */
static bool http_hop_by_hop(const struct http_header *all, size_t n, const struct http_header *h) {
    static const char *const fixed[] = {"Connection", "Keep-Alive", "TE",
                                        "Trailer",    "Upgrade",    "Transfer-Encoding"};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        if (ascii_ieq(h->name, h->name_len, fixed[i]))
            return true;
    if (h->name_len >= 6 && ascii_ieq(h->name, 6, "Proxy-"))
        return true;
    if (ascii_ieq(h->name, h->name_len, "Content-Length") ||
        ascii_ieq(h->name, h->name_len, "Host"))
        return false;
    for (size_t i = 0; i < n; i++) {
        const struct http_header *c = &all[i];
        const char *item;
        size_t len, pos = 0;
        if (!ascii_ieq(c->name, c->name_len, "Connection"))
            continue;
        while (http_next_item(c->value, c->value_len, &pos, ',', &item, &len))
            if (ascii_ieq_range(item, len, h->name, h->name_len))
                return true;
    }
    return false;
}

/* How the upstream's response body is framed (RFC 9112 6.3), or -1 when it cannot be told. */
static int proxy_framing(const struct proxy *px, const struct http_response *res,
                         uint64_t *length) {
    bool te = false, chunked = false, have_cl = false;
    for (size_t i = 0; i < res->num_headers; i++) {
        const struct http_header *h = &res->headers[i];
        if (ascii_ieq(h->name, h->name_len, "Transfer-Encoding")) {
            const char *item = NULL, *last = NULL;
            size_t len = 0, last_len = 0, pos = 0;
            while (http_next_item(h->value, h->value_len, &pos, ',', &item, &len)) {
                last = item;
                last_len = len;
            }
            te = true;
            chunked = last && ascii_ieq(last, last_len, "chunked");
        } else if (ascii_ieq(h->name, h->name_len, "Content-Length")) {
            uint64_t v;
            if (!parse_u64(h->value, h->value_len, &v) || (have_cl && v != *length))
                return -1;
            have_cl = true;
            *length = v;
        }
    }
    if (px->head_request || res->status == 204 || res->status == 304 || res->status < 200)
        return BODY_NONE;
    if (te)
        return chunked ? BODY_CHUNKED : BODY_CLOSE;
    if (have_cl)
        return *length ? BODY_LENGTH : BODY_NONE;
    return BODY_CLOSE;
}

static bool http_is_event_stream(const struct http_header *all, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const struct http_header *h = &all[i];
        if (!ascii_ieq(h->name, h->name_len, "Content-Type"))
            continue;
        const char *semi = memchr(h->value, ';', h->value_len);
        size_t len = semi ? (size_t)(semi - h->value) : h->value_len;
        while (len && (h->value[len - 1] == ' ' || h->value[len - 1] == '\t'))
            len--;
        return ascii_ieq(h->value, len, "text/event-stream");
    }
    return false;
}

static bool http_has_header(const struct http_header *all, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++)
        if (ascii_ieq(all[i].name, all[i].name_len, name))
            return true;
    return false;
}

/* Builds the response head the client gets: the upstream's status and end-to-end headers,
 * our own framing, and for event streams what keeps proxies further down from buffering. */
static struct blob *proxy_client_head(struct proxy *px, const struct http_response *res,
                                      uint64_t length, bool keep_alive, bool http10) {
    char head[SSE_HEAD_MAX + 512];
    struct wbuf w = {head, sizeof head, 0};
    wb_str(&w, "HTTP/1.1 ");
    wb_u64(&w, (uint64_t)res->status);
    wb_put(&w, " ", 1);
    wb_put(&w, res->reason, res->reason_len);
    wb_str(&w, "\r\n");
    for (size_t i = 0; i < res->num_headers; i++) {
        const struct http_header *h = &res->headers[i];
        if (http_hop_by_hop(res->headers, res->num_headers, h) ||
            ascii_ieq(h->name, h->name_len, "Content-Length"))
            continue;
        wb_put(&w, h->name, h->name_len);
        wb_str(&w, ": ");
        wb_put(&w, h->value, h->value_len);
        wb_str(&w, "\r\n");
    }
    if (px->stream && !http_has_header(res->headers, res->num_headers, "X-Accel-Buffering"))
        wb_str(&w, "X-Accel-Buffering: no\r\n");
    if (px->stream && !http_has_header(res->headers, res->num_headers, "Cache-Control"))
        wb_str(&w, "Cache-Control: no-cache\r\n");
    if (px->rechunk)
        wb_str(&w, "Transfer-Encoding: chunked\r\n");
    else if (px->framing == BODY_LENGTH ||
             (px->framing == BODY_NONE &&
              http_has_header(res->headers, res->num_headers, "Content-Length"))) {
        wb_str(&w, "Content-Length: ");
        wb_u64(&w, length);
        wb_str(&w, "\r\n");
    }
    if (!px->stream && !keep_alive)
        wb_str(&w, "Connection: close\r\n");
    else if (!px->stream && http10)
        wb_str(&w, "Connection: keep-alive\r\n");
    wb_str(&w, "\r\n");
    return w.len <= w.cap ? blob_from(head, w.len) : NULL;
}

/* A relay accepts only 200 text/event-stream; its parser starts a fresh stream. */
static bool relay_accept(struct sse_server *srv, struct proxy *px,
                         const struct http_response *res) {
    if (res->status != 200 || !px->stream) {
        char why[96];
        snprintf(why, sizeof why, "answered %d%s instead of a stream", res->status,
                 px->stream ? "" : " without text/event-stream");
        proxy_fail(srv, px, 502, why);
        return false;
    }
    px->head_done = true;
    log_say(&srv->log, SSE_LOG_INFO, "relay %s: following %s%s", px->relay->topic, px->target->url,
            px->target->path);
    return true;
}

/* The upstream's response head is complete: decide the framing both ways and pass the head
 * on. Returns false if the exchange ended. */
static bool proxy_response(struct sse_server *srv, struct proxy *px,
                           const struct http_response *res) {
    uint64_t length = 0;
    int framing = proxy_framing(px, res, &length);
    if (framing < 0) {
        proxy_fail(srv, px, 502, "sent an invalid Content-Length");
        return false;
    }
    px->framing = (uint8_t)framing;
    px->stream = http_is_event_stream(res->headers, res->num_headers);
    px->body_left = length;
    timer_set(srv, px->up, TIMER_NEVER);
    if (px->relay) {
        if (!relay_accept(srv, px, res))
            return false;
    } else if (px->eventsource && res->status >= 500) {
        char why[48];
        snprintf(why, sizeof why, "answered %d", res->status);
        proxy_fail(srv, px, 502, why);
        return false;
    } else {
        struct conn *c = px->client;
        bool http10 = c->flags & CF_HTTP10;
        if (px->stream || framing == BODY_CLOSE || (framing == BODY_CHUNKED && http10))
            c->flags &= (uint8_t)~CF_KEEP_ALIVE; /* the end of the body is the close */
        px->rechunk = framing == BODY_CHUNKED && !http10 && !px->stream;
        if (!conn_enqueue_owned(
                srv, c, proxy_client_head(px, res, length, c->flags & CF_KEEP_ALIVE, http10))) {
            proxy_fail(srv, px, 502, "sent a response head too large to pass on");
            return false;
        }
        px->head_done = true;
        if (px->stream)
            timer_set(srv, c, TIMER_PART);
        else
            proxy_send_timer(srv, px, c);
    }
    if (framing == BODY_NONE) {
        proxy_finish(srv, px);
        return false;
    }
    return true;
}

/* Collects the response head; skips 1xx interim responses; passes the head on, then the
 * body bytes that came with it. Returns false if the exchange ended. */
static bool proxy_head_bytes(struct sse_server *srv, struct proxy *px, char *buf, size_t n) {
    if (!px->head && !(px->head = calloc(1, sizeof *px->head))) {
        proxy_fail(srv, px, 502, "could not be read (out of memory)");
        return false;
    }
    struct inbuf *h = px->head;
    size_t take = n < SSE_HEAD_MAX - h->len ? n : SSE_HEAD_MAX - h->len;
    memcpy(h->data + h->len, buf, take);
    h->len += (uint32_t)take;
    for (;;) {
        struct http_response res;
        long r = http_parse_response(h->data, h->len, &res);
        if (r == HTTP_INCOMPLETE && h->len < SSE_HEAD_MAX)
            return true; /* everything read is in h (take == n) */
        if (r == HTTP_INCOMPLETE || r < 0 || res.status == 101) {
            proxy_fail(srv, px, 502,
                       r == HTTP_INCOMPLETE  ? "sent an oversized response head"
                       : r == HTTP_TOO_LARGE ? "sent too many header fields"
                                             : "sent an invalid response head");
            return false;
        }
        if (res.status < 200) { /* 1xx: an interim response, the real one follows */
            memmove(h->data, h->data + r, h->len - (size_t)r);
            h->len -= (uint32_t)r;
            size_t more = n - take < SSE_HEAD_MAX - h->len ? n - take : SSE_HEAD_MAX - h->len;
            memcpy(h->data + h->len, buf + take, more);
            h->len += (uint32_t)more;
            take += more;
            continue;
        }
        px->head = NULL; /* the views in res point into h until it is freed below */
        bool alive = proxy_response(srv, px, &res);
        if (alive && h->len > (size_t)r)
            alive = proxy_body(srv, px, h->data + r, h->len - (size_t)r);
        if (alive && n > take) /* the rest of this read did not fit in the head buffer */
            alive = proxy_body(srv, px, buf + take, n - take);
        free(h);
        return alive;
    }
}

/* The upstream closed its side: the end of a close-delimited body, or a failure. */
static void proxy_up_eof(struct sse_server *srv, struct proxy *px) {
    if (px->head_done && px->framing == BODY_CLOSE)
        proxy_finish(srv, px);
    else
        proxy_fail(srv, px, 502,
                   px->head_done ? "closed the connection mid-response"
                                 : "closed the connection without answering");
}

/* Reads from the upstream while the client's queue has room. A short read means the socket
 * is empty (edge-triggered epoll reports any later arrival), unless the peer's FIN came with
 * this wake-up (until_empty says so): then read on to see the end. */
static void proxy_up_read(struct sse_server *srv, struct conn *up, bool until_empty) {
    char buf[PROXY_READ];
    /* up->part and px->up point at each other, and proxy_release() clears both before it
     * frees px, which the analyzer cannot know */
    /* NOLINTNEXTLINE(clang-analyzer-unix.Malloc) */
    struct proxy *px;
    while (up->state == CONN_OUTBOUND && (px = proxy_of(up)) && px->connected && !px->up_paused) {
        if (px->relay && px->head_done && srv->pace.held)
            return; /* flow control (section 6): TCP pushes back; loop_pace() reads on */
        ssize_t n = read(up->h.fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n < 0) {
            proxy_fail(srv, px, 502, "reset the connection");
            return;
        }
        if (n == 0) {
            proxy_up_eof(srv, px);
            return;
        }
        bool alive = px->head_done ? proxy_body(srv, px, buf, (size_t)n)
                                   : proxy_head_bytes(srv, px, buf, (size_t)n);
        if (!alive || ((size_t)n < sizeof buf && !until_empty))
            return;
    }
}

/* The non-blocking connect finished, one way or the other. False: it failed, and the
 * exchange is over (up is closed, its proxy freed). */
static bool proxy_up_connected(struct sse_server *srv, struct conn *up) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(up->h.fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err) {
        proxy_fail(srv, proxy_of(up), 502,
                   err == ECONNREFUSED ? "refused the connection" : "could not be reached");
        return false;
    }
    proxy_of(up)->connected = true;
    timer_set(srv, up, TIMER_SEND); /* now the response head must come */
    conn_flush(srv, up);
    return true;
}

/* An upstream connection's on_event. */
static void proxy_up_event(struct sse_server *srv, struct handle *h, uint32_t events) {
    struct conn *up = (struct conn *)h;
    if (up->state == CONN_DEAD)
        return;
    if (!up->part) {
        conn_close(srv, up, R_PEER_FAILED);
        return;
    }
    if (!proxy_of(up)->connected) {
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            return;
        if (!proxy_up_connected(srv, up) || up->state != CONN_OUTBOUND)
            return;
    }
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        proxy_up_read(srv, up, events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR));
    if ((events & EPOLLOUT) && up->state == CONN_OUTBOUND && up->qlen)
        conn_flush(srv, up);
}

/* Room in a queue again: resume reading the side that was paused for it. */
static void proxy_after_write(struct sse_server *srv, struct conn *c) {
    struct proxy *px = proxy_of(c);
    proxy_send_timer(srv, px, c);
    if (c == px->client && px->up_paused && c->qbytes < PROXY_BUFFER) {
        px->up_paused = false;
        if (px->up)
            proxy_up_read(srv, px->up, true);
    } else if (c == px->up && px->client_paused && c->qbytes < PROXY_BUFFER) {
        px->client_paused = false;
        if (px->client)
            proxy_client_read(srv, px->client);
    }
}

/* The proxy's heartbeat: a comment, only between two events, after upstream silence. */
static void proxy_heartbeat(struct sse_server *srv, struct conn *c) {
    struct proxy *px = proxy_of(c);
    if (px && px->stream && wire_at_event_end(&px->boundary) && c->qlen == 0 &&
        !conn_enqueue(srv, c, srv->heartbeat)) {
        conn_close(srv, c, R_ERROR);
        return;
    }
    timer_set(srv, c, TIMER_PART);
}

/* Opens a non-blocking connection to the exchange's upstream. False (errno set) on failure. */
static bool proxy_connect(struct sse_server *srv, struct proxy *px) {
    const struct remote *u = px->target;
    int fd = socket(u->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    int r = connect(fd, (const struct sockaddr *)&u->addr, u->addr_len);
    struct conn *up = (r == 0 || errno == EINPROGRESS) ? calloc(1, sizeof *up) : NULL;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET};
    ev.data.ptr = up;
    if (!up || epoll_ctl(srv->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        int e = errno;
        free(up);
        close(fd);
        errno = e;
        return false;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    up->h.fd = fd;
    up->h.on_event = proxy_up_event;
    up->file_fd = -1;
    up->timer = TIMER_NONE;
    up->serial = ++srv->next_serial;
    up->state = CONN_OUTBOUND;
    up->part = &px->base;
    px->up = up;
    px->connected = r == 0;
    srv->noutbound++;
    timer_set(srv, up, r == 0 ? TIMER_SEND : TIMER_CONNECT);
    log_say(&srv->log, SSE_LOG_DEBUG, "connection #%u opened to upstream %s", up->serial, u->url);
    return true;
}

/* Whether a header name, with '_' read as '-', is one the proxy frames, routes or sets
 * itself. Servers behind it (CGI, WSGI, PHP) turn '-' into '_' in header names, so to them
 * "X_Real_IP" is X-Real-IP: a client must not slip its own value past us that way (nginx
 * drops names with '_' for the same reason). */
static bool proxy_reserved_name(const char *name, size_t len) {
    static const char *const reserved[] = {"X-Forwarded-For",
                                           "X-Forwarded-Host",
                                           "X-Forwarded-Port",
                                           "X-Forwarded-Proto",
                                           "X-Real-IP",
                                           "Forwarded",
                                           "Content-Length",
                                           "Transfer-Encoding",
                                           "Host",
                                           "Connection",
                                           "Expect"};
    for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++) {
        const char *r = reserved[i];
        size_t j = 0;
        while (j < len && r[j] &&
               (ascii_lower(name[j]) == ascii_lower(r[j]) || (name[j] == '_' && r[j] == '-')))
            j++;
        if (j == len && !r[j])
            return true;
    }
    return false;
}

/* Whether a client's Forwarded value ends outside a quoted string (RFC 7239 4), so an
 * element appended after ", " is parsed as an element of its own. */
static bool proxy_forwarded_closed(const char *v, size_t len) {
    bool quoted = false;
    for (size_t i = 0; i < len; i++) {
        if (quoted && v[i] == '\\')
            i++;
        else if (v[i] == '"')
            quoted = !quoted;
    }
    return !quoted;
}

/* Appends our Forwarded header (RFC 7239): the client's elements when every one of them is
 * well closed (else none: they could swallow ours), then for=PEER;host=HOST;proto=http, so
 * the last element is always what we saw. */
static void proxy_forwarded(struct wbuf *w, const struct http_request *req, const char *peer) {
    bool keep = true, any = false;
    for (size_t i = 0; i < req->num_headers; i++) {
        const struct http_header *h = &req->headers[i];
        if (ascii_ieq(h->name, h->name_len, "Forwarded"))
            keep = keep && proxy_forwarded_closed(h->value, h->value_len);
    }
    wb_str(w, "Forwarded: ");
    for (size_t i = 0; i < req->num_headers && keep; i++) {
        const struct http_header *h = &req->headers[i];
        if (ascii_ieq(h->name, h->name_len, "Forwarded") && h->value_len) {
            wb_str(w, any ? ", " : "");
            wb_put(w, h->value, h->value_len);
            any = true;
        }
    }
    bool v6 = strchr(peer, ':') != NULL; /* an IPv6 address is quoted and bracketed (6) */
    wb_str(w, any ? ", for=" : "for=");
    wb_str(w, v6 ? "\"[" : "");
    wb_str(w, peer);
    wb_str(w, v6 ? "]\"" : "");
    const struct http_header *host = http_header(req, "Host");
    if (host && host->value_len) { /* a quoted-string: a port's ':' is no token character */
        wb_str(w, ";host=\"");
        for (size_t i = 0; i < host->value_len; i++) {
            if (host->value[i] == '"' || host->value[i] == '\\')
                wb_put(w, "\\", 1);
            wb_put(w, host->value + i, 1);
        }
        wb_str(w, "\"");
    }
    wb_str(w, ";proto=http\r\n");
}

/* The request as the upstream gets it: same method, base path + the rest of the
 * (normalised) path and the query, end-to-end headers as sent (Host and Last-Event-ID
 * untouched), one Content-Length of our own when the client sent one (the body we forward
 * is exactly that long), X-Forwarded-*, X-Real-IP, Forwarded and Via set, and Connection: close
 * (one upstream connection per request). Client headers that name themselves like one of
 * ours with '_' for '-' are dropped. */
static struct blob *proxy_request_head(struct sse_server *srv, struct conn *c,
                                       const struct http_request *req, const struct remote *u,
                                       const char *rest, size_t rest_len) {
    char head[2 * SSE_HEAD_MAX], peer[INET6_ADDRSTRLEN];
    struct wbuf w = {head, sizeof head, 0};
    conn_peer(c, peer, sizeof peer);
    wb_put(&w, req->method, req->method_len);
    wb_put(&w, " ", 1);
    wb_str(&w, u->path);
    if (rest_len == 0 || rest[0] == '?')
        wb_put(&w, "/", u->path[0] ? 0 : 1);
    wb_put(&w, rest, rest_len);
    wb_str(&w, " HTTP/1.1\r\n");
    for (size_t i = 0; i < req->num_headers; i++) {
        const struct http_header *h = &req->headers[i];
        bool ours =
            proxy_reserved_name(h->name, h->name_len) && !ascii_ieq(h->name, h->name_len, "Host");
        if (ours || http_hop_by_hop(req->headers, req->num_headers, h))
            continue;
        wb_put(&w, h->name, h->name_len);
        wb_str(&w, ": ");
        wb_put(&w, h->value, h->value_len);
        wb_str(&w, "\r\n");
    }
    uint64_t length; /* http_admit() checked: one value, digits only, no Transfer-Encoding */
    const struct http_header *cl = http_header(req, "Content-Length");
    if (cl && parse_u64(cl->value, cl->value_len, &length)) {
        wb_str(&w, "Content-Length: ");
        wb_u64(&w, length);
        wb_str(&w, "\r\n");
    }
    bool forwarded_for = false; /* earlier proxies' list, then the peer appended */
    for (size_t i = 0; i < req->num_headers; i++) {
        const struct http_header *h = &req->headers[i];
        if (ascii_ieq(h->name, h->name_len, "X-Forwarded-For") && h->value_len) {
            wb_str(&w, forwarded_for ? ", " : "X-Forwarded-For: ");
            wb_put(&w, h->value, h->value_len);
            forwarded_for = true;
        }
    }
    wb_str(&w, forwarded_for ? ", " : "X-Forwarded-For: ");
    wb_str(&w, peer);
    const struct http_header *host = http_header(req, "Host");
    if (host) {
        wb_str(&w, "\r\nX-Forwarded-Host: ");
        wb_put(&w, host->value, host->value_len);
    }
    wb_str(&w, "\r\nX-Forwarded-Port: ");
    wb_u64(&w, (uint64_t)srv->port);
    wb_str(&w, "\r\nX-Forwarded-Proto: http\r\nX-Real-IP: ");
    wb_str(&w, peer);
    wb_str(&w, "\r\n");
    proxy_forwarded(&w, req, peer);
    /* RFC 9110 7.6.3: a gateway MUST add Via to each request it forwards, naming the protocol
     * it received and itself; a client's own Via lines went up above ours, in order. */
    wb_str(&w, req->minor ? "Via: 1.1 sse-server\r\n" : "Via: 1.0 sse-server\r\n");
    wb_str(&w, "Connection: close\r\n\r\n");
    return w.len <= w.cap ? blob_from(head, w.len) : NULL;
}

/* Passes a request on to the upstream of its route. rest is what follows the prefix in
 * the request-target as sent (path and query). */
static void proxy_start(struct sse_server *srv, struct conn *c, const struct http_request *req,
                        const struct proxy_route *route, const char *rest, size_t rest_len,
                        uint64_t content_length) {
    struct proxy *px = calloc(1, sizeof *px);
    struct blob *head = px ? proxy_request_head(srv, c, req, &route->up, rest, rest_len) : NULL;
    if (!head) {
        free(px);
        http_text(srv, c, 503, "out of memory", "Retry-After: 1\r\n");
        return;
    }
    px->target = &route->up;
    px->client = c;
    px->req_left = content_length;
    px->head_request = bytes_eq(req->method, req->method_len, "HEAD");
    px->eventsource = http_is_eventsource(req);
    px->base.ops = &proxy_conn_ops;
    c->part = &px->base;
    c->flags &= (uint8_t)~CF_BODY_UNREAD;
    c->state = CONN_PASSED;
    timer_set(srv, c, TIMER_NEVER);
    proxy_hub(srv)->proxied_total++;
    if (!proxy_connect(srv, px)) {
        blob_unref(head);
        proxy_fail(srv, px, 502,
                   errno == EMFILE || errno == ENFILE ? "could not be reached (out of descriptors)"
                                                      : "could not be reached");
        return;
    }
    if (!conn_enqueue_owned(srv, px->up, head)) {
        proxy_fail(srv, px, 502, "could not be written to (out of memory)");
        return;
    }
    const struct http_header *expect = http_header(req, "Expect");
    if (expect && content_length && !(c->flags & CF_HTTP10) &&
        ascii_ieq(expect->value, expect->value_len, "100-continue") &&
        !conn_enqueue(srv, c, srv->continue_100))
        conn_close(srv, c, R_ERROR);
}

/* The longest route whose prefix starts the path, at a '/' boundary; or NULL. */
static const struct proxy_route *proxy_match(const struct proxy_hub *hub, const char *path,
                                             size_t len) {
    for (size_t i = 0; i < hub->nroutes; i++) { /* sorted longest first */
        const struct proxy_route *r = &hub->routes[i];
        if (len >= r->prefix_len && memcmp(path, r->prefix, r->prefix_len) == 0 &&
            (len == r->prefix_len || path[r->prefix_len] == '/'))
            return r;
    }
    return NULL;
}

/* Passes the request to the upstream of the route its path falls under, if any. The raw
 * path is made canonical and its dot segments removed (RFC 3986 6.2.2, 5.2.4) before the
 * route is chosen, and the upstream gets that path under its base: what reaches it can
 * never climb out of the base, however the dots were spelled. Refused with 400: what
 * http_path_canon() refuses, a ".." above the root, dot segments that move the request
 * from one route to another or out of a route ("/api/../admin"), and for a route a path
 * that does not decode to UTF-8 ("%c0%ae" is an overlong '.' to a lax decoder). Browsers
 * remove dot segments before sending, so no honest client meets these. Returns false when
 * no route takes the path (nothing sent); true when the request was passed on or refused. */
static bool proxy_dispatch(struct sse_server *srv, struct conn *c, const struct http_request *req,
                           const char *target, size_t raw_path_len, size_t target_len,
                           uint64_t content_length) {
    const struct proxy_hub *hub = proxy_hub(srv);
    if (hub->nroutes == 0)
        return false;
    char path[SSE_HEAD_MAX];
    long n = http_path_canon(target, raw_path_len, path, sizeof path);
    const struct proxy_route *named = n >= 0 ? proxy_match(hub, path, (size_t)n) : NULL;
    long m = n >= 0 ? http_path_remove_dots(path, (size_t)n) : -1;
    const struct proxy_route *route = m >= 0 ? proxy_match(hub, path, (size_t)m) : NULL;
    size_t query = target_len - raw_path_len;
    if (m < 0 || named != route || (size_t)m + query > sizeof path ||
        (route && !wire_utf8_valid(srv->path, strlen(srv->path)))) {
        http_fail(srv, c, 400, "path not allowed through the proxy");
        return true;
    }
    if (!route)
        return false;
    memcpy(path + m, target + raw_path_len, query); /* the query goes as sent */
    proxy_start(srv, c, req, route, path + route->prefix_len, (size_t)m + query - route->prefix_len,
                content_length);
    return true;
}

/* A receipt's answer (a history that stores events elsewhere): stored, the relay resumes
 * after mark; not stored, it fetches the event again from the last stored one, so the events
 * after it, sent already, no longer move that position, and the connection ends. */
static void relay_stored(struct sse_server *srv, void *who, const char *mark, bool stored) {
    struct relay *r = who;
    r->pending--;
    if (stored && !r->refused) {
        size_t n = strlen(mark);
        memcpy(r->taken, mark, n < sizeof r->taken ? n + 1 : 0); /* it always fits */
    } else if (!stored) {
        r->halted = r->refused = true;
        if (r->px)
            proxy_release(srv, r->px, R_PEER_FAILED);
    }
}

/* Every event the relay's parser dispatches is published on the relay's topic. Bytes that
 * are not UTF-8 become U+FFFD, as in a browser. */
static void relay_emit(void *ctx, const char *topic, const char *event, const char *data,
                       size_t len, const char *skipped) {
    struct relay *r = ctx;
    struct sse_server *srv = r->srv;
    (void)topic;
    if (r->halted)
        return;
    r->delivered = true; /* the upstream is serving events: no back-off after this stream */
    if (skipped) {
        log_say(&srv->log, SSE_LOG_WARN, "relay %s: skipped an event: %s", r->topic, skipped);
        return;
    }
    /* An upstream sse-server's position event (stream_id_line) is its current id, not
     * content: the reader has taken the id for Last-Event-ID; nothing to publish. */
    if (event && len == 0 && strcmp(event, "position") == 0)
        return;
    char *repaired = NULL;
    if (!wire_utf8_valid(data, len)) {
        struct wbuf w = {NULL, 0, 0};
        wire_utf8_repair(&w, data, len);
        repaired = malloc(w.len ? w.len : 1);
        w = (struct wbuf){repaired, repaired ? w.len : 0, 0};
        wire_utf8_repair(&w, data, len);
        data = repaired;
        len = w.len <= w.cap ? w.len : 0;
    }
    struct receipt receipt = {relay_stored, r, r->reader.last_id};
    uint64_t id = 0;
    int rc =
        publish_event(srv, &(struct publish_in){r->topic, event, data, len, NULL, &receipt}, &id);
    if (rc >= 0 && id == 0)
        r->pending++; /* relay_stored() is told whether it was stored */
    if (rc >= 0)
        proxy_hub(srv)->relayed_total++;
    else if (rc == -EAGAIN)
        r->halted = true; /* proxy_pass() drops the connection */
    else
        log_say(&srv->log, SSE_LOG_WARN, "relay %s: could not publish an event: %s", r->topic,
                rc == -EMSGSIZE    ? "over --max-event-bytes"
                : rc == -EINVAL    ? "invalid event type"
                : rc == -EOVERFLOW ? "id space exhausted"
                                   : strerror(-rc));
    free(repaired);
}

/* The wait before a relay's next attempt, for an upstream whose reconnection time is
 * retry_ms (-1: none sent yet, RELAY_RETRY_MS) after `failures` attempts in a row that
 * delivered no event; `random` is a uniform draw. Never under RELAY_RETRY_FLOOR_MS: an
 * upstream that sends `retry: 0` and closes must not get a reconnect storm (WHATWG 9.2.3
 * lets the user agent wait longer than the reconnection time, and suggests exponential
 * back-off when attempts fail). From the second failure on the wait doubles up to
 * RELAY_BACKOFF_MAX_MS (or the reconnection time if longer), with "equal jitter": a draw
 * from [d/2, d], so relays failing together spread out, and below the cap each wait is
 * at least the previous one. */
static int64_t relay_backoff_ms(int64_t retry_ms, unsigned failures, uint64_t random) {
    int64_t base = retry_ms >= 0 ? retry_ms : RELAY_RETRY_MS;
    if (base < RELAY_RETRY_FLOOR_MS)
        base = RELAY_RETRY_FLOOR_MS;
    if (failures < 2)
        return base;
    int64_t cap = base > RELAY_BACKOFF_MAX_MS ? base : RELAY_BACKOFF_MAX_MS;
    int64_t d = base;
    for (unsigned i = 1; i < failures && d < cap; i++)
        d = d > cap / 2 ? cap : d * 2;
    int64_t half = d / 2;
    int64_t delay = d - half + (int64_t)(random % (uint64_t)(half + 1));
    return delay < base ? base : delay;
}

/* Schedules the next attempt (relay_backoff_ms): an attempt that delivered no event counts
 * as failed, whether it got no stream or a stream that ended empty; an event resets it. */
static void relay_schedule(struct sse_server *srv, struct relay *r) {
    r->failures = r->delivered ? 0 : r->failures + 1;
    r->delivered = false;
    int64_t delay = relay_backoff_ms(r->reader.retry_ms, r->failures, rng_next(&srv->rng));
    r->next_attempt = srv->now + delay;
    if (!srv->stopping)
        log_say(&srv->log, SSE_LOG_INFO, "relay %s: reconnecting to %s in %lld ms", r->topic,
                r->up.url, (long long)delay);
}

/* Connects to the relay's upstream as an EventSource would: GET, Accept:
 * text/event-stream, Last-Event-ID when an id is known. The parser starts a new stream. */
static void relay_connect(struct sse_server *srv, struct relay *r) {
    struct wire_reader *rd = &r->reader;
    if (r->pending || (srv->pace.can_take && !srv->pace.can_take(srv))) {
        r->next_attempt = srv->now + 100; /* receipts due, or the store cannot take: soon */
        return;
    }
    r->halted = r->refused = false;
    memcpy(rd->last_id, r->taken, sizeof rd->last_id); /* after the last event stored */
    rd->line_len = rd->data_len = 0;
    rd->line_too_long = rd->after_cr = rd->has_data = false;
    rd->block_error = NULL;
    rd->event[0] = '\0';
    rd->bom_seen = 0;
    memcpy(rd->id_buf, rd->last_id, sizeof rd->id_buf);
    char head[SSE_ID_MAX + 1024];
    struct wbuf w = {head, sizeof head, 0};
    wb_str(&w, "GET ");
    wb_str(&w, r->up.path);
    wb_str(&w, " HTTP/1.1\r\nHost: ");
    wb_str(&w, r->up.host);
    wb_str(&w, "\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n");
    if (rd->last_id[0]) {
        wb_str(&w, "Last-Event-ID: ");
        wb_str(&w, rd->last_id);
        wb_str(&w, "\r\n");
    }
    wb_str(&w, "Connection: close\r\n\r\n");
    struct proxy *px = calloc(1, sizeof *px);
    if (!px) {
        relay_schedule(srv, r);
        return;
    }
    px->base.ops = &proxy_conn_ops;
    px->target = &r->up;
    px->relay = r;
    r->px = px;
    if (!proxy_connect(srv, px)) {
        proxy_fail(srv, px, 502, "could not be reached");
        return;
    }
    if (!conn_enqueue_owned(srv, px->up, w.len <= w.cap ? blob_from(head, w.len) : NULL))
        proxy_fail(srv, px, 502, "could not be written to");
}

static uint64_t proxy_relays_up(const struct sse_server *srv) {
    uint64_t n = 0;
    const struct proxy_hub *hub = proxy_hub(srv);
    for (size_t i = 0; i < hub->nrelays; i++)
        n += hub->relays[i].px && hub->relays[i].px->head_done;
    return n;
}

/* ---- the proxy as a part: its routes and /metrics rows --------------------------------- */

static bool proxy_route(struct sse_server *srv, struct conn *c, const struct http_request *req,
                        const struct http_target *t) {
    return proxy_dispatch(srv, c, req, t->raw, t->raw_path_len, t->raw_len, t->content_length);
}

static size_t proxy_metrics(const struct sse_server *srv, struct metrics_row *rows) {
    const struct proxy_hub *hub = proxy_hub(srv);
    const struct metrics_row mine[] = {
        {"sse_upstream_connections", "gauge", "Connections to upstreams open now.", srv->noutbound},
        {"sse_relays_connected", "gauge", "Relays receiving their upstream stream now.",
         proxy_relays_up(srv)},
        {"sse_proxied_requests_total", "counter", "Requests passed to an upstream.",
         hub->proxied_total},
        {"sse_proxy_errors_total", "counter", "Upstream failures (refused, timed out, invalid).",
         hub->errors_total},
        {"sse_relay_events_total", "counter", "Events published by relays.", hub->relayed_total},
    };
    _Static_assert(sizeof mine / sizeof mine[0] <= PART_ROWS_MAX, "rows fit");
    memcpy(rows, mine, sizeof mine);
    return sizeof mine / sizeof mine[0];
}

/* ---- the proxy as a part: its connections, routes, /metrics rows and relays ------------ */

/* A client connection of an exchange is readable: the rest of the request body, or the
 * client gone (its upstream is closed with it). */
static void proxy_readable(struct sse_server *srv, struct conn *c, uint32_t events) {
    struct proxy *px = proxy_of(c);
    if (px->req_left)
        proxy_client_read(srv, c);
    else if (events & EPOLLRDHUP)
        conn_close(srv, c, R_CLIENT_CLOSED);
}

static size_t proxy_body_bytes(struct sse_server *srv, struct conn *c, const char *p, size_t n) {
    return proxy_forward_body(srv, proxy_of(c), p, n);
}

/* A timer of a proxied client (the heartbeat) or of an upstream (connect, answer). */
static void proxy_timer(struct sse_server *srv, struct conn *c, int timer) {
    if (timer == TIMER_PART)
        proxy_heartbeat(srv, c);
    else
        proxy_fail(srv, proxy_of(c), 504,
                   timer == TIMER_CONNECT ? "did not accept the connection in time"
                                          : "did not answer in time");
}

/* sse_stop(): a proxied client is closed (its upstream with it); a relay lets go of its
 * upstream; a proxied request's upstream goes when its client does. */
static void proxy_stop(struct sse_server *srv, struct conn *c) {
    struct proxy *px = proxy_of(c);
    if (c->state == CONN_PASSED)
        conn_close(srv, c, R_SHUTDOWN);
    else if (px->relay)
        proxy_release(srv, px, R_SHUTDOWN);
}

static const struct conn_ops proxy_conn_ops = {
    .closed = proxy_conn_closed,
    .wrote = proxy_after_write,
    .holding = proxy_connecting,
    .body = proxy_body_bytes,
    .readable = proxy_readable,
    .timer = proxy_timer,
    .stop = proxy_stop,
};

/* Relays connect when their next attempt is due. */
static void proxy_tick(struct sse_server *srv) {
    struct proxy_hub *hub = proxy_hub(srv);
    for (size_t i = 0; i < hub->nrelays && !srv->stopping; i++) {
        struct relay *r = &hub->relays[i];
        if (!r->px && r->next_attempt <= srv->now)
            relay_connect(srv, r);
    }
}

static int64_t proxy_deadline(const struct sse_server *srv) {
    const struct proxy_hub *hub = proxy_hub(srv);
    int64_t next = INT64_MAX;
    for (size_t i = 0; i < hub->nrelays && !srv->stopping; i++)
        if (!hub->relays[i].px && hub->relays[i].next_attempt < next)
            next = hub->relays[i].next_attempt;
    return next;
}

/* Flow control let publishers go on: relays read their upstreams again. */
static void proxy_resume(struct sse_server *srv) {
    struct proxy_hub *hub = proxy_hub(srv);
    for (size_t i = 0; i < hub->nrelays; i++) {
        struct proxy *px = hub->relays[i].px;
        if (px && px->up && px->head_done)
            proxy_up_read(srv, px->up, true);
    }
}

static void proxy_free(struct sse_server *srv) {
    struct proxy_hub *hub = proxy_hub(srv);
    for (size_t i = 0; i < hub->nroutes; i++) {
        free(hub->routes[i].prefix);
        remote_free(&hub->routes[i].up);
    }
    free(hub->routes);
    for (size_t i = 0; i < hub->nrelays; i++) {
        wire_reader_free(&hub->relays[i].reader);
        remote_free(&hub->relays[i].up);
    }
    free(hub->relays);
    free(hub);
}

static const struct part_ops part_proxy = {
    .route = proxy_route,
    .metrics = proxy_metrics,
    .tick = proxy_tick,
    .deadline = proxy_deadline,
    .resume = proxy_resume,
    .free = proxy_free,
};

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void
proxy_error(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int proxy_route_order(const void *a, const void *b) {
    const struct proxy_route *x = a, *y = b;
    return x->prefix_len < y->prefix_len ? 1 : x->prefix_len > y->prefix_len ? -1 : 0;
}

/* Copies, checks and resolves the proxy routes; sorts them longest prefix first. */
static int proxy_routes_init(struct proxy_hub *hub, const struct sse_config *cfg, char *err,
                             size_t errlen) {
    if (!cfg->num_proxy_routes)
        return 0;
    hub->routes = calloc(cfg->num_proxy_routes, sizeof *hub->routes);
    if (!hub->routes) {
        proxy_error(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < cfg->num_proxy_routes; i++) {
        const struct sse_proxy_route *in = &cfg->proxy_routes[i];
        struct proxy_route *r = &hub->routes[hub->nroutes++];
        const char *prefix = in->prefix ? in->prefix : "";
        size_t n = strlen(prefix);
        if (n == 0 || prefix[0] != '/' || strpbrk(prefix, "?#%")) {
            proxy_error(err, errlen, "proxy prefix '%s' must be a path such as /api", prefix);
            return -1;
        }
        r->prefix = strdup(prefix);
        if (!r->prefix) {
            proxy_error(err, errlen, "out of memory");
            return -1;
        }
        while (n && r->prefix[n - 1] == '/')
            r->prefix[--n] = '\0';
        r->prefix_len = n;
        const char *why = remote_resolve(&r->up, in->upstream ? in->upstream : "");
        if (why) {
            proxy_error(err, errlen, "proxy upstream '%s' %s", in->upstream ? in->upstream : "",
                        why);
            return -1;
        }
        size_t pl = strlen(r->up.path);
        while (pl && r->up.path[pl - 1] == '/')
            r->up.path[--pl] = '\0';
    }
    qsort(hub->routes, hub->nroutes, sizeof *hub->routes, proxy_route_order);
    return 0;
}

/* Copies, checks and resolves the relays. They connect on the first loop iteration. */
static int proxy_relays_init(struct sse_server *srv, struct proxy_hub *hub,
                             const struct sse_config *cfg, char *err, size_t errlen) {
    if (!cfg->num_relays)
        return 0;
    hub->relays = calloc(cfg->num_relays, sizeof *hub->relays);
    if (!hub->relays) {
        proxy_error(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < cfg->num_relays; i++) {
        const struct sse_relay *in = &cfg->relays[i];
        struct relay *r = &hub->relays[hub->nrelays++];
        wire_reader_init(&r->reader, SSE_INPUT_SSE, srv->max_event_bytes);
        r->reader.whatwg = true;
        r->srv = srv;
        const char *topic = in->topic ? in->topic : "";
        if (!wire_topic_valid(topic, strlen(topic))) {
            proxy_error(err, errlen, "relay topic '%s' is not a valid topic name", topic);
            return -1;
        }
        strcpy(r->topic, topic);
        const char *why = remote_resolve(&r->up, in->url ? in->url : "");
        if (why) {
            proxy_error(err, errlen, "relay upstream '%s' %s", in->url ? in->url : "", why);
            return -1;
        }
        if (!r->up.path[0]) {
            free(r->up.path);
            r->up.path = strdup("/");
            if (!r->up.path) {
                proxy_error(err, errlen, "out of memory");
                return -1;
            }
        }
    }
    return 0;
}

/* Plugs the proxy in: its state, its timers' durations, its routes and relays. 0, or -1
 * with err set. */
static int proxy_plug(struct sse_server *srv, const struct sse_config *cfg, char *err,
                      size_t errlen) {
    struct proxy_hub *hub = calloc(1, sizeof *hub);
    if (!hub || !part_add(srv, &part_proxy, hub)) {
        free(hub);
        proxy_error(err, errlen, "out of memory");
        return -1;
    }
    srv->timers[TIMER_CONNECT].duration = cfg->proxy_connect_timeout_ms
                                              ? cfg->proxy_connect_timeout_ms
                                              : SSE_DEFAULT_PROXY_CONNECT_MS;
    srv->timers[TIMER_PART].duration =
        cfg->proxy_heartbeat_ms > 0 ? cfg->proxy_heartbeat_ms : NEVER_MS;
    if (proxy_routes_init(hub, cfg, err, errlen) < 0 ||
        proxy_relays_init(srv, hub, cfg, err, errlen) < 0)
        return -1;
    return 0;
}
#endif /* SSE_ENABLE_PROXY */

#if SSE_ENABLE_AUTH
/* ==========================================================================================
 * Part II: authorization, who may hear and publish what (SSE_ENABLE_AUTH)
 * ======================================================================================== */

/* ---- SHA-256 and HMAC-SHA-256 (FIPS 180-4, RFC 2104) ----------------------------------- */

/* SHA-256 as FIPS 180-4 (section 6.2) gives it: the message padded with a 1 bit, zeros and its
 * length in bits to a multiple of 512 bits, then each 512-bit block mixed into eight 32-bit
 * words by 64 rounds. HMAC (RFC 2104 section 2) keys it: H(K ^ opad, H(K ^ ipad, text)),
 * with K the key zero-padded to the 64-byte block, or first hashed if it is longer. Checked
 * against the FIPS 180-4 examples and every RFC 4231 case (tests/unit.c). */

struct sha256 {
    uint32_t h[8];           /* the intermediate hash value H(i) */
    uint64_t bytes;          /* message bytes taken so far (the length in the padding) */
    unsigned char block[64]; /* the message block being filled */
    size_t fill;             /* bytes in block */
};

/* The first 32 bits of the fractional parts of the cube roots of the first 64 primes
 * (FIPS 180-4 4.2.2). */
static const uint32_t sha256_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static uint32_t sha256_ror(uint32_t x, unsigned n) {
    return x >> n | x << (32 - n);
}

/* One block into the hash value (FIPS 180-4 6.2.2): the message schedule W, then 64 rounds
 * over the working variables a..h (v[0..7]). */
static void sha256_block(uint32_t h[8], const unsigned char *p) {
    uint32_t w[64], v[8];
    for (size_t t = 0; t < 16; t++)
        w[t] = (uint32_t)p[4 * t] << 24 | (uint32_t)p[4 * t + 1] << 16 |
               (uint32_t)p[4 * t + 2] << 8 | (uint32_t)p[4 * t + 3];
    for (size_t t = 16; t < 64; t++) {
        uint32_t s0 = sha256_ror(w[t - 15], 7) ^ sha256_ror(w[t - 15], 18) ^ w[t - 15] >> 3;
        uint32_t s1 = sha256_ror(w[t - 2], 17) ^ sha256_ror(w[t - 2], 19) ^ w[t - 2] >> 10;
        w[t] = w[t - 16] + s0 + w[t - 7] + s1;
    }
    memcpy(v, h, sizeof v);
    for (size_t t = 0; t < 64; t++) {
        uint32_t e = v[4], a = v[0];
        uint32_t t1 = v[7] + (sha256_ror(e, 6) ^ sha256_ror(e, 11) ^ sha256_ror(e, 25)) +
                      ((e & v[5]) ^ (~e & v[6])) + sha256_k[t] + w[t];
        uint32_t t2 = (sha256_ror(a, 2) ^ sha256_ror(a, 13) ^ sha256_ror(a, 22)) +
                      ((a & v[1]) ^ (a & v[2]) ^ (v[1] & v[2]));
        memmove(v + 1, v, 7 * sizeof *v); /* h = g, g = f, ..., b = a */
        v[4] += t1;                       /* e = d + T1 (d is now in v[4]) */
        v[0] = t1 + t2;
    }
    for (unsigned i = 0; i < 8; i++)
        h[i] += v[i];
}

/* The initial hash value: the first 32 bits of the fractional parts of the square roots of
 * the first 8 primes (FIPS 180-4 5.3.3). */
static void sha256_init(struct sha256 *s) {
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, h0, sizeof h0);
    s->bytes = 0;
    s->fill = 0;
}

/* Hashes len more bytes of the message; any split of a message gives the same hash. */
static void sha256_update(struct sha256 *s, const void *data, size_t len) {
    const unsigned char *p = data;
    s->bytes += len;
    while (len) {
        size_t n = 64 - s->fill < len ? 64 - s->fill : len;
        memcpy(s->block + s->fill, p, n);
        s->fill += n;
        p += n;
        len -= n;
        if (s->fill == 64) {
            sha256_block(s->h, s->block);
            s->fill = 0;
        }
    }
}

/* Pads (FIPS 180-4 5.1.1: a 1 bit, zeros to 448 bits mod 512, the length as 64 bits) and
 * writes the 32-byte digest, big-endian. s must be initialized again before reuse. */
static void sha256_final(struct sha256 *s, unsigned char out[32]) {
    uint64_t bits = s->bytes * 8;
    unsigned char pad[72] = {0x80};
    size_t padlen = (s->fill < 56 ? 56 : 120) - s->fill;
    for (unsigned i = 0; i < 8; i++)
        pad[padlen + i] = (unsigned char)(bits >> (56 - 8 * i));
    sha256_update(s, pad, padlen + 8);
    for (unsigned i = 0; i < 32; i++)
        out[i] = (unsigned char)(s->h[i / 4] >> (24 - 8 * (i % 4)));
}

/* HMAC-SHA-256 (RFC 2104 section 2; RFC 4231 for SHA-256) of msg under key, into out. A key
 * longer than the 64-byte block is hashed first; a shorter one is padded with zeros. */
static void hmac_sha256(const unsigned char *key, size_t key_len, const void *msg, size_t len,
                        unsigned char out[32]) {
    unsigned char k[64] = {0}, pad[64];
    struct sha256 s;
    if (key_len > sizeof k) {
        sha256_init(&s);
        sha256_update(&s, key, key_len);
        sha256_final(&s, k);
    } else if (key_len) {
        memcpy(k, key, key_len);
    }
    for (unsigned i = 0; i < sizeof pad; i++)
        pad[i] = (unsigned char)(k[i] ^ 0x36); /* ipad */
    sha256_init(&s);
    sha256_update(&s, pad, sizeof pad);
    sha256_update(&s, msg, len);
    sha256_final(&s, out);
    for (unsigned i = 0; i < sizeof pad; i++)
        pad[i] = (unsigned char)(k[i] ^ 0x5c); /* opad */
    sha256_init(&s);
    sha256_update(&s, pad, sizeof pad);
    sha256_update(&s, out, 32);
    sha256_final(&s, out);
}

/* ---- JSON Web Tokens, HS256 only (RFC 7519, RFC 7515) ---------------------------------- */

/* A JWT (RFC 7519) in the JWS compact serialization (RFC 7515 section 7.1) is three base64url
 * parts joined by dots: HEADER.PAYLOAD.SIGNATURE. The header and the payload are JSON
 * objects; the signature is HMAC-SHA-256 over the ASCII text "HEADER.PAYLOAD" as sent. We
 * take HS256 only (RFC 7518 section 3.2) and refuse every other "alg", "none" included: a
 * verifier that trusts the header's choice of algorithm can be made to skip the check. The
 * reader is pure, allocation-free and bounded: a token over JWT_MAX_BYTES is refused before
 * a byte of it is decoded, JSON nests at most JSON_DEPTH_MAX deep, a list holds at most
 * JWT_GRANTS_MAX grants. Refusals are counted and named by reason (auth_reason_label). */

#define JWT_MAX_BYTES  8192 /* the longest token taken (the encoded text) */
#define JWT_LEEWAY_S   5    /* clock skew allowed on exp and nbf, in seconds */
#define JWT_GRANTS_MAX 64   /* grants in one list; more makes the token malformed */
#define JSON_DEPTH_MAX 16   /* nesting of arrays and objects in a token's JSON */

/* Why a token or a request was refused; AUTH_OK when it was not. */
enum auth_reason {
    AUTH_OK,
    AUTH_MISSING,       /* no token, and a topic asked for is not public */
    AUTH_MALFORMED,     /* not three base64url parts, not JSON, a claim of the wrong type */
    AUTH_TOO_LONG,      /* over JWT_MAX_BYTES */
    AUTH_ALG,           /* "alg" is not "HS256" */
    AUTH_SIGNATURE,     /* the HMAC does not match */
    AUTH_EXPIRED,       /* now >= exp + JWT_LEEWAY_S (RFC 7519 4.1.4: "on or after") */
    AUTH_NOT_YET_VALID, /* now < nbf - JWT_LEEWAY_S */
    AUTH_AUDIENCE,      /* "aud" missing or not the configured audience */
    AUTH_TOPIC,         /* a valid token without the grant asked for */
    AUTH_DENIED,        /* the application said no (401 or 403) */
    AUTH_UNAVAILABLE,   /* the application could not be asked, or did not answer */
    AUTH_REASONS
};

/* The label of sse_auth_refused_total{reason="..."}; never the token itself. */
FOR_PARTS static const char *const auth_reason_label[AUTH_REASONS] = {
    "ok",      "missing",       "malformed", "too_long", "alg",    "signature",
    "expired", "not_yet_valid", "audience",  "topic",    "denied", "unavailable"};

/* What "token refused: TEXT" says to the client, per reason. */
FOR_PARTS static const char *const auth_reason_text[AUTH_REASONS] = {
    "ok",
    "no token",
    "malformed",
    "too long",
    "algorithm is not HS256",
    "bad signature",
    "expired",
    "not yet valid",
    "wrong audience",
    "topic not granted",
    "the application refused",
    "the application cannot say now"};

/* A list of grants: topic names, "*", or prefixes ending in '*'. Views into jwt.payload. */
struct jwt_list {
    const char *name[JWT_GRANTS_MAX]; /* the grants, not NUL-terminated */
    size_t len[JWT_GRANTS_MAX];       /* their lengths */
    size_t n;                         /* grants in the list */
};

/* What a verified token says. */
struct jwt {
    int64_t exp;                 /* "exp" rounded down, seconds; INT64_MAX when absent */
    int64_t nbf;                 /* "nbf" rounded up, seconds; INT64_MIN when absent */
    struct jwt_list subscribe;   /* topics the bearer may hear */
    struct jwt_list publish;     /* topics the bearer may publish to or retire */
    char payload[JWT_MAX_BYTES]; /* the decoded payload, its strings decoded in place */
};

/* ---- base64url (RFC 4648 section 5), unpadded as JWS requires (RFC 7515 section 2) ---- */

static int b64url_value(char c) {
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    return c == '-' ? 62 : c == '_' ? 63 : -1;
}

/* Decodes in[0..len) into out (cap bytes). Returns the bytes written, or -1: a character
 * outside the alphabet ('=' included: JWS has no padding), a length of 1 mod 4 (no byte ends
 * there), non-zero bits after the last byte (RFC 4648 3.5: then one text had two spellings,
 * and a signature could be changed without changing what it decodes to), or too little room. */
static long b64url_decode(const char *in, size_t len, unsigned char *out, size_t cap) {
    size_t need = len / 4 * 3 + (len % 4 ? len % 4 - 1 : 0), o = 0;
    if (len % 4 == 1 || need > cap || need > LONG_MAX)
        return -1;
    uint32_t acc = 0; /* the bits not yet written, low `bits` of them */
    unsigned bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64url_value(in[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6 | (uint32_t)v) & 0xFFF;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    return (acc & ((1u << bits) - 1)) ? -1 : (long)o;
}

/* ---- JSON (RFC 8259), read in place ----------------------------------------------------
 * Just enough to read a token: a cursor over a mutable text that validates as it goes.
 * Strings are decoded where they stand (an escape is never shorter than what it stands for),
 * so names come back as views into the text and nothing is copied or allocated. Every
 * function returns false for malformed JSON and leaves the cursor after what it read. */

struct json {
    char *s;    /* the text; strings are rewritten in place as they are decoded */
    size_t len; /* bytes at s */
    size_t pos; /* the next byte to read */
};

static void json_ws(struct json *j) {
    while (j->pos < j->len && (j->s[j->pos] == ' ' || j->s[j->pos] == '\t' ||
                               j->s[j->pos] == '\n' || j->s[j->pos] == '\r'))
        j->pos++;
}

/* Whether the next byte after whitespace is c (not consumed). */
static bool json_peek(struct json *j, char c) {
    json_ws(j);
    return j->pos < j->len && j->s[j->pos] == c;
}

/* Consumes c after whitespace, or returns false. */
static bool json_eat(struct json *j, char c) {
    if (!json_peek(j, c))
        return false;
    j->pos++;
    return true;
}

/* Whether only whitespace is left: one JSON text, nothing after it. */
static bool json_end(struct json *j) {
    json_ws(j);
    return j->pos == j->len;
}

/* Four hex digits of a \u escape into *cp. */
static bool json_hex4(struct json *j, uint32_t *cp) {
    if (j->len - j->pos < 4)
        return false;
    *cp = 0;
    for (int i = 0; i < 4; i++) {
        int d = http_hex(j->s[j->pos++]);
        if (d < 0)
            return false;
        *cp = *cp << 4 | (uint32_t)d;
    }
    return true;
}

/* Writes code point cp as UTF-8 at s; returns the bytes written (1 to 4). */
static size_t json_utf8(char *s, uint32_t cp) {
    if (cp < 0x80) {
        s[0] = (char)cp;
        return 1;
    }
    size_t n = cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    for (size_t i = n - 1; i > 0; i--, cp >>= 6)
        s[i] = (char)(0x80 | (cp & 0x3F));
    s[0] = (char)((n == 2 ? 0xC0 : n == 3 ? 0xE0 : 0xF0) | cp);
    return n;
}

/* The escape after a backslash (RFC 8259 section 7), written at s + *w. A \u escape of a
 * high surrogate must be followed by one of a low surrogate (the pair is one code point);
 * a lone surrogate is refused, as it has no UTF-8 form. */
static bool json_escape(struct json *j, size_t *w) {
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    if (j->pos >= j->len)
        return false;
    char c = j->s[j->pos++];
    const char *e = c ? strchr(from, c) : NULL;
    if (e) {
        j->s[(*w)++] = to[e - from];
        return true;
    }
    uint32_t cp, lo;
    if (c != 'u' || !json_hex4(j, &cp) || (cp >= 0xDC00 && cp <= 0xDFFF))
        return false;
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        if (j->len - j->pos < 2 || j->s[j->pos] != '\\' || j->s[j->pos + 1] != 'u')
            return false;
        j->pos += 2;
        if (!json_hex4(j, &lo) || lo < 0xDC00 || lo > 0xDFFF)
            return false;
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
    }
    *w += json_utf8(j->s + *w, cp);
    return true;
}

/* A string (after whitespace), decoded in place: *out points at its bytes in the text.
 * Control characters must be escaped (RFC 8259 section 7). */
static bool json_string(struct json *j, const char **out, size_t *out_len) {
    if (!json_eat(j, '"'))
        return false;
    size_t start = j->pos;
    size_t w = start; /* where the next decoded byte goes */
    while (j->pos < j->len) {
        char c = j->s[j->pos++];
        if (c == '"') {
            *out = j->s + start;
            *out_len = w - start;
            return true;
        }
        if ((unsigned char)c < 0x20 || (c == '\\' && !json_escape(j, &w)))
            return false;
        if (c != '\\')
            j->s[w++] = c;
    }
    return false;
}

/* An object member's name and its colon. */
static bool json_key(struct json *j, const char **key, size_t *key_len) {
    return json_string(j, key, key_len) && json_eat(j, ':');
}

/* Consumes a run of digits; returns how many. */
static size_t json_digits(struct json *j) {
    size_t at = j->pos;
    while (j->pos < j->len && j->s[j->pos] >= '0' && j->s[j->pos] <= '9')
        j->pos++;
    return j->pos - at;
}

/* The value of a number's digits (integer part ip[0..ni), fraction fp[0..nf), times 10 to
 * the exponent e), rounded down to an int64 (saturating); *fraction says whether anything
 * was cut off, so the number rounded up is *out + *fraction. */
static void json_floor(const char *ip, size_t ni, const char *fp, size_t nf, long e, bool neg,
                       int64_t *out, bool *fraction) {
    long point = (long)ni + e; /* digits before the decimal point */
    uint64_t acc = 0;
    bool big = false;
    *fraction = false;
    for (size_t k = 0; k < ni + nf; k++) {
        unsigned d = (unsigned)((k < ni ? ip[k] : fp[k - ni]) - '0');
        if ((long)k >= point)
            *fraction |= d != 0;
        else if (acc > ((uint64_t)INT64_MAX - d) / 10)
            big = true;
        else
            acc = acc * 10 + d;
    }
    for (long k = (long)(ni + nf); k < point && acc && !big; k++) {
        big = acc > (uint64_t)INT64_MAX / 10;
        acc *= 10;
    }
    if (big) {
        *out = neg ? INT64_MIN : INT64_MAX;
        *fraction = false;
    } else {
        *out = neg ? -(int64_t)acc - *fraction : (int64_t)acc;
    }
}

/* A number (RFC 8259 section 6: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?) rounded down
 * into *out (see json_floor). Numbers are not converted through floating point: "exp" must
 * come out the same on every machine. */
static bool json_number(struct json *j, int64_t *out, bool *fraction) {
    json_ws(j);
    bool neg = j->pos < j->len && j->s[j->pos] == '-';
    j->pos += neg;
    const char *ip = j->s + j->pos, *fp = NULL;
    size_t ni = json_digits(j), nf = 0;
    if (ni == 0 || (ni > 1 && ip[0] == '0'))
        return false;
    if (j->pos < j->len && j->s[j->pos] == '.') {
        fp = j->s + ++j->pos;
        if ((nf = json_digits(j)) == 0)
            return false;
    }
    long e = 0;
    if (j->pos < j->len && (j->s[j->pos] == 'e' || j->s[j->pos] == 'E')) {
        j->pos++;
        bool eneg = j->pos < j->len && j->s[j->pos] == '-';
        j->pos += j->pos < j->len && (j->s[j->pos] == '-' || j->s[j->pos] == '+');
        size_t at = j->pos;
        if (json_digits(j) == 0)
            return false;
        for (size_t i = at; i < j->pos && e < 100000; i++) /* beyond that, all is saturated */
            e = e * 10 + (j->s[i] - '0');
        e = eneg ? -e : e;
    }
    json_floor(ip, ni, fp, nf, e, neg, out, fraction);
    return true;
}

/* Consumes the literal word (true, false, null). */
static bool json_word(struct json *j, const char *word) {
    size_t n = strlen(word);
    if (j->len - j->pos < n || memcmp(j->s + j->pos, word, n) != 0)
        return false;
    j->pos += n;
    return true;
}

/* Between a container's items: 1 if another item follows (its comma consumed), 0 if the
 * container closed (its bracket consumed), -1 if malformed. *count counts the items. */
static int json_next(struct json *j, char close, size_t *count) {
    if (json_eat(j, close))
        return 0;
    if ((*count)++ == 0)
        return 1;
    return json_eat(j, ',') ? 1 : -1;
}

static bool json_value(struct json *j, unsigned depth);

/* An array or object (at its bracket) as the depth-th level of nesting: read and dropped. */
static bool json_container(struct json *j, unsigned depth) {
    if (depth > JSON_DEPTH_MAX)
        return false;
    bool object = j->s[j->pos++] == '{';
    size_t count = 0;
    const char *key;
    size_t key_len;
    int more;
    while ((more = json_next(j, object ? '}' : ']', &count)) > 0)
        if ((object && !json_key(j, &key, &key_len)) || !json_value(j, depth))
            return false;
    return more == 0;
}

/* Any value (after whitespace) inside a container of the given depth: read and dropped. */
static bool json_value(struct json *j, unsigned depth) {
    const char *s;
    size_t n;
    int64_t v;
    bool f;
    json_ws(j);
    if (j->pos >= j->len)
        return false;
    char c = j->s[j->pos];
    if (c == '{' || c == '[')
        return json_container(j, depth + 1);
    if (c == '"')
        return json_string(j, &s, &n);
    if (c == '-' || (c >= '0' && c <= '9'))
        return json_number(j, &v, &f);
    return json_word(j, "true") || json_word(j, "false") || json_word(j, "null");
}

/* ---- the token ------------------------------------------------------------------------- */

/* The JOSE header (RFC 7515 section 4): AUTH_OK if "alg" is exactly "HS256". "typ", "kid"
 * and the rest are ignored; "crit" names extensions the recipient must understand (4.1.11),
 * and we understand none, so a header with it is refused. A repeated "alg" is refused
 * (section 4 allows refusing duplicates; reading either one could differ from the signer). */
static enum auth_reason jwt_header(char *text, size_t len) {
    struct json j = {text, len, 0};
    const char *key, *alg = NULL;
    size_t key_len, alg_len = 0, count = 0;
    bool seen_alg = false, crit = false;
    int more;
    if (!wire_utf8_valid(text, len) || !json_peek(&j, '{'))
        return AUTH_MALFORMED;
    j.pos++;
    while ((more = json_next(&j, '}', &count)) > 0) {
        if (!json_key(&j, &key, &key_len))
            return AUTH_MALFORMED;
        if (bytes_eq(key, key_len, "alg")) {
            if (seen_alg)
                return AUTH_MALFORMED;
            seen_alg = true;
            if (json_peek(&j, '"')) {
                if (!json_string(&j, &alg, &alg_len))
                    return AUTH_MALFORMED;
                continue;
            }
        }
        crit |= bytes_eq(key, key_len, "crit");
        if (!json_value(&j, 1))
            return AUTH_MALFORMED;
    }
    if (more < 0 || !json_end(&j) || crit)
        return AUTH_MALFORMED;
    return alg && bytes_eq(alg, alg_len, "HS256") ? AUTH_OK : AUTH_ALG;
}

/* The claims jwt_claims reads; each may appear once (RFC 7519 section 4 lets a reader refuse
 * duplicates, and a claim read twice could mean one thing to us and another to the issuer). */
enum jwt_claim { CLAIM_EXP, CLAIM_NBF, CLAIM_AUD, CLAIM_SSE, CLAIM_MERCURE, CLAIMS };

/* The payload being read. JSON syntax errors end the reading at once; a claim of the wrong
 * type is only noted, so that it is reported in the order jwt_verify checks claims in. */
struct jwt_read {
    struct json j;        /* the cursor over jwt.payload */
    struct jwt *out;      /* where exp, nbf and the grants go */
    const char *audience; /* the audience required, or NULL */
    unsigned seen;        /* a bit per enum jwt_claim already read */
    bool bad_time;        /* exp or nbf is not a number */
    bool bad_aud;         /* aud is not a string or an array of strings */
    bool bad_grants;      /* grants not an object of arrays of strings, or too many */
    bool aud_match;       /* aud is, or lists, the audience */
};

/* "exp" or "nbf" (RFC 7519 4.1.4, 4.1.5: a NumericDate, which may have a fraction), rounded
 * toward the stricter side: exp down, nbf up. */
static bool jwt_time(struct jwt_read *r, int64_t *out, bool round_up) {
    bool fraction;
    json_ws(&r->j);
    char c = r->j.pos < r->j.len ? r->j.s[r->j.pos] : '\0';
    if (c != '-' && (c < '0' || c > '9')) {
        r->bad_time = true;
        return json_value(&r->j, 1);
    }
    if (!json_number(&r->j, out, &fraction))
        return false;
    if (round_up && fraction && *out < INT64_MAX)
        (*out)++;
    return true;
}

/* One string of "aud" (after whitespace): compared with the audience, or noted as bad. */
static bool jwt_aud_item(struct jwt_read *r, unsigned depth) {
    const char *s;
    size_t n;
    if (!json_peek(&r->j, '"')) {
        r->bad_aud = true;
        return json_value(&r->j, depth);
    }
    if (!json_string(&r->j, &s, &n))
        return false;
    r->aud_match |= r->audience && bytes_eq(s, n, r->audience);
    return true;
}

/* "aud" (RFC 7519 4.1.3): one string, or an array of strings. */
static bool jwt_aud(struct jwt_read *r) {
    size_t count = 0;
    int more;
    if (!json_eat(&r->j, '['))
        return jwt_aud_item(r, 1);
    while ((more = json_next(&r->j, ']', &count)) > 0)
        if (!jwt_aud_item(r, 2))
            return false;
    return more == 0;
}

/* A list of grants: an array of strings into l (NULL: read and checked, not kept). */
static bool jwt_list_read(struct jwt_read *r, struct jwt_list *l) {
    size_t count = 0;
    int more;
    if (!json_eat(&r->j, '[')) {
        r->bad_grants = true;
        return json_value(&r->j, 2);
    }
    while ((more = json_next(&r->j, ']', &count)) > 0) {
        const char *s;
        size_t n;
        if (!json_peek(&r->j, '"')) {
            r->bad_grants = true;
            if (!json_value(&r->j, 3))
                return false;
        } else if (!json_string(&r->j, &s, &n)) {
            return false;
        } else if (count > JWT_GRANTS_MAX) {
            r->bad_grants = true;
        } else if (l) {
            l->name[l->n] = s;
            l->len[l->n++] = n;
        }
    }
    return more == 0;
}

/* The grants object, {"subscribe": [...], "publish": [...]} (other members ignored, such as
 * Mercure's "payload"), into out's lists, emptied first (NULL: read and checked, not kept). */
static bool jwt_grants_read(struct jwt_read *r, struct jwt *out) {
    size_t count = 0;
    bool seen_sub = false, seen_pub = false;
    int more;
    if (out)
        out->subscribe.n = out->publish.n = 0;
    if (!json_eat(&r->j, '{')) {
        r->bad_grants = true;
        return json_value(&r->j, 1);
    }
    while ((more = json_next(&r->j, '}', &count)) > 0) {
        const char *key;
        size_t key_len;
        if (!json_key(&r->j, &key, &key_len))
            return false;
        bool sub = bytes_eq(key, key_len, "subscribe"), pub = bytes_eq(key, key_len, "publish");
        if ((sub && seen_sub) || (pub && seen_pub))
            return false; /* a repeated list: refused, as a repeated claim */
        seen_sub |= sub;
        seen_pub |= pub;
        struct jwt_list *l = !out ? NULL : sub ? &out->subscribe : &out->publish;
        if (!(sub || pub ? jwt_list_read(r, l) : json_value(&r->j, 2)))
            return false;
    }
    return more == 0;
}

/* One member of the payload: the claims we read, by name; others are read and dropped. The
 * grants come from "sse", or, when there is none, from "mercure" (the same lists, so tokens
 * minted for a Mercure hub work as they are): "sse" empties what "mercure" filled, and a
 * "mercure" after "sse" is checked but not kept. */
static bool jwt_claim(struct jwt_read *r, const char *key, size_t key_len) {
    static const char *const names[CLAIMS] = {"exp", "nbf", "aud", "sse", "mercure"};
    unsigned c = 0;
    while (c < CLAIMS && !bytes_eq(key, key_len, names[c]))
        c++;
    if (c == CLAIMS)
        return json_value(&r->j, 1);
    if (r->seen & (1u << c))
        return false;
    r->seen |= 1u << c;
    switch (c) {
    case CLAIM_EXP: return jwt_time(r, &r->out->exp, false);
    case CLAIM_NBF: return jwt_time(r, &r->out->nbf, true);
    case CLAIM_AUD: return jwt_aud(r);
    case CLAIM_SSE: return jwt_grants_read(r, r->out);
    default: return jwt_grants_read(r, (r->seen & 1u << CLAIM_SSE) ? NULL : r->out);
    }
}

/* The payload, out->payload[0..len): a JSON object of claims (RFC 7519 section 4), then the
 * claims in order: exp, nbf, aud (only when audience is set), grants. */
static enum auth_reason jwt_claims(struct jwt *out, size_t len, const char *audience, int64_t now) {
    struct jwt_read r = {.j = {out->payload, len, 0}, .out = out, .audience = audience};
    const char *key;
    size_t key_len, count = 0;
    int more;
    if (!wire_utf8_valid(out->payload, len) || !json_eat(&r.j, '{'))
        return AUTH_MALFORMED;
    while ((more = json_next(&r.j, '}', &count)) > 0)
        if (!json_key(&r.j, &key, &key_len) || !jwt_claim(&r, key, key_len))
            return AUTH_MALFORMED;
    if (more < 0 || !json_end(&r.j) || r.bad_time)
        return AUTH_MALFORMED;
    if (out->exp <= INT64_MAX - JWT_LEEWAY_S && now >= out->exp + JWT_LEEWAY_S)
        return AUTH_EXPIRED;
    if (out->nbf >= INT64_MIN + JWT_LEEWAY_S && now < out->nbf - JWT_LEEWAY_S)
        return AUTH_NOT_YET_VALID;
    if (r.bad_aud)
        return AUTH_MALFORMED;
    if (audience && !r.aud_match)
        return AUTH_AUDIENCE;
    return r.bad_grants ? AUTH_MALFORMED : AUTH_OK;
}

/* The checks of jwt_verify, in its order, on a struct jwt already reset. */
static enum auth_reason jwt_check(const char *tok, size_t len, const unsigned char *key,
                                  size_t key_len, const char *audience, int64_t now,
                                  struct jwt *out) {
    if (len > JWT_MAX_BYTES)
        return AUTH_TOO_LONG;
    const char *end = tok + len, *dot1 = memchr(tok, '.', len);
    const char *dot2 = dot1 ? memchr(dot1 + 1, '.', (size_t)(end - dot1 - 1)) : NULL;
    if (!dot2 || memchr(dot2 + 1, '.', (size_t)(end - dot2 - 1)))
        return AUTH_MALFORMED; /* not exactly three parts */
    /* All three decoded into out->payload, one after the other: the payload first, where it
     * stays, then the header and the signature (3/4 of the token at most: room enough). */
    unsigned char *p = (unsigned char *)out->payload, *stop = p + sizeof out->payload;
    long plen = b64url_decode(dot1 + 1, (size_t)(dot2 - dot1 - 1), p, sizeof out->payload);
    long hlen = plen < 0
                    ? -1
                    : b64url_decode(tok, (size_t)(dot1 - tok), p + plen, (size_t)(stop - p - plen));
    long slen = hlen < 0 ? -1
                         : b64url_decode(dot2 + 1, (size_t)(end - dot2 - 1), p + plen + hlen,
                                         (size_t)(stop - p - plen - hlen));
    if (slen < 0)
        return AUTH_MALFORMED;
    enum auth_reason r = jwt_header(out->payload + plen, (size_t)hlen);
    if (r != AUTH_OK)
        return r;
    unsigned char mac[32];
    hmac_sha256(key, key_len, tok, (size_t)(dot2 - tok), mac);
    if (!ct_equal((const char *)p + plen + hlen, (size_t)slen, (const char *)mac, sizeof mac))
        return AUTH_SIGNATURE;
    return jwt_claims(out, (size_t)plen, audience, now);
}

/* Verifies an HS256 JWT, tok[0..len), with key[0..key_len): the checks in order (the first
 * failing one is the reason): its length, its form (three base64url parts, the header a JSON
 * object), "alg" (exactly "HS256"), the signature (compared in constant time), the payload (a
 * JSON object), exp and nbf (with JWT_LEEWAY_S of skew; now in seconds since the epoch), aud
 * (when audience is not NULL), the grants ("sse", else "mercure"). Fills *out, whose lists
 * point into out->payload; they are left empty unless it returns AUTH_OK. */
FOR_PARTS static enum auth_reason jwt_verify(const char *tok, size_t len, const unsigned char *key,
                                             size_t key_len, const char *audience, int64_t now,
                                             struct jwt *out) {
    out->exp = INT64_MAX;
    out->nbf = INT64_MIN;
    out->subscribe.n = out->publish.n = 0;
    enum auth_reason r = jwt_check(tok, len, key, key_len, audience, now, out);
    if (r != AUTH_OK)
        out->subscribe.n = out->publish.n = 0;
    return r;
}

/* Whether list l grants topic[0..len): a grant equal to it, "*", or a prefix of it followed
 * by '*' ("orders.*" grants "orders.1"; the '*' may stand for nothing). Only a final '*' is
 * special. */
FOR_PARTS static bool jwt_grants(const struct jwt_list *l, const char *topic, size_t len) {
    for (size_t i = 0; i < l->n; i++) {
        size_t n = l->len[i];
        const char *g = l->name[i];
        if ((n == len && memcmp(g, topic, n) == 0) ||
            (n && g[n - 1] == '*' && n - 1 <= len && memcmp(g, topic, n - 1) == 0))
            return true;
    }
    return false;
}

/* ---- deciding: the token, the public topics, the host's callback ------------------------ */

/* What the part keeps. Grants and public topics are patterns: a name, "*", or a prefix
 * ending in '*'. */
struct auth {
    unsigned char *key;      /* the HS256 key, or NULL: no tokens */
    size_t key_len;          /* its bytes */
    char *cookie;            /* the cookie a token may come in */
    char *audience;          /* what aud must name, or NULL */
    struct jwt_list publics; /* topics anyone may hear, as grants to all (names owned) */
    int (*on_authorize)(struct sse_server *, const struct sse_request *, int, const char *const *,
                        size_t, int *, void *); /* the host's, or NULL */
    struct auth_app *app;                       /* --auth-url, or NULL */
    uint64_t refused[AUTH_REASONS];             /* refusals, by reason */
    struct jwt jwt; /* the token being checked (large: kept here, off the stack) */
};

static const struct part_ops part_auth;

static struct auth *auth_of(const struct sse_server *srv) {
    return part_self(srv, &part_auth);
}

/* The value of cookie `name` in the request's Cookie fields (RFC 6265 5.4: "a=b; c=d"; a
 * client behind HTTP/2 may send several fields). */
static bool auth_cookie(const struct http_request *req, const char *name, const char **v,
                        size_t *vlen) {
    size_t nlen = strlen(name);
    for (size_t i = 0; i < req->num_headers; i++) {
        const struct http_header *h = &req->headers[i];
        if (!ascii_ieq(h->name, h->name_len, "Cookie"))
            continue;
        size_t pos = 0;
        const char *item;
        size_t ilen;
        while (http_next_item(h->value, h->value_len, &pos, ';', &item, &ilen))
            if (ilen > nlen && item[nlen] == '=' && memcmp(item, name, nlen) == 0) {
                *v = item + nlen + 1;
                *vlen = ilen - nlen - 1;
                return true;
            }
    }
    return false;
}

/* The client's token: Authorization: Bearer, the cookie, or ?access_token= (RFC 6750 2.1 to
 * 2.3; an EventSource can send only the last two). */
static bool auth_token(const struct auth *au, const struct http_request *req,
                       const struct http_query *q, bool headers_only, const char **tok,
                       size_t *len) {
    const struct http_header *h = http_header(req, "Authorization");
    if (h && http_bearer(h->value, h->value_len, tok, len))
        return true;
    if (headers_only)
        return false;
    if (auth_cookie(req, au->cookie, tok, len))
        return true;
    const struct http_param *p = q ? http_query_get(q, "access_token") : NULL;
    if (!p)
        return false;
    *tok = p->value;
    *len = p->value_len;
    return true;
}

static int64_t auth_realtime_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A refusal, counted by reason. 401 for the token (RFC 6750 3.1: invalid_token), 403 for a
 * topic; the token itself is never echoed, logged or counted. */
static enum access_answer auth_refuse(struct sse_server *srv, struct conn *c, enum auth_reason r,
                                      const char *verb, const char *topic, size_t len) {
    struct auth *au = auth_of(srv);
    au->refused[r]++;
    char msg[160];
    if (r == AUTH_MISSING && verb[0] == 'p')
        snprintf(msg, sizeof msg, "publishing needs Authorization: Bearer <token>");
    else if (r == AUTH_MISSING)
        snprintf(msg, sizeof msg, "%s to topic %.*s needs a token", verb, (int)len, topic);
    else if (r == AUTH_TOPIC)
        snprintf(msg, sizeof msg, "not allowed to %s to topic %.*s",
                 verb[0] == 'p' ? "publish" : "subscribe", (int)len, topic);
    else
        snprintf(msg, sizeof msg, "token refused: %s", auth_reason_text[r]);
    if (r == AUTH_TOPIC)
        http_text(srv, c, 403, msg, NULL);
    else
        http_text(srv, c, 401, msg,
                  r == AUTH_MISSING ? "WWW-Authenticate: Bearer\r\n"
                                    : "WWW-Authenticate: Bearer error=\"invalid_token\"\r\n");
    return ACCESS_ANSWERED;
}

/* Checks the token, when the request has one and tokens are on: AUTH_OK with au->jwt filled
 * (*checked true), AUTH_OK without a token (*checked false), or why it is refused. */
static enum auth_reason auth_check_token(struct auth *au, const struct http_request *req,
                                         const struct http_query *q, bool headers_only,
                                         bool *checked) {
    const char *tok;
    size_t len;
    *checked = false;
    if (!au->key || !auth_token(au, req, q, headers_only, &tok, &len))
        return AUTH_OK;
    *checked = true;
    return jwt_verify(tok, len, au->key, au->key_len, au->audience, auth_realtime_ms() / 1000,
                      &au->jwt);
}

/* When a stream allowed by a token with exp must end: JWT_LEEWAY_S after exp, on the
 * monotonic clock; 0 = never. */
static int64_t auth_until(const struct sse_server *srv, const struct jwt *j) {
    int64_t left = j->exp == INT64_MAX ? INT64_MAX : j->exp - auth_realtime_ms() / 1000;
    if (left > 100LL * 365 * 24 * 3600) /* a century: no end worth a timer */
        return 0;
    int64_t ms = (j->exp + JWT_LEEWAY_S) * 1000 - auth_realtime_ms();
    return srv->now + (ms > 0 ? ms : 0);
}

/* Asks the host's on_authorize; its status, with keep[] narrowing a subscription. */
static int auth_ask_host(struct sse_server *srv, struct conn *c, const struct http_request *req,
                         const struct http_query *q, int publish, const char **names,
                         const size_t *lens, size_t n, int *keep) {
    struct auth *au = auth_of(srv);
    char method[32], topics[SSE_MAX_TOPICS_PER_STREAM][TOPIC_NAME_MAX + 1];
    const char *tp[SSE_MAX_TOPICS_PER_STREAM];
    snprintf(method, sizeof method, "%.*s", (int)req->method_len, req->method);
    for (size_t i = 0; i < n; i++) {
        memcpy(topics[i], names[i], lens[i]);
        topics[i][lens[i]] = '\0';
        tp[i] = topics[i];
        keep[i] = 1;
    }
    struct host_request impl = {srv, c, req, q, true, ""}; /* answered: sse_respond() refuses */
    struct sse_request hreq = {method, srv->path, req->minor ? "HTTP/1.1" : "HTTP/1.0", &impl};
    srv->log_depth++; /* sse_poll() must not run inside the callback */
    int status = au->on_authorize(srv, &hreq, publish, tp, n, keep, srv->log.user);
    srv->log_depth--;
    return status;
}

/* Keeps the topics keep[] marks (in order). */
static size_t auth_narrow(const char **names, size_t *lens, size_t n, const int *keep) {
    size_t kept = 0;
    for (size_t i = 0; i < n; i++)
        if (keep[i]) {
            names[kept] = names[i];
            lens[kept++] = lens[i];
        }
    return kept;
}

/* The host's answer to a subscription: ACCESS_ALLOW (a->n narrowed), or refused. */
static enum access_answer auth_host_subscribe(struct sse_server *srv, struct conn *c,
                                              struct access_ask *a) {
    struct auth *au = auth_of(srv);
    int keep[SSE_MAX_TOPICS_PER_STREAM];
    const char *first = a->names[0];
    size_t first_len = a->lens[0];
    int status = auth_ask_host(srv, c, a->req, a->q, 0, a->names, a->lens, a->n, keep);
    if (status == 200 && (a->n = auth_narrow(a->names, a->lens, a->n, keep)) > 0)
        return ACCESS_ALLOW;
    if (status == 200)
        return auth_refuse(srv, c, AUTH_TOPIC, "subscribing", first, first_len);
    au->refused[status == 401 || status == 403 ? AUTH_DENIED : AUTH_UNAVAILABLE]++;
    access_refuse(srv, c, http_is_eventsource(a->req), status,
                  status == 401 || status == 403 ? "the application refused this subscription"
                                                 : "the application cannot say now; try again");
    return ACCESS_ANSWERED;
}

/* ---- asking the application: --auth-url ------------------------------------------------ */

#define AUTH_ANSWER_MAX 4096  /* the application's answer head; a longer one is a failure */
#define AUTH_CACHE_MAX  65536 /* answers remembered (--auth-cache); the oldest go first */

/* One question to the application under way. */
struct auth_call {
    struct handle h;               /* its socket and auth_call_event; first, for epoll */
    struct auth_call *prev, *next; /* in app->calls, oldest (soonest deadline) first */
    struct conn *client;           /* the stream request waiting (CONN_ACCESS) */
    int64_t deadline;              /* no answer by then: the application cannot say */
    int64_t until;                 /* when the stream ends (its token's exp), 0 = never */
    unsigned char key[32];         /* what the answer is cached under */
    char *out;                     /* the request */
    size_t out_len, sent;          /* its bytes, and those written */
    size_t in_len;                 /* bytes of the answer read into in */
    char in[AUTH_ANSWER_MAX];
};

/* A remembered answer: for the same Cookie, Authorization and topics (hashed into key, so
 * an entry is small whatever the client sent), until expires. */
struct auth_cached {
    struct hash_node node;     /* in app->cache; first */
    struct auth_cached *newer; /* the next one remembered, or NULL */
    int64_t expires;           /* monotonic ms */
    int status;                /* 200, 401 or 403 */
    uint32_t keep;             /* 200: bit i set = topic i allowed */
    unsigned char key[32];
};

struct auth_app {
    struct remote url;              /* where it listens */
    int64_t cache_ms;               /* --auth-cache; 0 = answers are not remembered */
    struct auth_call *calls, *last; /* questions under way, oldest first */
    struct auth_call *dropped;      /* questions whose client left, freed at the next tick (an
                                       event of theirs may still wait in this batch) */
    struct hash_table cache;        /* remembered answers by key */
    struct auth_cached *oldest, *newest;
    uint64_t requests, cache_hits; /* questions sent; answers found remembered */
};

/* The cache key: SHA-256 over the Cookie fields, the Authorization field and the topics,
 * each ended by a NUL (which none of them may contain). */
static void auth_app_key(const struct http_request *req, const struct access_ask *a,
                         unsigned char key[32]) {
    struct sha256 s;
    sha256_init(&s);
    static const char *const fields[] = {"Cookie", "Authorization"};
    for (size_t f = 0; f < 2; f++) {
        for (size_t i = 0; i < req->num_headers; i++)
            if (ascii_ieq(req->headers[i].name, req->headers[i].name_len, fields[f])) {
                sha256_update(&s, req->headers[i].value, req->headers[i].value_len);
                sha256_update(&s, ";", 1);
            }
        sha256_update(&s, "", 1);
    }
    for (size_t i = 0; i < a->n; i++) {
        sha256_update(&s, a->names[i], a->lens[i]);
        sha256_update(&s, "", 1);
    }
    sha256_final(&s, key);
}

static struct auth_cached *auth_cache_find(struct auth_app *app, const unsigned char key[32],
                                           int64_t now) {
    uint32_t h = hash_bytes(app->cache.seed, key, 32);
    for (struct hash_node *e = hash_chain(&app->cache, h); e; e = e->next) {
        struct auth_cached *k = (struct auth_cached *)e;
        if (e->hash == h && memcmp(k->key, key, 32) == 0)
            return k->expires > now ? k : NULL;
    }
    return NULL;
}

/* Forgets the oldest answer. */
static void auth_cache_drop(struct auth_app *app) {
    struct auth_cached *k = app->oldest;
    app->oldest = k->newer;
    if (!app->oldest)
        app->newest = NULL;
    hash_remove(&app->cache, &k->node);
    free(k);
}

/* Remembers an answer (every entry lives cache_ms, so the oldest expire first). */
static void auth_cache_put(struct sse_server *srv, struct auth_app *app, const unsigned char *key,
                           int status, uint32_t keep) {
    while (app->oldest && (app->oldest->expires <= srv->now || app->cache.count >= AUTH_CACHE_MAX))
        auth_cache_drop(app);
    struct auth_cached *k = calloc(1, sizeof *k);
    if (!k)
        return; /* not remembered: asked again next time */
    memcpy(k->key, key, 32);
    k->node.hash = hash_bytes(app->cache.seed, key, 32);
    k->expires = srv->now + app->cache_ms;
    k->status = status;
    k->keep = keep;
    if (!hash_insert(&app->cache, &k->node)) {
        free(k);
        return;
    }
    *(app->newest ? &app->newest->newer : &app->oldest) = k;
    app->newest = k;
}

/* The topics of a 2xx answer's X-SSE-Topics ("a, b") that were asked for, as bits; all of
 * them when it has none. */
static uint32_t auth_app_keep(const char *v, size_t vlen, bool listed,
                              const struct stream_wait *w) {
    if (!listed)
        return w->n >= 32 ? UINT32_MAX : (1u << w->n) - 1;
    uint32_t keep = 0;
    size_t pos = 0;
    const char *item;
    size_t ilen;
    while (http_next_item(v, vlen, &pos, ',', &item, &ilen))
        for (size_t i = 0; i < w->n; i++)
            if (ilen == w->lens[i] && memcmp(item, w->names[i], ilen) == 0)
                keep |= 1u << i;
    return keep;
}

/* Takes the question out of the list and closes its socket. */
static void auth_call_end(struct sse_server *srv, struct auth_app *app, struct auth_call *call) {
    if (app->calls == call)
        app->calls = call->next;
    else
        call->prev->next = call->next;
    if (app->last == call)
        app->last = call->prev;
    else
        call->next->prev = call->prev;
    if (call->h.fd >= 0) {
        epoll_ctl(srv->epfd, EPOLL_CTL_DEL, call->h.fd, NULL);
        close(call->h.fd);
    }
    call->h.fd = -1;
}

static void auth_call_free(struct sse_server *srv, struct auth_app *app, struct auth_call *call) {
    auth_call_end(srv, app, call);
    free(call->out);
    free(call);
}

/* Frees the questions whose client left (auth_app_forget). */
static void auth_calls_reap(struct auth_app *app) {
    for (struct auth_call *call = app->dropped, *next; call; call = next) {
        next = call->next;
        free(call->out);
        free(call);
    }
    app->dropped = NULL;
}

/* Answers the waiting client as the application said: status 200 with keep, 401/403, or
 * anything else (no answer) "cannot say now". */
static void auth_app_answer(struct sse_server *srv, struct conn *c, int status, uint32_t keep,
                            int64_t until) {
    struct auth *au = auth_of(srv);
    const struct stream_wait *w = c->wait;
    bool kept[SSE_MAX_TOPICS_PER_STREAM] = {false}, any = false;
    for (size_t i = 0; i < w->n; i++)
        any |= kept[i] = (keep >> i) & 1u;
    char why[160];
    snprintf(why, sizeof why, "not allowed to subscribe to topic %.*s", (int)w->lens[0],
             w->names[0]);
    if (status == 200 && !any) {
        au->refused[AUTH_TOPIC]++;
        status = 403;
    } else if (status == 401 || status == 403) {
        au->refused[AUTH_DENIED]++;
        snprintf(why, sizeof why, "the application refused this subscription");
    } else if (status != 200) {
        au->refused[AUTH_UNAVAILABLE]++;
        snprintf(why, sizeof why, "the application cannot say now; try again");
    }
    access_decided(srv, c, status, why, kept, until);
}

/* The question is over: answered (status from the application's status line, topics from
 * its X-SSE-Topics), or failed (status 0). */
static void auth_call_done(struct sse_server *srv, struct auth_call *call, int status,
                           const char *topics, size_t len, bool listed) {
    struct auth_app *app = auth_of(srv)->app;
    struct conn *c = call->client;
    status = status >= 200 && status < 300 ? 200 : status;
    uint32_t keep = status == 200 ? auth_app_keep(topics, len, listed, c->wait) : 0;
    if (app->cache_ms && (status == 200 || status == 401 || status == 403))
        auth_cache_put(srv, app, call->key, status, keep);
    int64_t until = call->until;
    auth_call_free(srv, app, call);
    auth_app_answer(srv, c, status, keep, until);
}

/* Reads the status line and X-SSE-Topics of a complete answer head in[0..end). */
static void auth_call_parse(struct sse_server *srv, struct auth_call *call, size_t end) {
    const char *p = call->in;
    size_t pos = 0, len;
    const char *line = http_next_line(p, &pos, end, &len);
    int status = 0;
    if (!(len >= 12 && memcmp(line, "HTTP/1.", 7) == 0 && line[8] == ' ' &&
          http_digits(line + 9, 3, &status) && status >= 200))
        status = 0; /* not an answer we understand: the application cannot say */
    struct http_header h[SSE_MAX_HEADERS];
    size_t n = 0;
    if (status && http_parse_headers(p, pos, end, h, &n) < 0) {
        status = 0;
        n = 0; /* the last slot counted may be the bad line's, never filled */
    }
    for (size_t i = 0; i < n; i++)
        if (ascii_ieq(h[i].name, h[i].name_len, "X-SSE-Topics")) {
            auth_call_done(srv, call, status, h[i].value, h[i].value_len, true);
            return;
        }
    auth_call_done(srv, call, status, NULL, 0, false);
}

/* The application's socket: write the question, read the answer head. */
static void auth_call_event(struct sse_server *srv, struct handle *h, uint32_t events) {
    struct auth_call *call = (struct auth_call *)h;
    if (!call->client)
        return; /* dropped while its event waited in this batch */
    while (call->sent < call->out_len) {
        ssize_t n = send(h->fd, call->out + call->sent, call->out_len - call->sent, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && !(events & EPOLLERR))
            return; /* EPOLLOUT comes back */
        if (n <= 0) {
            auth_call_done(srv, call, 0, NULL, 0, false);
            return;
        }
        call->sent += (size_t)n;
    }
    for (;;) {
        ssize_t n = read(h->fd, call->in + call->in_len, sizeof call->in - call->in_len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && !(events & EPOLLERR))
            return;
        size_t end = 0;
        if (n > 0) {
            size_t from = call->in_len > 3 ? call->in_len - 3 : 0;
            call->in_len += (size_t)n;
            end = http_head_end(call->in, call->in_len, from);
        }
        if (end) {
            auth_call_parse(srv, call, end);
            return;
        }
        if (n <= 0 || call->in_len == sizeof call->in) {
            auth_call_done(srv, call, 0, NULL, 0, false); /* closed, failed, or too long */
            return;
        }
    }
}

/* The question for c: GET URL with the client's Cookie, Authorization, X-Forwarded-For and
 * the topics. NULL when out of memory. */
static char *auth_call_request(const struct auth_app *app, struct conn *c,
                               const struct access_ask *a, size_t *out_len) {
    size_t cap = 512 + strlen(app->url.path) + strlen(app->url.host) + a->n * (TOPIC_NAME_MAX + 2);
    for (size_t i = 0; i < a->req->num_headers; i++)
        cap += a->req->headers[i].name_len + a->req->headers[i].value_len + 4;
    char *out = malloc(cap), peer[INET6_ADDRSTRLEN];
    if (!out)
        return NULL;
    struct wbuf w = {out, cap, 0};
    wb_str(&w, "GET ");
    wb_str(&w, app->url.path[0] ? app->url.path : "/");
    wb_str(&w, " HTTP/1.1\r\nHost: ");
    wb_str(&w, app->url.host);
    wb_str(&w, "\r\nConnection: close\r\n");
    bool xff = false;
    for (size_t i = 0; i < a->req->num_headers; i++) {
        const struct http_header *h = &a->req->headers[i];
        bool is_xff = ascii_ieq(h->name, h->name_len, "X-Forwarded-For");
        if (is_xff) {
            wb_str(&w, xff ? ", " : "X-Forwarded-For: ");
            wb_put(&w, h->value, h->value_len);
            xff = true;
        }
    }
    conn_peer(c, peer, sizeof peer);
    wb_str(&w, xff ? ", " : "X-Forwarded-For: ");
    wb_str(&w, peer);
    wb_str(&w, "\r\n");
    static const char *const passed[] = {"Cookie", "Authorization"};
    for (size_t f = 0; f < 2; f++)
        for (size_t i = 0; i < a->req->num_headers; i++) {
            const struct http_header *h = &a->req->headers[i];
            if (ascii_ieq(h->name, h->name_len, passed[f])) {
                wb_str(&w, passed[f]);
                wb_str(&w, ": ");
                wb_put(&w, h->value, h->value_len);
                wb_str(&w, "\r\n");
            }
        }
    wb_str(&w, "X-SSE-Topics: ");
    for (size_t i = 0; i < a->n; i++) {
        wb_str(&w, i ? ", " : "");
        wb_put(&w, a->names[i], a->lens[i]);
    }
    wb_str(&w, "\r\n\r\n");
    *out_len = w.len;
    return out; /* cap counted every byte */
}

/* Opens the question's socket. False (errno set) on failure. */
static bool auth_call_connect(struct sse_server *srv, const struct auth_app *app,
                              struct auth_call *call) {
    const struct remote *u = &app->url;
    int fd = socket(u->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET};
    ev.data.ptr = &call->h;
    if ((connect(fd, (const struct sockaddr *)&u->addr, u->addr_len) < 0 && errno != EINPROGRESS) ||
        epoll_ctl(srv->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return false;
    }
    call->h.fd = fd;
    return true;
}

/* Asks the application about a stream request (or finds its answer remembered). */
static enum access_answer auth_app_ask(struct sse_server *srv, struct conn *c,
                                       struct access_ask *a) {
    struct auth *au = auth_of(srv);
    struct auth_app *app = au->app;
    unsigned char key[32];
    auth_app_key(a->req, a, key);
    const struct auth_cached *k = app->cache_ms ? auth_cache_find(app, key, srv->now) : NULL;
    if (k) {
        app->cache_hits++;
        int keep[SSE_MAX_TOPICS_PER_STREAM];
        for (size_t i = 0; i < a->n; i++)
            keep[i] = (k->keep >> i) & 1u;
        const char *first = a->names[0];
        size_t first_len = a->lens[0];
        if (k->status == 200 && (a->n = auth_narrow(a->names, a->lens, a->n, keep)) > 0)
            return ACCESS_ALLOW;
        if (k->status == 200)
            return auth_refuse(srv, c, AUTH_TOPIC, "subscribing", first, first_len);
        au->refused[AUTH_DENIED]++;
        access_refuse(srv, c, true, k->status, "the application refused this subscription");
        return ACCESS_ANSWERED;
    }
    struct auth_call *call = calloc(1, sizeof *call);
    if (call) {
        call->h = (struct handle){-1, auth_call_event};
        call->out = auth_call_request(app, c, a, &call->out_len);
    }
    if (!call || !call->out || !auth_call_connect(srv, app, call)) {
        log_say(&srv->log, SSE_LOG_WARN, "auth-url %s: %s", app->url.url,
                call && call->out ? strerror(errno) : "out of memory");
        if (call)
            free(call->out);
        free(call);
        au->refused[AUTH_UNAVAILABLE]++;
        access_refuse(srv, c, http_is_eventsource(a->req), 503,
                      "the application cannot say now; try again");
        return ACCESS_ANSWERED;
    }
    memcpy(call->key, key, sizeof key);
    call->client = c;
    call->until = a->until;
    call->deadline = srv->now + SSE_DEFAULT_AUTH_TIMEOUT_MS;
    call->prev = app->last;
    *(app->last ? &app->last->next : &app->calls) = call;
    app->last = call;
    app->requests++;
    return ACCESS_LATER;
}

/* access_ops.forget: the client left before the answer; the question is dropped. */
static void auth_app_forget(struct sse_server *srv, const struct conn *c) {
    struct auth_app *app = auth_of(srv)->app;
    for (struct auth_call *call = app ? app->calls : NULL; call; call = call->next)
        if (call->client == c) {
            auth_call_end(srv, app, call);
            call->client = NULL;
            call->next = app->dropped;
            app->dropped = call;
            return;
        }
}

/* ---- the part: subscribing, publishing, plugging in -------------------------------------- */

/* access_ops.subscribe: public topics need nothing; a token, when there is one, must be
 * valid and grant every other topic; then the host, then the application decide. */
static enum access_answer auth_subscribe(struct sse_server *srv, struct conn *c,
                                         struct access_ask *a) {
    struct auth *au = auth_of(srv);
    bool checked;
    enum auth_reason r = auth_check_token(au, a->req, a->q, false, &checked);
    if (r != AUTH_OK)
        return auth_refuse(srv, c, r, "subscribing", NULL, 0);
    bool all_public = true;
    for (size_t i = 0; i < a->n; i++) {
        if (jwt_grants(&au->publics, a->names[i], a->lens[i]))
            continue;
        all_public = false;
        if (au->key && !checked)
            return auth_refuse(srv, c, AUTH_MISSING, "subscribing", a->names[i], a->lens[i]);
        if (au->key && !jwt_grants(&au->jwt.subscribe, a->names[i], a->lens[i]))
            return auth_refuse(srv, c, AUTH_TOPIC, "subscribing", a->names[i], a->lens[i]);
    }
    if (checked)
        a->until = auth_until(srv, &au->jwt);
    if (all_public)
        return ACCESS_ALLOW;
    if (au->on_authorize && auth_host_subscribe(srv, c, a) != ACCESS_ALLOW)
        return ACCESS_ANSWERED;
    return au->app ? auth_app_ask(srv, c, a) : ACCESS_ALLOW;
}

/* access_ops.publish: a token in Authorization with a publish grant for the topic, and the
 * host's yes when it asks; ACCESS_PASS when neither has a say (publish_token decides). */
static enum access_answer auth_publish(struct sse_server *srv, struct conn *c,
                                       const struct http_request *req, const struct http_query *q,
                                       const char *topic) {
    struct auth *au = auth_of(srv);
    size_t len = topic ? strlen(topic) : 0;
    bool checked;
    enum auth_reason r = auth_check_token(au, req, NULL, true, &checked);
    if (r != AUTH_OK)
        return auth_refuse(srv, c, r, "publishing", NULL, 0);
    if (au->key && !checked && !au->on_authorize)
        return srv->publish_token ? ACCESS_PASS
                                  : auth_refuse(srv, c, AUTH_MISSING, "publishing", NULL, 0);
    if (checked && (!topic || !jwt_grants(&au->jwt.publish, topic, len)))
        return topic ? auth_refuse(srv, c, AUTH_TOPIC, "publishing", topic, len) : ACCESS_ALLOW;
    if (!au->on_authorize)
        return checked ? ACCESS_ALLOW : ACCESS_PASS;
    int keep[1];
    const char *names[1] = {topic ? topic : DEFAULT_TOPIC};
    size_t lens[1] = {strlen(names[0])};
    int status = auth_ask_host(srv, c, req, q, 1, names, lens, 1, keep);
    if (status == 200)
        return ACCESS_ALLOW;
    au->refused[status == 401 || status == 403 ? AUTH_DENIED : AUTH_UNAVAILABLE]++;
    access_refuse(srv, c, false, status,
                  status == 401 || status == 403 ? "the application refused this publish"
                                                 : "the application cannot say now; try again");
    return ACCESS_ANSWERED;
}

/* ---- the part's seams: metrics, timeouts, plugging in ---------------------------------- */

/* Questions to the application that went unanswered for SSE_DEFAULT_AUTH_TIMEOUT_MS. */
static void auth_tick(struct sse_server *srv) {
    struct auth_app *app = auth_of(srv)->app;
    if (app)
        auth_calls_reap(app);
    /* auth_call_done() takes the call out of this list, found again through srv, before it
     * frees it, which the analyzer cannot know */
    /* NOLINTNEXTLINE(clang-analyzer-unix.Malloc) */
    while (app && app->calls && app->calls->deadline <= srv->now)
        auth_call_done(srv, app->calls, 0, NULL, 0, false);
}

static int64_t auth_deadline(const struct sse_server *srv) {
    const struct auth *au = auth_of(srv);
    return au && au->app && au->app->calls ? au->app->calls->deadline : INT64_MAX;
}

static size_t auth_metrics(const struct sse_server *srv, struct metrics_row *rows) {
    const struct auth *au = auth_of(srv);
    static const char *const names[AUTH_REASONS] = {
        "", /* AUTH_OK is no refusal */
        "sse_auth_refused_total{reason=\"missing\"}",
        "sse_auth_refused_total{reason=\"malformed\"}",
        "sse_auth_refused_total{reason=\"too_long\"}",
        "sse_auth_refused_total{reason=\"alg\"}",
        "sse_auth_refused_total{reason=\"signature\"}",
        "sse_auth_refused_total{reason=\"expired\"}",
        "sse_auth_refused_total{reason=\"not_yet_valid\"}",
        "sse_auth_refused_total{reason=\"audience\"}",
        "sse_auth_refused_total{reason=\"topic\"}",
        "sse_auth_refused_total{reason=\"denied\"}",
        "sse_auth_refused_total{reason=\"unavailable\"}",
    };
    size_t n = 0;
    for (int r = AUTH_OK + 1; r < AUTH_REASONS; r++)
        rows[n++] = (struct metrics_row){names[r], "counter",
                                         r == AUTH_OK + 1 ? "Requests refused, by reason." : NULL,
                                         au ? au->refused[r] : 0};
    const struct auth_app *app = au ? au->app : NULL;
    rows[n++] = (struct metrics_row){"sse_auth_requests_total", "counter",
                                     "Questions sent to --auth-url.", app ? app->requests : 0};
    rows[n++] = (struct metrics_row){"sse_auth_cache_hits_total", "counter",
                                     "Answers of --auth-url found remembered (--auth-cache).",
                                     app ? app->cache_hits : 0};
    return n;
}

static void auth_free(struct sse_server *srv) {
    struct auth *au = auth_of(srv);
    if (!au)
        return;
    struct auth_app *app = au->app;
    if (app) {
        while (app->calls)
            auth_call_free(srv, app, app->calls);
        auth_calls_reap(app);
        while (app->oldest)
            auth_cache_drop(app);
        free(app->cache.buckets);
        remote_free(&app->url);
        free(app);
    }
    for (size_t i = 0; i < au->publics.n; i++)
        free((char *)au->publics.name[i]);
    free(au->key);
    free(au->cookie);
    free(au->audience);
    free(au);
}

static const struct part_ops part_auth = {
    .metrics = auth_metrics,
    .tick = auth_tick,
    .deadline = auth_deadline,
    .free = auth_free,
};

static const struct access_ops access_auth = {
    .subscribe = auth_subscribe,
    .publish = auth_publish,
    .forget = auth_app_forget,
};

/* A public topic or grant pattern: a topic name, "*", or a name's prefix then '*'. */
static bool auth_pattern_valid(const char *p) {
    size_t len = strlen(p);
    if (len && p[len - 1] == '*')
        len--;
    for (size_t i = 0; i < len; i++)
        if (!wire_topic_valid(p + i, 1))
            return false;
    return len <= TOPIC_NAME_MAX && (len || p[0] == '*');
}

/* The application to ask: resolved once, here. NULL, or why not. */
static const char *auth_app_plug(struct sse_server *srv, struct auth *au,
                                 const struct sse_config *cfg) {
    struct auth_app *app = calloc(1, sizeof *app);
    if (!app)
        return "out of memory";
    au->app = app;
    app->cache_ms = cfg->auth_cache_ms;
    app->cache.seed = (uint32_t)rng_next(&srv->rng);
    return remote_resolve(&app->url, cfg->auth_url);
}

/* Plugs the part in for what the configuration asks: NULL, or why it cannot. */
static const char *auth_configure(struct sse_server *srv, const struct sse_config *cfg) {
    struct auth *au = calloc(1, sizeof *au);
    if (!au || !part_add(srv, &part_auth, au)) {
        free(au);
        return "out of memory";
    }
    bool asked = cfg->jwt_secret || cfg->auth_url || cfg->on_authorize;
    if (!asked && (cfg->num_public_topics || cfg->jwt_audience || cfg->jwt_cookie))
        return "public topics, a token audience or cookie need a token secret, an "
               "authorization URL or on_authorize";
    if (!asked)
        return NULL; /* registered for its /metrics rows; the core decides alone */
    size_t klen =
        cfg->jwt_secret && !cfg->jwt_secret_len ? strlen(cfg->jwt_secret) : cfg->jwt_secret_len;
    if (cfg->jwt_secret && !klen)
        return "the token secret must not be empty";
    const char *cookie = cfg->jwt_cookie ? cfg->jwt_cookie : SSE_DEFAULT_JWT_COOKIE;
    bool cookie_ok = cookie[0] != '\0';
    for (const char *p = cookie; *p; p++)
        cookie_ok = cookie_ok && http_is_tchar((unsigned char)*p);
    if (!cookie_ok)
        return "the token cookie's name must be a token (RFC 6265 4.1.1)";
    if (cfg->jwt_audience && !cfg->jwt_audience[0])
        return "the token audience must not be empty";
    if (cfg->auth_cache_ms < 0)
        return "the authorization cache time must not be negative";
    if (cfg->num_public_topics > JWT_GRANTS_MAX)
        return "at most 64 public topics (use a prefix ending in *)";
    au->key = cfg->jwt_secret ? malloc(klen) : NULL;
    au->cookie = strdup(cookie);
    au->audience = cfg->jwt_audience ? strdup(cfg->jwt_audience) : NULL;
    if ((cfg->jwt_secret && !au->key) || !au->cookie || (cfg->jwt_audience && !au->audience))
        return "out of memory";
    if (au->key)
        memcpy(au->key, cfg->jwt_secret, klen);
    au->key_len = klen;
    for (size_t i = 0; i < cfg->num_public_topics; i++) {
        const char *p = cfg->public_topics[i];
        if (!p || !auth_pattern_valid(p))
            return "a public topic must be a topic name, * or a prefix ending in *";
        char *copy = strdup(p);
        if (!copy)
            return "out of memory";
        au->publics.len[au->publics.n] = strlen(copy);
        au->publics.name[au->publics.n++] = copy;
    }
    au->on_authorize = cfg->on_authorize;
    srv->access = &access_auth;
    return NULL;
}

/* Plugs the part in: 0, or -1 with err set. */
static int auth_plug(struct sse_server *srv, const struct sse_config *cfg, char *err,
                     size_t errlen) {
    const char *why = auth_configure(srv, cfg);
    if (why) {
        if (err && errlen)
            snprintf(err, errlen, "authorization: %s", why);
        return -1;
    }
    if (cfg->auth_url && (why = auth_app_plug(srv, auth_of(srv), cfg))) {
        if (err && errlen)
            snprintf(err, errlen, "auth-url %s: %s", cfg->auth_url, why);
        return -1;
    }
    /* Fetch: a credentialed answer with Access-Control-Allow-Origin * is a network error */
    if ((cfg->jwt_secret || cfg->auth_url || cfg->on_authorize) && cfg->cors_origin &&
        strcmp(cfg->cors_origin, "*") == 0)
        log_say(&srv->log, SSE_LOG_WARN,
                "cors *: no browser sends its cookie to another origin under *; to let a page's "
                "withCredentials carry it, name that origin");
    return 0;
}
#endif /* SSE_ENABLE_AUTH */

/* ==========================================================================================
 * 11. The public API (documented in sse.h)
 * ======================================================================================== */

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void
api_error(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* A copy of s, or NULL for NULL; *failed set when out of memory. */
static char *api_strdup(const char *s, bool *failed) {
    char *d = s ? strdup(s) : NULL;
    *failed = *failed || (s && !d);
    return d;
}

/* Splits "HOST:PORT", ":PORT" or "[V6]:PORT" into host (possibly empty) and port. */
static bool api_split_listen(const char *spec, char *host, size_t host_cap, char *port) {
    bool v6 = spec[0] == '[';
    const char *end = v6 ? strchr(spec, ']') : strrchr(spec, ':'); /* of the host */
    const char *colon = end && v6 ? end + 1 : end;
    size_t hlen = end ? (size_t)(end - spec - v6) : 0;
    if (!end || *colon != ':' || hlen >= host_cap || (!v6 && memchr(spec, ':', hlen)))
        return false;
    memcpy(host, spec + v6, hlen);
    host[hlen] = '\0';
    uint64_t p;
    size_t plen = strlen(colon + 1);
    if (plen > 5 || !parse_u64(colon + 1, plen, &p) || p > 65535)
        return false;
    memcpy(port, colon + 1, plen + 1);
    return true;
}

/* The address the listener fd is bound to, as sse_url() and X-Forwarded-Port give it. */
static void api_url(struct sse_server *srv, int fd) {
    struct sockaddr_storage sa = {0};
    socklen_t salen = sizeof sa;
    char addr[INET6_ADDRSTRLEN];
    getsockname(fd, (struct sockaddr *)&sa, &salen);
    srv->port = loop_addr(&sa, addr);
    snprintf(srv->url, sizeof srv->url,
             sa.ss_family == AF_INET6 ? "http://[%s]:%d/" : "http://%s:%d/", addr, srv->port);
}

/* A socket listening on ai, dual-stack when it is IPv6 and any (no host given); or -1 with
 * *failed set to the errno. */
static int api_socket(const struct addrinfo *ai, bool any, int *failed) {
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *failed = errno;
        return -1;
    }
    int one = 1, zero = 0;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ai->ai_family == AF_INET6 && any)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 65535) == 0)
        return fd;
    *failed = errno;
    close(fd);
    return -1;
}

/* Binds and listens (the only name lookup there will ever be happens here), registers the
 * listener with a new epoll instance and fills srv->url. Returns 0 or -1 with err filled. */
static int api_listen(struct sse_server *srv, const char *spec, char *err, size_t errlen) {
    char host[256], port[8];
    if (!api_split_listen(spec, host, sizeof host, port)) {
        api_error(err, errlen, "invalid listen address '%s': use HOST:PORT, :PORT or [IPV6]:PORT",
                  spec);
        return -1;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
    if (gai) {
        api_error(err, errlen, "cannot resolve '%s': %s", host, gai_strerror(gai));
        return -1;
    }
    /* Without a host, prefer one dual-stack IPv6 socket for all addresses, else IPv4. */
    int fd = -1, failed = 0;
    for (int pass = 0; pass < (host[0] ? 1 : 2) && fd < 0; pass++)
        for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next)
            if (host[0] || (pass == 0) == (ai->ai_family == AF_INET6))
                fd = api_socket(ai, !host[0], &failed);
    freeaddrinfo(res);
    if (fd < 0) {
        api_error(err, errlen, "cannot listen on %s: %s", spec, strerror(failed));
        return -1;
    }
    api_url(srv, fd);
    srv->listener = (struct handle){fd, loop_accept};
    srv->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (srv->epfd < 0 || loop_watch(srv, EPOLL_CTL_ADD, &srv->listener, EPOLLIN) < 0) {
        api_error(err, errlen, "%s: %s", srv->epfd < 0 ? "epoll_create1" : "epoll_ctl",
                  strerror(errno));
        return -1;
    }
    srv->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    return 0;
}

/* max_clients, or by default what is left once the over-limit answers, the relays' upstreams
 * and our own have descriptors; halved when a client may hold a second (an upstream, a file). */
static uint32_t api_max_clients(const struct sse_config *cfg) {
    if (cfg->max_clients)
        return (uint32_t)cfg->max_clients;
    struct rlimit rl;
    rlim_t n = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? rl.rlim_cur : 1024;
    rlim_t reserve = FD_RESERVE + (rlim_t)cfg->num_relays;
    rlim_t left = n > reserve ? n - reserve : 0;
    if (cfg->num_proxy_routes || cfg->static_root || cfg->auth_url)
        left /= 2;
    return left < 1 ? 1 : left > 10000000 ? 10000000 : (uint32_t)left;
}

/* Checks the stream path sp (splen bytes), the tokens and the CORS origin: NULL, or why not. */
static const char *api_check_strings(const struct sse_config *cfg, const char *sp, size_t splen) {
    if (splen < 2 || sp[0] != '/' || sp[splen - 1] == '/' || strpbrk(sp, "?#%") ||
        !strcmp(sp, "/publish") || !strcmp(sp, "/metrics") || !strcmp(sp, "/healthz"))
        return "stream path must look like /events (no trailing slash, not a reserved path)";
    for (size_t i = 0; i < splen; i++)
        if (sp[i] <= 0x20 || sp[i] >= 0x7F)
            return "stream path must be printable ASCII";
    if ((cfg->publish_token && !cfg->publish_token[0]) ||
        (cfg->subscribe_token && !cfg->subscribe_token[0]))
        return "tokens must not be empty";
    const char *cors = cfg->cors_origin ? cfg->cors_origin : "*";
    bool cors_ok = cors[0] && strlen(cors) <= 512;
    for (size_t i = 0; cors[i]; i++)
        cors_ok = cors_ok && cors[i] > 0x20 && cors[i] < 0x7F;
    return cors_ok ? NULL : "CORS origin must be * or an origin such as https://example.com";
}
/* The timers' durations and the ready-made blobs every stream shares; false out of memory. */
static bool api_prepare(struct sse_server *srv, const struct sse_config *cfg) {
    srv->timers[TIMER_REQUEST].duration = srv->header_timeout_ms;
    srv->timers[TIMER_SEND].duration = SEND_TIMEOUT_MS;
    srv->timers[TIMER_STREAM].duration = srv->heartbeat_ms ? srv->heartbeat_ms : NEVER_MS;
    srv->timers[TIMER_LINGER].duration = LINGER_MS;
    srv->timers[TIMER_PACED].duration =
        cfg->publish_wait_ms > 0 ? cfg->publish_wait_ms : SSE_DEFAULT_PUBLISH_WAIT_MS;
    srv->timers[TIMER_NEVER].duration = NEVER_MS;
    char retry[48];
    snprintf(retry, sizeof retry, "retry: %lld\n\n", (long long)srv->retry_ms);
    srv->heartbeat = blob_from(":\n", 2);
    srv->continue_100 = blob_from("HTTP/1.1 100 Continue\r\n\r\n", 25);
    srv->retry_line = srv->retry_ms ? blob_from(retry, strlen(retry)) : NULL;
    return srv->heartbeat && srv->continue_100 && (!srv->retry_ms || srv->retry_line);
}

/* Applies defaults and checks ranges, then api_prepare(). Returns NULL or what is wrong. */
static const char *api_configure(struct sse_server *srv, const struct sse_config *cfg) {
    if (cfg->backlog < SSE_OFF || cfg->heartbeat_ms < SSE_OFF || cfg->retry_ms < SSE_OFF ||
        cfg->max_clients < 0 || cfg->max_clients_per_ip < 0 || cfg->header_timeout_ms < 0)
        return "negative value in configuration";
    if (cfg->max_event_bytes > EVENT_BYTES_LIMIT)
        return "max_event_bytes is over 64 MiB";
    uint32_t backlog = cfg->backlog == SSE_OFF ? 0
                       : cfg->backlog          ? (uint32_t)cfg->backlog
                                               : SSE_DEFAULT_BACKLOG;
    int hb = cfg->heartbeat_ms;
    srv->heartbeat_ms = hb == SSE_OFF ? 0 : hb ? hb : SSE_DEFAULT_HEARTBEAT_MS;
    srv->retry_ms = cfg->retry_ms == SSE_OFF ? 0
                    : cfg->retry_ms          ? cfg->retry_ms
                                             : SSE_DEFAULT_RETRY_MS;
    if (cfg->position_event != 0 && cfg->position_event != SSE_OFF)
        return "invalid position_event: 0 (send it) or SSE_OFF";
    srv->position_event = cfg->position_event == 0;
    srv->header_timeout_ms =
        cfg->header_timeout_ms ? cfg->header_timeout_ms : SSE_DEFAULT_HEADER_TIMEOUT_MS;
    srv->client_buffer = cfg->client_buffer ? cfg->client_buffer : SSE_DEFAULT_CLIENT_BUFFER;
    srv->pace.high = cfg->pace_high_water ? cfg->pace_high_water : srv->client_buffer / 8;
    if (srv->pace.high >= srv->client_buffer)
        srv->pace.high = SIZE_MAX; /* flow control off: nobody ever lags */
    srv->pace.low = srv->pace.high / 4;
    srv->max_event_bytes =
        cfg->max_event_bytes ? cfg->max_event_bytes : SSE_DEFAULT_MAX_EVENT_BYTES;
    srv->max_per_ip = (uint32_t)cfg->max_clients_per_ip;
    srv->max_clients = api_max_clients(cfg);
    const char *sp = cfg->stream_path ? cfg->stream_path : SSE_DEFAULT_STREAM_PATH;
    size_t splen = strlen(sp);
    const char *why = api_check_strings(cfg, sp, splen);
    if (why)
        return why;
    bool failed = false;
    srv->stream_path = api_strdup(sp, &failed);
    srv->stream_path_len = splen;
    srv->publish_token = api_strdup(cfg->publish_token, &failed);
    srv->subscribe_token = api_strdup(cfg->subscribe_token, &failed);
    srv->index_page = cfg->index_page ? malloc(cfg->index_page_len + 1) : NULL;
    srv->index_page_len = srv->index_page ? cfg->index_page_len : 0;
    if (srv->index_page)
        memcpy(srv->index_page, cfg->index_page, cfg->index_page_len);
    char cors[1200] = "";
    if (cfg->cors_origin)
        snprintf(cors, sizeof cors, "Access-Control-Allow-Origin: %s\r\n%s", cfg->cors_origin,
                 strcmp(cfg->cors_origin, "*") ? "Access-Control-Allow-Credentials: true\r\n" : "");
    srv->cors_headers = api_strdup(cors, &failed);
    srv->backlog.ring = backlog ? calloc(backlog, sizeof *srv->backlog.ring) : NULL;
    srv->backlog.cap = srv->backlog.ring ? backlog : 0;
    srv->backlog.max_bytes = cfg->backlog_bytes ? cfg->backlog_bytes : SSE_DEFAULT_BACKLOG_BYTES;
    failed = failed || (cfg->index_page && !srv->index_page) || (backlog && !srv->backlog.ring);
    return failed || !api_prepare(srv, cfg) ? "out of memory" : NULL;
}

/* The static root: a directory descriptor to open beneath, and its real path. 0, or -1 with
 * err set. */
static int api_root(struct sse_server *srv, const char *root, char *err, size_t errlen) {
    srv->root_fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (srv->root_fd >= 0 && (srv->root_real = realpath(root, NULL)))
        return 0;
    api_error(err, errlen, "cannot serve '%s': %s", root, strerror(errno));
    return -1;
}

/* Plugs in what the parts add to HTTP, in the order their /metrics rows are listed. */
static void api_parts(struct sse_server *srv) {
    srv->timers[TIMER_CONNECT].duration = NEVER_MS; /* a part that connects sets these */
    srv->timers[TIMER_PART].duration = NEVER_MS;
#if SSE_ENABLE_JOURNAL
    part_add(srv, &part_journal, NULL);
#endif
#if SSE_ENABLE_REDIS
    part_add(srv, &part_redis, NULL);
#endif
}

/* The first id: the wall clock in microseconds, so a restarted server starts above every id
 * the previous run handed out unless that run averaged over a million events a second. The
 * random seeds (retry jitter, the hash tables) start from it. */
static void api_seed(struct sse_server *srv) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    srv->last_id = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
    srv->rng.state = srv->last_id ^ (uint64_t)(uintptr_t)srv ^ ((uint64_t)getpid() << 32);
    srv->topics.names.seed = (uint32_t)rng_next(&srv->rng);
    srv->per_ip.seed = (uint32_t)rng_next(&srv->rng);
}

/* Plugs in the history the configuration asks for, or refuses it: Redis with a journal, or
 * a part the build left out. 0, or -1 with err set. */
static int api_history(struct sse_server *srv, const struct sse_config *cfg, char *err,
                       size_t errlen) {
#if SSE_ENABLE_REDIS
    const char *why = cfg->redis && cfg->journal_path
                          ? "cannot be used with a journal: Redis keeps the history"
                          : NULL;
#else
    const char *why = cfg->redis ? "built without SSE_ENABLE_REDIS" : NULL;
#endif
    if (why) {
        api_error(err, errlen, "redis %s: %s", cfg->redis, why);
        return -1;
    }
#if SSE_ENABLE_JOURNAL
    why = cfg->journal_path ? api_journal(srv, cfg) : NULL;
#else
    (void)srv;
    why = cfg->journal_path ? "built without SSE_ENABLE_JOURNAL" : NULL;
#endif
    if (why)
        api_error(err, errlen, "journal %s: %s", cfg->journal_path, why);
    return why ? -1 : 0;
}

struct sse_server *sse_server_new(const struct sse_config *config, char *err, size_t errlen) {
    static const struct sse_config defaults;
    const struct sse_config *cfg = config ? config : &defaults;
    struct sse_server *srv = calloc(1, sizeof *srv);
    if (!srv) {
        api_error(err, errlen, "out of memory");
        return NULL;
    }
    srv->epfd = srv->listener.fd = srv->reserve_fd = srv->root_fd = -1;
    srv->log = (struct logger){cfg->on_log, cfg->user, &srv->log_depth};
    srv->on_request = cfg->on_request;
    srv->history = &history_backlog;
    api_parts(srv);
    const char *why = api_configure(srv, cfg);
    if (why) {
        api_error(err, errlen, "%s", why);
        goto fail;
    }
    if (cfg->static_root && api_root(srv, cfg->static_root, err, errlen) < 0)
        goto fail;
#if SSE_ENABLE_PROXY
    if (proxy_plug(srv, cfg, err, errlen) < 0)
        goto fail;
#else
    if (cfg->num_proxy_routes || cfg->num_relays) {
        api_error(err, errlen, "%s: built without SSE_ENABLE_PROXY",
                  cfg->num_proxy_routes ? "proxy" : "relay");
        goto fail;
    }
#endif
    api_seed(srv); /* before the history: the journal's events go into the topic table */
#if SSE_ENABLE_AUTH
    if (auth_plug(srv, cfg, err, errlen) < 0)
        goto fail;
#else
    if (cfg->jwt_secret || cfg->auth_url || cfg->on_authorize || cfg->num_public_topics) {
        api_error(err, errlen, "authorization: built without SSE_ENABLE_AUTH");
        goto fail;
    }
#endif
    if (api_history(srv, cfg, err, errlen) < 0 ||
        api_listen(srv, cfg->listen ? cfg->listen : SSE_DEFAULT_LISTEN, err, errlen) < 0)
        goto fail;
    loop_clock(srv);
#if SSE_ENABLE_REDIS
    if (cfg->redis && (why = api_redis(srv, cfg))) {
        api_error(err, errlen, "redis %s: %s", cfg->redis, why);
        goto fail;
    }
#endif
    return srv;
fail:
    sse_server_free(srv);
    return NULL;
}

void sse_server_free(struct sse_server *srv) {
    if (!srv)
        return;
    srv->busy = true; /* closing logs; on_log must not publish into what is being freed */
    loop_each_conn(srv, loop_close_conn);
    srv->flush_list = NULL;
    conn_reap(srv);
    while (srv->inputs)
        input_close(srv, srv->inputs);
    if (srv->history->free)
        srv->history->free(srv);
    for (size_t i = 0; i < srv->nparts; i++)
        if (srv->parts[i].ops->free)
            srv->parts[i].ops->free(srv);
    backlog_free(&srv->backlog);
    struct blob *blobs[] = {srv->stream_head, srv->retry_line, srv->heartbeat, srv->id_line,
                            srv->continue_100};
    for (size_t i = 0; i < sizeof blobs / sizeof blobs[0]; i++)
        blob_unref(blobs[i]);
    for (uint32_t i = 0; i < srv->topics.names.nbuckets; i++)
        for (struct hash_node *t = srv->topics.names.buckets[i], *next; t; t = next) {
            next = t->next; /* only retired topics remain: nothing else refers to them */
            free(t);
        }
    int fds[] = {srv->listener.fd, srv->reserve_fd, srv->root_fd, srv->epfd};
    for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    /* per_ip's entries went with the connections */
    void *owned[] = {srv->topics.names.buckets, srv->topics.retired, srv->per_ip.buckets,
                     srv->stream_path,          srv->index_page,     srv->publish_token,
                     srv->subscribe_token,      srv->cors_headers,   srv->root_real,
                     srv->ending.heap};
    for (size_t i = 0; i < sizeof owned / sizeof owned[0]; i++)
        free(owned[i]);
    free(srv);
}

const char *sse_url(const struct sse_server *srv) {
    return srv->url;
}

/* The checks of the calls that change the server: their arguments, then -EBUSY inside a
 * publish or a retire (from on_log) or while the server is being freed. */
static int api_enter(const struct sse_server *srv, bool args_ok) {
    return !srv || !args_ok ? -EINVAL : srv->busy ? -EBUSY : 0;
}

int sse_publish(struct sse_server *srv, const char *topic, const char *event, const char *data,
                size_t len, uint64_t *id_out) {
    int r = api_enter(srv, data || !len);
    if (!r && srv->pace.held)
        r = -EAGAIN; /* the subscribers are behind: flow control (section 6) */
    return r ? r
             : publish_event(srv, &(struct publish_in){topic, event, data, len, NULL, NULL},
                             id_out);
}

int sse_publish_ready(const struct sse_server *srv) {
    return pace_gate(srv) == PACE_OPEN;
}

int sse_retire_topic(struct sse_server *srv, const char *topic) {
    int r = api_enter(srv, topic != NULL);
    return r ? r : publish_retire(srv, topic);
}

int sse_respond(const struct sse_request *req, int status, const char *content_type,
                const char *body, size_t len) {
    struct host_request *impl = req->impl;
    const char *ct = content_type ? content_type : "text/plain; charset=utf-8";
    if (impl->answered || status < 200 || status > 599 || (len && !body) || !*ct ||
        strlen(ct) > 256 || strpbrk(ct, "\r\n"))
        return -EINVAL; /* a CR or LF would let the host's data write headers of its own */
    if (len > impl->srv->max_event_bytes)
        return -EMSGSIZE;
    bool head = bytes_eq(impl->req->method, impl->req->method_len, "HEAD");
    http_respond(impl->srv, impl->conn, status, NULL, &(struct http_body){ct, body, len, head});
    impl->answered = true;
    return 0;
}

/* sse_respond_stream()'s topics as the stream path holds them: valid names, each once, into
 * names and lens (SSE_MAX_TOPICS_PER_STREAM entries). The count, or -EINVAL. */
static int api_stream_topics(const char *const *topics, size_t n, const char **names,
                             size_t *lens) {
    if (!topics || n == 0 || n > SSE_MAX_TOPICS_PER_STREAM)
        return -EINVAL;
    int count = 0;
    for (size_t i = 0; i < n; i++) {
        const char *t = topics[i];
        size_t len = t ? strlen(t) : 0;
        if (!t || !wire_topic_valid(t, len))
            return -EINVAL;
        int j = 0;
        while (j < count && !(lens[j] == len && memcmp(names[j], t, len) == 0))
            j++;
        if (j == count) {
            names[count] = t;
            lens[count++] = len;
        }
    }
    return count;
}

int sse_respond_stream(const struct sse_request *req, const char *const *topics, size_t n,
                       const char *first, size_t len) {
    struct host_request *impl = req->impl;
    const char *names[SSE_MAX_TOPICS_PER_STREAM];
    size_t lens[SSE_MAX_TOPICS_PER_STREAM];
    int count = api_stream_topics(topics, n, names, lens);
    if (count < 0 || impl->answered || !bytes_eq(impl->req->method, impl->req->method_len, "GET"))
        return -EINVAL;
    if (len && (!first || !wire_utf8_valid(first, len) || !wire_ends_event(first, len)))
        return -EINVAL; /* a partial event would swallow the first bytes queued after it */
    if (len > impl->srv->max_event_bytes)
        return -EMSGSIZE;
    struct stream_start st = {NULL, 0, len ? blob_from(first, len) : NULL};
    if (len && !st.first)
        return -ENOMEM;
    struct sse_server *srv = impl->srv;
    struct conn *c = impl->conn;
    impl->answered = true;
    st.last = stream_last_id(impl->req, impl->query, &st.last_len);
    if (stream_admit(srv, c, names, lens, (size_t)count))
        stream_open(srv, c, names, lens, (size_t)count, &st);
    blob_unref(st.first);
    return c->state == CONN_DEAD ? -ENOMEM : 0;
}

int sse_request_header_at(const struct sse_request *req, size_t i, const char **name,
                          size_t *name_len, const char **value, size_t *value_len) {
    const struct host_request *impl = req->impl;
    if (i >= impl->req->num_headers)
        return -ENOENT;
    const struct http_header *h = &impl->req->headers[i];
    *name = h->name;
    *name_len = h->name_len;
    *value = h->value;
    *value_len = h->value_len;
    return 0;
}

const char *sse_request_peer(const struct sse_request *req) {
    struct host_request *impl = req->impl;
    if (!impl->peer[0])
        conn_peer(impl->conn, impl->peer, sizeof impl->peer);
    return impl->peer;
}

const char *sse_request_header(const struct sse_request *req, const char *name, size_t *len) {
    const struct host_request *impl = req->impl;
    const struct http_header *h = http_header(impl->req, name);
    *len = h ? h->value_len : 0;
    return h ? h->value : NULL;
}

const char *sse_request_param(const struct sse_request *req, const char *name, size_t *len) {
    const struct host_request *impl = req->impl;
    const struct http_param *p = http_query_get(impl->query, name);
    *len = p ? p->value_len : 0;
    return p ? p->value : NULL;
}

int sse_end_streams(struct sse_server *srv, const char *topic) {
    int r = api_enter(srv, topic != NULL);
    return r ? r : publish_end_streams(srv, topic);
}

int sse_publish_from_fd(struct sse_server *srv, int fd, enum sse_input_format format) {
    int r = api_enter(srv, fd >= 0 && (format == SSE_INPUT_LINES || format == SSE_INPUT_SSE));
    struct input *in = r ? NULL : calloc(1, sizeof *in);
    if (!in)
        return r ? r : -ENOMEM;
    in->h = (struct handle){fd, input_on_event};
    wire_reader_init(&in->reader, format, srv->max_event_bytes);
    in->polled = loop_watch(srv, EPOLL_CTL_ADD, &in->h, EPOLLIN) == 0;
    if (!in->polled && errno != EPERM) { /* EPERM: a regular file, read once an iteration */
        int e = errno;
        free(in);
        return -e;
    }
    in->next = srv->inputs;
    srv->inputs = in;
    return 0;
}
