/*
 * Fuzz target: the event-stream reader (wire_reader_feed, wire_reader_finish) in its three
 * uses: lines (stdin), text/event-stream blocks (stdin), and WHATWG mode (the relay), plus
 * the proxy's event-boundary scanner (wire_boundary_scan).
 * Input: byte 0 picks the format, byte 1 max_data (mostly tiny, so the limits are hit),
 * byte 2 seeds the chunk sizes; the rest is the stream.
 * Invariants: every event obeys the format's promises (never more than max_data bytes of
 * data, no line end inside a line, valid event types and topics); feeding the stream in
 * random pieces (empty ones too) gives exactly what feeding it whole gives; and both equal a
 * plain model of the format that reads the whole stream at once, written from the comments.
 */
#include "../../sse.c" /* NOLINT(bugprone-suspicious-include): its static functions */
#include "fuzz.h"

/* Everything a run emitted, serialised, so two runs compare with memcmp. */
struct record {
    struct wbuf w;                /* the log, growing on the heap */
    const struct wire_reader *r;  /* the reader, for its id at dispatch time (WHATWG) */
    enum sse_input_format format; /* of the reader */
    bool whatwg;                  /* of the reader */
    size_t max_data;              /* of the reader */
};

static void rec_put(struct record *rc, const void *s, size_t n) {
    if (rc->w.len + n > rc->w.cap) {
        size_t cap = (rc->w.len + n) * 2 + 64;
        rc->w.p = realloc(rc->w.p, cap);
        FUZZ_CHECK(rc->w.p != NULL);
        rc->w.cap = cap;
    }
    wb_put(&rc->w, s, n);
}

/* Appends one field as its length and bytes ("~" for NULL). */
static void rec_field(struct record *rc, const char *s, size_t n) {
    if (!s) {
        rec_put(rc, "~", 1);
        return;
    }
    char len[24];
    int k = snprintf(len, sizeof len, "%zu:", n);
    rec_put(rc, len, (size_t)k);
    rec_put(rc, s, n);
}

static void rec_event(struct record *rc, const char *topic, const char *event, const char *data,
                      size_t len, const char *skipped, const char *last_id) {
    rec_field(rc, skipped, skipped ? strlen(skipped) : 0);
    rec_field(rc, topic, topic ? strlen(topic) : 0);
    rec_field(rc, event, event ? strlen(event) : 0);
    rec_field(rc, data, len);
    rec_field(rc, last_id, last_id ? strlen(last_id) : 0);
}

/* The reader's emit callback: checks the event, then logs it. */
static void on_emit(void *ctx, const char *topic, const char *event, const char *data, size_t len,
                    const char *skipped) {
    struct record *rc = ctx;
    if (skipped) {
        FUZZ_CHECK(*skipped && !topic && !event && !data && len == 0);
    } else {
        FUZZ_CHECK(data != NULL && len <= rc->max_data);
        if (rc->format == SSE_INPUT_LINES) {
            FUZZ_CHECK(!topic && !event && !memchr(data, '\n', len));
        } else {
            FUZZ_CHECK(!memchr(data, '\r', len));
            FUZZ_CHECK(!event || wire_event_type_valid(event, strlen(event)));
            FUZZ_CHECK(!topic || wire_topic_valid(topic, strlen(topic)));
            FUZZ_CHECK(!topic || !rc->whatwg);
        }
    }
    const char *id = rc->whatwg ? rc->r->last_id : NULL;
    if (id)
        FUZZ_CHECK(strlen(id) <= SSE_ID_MAX && !strchr(id, '\r') && !strchr(id, '\n'));
    rec_event(rc, topic, event, data, len, skipped, id);
}

/* Ends a log with the reader's lasting state (WHATWG: last event id and retry). */
static void rec_end(struct record *rc, const char *last_id, int64_t retry_ms) {
    rec_put(rc, "|", 1);
    rec_field(rc, last_id, last_id ? strlen(last_id) : 0);
    char retry[24];
    int k = snprintf(retry, sizeof retry, "%lld", (long long)retry_ms);
    rec_put(rc, retry, (size_t)k);
}

