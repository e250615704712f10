/*
 * Fuzz target: the HTTP request parser (http_parse_request and the request-line and header
 * parsers under it) and the header helpers the dispatcher runs on what it returns.
 * Invariants: every view lies inside the head and obeys the grammar the parser promises
 * (tchar names, visible-ASCII targets, values without controls or surrounding whitespace);
 * and the result never depends on where the bytes stop: every prefix of the input parses
 * as "incomplete" or exactly as the whole does, the way a head arriving in pieces must.
 */
#include "../../sse.c" /* NOLINT(bugprone-suspicious-include): its static functions */
#include "fuzz.h"

/* The parser's result on buf[0..len), with the views checked against the buffer. */
static long check_parse(const char *buf, size_t len, struct http_request *req) {
    long rc = http_parse_request(buf, len, req);
    FUZZ_CHECK(rc == HTTP_INCOMPLETE || rc == HTTP_BAD || rc == HTTP_TOO_LARGE ||
               rc == HTTP_BAD_VERSION || (rc > 0 && (size_t)rc <= len));
    if (rc <= 0)
        return rc;
    size_t end = (size_t)rc;
    FUZZ_CHECK(buf[end - 1] == '\n');
    FUZZ_CHECK(req->method >= buf && req->method_len > 0 &&
               req->method + req->method_len < buf + end);
    for (size_t i = 0; i < req->method_len; i++)
        FUZZ_CHECK(http_is_tchar((unsigned char)req->method[i]));
    FUZZ_CHECK(req->target > req->method && req->target_len > 0 &&
               req->target + req->target_len < buf + end);
    for (size_t i = 0; i < req->target_len; i++)
        FUZZ_CHECK(req->target[i] > 0x20 && req->target[i] < 0x7F);
    FUZZ_CHECK(req->minor == 0 || req->minor == 1);
    FUZZ_CHECK(req->num_headers <= SSE_MAX_HEADERS);
    for (size_t h = 0; h < req->num_headers; h++) {
        const struct http_header *f = &req->headers[h];
        FUZZ_CHECK(f->name > req->target && f->name_len > 0 && f->name + f->name_len < buf + end);
        for (size_t i = 0; i < f->name_len; i++)
            FUZZ_CHECK(http_is_tchar((unsigned char)f->name[i]));
        FUZZ_CHECK(f->value >= f->name + f->name_len + 1 && f->value + f->value_len < buf + end);
        for (size_t i = 0; i < f->value_len; i++) {
            unsigned char c = (unsigned char)f->value[i];
            FUZZ_CHECK(c == '\t' || (c >= 0x20 && c != 0x7F));
        }
        if (f->value_len) {
            FUZZ_CHECK(f->value[0] != ' ' && f->value[0] != '\t');
            FUZZ_CHECK(f->value[f->value_len - 1] != ' ' && f->value[f->value_len - 1] != '\t');
        }
    }
    return rc;
}

/* What the dispatcher does with a parsed head (section 9 and the header helpers); none of
 * it may read outside the views. */
static void use_request(const struct http_request *req) {
    uint64_t cl;
    const char *why = NULL;
    int status = http_framing(req, &cl, &why);
    FUZZ_CHECK(status == 0 || ((status == 400 || status == 411) && why));
    const char *path;
    size_t plen;
    if (http_target_path(req, &path, &plen))
        FUZZ_CHECK(plen > 0 && path[0] == '/' && path + plen == req->target + req->target_len);
    FUZZ_CHECK(http_header_count(req, "Host") <= req->num_headers);
    for (size_t h = 0; h < req->num_headers; h++) {
        const struct http_header *f = &req->headers[h];
        FUZZ_CHECK(http_header(req, "Host") || !ascii_ieq(f->name, f->name_len, "Host"));
        (void)http_list_has(f->value, f->value_len, "close");
        (void)http_accepts_event_stream(f->value, f->value_len, h & 1);
        const char *tok;
        size_t tok_len;
        if (http_bearer(f->value, f->value_len, &tok, &tok_len))
            FUZZ_CHECK(tok_len > 0 && tok + tok_len == f->value + f->value_len);
        time_t t;
        (void)http_parse_date(f->value, f->value_len, &t);
    }
}

/* A prefix of the input parses as incomplete or exactly as the whole input did. */
static void check_prefix(const uint8_t *data, size_t n, long whole, const struct http_request *req,
                         const char *buf, struct http_request *part) {
    char *p = fuzz_copy(data, n);
    long rc = check_parse(p, n, part);
    FUZZ_CHECK(rc == HTTP_INCOMPLETE || rc == whole);
    if (whole > 0 && n < (size_t)whole)
        FUZZ_CHECK(rc == HTTP_INCOMPLETE);
    if (whole > 0 && n >= (size_t)whole)
        FUZZ_CHECK(rc == whole && part->num_headers == req->num_headers &&
                   part->target - p == req->target - buf);
    free(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct http_request *req = malloc(sizeof *req), *part = malloc(sizeof *part);
    FUZZ_CHECK(req && part);
    char *buf = fuzz_copy(data, size);
    long whole = check_parse(buf, size, req);
    if (whole > 0)
        use_request(req);

    /* Prefixes, each in a block of its own size: all of them when the input is short, an
     * even sample otherwise, and always the two around the end of the head. */
    size_t step = size <= 256 ? 1 : size / 64;
    for (size_t k = 0; k <= size; k += step)
        check_prefix(data, k, whole, req, buf, part);
    if (whole > 0) {
        check_prefix(data, (size_t)whole - 1, whole, req, buf, part);
        check_prefix(data, (size_t)whole, whole, req, buf, part);
    }

    /* The line parsers alone, on the raw bytes as one line. */
    struct http_header h;
    if (http_parse_header_line(buf, size, &h) == 0)
        FUZZ_CHECK(h.name == buf && h.name_len > 0 && h.value + h.value_len <= buf + size);
    if (http_parse_request_line(buf, size, part) == 0)
        FUZZ_CHECK(part->method == buf && part->target + part->target_len + 9 == buf + size);
    free(buf);
    free(req);
    free(part);
    return 0;
}
