
/*
 * ngx_ws_heartbeat_module: what the glue files share. The configuration,
 * the per-connection state (ctx, its two sides), the counters in shared
 * memory, the small lookups every file uses, and the functions one glue
 * file offers the others. The only header that includes nginx's.
 */


#ifndef NGX_WS_HEARTBEAT_HPP
#define NGX_WS_HEARTBEAT_HPP


/* nginx headers first: they define 64-bit off_t */

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
}

#include "cxx17.hpp"

#include <new>
#include <type_traits>

/* everything of the module's own is hidden in its .so (see src/frame.hpp) */

#pragma GCC visibility push(hidden)

#include "frame.hpp"
#include "frame_builder.hpp"
#include "heartbeat.hpp"
#include "outbound.hpp"


#define NGX_HTTP_WS_HEARTBEAT_MIN_TIME  10
#define NGX_HTTP_WS_HEARTBEAT_MAX_TIME  (30LL * 24 * 60 * 60 * 1000)

/* the heartbeat machine's 32-bit times rely on it (src/heartbeat.hpp) */

static_assert(NGX_HTTP_WS_HEARTBEAT_MAX_TIME <= wshb::max_config_ms,
              "a directive's time beyond what the heartbeat machine takes");


typedef struct {
    ngx_flag_t                      enable;
    ngx_flag_t                      upstream;
    ngx_msec_t                      interval;
    ngx_msec_t                      timeout;
    ngx_msec_t                      read_timeout;
    ngx_msec_t                      send_timeout;
    ngx_flag_t                      drain;
    ngx_msec_t                      drain_timeout;
    ngx_msec_t                      drain_spread;
    ngx_msec_t                      max_age;        /* 0: off */
    ngx_msec_t                      max_age_jitter;
    ngx_uint_t                      group;  /* ws_heartbeat_metrics_group:
                                               index in main conf groups */
    ngx_uint_t                      idle_buffers;   /* _BUFFERS_* */
} ngx_http_ws_heartbeat_loc_conf_t;


/* ws_heartbeat_idle_buffers */

#define NGX_HTTP_WS_HB_BUFFERS_KEEP     0
#define NGX_HTTP_WS_HB_BUFFERS_RELEASE  1


/*
 * the relay's events that wake a released buffer, each a pass of one
 * direction of ngx_http_upstream_process_upgraded(): the client's
 * (u->from_client) on client readable and upstream writable, the
 * upstream's (u->buffer) on upstream readable. (Client writable needs no
 * buffer: see ngx_ws_heartbeat_buffers.cpp, release().)
 */

typedef enum {
    NGX_HTTP_WS_HB_EV_READ = 0,         /* client readable */
    NGX_HTTP_WS_HB_EV_UPSTREAM_READ,
    NGX_HTTP_WS_HB_EV_UPSTREAM_WRITE
} ngx_http_ws_heartbeat_ev_e;


/* why a managed connection ended: $ws_heartbeat_close_reason, counters */

typedef enum {
    NGX_HTTP_WS_HB_END_NONE = 0,            /* still open */
    NGX_HTTP_WS_HB_END_CLIENT_HEARTBEAT,
    NGX_HTTP_WS_HB_END_UPSTREAM_HEARTBEAT,
    NGX_HTTP_WS_HB_END_READ_TIMEOUT,
    NGX_HTTP_WS_HB_END_SEND_TIMEOUT,
    NGX_HTTP_WS_HB_END_INVALID_FRAME,
    NGX_HTTP_WS_HB_END_DRAIN,
    NGX_HTTP_WS_HB_END_MAX_AGE,
    NGX_HTTP_WS_HB_END_CLIENT_CLOSE,
    NGX_HTTP_WS_HB_END_UPSTREAM_CLOSE,
    NGX_HTTP_WS_HB_END_OTHER,
    NGX_HTTP_WS_HB_END_N
} ngx_http_ws_heartbeat_end_e;


