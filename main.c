/*
 * main.c - the sse-server command-line program. It uses nothing but sse.h, and drives the
 * server from its own epoll loop (sse_fd + sse_next_timeout_ms + sse_poll), the way an
 * embedding host would, next to a signalfd for SIGTERM/SIGINT and a timerfd for --demo.
 */
#define _GNU_SOURCE
#include "sse.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define VERSION "0.1.0"

/* The built-in page, generated from examples/demo/index.html by the Makefile. */
extern const unsigned char demo_page[];
extern const size_t demo_page_len;

struct options {
    struct sse_config cfg;              /* what the library gets */
    bool read_stdin;                    /* --stdin */
    enum sse_input_format stdin_format; /* --stdin-format */
    bool demo;                          /* --demo */
    enum sse_log_level log_level;       /* highest level printed */
    struct sse_proxy_route *routes;     /* --proxy, argc entries */
    struct sse_relay *relays;           /* --relay, argc entries */
    const char **publics;               /* --public, argc entries */
    char *jwt_key;                      /* --jwt-secret-file's contents, or NULL */
};

/* ---- the options: one table drives getopt_long, the parsing and --help ----------------- */

struct opt;
/* Parses and stores one option's value: val (NULL for a switch; never empty: parse_options
 * refuses an empty value first). */
typedef void opt_store(struct options *o, const struct opt *op, const char *val);

/* One command-line option. */
struct opt {
    const char *name;   /* --NAME */
    const char *arg;    /* its value's name in --help; NULL = a switch that takes none */
    const char *help;   /* what it does, for --help, which wraps it */
    const char *dflt;   /* the default, for --help; NULL = nothing to say */
    opt_store *store;   /* parses the value into *o, or exits 2 with a usage error */
    size_t field;       /* offsetof(struct options, the field store sets); 0 = no field */
    long long min, max; /* numbers: the range accepted, before OPT_SECONDS */
    unsigned flags;     /* OPT_ below */
    const char *off;    /* the part's switch when this build was made without it, or NULL */
};

enum {
    OPT_SIZE = 1,     /* a number may end in k, m or g (powers of 1024) */
    OPT_SECONDS = 2,  /* a number of seconds, stored as milliseconds */
    OPT_ZERO_OFF = 4, /* 0 is stored as SSE_OFF */
    OPT_HIDDEN = 8,   /* left out of --help and the man page (--help-man) */
};

#if defined(__GNUC__)
__attribute__((format(printf, 1, 2)))
#endif
static _Noreturn void
die_usage(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("sse-server: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs(" (see --help)\n", stderr);
    va_end(ap);
    exit(2);
}

/* Writes n into buf as --help spells sizes: with the largest k, m or g suffix that divides
 * it exactly (67108864 is "64m"). */
static void size_text(char *buf, size_t cap, long long n) {
    static const char suffix[] = "gmk";
    for (int i = 0; i < 3; i++) {
        long long unit = 1LL << (30 - 10 * i);
        if (n >= unit && n % unit == 0) {
            snprintf(buf, cap, "%lld%c", n / unit, suffix[i]);
            return;
        }
    }
    snprintf(buf, cap, "%lld", n);
}

/* The usage error for a number out of op's range or not a number: says the whole rule, the
 * range as --help spells it, and its unit. */
static _Noreturn void die_number(const struct opt *op, const char *s) {
    if (op->flags & OPT_SIZE) {
        char lo[32], hi[32];
        size_text(lo, sizeof lo, op->min);
        size_text(hi, sizeof hi, op->max);
        die_usage("invalid value '%s' for --%s: expected a size from %s to %s (bytes, or with a "
                  "k, m or g suffix: powers of 1024)",
                  s, op->name, lo, hi);
    }
    const char *unit = !strcmp(op->arg, "SECONDS") ? " seconds"
                       : !strcmp(op->arg, "MS")    ? " milliseconds"
                                                   : "";
    die_usage("invalid value '%s' for --%s: expected a whole number from %lld to %lld%s", s,
              op->name, op->min, op->max, unit);
}

/* A whole number in op's [min, max]; with OPT_SIZE, an optional k/m/g suffix multiplies by
 * 1024^n. */
static long long parse_number(const struct opt *op, const char *s) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || errno || s[0] < '0' || s[0] > '9')
        die_number(op, s);
    if ((op->flags & OPT_SIZE) && *end) {
        int shift = *end == 'k' || *end == 'K'   ? 10
                    : *end == 'm' || *end == 'M' ? 20
                    : *end == 'g' || *end == 'G' ? 30
                                                 : -1;
        if (shift < 0 || end[1] || v > (op->max >> shift))
            die_number(op, s);
        v <<= shift;
        end++;
    }
    if (*end || v < op->min || v > op->max)
        die_number(op, s);
    return v;
}

/* The field of *o that op names. */
static void *opt_field(struct options *o, const struct opt *op) {
    return (char *)o + op->field;
}

/* A number as op's flags say: seconds become milliseconds, 0 may mean SSE_OFF. */
static long long opt_number(const struct opt *op, const char *val) {
    long long n = parse_number(op, val);
    if (n == 0 && (op->flags & OPT_ZERO_OFF))
        return SSE_OFF;
    return op->flags & OPT_SECONDS ? n * 1000 : n;
}

static void store_int(struct options *o, const struct opt *op, const char *val) {
    *(int *)opt_field(o, op) = (int)opt_number(op, val);
}

static void store_size(struct options *o, const struct opt *op, const char *val) {
    *(size_t *)opt_field(o, op) = (size_t)opt_number(op, val);
}

static void store_text(struct options *o, const struct opt *op, const char *val) {
    *(const char **)opt_field(o, op) = val;
}

static void store_true(struct options *o, const struct opt *op, const char *val) {
    (void)val;
    *(bool *)opt_field(o, op) = true;
}

static void store_off(struct options *o, const struct opt *op, const char *val) {
    (void)val;
    *(int *)opt_field(o, op) = SSE_OFF;
}

static void store_quiet(struct options *o, const struct opt *op, const char *val) {
    (void)op, (void)val;
    o->log_level = SSE_LOG_WARN;
}

static void store_verbose(struct options *o, const struct opt *op, const char *val) {
    (void)op, (void)val;
    o->log_level = SSE_LOG_DEBUG;
}

