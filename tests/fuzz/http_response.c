/*
 * Fuzz target: what the proxy and the relay parse from an upstream: the response head
 * (http_parse_response) and the chunked transfer coding (http_dechunk). Input: byte 0 seeds
 * the chunk sizes; the rest is a response head followed by a chunked body (when the head
 * does not parse, the whole rest is decoded as a body).
 * Invariants: views lie inside the head and obey the grammar; every prefix parses as
 * incomplete or exactly as the whole; decoding in random pieces gives the same bytes, the
 * same end state and the same verdict as decoding all at once; a call never yields more
 * bytes than it was given; and the decoded bytes are exactly what a plain model of RFC 9112
 * 7.1 (as this decoder accepts it) finds.
 */
#include "../../sse.c" /* NOLINT(bugprone-suspicious-include): its static functions */
#include "fuzz.h"

static long check_parse(const char *buf, size_t len, struct http_response *res) {
    long rc = http_parse_response(buf, len, res);
    FUZZ_CHECK(rc == HTTP_INCOMPLETE || rc == HTTP_BAD || rc == HTTP_TOO_LARGE ||
               (rc > 0 && (size_t)rc <= len));
    if (rc <= 0)
        return rc;
    const char *end = buf + rc;
    FUZZ_CHECK(end[-1] == '\n');
    FUZZ_CHECK(res->minor == 0 || res->minor == 1);
    FUZZ_CHECK(res->status >= 100 && res->status <= 999);
    FUZZ_CHECK(res->reason >= buf + 12 && res->reason + res->reason_len < end);
    for (size_t i = 0; i < res->reason_len; i++) {
        unsigned char c = (unsigned char)res->reason[i];
        FUZZ_CHECK(c == '\t' || (c >= 0x20 && c != 0x7F));
    }
    FUZZ_CHECK(res->num_headers <= SSE_MAX_HEADERS);
    for (size_t h = 0; h < res->num_headers; h++) {
        const struct http_header *f = &res->headers[h];
        FUZZ_CHECK(f->name > res->reason && f->name_len && f->name + f->name_len < end);
        for (size_t i = 0; i < f->name_len; i++)
            FUZZ_CHECK(http_is_tchar((unsigned char)f->name[i]));
        FUZZ_CHECK(f->value > f->name + f->name_len && f->value + f->value_len < end);
        for (size_t i = 0; i < f->value_len; i++) {
            unsigned char c = (unsigned char)f->value[i];
            FUZZ_CHECK(c == '\t' || (c >= 0x20 && c != 0x7F));
        }
    }
    (void)http_is_event_stream(res->headers, res->num_headers);
    for (size_t h = 0; h < res->num_headers; h++)
        (void)http_hop_by_hop(res->headers, res->num_headers, &res->headers[h]);
    return rc;
}

/* Decodes s[0..len) in pieces chosen by seed (0: at once) into out; returns the decoded
 * length, or -1 if the decoder refused the framing. */
static long dechunk_run(const char *s, size_t len, uint8_t seed, char *out,
                        struct http_chunked *d) {
    memset(d, 0, sizeof *d);
    struct rng g = {seed};
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t n = len - i;
        if (seed) {
            n = (size_t)(rng_next(&g) % 11);
            n = n < len - i ? n : len - i;
        }
        char *piece = fuzz_copy(s + i, n);
        long w = http_dechunk(d, piece, n);
        FUZZ_CHECK(w >= -1 && w <= (long)n);
        if (w < 0) {
            free(piece);
            return -1;
        }
        memcpy(out + o, piece, (size_t)w);
        o += (size_t)w;
        free(piece);
        i += n;
    }
    return (long)o;
}

/* The model: sizes of 1 to 16 hex digits, then optional ";..."/" ..." extensions, CRLF or
 * LF; data; CRLF or LF; a zero size ends it, trailer lines follow until an empty one.
 * Extensions of one chunk and all trailers together are bounded by SSE_HEAD_MAX bytes.
 * Returns the data length and sets *done when the body ended, or -1 when malformed. */
