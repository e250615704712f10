/*
 * Fuzz target: the static path resolver (static_resolve). Input: byte 0 picks the output
 * capacity (mostly small, so "does not fit" is exercised; sometimes SSE_HEAD_MAX as in the
 * server), the rest is the decoded path.
 * Invariants: a path it accepts is relative (no leading '/'), holds no "..", "." or empty
 * segment (it is "." alone for the root), no NUL, is NUL-terminated within the capacity,
 * and equals a plain model: the non-empty, non-"." segments joined by '/'. It refuses
 * exactly what the model refuses: no leading '/', a NUL, a ".." segment, or no room.
 */
#include "../../sse.c" /* NOLINT(bugprone-suspicious-include): its static functions */
#include "fuzz.h"

/* The model's answer, written into out (room for len + 2 bytes); -1 when refused. */
static long model_resolve(const char *path, size_t len, char *out) {
    if (len == 0 || path[0] != '/' || memchr(path, '\0', len))
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        const char *slash = memchr(path + i, '/', len - i);
        size_t e = slash ? (size_t)(slash - path) : len, n = e - i;
        if (n == 2 && path[i] == '.' && path[i + 1] == '.')
            return -1;
        if (n && !(n == 1 && path[i] == '.')) {
            if (o)
                out[o++] = '/';
            memcpy(out + o, path + i, n);
            o += n;
        }
        i = e + 1;
    }
    if (o == 0)
        out[o++] = '.';
    out[o] = '\0';
    return (long)o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0)
        return 0;
    size_t cap = data[0] < 250 ? data[0] % 40u : SSE_HEAD_MAX;
    const char *path = (const char *)data + 1;
    size_t len = size - 1;
    char *out = malloc(cap ? cap : 1), *want = malloc(len + 2);
    FUZZ_CHECK(out && want);
    long n = static_resolve(path, len, out, cap);
    long m = model_resolve(path, len, want);
    if (m >= 0 && (size_t)m + 1 > cap)
        m = -1; /* does not fit */
    FUZZ_CHECK(n == m);
    if (n >= 0) {
        size_t k = (size_t)n;
        FUZZ_CHECK(k > 0 && k < cap && out[k] == '\0' && strlen(out) == k);
        FUZZ_CHECK(memcmp(out, want, k) == 0);
        FUZZ_CHECK(out[0] != '/' && out[k - 1] != '/' && !strstr(out, "//"));
        FUZZ_CHECK(strcmp(out, ".") == 0 || (strncmp(out, "./", 2) != 0 && !strstr(out, "/./") &&
                                             (k < 2 || strcmp(out + k - 2, "/.") != 0)));
        FUZZ_CHECK(strcmp(out, "..") != 0 && strncmp(out, "../", 3) != 0 && !strstr(out, "/../") &&
                   (k < 3 || strcmp(out + k - 3, "/..") != 0));
        FUZZ_CHECK(static_content_type(out) != NULL);
    }
    free(out);
    free(want);
    return 0;
}
