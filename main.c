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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* In parts: C11 compilers need only take string literals of 4095 bytes. */
static const char *const usage[] = {
    "Usage: sse-server [options]\n"
    "A Server-Sent Events server: an EventSource endpoint with topics, replay and heartbeats.\n"
    "\n"
    "  --listen HOST:PORT        address to listen on (default 127.0.0.1:8080; :PORT for all\n"
    "                            addresses, [::1]:PORT for IPv6, port 0 for any free port)\n"
    "  --root DIR                serve static files from DIR (default: the built-in demo\n"
    "                            page at /)\n"
    "  --stream PATH             EventSource endpoint prefix (default /events)\n"
    "  --backlog N               events kept for replay, all topics (default 1024; 0 = none)\n"
    "  --backlog-bytes BYTES     and the bytes they may hold, counted as sent; the oldest\n"
    "                            go first when either bound is passed (default 64m)\n"
    "  --heartbeat SECONDS       comment line after this much silence (default 15; 0 = none)\n"
    "  --retry MS                retry: sent when a stream opens (default 3000; 0 = none)\n"
    "  --no-position-event       a stream with no last event id starts with a bare id:\n"
    "                            block (Chromium records it), not the event of type\n"
    "                            \"position\" that every client records\n"
    "  --publish-token TOKEN     enable POST/DELETE /publish with Authorization: Bearer TOKEN\n"
    "                            (default: $SSE_PUBLISH_TOKEN, else publishing over HTTP is\n"
    "                            off)\n"
    "  --subscribe-token TOKEN   require Authorization: Bearer TOKEN or ?token=TOKEN from\n"
    "                            subscribers (default: $SSE_SUBSCRIBE_TOKEN, else none)\n"
    "  --stdin                   publish each line of standard input as an event on topic\n"
    "                            \"default\" (default: off)\n"
    "  --stdin-format lines|sse  sse: read blocks of topic:/event:/data: lines ended by a\n"
    "                            blank line (default lines)\n"
    "  --demo                    publish demo events on topics \"time\", \"stocks\" and\n"
    "                            \"news\", and end a page's stream on POST\n"
    "                            /demo/drop?topic=visitor-... (its Drop button) (default: off)\n"
    "  --cors ORIGIN             send Access-Control-Allow-Origin: ORIGIN (an origin or *)\n"
    "                            (default: no CORS headers)\n"
    "  --max-clients N           client connections served (default: the open-file limit\n"
    "                            less a reserve; see README)\n"
    "  --max-clients-per-ip N    connections served per client address; more are told to\n"
    "                            come back, as over --max-clients (default 0 = no limit)\n"
    "  --client-buffer BYTES     queued bytes at which a slow subscriber is dropped\n"
    "                            (default 1m)\n"
    "  --pace-high-water BYTES   flow control: a subscriber with more than this queued lags;\n"
    "                            while more than 1 in 10 lag, publishers wait (inputs are\n"
    "                            not read, HTTP publishes are held) (default: client buffer\n"
    "                            / 8; at least the client buffer = no flow control)\n"
    "  --max-event-bytes BYTES   largest event payload, at most 64m (default 1m)\n"
    "  --header-timeout SECONDS  deadline for a request head (default 10)\n",
    "  --proxy PREFIX=URL        forward requests under PREFIX to URL (http://HOST:PORT[/BASE]),\n"
    "                            streaming responses unbuffered; repeatable, longest prefix\n"
    "                            wins; HOST is resolved once at start (default: none)\n"
    "  --proxy-connect-timeout SECONDS  connecting to an upstream (default 5)\n"
    "  --proxy-heartbeat SECONDS  comment line between events of a proxied stream after this\n"
    "                            much upstream silence (default 0 = none)\n"
    "  --relay TOPIC=URL         follow the event stream at URL like an EventSource and\n"
    "                            republish its events on TOPIC; repeatable (default: none)\n"
    "  --journal FILE            append every event to FILE before acknowledging it, and\n"
    "                            replay FILE into the backlog at start (default: none)\n"
    "  --journal-sync always|batch|none  fdatasync before every acknowledgement, at most 1 s\n"
    "                            after a write, or never (default batch)\n"
    "  --journal-max-bytes BYTES  rewrite the journal with just the backlog beyond this;\n"
    "                            the file stays under this or twice the backlog's bytes,\n"
    "                            whichever is larger, plus one event (default 64m)\n"
    "  --redis HOST:PORT         be one node of a hub sharing one event history through a\n"
    "                            Redis stream: publish with XADD, deliver what XREAD\n"
    "                            brings, ids are the stream's (default: none)\n"
    "  --redis-stream KEY        the stream (default sse)\n"
    "  --redis-password PASSWORD  AUTH with it (default: $SSE_REDIS_PASSWORD, else none)\n"
    "  --redis-maxlen N          entries Redis keeps, XADD MAXLEN ~ N (default 100000)\n"
    "  --quiet                   log only warnings and errors\n"
    "  --verbose                 also log every connection opened and closed\n"
    "  --help                    show this help and exit\n"
    "  --version                 show the version and exit\n"
    "\n"
    "BYTES accept a k, m or g suffix (powers of 1024).\n"
    "Endpoints: GET /events[/TOPIC][?topic=A&topic=B], POST|DELETE /publish?topic=T&event=E,\n"
    "GET /metrics, GET /healthz. SIGTERM or SIGINT drain and exit 0.\n",
};