#define NGX_HTTP_WS_HB_CODES        17      /* 1000..1015, other */
#define NGX_HTTP_WS_HB_RTT_BUCKETS  14      /* 1ms .. 10s, +Inf */
#define NGX_HTTP_WS_HB_AGE_BUCKETS  11      /* 1s .. 1d, +Inf */


/*
 * ws_heartbeat_metrics_group: at most 64 names in a configuration, and
 * the connections of locations without one (group "", index 0). A name:
 * 1 to 32 of [A-Za-z0-9_.-], safe as a label value and a JSON key as is.
 */

#define NGX_HTTP_WS_HB_GROUPS       65
#define NGX_HTTP_WS_HB_GROUP_LEN    32


/*
 * Counters in shared memory, summed over all workers and kept across
 * reloads. Updated with atomic adds only; no lock anywhere.
 */

typedef struct {
    ngx_atomic_t                    buckets[NGX_HTTP_WS_HB_RTT_BUCKETS];
    ngx_atomic_t                    sum_us;
    ngx_atomic_t                    count;
} ngx_http_ws_heartbeat_histogram_t;

/* how long connections lived: the same shape, other buckets */

typedef struct {
    ngx_atomic_t                    buckets[NGX_HTTP_WS_HB_AGE_BUCKETS];
    ngx_atomic_t                    sum_us;
    ngx_atomic_t                    count;
} ngx_http_ws_heartbeat_ages_t;

/*
 * The counters of one group (what the relay path counts into: the other
 * glue files see only this). The table of groups in the zone has a fixed
 * size (NGX_HTTP_WS_HB_GROUPS) and a group keeps its entry, found by its
 * name, across reloads: see ngx_http_ws_heartbeat_init_zone().
 */

typedef struct {
    u_char                          name[NGX_HTTP_WS_HB_GROUP_LEN + 1];
    ngx_atomic_t                    generation;     /* last in a config;
                                                       0: never used */
    ngx_atomic_t                    connections;
    ngx_atomic_t                    unslotted;      /* active, no slot */
    ngx_atomic_t                    pings[2];       /* by side */
    ngx_atomic_t                    pongs[2];
    ngx_atomic_t                    ends[NGX_HTTP_WS_HB_END_N];
    ngx_atomic_t                    close_frames[2][NGX_HTTP_WS_HB_CODES];
    ngx_atomic_t                    discarded[2];   /* by sender */
    ngx_atomic_t                    closing_timeouts[2]; /* drain, max age */
    ngx_http_ws_heartbeat_histogram_t  rtt[2];
    ngx_http_ws_heartbeat_ages_t    ages;           /* connection duration */
} ngx_http_ws_heartbeat_stats_t;

/*
 * the connections a worker manages now, by group, in a slot of its own:
 * the gauge is the sum over the workers that are alive, so that the
 * connections of a worker that crashed drop out of it (a new worker takes
 * its slot over). By group in the slot, not opened/ended counters per
 * group: those would keep a crashed worker's connections forever. The
 * cost is bounded: NGX_MAX_PROCESSES slots of 66 words, 528 KB of the zone.
 */

#define NGX_HTTP_WS_HB_WORKERS  NGX_MAX_PROCESSES

typedef struct {
    ngx_atomic_t                    pid;            /* 0: free */
    ngx_atomic_t                    active[NGX_HTTP_WS_HB_GROUPS];
} ngx_http_ws_heartbeat_worker_t;

/* what a zone holds: a reload of another layout starts anew */

#define NGX_HTTP_WS_HB_LAYOUT                                                \
    (0x77736863UL ^ sizeof(ngx_http_ws_heartbeat_shm_t))

typedef struct {
    ngx_atomic_t                    layout;         /* _LAYOUT */
    ngx_atomic_t                    generation;     /* configurations */
    ngx_http_ws_heartbeat_stats_t   groups[NGX_HTTP_WS_HB_GROUPS];
    ngx_http_ws_heartbeat_worker_t  workers[NGX_HTTP_WS_HB_WORKERS];
} ngx_http_ws_heartbeat_shm_t;


