/*
 * sse.h - an embeddable Server-Sent Events server for Linux (MIT licence).
 *
 * Server-Sent Events (WHATWG HTML, "Server-sent events") is one long HTTP response of type
 * text/event-stream in which the server writes events as they happen:
 *
 *     id: 42
 *     event: price
 *     data: {"sym":"ACME","px":12.5}
 *
 * A browser's EventSource reads them, reconnects by itself when the connection drops, and
 * tells the server the last id it saw (Last-Event-ID) so the server can replay what it missed.
 *
 * This library is one single-threaded epoll loop that serves such streams (with topics,
 * replay, heartbeats and publishing over HTTP), a static page or directory, /metrics, a
 * reverse proxy that streams other servers' event streams unbuffered, and relays that
 * republish an upstream stream to local subscribers.
 * Embedding it is copying sse.c and sse.h into your program:
 *
 *     struct sse_config cfg = {0};                 // zeroed = every default
 *     char err[256];
 *     cfg.listen = "127.0.0.1:8080";
 *     struct sse_server *srv = sse_server_new(&cfg, err, sizeof err);
 *     if (!srv) { fprintf(stderr, "%s\n", err); return 1; }
 *     sse_publish(srv, "default", NULL, "hello", 5, NULL);   // queued for subscribers
 *     while (sse_poll(srv, 1000) > 0) {            // or sse_run(srv) until sse_stop(srv)
 *         sse_publish(srv, "time", "tick", "1", 1, NULL);
 *     }
 *     sse_server_free(srv);
 *
 * examples/minimal.c is that as a whole program; examples/embed/host.c drives the server from
 * a loop of its own (sse_fd, sse_next_timeout_ms, sse_poll) next to its timers and signals.
 *
 * Threads: none. A server belongs to the thread that drives it; no function here is
 * thread-safe (sse_format_event(), which is pure, excepted), and none may be called from a
 * signal handler: set a flag there, or read a signalfd, and call sse_stop() from the loop. To
 * publish from other threads, write to a pipe and hand its read end to sse_publish_from_fd().
 * Several servers may live in one process: the library has no global mutable state.
 *
 * Ownership: the caller owns what it passes in (config strings, event data, descriptors);
 * the library copies what it keeps and never frees or closes the caller's memory or
 * descriptors. What it returns (the server, sse_url()) is the library's, until
 * sse_server_free().
 *
 * Callbacks: on_log, on_request and on_authorize are the only calls from the library into
 * the host, on the server's thread. on_log runs inside sse_server_new(), sse_poll() (so
 * sse_run()), sse_publish(), sse_retire_topic(), sse_end_streams() and sse_server_free();
 * on_request and on_authorize only inside sse_poll(). From any of them the host may call
 * sse_publish(), sse_retire_topic(), sse_end_streams() and sse_publish_from_fd() (from on_log they
 * answer -EBUSY when the line was logged from inside a publish, a retire or sse_server_free()),
 * sse_stop(), sse_url(), sse_fd(), sse_next_timeout_ms() and sse_format_event(). sse_poll() and
 * sse_run() answer -EBUSY there, and sse_server_free() must not be called from them: free the
 * server after sse_poll() returns.
 *
 * The server: every function taking a struct sse_server * needs a live one (from
 * sse_server_new(), not yet freed); only sse_server_free(), sse_publish(),
 * sse_retire_topic(), sse_end_streams() and sse_publish_from_fd() accept NULL (freeing
 * nothing, or answering -EINVAL).
 *
 * Errors: functions that can fail return a negative errno value (-EINVAL, -ENOMEM, ...) or
 * NULL plus a message in a caller-provided buffer. The library never prints, exits or aborts;
 * it reports through the optional on_log callback. A failure while serving costs at most the
 * connection it happened on.
 *
 * Signals: the library never raises SIGPIPE (socket writes use MSG_NOSIGNAL, and SIGPIPE is
 * blocked around sendfile), and it does not install signal handlers.
 *
 * Compile-time knobs (define before compiling sse.c): SSE_HEAD_MAX (largest request head,
 * default 8192 bytes), SSE_MAX_HEADERS (default 64), SSE_MAX_TOPICS_PER_STREAM (default 32),
 * SSE_RETIRED_MAX (retirements remembered, see sse_retire_topic(); default 4096).
 *
 * Parts (each 1 = compiled in, the default; 0 = left out, for a smaller server): the core
 * (streams, replay from the in-memory backlog, publishing, inputs, static files, metrics)
 * is always there. SSE_ENABLE_PROXY adds the reverse proxy and the relay (proxy_routes,
 * relays, proxy_*), SSE_ENABLE_JOURNAL the journal (journal_*), SSE_ENABLE_REDIS the Redis
 * hub (redis, redis_*), SSE_ENABLE_AUTH authorization (jwt_*, public_topics, auth_*,
 * on_authorize). Built without a part, sse_server_new() refuses a configuration
 * that asks for it, with a message naming the switch ("built without SSE_ENABLE_REDIS").
 * The same values must be seen by sse.c and by a host that tests them (main.c does).
 */