/* Reads s[0..len) with a fresh reader, in pieces chosen by seed (0: all at once). */
static void run_reader(struct record *rc, const char *s, size_t len, uint8_t seed) {
    struct wire_reader r;
    wire_reader_init(&r, rc->format, rc->max_data);
    r.whatwg = rc->whatwg;
    /* cppcheck-suppress autoVariables ; only on_emit reads it, and it is reset below */
    rc->r = &r;
    struct rng g = {seed};
    size_t i = 0;
    while (i < len) {
        size_t n = len - i;
        if (seed) {
            uint64_t x = rng_next(&g);
            n = (size_t)(x % 8 == 0 ? 0 : x % 4 == 1 ? x % 64 : x % 5);
            n = n < len - i ? n : len - i;
        }
        char *piece = fuzz_copy(s + i, n); /* exact size: a read past the piece is caught */
        wire_reader_feed(&r, piece, n, on_emit, rc);
        free(piece);
        i += n;
    }
    wire_reader_finish(&r, on_emit, rc);
    FUZZ_CHECK(r.retry_ms >= -1 && r.retry_ms <= INT32_MAX);
    rec_end(rc, rc->whatwg ? r.last_id : NULL, r.retry_ms);
    wire_reader_free(&r);
    rc->r = NULL;
}

/* The model. Lines: split on LF, one CR before it dropped; a last line without LF counts. */
static void model_lines(struct record *rc, const char *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        const char *lf = memchr(s + i, '\n', len - i);
        size_t e = lf ? (size_t)(lf - s) : len, n = e - i;
        if (n && s[e - 1] == '\r')
            n--;
        if (n > rc->max_data)
            rec_event(rc, NULL, NULL, NULL, 0, "line over max_event_bytes", NULL);
        else
            rec_event(rc, NULL, NULL, s + i, n, NULL, NULL);
        i = e + 1;
    }
    rec_end(rc, NULL, -1);
}

/* Blocks: lines end at CRLF, LF or CR; an unfinished last line and block are dropped. A line
 * longer than max_data + 8 (room for "data: "), or than SSE_ID_MAX + 8 when that is more,
 * spoils its block. One leading UTF-8 BOM is dropped (WHATWG 9.2.6's decode). */
static void model_sse(struct record *rc, const char *s, size_t len) {
    size_t max = rc->max_data, i = 0;
    if (len >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) /* one leading BOM, in every SSE mode */
        i = 3;
    char *data = malloc(len + 1);
    FUZZ_CHECK(data != NULL);
    size_t data_len = 0;
    bool has_data = false;
    const char *err = NULL;
    char event[EVENT_TYPE_MAX + 1] = "", topic[TOPIC_NAME_MAX + 1] = "";
    char id_buf[SSE_ID_MAX + 1] = "", last_id[SSE_ID_MAX + 1] = "";
    int64_t retry = -1;
    for (;;) {
        size_t e = i;
        while (e < len && s[e] != '\r' && s[e] != '\n')
            e++;
        if (e == len)
            break;
        const char *line = s + i;
        size_t n = e - i;
        i = e + (s[e] == '\r' && e + 1 < len && s[e + 1] == '\n' ? 2 : 1);
        if (n > (max > SSE_ID_MAX ? max : SSE_ID_MAX) + 8) {
            err = "line over max_event_bytes";
            continue;
        }
        if (n == 0) {
            if (rc->whatwg)
                memcpy(last_id, id_buf, sizeof last_id);
            if (has_data && err)
                rec_event(rc, NULL, NULL, NULL, 0, err, rc->whatwg ? last_id : NULL);
            else if (has_data)
                rec_event(rc, topic[0] ? topic : NULL, event[0] ? event : NULL, data, data_len - 1,
                          NULL, rc->whatwg ? last_id : NULL);
            data_len = 0;
            has_data = false;
            err = NULL;
            event[0] = topic[0] = '\0';
            continue;
        }
        if (line[0] == ':')
            continue;
        const char *colon = memchr(line, ':', n);
        size_t name = colon ? (size_t)(colon - line) : n;
        const char *v = colon ? colon + 1 : line + n;
        size_t vn = colon ? n - name - 1 : 0;
        if (vn && v[0] == ' ') {
            v++;
            vn--;
        }
        if (name == 4 && memcmp(line, "data", 4) == 0) {
            has_data = true;
            if (!err && data_len + vn + 1 > max + 1)
                err = "event over max_event_bytes";
            if (!err) {
                memcpy(data + data_len, v, vn);
                data[data_len + vn] = '\n';
                data_len += vn + 1;
            }
        } else if (name == 5 && memcmp(line, "event", 5) == 0) {
            if (vn && !wire_event_type_valid(v, vn)) {
                err = "invalid event type";
            } else {
                memcpy(event, v, vn);
                event[vn] = '\0';
            }
        } else if (rc->whatwg && name == 2 && memcmp(line, "id", 2) == 0) {
            if (vn <= SSE_ID_MAX && !memchr(v, '\0', vn)) {
                memcpy(id_buf, v, vn);
                id_buf[vn] = '\0';
            }
        } else if (rc->whatwg && name == 5 && memcmp(line, "retry", 5) == 0) {
            uint64_t ms;
            if (parse_u64(v, vn, &ms))
                retry = ms > INT32_MAX ? INT32_MAX : (int64_t)ms;
        } else if (!rc->whatwg && name == 5 && memcmp(line, "topic", 5) == 0) {
            if (vn && !wire_topic_valid(v, vn)) {
                err = "invalid topic name";
            } else {
                memcpy(topic, v, vn);
                topic[vn] = '\0';
            }
        }
    }
    free(data);
    rec_end(rc, rc->whatwg ? last_id : NULL, retry);
}