enum option_id {
    OPT_LISTEN = 256,
    OPT_ROOT,
    OPT_STREAM,
    OPT_BACKLOG,
    OPT_BACKLOG_BYTES,
    OPT_HEARTBEAT,
    OPT_RETRY,
    OPT_NO_POSITION_EVENT,
    OPT_PUBLISH_TOKEN,
    OPT_SUBSCRIBE_TOKEN,
    OPT_STDIN,
    OPT_STDIN_FORMAT,
    OPT_DEMO,
    OPT_CORS,
    OPT_MAX_CLIENTS,
    OPT_MAX_CLIENTS_PER_IP,
    OPT_CLIENT_BUFFER,
    OPT_PACE_HIGH_WATER,
    OPT_MAX_EVENT_BYTES,
    OPT_HEADER_TIMEOUT,
    OPT_QUIET,
    OPT_VERBOSE,
    OPT_VERSION,
    OPT_PROXY,
    OPT_PROXY_CONNECT_TIMEOUT,
    OPT_PROXY_HEARTBEAT,
    OPT_RELAY,
    OPT_JOURNAL,
    OPT_JOURNAL_SYNC,
    OPT_JOURNAL_MAX_BYTES,
    OPT_REDIS,
    OPT_REDIS_STREAM,
    OPT_REDIS_PASSWORD,
    OPT_REDIS_MAXLEN
};

static const struct option long_options[] = {
    {"listen", required_argument, NULL, OPT_LISTEN},
    {"root", required_argument, NULL, OPT_ROOT},
    {"stream", required_argument, NULL, OPT_STREAM},
    {"backlog", required_argument, NULL, OPT_BACKLOG},
    {"backlog-bytes", required_argument, NULL, OPT_BACKLOG_BYTES},
    {"heartbeat", required_argument, NULL, OPT_HEARTBEAT},
    {"retry", required_argument, NULL, OPT_RETRY},
    {"no-position-event", no_argument, NULL, OPT_NO_POSITION_EVENT},
    {"publish-token", required_argument, NULL, OPT_PUBLISH_TOKEN},
    {"subscribe-token", required_argument, NULL, OPT_SUBSCRIBE_TOKEN},
    {"stdin", no_argument, NULL, OPT_STDIN},
    {"stdin-format", required_argument, NULL, OPT_STDIN_FORMAT},
    {"demo", no_argument, NULL, OPT_DEMO},
    {"cors", required_argument, NULL, OPT_CORS},
    {"max-clients", required_argument, NULL, OPT_MAX_CLIENTS},
    {"max-clients-per-ip", required_argument, NULL, OPT_MAX_CLIENTS_PER_IP},
    {"client-buffer", required_argument, NULL, OPT_CLIENT_BUFFER},
    {"pace-high-water", required_argument, NULL, OPT_PACE_HIGH_WATER},
    {"max-event-bytes", required_argument, NULL, OPT_MAX_EVENT_BYTES},
    {"header-timeout", required_argument, NULL, OPT_HEADER_TIMEOUT},
    {"quiet", no_argument, NULL, OPT_QUIET},
    {"verbose", no_argument, NULL, OPT_VERBOSE},
    {"proxy", required_argument, NULL, OPT_PROXY},
    {"proxy-connect-timeout", required_argument, NULL, OPT_PROXY_CONNECT_TIMEOUT},
    {"proxy-heartbeat", required_argument, NULL, OPT_PROXY_HEARTBEAT},
    {"relay", required_argument, NULL, OPT_RELAY},
    {"journal", required_argument, NULL, OPT_JOURNAL},
    {"journal-sync", required_argument, NULL, OPT_JOURNAL_SYNC},
    {"journal-max-bytes", required_argument, NULL, OPT_JOURNAL_MAX_BYTES},
    {"redis", required_argument, NULL, OPT_REDIS},
    {"redis-stream", required_argument, NULL, OPT_REDIS_STREAM},
    {"redis-password", required_argument, NULL, OPT_REDIS_PASSWORD},
    {"redis-maxlen", required_argument, NULL, OPT_REDIS_MAXLEN},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, OPT_VERSION},
    {NULL, 0, NULL, 0},
};