/* Checks the shape HOST:PORT, :PORT or [V6]:PORT so a typo is a usage error (exit 2). */
static void store_listen(struct options *o, const struct opt *op, const char *s) {
    const char *colon = s[0] == '[' ? strstr(s, "]:") : strrchr(s, ':');
    const char *port = colon ? colon + (s[0] == '[' ? 2 : 1) : NULL;
    if (!port || !*port || strspn(port, "0123456789") != strlen(port) || strlen(port) > 5 ||
        strtol(port, NULL, 10) > 65535)
        die_usage("invalid value '%s' for --listen: expected HOST:PORT, :PORT or [IPV6]:PORT", s);
    store_text(o, op, s);
}

/* True when s is printable ASCII without spaces: what a path, an origin or a URL may hold. */
static bool printable(const char *s) {
    for (; *s; s++)
        if (*s <= 0x20 || *s >= 0x7F)
            return false;
    return true;
}

/* The library's rules for a stream path (sse.h: stream_path), checked here so that a bad
 * one is a usage error (exit 2), not a failure to start (exit 1). */
static void store_stream(struct options *o, const struct opt *op, const char *val) {
    size_t n = strlen(val);
    if (val[0] != '/' || n < 2 || val[n - 1] == '/' || strpbrk(val, "?#%") || !printable(val))
        die_usage("invalid value '%s' for --%s: expected a path such as /events (printable "
                  "ASCII without ?, #, %% or a trailing /)",
                  val, op->name);
    if (!strcmp(val, "/publish") || !strcmp(val, "/metrics") || !strcmp(val, "/healthz"))
        die_usage("invalid value '%s' for --%s: %s is the server's own endpoint", val, op->name,
                  val);
    store_text(o, op, val);
}

/* The library's rule for the CORS origin: *, or an origin of printable ASCII. */
static void store_cors(struct options *o, const struct opt *op, const char *val) {
    if (strlen(val) > 512 || !printable(val))
        die_usage("invalid value '%s' for --%s: expected * or an origin such as "
                  "https://example.com (printable ASCII without spaces, at most 512 bytes)",
                  val, op->name);
    store_text(o, op, val);
}

static void store_redis(struct options *o, const struct opt *op, const char *val) {
    if (!strchr(val, ':'))
        die_usage("invalid value '%s' for --%s: expected HOST:PORT", val, op->name);
    store_text(o, op, val);
}

static void store_redis_stream(struct options *o, const struct opt *op, const char *val) {
    if (strlen(val) > 255)
        die_usage("invalid value '%s' for --%s: expected 1 to 255 bytes", val, op->name);
    store_text(o, op, val);
}

/* The index of val in names (n of them), or a usage error that lists them as expected. */
static int choose(const struct opt *op, const char *val, const char *const *names, int n,
                  const char *expected) {
    for (int i = 0; i < n; i++)
        if (!strcmp(val, names[i]))
            return i;
    die_usage("invalid value '%s' for --%s: expected %s", val, op->name, expected);
}

static void store_stdin_format(struct options *o, const struct opt *op, const char *val) {
    static const char *const names[] = {"lines", "sse"};
    static const enum sse_input_format values[] = {SSE_INPUT_LINES, SSE_INPUT_SSE};
    o->stdin_format = values[choose(op, val, names, 2, "lines or sse")];
}

static void store_journal_sync(struct options *o, const struct opt *op, const char *val) {
    static const char *const names[] = {"always", "batch", "none"};
    static const enum sse_journal_sync values[] = {SSE_JOURNAL_ALWAYS, SSE_JOURNAL_BATCH,
                                                   SSE_JOURNAL_NONE};
    o->cfg.journal_sync = values[choose(op, val, names, 3, "always, batch or none")];
}

/* Splits "LEFT=RIGHT": LEFT is a copy (argv stays as it was, for ps), RIGHT points into arg. */
static void split_pair(const char *arg, const char *opt, const char *shape, char **left,
                       const char **right) {
    const char *eq = strchr(arg, '=');
    if (!eq || eq == arg || !eq[1])
        die_usage("invalid value '%s' for --%s: expected %s", arg, opt, shape);
    if (!(*left = strndup(arg, (size_t)(eq - arg))))
        die_usage("out of memory%s", "");
    *right = eq + 1;
}

/* What is wrong with url as an upstream (http://HOST[:PORT][/PATH], the library's rule
 * before it resolves HOST), or NULL. Resolving is left to the library: a name that does not
 * resolve is a failure to start (exit 1), not a usage error. */
static const char *upstream_problem(const char *url) {
    if (!strncasecmp(url, "https://", 8))
        return "https upstreams are not supported, only plain http:// (reach an https-only "
               "upstream through a local proxy that ends TLS)";
    if (strncasecmp(url, "http://", 7) != 0)
        return "the URL must start with http://";
    const char *h = url + 7;
    const char *p = h[0] == '[' ? strchr(h, ']') : h + strcspn(h, ":/?#");
    if (!p || p == h || (h[0] == '[' && p == h + 1) || p - h > 255)
        return "the URL has no host";
    p += h[0] == '[';
    if (*p == ':') {
        size_t n = strspn(p + 1, "0123456789");
        long port = n && n <= 5 ? strtol(p + 1, NULL, 10) : 0;
        if (port < 1 || port > 65535)
            return "the URL's port must be 1 to 65535";
        p += 1 + n;
    }
    if (*p && *p != '/')
        return "the URL's path must start with /";
    if (!printable(p) || strchr(p, '#'))
        return "the URL's path must be printable ASCII without spaces or #";
    return NULL;
}

static void store_proxy(struct options *o, const struct opt *op, const char *val) {
    struct sse_proxy_route *r = &o->routes[o->cfg.num_proxy_routes++];
    char *prefix;
    const char *url, *why;
    split_pair(val, op->name, "PREFIX=http://HOST:PORT[/BASE]", &prefix, &url);
    if (prefix[0] != '/' || strpbrk(prefix, "?#%"))
        die_usage("invalid value '%s' for --proxy: PREFIX must be a path starting with /, such "
                  "as /api (without ?, # or %%)",
                  val);
    if ((why = upstream_problem(url)))
        die_usage("invalid value '%s' for --proxy: %s", val, why);
    r->prefix = prefix;
    r->upstream = url;
}

