/*
 * loadgen.c - single-threaded epoll WebSocket load generator for the wsgate
 * benchmark suite (bench/run.py compiles it with `cc -O2`).
 *
 * Speaks just enough of the RFC 6455 client side: an HTTP/1.1 upgrade with a
 * fixed Sec-WebSocket-Key, masked text frames, unmasked server frames with
 * 7/16/64-bit lengths, pong replies to pings, pongs ignored.
 *
 * Modes (--mode):
 *   echo   --conns C --inflight K --size S: every connection keeps K text
 *          messages outstanding on an echo endpoint; reports msg/s and the
 *          round-trip latency distribution measured in the window.
 *   bcast  --conns N (receivers) --inflight K: one extra sender connection
 *          keeps K messages outstanding on a broadcast endpoint; a message is
 *          done when every receiver got it. Reports deliveries/s and the time
 *          for one message to reach all receivers.
 *   idle   --conns N --rss-at M: opens N idle connections as fast as allowed
 *          (--max-pending handshakes in flight), samples the server's VmRSS
 *          when M are open (clock paused while sampling), reports the time to
 *          open all N.
 *   many   --conns N: opens N connections (as idle), reports the time to open
 *          them all; after --rss-settle S reads the server's VmRSS; measures
 *          the server's CPU over --idle S seconds with every connection idle
 *          (pings answered); then --broadcasts B times waits until no frame
 *          arrived for --quiet S, sends one text message on connection 0 and
 *          times until all N connections (the sender included) received a
 *          text frame. The endpoint must broadcast each message to everyone.
 *   sub    --conns N: N receivers and no sender; once all are ready and quiet
 *          (as bcast), prints {"ready":true} on stdout and counts deliveries
 *          for --warmup + --duration while another process publishes. Reports
 *          deliveries/s and the server's CPU in the window.
 *
 * Protocols on top of WebSocket (e.g. the Centrifugo JSON protocol):
 *   --init TEXT (repeatable) text frames each connection sends after the 101;
 *   --init-replies R         text frames it must receive before it counts as
 *                            open (idle/many: open; echo/bcast/sub: ready);
 *   --message TEXT           the frame echo/bcast/many send, instead of --size
 *                            bytes;
 *   --match TEXT             a delivery is each occurrence of TEXT in a text
 *                            frame (a frame may carry several, newline-separated);
 *   --fail-on TEXT           any text frame containing TEXT is a fatal error.
 *   {i} in these is replaced by the connection index.
 *
 * --sources K binds connection i to the source address 127.0.0.(1 + i % K)
 * before connecting (the port is chosen at connect, IP_BIND_ADDRESS_NO_PORT), so
 * more connections than one address's ephemeral ports can reach one server.
 *
 * With --server-pid, the server's utime+stime (/proc/PID/stat) is sampled at
 * the start and the end of the measured window; --extra-pid (repeatable) adds
 * more processes (e.g. a second instance and its broker) to that sum.
 * With --port2, connections with an odd index connect to that port instead
 * (the bcast sender always uses --port): receivers split over two instances. Results: one JSON line on
 * stdout. Fatal setup errors: {"error": "..."} and exit status 2.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RING 1024 /* outstanding broadcast messages tracked (> max inflight) */
#define MAX_INFLIGHT 512
#define WS_KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define MASK0 0x37
#define MASK1 0xfa
#define MASK2 0x21
#define MASK3 0x3d
#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif
#define MAX_BCASTS 64

enum { MODE_ECHO, MODE_BCAST, MODE_IDLE, MODE_MANY, MODE_SUB };
enum { ST_CONNECTING, ST_HANDSHAKE, ST_OPEN, ST_CLOSED };
enum { PH_SETUP, PH_SETTLE, PH_RUN, PH_PAUSE, PH_IDLE, PH_BQUIET, PH_BRUN, PH_DONE };

typedef struct {
    int fd;
    int idx;
    int state;
    int epout; /* EPOLLOUT currently registered */
    unsigned char *rbuf;
    size_t rlen, rcap;
    unsigned char *wbuf;
    size_t woff, wlen, wcap;
    uint64_t *sent_ts; /* echo: FIFO of send timestamps (ring of MAX_INFLIGHT) */
    unsigned q_head, q_len;
    uint64_t count; /* echo: replies; bcast: counted deliveries */
    int frag_op, frag_match;
    int init_left;      /* --init-replies still awaited */
    unsigned char *msg; /* this connection's --message frame, when it has one */
    size_t msg_len;
} conn_t;

static struct {
    int mode;
    const char *host;
    int port;
    int port2;
    const char *path;
    const char *sender_path;
    int conns;
    int inflight;
    int size;
    double warmup, duration;
    int server_pid;
    const char *json_type;
    double quiet, settle_max;
    int rss_at;
    double rss_settle;
    int max_pending;
    double timeout;
    int sources;
    double idle;
    int broadcasts;
    const char *init[8];
    int n_init;
    int init_replies;
    const char *message;
    const char *match;
    const char *fail_on;
} opt = {
    .mode = MODE_ECHO,
    .host = "127.0.0.1",
    .port = 0,
    .port2 = 0,
    .path = "/ws",
    .sender_path = NULL,
    .conns = 1,
    .inflight = 1,
    .size = 32,
    .warmup = 0.5,
    .duration = 2.0,
    .server_pid = 0,
    .json_type = NULL,
    .quiet = 0.3,
    .settle_max = 60.0,
    .rss_at = 0,
    .rss_settle = 1.0,
    .max_pending = 64,
    .timeout = 60.0,
    .sources = 0,
    .idle = 5.0,
    .broadcasts = 5,
};

static int epfd;
static conn_t *conns;
static int nconns;       /* total connections (bcast: receivers + sender) */
static int nreceivers;   /* bcast */
static conn_t *sender;   /* bcast */
static int phase = PH_SETUP;
static int target;       /* connections to initiate so far */
static int initiated, n_open, n_closed, n_ready;
static uint64_t last_rx_ns;
static struct sockaddr_in addr, addr2;
#define MAX_EXTRA 8
static int extra_pids[MAX_EXTRA];
static int n_extra;
static double pid_cpu0[1 + MAX_EXTRA], pid_cpu1[1 + MAX_EXTRA];

