/* floor_uring.c: floor.c with io_uring, to see whether batching system calls moves the floor
 * (bench/inbound.sh).
 *
 *   floor_uring LISTEN_PORT BACKEND_PORT      (both on 127.0.0.1; runs until SIGTERM/SIGINT)
 *
 * One thread, one ring. Each direction of a relayed pair always has a recv
 * posted. When a recv completes, the send of those bytes to the other side
 * and the next recv (into the direction's second buffer) are queued, and
 * everything queued while handling one batch of completions is submitted by
 * the single io_uring_enter that also waits for the next completions. For
 * lock-step SMTP that turns the 8 recv + 8 send + epoll_wait calls per
 * message of floor.c into a few io_uring_enter calls; the kernel's TCP work
 * per byte stays the same.
 *
 * Per direction: two buffers; at most one send in flight (bytes stay in
 * order). A recv that completes while the previous send is still in flight
 * is held until that send is done; no recv is posted meanwhile. A short send
 * is continued from where it stopped. When either side ends (recv 0, an
 * error) both sockets are shut down, which completes the posted recvs, and
 * they are closed once nothing of the pair is in flight. The backend is
 * connected with a blocking connect() on loopback, which returns at once.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAXPAIRS 4096
#define BUFSZ 16384
#define QD 4096

enum op { OP_ACCEPT, OP_RECV, OP_SEND };

/* One direction of a pair: bytes from src to dst. */
struct dir {
    int src, dst;
    char buf[2][BUFSZ];
    int ri;              /* buffer the posted recv fills, -1 if none is posted */
    int si;              /* buffer being sent, -1 if no send is in flight */
    size_t soff, slen;   /* what is left of it: buf[si][soff .. soff+slen) */
    int held;            /* a filled buffer waiting for the send in flight, or -1 */
    size_t hlen;
};

struct pair {
    struct dir d[2];     /* 0: client -> backend, 1: backend -> client */
    int inflight;        /* requests of this pair the ring has not completed */
    int closing;
};

static struct io_uring ring;
static struct pair *pairs[MAXPAIRS];
static int lfd;
static volatile sig_atomic_t stopping;

static void on_signal(int sig) { (void)sig; stopping = 1; }

static uint64_t tag(int idx, int dir, enum op op) { return ((uint64_t)idx << 8) | ((uint64_t)dir << 4) | op; }

/* A free submission slot; when the queue is full, submit what is queued first. */
static struct io_uring_sqe *sqe_get(void) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    if (!sqe) {
        io_uring_submit(&ring);
        sqe = io_uring_get_sqe(&ring);
    }
    if (!sqe) { fprintf(stderr, "floor_uring: submission queue full\n"); exit(1); }
    return sqe;
}

static void post_accept(void) {
    struct io_uring_sqe *sqe = sqe_get();
    io_uring_prep_accept(sqe, lfd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, tag(0, 0, OP_ACCEPT));
}

static void post_recv(int idx, int k) {
    struct dir *d = &pairs[idx]->d[k];
    struct io_uring_sqe *sqe = sqe_get();
    io_uring_prep_recv(sqe, d->src, d->buf[d->ri], BUFSZ, 0);
    io_uring_sqe_set_data64(sqe, tag(idx, k, OP_RECV));
    pairs[idx]->inflight++;
}

static void post_send(int idx, int k) {
    struct dir *d = &pairs[idx]->d[k];
    struct io_uring_sqe *sqe = sqe_get();
    io_uring_prep_send(sqe, d->dst, d->buf[d->si] + d->soff, d->slen, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, tag(idx, k, OP_SEND));
    pairs[idx]->inflight++;
}

/* Shut both sockets down (their posted recvs complete), close them once nothing is in flight. */
static void finish(int idx) {
    struct pair *p = pairs[idx];
    if (!p->closing) {
        p->closing = 1;
        shutdown(p->d[0].src, SHUT_RDWR);
        shutdown(p->d[1].src, SHUT_RDWR);
    }
    if (p->inflight > 0) return;
    close(p->d[0].src);
    close(p->d[1].src);
    free(p);
    pairs[idx] = NULL;
}

static int backend_connect(const struct sockaddr_in *backend) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (connect(fd, (const struct sockaddr *)backend, sizeof *backend) < 0) { close(fd); return -1; }
    return fd;
}