#ifndef SSE_H
#define SSE_H

#ifndef SSE_ENABLE_PROXY
#define SSE_ENABLE_PROXY 1
#endif
#ifndef SSE_ENABLE_JOURNAL
#define SSE_ENABLE_JOURNAL 1
#endif
#ifndef SSE_ENABLE_REDIS
#define SSE_ENABLE_REDIS 1
#endif
#ifndef SSE_ENABLE_AUTH
#define SSE_ENABLE_AUTH 1
#endif

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* For the int fields of struct sse_config where 0 means "the default": this value means
 * "none" (no backlog, no heartbeat, no retry: line). */
#define SSE_OFF (-1)

/* What a zeroed field of struct sse_config stands for: each default is defined here once,
 * used by the library and shown by sse-server --help. */
#define SSE_DEFAULT_LISTEN            "127.0.0.1:8080"
#define SSE_DEFAULT_STREAM_PATH       "/events"
#define SSE_DEFAULT_BACKLOG           1024     /* events */
#define SSE_DEFAULT_BACKLOG_BYTES     67108864 /* 64 MiB */
#define SSE_DEFAULT_HEARTBEAT_MS      15000
#define SSE_DEFAULT_RETRY_MS          3000
#define SSE_DEFAULT_HEADER_TIMEOUT_MS 10000
#define SSE_DEFAULT_CLIENT_BUFFER     1048576 /* 1 MiB */
#define SSE_DEFAULT_MAX_EVENT_BYTES   1048576 /* 1 MiB */
#define SSE_DEFAULT_PUBLISH_WAIT_MS   5000
#define SSE_DEFAULT_PROXY_CONNECT_MS  5000
#define SSE_DEFAULT_JOURNAL_MAX_BYTES 67108864 /* 64 MiB */
#define SSE_DEFAULT_REDIS_STREAM      "sse"
#define SSE_DEFAULT_REDIS_MAXLEN      100000 /* entries */
#define SSE_DEFAULT_JWT_COOKIE        "sse_token"
#define SSE_DEFAULT_AUTH_TIMEOUT_MS   5000

/* Severity passed to on_log. SSE_LOG_DEBUG carries one line per connection opened and
 * closed, with the reason; SSE_LOG_INFO start-up facts; SSE_LOG_WARN trouble that costs a
 * connection or an input; SSE_LOG_ERROR trouble that costs more. */
enum sse_log_level { SSE_LOG_ERROR, SSE_LOG_WARN, SSE_LOG_INFO, SSE_LOG_DEBUG };

/* How sse_publish_from_fd() reads its input. */
enum sse_input_format {
    SSE_INPUT_LINES, /* every line (LF or CRLF ended) is one event on topic "default" */
    SSE_INPUT_SSE    /* text/event-stream blocks of topic:, event:, data: lines; a blank
                        line publishes the block (blocks without data are ignored, as in
                        the WHATWG parser) */
};

/* When the journal (sse_config.journal_path) calls fdatasync(). Every mode writes an event
 * to the file before it is delivered or acknowledged, so a crash of the process loses
 * nothing; the modes differ in what a power loss or kernel crash can take. */
enum sse_journal_sync {
    SSE_JOURNAL_BATCH,  /* default: at most 1 s after a write: a power loss takes at most
                           the last second of events; the loop waits for one fdatasync()
                           per second of writes */
    SSE_JOURNAL_ALWAYS, /* before every publish returns: nothing acknowledged is lost; each
                           publish waits for the disk, and one whose sync fails is refused
                           (-EIO) and cut off the file */
    SSE_JOURNAL_NONE    /* never: the kernel writes back when it likes (typically 30 s) */
};

