/* floor.c: the least a TCP relay that passes every byte can cost (bench/inbound.sh).
 *
 *   floor LISTEN_PORT BACKEND_PORT [THREADS]   (both on 127.0.0.1; runs until SIGTERM/SIGINT)
 *
 * One thread (or THREADS, 1-8, each with its own SO_REUSEPORT listener and
 * epoll set, as haproxy's and nginx's two workers here), level-triggered. For each client it accepts it
 * connects to the backend and then moves bytes both ways: one recv() per
 * readiness event into a fixed buffer, one send() of what was read. Nothing
 * is parsed, counted, logged or timed. For lock-step SMTP (smtp-source does
 * not pipeline) that is one recv and one send per command and per reply,
 * which is what haproxy and blackpony do too, so the CPU per message of this
 * program is the floor the other relays' figures stand on: the loopback TCP
 * work of 8 recv + 8 send per message, plus epoll_wait.
 *
 * Every recv goes into one static buffer. A short send (the peer's socket
 * buffer full) copies the rest into a buffer of the destination side, reading
 * the source stops and the destination waits for EPOLLOUT until it is
 * flushed, so a relay holds at most one pending buffer per direction. When either side ends (EOF, error) both are closed: SMTP needs
 * no half-close (the server closes after its 221 reply, which was already
 * passed on). The backend is connected with a blocking connect() on
 * loopback, which returns at once; a relay for real networks would not.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAXFD 65536   /* fds index the side table directly */
#define BUFSZ 16384   /* one recv at most */
#define MAXEV 256

/* One side of a relayed pair: its socket and what came from the peer but is not sent yet. */
struct side {
    int peer;          /* the other socket of the pair, -1 when this slot is free */
    size_t off, len;   /* pending bytes for this socket: out[off .. off+len) */
    char *out;         /* malloc'ed on a short send only, freed once flushed */
};

static struct side *sides;   /* indexed by fd; an fd is only ever touched by the thread that owns it */
static __thread char inbuf[BUFSZ];
static __thread int ep;
static struct sockaddr_in listen_at, backend;
static volatile sig_atomic_t stopping;

static void on_signal(int sig) { (void)sig; stopping = 1; }

static int watch(int fd, int op, unsigned events) {
    struct epoll_event ev = {.events = events, .data.fd = fd};
    return epoll_ctl(ep, op, fd, &ev);
}

/* Close both sockets of a pair (closing removes them from the epoll set). */
static void release(int fd) {
    free(sides[fd].out);
    sides[fd] = (struct side){.peer = -1};
    close(fd);
}
static void drop(int fd) {
    int peer = sides[fd].peer;
    release(fd);
    if (peer >= 0 && sides[peer].peer == fd) release(peer);
}

static int backend_connect(const struct sockaddr_in *backend) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (connect(fd, (const struct sockaddr *)backend, sizeof *backend) < 0 ||
        fcntl(fd, F_SETFL, O_NONBLOCK) < 0 || fd >= MAXFD) {
        close(fd);
        return -1;
    }
    return fd;
}

/* A new client: connect to the backend, register both sides. */
static void on_accept(int lfd, const struct sockaddr_in *backend) {
    int one = 1;
    int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c < 0) return;   /* EAGAIN or a client gone already */
    if (c >= MAXFD) { close(c); return; }
    int b = backend_connect(backend);
    if (b < 0) { close(c); return; }
    /* as haproxy and blackpony do: replies and commands leave at once */
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(b, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sides[c] = (struct side){.peer = b};
    sides[b] = (struct side){.peer = c};
    if (watch(c, EPOLL_CTL_ADD, EPOLLIN) < 0 || watch(b, EPOLL_CTL_ADD, EPOLLIN) < 0) drop(c);
}

