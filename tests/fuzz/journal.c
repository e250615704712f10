/*
 * Fuzz target: the journal's record format (section 6 of sse.c). The first byte picks a
 * mode. Mode 0 reads the rest as a journal's header (one read back must be exactly what
 * the writer makes of its floor, its prefixes incomplete), and as the records of a journal
 * file, as start-up does: the records accepted must be canonical (their record line is exactly what
 * the writer makes, their bytes what the formatter makes), ids must increase in the backlog, every
 * prefix of an accepted record must read as incomplete, and what is kept must end on a record
 * boundary. Mode 1 writes a record for an event made from the rest and reads it back:
 * the same id, topic and bytes.
 */
#include "../../sse.c" /* NOLINT(bugprone-suspicious-include): its static functions */
#include "fuzz.h"

static void check_record(const char *buf, size_t len, long n, const struct journal_record *rec) {
    FUZZ_CHECK((size_t)n <= len && rec->bytes + rec->len == buf + n);
    FUZZ_CHECK(wire_topic_valid(rec->topic, rec->topic_len) && rec->topic_len <= TOPIC_NAME_MAX);
    char topic[TOPIC_NAME_MAX + 1], head[JOURNAL_RECORD_HEAD];
    memcpy(topic, rec->topic, rec->topic_len);
    topic[rec->topic_len] = '\0';
    size_t hlen = journal_record_head(head, rec->id, topic, rec->bytes, rec->len);
    FUZZ_CHECK(hlen + rec->len == (size_t)n && memcmp(head, buf, hlen) == 0);
    for (size_t i = 0; i < (size_t)n; i += 1 + i / 8) { /* prefixes are incomplete */
        char *prefix = fuzz_copy(buf, i);
        struct journal_record r2;
        FUZZ_CHECK(journal_parse_record(prefix, i, SIZE_MAX, &r2) == 0);
        free(prefix);
    }
}

/* The header: a header read back is exactly what the writer makes of its floor (version
 * 2), and every prefix of it reads as incomplete. */
static void read_header(const char *buf, size_t len) {
    uint64_t floor = 0;
    int version = 0;
    long n = journal_parse_header(buf, len, &floor, &version);
    FUZZ_CHECK(n >= -2 && n <= JOURNAL_HEADER_MAX && (size_t)(n > 0 ? n : 0) <= len);
    if (n <= 0 || version != 2)
        return;
    char head[JOURNAL_HEADER_MAX];
    FUZZ_CHECK(journal_header(head, floor) == (size_t)n && memcmp(head, buf, (size_t)n) == 0);
    for (size_t i = 0; i < (size_t)n; i++) {
        char *prefix = fuzz_copy(buf, i);
        FUZZ_CHECK(journal_parse_header(prefix, i, &floor, &version) == 0);
        free(prefix);
    }
}

static void read_records(const char *buf, size_t len) {
    read_header(buf, len);
    struct journal_record rec;
    long n = journal_parse_record(buf, len, SIZE_MAX, &rec);
    FUZZ_CHECK(n >= -1);
    if (n > 0)
        check_record(buf, len, n, &rec);

    struct topic_table tt = {.names.seed = 7};
    struct backlog bl = {.ring = calloc(8, sizeof(struct blob *)), .cap = 8, .max_bytes = 1024};
    FUZZ_CHECK(bl.ring != NULL);
    uint64_t last_id = 0;
    const char *why = NULL;
    uint32_t loaded = 0;
    long keep = journal_load_records(buf, len, &tt, &bl, &last_id, &loaded, &why);
    FUZZ_CHECK(loaded >= bl.count);
    FUZZ_CHECK(keep == -1 ? why != NULL : (size_t)keep <= len && why == NULL);
    for (long at = 0; keep > 0 && at < keep;) { /* kept bytes are whole records */
        long r = journal_parse_record(buf + at, (size_t)(keep - at), SIZE_MAX, &rec);
        FUZZ_CHECK(r > 0);
        at += r;
    }
    size_t held = 0; /* both bounds hold, and bytes counts exactly what is held */
    for (uint32_t i = 0; i < bl.count; i++) {
        const struct blob *ev = backlog_at(&bl, i);
        held += ev->len;
        FUZZ_CHECK(i == 0 || backlog_at(&bl, i - 1)->id < ev->id);
        FUZZ_CHECK(ev->id <= last_id && journal_event_canonical(ev->id, ev->bytes, ev->len));
    }
    FUZZ_CHECK(held == bl.bytes && held <= bl.max_bytes && bl.count <= bl.cap);
    backlog_free(&bl);
    FUZZ_CHECK(tt.names.count == 0); /* the events held the only references to their topics */
    free(tt.names.buckets);
}

static void round_trip(const char *in, size_t len) {
    if (len < 9)
        return;
    uint64_t id;
    memcpy(&id, in, 8);
    id = id % 99999999999999999u + 1;
    size_t elen = (unsigned char)in[8] % 12;
    in += 9, len -= 9;
    char event[16];
    bool has_event = elen > 0 && elen <= len;
    if (has_event) {
        memcpy(event, in, elen);
        event[elen] = '\0';
        has_event = wire_event_type_valid(event, elen);
        in += elen, len -= elen;
    }
    if (!wire_utf8_valid(in, len))
        return;
    size_t n = sse_format_event(NULL, 0, id, has_event ? event : NULL, in, len);
    char *rec_buf = malloc(JOURNAL_RECORD_HEAD + n);
    FUZZ_CHECK(rec_buf != NULL);
    char *bytes = rec_buf + JOURNAL_RECORD_HEAD;
    FUZZ_CHECK(sse_format_event(bytes, n, id, has_event ? event : NULL, in, len) == n);
    char head[JOURNAL_RECORD_HEAD];
    size_t hlen = journal_record_head(head, id, "a.topic", bytes, n);
    memmove(rec_buf, head, hlen);
    memmove(rec_buf + hlen, bytes, n);
    char *exact = fuzz_copy(rec_buf, hlen + n);
    struct journal_record rec;
    FUZZ_CHECK(journal_parse_record(exact, hlen + n, SIZE_MAX, &rec) == (long)(hlen + n));
    FUZZ_CHECK(rec.id == id && rec.topic_len == 7 && memcmp(rec.topic, "a.topic", 7) == 0);
    FUZZ_CHECK(rec.len == n && memcmp(rec.bytes, rec_buf + hlen, n) == 0);
    free(exact);
    free(rec_buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0)
        return 0;
    char *buf = fuzz_copy(data + 1, size - 1);
    if (data[0] & 1)
        round_trip(buf, size - 1);
    else
        read_records(buf, size - 1);
    free(buf);
    return 0;
}