/* A reverse-proxy route: requests whose path starts with prefix, at a '/' boundary, go to
 * upstream with the rest of the path and the query appended. The longest prefix wins. The
 * path is matched and sent up canonical (RFC 3986: escapes of unreserved characters such
 * as %2e decoded) and without dot segments, so the upstream never gets a path outside its
 * base; paths whose dot segments leave a route or the root, encoded slashes or backslashes
 * (%2f, %5c), raw backslashes, double-encoded dots and paths that do not decode to UTF-8
 * get 400. Connection never strips Content-Length or Host from what goes up; the client's
 * forwarding headers (also spelt with '_') are replaced by ours, Forwarded gets our element
 * last, and Via gets "1.1 sse-server" (RFC 9110 7.6.3). The stream path, /publish, /metrics and /healthz keep their own meaning. */
struct sse_proxy_route {
    const char *prefix;   /* "/api" matches /api and /api/x, not /apix; "/" matches all */
    const char *upstream; /* "http://HOST[:PORT][/BASE]"; HOST is resolved once, at start */
};

/* A relay: the server follows an upstream event stream the way an EventSource does
 * (reconnecting with Last-Event-ID, honouring retry:) and republishes every event on a
 * local topic, with a local id. It waits at least 250 ms between attempts whatever retry:
 * says, and while attempts deliver no event it backs off exponentially with jitter, up to
 * 30 s (or retry:, if longer); an event resets the back-off. */
struct sse_relay {
    const char *topic; /* local topic the events go to */
    const char *url;   /* "http://HOST[:PORT]/PATH[?QUERY]" serving text/event-stream */
};

struct sse_server;

/* A request as on_request sees it. Every pointer is valid only during the call. */
struct sse_request {
    const char *method;  /* "GET", "POST", ... NUL-terminated */
    const char *path;    /* percent-decoded, NUL-terminated, starts with '/'; no query */
    const char *version; /* "HTTP/1.1" or "HTTP/1.0", as the request line said */
    void *impl;          /* the library's; read headers and parameters with the functions below */
};

/* Everything is optional: a zeroed struct is a working server on 127.0.0.1:8080. Strings
 * and arrays are copied by sse_server_new(), so they may be freed afterwards. */
