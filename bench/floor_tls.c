/* floor_tls.c: the least an SMTP STARTTLS sidecar can cost (bench/inbound.sh, section 2).
 *
 *   floor_tls LISTEN_PORT BACKEND_PORT CERT.pem KEY.pem [THREADS]
 *             (both ports on 127.0.0.1; runs until SIGTERM/SIGINT)
 *
 * One thread (or THREADS, 1-8, each with its own SO_REUSEPORT listener and
 * epoll set, as nginx's two workers and blackpony's two serving threads
 * here), epoll (level-triggered), nonblocking sockets, OpenSSL. For each
 * client it accepts it connects to the backend and moves bytes both ways, in
 * plaintext, as bench/floor.c does, until the client's command is STARTTLS.
 * That it answers itself (220 2.0.0 Ready to start TLS, RFC 3207 §4) without
 * telling the backend, runs the TLS handshake as the server, and from then on
 * relays the decrypted bytes to the backend and the backend's bytes encrypted
 * to the client. The backend keeps its one connection and sees the client's
 * second EHLO on it (smtp-sink answers it like the first; blackpony opens a
 * new backend connection there instead, once per session).
 *
 * What it reads of the dialogue, and nothing else: a client read that begins
 * with "STARTTLS" (it must be the whole read: a client may not send anything
 * behind it before TLS, RFC 3207 §4.2, so anything behind it closes the
 * pair), and a client read that begins with "EHLO " before TLS, whose reply
 * gets the line "250-STARTTLS" put in after its first line (smtp-sink offers
 * no STARTTLS; the sidecar owns TLS, as blackpony's EHLO rewrite does). No
 * other parsing, no timers, no logs, no limits.
 *
 * TLS: 1.3 only, TLS_AES_256_GCM_SHA384 (what smtpload's OpenSSL asks for
 * first, and what blackpony and nginx negotiate with it), X25519, the bench's
 * certificate (P-256 by default); no session tickets and no session cache
 * (smtpload resumes nothing); OpenSSL's read-ahead on (one recv takes what
 * the socket holds, as nginx sets it), and every record a read brought is
 * decrypted before one send to the backend. A close sends close_notify once
 * and does not wait for the peer's.
 *
 * Every readiness event does a bounded amount of work: at most MAXREADS
 * SSL_read calls (records that stay decrypted-but-unsent in OpenSSL's buffer
 * are taken up again at the next turn of the loop: epoll cannot see them).
 * A short write keeps the rest in a buffer of the destination side and stops
 * reading the source until it is flushed, so at most one pending buffer per
 * direction. Any error, EOF or alert on either side closes both sockets.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAXFD 65536   /* fds index the side table directly */
#define BUFSZ 16384   /* one recv at most, and one batch of decrypted records */
#define MAXEV 256
#define MAXREADS 64   /* SSL_read calls per event at most */

static const char READY[] = "220 2.0.0 Ready to start TLS\r\n";
#define OFFER "250-STARTTLS\r\n"
#define OFFER_LEN (sizeof OFFER - 1)

/* Where a pair is, kept on its client side. */
enum phase { PLAIN, EHLO_SENT, HANDSHAKE, TLS };

/* One side of a relayed pair: its socket and what came from the peer but is not sent yet. */
struct side {
    int peer;          /* the other socket of the pair, -1 when this slot is free */
    size_t off, len;   /* pending bytes for this socket: out[off .. off+len) */
    char *out;         /* malloc'ed on a short write only, freed once flushed */
    SSL *ssl;          /* client side, from STARTTLS on */
    unsigned char client;   /* 1 on the client side */
    unsigned char phase;    /* client side: enum phase */
    unsigned char again;    /* client side: queued for another SSL_read pass */
    uint32_t gen;      /* which pair holds this fd number now: events carry it (see watch) */
};

static struct side *sides;   /* indexed by fd; an fd is only ever touched by the thread that owns it */
static __thread char inbuf[BUFSZ + OFFER_LEN];
static __thread int ep;
static SSL_CTX *ctx;
static struct sockaddr_in listen_at, backend;
static volatile sig_atomic_t stopping;
/* client fds whose decrypted records wait in OpenSSL's buffer (epoll cannot see them):
 * the loop takes them up at its next turn; two lists, one filled while the other is read */
static __thread uint64_t *again_now, *again_next;   /* gen << 32 | fd, as the events */
static __thread int n_again_next;

static void on_signal(int sig) { (void)sig; stopping = 1; }