/* Topic names are [A-Za-z0-9._-]{1,64} (sse.h). */
static bool topic_valid(const char *s) {
    size_t n = strlen(s);
    return n >= 1 && n <= 64 &&
           strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n;
}

static void store_relay(struct options *o, const struct opt *op, const char *val) {
    struct sse_relay *r = &o->relays[o->cfg.num_relays++];
    char *topic;
    const char *url, *why;
    split_pair(val, op->name, "TOPIC=http://HOST:PORT/PATH", &topic, &url);
    if (!topic_valid(topic))
        die_usage("invalid value '%s' for --relay: TOPIC must be 1 to 64 of A-Z a-z 0-9 . _ -",
                  val);
    if ((why = upstream_problem(url)))
        die_usage("invalid value '%s' for --relay: %s", val, why);
    r->topic = topic;
    r->url = url;
}

/* A public topic (sse.h: public_topics): a topic name, *, or a prefix of one ending in *. */
static void store_public(struct options *o, const struct opt *op, const char *val) {
    size_t n = strlen(val), stem = n && val[n - 1] == '*' ? n - 1 : n;
    bool ok = stem <= 64 && (stem || n == 1);
    if (ok && stem) {
        char name[65];
        memcpy(name, val, stem);
        name[stem] = '\0';
        ok = topic_valid(name);
    }
    if (!ok)
        die_usage("invalid value '%s' for --%s: expected a topic name (1 to 64 of A-Z a-z 0-9 "
                  ". _ -), * (every topic) or a prefix ending in * (such as news-*)",
                  val, op->name);
    if (o->cfg.num_public_topics == 64)
        die_usage("too many --%s: at most 64 (a prefix ending in * covers many)", op->name);
    o->publics[o->cfg.num_public_topics++] = val;
}

/* The token key from a file, read once at start: the whole file but one trailing newline
 * (what `echo KEY > FILE` adds), which is not part of the key. */
static void store_jwt_secret_file(struct options *o, const struct opt *op, const char *val) {
    FILE *f = fopen(val, "rb");
    char *key = malloc(65537);
    size_t n = f && key ? fread(key, 1, 65537, f) : 0;
    bool failed = !f || !key || ferror(f);
    if (f)
        (void)fclose(f); /* read-only: nothing to lose */
    if (failed) {        /* not a usage error: exit 1, as for any file that cannot be opened */
        fprintf(stderr, "sse-server: cannot read --%s %s: %s\n", op->name, val,
                key ? strerror(errno) : "no memory");
        exit(1);
    }
    if (n > 65536)
        die_usage("invalid --%s %s: a key is at most 64 KiB", op->name, val);
    if (n && key[n - 1] == '\n')
        n -= n > 1 && key[n - 2] == '\r' ? 2 : 1;
    if (n == 0)
        die_usage("invalid --%s %s: the file holds no key", op->name, val);
    free(o->jwt_key);
    o->jwt_key = key;
    o->cfg.jwt_secret = key;
    o->cfg.jwt_secret_len = n;
}

static void store_jwt_secret(struct options *o, const struct opt *op, const char *val) {
    store_text(o, op, val);
    o->cfg.jwt_secret_len = 0; /* the last of --jwt-secret and --jwt-secret-file wins */
}

static void store_auth_url(struct options *o, const struct opt *op, const char *val) {
    const char *why = upstream_problem(val);
    if (why)
        die_usage("invalid value '%s' for --%s: %s", val, op->name, why);
    store_text(o, op, val);
}

static opt_store store_help, store_help_man, store_version; /* they print the table: defined
                                                            after it */

#define F(member)                offsetof(struct options, member)
#define INT(member, lo, hi, fl)  store_int, F(member), lo, hi, fl
#define SIZE(member, lo, hi, fl) store_size, F(member), lo, hi, fl
#define TEXT(member, fl)         store_text, F(member), 0, 0, fl
#define CALL(fn)                 fn, 0, 0, 0, 0
/* An option of a part: refused (exit 2) when this build was made without the part. */
#define PART(sw) ((sw) ? NULL : #sw)
#define PROXY    PART(SSE_ENABLE_PROXY)
#define JOURNAL  PART(SSE_ENABLE_JOURNAL)
#define REDIS    PART(SSE_ENABLE_REDIS)
#define AUTH     PART(SSE_ENABLE_AUTH)
#define GiB      (1LL << 30)
/* Defaults come from sse.h's SSE_DEFAULT_*, shown as they are, or as --help spells them in
 * seconds or k/m with an assertion that the two agree. */
#define SHOW_(x) #x
#define SHOW(x)  SHOW_(x)
_Static_assert(SSE_DEFAULT_BACKLOG_BYTES == 64 << 20, "--backlog-bytes shows 64m");
_Static_assert(SSE_DEFAULT_HEARTBEAT_MS == 15 * 1000, "--heartbeat shows 15");
_Static_assert(SSE_DEFAULT_CLIENT_BUFFER == 1 << 20, "--client-buffer shows 1m");
_Static_assert(SSE_DEFAULT_MAX_EVENT_BYTES == 1 << 20, "--max-event-bytes shows 1m");
_Static_assert(SSE_DEFAULT_HEADER_TIMEOUT_MS == 10 * 1000, "--header-timeout shows 10");
_Static_assert(SSE_DEFAULT_PROXY_CONNECT_MS == 5 * 1000, "--proxy-connect-timeout shows 5");
_Static_assert(SSE_DEFAULT_JOURNAL_MAX_BYTES == 64 << 20, "--journal-max-bytes shows 64m");