typedef struct {
    ngx_connection_t               *watch;  /* per worker: exit signal */
    ngx_uint_t                      watched; /* ws_heartbeat somewhere */
    ngx_shm_zone_t                 *zone;
    ngx_http_ws_heartbeat_shm_t    *shm;
    ngx_http_ws_heartbeat_worker_t *slot;   /* per worker: its own */

    /*
     * the names of ws_heartbeat_metrics_group (ngx_str_t), in the order
     * they first appear; a location's group is 0 (none) or 1 + its index
     * here. stats[g]: group g's counters in the zone (NULL until
     * init_zone), at index stats_slot[g] of the zone's table.
     */
    ngx_array_t                    *groups;
    ngx_uint_t                      ngroups;        /* 1 + groups->nelts */
    ngx_http_ws_heartbeat_stats_t  *stats[NGX_HTTP_WS_HB_GROUPS];
    ngx_uint_t                      stats_slot[NGX_HTTP_WS_HB_GROUPS];

    /* the worker began to exit at exit_msec (ngx_current_msec) */
    ngx_flag_t                      exiting;
    ngx_msec_t                      exit_msec;

    /* the longest drain spread + drain timeout of a location: nginx -t */
    ngx_msec_t                      longest_drain;

    /*
     * the relay's event handlers that the module wraps, the same for every
     * upgraded connection (ngx_http_upstream.c's): saved once per worker
     */
    ngx_http_event_handler_pt       read_handler;
    ngx_http_event_handler_pt       write_handler;
    ngx_http_upstream_handler_pt    upstream_write_handler;
    ngx_http_upstream_handler_pt    upstream_read_handler;

    /*
     * per worker (each has its own copy of the cycle's memory): the bytes
     * of the frame of the module's that a connection writes now, laid out
     * again from its queued descriptor for each write attempt by any
     * connection (the Io's frame(), ngx_ws_heartbeat_io.cpp), so that the
     * ctx keeps 12 bytes per side instead of 28
     */
    u_char                          frame[wshb::inject_capacity];
} ngx_http_ws_heartbeat_main_conf_t;


typedef enum {
    NGX_HTTP_WS_HB_CLIENT = 0,
    NGX_HTTP_WS_HB_UPSTREAM
} ngx_http_ws_heartbeat_side_e;


/* ctx->unsent[which]: nothing seen of the peer's queue yet */

#define NGX_HTTP_WS_HB_UNSENT_NONE      0xffffffff


/* a side's flags: ctx->side_flags[which] */

#define NGX_HTTP_WS_HB_S_PING_QUEUED    0x01    /* our Ping not written */
#define NGX_HTTP_WS_HB_S_BLOCKED        0x02    /* last write blocked */
#define NGX_HTTP_WS_HB_S_CLOSE_SENT     0x04    /* a Close went to it */
#define NGX_HTTP_WS_HB_S_CLOSE_PENDING  0x08    /* Close after message */
#define NGX_HTTP_WS_HB_S_PEER_CLOSED    0x10    /* its sender's Close seen */

/* what a write of that side may have to follow up (after_write()) */
#define NGX_HTTP_WS_HB_S_AFTER_WRITE                                         \
    (NGX_HTTP_WS_HB_S_CLOSE_PENDING | NGX_HTTP_WS_HB_S_PING_QUEUED)


/*
 * One peer of the relay, named by the peer it writes to: the client side
 * carries upstream frames (and our Pings) to the client and may swallow
 * the upstream's Pongs; the upstream side carries client frames to the
 * upstream and swallows the client's Pongs to our Pings.
 */

struct ngx_http_ws_heartbeat_side_t {
    wshb::outbound                  out;     /* bytes written to this peer */

    ngx_http_ws_heartbeat_side_t(ngx_uint_t w, bool swallow, bool rsv1)
        noexcept
        : out(w == NGX_HTTP_WS_HB_CLIENT ? wshb::role::server
                                         : wshb::role::client,
              swallow, rsv1)
    {
    }

    /* the upstream side relays the client's frames: it writes as one */