/* Its comments are aligned by hand, in groups, within 100 columns: */
/* clang-format off */
struct sse_config {
    const char *listen;          /* "HOST:PORT", ":PORT" (all addresses), "[::1]:PORT"; port 0
                                    picks a free port. NULL = SSE_DEFAULT_LISTEN. HOST may be a
                                    name, resolved once here. */
    const char *stream_path;     /* EventSource endpoint prefix. NULL =
                                    SSE_DEFAULT_STREAM_PATH */
    const char *static_root;     /* serve files under this directory; NULL = none */
    const char *index_page;      /* without static_root: bytes served as text/html at "/" */
    size_t index_page_len;       /* length of index_page */
    const char *publish_token;   /* enables POST/DELETE /publish; NULL = publishing over HTTP
                                    is off (403) */
    const char *subscribe_token; /* subscribers must present it; NULL = open */
    const char *cors_origin;     /* "*" or one origin for Access-Control-Allow-Origin; NULL =
                                    no CORS headers */
    int backlog;                 /* events kept for replay. 0 = SSE_DEFAULT_BACKLOG;
                                    SSE_OFF = none */
    size_t backlog_bytes;        /* and the bytes they may hold: the oldest go first when
                                    either bound is passed. An event counts the bytes it
                                    has on the wire (its id:, event: and data: lines and the
                                    blank line), held once whatever queues share it; one
                                    bigger than this on its own is not kept. 0 =
                                    SSE_DEFAULT_BACKLOG_BYTES */
    int heartbeat_ms;            /* comment line after this much silence. 0 =
                                    SSE_DEFAULT_HEARTBEAT_MS; SSE_OFF = none */
    int retry_ms;                /* sent as retry: when a stream opens. 0 =
                                    SSE_DEFAULT_RETRY_MS; SSE_OFF =
                                    send none (the browser's default applies) */
    int position_event;          /* how a stream that asked for no last event id learns the
                                    current one. 0 = as the event "id: CURRENT", "event:
                                    position", "data:" (dispatched, so every client records
                                    the id: Firefox, Safari and the npm eventsource package
                                    take an id only from an event they fire; onmessage never
                                    sees it, type "position"). SSE_OFF = an id-only block
                                    "id: CURRENT" + blank line, which fires nothing and only
                                    Chromium records: for clients that handle every event
                                    alike */
    int max_clients;             /* client connections; 0 = RLIMIT_NOFILE minus a reserve
                                    for over-limit answers, relays and the server's own
                                    descriptors, halved with proxy routes, static_root or
                                    auth_url (a client may then hold a second descriptor) */
    int max_clients_per_ip;      /* client connections from one address; more are answered
                                    as over max_clients (a stream request gets 200 and a
                                    retry: line, then the connection closes). 0 = no limit */
    int header_timeout_ms;       /* deadline for a whole request head. 0 =
                                    SSE_DEFAULT_HEADER_TIMEOUT_MS */
    size_t client_buffer;        /* bytes a subscriber may have queued before it is dropped.
                                    0 = SSE_DEFAULT_CLIENT_BUFFER */
    size_t max_event_bytes;      /* largest event payload. 0 =
                                    SSE_DEFAULT_MAX_EVENT_BYTES; at most 64 MiB */
    size_t pace_high_water;      /* flow control: a subscriber with more than this queued
                                    lags; when more than 1 in 10 subscribers lag, publishers
                                    are held (see sse_publish_ready()). 0 = client_buffer
                                    / 8; client_buffer or more = no flow control (slow
                                    subscribers are dropped, publishers never wait) */
    int publish_wait_ms;         /* flow control: how long an HTTP publish held for lagging
                                    subscribers waits before it is answered 503 with
                                    Retry-After (not published). 0 =
                                    SSE_DEFAULT_PUBLISH_WAIT_MS */
    const struct sse_proxy_route *proxy_routes; /* reverse-proxy routes, or NULL */
    size_t num_proxy_routes;                    /* entries in proxy_routes */
    int proxy_connect_timeout_ms; /* connecting to an upstream. 0 =
                                     SSE_DEFAULT_PROXY_CONNECT_MS */
    int proxy_heartbeat_ms;       /* comment injected between events of a proxied stream
                                     after this much upstream silence. 0 = none */
    const struct sse_relay *relays; /* upstream streams to relay, or NULL */
    size_t num_relays;              /* entries in relays */
    const char *journal_path; /* append every event to this file before it is delivered, and
                                 replay the file into the backlog at start (ids continue,
                                 Last-Event-ID works across restarts); NULL = none. Created
                                 mode 0600 if missing; locked, so one server per file. Its
                                 header carries a CRC-32 (a header that fails it is
                                 refused); version 1 files (no CRC) are read and rewritten.
                                 While a write fails (a full disk) /healthz answers 503
                                 "journal cannot write", until a write or a probe works */
    enum sse_journal_sync journal_sync; /* see above; 0 = SSE_JOURNAL_BATCH */
    size_t journal_max_bytes; /* beyond this the file is rewritten with just the backlog
                                 (but not before it doubled since the last rewrite): it
                                 stays under this or twice the backlog's bytes, whichever is
                                 larger, plus one event. 0 =
                                 SSE_DEFAULT_JOURNAL_MAX_BYTES */
    const char *redis;          /* "HOST:PORT": make this server a node of a hub sharing one
                                   event history through a Redis stream (resolved once,
                                   here); NULL = none. Not with journal_path. An idle link
                                   is probed with PING every 3 s (no PONG within 5 s: lost).
                                   A Last-Event-ID the stream cannot prove it covers (older
                                   than its first entry: trimmed, or Redis lost its data)
                                   gets the reset event, as with the local backlog */
    const char *redis_stream;   /* the stream's key. NULL = SSE_DEFAULT_REDIS_STREAM */
    const char *redis_password; /* sent with AUTH when connecting; NULL = none */
    size_t redis_maxlen;        /* XADD MAXLEN ~ this: entries Redis keeps. 0 =
                                   SSE_DEFAULT_REDIS_MAXLEN */
    /* Authorization: who may hear and publish what (SSE_ENABLE_AUTH; see "Authorization"
       below). With none of these set, subscribe_token and publish_token alone decide. */
    const char *jwt_secret;     /* the HS256 key signed tokens are checked with; NULL = no
                                   tokens. With it, a stream's every topic must be granted
                                   by the client's token or be public */
    size_t jwt_secret_len;      /* bytes of jwt_secret (it may hold any byte); 0 = strlen */
    const char *jwt_cookie;     /* the cookie a token may come in. NULL =
                                   SSE_DEFAULT_JWT_COOKIE */
    const char *jwt_audience;   /* a token's aud must name this; NULL = aud not checked */
    const char *const *public_topics; /* topics anyone may hear, without a token or asking:
                                         names, "*" or prefixes ending in '*'; or NULL */
    size_t num_public_topics;         /* entries in public_topics */
    const char *auth_url;       /* "http://HOST[:PORT]/PATH[?QUERY]": the application asked
                                   before a stream starts (HOST resolved once, here); NULL =
                                   none */
    int auth_cache_ms;          /* how long the application's allow or deny is reused for
                                   the same Cookie, Authorization and topics. 0 = never */
    /* The host decides who may subscribe and publish (see "Authorization" below); NULL =
       none. */
    int (*on_authorize)(struct sse_server *srv, const struct sse_request *req, int publish,
                        const char *const *topics, size_t n, int *keep, void *user);
    /* A route of the host's own, asked about every request before the built-in endpoints
       (see "Custom routes" below); NULL = none. */
    int (*on_request)(struct sse_server *srv, const struct sse_request *req, void *user);
    void (*on_log)(enum sse_log_level level, const char *msg, void *user);
    void *user; /* passed to on_request, on_authorize and on_log, never dereferenced by the library.
                   on_log: NULL = silent;
                   msg is one line without a newline (cut at 511 bytes), valid only during
                   the call; the top of this file says what on_log may call */
};
/* clang-format on */