/* fd is readable: one recv, one send to the peer; a remainder waits for EPOLLOUT. */
static void on_readable(int fd) {
    int peer = sides[fd].peer;
    struct side *dst = &sides[peer];
    /* reading fd is paused while dst holds its bytes: only a hangup or an error gets here */
    if (dst->len > 0) { drop(fd); return; }
    ssize_t n = recv(fd, inbuf, BUFSZ, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) { drop(fd); return; }
    if (n < 0) return;
    ssize_t w = send(peer, inbuf, (size_t)n, MSG_NOSIGNAL);
    if (w < 0 && errno != EAGAIN && errno != EINTR) { drop(fd); return; }
    if (w < 0) w = 0;
    if (w == n) return;
    /* short send: keep the rest, stop reading fd until the peer drained it */
    dst->out = malloc((size_t)(n - w));
    if (!dst->out) { drop(fd); return; }
    memcpy(dst->out, inbuf + w, (size_t)(n - w));
    dst->off = 0;
    dst->len = (size_t)(n - w);
    if (watch(fd, EPOLL_CTL_MOD, 0) < 0 || watch(peer, EPOLL_CTL_MOD, EPOLLIN | EPOLLOUT) < 0) drop(fd);
}

/* fd is writable again: flush what is pending for it, then resume its peer's reads. */
static void on_writable(int fd) {
    struct side *s = &sides[fd];
    ssize_t w = send(fd, s->out + s->off, s->len, MSG_NOSIGNAL);
    if (w < 0 && errno != EAGAIN && errno != EINTR) { drop(fd); return; }
    if (w < 0) return;
    s->off += (size_t)w;
    s->len -= (size_t)w;
    if (s->len > 0) return;
    free(s->out);
    s->out = NULL;
    if (watch(fd, EPOLL_CTL_MOD, EPOLLIN) < 0 || watch(s->peer, EPOLL_CTL_MOD, EPOLLIN) < 0) drop(fd);
}

/* A listener of its own (SO_REUSEPORT: the kernel spreads new clients over the threads). */
static int listener(void) {
    int one = 1;
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0) return -1;
    if (setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        setsockopt(lfd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0 ||
        bind(lfd, (struct sockaddr *)&listen_at, sizeof listen_at) < 0 || listen(lfd, 1024) < 0) {
        close(lfd);
        return -1;
    }
    return lfd;
}

/* One serving thread: its listener and epoll set, until a signal. */
static void *serve(void *arg) {
    int lfd = (int)(intptr_t)arg;
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0 || watch(lfd, EPOLL_CTL_ADD, EPOLLIN) < 0) { perror("epoll"); stopping = 1; return NULL; }

    struct epoll_event evs[MAXEV];
    while (!stopping) {   /* until a signal; each pass handles at most MAXEV events */
        int n = epoll_wait(ep, evs, MAXEV, 1000);
        if (n < 0 && errno != EINTR) { perror("epoll_wait"); break; }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) { on_accept(lfd, &backend); continue; }
            /* an earlier event in this batch may have closed the pair */
            if (sides[fd].peer < 0) continue;
            if (evs[i].events & EPOLLOUT) on_writable(fd);
            else if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(fd);
        }
    }
    close(ep);
    return NULL;
}

int main(int argc, char **argv) {
    int nthreads = argc == 4 ? atoi(argv[3]) : 1;
    if (argc < 3 || argc > 4 || nthreads < 1 || nthreads > 8) {
        fprintf(stderr, "usage: %s LISTEN_PORT BACKEND_PORT [THREADS 1-8] (both on 127.0.0.1)\n", argv[0]);
        return 2;
    }
    listen_at = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    backend = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    listen_at.sin_addr.s_addr = backend.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    sides = calloc(MAXFD, sizeof *sides);
    if (!sides) { perror("calloc"); return 1; }
    for (int i = 0; i < MAXFD; i++) sides[i].peer = -1;
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);

    int lfds[8];
    pthread_t threads[8];
    for (int t = 0; t < nthreads; t++) {   /* all listeners first: no client is refused meanwhile */
        lfds[t] = listener();
        if (lfds[t] < 0) { perror("listen"); return 1; }
    }
    int started = 0;
    for (int t = 1; t < nthreads; t++, started++)
        if (pthread_create(&threads[t], NULL, serve, (void *)(intptr_t)lfds[t]) != 0) { stopping = 1; break; }
    serve((void *)(intptr_t)lfds[0]);
    for (int t = 1; t <= started; t++) pthread_join(threads[t], NULL);
    for (int fd = 0; fd < MAXFD; fd++)   /* bounded: every slot once */
        if (sides[fd].peer >= 0) drop(fd);
    for (int t = 0; t < nthreads; t++) close(lfds[t]);
    return 0;
}