static const struct opt opts[] = {
    {"listen", "HOST:PORT",
     "address to listen on; :PORT for all addresses, [::1]:PORT for IPv6, port 0 for any free "
     "port",
     SSE_DEFAULT_LISTEN, store_listen, F(cfg.listen), 0, 0, 0, NULL},
    {"root", "DIR", "serve static files from DIR", "the built-in page at /",
     TEXT(cfg.static_root, 0), NULL},
    {"stream", "PATH", "EventSource endpoint prefix", SSE_DEFAULT_STREAM_PATH, store_stream,
     F(cfg.stream_path), 0, 0, 0, NULL},
    {"backlog", "N", "events kept for replay, all topics; 0 = none", SHOW(SSE_DEFAULT_BACKLOG),
     INT(cfg.backlog, 0, 100000000, OPT_ZERO_OFF), NULL},
    {"backlog-bytes", "BYTES",
     "and the bytes they may hold, counted as sent; the oldest go first when either bound is "
     "passed",
     "64m", SIZE(cfg.backlog_bytes, 1, 1024 * GiB, OPT_SIZE), NULL},
    {"heartbeat", "SECONDS", "comment line after this much silence; 0 = none", "15",
     INT(cfg.heartbeat_ms, 0, 86400, OPT_SECONDS | OPT_ZERO_OFF), NULL},
    {"retry", "MS", "retry: sent when a stream opens; 0 = none", SHOW(SSE_DEFAULT_RETRY_MS),
     INT(cfg.retry_ms, 0, 86400000, OPT_ZERO_OFF), NULL},
    {"no-position-event", NULL,
     "a stream with no last event id starts with a bare id: block (Chromium records it), not "
     "the event of type \"position\" that every client records",
     NULL, store_off, F(cfg.position_event), 0, 0, 0, NULL},
    {"publish-token", "TOKEN", "enable POST/DELETE /publish with Authorization: Bearer TOKEN",
     "$SSE_PUBLISH_TOKEN, else publishing over HTTP is off", TEXT(cfg.publish_token, 0), NULL},
    {"subscribe-token", "TOKEN",
     "require Authorization: Bearer TOKEN or ?token=TOKEN from subscribers",
     "$SSE_SUBSCRIBE_TOKEN, else none", TEXT(cfg.subscribe_token, 0), NULL},
    {"stdin", NULL, "publish each line of standard input as an event on topic \"default\"", "off",
     store_true, F(read_stdin), 0, 0, 0, NULL},
    {"stdin-format", "lines|sse",
     "sse: read blocks of topic:/event:/data: lines ended by a blank line", "lines",
     CALL(store_stdin_format), NULL},
    {"demo", NULL,
     "publish demo events on topics \"time\", \"stocks\" and \"news\", and end a page's stream "
     "on POST /demo/drop?topic=visitor-... (its Drop button)",
     "off", store_true, F(demo), 0, 0, 0, NULL},
    {"cors", "ORIGIN", "send Access-Control-Allow-Origin: ORIGIN (an origin or *)",
     "no CORS headers", store_cors, F(cfg.cors_origin), 0, 0, 0, NULL},
    {"max-clients", "N", "client connections served",
     "the open-file limit less a reserve; see README", INT(cfg.max_clients, 1, 10000000, 0), NULL},
    {"max-clients-per-ip", "N",
     "connections served per client address; more are told to come back, as when all client "
     "connections are taken; 0 = no limit",
     "0", INT(cfg.max_clients_per_ip, 0, 10000000, 0), NULL},
    {"client-buffer", "BYTES", "queued bytes at which a slow subscriber is dropped", "1m",
     SIZE(cfg.client_buffer, 1, 1024 * GiB, OPT_SIZE), NULL},
    {"pace-high-water", "BYTES",
     "flow control: a subscriber with more than this queued lags; while more than 1 in 10 "
     "lag, publishers wait (inputs are not read, HTTP publishes are held); at least the client "
     "buffer = no flow control",
     "client buffer / 8", SIZE(cfg.pace_high_water, 1, 1024 * GiB, OPT_SIZE), NULL},
    {"publish-wait", "MS",
     "how long an HTTP publish held by flow control waits for the subscribers before it is "
     "answered 503 with Retry-After (and not published)",
     SHOW(SSE_DEFAULT_PUBLISH_WAIT_MS), INT(cfg.publish_wait_ms, 1, 3600000, 0), NULL},
    {"max-event-bytes", "BYTES", "largest event payload, at most 64m", "1m",
     SIZE(cfg.max_event_bytes, 1, 64LL << 20, OPT_SIZE), NULL},
    {"header-timeout", "SECONDS", "deadline for a request head", "10",
     INT(cfg.header_timeout_ms, 1, 86400, OPT_SECONDS), NULL},
    {"proxy", "PREFIX=URL",
     "forward requests under PREFIX (a path such as /api) to URL (http://HOST:PORT[/BASE]: plain "
     "http, no https), streaming responses "
     "unbuffered; repeatable, longest prefix wins; HOST is resolved once at start",
     "none", CALL(store_proxy), PROXY},
    {"proxy-connect-timeout", "SECONDS", "connecting to an upstream", "5",
     INT(cfg.proxy_connect_timeout_ms, 1, 3600, OPT_SECONDS), PROXY},
    {"proxy-heartbeat", "SECONDS",
     "comment line between events of a proxied stream after this much upstream silence; "
     "0 = none",
     "0", INT(cfg.proxy_heartbeat_ms, 0, 86400, OPT_SECONDS), PROXY},
    {"relay", "TOPIC=URL",
     "follow the event stream at URL like an EventSource and republish its events on TOPIC; "
     "repeatable",
     "none", CALL(store_relay), PROXY},
    {"journal", "FILE",
     "append every event to FILE before acknowledging it, and replay FILE into the backlog at "
     "start",
     "none", TEXT(cfg.journal_path, 0), JOURNAL},
    {"journal-sync", "always|batch|none",
     "fdatasync before every acknowledgement, at most 1 s after a write, or never", "batch",
     CALL(store_journal_sync), JOURNAL},
    {"journal-max-bytes", "BYTES",
     "rewrite the journal with just the backlog beyond this; the file stays under this or "
     "twice the backlog's bytes, whichever is larger, plus one event",
     "64m", SIZE(cfg.journal_max_bytes, 4096, 1024 * GiB, OPT_SIZE), JOURNAL},
    {"redis", "HOST:PORT",
     "be one node of a hub sharing one event history through a Redis stream: publish with "
     "XADD, deliver what XREAD brings, ids are the stream's",
     "none", store_redis, F(cfg.redis), 0, 0, 0, REDIS},
    {"redis-stream", "KEY", "the stream", SSE_DEFAULT_REDIS_STREAM, store_redis_stream,
     F(cfg.redis_stream), 0, 0, 0, REDIS},
    {"redis-password", "PASSWORD", "AUTH with it", "$SSE_REDIS_PASSWORD, else none",
     TEXT(cfg.redis_password, 0), REDIS},
    {"redis-maxlen", "N", "entries Redis keeps, XADD MAXLEN ~ N", SHOW(SSE_DEFAULT_REDIS_MAXLEN),
     SIZE(cfg.redis_maxlen, 1, 1024 * GiB, 0), REDIS},
    {"jwt-secret", "KEY",
     "subscribers (and publishers) present signed tokens (JWT, HS256, checked with KEY) that "
     "list the topics they may hear; KEY shows in ps: prefer --jwt-secret-file",
     "$SSE_JWT_SECRET, else no tokens", store_jwt_secret, F(cfg.jwt_secret), 0, 0, 0, AUTH},
    {"jwt-secret-file", "FILE",
     "the same, with the key read from FILE (one trailing newline "
     "is not part of it)",
     "none", CALL(store_jwt_secret_file), AUTH},
    {"jwt-cookie", "NAME",
     "the cookie a token may come in (besides Authorization: Bearer and "
     "?access_token=)",
     SSE_DEFAULT_JWT_COOKIE, TEXT(cfg.jwt_cookie, 0), AUTH},
    {"jwt-audience", "AUD", "a token's aud claim must name AUD", "aud not checked",
     TEXT(cfg.jwt_audience, 0), AUTH},
    {"public", "TOPIC",
     "anyone may hear TOPIC without a token or asking (a name, * or a prefix ending in *); "
     "repeatable",
     "none", CALL(store_public), AUTH},
    {"auth-url", "URL",
     "ask the application at URL (http://HOST:PORT/PATH) before a stream starts: a GET with "
     "the client's Cookie, Authorization and the topics (X-SSE-Topics); 2xx allows, 401 and 403 "
     "refuse",
     "none", store_auth_url, F(cfg.auth_url), 0, 0, 0, AUTH},
    {"auth-cache", "SECONDS",
     "reuse the application's allow or deny for the same Cookie, Authorization and topics; "
     "0 = ask every time",
     "0", INT(cfg.auth_cache_ms, 0, 86400, OPT_SECONDS), AUTH},
    {"quiet", NULL, "log only warnings and errors", NULL, CALL(store_quiet), NULL},
    {"verbose", NULL, "also log every connection opened and closed", NULL, CALL(store_verbose),
     NULL},
    {"help", NULL, "show this help and exit", NULL, CALL(store_help), NULL},
    {"version", NULL, "show the version and exit", NULL, CALL(store_version), NULL},
    {"help-man", NULL, "print the man page (roff) and exit", NULL, store_help_man, 0, 0, 0,
     OPT_HIDDEN, NULL},
};
#define NUM_OPTS (sizeof opts / sizeof opts[0])
#define OPT_CODE 256 /* getopt_long returns OPT_CODE + the option's index in opts */

