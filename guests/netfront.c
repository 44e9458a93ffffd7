/*
 * netfront: Linux's xen-netfront in miniature, with a tiny IPv4 responder so that the host
 * and other guests can reach it. The guest finds its vif in XenStore, connects to the back end
 * with netfront's handshake (drivers/net/xen-netfront.c: talk_to_netback, setup_netfront,
 * write_queue_xenstore_keys, xennet_connect) and moves Ethernet frames over the netif rings of
 * Xen's public io/netif.h (included, never copied). It answers ARP, ICMP echo and UDP echo,
 * and can itself ping and send UDP.
 *
 * Store (libxl's layout; D = our domid, V = the vif's devid, 0 for the first):
 *   device/vif/V/ (ours): backend, backend-id, state, handle, mac (OUR MAC address); we write
 *     the keys below in one transaction (retried on EAGAIN), then state.
 *   the back's directory (our node backend): state, feature-rx-copy (must be 1: Linux
 *     refuses a back end without the copying receive path), feature-split-event-channels,
 *     multi-queue-max-queues, and mac (the host side's MAC, not ours).
 * V is the first entry of device/vif, or `vif=V`.
 *
 * Handshake: wait for the back's InitWait (2); queues = min(`queues=`, the back's
 * multi-queue-max-queues, absent = 1); per queue one TX and one RX ring page
 * (netif_tx_sring / netif_rx_sring, FRONT_RING_INIT) granted to backend-id, and one event
 * channel (EVTCHNOP_alloc_unbound), or two with `split=1` when the back offers
 * feature-split-event-channels. One transaction: multi-queue-num-queues (when the back wrote
 * multi-queue-max-queues, as Linux does: "1" with one queue), then for one queue tx-ring-ref,
 * rx-ring-ref, event-channel (or event-channel-tx + event-channel-rx) in our directory, for N
 * queues the same keys under queue-<i>/; request-rx-copy = 1, feature-rx-notify = 1,
 * feature-sg = 0, feature-gso-tcpv4 = 0, feature-no-csum-offload = 0. Then, as
 * xennet_connect does before the state switch, the RX rings are filled; state Connected (4)
 * (netfront skips Initialised); wait for the back's Connected; kick every port (a kick sent
 * before the back bound its end was dropped, as Xen drops a send on an unbound port).
 *
 * Data path (poll-driven: every port is masked and polled with SCHEDOP_poll, waits bounded):
 *   RX: the ring is kept full: request {id = slot, gref} for slot = index mod 256, the slot's
 *     page granted writable. A response must come in its request's slot with the same id
 *     (netif.h's rule, which Linux relies on); status is the length (or a negative
 *     NETIF_RSP_*), the frame at `offset` in the page, flags NETRXF_* (csum_blank and
 *     data_validated accepted: the checksums they cover are not verified; more_data and
 *     extra_info were not negotiated and are protocol errors). Access to the page is ended
 *     after each response, which must succeed, and the page is granted and posted again.
 *   TX: one frame per request {gref, offset, flags = 0 (checksums are computed), id, size},
 *     the buffer (half a page: frames are at most 1514 bytes) granted read-only; the response
 *     {id, status} must match a request in flight, status NETIF_RSP_OKAY, and ending access
 *     must succeed. Frames shorter than 60 bytes are padded to 60.
 *   Notifications follow io/ring.h's event indices (RING_PUSH_REQUESTS_AND_CHECK_NOTIFY,
 *   RING_FINAL_CHECK_FOR_RESPONSES): TX kicks on the TX port, RX refills on the RX port.
 *   Answers go out on the queue their request came in on; frames we start on queue 0.
 *
 * IPv4 responder (no IP options, no fragments: such packets are dropped), our address from
 * `ip=`; frames to our MAC or to broadcast:
 *   ARP request for our IP -> ARP reply (the asker's MAC learnt); ARP replies to us are
 *     learnt (RFC 826's merge: known senders are updated);
 *   ICMP echo request to our IP -> echo reply (same id, seq and data);
 *   UDP to our IP, port `echo_port` (7) -> the same payload back to the sender's address and
 *     port, from echo_port, UDP checksum computed;
 *   anything else (other addresses, protocols, ports, bad checksums) is counted (`dropped`).
 * Answers go to the request frame's source MAC.
 *
 * Modes (`mode=`):
 *   serve (default): answer until control/shutdown (watched; "poweroff" or "halt" is
 *     acknowledged by clearing the node, as Linux's manage.c does; we also write
 *     control/feature-poweroff = 1 after the watch is set), `run_s` seconds, or the back end
 *     leaving Connected (a network-detach); INFO stop says which.
 *   ping: ARP-resolve `peer` (a request each second, WAIT_BOUND_NS overall), then `count`
 *     echo requests one at a time (id 0x6e66, seq 1.., 56 data bytes: byte k = seq*7 + k mod
 *     256), each reply checked (source, id, seq, data) within WAIT_BOUND_NS. .arp_resolved,
 *     .ping.
 *   udp_send: ARP-resolve `peer`, then `count` datagrams of `size` payload bytes from port
 *     49152 to `peer`:`port`, as fast as the TX ring allows; payload: the 8-byte big-endian
 *     sequence number (0, 1, ...) then filler, byte k (k >= 8) = k mod 256; UDP checksum
 *     computed. Timed with the guest clock from the first request to the last response
 *     (udp_mbps: MB = 10^6 bytes of UDP payload per second). .arp_resolved, .udp_send (all
 *     handed to the back end, every TX response OKAY).
 * Every mode answers ARP/ICMP/UDP all along, and prints "READY <ip>" once connected with
 * the RX rings full. At the end: every TX request answered (bounded), INFO counters,
 * .tx_responses_ok, .rx_no_errors, then the close (Closing, the back's Closing/Closed,
 * Closed, the back's Closed; access to every ring and buffer page ended, our ports unbound
 * for the back again, then closed): .close.
 *
 * cmdline: ip=A.B.C.D (required), mode=serve|ping|udp_send, peer=A.B.C.D, count=N (ping 5,
 *   udp_send 100000), port=P (udp_send, required), size=S (udp_send, 8..1472, default 1400),
 *   echo_port=N (default 7), queues=N (1..4, default 1), split=0|1 (default 0), run_s=N
 *   (serve), vif=V.
 * Checks: netfront.cmdline (only when the cmdline is bad), .setup, .connect, .arp_resolved,
 *   .ping, .udp_send, .tx_responses_ok, .rx_no_errors, .close.
 * INFO keys: vif, backend, mac, ip, queues, split, then rx_frames, tx_frames, arp_replies,
 *   icmp_replies, udp_echoes, dropped, rx_errors, tx_errors, notifies, polls (and
 *   rx_frames_q<i> with several queues); serve: stop (why it stopped); ping: ping_replies,
 *   ping_rtt_avg_us, ping_rtt_max_us; udp_send: udp_sent, udp_bytes, udp_ns, udp_mbps.
 */
