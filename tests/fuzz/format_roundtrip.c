/*
 * Fuzz target: sse_format_event, read back by the event-stream reader as an EventSource reads
 * it (WHATWG mode, the relay's) and as stdin's text/event-stream input reads it.
 * Input: byte 0 flags (bit 0: an event type is given; bit 1: data is NULL; bit 2: the event
 * type may be long; the rest seed the chunk sizes), bytes 1 to 8 the id, byte 9 the event
 * type's length, then the event type's bytes (up to its first NUL, being a C string) and the
 * data.
 * "The same event", from sse.h and the WHATWG parser: an event type that is empty or holds
 * CR or LF is refused (0 bytes); otherwise exactly one event comes back, with the same type
 * (none when NULL), the id in decimal as the last event id (none for 0), and the data with
 * every CRLF, LF and lone CR made one LF (the formatter writes one data: line per line, and
 * the parser joins them with LF). The reader refuses event types that are not UTF-8 or over
 * EVENT_TYPE_MAX bytes, as publishing does: then exactly one skipped event comes back.
 */
#include "../../sse.c" /* NOLINT(bugprone-suspicious-include): its static functions */
#include "fuzz.h"

struct got {
    int events;                   /* emitted, skipped ones included */
    const char *skipped;          /* the reason of the last skipped one */
    char *event;                  /* the last event's type, or NULL */
    char *data;                   /* the last event's data */
    size_t len;                   /* bytes at data */
    char last_id[SSE_ID_MAX + 1]; /* the reader's last event id when it was emitted */
    const struct wire_reader *r;  /* the reader */
};

static void on_emit(void *ctx, const char *topic, const char *event, const char *data, size_t len,
                    const char *skipped) {
    struct got *g = ctx;
    FUZZ_CHECK(topic == NULL);
    g->events++;
    g->skipped = skipped;
    free(g->event);
    free(g->data);
    g->event = event ? strdup(event) : NULL;
    g->data = fuzz_copy(data ? data : "", len);
    g->len = len;
    memcpy(g->last_id, g->r->last_id, sizeof g->last_id);
}

/* The data as the parser must give it back: every line end becomes one LF. */
static size_t normalise(const char *data, size_t len, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (data[i] == '\r') {
            out[o++] = '\n';
            if (i + 1 < len && data[i + 1] == '\n')
                i++;
        } else {
            out[o++] = data[i];
        }
    }
    return o;
}

/* Feeds the formatted bytes in pieces and checks what comes back. */
static void read_back(const char *wire, size_t n, bool whatwg, uint64_t id, const char *event,
                      const char *want, size_t want_len, uint8_t seed) {
    struct wire_reader r;
    wire_reader_init(&r, SSE_INPUT_SSE, want_len); /* the tightest bound that must still fit */
    r.whatwg = whatwg;
    struct got g = {0};
    g.r = &r;
    struct rng rng = {seed};
    for (size_t i = 0; i < n;) {
        size_t k = (size_t)(rng_next(&rng) % 9);
        k = k < n - i ? k : n - i;
        char *piece = fuzz_copy(wire + i, k);
        wire_reader_feed(&r, piece, k, on_emit, &g);
        free(piece);
        i += k;
    }
    wire_reader_finish(&r, on_emit, &g);
    FUZZ_CHECK(g.events == 1);
    bool type_ok = !event || wire_event_type_valid(event, strlen(event));
    if (!type_ok) {
        FUZZ_CHECK(g.skipped && strcmp(g.skipped, "invalid event type") == 0);
    } else {
        if (g.skipped)
            fprintf(stderr, "skipped: %s\n", g.skipped);
        FUZZ_CHECK(g.skipped == NULL);
        FUZZ_CHECK(event ? g.event && strcmp(event, g.event) == 0 : g.event == NULL);
        FUZZ_CHECK(g.len == want_len && memcmp(g.data, want, want_len) == 0);
    }
    char id_text[24] = "";
    if (whatwg && id)
        snprintf(id_text, sizeof id_text, "%llu", (unsigned long long)id);
    FUZZ_CHECK(strcmp(g.last_id, id_text) == 0);
    FUZZ_CHECK(r.retry_ms == -1);
    free(g.event);
    free(g.data);
    wire_reader_free(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 10)
        return 0;
    uint8_t flags = data[0];
    uint64_t id = 0;
    for (int i = 8; i >= 1; i--)
        id = id << 8 | data[i];
    size_t elen = data[9] + (flags & 4 ? 256u : 0u);
    elen = elen < size - 10 ? elen : size - 10;
    char *event = NULL;
    if (flags & 1) {
        event = malloc(elen + 1);
        FUZZ_CHECK(event != NULL);
        memcpy(event, data + 10, elen);
        event[elen] = '\0';
    }
    size_t len = size - 10 - elen;
    char *payload = fuzz_copy(data + 10 + elen, len);
    const char *d = flags & 2 ? NULL : payload;
    size_t dlen = flags & 2 ? 0 : len;

    size_t n = sse_format_event(NULL, 0, id, event, d, dlen);
    if (event && (!event[0] || strchr(event, '\r') || strchr(event, '\n'))) {
        FUZZ_CHECK(n == 0);
        goto free_inputs;
    }
    FUZZ_CHECK(n >= 7); /* at least "data:\n\n" */
    char *wire = malloc(n);
    FUZZ_CHECK(wire != NULL);
    FUZZ_CHECK(sse_format_event(wire, n, id, event, d, dlen) == n);
    FUZZ_CHECK(wire[n - 1] == '\n' && wire[n - 2] == '\n');
    /* A buffer too small is filled no further than its end and sized the same. */
    size_t cap = (size_t)(id % n);
    char *small = malloc(cap ? cap : 1);
    FUZZ_CHECK(small != NULL);
    FUZZ_CHECK(sse_format_event(small, cap, id, event, d, dlen) == n);
    free(small);

    char *want = malloc(dlen ? dlen : 1);
    FUZZ_CHECK(want != NULL);
    size_t want_len = normalise(d ? d : "", dlen, want);
    read_back(wire, n, true, id, event, want, want_len, (uint8_t)(flags >> 3));
    read_back(wire, n, false, id, event, want, want_len, (uint8_t)(flags >> 3 | 0x80));
    free(want);
    free(wire);
free_inputs:
    free(event);
    free(payload);
    return 0;
}