#define HELP_COLUMN 28 /* where --help's descriptions start */
#define HELP_WIDTH  92 /* and the column no line of it passes */

/* The text around the option table, shared by --help and the man page (--help-man) so the
 * two say the same. */
static const char about[] =
    "A Server-Sent Events server: an EventSource endpoint with topics, replay and heartbeats.";
static const char notes[] = "BYTES accept a k, m or g suffix (powers of 1024).\n"
                            "Endpoints: GET /events[/TOPIC][?topic=A&topic=B],\n"
                            "POST|DELETE /publish?topic=T&event=E, GET /metrics, GET /healthz.\n";

/* The exit statuses, for --help's and the man page's last part. */
static const struct {
    const char *code; /* the status */
    const char *when; /* when the program exits with it */
} exit_codes[] = {
    {"0", "stopped by SIGTERM or SIGINT (open streams are drained first), or --help, --version"},
    {"1", "the server could not start or failed while running: the address is in use, a file "
          "or directory cannot be opened, an upstream or Redis host does not resolve, standard "
          "input cannot be read"},
    {"2", "a usage error: an unknown option, a missing, empty or bad value, or options that "
          "cannot go together; the message names the option and the rule"},
};

/* The commands people run most, for --help's Examples and the man page's EXAMPLES; each a
 * real command line (tests/test_cli.py runs them). */
static const struct {
    const char *what;     /* what it shows */
    const char *commands; /* one or more command lines, each ended by \n */
} examples[] = {
    {"the demo page, at http://127.0.0.1:8080/", "sse-server --demo\n"},
    {"publish over HTTP: the server, a reader of topic news, an event (three shells)",
     "sse-server --publish-token secret\n"
     "curl -N http://127.0.0.1:8080/events/news\n"
     "curl -d hello -H 'Authorization: Bearer secret' "
     "'http://127.0.0.1:8080/publish?topic=news'\n"},
    {"each new line of app.log as an event on topic default",
     "tail -F app.log | sse-server --stdin\n"},
    {"/api/... forwarded to the application on port 3000, its streams unbuffered",
     "sse-server --proxy /api=http://127.0.0.1:3000\n"},
    {"events kept in a journal file before they are acknowledged, replayed at start",
     "sse-server --publish-token secret --journal events.journal\n"},
};

/* Prints text from column col on, breaking lines at spaces before HELP_WIDTH and indenting
 * the next to column indent; "(default:" stays with the word after it. */
static void help_wrap(const char *text, int col, int indent) {
    bool line_start = true;
    for (const char *p = text; *p;) {
        size_t n = strcspn(p, " ");
        if (n == 9 && !strncmp(p, "(default:", 9) && p[n])
            n += 1 + strcspn(p + n + 1, " ");
        if (!line_start && col + 1 + (int)n > HELP_WIDTH) {
            printf("\n%*s", indent, "");
            col = indent;
            line_start = true;
        }
        if (!line_start)
            col += putchar(' ') != EOF;
        col += (int)fwrite(p, 1, n, stdout);
        line_start = false;
        p += n;
        p += strspn(p, " ");
    }
    putchar('\n');
}

/* Writes op's description as --help and the man page show it: its help, its default, and
 * whether this build has it. */
static void opt_text(const struct opt *p, char *text, size_t cap) {
    snprintf(text, cap, "%s%s%s%s%s%s%s", p->help, p->dflt ? " (default: " : "",
             p->dflt ? p->dflt : "", p->dflt ? ")" : "",
             p->off ? " (not in this build: built without " : "", p->off ? p->off : "",
             p->off ? ")" : "");
}