struct options {
    struct sse_config cfg;              /* what the library gets */
    bool read_stdin;                    /* --stdin */
    enum sse_input_format stdin_format; /* --stdin-format */
    bool demo;                          /* --demo */
    enum sse_log_level log_level;       /* highest level printed */
    struct sse_proxy_route *routes;     /* --proxy, argc entries */
    struct sse_relay *relays;           /* --relay, argc entries */
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

/* A part this binary was built without (sse.h's SSE_ENABLE_* switches) cannot be asked
 * for: the words of sse_server_new(), and a usage error's exit status. */
static void refuse_missing_parts(const struct sse_config *cfg) {
    if (!SSE_ENABLE_PROXY && (cfg->num_proxy_routes || cfg->num_relays))
        die_usage("--proxy, --relay: built without SSE_ENABLE_PROXY");
    if (!SSE_ENABLE_JOURNAL && cfg->journal_path)
        die_usage("--journal: built without SSE_ENABLE_JOURNAL");
    if (!SSE_ENABLE_REDIS && cfg->redis)
        die_usage("--redis: built without SSE_ENABLE_REDIS");
}

/* A whole number in [min, max]; with sizes, an optional k/m/g suffix multiplies by 1024^n. */
static long long parse_number(const char *opt, const char *s, long long min, long long max,
                              bool size) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || errno || (s[0] < '0' || s[0] > '9'))
        die_usage("invalid value '%s' for --%s: expected a whole number", s, opt);
    if (size && *end) {
        int shift = *end == 'k' || *end == 'K'   ? 10
                    : *end == 'm' || *end == 'M' ? 20
                    : *end == 'g' || *end == 'G' ? 30
                                                 : -1;
        if (shift < 0 || end[1] || v > (max >> shift))
            die_usage("invalid value '%s' for --%s: expected a size such as 65536 or 64k", s, opt);
        v <<= shift;
        end++;
    }
    if (*end || v < min || v > max)
        die_usage("invalid value '%s' for --%s: expected %lld to %lld", s, opt, min, max);
    return v;
}

