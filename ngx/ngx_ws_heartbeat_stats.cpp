
/*
 * ngx_ws_heartbeat_module: what the module counts. Counters in shared
 * memory, summed over the workers and kept across reloads, updated with
 * atomic adds on the relay path (no lock). ngx_ws_heartbeat_status.cpp
 * prints them.
 */


#include "ngx_ws_heartbeat.hpp"


static ngx_int_t ngx_http_ws_heartbeat_init_zone(ngx_shm_zone_t *shm_zone,
    void *data) noexcept;


static ngx_str_t  ngx_http_ws_heartbeat_zone_name =
    ngx_string("ngx_ws_heartbeat");


/* one word per reason: log variable values and metric labels */

const char  *ngx_http_ws_heartbeat_end_names[] = {
    "open",
    "client_heartbeat_timeout",
    "upstream_heartbeat_timeout",
    "read_timeout",
    "send_timeout",
    "invalid_frame",
    "drain",
    "max_age",
    "client_close",
    "upstream_close",
    "other"
};

static_assert(sizeof(ngx_http_ws_heartbeat_end_names)
              / sizeof(ngx_http_ws_heartbeat_end_names[0])
              == NGX_HTTP_WS_HB_END_N, "a name for every end");


/* upper bounds of the RTT buckets, in microseconds (Prometheus "le") */

const std::uint64_t  ngx_http_ws_heartbeat_rtt_le[] = {
    1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
    1000000, 2500000, 5000000, 10000000
};

static_assert(sizeof(ngx_http_ws_heartbeat_rtt_le)
              / sizeof(ngx_http_ws_heartbeat_rtt_le[0])
              == NGX_HTTP_WS_HB_RTT_BUCKETS - 1, "buckets and +Inf");


ngx_int_t
ngx_http_ws_heartbeat_stats_init(ngx_conf_t *cf,
    ngx_http_ws_heartbeat_main_conf_t *hmcf) noexcept
{
    ngx_shm_zone_t  *zone;

    /* the counters and the slab allocator's own pages */

    zone = ngx_shared_memory_add(cf, &ngx_http_ws_heartbeat_zone_name,
                                 ngx_align(sizeof(ngx_http_ws_heartbeat_stats_t),
                                           ngx_pagesize)
                                 + 8 * ngx_pagesize,
                                 &ngx_ws_heartbeat_module);
    if (zone == NULL) {
        return NGX_ERROR;
    }

    zone->init = ngx_http_ws_heartbeat_init_zone;
    zone->data = hmcf;
    hmcf->zone = zone;

    return NGX_OK;
}


static ngx_int_t
ngx_http_ws_heartbeat_init_zone(ngx_shm_zone_t *shm_zone, void *data)
    noexcept
{
    ngx_slab_pool_t                    *shpool;
    ngx_http_ws_heartbeat_stats_t      *st;
    ngx_http_ws_heartbeat_main_conf_t  *hmcf, *old;

    hmcf = static_cast<ngx_http_ws_heartbeat_main_conf_t *>(shm_zone->data);
    old = static_cast<ngx_http_ws_heartbeat_main_conf_t *>(data);
    shpool = reinterpret_cast<ngx_slab_pool_t *>(shm_zone->shm.addr);

    /*
     * a reload keeps the counters of the previous configuration, unless
     * they were laid out by another version of the module
     */

    st = old != NULL ? old->stats
         : shm_zone->shm.exists
         ? static_cast<ngx_http_ws_heartbeat_stats_t *>(shpool->data)
         : NULL;

    if (st != NULL && st->layout == NGX_HTTP_WS_HB_LAYOUT) {
        hmcf->stats = st;
        return NGX_OK;
    }

    st = static_cast<ngx_http_ws_heartbeat_stats_t *>(
             ngx_slab_calloc(shpool, sizeof(ngx_http_ws_heartbeat_stats_t)));
    if (st == NULL) {
        return NGX_ERROR;
    }

    st->layout = NGX_HTTP_WS_HB_LAYOUT;
    shpool->data = st;
    hmcf->stats = st;

    return NGX_OK;
}


/* a process counted in the gauge: alive (kill() may not be allowed) */

static bool
ngx_http_ws_heartbeat_alive(ngx_pid_t pid) noexcept
{
    return kill(pid, 0) == 0 || ngx_errno == NGX_EPERM;
}


/*
 * a worker takes a free slot, its own pid's (a dead process of the same
 * pid), or one of a process that is gone, and starts it from 0
 */

void
ngx_http_ws_heartbeat_stats_init_process(
    ngx_http_ws_heartbeat_main_conf_t *hmcf) noexcept
{
    ngx_uint_t                       i;
    ngx_atomic_uint_t                pid;
    ngx_http_ws_heartbeat_worker_t  *w;

    if (hmcf->stats == NULL) {
        return;
    }

    w = hmcf->stats->workers;

    for (i = 0; i < NGX_HTTP_WS_HB_WORKERS; i++) {
        pid = w[i].pid;

        if ((pid == 0 || pid == (ngx_atomic_uint_t) ngx_pid
             || !ngx_http_ws_heartbeat_alive((ngx_pid_t) pid))
            && ngx_atomic_cmp_set(&w[i].pid, pid, ngx_pid))
        {
            w[i].active = 0;
            hmcf->slot = &w[i];
            return;
        }
    }

    ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                  "ws heartbeat: no free slot for this worker's active "
                  "connections, they are counted without one");
}