static void store_help(struct options *o, const struct opt *op, const char *val) {
    (void)o, (void)op, (void)val;
    printf("Usage: sse-server [options]\n%s\n\n", about);
    for (size_t i = 0; i < NUM_OPTS; i++) {
        const struct opt *p = &opts[i];
        char head[64], text[512];
        if (p->flags & OPT_HIDDEN)
            continue;
        snprintf(head, sizeof head, "--%s%s%s", p->name, p->arg ? " " : "", p->arg ? p->arg : "");
        opt_text(p, text, sizeof text);
        help_wrap(text, printf("  %-*s  ", HELP_COLUMN - 4, head), HELP_COLUMN);
    }
    printf("\n%s", notes);
    fputs("\nExit status:\n", stdout);
    for (size_t i = 0; i < sizeof exit_codes / sizeof exit_codes[0]; i++)
        help_wrap(exit_codes[i].when, printf("  %s  ", exit_codes[i].code), 5);
    fputs("\nExamples:\n", stdout);
    for (size_t i = 0; i < sizeof examples / sizeof examples[0]; i++) {
        printf("  # %s\n", examples[i].what);
        for (const char *c = examples[i].commands; *c; c += strcspn(c, "\n") + 1)
            printf("  %.*s\n", (int)strcspn(c, "\n"), c);
    }
    exit(0);
}

/* Prints n bytes of s as roff text: backslashes and hyphens escaped, and a line that would
 * start with a control character (. or ') made plain text. */
static void roff_text(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if ((i == 0 || s[i - 1] == '\n') && (s[i] == '.' || s[i] == '\''))
            fputs("\\&", stdout);
        if (s[i] == '\\')
            fputs("\\e", stdout);
        else if (s[i] == '-')
            fputs("\\-", stdout);
        else
            putchar(s[i]);
    }
}

static void roff_line(const char *s) {
    roff_text(s, strlen(s));
    putchar('\n');
}

/* --help-man: the man page, sse-server.1, in roff, from the same table and texts as --help
 * (the Makefile's build/sse-server.1 is this output). */
static void store_help_man(struct options *o, const struct opt *op, const char *val) {
    (void)o, (void)op, (void)val;
    printf(".TH SSE-SERVER 1 \"\" \"sse-server %s\" \"User Commands\"\n.nh\n.ad l\n"
           ".SH NAME\nsse-server \\- a Server-Sent Events server\n"
           ".SH SYNOPSIS\n.B sse-server\n[\\fIoptions\\fR]\n.SH DESCRIPTION\n",
           VERSION);
    roff_line(about);
    fputs(".PP\n.nf\n", stdout);
    roff_text(notes, strlen(notes));
    fputs(".fi\n", stdout);
    fputs(".SH OPTIONS\n", stdout);
    for (size_t i = 0; i < NUM_OPTS; i++) {
        const struct opt *p = &opts[i];
        char text[512];
        if (p->flags & OPT_HIDDEN)
            continue;
        fputs(".TP\n\\fB", stdout);
        roff_text("--", 2);
        roff_text(p->name, strlen(p->name));
        fputs("\\fR", stdout);
        if (p->arg) {
            fputs(" \\fI", stdout);
            roff_text(p->arg, strlen(p->arg));
            fputs("\\fR", stdout);
        }
        putchar('\n');
        opt_text(p, text, sizeof text);
        roff_line(text);
    }
    fputs(".SH EXIT STATUS\n", stdout);
    for (size_t i = 0; i < sizeof exit_codes / sizeof exit_codes[0]; i++) {
        printf(".TP\n.B %s\n", exit_codes[i].code);
        roff_line(exit_codes[i].when);
    }
    fputs(".SH EXAMPLES\n", stdout);
    for (size_t i = 0; i < sizeof examples / sizeof examples[0]; i++) {
        fputs(".PP\n", stdout);
        roff_line(examples[i].what);
        fputs(".PP\n.RS\n.nf\n", stdout);
        roff_text(examples[i].commands, strlen(examples[i].commands));
        fputs(".fi\n.RE\n", stdout);
    }
    fputs(".SH SEE ALSO\n.BR curl (1),\n.BR systemd.service (5),\n.BR nginx (8)\n.PP\n"
          "README.md (the manual) and docs/ (the protocol, deployment, reliability) in the "
          "source tree\n",
          stdout);
    exit(0);
}

static void store_version(struct options *o, const struct opt *op, const char *val) {
    (void)o, (void)op, (void)val;
    printf("sse-server %s\n", VERSION);
    exit(0);
}

/* Tokens on the command line show in every local user's `ps`; the environment does not (a
 * systemd EnvironmentFile, say). The option wins when both are given. */
static void options_from_env(struct options *o) {
    static const struct {
        const char *var; /* the environment variable */
        size_t field;    /* offsetof(struct options, the field it fills when still unset) */
    } vars[] = {
        {"SSE_PUBLISH_TOKEN", F(cfg.publish_token)},
        {"SSE_SUBSCRIBE_TOKEN", F(cfg.subscribe_token)},
        {"SSE_REDIS_PASSWORD", F(cfg.redis_password)},
#if SSE_ENABLE_AUTH
        {"SSE_JWT_SECRET", F(cfg.jwt_secret)},
#endif
    };
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char **field = (const char **)((char *)o + vars[i].field);
        const char *env = getenv(vars[i].var);
        if (!*field && env && env[0])
            *field = env;
    }
}