#include "guest.h"
#include "evtchn.h"
#include "gnttab.h"
#include "xenbus_front.h"
#include "ring.h"              /* before netif.h: Xen's io/ring.h with the kit's barriers */
#include <xen/io/netif.h>

#define MAX_QUEUES      4
#define TX_SIZE         ((unsigned)__CONST_RING_SIZE(netif_tx, PAGE_SIZE))
#define RX_SIZE         ((unsigned)__CONST_RING_SIZE(netif_rx, PAGE_SIZE))
#define TX_BUF          2048u                /* a TX buffer: half a page */
#define SECOND_NS       1000000000ULL
_Static_assert(TX_SIZE == 256 && RX_SIZE == 256, "one-page netif rings hold 256 entries");

/* Grant refs, per queue: the two ring pages, the RX slots' pages, the TX buffers. */
#define REFS_PER_QUEUE  (2 + RX_SIZE + TX_SIZE)
#define REF_QUEUE(q)    ((grant_ref_t)(GNTTAB_FIRST_REF + (q) * REFS_PER_QUEUE))
#define REF_TX_RING(q)  (REF_QUEUE(q))
#define REF_RX_RING(q)  (REF_QUEUE(q) + 1)
#define REF_RX(q, i)    (REF_QUEUE(q) + 2 + (i))
#define REF_TX(q, i)    (REF_QUEUE(q) + 2 + RX_SIZE + (i))
#define REFS_PER_FRAME  ((unsigned)(PAGE_SIZE / sizeof(grant_entry_v1_t)))
#define GT_FRAMES       ((REF_QUEUE(MAX_QUEUES) + REFS_PER_FRAME - 1) / REFS_PER_FRAME)

/* Ethernet, ARP, IPv4, ICMP, UDP (offsets into a frame). */
#define ETH_ALEN        6
#define ETH_HLEN        14
#define ETH_ZLEN        60                   /* the shortest frame (without FCS) */
#define MAX_FRAME       1514
#define ETH_P_IP        0x0800
#define ETH_P_ARP       0x0806
#define ARP_LEN         28
#define IP_HLEN         20
#define L4              (ETH_HLEN + IP_HLEN) /* ICMP or UDP header */
#define L4_DATA         (L4 + 8)             /* their data */
#define IPPROTO_ICMP_   1
#define IPPROTO_UDP_    17
#define MAX_UDP_DATA    (MAX_FRAME - L4_DATA)   /* 1472 */
#define ICMP_ECHOREPLY  0
#define ICMP_ECHO       8
#define PING_ID         0x6e66
#define PING_DATA       56
#define UDP_SPORT       49152
#define ARP_ENTRIES     8
_Static_assert(MAX_FRAME <= TX_BUF, "a frame fits a TX buffer");

static uint8_t gt_frames[GT_FRAMES][PAGE_SIZE] ALIGNED(4096);        /* grant table */
static uint8_t tx_ring_pages[MAX_QUEUES][PAGE_SIZE] ALIGNED(4096);
static uint8_t rx_ring_pages[MAX_QUEUES][PAGE_SIZE] ALIGNED(4096);
static uint8_t rx_pages[MAX_QUEUES][RX_SIZE][PAGE_SIZE] ALIGNED(4096);
static uint8_t tx_pages[MAX_QUEUES][TX_SIZE * TX_BUF / PAGE_SIZE][PAGE_SIZE] ALIGNED(4096);

/* The command line. */
enum mode { SERVE, PING, UDP_SEND };
static enum mode mode = SERVE;
static uint32_t our_ip, peer_ip;
static unsigned long count, udp_port, udp_size = 1400, echo_port = 7, want_queues = 1,
    want_split, run_s;

/* The device and the connection. */
static uint8_t our_mac[ETH_ALEN];
static const uint8_t broadcast[ETH_ALEN] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
static bool back_mq;                 /* the back wrote multi-queue-max-queues */
static unsigned nqueues;
static bool split;
static bool broken;                  /* a ring broke the protocol: the data path stopped */
struct queue {
    netif_tx_front_ring_t tx;
    netif_rx_front_ring_t rx;
    evtchn_port_t tx_port, rx_port;  /* the same port without split event channels */
    uint16_t tx_free[TX_SIZE];       /* TX ids not in flight */
    unsigned ntx_free;
    unsigned tx_queued;              /* requests put since the last push */
    bool tx_busy[TX_SIZE];
    bool tx_udp[TX_SIZE];            /* the buffer holds udp_send's frame (filler written) */
    bool rx_granted[RX_SIZE];
    unsigned long rx_frames;
};
static struct queue queues[MAX_QUEUES];

/* Counters. */
static unsigned long rx_frames, tx_frames, arp_replies, icmp_replies, udp_echoes, dropped,
    rx_errors, tx_errors, notifies, polls;
static uint16_t ip_id = 1;

/* What went wrong: the first problem and how many, for the handshake and the close (and
 * the xenbus helpers), for the RX path and for the TX path. */
struct trouble {
    unsigned long count;
    char why[256];
};
static struct trouble gen, rxt, txt;

static void vnote(struct trouble *t, const char *fmt, va_list ap)
{
    if (t->count++)
        return;
    vsnprintf(t->why, sizeof(t->why), fmt, ap);
}

/* The first trouble of a kind is kept (its reason); later ones only count. */
static void note(const char *fmt, ...) PRINTF_LIKE(1, 2);
static void note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vnote(&gen, fmt, ap);
    va_end(ap);
}

static void tnote(struct trouble *t, const char *fmt, ...) PRINTF_LIKE(2, 3);
static void tnote(struct trouble *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vnote(t, fmt, ap);
    va_end(ap);
}

static void reset_note(void)
{
    gen.count = 0;
    gen.why[0] = 0;
}

static struct xenbus_front dev = { .class = "vif", .token = "netfront", .note = note };

/* ---- bytes on the wire ------------------------------------------------------------- */
static inline uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void put16(uint8_t *p, unsigned v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static inline void put32(uint8_t *p, uint32_t v)
{
    put16(p, v >> 16);
    put16(p + 2, v & 0xffff);
}
static void copy(uint8_t *d, const uint8_t *s, unsigned n)
{
    while (n--)
        *d++ = *s++;
}
static bool same_mac(const uint8_t *a, const uint8_t *b)
{
    return !memcmp(a, b, ETH_ALEN);
}

/* The Internet checksum (RFC 1071): a running sum of big-endian 16-bit words, folded. */
static uint32_t csum_add(uint32_t sum, const uint8_t *p, unsigned n)
{
    uint64_t s = sum;
    for (; n > 1; p += 2, n -= 2)
        s += get16(p);
    if (n)
        s += (uint32_t)p[0] << 8;
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return (uint32_t)s;
}

static uint16_t csum_fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

/* The pseudo header of a UDP checksum. */
static uint32_t pseudo_sum(uint32_t src, uint32_t dst, unsigned proto, unsigned len)
{
    return (src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff) + proto + len;
}

static void format_ip(char *out, size_t size, uint32_t ip)
{
    snprintf(out, size, "%u.%u.%u.%u", ip >> 24, (ip >> 16) & 0xff, (ip >> 8) & 0xff,
             ip & 0xff);
}

static bool parse_ip(const char *s, uint32_t *ip)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        const char *end;
        if (*s < '0' || *s > '9')
            return false;
        unsigned long part = strtoul(s, &end, 10);
        if (part > 255 || end - s > 3 || (i < 3 ? *end != '.' : *end != 0))
            return false;
        v = v << 8 | (uint32_t)part;
        s = end + 1;
    }
    *ip = v;
    return true;
}