static unsigned char *msg_frame; /* prebuilt masked text frame */
static size_t msg_frame_len;

/* window bookkeeping */
static uint64_t t_run, t_start, t_end;
static int window_started;
static uint64_t total_rx;       /* echo replies / bcast receiver deliveries */
static uint64_t completed, sent; /* bcast */
static uint64_t rx_at_start, completed_at_start, rx_at_end, completed_at_end;
static uint64_t stray;
static uint64_t w_start_ns, w_end_ns;
static double srv_cpu0 = -1, srv_cpu1 = -1, lg_cpu0, lg_cpu1;
#define MAX_CPUS 256
static double sys_busy0[MAX_CPUS], sys_busy1[MAX_CPUS];
static int n_cpus;
static uint32_t reached[RING];
static uint64_t bc_send_ts[RING];
static uint64_t t_setup_start, t_all_open, t_settled;
static int settle_timed_out;

/* latency samples (microseconds) */
static double *lat;
static size_t lat_n, lat_cap;

/* idle mode */
static long rss0_kb = -1, rss_at_kb = -1, rss_full_kb = -1;
static uint64_t open_elapsed_ns, seg_start_ns, pause_start_ns;
static int rss_sampled;

/* many mode */
static uint64_t t_phase_ns, t_bsend;
static long rss_many_kb = -1, rss_after_bcast_kb = -1;
static double idle_srv0 = -1, idle_srv1 = -1, idle_lg0, idle_lg1, idle_s;
static double bcast_srv0 = -1, bcast_srv1 = -1;
static int n_bcasts_done, bc_got;
static double bcast_first_ms[MAX_BCASTS], bcast_all_ms[MAX_BCASTS];
static uint64_t bc_first_ns;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double own_cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void fatal(const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    for (char *p = buf; *p; p++)
        if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20) *p = ' ';
    printf("{\"error\":\"%s\"}\n", buf);
    fflush(stdout);
    exit(2);
}

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n);
    if (!q) fatal("out of memory");
    return q;
}

