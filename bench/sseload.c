/*
 * sseload - a load generator for Server-Sent Events servers, used by bench/run.py.
 *
 *   sseload sub --url http://127.0.0.1:8080/events/bench --connections 1000 --duration 10
 *   sseload pub --url http://127.0.0.1:8080/publish?topic=bench --rate 10 --duration 10 \
 *               --header 'Authorization: Bearer bench'
 *   sseload gen --duration 10 | sse-server --stdin
 *
 * One epoll loop, non-blocking sockets, no dependencies. `sub` opens N subscribers (spread
 * over source addresses 127.0.0.1..127.0.0.K to pass the ephemeral ports of one address),
 * decodes chunked or close-delimited bodies, splits the event stream into events and, when
 * an event's data starts with "t=<CLOCK_MONOTONIC ns>" (what `pub` sends), records the
 * publish-to-receive latency in a histogram. `pub` POSTs such events over keep-alive
 * connections at a fixed rate or as fast as the server accepts them; `gen` writes such events
 * as lines to its standard output as fast as the reader takes them (for `--stdin`). Each
 * event's data is "t=<ns> n=<sequence number from 0> xxx...", so `sub` also counts, per
 * subscriber, the events received and the gaps (an event whose number is not the previous
 * one's plus one: lost or reordered). Each prints one JSON line (`gen` on stderr); `sub` also
 * prints one on SIGUSR1 for the window since the previous one (or since it was ready) and
 * starts a new window, so one set of subscribers can measure several publish rates in turn.
 * The parser is written for the streams servers send (LF or CRLF line ends); it is
 * independent of sse.c on purpose: a measuring tool should not share code with what it
 * measures.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_HEADERS        16
#define HEAD_MAX           8192
#define CONNECTS_IN_FLIGHT 512 /* connects not yet answered, so the SYN queue never overflows */
#define READ_BUF           (256u << 10)

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *msg) {
    fprintf(stderr, "sseload: %s\n", msg);
    exit(1);
}

/* ---- options ----------------------------------------------------------------------------- */

struct options {
    bool pub;                         /* pub mode, else sub (or gen) */
    bool gen;                         /* gen mode: events as lines on stdout */
    struct sockaddr_in addr;          /* server */
    char host[256];                   /* Host header */
    char path[2048];                  /* path and query */
    long connections;                 /* sub: subscribers; pub: publisher connections */
    int sources;                      /* source addresses 127.0.0.1..127.0.0.sources */
    double duration;                  /* seconds */
    const char *headers[MAX_HEADERS]; /* extra request headers */
    int nheaders;
    const char *ready_file; /* sub: written when every connection is settled */
    double head_timeout;    /* sub: seconds for a response head before failing */
    uint64_t expect_events; /* sub: stop after this many events (0 = no limit) */
    double rate;            /* pub: events/s, 0 = as fast as accepted */
    uint64_t count;         /* pub: events to send, 0 = until duration */
    size_t size;            /* pub: payload bytes */
    int pipeline;           /* pub: requests in flight per connection */
};

static void parse_url(struct options *o, const char *url) {
    if (strncmp(url, "http://", 7) != 0)
        die("--url must start with http://");
    const char *h = url + 7, *slash = strchr(h, '/');
    const char *colon = memchr(h, ':', slash ? (size_t)(slash - h) : strlen(h));
    size_t hlen = colon ? (size_t)(colon - h) : slash ? (size_t)(slash - h) : strlen(h);
    char name[256];
    if (hlen == 0 || hlen >= sizeof name)
        die("bad host in --url");
    memcpy(name, h, hlen);
    name[hlen] = '\0';
    int port = colon ? atoi(colon + 1) : 80;
    snprintf(o->host, sizeof o->host, "%.*s", (int)((slash ? slash : h + strlen(h)) - h), h);
    snprintf(o->path, sizeof o->path, "%s", slash ? slash : "/");
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res;
    if (getaddrinfo(name, NULL, &hints, &res) != 0)
        die("cannot resolve the host of --url");
    memcpy(&o->addr, res->ai_addr, sizeof o->addr);
    o->addr.sin_port = htons((uint16_t)port);
    freeaddrinfo(res);
}