    ngx_uint_t which() const noexcept
    {
        return out.sender() == wshb::role::client ? NGX_HTTP_WS_HB_UPSTREAM
                                                  : NGX_HTTP_WS_HB_CLIENT;
    }
};


/*
 * Per upgraded connection, from the client connection's pool. Its timer is
 * the client connection's read event timer, which nginx leaves unused while
 * it relays an upgraded connection (ngx_http_upstream_process_upgraded()
 * times only the client's writes and the upstream's reads and writes).
 */

struct ngx_http_ws_heartbeat_ctx_t {
    ngx_http_ws_heartbeat_side_t        client;
    ngx_http_ws_heartbeat_side_t        upstream;

    ngx_http_request_t                 *request;

    /*
     * Two fields, one after the other in the same 8 bytes (the ctx has no
     * other room within its 256). header_write_handler: r's write handler
     * at the 101 header; the relay has started when it has changed, which
     * the first body filter call checks before it hooks the relay, and
     * nothing reads it after. unsent: from the hook on, per side
     * (which()), what the stuck-Ping check last saw of the peer's unread
     * bytes on a unix socket (SIOCOUTQ), to tell a slow reader from a
     * frozen one; NGX_HTTP_WS_HB_UNSENT_NONE: no look yet.
     */
    union {
        ngx_http_event_handler_pt       header_write_handler;
        std::uint32_t                   unsent[2];
    };

    std::uint8_t                        side_flags[2]; /* NGX_..._S_* */

    unsigned                            end:4;    /* _end_e */
    unsigned                            hooked:1; /* relay hooked */
    unsigned                            seen:1;   /* body filter ran */
    unsigned                            disabled:1;   /* stepped aside */
    unsigned                            invalid:1;    /* logged it */
    unsigned                            close_seen:1; /* endpoint Close */
    unsigned                            closing:1;    /* drain, max age */
    unsigned                            first_close:2; /* 1 client, 2 up */
    unsigned                            first_eof:2;   /* 1 client, 2 up */
    unsigned                            upstream_hb:1; /* allocated */
    unsigned                            arm_later:1;   /* timer handler */

    /*
     * drawn when the relay is hooked (RAND_bytes): the key in the
     * module's Pings that tells its Pongs apart, and the connection's own
     * moments in the drain spread and in the max age jitter
     */
    std::uint32_t                       random;

    wshb::heartbeat                     client_hb;

    /*
     * Allocated at partial size: the upstream's heartbeat machine is the
     * last member and exists only with ws_heartbeat_upstream on, so the
     * usual connection costs 44 bytes less (212 instead of 256, as
     * bench/sizeof_ctx prints). Reached through hb() only.
     */
    alignas(wshb::heartbeat) unsigned char
                                        upstream_hb_storage[
                                            sizeof(wshb::heartbeat)];

    /* bytes to allocate; the constructor needs them all */
    static std::size_t size(bool upstream_ping) noexcept
    {
        return upstream_ping ? sizeof(ngx_http_ws_heartbeat_ctx_t)
               : offsetof(ngx_http_ws_heartbeat_ctx_t, upstream_hb_storage);
    }

    ngx_http_ws_heartbeat_ctx_t(ngx_http_request_t *r, bool upstream_ping,
        bool rsv1) noexcept
        : client(NGX_HTTP_WS_HB_CLIENT, upstream_ping, rsv1),
          upstream(NGX_HTTP_WS_HB_UPSTREAM, true, rsv1),
          request(r), header_write_handler(nullptr), side_flags{0, 0},
          end(NGX_HTTP_WS_HB_END_NONE), hooked(0), seen(0), disabled(0),
          invalid(0), close_seen(0), closing(0),
          first_close(0), first_eof(0), upstream_hb(upstream_ping),
          arm_later(0),
          random(0), client_hb()
    {
        if (upstream_ping) {
            new (upstream_hb_storage) wshb::heartbeat();
        }
    }

    /* the two sides, by which(): the one way to visit both */

