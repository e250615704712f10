/* minimal.c - the time on topic "time" every second. cc -std=c11 -O2 minimal.c sse.c -o minimal */
#include "sse.h"
#include <signal.h>
#include <stdio.h>
#include <time.h>
static volatile sig_atomic_t stop; /* SIGINT or SIGTERM: drain the streams and exit 0 */
static void on_signal(int sig) {
    stop = sig;
}
int main(int argc, char **argv) {
    struct sse_config cfg = {.listen = argc > 1 ? argv[1] : NULL}; /* NULL: 127.0.0.1:8080 */
    char err[256], now[32];
    struct sse_server *srv = sse_server_new(&cfg, err, sizeof err);
    fprintf(stderr, "minimal: %s\n", srv ? sse_url(srv) : err);
    if (!srv)
        return 1;
    signal(SIGINT, on_signal); /* a signal also ends sse_poll()'s wait early */
    signal(SIGTERM, on_signal);
    int r;
    for (time_t last = time(NULL), t; (r = sse_poll(srv, 500)) > 0; last = t) { /* 2 Hz: no gaps */
        t = time(NULL);
        if (stop)
            sse_stop(srv); /* sse_poll() returns 0 once every stream is drained */
        else if (t != last && strftime(now, sizeof now, "%FT%TZ", gmtime(&t)))
            sse_publish(srv, "time", NULL, now, 20, NULL); /* 20 bytes: 2025-01-02T03:04:05Z */
    }
    sse_server_free(srv);
    return r < 0;
}
