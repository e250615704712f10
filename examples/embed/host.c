/*
 * host.c - how to embed sse-server in a program that has an event loop of its own.
 *
 * The host owns one epoll set and puts three descriptors in it:
 *   - sse_fd(srv), the server's own epoll descriptor: readable when the server has network
 *     work. The host does nothing with it but call sse_poll(srv, 0), which never blocks;
 *   - a timerfd that fires every second: the host reads /proc/loadavg and publishes the line
 *     as an event of type "load" on topic "load" (and answers GET /load.json with the latest
 *     line itself, through on_request: a route of its own next to the server's);
 *   - a signalfd for SIGINT and SIGTERM: the host calls sse_stop(), stops its timer and keeps
 *     looping until the server has drained its streams (sse_poll() returns 0), then exits 0.
 * Each iteration waits no longer than sse_next_timeout_ms(), so the server's timers
 * (heartbeats, timeouts) run on time even when no descriptor becomes readable.
 *
 * The library is sse.c and sse.h copied next to this file, compiled with the host's flags:
 *
 *     cc -std=c11 -O2 -Wall -Wextra host.c sse.c -o host
 *     ./host [HOST:PORT]        (default 127.0.0.1:8080; port 0 picks a free port)
 *     curl -N http://127.0.0.1:8080/events/load    (or open http://127.0.0.1:8080/)
 *     curl http://127.0.0.1:8080/load.json
 *
 * Everything runs on one thread: the library is not thread-safe, and needs no locks here.
 */
/* sigprocmask(), read() and close() under -std=c11 */
#define _POSIX_C_SOURCE 200809L /* NOLINT(bugprone-reserved-identifier,cert-dcl37-c) */
#include "sse.h"

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

/* Served at "/" (the library copies it): a page that follows topic "load". */
static const char page[] =
    "<!doctype html><meta charset=utf-8><title>load</title>\n"
    "<p>Load average (1, 5, 15 minutes), runnable/all tasks, last pid:</p>\n"
    "<pre id=load>waiting for the first event...</pre>\n"
    "<script>\n"
    "new EventSource('/events/load').addEventListener('load', function (e) {\n"
    "    document.getElementById('load').textContent = e.data;\n"
    "});\n"
    "</script>\n";

/* The host's state, passed to the callbacks as the user pointer. */
struct host {
    const char *name; /* prefix of log lines */
    char load[128];   /* the latest /proc/loadavg line, "" before the first */
};

/* The library's log lines (connections, warnings) go to stderr with the host's name. This
 * runs inside sse_poll() and sse_publish(): it may call sse_stop() or sse_publish() (see
 * sse.h), but must not drive or free the server. */
static void on_log(enum sse_log_level level, const char *msg, void *user) {
    const struct host *h = user;
    if (level <= SSE_LOG_INFO)
        fprintf(stderr, "%s: %s\n", h->name, msg);
}

/* A route of the host's own: GET /load.json answers the latest line as JSON (503 before the
 * first one). Every other request is declined (0) and goes to the server's own routes. */
static int on_request(struct sse_server *srv, const struct sse_request *req, void *user) {
    const struct host *h = user;
    (void)srv;
    if (strcmp(req->path, "/load.json") != 0 || strcmp(req->method, "GET") != 0)
        return 0;
    if (!h->load[0]) {
        static const char none[] = "no reading yet\n";
        return sse_respond(req, 503, NULL, none, sizeof none - 1) == 0;
    }
    char body[160]; /* /proc/loadavg holds only digits, dots, spaces and '/': no escaping */
    int n = snprintf(body, sizeof body, "{\"load\": \"%s\"}\n", h->load);
    return sse_respond(req, 200, "application/json", body, (size_t)n) == 0;
}

/* Publishes the first line of /proc/loadavg, such as "0.42 0.35 0.30 2/417 12345", on topic
 * "load". Reading procfs does not block. A failure is reported and the loop goes on. */
