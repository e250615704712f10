/*
 * Fuzz target: the HS256 token verifier (jwt_verify) with its base64url decoder and JSON
 * reader. Each input is used three ways:
 *   - as a token, verified as it stands (it almost never carries a right signature, so this
 *     explores the form, the header and the decoder);
 *   - as "HEADER\0PAYLOAD" (or just a payload, under {"alg":"HS256"}), JSON texts encoded and
 *     signed here with the fuzz key, so the claims and the grants are reached;
 *   - as base64url text, whose decoding must re-encode to exactly the input (one spelling per
 *     byte string), and as bytes, whose encoding must decode back.
 * Properties: the reason is one a token can have, and too_long exactly when over the limit; a
 * refused token grants nothing; grants lie inside out->payload and each grants itself; the
 * same token gives the same answer twice; a token signed with the key is never refused for
 * its signature, one signed with another key or with any byte of its signature changed never
 * passes it, nor does any strict prefix of a token that passed; exp and nbf are enforced at
 * exactly JWT_LEEWAY_S. The first byte's low bit picks whether an audience is required.
 */
#include "../../sse.c" /* NOLINT(bugprone-suspicious-include): its static functions */
#include "../b64url.h"
#include "fuzz.h"

#define FUZZ_NOW 1700000000

static const unsigned char fuzz_key[] = "fuzz key";
static const unsigned char other_key[] = "fuzz kez";
#define FUZZ_KEY_LEN (sizeof fuzz_key - 1)

static struct jwt jwt_a, jwt_b;

static enum auth_reason verify(const char *tok, size_t len, const unsigned char *key,
                               const char *aud, int64_t now, struct jwt *out) {
    char *copy = fuzz_copy(tok, len);
    enum auth_reason r = jwt_verify(copy, len, key, FUZZ_KEY_LEN, aud, now, out);
    free(copy);
    return r;
}

static void check_list(const struct jwt *out, const struct jwt_list *l) {
    FUZZ_CHECK(l->n <= JWT_GRANTS_MAX);
    for (size_t i = 0; i < l->n; i++) {
        FUZZ_CHECK(l->name[i] >= out->payload && l->len[i] <= sizeof out->payload);
        FUZZ_CHECK(l->name[i] + l->len[i] <= out->payload + sizeof out->payload);
        FUZZ_CHECK(jwt_grants(l, l->name[i], l->len[i]));
    }
}

/* What holds for any token: the reason, the lists, the same answer twice. */
static enum auth_reason check_token(const char *tok, size_t len, const char *aud) {
    enum auth_reason r = verify(tok, len, fuzz_key, aud, FUZZ_NOW, &jwt_a);
    FUZZ_CHECK(r == AUTH_OK || r == AUTH_MALFORMED || r == AUTH_TOO_LONG || r == AUTH_ALG ||
               r == AUTH_SIGNATURE || r == AUTH_EXPIRED || r == AUTH_NOT_YET_VALID ||
               r == AUTH_AUDIENCE);
    FUZZ_CHECK((r == AUTH_TOO_LONG) == (len > JWT_MAX_BYTES));
    if (r != AUTH_OK)
        FUZZ_CHECK(jwt_a.subscribe.n == 0 && jwt_a.publish.n == 0);
    check_list(&jwt_a, &jwt_a.subscribe);
    check_list(&jwt_a, &jwt_a.publish);
    FUZZ_CHECK(verify(tok, len, fuzz_key, aud, FUZZ_NOW, &jwt_b) == r);
    FUZZ_CHECK(jwt_b.subscribe.n == jwt_a.subscribe.n && jwt_b.publish.n == jwt_a.publish.n);
    FUZZ_CHECK(jwt_b.exp == jwt_a.exp && jwt_b.nbf == jwt_a.nbf);
    if (r == AUTH_OK)
        FUZZ_CHECK(len && verify(tok, len - 1, fuzz_key, aud, FUZZ_NOW, &jwt_b) != AUTH_OK);
    return r;
}