    ngx_http_ws_heartbeat_side_t *side(ngx_uint_t which) noexcept
    {
        return which == NGX_HTTP_WS_HB_CLIENT ? &client : &upstream;
    }

    /* the side that carries the other peer's frames */

    ngx_http_ws_heartbeat_side_t *
    other(const ngx_http_ws_heartbeat_side_t *s) noexcept
    {
        return side(s->which() ^ 1);
    }

    /* a side's heartbeat; NULL: the upstream one with no Pings to send */

    wshb::heartbeat *hb(ngx_uint_t which) noexcept
    {
        if (which == NGX_HTTP_WS_HB_CLIENT) {
            return &client_hb;
        }

        return upstream_hb
               ? std::launder(reinterpret_cast<wshb::heartbeat *>(
                     upstream_hb_storage))
               : nullptr;
    }

    bool is(const ngx_http_ws_heartbeat_side_t *s, std::uint8_t flag)
        const noexcept
    {
        return (side_flags[s->which()] & flag) != 0;
    }

    void set(const ngx_http_ws_heartbeat_side_t *s, std::uint8_t flag,
        bool on) noexcept
    {
        std::uint8_t  &f = side_flags[s->which()];

        f = static_cast<std::uint8_t>(on ? f | flag : f & ~flag);
    }
};


static_assert(std::is_trivially_destructible<ngx_http_ws_heartbeat_ctx_t>
              ::value, "ctx lives in a pool without a destructor");
static_assert(std::is_standard_layout<ngx_http_ws_heartbeat_ctx_t>::value,
              "a side finds its ctx with offsetof()");
static_assert(sizeof(ngx_http_ws_heartbeat_ctx_t) <= 256,
              "per-connection state: at most 256 bytes, with the upstream "
              "heartbeat");


#pragma GCC visibility pop


extern "C" {
extern ngx_module_t  ngx_ws_heartbeat_module;
}


/* the lookups every glue file makes: one way each */

static inline ngx_http_ws_heartbeat_main_conf_t *
ngx_http_ws_heartbeat_main_conf(ngx_http_request_t *r) noexcept
{
    return static_cast<ngx_http_ws_heartbeat_main_conf_t *>(
               ngx_http_get_module_main_conf(r, ngx_ws_heartbeat_module));
}


static inline ngx_http_ws_heartbeat_ctx_t *
ngx_http_ws_heartbeat_get_ctx(ngx_http_request_t *r) noexcept
{
    return static_cast<ngx_http_ws_heartbeat_ctx_t *>(
               ngx_http_get_module_ctx(r, ngx_ws_heartbeat_module));
}


static inline ngx_http_ws_heartbeat_loc_conf_t *
ngx_http_ws_heartbeat_conf(ngx_http_ws_heartbeat_ctx_t *ctx) noexcept
{
    return static_cast<ngx_http_ws_heartbeat_loc_conf_t *>(
               ngx_http_get_module_loc_conf(ctx->request,
                                            ngx_ws_heartbeat_module));
}


/* ws_heartbeat_idle_buffers release applies to r */

static inline bool
ngx_http_ws_heartbeat_releases(ngx_http_request_t *r) noexcept
{
    return static_cast<ngx_http_ws_heartbeat_loc_conf_t *>(
               ngx_http_get_module_loc_conf(r, ngx_ws_heartbeat_module))
               ->idle_buffers == NGX_HTTP_WS_HB_BUFFERS_RELEASE;
}


/* the counters of the connection's group: its location's */

static inline ngx_http_ws_heartbeat_stats_t *
ngx_http_ws_heartbeat_stats(ngx_http_ws_heartbeat_ctx_t *ctx) noexcept
{
    return ngx_http_ws_heartbeat_main_conf(ctx->request)
               ->stats[ngx_http_ws_heartbeat_conf(ctx)->group];
}


/* a side's ctx: the sides are members of it */