static void parse_options(int argc, char **argv, struct options *o) {
    memset(o, 0, sizeof *o);
    o->connections = -1;
    o->sources = 1;
    o->duration = -1;
    o->size = 100;
    o->pipeline = 1;
    o->head_timeout = 30;
    if (argc < 2 || (strcmp(argv[1], "sub") && strcmp(argv[1], "pub") && strcmp(argv[1], "gen")))
        die("usage: sseload sub|pub|gen [--url URL] [options] (see bench/sseload.c)");
    o->pub = !strcmp(argv[1], "pub");
    o->gen = !strcmp(argv[1], "gen");
    const char *url = NULL;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            die("every option takes a value");
        i++;
        if (!strcmp(a, "--url"))
            url = v;
        else if (!strcmp(a, "--connections"))
            o->connections = atol(v);
        else if (!strcmp(a, "--sources"))
            o->sources = atoi(v);
        else if (!strcmp(a, "--duration"))
            o->duration = atof(v);
        else if (!strcmp(a, "--header") && o->nheaders < MAX_HEADERS)
            o->headers[o->nheaders++] = v;
        else if (!strcmp(a, "--head-timeout"))
            o->head_timeout = atof(v);
        else if (!strcmp(a, "--ready-file"))
            o->ready_file = v;
        else if (!strcmp(a, "--expect-events"))
            o->expect_events = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--rate"))
            o->rate = atof(v);
        else if (!strcmp(a, "--count"))
            o->count = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--size"))
            o->size = (size_t)atol(v);
        else if (!strcmp(a, "--pipeline"))
            o->pipeline = atoi(v);
        else
            die("unknown option (see bench/sseload.c)");
    }
    if (!url && !o->gen)
        die("--url is required");
    if (url)
        parse_url(o, url);
    if (o->connections < 0)
        o->connections = o->pub ? 1 : 100;
    if (o->duration < 0)
        o->duration = (o->pub || o->gen) && o->count ? 1e9 : 10;
    if (o->connections < 1 || o->sources < 1 || o->sources > 250 || o->pipeline < 1 ||
        o->size < 48 || o->size > (1u << 20))
        die("option out of range");
}

/* ---- latency histogram: 1 us resolution to 2 ms, then 1024 steps per power of two ------- */

#define HIST_LINEAR  2048
#define HIST_BUCKETS (HIST_LINEAR + 40 * 1024)

struct hist {
    uint64_t n[HIST_BUCKETS];
    uint64_t count, max_us;
};

static size_t hist_index(uint64_t us) {
    if (us < HIST_LINEAR)
        return (size_t)us;
    int e = 63 - __builtin_clzll(us); /* >= 11 */
    size_t i = HIST_LINEAR + (size_t)(e - 11) * 1024 + ((us >> (e - 10)) & 1023);
    return i < HIST_BUCKETS ? i : HIST_BUCKETS - 1;
}

static uint64_t hist_value(size_t i) {
    if (i < HIST_LINEAR)
        return i;
    size_t e = (i - HIST_LINEAR) / 1024 + 11, sub = (i - HIST_LINEAR) % 1024;
    return ((uint64_t)1024 + sub) << (e - 10);
}

static void hist_add(struct hist *h, uint64_t us) {
    h->n[hist_index(us)]++;
    h->count++;
    if (us > h->max_us)
        h->max_us = us;
}

static double hist_ms(const struct hist *h, double q) {
    if (!h->count)
        return 0;
    uint64_t want = (uint64_t)(q * (double)h->count), seen = 0;
    for (size_t i = 0; i < HIST_BUCKETS; i++) {
        seen += h->n[i];
        if (seen > want)
            return (double)hist_value(i) / 1000.0;
    }
    return (double)h->max_us / 1000.0;
}