/* CPU seconds (utime + stime) of one process, from /proc/PID/stat */
static double pid_cpu_s(int pid) {
    if (pid <= 0) return -1;
    char path[64], buf[2048];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return -1;
    p += 2; /* now at field 3 (state) */
    unsigned long long utime = 0, stime = 0;
    /* fields 3..13 skipped, 14 utime, 15 stime */
    for (int field = 3; field < 14; field++) {
        p = strchr(p, ' ');
        if (!p) return -1;
        p++;
    }
    if (sscanf(p, "%llu %llu", &utime, &stime) != 2) return -1;
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

/* CPU seconds of the server and the --extra-pid processes (each into `each`), summed; -1 if any is unreadable */
static double server_cpu_s(double *each) {
    double sum = each[0] = pid_cpu_s(opt.server_pid);
    for (int i = 0; i < n_extra; i++) {
        each[1 + i] = pid_cpu_s(extra_pids[i]);
        if (each[1 + i] < 0) sum = -1;
        if (sum >= 0) sum += each[1 + i];
    }
    return sum;
}

/* the port connection `c` talks to */
static int conn_port(const conn_t *c) {
    return (opt.port2 > 0 && c != sender && (c->idx & 1)) ? opt.port2 : opt.port;
}

/* busy seconds (all but idle and iowait) of each CPU, from /proc/stat; returns the count */
static int cpu_busy_s(double *busy) {
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return 0;
    char line[512];
    int n = 0;
    double tick = (double)sysconf(_SC_CLK_TCK);
    while (fgets(line, sizeof line, f) && n < MAX_CPUS) {
        unsigned long long v[8] = {0};
        int cpu;
        if (strncmp(line, "cpu", 3) != 0 || line[3] < '0' || line[3] > '9') continue;
        if (sscanf(line, "cpu%d %llu %llu %llu %llu %llu %llu %llu %llu", &cpu, &v[0], &v[1], &v[2], &v[3], &v[4],
                   &v[5], &v[6], &v[7]) < 9)
            continue;
        busy[n++] = (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / tick;
    }
    fclose(f);
    return n;
}

static long server_rss_kb(void) {
    if (opt.server_pid <= 0) return -1;
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", opt.server_pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long kb = -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kb = strtol(line + 6, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kb;
}

/* ---------------------------------------------------------------- frames */

static size_t build_frame(unsigned char *out, int opcode, const unsigned char *payload, size_t len) {
    static const unsigned char mask[4] = {MASK0, MASK1, MASK2, MASK3};
    size_t h = 0;
    out[h++] = (unsigned char)(0x80 | opcode);
    if (len < 126) {
        out[h++] = (unsigned char)(0x80 | len);
    } else if (len < 65536) {
        out[h++] = 0x80 | 126;
        out[h++] = (unsigned char)(len >> 8);
        out[h++] = (unsigned char)len;
    } else {
        out[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--) out[h++] = (unsigned char)((uint64_t)len >> (8 * i));
    }
    memcpy(out + h, mask, 4);
    h += 4;
    for (size_t i = 0; i < len; i++) out[h + i] = payload[i] ^ mask[i & 3];
    return h + len;
}

/* a masked text frame of `tmpl` with {i} replaced by idx; *len set; malloc'd */
static unsigned char *template_frame(const char *tmpl, int idx, size_t *len) {
    size_t cap = strlen(tmpl) + 64;
    for (const char *p = tmpl; (p = strstr(p, "{i}")); p += 3) cap += 16;
    char *text = malloc(cap);
    size_t o = 0;
    for (const char *p = tmpl; *p; p++) {
        if (p[0] == '{' && p[1] == 'i' && p[2] == '}') {
            o += (size_t)snprintf(text + o, cap - o, "%d", idx);
            p += 2;
        } else {
            text[o++] = *p;
        }
    }
    unsigned char *frame = malloc(o + 14);
    if (!text || !frame) fatal("out of memory");
    *len = build_frame(frame, 0x1, (const unsigned char *)text, o);
    free(text);
    return frame;
}

static int count_hits(const unsigned char *p, size_t len, const char *needle) {
    size_t nl = strlen(needle);
    int hits = 0;
    const unsigned char *s = p, *end = p + len;
    while (s < end) {
        const unsigned char *k = memmem(s, (size_t)(end - s), needle, nl);
        if (!k) break;
        hits++;
        s = k + nl;
    }
    return hits;
}

static void connect_more(void);

static void ep_set(conn_t *c, int want_out) {
    if (c->state == ST_CLOSED || c->epout == want_out) return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->epout = want_out;
}

static void conn_close(conn_t *c, const char *why) {
    if (c->state == ST_CLOSED) return;
    int was_open = c->state == ST_OPEN;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->state = ST_CLOSED;
    if (phase == PH_SETUP || phase == PH_PAUSE || opt.mode == MODE_IDLE || opt.mode == MODE_MANY)
        fatal("connection %d failed during setup: %s", c->idx, why);
    if (was_open) n_open--;
    n_closed++;
    if (c == sender) fatal("sender connection lost: %s", why);
}

static void conn_queue(conn_t *c, const unsigned char *data, size_t len) {
    if (c->woff > 0 && c->wlen + len > c->wcap) {
        memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
        c->wlen -= c->woff;
        c->woff = 0;
    }
    if (c->wlen + len > c->wcap) {
        size_t cap = c->wcap ? c->wcap : 4096;
        while (cap < c->wlen + len) cap *= 2;
        c->wbuf = xrealloc(c->wbuf, cap);
        c->wcap = cap;
    }
    memcpy(c->wbuf + c->wlen, data, len);
    c->wlen += len;
}

static void conn_flush(conn_t *c) {
    if (c->state == ST_CLOSED || c->state == ST_CONNECTING) return;
    while (c->woff < c->wlen) {
        ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
        if (n > 0) {
            c->woff += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else {
            conn_close(c, strerror(errno));
            return;
        }
    }
    if (c->woff == c->wlen) c->woff = c->wlen = 0;
    ep_set(c, c->wlen > 0);
}

/* does a JSON text contain "type" : "<opt.json_type>" (whitespace tolerant)? */
static int json_type_match(const unsigned char *p, size_t len) {
    static const char key[] = "\"type\"";
    size_t tlen = strlen(opt.json_type);
    const unsigned char *end = p + len;
    const unsigned char *s = p;
    while (s < end) {
        const unsigned char *k = memmem(s, (size_t)(end - s), key, sizeof key - 1);
        if (!k) return 0;
        const unsigned char *q = k + sizeof key - 1;
        while (q < end && (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')) q++;
        if (q < end && *q == ':') {
            q++;
            while (q < end && (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')) q++;
            if (q + tlen + 2 <= end && *q == '"' && memcmp(q + 1, opt.json_type, tlen) == 0 &&
                q[1 + tlen] == '"')
                return 1;
        }
        s = k + 1;
    }
    return 0;
}

static void lat_add(double us) {
    if (lat_n == lat_cap) {
        lat_cap = lat_cap ? lat_cap * 2 : 65536;
        lat = xrealloc(lat, lat_cap * sizeof *lat);
    }
    lat[lat_n++] = us;
}

static void echo_send(conn_t *c, uint64_t now) {
    if (c->msg)
        conn_queue(c, c->msg, c->msg_len);
    else
        conn_queue(c, msg_frame, msg_frame_len);
    if (c->q_len < MAX_INFLIGHT) {
        c->sent_ts[(c->q_head + c->q_len) % MAX_INFLIGHT] = now;
        c->q_len++;
    }
}

static void bcast_pump(uint64_t now) {
    if (phase != PH_RUN) return;
    int any = 0;
    while (sent < completed + (uint64_t)opt.inflight && now < t_end) {
        bc_send_ts[sent % RING] = now;
        if (sender->msg)
            conn_queue(sender, sender->msg, sender->msg_len);
        else
            conn_queue(sender, msg_frame, msg_frame_len);
        sent++;
        any = 1;
    }
    if (any) conn_flush(sender);
}

static void on_message(conn_t *c, int opcode, int matched, uint64_t now) {
    if (c->init_left > 0) {
        if (opcode == 1 && --c->init_left == 0) {
            n_ready++;
            if (opt.mode == MODE_IDLE || opt.mode == MODE_MANY) connect_more();
        }
        return;
    }
    if (opt.mode == MODE_SUB) {
        if (phase == PH_RUN && opcode == 1) total_rx += (uint64_t)matched;
        return;
    }
    if (opt.mode == MODE_MANY) {
        (void)matched;
        if (phase != PH_BRUN || opcode != 1) return;
        if (bc_got++ == 0) bc_first_ns = now;
        if (bc_got == nconns) {
            bcast_first_ms[n_bcasts_done] = (double)(bc_first_ns - t_bsend) / 1e6;
            bcast_all_ms[n_bcasts_done] = (double)(now - t_bsend) / 1e6;
            n_bcasts_done++;
            phase = PH_BQUIET;
            t_phase_ns = now;
        }
        (void)c;
        return;
    }
    if (phase != PH_RUN || opcode != 1) return;
    if (opt.mode == MODE_ECHO) {
        c->count++;
        total_rx++;
        if (c->q_len > 0) {
            uint64_t ts = c->sent_ts[c->q_head];
            c->q_head = (c->q_head + 1) % MAX_INFLIGHT;
            c->q_len--;
            if (now >= t_start && now < t_end) lat_add((double)(now - ts) / 1000.0);
        }
        if (now < t_end) echo_send(c, now);
    } else if (opt.mode == MODE_BCAST) {
        if (c == sender) return;
        for (; matched > 0; matched--) {
            uint64_t idx = c->count;
            if (idx >= sent) {
                stray++;
                return;
            }
            c->count++;
            total_rx++;
            if (++reached[idx % RING] >= (uint32_t)nreceivers) {
                while (completed < sent && reached[completed % RING] >= (uint32_t)nreceivers) {
                    reached[completed % RING] = 0;
                    if (now >= t_start && now < t_end)
                        lat_add((double)(now - bc_send_ts[completed % RING]) / 1000.0);
                    completed++;
                }
                bcast_pump(now);
            }
        }
    }
}

static void handle_frame(conn_t *c, int fin, int op, const unsigned char *pl, size_t len, uint64_t now) {
    switch (op) {
    case 0x9: { /* ping -> pong */
        unsigned char out[256];
        if (len > 125) len = 125;
        size_t n = build_frame(out, 0xA, pl, len);
        conn_queue(c, out, n);
        break;
    }
    case 0xA:
        break;
    case 0x8:
        conn_close(c, "server sent close");
        break;
    case 0x0:
    case 0x1:
    case 0x2:
        if (op != 0) {
            c->frag_op = op;
            c->frag_match = 0;
        }
        if (c->frag_op == 1 && opt.fail_on && memmem(pl, len, opt.fail_on, strlen(opt.fail_on))) {
            char text[161];
            size_t tl = len < 160 ? len : 160;
            memcpy(text, pl, tl);
            text[tl] = 0;
            fatal("connection %d got %s", c->idx, text);
        }
        if (opt.match) {
            /* a needle split over two fragments is not counted: frames here are small */
            if (c->frag_op == 1) c->frag_match += count_hits(pl, len, opt.match);
        } else if (opt.json_type && !c->frag_match && c->frag_op == 1) {
            c->frag_match = json_type_match(pl, len);
        }
        if (fin) on_message(c, c->frag_op, (opt.json_type || opt.match) ? c->frag_match : 1, now);
        break;
    default:
        conn_close(c, "bad opcode");
    }
}

static void parse_frames(conn_t *c, uint64_t now) {
    size_t off = 0;
    while (c->state == ST_OPEN) {
        size_t avail = c->rlen - off;
        if (avail < 2) break;
        unsigned char *p = c->rbuf + off;
        int fin = p[0] & 0x80, op = p[0] & 0x0f, masked = p[1] & 0x80;
        uint64_t len = p[1] & 0x7f;
        size_t hdr = 2;
        if (len == 126) {
            if (avail < 4) break;
            len = ((uint64_t)p[2] << 8) | p[3];
            hdr = 4;
        } else if (len == 127) {
            if (avail < 10) break;
            len = 0;
            for (int i = 0; i < 8; i++) len = (len << 8) | p[2 + i];
            hdr = 10;
        }
        if (masked) hdr += 4;
        if (len > (1ull << 30)) {
            conn_close(c, "frame too large");
            return;
        }
        if (avail < hdr + len) {
            size_t need = off == 0 ? hdr + len : 0;
            if (need > c->rcap) {
                c->rbuf = xrealloc(c->rbuf, need);
                c->rcap = need;
            }
            break;
        }
        unsigned char *pl = p + hdr;
        if (masked)
            for (uint64_t i = 0; i < len; i++) pl[i] ^= p[hdr - 4 + (i & 3)];
        handle_frame(c, fin, op, pl, (size_t)len, now);
        off += hdr + len;
    }
    if (c->state == ST_CLOSED) return;
    if (off > 0) {
        memmove(c->rbuf, c->rbuf + off, c->rlen - off);
        c->rlen -= off;
    }
}

static void on_open(conn_t *c);

static void on_readable(conn_t *c) {
    for (;;) {
        if (c->rcap - c->rlen < 4096) {
            size_t cap = c->rcap ? c->rcap * 2 : 8192;
            c->rbuf = xrealloc(c->rbuf, cap);
            c->rcap = cap;
        }
        size_t space = c->rcap - c->rlen;
        ssize_t n = read(c->fd, c->rbuf + c->rlen, space);
        if (n > 0) {
            uint64_t now = now_ns();
            last_rx_ns = now;
            c->rlen += (size_t)n;
            if (c->state == ST_HANDSHAKE) {
                unsigned char *e = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
                if (!e) {
                    if (c->rlen > 65536) conn_close(c, "handshake response too large");
                    if (c->state == ST_CLOSED) return;
                    continue;
                }
                if (c->rlen < 12 || memcmp(c->rbuf, "HTTP/1.1 101", 12) != 0) {
                    char status[64] = {0};
                    size_t sl = 0;
                    while (sl < c->rlen && sl < sizeof status - 1 && c->rbuf[sl] != '\r') {
                        status[sl] = (char)c->rbuf[sl];
                        sl++;
                    }
                    conn_close(c, status);
                    return;
                }
                size_t hlen = (size_t)(e - c->rbuf) + 4;
                memmove(c->rbuf, c->rbuf + hlen, c->rlen - hlen);
                c->rlen -= hlen;
                c->state = ST_OPEN;
                n_open++;
                on_open(c);
            }
            if (c->state == ST_OPEN) parse_frames(c, now);
            if (c->state == ST_CLOSED) return;
            if ((size_t)n < space) break;
            continue;
        }
        if (n == 0) {
            conn_close(c, "connection closed by server");
            return;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        conn_close(c, strerror(errno));
        return;
    }
    conn_flush(c);
}

/* ------------------------------------------------------------ connecting */

static void expand_path(char *out, size_t cap, const char *tmpl, int idx) {
    size_t o = 0;
    for (const char *p = tmpl; *p && o + 16 < cap; p++) {
        if (p[0] == '{' && p[1] == 'i' && p[2] == '}') {
            o += (size_t)snprintf(out + o, cap - o, "%d", idx);
            p += 2;
        } else {
            out[o++] = *p;
        }
    }
    out[o] = 0;
}

static void start_connect(conn_t *c) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) fatal("socket: %s (connection %d)", strerror(errno), c->idx);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (opt.sources > 0) {
        struct sockaddr_in src = {.sin_family = AF_INET, .sin_port = 0};
        src.sin_addr.s_addr = htonl(0x7f000001u + (uint32_t)(c->idx % opt.sources));
        /* the port is picked at connect(), per destination, not from the ephemeral range at bind() */
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(fd, (const struct sockaddr *)&src, sizeof src) < 0)
            fatal("bind 127.0.0.%d: %s (connection %d)", 1 + c->idx % opt.sources, strerror(errno), c->idx);
    }
    c->fd = fd;
    c->state = ST_CONNECTING;
    const struct sockaddr_in *to = conn_port(c) == opt.port ? &addr : &addr2;
    if (connect(fd, (const struct sockaddr *)to, sizeof *to) < 0 && errno != EINPROGRESS)
        fatal("connect: %s (connection %d)", strerror(errno), c->idx);
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) fatal("epoll_ctl: %s", strerror(errno));
    c->epout = 1;
}

static void on_connected(conn_t *c) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) fatal("connect: %s (connection %d)", strerror(err), c->idx);
    char path[512], req[1024];
    const char *tmpl = (c == sender && opt.sender_path) ? opt.sender_path : opt.path;
    expand_path(path, sizeof path, tmpl, c->idx);
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: " WS_KEY "\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     path, opt.host, conn_port(c));
    c->state = ST_HANDSHAKE;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->epout = 0;
    conn_queue(c, (const unsigned char *)req, (size_t)n);
    conn_flush(c);
}

static void connect_more(void) {
    while (initiated < target && initiated - n_ready < opt.max_pending) {
        start_connect(&conns[initiated]);
        initiated++;
    }
}

static void on_open(conn_t *c) {
    for (int i = 0; i < opt.n_init; i++) {
        size_t len;
        unsigned char *frame = template_frame(opt.init[i], c->idx, &len);
        conn_queue(c, frame, len);
        free(frame);
    }
    c->init_left = opt.init_replies;
    if (c->init_left == 0) n_ready++;
    connect_more();
}

/* ------------------------------------------------------------ phases */

static void begin_window(uint64_t now) {
    window_started = 1;
    w_start_ns = now;
    rx_at_start = total_rx;
    completed_at_start = completed;
    srv_cpu0 = server_cpu_s(pid_cpu0);
    lg_cpu0 = own_cpu_s();
    n_cpus = cpu_busy_s(sys_busy0);
}

static void end_window(uint64_t now) {
    w_end_ns = now;
    rx_at_end = total_rx;
    completed_at_end = completed;
    srv_cpu1 = server_cpu_s(pid_cpu1);
    lg_cpu1 = own_cpu_s();
    if (cpu_busy_s(sys_busy1) != n_cpus) n_cpus = 0;
    phase = PH_DONE;
}

static void start_run(uint64_t now) {
    phase = PH_RUN;
    t_run = now;
    t_start = now + (uint64_t)(opt.warmup * 1e9);
    t_end = t_start + (uint64_t)(opt.duration * 1e9);
    if (opt.mode == MODE_ECHO) {
        for (int i = 0; i < nconns; i++) {
            conn_t *c = &conns[i];
            for (int k = 0; k < opt.inflight; k++) echo_send(c, now);
            conn_flush(c);
        }
    } else if (opt.mode == MODE_BCAST) {
        for (int i = 0; i < nconns; i++) conns[i].count = 0;
        bcast_pump(now);
    }
}

/* many mode: after the settle pause, the idle window and then the broadcasts */
static void step_many(uint64_t now) {
    switch (phase) {
    case PH_PAUSE: {
        uint64_t until = pause_start_ns + (uint64_t)(opt.rss_settle * 1e9);
        if (now < until) return;
        rss_many_kb = server_rss_kb();
        phase = PH_IDLE;
        t_phase_ns = w_start_ns = now_ns();
        idle_srv0 = server_cpu_s(pid_cpu0);
        idle_lg0 = own_cpu_s();
        n_cpus = cpu_busy_s(sys_busy0);
        return;
    }
    case PH_IDLE: {
        uint64_t until = t_phase_ns + (uint64_t)(opt.idle * 1e9);
        if (now < until) return;
        w_end_ns = now;
        idle_srv1 = server_cpu_s(pid_cpu1);
        idle_lg1 = own_cpu_s();
        if (cpu_busy_s(sys_busy1) != n_cpus) n_cpus = 0;
        idle_s = (double)(w_end_ns - w_start_ns) / 1e9;
        bcast_srv0 = server_cpu_s(pid_cpu0);
        phase = PH_BQUIET;
        t_phase_ns = now;
        return;
    }
    case PH_BQUIET: {
        if (n_bcasts_done >= opt.broadcasts) {
            bcast_srv1 = server_cpu_s(pid_cpu0);
            rss_after_bcast_kb = server_rss_kb();
            phase = PH_DONE;
            return;
        }
        uint64_t from = last_rx_ns > t_phase_ns ? last_rx_ns : t_phase_ns;
        if (now < from + (uint64_t)(opt.quiet * 1e9)) return;
        bc_got = 0;
        t_bsend = now_ns();
        phase = PH_BRUN;
        if (conns[0].msg)
            conn_queue(&conns[0], conns[0].msg, conns[0].msg_len);
        else
            conn_queue(&conns[0], msg_frame, msg_frame_len);
        conn_flush(&conns[0]);
        return;
    }
    case PH_BRUN:
        if (now - t_bsend > (uint64_t)(opt.timeout * 1e9))
            fatal("broadcast %d reached %d of %d connections in %.1fs", n_bcasts_done + 1, bc_got, nconns,
                  opt.timeout);
        return;
    default:
        return;
    }
}

/* returns epoll timeout in ms */
static int step(uint64_t now) {
    uint64_t next = now + 50000000ull;
    switch (phase) {
    case PH_SETUP:
        if (now - t_setup_start > (uint64_t)(opt.timeout * 1e9))
            fatal("timeout: %d of %d connections open (%d ready) after %.1fs", n_open, nconns, n_ready, opt.timeout);
        if (opt.mode == MODE_IDLE || opt.mode == MODE_MANY) {
            if (n_ready == target) {
                open_elapsed_ns += now - seg_start_ns;
                if (target < nconns) {
                    phase = PH_PAUSE;
                    pause_start_ns = now;
                } else {
                    t_all_open = now;
                    phase = PH_PAUSE;
                    pause_start_ns = now;
                }
            }
            break;
        }
        if (n_ready == nconns) {
            t_all_open = now;
            if (opt.mode == MODE_BCAST || opt.mode == MODE_SUB) {
                phase = PH_SETTLE;
                if (last_rx_ns < now) last_rx_ns = now;
            } else {
                start_run(now);
            }
        }
        break;
    case PH_PAUSE: /* many mode: see step_many */
    case PH_IDLE:
    case PH_BQUIET:
    case PH_BRUN:
        if (opt.mode == MODE_MANY) {
            step_many(now);
            if (phase == PH_DONE) return 0;
            next = now + 10000000ull; /* 10 ms: the phases above check their deadlines */
            break;
        }
        if (phase != PH_PAUSE) break;
        { /* idle mode: let the server settle, then sample RSS */
        uint64_t until = pause_start_ns + (uint64_t)(opt.rss_settle * 1e9);
        if (now >= until) {
            if (!rss_sampled && target < nconns) {
                rss_at_kb = server_rss_kb();
                rss_sampled = 1;
                target = nconns;
                phase = PH_SETUP;
                seg_start_ns = now_ns();
                connect_more();
            } else {
                if (!rss_sampled) {
                    rss_at_kb = server_rss_kb();
                    rss_sampled = 1;
                }
                rss_full_kb = server_rss_kb();
                phase = PH_DONE;
            }
        } else if (until < next) {
            next = until;
        }
        break;
    }
    case PH_SETTLE: {
        uint64_t quiet_at = last_rx_ns + (uint64_t)(opt.quiet * 1e9);
        if (now >= quiet_at) {
            t_settled = now;
            if (opt.mode == MODE_SUB) {
                printf("{\"ready\":true}\n");
                fflush(stdout);
            }
            start_run(now);
        } else if (now - t_all_open > (uint64_t)(opt.settle_max * 1e9)) {
            settle_timed_out = 1;
            t_settled = now;
            if (opt.mode == MODE_SUB) {
                printf("{\"ready\":true}\n");
                fflush(stdout);
            }
            start_run(now);
        } else if (quiet_at < next) {
            next = quiet_at;
        }
        break;
    }
    case PH_RUN:
        if (!window_started) {
            if (now >= t_start)
                begin_window(now);
            else if (t_start < next)
                next = t_start;
        }
        if (window_started) {
            if (now >= t_end)
                end_window(now);
            else if (t_end < next)
                next = t_end;
        }
        break;
    default:
        break;
    }
    if (next <= now) return 0;
    return (int)((next - now + 999999) / 1000000);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(double p) {
    if (lat_n == 0) return -1;
    size_t i = (size_t)(p * (double)lat_n);
    if (i >= lat_n) i = lat_n - 1;
    return lat[i];
}

static void put_num(const char *key, double v, int last) {
    if (v < 0)
        printf("\"%s\":null%s", key, last ? "" : ",");
    else
        printf("\"%s\":%.6g%s", key, v, last ? "" : ",");
}

static void put_list(const char *key, const double *v, int n) {
    printf("\"%s\":[", key);
    for (int i = 0; i < n; i++) printf("%s%.3f", i ? "," : "", v[i]);
    printf("],");
}

static double median(const double *v, int n) {
    if (n == 0) return -1;
    double tmp[MAX_BCASTS];
    memcpy(tmp, v, (size_t)n * sizeof *v);
    qsort(tmp, (size_t)n, sizeof *tmp, cmp_double);
    return n % 2 ? tmp[n / 2] : (tmp[n / 2 - 1] + tmp[n / 2]) / 2;
}

static void report_many(void) {
    double srv = (idle_srv0 >= 0 && idle_srv1 >= 0) ? idle_srv1 - idle_srv0 : -1;
    double bsrv = (bcast_srv0 >= 0 && bcast_srv1 >= 0) ? bcast_srv1 - bcast_srv0 : -1;
    printf("{\"mode\":\"many\",\"conns\":%d,\"sources\":%d,\"broadcasts\":%d,", nconns, opt.sources,
           n_bcasts_done);
    put_num("open_s", (double)(t_all_open - t_setup_start) / 1e9, 0);
    put_num("rss_before_kb", (double)rss0_kb, 0);
    put_num("rss_kb", (double)rss_many_kb, 0);
    put_num("rss_after_bcast_kb", (double)rss_after_bcast_kb, 0);
    put_num("rss_per_conn_bytes",
            (rss0_kb >= 0 && rss_many_kb >= 0) ? (double)(rss_many_kb - rss0_kb) * 1024.0 / nconns : -1, 0);
    put_num("window_s", idle_s, 0);
    put_num("server_cpu_s", srv, 0);
    put_num("server_cpu_pct", srv >= 0 && idle_s > 0 ? 100.0 * srv / idle_s : -1, 0);
    put_num("loadgen_cpu_pct", idle_s > 0 ? 100.0 * (idle_lg1 - idle_lg0) / idle_s : -1, 0);
    printf("\"cpu_busy_pct\":[");
    for (int i = 0; i < n_cpus; i++) printf("%s%.1f", i ? "," : "", 100.0 * (sys_busy1[i] - sys_busy0[i]) / idle_s);
    printf("],");
    put_list("bcast_first_ms", bcast_first_ms, n_bcasts_done);
    put_list("bcast_all_ms_each", bcast_all_ms, n_bcasts_done);
    put_num("bcast_all_ms", median(bcast_all_ms, n_bcasts_done), 0);
    put_num("bcast_server_cpu_s", bsrv, 0);
    printf("\"closed\":%d}\n", n_closed);
}

static void report(void) {
    if (opt.mode == MODE_MANY) {
        report_many();
        return;
    }
    if (opt.mode == MODE_IDLE) {
        double per_at = (rss0_kb >= 0 && rss_at_kb >= 0 && opt.rss_at > 0)
                            ? (double)(rss_at_kb - rss0_kb) * 1024.0 / opt.rss_at
                            : -1;
        double per_full =
            (rss0_kb >= 0 && rss_full_kb >= 0) ? (double)(rss_full_kb - rss0_kb) * 1024.0 / nconns : -1;
        printf("{\"mode\":\"idle\",\"conns\":%d,\"rss_at\":%d,", nconns, opt.rss_at);
        put_num("open_s", (double)open_elapsed_ns / 1e9, 0);
        put_num("rss_before_kb", (double)rss0_kb, 0);
        put_num("rss_at_kb", (double)rss_at_kb, 0);
        put_num("rss_full_kb", (double)rss_full_kb, 0);
        put_num("rss_per_conn_at_bytes", per_at, 0);
        put_num("rss_per_conn_full_bytes", per_full, 1);
        printf("}\n");
        return;
    }
    double window = (double)(w_end_ns - w_start_ns) / 1e9;
    double srv = (srv_cpu0 >= 0 && srv_cpu1 >= 0) ? srv_cpu1 - srv_cpu0 : -1;
    double lg = lg_cpu1 - lg_cpu0;
    uint64_t rx = rx_at_end - rx_at_start;
    double mean = 0;
    for (size_t i = 0; i < lat_n; i++) mean += lat[i];
    mean = lat_n ? mean / (double)lat_n : -1;
    qsort(lat, lat_n, sizeof *lat, cmp_double);
    printf("{\"mode\":\"%s\",\"conns\":%d,\"inflight\":%d,\"size\":%d,",
           opt.mode == MODE_ECHO ? "echo" : opt.mode == MODE_SUB ? "sub" : "bcast",
           opt.mode == MODE_BCAST ? nreceivers : nconns, opt.inflight, opt.size);
    put_num("connect_s", (double)(t_all_open - t_setup_start) / 1e9, 0);
    put_num("window_s", window, 0);
    if (opt.mode == MODE_ECHO) {
        printf("\"messages\":%llu,", (unsigned long long)rx);
        put_num("msg_per_s", (double)rx / window, 0);
    } else if (opt.mode == MODE_SUB) {
        put_num("settle_s", (double)(t_settled - t_all_open) / 1e9, 0);
        printf("\"deliveries\":%llu,", (unsigned long long)rx);
        put_num("deliveries_per_s", (double)rx / window, 0);
    } else {
        uint64_t done = completed_at_end - completed_at_start;
        put_num("settle_s", (double)(t_settled - t_all_open) / 1e9, 0);
        printf("\"settle_timed_out\":%s,\"stray\":%llu,", settle_timed_out ? "true" : "false",
               (unsigned long long)stray);
        printf("\"messages\":%llu,\"deliveries\":%llu,", (unsigned long long)done, (unsigned long long)rx);
        put_num("msg_per_s", (double)done / window, 0);
        put_num("deliveries_per_s", (double)rx / window, 0);
    }
    printf("\"lat_samples\":%zu,", lat_n);
    put_num("lat_p50_us", pct(0.50), 0);
    put_num("lat_p99_us", pct(0.99), 0);
    put_num("lat_mean_us", mean, 0);
    put_num("loadgen_cpu_s", lg, 0);
    put_num("loadgen_cpu_pct", 100.0 * lg / window, 0);
    put_num("server_cpu_s", srv, 0);
    put_num("server_cpu_pct", srv >= 0 ? 100.0 * srv / window : -1, 0);
    printf("\"server_cpu_each_pct\":[");
    for (int i = 0; i <= n_extra; i++) {
        double d = (pid_cpu0[i] >= 0 && pid_cpu1[i] >= 0) ? 100.0 * (pid_cpu1[i] - pid_cpu0[i]) / window : -1;
        if (d < 0)
            printf("%snull", i ? "," : "");
        else
            printf("%s%.1f", i ? "," : "", d);
    }
    printf("],");
    printf("\"cpu_busy_pct\":[");
    for (int i = 0; i < n_cpus; i++) printf("%s%.1f", i ? "," : "", 100.0 * (sys_busy1[i] - sys_busy0[i]) / window);
    printf("],\"closed\":%d}\n", n_closed);
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --mode echo|bcast|idle|many|sub --port P [--port2 P2] [--host 127.0.0.1] [--path /ws]\n"
            "  [--sender-path P] [--conns N] [--inflight K] [--size BYTES] [--warmup S]\n"
            "  [--duration S] [--server-pid PID] [--extra-pid PID]... [--json-type T] [--quiet S] [--settle-max S]\n"
            "  [--rss-at M] [--rss-settle S] [--max-pending P] [--timeout S]\n"
            "  [--sources K] [--idle S] [--broadcasts B]\n"
            "  [--init TEXT]... [--init-replies R] [--message TEXT] [--match TEXT] [--fail-on TEXT]\n"
            "  paths may contain {i}, replaced by the connection index;\n"
            "  with --port2, odd-index connections (not the bcast sender) use P2\n");
    exit(64);
}

int main(int argc, char **argv) {
    static struct option longopts[] = {
        {"mode", required_argument, 0, 'm'},       {"host", required_argument, 0, 'H'},
        {"port", required_argument, 0, 'p'},       {"path", required_argument, 0, 'P'},
        {"sender-path", required_argument, 0, 'S'}, {"conns", required_argument, 0, 'c'},
        {"inflight", required_argument, 0, 'k'},   {"size", required_argument, 0, 's'},
        {"warmup", required_argument, 0, 'w'},     {"duration", required_argument, 0, 'd'},
        {"server-pid", required_argument, 0, 'x'}, {"json-type", required_argument, 0, 'j'},
        {"quiet", required_argument, 0, 'q'},      {"settle-max", required_argument, 0, 'Q'},
        {"rss-at", required_argument, 0, 'r'},     {"rss-settle", required_argument, 0, 'R'},
        {"max-pending", required_argument, 0, 'n'}, {"timeout", required_argument, 0, 't'},
        {"port2", required_argument, 0, 'o'},      {"extra-pid", required_argument, 0, 'e'},
        {"sources", required_argument, 0, 'K'},    {"idle", required_argument, 0, 'I'},
        {"broadcasts", required_argument, 0, 'B'},
        {"init", required_argument, 0, 'i'},       {"init-replies", required_argument, 0, 'y'},
        {"message", required_argument, 0, 'M'},    {"match", required_argument, 0, 'X'},
        {"fail-on", required_argument, 0, 'F'},
        {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'm':
            if (strcmp(optarg, "echo") == 0)
                opt.mode = MODE_ECHO;
            else if (strcmp(optarg, "bcast") == 0)
                opt.mode = MODE_BCAST;
            else if (strcmp(optarg, "idle") == 0)
                opt.mode = MODE_IDLE;
            else if (strcmp(optarg, "many") == 0)
                opt.mode = MODE_MANY;
            else if (strcmp(optarg, "sub") == 0)
                opt.mode = MODE_SUB;
            else
                usage();
            break;
        case 'H': opt.host = optarg; break;
        case 'p': opt.port = atoi(optarg); break;
        case 'P': opt.path = optarg; break;
        case 'S': opt.sender_path = optarg; break;
        case 'c': opt.conns = atoi(optarg); break;
        case 'k': opt.inflight = atoi(optarg); break;
        case 's': opt.size = atoi(optarg); break;
        case 'w': opt.warmup = atof(optarg); break;
        case 'd': opt.duration = atof(optarg); break;
        case 'x': opt.server_pid = atoi(optarg); break;
        case 'j': opt.json_type = optarg; break;
        case 'q': opt.quiet = atof(optarg); break;
        case 'Q': opt.settle_max = atof(optarg); break;
        case 'r': opt.rss_at = atoi(optarg); break;
        case 'R': opt.rss_settle = atof(optarg); break;
        case 'n': opt.max_pending = atoi(optarg); break;
        case 't': opt.timeout = atof(optarg); break;
        case 'o': opt.port2 = atoi(optarg); break;
        case 'K': opt.sources = atoi(optarg); break;
        case 'I': opt.idle = atof(optarg); break;
        case 'B': opt.broadcasts = atoi(optarg); break;
        case 'i':
            if (opt.n_init == 8) usage();
            opt.init[opt.n_init++] = optarg;
            break;
        case 'y': opt.init_replies = atoi(optarg); break;
        case 'M': opt.message = optarg; break;
        case 'X': opt.match = optarg; break;
        case 'F': opt.fail_on = optarg; break;
        case 'e':
            if (n_extra == MAX_EXTRA) usage();
            extra_pids[n_extra++] = atoi(optarg);
            break;
        default: usage();
        }
    }
    if (opt.port <= 0 || opt.conns <= 0 || opt.inflight <= 0 || opt.inflight > MAX_INFLIGHT || opt.size < 0 ||
        opt.max_pending <= 0 || opt.sources < 0 || opt.sources > 254 || opt.broadcasts < 0 ||
        opt.broadcasts > MAX_BCASTS || opt.init_replies < 0)
        usage();

    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)opt.port);
    if (inet_pton(AF_INET, opt.host, &addr.sin_addr) != 1) fatal("bad host %s", opt.host);
    addr2 = addr;
    addr2.sin_port = htons((uint16_t)(opt.port2 > 0 ? opt.port2 : opt.port));

    unsigned char *payload = malloc((size_t)opt.size + 1);
    for (int i = 0; i < opt.size; i++) payload[i] = (unsigned char)('a' + i % 26);
    msg_frame = malloc((size_t)opt.size + 14);
    msg_frame_len = build_frame(msg_frame, 0x1, payload, (size_t)opt.size);
    free(payload);

    nconns = opt.conns;
    if (opt.mode == MODE_BCAST) {
        nreceivers = opt.conns;
        nconns = opt.conns + 1;
    }
    conns = calloc((size_t)nconns, sizeof *conns);
    if (!conns) fatal("out of memory");
    for (int i = 0; i < nconns; i++) {
        conns[i].idx = i;
        conns[i].fd = -1;
        if (opt.mode == MODE_ECHO) conns[i].sent_ts = calloc(MAX_INFLIGHT, sizeof(uint64_t));
        if (opt.message) conns[i].msg = template_frame(opt.message, i, &conns[i].msg_len);
    }
    if (opt.mode == MODE_BCAST) sender = &conns[nconns - 1];

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) fatal("epoll_create1: %s", strerror(errno));

    t_setup_start = now_ns();
    target = nconns;
    if (opt.mode == MODE_IDLE || opt.mode == MODE_MANY) {
        rss0_kb = server_rss_kb();
        if (opt.rss_at > 0 && opt.rss_at < nconns) target = opt.rss_at;
        seg_start_ns = now_ns();
    }
    connect_more();

    struct epoll_event evs[512];
    while (phase != PH_DONE) {
        int timeout = step(now_ns());
        if (phase == PH_DONE) break;
        int n = epoll_wait(epfd, evs, 512, timeout);
        if (n < 0) {
            if (errno == EINTR) continue;
            fatal("epoll_wait: %s", strerror(errno));
        }
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c->state == ST_CLOSED) continue;
            if (c->state == ST_CONNECTING) {
                on_connected(c);
                continue;
            }
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c);
            if (c->state != ST_CLOSED && (evs[i].events & EPOLLOUT)) conn_flush(c);
        }
        connect_more();
    }
    report();
    fflush(stdout);
    return 0;
}