/* Events carry the fd and the generation of its slot: an event fetched in the same batch as
 * the one that closed its fd, read after the number went to a new pair (in this thread or,
 * with THREADS, in another one), does not match and is skipped. */
static int watch(int fd, int op, unsigned events) {
    struct epoll_event ev = {.events = events, .data.u64 = (uint64_t)sides[fd].gen << 32 | (uint32_t)fd};
    return epoll_ctl(ep, op, fd, &ev);
}

/* Close both sockets of a pair (closing removes them from the epoll set). */
static void release(int fd) {
    struct side *s = &sides[fd];
    if (s->ssl) {
        if (s->phase == TLS) SSL_shutdown(s->ssl);   /* one close_notify, not waited on */
        SSL_free(s->ssl);
    }
    free(s->out);
    *s = (struct side){.peer = -1, .gen = s->gen};
    close(fd);
}
static void drop(int fd) {
    int peer = sides[fd].peer;
    release(fd);
    if (peer >= 0 && sides[peer].peer == fd) release(peer);
}

static void queue_again(int fd) {
    if (sides[fd].again || n_again_next >= MAXFD) return;
    sides[fd].again = 1;
    again_next[n_again_next++] = (uint64_t)sides[fd].gen << 32 | (uint32_t)fd;
}

/* Write to fd, through TLS once it is up: bytes taken (0: would block), -1 on error. */
static ssize_t put(int fd, const char *p, size_t n) {
    struct side *s = &sides[fd];
    if (s->phase == TLS) {
        ERR_clear_error();
        int w = SSL_write(s->ssl, p, (int)n);
        if (w > 0) return w;
        return SSL_get_error(s->ssl, w) == SSL_ERROR_WANT_WRITE ? 0 : -1;
    }
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w >= 0) return w;
    return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
}

/* Pass n bytes read from fd to its peer. 0: all written; 1: the rest waits (fd paused); -1: dropped. */
static int forward(int fd, const char *p, size_t n) {
    int peer = sides[fd].peer;
    struct side *dst = &sides[peer];
    ssize_t w = put(peer, p, n);
    if (w < 0) { drop(fd); return -1; }
    if ((size_t)w == n) return 0;
    /* short write: keep the rest (OpenSSL takes the same bytes again from the new buffer:
     * SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER), stop reading fd until the peer drained it */
    dst->out = malloc(n - (size_t)w);
    if (!dst->out) { drop(fd); return -1; }
    memcpy(dst->out, p + w, n - (size_t)w);
    dst->off = 0;
    dst->len = n - (size_t)w;
    if (watch(fd, EPOLL_CTL_MOD, 0) < 0 || watch(peer, EPOLL_CTL_MOD, EPOLLIN | EPOLLOUT) < 0) {
        drop(fd);
        return -1;
    }
    return 1;
}

/* The backend's reply to the client's EHLO, whole in inbuf[0..n): offer STARTTLS after its
 * first line (that line names the server and stays first, RFC 5321 §4.1.1.1). A reply that is
 * not a 250 or whose first line did not come whole passes as it is. Returns the new length. */
static size_t offer_starttls(size_t n) {
    if (n < 4 || memcmp(inbuf, "250", 3) != 0) return n;
    char *nl = memchr(inbuf, '\n', n);
    if (!nl) return n;
    size_t first = (size_t)(nl - inbuf) + 1;
    const char *line = OFFER;
    if (inbuf[3] == ' ') {   /* a one-line reply: its line goes on, STARTTLS ends it */
        inbuf[3] = '-';
        line = "250 STARTTLS\r\n";
    }
    memmove(inbuf + first + OFFER_LEN, inbuf + first, n - first);
    memcpy(inbuf + first, line, OFFER_LEN);
    return n + OFFER_LEN;
}

/* Run the handshake as far as the socket allows. */
static void handshake(int fd) {
    struct side *s = &sides[fd];
    int peer = s->peer;
    ERR_clear_error();
    int r = SSL_do_handshake(s->ssl);
    if (r == 1) {
        s->phase = TLS;
        if (watch(fd, EPOLL_CTL_MOD, EPOLLIN) < 0 || watch(peer, EPOLL_CTL_MOD, EPOLLIN) < 0) {
            drop(fd);
            return;
        }
        /* the client's EHLO may have come with its Finished and sit decrypted-to-be in the buffer */
        if (SSL_has_pending(s->ssl)) queue_again(fd);
        return;
    }
    int e = SSL_get_error(s->ssl, r);
    if (e == SSL_ERROR_WANT_READ) { if (watch(fd, EPOLL_CTL_MOD, EPOLLIN) < 0) drop(fd); return; }
    if (e == SSL_ERROR_WANT_WRITE) { if (watch(fd, EPOLL_CTL_MOD, EPOLLOUT) < 0) drop(fd); return; }
    drop(fd);   /* a failed handshake, or the client gone */
}