/* Prints the histogram as "[[us,count],...]" over its non-empty buckets (each bucket by its
 * lower bound), so that a driver can merge those of several processes. */
static void hist_print(const struct hist *h) {
    fputc('[', stdout);
    const char *sep = "";
    for (size_t i = 0; i < HIST_BUCKETS; i++)
        if (h->n[i]) {
            printf("%s[%llu,%llu]", sep, (unsigned long long)hist_value(i),
                   (unsigned long long)h->n[i]);
            sep = ",";
        }
    fputc(']', stdout);
}

/* ---- connections ------------------------------------------------------------------------- */

enum state { S_IDLE, S_CONNECTING, S_HEAD, S_BODY, S_DONE };

struct conn {
    int fd;
    uint8_t state;     /* enum state */
    bool chunked;      /* sub: the body is chunked */
    uint8_t ch_state;  /* sub: chunk decoder state */
    uint64_t ch_left;  /* sub: chunk bytes left */
    char *head;        /* response head being collected (sub) or response buffer (pub) */
    size_t head_len;   /* bytes in head */
    uint16_t line_len; /* sub: bytes of the current line seen */
    char line[40];     /* sub: its first bytes */
    bool has_data;     /* sub: the event being read has data */
    uint64_t t;        /* sub: its timestamp, 0 if none */
    uint64_t seq;      /* sub: its sequence number (n=), UINT64_MAX if none */
    uint64_t last_seq; /* sub: the previous event's, UINT64_MAX before the first */
    uint64_t got;      /* sub: events received in the current window */
    int in_flight;     /* pub: requests sent, not answered */
    char *out;         /* pub: bytes to send */
    size_t out_len, out_off;
};

struct load {
    struct options *o;
    int ep;
    struct conn *conns;
    long next_to_open; /* index of the next connection to open */
    long connecting;   /* connects not answered yet */
    long settled;      /* connections with a head or a failure */
    long connected, failed, dropped;
    uint64_t events, bytes, published, errors, sent;
    uint64_t gaps;       /* sub: events whose number did not follow the previous one's */
    long window_dropped; /* sub: `dropped` when the current window began */
    bool measuring;
    uint64_t t_start, t_ready;
    struct hist *hist;
    char *buf;     /* read buffer */
    char *payload; /* pub: the event being built */
};

static void conn_fail(struct load *L, struct conn *c, bool after_head) {
    if (c->state == S_DONE)
        return;
    if (after_head)
        L->dropped++;
    else {
        L->failed++;
        L->settled++;
        if (c->state == S_CONNECTING)
            L->connecting--;
    }
    close(c->fd);
    free(c->head);
    c->head = NULL;
    c->state = S_DONE;
}

static void conn_open(struct load *L, long i) {
    struct conn *c = &L->conns[i];
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) { /* out of descriptors: counted as a failed connection */
        c->fd = -1;
        c->state = S_DONE;
        L->failed++;
        L->settled++;
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (L->o->sources > 1) {
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl(0x7F000001u + (uint32_t)(i % L->o->sources));
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        bind(fd, (struct sockaddr *)&src, sizeof src);
    }
    c->fd = fd;
    c->state = S_CONNECTING;
    c->seq = c->last_seq = UINT64_MAX;
    L->connecting++;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                             .data.u64 = (uint64_t)i};
    epoll_ctl(L->ep, EPOLL_CTL_ADD, fd, &ev);
    if (connect(fd, (struct sockaddr *)&L->o->addr, sizeof L->o->addr) < 0 && errno != EINPROGRESS)
        conn_fail(L, c, false);
}

static void open_more(struct load *L) {
    while (L->next_to_open < L->o->connections && L->connecting < CONNECTS_IN_FLIGHT)
        conn_open(L, L->next_to_open++);
}

/* ---- sub: the event-stream parser -------------------------------------------------------- */

