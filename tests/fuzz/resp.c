/*
 * Fuzz target: the RESP2 reader (resp_read, resp_skip) of the Redis section. Whatever the
 * bytes, a reply read whole stays inside the input, every value's bytes lie within what was
 * read, arrays hold exactly the values that follow them, and every strict prefix of a whole
 * reply reads as incomplete. A reply is also re-encoded from its values (as resp_command
 * would for bulk strings) and must read back the same.
 */
#include "../../sse.c" /* NOLINT(bugprone-suspicious-include): its static functions */
#include "fuzz.h"

static void check_reply(const char *buf, long used, const struct resp_value *vals, size_t n) {
    FUZZ_CHECK(n >= 1 && resp_skip(vals, n, 0) == n);
    for (size_t i = 0; i < n; i++) {
        const struct resp_value *v = &vals[i];
        FUZZ_CHECK(strchr("+-:$*_", v->type) != NULL);
        if (v->type == '+' || v->type == '-' || v->type == ':' || v->type == '$')
            FUZZ_CHECK(v->str >= buf && v->str + v->len <= buf + used);
        if (v->type == '+' || v->type == '-')
            FUZZ_CHECK(!memchr(v->str, '\r', v->len) && !memchr(v->str, '\n', v->len));
    }
    for (size_t i = 0; i < (size_t)used; i += 1 + i / 16) {
        char *prefix = fuzz_copy(buf, i);
        struct resp_value scratch[64];
        size_t m;
        long r = resp_read(prefix, i, 1 << 20, scratch, 64, &m);
        FUZZ_CHECK(r == 0 || (r == -1 && n > 64)); /* only the values bound can say more */
        free(prefix);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *buf = fuzz_copy(data, size);
    struct resp_value vals[64];
    size_t n;
    long used = resp_read(buf, size, 1 << 20, vals, 64, &n);
    FUZZ_CHECK(used >= -1 && used <= (long)size);
    if (used > 0) {
        check_reply(buf, used, vals, n);
        /* Re-encode a flat array of bulk strings and read it back. */
        if (vals[0].type == '*' && n == 1 + vals[0].len && n <= 1 + RESP_ARGS_MAX) {
            struct resp_args args = {0};
            bool flat = true;
            for (size_t i = 1; i < n; i++) {
                flat = flat && vals[i].type == '$';
                resp_arg(&args, vals[i].str, vals[i].len);
            }
            if (flat) {
                struct wbuf w = {NULL, 0, 0};
                resp_command(&w, &args);
                char *out = malloc(w.len ? w.len : 1);
                FUZZ_CHECK(out != NULL);
                w = (struct wbuf){out, w.len, 0};
                resp_command(&w, &args);
                struct resp_value again[64];
                size_t m;
                FUZZ_CHECK(resp_read(out, w.len, 1 << 20, again, 64, &m) == (long)w.len && m == n);
                for (size_t i = 1; i < n; i++)
                    FUZZ_CHECK(again[i].len == vals[i].len &&
                               memcmp(again[i].str, vals[i].str, vals[i].len) == 0);
                free(out);
            }
        }
    }
    free(buf);
    return 0;
}
