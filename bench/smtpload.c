/*
 * smtpload: a small SMTP load generator with STARTTLS, for bench/inbound.sh.
 *
 * smtp-source(1) cannot do STARTTLS, and a Python generator used more CPU
 * than the servers it measured (2-core machine), so this is C + OpenSSL:
 * a few worker processes, each driving its share of the sessions with
 * epoll and non-blocking sockets, lock-step SMTP (no pipelining, like
 * smtp-source).
 *
 *   smtpload -a 127.0.0.1:PORT [-s sessions] [-m messages] [-l size]
 *            [-P procs] [-T] [-1] [-t timeout]
 *
 *   -s N   sessions in parallel (default 20)
 *   -m N   messages in total, split evenly over the sessions (default 4000)
 *   -l N   body bytes per message (default 1024)
 *   -P N   worker processes the sessions are spread over (default 2)
 *   -T     STARTTLS after the first EHLO, then EHLO again
 *   -1     one message per connection (greeting, EHLO, [STARTTLS, EHLO],
 *          MAIL, RCPT, DATA, QUIT for every message); default: each
 *          session keeps one connection for all its messages
 *   -t S   give up after S seconds (default 120)
 *
 * Prints one JSON line: elapsed wall time from the release of all sessions
 * (they connect after it) to the end of the last, messages accepted (250
 * after the final dot), errors, TLS version/cipher seen, and the CPU time
 * the generator itself used. Exit status 0 only if every message was
 * accepted. TLS: no certificate verification, no session resumption
 * (every connection does a full handshake).
 *
 * Build: cc -O2 -o smtpload smtpload.c -lssl -lcrypto
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#define MAXSESS 1000
#define MAXPROCS 16

struct result {
    long ok;
    long errors;
    int done; /* sessions that finished */
    char tls[64];
    char err[160];
};

enum state { S_GREET, S_EHLO1, S_STARTTLS, S_HANDSHAKE, S_EHLO2, S_MAIL, S_RCPT, S_DATA, S_BODY, S_QUIT, S_DONE };

struct sess {
    int fd;
    SSL *ssl;
    enum state st;
    int starttls_seen;
    long left; /* messages still to send */
    size_t len;
    char buf[8192];
};

static struct sockaddr_in addr;
static SSL_CTX *ctx;
static int opt_tls, opt_per_conn, epfd;
static char *msg;
static size_t mlen;
static struct result res;
static int active;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void wait_fd(int fd, short ev)
{
    struct pollfd p = {.fd = fd, .events = ev};
    poll(&p, 1, 10000);
}

static void s_error(struct sess *s, const char *fmt, ...);
static void s_start(struct sess *s);

static void s_close(struct sess *s)
{
    if (s->ssl) {
        SSL_shutdown(s->ssl); /* send close_notify, do not wait */
        SSL_free(s->ssl);
        s->ssl = NULL;
    }
    if (s->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, s->fd, NULL);
        close(s->fd);
    }
    s->fd = -1;
}

static void s_finish(struct sess *s)
{
    s_close(s);
    s->st = S_DONE;
    res.done++;
    active--;
}

/* Writes everything; loopback writes this small nearly always complete at
 * once, so a short wait in poll() is good enough when they do not. */
static int s_send(struct sess *s, const char *p, size_t n)
{
    while (n > 0) {
        if (s->ssl) {
            int r = SSL_write(s->ssl, p, (int)n);
            if (r <= 0) {
                int e = SSL_get_error(s->ssl, r);
                if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
                    wait_fd(s->fd, e == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN);
                    continue;
                }
                s_error(s, "SSL_write: error %d", e);
                return -1;
            }
            p += r;
            n -= (size_t)r;
        } else {
            ssize_t w = write(s->fd, p, n);
            if (w < 0) {
                if (errno == EAGAIN || errno == EINTR) {
                    wait_fd(s->fd, POLLOUT);
                    continue;
                }
                s_error(s, "write: %s", strerror(errno));
                return -1;
            }
            p += w;
            n -= (size_t)w;
        }
    }
    return 0;
}

#define SEND(s, lit) s_send(s, lit, sizeof(lit) - 1)

static void s_error(struct sess *s, const char *fmt, ...)
{
    if (!res.errors++) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(res.err, sizeof res.err, fmt, ap);
        va_end(ap);
    }
    s_close(s);
    if (opt_per_conn && s->left > 1 && res.errors <= 20) {
        s->left--; /* this message is lost; go on with the next */
        s_start(s);
    } else {
        s->st = S_DONE;
        res.done++;
        active--;
    }
}