static void sub_line_done(struct load *L, struct conn *c, uint64_t now) {
    size_t n = c->line_len < sizeof c->line ? c->line_len : sizeof c->line;
    if (n && c->line[n - 1] == '\r' && c->line_len <= sizeof c->line)
        n--;
    if (c->line_len == 0 || (c->line_len == 1 && c->line[0] == '\r')) { /* dispatch */
        if (c->has_data && L->measuring) {
            L->events++;
            c->got++;
            if (c->t && now > c->t)
                hist_add(L->hist, (now - c->t) / 1000);
        }
        if (c->has_data && c->seq != UINT64_MAX) {
            if (c->last_seq != UINT64_MAX && c->seq != c->last_seq + 1)
                L->gaps++;
            c->last_seq = c->seq;
        }
        c->has_data = false;
        c->t = 0;
        c->seq = UINT64_MAX;
    } else if (n >= 5 && !memcmp(c->line, "data:", 5)) {
        if (!c->has_data) {
            size_t p = n > 5 && c->line[5] == ' ' ? 6 : 5;
            if (p + 2 < n && c->line[p] == 't' && c->line[p + 1] == '=') {
                uint64_t t = 0;
                for (p += 2; p < n && c->line[p] >= '0' && c->line[p] <= '9'; p++)
                    t = t * 10 + (uint64_t)(c->line[p] - '0');
                c->t = t;
                if (p + 3 < n && !memcmp(c->line + p, " n=", 3)) {
                    uint64_t seq = 0;
                    for (p += 3; p < n && c->line[p] >= '0' && c->line[p] <= '9'; p++)
                        seq = seq * 10 + (uint64_t)(c->line[p] - '0');
                    c->seq = seq;
                }
            }
        }
        c->has_data = true;
    }
    c->line_len = 0;
}

static void sub_events(struct load *L, struct conn *c, const char *p, size_t n, uint64_t now) {
    while (n) {
        const char *lf = memchr(p, '\n', n);
        size_t seg = lf ? (size_t)(lf - p) : n;
        if (c->line_len < sizeof c->line) {
            size_t k = sizeof c->line - c->line_len < seg ? sizeof c->line - c->line_len : seg;
            memcpy(c->line + c->line_len, p, k);
        }
        c->line_len = (uint16_t)(c->line_len + seg > 60000 ? 60000 : c->line_len + seg);
        if (!lf)
            return;
        sub_line_done(L, c, now);
        p += seg + 1;
        n -= seg + 1;
    }
}

/* Chunked transfer coding, decoded in place; returns data bytes or -1. */
enum { CH_SIZE, CH_EXT, CH_DATA, CH_DATA_END };
static long sub_dechunk(struct conn *c, char *p, size_t n) {
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        switch (c->ch_state) {
        case CH_SIZE:
            if (ch >= '0' && ch <= '9')
                c->ch_left = c->ch_left * 16 + (uint64_t)(ch - '0');
            else if ((ch | 32) >= 'a' && (ch | 32) <= 'f')
                c->ch_left = c->ch_left * 16 + (uint64_t)((ch | 32) - 'a' + 10);
            else if (ch == '\n')
                c->ch_state = c->ch_left ? CH_DATA : CH_DATA_END;
            else if (ch != '\r')
                c->ch_state = CH_EXT;
            break;
        case CH_EXT:
            if (ch == '\n')
                c->ch_state = c->ch_left ? CH_DATA : CH_DATA_END;
            break;
        case CH_DATA: {
            size_t k = n - i < c->ch_left ? n - i : (size_t)c->ch_left;
            memmove(p + w, p + i, k);
            w += k;
            i += k - 1;
            c->ch_left -= k;
            if (!c->ch_left)
                c->ch_state = CH_DATA_END;
            break;
        }
        case CH_DATA_END: /* the CRLF after a chunk */
            if (ch == '\n') {
                c->ch_state = CH_SIZE;
                c->ch_left = 0;
            }
            break;
        }
    }
    return (long)w;
}