/* The client said STARTTLS (n bytes in inbuf): answer it, stop reading the backend, begin TLS. */
static void start_tls(int fd, size_t n) {
    struct side *s = &sides[fd];
    /* RFC 3207 §4.2: nothing may follow STARTTLS before TLS; whatever did would be
     * plaintext a man in the middle could have put there */
    if (n != 10 || inbuf[8] != '\r' || inbuf[9] != '\n') { drop(fd); return; }
    if (put(fd, READY, sizeof READY - 1) != (ssize_t)(sizeof READY - 1)) { drop(fd); return; }
    s->ssl = SSL_new(ctx);
    if (!s->ssl || !SSL_set_fd(s->ssl, fd)) { drop(fd); return; }
    SSL_set_accept_state(s->ssl);
    s->phase = HANDSHAKE;
    /* the backend says nothing unasked; a hangup or error of it is still reported */
    if (watch(s->peer, EPOLL_CTL_MOD, 0) < 0) { drop(fd); return; }
    handshake(fd);
}

/* Plaintext readable: one recv, one write to the peer (the two spots above aside). */
static void on_plain_readable(int fd) {
    struct side *s = &sides[fd];
    int peer = s->peer;
    /* reading fd is paused while its peer holds bytes: only a hangup or an error gets here */
    if (sides[peer].len > 0) { drop(fd); return; }
    ssize_t n = recv(fd, inbuf, BUFSZ, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) { drop(fd); return; }
    if (n < 0) return;
    size_t len = (size_t)n;
    if (s->client && s->phase != TLS) {
        if (len >= 8 && strncasecmp(inbuf, "STARTTLS", 8) == 0) { start_tls(fd, len); return; }
        if (len >= 5 && strncasecmp(inbuf, "EHLO ", 5) == 0) s->phase = EHLO_SENT;
    } else if (!s->client && sides[peer].phase == EHLO_SENT) {
        len = offer_starttls(len);
        sides[peer].phase = PLAIN;
    }
    forward(fd, inbuf, len);
}

/* The client's TLS side is readable (or has records buffered): decrypt what is there, one send. */
static void on_tls_readable(int fd) {
    struct side *s = &sides[fd];
    if (sides[s->peer].len > 0) { drop(fd); return; }   /* paused: only a hangup or error */
    size_t have = 0;
    for (int i = 0; i < MAXREADS && have < BUFSZ; i++) {
        ERR_clear_error();
        int n = SSL_read(s->ssl, inbuf + have, (int)(BUFSZ - have));
        if (n > 0) { have += (size_t)n; continue; }
        if (SSL_get_error(s->ssl, n) == SSL_ERROR_WANT_READ) break;
        drop(fd);   /* close_notify, an alert, EOF or an error */
        return;
    }
    if (have > 0 && forward(fd, inbuf, have) != 0) return;   /* paused or dropped */
    if (SSL_has_pending(s->ssl)) queue_again(fd);
}

/* fd is writable again: flush what is pending for it, then resume its peer's reads. */
static void on_writable(int fd) {
    struct side *s = &sides[fd];
    ssize_t w = put(fd, s->out + s->off, s->len);
    if (w < 0) { drop(fd); return; }
    s->off += (size_t)w;
    s->len -= (size_t)w;
    if (s->len > 0) return;
    free(s->out);
    s->out = NULL;
    int peer = s->peer;
    if (watch(fd, EPOLL_CTL_MOD, EPOLLIN) < 0 || watch(peer, EPOLL_CTL_MOD, EPOLLIN) < 0) { drop(fd); return; }
    if (sides[peer].client && sides[peer].phase == TLS && SSL_has_pending(sides[peer].ssl)) queue_again(peer);
}

/* A new client: connect to the backend, register both sides. */
static void on_accept(int lfd) {
    int one = 1;
    int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c < 0) return;   /* EAGAIN or a client gone already */
    if (c >= MAXFD) { close(c); return; }
    /* a blocking connect on loopback returns at once; a relay for real networks would not */
    int b = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (b < 0) { close(c); return; }
    if (connect(b, (const struct sockaddr *)&backend, sizeof backend) < 0 ||
        fcntl(b, F_SETFL, O_NONBLOCK) < 0 || b >= MAXFD) {
        close(b);
        close(c);
        return;
    }
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(b, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sides[c] = (struct side){.peer = b, .client = 1, .phase = PLAIN, .gen = sides[c].gen + 1};
    sides[b] = (struct side){.peer = c, .gen = sides[b].gen + 1};
    if (watch(c, EPOLL_CTL_ADD, EPOLLIN) < 0 || watch(b, EPOLL_CTL_ADD, EPOLLIN) < 0) drop(c);
}

