/*
 * base64url without padding (RFC 4648 section 5), the tests' own encoder: sse.c only decodes
 * tokens, so tests/unit.c and tests/fuzz/jwt.c mint theirs with this. Include after sse.c.
 */
#ifndef SSE_TESTS_B64URL_H
#define SSE_TESTS_B64URL_H

/* Writes in[0..len) as base64url into out (4 characters per 3 bytes, fewer for the last, then
 * a '\0': out holds (len + 2) / 3 * 4 + 1) and returns the characters written. */
static size_t b64url_encode(const void *in, size_t len, char *out) {
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const unsigned char *p = in;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < len ? (uint32_t)p[i + 1] << 8 : 0) |
                     (i + 2 < len ? p[i + 2] : 0);
        size_t chars = len - i >= 3 ? 4 : len - i + 1;
        for (size_t c = 0; c < chars; c++)
            out[o++] = abc[v >> (18 - 6 * c) & 63];
    }
    out[o] = '\0';
    return o;
}

#endif