void
ngx_http_ws_heartbeat_stats_exit_process(
    ngx_http_ws_heartbeat_main_conf_t *hmcf) noexcept
{
    if (hmcf->slot != NULL) {
        (void) ngx_atomic_cmp_set(&hmcf->slot->pid, ngx_pid, 0);
        hmcf->slot = NULL;
    }
}


/* the gauge: the connections of the workers alive */

ngx_atomic_uint_t
ngx_http_ws_heartbeat_active(ngx_http_ws_heartbeat_stats_t *st) noexcept
{
    ngx_uint_t                       i;
    ngx_atomic_uint_t                sum, pid;
    ngx_http_ws_heartbeat_worker_t  *w;

    sum = st->unslotted;
    w = st->workers;

    for (i = 0; i < NGX_HTTP_WS_HB_WORKERS; i++) {
        pid = w[i].pid;

        if (pid != 0 && ngx_http_ws_heartbeat_alive((ngx_pid_t) pid)) {
            sum += w[i].active;
        }
    }

    return sum;
}


/* the worker's active connections: in its slot, or without one */

static void
ngx_http_ws_heartbeat_count_active(ngx_http_ws_heartbeat_ctx_t *ctx,
    ngx_atomic_int_t delta) noexcept
{
    ngx_http_ws_heartbeat_main_conf_t  *hmcf;

    hmcf = ngx_http_ws_heartbeat_main_conf(ctx->request);

    if (hmcf->slot != NULL) {
        (void) ngx_atomic_fetch_add(&hmcf->slot->active, delta);

    } else if (hmcf->stats != NULL) {
        (void) ngx_atomic_fetch_add(&hmcf->stats->unslotted, delta);
    }
}


/* a connection the module manages from now on, and its end */

void
ngx_http_ws_heartbeat_count_start(ngx_http_ws_heartbeat_ctx_t *ctx) noexcept
{
    ngx_http_ws_heartbeat_count(ngx_http_ws_heartbeat_stats(ctx),
                                connections);
    ngx_http_ws_heartbeat_count_active(ctx, 1);
}


void
ngx_http_ws_heartbeat_count_end(ngx_http_ws_heartbeat_ctx_t *ctx) noexcept
{
    ngx_http_ws_heartbeat_count_active(ctx, -1);
    ngx_http_ws_heartbeat_count(ngx_http_ws_heartbeat_stats(ctx),
                                ends[ngx_http_ws_heartbeat_end(ctx)]);
}


void
ngx_http_ws_heartbeat_count_rtt(ngx_http_ws_heartbeat_stats_t *st,
    ngx_uint_t side, std::uint64_t us) noexcept
{
    ngx_uint_t  i;

    if (st == NULL) {
        return;
    }

    /* buckets are kept apart here and made cumulative when reported */

    for (i = 0; i < NGX_HTTP_WS_HB_RTT_BUCKETS - 1; i++) {
        if (us <= ngx_http_ws_heartbeat_rtt_le[i]) {
            break;
        }
    }

    (void) ngx_atomic_fetch_add(&st->rtt[side].buckets[i], 1);
    (void) ngx_atomic_fetch_add(&st->rtt[side].sum_us, (ngx_atomic_int_t) us);
    (void) ngx_atomic_fetch_add(&st->rtt[side].count, 1);
}


void
ngx_http_ws_heartbeat_count_close_frame(ngx_http_ws_heartbeat_stats_t *st,
    ngx_uint_t from, const std::uint8_t *payload, std::size_t n) noexcept
{
    ngx_uint_t  code, i;

    if (st == NULL) {
        return;
    }

    /* 1000..1015 by code; application codes and an empty Close: "other" */

    i = NGX_HTTP_WS_HB_CODES - 1;

    if (n >= 2) {
        code = (ngx_uint_t) payload[0] << 8 | payload[1];

        if (code >= 1000 && code < 1000 + NGX_HTTP_WS_HB_CODES - 1) {
            i = code - 1000;
        }
    }

    (void) ngx_atomic_fetch_add(&st->close_frames[from][i], 1);
}


ngx_http_ws_heartbeat_end_e
ngx_http_ws_heartbeat_end(ngx_http_ws_heartbeat_ctx_t *ctx) noexcept
{
    if (ctx->end != NGX_HTTP_WS_HB_END_NONE) {
        return (ngx_http_ws_heartbeat_end_e) ctx->end;
    }

    /* who started the closing handshake, or else who hung up first */

    switch (ctx->first_close ? ctx->first_close : ctx->first_eof) {

    case 1:
        return NGX_HTTP_WS_HB_END_CLIENT_CLOSE;

    case 2:
        return NGX_HTTP_WS_HB_END_UPSTREAM_CLOSE;

    default:
        return NGX_HTTP_WS_HB_END_OTHER;
    }
}