/* ---- Lifecycle ------------------------------------------------------------------------- */

/* Creates a server and starts listening. config NULL = every default; it is copied and may be
 * freed on return. Returns NULL on failure and writes a one-line, NUL-terminated reason into
 * err (errlen bytes; err may be NULL when errlen is 0). Blocking work (name lookup, bind,
 * reading the journal) happens here and never again; on_log may already be called (the
 * journal read back). The caller owns the result and frees it with sse_server_free(). */
struct sse_server *sse_server_new(const struct sse_config *config, char *err, size_t errlen);

/* Closes every connection at once and frees everything, sse_fd() and sse_url() included (a
 * host's epoll set forgets the closed descriptor by itself). NULL is allowed. Descriptors
 * given to sse_publish_from_fd() stay open: they are the caller's. For a graceful exit call
 * sse_stop() and drive the loop until sse_poll() returns 0 first. Never from on_log. */
void sse_server_free(struct sse_server *srv);

/* The address actually listened on, as "http://HOST:PORT/" (the real port when 0 was asked
 * for). Never NULL. Owned by the server; valid until sse_server_free(). */
const char *sse_url(const struct sse_server *srv);

/* ---- Publishing ------------------------------------------------------------------------ */

/* Publishes data[0..len) (UTF-8) as one event on topic (NULL = "default") with event type
 * event (NULL = the default type, "message"). The server assigns the id (decimal, strictly
 * increasing across topics, never reused after a restart) and stores it in *id_out when
 * id_out is not NULL. The event is formatted once and its bytes are shared by every
 * subscriber; they go out on the next loop iteration.
 * Topic names are 1 to 64 of A-Z a-z 0-9 . _ -. topic, event and data are copied: the caller
 * may reuse them on return. A subscriber that would lag more than client_buffer behind is
 * dropped (its EventSource reconnects and replays) and not counted.
 * Returns the number of subscribers it was queued to, or -EINVAL (srv NULL, bad topic name,
 * event type empty or with CR, LF or NUL, data NULL with len > 0, or data not valid UTF-8),
 * -EMSGSIZE (over max_event_bytes), -ENOMEM, -EIO when the journal could not store it (then
 * nobody received it), -EOVERFLOW when the id space is exhausted (the last id is
 * UINT64_MAX, which only a journal whose floor says so can bring near: ids never wrap, so
 * nothing more is published, and /healthz answers 503 "id space exhausted"), -EAGAIN while
 * the subscribers are behind (nothing was published; see sse_publish_ready()), or -EBUSY
 * when called from on_log for a line logged inside a publish, a retire or
 * sse_server_free(). With a journal the event is in the file when this returns (and synced,
 * with SSE_JOURNAL_ALWAYS). After sse_stop() it still goes to the backlog and the journal,
 * but to no subscriber.
 * With redis set, 0 means queued for Redis, not yet stored: the event goes to Redis (XADD)
 * and is delivered, to this server's subscribers as to every other node's, when it comes
 * back through the stream; *id_out gets 0 (Redis assigns the id, the subscribers see it).
 * If Redis refuses the XADD, the event is logged, counted in sse_redis_errors_total, and
 * nobody receives it. While the link to Redis is down (or AUTH has not been accepted yet,
 * or Redis is behind: 1 MiB or 16384 commands unanswered) the event is kept in memory,
 * after those kept before it, and sent once the link is back, through AUTH and caught up;
 * kept events are lost only if the server is freed first (or memory runs out: -ENOMEM). An
 * event whose XADD was written but not answered when the link died is sent again: it may
 * be stored twice, never lost. Past 8 MiB of kept events this returns -EAGAIN (nothing
 * kept; try again once the link is back). */
