/*
 * Fuzz target: the percent-decoder and the query parser (http_percent_decode,
 * http_parse_query, http_query_get). Both are compared with a plain model written from
 * their comments: '%' takes exactly two hex digits and never means NUL, '+' is a space in a
 * query, parameters split on '&' (empty ones skipped) and at their first '='. Outputs go to
 * blocks of exactly the promised size, so a write past it is caught. The first byte picks
 * plus_is_space for the decoder; the rest is the input.
 */
#include "../../sse.c" /* NOLINT(bugprone-suspicious-include): its static functions */
#include "fuzz.h"

static int model_hex(unsigned char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The decoder as its comment describes it; -1 for a malformed escape or %00. */
static long model_decode(const char *in, size_t len, char *out, bool plus) {
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c != '%') {
            out[o++] = plus && c == '+' ? ' ' : (char)c;
            continue;
        }
        if (len - i < 3)
            return -1;
        int hi = model_hex((unsigned char)in[i + 1]), lo = model_hex((unsigned char)in[i + 2]);
        if (hi < 0 || lo < 0 || hi * 16 + lo == 0)
            return -1;
        out[o++] = (char)(hi * 16 + lo);
        i += 2;
    }
    return (long)o;
}

static void check_decode(const char *in, size_t len, bool plus) {
    char *out = malloc(len ? len : 1), *want = malloc(len ? len : 1);
    FUZZ_CHECK(out && want);
    long n = http_percent_decode(in, len, out, plus);
    long m = model_decode(in, len, want, plus);
    FUZZ_CHECK(n == m);
    FUZZ_CHECK(n <= (long)len);
    if (n > 0) {
        FUZZ_CHECK(memcmp(out, want, (size_t)n) == 0);
        /* Decoding never makes a NUL that was not in the input as a byte. */
        FUZZ_CHECK(!memchr(out, '\0', (size_t)n) || memchr(in, '\0', len));
    }
    free(out);
    free(want);
}

/* The query parser against the model: split, skip empty, first '=', decode both halves. */
static void check_query(const char *q, size_t len) {
    char *scratch = malloc(len ? len : 1), *want = malloc(len ? len : 1);
    struct http_query *out = malloc(sizeof *out);
    FUZZ_CHECK(scratch && want && out);
    int rc = http_parse_query(q, len, scratch, out);
    FUZZ_CHECK(rc == 0 || rc == -1);
    FUZZ_CHECK(out->n <= QUERY_PARAMS_MAX);

    size_t i = 0, n = 0;
    int model_rc = 0;
    while (i < len && model_rc == 0) {
        const char *amp = memchr(q + i, '&', len - i);
        size_t e = amp ? (size_t)(amp - q) : len, s = i;
        i = e + 1;
        if (e == s)
            continue;
        if (n == QUERY_PARAMS_MAX) {
            model_rc = -1;
            break;
        }
        const char *eq = memchr(q + s, '=', e - s);
        size_t klen = eq ? (size_t)(eq - q) - s : e - s;
        long k = model_decode(q + s, klen, want, true);
        long v = eq ? model_decode(eq + 1, e - s - klen - 1, want + (k > 0 ? k : 0), true) : 0;
        if (k < 0 || v < 0) {
            model_rc = -1;
            break;
        }
        if (rc == 0) {
            const struct http_param *p = &out->params[n];
            FUZZ_CHECK(p->key_len == (size_t)k && memcmp(p->key, want, (size_t)k) == 0);
            FUZZ_CHECK(p->value_len == (size_t)v && memcmp(p->value, want + k, (size_t)v) == 0);
            FUZZ_CHECK(p->key >= scratch && p->key + p->key_len <= scratch + len);
            FUZZ_CHECK(p->value >= scratch && p->value + p->value_len <= scratch + len);
        }
        n++;
    }
    FUZZ_CHECK(rc == model_rc);
    if (rc == 0) {
        FUZZ_CHECK(out->n == n);
        /* http_query_get finds the first parameter of each name. */
        for (size_t p = 0; p < n; p++) {
            if (memchr(out->params[p].key, '\0', out->params[p].key_len))
                continue;
            char key[8192];
            if (out->params[p].key_len >= sizeof key)
                continue;
            memcpy(key, out->params[p].key, out->params[p].key_len);
            key[out->params[p].key_len] = '\0';
            const struct http_param *got = http_query_get(out, key);
            FUZZ_CHECK(got && got <= &out->params[p] && got->key_len == out->params[p].key_len);
        }
    }
    free(scratch);
    free(want);
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0)
        return 0;
    char *in = fuzz_copy(data + 1, size - 1);
    check_decode(in, size - 1, data[0] & 1);
    check_query(in, size - 1);
    free(in);
    return 0;
}
