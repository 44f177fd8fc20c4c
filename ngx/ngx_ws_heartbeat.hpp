
/*
 * ngx_ws_heartbeat_module: the types the glue files share. The only place
 * besides the glue .cpp files that includes nginx headers.
 */


#ifndef NGX_WS_HEARTBEAT_HPP
#define NGX_WS_HEARTBEAT_HPP


/* nginx headers first: they define 64-bit off_t */

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
}

#if __cplusplus < 201703L && !defined(WSHB_CXX17_ERROR)
#define WSHB_CXX17_ERROR
#error "ngx_ws_heartbeat needs C++17, newer than this compiler's default:"
#error "build with gcc >= 11 or clang >= 16 (./configure --with-cc=gcc-11)"
#endif

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


typedef struct {
    ngx_flag_t                      enable;
    ngx_flag_t                      upstream;
    ngx_msec_t                      interval;
    ngx_msec_t                      timeout;
    ngx_msec_t                      read_timeout;
    ngx_msec_t                      send_timeout;
    ngx_flag_t                      drain;
    ngx_msec_t                      drain_timeout;
} ngx_http_ws_heartbeat_loc_conf_t;


/* why a managed connection ended: $ws_heartbeat_close_reason, counters */

typedef enum {
    NGX_HTTP_WS_HB_END_NONE = 0,            /* still open */
    NGX_HTTP_WS_HB_END_CLIENT_HEARTBEAT,
    NGX_HTTP_WS_HB_END_UPSTREAM_HEARTBEAT,
    NGX_HTTP_WS_HB_END_READ_TIMEOUT,
    NGX_HTTP_WS_HB_END_SEND_TIMEOUT,
    NGX_HTTP_WS_HB_END_INVALID_FRAME,
    NGX_HTTP_WS_HB_END_DRAIN,
    NGX_HTTP_WS_HB_END_CLIENT_CLOSE,
    NGX_HTTP_WS_HB_END_UPSTREAM_CLOSE,
    NGX_HTTP_WS_HB_END_OTHER,
    NGX_HTTP_WS_HB_END_N
} ngx_http_ws_heartbeat_end_e;


#define NGX_HTTP_WS_HB_CODES        17      /* 1000..1015, other */
#define NGX_HTTP_WS_HB_RTT_BUCKETS  14      /* 1ms .. 10s, +Inf */


/*
 * Counters in shared memory, summed over all workers and kept across
 * reloads. Updated with atomic adds only; no lock anywhere.
 */

typedef struct {
    ngx_atomic_t                    connections;
    ngx_atomic_t                    active;
    ngx_atomic_t                    pings[2];       /* by side */
    ngx_atomic_t                    pongs[2];
    ngx_atomic_t                    ends[NGX_HTTP_WS_HB_END_N];
    ngx_atomic_t                    close_frames[2][NGX_HTTP_WS_HB_CODES];
    ngx_atomic_t                    rtt[2][NGX_HTTP_WS_HB_RTT_BUCKETS];
    ngx_atomic_t                    rtt_sum_us[2];
    ngx_atomic_t                    rtt_count[2];
} ngx_http_ws_heartbeat_stats_t;


typedef struct {
    ngx_connection_t               *watch;  /* per worker: exit signal */
    ngx_shm_zone_t                 *zone;
    ngx_http_ws_heartbeat_stats_t  *stats;

    /*
     * the relay's event handlers that the module wraps, the same for every
     * upgraded connection (ngx_http_upstream.c's): saved once per worker
     */
    ngx_http_event_handler_pt       read_handler;
    ngx_http_event_handler_pt       write_handler;
    ngx_http_upstream_handler_pt    upstream_write_handler;
} ngx_http_ws_heartbeat_main_conf_t;


typedef enum {
    NGX_HTTP_WS_HB_CLIENT = 0,
    NGX_HTTP_WS_HB_UPSTREAM
} ngx_http_ws_heartbeat_side_e;


struct ngx_http_ws_heartbeat_ctx_t;


/* a side's flags, in its outbound's owner_bits() */

#define NGX_HTTP_WS_HB_S_UPSTREAM       0x01    /* which: the upstream */
#define NGX_HTTP_WS_HB_S_PING_QUEUED    0x02    /* our Ping not written */
#define NGX_HTTP_WS_HB_S_BLOCKED        0x04    /* last write blocked */
#define NGX_HTTP_WS_HB_S_CLOSE_SENT     0x08    /* a Close went to it */
#define NGX_HTTP_WS_HB_S_DRAIN_PENDING  0x10    /* Close after message */


/*
 * one peer of the relay: the bytes sent to it; its connection, ctx and
 * heartbeat are found from which() (ngx_ws_heartbeat_module.cpp)
 */
struct ngx_http_ws_heartbeat_side_t {
    wshb::outbound                  out;     /* bytes written to this peer */

    ngx_http_ws_heartbeat_side_t(ngx_uint_t w, bool swallow, bool rsv1)
        noexcept
        : out(w == NGX_HTTP_WS_HB_CLIENT ? wshb::role::server
                                         : wshb::role::client,
              swallow, rsv1)
    {
        out.owner_bits() = w == NGX_HTTP_WS_HB_CLIENT
                           ? 0 : NGX_HTTP_WS_HB_S_UPSTREAM;
    }

    ngx_uint_t which() const noexcept
    {
        return out.owner_bits() & NGX_HTTP_WS_HB_S_UPSTREAM;
    }