static inline ngx_http_ws_heartbeat_ctx_t *
ngx_http_ws_heartbeat_ctx_of(ngx_http_ws_heartbeat_side_t *s) noexcept
{
    size_t  off;

    off = s->which() == NGX_HTTP_WS_HB_CLIENT
          ? offsetof(ngx_http_ws_heartbeat_ctx_t, client)
          : offsetof(ngx_http_ws_heartbeat_ctx_t, upstream);

    return reinterpret_cast<ngx_http_ws_heartbeat_ctx_t *>(
               reinterpret_cast<u_char *>(s) - off);
}


/* a side's connection; NULL once the upstream one is closed */

static inline ngx_connection_t *
ngx_http_ws_heartbeat_conn(ngx_http_ws_heartbeat_side_t *s) noexcept
{
    ngx_http_request_t  *r;

    r = ngx_http_ws_heartbeat_ctx_of(s)->request;

    if (s->which() == NGX_HTTP_WS_HB_CLIENT) {
        return r->connection;
    }

    return r->upstream != NULL ? r->upstream->peer.connection : NULL;
}


/*
 * the timer of a connection's heartbeat and of its drain: the client
 * connection's read event, whose timer nginx leaves unused while relaying
 * (it fires into r->read_event_handler, which the module wraps)
 */

static inline ngx_event_t *
ngx_http_ws_heartbeat_timer(ngx_http_ws_heartbeat_ctx_t *ctx) noexcept
{
    return ctx->request->connection->read;
}


/*
 * nginx's own I/O functions of a connection: what an upgraded connection
 * has unless another module wrapped them (then the module stays out)
 */

#if (NGX_SSL)
#define ngx_http_ws_heartbeat_own(c, tls_io, io)  ((c)->ssl ? (tls_io) : (io))
#else
#define ngx_http_ws_heartbeat_own(c, tls_io, io)  (io)
#endif

static inline ngx_send_pt
ngx_http_ws_heartbeat_io_send(ngx_connection_t *c) noexcept
{
    return ngx_http_ws_heartbeat_own(c, ngx_ssl_write, ngx_io.send);
}


static inline ngx_recv_pt
ngx_http_ws_heartbeat_io_recv(ngx_connection_t *c) noexcept
{
    return ngx_http_ws_heartbeat_own(c, ngx_ssl_recv, ngx_io.recv);
}


/* the clock of RTT samples (ngx_current_msec has milliseconds only) */

static inline std::uint64_t
ngx_http_ws_heartbeat_now_us() noexcept
{
    struct timespec  ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);

    return (std::uint64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}


/*
 * the next header with this name in a list (headers_in, headers_out),
 * after *part and *i; start with *part = NULL. NULL: no more.
 */

static inline ngx_table_elt_t *
ngx_http_ws_heartbeat_next_header(ngx_list_t *list, const char *name,
    ngx_list_part_t **part, ngx_uint_t *i) noexcept
{
    size_t            len;
    ngx_table_elt_t  *h;

    if (*part == NULL) {
        *part = &list->part;
        *i = 0;
    }

    len = ngx_strlen(name);

    for ( ;; ) {
        if (*i >= (*part)->nelts) {
            if ((*part)->next == NULL) {
                return NULL;
            }

            *part = (*part)->next;
            *i = 0;
            continue;
        }

        h = &static_cast<ngx_table_elt_t *>((*part)->elts)[(*i)++];

        if (h->hash != 0 && h->key.len == len
            && ngx_strncasecmp(h->key.data, (u_char *) name, len) == 0)
        {
            return h;
        }
    }
}


static inline const char *
ngx_http_ws_heartbeat_side_name(ngx_uint_t which) noexcept
{
    return which == NGX_HTTP_WS_HB_CLIENT ? "client" : "upstream";
}


#define ngx_http_ws_heartbeat_count(st, field)                               \
    if ((st) != NULL) {                                                      \
        (void) ngx_atomic_fetch_add(&(st)->field, 1);                         \
    }


/* what each glue file offers the others; hidden: inside the .so only */

#pragma GCC visibility push(hidden)


/* ngx/ngx_ws_heartbeat_filter.cpp: finds upgraded connections, hooks them */

