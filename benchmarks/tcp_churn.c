/* tcp_churn: paced TCP connection churn for benchmarks/capture_churn.py.
 *
 *   tcp_churn serve IP PORT
 *       accept; read 64 bytes; write 64 bytes; close on EOF. Prints "ready".
 *   tcp_churn client SERVER PORT RATE SECONDS OUT SRC_IP...
 *       opens RATE connections per second for SECONDS (non-blocking, epoll), each from
 *       the next SRC_IP (IP_BIND_ADDRESS_NO_PORT), sends 64 bytes, reads the 64-byte
 *       reply and closes. Writes "ip port" per completed connection to OUT; prints
 *       "ok failed achieved_rate max_lateness_s" on stdout.
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

static int serve(const char *ip, int port) {
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, ip, &a.sin_addr);
    if (bind(lfd, (struct sockaddr *)&a, sizeof(a)) || listen(lfd, 65535)) {
        perror("listen");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd}, evs[256];
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    static unsigned char got[MAXFD];
    char buf[256], reply[64];
    memset(reply, 'r', sizeof(reply));
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) {
                int c;
                while ((c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    got[c] = 0;
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            ssize_t r = read(fd, buf, sizeof(buf));
            if (r > 0) {
                if (got[fd] < 64 && got[fd] + r >= 64)
                    (void)!write(fd, reply, sizeof(reply));
                got[fd] = got[fd] + r > 64 ? 64 : got[fd] + r;
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

int main(int argc, char **argv) {
    if (argc >= 4 && strcmp(argv[1], "serve") == 0)
        return serve(argv[2], atoi(argv[3]));
    if (argc >= 8 && strcmp(argv[1], "client") == 0)
        return client(argc, argv);
    fprintf(stderr, "usage: tcp_churn serve IP PORT | client SERVER PORT RATE SECONDS OUT SRC...\n");
    return 2;
}