static bool parse_mac(const char *s, uint8_t *mac)
{
    for (int i = 0; i < ETH_ALEN; i++) {
        unsigned v = 0;
        for (int j = 0; j < 2; j++, s++) {
            char c = *s;
            unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0')
                       : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                       : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10) : 16;
            if (d > 15)
                return false;
            v = v << 4 | d;
        }
        mac[i] = (uint8_t)v;
        if (*s != (i < ETH_ALEN - 1 ? ':' : 0))
            return false;
        s++;
    }
    return true;
}

/* ---- the ARP cache ----------------------------------------------------------------- */
static struct {
    uint32_t ip;
    uint8_t mac[ETH_ALEN];
} arp_cache[ARP_ENTRIES];
static unsigned arp_next;

static bool arp_lookup(uint32_t ip, uint8_t *mac)
{
    for (unsigned i = 0; i < ARP_ENTRIES; i++)
        if (arp_cache[i].ip == ip && ip) {
            copy(mac, arp_cache[i].mac, ETH_ALEN);
            return true;
        }
    return false;
}

/* RFC 826: a sender already in the table is updated; with `add` (the packet was for us) a
 * new one goes in (the oldest entry makes room). */
static void arp_learn(uint32_t ip, const uint8_t *mac, bool add)
{
    if (!ip)
        return;
    for (unsigned i = 0; i < ARP_ENTRIES; i++)
        if (arp_cache[i].ip == ip) {
            copy(arp_cache[i].mac, mac, ETH_ALEN);
            return;
        }
    if (!add)
        return;
    arp_cache[arp_next].ip = ip;
    copy(arp_cache[arp_next].mac, mac, ETH_ALEN);
    arp_next = (arp_next + 1) % ARP_ENTRIES;
}

/* ---- the TX ring ------------------------------------------------------------------- */
static uint8_t *tx_buf(unsigned q, unsigned id)
{
    return tx_pages[q][id * TX_BUF / PAGE_SIZE] + id * TX_BUF % PAGE_SIZE;
}

static unsigned tx_in_flight(void)
{
    unsigned n = 0;
    for (unsigned q = 0; q < nqueues; q++)
        n += TX_SIZE - queues[q].ntx_free;
    return n;
}

/* Take every TX response there is (xennet_tx_buf_gc): how many requests completed. */
static unsigned tx_reap(unsigned q)
{
    struct queue *Q = &queues[q];
    unsigned done = 0;
    int more;
    if (broken)
        return 0;
    do {
        RING_IDX rp = Q->tx.sring->rsp_prod;
        rmb();  /* the responses before the index that covers them */
        if (rp - Q->tx.rsp_cons > Q->tx.req_prod_pvt - Q->tx.rsp_cons) {
            tnote(&txt, "queue %u: TX rsp_prod %u: %u responses for %u requests", q, rp,
                    rp - Q->tx.rsp_cons, Q->tx.req_prod_pvt - Q->tx.rsp_cons);
            broken = true;
            return done;
        }
        for (; Q->tx.rsp_cons != rp; Q->tx.rsp_cons++) {
            netif_tx_response_t rsp;
            RING_COPY_RESPONSE(&Q->tx, Q->tx.rsp_cons, &rsp);
            if (rsp.status == NETIF_RSP_NULL)
                continue;     /* the slot of an extra-info request (we send none) */
            unsigned id = rsp.id;
            if (id >= TX_SIZE || !Q->tx_busy[id]) {
                tnote(&txt, "queue %u: TX response id %u (status %d) matches no request in "
                        "flight", q, id, rsp.status);
                broken = true;
                return done;
            }
            Q->tx_busy[id] = false;
            if (!gnttab_end_access(REF_TX(q, id))) {
                tnote(&txt, "queue %u: TX buffer %u (gref %u) still in use by the back end after "
                        "its response: flags %#x", q, id, REF_TX(q, id),
                        gnttab_v1[REF_TX(q, id)].flags);
                broken = true;   /* the buffer cannot be reused */
                return done;
            }
            if (rsp.status != NETIF_RSP_OKAY) {
                tx_errors++;
                tnote(&txt, "queue %u: TX response to id %u has status %d", q, id, rsp.status);
            }
            Q->tx_free[Q->ntx_free++] = (uint16_t)id;
            done++;
        }
        RING_FINAL_CHECK_FOR_RESPONSES(&Q->tx, more);
    } while (more);
    return done;
}

/* A TX id of queue q and its buffer (responses reaped first when none is free), or NULL.
 * udp_send's buffers keep their frame between datagrams; anyone else's use ends that. */
static uint8_t *tx_begin_keep(unsigned q, unsigned *id)
{
    struct queue *Q = &queues[q];
    if (!Q->ntx_free)
        tx_reap(q);
    if (!Q->ntx_free || broken)
        return NULL;
    *id = Q->tx_free[--Q->ntx_free];
    return tx_buf(q, *id);
}

static uint8_t *tx_begin(unsigned q, unsigned *id)
{
    uint8_t *f = tx_begin_keep(q, id);
    if (f)
        queues[q].tx_udp[*id] = false;
    return f;
}

/* Put the frame of `len` bytes in id's buffer on the ring (pushed by tx_push). */
static void tx_commit(unsigned q, unsigned id, unsigned len)
{
    struct queue *Q = &queues[q];
    uint8_t *buf = tx_buf(q, id);
    if (len < ETH_ZLEN) {
        memset(buf + len, 0, ETH_ZLEN - len);
        len = ETH_ZLEN;
    }
    gnttab_grant(REF_TX(q, id), dev.back_id, pfn_of(buf), GTF_permit_access | GTF_readonly);
    netif_tx_request_t *req = RING_GET_REQUEST(&Q->tx, Q->tx.req_prod_pvt);
    req->gref = REF_TX(q, id);
    req->offset = (uint16_t)(id * TX_BUF % PAGE_SIZE);
    req->flags = 0;
    req->id = (uint16_t)id;
    req->size = (uint16_t)len;
    Q->tx.req_prod_pvt++;
    Q->tx_busy[id] = true;
    Q->tx_queued++;
    tx_frames++;
}

static void tx_push(unsigned q)
{
    struct queue *Q = &queues[q];
    if (!Q->tx_queued)
        return;
    Q->tx_queued = 0;
    int notify;
    RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&Q->tx, notify);
    if (notify)
        notify_port(Q->tx_port), notifies++;
}