static void on_accept(int c, const struct sockaddr_in *backend) {
    int one = 1, idx = -1;
    if (!stopping) post_accept();
    if (c < 0) return;
    for (int i = 0; i < MAXPAIRS; i++)   /* bounded: one pass over the table */
        if (!pairs[i]) { idx = i; break; }
    int b = idx < 0 ? -1 : backend_connect(backend);
    struct pair *p = b < 0 ? NULL : malloc(sizeof *p);
    if (!p) {
        if (b >= 0) close(b);
        close(c);
        return;
    }
    /* as haproxy and blackpony do: replies and commands leave at once */
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(b, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    p->inflight = 0;
    p->closing = 0;
    p->d[0] = (struct dir){.src = c, .dst = b, .ri = 0, .si = -1, .held = -1};
    p->d[1] = (struct dir){.src = b, .dst = c, .ri = 0, .si = -1, .held = -1};
    pairs[idx] = p;
    post_recv(idx, 0);
    post_recv(idx, 1);
}

static void on_recv(int idx, int k, int res) {
    struct pair *p = pairs[idx];
    struct dir *d = &p->d[k];
    p->inflight--;
    if (p->closing || res <= 0) { finish(idx); return; }
    int filled = d->ri;
    d->ri = -1;
    if (d->si >= 0) {   /* the previous send is still in flight: wait for it */
        d->held = filled;
        d->hlen = (size_t)res;
        return;
    }
    d->si = filled;
    d->soff = 0;
    d->slen = (size_t)res;
    post_send(idx, k);
    d->ri = filled ^ 1;
    post_recv(idx, k);
}

static void on_send(int idx, int k, int res) {
    struct pair *p = pairs[idx];
    struct dir *d = &p->d[k];
    p->inflight--;
    if (p->closing || res < 0) { finish(idx); return; }
    d->soff += (size_t)res;
    d->slen -= (size_t)res;
    if (d->slen > 0) { post_send(idx, k); return; }   /* short send: the rest */
    d->si = -1;
    if (d->held < 0) return;
    /* the held buffer goes out now; the one just sent takes the next recv */
    d->si = d->held;
    d->soff = 0;
    d->slen = d->hlen;
    d->held = -1;
    post_send(idx, k);
    d->ri = d->si ^ 1;
    post_recv(idx, k);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s LISTEN_PORT BACKEND_PORT (both on 127.0.0.1)\n", argv[0]);
        return 2;
    }
    struct sockaddr_in listen_at = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    struct sockaddr_in backend = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    listen_at.sin_addr.s_addr = backend.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct sigaction sa = {.sa_handler = on_signal};   /* no SA_RESTART: the wait returns -EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int one = 1;
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(lfd, (struct sockaddr *)&listen_at, sizeof listen_at) < 0 || listen(lfd, 1024) < 0) {
        perror("listen");
        return 1;
    }
    /* Completions run as task work in this thread, at its next io_uring_enter (kernel 6.1+);
     * older kernels refuse the flags, then the defaults serve. */
    int rc = io_uring_queue_init(QD, &ring, IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN);
    if (rc < 0) rc = io_uring_queue_init(QD, &ring, 0);
    if (rc < 0) { fprintf(stderr, "io_uring_queue_init: %s\n", strerror(-rc)); close(lfd); return 1; }

    post_accept();
    while (!stopping) {   /* until a signal; each pass handles the completions there are */
        rc = io_uring_submit_and_wait(&ring, 1);
        if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
            fprintf(stderr, "io_uring_submit_and_wait: %s\n", strerror(-rc));
            break;
        }
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
            uint64_t t = io_uring_cqe_get_data64(cqe);
            int idx = (int)(t >> 8), k = (int)((t >> 4) & 1);
            seen++;
            switch ((enum op)(t & 15)) {
            case OP_ACCEPT: on_accept(cqe->res, &backend); break;
            case OP_RECV: on_recv(idx, k, cqe->res); break;
            case OP_SEND: on_send(idx, k, cqe->res); break;
            }
        }
        io_uring_cq_advance(&ring, seen);
    }
    for (int i = 0; i < MAXPAIRS; i++)   /* bounded: every slot once */
        if (pairs[i]) {
            close(pairs[i]->d[0].src);
            close(pairs[i]->d[1].src);
            free(pairs[i]);
        }
    io_uring_queue_exit(&ring);
    close(lfd);
    return 0;
}