    bool is(std::uint8_t flag) const noexcept
    {
        return (out.owner_bits() & flag) != 0;
    }

    void set(std::uint8_t flag, bool on) noexcept
    {
        out.owner_bits() = static_cast<std::uint8_t>(
            on ? out.owner_bits() | flag : out.owner_bits() & ~flag);
    }
};


/*
 * Per upgraded connection, from the client connection's pool. Its timer is
 * the client connection's read event timer, which nginx leaves unused while
 * it relays an upgraded connection (ngx_http_upstream_process_upgraded()
 * times only the client's writes and the upstream's reads and writes).
 * The upstream's heartbeat comes last and is allocated only with
 * ws_heartbeat_upstream on.
 */
struct ngx_http_ws_heartbeat_ctx_t {
    /* client: frames to the client; upstream: frames to the upstream */
    ngx_http_ws_heartbeat_side_t        client;
    ngx_http_ws_heartbeat_side_t        upstream;

    ngx_http_request_t                 *request;

    /* at the 101 header: the relay has started when it has changed */
    ngx_http_event_handler_pt           header_write_handler;

    unsigned                            end:4;    /* _end_e */
    unsigned                            hooked:1; /* relay hooked */
    unsigned                            seen:1;   /* body filter ran */
    unsigned                            disabled:1;   /* stepped aside */
    unsigned                            invalid:1;    /* logged it */
    unsigned                            close_seen:1; /* endpoint Close */
    unsigned                            draining:1;
    unsigned                            first_close:2; /* 1 client, 2 up */
    unsigned                            first_eof:2;   /* 1 client, 2 up */
    unsigned                            upstream_hb:1; /* allocated */

    wshb::heartbeat                     client_hb;
    alignas(wshb::heartbeat) unsigned char
                                        upstream_hb_[sizeof(wshb::heartbeat)];

    /* bytes to allocate; the constructor needs them all */
    static std::size_t size(bool upstream_ping) noexcept
    {
        return upstream_ping ? sizeof(ngx_http_ws_heartbeat_ctx_t)
               : offsetof(ngx_http_ws_heartbeat_ctx_t, upstream_hb_);
    }

    ngx_http_ws_heartbeat_ctx_t(ngx_http_request_t *r, bool upstream_ping,
        bool rsv1) noexcept
        : client(NGX_HTTP_WS_HB_CLIENT, upstream_ping, rsv1),
          upstream(NGX_HTTP_WS_HB_UPSTREAM, true, rsv1),
          request(r), header_write_handler(nullptr),
          end(NGX_HTTP_WS_HB_END_NONE), hooked(0), seen(0), disabled(0),
          invalid(0), close_seen(0), draining(0),
          first_close(0), first_eof(0), upstream_hb(upstream_ping),
          client_hb()
    {
        if (upstream_ping) {
            new (upstream_hb_) wshb::heartbeat();
        }
    }

    /* a side's heartbeat; NULL: the upstream one with no Pings to send */
    wshb::heartbeat *hb(ngx_uint_t which) noexcept
    {
        if (which == NGX_HTTP_WS_HB_CLIENT) {
            return &client_hb;
        }

        return upstream_hb
               ? std::launder(reinterpret_cast<wshb::heartbeat *>(
                     upstream_hb_))
               : nullptr;
    }
};

/*
 * Both sides are named by the peer they talk to: ctx->client.out carries
 * upstream frames (and our Pings) to the client and may swallow upstream
 * Pongs; ctx->upstream.out carries client frames to the upstream and
 * swallows the client's Pongs to our Pings.
 */

static_assert(std::is_trivially_destructible<ngx_http_ws_heartbeat_ctx_t>
              ::value, "ctx lives in a pool without a destructor");
static_assert(std::is_standard_layout<ngx_http_ws_heartbeat_ctx_t>::value,
              "a side finds its ctx with offsetof()");
static_assert(offsetof(ngx_http_ws_heartbeat_ctx_t, upstream_hb_) <= 256,
              "per-connection state: at most 256 bytes (without the "
              "upstream heartbeat)");




#pragma GCC visibility pop


extern "C" {
extern ngx_module_t  ngx_ws_heartbeat_module;
}


/* ngx/ngx_ws_heartbeat_stats.cpp; hidden: called inside the .so only */

#pragma GCC visibility push(hidden)


ngx_int_t ngx_http_ws_heartbeat_stats_init(ngx_conf_t *cf,
    ngx_http_ws_heartbeat_main_conf_t *hmcf) noexcept;
ngx_int_t ngx_http_ws_heartbeat_add_variables(ngx_conf_t *cf) noexcept;
char *ngx_http_ws_heartbeat_status(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf) noexcept;
void ngx_http_ws_heartbeat_count_rtt(ngx_http_ws_heartbeat_stats_t *st,
    ngx_uint_t side, std::uint64_t us) noexcept;
void ngx_http_ws_heartbeat_count_close_frame(
    ngx_http_ws_heartbeat_stats_t *st, ngx_uint_t from,
    const std::uint8_t *payload, std::size_t n) noexcept;
ngx_http_ws_heartbeat_end_e ngx_http_ws_heartbeat_end(
    ngx_http_ws_heartbeat_ctx_t *ctx) noexcept;

#pragma GCC visibility pop


#define ngx_http_ws_heartbeat_count(st, field)                               \
    if ((st) != NULL) {                                                      \
        (void) ngx_atomic_fetch_add(&(st)->field, 1);                         \
    }


#endif /* NGX_WS_HEARTBEAT_HPP */