/* Checks the shape HOST:PORT, :PORT or [V6]:PORT so a typo is a usage error (exit 2). */
static void check_listen(const char *s) {
    const char *colon = s[0] == '[' ? strstr(s, "]:") : strrchr(s, ':');
    const char *port = colon ? colon + (s[0] == '[' ? 2 : 1) : NULL;
    if (!port || !*port || strspn(port, "0123456789") != strlen(port) || strlen(port) > 5 ||
        strtol(port, NULL, 10) > 65535)
        die_usage("invalid value '%s' for --listen: expected HOST:PORT, :PORT or [IPV6]:PORT", s);
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

static void parse_options(int argc, char **argv, struct options *o) {
    memset(o, 0, sizeof *o);
    o->log_level = SSE_LOG_INFO;
    o->routes = calloc((size_t)argc, sizeof *o->routes);
    o->relays = calloc((size_t)argc, sizeof *o->relays);
    if (!o->routes || !o->relays)
        die_usage("out of memory%s", "");
    o->cfg.proxy_routes = o->routes;
    o->cfg.relays = o->relays;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":h", long_options, NULL)) != -1) {
        const char *name = optind > 1 ? argv[optind - 1] : "";
        switch (c) {
        case 'h':
            for (size_t i = 0; i < sizeof usage / sizeof usage[0]; i++)
                fputs(usage[i], stdout);
            exit(0);
        case OPT_VERSION: printf("sse-server %s\n", VERSION); exit(0);
        case OPT_LISTEN:
            check_listen(optarg);
            o->cfg.listen = optarg;
            break;
        case OPT_ROOT: o->cfg.static_root = optarg; break;
        case OPT_STREAM:
            if (optarg[0] != '/' || strlen(optarg) < 2 || optarg[strlen(optarg) - 1] == '/')
                die_usage("invalid value '%s' for --%s: expected a path such as /events", optarg,
                          "stream");
            o->cfg.stream_path = optarg;
            break;
        case OPT_BACKLOG: {
            long long n = parse_number("backlog", optarg, 0, 100000000, false);
            o->cfg.backlog = n ? (int)n : SSE_OFF;
            break;
        }
        case OPT_BACKLOG_BYTES:
            o->cfg.backlog_bytes =
                (size_t)parse_number("backlog-bytes", optarg, 1, 1LL << 40, true);
            break;
        case OPT_HEARTBEAT: {
            long long n = parse_number("heartbeat", optarg, 0, 86400, false);
            o->cfg.heartbeat_ms = n ? (int)n * 1000 : SSE_OFF;
            break;
        }
        case OPT_RETRY: {
            long long n = parse_number("retry", optarg, 0, 86400000, false);
            o->cfg.retry_ms = n ? (int)n : SSE_OFF;
            break;
        }
        case OPT_NO_POSITION_EVENT: o->cfg.position_event = SSE_OFF; break;
        case OPT_PUBLISH_TOKEN:
        case OPT_SUBSCRIBE_TOKEN:
            if (!optarg[0])
                die_usage("empty value for %s", name);
            *(c == OPT_PUBLISH_TOKEN ? &o->cfg.publish_token : &o->cfg.subscribe_token) = optarg;
            break;
        case OPT_STDIN: o->read_stdin = true; break;
        case OPT_STDIN_FORMAT:
            if (!strcmp(optarg, "lines"))
                o->stdin_format = SSE_INPUT_LINES;
            else if (!strcmp(optarg, "sse"))
                o->stdin_format = SSE_INPUT_SSE;
            else
                die_usage("invalid value '%s' for --%s: expected lines or sse", optarg,
                          "stdin-format");
            break;
        case OPT_DEMO: o->demo = true; break;
        case OPT_CORS: o->cfg.cors_origin = optarg; break;
        case OPT_MAX_CLIENTS:
            o->cfg.max_clients = (int)parse_number("max-clients", optarg, 1, 10000000, false);
            break;
        case OPT_MAX_CLIENTS_PER_IP:
            o->cfg.max_clients_per_ip =
                (int)parse_number("max-clients-per-ip", optarg, 0, 10000000, false);
            break;
        case OPT_CLIENT_BUFFER:
            o->cfg.client_buffer =
                (size_t)parse_number("client-buffer", optarg, 1, 1LL << 40, true);
            break;
        case OPT_PACE_HIGH_WATER:
            o->cfg.pace_high_water =
                (size_t)parse_number("pace-high-water", optarg, 1, 1LL << 40, true);
            break;
        case OPT_MAX_EVENT_BYTES:
            o->cfg.max_event_bytes =
                (size_t)parse_number("max-event-bytes", optarg, 1, 64LL << 20, true);
            break;
        case OPT_HEADER_TIMEOUT:
            o->cfg.header_timeout_ms =
                (int)parse_number("header-timeout", optarg, 1, 86400, false) * 1000;
            break;
        case OPT_PROXY: {
            struct sse_proxy_route *r = &o->routes[o->cfg.num_proxy_routes++];
            char *prefix;
            const char *url;
            split_pair(optarg, "proxy", "PREFIX=http://HOST:PORT[/BASE]", &prefix, &url);
            if (prefix[0] != '/' || strncmp(url, "http://", 7) != 0)
                die_usage(
                    "invalid value '%s=%s' for --proxy: expected PREFIX=http://HOST:PORT[/BASE]",
                    prefix, url);
            r->prefix = prefix;
            r->upstream = url;
            break;
        }
        case OPT_RELAY: {
            struct sse_relay *r = &o->relays[o->cfg.num_relays++];
            char *topic;
            const char *url;
            split_pair(optarg, "relay", "TOPIC=http://HOST:PORT/PATH", &topic, &url);
            if (strncmp(url, "http://", 7) != 0)
                die_usage("invalid value '%s=%s' for --relay: expected TOPIC=http://HOST:PORT/PATH",
                          topic, url);
            r->topic = topic;
            r->url = url;
            break;
        }
        case OPT_PROXY_CONNECT_TIMEOUT:
            o->cfg.proxy_connect_timeout_ms =
                (int)parse_number("proxy-connect-timeout", optarg, 1, 3600, false) * 1000;
            break;
        case OPT_PROXY_HEARTBEAT:
            o->cfg.proxy_heartbeat_ms =
                (int)parse_number("proxy-heartbeat", optarg, 0, 86400, false) * 1000;
            break;
        case OPT_JOURNAL:
            if (!optarg[0])
                die_usage("empty value for %s", name);
            o->cfg.journal_path = optarg;
            break;
        case OPT_JOURNAL_SYNC:
            if (!strcmp(optarg, "batch"))
                o->cfg.journal_sync = SSE_JOURNAL_BATCH;
            else if (!strcmp(optarg, "always"))
                o->cfg.journal_sync = SSE_JOURNAL_ALWAYS;
            else if (!strcmp(optarg, "none"))
                o->cfg.journal_sync = SSE_JOURNAL_NONE;
            else
                die_usage("invalid value '%s' for --%s: expected always, batch or none", optarg,
                          "journal-sync");
            break;
        case OPT_JOURNAL_MAX_BYTES:
            o->cfg.journal_max_bytes =
                (size_t)parse_number("journal-max-bytes", optarg, 4096, 1LL << 40, true);
            break;
        case OPT_REDIS:
            if (!strchr(optarg, ':'))
                die_usage("invalid value '%s' for --%s: expected HOST:PORT", optarg, "redis");
            o->cfg.redis = optarg;
            break;
        case OPT_REDIS_STREAM:
            if (!optarg[0] || strlen(optarg) > 255)
                die_usage("invalid value '%s' for --%s: expected 1 to 255 bytes", optarg,
                          "redis-stream");
            o->cfg.redis_stream = optarg;
            break;
        case OPT_REDIS_PASSWORD:
            if (!optarg[0])
                die_usage("empty value for %s", name);
            o->cfg.redis_password = optarg;
            break;
        case OPT_REDIS_MAXLEN:
            o->cfg.redis_maxlen = (size_t)parse_number("redis-maxlen", optarg, 1, 1LL << 40, false);
            break;
        case OPT_QUIET: o->log_level = SSE_LOG_WARN; break;
        case OPT_VERBOSE: o->log_level = SSE_LOG_DEBUG; break;
        case ':': die_usage("option '%s' needs a value", name);
        default: die_usage("unknown option '%s'", name);
        }
    }
    if (optind < argc)
        die_usage("unexpected argument '%s'", argv[optind]);
    /* Tokens on the command line show in every local user's `ps`; the environment does not
     * (a systemd EnvironmentFile, say). The option wins when both are given. */
    const char *env = getenv("SSE_PUBLISH_TOKEN");
    if (!o->cfg.publish_token && env && env[0])
        o->cfg.publish_token = env;
    env = getenv("SSE_SUBSCRIBE_TOKEN");
    if (!o->cfg.subscribe_token && env && env[0])
        o->cfg.subscribe_token = env;
    env = getenv("SSE_REDIS_PASSWORD");
    if (!o->cfg.redis_password && env && env[0])
        o->cfg.redis_password = env;
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

/* Called four times a second: one to three quotes on "stocks", the time on "time" once a
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
    int quotes = 1 + (int)(demo_rand(d) % 3);
    for (int q = 0; q < quotes; q++) {
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

/* The demo page's Drop button: POST /demo/drop?topic=visitor-... ends the streams of that
 * page's own topic (every page subscribes to one with a random name, so a visitor can end
 * only their own stream), and the browser reconnects by itself after retry, sending
 * Last-Event-ID. Every other request goes to the built-in routes. */
static int demo_route(struct sse_server *srv, const struct sse_request *req, void *user) {
    const struct options *o = user;
    static const char prefix[] = "visitor-";
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
    refuse_missing_parts(&o.cfg);
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
    return status;
}