static void parse_options(int argc, char **argv, struct options *o) {
    struct option longopts[NUM_OPTS + 1];
    for (size_t i = 0; i < NUM_OPTS; i++)
        longopts[i] = (struct option){opts[i].name, opts[i].arg ? required_argument : no_argument,
                                      NULL, OPT_CODE + (int)i};
    longopts[NUM_OPTS] = (struct option){NULL, 0, NULL, 0};
    memset(o, 0, sizeof *o);
    o->log_level = SSE_LOG_INFO;
    o->routes = calloc((size_t)argc, sizeof *o->routes);
    o->relays = calloc((size_t)argc, sizeof *o->relays);
    o->publics = calloc((size_t)argc, sizeof *o->publics);
    o->cfg.public_topics = o->publics;
    if (!o->routes || !o->relays || !o->publics)
        die_usage("out of memory%s", "");
    o->cfg.proxy_routes = o->routes;
    o->cfg.relays = o->relays;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        const char *given = optind > 1 ? argv[optind - 1] : "";
        if (c == 'h')
            store_help(o, NULL, NULL);
        if (c == ':')
            die_usage("option '%s' needs a value", given);
        if (c < OPT_CODE || c >= OPT_CODE + (int)NUM_OPTS)
            die_usage("unknown option '%s'", given);
        const struct opt *op = &opts[c - OPT_CODE];
        if (op->off)
            die_usage("--%s: built without %s", op->name, op->off);
        if (op->arg && !optarg[0])
            die_usage("empty value for --%s", op->name);
        op->store(o, op, optarg);
    }
    if (optind < argc)
        die_usage("unexpected argument '%s'", argv[optind]);
    if (o->cfg.redis && o->cfg.journal_path)
        die_usage("--redis cannot be used with --journal: Redis keeps the history");
    options_from_env(o);
}

static void on_log(enum sse_log_level level, const char *msg, void *user) {
    const struct options *o = user;
    if (level <= o->log_level)
        fprintf(stderr, "sse-server: %s\n", msg);
}

/* Many subscribers need many descriptors: take everything the hard limit allows. */
static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* ---- --demo: the seed article's stock widgets and the API7 article's clock ------------- */

struct demo {
    uint64_t rng;       /* xorshift state */
    time_t last_second; /* last second a time event went out */
    double price[10];   /* current quote per symbol */
    double first[10];   /* each symbol's first quote, for the headlines */
};

static const char *const demo_symbols[10] = {"ACME",  "GLOBX", "INITECH", "UMBRL", "HOOLI",
                                             "STARK", "WAYNE", "CYBER",   "OCP",   "TYREL"};

static uint64_t demo_rand(struct demo *d) {
    d->rng ^= d->rng << 13;
    d->rng ^= d->rng >> 7;
    d->rng ^= d->rng << 17;
    return d->rng;
}

static void demo_init(struct demo *d) {
    d->rng = (uint64_t)time(NULL) * 2654435761u | 1;
    for (int i = 0; i < 10; i++)
        d->first[i] = d->price[i] = 20.0 + (double)(demo_rand(d) % 40000) / 100.0;
}

/* Called four times a second: on three ticks in eight a quote on "stocks" (1.5 a second, slow
 * enough that the demo page's replay after a drop can be read), the time on "time" once a
 * second, and every five seconds a headline of two lines (two data: lines) on "news". */
static void demo_tick(struct sse_server *srv, struct demo *d) {
    char buf[160];
    time_t now = time(NULL);
    if (now != d->last_second) {
        struct tm tm;
        gmtime_r(&now, &tm);
        size_t n = strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
        sse_publish(srv, "time", "time", buf, n, NULL);
        d->last_second = now;
        if (now % 5 == 0) {
            char line[160];
            int i = (int)(demo_rand(d) % 10);
            double pct = (d->price[i] / d->first[i] - 1.0) * 100.0;
            int m = snprintf(line, sizeof line,
                             "%s %s %.2f%% since the demo started\n"
                             "last trade %.2f at %.8s UTC",
                             demo_symbols[i], pct < 0 ? "down" : "up", pct < 0 ? -pct : pct,
                             d->price[i], buf + 11);
            sse_publish(srv, "news", "headline", line, (size_t)m, NULL);
        }
    }
    if (demo_rand(d) % 8 < 3) {
        int i = (int)(demo_rand(d) % 10);
        double old = d->price[i];
        double step = ((double)(demo_rand(d) % 2001) - 1000.0) / 100000.0; /* up to 1% */
        double price = old * (1.0 + step);
        if (price < 1.0)
            price = 1.0;
        d->price[i] = price;
        int n = snprintf(buf, sizeof buf, "{\"symbol\":\"%s\",\"price\":%.2f,\"change\":%.2f}",
                         demo_symbols[i], price, price - old);
        sse_publish(srv, "stocks", "quote", buf, (size_t)n, NULL);
    }
}

/* Copies s[0..n) to out (when out is not NULL) with every byte that is neither printable
 * ASCII nor a tab spelt \xHH, so any header shows as text; returns the bytes it takes. */
static size_t demo_escape(char *out, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char b = (unsigned char)s[i];
        bool plain = (b >= 0x20 && b < 0x7f) || b == '\t';
        if (out && plain) {
            out[len] = (char)b;
        } else if (out) {
            out[len] = '\\';
            out[len + 1] = 'x';
            out[len + 2] = hex[b >> 4];
            out[len + 3] = hex[b & 15];
        }
        len += plain ? 1 : 4;
    }
    return len;
}

/* The request as received, one line each: "METHOD PATH VERSION", then every header field in
 * order, "Name: value". Written to out when it is not NULL; returns its length. */
static size_t demo_request_text(const struct sse_request *req, char *out) {
    size_t len = demo_escape(out, req->method, strlen(req->method));
    len += demo_escape(out ? out + len : NULL, " ", 1);
    len += demo_escape(out ? out + len : NULL, req->path, strlen(req->path));
    len += demo_escape(out ? out + len : NULL, " ", 1);
    len += demo_escape(out ? out + len : NULL, req->version, strlen(req->version));
    const char *name, *value;
    size_t name_len, value_len;
    for (size_t i = 0; sse_request_header_at(req, i, &name, &name_len, &value, &value_len) == 0;
         i++) {
        if (out)
            out[len] = '\n';
        len++;
        len += demo_escape(out ? out + len : NULL, name, name_len);
        len += demo_escape(out ? out + len : NULL, ": ", 2);
        len += demo_escape(out ? out + len : NULL, value, value_len);
    }
    return len;
}

/* GET /.sse, the API7 article's demo stream: each subscriber first gets an event `server`
 * (who answered: this program, its host and its address) and an event `request` (the
 * request as it arrived here, so the X-Forwarded-* headers a proxy added show), both its
 * own and without an id, then the shared `time` ticks of topic "time", one a second. */