/* ---- frames we send ---------------------------------------------------------------- */
static void eth_header(uint8_t *f, const uint8_t *dst, unsigned type)
{
    copy(f, dst, ETH_ALEN);
    copy(f + ETH_ALEN, our_mac, ETH_ALEN);
    put16(f + 12, type);
}

/* An IPv4 header (no options, DF, TTL 64) with its checksum. */
static void ip_header(uint8_t *f, unsigned proto, uint32_t dst, unsigned l4_len)
{
    uint8_t *ip = f + ETH_HLEN;
    ip[0] = 0x45;
    ip[1] = 0;
    put16(ip + 2, IP_HLEN + l4_len);
    put16(ip + 4, ip_id++);
    put16(ip + 6, 0x4000);
    ip[8] = 64;
    ip[9] = (uint8_t)proto;
    put16(ip + 10, 0);
    put32(ip + 12, our_ip);
    put32(ip + 16, dst);
    put16(ip + 10, csum_fold(csum_add(0, ip, IP_HLEN)));
}

static bool send_arp(unsigned q, unsigned oper, const uint8_t *eth_dst, const uint8_t *tha,
                     uint32_t tpa)
{
    unsigned id;
    uint8_t *f = tx_begin(q, &id);
    if (!f)
        return false;
    eth_header(f, eth_dst, ETH_P_ARP);
    uint8_t *a = f + ETH_HLEN;
    put16(a, 1);                 /* Ethernet */
    put16(a + 2, ETH_P_IP);
    a[4] = ETH_ALEN;
    a[5] = 4;
    put16(a + 6, oper);
    copy(a + 8, our_mac, ETH_ALEN);
    put32(a + 14, our_ip);
    copy(a + 18, tha, ETH_ALEN);
    put32(a + 24, tpa);
    tx_commit(q, id, ETH_HLEN + ARP_LEN);
    return true;
}

static bool send_echo_request(uint32_t dst, const uint8_t *mac, unsigned seq)
{
    unsigned id;
    uint8_t *f = tx_begin(0, &id);
    if (!f)
        return false;
    eth_header(f, mac, ETH_P_IP);
    ip_header(f, IPPROTO_ICMP_, dst, 8 + PING_DATA);
    uint8_t *icmp = f + L4;
    icmp[0] = ICMP_ECHO;
    icmp[1] = 0;
    put16(icmp + 2, 0);
    put16(icmp + 4, PING_ID);
    put16(icmp + 6, seq);
    for (unsigned k = 0; k < PING_DATA; k++)
        icmp[8 + k] = (uint8_t)(seq * 7 + k);
    put16(icmp + 2, csum_fold(csum_add(0, icmp, 8 + PING_DATA)));
    tx_commit(0, id, L4_DATA + PING_DATA);
    return true;
}

/* ---- ping's state ------------------------------------------------------------------ */
static struct {
    bool waiting, got;
    unsigned seq;
    unsigned long bad;
    char why[160];
} ping;

static void ping_reply(const uint8_t *f, unsigned icmp_len)
{
    const uint8_t *ip = f + ETH_HLEN, *icmp = f + L4;
    if (!ping.waiting || get32(ip + 12) != peer_ip || get16(icmp + 4) != PING_ID ||
        get16(icmp + 6) != ping.seq) {
        dropped++;               /* not the reply we wait for (a late one, or not ours) */
        return;
    }
    bool same = icmp_len == 8 + PING_DATA;
    for (unsigned k = 0; same && k < PING_DATA; k++)
        same = icmp[8 + k] == (uint8_t)(ping.seq * 7 + k);
    if (!same && !ping.bad++)
        snprintf(ping.why, sizeof(ping.why), "the reply to seq %u carries other data (%u "
                 "bytes)", ping.seq, icmp_len - 8);
    ping.got = true;
    ping.waiting = false;
}

/* ---- frames we receive ------------------------------------------------------------- */
static void arp_input(unsigned q, const uint8_t *f, unsigned len)
{
    const uint8_t *a = f + ETH_HLEN;
    if (len < ETH_HLEN + ARP_LEN || get16(a) != 1 || get16(a + 2) != ETH_P_IP ||
        a[4] != ETH_ALEN || a[5] != 4) {
        dropped++;
        return;
    }
    unsigned oper = get16(a + 6);
    uint32_t spa = get32(a + 14), tpa = get32(a + 24);
    bool for_us = tpa == our_ip;
    arp_learn(spa, a + 8, for_us);
    if (for_us && oper == 1) {
        if (send_arp(q, 2, f + ETH_ALEN, a + 8, spa))
            arp_replies++;
        else
            dropped++;           /* no TX buffer free */
    } else if (!(for_us && oper == 2)) {
        dropped++;
    }
}

static void icmp_input(unsigned q, const uint8_t *f, unsigned icmp_len, bool csum_ok)
{
    const uint8_t *icmp = f + L4;
    if (icmp_len < 8 || (!csum_ok && csum_fold(csum_add(0, icmp, icmp_len)) != 0)) {
        dropped++;
        return;
    }
    if (icmp[0] == ICMP_ECHOREPLY && icmp[1] == 0) {
        ping_reply(f, icmp_len);
        return;
    }
    if (icmp[0] != ICMP_ECHO || icmp[1] != 0 || L4 + icmp_len > MAX_FRAME) {
        dropped++;
        return;
    }
    unsigned id;
    uint8_t *r = tx_begin(q, &id);
    if (!r) {
        dropped++;
        return;
    }
    eth_header(r, f + ETH_ALEN, ETH_P_IP);
    ip_header(r, IPPROTO_ICMP_, get32(f + ETH_HLEN + 12), icmp_len);
    uint8_t *ri = r + L4;
    copy(ri, icmp, icmp_len);
    ri[0] = ICMP_ECHOREPLY;
    put16(ri + 2, 0);
    put16(ri + 2, csum_fold(csum_add(0, ri, icmp_len)));
    tx_commit(q, id, L4 + icmp_len);
    icmp_replies++;
}

static void udp_input(unsigned q, const uint8_t *f, unsigned ip_payload, bool csum_ok)
{
    const uint8_t *udp = f + L4, *ip = f + ETH_HLEN;
    unsigned udp_len = ip_payload >= 8 ? get16(udp + 4) : 0;
    uint32_t src = get32(ip + 12);
    if (udp_len < 8 || udp_len > ip_payload) {
        dropped++;
        return;
    }
    if (!csum_ok && get16(udp + 6) != 0) {
        uint32_t sum = pseudo_sum(src, our_ip, IPPROTO_UDP_, udp_len);
        if (csum_fold(csum_add(sum, udp, udp_len)) != 0) {
            dropped++;
            return;
        }
    }
    if (get16(udp + 2) != echo_port) {
        dropped++;
        return;
    }
    unsigned id;
    uint8_t *r = tx_begin(q, &id);
    if (!r) {
        dropped++;
        return;
    }
    eth_header(r, f + ETH_ALEN, ETH_P_IP);
    ip_header(r, IPPROTO_UDP_, src, udp_len);
    uint8_t *ru = r + L4;
    put16(ru, echo_port);
    put16(ru + 2, get16(udp));
    put16(ru + 4, udp_len);
    put16(ru + 6, 0);
    copy(ru + 8, udp + 8, udp_len - 8);
    uint16_t c = csum_fold(csum_add(pseudo_sum(our_ip, src, IPPROTO_UDP_, udp_len), ru,
                                    udp_len));
    put16(ru + 6, c ? c : 0xffff);
    tx_commit(q, id, L4 + udp_len);
    udp_echoes++;
}