static void sub_send_request(struct load *L, struct conn *c) {
    char req[4096];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n"
                     "Cache-Control: no-cache\r\n",
                     L->o->path, L->o->host);
    for (int i = 0; i < L->o->nheaders; i++)
        n += snprintf(req + n, sizeof req - (size_t)n, "%s\r\n", L->o->headers[i]);
    n += snprintf(req + n, sizeof req - (size_t)n, "\r\n");
    if (write(c->fd, req, (size_t)n) != n) /* a fresh socket takes 4 KiB at once */
        conn_fail(L, c, false);
}

/* The response head is complete in c->head: 200 means connected. Returns body offset. */
static long sub_head(struct load *L, struct conn *c) {
    char *end = memmem(c->head, c->head_len, "\r\n\r\n", 4);
    if (!end)
        return c->head_len >= HEAD_MAX ? -1 : 0;
    *end = '\0';
    if (strncmp(c->head, "HTTP/1.", 7) || strncmp(c->head + 8, " 200", 4))
        return -1;
    for (char *p = c->head; (p = strcasestr(p, "\ntransfer-encoding:")); p++)
        c->chunked = strcasestr(p, "chunked") != NULL;
    L->connected++;
    L->settled++;
    c->state = S_BODY;
    return end + 4 - c->head;
}

static void sub_body(struct load *L, struct conn *c, char *p, size_t n, uint64_t now) {
    if (L->measuring)
        L->bytes += n;
    if (c->chunked) {
        long d = sub_dechunk(c, p, n);
        if (d < 0)
            return;
        n = (size_t)d;
    }
    sub_events(L, c, p, n, now);
}

static void sub_readable(struct load *L, struct conn *c) {
    for (;;) {
        ssize_t n = read(c->fd, L->buf, READ_BUF);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            conn_fail(L, c, c->state == S_BODY);
            return;
        }
        uint64_t now = now_ns();
        if (c->state == S_HEAD) {
            size_t room = HEAD_MAX - c->head_len, k = (size_t)n < room ? (size_t)n : room;
            if (!c->head && !(c->head = malloc(HEAD_MAX + 1)))
                die("out of memory");
            memcpy(c->head + c->head_len, L->buf, k);
            c->head_len += k;
            long off = sub_head(L, c);
            if (off < 0) {
                conn_fail(L, c, false);
                return;
            }
            if (off == 0)
                continue;
            size_t rest = c->head_len - (size_t)off;
            char *tmp = malloc(rest + (size_t)n - k + 1);
            memcpy(tmp, c->head + off, rest);
            memcpy(tmp + rest, L->buf + k, (size_t)n - k);
            free(c->head);
            c->head = NULL;
            sub_body(L, c, tmp, rest + (size_t)n - k, now);
            free(tmp);
        } else {
            sub_body(L, c, L->buf, (size_t)n, now);
        }
    }
}

