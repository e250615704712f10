/*
 * Fuzz target: the proxy's path normaliser (http_path_canon, http_path_remove_dots) and the
 * redirect's path encoder (http_path_encode). Input: byte 0 picks the output capacity
 * (mostly small, so "does not fit" is exercised; sometimes SSE_HEAD_MAX as in the server),
 * the rest is a raw request path.
 * Invariants: a canonical path is no longer than the input, holds no '\', and every escape
 * in it is two upper-case hex digits of a byte that is neither unreserved nor '/', '\' or
 * NUL, never "%25" before an escape of '.', '/' or '\'; canonicalising it again changes
 * nothing. With its dot segments removed it starts with '/', has no "." or ".." segment,
 * is no longer, and removing them again changes nothing. The encoder's output never starts
 * with "//", holds only unreserved characters, sub-delims, ':', '@', '/' and escapes, and
 * decodes to the input with its leading slashes collapsed.
 */
#include "../../sse.c" /* NOLINT(bugprone-suspicious-include): its static functions */
#include "fuzz.h"

static void check_canonical(const char *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        FUZZ_CHECK(p[i] != '\\');
        if (p[i] != '%')
            continue;
        FUZZ_CHECK(i + 2 < n);
        int hi = http_hex(p[i + 1]), lo = http_hex(p[i + 2]);
        FUZZ_CHECK(hi >= 0 && lo >= 0 && !(p[i + 1] >= 'a' && p[i + 1] <= 'f') &&
                   !(p[i + 2] >= 'a' && p[i + 2] <= 'f'));
        unsigned char d = (unsigned char)(hi * 16 + lo);
        FUZZ_CHECK(d && d != '/' && d != '\\' && !http_is_unreserved(d));
        if (d == '%' && i + 4 < n && http_hex(p[i + 3]) >= 0 && http_hex(p[i + 4]) >= 0) {
            int e = http_hex(p[i + 3]) * 16 + http_hex(p[i + 4]);
            FUZZ_CHECK(e != '.' && e != '/' && e != '\\' && e != 0);
        }
        i += 2;
    }
}

static void check_no_dots(const char *p, size_t n) {
    FUZZ_CHECK(n > 0 && p[0] == '/');
    for (size_t i = 1; i <= n;) {
        const char *slash = memchr(p + i, '/', n - i);
        size_t e = slash ? (size_t)(slash - p) : n, len = e - i;
        FUZZ_CHECK(!(len == 1 && p[i] == '.') && !(len == 2 && p[i] == '.' && p[i + 1] == '.'));
        i = e + 1;
    }
}

static void check_encode(const char *in, size_t len) {
    struct wbuf w = {NULL, 0, 0};
    http_path_encode(&w, in, len); /* measures */
    char *out = malloc(w.len + 1), *dec = malloc(w.len + 1);
    FUZZ_CHECK(out && dec);
    size_t need = w.len;
    w = (struct wbuf){out, need, 0};
    http_path_encode(&w, in, len);
    FUZZ_CHECK(w.len == need);
    FUZZ_CHECK(need < 2 || out[0] != '/' || out[1] != '/');
    size_t d = 0;
    for (size_t i = 0; i < need; i++) {
        unsigned char c = (unsigned char)out[i];
        if (c == '%') {
            FUZZ_CHECK(i + 2 < need && http_hex(out[i + 1]) >= 0 && http_hex(out[i + 2]) >= 0);
            dec[d++] = (char)(http_hex(out[i + 1]) * 16 + http_hex(out[i + 2]));
            i += 2;
        } else {
            FUZZ_CHECK(http_is_unreserved(c) || (c && strchr("!$&'()*+,;=:@/", c)));
            dec[d++] = (char)c;
        }
    }
    while (len > 1 && in[0] == '/' && in[1] == '/') {
        in++;
        len--;
    }
    FUZZ_CHECK(d == len && memcmp(dec, in, len) == 0);
    free(out);
    free(dec);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0)
        return 0;
    size_t cap = data[0] < 250 ? data[0] % 40u : SSE_HEAD_MAX;
    char *in = fuzz_copy(data + 1, size - 1);
    size_t len = size - 1;
    char *out = malloc(cap ? cap : 1), *again = malloc(cap ? cap : 1);
    FUZZ_CHECK(out && again);
    long n = http_path_canon(in, len, out, cap);
    if (n >= 0) {
        FUZZ_CHECK((size_t)n <= len && (size_t)n <= cap);
        check_canonical(out, (size_t)n);
        FUZZ_CHECK(http_path_canon(out, (size_t)n, again, cap) == n);
        FUZZ_CHECK(memcmp(out, again, (size_t)n) == 0);
        long m = http_path_remove_dots(out, (size_t)n);
        if (m >= 0) {
            FUZZ_CHECK(m <= n);
            check_no_dots(out, (size_t)m);
            check_canonical(out, (size_t)m);
            memcpy(again, out, (size_t)m);
            FUZZ_CHECK(http_path_remove_dots(again, (size_t)m) == m);
            FUZZ_CHECK(memcmp(out, again, (size_t)m) == 0);
        }
    }
    check_encode(in, len);
    free(out);
    free(again);
    free(in);
    return 0;
}