static int demo_seed_stream(struct sse_server *srv, const struct sse_request *req) {
    static const char *const topics[] = {"time"};
    char host[256] = "unknown", who[512];
    gethostname(host, sizeof host - 1);
    size_t who_len = (size_t)snprintf(who, sizeof who, "sse-server %s on host %s, listening on %s",
                                      VERSION, host, sse_url(srv));
    size_t text_len = demo_request_text(req, NULL);
    char *text = malloc(text_len);
    if (text)
        demo_request_text(req, text);
    size_t a = sse_format_event(NULL, 0, 0, "server", who, who_len);
    size_t b = text ? sse_format_event(NULL, 0, 0, "request", text, text_len) : 0;
    char *first = text ? malloc(a + b) : NULL;
    int r = -ENOMEM;
    if (first) {
        sse_format_event(first, a, 0, "server", who, who_len);
        sse_format_event(first + a, b, 0, "request", text, text_len);
        r = sse_respond_stream(req, topics, 1, first, a + b);
    }
    if (r < 0) {
        char msg[128];
        int n = snprintf(msg, sizeof msg, "cannot open the stream: %s\n", strerror(-r));
        sse_respond(req, 500, NULL, msg, (size_t)n);
    }
    free(text);
    free(first);
    return 1;
}

/* The demo page's Drop button: POST /demo/drop?topic=visitor-... ends the streams of that
 * page's own topic (every page subscribes to one with a random name, so a visitor can end
 * only their own stream), and the browser reconnects by itself after retry, sending
 * Last-Event-ID. GET /.sse is the article's stream (above). Every other request goes to the
 * built-in routes. */
static int demo_route(struct sse_server *srv, const struct sse_request *req, void *user) {
    const struct options *o = user;
    static const char prefix[] = "visitor-";
    if (o->demo && strcmp(req->path, "/.sse") == 0 && strcmp(req->method, "GET") == 0)
        return demo_seed_stream(srv, req);
    if (!o->demo || strcmp(req->path, "/demo/drop") != 0 || strcmp(req->method, "POST") != 0)
        return 0;
    size_t len;
    const char *topic = sse_request_param(req, "topic", &len);
    char name[65];
    int ended = -EINVAL;
    if (topic && len < sizeof name && len > sizeof prefix - 1 &&
        memcmp(topic, prefix, sizeof prefix - 1) == 0) {
        memcpy(name, topic, len);
        name[len] = '\0';
        ended = sse_end_streams(srv, name);
    }
    if (ended < 0) {
        static const char bad[] = "topic must be the page's own visitor-... topic\n";
        sse_respond(req, 400, NULL, bad, sizeof bad - 1);
    } else {
        char body[64];
        int n = snprintf(body, sizeof body, "{\"ended\": %d}\n", ended);
        sse_respond(req, 200, "application/json", body, (size_t)n);
    }
    return 1;
}

/* ---- the loop -------------------------------------------------------------------------- */

static int watch(int ep, int fd) {
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

/* Drives the server from this program's own epoll loop, next to the signal descriptor and
 * the demo timer, until the server has stopped. Returns the exit status. */
static int run(struct sse_server *srv, const struct options *o, int sigfd) {
    int ep = epoll_create1(EPOLL_CLOEXEC), tfd = -1, status = 0;
    struct demo demo = {0};
    if (ep < 0 || sigfd < 0 || watch(ep, sse_fd(srv)) < 0 || watch(ep, sigfd) < 0) {
        fprintf(stderr, "sse-server: cannot set up the event loop: %s\n", strerror(errno));
        status = 1;
    } else if (o->read_stdin) {
        int r = sse_publish_from_fd(srv, STDIN_FILENO, o->stdin_format);
        if (r < 0) {
            fprintf(stderr, "sse-server: cannot read standard input: %s\n", strerror(-r));
            status = 1;
        }
    }
    if (!status && o->demo) {
        demo_init(&demo);
        struct itimerspec every = {{0, 250000000}, {0, 1000000}};
        tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
        if (tfd < 0 || timerfd_settime(tfd, 0, &every, NULL) < 0 || watch(ep, tfd) < 0) {
            fprintf(stderr, "sse-server: cannot start the demo timer: %s\n", strerror(errno));
            status = 1;
        }
    }
    while (!status) {
        struct epoll_event evs[4];
        int n = epoll_wait(ep, evs, 4, sse_next_timeout_ms(srv));
        for (int i = 0; i < n; i++) {
            if (evs[i].data.fd == sigfd) {
                struct signalfd_siginfo si;
                if (read(sigfd, &si, sizeof si) == (ssize_t)sizeof si)
                    sse_stop(srv);
            } else if (evs[i].data.fd == tfd) {
                uint64_t expirations;
                if (read(tfd, &expirations, sizeof expirations) > 0)
                    demo_tick(srv, &demo);
            }
        }
        int r = sse_poll(srv, 0);
        if (r < 0) {
            fprintf(stderr, "sse-server: event loop failed: %s\n", strerror(-r));
            status = 1;
        }
        if (r == 0)
            break;
    }
    if (tfd >= 0)
        close(tfd);
    if (ep >= 0)
        close(ep);
    return status;
}

int main(int argc, char **argv) {
    struct options o;
    parse_options(argc, argv, &o);
    raise_nofile();
    o.cfg.on_log = on_log;
    o.cfg.on_request = o.demo ? demo_route : NULL;
    o.cfg.user = &o;
    if (!o.cfg.static_root) {
        o.cfg.index_page = (const char *)demo_page;
        o.cfg.index_page_len = demo_page_len;
    }

    /* Signals arrive as readable bytes on a descriptor, handled inside the loop. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigprocmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN); /* over a file size limit the journal's write fails: 503 */
    int sigfd = signalfd(-1, &sigs, SFD_CLOEXEC);

    char err[256];
    int status = 1;
    struct sse_server *srv = sse_server_new(&o.cfg, err, sizeof err);
    if (!srv) {
        fprintf(stderr, "sse-server: %s\n", err);
    } else {
        fprintf(stderr, "sse-server: listening on %s\n", sse_url(srv));
        status = run(srv, &o, sigfd);
        sse_server_free(srv);
    }
    for (size_t i = 0; i < o.cfg.num_proxy_routes; i++)
        free((char *)o.routes[i].prefix);
    for (size_t i = 0; i < o.cfg.num_relays; i++)
        free((char *)o.relays[i].topic);
    free(o.routes);
    free(o.relays);
    free(o.publics);
    free(o.jwt_key);
    return status;
}