int sse_publish(struct sse_server *srv, const char *topic, const char *event, const char *data,
                size_t len, uint64_t *id_out);

/* Flow control: whether the server takes events now. While more than 1 subscriber in 10
 * has more than pace_high_water bytes queued, the server paces its publishers rather than
 * queue what it cannot deliver (and drop everyone at client_buffer): it stops reading
 * inputs (their writers block), relays (TCP pushes back on the upstream) and HTTP publishes
 * (answered once the subscribers caught up, or 503 + Retry-After after publish_wait_ms), and
 * sse_publish() answers -EAGAIN. It takes events again once no more than 1 in 20 lags.
 * A subscriber slower than the rest does not pace them for long: one that takes no bytes
 * for a second of a hold, or that still lags two seconds after three in four of the
 * subscribers caught up, is left behind (dropped at client_buffer unless it catches up),
 * and a hold ends after 10 s whatever lags. As a node of a Redis hub this is also 0 while Redis is
 * behind (see sse_publish(); publishing still works then, up to 8 MiB kept). A host with a producer
 * of its own checks this after sse_poll() and holds its producer while it is 0. */
int sse_publish_ready(const struct sse_server *srv);

/* Retires a topic: its subscribers get what is queued for them and are closed, and new
 * subscriptions to it are answered 204 (which tells EventSource to stop reconnecting) until
 * something is published there again. A subscriber that follows other topics as well stays.
 * The last SSE_RETIRED_MAX retirements are remembered; an older one is forgotten (and its
 * topic freed once nothing else holds it), so retiring new names costs bounded memory.
 * Returns the number of subscribers closed, or -EINVAL (srv or topic NULL, bad topic name),
 * -ENOMEM, or -EBUSY from on_log as for sse_publish(). */
int sse_retire_topic(struct sse_server *srv, const char *topic);

/* Publishes what arrives on fd, read without ever blocking the loop, in the given format.
 * Pipes, sockets and terminals are watched; regular files are read a chunk per loop
 * iteration. Lines or data that are not valid UTF-8 or are over max_event_bytes are skipped
 * with a warning. At end of input, on a read error or at sse_stop() the server stops reading
 * fd but keeps serving; it never closes fd (the caller owns it, and keeps it open until
 * then or until sse_server_free()). Returns 0, or -EINVAL (srv NULL, fd negative, unknown
 * format), -ENOMEM, -EBUSY (from on_log, as for sse_publish()), or the negative errno of
 * epoll_ctl(). */
int sse_publish_from_fd(struct sse_server *srv, int fd, enum sse_input_format format);

/* Retires nothing, loses nothing: ends the stream of every subscriber of topic, whatever
 * else it follows, once what is queued for it has gone out. Its EventSource sees the end of
 * the response, waits retry ms and reconnects with Last-Event-ID, and the replay gives it
 * what it missed meanwhile. For moving clients to another node or letting them pick up a new
 * configuration; the demo page's Drop button uses it. Returns the number of streams ended,
 * or -EINVAL (srv or topic NULL, bad topic name), -ENOMEM, or -EBUSY from on_log as for
 * sse_publish(). */
int sse_end_streams(struct sse_server *srv, const char *topic);

/* ---- Custom routes --------------------------------------------------------------------- */

/* sse_config.on_request is asked about every well-formed request before the built-in
 * endpoints (the stream path, /publish, /metrics, /healthz, proxy routes, files), except
 * those turned away over max_clients. It answers with sse_respond(), or with an event stream
 * with sse_respond_stream(), and returns 1, or returns 0 to decline (the built-in routes take
 * the request); an answer counts whatever it returns, and returning 1 without one gets the
 * client a 500 and a warning in the log.
 * Tokens are the host's business here: the library checks nothing before asking (the
 * cors_origin headers are added to the answer as to every response). A request body is never
 * read for the host: answering a request that has one closes the connection after the
 * answer. The callback runs inside sse_poll(); from it the host may call what on_log may
 * (sse_publish(), sse_end_streams() and the rest work normally here), but not sse_poll(),
 * sse_run() (-EBUSY) or sse_server_free().
 *
 * The functions below take the request on_request was given, and only during that call. */