/* One frame of `len` bytes from queue q's RX ring (NETRXF_* in flags). */
static void frame_input(unsigned q, const uint8_t *f, unsigned len, unsigned flags)
{
    if (len < ETH_HLEN || len > MAX_FRAME ||
        !(same_mac(f, our_mac) || same_mac(f, broadcast))) {
        dropped++;
        return;
    }
    unsigned type = get16(f + 12);
    if (type == ETH_P_ARP) {
        arp_input(q, f, len);
        return;
    }
    const uint8_t *ip = f + ETH_HLEN;
    if (type != ETH_P_IP || len < ETH_HLEN + IP_HLEN || ip[0] != 0x45) {
        dropped++;               /* not IPv4, or IP options */
        return;
    }
    unsigned total = get16(ip + 2);
    if (total < IP_HLEN || ETH_HLEN + total > len || (get16(ip + 6) & 0x3fff) ||
        csum_fold(csum_add(0, ip, IP_HLEN)) != 0 || get32(ip + 16) != our_ip) {
        dropped++;               /* cut short, a fragment, a bad header, not ours */
        return;
    }
    /* The back vouches for the data (data_validated), or the checksum is left to be
     * filled in (csum_blank, checksum offload): not verified then. */
    bool csum_ok = (flags & (NETRXF_data_validated | NETRXF_csum_blank)) != 0;
    if (ip[9] == IPPROTO_ICMP_)
        icmp_input(q, f, total - IP_HLEN, csum_ok);
    else if (ip[9] == IPPROTO_UDP_)
        udp_input(q, f, total - IP_HLEN, csum_ok);
    else
        dropped++;
}

/* ---- the RX ring ------------------------------------------------------------------- */
/* Fill the ring with requests (xennet_alloc_rx_buffers): slot = index mod RX_SIZE, its page
 * granted writable. */
static void rx_refill(unsigned q)
{
    struct queue *Q = &queues[q];
    while (Q->rx.req_prod_pvt - Q->rx.rsp_cons < RX_SIZE) {
        RING_IDX i = Q->rx.req_prod_pvt;
        unsigned slot = i & (RX_SIZE - 1);
        xbf_grant(&dev, REF_RX(q, slot), rx_pages[q][slot], false);
        Q->rx_granted[slot] = true;
        netif_rx_request_t *req = RING_GET_REQUEST(&Q->rx, i);
        req->id = (uint16_t)slot;
        req->gref = REF_RX(q, slot);
        Q->rx.req_prod_pvt++;
    }
    int notify;
    RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&Q->rx, notify);
    if (notify)
        notify_port(Q->rx_port), notifies++;
}

/* Take every RX response there is (xennet_poll, xennet_get_responses), then refill: how
 * many slots were answered. */
static unsigned rx_reap(unsigned q)
{
    struct queue *Q = &queues[q];
    unsigned done = 0;
    int more;
    if (broken)
        return 0;
    do {
        RING_IDX rp = Q->rx.sring->rsp_prod;
        rmb();
        if (rp - Q->rx.rsp_cons > Q->rx.req_prod_pvt - Q->rx.rsp_cons) {
            tnote(&rxt, "queue %u: RX rsp_prod %u: %u responses for %u requests", q, rp,
                    rp - Q->rx.rsp_cons, Q->rx.req_prod_pvt - Q->rx.rsp_cons);
            broken = true;
            return done;
        }
        while (Q->rx.rsp_cons != rp) {
            RING_IDX i = Q->rx.rsp_cons++;
            unsigned slot = i & (RX_SIZE - 1);
            netif_rx_response_t rsp;
            RING_COPY_RESPONSE(&Q->rx, i, &rsp);
            done++;
            Q->rx_granted[slot] = false;
            if (!gnttab_end_access(REF_RX(q, slot))) {
                tnote(&rxt, "queue %u: RX page %u (gref %u) still in use by the back end after "
                        "its response: flags %#x", q, slot, REF_RX(q, slot),
                        gnttab_v1[REF_RX(q, slot)].flags);
                broken = true;   /* the page cannot be posted again */
                return done;
            }
            if (rsp.flags & (NETRXF_more_data | NETRXF_extra_info)) {
                tnote(&rxt, "queue %u slot %u: flags %#x: more_data/extra_info without feature-sg "
                        "or GSO", q, slot, rsp.flags);
                broken = true;   /* the next slots are not frames: out of step */
                return done;
            }
            if (rsp.id != slot) {
                tnote(&rxt, "queue %u: the response in slot %u has id %u (netif.h: a response "
                        "takes its request's slot)", q, slot, rsp.id);
                continue;
            }
            if (rsp.status < 0) {
                rx_errors++;
                tnote(&rxt, "queue %u slot %u: status %d", q, slot, rsp.status);
                continue;
            }
            if (rsp.offset + (unsigned)rsp.status > PAGE_SIZE) {
                tnote(&rxt, "queue %u slot %u: offset %u + size %d beyond the page", q, slot,
                        rsp.offset, rsp.status);
                continue;
            }
            rx_frames++;
            Q->rx_frames++;
            frame_input(q, rx_pages[q][slot] + rsp.offset, (unsigned)rsp.status, rsp.flags);
        }
        RING_FINAL_CHECK_FOR_RESPONSES(&Q->rx, more);
    } while (more);
    if (done)
        rx_refill(q);
    return done;
}

/* ---- the loop ---------------------------------------------------------------------- */
/* Both rings of every queue once, then what the answers queued goes out: true when
 * anything moved. */
static bool pump(void)
{
    bool moved = false;
    for (unsigned q = 0; q < nqueues; q++) {
        if (rx_reap(q))
            moved = true;
        if (tx_reap(q))
            moved = true;
    }
    for (unsigned q = 0; q < nqueues && !broken; q++)
        tx_push(q);
    return moved;
}

/* Sleep in SCHEDOP_poll on our ports (and the store's) until one fires or `deadline`. */
static void wait_events(uint64_t deadline, bool store)
{
    evtchn_port_t ports[2 * MAX_QUEUES + 1];
    unsigned n = 0;
    for (unsigned q = 0; q < nqueues; q++) {
        ports[n++] = queues[q].tx_port;
        if (split)
            ports[n++] = queues[q].rx_port;
    }
    if (store)
        ports[n++] = xs_port();
    polls++;
    xbf_poll(ports, n, deadline ? deadline : 1);
}