static void publish_load(struct sse_server *srv, struct host *h) {
    char line[sizeof h->load];
    FILE *f = fopen("/proc/loadavg", "r");
    if (!f || !fgets(line, sizeof line, f)) {
        fprintf(stderr, "host: cannot read /proc/loadavg: %s\n", strerror(errno));
        if (f)
            (void)fclose(f); /* read-only: nothing to lose */
        return;
    }
    (void)fclose(f);
    line[strcspn(line, "\n")] = '\0';
    memcpy(h->load, line, sizeof line);
    /* Returns the number of subscribers it was queued to; they get it in sse_poll(). While
     * the subscribers are behind it answers -EAGAIN (flow control, sse_publish_ready()): a
     * load sample is worth nothing late, so this one is skipped. */
    int r = sse_publish(srv, "load", "load", line, strlen(line), NULL);
    if (r == -EAGAIN)
        return;
    if (r < 0)
        fprintf(stderr, "host: cannot publish: %s\n", strerror(-r));
}

/* Adds fd to the host's epoll set, readable events, level-triggered. */
static int watch(int ep, int fd) {
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

/* The host's loop, until the server has stopped. Returns the exit status. On a signal it
 * closes the timer and sets *timer_fd to -1. */
static int run(struct sse_server *srv, struct host *h, int ep, int signal_fd, int *timer_fd) {
    for (;;) {
        /* A host with timers of its own would wait for the nearer of the two deadlines. */
        struct epoll_event evs[3];
        int n = epoll_wait(ep, evs, 3, sse_next_timeout_ms(srv));
        if (n < 0 && errno != EINTR) {
            fprintf(stderr, "host: epoll_wait: %s\n", strerror(errno));
            return 1;
        }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == signal_fd) {
                struct signalfd_siginfo si;
                if (read(signal_fd, &si, sizeof si) != (ssize_t)sizeof si)
                    continue;
                fprintf(stderr, "host: signal %u, draining\n", si.ssi_signo);
                /* Subscribers get a retry: and are closed within half a second. The timer
                 * goes: nothing more is published while the streams end. */
                sse_stop(srv);
                if (*timer_fd >= 0) {
                    epoll_ctl(ep, EPOLL_CTL_DEL, *timer_fd, NULL);
                    close(*timer_fd);
                    *timer_fd = -1;
                }
            } else if (fd == *timer_fd) {
                uint64_t ticks;
                if (read(*timer_fd, &ticks, sizeof ticks) == (ssize_t)sizeof ticks)
                    publish_load(srv, h);
            }
            /* fd == sse_fd(srv): nothing to do here; sse_poll() below does the work. */
        }
        /* Every iteration, whatever woke us: sends what was published, serves the network,
         * runs the server's timers. Returns 0 once stopped and drained. */
        int r = sse_poll(srv, 0);
        if (r <= 0) {
            if (r < 0)
                fprintf(stderr, "host: sse_poll: %s\n", strerror(-r));
            return r < 0;
        }
    }
}

int main(int argc, char **argv) {
    static struct host h = {"host", ""}; /* the callbacks' user pointer */
    /* Signals arrive as reads on a descriptor, inside the loop: block them first. The library
     * never raises SIGPIPE, so the host need not ignore it. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    sigprocmask(SIG_BLOCK, &sigs, NULL);

    struct sse_config cfg = {0}; /* zeroed: every default */
    cfg.listen = argc > 1 ? argv[1] : "127.0.0.1:8080";
    cfg.index_page = page;
    cfg.index_page_len = sizeof page - 1;
    cfg.on_log = on_log;
    cfg.on_request = on_request;
    cfg.user = &h;
    char err[256];
    struct sse_server *srv = sse_server_new(&cfg, err, sizeof err);
    if (!srv) {
        fprintf(stderr, "host: %s\n", err);
        return 1;
    }
    fprintf(stderr, "host: listening on %s\n", sse_url(srv));

    int status = 1;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    int signal_fd = signalfd(-1, &sigs, SFD_CLOEXEC);
    int timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
    struct itimerspec every_second = {.it_interval = {1, 0}, .it_value = {1, 0}};
    if (ep < 0 || signal_fd < 0 || timer_fd < 0 ||
        timerfd_settime(timer_fd, 0, &every_second, NULL) < 0 || watch(ep, sse_fd(srv)) < 0 ||
        watch(ep, signal_fd) < 0 || watch(ep, timer_fd) < 0) {
        fprintf(stderr, "host: cannot set up the event loop: %s\n", strerror(errno));
    } else {
        status = run(srv, &h, ep, signal_fd, &timer_fd);
    }
    if (timer_fd >= 0)
        close(timer_fd);
    if (signal_fd >= 0)
        close(signal_fd);
    if (ep >= 0)
        close(ep);
    sse_server_free(srv); /* after a drain there is nothing left open; else closes at once */
    return status;
}