/* The boundary scanner gives the same state however the bytes are split, and says "event
 * end" exactly after a blank line (or at the start). */
static void check_boundary(const char *s, size_t len, uint8_t seed) {
    struct wire_boundary whole = {WB_EVENT_END, false}, parts = {WB_EVENT_END, false};
    wire_boundary_scan(&whole, s, len);
    struct rng g = {seed};
    for (size_t i = 0; i < len;) {
        size_t n = (size_t)(rng_next(&g) % 7);
        n = n < len - i ? n : len - i;
        wire_boundary_scan(&parts, s + i, n);
        i += n;
    }
    FUZZ_CHECK(whole.state == parts.state && whole.after_cr == parts.after_cr);
    /* The model: at the start, or the last line (CRLF, LF or CR ended) was empty. */
    bool at_end = true;
    if (len) {
        size_t e = len;
        bool ended = s[e - 1] == '\r' || s[e - 1] == '\n';
        if (ended) {
            e -= s[e - 1] == '\n' && e >= 2 && s[e - 2] == '\r' ? 2 : 1;
            at_end = e == 0 || s[e - 1] == '\r' || s[e - 1] == '\n';
        } else {
            at_end = false;
        }
    }
    FUZZ_CHECK(wire_at_event_end(&whole) == at_end);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 3)
        return 0;
    struct record whole = {{NULL, 0, 0}, NULL, SSE_INPUT_LINES, false, 0};
    whole.format = data[0] % 3 == 0 ? SSE_INPUT_LINES : SSE_INPUT_SSE;
    whole.whatwg = data[0] % 3 == 2;
    whole.max_data = data[1] < 192 ? 1u + data[1] % 24u : (size_t)1 << 20;
    struct record parts = whole, model = whole;
    const char *s = (const char *)data + 3;
    size_t len = size - 3;

    run_reader(&whole, s, len, 0);
    run_reader(&parts, s, len, (uint8_t)(data[2] | 1));
    if (whole.format == SSE_INPUT_LINES)
        model_lines(&model, s, len);
    else
        model_sse(&model, s, len);
    FUZZ_CHECK(parts.w.len == whole.w.len && memcmp(parts.w.p, whole.w.p, whole.w.len) == 0);
    FUZZ_CHECK(model.w.len == whole.w.len && memcmp(model.w.p, whole.w.p, whole.w.len) == 0);
    check_boundary(s, len, data[2]);
    free(whole.w.p);
    free(parts.w.p);
    free(model.w.p);
    return 0;
}