static void on_event(uint64_t data, unsigned events) {
    int fd = (int)(uint32_t)data;
    struct side *s = &sides[fd];
    /* an earlier event in this batch closed the pair (and the number may be another pair's now) */
    if (__atomic_load_n(&s->gen, __ATOMIC_RELAXED) != (uint32_t)(data >> 32) || s->peer < 0) return;
    struct side *client = s->client ? s : &sides[s->peer];
    if (client->phase == HANDSHAKE) {
        if (s->client) handshake(fd);
        else drop(fd);   /* the paused backend: only a hangup or an error is reported */
        return;
    }
    if (events & EPOLLOUT) on_writable(fd);
    else if (s->client && s->phase == TLS) on_tls_readable(fd);
    else on_plain_readable(fd);
}

static SSL_CTX *tls_context(const char *cert, const char *key) {
    SSL_CTX *c = SSL_CTX_new(TLS_server_method());
    if (!c) return NULL;
    if (!SSL_CTX_set_min_proto_version(c, TLS1_3_VERSION) || !SSL_CTX_set_max_proto_version(c, TLS1_3_VERSION) ||
        !SSL_CTX_set_ciphersuites(c, "TLS_AES_256_GCM_SHA384") || !SSL_CTX_set1_groups_list(c, "X25519") ||
        !SSL_CTX_set_num_tickets(c, 0) || SSL_CTX_use_certificate_chain_file(c, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(c, key, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(c) != 1) {
        SSL_CTX_free(c);
        return NULL;
    }
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_read_ahead(c, 1);
    SSL_CTX_set_mode(c, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    return c;
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

/* One serving thread: its listener, epoll set and queue, until a signal. */
static void *serve(void *arg) {
    int lfd = (int)(intptr_t)arg;
    again_now = calloc(MAXFD, sizeof *again_now);
    again_next = calloc(MAXFD, sizeof *again_next);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (!again_now || !again_next || ep < 0 || watch(lfd, EPOLL_CTL_ADD, EPOLLIN) < 0) {
        perror("serve");
        stopping = 1;
        return NULL;
    }
    struct epoll_event evs[MAXEV];
    while (!stopping) {   /* until a signal; each pass handles at most MAXEV events and the queued fds */
        int n = epoll_wait(ep, evs, MAXEV, n_again_next ? 0 : 1000);
        if (n < 0 && errno != EINTR) { perror("epoll_wait"); break; }
        for (int i = 0; i < n; i++) {
            if ((int)(uint32_t)evs[i].data.u64 == lfd) on_accept(lfd);
            else on_event(evs[i].data.u64, evs[i].events);
        }
        /* records OpenSSL holds decrypted-to-be: what was queued before this pass */
        uint64_t *t = again_now; again_now = again_next; again_next = t;
        int k = n_again_next;
        n_again_next = 0;
        for (int i = 0; i < k; i++) {
            int fd = (int)(uint32_t)again_now[i];
            struct side *s = &sides[fd];
            /* closed meanwhile (and maybe another pair's now) */
            if (__atomic_load_n(&s->gen, __ATOMIC_RELAXED) != (uint32_t)(again_now[i] >> 32) || !s->again) continue;
            s->again = 0;
            if (s->peer >= 0 && s->phase == TLS && sides[s->peer].len == 0) on_tls_readable(fd);
        }
    }
    close(ep);
    return NULL;
}

int main(int argc, char **argv) {
    int nthreads = argc == 6 ? atoi(argv[5]) : 1;
    if (argc < 5 || argc > 6 || nthreads < 1 || nthreads > 8) {
        fprintf(stderr, "usage: %s LISTEN_PORT BACKEND_PORT CERT.pem KEY.pem [THREADS 1-8] (both ports on 127.0.0.1)\n",
                argv[0]);
        return 2;
    }
    listen_at = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    backend = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    listen_at.sin_addr.s_addr = backend.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ctx = tls_context(argv[3], argv[4]);   /* shared by the threads: OpenSSL locks what it must */
    if (!ctx) { ERR_print_errors_fp(stderr); return 1; }

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
    SSL_CTX_free(ctx);
    return 0;
}