/* Until every TX request is answered (nothing moving for WAIT_BOUND_NS ends the wait). */
static bool tx_drain(void)
{
    uint64_t idle_since = xen_now_ns();
    while (tx_in_flight() && !broken) {
        if (pump()) {
            idle_since = xen_now_ns();
            continue;
        }
        if (xen_now_ns() >= idle_since + WAIT_BOUND_NS) {
            tnote(&txt, "%u TX request(s) unanswered for %lu s", tx_in_flight(),
                    (unsigned long)(WAIT_BOUND_NS / SECOND_NS));
            return false;
        }
        wait_events(idle_since + WAIT_BOUND_NS, false);
    }
    return !broken;
}

/* ARP requests for `ip` (broadcast, one a second) until it answers, at most WAIT_BOUND_NS. */
static bool arp_resolve(uint32_t ip, uint8_t *mac)
{
    static const uint8_t zero[ETH_ALEN];
    uint64_t end = xen_now_ns() + WAIT_BOUND_NS;
    unsigned asked = 0;
    while (!arp_lookup(ip, mac)) {
        uint64_t now = xen_now_ns();
        if (now >= end || broken) {
            note("no ARP reply after %u request(s)%s", asked, broken ? " (rings broken)" : "");
            return false;
        }
        if (send_arp(0, 1, broadcast, zero, ip)) {
            asked++;
            tx_push(0);
        }
        uint64_t next = now + SECOND_NS < end ? now + SECOND_NS : end;
        while (!arp_lookup(ip, mac) && !broken && xen_now_ns() < next)
            if (!pump())
                wait_events(next, false);
    }
    return true;
}

/* ---- connecting and disconnecting -------------------------------------------------- */
static bool setup_queue(unsigned q)
{
    struct queue *Q = &queues[q];
    memset(Q, 0, sizeof(*Q));
    netif_tx_sring_t *txs = (netif_tx_sring_t *)tx_ring_pages[q];
    netif_rx_sring_t *rxs = (netif_rx_sring_t *)rx_ring_pages[q];
    memset(txs, 0, PAGE_SIZE);
    memset(rxs, 0, PAGE_SIZE);
    SHARED_RING_INIT(txs);
    FRONT_RING_INIT(&Q->tx, txs, PAGE_SIZE);
    SHARED_RING_INIT(rxs);
    FRONT_RING_INIT(&Q->rx, rxs, PAGE_SIZE);
    xbf_grant(&dev, REF_TX_RING(q), txs, false);
    xbf_grant(&dev, REF_RX_RING(q), rxs, false);
    for (unsigned id = 0; id < TX_SIZE; id++)
        Q->tx_free[Q->ntx_free++] = (uint16_t)(TX_SIZE - 1 - id);
    long rc = evtchn_alloc_unbound(DOMID_SELF, dev.back_id, &Q->tx_port);
    if (!rc && split)
        rc = evtchn_alloc_unbound(DOMID_SELF, dev.back_id, &Q->rx_port);
    else
        Q->rx_port = Q->tx_port;
    if (rc) {
        note("queue %u: EVTCHNOP_alloc_unbound for domain %u: %ld", q, dev.back_id, rc);
        return false;
    }
    mask_port(Q->tx_port, true);   /* polled, never an upcall */
    mask_port(Q->rx_port, true);
    return true;
}

/* talk_to_netback's transaction (write_queue_xenstore_keys per queue). */
static bool write_keys(struct xenbus_front *f, uint32_t tx, void *arg)
{
    bool ok = !back_mq || xbf_put(f, tx, "multi-queue-num-queues", "%u", nqueues);
    for (unsigned q = 0; ok && q < nqueues; q++) {
        char dir[16] = "", name[48];
        if (nqueues > 1)
            snprintf(dir, sizeof(dir), "queue-%u/", q);
        const struct queue *Q = &queues[q];
#define KEY(key) (snprintf(name, sizeof(name), "%s%s", dir, key), name)
        ok = xbf_put(f, tx, KEY("tx-ring-ref"), "%u", REF_TX_RING(q)) &&
             xbf_put(f, tx, KEY("rx-ring-ref"), "%u", REF_RX_RING(q));
        if (ok && split)
            ok = xbf_put(f, tx, KEY("event-channel-tx"), "%u", Q->tx_port) &&
                 xbf_put(f, tx, KEY("event-channel-rx"), "%u", Q->rx_port);
        else if (ok)
            ok = xbf_put(f, tx, KEY("event-channel"), "%u", Q->tx_port);
#undef KEY
    }
    return ok && xbf_put(f, tx, "request-rx-copy", "1") &&
           xbf_put(f, tx, "feature-rx-notify", "1") &&
           xbf_put(f, tx, "feature-sg", "0") &&
           xbf_put(f, tx, "feature-gso-tcpv4", "0") &&
           xbf_put(f, tx, "feature-no-csum-offload", "0");
}

/* talk_to_netback and xennet_connect, then wait for the back's Connected. */
static bool connect(void)
{
    if (!xbf_find(&dev, cmdline_get("vif")))
        return false;
    info("vif", "%lu", dev.id);
    info("backend", "%s (domain %u)", dev.back, dev.back_id);
    char value[40];
    if (!xbf_read(dev.dir, "mac", value, sizeof(value)) || !parse_mac(value, our_mac)) {
        note("%s/mac '%s' is not a MAC address", dev.dir, value);
        return false;
    }
    info("mac", "%s", value);
    if (xbf_wait_back(&dev, 1u << XenbusStateInitWait, XBF_BACK_BOUND_NS) < 0)
        return false;
    if (xbf_uint_or(dev.back, "feature-rx-copy", 0) != 1) {
        note("%s/feature-rx-copy is not 1 (Linux: the back end does not support the copying "
             "receive path)", dev.back);
        return false;
    }
    unsigned long max_queues = 1;
    back_mq = xbf_uint(dev.back, "multi-queue-max-queues", &max_queues);
    if (!max_queues)
        max_queues = 1;
    nqueues = (unsigned)(want_queues < max_queues ? want_queues : max_queues);
    split = want_split && xbf_uint_or(dev.back, "feature-split-event-channels", 0) == 1;
    for (unsigned q = 0; q < nqueues; q++)
        if (!setup_queue(q))
            return false;
    if (!xbf_write_keys(&dev, write_keys, NULL))
        return false;
    for (unsigned q = 0; q < nqueues; q++)
        rx_refill(q);
    if (!xbf_set_state(&dev, XenbusStateConnected))
        return false;
    int st = xbf_wait_back(&dev, 1u << XenbusStateConnected | 1u << XenbusStateClosing |
                           1u << XenbusStateClosed, XBF_BACK_BOUND_NS);
    if (st != XenbusStateConnected) {
        if (st >= 0)
            note("the back end went to state %d, not Connected (it refused our keys? dom0's "
                 "error%s/error says why)", st, dev.back);
        return false;
    }
    /* xennet_connect's kick: the back may have missed what we pushed before it bound. */
    for (unsigned q = 0; q < nqueues; q++) {
        notify_port(queues[q].tx_port);
        if (split)
            notify_port(queues[q].rx_port);
    }
    return true;
}