/* exp and nbf of a token that passed at FUZZ_NOW are enforced at exactly the leeway. */
static void check_times(const char *tok, size_t len, const char *aud) {
    int64_t exp = jwt_a.exp, nbf = jwt_a.nbf;
    if (exp < INT64_MAX - 100) { /* present, and not too far to add to */
        FUZZ_CHECK(verify(tok, len, fuzz_key, aud, exp + JWT_LEEWAY_S, &jwt_b) == AUTH_EXPIRED);
        FUZZ_CHECK(verify(tok, len, fuzz_key, aud, exp + JWT_LEEWAY_S - 1, &jwt_b) != AUTH_EXPIRED);
    }
    bool exp_far = exp >= INT64_MAX - 100; /* absent, or too far to expire first */
    if (nbf > INT64_MIN + 100 && (exp_far || nbf - JWT_LEEWAY_S < exp + JWT_LEEWAY_S)) {
        FUZZ_CHECK(verify(tok, len, fuzz_key, aud, nbf - JWT_LEEWAY_S - 1, &jwt_b) ==
                   AUTH_NOT_YET_VALID);
        FUZZ_CHECK(verify(tok, len, fuzz_key, aud, nbf - JWT_LEEWAY_S, &jwt_b) == AUTH_OK);
    }
}

/* A token for header and payload signed with the fuzz key: never refused for its signature;
 * with another key, or a byte of its signature or its text changed, never accepted. */
static void check_signed(const char *h, size_t hlen, const char *p, size_t plen, const char *aud,
                         unsigned salt) {
    size_t cap = (hlen + plen) / 3 * 4 + 64;
    char *tok = malloc(cap);
    FUZZ_CHECK(tok != NULL);
    size_t n = b64url_encode(h, hlen, tok);
    tok[n++] = '.';
    n += b64url_encode(p, plen, tok + n);
    unsigned char mac[32];
    hmac_sha256(fuzz_key, FUZZ_KEY_LEN, tok, n, mac);
    size_t sig_at = n + 1;
    tok[n++] = '.';
    n += b64url_encode(mac, sizeof mac, tok + n);
    enum auth_reason r = check_token(tok, n, aud);
    FUZZ_CHECK(r != AUTH_SIGNATURE);
    bool signed_ok =
        r == AUTH_OK || r == AUTH_EXPIRED || r == AUTH_NOT_YET_VALID || r == AUTH_AUDIENCE;
    enum auth_reason other = verify(tok, n, other_key, aud, FUZZ_NOW, &jwt_b);
    if (signed_ok)
        FUZZ_CHECK(other == AUTH_SIGNATURE);
    else if (r == AUTH_ALG || r == AUTH_TOO_LONG)
        FUZZ_CHECK(other == r);
    else
        FUZZ_CHECK(other == AUTH_MALFORMED || other == AUTH_SIGNATURE);
    if (r == AUTH_OK)
        check_times(tok, n, aud);
    if (signed_ok) {
        static const char abc[] =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        size_t at = sig_at + salt % (n - sig_at);
        char was = tok[at];
        tok[at] = abc[((size_t)(strchr(abc, was) - abc) + 1 + salt / 64 % 63) % 64]; /* != was */
        enum auth_reason changed = verify(tok, n, fuzz_key, aud, FUZZ_NOW, &jwt_b);
        FUZZ_CHECK(changed == AUTH_SIGNATURE || changed == AUTH_MALFORMED);
        tok[at] = was;
        at = salt % sig_at;
        tok[at] = (char)((unsigned char)tok[at] ^ (1u + salt % 127));
        FUZZ_CHECK(verify(tok, n, fuzz_key, aud, FUZZ_NOW, &jwt_b) != AUTH_OK);
    }
    free(tok);
}

/* Decoding accepts exactly one spelling: what it decodes re-encodes to the input. */
static void check_b64(const char *in, size_t len) {
    unsigned char *out = malloc(len + 1);
    char *again = malloc(len / 3 * 4 + 8);
    FUZZ_CHECK(out && again);
    long n = b64url_decode(in, len, out, len);
    FUZZ_CHECK(n >= -1 && n <= (long)len);
    if (n >= 0)
        FUZZ_CHECK(b64url_encode(out, (size_t)n, again) == len && memcmp(again, in, len) == 0);
    size_t m = b64url_encode(in, len, again);
    FUZZ_CHECK(b64url_decode(again, m, out, len) == (long)len && memcmp(out, in, len) == 0);
    FUZZ_CHECK(!len || b64url_decode(again, m, out, len - 1) == -1);
    free(out);
    free(again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0)
        return 0;
    const char *aud = data[0] & 1 ? "fuzz" : NULL;
    unsigned salt = data[0] * 131u + (unsigned)size;
    const char *rest = (const char *)data + 1;
    size_t len = size - 1;
    char *in = fuzz_copy(rest, len);
    check_token(in, len, aud);
    check_b64(in, len);
    const char *nul = memchr(in, '\0', len);
    if (nul)
        check_signed(in, (size_t)(nul - in), nul + 1, len - (size_t)(nul - in) - 1, aud, salt);
    else
        check_signed("{\"alg\":\"HS256\"}", 15, in, len, aud, salt);
    free(in);
    return 0;
}
