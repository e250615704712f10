/*
 * Unit tests for the pure parts of sse.c (sections 2 to 5). The file includes sse.c so the
 * static functions are reachable. Parsers are fed every truncated prefix of their input,
 * placed against an unmapped guard page so a read past the end crashes the test.
 */
#include "../sse.c" /* NOLINT(bugprone-suspicious-include): for its static functions */

#include <sys/mman.h>

static int failures, checks;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
        }                                                                                          \
    } while (0)

/* Copies s[0..len) so that its last byte is the last byte before an unmapped page. */
static char *guarded(const char *s, size_t len) {
    static char *page;
    static size_t page_size;
    if (!page) {
        page_size = (size_t)sysconf(_SC_PAGESIZE);
        int prot = PROT_READ | PROT_WRITE, anonymous = MAP_PRIVATE | MAP_ANONYMOUS;
        /* cppcheck-suppress invalidFunctionArg ; fd -1 is what MAP_ANONYMOUS asks for */
        page = mmap(NULL, 4 * page_size, prot, anonymous, -1, 0);
        if (page == MAP_FAILED)
            abort();
        mprotect(page + 3 * page_size, page_size, PROT_NONE);
    }
    if (len > 3 * page_size)
        abort();
    char *p = page + 3 * page_size - len;
    memcpy(p, s, len);
    return p;
}

static bool format_is(uint64_t id, const char *event, const char *data, size_t len,
                      const char *want) {
    char buf[512];
    size_t n = sse_format_event(buf, sizeof buf, id, event, data, len);
    if (n != strlen(want) || memcmp(buf, want, n) != 0) {
        fprintf(stderr, "  got %zu bytes: %.*s\n", n, (int)(n < sizeof buf ? n : sizeof buf), buf);
        return false;
    }
    return true;
}

static void test_format(void) {
    CHECK(format_is(1, NULL, "hello", 5, "id: 1\ndata: hello\n\n"));
    CHECK(format_is(42, "price", "a\nb", 3, "id: 42\nevent: price\ndata: a\ndata: b\n\n"));
    CHECK(format_is(7, NULL, "a\rb\r\nc\nd", 8, "id: 7\ndata: a\ndata: b\ndata: c\ndata: d\n\n"));
    CHECK(format_is(7, NULL, "", 0, "id: 7\ndata:\n\n"));
    CHECK(format_is(7, NULL, NULL, 0, "id: 7\ndata:\n\n"));
    CHECK(format_is(7, NULL, "x\n", 2, "id: 7\ndata: x\ndata:\n\n"));
    CHECK(format_is(7, NULL, "\n", 1, "id: 7\ndata:\ndata:\n\n"));
    CHECK(format_is(7, NULL, "\r\n\r\n", 4, "id: 7\ndata:\ndata:\ndata:\n\n"));
    CHECK(format_is(7, NULL, " x", 2, "id: 7\ndata:  x\n\n"));
    CHECK(format_is(0, NULL, "x", 1, "data: x\n\n"));
    CHECK(format_is(UINT64_MAX, NULL, "x", 1, "id: 18446744073709551615\ndata: x\n\n"));
    CHECK(sse_format_event(NULL, 0, 1, "a\nb", "x", 1) == 0);
    CHECK(sse_format_event(NULL, 0, 1, "a\rb", "x", 1) == 0);
    CHECK(sse_format_event(NULL, 0, 1, "", "x", 1) == 0);
    /* Sizing: a short buffer is never overrun and the needed size is reported. */
    char small[8];
    memset(small, 'Z', sizeof small);
    size_t need = sse_format_event(small, 4, 123, "e", "data", 4);
    CHECK(need == strlen("id: 123\nevent: e\ndata: data\n\n"));
    CHECK(small[4] == 'Z' && small[7] == 'Z');
    CHECK(sse_format_event(NULL, 0, 123, "e", "data", 4) == need);
}

static void test_utf8(void) {
    CHECK(wire_utf8_valid("", 0));
    CHECK(wire_utf8_valid("plain", 5));
    CHECK(wire_utf8_valid("caf\xc3\xa9", 5));
    CHECK(wire_utf8_valid("\xe2\x82\xac", 3));
    CHECK(wire_utf8_valid("\xf0\x9f\x98\x80", 4));
    CHECK(wire_utf8_valid("\xf4\x8f\xbf\xbf", 4));
    CHECK(wire_utf8_valid("a\0b", 3));
    CHECK(!wire_utf8_valid("\xff", 1));
    CHECK(!wire_utf8_valid("\xc0\xaf", 2));         /* overlong '/' */
    CHECK(!wire_utf8_valid("\xe0\x80\xaf", 3));     /* overlong */
    CHECK(!wire_utf8_valid("\xed\xa0\x80", 3));     /* surrogate */
    CHECK(!wire_utf8_valid("\xf4\x90\x80\x80", 4)); /* above U+10FFFF */
    CHECK(!wire_utf8_valid("\xc3", 1));             /* truncated */
    CHECK(!wire_utf8_valid("\xe2\x82", 2));
    CHECK(!wire_utf8_valid("\x80", 1)); /* lone continuation */
    /* Truncated sequences at a guard page must not be read past. */
    const char *euro = "\xe2\x82\xac";
    for (size_t n = 0; n <= 3; n++)
        CHECK(wire_utf8_valid(guarded(euro, n), n) == (n == 0 || n == 3));
}

static void test_names(void) {
    CHECK(wire_topic_valid("default", 7));
    CHECK(wire_topic_valid("a.b_c-D9", 8));
    CHECK(!wire_topic_valid("", 0));
    CHECK(!wire_topic_valid("a b", 3));
    CHECK(!wire_topic_valid("a/b", 3));
    char long_name[66];
    memset(long_name, 'x', sizeof long_name);
    CHECK(wire_topic_valid(long_name, 64));
    CHECK(!wire_topic_valid(long_name, 65));
    CHECK(wire_event_type_valid("price update", 12));
    CHECK(!wire_event_type_valid("a\nb", 3));
    CHECK(!wire_event_type_valid("a\rb", 3));
    CHECK(!wire_event_type_valid("a\0b", 3));
    CHECK(!wire_event_type_valid("\xff", 1));
    CHECK(!wire_event_type_valid("", 0));
}

static bool json_is(const char *in, size_t len, const char *want) {
    char buf[256];
    struct wbuf w = {buf, sizeof buf, 0};
    wire_json_string(&w, in, len);
    return w.len == strlen(want) && memcmp(buf, want, w.len) == 0;
}

static void test_json(void) {
    CHECK(json_is("abc", 3, "\"abc\""));
    CHECK(json_is("a\"b\\c", 5, "\"a\\\"b\\\\c\""));
    CHECK(json_is("\n\x01", 2, "\"\\u000a\\u0001\""));
    CHECK(json_is("caf\xc3\xa9", 5, "\"caf\xc3\xa9\""));
    CHECK(json_is("\xff"
                  "a",
                  2, "\"\\ufffda\""));
    CHECK(json_is("\xe2\x82", 2, "\"\\ufffd\\ufffd\""));
}

/* ---- the input reader ---- */

struct collected {
    char out[4096]; /* "topic|event|data;" per event, "!reason;" per skip */
    size_t len;
};

static void collect(void *ctx, const char *topic, const char *event, const char *data, size_t len,
                    const char *skipped) {
    struct collected *c = ctx;
    struct wbuf w = {c->out + c->len, sizeof c->out - c->len, 0};
    if (skipped) {
        wb_str(&w, "!");
        wb_str(&w, skipped);
    } else {
        wb_str(&w, topic ? topic : "-");
        wb_str(&w, "|");
        wb_str(&w, event ? event : "-");
        wb_str(&w, "|");
        wb_put(&w, data, len);
    }
    wb_str(&w, ";");
    c->len += w.len;
}

/* Feeds input whole and byte by byte; both must give want. */
static bool reader_gives(enum sse_input_format format, size_t max, const char *input,
                         const char *want) {
    bool ok = true;
    for (int bytewise = 0; bytewise < 2; bytewise++) {
        struct wire_reader r;
        struct collected c = {.len = 0};
        wire_reader_init(&r, format, max);
        size_t n = strlen(input);
        if (bytewise) {
            for (size_t i = 0; i < n; i++)
                wire_reader_feed(&r, input + i, 1, collect, &c);
        } else {
            wire_reader_feed(&r, input, n, collect, &c);
        }
        wire_reader_finish(&r, collect, &c);
        wire_reader_free(&r);
        if (c.len != strlen(want) || memcmp(c.out, want, c.len) != 0) {
            fprintf(stderr, "  %s: got %.*s\n", bytewise ? "bytewise" : "whole", (int)c.len, c.out);
            ok = false;
        }
    }
    return ok;
}

static void test_reader(void) {
    CHECK(reader_gives(SSE_INPUT_LINES, 100, "a\nb\r\n\nlast", "-|-|a;-|-|b;-|-|;-|-|last;"));
    CHECK(reader_gives(SSE_INPUT_LINES, 3, "abc\nabcd\nx\n",
                       "-|-|abc;!line over max_event_bytes;-|-|x;"));
    CHECK(reader_gives(SSE_INPUT_LINES, 100, "a\rb\n", "-|-|a\rb;"));
    CHECK(reader_gives(SSE_INPUT_SSE, 100,
                       "topic: t\nevent: e\ndata: 1\ndata:2\n\n: comment\nid: 5\ndata\n\n",
                       "t|e|1\n2;-|-|;"));
    CHECK(reader_gives(SSE_INPUT_SSE, 100, "event: e\n\ndata: x\r\n\r\ndata: y\r\rdata: z\n",
                       "-|-|x;-|-|y;"));
    CHECK(reader_gives(SSE_INPUT_SSE, 100, "topic: a b\ndata: x\n\ndata: ok\n\n",
                       "!invalid topic name;-|-|ok;"));
    CHECK(reader_gives(SSE_INPUT_SSE, 4, "data: abc\ndata: d\n\ndata: abcd\n\n",
                       "!event over max_event_bytes;-|-|abcd;"));
}

/* ---- HTTP ---- */

static void test_http_prefixes(const char *req_text, long want) {
    size_t n = strlen(req_text);
    struct http_request req;
    for (size_t i = 0; i < n; i++) {
        long r = http_parse_request(guarded(req_text, i), i, &req);
        if (r != HTTP_INCOMPLETE)
            fprintf(stderr, "  prefix %zu of %s gave %ld\n", i, req_text, r);
        CHECK(r == HTTP_INCOMPLETE);
    }
    CHECK(http_parse_request(guarded(req_text, n), n, &req) == want);
}

static long parse(const char *s, struct http_request *req) {
    return http_parse_request(guarded(s, strlen(s)), strlen(s), req);
}