/* Closing/Closed with the back, then every page back and the ports closed. */
static void close_device(void)
{
    reset_note();
    bool ok = xbf_close(&dev);
    if (ok) {
        for (unsigned q = 0; q < nqueues; q++) {
            struct queue *Q = &queues[q];
            ok = xbf_take_back(&dev, REF_TX_RING(q), "TX ring page") && ok;
            ok = xbf_take_back(&dev, REF_RX_RING(q), "RX ring page") && ok;
            for (unsigned i = 0; i < RX_SIZE; i++)
                if (Q->rx_granted[i]) {
                    ok = xbf_take_back(&dev, REF_RX(q, i), "posted RX page") && ok;
                    Q->rx_granted[i] = false;
                }
            for (unsigned i = 0; i < TX_SIZE; i++)
                if (Q->tx_busy[i]) {
                    ok = xbf_take_back(&dev, REF_TX(q, i), "unanswered TX buffer") && ok;
                    Q->tx_busy[i] = false;
                }
            ok = xbf_port_released(&dev, Q->tx_port) && ok;
            if (split)
                ok = xbf_port_released(&dev, Q->rx_port) && ok;
        }
    }
    long rc = 0;
    for (unsigned q = 0; q < nqueues; q++) {
        long r = evtchn_close(queues[q].tx_port);
        if (split && !r)
            r = evtchn_close(queues[q].rx_port);
        if (r && !rc)
            rc = r;
    }
    check("netfront.close", ok && rc == 0, "%s; EVTCHNOP_close: %ld", gen.why, rc);
}

/* ---- mode=serve -------------------------------------------------------------------- */
/* A request in control/shutdown: "poweroff"/"halt" are acknowledged (the node cleared in a
 * transaction, as manage.c does) and end the service; anything else is left and ignored. */
static bool shutdown_asked(void)
{
    static char ignored[64];
    for (unsigned attempt = 0; attempt < XBF_TX_ATTEMPTS; attempt++) {
        char value[64];
        uint32_t tx;
        if (xs_transaction_start(&tx) != XS_TRANSACTION_START)
            return false;
        if (xs_read(tx, "control/shutdown", value, sizeof(value)) != XS_READ || !value[0]) {
            xs_transaction_end(tx, false);
            return false;
        }
        bool stop = !strcmp(value, "poweroff") || !strcmp(value, "halt");
        if (stop)
            xs_write(tx, "control/shutdown", "");
        int t = xs_transaction_end(tx, stop);
        if (stop && t == XS_ERROR && !strcmp(xs_error(), "EAGAIN"))
            continue;
        if (!stop && strcmp(value, ignored)) {
            printf("netfront: ignoring shutdown request: %s\n", value);
            snprintf(ignored, sizeof(ignored), "%s", value);
        }
        return stop;
    }
    return false;
}

static void serve(bool watched)
{
    uint64_t end = run_s ? xen_now_ns() + run_s * SECOND_NS : ~0ULL;
    uint64_t next_look = 0;
    const char *why = "run_s";
    for (;;) {
        bool moved = pump();
        if (broken) {
            why = "rings broken";
            break;
        }
        bool look = false;
        while (xs_pending() && xs_read_watch(NULL, 0, NULL, 0, 0))
            look = true;
        uint64_t now = xen_now_ns();
        if (look || now >= next_look) {
            /* The store is read again every second: an event may be lost. */
            next_look = now + SECOND_NS;
            if (shutdown_asked()) {
                why = "control/shutdown";
                break;
            }
            int st = xbf_back_state(&dev);
            if (st != XenbusStateConnected) {
                note("the back end left Connected: state %d", st);
                why = "back end closing";
                break;
            }
        }
        if (now >= end)
            break;
        if (!moved)
            wait_events(next_look < end ? next_look : end, watched);
    }
    info("stop", "%s", why);
}

/* ---- mode=ping --------------------------------------------------------------------- */
static void mode_ping(const uint8_t *mac)
{
    unsigned long replies = 0;
    uint64_t rtt_sum = 0, rtt_max = 0;
    const char *failed = NULL;
    for (unsigned seq = 1; seq <= count && !failed; seq++) {
        ping.seq = seq;
        ping.got = false;
        ping.waiting = true;
        uint64_t t0 = xen_now_ns(), end = t0 + WAIT_BOUND_NS;
        if (!send_echo_request(peer_ip, mac, seq)) {
            failed = "no TX buffer for the request";
            break;
        }
        tx_push(0);
        while (!ping.got && !broken && xen_now_ns() < end)
            if (!pump())
                wait_events(end, false);
        ping.waiting = false;
        if (!ping.got) {
            failed = broken ? "the rings broke" : "no reply";
            snprintf(ping.why, sizeof(ping.why), "seq %u: %s within %lu s", seq, failed,
                     (unsigned long)(WAIT_BOUND_NS / SECOND_NS));
            break;
        }
        uint64_t rtt = xen_now_ns() - t0;
        replies++;
        rtt_sum += rtt;
        if (rtt > rtt_max)
            rtt_max = rtt;
    }
    info("ping_replies", "%lu", replies);
    info("ping_rtt_avg_us", "%lu", replies ? (unsigned long)(rtt_sum / replies / 1000) : 0UL);
    info("ping_rtt_max_us", "%lu", (unsigned long)(rtt_max / 1000));
    check("netfront.ping", replies == count && !ping.bad, "%lu of %lu replies, %lu bad; %s",
          replies, count, ping.bad, ping.why);
}

/* ---- mode=udp_send ----------------------------------------------------------------- */
static void rate(const char *key, uint64_t bytes, uint64_t ns)
{
    uint64_t tenths = ns ? bytes * 10000 / ns : 0;   /* MB/s (10^6 bytes) x 10 */
    info(key, "%lu.%lu", (unsigned long)(tenths / 10), (unsigned long)(tenths % 10));
}