ngx_int_t ngx_http_ws_heartbeat_filter_init(ngx_conf_t *cf) noexcept;


/* ngx/ngx_ws_heartbeat_io.cpp: the send/recv wrappers and what they run */

ssize_t ngx_http_ws_heartbeat_send_client(ngx_connection_t *c, u_char *buf,
    size_t size) noexcept;
ssize_t ngx_http_ws_heartbeat_send_upstream(ngx_connection_t *c,
    u_char *buf, size_t size) noexcept;
ssize_t ngx_http_ws_heartbeat_recv_client(ngx_connection_t *c, u_char *buf,
    size_t size) noexcept;
ssize_t ngx_http_ws_heartbeat_recv_upstream(ngx_connection_t *c,
    u_char *buf, size_t size) noexcept;
void ngx_http_ws_heartbeat_write_handler(ngx_http_request_t *r) noexcept;
void ngx_http_ws_heartbeat_upstream_write_handler(ngx_http_request_t *r,
    ngx_http_upstream_t *u) noexcept;
void ngx_http_ws_heartbeat_pass(ngx_http_request_t *r,
    ngx_http_ws_heartbeat_ev_e ev) noexcept;
bool ngx_http_ws_heartbeat_queue_frame(ngx_http_ws_heartbeat_side_t *s,
    wshb::opcode op, std::uint32_t value, wshb::close_text text,
    bool replace) noexcept;
void ngx_http_ws_heartbeat_flush(ngx_http_ws_heartbeat_side_t *s) noexcept;
void ngx_http_ws_heartbeat_watch(ngx_http_ws_heartbeat_side_t *s) noexcept;
void ngx_http_ws_heartbeat_unhook(ngx_connection_t *c) noexcept;


/* ngx/ngx_ws_heartbeat_buffers.cpp: the relay's buffers while idle */

void ngx_http_ws_heartbeat_buffers_hook(ngx_http_request_t *r,
    ngx_http_ws_heartbeat_ctx_t *ctx) noexcept;
void ngx_http_ws_heartbeat_buffers_wake(ngx_http_request_t *r,
    ngx_http_ws_heartbeat_ev_e ev) noexcept;
void ngx_http_ws_heartbeat_buffers_tick(ngx_http_request_t *r,
    ngx_connection_t *c) noexcept;
void ngx_http_ws_heartbeat_upstream_read_handler(ngx_http_request_t *r,
    ngx_http_upstream_t *u) noexcept;


/* ngx/ngx_ws_heartbeat_timer.cpp: deadlines, Pings, timeouts */

void ngx_http_ws_heartbeat_start(ngx_http_ws_heartbeat_ctx_t *ctx) noexcept;
void ngx_http_ws_heartbeat_arm(ngx_http_ws_heartbeat_ctx_t *ctx) noexcept;
void ngx_http_ws_heartbeat_stuck(ngx_http_ws_heartbeat_side_t *s,
    ngx_connection_t *c) noexcept;
void ngx_http_ws_heartbeat_read_handler(ngx_http_request_t *r) noexcept;


/* ngx/ngx_ws_heartbeat_close.cpp: stepping aside, Close frames, finalize */

void ngx_http_ws_heartbeat_quiet(ngx_http_ws_heartbeat_ctx_t *ctx,
    bool drop_queued) noexcept;
void ngx_http_ws_heartbeat_step_aside(ngx_http_ws_heartbeat_ctx_t *ctx)
    noexcept;
bool ngx_http_ws_heartbeat_queue_close(ngx_http_ws_heartbeat_side_t *s,
    std::uint16_t code, wshb::close_text text) noexcept;
void ngx_http_ws_heartbeat_send_close(ngx_http_ws_heartbeat_side_t *s,
    std::uint16_t code, wshb::close_text text) noexcept;
void ngx_http_ws_heartbeat_close(ngx_http_ws_heartbeat_ctx_t *ctx,
    ngx_http_ws_heartbeat_side_t *dead, wshb::close_reason reason) noexcept;