static void s_start(struct sess *s)
{
    int one = 1;
    s->ssl = NULL;
    s->len = 0;
    s->starttls_seen = 0;
    s->st = S_GREET;
    s->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (s->fd < 0) {
        s_error(s, "socket: %s", strerror(errno));
        return;
    }
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(s->fd, (struct sockaddr *)&addr, sizeof addr) < 0) { /* loopback: immediate */
        s_error(s, "connect: %s", strerror(errno));
        return;
    }
    fcntl(s->fd, F_SETFL, fcntl(s->fd, F_GETFL) | O_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = s};
    epoll_ctl(epfd, EPOLL_CTL_ADD, s->fd, &ev);
}

static void begin_message(struct sess *s)
{
    if (s->left <= 0) {
        s->st = S_QUIT;
        SEND(s, "QUIT\r\n");
    } else {
        s->st = S_MAIL;
        SEND(s, "MAIL FROM:<a@client.test>\r\n");
    }
}

static void handshake(struct sess *s)
{
    for (;;) {
        int r = SSL_connect(s->ssl);
        if (r == 1)
            break;
        int e = SSL_get_error(s->ssl, r);
        if (e == SSL_ERROR_WANT_READ)
            return; /* epoll calls again */
        if (e == SSL_ERROR_WANT_WRITE) {
            wait_fd(s->fd, POLLOUT);
            continue;
        }
        unsigned long ee = ERR_get_error();
        s_error(s, "TLS handshake: %s", ee ? ERR_error_string(ee, NULL) : "failed");
        return;
    }
    if (!res.tls[0])
        snprintf(res.tls, sizeof res.tls, "%s %s", SSL_get_version(s->ssl), SSL_get_cipher_name(s->ssl));
    s->st = S_EHLO2;
    SEND(s, "EHLO client.test\r\n");
}

/* One complete reply arrived. */
static void on_reply(struct sess *s, int code, const char *text)
{
    static const int want[] = {
        [S_GREET] = 220, [S_EHLO1] = 250, [S_STARTTLS] = 220, [S_EHLO2] = 250,
        [S_MAIL] = 250, [S_RCPT] = 250, [S_DATA] = 354, [S_BODY] = 250, [S_QUIT] = 221,
    };
    static const char *name[] = {
        [S_GREET] = "greeting", [S_EHLO1] = "EHLO", [S_STARTTLS] = "STARTTLS",
        [S_EHLO2] = "EHLO after TLS", [S_MAIL] = "MAIL", [S_RCPT] = "RCPT",
        [S_DATA] = "DATA", [S_BODY] = "end of data", [S_QUIT] = "QUIT",
    };
    if (s->st >= S_DONE || s->st == S_HANDSHAKE || code != want[s->st]) {
        s_error(s, "%s -> %s", s->st < S_DONE ? name[s->st] : "?", text);
        return;
    }
    switch (s->st) {
    case S_GREET:
        s->st = S_EHLO1;
        SEND(s, "EHLO client.test\r\n");
        break;
    case S_EHLO1:
        if (!opt_tls) {
            begin_message(s);
        } else if (!s->starttls_seen) {
            s_error(s, "STARTTLS not offered");
        } else {
            s->st = S_STARTTLS;
            SEND(s, "STARTTLS\r\n");
        }
        break;
    case S_STARTTLS:
        if (s->len) {
            s_error(s, "data after 220 to STARTTLS");
            break;
        }
        s->ssl = SSL_new(ctx);
        SSL_set_fd(s->ssl, s->fd);
        SSL_set_tlsext_host_name(s->ssl, "bench.test");
        s->st = S_HANDSHAKE;
        handshake(s);
        break;
    case S_EHLO2:
        begin_message(s);
        break;
    case S_MAIL:
        s->st = S_RCPT;
        SEND(s, "RCPT TO:<b@sink.test>\r\n");
        break;
    case S_RCPT:
        s->st = S_DATA;
        SEND(s, "DATA\r\n");
        break;
    case S_DATA:
        s->st = S_BODY;
        s_send(s, msg, mlen);
        break;
    case S_BODY:
        res.ok++;
        s->left--;
        if (opt_per_conn) {
            s->st = S_QUIT;
            SEND(s, "QUIT\r\n");
        } else {
            begin_message(s);
        }
        break;
    case S_QUIT:
        if (opt_per_conn && s->left > 0) {
            s_close(s);
            s_start(s);
        } else {
            s_finish(s);
        }
        break;
    default:
        break;
    }
}