static void mode_udp_send(const uint8_t *mac)
{
    static uint8_t tmpl[L4_DATA + MAX_UDP_DATA];
    unsigned udp_len = 8 + (unsigned)udp_size, frame_len = L4 + udp_len;
    /* The parts of the frame that never change, and the checksum of what every datagram
     * shares: the pseudo header, the UDP header and the filler (the sequence number, at an
     * even offset, is added per datagram). */
    eth_header(tmpl, mac, ETH_P_IP);
    uint8_t *tu = tmpl + L4;
    put16(tu, UDP_SPORT);
    put16(tu + 2, udp_port);
    put16(tu + 4, udp_len);
    put16(tu + 6, 0);
    memset(tu + 8, 0, 8);
    for (unsigned k = 8; k < udp_size; k++)
        tu[8 + k] = (uint8_t)k;
    uint32_t fixed = csum_add(pseudo_sum(our_ip, peer_ip, IPPROTO_UDP_, udp_len), tu, udp_len);
    unsigned long sent = 0, tx_trouble = txt.count;
    struct queue *Q = &queues[0];
    uint64_t t0 = xen_now_ns(), idle_since = t0;
    bool stalled = false;
    while ((sent < count || tx_in_flight()) && !broken) {
        bool moved = false;
        unsigned id;
        uint8_t *f;
        while (sent < count && (f = tx_begin_keep(0, &id))) {
            uint8_t *udp = f + L4;
            if (!Q->tx_udp[id]) {    /* once per buffer */
                copy(f, tmpl, frame_len);
                Q->tx_udp[id] = true;
            }
            ip_header(f, IPPROTO_UDP_, peer_ip, udp_len);
            uint64_t seq = sent;
            for (int b = 7; b >= 0; b--, seq >>= 8)
                udp[8 + b] = (uint8_t)seq;
            uint16_t c = csum_fold(csum_add(fixed, udp + 8, 8));
            put16(udp + 6, c ? c : 0xffff);
            tx_commit(0, id, frame_len);
            sent++;
            moved = true;
        }
        tx_push(0);
        if (pump())
            moved = true;
        uint64_t now = xen_now_ns();
        if (moved) {
            idle_since = now;
        } else if (now >= idle_since + WAIT_BOUND_NS) {
            tnote(&txt, "%lu of %lu datagrams sent, %u unanswered: nothing moved for %lu s", sent,
                    count, tx_in_flight(), (unsigned long)(WAIT_BOUND_NS / SECOND_NS));
            stalled = true;
            break;
        } else {
            wait_events(idle_since + WAIT_BOUND_NS, false);
        }
    }
    uint64_t ns = xen_now_ns() - t0;
    uint64_t bytes = (uint64_t)sent * udp_size;
    info("udp_sent", "%lu", sent);
    info("udp_bytes", "%lu", (unsigned long)bytes);
    info("udp_ns", "%lu", (unsigned long)ns);
    rate("udp_mbps", bytes, ns);
    check("netfront.udp_send", sent == count && !stalled && !broken && txt.count == tx_trouble,
          "%lu of %lu datagrams sent; %s", sent, count, txt.why);
}

/* ---- the command line -------------------------------------------------------------- */
static bool uint_opt(const char *key, unsigned long lo, unsigned long hi, unsigned long *v,
                     char *why, size_t size)
{
    const char *s = cmdline_get(key);
    if (!s)
        return true;
    const char *end;
    unsigned long n = strtoul(s, &end, 10);
    if (!s[0] || *end || n < lo || n > hi) {
        snprintf(why, size, "%s=%s: a number %lu..%lu expected", key, s, lo, hi);
        return false;
    }
    *v = n;
    return true;
}

static bool parse_cmdline(char *why, size_t size)
{
    const char *s = cmdline_get("mode");
    if (s && !strcmp(s, "ping"))
        mode = PING, count = 5;
    else if (s && !strcmp(s, "udp_send"))
        mode = UDP_SEND, count = 100000;
    else if (s && strcmp(s, "serve")) {
        snprintf(why, size, "mode=serve, ping or udp_send, not '%s'", s);
        return false;
    }
    s = cmdline_get("ip");
    if (!s || !parse_ip(s, &our_ip) || !our_ip) {
        snprintf(why, size, "ip=A.B.C.D is required ('%s')", s ? s : "");
        return false;
    }
    if (mode != SERVE) {
        s = cmdline_get("peer");
        if (!s || !parse_ip(s, &peer_ip) || !peer_ip || peer_ip == our_ip) {
            snprintf(why, size, "peer=A.B.C.D (not ours) is required ('%s')", s ? s : "");
            return false;
        }
    }
    if (mode == UDP_SEND && !cmdline_get("port")) {
        snprintf(why, size, "udp_send needs port=P");
        return false;
    }
    return uint_opt("count", 1, ~0UL >> 1, &count, why, size) &&
           uint_opt("port", 1, 65535, &udp_port, why, size) &&
           uint_opt("size", 8, MAX_UDP_DATA, &udp_size, why, size) &&
           uint_opt("echo_port", 1, 65535, &echo_port, why, size) &&
           uint_opt("queues", 1, MAX_QUEUES, &want_queues, why, size) &&
           uint_opt("split", 0, 1, &want_split, why, size) &&
           uint_opt("run_s", 0, ~0UL / SECOND_NS, &run_s, why, size);
}

int guest_main(void)
{
    char why[160], ip[16];
    if (!parse_cmdline(why, sizeof(why))) {
        test_fail("netfront.cmdline", "%s", why);
        return 0;
    }
    format_ip(ip, sizeof(ip), our_ip);

    long rc = map_shared_info();
    if (rc == 0)
        rc = gnttab_setup(gt_frames, GT_FRAMES);
    if (rc == 0)
        rc = xs_open();
    if (!check("netfront.setup", rc == 0, "shared_info, grant table (%u frames), store: %ld",
               (unsigned)GT_FRAMES, rc))
        return 0;
    bool ok = connect();
    if (ok) {
        info("ip", "%s", ip);
        info("queues", "%u", nqueues);
        info("split", "%u", split ? 1 : 0);
    }
    if (!check("netfront.connect", ok, "%s", gen.why))
        return 0;

    bool watched = false;
    if (mode == SERVE) {
        /* manage.c's order: the watch first, then the feature that says we honour it. */
        watched = xs_watch("control/shutdown", "shutdown") == XS_WATCH;
        if (watched)
            xs_write(0, "control/feature-poweroff", "1");
    }
    printf("READY %s\n", ip);

    reset_note();
    if (mode == SERVE) {
        serve(watched);
    } else {
        uint8_t mac[ETH_ALEN];
        bool resolved = arp_resolve(peer_ip, mac);
        char peer[16];
        format_ip(peer, sizeof(peer), peer_ip);
        check("netfront.arp_resolved", resolved, "peer %s: %s", peer, gen.why);
        if (resolved && mode == PING)
            mode_ping(mac);
        else if (resolved)
            mode_udp_send(mac);
    }
    tx_drain();

    info("rx_frames", "%lu", rx_frames);
    info("tx_frames", "%lu", tx_frames);
    info("arp_replies", "%lu", arp_replies);
    info("icmp_replies", "%lu", icmp_replies);
    info("udp_echoes", "%lu", udp_echoes);
    info("dropped", "%lu", dropped);
    info("rx_errors", "%lu", rx_errors);
    info("tx_errors", "%lu", tx_errors);
    info("notifies", "%lu", notifies);
    info("polls", "%lu", polls);
    if (nqueues > 1)
        for (unsigned q = 0; q < nqueues; q++) {
            char key[24];
            snprintf(key, sizeof(key), "rx_frames_q%u", q);
            info(key, "%lu", queues[q].rx_frames);
        }
    check("netfront.tx_responses_ok", !txt.count && !tx_in_flight(),
          "%lu problem(s), %u request(s) unanswered: %s", txt.count, tx_in_flight(), txt.why);
    check("netfront.rx_no_errors", !rxt.count, "%lu problem(s): %s", rxt.count, rxt.why);
    close_device();
    return 0;
}