void ngx_http_ws_heartbeat_start_closing(ngx_http_ws_heartbeat_ctx_t *ctx,
    ngx_http_ws_heartbeat_end_e why) noexcept;
bool ngx_http_ws_heartbeat_close_pending(ngx_http_ws_heartbeat_side_t *s)
    noexcept;
void ngx_http_ws_heartbeat_closing_expired(ngx_http_ws_heartbeat_ctx_t *ctx)
    noexcept;
void ngx_http_ws_heartbeat_finalize(ngx_http_ws_heartbeat_ctx_t *ctx)
    noexcept;


/* ngx/ngx_ws_heartbeat_exit.cpp: the worker-exit drain, the max age */

void ngx_http_ws_heartbeat_exit_hooked(ngx_http_ws_heartbeat_ctx_t *ctx)
    noexcept;
std::uint64_t ngx_http_ws_heartbeat_end_deadline(
    ngx_http_ws_heartbeat_ctx_t *ctx) noexcept;
bool ngx_http_ws_heartbeat_end_due(ngx_http_ws_heartbeat_ctx_t *ctx)
    noexcept;
ngx_int_t ngx_http_ws_heartbeat_init_process(ngx_cycle_t *cycle) noexcept;
void ngx_http_ws_heartbeat_exit_process(ngx_cycle_t *cycle) noexcept;


/* ngx/ngx_ws_heartbeat_stats.cpp: the counters in shared memory */

ngx_int_t ngx_http_ws_heartbeat_stats_init(ngx_conf_t *cf,
    ngx_http_ws_heartbeat_main_conf_t *hmcf) noexcept;
void ngx_http_ws_heartbeat_stats_init_process(
    ngx_http_ws_heartbeat_main_conf_t *hmcf) noexcept;
void ngx_http_ws_heartbeat_stats_exit_process(
    ngx_http_ws_heartbeat_main_conf_t *hmcf) noexcept;
ngx_atomic_uint_t ngx_http_ws_heartbeat_active(
    ngx_http_ws_heartbeat_shm_t *shm, ngx_uint_t slot) noexcept;
char *ngx_http_ws_heartbeat_metrics_group(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf) noexcept;
ngx_int_t ngx_http_ws_heartbeat_find_group(
    ngx_http_ws_heartbeat_main_conf_t *hmcf, ngx_str_t *name) noexcept;
extern const std::uint64_t  ngx_http_ws_heartbeat_age_le[];
void ngx_http_ws_heartbeat_count_rtt(ngx_http_ws_heartbeat_stats_t *st,
    ngx_uint_t side, std::uint64_t us) noexcept;
void ngx_http_ws_heartbeat_count_close_frame(
    ngx_http_ws_heartbeat_stats_t *st, ngx_uint_t from,
    const std::uint8_t *payload, std::size_t n) noexcept;
void ngx_http_ws_heartbeat_count_start(ngx_http_ws_heartbeat_ctx_t *ctx)
    noexcept;
void ngx_http_ws_heartbeat_count_end(ngx_http_ws_heartbeat_ctx_t *ctx)
    noexcept;
ngx_http_ws_heartbeat_end_e ngx_http_ws_heartbeat_end(
    ngx_http_ws_heartbeat_ctx_t *ctx) noexcept;
extern const char  *ngx_http_ws_heartbeat_end_names[];
extern const std::uint64_t  ngx_http_ws_heartbeat_rtt_le[];


/* ngx/ngx_ws_heartbeat_status.cpp: the ws_heartbeat_status endpoint */

char *ngx_http_ws_heartbeat_status(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf) noexcept;
ngx_int_t ngx_http_ws_heartbeat_status_handler(ngx_http_request_t *r)
    noexcept;


/* ngx/ngx_ws_heartbeat_variables.cpp: the $ws_heartbeat_* variables */

ngx_int_t ngx_http_ws_heartbeat_add_variables(ngx_conf_t *cf) noexcept;


#pragma GCC visibility pop


#endif /* NGX_WS_HEARTBEAT_HPP */
