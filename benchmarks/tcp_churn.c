/* tcp_churn: paced TCP connection churn (benchmarks/capture_churn.py, agent_ebpf.py) and
 * many long-lived active connections (agent_ebpf.py --active).
 *
 *   tcp_churn serve IP PORT
 *       accept; echo what it reads (a churn client's 64-byte request comes back as the
 *       64-byte reply); close on EOF. Prints "ready". Holds as many connections as
 *       RLIMIT_NOFILE allows (see raise_nofile); SO_REUSEPORT, so several servers can
 *       share the port.
 *   tcp_churn client SERVER PORT RATE SECONDS OUT SRC_IP...
 *       opens RATE connections per second for SECONDS (non-blocking, epoll), each from
 *       the next SRC_IP (IP_BIND_ADDRESS_NO_PORT), sends 64 bytes, reads the 64-byte
 *       reply and closes. Writes "ip port" per completed connection to OUT; prints
 *       "ok failed achieved_rate max_lateness_s" on stdout.
 *   tcp_churn hold SERVER PORT N SECONDS INTERVAL OUT SRC_IP...
 *       opens N connections over the SRC_IPs; each counts as established once a first
 *       16-byte message came back, which proves the server accept()ed it. At most
 *       INFLIGHT connections are unconfirmed at any time, so neither the SYN queue nor
 *       the accept queue (listen backlog, capped by net.core.somaxconn) can overflow.
 *       Prints "connected N" once all are established (or failed), then for SECONDS
 *       sends 16 bytes on every connection every INTERVAL seconds (spread evenly over
 *       the interval) and reads the echoes, then closes all (spread over 2 s: a single
 *       burst of N FIN exchanges would crowd one 250 ms window of the capture's map).
 *       Writes and prints "established E failed F dropped D messages M bytes_sent S
 *       bytes_echoed B rounds R max_lag_s L".
 * One process, one thread: the generator, not the machine's thread count, sets the pace.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif
#define MAXFD 1048576

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Each connection is a descriptor. Raise the soft limit to the hard one, and the hard one
 * up to MAXFD where allowed (root with CAP_SYS_RESOURCE, up to fs.nr_open). Without that
 * capability (a container) a process stays at the hard limit: agent_ebpf.py then spreads
 * 100,000 connections over several clients and SO_REUSEPORT servers. */
static void raise_nofile(void) {
    struct rlimit rl = {MAXFD, MAXFD};
    if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
        return;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int serve(const char *ip, int port) {
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    /* several servers may share the port, each holding part of the connections */
    setsockopt(lfd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, ip, &a.sin_addr);
    if (bind(lfd, (struct sockaddr *)&a, sizeof(a)) || listen(lfd, 65535)) {
        perror("listen");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd}, evs[256];
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    char buf[256];
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) {
                int c;
                while ((c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            ssize_t r = read(fd, buf, sizeof(buf));
            if (r > 0) {
                (void)!write(fd, buf, r);
            } else if (r == 0 || errno != EAGAIN) {
                close(fd);
            }
        }
    }
}

struct conn {
    double started;
    int state; /* 0 free, 1 connecting, 2 reading */
    int got;
};

static int client(int argc, char **argv) {
    const char *server = argv[2];
    int port = atoi(argv[3]);
    double rate = atof(argv[4]), seconds = atof(argv[5]);
    FILE *out = fopen(argv[6], "w");
    int nsrc = argc - 7;
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, server, &dst.sin_addr);
    struct sockaddr_in *src = calloc(nsrc, sizeof(*src));
    for (int i = 0; i < nsrc; i++) {
        src[i].sin_family = AF_INET;
        inet_pton(AF_INET, argv[7 + i], &src[i].sin_addr);
    }
    static struct conn conns[MAXFD];
    int ep = epoll_create1(0);
    struct epoll_event evs[512];
    long total = (long)(rate * seconds), opened = 0, ok = 0, failed = 0, live = 0;
    double start = now(), lateness = 0, end_ok = start;
    char req[64], buf[128];
    memset(req, 'q', sizeof(req));
    while (opened < total || live > 0) {
        double t = now();
        while (opened < total && start + opened / rate <= t) {
            double late = t - (start + opened / rate);
            if (late > lateness)
                lateness = late;
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
            setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
            if (fd < 0 || fd >= MAXFD ||
                bind(fd, (struct sockaddr *)&src[opened % nsrc], sizeof(src[0]))) {
                failed++;
                opened++;
                if (fd >= 0)
                    close(fd);
                continue;
            }
            opened++;
            if (connect(fd, (struct sockaddr *)&dst, sizeof(dst)) && errno != EINPROGRESS) {
                failed++;
                close(fd);
                continue;
            }
            conns[fd] = (struct conn){.started = t, .state = 1, .got = 0};
            struct epoll_event ev = {.events = EPOLLOUT, .data.fd = fd};
            epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
            live++;
        }
        double next = opened < total ? start + opened / rate : t + 0.01;
        int wait_ms = (int)((next - now()) * 1000);
        int n = epoll_wait(ep, evs, 512, wait_ms > 0 ? wait_ms : 0);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            struct conn *c = &conns[fd];
            if (c->state == 1) {
                int err = 0;
                socklen_t len = sizeof(err);
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err || write(fd, req, sizeof(req)) != sizeof(req)) {
                    failed++, live--, c->state = 0;
                    close(fd);
                    continue;
                }
                c->state = 2;
                struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
                epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
            } else if (c->state == 2) {
                ssize_t r = read(fd, buf, sizeof(buf));
                if (r > 0)
                    c->got += r;
                if (c->got >= 64) {
                    struct sockaddr_in local;
                    socklen_t len = sizeof(local);
                    getsockname(fd, (struct sockaddr *)&local, &len);
                    char ip[INET_ADDRSTRLEN];
                    inet_ntop(AF_INET, &local.sin_addr, ip, sizeof(ip));
                    fprintf(out, "%s %d\n", ip, ntohs(local.sin_port));
                    ok++, live--, c->state = 0;
                    end_ok = now();
                    close(fd);
                } else if (r == 0 || (r < 0 && errno != EAGAIN)) {
                    failed++, live--, c->state = 0;
                    close(fd);
                }
            }
        }
        /* give up on connections older than 5 s (a lost SYN retransmits after 1 s) */
        if (n == 0 && opened >= total && now() - start > seconds + 10)
            break;
    }
    fclose(out);
    printf("%ld %ld %.1f %.3f\n", ok, failed + live, ok / (end_ok - start), lateness);
    return 0;
}