static void test_http_parse(void) {
    struct http_request req = {0};
    const char *get =
        "GET /events?topic=a HTTP/1.1\r\nHost: x\r\nAccept:  text/event-stream \r\n\r\n";
    test_http_prefixes(get, (long)strlen(get));
    CHECK(parse(get, &req) == (long)strlen(get));
    CHECK(bytes_eq(req.method, req.method_len, "GET"));
    CHECK(bytes_eq(req.target, req.target_len, "/events?topic=a"));
    CHECK(req.minor == 1 && req.num_headers == 2);
    CHECK(bytes_eq(req.headers[1].value, req.headers[1].value_len, "text/event-stream"));
    const char *lf = "GET / HTTP/1.0\nHost: x\n\n";
    test_http_prefixes(lf, (long)strlen(lf));
    CHECK(parse(lf, &req) > 0 && req.minor == 0);
    CHECK(parse("\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", &req) > 0);
    CHECK(parse("GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /", &req) == 27);
    CHECK(parse("GET / HTTP/1.1\r\nX:\r\n\r\n", &req) > 0 && req.headers[0].value_len == 0);
    /* malformed */
    CHECK(parse("GET  / HTTP/1.1\r\n\r\n", &req) == HTTP_BAD);
    CHECK(parse("GET / HTTP/1.1 \r\n\r\n", &req) == HTTP_BAD);
    CHECK(parse("GET / HTTQ/1.1\r\n\r\n", &req) == HTTP_BAD);
    CHECK(parse("G(T / HTTP/1.1\r\n\r\n", &req) == HTTP_BAD);
    CHECK(parse("GET /a\x7f HTTP/1.1\r\n\r\n", &req) == HTTP_BAD);
    CHECK(parse("GET / HTTP/1.1\r\nHost : x\r\n\r\n", &req) == HTTP_BAD);
    CHECK(parse("GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", &req) == HTTP_BAD);
    CHECK(parse("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", &req) == HTTP_BAD);
    CHECK(parse("GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n", &req) == HTTP_INCOMPLETE); /* strlen */
    CHECK(http_parse_request("GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n", 29, &req) == HTTP_BAD);
    CHECK(parse("GET / HTTP/1.1\r\nNoColon\r\n\r\n", &req) == HTTP_BAD);
    CHECK(parse("\x16\x03\x01\x02\r\n\r\n", &req) == HTTP_BAD);
    CHECK(parse("\rGET / HTTP/1.1\r\n\r\n", &req) == HTTP_BAD);
    CHECK(parse("GET / HTTP/2.0\r\n\r\n", &req) == HTTP_BAD_VERSION);
    CHECK(parse("GET / HTTP/1.2\r\n\r\n", &req) == HTTP_BAD_VERSION);
    /* too many headers */
    char many[4096];
    struct wbuf w = {many, sizeof many - 1, 0};
    wb_str(&w, "GET / HTTP/1.1\r\n");
    for (int i = 0; i <= SSE_MAX_HEADERS; i++)
        wb_str(&w, "X-A: b\r\n");
    wb_str(&w, "\r\n");
    many[w.len] = '\0';
    CHECK(parse(many, &req) == HTTP_TOO_LARGE);
}

static bool decodes_to(const char *in, bool plus, const char *want) {
    char out[256];
    long n = http_percent_decode(in, strlen(in), out, plus);
    if (!want)
        return n == -1;
    return n == (long)strlen(want) && memcmp(out, want, (size_t)n) == 0;
}

static void test_decode(void) {
    CHECK(decodes_to("/a%20b", false, "/a b"));
    CHECK(decodes_to("/a+b", false, "/a+b"));
    CHECK(decodes_to("a+b", true, "a b"));
    CHECK(decodes_to("%2e%2E", false, ".."));
    CHECK(decodes_to("%00", false, NULL));
    CHECK(decodes_to("%zz", false, NULL));
    CHECK(decodes_to("%4", false, NULL));
    CHECK(decodes_to("%", false, NULL));
    CHECK(decodes_to("ab%", false, NULL));
    /* a trailing '%' against the guard page is not read past */
    char out[8];
    CHECK(http_percent_decode(guarded("a%4", 3), 3, out, false) == -1);

    struct http_query q;
    char scratch[256];
    const char *qs = "topic=a&topic=b&&flag&e=x%20y+z&empty=";
    CHECK(http_parse_query(qs, strlen(qs), scratch, &q) == 0);
    CHECK(q.n == 5);
    CHECK(bytes_eq(q.params[1].value, q.params[1].value_len, "b"));
    CHECK(bytes_eq(q.params[2].key, q.params[2].key_len, "flag") && q.params[2].value_len == 0);
    CHECK(bytes_eq(q.params[3].value, q.params[3].value_len, "x y z"));
    CHECK(http_query_get(&q, "e") == &q.params[3]);
    CHECK(http_query_get(&q, "nope") == NULL);
    CHECK(http_parse_query("a=%0", 4, scratch, &q) == -1);
    char lots[1024];
    struct wbuf w = {lots, sizeof lots, 0};
    for (int i = 0; i <= QUERY_PARAMS_MAX; i++)
        wb_str(&w, "a=1&");
    CHECK(http_parse_query(lots, w.len, scratch, &q) == -1);
}

static bool accepts(const char *v) {
    return http_accepts_event_stream(v, strlen(v), true);
}

static bool names_event_stream(const char *v) {
    return http_accepts_event_stream(v, strlen(v), false);
}

static void test_http_helpers(void) {
    CHECK(accepts("text/event-stream"));
    CHECK(accepts("*/*"));
    CHECK(accepts("text/*"));
    CHECK(accepts("application/json, TEXT/EVENT-STREAM;q=0.5"));
    CHECK(accepts("text/html, */*; q=0.01"));
    CHECK(!accepts("application/json"));
    CHECK(!accepts("text/event-stream;q=0"));
    CHECK(!accepts("text/event-stream; q=0.000, application/json"));
    CHECK(!accepts(""));
    CHECK(!accepts("text/event-streamx"));
    CHECK(names_event_stream("text/event-stream"));
    CHECK(!names_event_stream("*/*"));
    CHECK(!names_event_stream("text/*"));

    const char *tok;
    size_t n;
    CHECK(http_bearer("Bearer abc", 10, &tok, &n) && bytes_eq(tok, n, "abc"));
    CHECK(http_bearer("bearer   abc", 12, &tok, &n) && bytes_eq(tok, n, "abc"));
    CHECK(!http_bearer("Basic abc", 9, &tok, &n));
    CHECK(!http_bearer("Bearer ", 7, &tok, &n));
    CHECK(!http_bearer("Bearerabc", 9, &tok, &n));

    CHECK(ct_equal("secret", 6, "secret", 6));
    CHECK(!ct_equal("secreT", 6, "secret", 6));
    CHECK(!ct_equal("secret1", 7, "secret", 6));
    CHECK(!ct_equal("secre", 5, "secret", 6));
    CHECK(!ct_equal("", 0, "secret", 6));

    CHECK(http_list_has("keep-alive, Upgrade", 19, "upgrade"));
    CHECK(http_list_has("Close", 5, "close"));
    CHECK(!http_list_has("closed", 6, "close"));

    char date[32];
    http_format_date(784111777, date);
    CHECK(strcmp(date, "Sun, 06 Nov 1994 08:49:37 GMT") == 0);
    time_t t;
    CHECK(http_parse_date(date, strlen(date), &t) && t == 784111777);
    CHECK(!http_parse_date("Sunday, 06-Nov-94 08:49:37 GMT", 30, &t));
    CHECK(!http_parse_date("Sun, 06 Nox 1994 08:49:37 GMT", 29, &t));
    CHECK(!http_parse_date("Sun, 06 Nov 1994 25:49:37 GMT", 29, &t));
}

static bool resolves_to(const char *path, const char *want) {
    char out[64];
    long n = static_resolve(path, strlen(path), out, sizeof out);
    if (!want)
        return n == -1;
    return n == (long)strlen(want) && strcmp(out, want) == 0;
}

static void test_static(void) {
    CHECK(resolves_to("/", "."));
    CHECK(resolves_to("/index.html", "index.html"));
    CHECK(resolves_to("//a/./b//c/", "a/b/c"));
    CHECK(resolves_to("/a/.../b", "a/.../b"));
    CHECK(resolves_to("/..", NULL));
    CHECK(resolves_to("/a/../b", NULL));
    CHECK(resolves_to("/../etc/passwd", NULL));
    CHECK(resolves_to("a", NULL));
    CHECK(resolves_to("", NULL));
    CHECK(resolves_to("/..a", "..a"));
    char too_long[100];
    memset(too_long, 'a', sizeof too_long);
    too_long[0] = '/';
    CHECK(static_resolve(too_long, sizeof too_long, too_long, 64) == -1);
    CHECK(strcmp(static_content_type("a/b.HTML"), "text/html; charset=utf-8") == 0);
    CHECK(strcmp(static_content_type("x.tar.gz"), "application/octet-stream") == 0);
    CHECK(strcmp(static_content_type("dir.js/file"), "application/octet-stream") == 0);
    CHECK(strcmp(static_content_type("noext"), "application/octet-stream") == 0);
}

#if SSE_ENABLE_PROXY
/* The proxy's path: canonical escapes, then dot segments removed; NULL = refused. */
static bool proxy_path_is(const char *raw, const char *want) {
    char out[64];
    long n = http_path_canon(raw, strlen(raw), out, sizeof out);
    long m = n >= 0 ? http_path_remove_dots(out, (size_t)n) : -1;
    if (!want)
        return m == -1;
    return m == (long)strlen(want) && memcmp(out, want, (size_t)m) == 0;
}
#endif

static bool encodes_to(const char *path, const char *want) {
    char out[64];
    struct wbuf w = {out, sizeof out, 0};
    http_path_encode(&w, path, strlen(path));
    return w.len == strlen(want) && memcmp(out, want, w.len) == 0;
}

#if SSE_ENABLE_PROXY
static void test_proxy_path(void) {
    CHECK(proxy_path_is("/", "/"));
    CHECK(proxy_path_is("/a/b/../c", "/a/c"));
    CHECK(proxy_path_is("/a/./b/.", "/a/b/"));
    CHECK(proxy_path_is("/a/b/..", "/a/"));
    CHECK(proxy_path_is("/a/..", "/"));
    CHECK(proxy_path_is("/a//../b", "/a/b"));
    CHECK(proxy_path_is("/a/%2e%2E/b", "/b"));
    CHECK(proxy_path_is("/a/.%2e/b", "/b"));
    CHECK(proxy_path_is("/%7e%41%3f%2a%c3%a9", "/~A%3F%2A%C3%A9"));
    CHECK(proxy_path_is("/...", "/..."));
    CHECK(proxy_path_is("/..a/.b", "/..a/.b"));
    CHECK(proxy_path_is("/..", NULL));
    CHECK(proxy_path_is("/a/../..", NULL));
    CHECK(proxy_path_is("/%2e%2e/x", NULL));
    CHECK(proxy_path_is("/a%2fb", NULL));
    CHECK(proxy_path_is("/a%5Cb", NULL));
    CHECK(proxy_path_is("/a\\b", NULL));
    CHECK(proxy_path_is("/%252e%252e", NULL));
    CHECK(proxy_path_is("/%25%32%65", NULL));
    CHECK(proxy_path_is("/%252F", NULL));
    CHECK(proxy_path_is("/%2541", "/%2541"));
    CHECK(proxy_path_is("/a%", NULL));
    CHECK(proxy_path_is("/a%4", NULL));
    CHECK(proxy_path_is("/a%zz", NULL));
    CHECK(proxy_path_is("/a%00", NULL));
    CHECK(proxy_path_is("a/b", NULL));
    CHECK(proxy_path_is("", NULL));
    char out[4];
    CHECK(http_path_canon("/abcd", 5, out, sizeof out) == -1);
    CHECK(http_path_canon("/ab", 3, out, sizeof out) == 3);
    CHECK(http_path_canon("/a%3f", 5, out, sizeof out) == -1);
}
#else /* built without the proxy: its tests are left out */
static void test_proxy_path(void) {}
#endif