static void sub_event(struct load *L, struct conn *c, uint32_t ev) {
    if (c->state == S_CONNECTING && (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        L->connecting--;
        if (err) {
            c->state = S_HEAD; /* counted as failed, not as connecting */
            conn_fail(L, c, false);
            return;
        }
        c->state = S_HEAD;
        sub_send_request(L, c);
    }
    if (c->state == S_HEAD || c->state == S_BODY)
        if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
            sub_readable(L, c);
}

/* ---- pub ----------------------------------------------------------------------------------- */

static void pub_queue(struct load *L, struct conn *c) {
    char *body = L->payload;
    size_t size = L->o->size;
    /* At a fixed rate the stamp is when the event was due, not when a busy server let us
     * send it: otherwise a saturated server's queueing would not show in the latency. */
    uint64_t stamp =
        L->o->rate > 0 ? L->t_start + (uint64_t)((double)L->sent * 1e9 / L->o->rate) : now_ns();
    int t = snprintf(body, size, "t=%llu n=%llu ", (unsigned long long)stamp,
                     (unsigned long long)L->sent);
    memset(body + t, 'x', size - (size_t)t);
    char head[4096];
    int h = snprintf(head, sizeof head,
                     "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: text/plain\r\n"
                     "Content-Length: %zu\r\n",
                     L->o->path, L->o->host, size);
    for (int i = 0; i < L->o->nheaders; i++)
        h += snprintf(head + h, sizeof head - (size_t)h, "%s\r\n", L->o->headers[i]);
    h += snprintf(head + h, sizeof head - (size_t)h, "\r\n");
    size_t need = c->out_len - c->out_off + (size_t)h + size;
    char *out = malloc(need);
    memcpy(out, c->out + c->out_off, c->out_len - c->out_off);
    memcpy(out + c->out_len - c->out_off, head, (size_t)h);
    memcpy(out + c->out_len - c->out_off + (size_t)h, body, size);
    free(c->out);
    c->out = out;
    c->out_len = need;
    c->out_off = 0;
    c->in_flight++;
    L->sent++;
}

static void pub_write(struct load *L, struct conn *c) {
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n < 0) {
            conn_fail(L, c, true);
            return;
        }
        c->out_off += (size_t)n;
    }
}

/* Consumes whole responses from c->head; counts 2xx as published. */
static void pub_responses(struct load *L, struct conn *c) {
    for (;;) {
        char *end = memmem(c->head, c->head_len, "\r\n\r\n", 4);
        if (!end)
            return;
        size_t head = (size_t)(end + 4 - c->head), body = 0;
        char save = *end;
        *end = '\0';
        char *cl = strcasestr(c->head, "\ncontent-length:");
        if (cl)
            body = (size_t)atol(cl + 16);
        bool ok = c->head_len > 12 && c->head[9] == '2';
        *end = save;
        if (c->head_len < head + body)
            return;
        memmove(c->head, c->head + head + body, c->head_len - head - body);
        c->head_len -= head + body;
        c->in_flight--;
        if (ok)
            L->published++;
        else
            L->errors++;
    }
}

static void pub_readable(struct load *L, struct conn *c) {
    for (;;) {
        if (!c->head && !(c->head = malloc(READ_BUF)))
            die("out of memory");
        ssize_t n = read(c->fd, c->head + c->head_len, READ_BUF - c->head_len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            conn_fail(L, c, true);
            return;
        }
        c->head_len += (size_t)n;
        pub_responses(L, c);
        if (c->head_len == READ_BUF)
            die("a response head over 256 KiB");
    }
}

/* ---- gen ----------------------------------------------------------------------------------- */

/* Writes events as lines to stdout (blocking) for o->count events or o->duration seconds,
 * as fast as the reader takes them, a batch of lines per write. */
static void gen_run(struct options *o) {
    enum { BATCH = 64 };
    size_t line = o->size + 1;
    char *buf = malloc(BATCH * line);
    if (!buf)
        die("out of memory");
    uint64_t sent = 0, t0 = now_ns(), deadline = t0 + (uint64_t)(o->duration * 1e9), now = t0;
    while ((!o->count || sent < o->count) && now < deadline) {
        size_t len = 0;
        for (int i = 0; i < BATCH && (!o->count || sent < o->count); i++, sent++) {
            int t = snprintf(buf + len, line, "t=%llu n=%llu ", (unsigned long long)now,
                             (unsigned long long)sent);
            memset(buf + len + t, 'x', o->size - (size_t)t);
            buf[len + o->size] = '\n';
            len += line;
        }
        for (size_t off = 0; off < len;) {
            ssize_t n = write(STDOUT_FILENO, buf + off, len - off);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0)
                die("write to stdout failed");
            off += (size_t)n;
        }
        now = now_ns();
    }
    double secs = (double)(now - t0) / 1e9;
    fprintf(stderr, "{\"mode\":\"gen\",\"events\":%llu,\"seconds\":%.3f,\"rate\":%.1f}\n",
            (unsigned long long)sent, secs, secs > 0 ? (double)sent / secs : 0.0);
}