/* Answers the request: status (200 to 599), content_type (NULL = "text/plain;
 * charset=utf-8"; at most 256 bytes, no CR or LF), and body[0..len) (copied before this
 * returns; at most max_event_bytes). A HEAD request gets the head only. Returns 0, or
 * -EINVAL (bad status or content type, body NULL with len > 0, or answered already) or
 * -EMSGSIZE; then nothing was sent, and the host may answer again. */
int sse_respond(const struct sse_request *req, int status, const char *content_type,
                const char *body, size_t len);

/* Answers the request with an event stream on topics[0..n), exactly as the stream path
 * answers a GET for those topics: the stream head, retry:, then first[0..len), then the
 * catch-up (the events after the request's Last-Event-ID, or the reset event, or the
 * position event when it sent none), then live events and heartbeats, under client_buffer
 * and flow control like every subscriber; sse_end_streams() and sse_retire_topic() end it
 * too. topics: 1 to SSE_MAX_TOPICS_PER_STREAM valid names (see sse_publish()); a name given
 * twice counts once; the array and the names are the caller's. first: whole events already
 * formatted, such as sse_format_event() writes, for this subscriber alone (copied before this
 * returns; NULL with len 0 for none). Give them id 0 (no id: line): they are not in the
 * history, so a reconnect gets them afresh rather than replayed, and an id of theirs would
 * become the client's Last-Event-ID. As everywhere in on_request, tokens and the Accept
 * header are the host's to check. Like the stream path, a request whose every topic is
 * retired is answered 204, and one the server cannot place yet (a Redis node before Redis
 * answered) 200 with a retry: line, then closed: each is the answer, and this returns 0.
 * Returns 0, or -EINVAL (the method is not GET, answered already, topics NULL, n 0 or too
 * many, a bad topic name, first NULL with len > 0, first not valid UTF-8, or not ending in
 * a blank line) or -EMSGSIZE (len over max_event_bytes), or -ENOMEM before anything was
 * queued: then nothing was sent, and the host may answer again; or -ENOMEM once the stream
 * was under way: the connection is closed, and that was the answer. */
int sse_respond_stream(const struct sse_request *req, const char *const *topics, size_t n,
                       const char *first, size_t len);

/* The header fields one by one, in the order they were received (repeated fields too): the
 * i-th, from 0, as *name (as sent) and *value (without surrounding whitespace, as
 * sse_request_header() gives it), neither NUL-terminated, their lengths in *name_len and
 * *value_len. Returns 0, or -ENOENT when i is past the last field (the pointers are left
 * alone), so a loop from 0 ends there. A request has at most SSE_MAX_HEADERS fields (one
 * with more is answered 431 before on_request sees it). */
int sse_request_header_at(const struct sse_request *req, size_t i, const char **name,
                          size_t *name_len, const char **value, size_t *value_len);

/* The client's address ("192.0.2.7", "2001:db8::1"; an IPv4-mapped one as IPv4), NUL-terminated,
 * valid during the call; "unknown" if the socket no longer has one. */
const char *sse_request_peer(const struct sse_request *req);

/* The value of the first header field called name (case-insensitive), without surrounding
 * whitespace, as sent: not NUL-terminated, its length in *len. NULL when there is none. */
const char *sse_request_header(const struct sse_request *req, const char *name, size_t *len);

/* The value of the first query parameter called name, percent-decoded ("+" is a space): not
 * NUL-terminated, its length in *len ("" when the parameter has no '='). NULL when there is
 * none. */
const char *sse_request_param(const struct sse_request *req, const char *name, size_t *len);

/* ---- Authorization ----------------------------------------------------------------------- */