/* A path as the directory redirect's Location writes it: percent-encoded, leading slashes
 * collapsed into one (never "//host"). */
static void test_path_encode(void) {
    CHECK(encodes_to("//evil.example/x", "/evil.example/x"));
    CHECK(encodes_to("/a b/\\c?%\"", "/a%20b/%5Cc%3F%25%22"));
    CHECK(encodes_to("/caf\xc3\xa9/~-._!$&'()*+,;=:@", "/caf%C3%A9/~-._!$&'()*+,;=:@"));
}

static void test_backlog(void) {
    struct backlog bl = {calloc(3, sizeof(struct blob *)), 3, 0, 0, 0, 0, SIZE_MAX};
    CHECK(!backlog_covers(&bl, 9, 10));
    CHECK(backlog_covers(&bl, 10, 10));
    for (uint64_t id = 11; id <= 15; id++) {
        struct blob *b = blob_from("x", 1);
        b->id = id;
        backlog_push(&bl, b, id - 1);
        blob_unref(b);
    }
    CHECK(bl.count == 3 && backlog_at(&bl, 0)->id == 13 && backlog_at(&bl, 2)->id == 15);
    CHECK(backlog_after(&bl, 12) == 0);
    CHECK(backlog_after(&bl, 13) == 1);
    CHECK(backlog_after(&bl, 15) == 3);
    CHECK(backlog_covers(&bl, 12, 15));
    CHECK(!backlog_covers(&bl, 11, 15));
    CHECK(backlog_covers(&bl, 15, 15));
    CHECK(!backlog_covers(&bl, 16, 15));
    CHECK(bl.bytes == 3);
    backlog_free(&bl);

    /* The byte bound: events of 4, 4 and 5 bytes under a bound of 9 keep the last two; an
     * event bigger than the bound empties the backlog. */
    struct backlog bb = {calloc(8, sizeof(struct blob *)), 8, 0, 0, 0, 0, 9};
    const char *texts[] = {"aaaa", "bbbb", "ccccc", "0123456789", "dd"};
    for (uint64_t i = 0; i < 5; i++) {
        struct blob *b = blob_from(texts[i], strlen(texts[i]));
        b->id = 21 + i;
        backlog_push(&bb, b, 20 + i);
        blob_unref(b);
        if (i == 1)
            CHECK(bb.count == 2 && bb.bytes == 8 && bb.base == 20);
        if (i == 2)
            CHECK(bb.count == 2 && bb.bytes == 9 && bb.base == 21 && backlog_covers(&bb, 21, 23) &&
                  !backlog_covers(&bb, 20, 23));
        if (i == 3)
            CHECK(bb.count == 0 && bb.bytes == 0 && !backlog_covers(&bb, 23, 24));
    }
    CHECK(bb.count == 1 && bb.bytes == 2 && backlog_covers(&bb, 24, 25));
    CHECK(!backlog_covers(&bb, 23, 25));
    backlog_free(&bb);
}

static void test_topics(void) {
    struct topic_table tt = {0};
    struct topic *a = topic_get(&tt, "a", 1);
    CHECK(a && tt.names.count == 1 && topic_find(&tt, "a", 1) == a);
    CHECK(topic_get(&tt, "a", 1) == a && a->refs == 2);
    char name[16];
    for (int i = 0; i < 200; i++) {
        snprintf(name, sizeof name, "t%d", i);
        CHECK(topic_get(&tt, name, strlen(name)) != NULL);
    }
    CHECK(tt.names.count == 201 && tt.names.nbuckets >= 201);
    for (int i = 0; i < 200; i++) {
        snprintf(name, sizeof name, "t%d", i);
        topic_unref(topic_find(&tt, name, strlen(name)));
    }
    CHECK(topic_retire_flag(a, true));
    topic_unref(a);
    topic_unref(a);
    CHECK(tt.names.count == 1 && a->retired);
    topic_retire_flag(a, false);
    CHECK(tt.names.count == 0 && topic_find(&tt, "a", 1) == NULL);
    /* Retirements beyond SSE_RETIRED_MAX forget the oldest, freeing what nothing else
     * holds; the table shrinks back as they go. */
    struct topic *held = topic_get(&tt, "held", 4);
    topic_retire_flag(held, true);
    for (int i = 0; i < SSE_RETIRED_MAX + 10; i++) {
        snprintf(name, sizeof name, "r%d", i);
        struct topic *t = topic_get(&tt, name, strlen(name));
        topic_retire_flag(t, true);
        topic_unref(t);
    }
    CHECK(tt.nretired == SSE_RETIRED_MAX && tt.names.count == SSE_RETIRED_MAX + 1);
    CHECK(!held->retired && topic_find(&tt, "held", 4) == held && held->refs == 1);
    CHECK(topic_find(&tt, "r9", 2) == NULL && topic_find(&tt, "r10", 3)->retired);
    for (int i = 0; i < SSE_RETIRED_MAX + 10; i++) {
        snprintf(name, sizeof name, "r%d", i);
        struct topic *t = topic_find(&tt, name, strlen(name));
        if (t)
            topic_retire_flag(t, false);
    }
    CHECK(tt.nretired == SSE_RETIRED_MAX && tt.names.count == 1 && tt.names.nbuckets == 64);
    CHECK(topic_retire_flag(held, true) && held->retired && held->refs == 2);
    CHECK(*topic_retired_slot(&tt, held) == held && tt.nretired == SSE_RETIRED_MAX);
    topic_retire_flag(held, false);
    CHECK(!held->retired && held->refs == 1);
    topic_unref(held);
    CHECK(tt.names.count == 0);
    free(tt.retired);
    free(tt.names.buckets);
}

#if SSE_ENABLE_PROXY
/* ---- the proxy's pure parts ---- */

static void test_response_parse(void) {
    struct http_response res;
    const char *ok = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nX-A:  b \r\n\r\nbody";
    size_t n = strlen(ok) - 4;
    for (size_t i = 0; i < n; i++)
        CHECK(http_parse_response(guarded(ok, i), i, &res) == HTTP_INCOMPLETE);
    CHECK(http_parse_response(guarded(ok, strlen(ok)), strlen(ok), &res) == (long)n);
    CHECK(res.status == 200 && res.minor == 1 && bytes_eq(res.reason, res.reason_len, "OK"));
    CHECK(res.num_headers == 2 && bytes_eq(res.headers[1].value, res.headers[1].value_len, "b"));
    CHECK(http_parse_response("HTTP/1.0 204\r\n\r\n", 16, &res) == 16 && res.status == 204 &&
          res.reason_len == 0);
    CHECK(http_parse_response("HTTP/1.1 502 Bad Gateway\n\n", 26, &res) == 26);
    CHECK(http_parse_response("HTTP/1.1 20 OK\r\n\r\n", 18, &res) == HTTP_BAD);
    CHECK(http_parse_response("HTTP/2.0 200 OK\r\n\r\n", 19, &res) == HTTP_BAD);
    CHECK(http_parse_response("ICY 200 OK\r\n\r\n", 14, &res) == HTTP_BAD);
    CHECK(http_parse_response("HTTP/1.1 200 O\x01K\r\n\r\n", 20, &res) == HTTP_BAD);
    CHECK(http_parse_response("HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n", 34, &res) == HTTP_BAD);
    CHECK(http_parse_response("HTTP/1.1 099 Low\r\n\r\n", 20, &res) == HTTP_BAD);
}

/* Decodes input fed in pieces of `step` bytes; true if the data equals want and done. */
static bool dechunks_to(const char *input, size_t step, const char *want) {
    struct http_chunked d = {0};
    char buf[256], out[256];
    size_t n = strlen(input), outlen = 0;
    for (size_t i = 0; i < n; i += step) {
        size_t k = n - i < step ? n - i : step;
        memcpy(buf, input + i, k);
        long r = http_dechunk(&d, buf, k);
        if (r < 0)
            return want == NULL;
        memcpy(out + outlen, buf, (size_t)r);
        outlen += (size_t)r;
    }
    if (!want)
        return false;
    return d.state == CH_DONE && outlen == strlen(want) && memcmp(out, want, outlen) == 0;
}

static void test_dechunk(void) {
    const char *body = "5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\n";
    for (size_t step = 1; step <= strlen(body); step++)
        CHECK(dechunks_to(body, step, "hello 0123456789"));
    CHECK(dechunks_to("3\nabc\n0\n\n", 1, "abc"));
    CHECK(dechunks_to("0\r\n\r\n", 2, ""));
    CHECK(dechunks_to("x\r\n", 1, NULL));
    CHECK(dechunks_to("5\r\nhelloXX", 1, NULL));
    CHECK(dechunks_to("\r\n", 1, NULL));
    CHECK(dechunks_to("11111111111111111\r\n", 1, NULL)); /* 17 hex digits */
    struct http_chunked d = {0};
    char after[] = "1\r\na\r\n0\r\n\r\nIGNORED";
    CHECK(http_dechunk(&d, after, strlen(after)) == 1 && d.state == CH_DONE && after[0] == 'a');
}

static bool boundary_after(const char *s, bool want) {
    struct wire_boundary b = {0};
    for (const char *p = s; *p; p++) /* byte by byte must equal all at once */
        wire_boundary_scan(&b, p, 1);
    struct wire_boundary whole = {0};
    wire_boundary_scan(&whole, s, strlen(s));
    return wire_at_event_end(&b) == want && wire_at_event_end(&whole) == want;
}

static void test_boundary(void) {
    CHECK(boundary_after("", true));
    CHECK(boundary_after("data: x\n\n", true));
    CHECK(boundary_after("data: x\r\n\r\n", true));
    CHECK(boundary_after("data: x\r\r", true)); /* a LF after it would be a no-op line */
    CHECK(boundary_after("data: x\r\rid", false));
    CHECK(boundary_after("data: x\n", false));
    CHECK(boundary_after("data: x\r\n", false));
    CHECK(boundary_after("data: x", false));
    CHECK(boundary_after("data: x\n\n:hb\n", false));
    CHECK(boundary_after("data: x\n\n\n", true));
}

static bool repairs_to(const char *in, size_t len, const char *want) {
    char out[64];
    struct wbuf w = {out, sizeof out, 0};
    wire_utf8_repair(&w, in, len);
    return w.len == strlen(want) && memcmp(out, want, w.len) == 0;
}