enum { MSG = 16, INFLIGHT = 256 };
enum { H_FREE, H_CONNECTING, H_HELLO, H_HELD, H_DEAD };

struct hconn {
    int state;
    long want; /* echo bytes still expected */
};

/* Wait up to timeout_ms for echoes on held connections and count them; a connection
 * that closes or fails is dead. */
static void read_echoes(int ep, int timeout_ms, struct hconn *hc, long *echoed, long *dropped) {
    struct epoll_event evs[512];
    char buf[4096];
    int k = epoll_wait(ep, evs, 512, timeout_ms);
    for (int i = 0; i < k; i++) {
        int fd = evs[i].data.fd;
        if (hc[fd].state != H_HELD)
            continue;
        ssize_t r = read(fd, buf, sizeof(buf));
        if (r > 0)
            *echoed += r, hc[fd].want -= r;
        else if (r == 0 || errno != EAGAIN)
            (*dropped)++, hc[fd].state = H_DEAD;
    }
}

static int hold(int argc, char **argv) {
    const char *server = argv[2];
    int port = atoi(argv[3]);
    long n = atol(argv[4]);
    double seconds = atof(argv[5]), interval = atof(argv[6]);
    const char *outpath = argv[7];
    int nsrc = argc - 8;
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, server, &dst.sin_addr);
    struct sockaddr_in *src = calloc(nsrc, sizeof(*src));
    for (int i = 0; i < nsrc; i++) {
        src[i].sin_family = AF_INET;
        inet_pton(AF_INET, argv[8 + i], &src[i].sin_addr);
    }
    static struct hconn hc[MAXFD];
    int *held = calloc(n > 0 ? n : 1, sizeof(int));
    long nheld = 0, opened = 0, failed = 0, inflight = 0, dropped = 0, messages = 0;
    long sent = 0, echoed = 0, rounds = 0;
    double max_lag = 0;
    int ep = epoll_create1(0);
    struct epoll_event evs[512];
    char msg[MSG], buf[4096];
    memset(msg, 'h', sizeof(msg));

    /* phase 1: establish, at most INFLIGHT unconfirmed at a time; give up after 30 s
     * without progress (e.g. a server out of descriptors leaves them in its backlog) */
    double progress = now();
    long before = 0;
    while (nheld + failed < n && now() < progress + 30) {
        if (nheld + failed != before)
            before = nheld + failed, progress = now();
        while (opened < n && inflight < INFLIGHT) {
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
            opened++;
            if (fd < 0 || fd >= MAXFD) {
                failed++;
                if (fd >= 0)
                    close(fd);
                continue;
            }
            setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
            if (bind(fd, (struct sockaddr *)&src[opened % nsrc], sizeof(src[0])) ||
                (connect(fd, (struct sockaddr *)&dst, sizeof(dst)) && errno != EINPROGRESS)) {
                failed++;
                close(fd);
                continue;
            }
            hc[fd] = (struct hconn){.state = H_CONNECTING, .want = 0};
            struct epoll_event ev = {.events = EPOLLOUT, .data.fd = fd};
            epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
            inflight++;
        }
        int k = epoll_wait(ep, evs, 512, 100);
        for (int i = 0; i < k; i++) {
            int fd = evs[i].data.fd;
            struct hconn *c = &hc[fd];
            if (c->state == H_CONNECTING) {
                int err = 0;
                socklen_t len = sizeof(err);
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err || write(fd, msg, MSG) != MSG) {
                    failed++, inflight--, c->state = H_FREE;
                    close(fd);
                    continue;
                }
                messages++, sent += MSG, c->want = MSG, c->state = H_HELLO;
                struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
                epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
            } else if (c->state == H_HELLO) {
                ssize_t r = read(fd, buf, sizeof(buf));
                if (r > 0) {
                    echoed += r, c->want -= r;
                    if (c->want <= 0) {
                        c->state = H_HELD, inflight--;
                        held[nheld++] = fd;
                    }
                } else if (r == 0 || errno != EAGAIN) {
                    failed++, inflight--, c->state = H_FREE;
                    close(fd);
                }
            }
        }
    }
    failed += inflight; /* still unconfirmed at give-up: counted, left open until exit */
    printf("connected %ld\n", nheld);
    fflush(stdout);

    /* phase 2: every INTERVAL, MSG bytes on every held connection, spread evenly */
    double start = now(), round_start = start, end = start + seconds, t;
    long next = 0;
    while ((t = now()) < end) {
        double frac = (t - round_start) / interval;
        long due = frac >= 1 ? nheld : (long)(nheld * frac);
        for (; next < due; next++) {
            int fd = held[next];
            if (hc[fd].state != H_HELD)
                continue;
            ssize_t w = write(fd, msg, MSG);
            if (w > 0)
                messages++, sent += w, hc[fd].want += w;
            else if (w < 0 && errno != EAGAIN)
                dropped++, hc[fd].state = H_DEAD;
        }
        if (frac >= 1) {
            rounds++, next = 0, round_start += interval;
            if (t - round_start > max_lag)
                max_lag = t - round_start;
            if (t - round_start > interval) /* fell a whole round behind: don't catch up */
                round_start = t;
        }
        read_echoes(ep, 1, hc, &echoed, &dropped);
    }
    /* the last echoes (at most 10 s) */
    double stop_wait = now() + 10;
    while (echoed < sent && now() < stop_wait) {
        read_echoes(ep, 100, hc, &echoed, &dropped);
    }
    /* phase 3: close all, spread over 2 s */
    double close_start = now();
    for (long i = 0; i < nheld; i++) {
        while (now() < close_start + 2.0 * i / nheld)
            usleep(1000);
        close(held[i]);
    }
    char summary[256];
    snprintf(summary, sizeof(summary),
             "established %ld failed %ld dropped %ld messages %ld bytes_sent %ld "
             "bytes_echoed %ld rounds %ld max_lag_s %.3f\n",
             nheld, failed, dropped, messages, sent, echoed, rounds, max_lag);
    FILE *out = fopen(outpath, "w");
    if (out) {
        fputs(summary, out);
        fclose(out);
    }
    fputs(summary, stdout);
    return 0;
}

int main(int argc, char **argv) {
    raise_nofile();
    if (argc >= 4 && strcmp(argv[1], "serve") == 0)
        return serve(argv[2], atoi(argv[3]));
    if (argc >= 8 && strcmp(argv[1], "client") == 0)
        return client(argc, argv);
    if (argc >= 9 && strcmp(argv[1], "hold") == 0)
        return hold(argc, argv);
    fprintf(stderr, "usage: tcp_churn serve IP PORT | client SERVER PORT RATE SECONDS OUT SRC..."
                    " | hold SERVER PORT N SECONDS INTERVAL OUT SRC...\n");
    return 2;
}