static void on_readable(struct sess *s)
{
    if (s->st == S_HANDSHAKE) {
        handshake(s);
        return;
    }
    do {
        if (s->len >= sizeof s->buf) {
            s_error(s, "reply too long");
            return;
        }
        if (s->ssl) {
            int r = SSL_read(s->ssl, s->buf + s->len, (int)(sizeof s->buf - s->len));
            if (r <= 0) {
                int e = SSL_get_error(s->ssl, r);
                if (e == SSL_ERROR_WANT_READ)
                    return;
                s_error(s, "SSL_read: error %d (server closed?) in state %d", e, s->st);
                return;
            }
            s->len += (size_t)r;
        } else {
            ssize_t r = read(s->fd, s->buf + s->len, sizeof s->buf - s->len);
            if (r < 0) {
                if (errno == EAGAIN || errno == EINTR)
                    return;
                s_error(s, "read: %s", strerror(errno));
                return;
            }
            if (r == 0) {
                s_error(s, "connection closed by server in state %d", s->st);
                return;
            }
            s->len += (size_t)r;
        }
        /* hand on every complete reply in the buffer */
        size_t start = 0, rstart = 0;
        char *nl;
        while (s->fd >= 0 && start < s->len && (nl = memchr(s->buf + start, '\n', s->len - start))) {
            char *line = s->buf + start;
            size_t llen = (size_t)(nl - line) + 1;
            if (llen >= 12 && strncasecmp(line + 4, "STARTTLS", 8) == 0)
                s->starttls_seen = 1;
            start += llen;
            if (llen < 4 || line[3] != '-') {
                char text[120];
                int show = llen >= 2 ? (int)llen - 2 : 0;
                snprintf(text, sizeof text, "%.*s", show > 100 ? 100 : show, line);
                /* drop the reply before acting on it */
                memmove(s->buf + rstart, s->buf + start, s->len - start);
                s->len -= start - rstart;
                start = rstart;
                on_reply(s, atoi(text), text);
                if (s->st == S_HANDSHAKE || s->st == S_GREET || s->st == S_DONE)
                    return; /* new connection or TLS: the old buffer is gone */
            }
        }
    } while (s->ssl && SSL_pending(s->ssl) > 0);
}

static struct result run_worker(struct sess *ss, int n)
{
    struct epoll_event evs[64];
    epfd = epoll_create1(0);
    active = n;
    for (int i = 0; i < n; i++) {
        if (ss[i].left <= 0) {
            ss[i].st = S_DONE;
            res.done++;
            active--;
            continue;
        }
        s_start(&ss[i]);
    }
    while (active > 0) {
        int k = epoll_wait(epfd, evs, 64, 10000);
        if (k < 0 && errno != EINTR)
            break;
        if (k == 0) {
            snprintf(res.err, sizeof res.err, "no reply for 10 s (%d session(s) stuck)", active);
            res.errors += active;
            break;
        }
        for (int i = 0; i < k; i++) {
            struct sess *s = evs[i].data.ptr;
            if (s->fd >= 0)
                on_readable(s);
        }
    }
    return res;
}

static char *make_message(int size, size_t *len)
{
    char *m = malloc((size_t)size + 512), *p = m;
    p += sprintf(p, "From: <a@client.test>\r\nTo: <b@sink.test>\r\nSubject: bench\r\n"
                    "Message-ID: <%d@client.test>\r\n\r\n", (int)getpid());
    int left = size;
    while (left >= 64) {
        memset(p, 'x', 62);
        memcpy(p + 62, "\r\n", 2);
        p += 64;
        left -= 64;
    }
    if (left >= 3) {
        memset(p, 'y', (size_t)left - 2);
        memcpy(p + left - 2, "\r\n", 2);
        p += left;
    }
    memcpy(p, ".\r\n", 3);
    p += 3;
    *len = (size_t)(p - m);
    return m;
}

static void json_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            printf("\\u%04x", *s);
        else
            putchar(*s);
    }
    putchar('"');
}