/* ---- the loop ------------------------------------------------------------------------------ */

static void write_ready(const char *path) {
    FILE *f = path ? fopen(path, "w") : NULL;
    if (f) {
        fputs("ready\n", f);
        fclose(f);
    }
}

static volatile sig_atomic_t window_due; /* SIGUSR1: report the window, start another */

static void on_usr1(int sig) {
    (void)sig;
    window_due = 1;
}

/* sub: prints the summary of the window since L->t_ready; with `window`, also restarts the
 * counts (events, bytes, gaps, latency, per-subscriber events) for the next window. */
static void sub_report(struct load *L, bool window) {
    const struct hist *h = L->hist;
    uint64_t now = now_ns(), lo = UINT64_MAX, hi = 0;
    double secs = L->t_ready ? (double)(now - L->t_ready) / 1e9 : 0.0;
    long open = 0;
    for (long i = 0; i < L->o->connections; i++) {
        struct conn *c = &L->conns[i];
        if (c->state != S_BODY)
            continue;
        open++;
        lo = c->got < lo ? c->got : lo;
        hi = c->got > hi ? c->got : hi;
        if (window) { /* the next window's events may come from a new publisher, from n=0 */
            c->got = 0;
            c->last_seq = UINT64_MAX;
        }
    }
    printf("{\"mode\":\"sub\",\"window\":%s,\"connections\":%ld,\"connected\":%ld,"
           "\"failed\":%ld,\"dropped\":%ld,\"open\":%ld,\"events\":%llu,\"bytes\":%llu,"
           "\"seconds\":%.3f,\"events_per_s\":%.1f,\"bytes_per_s\":%.1f,"
           "\"per_sub_min\":%llu,\"per_sub_max\":%llu,\"gaps\":%llu,"
           "\"latency_ms\":{\"samples\":%llu,\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,"
           "\"max\":%.3f},\"hist\":",
           window ? "true" : "false", L->o->connections, L->connected, L->failed,
           L->dropped - L->window_dropped, open, (unsigned long long)L->events,
           (unsigned long long)L->bytes, secs, secs > 0 ? (double)L->events / secs : 0.0,
           secs > 0 ? (double)L->bytes / secs : 0.0, (unsigned long long)(open ? lo : 0),
           (unsigned long long)hi, (unsigned long long)L->gaps, (unsigned long long)h->count,
           hist_ms(h, 0.50), hist_ms(h, 0.90), hist_ms(h, 0.99), (double)h->max_us / 1000.0);
    hist_print(h);
    printf("}\n");
    fflush(stdout);
    if (window) {
        L->events = L->bytes = L->gaps = 0;
        L->window_dropped = L->dropped;
        L->t_ready = now;
        memset(L->hist, 0, sizeof *L->hist);
    }
}

static bool pub_due(struct load *L, uint64_t now) {
    if (L->o->count && L->sent >= L->o->count)
        return false;
    if (L->o->rate <= 0)
        return true;
    return (double)(now - L->t_start) * L->o->rate / 1e9 >= (double)L->sent;
}