/* Who may hear what (SSE_ENABLE_AUTH). By default anyone may subscribe to any topic (or anyone
 * with subscribe_token). With jwt_secret, a subscriber presents a signed token (JWT, HS256:
 * RFC 7519) as "Authorization: Bearer", in the jwt_cookie cookie or as ?access_token= (an
 * EventSource cannot set headers), listing its grants as {"sse": {"subscribe": [...],
 * "publish": [...]}} (or the same under "mercure"): topic names, "*", or prefixes ending in
 * '*'. Every topic a stream asks for must be granted or public, or the answer is 403 naming
 * the first refused one; no token gets 401, a bad one (any alg but HS256, a bad signature,
 * expired or not yet valid beyond 5 s, another audience, over 8 KiB, malformed) 401 too. A
 * stream whose token has exp ends 5 s after it, with a retry: line, so its EventSource comes
 * back (with Last-Event-ID and, once the application renewed it, a new token) and misses
 * nothing. A token with a publish grant may publish (and retire) those topics over HTTP,
 * beside publish_token. /metrics counts refusals by reason (sse_auth_refused_total).
 *
 * on_authorize is then asked, when set, about every subscription (publish 0) that is not to
 * public topics only, and every publish not made with publish_token (publish 1), with the
 * topics asked for in topics[0..n) (a publish: one). It runs inside sse_poll(), on the
 * server's thread, as on_request does (see there what it may call; sse_respond() answers
 * -EINVAL here). It returns an HTTP status: 200 allows; 401 or 403 refuses with that status
 * (an EventSource then stops for good); any other means "cannot say now": an EventSource gets
 * 200 and a retry: line (it comes back later), any other request 503. A subscription may be
 * narrowed: keep[i] (all 1 on entry) set to 0 drops topics[i]; dropping all is a 403.
 *
 * auth_url asks an application instead, over HTTP, without blocking the loop: before a stream
 * that is not to public topics only starts, a GET to the URL carrying the client's Cookie and
 * Authorization, X-Forwarded-For (the client's, then its address) and X-SSE-Topics (the
 * topics, ", " between them). A 2xx allows (its X-SSE-Topics, if any, narrows to the topics
 * it lists); 401 and 403 are passed on; anything else, or no answer within
 * SSE_DEFAULT_AUTH_TIMEOUT_MS, is "cannot say now" as above. */

/* ---- Driving the loop ------------------------------------------------------------------ */

/* Runs the loop until sse_stop() has been called and every connection is closed. Returns 0,
 * or a negative errno if the loop itself failed (-EBUSY: called from on_log). */
int sse_run(struct sse_server *srv);

/* One loop iteration: sends what is queued, waits up to timeout_ms (-1 = no limit; 0 = never
 * blocks) for network activity, handles it, runs due timers. It waits less when a timer of
 * its own is due sooner, and returns early on activity or a signal. Returns 1 while serving,
 * 0 once stopped (after sse_stop() and the drain; from then on every call returns 0), or a
 * negative errno if epoll failed (-EBUSY: called from on_log, which runs inside it). */
int sse_poll(struct sse_server *srv, int timeout_ms);

/* For a host with its own loop: a file descriptor (the server's epoll instance; the same one
 * until sse_server_free(), which closes it) that becomes readable when the server has work.
 * Watch it for reading, level-triggered, in the host's epoll, poll or select; when it is
 * readable, or sse_next_timeout_ms() has elapsed, call sse_poll(srv, 0). Calling
 * sse_poll(srv, 0) after every wake-up, whatever woke the host, is simplest and correct. */
int sse_fd(const struct sse_server *srv);

/* Milliseconds until the server needs sse_poll() again even without activity on sse_fd():
 * 0 when it has work queued (for example after sse_publish()), -1 when it has no timer.
 * It changes with every call into the server: ask again right before each wait. */
int sse_next_timeout_ms(const struct sse_server *srv);

/* Starts a graceful stop: stops accepting, sends every subscriber a retry: with jitter (so
 * the clients of a restarting server come back spread out, not as a stampede), lets queued
 * bytes go out for at most half a second and closes every connection. Only sets a flag: the
 * work happens in the following sse_poll() calls, the last of which returns 0. Calling it
 * again changes nothing. Safe from on_log; not from a signal handler (see Threads above). */
void sse_stop(struct sse_server *srv);

/* ---- The wire format ------------------------------------------------------------------- */

/* Formats one event as text/event-stream bytes, the way the server sends it: "id: ID" (when
 * id is not 0), "event: TYPE" (when event is not NULL), one "data: LINE" for every line of
 * data[0..len) (CR, LF and CRLF all end a line; an empty line is written "data:"), then a
 * blank line. Pure: no allocation, no system call. Writes at most cap bytes into buf (buf
 * may be NULL when cap is 0) and returns the number of bytes the event needs, so a caller can
 * size its buffer with a first call; the output is complete only when that number is at most
 * cap. Returns 0 if event contains CR, LF or NUL or is empty. The data is not checked for
 * UTF-8 here. Needs no server, and may be called from any thread. */
size_t sse_format_event(char *buf, size_t cap, uint64_t id, const char *event, const char *data,
                        size_t len);

#ifdef __cplusplus
}
#endif

#endif /* SSE_H */
