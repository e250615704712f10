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
    CHECK(read_until(one, e, buf, sizeof buf, "event: position\ndata:\n\n"));
    /* the server's callback counts into ha while read_until() polls, unseen by cppcheck */
    // cppcheck-suppress knownConditionTrueFalse
    CHECK(ha.asked == asked);
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

#if SSE_ENABLE_AUTH
/* ---- authorization: SHA-256, HMAC, base64url, JSON, the token ---- */

#include "b64url.h" /* tokens are minted here, not in sse.c */

static bool hex_is(const unsigned char *d, size_t n, const char *hex) {
    char got[129];
    for (size_t i = 0; i < n && i < 64; i++)
        snprintf(got + 2 * i, 3, "%02x", d[i]);
    got[2 * (n < 64 ? n : 64)] = '\0';
    if (strcmp(got, hex) != 0)
        fprintf(stderr, "  got %s\n", got);
    return strcmp(got, hex) == 0;
}

static bool sha256_is(const char *msg, size_t len, const char *hex) {
    struct sha256 s;
    unsigned char d[32];
    sha256_init(&s);
    sha256_update(&s, msg, len);
    sha256_final(&s, d);
    return hex_is(d, 32, hex);
}

/* The FIPS 180-4 examples (NIST's "SHA256.pdf": one block, two blocks, a million 'a'). */
static void test_sha256(void) {
    CHECK(sha256_is("abc", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    const char *two_hex = "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1";
    CHECK(sha256_is(two, strlen(two), two_hex));
    CHECK(sha256_is("", 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
    /* The same message in uneven pieces (1, 2, 3 ... bytes) hashes the same. */
    struct sha256 s;
    unsigned char d[32];
    sha256_init(&s);
    for (size_t at = 0, step = 1; at < strlen(two); at += step, step++)
        sha256_update(&s, two + at, strlen(two) - at < step ? strlen(two) - at : step);
    sha256_final(&s, d);
    CHECK(hex_is(d, 32, two_hex));
    /* One million 'a', fed in pieces of 1000 that straddle block boundaries. */
    static char a[1000];
    memset(a, 'a', sizeof a);
    sha256_init(&s);
    for (int i = 0; i < 1000; i++)
        sha256_update(&s, a, sizeof a);
    sha256_final(&s, d);
    CHECK(hex_is(d, 32, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"));
    /* Padding edges: 55, 56 and 64 bytes (one or two padding blocks). */
    CHECK(sha256_is(a, 55, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318"));
    CHECK(sha256_is(a, 56, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"));
    CHECK(sha256_is(a, 64, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"));
}

static bool hmac_is(const unsigned char *key, size_t key_len, const char *msg, size_t len,
                    const char *hex) {
    unsigned char mac[32];
    hmac_sha256(key, key_len, msg, len, mac);
    return hex_is(mac, strlen(hex) / 2, hex);
}

/* RFC 4231 section 4, test cases 1 to 7 (case 5's output is truncated to 128 bits). */
static void test_hmac(void) {
    unsigned char k[131], d[50];
    memset(k, 0x0b, 20);
    CHECK(hmac_is(k, 20, "Hi There", 8,
                  "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"));
    CHECK(hmac_is((const unsigned char *)"Jefe", 4, "what do ya want for nothing?", 28,
                  "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"));
    memset(k, 0xaa, 20);
    memset(d, 0xdd, 50);
    CHECK(hmac_is(k, 20, (const char *)d, 50,
                  "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"));
    for (unsigned i = 0; i < 25; i++)
        k[i] = (unsigned char)(i + 1);
    memset(d, 0xcd, 50);
    CHECK(hmac_is(k, 25, (const char *)d, 50,
                  "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"));
    memset(k, 0x0c, 20);
    CHECK(hmac_is(k, 20, "Test With Truncation", 20, "a3b6167473100ee06e0c796c2955552b"));
    memset(k, 0xaa, 131);
    const char *m6 = "Test Using Larger Than Block-Size Key - Hash Key First";
    CHECK(hmac_is(k, 131, m6, strlen(m6),
                  "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"));
    const char *m7 = "This is a test using a larger than block-size key and a larger than "
                     "block-size data. The key needs to be hashed before being used by the "
                     "HMAC algorithm.";
    CHECK(hmac_is(k, 131, m7, strlen(m7),
                  "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"));
}

static long b64_str(const char *s, unsigned char *out, size_t cap) {
    return b64url_decode(guarded(s, strlen(s)), strlen(s), out, cap);
}

static void test_b64url(void) {
    unsigned char out[16];
    /* RFC 4648 section 10, unpadded. */
    static const char *const enc[] = {"", "Zg", "Zm8", "Zm9v", "Zm9vYg", "Zm9vYmE", "Zm9vYmFy"};
    for (size_t i = 0; i < 7; i++)
        CHECK(b64_str(enc[i], out, sizeof out) == (long)i && memcmp(out, "foobar", i) == 0);
    CHECK(b64_str("-_8", out, sizeof out) == 2 && out[0] == 0xfb && out[1] == 0xff);
    CHECK(b64_str("Zg==", out, sizeof out) == -1); /* padding */
    CHECK(b64_str("Zg=", out, sizeof out) == -1);
    CHECK(b64_str("Z", out, sizeof out) == -1);     /* 1 mod 4 */
    CHECK(b64_str("Zm9vY", out, sizeof out) == -1); /* 1 mod 4 */
    CHECK(b64_str("Zh", out, sizeof out) == -1);    /* bits left over after "f" */
    CHECK(b64_str("Zm9", out, sizeof out) == -1);
    CHECK(b64_str("+/8", out, sizeof out) == -1); /* base64, not base64url */
    CHECK(b64_str("Zm 9v", out, sizeof out) == -1);
    CHECK(b64url_decode("Zm9v\0", 5, out, sizeof out) == -1);
    CHECK(b64_str("Zm9vYmFy", out, 5) == -1 && b64_str("Zm9vYmFy", out, 6) == 6); /* room */
    /* Every prefix against a guard page: 0 mod 4 and 2, 3 mod 4 decode, 1 mod 4 does not. */
    const char *s = "AAAAAAAAAA"; /* zeros: every prefix is canonical */
    for (size_t n = 0; n <= strlen(s); n++)
        CHECK(b64url_decode(guarded(s, n), n, out, sizeof out) ==
              (n % 4 == 1 ? -1 : (long)(n / 4 * 3 + (n % 4 ? n % 4 - 1 : 0))));
}

/* Reads one JSON string from s (a copy, as strings are decoded in place). */
static bool json_string_is(const char *s, const char *want, size_t want_len) {
    static char text[256];
    size_t n = strlen(s);
    memcpy(text, s, n + 1);
    struct json j = {text, n, 0};
    const char *got;
    size_t got_len;
    if (!json_string(&j, &got, &got_len))
        return want == NULL;
    return want && got_len == want_len && memcmp(got, want, want_len) == 0 && j.pos == n;
}

static bool json_number_is(const char *s, int64_t want, bool want_fraction) {
    char *text = guarded(s, strlen(s));
    struct json j = {text, strlen(s), 0};
    int64_t v;
    bool fraction;
    return json_number(&j, &v, &fraction) && j.pos == strlen(s) && v == want &&
           fraction == want_fraction;
}

static bool json_number_bad(const char *s) {
    struct json j = {guarded(s, strlen(s)), strlen(s), 0};
    int64_t v;
    bool fraction;
    return !json_number(&j, &v, &fraction) || j.pos != strlen(s);
}

static void test_json_reader(void) {
    CHECK(json_string_is("\"abc\"", "abc", 3));
    CHECK(json_string_is(" \"\"", "", 0));
    CHECK(json_string_is("\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\"", "a\"b\\c/d\b\f\n\r\t", 12));
    CHECK(json_string_is("\"\\u0041\\u00e9\\u20AC\"", "A\xc3\xa9\xe2\x82\xac", 6));
    CHECK(json_string_is("\"\\ud83d\\ude00!\"", "\xf0\x9f\x98\x80!", 5)); /* a pair */
    CHECK(json_string_is("\"\\u0000\"", "\0", 1));
    CHECK(json_string_is("\"\\ud83d\"", NULL, 0));         /* lone high surrogate */
    CHECK(json_string_is("\"\\ud83dx\\ude00\"", NULL, 0)); /* not adjacent */
    CHECK(json_string_is("\"\\ud83d\\u0041\"", NULL, 0));  /* not a low one */
    CHECK(json_string_is("\"\\ude00\"", NULL, 0));         /* lone low surrogate */
    CHECK(json_string_is("\"\\u12g4\"", NULL, 0));
    CHECK(json_string_is("\"\\x\"", NULL, 0));
    CHECK(json_string_is("\"a\nb\"", NULL, 0)); /* a raw control character */
    CHECK(json_string_is("\"abc", NULL, 0));
    CHECK(json_string_is("'a'", NULL, 0));
    /* Every prefix of a string with escapes, against a guard page: never read past. */
    const char *esc = "\"a\\u00e9\\ud83d\\ude00\\n\"";
    for (size_t n = 0; n < strlen(esc); n++) {
        struct json j = {guarded(esc, n), n, 0};
        const char *got;
        size_t got_len;
        CHECK(!json_string(&j, &got, &got_len));
    }
    CHECK(json_number_is("0", 0, false) && json_number_is("-0", 0, false));
    CHECK(json_number_is("1700000000", 1700000000, false));
    CHECK(json_number_is("1.5", 1, true) && json_number_is("-1.5", -2, true));
    CHECK(json_number_is("1.50e1", 15, false) && json_number_is("15E-1", 1, true));
    CHECK(json_number_is("1.7e9", 1700000000, false) && json_number_is("17e+8", 1700000000, false));
    CHECK(json_number_is("0.001", 0, true) && json_number_is("5e-400", 0, true));
    CHECK(json_number_is("1e400", INT64_MAX, false) && json_number_is("-1e400", INT64_MIN, false));
    CHECK(json_number_is("99999999999999999999", INT64_MAX, false));
    CHECK(json_number_is("9223372036854775807", INT64_MAX, false));
    CHECK(json_number_is("0e99999999999999999999", 0, false));
    CHECK(json_number_bad("01") && json_number_bad("1.") && json_number_bad(".5"));
    CHECK(json_number_bad("-") && json_number_bad("+1") && json_number_bad("1e"));
    CHECK(json_number_bad("1e+") && json_number_bad("0x10") && json_number_bad(""));
}

/* ---- tokens ---- */

static const unsigned char test_key[] = "a key for the tests";
#define TEST_KEY_LEN (sizeof test_key - 1)
#define TEST_NOW     1000000000

/* A token of this header and payload (JSON text), signed with test_key. */
static const char *mint(const char *header, const char *payload) {
    static char tok[3 * JWT_MAX_BYTES];
    size_t n = b64url_encode(header, strlen(header), tok);
    tok[n++] = '.';
    n += b64url_encode(payload, strlen(payload), tok + n);
    unsigned char mac[32];
    hmac_sha256(test_key, TEST_KEY_LEN, tok, n, mac);
    tok[n++] = '.';
    b64url_encode(mac, sizeof mac, tok + n);
    return tok;
}

/* text (HEADER.PAYLOAD, as it stands) with its signature under test_key appended. */
static const char *sign_text(const char *text) {
    static char tok[512];
    unsigned char mac[32];
    size_t n = strlen(text);
    memcpy(tok, text, n + 1);
    hmac_sha256(test_key, TEST_KEY_LEN, tok, n, mac);
    tok[n++] = '.';
    b64url_encode(mac, sizeof mac, tok + n);
    return tok;
}

static const char *hs256(const char *payload) {
    return mint("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", payload);
}

static struct jwt test_jwt;

/* Verifies tok (copied against a guard page) with test_key at TEST_NOW. */
static enum auth_reason verify_aud(const char *tok, const char *audience) {
    return jwt_verify(guarded(tok, strlen(tok)), strlen(tok), test_key, TEST_KEY_LEN, audience,
                      TEST_NOW, &test_jwt);
}

static enum auth_reason verify(const char *tok) {
    return verify_aud(tok, NULL);
}

static bool list_is(const struct jwt_list *l, const char *names) {
    char got[1024];
    size_t n = 0;
    for (size_t i = 0; i < l->n && n + l->len[i] + 1 < sizeof got; i++) {
        memcpy(got + n, l->name[i], l->len[i]);
        n += l->len[i];
        got[n++] = '|';
    }
    got[n] = '\0';
    if (strcmp(got, names) != 0)
        fprintf(stderr, "  list: %s\n", got);
    return strcmp(got, names) == 0;
}

/* Tokens minted elsewhere: RFC 7515 appendix A.1 (its key a JWK "k", base64url), and one by
 * Python's hmac, hashlib and base64 modules (python3 -c, key "python-minted secret"). */
static void test_jwt_independent(void) {
    const char *rfc_tok =
        "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogI"
        "mh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const char *rfc_k =
        "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
    unsigned char k[64];
    CHECK(b64url_decode(rfc_k, strlen(rfc_k), k, sizeof k) == 64);
    const char *t = guarded(rfc_tok, strlen(rfc_tok));
    CHECK(jwt_verify(t, strlen(rfc_tok), k, 64, NULL, 1300819380, &test_jwt) == AUTH_OK);
    CHECK(test_jwt.exp == 1300819380 && test_jwt.nbf == INT64_MIN);
    CHECK(test_jwt.subscribe.n == 0 && test_jwt.publish.n == 0);
    CHECK(jwt_verify(t, strlen(rfc_tok), k, 64, NULL, 1300819386, &test_jwt) == AUTH_EXPIRED);
    CHECK(jwt_verify(t, strlen(rfc_tok), k, 63, NULL, 1300819380, &test_jwt) == AUTH_SIGNATURE);

    const char *py =
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
        "eyJzdWIiOiI0MiIsImV4cCI6MjAwMDAwMDAwMCwibmJmIjoxMDAwMD"
        "AwMDAwLCJhdWQiOlsic3NlIiwib3RoZXIiXSwibWVyY3VyZSI6eyJzdWJzY3JpYmUiOlsidXNlci00Mi0qIiwibmV3"
        "cyJdLCJwdWJsaXNoIjpbInVzZXItNDItaW5ib3giXX19.FXiY8ws6ZHurkIk9ZvmCM9M6pnGWzb2F477NWo1PYTQ";
    const unsigned char *pk = (const unsigned char *)"python-minted secret";
    t = guarded(py, strlen(py));
    CHECK(jwt_verify(t, strlen(py), pk, 20, "sse", TEST_NOW, &test_jwt) == AUTH_OK);
    CHECK(test_jwt.exp == 2000000000 && test_jwt.nbf == 1000000000);
    CHECK(list_is(&test_jwt.subscribe, "user-42-*|news|"));
    CHECK(list_is(&test_jwt.publish, "user-42-inbox|"));
    CHECK(jwt_grants(&test_jwt.subscribe, "user-42-news", 12));
    CHECK(!jwt_grants(&test_jwt.subscribe, "user-43-news", 12));
    CHECK(jwt_verify(t, strlen(py), pk, 20, "nope", TEST_NOW, &test_jwt) == AUTH_AUDIENCE);
    CHECK(test_jwt.subscribe.n == 0); /* a refused token grants nothing */
    CHECK(jwt_verify(t, strlen(py), pk, 19, "sse", TEST_NOW, &test_jwt) == AUTH_SIGNATURE);
}

/* The header: HS256 only, in any JSON spelling; every other alg refused, before the
 * signature is looked at. */
static void test_jwt_alg(void) {
    const char *p = "{\"sse\":{\"subscribe\":[\"a\"]}}";
    CHECK(verify(hs256(p)) == AUTH_OK);
    CHECK(verify(mint("{\"alg\":\"HS256\"}", p)) == AUTH_OK); /* no typ */
    CHECK(verify(mint(" {\r\n\"typ\" : \"whatever\" ,\t\"alg\": \"HS\\u0032\\u00356\" } ", p)) ==
          AUTH_OK);
    CHECK(verify(mint("{\"alg\":\"none\"}", p)) == AUTH_ALG);
    CHECK(verify(mint("{\"alg\":\"HS512\"}", p)) == AUTH_ALG);
    CHECK(verify(mint("{\"alg\":\"RS256\"}", p)) == AUTH_ALG);
    CHECK(verify(mint("{\"alg\":\"hs256\"}", p)) == AUTH_ALG);
    CHECK(verify(mint("{\"alg\":\"HS256 \"}", p)) == AUTH_ALG);
    CHECK(verify(mint("{\"typ\":\"JWT\"}", p)) == AUTH_ALG); /* missing */
    CHECK(verify(mint("{\"alg\":null}", p)) == AUTH_ALG);
    CHECK(verify(mint("{\"alg\":[\"HS256\"]}", p)) == AUTH_ALG);
    CHECK(verify(mint("{\"alg\":\"HS256\",\"alg\":\"none\"}", p)) == AUTH_MALFORMED);
    CHECK(verify(mint("{\"alg\":\"none\",\"alg\":\"HS256\"}", p)) == AUTH_MALFORMED);
    CHECK(verify(mint("{\"alg\":\"HS256\",\"crit\":[\"exp\"]}", p)) == AUTH_MALFORMED);
    CHECK(verify(mint("[\"HS256\"]", p)) == AUTH_MALFORMED);
    CHECK(verify(mint("{\"alg\":\"HS256\"", p)) == AUTH_MALFORMED);
    CHECK(verify(mint("{\"alg\":\"HS256\"} x", p)) == AUTH_MALFORMED);
    CHECK(verify(mint("{\"alg\":\"HS256\",}", p)) == AUTH_MALFORMED);
    CHECK(verify(mint("{\"alg\":\"HS256\",\"x\":\"\xff\"}", p)) == AUTH_MALFORMED); /* UTF-8 */
    /* "alg":"none" with an empty signature, the classic forgery: refused for its alg. */
    char forged[256];
    size_t n = b64url_encode("{\"alg\":\"none\"}", 14, forged);
    forged[n++] = '.';
    n += b64url_encode(p, strlen(p), forged + n);
    forged[n++] = '.';
    forged[n] = '\0';
    CHECK(verify(forged) == AUTH_ALG);
}

/* The form of the token and its signature. */
static void test_jwt_form(void) {
    const char *p = "{\"sse\":{\"subscribe\":[\"a\"]}}";
    char tok[512], bad[1024];
    snprintf(tok, sizeof tok, "%s", hs256(p));
    size_t len = strlen(tok);
    CHECK(verify(tok) == AUTH_OK);
    CHECK(verify("") == AUTH_MALFORMED);
    CHECK(verify("..") == AUTH_MALFORMED);
    char *dot2 = strrchr(tok, '.');
    snprintf(bad, sizeof bad, "%.*s", (int)(dot2 - tok), tok); /* 2 parts */
    CHECK(verify(bad) == AUTH_MALFORMED);
    snprintf(bad, sizeof bad, "%s.", tok); /* 4 parts */
    CHECK(verify(bad) == AUTH_MALFORMED);
    snprintf(bad, sizeof bad, "%s.%s", tok, dot2 + 1);
    CHECK(verify(bad) == AUTH_MALFORMED);
    snprintf(bad, sizeof bad, "%s=", tok); /* padding on the signature */
    CHECK(verify(bad) == AUTH_MALFORMED);
    snprintf(bad, sizeof bad, " %s", tok);
    CHECK(verify(bad) == AUTH_MALFORMED);
    /* Padding on the payload, signed as it stands: still refused. */
    CHECK(verify(sign_text("eyJhbGciOiJIUzI1NiJ9.e30")) == AUTH_OK); /* {"alg":"HS256"}.{} */
    CHECK(verify(sign_text("eyJhbGciOiJIUzI1NiJ9.e30=")) == AUTH_MALFORMED);
    CHECK(verify(sign_text("eyJhbGciOiJIUzI1NiJ9.e30.")) == AUTH_MALFORMED);
    CHECK(verify(sign_text("eyJhbGciOiJIUzI1NiJ9.e3")) == AUTH_MALFORMED);  /* 1 mod 4 */
    CHECK(verify(sign_text("eyJhbGciOiJIUzI1NiJ9.e31")) == AUTH_MALFORMED); /* bits left */
    CHECK(verify(sign_text("eyJhbGciOiJIUzI1NiJ9=.e30")) == AUTH_MALFORMED);
    CHECK(verify(sign_text("eyJhbGciOiJIUzI1NiJ9.e30+")) == AUTH_MALFORMED);
    /* The signature: a wrong key, a changed byte anywhere, one cut short or too long. */
    CHECK(jwt_verify(tok, len, test_key, TEST_KEY_LEN - 1, NULL, TEST_NOW, &test_jwt) ==
          AUTH_SIGNATURE);
    bool refused = true;
    for (size_t i = 0; i < len; i++) {
        snprintf(bad, sizeof bad, "%s", tok);
        bad[i] = bad[i] == 'A' ? 'B' : 'A';
        refused = refused && verify(bad) != AUTH_OK;
    }
    CHECK(refused);
    snprintf(bad, sizeof bad, "%s", tok);
    bad[len - 1] = bad[len - 1] == 'A' ? 'E' : 'A'; /* changes a bit of the last byte */
    CHECK(verify(bad) == AUTH_SIGNATURE);
    bad[len - 3] = '\0'; /* 40 characters: 30 bytes */
    CHECK(verify(bad) == AUTH_SIGNATURE);
    snprintf(bad, sizeof bad, "%sAAAA", tok); /* 35 bytes */
    CHECK(verify(bad) == AUTH_SIGNATURE);
    /* Every prefix of a valid token against a guard page: refused, never read past. */
    refused = true;
    for (size_t i = 0; i < len; i++)
        refused = refused && jwt_verify(guarded(tok, i), i, test_key, TEST_KEY_LEN, NULL, TEST_NOW,
                                        &test_jwt) != AUTH_OK;
    CHECK(refused);
}

/* The length limit: the longest token under JWT_MAX_BYTES verifies, one over is refused
 * first, whatever it holds. */
static void test_jwt_length(void) {
    static char payload[JWT_MAX_BYTES], tok[JWT_MAX_BYTES + 2];
    size_t best = 0;
    for (size_t fill = 6000; fill < 6200; fill++) {
        snprintf(payload, sizeof payload, "{\"x\":\"%0*d\"}", (int)fill, 0);
        size_t n = strlen(hs256(payload));
        if (n <= JWT_MAX_BYTES && n > best) {
            best = n;
            snprintf(tok, sizeof tok, "%s", hs256(payload));
        }
        if (n > JWT_MAX_BYTES) {
            CHECK(verify(hs256(payload)) == AUTH_TOO_LONG);
            break;
        }
    }
    CHECK(best > JWT_MAX_BYTES - 4 && verify(tok) == AUTH_OK);
    memset(tok, '!', JWT_MAX_BYTES + 1);
    tok[JWT_MAX_BYTES + 1] = '\0';
    CHECK(verify(tok) == AUTH_TOO_LONG);
}

/* exp, nbf and aud, with the leeway; TEST_NOW is 1000000000. */
static void test_jwt_claims(void) {
    CHECK(verify(hs256("{}")) == AUTH_OK && test_jwt.exp == INT64_MAX && test_jwt.nbf == INT64_MIN);
    CHECK(verify(hs256("{\"exp\":999999995}")) == AUTH_EXPIRED);   /* at its end: "on or after" */
    CHECK(verify(hs256("{\"exp\":999999996}")) == AUTH_OK);        /* within it */
    CHECK(verify(hs256("{\"exp\":999999995.5}")) == AUTH_EXPIRED); /* taken down to 999999995 */
    CHECK(verify(hs256("{\"exp\":999999996.5}")) == AUTH_OK && test_jwt.exp == 999999996);
    CHECK(verify(hs256("{\"exp\":1e10}")) == AUTH_OK && test_jwt.exp == 10000000000);
    CHECK(verify(hs256("{\"exp\":1e400}")) == AUTH_OK && test_jwt.exp == INT64_MAX);
    CHECK(verify(hs256("{\"exp\":-1e400}")) == AUTH_EXPIRED);
    CHECK(verify(hs256("{\"nbf\":1000000006}")) == AUTH_NOT_YET_VALID);
    CHECK(verify(hs256("{\"nbf\":1000000005}")) == AUTH_OK && test_jwt.nbf == 1000000005);
    CHECK(verify(hs256("{\"nbf\":1000000005.5}")) == AUTH_NOT_YET_VALID);
    CHECK(verify(hs256("{\"nbf\":-1e400}")) == AUTH_OK);
    CHECK(verify(hs256("{\"exp\":\"2000000000\"}")) == AUTH_MALFORMED);
    CHECK(verify(hs256("{\"exp\":null}")) == AUTH_MALFORMED);
    CHECK(verify(hs256("{\"nbf\":true}")) == AUTH_MALFORMED);
    CHECK(verify(hs256("{\"exp\":2000000000,\"exp\":1}")) == AUTH_MALFORMED); /* duplicate */
    /* The order: exp before nbf before aud before the grants. */
    CHECK(verify(hs256("{\"nbf\":2000000000,\"exp\":1}")) == AUTH_EXPIRED);
    CHECK(verify_aud(hs256("{\"aud\":\"x\",\"nbf\":2000000000}"), "sse") == AUTH_NOT_YET_VALID);
    CHECK(verify(hs256("{\"sse\":{\"subscribe\":[1]},\"exp\":1}")) == AUTH_EXPIRED);
    CHECK(verify_aud(hs256("{\"sse\":7,\"aud\":\"x\"}"), "sse") == AUTH_AUDIENCE);

    CHECK(verify_aud(hs256("{\"aud\":\"sse\"}"), "sse") == AUTH_OK);
    CHECK(verify_aud(hs256("{\"aud\":[\"a\",\"sse\"]}"), "sse") == AUTH_OK);
    CHECK(verify_aud(hs256("{\"aud\":\"sse2\"}"), "sse") == AUTH_AUDIENCE);
    CHECK(verify_aud(hs256("{\"aud\":[\"a\",\"b\"]}"), "sse") == AUTH_AUDIENCE);
    CHECK(verify_aud(hs256("{\"aud\":[]}"), "sse") == AUTH_AUDIENCE);
    CHECK(verify_aud(hs256("{}"), "sse") == AUTH_AUDIENCE); /* missing */
    CHECK(verify_aud(hs256("{\"aud\":\"\\u0073se\"}"), "sse") == AUTH_OK);
    CHECK(verify(hs256("{\"aud\":\"anything\"}")) == AUTH_OK); /* not checked */
    CHECK(verify(hs256("{\"aud\":5}")) == AUTH_MALFORMED);
    CHECK(verify_aud(hs256("{\"aud\":[\"sse\",5]}"), "sse") == AUTH_MALFORMED);
    /* The payload must be one JSON object. */
    CHECK(verify(hs256("")) == AUTH_MALFORMED);
    CHECK(verify(hs256("[]")) == AUTH_MALFORMED);
    CHECK(verify(hs256("\"x\"")) == AUTH_MALFORMED);
    CHECK(verify(hs256("{\"a\":1,}")) == AUTH_MALFORMED);
    CHECK(verify(hs256("{\"a\" 1}")) == AUTH_MALFORMED);
    CHECK(verify(hs256("{\"a\":tru}")) == AUTH_MALFORMED);
    CHECK(verify(hs256("{\"a\":[1,2}")) == AUTH_MALFORMED);
    CHECK(verify(hs256("{} {}")) == AUTH_MALFORMED);
    CHECK(verify(hs256("{'a':1}")) == AUTH_MALFORMED);
    CHECK(verify(hs256("{\"a\":\"\xc3\"}")) == AUTH_MALFORMED); /* not UTF-8 */
    CHECK(verify(hs256("{\"a\":[true,false,null,-1.5e3,{\"b\":{}}],\"c\":\"\\ud83d\\ude00\"}")) ==
          AUTH_OK);
    /* Nesting: 16 levels (the payload's object the first) are read, 17 are not. */
    CHECK(verify(hs256("{\"a\":[[[[[[[[[[[[[[{}]]]]]]]]]]]]]]}")) == AUTH_OK);
    CHECK(verify(hs256("{\"a\":[[[[[[[[[[[[[[[{}]]]]]]]]]]]]]]]}")) == AUTH_MALFORMED);
}

/* Grants: under "sse", else under "mercure"; patterns. */
static void test_jwt_grants(void) {
    CHECK(verify(hs256("{\"sse\":{\"subscribe\":[\"a\",\"orders.*\"],\"publish\":[\"b\"]}}")) ==
          AUTH_OK);
    CHECK(list_is(&test_jwt.subscribe, "a|orders.*|") && list_is(&test_jwt.publish, "b|"));
    const struct jwt_list *s = &test_jwt.subscribe;
    CHECK(jwt_grants(s, "a", 1) && !jwt_grants(s, "ab", 2) && !jwt_grants(s, "b", 1));
    CHECK(jwt_grants(s, "orders.1", 8) && jwt_grants(s, "orders.", 7));
    CHECK(!jwt_grants(s, "orders", 6) && !jwt_grants(s, "order", 5));
    CHECK(!jwt_grants(&test_jwt.publish, "a", 1) && jwt_grants(&test_jwt.publish, "b", 1));
    CHECK(verify(hs256("{\"mercure\":{\"publish\":[\"*\"],\"payload\":{\"user\":42}}}")) ==
          AUTH_OK);
    CHECK(test_jwt.subscribe.n == 0 && list_is(&test_jwt.publish, "*|"));
    CHECK(jwt_grants(&test_jwt.publish, "anything", 8) && !jwt_grants(&test_jwt.subscribe, "a", 1));
    /* "sse" wins over "mercure", in either order. */
    CHECK(verify(hs256("{\"mercure\":{\"subscribe\":[\"m\"]},\"sse\":{\"subscribe\":[\"s\"]}}")) ==
          AUTH_OK);
    CHECK(list_is(&test_jwt.subscribe, "s|"));
    CHECK(verify(hs256("{\"sse\":{\"publish\":[\"s\"]},\"mercure\":{\"subscribe\":[\"m\"]}}")) ==
          AUTH_OK);
    CHECK(test_jwt.subscribe.n == 0 && list_is(&test_jwt.publish, "s|"));
    CHECK(verify(hs256("{\"sse\":{}}")) == AUTH_OK && test_jwt.subscribe.n == 0);
    /* Escapes are decoded: the name is the string's value. */
    CHECK(verify(hs256("{\"sse\":{\"subscribe\":[\"user-42-\\u002a\"]}}")) == AUTH_OK);
    CHECK(jwt_grants(&test_jwt.subscribe, "user-42-news", 12));
    CHECK(!jwt_grants(&test_jwt.subscribe, "user-4", 6));
    CHECK(verify(hs256("{\"sse\":{\"subscribe\":[\"a*b\",\"\"]}}")) == AUTH_OK);
    CHECK(jwt_grants(&test_jwt.subscribe, "a*b", 3) && !jwt_grants(&test_jwt.subscribe, "axb", 3));
    /* Not strings, not lists, not an object, repeated: malformed. */
    CHECK(verify(hs256("{\"sse\":{\"subscribe\":[1]}}")) == AUTH_MALFORMED);
    CHECK(verify(hs256("{\"sse\":{\"subscribe\":[[\"a\"]]}}")) == AUTH_MALFORMED);
    CHECK(verify(hs256("{\"sse\":{\"subscribe\":\"a\"}}")) == AUTH_MALFORMED);
    CHECK(verify(hs256("{\"sse\":[\"a\"]}")) == AUTH_MALFORMED);
    CHECK(verify(hs256("{\"mercure\":{\"publish\":[null]}}")) == AUTH_MALFORMED);
    CHECK(verify(hs256("{\"sse\":{},\"mercure\":{\"publish\":[null]}}")) == AUTH_MALFORMED);
    CHECK(verify(hs256("{\"sse\":{},\"sse\":{}}")) == AUTH_MALFORMED);
    CHECK(verify(hs256("{\"sse\":{\"publish\":[],\"publish\":[]}}")) == AUTH_MALFORMED);
    /* JWT_GRANTS_MAX grants in a list, and one more. */
    static char payload[2048];
    size_t n = (size_t)snprintf(payload, sizeof payload, "{\"sse\":{\"subscribe\":[");
    for (int i = 0; i < JWT_GRANTS_MAX; i++)
        n += (size_t)snprintf(payload + n, sizeof payload - n, "%s\"t%d\"", i ? "," : "", i);
    snprintf(payload + n, sizeof payload - n, "]}}");
    CHECK(verify(hs256(payload)) == AUTH_OK && test_jwt.subscribe.n == JWT_GRANTS_MAX);
    CHECK(jwt_grants(&test_jwt.subscribe, "t63", 3) && !jwt_grants(&test_jwt.subscribe, "t64", 3));
    snprintf(payload + n, sizeof payload - n, ",\"t64\"]}}");
    CHECK(verify(hs256(payload)) == AUTH_MALFORMED && test_jwt.subscribe.n == 0);
    struct jwt_list empty = {.n = 0};
    CHECK(!jwt_grants(&empty, "a", 1));
}

static void test_auth_reasons(void) {
    CHECK(strcmp(auth_reason_label[AUTH_OK], "ok") == 0);
    CHECK(strcmp(auth_reason_label[AUTH_TOO_LONG], "too_long") == 0);
    CHECK(strcmp(auth_reason_label[AUTH_NOT_YET_VALID], "not_yet_valid") == 0);
    CHECK(strcmp(auth_reason_label[AUTH_UNAVAILABLE], "unavailable") == 0);
    CHECK(strcmp(auth_reason_text[AUTH_ALG], "algorithm is not HS256") == 0);
    CHECK(strcmp(auth_reason_text[AUTH_AUDIENCE], "wrong audience") == 0);
    bool all = true;
    for (int r = 0; r < AUTH_REASONS; r++)
        all = all && auth_reason_label[r] && auth_reason_text[r];
    CHECK(all);
}
#endif /* SSE_ENABLE_AUTH */

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
#if SSE_ENABLE_AUTH
    test_sha256();
    test_hmac();
    test_b64url();
    test_json_reader();
    test_jwt_independent();
    test_jwt_alg();
    test_jwt_form();
    test_jwt_length();
    test_jwt_claims();
    test_jwt_grants();
    test_auth_reasons();
#endif
    printf("unit: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