int main(int argc, char **argv)
{
    int sessions = 20, size = 1024, timeout = 120, procs = 2, o;
    long messages = 4000;
    char *target = NULL;

    while ((o = getopt(argc, argv, "a:s:m:l:P:T1t:")) != -1) {
        switch (o) {
        case 'a': target = optarg; break;
        case 's': sessions = atoi(optarg); break;
        case 'm': messages = atol(optarg); break;
        case 'l': size = atoi(optarg); break;
        case 'P': procs = atoi(optarg); break;
        case 'T': opt_tls = 1; break;
        case '1': opt_per_conn = 1; break;
        case 't': timeout = atoi(optarg); break;
        default: goto usage;
        }
    }
    char *colon = target ? strrchr(target, ':') : NULL;
    if (!colon || sessions < 1 || sessions > MAXSESS || messages < 1 || size < 0 ||
        procs < 1 || procs > MAXPROCS) {
    usage:
        fprintf(stderr, "usage: smtpload -a HOST:PORT [-s sessions] [-m messages] [-l size] "
                        "[-P procs] [-T] [-1] [-t timeout]\n");
        return 64;
    }
    if (procs > sessions)
        procs = sessions;
    *colon = 0;
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)atoi(colon + 1));
    if (inet_pton(AF_INET, target, &addr.sin_addr) != 1) {
        fprintf(stderr, "smtpload: bad address %s\n", target);
        return 64;
    }
    signal(SIGPIPE, SIG_IGN);
    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    msg = make_message(size, &mlen);

    static struct sess ss[MAXSESS];
    for (int i = 0; i < sessions; i++) {
        ss[i].fd = -1;
        ss[i].left = messages / sessions + (i < messages % sessions ? 1 : 0);
    }

    int ready[2], go[2], rp[2];
    if (pipe(ready) || pipe(go) || pipe(rp)) {
        perror("pipe");
        return 71;
    }
    pid_t pids[MAXPROCS];
    for (int p = 0; p < procs; p++) {
        int first = sessions * p / procs, last = sessions * (p + 1) / procs;
        pids[p] = fork();
        if (pids[p] < 0) {
            perror("fork");
            return 71;
        }
        if (pids[p] == 0) {
            char dummy;
            close(ready[0]);
            close(go[1]);
            close(rp[0]);
            alarm((unsigned)timeout);
            if (write(ready[1], "r", 1) != 1 || read(go[0], &dummy, 1) < 0) /* EOF = go */
                _exit(3);
            struct result r = run_worker(ss + first, last - first);
            if (write(rp[1], &r, sizeof r) != sizeof r)
                _exit(4);
            _exit(0);
        }
    }
    close(ready[1]);
    close(go[0]);
    close(rp[1]);
    alarm((unsigned)timeout + 10);
    for (int got = 0; got < procs;) {
        char b[MAXPROCS];
        ssize_t n = read(ready[0], b, sizeof b);
        if (n <= 0) {
            fprintf(stderr, "smtpload: a worker died before the start\n");
            break;
        }
        got += (int)n;
    }
    double t0 = now();
    close(go[1]); /* release every worker at once */

    long ok = 0, errors = 0;
    int done = 0;
    char tls[64] = "", first_err[160] = "";
    struct result r;
    while (read(rp[0], &r, sizeof r) == sizeof r) { /* EOF once all have exited */
        done += r.done;
        ok += r.ok;
        errors += r.errors;
        if (!tls[0] && r.tls[0])
            memcpy(tls, r.tls, sizeof tls);
        if (!first_err[0] && r.err[0])
            memcpy(first_err, r.err, sizeof first_err);
    }
    double t1 = now();
    for (int p = 0; p < procs; p++)
        waitpid(pids[p], NULL, 0);
    if (done < sessions)
        errors += sessions - done;
    if (done < sessions && !first_err[0])
        snprintf(first_err, sizeof first_err, "%d session(s) did not finish (timeout %ds?)",
                 sessions - done, timeout);
    struct rusage ru;
    getrusage(RUSAGE_CHILDREN, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    double el = t1 - t0;
    printf("{\"elapsed\": %.4f, \"sent\": %ld, \"ok\": %ld, \"rate\": %.1f, \"errors\": %ld, "
           "\"first_error\": ", el, messages, ok, el > 0 ? ok / el : 0.0, errors);
    json_str(first_err);
    printf(", \"tls\": ");
    json_str(tls);
    printf(", \"gen_cpu\": %.3f}\n", cpu);
    return (ok == messages && errors == 0 && done == sessions) ? 0 : 1;
}
