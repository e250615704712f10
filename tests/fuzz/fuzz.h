/*
 * What every fuzz target shares. A target includes sse.c itself (so static functions are
 * reachable), then this file. It is built two ways: with clang's libFuzzer (make fuzz), and
 * with any compiler against replay.c, which replays the seed corpus and the regressions on
 * every make test. An invariant that breaks stops the process, so a logic bug is a crash.
 */
#ifndef SSE_FUZZ_H
#define SSE_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #cond);           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* A copy of s[0..n) in a heap block of exactly n bytes, so AddressSanitizer catches a read
 * one past the end (the fuzzer's own buffer is exact too, but prefixes are not). */
static inline char *fuzz_copy(const void *s, size_t n) {
    char *p = malloc(n ? n : 1);
    FUZZ_CHECK(p != NULL);
    if (n)
        memcpy(p, s, n);
    else
        p[0] = '\0'; /* never read by a correct parser */
    return p;
}

#endif
