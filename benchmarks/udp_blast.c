/* udp_blast: a 64-byte UDP packet-rate generator/sink for benchmarks/capture_overhead.py.
 *
 *   udp_blast send DST_IP PORT SECONDS [PAYLOAD]   -> prints packets sent
 *   udp_blast recv BIND_IP PORT                    -> prints packets received, exits after
 *                                                     1 s without traffic (after the first)
 * sendmmsg/recvmmsg in batches of 64 so the figure is the kernel's packet rate (veth,
 * routing, TC programs), not a userspace tool's per-syscall cost.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: udp_blast send IP PORT SECONDS [PAYLOAD] | recv IP PORT\n");
        return 2;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
    inet_pton(AF_INET, argv[2], &addr.sin_addr);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    int size = 8 << 20;
    static char bufs[BATCH][2048];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    memset(msgs, 0, sizeof(msgs));
    if (strcmp(argv[1], "send") == 0) {
        int payload = argc > 5 ? atoi(argv[5]) : 64;
        double seconds = atof(argv[4]);
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
        if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
            perror("connect");
            return 1;
        }
        for (int i = 0; i < BATCH; i++) {
            iov[i].iov_base = bufs[i];
            iov[i].iov_len = payload;
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        unsigned long long sent = 0;
        double end = now() + seconds;
        while (now() < end) {
            int n = sendmmsg(fd, msgs, BATCH, 0);
            if (n > 0)
                sent += n;
        }
        printf("%llu\n", sent);
        return 0;
    }
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size));
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
        perror("bind");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = sizeof(bufs[i]);
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    struct timeval tv = {.tv_sec = 1};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    unsigned long long got = 0;
    double first = 0, last = 0;
    for (;;) {
        int n = recvmmsg(fd, msgs, BATCH, 0, NULL);
        if (n <= 0) {
            if (got)
                break;
            continue;
        }
        if (!got)
            first = now();
        last = now();
        got += n;
    }
    printf("%llu %.6f\n", got, last - first);
    return 0;
}