static void run(struct load *L) {
    struct options *o = L->o;
    struct epoll_event evs[512];
    uint64_t deadline = 0;
    L->t_start = now_ns();
    open_more(L);
    for (;;) {
        uint64_t now = now_ns();
        if (window_due && !o->pub) {
            window_due = 0;
            if (L->measuring)
                sub_report(L, true);
        }
        if (!o->pub && !L->measuring && L->settled >= o->connections) {
            L->measuring = true;
            L->t_ready = now;
            deadline = now + (uint64_t)(o->duration * 1e9);
            write_ready(o->ready_file);
        }
        if (o->pub && !L->measuring && L->connected >= o->connections) {
            L->measuring = true;
            L->t_start = L->t_ready = now;
            deadline = now + (uint64_t)(o->duration * 1e9);
        }
        if (o->pub && L->measuring) {
            bool more = now < deadline && pub_due(L, now);
            for (long i = 0; more && i < o->connections; i++) {
                struct conn *c = &L->conns[i];
                while (c->state == S_BODY && c->in_flight < o->pipeline && pub_due(L, now))
                    pub_queue(L, c);
                if (c->state == S_BODY)
                    pub_write(L, c);
            }
            bool idle = true;
            for (long i = 0; i < o->connections; i++)
                idle = idle && (L->conns[i].state != S_BODY || L->conns[i].in_flight == 0);
            bool finished = (o->count && L->sent >= o->count) || now >= deadline;
            if (finished && (idle || now >= deadline + 2000000000u))
                break;
        }
        if (!o->pub && L->measuring &&
            (now >= deadline || (o->expect_events && L->events >= o->expect_events)))
            break;
        if (L->failed + L->dropped >= o->connections)
            break; /* no connection left */
        if (!o->pub && !L->measuring && now >= L->t_start + (uint64_t)(o->head_timeout * 1e9))
            for (long i = 0; i < o->connections; i++) /* no head in time: failed */
                if (L->conns[i].state == S_CONNECTING || L->conns[i].state == S_HEAD)
                    conn_fail(L, &L->conns[i], false);
        int timeout = 100;
        if (o->pub && L->measuring && o->rate > 0) {
            /* sleep until the next event is due: event number `sent`, counted from 0 */
            double next = (double)L->t_start + (double)L->sent * 1e9 / o->rate;
            double wait_ms = (next - (double)now) / 1e6;
            timeout = wait_ms <= 0 ? 0 : wait_ms < 100 ? (int)(wait_ms + 0.999) : 100;
        } else if (o->pub && L->measuring) {
            timeout = 1;
        }
        int n = epoll_wait(L->ep, evs, 512, timeout);
        for (int i = 0; i < n; i++) {
            struct conn *c = &L->conns[evs[i].data.u64];
            if (c->state == S_DONE)
                continue;
            if (!o->pub) {
                sub_event(L, c, evs[i].events);
            } else if (c->state == S_CONNECTING) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                L->connecting--;
                c->state = err ? S_HEAD : S_BODY;
                if (err)
                    conn_fail(L, c, false);
                else
                    L->connected++;
            } else {
                if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                    pub_readable(L, c);
                if (c->state == S_BODY && (evs[i].events & EPOLLOUT))
                    pub_write(L, c);
            }
        }
        open_more(L);
    }
}

int main(int argc, char **argv) {
    struct options o;
    parse_options(argc, argv, &o);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    if (o.gen) {
        gen_run(&o);
        return 0;
    }
    signal(SIGUSR1, on_usr1);
    struct load L = {.o = &o};
    L.ep = epoll_create1(EPOLL_CLOEXEC);
    L.conns = calloc((size_t)o.connections, sizeof *L.conns);
    L.hist = calloc(1, sizeof *L.hist);
    L.buf = malloc(READ_BUF);
    L.payload = malloc(o.size);
    if (L.ep < 0 || !L.conns || !L.hist || !L.buf || !L.payload)
        die("out of memory");
    run(&L);
    double secs = L.t_ready ? (double)(now_ns() - L.t_ready) / 1e9 : 0.0;
    if (o.pub) {
        printf("{\"mode\":\"pub\",\"published\":%llu,\"errors\":%llu,\"dropped\":%ld,"
               "\"seconds\":%.3f,\"rate\":%.1f}\n",
               (unsigned long long)L.published, (unsigned long long)L.errors, L.dropped, secs,
               secs > 0 ? (double)L.published / secs : 0.0);
    } else {
        sub_report(&L, false);
    }
    fflush(stdout);
    return 0;
}