static long model_dechunk(const char *s, size_t len, char *out, bool *done) {
    size_t i = 0, o = 0, skipped = 0;
    *done = false;
    for (;;) {
        uint64_t size = 0;
        size_t digits = 0;
        while (i < len && http_hex(s[i]) >= 0 && digits < 16) {
            size = size * 16 + (uint64_t)http_hex(s[i++]);
            digits++;
        }
        if (i == len)
            return (long)o;
        if (digits == 0 || http_hex(s[i]) >= 0)
            return -1;
        skipped = 0;
        if (s[i] == ';' || s[i] == ' ' || s[i] == '\t') {
            for (i++; i < len && s[i] != '\r' && s[i] != '\n'; i++)
                if (++skipped > SSE_HEAD_MAX)
                    return -1;
            if (i < len && ++skipped > SSE_HEAD_MAX)
                return -1; /* the decoder counts the line end too */
        }
        if (i == len)
            return (long)o;
        if (s[i] == '\r') {
            if (++i == len)
                return (long)o;
            if (s[i] != '\n')
                return -1;
        } else if (s[i] != '\n') {
            return -1;
        }
        i++;
        if (size == 0)
            break;
        size_t n = len - i < size ? len - i : (size_t)size;
        memcpy(out + o, s + i, n);
        o += n;
        i += n;
        if (i == len)
            return (long)o;
        if (s[i] == '\r' && ++i == len)
            return (long)o;
        if (s[i] != '\n')
            return -1;
        i++;
    }
    for (;;) { /* trailer lines until an empty one; they share the last size line's bound */
        if (i == len)
            return (long)o;
        if (s[i] == '\n') {
            *done = true;
            return (long)o;
        }
        if (s[i] == '\r') {
            if (++i == len)
                return (long)o;
            if (s[i] != '\n')
                return -1;
            *done = true;
            return (long)o;
        }
        for (i++; i < len && s[i] != '\n'; i++)
            if (++skipped > SSE_HEAD_MAX)
                return -1;
        if (i == len)
            return (long)o;
        if (++skipped > SSE_HEAD_MAX)
            return -1;
        i++;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0)
        return 0;
    const char *s = (const char *)data + 1;
    size_t len = size - 1;
    struct http_response *res = malloc(sizeof *res), *part = malloc(sizeof *part);
    FUZZ_CHECK(res && part);
    char *buf = fuzz_copy(s, len);
    long whole = check_parse(buf, len, res);
    size_t step = len <= 256 ? 1 : len / 64;
    for (size_t k = 0; k <= len + step; k += step) {
        size_t n = k <= len ? k : whole > 0 ? (size_t)whole - 1 : len;
        char *p = fuzz_copy(s, n);
        long rc = check_parse(p, n, part);
        FUZZ_CHECK(rc == HTTP_INCOMPLETE || rc == whole);
        FUZZ_CHECK(whole <= 0 || (n < (size_t)whole) == (rc == HTTP_INCOMPLETE));
        free(p);
    }
    free(buf);

    size_t body = whole > 0 ? (size_t)whole : 0;
    char *at_once = malloc(len + 1), *in_pieces = malloc(len + 1), *model = malloc(len + 1);
    FUZZ_CHECK(at_once && in_pieces && model);
    struct http_chunked d1, d2;
    long a = dechunk_run(s + body, len - body, 0, at_once, &d1);
    long b = dechunk_run(s + body, len - body, (uint8_t)(data[0] | 1), in_pieces, &d2);
    bool done;
    long m = model_dechunk(s + body, len - body, model, &done);
    FUZZ_CHECK(a == b && a == m);
    if (a >= 0) {
        FUZZ_CHECK(memcmp(at_once, in_pieces, (size_t)a) == 0);
        FUZZ_CHECK(memcmp(at_once, model, (size_t)a) == 0);
        FUZZ_CHECK(d1.state == d2.state && d1.digits == d2.digits && d1.left == d2.left &&
                   d1.skipped == d2.skipped);
        FUZZ_CHECK((d1.state == CH_DONE) == done);
    }
    free(at_once);
    free(in_pieces);
    free(model);
    free(res);
    free(part);
    return 0;
}
