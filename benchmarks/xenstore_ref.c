/*
 * Reference for benchmarks/xenstore.py: a minimal XenStore-protocol request/response
 * server on a Unix socket. No database: it answers READ with a fixed value, DIRECTORY
 * with a fixed list, TRANSACTION_START with "1", everything else with "OK", and forwards
 * every WRITE as a WATCH_EVENT to connections that sent a WATCH. It measures what a bare
 * socket round trip with xsd_sockmsg framing costs, so the ratio shows pyxen's overhead.
 */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAXC 128
#define PAYLOAD_MAX 4096

struct hdr { uint32_t type, req_id, tx_id, len; };

struct conn {
    int fd, watching;
    size_t used;
    char in[65536];
    char wtoken[256];
};

static struct conn conns[MAXC];
static int nconns;

static void queue(char *out, size_t *olen, uint32_t type, uint32_t req, uint32_t tx,
                  const char *data, uint32_t len)
{
    struct hdr h = { type, req, tx, len };
    memcpy(out + *olen, &h, sizeof(h));
    memcpy(out + *olen + sizeof(h), data, len);
    *olen += sizeof(h) + len;
}

static void send_all(int fd, const char *buf, size_t len)
{
    while (len) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) { if (errno == EINTR) continue; return; }
        buf += n; len -= (size_t)n;
    }
}

static int serve(struct conn *c)
{
    static char out[1 << 20];
    size_t olen = 0, pos = 0;
    ssize_t n = read(c->fd, c->in + c->used, sizeof(c->in) - c->used);
    if (n <= 0) return -1;
    c->used += (size_t)n;
    while (c->used - pos >= sizeof(struct hdr)) {
        struct hdr h;
        memcpy(&h, c->in + pos, sizeof(h));
        if (h.len > PAYLOAD_MAX) return -1;
        if (c->used - pos < sizeof(h) + h.len) break;
        const char *p = c->in + pos + sizeof(h);
        switch (h.type) {
        case 2: queue(out, &olen, 2, h.req_id, h.tx_id, "value", 5); break;
        case 1: queue(out, &olen, 1, h.req_id, h.tx_id, "a\0b\0c\0", 6); break;
        case 6: queue(out, &olen, 6, h.req_id, h.tx_id, "1", 2); break;
        case 4: {
            size_t plen = strnlen(p, h.len);
            c->watching = 1;
            snprintf(c->wtoken, sizeof(c->wtoken), "%s", p + plen + 1);
            queue(out, &olen, 4, h.req_id, h.tx_id, "OK", 3);
            char ev[512];
            int elen = snprintf(ev, sizeof(ev), "%s%c%s", p, 0, c->wtoken) + 1;
            queue(out, &olen, 15, 0, 0, ev, (uint32_t)elen);
            break;
        }
        case 11: {
            size_t plen = strnlen(p, h.len);
            for (int i = 0; i < nconns; i++) {
                if (!conns[i].watching) continue;
                char ev[4200];
                size_t tl = strlen(conns[i].wtoken);
                memcpy(ev, p, plen + 1);
                memcpy(ev + plen + 1, conns[i].wtoken, tl + 1);
                if (&conns[i] == c) {
                    queue(out, &olen, 15, 0, 0, ev, (uint32_t)(plen + tl + 2));
                } else {
                    size_t el = 0;
                    static char eb[8192];
                    queue(eb, &el, 15, 0, 0, ev, (uint32_t)(plen + tl + 2));
                    send_all(conns[i].fd, eb, el);
                }
            }
            queue(out, &olen, 11, h.req_id, h.tx_id, "OK", 3);
            break;
        }
        default: queue(out, &olen, h.type, h.req_id, h.tx_id, "OK", 3); break;
        }
        pos += sizeof(h) + h.len;
        if (olen > sizeof(out) - 16384) { send_all(c->fd, out, olen); olen = 0; }
    }
    memmove(c->in, c->in + pos, c->used - pos);
    c->used -= pos;
    send_all(c->fd, out, olen);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 2) { fprintf(stderr, "usage: %s SOCKET\n", argv[0]); return 2; }
    int lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", argv[1]);
    unlink(argv[1]);
    if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) || listen(lfd, 64)) { perror("bind"); return 1; }
    for (;;) {
        struct pollfd pfd[MAXC + 1];
        pfd[0].fd = lfd; pfd[0].events = POLLIN;
        for (int i = 0; i < nconns; i++) { pfd[i + 1].fd = conns[i].fd; pfd[i + 1].events = POLLIN; }
        if (poll(pfd, (nfds_t)nconns + 1, -1) < 0) { if (errno == EINTR) continue; return 1; }
        for (int i = nconns - 1; i >= 0; i--) {
            if (!pfd[i + 1].revents) continue;
            if (serve(&conns[i]) < 0) { close(conns[i].fd); conns[i] = conns[--nconns]; }
        }
        if ((pfd[0].revents & POLLIN) && nconns < MAXC) {
            int fd = accept(lfd, NULL, NULL);
            if (fd >= 0) { memset(&conns[nconns], 0, sizeof(conns[0])); conns[nconns++].fd = fd; }
        }
    }
}