static void test_repair(void) {
    CHECK(repairs_to("ok", 2, "ok"));
    CHECK(repairs_to("a\xff"
                     "b",
                     3,
                     "a\xEF\xBF\xBD"
                     "b"));
    CHECK(repairs_to("caf\xc3\xa9", 5, "caf\xc3\xa9"));
    CHECK(repairs_to("\xc3", 1, "\xEF\xBF\xBD"));
    CHECK(repairs_to("a\xe2\x82 x", 5, "a\xEF\xBF\xBD x")); /* one per subpart */
    CHECK(repairs_to("\xf0\x9f\x98x", 4, "\xEF\xBF\xBDx"));
    CHECK(repairs_to("\xed\xa0\x80", 3, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD")); /* surrogate */
    CHECK(repairs_to("\xe0\x80", 2, "\xEF\xBF\xBD\xEF\xBF\xBD")); /* overlong lead */
}

/* The relay's parser: the WHATWG processing model, ids and retry included. */
static void test_whatwg_reader(void) {
    static const char in[] = "\xEF\xBB\xBF"
                             "id: 1\ndata: a\n\nretry: 2500\nid: 2\n\nid\ndata: b\n"
                             "topic: t\n\nretry: 1x\nid: a\0b\ndata: c\n\n";
    struct wire_reader r;
    struct collected c = {.len = 0};
    wire_reader_init(&r, SSE_INPUT_SSE, 100);
    r.whatwg = true;
    for (size_t i = 0; i < sizeof in - 1; i++)
        wire_reader_feed(&r, in + i, 1, collect, &c);
    CHECK(c.len == strlen("-|-|a;-|-|b;-|-|c;") && memcmp(c.out, "-|-|a;-|-|b;-|-|c;", c.len) == 0);
    CHECK(r.retry_ms == 2500);
    CHECK(strcmp(r.last_id, "") == 0); /* "id" alone reset it; the id with a NUL was ignored */
    wire_reader_free(&r);
    /* bytes that only begin like a BOM are kept */
    struct collected d = {.len = 0};
    wire_reader_init(&r, SSE_INPUT_SSE, 100);
    r.whatwg = true;
    wire_reader_feed(&r,
                     "\xEF"
                     "data: x\n\n",
                     10, collect, &d);
    wire_reader_feed(&r, "id: 9\n\n", 7, collect, &d);
    CHECK(d.len == 0 && strcmp(r.last_id, "9") == 0); /* "\xEF" "data" is an unknown field */
    wire_reader_free(&r);
    /* a long id or event type still fits when max_data is tiny (found by the fuzzer) */
    struct collected e = {.len = 0};
    wire_reader_init(&r, SSE_INPUT_SSE, 2);
    r.whatwg = true;
    static const char ids[] = "id: 18446744073709551615\nevent: tick\ndata: 1\n\ndata: 123\n\n";
    wire_reader_feed(&r, ids, sizeof ids - 1, collect, &e);
    CHECK(e.len == strlen("-|tick|1;!event over max_event_bytes;") &&
          memcmp(e.out, "-|tick|1;!event over max_event_bytes;", e.len) == 0);
    CHECK(strcmp(r.last_id, "18446744073709551615") == 0);
    wire_reader_free(&r);
}
#else  /* built without the proxy: its tests are left out */
static void test_response_parse(void) {}
static void test_dechunk(void) {}
static void test_boundary(void) {}
static void test_repair(void) {}
static void test_whatwg_reader(void) {}
#endif /* SSE_ENABLE_PROXY */

/* ---- the public API: two servers in one process, driven by hand ---- */

static int connect_to(const struct sse_server *srv) {
    long port = strtol(strrchr(sse_url(srv), ':') + 1, NULL, 10);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        return -1;
    return fd;
}

/* Polls both servers until fd has buffered bytes containing want, or 2 s pass. */
static bool read_until(struct sse_server **srvs, int fd, char *buf, size_t cap, const char *want) {
    size_t len = 0;
    int64_t deadline = clock_ms() + 2000;
    buf[0] = '\0';
    while (clock_ms() < deadline) {
        for (int i = 0; i < 2; i++)
            sse_poll(srvs[i], 10);
        ssize_t n = recv(fd, buf + len, cap - 1 - len, MSG_DONTWAIT);
        if (n > 0)
            len += (size_t)n;
        buf[len] = '\0';
        if (strstr(buf, want))
            return true;
    }
    fprintf(stderr, "  wanted %s, have: %s\n", want, buf);
    return false;
}

static void test_two_servers(void) {
    struct sse_config cfg = {.listen = "127.0.0.1:0", .heartbeat_ms = SSE_OFF};
    char err[128];
    struct sse_server *srvs[2];
    srvs[0] = sse_server_new(&cfg, err, sizeof err);
    srvs[1] = sse_server_new(&cfg, err, sizeof err);
    CHECK(srvs[0] && srvs[1]);
    if (!srvs[0] || !srvs[1])
        return;
    CHECK(strcmp(sse_url(srvs[0]), sse_url(srvs[1])) != 0);
    CHECK(sse_fd(srvs[0]) >= 0 && sse_fd(srvs[0]) != sse_fd(srvs[1]));
    int a = connect_to(srvs[0]), b = connect_to(srvs[1]);
    CHECK(a >= 0 && b >= 0);
    if (a < 0 || b < 0)
        return;
    const char *req = "GET /events/t HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK(send(a, req, strlen(req), 0) > 0 && send(b, req, strlen(req), 0) > 0);
    char buf[4096];
    CHECK(read_until(srvs, a, buf, sizeof buf, "retry: 3000\n\n"));
    CHECK(read_until(srvs, b, buf, sizeof buf, "retry: 3000\n\n"));
    CHECK(sse_publish(srvs[0], "t", "e", "for a", 5, NULL) == 1);
    CHECK(sse_next_timeout_ms(srvs[0]) == 0); /* queued: poll now */
    CHECK(sse_publish(srvs[1], "t", NULL, "for b", 5, NULL) == 1);
    CHECK(read_until(srvs, a, buf, sizeof buf, "event: e\ndata: for a\n\n") &&
          !strstr(buf, "for b"));
    CHECK(read_until(srvs, b, buf, sizeof buf, "data: for b\n\n") && !strstr(buf, "for a"));
    CHECK(sse_publish(srvs[0], "bad topic", NULL, "x", 1, NULL) == -EINVAL);
    CHECK(sse_publish(srvs[0], NULL, "a\nb", "x", 1, NULL) == -EINVAL);
    CHECK(sse_publish(srvs[0], NULL, NULL, "\xff", 1, NULL) == -EINVAL);
    CHECK(sse_retire_topic(srvs[0], "t") == 1);
    CHECK(read_until(srvs, a, buf, sizeof buf, "")); /* drives the close */
    sse_stop(srvs[1]);
    int r = 1;
    for (int i = 0; i < 100 && r > 0; i++)
        r = sse_poll(srvs[1], 10);
    CHECK(r == 0);
    close(a);
    close(b);
    sse_server_free(srvs[0]);
    sse_server_free(srvs[1]);
    cfg.max_event_bytes = 65u << 20;
    CHECK(sse_server_new(&cfg, err, sizeof err) == NULL && strstr(err, "64 MiB"));
    cfg.max_event_bytes = 0;
    cfg.listen = "nonsense";
    CHECK(sse_server_new(&cfg, err, sizeof err) == NULL && strstr(err, "invalid listen"));
}

/* A host's own routes: on_request answers /hello (after trying answers sse_respond() must
 * refuse), claims /claim without answering, and declines the rest. */
struct host_probe {
    int bad_answers; /* sse_respond() calls refused as they should be */
    int poll_busy;   /* sse_poll() from inside answered -EBUSY */
    int published;   /* sse_publish() from inside reached a subscriber */
    char probe[32];  /* the X-Probe header and the q parameter, as "header|param" */
};

static int host_routes(struct sse_server *srv, const struct sse_request *req, void *user) {
    struct host_probe *hp = user;
    if (strcmp(req->path, "/claim") == 0)
        return 1;
    if (strcmp(req->path, "/hello") != 0)
        return 0;
    if (strcmp(req->method, "GET") != 0)
        return sse_respond(req, 201, "text/x-test", "hi", 2) == 0;
    size_t hlen, plen;
    const char *h = sse_request_header(req, "x-probe", &hlen);
    const char *p = sse_request_param(req, "q", &plen);
    snprintf(hp->probe, sizeof hp->probe, "%.*s|%.*s", h ? (int)hlen : 4, h ? h : "none",
             p ? (int)plen : 4, p ? p : "none");
    hp->bad_answers += sse_respond(req, 200, "text/plain\r\nX-Injected: 1", "x", 1) == -EINVAL;
    hp->bad_answers += sse_respond(req, 99, NULL, "x", 1) == -EINVAL;
    hp->bad_answers += sse_respond(req, 200, NULL, NULL, 3) == -EINVAL;
    hp->bad_answers += sse_respond(req, 200, "", "x", 1) == -EINVAL;
    hp->poll_busy += sse_poll(srv, 0) == -EBUSY;
    hp->published += sse_publish(srv, "t", NULL, "from a route", 12, NULL);
    CHECK(sse_respond(req, 201, "text/x-test", "hi", 2) == 0);
    hp->bad_answers += sse_respond(req, 200, NULL, "again", 5) == -EINVAL;
    return 0; /* answered all the same */
}

static void test_host_routes(void) {
    struct host_probe hp = {0};
    struct sse_config cfg = {.listen = "127.0.0.1:0", .heartbeat_ms = SSE_OFF};
    cfg.on_request = host_routes;
    cfg.user = &hp;
    char err[128], buf[4096];
    struct sse_server *srv = sse_server_new(&cfg, err, sizeof err);
    CHECK(srv != NULL);
    if (!srv)
        return;
    struct sse_server *both[2] = {srv, srv};
    int sub = connect_to(srv), other = connect_to(srv), c = connect_to(srv);
    CHECK(sub >= 0 && other >= 0 && c >= 0);
    if (sub < 0 || other < 0 || c < 0)
        return;
    const char *stream = "GET /events?topic=t&topic=u HTTP/1.1\r\nHost: x\r\n\r\n";
    const char *stream_u = "GET /events/u HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK(send(sub, stream, strlen(stream), 0) > 0 && send(other, stream_u, strlen(stream_u), 0));
    CHECK(read_until(both, sub, buf, sizeof buf, "retry: 3000\n\n")); /* declined: built in */
    CHECK(read_until(both, other, buf, sizeof buf, "retry: 3000\n\n"));
    const char *hello = "GET /hello?q=a+b%21 HTTP/1.1\r\nHost: x\r\nX-Probe:  yes \r\n\r\n"
                        "HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\n"
                        "GET /claim HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK(send(c, hello, strlen(hello), 0) > 0);
    CHECK(read_until(both, c, buf, sizeof buf, "500 Internal Server Error"));
    const char *first = strstr(buf, "HTTP/1.1 201 Created\r\n");
    const char *second = first ? strstr(first + 1, "HTTP/1.1 201 Created\r\n") : NULL;
    CHECK(first == buf && second && strstr(buf, "Content-Type: text/x-test\r\n"));
    CHECK(first && strstr(first, "Content-Length: 2\r\n\r\nhiHTTP/1.1 201")); /* HEAD: no body */
    CHECK(!strstr(buf, "X-Injected"));
    CHECK(strcmp(hp.probe, "yes|a b!") == 0);
    CHECK(hp.bad_answers == 5 && hp.poll_busy == 1 && hp.published == 1);
    CHECK(read_until(both, sub, buf, sizeof buf, "data: from a route\n\n"));

    /* Ending the streams of t ends sub (which also follows u), not other. */
    CHECK(sse_end_streams(srv, "t") == 1);
    CHECK(sse_end_streams(srv, "bad topic") == -EINVAL && sse_end_streams(NULL, "t") == -EINVAL);
    bool ended = false;
    for (int i = 0; i < 200 && !ended; i++) {
        sse_poll(srv, 10);
        ended = recv(sub, buf, sizeof buf, MSG_DONTWAIT) == 0;
    }
    CHECK(ended);
    CHECK(sse_publish(srv, "u", NULL, "still here", 10, NULL) == 1);
    CHECK(read_until(both, other, buf, sizeof buf, "data: still here\n\n"));
    close(sub);
    close(other);
    close(c);
    sse_server_free(srv);
}

/* A host's own stream: on_request answers /s with sse_respond_stream() (after trying the
 * calls it must refuse), with the request's version and headers, in order, as its first
 * event; /s2 with no first bytes. */
struct host_stream {
    int refused;    /* sse_respond_stream() calls refused as they should be */
    int answered;   /* sse_respond_stream() calls that answered */
    char seen[512]; /* "VERSION|name=value|..." for the last request, from the iterator */
    int past_end;   /* sse_request_header_at() past the last field answered -ENOENT */
};

static int host_stream(struct sse_server *srv, const struct sse_request *req, void *user) {
    struct host_stream *hs = user;
    (void)srv;
    static const char *const two[] = {"t", "t"}, *const bad[] = {"t", "no such"},
                             *const null[] = {"t", NULL};
    char first[256], big[200];
    size_t n = sse_format_event(first, sizeof first, 0, "hello", req->path, strlen(req->path));
    if (strcmp(req->path, "/s2") == 0)
        return sse_respond_stream(req, two, 1, NULL, 0) == 0;
    if (strcmp(req->path, "/s") != 0)
        return 0;
    if (strcmp(req->method, "GET") != 0) { /* a stream answers a GET only */
        hs->refused += sse_respond_stream(req, two, 2, first, n) == -EINVAL;
        return sse_respond(req, 405, NULL, "GET only", 8) == 0;
    }
    size_t at = (size_t)snprintf(hs->seen, sizeof hs->seen, "%s", req->version);
    const char *name, *value;
    size_t nlen, vlen, i;
    for (i = 0; sse_request_header_at(req, i, &name, &nlen, &value, &vlen) == 0; i++)
        if (at < 400)
            at += (size_t)snprintf(hs->seen + at, sizeof hs->seen - at, "|%.*s=%.*s", (int)nlen,
                                   name, (int)vlen, value);
    name = "untouched";
    hs->past_end += sse_request_header_at(req, i, &name, &nlen, &value, &vlen) == -ENOENT &&
                    sse_request_header_at(req, i + 5, &name, &nlen, &value, &vlen) == -ENOENT &&
                    strcmp(name, "untouched") == 0;
    hs->refused += sse_respond_stream(req, bad, 2, first, n) == -EINVAL;
    hs->refused += sse_respond_stream(req, null, 2, first, n) == -EINVAL;
    hs->refused += sse_respond_stream(req, two, 0, first, n) == -EINVAL;
    hs->refused += sse_respond_stream(req, NULL, 1, first, n) == -EINVAL;
    hs->refused += sse_respond_stream(req, two, 2, NULL, n) == -EINVAL;
    hs->refused += sse_respond_stream(req, two, 2, first, n - 1) == -EINVAL; /* no blank line */
    hs->refused += sse_respond_stream(req, two, 2, "data: \xff\n\n", 9) == -EINVAL;
    memset(big, 'x', sizeof big);
    size_t m = sse_format_event(first, sizeof first, 0, "hello", big, sizeof big); /* > 128 */
    hs->refused += sse_respond_stream(req, two, 2, first, m) == -EMSGSIZE;
    n = sse_format_event(first, sizeof first, 0, "hello", req->path, strlen(req->path));
    hs->answered += sse_respond_stream(req, two, 2, first, n) == 0;
    hs->refused += sse_respond_stream(req, two, 2, first, n) == -EINVAL; /* answered already */
    hs->refused += sse_respond(req, 200, NULL, "x", 1) == -EINVAL;
    return 1;
}

static void test_host_stream(void) {
    CHECK(wire_ends_event("data: x\n\n", 9) && wire_ends_event("data: x\r\n\r\n", 11));
    CHECK(wire_ends_event("data: x\r\r", 9) && wire_ends_event("data: x\r\r\n", 10));
    CHECK(wire_ends_event("data: x\n\r\n", 10) && wire_ends_event("x\n\r", 3));
    CHECK(!wire_ends_event("", 0) && !wire_ends_event("\n", 1) && !wire_ends_event("\r\n", 2));
    CHECK(!wire_ends_event("data: x\n", 8) && !wire_ends_event("data: x\r\n", 9));
    CHECK(!wire_ends_event("data: x", 7) && !wire_ends_event("data: x\r\nx", 10));
    struct host_stream hs = {0};
    struct sse_config cfg = {.listen = "127.0.0.1:0", .heartbeat_ms = SSE_OFF};
    cfg.on_request = host_stream;
    cfg.user = &hs;
    cfg.max_event_bytes = 128;
    char err[128], buf[4096];
    struct sse_server *srv = sse_server_new(&cfg, err, sizeof err);
    CHECK(srv != NULL);
    if (!srv)
        return;
    struct sse_server *both[2] = {srv, srv};
    int a = connect_to(srv), b = connect_to(srv), h = connect_to(srv);
    CHECK(a >= 0 && b >= 0 && h >= 0);
    if (a < 0 || b < 0 || h < 0)
        return;
    const char *get = "GET /s HTTP/1.1\r\nHost: x\r\nX-B:  2 \r\nX-A: 1\r\nx-b: 3\r\n\r\n";
    CHECK(send(a, get, strlen(get), 0) > 0);
    CHECK(read_until(both, a, buf, sizeof buf, "event: position\ndata:\n\n"));
    CHECK(strstr(buf, "HTTP/1.1 200 OK\r\n") == buf && strstr(buf, "text/event-stream\r\n"));
    const char *body = strstr(buf, "\r\n\r\n");
    const char *opening = "retry: 3000\n\nevent: hello\ndata: /s\n\nid: ";
    CHECK(body && strncmp(body + 4, opening, strlen(opening)) == 0);
    CHECK(strcmp(hs.seen, "HTTP/1.1|Host=x|X-B=2|X-A=1|x-b=3") == 0);
    CHECK(hs.refused == 10 && hs.answered == 1 && hs.past_end == 1);
    uint64_t id = 0;
    CHECK(sse_publish(srv, "t", NULL, "once", 4, &id) == 1); /* "t" twice: one subscription */
    CHECK(read_until(both, a, buf, sizeof buf, "data: once\n\n") && !strstr(buf, "event: hello"));
    CHECK(strstr(strstr(buf, "data: once\n\n") + 1, "data: once") == NULL);
    /* A reconnect: its own first event again, then the replay after its Last-Event-ID. */
    char again[160];
    snprintf(again, sizeof again, "GET /s HTTP/1.0\r\nLast-Event-ID: %llu\r\n\r\n",
             (unsigned long long)id - 1);
    CHECK(sse_publish(srv, "t", NULL, "missed", 6, NULL) == 1);
    CHECK(send(b, again, strlen(again), 0) > 0);
    CHECK(read_until(both, b, buf, sizeof buf, "data: missed\n\n"));
    body = strstr(buf, "\r\n\r\n");
    CHECK(body && strstr(body, "retry: 3000\n\nevent: hello\ndata: /s\n\nid: ") == body + 4);
    CHECK(body && strstr(body, "data: once\n\n") && !strstr(body, "position"));
    CHECK(strncmp(hs.seen, "HTTP/1.0|Last-Event-ID=", 23) == 0);
    /* HEAD is no stream: refused, and the host answers otherwise; /s2 has no first bytes. */
    const char *head = "HEAD /s HTTP/1.1\r\nHost: x\r\n\r\nGET /s2 HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK(send(h, head, strlen(head), 0) > 0);
    CHECK(read_until(both, h, buf, sizeof buf, "event: position\ndata:\n\n"));
    CHECK(strstr(buf, "HTTP/1.1 405 ") == buf && hs.answered == 2 && hs.refused == 10 + 10 + 1);
    CHECK(strstr(buf, "\r\n\r\nretry: 3000\n\nid: "));
    /* Retiring the topic ends the host's streams as any other. */
    CHECK(sse_retire_topic(srv, "t") == 3);
    close(a);
    close(b);
    close(h);
    sse_server_free(srv);
}

/* The ending heap (streams that end at a set time): whatever the order of adding and
 * removing, the soonest is on top and every place is known to its connection. */
static void test_ending_heap(void) {
    struct ending e = {0};
    struct conn cs[200];
    memset(cs, 0, sizeof cs);
    uint64_t x = 88172645463325252u;
    for (int i = 0; i < 200; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        CHECK(ending_add(&e, &cs[i], (int64_t)(x % 1000)));
    }
    for (int i = 0; i < 200; i += 3)
        ending_remove(&e, &cs[i]);
    int64_t last = -1;
    bool placed = true;
    for (uint32_t i = 0; i < e.n; i++)
        placed = placed && e.heap[i].c->ending == i + 1;
    CHECK(placed && e.n == 200 - 67);
    while (e.n) {
        struct conn *top = e.heap[0].c;
        CHECK(e.heap[0].at >= last);
        last = e.heap[0].at;
        ending_remove(&e, top);
        CHECK(top->ending == 0);
    }
    free(e.heap);
}

#if SSE_ENABLE_AUTH
/* A host that decides who hears what (on_authorize): X-User 42 may hear anything but
 * "secret" and publish; "nobody" is refused; "later" cannot be answered now. */
struct host_auth {
    int asked, publishes, respond; /* calls; of them publishes; sse_respond()'s answer */
    char peer[64], topics[128];    /* what the last call saw */
};

static int host_authorize(struct sse_server *srv, const struct sse_request *req, int publish,
                          const char *const *topics, size_t n, int *keep, void *user) {
    struct host_auth *ha = user;
    (void)srv;
    ha->asked++;
    ha->publishes += publish;
    ha->respond = sse_respond(req, 200, NULL, "x", 1);
    snprintf(ha->peer, sizeof ha->peer, "%s", sse_request_peer(req));
    ha->topics[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        strncat(ha->topics, topics[i], sizeof ha->topics - strlen(ha->topics) - 2);
        strcat(ha->topics, ",");
        keep[i] = strcmp(topics[i], "secret") != 0;
    }
    size_t len;
    const char *who = sse_request_header(req, "X-User", &len);
    if (who && len == 2 && !memcmp(who, "42", 2))
        return 200;
    return who && len == 5 && !memcmp(who, "later", 5) ? 503 : 403;
}

static void test_on_authorize(void) {
    struct host_auth ha = {0};
    struct sse_config cfg = {.listen = "127.0.0.1:0", .heartbeat_ms = SSE_OFF};
    const char *pub[] = {"news"};
    cfg.on_authorize = host_authorize;
    cfg.public_topics = pub;
    cfg.num_public_topics = 1;
    cfg.user = &ha;
    char err[128], buf[4096];
    struct sse_server *srv = sse_server_new(&cfg, err, sizeof err);
    CHECK(srv != NULL);
    if (!srv)
        return;
    struct sse_server *one[2] = {srv, srv}; /* read_until drives two */
    int a = connect_to(srv), b = connect_to(srv), c = connect_to(srv), d = connect_to(srv),
        e = connect_to(srv), p = connect_to(srv);
    const char *get = "GET /events?topic=a&topic=secret HTTP/1.1\r\nHost: x\r\nX-User: 42\r\n\r\n";
    CHECK(send(a, get, strlen(get), 0) > 0);
    CHECK(read_until(one, a, buf, sizeof buf, "event: position\ndata:\n\n"));
    CHECK(strstr(buf, "HTTP/1.1 200 OK\r\n") == buf);
    CHECK(ha.asked == 1 && ha.publishes == 0 && ha.respond == -EINVAL);
    CHECK(strcmp(ha.peer, "127.0.0.1") == 0 && strcmp(ha.topics, "a,secret,") == 0);
    CHECK(sse_publish(srv, "secret", NULL, "s", 1, NULL) == 0); /* narrowed away */
    CHECK(sse_publish(srv, "a", NULL, "x", 1, NULL) == 1);
    const char *nobody = "GET /events?topic=a HTTP/1.1\r\nHost: x\r\nX-User: nobody\r\n\r\n";
    CHECK(send(b, nobody, strlen(nobody), 0) > 0);
    CHECK(read_until(one, b, buf, sizeof buf, "refused this subscription\n"));
    CHECK(strstr(buf, "HTTP/1.1 403 Forbidden\r\n") == buf);
    const char *later = "GET /events?topic=a HTTP/1.1\r\nHost: x\r\nX-User: later\r\n"
                        "Accept: text/event-stream\r\n\r\n";
    CHECK(send(c, later, strlen(later), 0) > 0);
    CHECK(read_until(one, c, buf, sizeof buf, "\n\n"));
    CHECK(strstr(buf, "HTTP/1.1 200 OK\r\n") == buf && strstr(buf, "\r\n\r\nretry: "));
    CHECK(!strstr(buf, "id: "));
    const char *only_secret = "GET /events?topic=secret HTTP/1.1\r\nHost: x\r\nX-User: 42\r\n\r\n";
    CHECK(send(d, only_secret, strlen(only_secret), 0) > 0);
    CHECK(read_until(one, d, buf, sizeof buf, "topic secret\n"));
    CHECK(strstr(buf, "HTTP/1.1 403 ") == buf);
    int asked = ha.asked; /* public topics alone need nobody's yes */
    const char *news = "GET /events?topic=news HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK(send(e, news, strlen(news), 0) > 0);
    CHECK(read_until(one, e, buf, sizeof buf, "event: position\ndata:\n\n") && ha.asked == asked);
    const char *post = "POST /publish?topic=a HTTP/1.1\r\nHost: x\r\nX-User: 42\r\n"
                       "Content-Length: 2\r\n\r\nhi"
                       "POST /publish?topic=a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nno";
    CHECK(send(p, post, strlen(post), 0) > 0);
    CHECK(read_until(one, p, buf, sizeof buf, "refused this publish\n"));
    CHECK(strstr(buf, "HTTP/1.1 200 OK\r\n") == buf && strstr(buf, "\"subscribers\": 1}"));
    CHECK(strstr(buf, "HTTP/1.1 403 Forbidden\r\n") && ha.publishes == 2);
    CHECK(read_until(one, a, buf, sizeof buf, "data: hi\n\n"));
    int fds[] = {a, b, c, d, e, p};
    for (size_t i = 0; i < 6; i++)
        close(fds[i]);
    sse_server_free(srv);
}
#endif

/* A host that forwards its log to subscribers: on_log publishes every line on the topic whose
 * subscribers are being dropped as too slow, and tries to drive the loop from inside. Nothing
 * may recurse or touch a freed subscription; the calls that would re-enter answer -EBUSY. */
struct log_forward {
    struct sse_server *srv; /* NULL until created */
    int published, busy;    /* results of the nested sse_publish() calls */
    int poll_busy;          /* nested sse_poll() calls answered -EBUSY */
};

static void log_forward(enum sse_log_level level, const char *msg, void *user) {
    struct log_forward *lf = user;
    (void)level;
    if (!lf->srv)
        return;
    int r = sse_publish(lf->srv, "t", "log", msg, strlen(msg), NULL);
    lf->published += r >= 0;
    lf->busy += r == -EBUSY;
    lf->poll_busy += sse_poll(lf->srv, 0) == -EBUSY;
}

static void test_log_reentry(void) {
    struct log_forward lf = {0};
    struct sse_config cfg = {.listen = "127.0.0.1:0",
                             .heartbeat_ms = SSE_OFF,
                             .client_buffer = 64,
                             .pace_high_water = 64, /* no flow control: drops are tested */
                             .on_log = log_forward,
                             .user = &lf};
    char err[128], buf[4096], big[60];
    lf.srv = sse_server_new(&cfg, err, sizeof err);
    CHECK(lf.srv != NULL);
    if (!lf.srv)
        return;
    struct sse_server *srvs[2] = {lf.srv, lf.srv};
    int fds[3];
    const char *req = "GET /events/t HTTP/1.1\r\nHost: x\r\n\r\n";
    for (int i = 0; i < 3; i++) {
        fds[i] = connect_to(lf.srv);
        CHECK(fds[i] >= 0 && send(fds[i], req, strlen(req), 0) > 0);
        CHECK(read_until(srvs, fds[i], buf, sizeof buf, "retry: 3000\n\n"));
    }
    CHECK(lf.poll_busy > 0); /* "connection opened" lines came from inside sse_poll() */
    memset(big, 'x', sizeof big);
    CHECK(sse_publish(lf.srv, "t", NULL, big, sizeof big, NULL) == 3); /* queued, not sent */
    int busy = lf.busy;
    /* Over client_buffer: all three are dropped, each logging from inside the fan-out. */
    CHECK(sse_publish(lf.srv, "t", NULL, big, sizeof big, NULL) == 0);
    CHECK(lf.busy == busy + 3);
    /* Outside a publish, on_log may publish: a new subscriber hears of a closed connection. */
    int d = connect_to(lf.srv), e = connect_to(lf.srv);
    CHECK(d >= 0 && e >= 0 && send(d, req, strlen(req), 0) > 0);
    CHECK(read_until(srvs, d, buf, sizeof buf, "retry: 3000\n\n"));
    close(e);
    CHECK(read_until(srvs, d, buf, sizeof buf, " closed (client closed)\n\n") &&
          strstr(buf, "event: log\ndata: connection #"));
    CHECK(lf.published > 0);
    CHECK(sse_retire_topic(lf.srv, "t") == 1);
    for (int i = 0; i < 3; i++)
        close(fds[i]);
    close(d);
    sse_server_free(lf.srv);
}

#if SSE_ENABLE_JOURNAL
/* A journal record for id, topic and formatted event bytes; returns its length. */
static size_t journal_record(char *out, size_t cap, uint64_t id, const char *topic,
                             const char *bytes) {
    char head[JOURNAL_RECORD_HEAD];
    size_t hlen = journal_record_head(head, id, topic, bytes, strlen(bytes));
    size_t n = hlen + strlen(bytes);
    if (n > cap)
        return 0;
    memcpy(out, head, hlen);
    memcpy(out + hlen, bytes, n - hlen);
    return n;
}

static long journal_parse_str(const char *s, size_t len, struct journal_record *rec) {
    return journal_parse_record(s, len, SIZE_MAX, rec);
}

static bool event_is_canonical(uint64_t id, const char *s) {
    return journal_event_canonical(id, s, strlen(s));
}

static void test_journal(void) {
    /* CRC-32 as zlib computes it. */
    CHECK(journal_crc32(0, "", 0) == 0);
    CHECK(journal_crc32(0, "123456789", 9) == 0xCBF43926u);
    CHECK(journal_crc32(journal_crc32(0, "1234", 4), "56789", 5) == 0xCBF43926u);
    char head[JOURNAL_RECORD_HEAD];
    const char *ev = "id: 42\nevent: e\ndata: a\ndata: b\n\n";
    size_t hlen = journal_record_head(head, 42, "news", ev, strlen(ev));
    char want[64];
    int plen = snprintf(want, sizeof want, "#E 42 news %zu ", strlen(ev));
    uint32_t crc = journal_crc32(journal_crc32(0, want, (size_t)plen), ev, strlen(ev));
    snprintf(want + plen, sizeof want - (size_t)plen, "%08x\n", crc);
    CHECK(hlen == strlen(want) && memcmp(head, want, hlen) == 0);

    char rec_buf[256] = {0};
    struct journal_record rec = {0};
    size_t n = journal_record(rec_buf, sizeof rec_buf, 42, "news", ev);
    CHECK(journal_parse_str(rec_buf, n, &rec) == (long)n);
    CHECK(rec.id == 42 && rec.topic_len == 4 && memcmp(rec.topic, "news", 4) == 0);
    CHECK(rec.len == strlen(ev) && memcmp(rec.bytes, ev, rec.len) == 0);
    /* Every prefix is incomplete (0), never valid or invalid. */
    bool prefixes_ok = true;
    for (size_t i = 0; i < n; i++)
        prefixes_ok = prefixes_ok && journal_parse_str(rec_buf, i, &rec) == 0;
    CHECK(prefixes_ok);
    /* Any changed byte makes it invalid (or, in the length, incomplete). */
    bool flips_caught = true;
    for (size_t i = 0; i < n; i++) {
        rec_buf[i] ^= 0x20;
        long r = journal_parse_str(rec_buf, n, &rec);
        flips_caught = flips_caught && r <= 0;
        rec_buf[i] ^= 0x20;
    }
    CHECK(flips_caught);

    /* Canonical events only: what the formatter makes, byte for byte. */
    CHECK(event_is_canonical(7, "id: 7\ndata: x\n\n"));
    CHECK(event_is_canonical(7, "id: 7\ndata:\n\n"));
    CHECK(event_is_canonical(7, "id: 7\ndata:  x\ndata:\n\n"));
    CHECK(!event_is_canonical(8, "id: 7\ndata: x\n\n")); /* other id */
    CHECK(!event_is_canonical(7, "id: 7\n\n"));          /* no data */
    CHECK(!event_is_canonical(7, "id: 7\ndata:x\n\n"));  /* no space */
    CHECK(!event_is_canonical(7, "id: 7\ndata: x\nretry: 1\n\n"));
    CHECK(!event_is_canonical(7, "id: 7\ndata: x\n"));     /* no blank line */
    CHECK(!event_is_canonical(7, "id: 7\ndata: x\r\n\n")); /* CR in data */
    CHECK(!event_is_canonical(7, "id: 7\nevent: \ndata: x\n\n"));
    CHECK(!event_is_canonical(7, "id: 7\ndata: \xff\n\n")); /* not UTF-8 */
    CHECK(!event_is_canonical(7, "id: 07\ndata: x\n\n"));

    /* Record lines that are not ours. */
    const char *bad[] = {
        "#E 42 news 10 0000000\n0123456789", "#E 042 news 1 00000000\nx",
        "#E 0 news 1 00000000\nx",           "#E 42 bad/topic 1 00000000\nx",
        "#E 42 news 1 0000000G\nx",          "#E 42 news 1 00000000 extra\nx",
        "#X 42 news 1 00000000\nx",          "#E  42 news 1 00000000\nx",
    };
    bool bad_refused = true;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        bad_refused = bad_refused && journal_parse_str(bad[i], strlen(bad[i]), &rec) < 0;
    CHECK(bad_refused);
    char longline[JOURNAL_RECORD_HEAD + 8];
    memset(longline, '#', sizeof longline);
    CHECK(journal_parse_str(longline, sizeof longline, &rec) < 0);
}

/* The journal's header: version 2 carries the CRC-32 of the line up to the CRC, as a record
 * line does; version 1 (no CRC) is still read; every prefix of a header is incomplete. */
static void test_journal_header(void) {
    char h[JOURNAL_HEADER_MAX];
    size_t n = journal_header(h, 18446744073709551615u);
    const char *want_line = "sse-journal 2 18446744073709551615 ";
    size_t plen = strlen(want_line);
    CHECK(n == plen + 9 && memcmp(h, want_line, plen) == 0 && h[n - 1] == '\n');
    char crc[9];
    snprintf(crc, sizeof crc, "%08x", journal_crc32(0, want_line, plen));
    CHECK(memcmp(h + plen, crc, 8) == 0);
    uint64_t floor = 0;
    int version = 0;
    CHECK(journal_parse_header(h, n, &floor, &version) == (long)n);
    CHECK(floor == UINT64_MAX && version == 2);
    char buf[JOURNAL_HEADER_MAX + 16];
    memcpy(buf, h, n);
    memcpy(buf + n, "#E 1", 4); /* records follow: the header's length is still n */
    CHECK(journal_parse_header(buf, n + 4, &floor, &version) == (long)n);
    bool prefixes_ok = true;
    for (size_t i = 0; i < n; i++)
        prefixes_ok = prefixes_ok && journal_parse_header(h, i, &floor, &version) == 0;
    CHECK(prefixes_ok);
    n = journal_header(h, 1795335269661017u);
    CHECK(journal_parse_header(h, n, &floor, &version) == (long)n && floor == 1795335269661017u);
    bool flips_refused = true; /* any changed character: refused, and never read as valid */
    for (size_t i = 0; i + 1 < n; i++) {
        memcpy(buf, h, n);
        buf[i] = buf[i] == '7' ? '8' : '7';
        flips_refused = flips_refused && journal_parse_header(buf, n, &floor, &version) < 0;
    }
    CHECK(flips_refused);
    memcpy(buf, h, n);
    buf[n - 2] = buf[n - 2] == 'a' ? 'b' : 'a'; /* a CRC digit: well formed, CRC wrong */
    CHECK(journal_parse_header(buf, n, &floor, &version) == -2);
    const char *v1 = "sse-journal 1 42\n";
    CHECK(journal_parse_header(v1, strlen(v1), &floor, &version) == (long)strlen(v1));
    CHECK(floor == 42 && version == 1);
    static const char *const bad[] = {
        "sse-journal 1 \n",
        "sse-journal 1 -1\n",
        "sse-journal 1 x\n",
        "sse-journal 2 5\n",
        "sse-journal 2 5 0000000\n",
        "sse-journal 2 5 0000000G\n",
        "sse-journal 2 05 00000000\n",
        "sse-journal 2  00000000\n",
        "sse-journal 3 5 00000000\n",
        "sse-journal 1 18446744073709551616\n",
        "hello\n",
    };
    bool bad_refused = true;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        bad_refused =
            bad_refused && journal_parse_header(bad[i], strlen(bad[i]), &floor, &version) == -1;
    CHECK(bad_refused);
    char longline[JOURNAL_HEADER_MAX + 8];
    memset(longline, '1', sizeof longline);
    CHECK(journal_parse_header(longline, sizeof longline, &floor, &version) == -1);
}
#else  /* built without the journal: its tests are left out */
static void test_journal(void) {}
static void test_journal_header(void) {}
#endif /* SSE_ENABLE_JOURNAL */

/* Decimal ids, the core's: canonical text only. */
static void test_ids(void) {
    uint64_t key;
    CHECK(history_decimal_parse("42", 2, &key) && key == 42 &&
          !history_decimal_parse("042", 3, &key) && !history_decimal_parse("4-2", 3, &key));
    char text[48];
    struct wbuf tw = {text, sizeof text, 0};
    history_decimal_id(&tw, 1700000000000ull);
    CHECK(tw.len == 13 && memcmp(text, "1700000000000", 13) == 0);
}

#if SSE_ENABLE_REDIS
static long resp_str(const char *s, struct resp_value *vals, size_t cap, size_t *n) {
    return resp_read(s, strlen(s), 1024, vals, cap, n);
}

static void test_resp(void) {
    char out[128];
    struct wbuf w = {out, sizeof out, 0};
    struct resp_args args = {3, {"XADD", "k", ""}, {4, 1, 0}};
    resp_command(&w, &args);
    CHECK(w.len == strlen("*3\r\n$4\r\nXADD\r\n$1\r\nk\r\n$0\r\n\r\n") &&
          memcmp(out, "*3\r\n$4\r\nXADD\r\n$1\r\nk\r\n$0\r\n\r\n", w.len) == 0);

    struct resp_value v[16];
    size_t n;
    CHECK(resp_str("+OK\r\n", v, 16, &n) == 5 && n == 1 && v[0].type == '+' && v[0].len == 2);
    CHECK(resp_str("-ERR no\r\n", v, 16, &n) == 9 && v[0].type == '-');
    CHECK(resp_str(":-42\r\n", v, 16, &n) == 6 && v[0].integer == -42);
    CHECK(resp_str("$3\r\na\r\n\r\n", v, 16, &n) == 9 && v[0].len == 3 &&
          memcmp(v[0].str, "a\r\n", 3) == 0); /* bulk strings may hold CRLF */
    CHECK(resp_str("$-1\r\n", v, 16, &n) == 5 && v[0].type == '_');
    CHECK(resp_str("*-1\r\n", v, 16, &n) == 5 && v[0].type == '_');
    CHECK(resp_str("*0\r\n", v, 16, &n) == 4 && v[0].type == '*' && v[0].len == 0);
    /* XREAD's shape: [[key, [[id, [f, v]]]]] */
    const char *xread = "*1\r\n*2\r\n$3\r\nsse\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n"
                        "$5\r\ntopic\r\n$1\r\nt\r\n";
    CHECK(resp_str(xread, v, 16, &n) == (long)strlen(xread) && n == 9);
    CHECK(resp_skip(v, n, 0) == 9 && resp_skip(v, n, 2) == 3 && resp_skip(v, n, 4) == 9);
    /* Every strict prefix is incomplete, never a wrong answer. */
    bool prefixes = true;
    for (size_t i = 0; i < strlen(xread); i++)
        prefixes = prefixes && resp_read(xread, i, 1024, v, 16, &n) == 0;
    CHECK(prefixes);
    CHECK(resp_str("+OK\n", v, 16, &n) == -1);               /* bare LF */
    CHECK(resp_str("?x\r\n", v, 16, &n) == -1);              /* unknown type */
    CHECK(resp_str("$5\r\nab\r\n", v, 16, &n) == 0);         /* bulk still arriving */
    CHECK(resp_str("$2\r\nabc\r\n", v, 16, &n) == -1);       /* no CRLF after the bulk */
    CHECK(resp_read("$2000\r\n", 7, 1024, v, 16, &n) == -1); /* over max_bulk */
    CHECK(resp_str("*17\r\n", v, 16, &n) == -1);             /* over the values bound */
    CHECK(resp_str(":12x\r\n", v, 16, &n) == -1);
    CHECK(resp_str("*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n", v, 16, &n) ==
          -1); /* too deep */

    uint64_t key;
    CHECK(redis_id_parse("1700000000000-5", 15, &key) && key == (1700000000000ull << 20 | 5));
    CHECK(redis_id_parse("0-0", 3, &key) && key == 0);
    CHECK(!redis_id_parse("01-0", 4, &key) && !redis_id_parse("1-", 2, &key) &&
          !redis_id_parse("1", 1, &key) && !redis_id_parse("1-1048576", 9, &key) &&
          !redis_id_parse("-1", 2, &key) && !redis_id_parse("42", 2, &key));
    char text[48];
    struct wbuf tw = {text, sizeof text, 0};
    redis_id_format(&tw, 1700000000000ull << 20 | 5);
    CHECK(tw.len == 15 && memcmp(text, "1700000000000-5", 15) == 0);
}

/* ---- Redis: XADDs kept across a lost link (the test plays Redis on a socket) ---- */

/* Polls srv until fd has buffered bytes containing want (kept in buf), or 2 s pass. */
static bool redis_fake_read(struct sse_server *srv, int fd, char *buf, size_t cap,
                            const char *want) {
    size_t len = strlen(buf);
    for (int64_t deadline = clock_ms() + 2000; clock_ms() < deadline;) {
        sse_poll(srv, 10);
        ssize_t n = recv(fd, buf + len, cap - 1 - len, MSG_DONTWAIT);
        len += n > 0 ? (size_t)n : 0;
        buf[len] = '\0';
        if (strstr(buf, want))
            return true;
    }
    fprintf(stderr, "  wanted %s, have: %s\n", want, buf);
    return false;
}

/* Polls srv until the fake Redis at ls has a connection, and returns it. */
static int redis_fake_accept(struct sse_server *srv, int ls) {
    for (int64_t deadline = clock_ms() + 2000; clock_ms() < deadline;) {
        sse_poll(srv, 10);
        int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
        if (fd >= 0)
            return fd;
    }
    return -1;
}

/* An XADD not yet written when the command link drops is kept and sent on the next link;
 * one written but unanswered is sent again (it may be stored twice, never lost); while the
 * link is down sse_publish() keeps events, in order after those. */
static void test_redis_kept(void) {
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t salen = sizeof sa;
    CHECK(ls >= 0 && bind(ls, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(ls, 8) == 0 &&
          getsockname(ls, (struct sockaddr *)&sa, &salen) == 0);
    char where[32], err[128], buf[8192] = "";
    snprintf(where, sizeof where, "127.0.0.1:%d", ntohs(sa.sin_port));
    struct sse_config cfg = {.listen = "127.0.0.1:0", .redis = where};
    struct sse_server *srv = sse_server_new(&cfg, err, sizeof err);
    CHECK(srv != NULL);
    if (!srv)
        return;
    int a = redis_fake_accept(srv, ls), b = redis_fake_accept(srv, ls);
    CHECK(a >= 0 && b >= 0);
    /* The follower asks where the stream ends at once; the command link says nothing. */
    int follow = -1;
    for (int64_t deadline = clock_ms() + 2000; follow < 0 && clock_ms() < deadline;) {
        sse_poll(srv, 10);
        if (recv(a, buf, sizeof buf - 1, MSG_DONTWAIT) > 0)
            follow = a;
        else if (recv(b, buf, sizeof buf - 1, MSG_DONTWAIT) > 0)
            follow = b;
    }
    int cmd = follow == a ? b : a;
    CHECK(follow >= 0);
    if (follow < 0) {
        sse_server_free(srv);
        return;
    }
    CHECK(send(follow, "*0\r\n", 4, 0) == 4);
    buf[0] = '\0';
    CHECK(redis_fake_read(srv, follow, buf, sizeof buf, "XREAD"));
    CHECK(sse_publish(srv, "t", NULL, "written", 7, NULL) == 0);
    buf[0] = '\0';
    CHECK(redis_fake_read(srv, cmd, buf, sizeof buf, "written\r\n"));
    CHECK(sse_publish(srv, "t", NULL, "queued", 6, NULL) == 0); /* not flushed: no poll yet */
    close(cmd);                                                 /* neither was answered */
    for (int i = 0; i < 200 && redis_of(srv)->cmd.ready; i++)
        sse_poll(srv, 1); /* the node sees the loss (and reconnects 100 ms later) */
    CHECK(redis_of(srv)->nkept == 2 && !redis_of(srv)->cmd.ready);
    CHECK(redis_of(srv)->unknown == 1 && redis_of(srv)->errors == 0);
    CHECK(sse_publish(srv, "t", NULL, "while down", 10, NULL) == 0);
    CHECK(redis_of(srv)->nkept == 3);
    cmd = -1;
    for (int64_t deadline = clock_ms() + 3000; cmd < 0 && clock_ms() < deadline;)
        cmd = redis_fake_accept(srv, ls);
    CHECK(cmd >= 0);
    if (cmd < 0) {
        sse_server_free(srv);
        return;
    }
    buf[0] = '\0';
    CHECK(redis_fake_read(srv, cmd, buf, sizeof buf, "while down\r\n"));
    const char *w = strstr(buf, "written"), *q = strstr(buf, "queued"),
               *d = strstr(buf, "while down");
    CHECK(w && q && d && w < q && q < d && redis_of(srv)->nkept == 0);
    CHECK(strncmp(buf, "*10\r\n$4\r\nXADD\r\n", 15) == 0); /* whole commands, from the start */
    close(cmd);
    close(follow);
    close(ls);
    sse_server_free(srv);
}
#endif /* SSE_ENABLE_REDIS */

/* The relay's wait between attempts: the floor, the doubling, the jitter, the cap. */
static void test_relay_backoff(void) {
#if SSE_ENABLE_PROXY
    CHECK(relay_backoff_ms(-1, 0, 0) == RELAY_RETRY_MS);
    CHECK(relay_backoff_ms(-1, 1, 99) == RELAY_RETRY_MS);     /* one failure: no jitter yet */
    CHECK(relay_backoff_ms(0, 0, 0) == RELAY_RETRY_FLOOR_MS); /* retry: 0 */
    CHECK(relay_backoff_ms(0, 1, 0) == RELAY_RETRY_FLOOR_MS);
    CHECK(relay_backoff_ms(1000, 0, 5) == 1000);
    CHECK(relay_backoff_ms(1000, 2, 0) == 1000); /* d = 2000, from [1000, 2000] */
    CHECK(relay_backoff_ms(1000, 2, 1000) == 2000);
    CHECK(relay_backoff_ms(1000, 2, 1001) == 1000); /* the draw wraps */
    CHECK(relay_backoff_ms(1000, 3, 2000) == 4000);
    CHECK(relay_backoff_ms(1000, 40, 15000) == RELAY_BACKOFF_MAX_MS); /* capped, no overflow */
    CHECK(relay_backoff_ms(1000, UINT_MAX, 0) == RELAY_BACKOFF_MAX_MS / 2);
    CHECK(relay_backoff_ms(90000, 0, 0) == 90000); /* a longer retry: is honoured */
    CHECK(relay_backoff_ms(90000, 5, 7) == 90000);
    CHECK(relay_backoff_ms(INT32_MAX, 9, UINT64_MAX) == INT32_MAX);
    bool rising = true, bounded = true;
    int64_t last = 0;
    for (unsigned f = 0; f < 20; f++) /* below the cap, each wait at least the last */
        for (uint64_t draw = 0; draw < 3; draw++) {
            int64_t d = relay_backoff_ms(0, f,
                                         draw == 0   ? 0
                                         : draw == 1 ? UINT64_MAX
                                                     : (uint64_t)f * 7919);
            rising = rising && (draw != 0 || d >= last || last > RELAY_BACKOFF_MAX_MS / 2);
            bounded = bounded && d >= RELAY_RETRY_FLOOR_MS && d <= RELAY_BACKOFF_MAX_MS;
            if (draw == 1)
                last = d;
        }
    CHECK(rising && bounded);
#endif
}

#if !SSE_ENABLE_REDIS
/* Built without Redis, a configuration that asks for it is refused, naming the switch. */
static void test_redis_refused(void) {
    char err[128] = "";
    struct sse_config cfg = {.listen = "127.0.0.1:0", .redis = "127.0.0.1:6379"};
    struct sse_server *srv = sse_server_new(&cfg, err, sizeof err);
    CHECK(srv == NULL && strcmp(err, "redis 127.0.0.1:6379: built without SSE_ENABLE_REDIS") == 0);
    sse_server_free(srv);
}
#endif

#if SSE_ENABLE_REDIS
/* A node's backlog covers a stream id (sparse ids) only from its base or its first entry on. */
static void test_redis_backlog_covers(void) {
    static struct sse_server node; /* only backlog and last_id are read */
    node.backlog =
        (struct backlog){.ring = calloc(2, sizeof(struct blob *)), .cap = 2, .max_bytes = SIZE_MAX};
    node.last_id = 100; /* the stream's position when the node started */
    CHECK(redis_backlog_covers(&node, 100) && !redis_backlog_covers(&node, 99));
    uint64_t prev = 100;
    for (uint64_t id = 200; id <= 300; id += 100) {
        struct blob *b = blob_from("x", 1);
        b->id = id;
        backlog_push(&node.backlog, b, prev);
        blob_unref(b);
        node.last_id = prev = id;
    }
    CHECK(redis_backlog_covers(&node, 100));  /* the position: every entry after it is held */
    CHECK(!redis_backlog_covers(&node, 150)); /* never an entry the node read: ask Redis */
    CHECK(redis_backlog_covers(&node, 200) && redis_backlog_covers(&node, 250));
    CHECK(redis_backlog_covers(&node, 300) && !redis_backlog_covers(&node, 301));
    CHECK(!redis_backlog_covers(&node, 99) && !redis_backlog_covers(&node, 0));
    struct blob *b = blob_from("x", 1);
    b->id = 400;
    backlog_push(&node.backlog, b, 300); /* evicts 200: base 200 */
    blob_unref(b);
    node.last_id = 400;
    CHECK(redis_backlog_covers(&node, 200) && !redis_backlog_covers(&node, 250));
    CHECK(!redis_backlog_covers(&node, 100) && redis_backlog_covers(&node, 300));
    backlog_free(&node.backlog);
}
#endif /* SSE_ENABLE_REDIS */

/* Flow control through the API: a subscriber that does not read passes the high-water mark,
 * sse_publish() answers -EAGAIN and sse_publish_ready() 0, nothing of it published; once it
 * has read everything, the server takes events again. */
static void test_pace_api(void) {
    struct sse_config cfg = {.listen = "127.0.0.1:0",
                             .heartbeat_ms = SSE_OFF,
                             .client_buffer = 64u << 20,
                             .pace_high_water = 4096};
    char err[128];
    static char big[60000], buf[1 << 16];
    memset(big, 'x', sizeof big);
    struct sse_server *srv = sse_server_new(&cfg, err, sizeof err);
    CHECK(srv != NULL);
    if (!srv)
        return;
    int sub = connect_to(srv);
    const char *req = "GET /events HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK(sub >= 0 && send(sub, req, strlen(req), 0) > 0);
    for (int i = 0; i < 100 && srv->nsubscribers == 0; i++)
        sse_poll(srv, 10);
    CHECK(sse_publish_ready(srv) == 1);
    int r = 0, published = 0;
    for (; published < 2000 && (r = sse_publish(srv, NULL, NULL, big, sizeof big, NULL)) == 1;
         published++)
        sse_poll(srv, 0); /* what the kernel takes leaves; the rest stays queued */
    CHECK(r == -EAGAIN && sse_publish_ready(srv) == 0);
    CHECK(srv->m.published_total == (uint64_t)published);
    bool ready = false; /* read it all: the hold ends (or, at worst, it is left behind) */
    for (int64_t end = clock_ms() + 10000; !ready && clock_ms() < end;) {
        sse_poll(srv, 1);
        while (recv(sub, buf, sizeof buf, MSG_DONTWAIT) > 0)
            ;
        ready = sse_publish_ready(srv);
    }
    CHECK(ready && sse_publish(srv, NULL, NULL, "x", 1, NULL) == 1);
    close(sub);
    sse_server_free(srv);
}

int main(void) {
    test_format();
    test_utf8();
    test_names();
    test_json();
    test_reader();
    test_http_parse();
    test_decode();
    test_http_helpers();
    test_static();
    test_path_encode();
    test_proxy_path();
    test_backlog();
    test_topics();
    test_response_parse();
    test_dechunk();
    test_boundary();
    test_repair();
    test_whatwg_reader();
    test_journal();
    test_journal_header();
    test_ids();
#if SSE_ENABLE_REDIS
    test_resp();
#endif
    test_two_servers();
    test_host_routes();
    test_host_stream();
    test_ending_heap();
#if SSE_ENABLE_AUTH
    test_on_authorize();
#endif
    test_pace_api();
    test_log_reentry();
#if SSE_ENABLE_REDIS
    test_redis_kept();
#endif
    test_relay_backoff();
#if SSE_ENABLE_REDIS
    test_redis_backlog_covers();
#else
    test_redis_refused();
#endif
    printf("unit: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
