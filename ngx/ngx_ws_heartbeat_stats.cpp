
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


/* upper bounds of the connection duration buckets, in microseconds */

const std::uint64_t  ngx_http_ws_heartbeat_age_le[] = {
    1000000ULL, 5000000ULL, 30000000ULL, 60000000ULL, 300000000ULL,
    900000000ULL, 3600000000ULL, 14400000000ULL, 43200000000ULL,
    86400000000ULL
};

static_assert(sizeof(ngx_http_ws_heartbeat_age_le)
              / sizeof(ngx_http_ws_heartbeat_age_le[0])
              == NGX_HTTP_WS_HB_AGE_BUCKETS - 1, "buckets and +Inf");


/* ws_heartbeat_metrics_group name: a label value and a JSON key as is */

char *
ngx_http_ws_heartbeat_metrics_group(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf) noexcept
{
    ngx_http_ws_heartbeat_loc_conf_t *lcf =
        static_cast<ngx_http_ws_heartbeat_loc_conf_t *>(conf);

    u_char                             *c;
    ngx_int_t                           g;
    ngx_str_t                          *value, *name;
    ngx_http_ws_heartbeat_main_conf_t  *hmcf;

    if (lcf->group != NGX_CONF_UNSET_UINT) {
        return const_cast<char *>("is duplicate");
    }

    value = static_cast<ngx_str_t *>(cf->args->elts);

    /* "": the connections of locations without a group, explicitly */

    if (value[1].len == 0) {
        lcf->group = 0;
        return NGX_CONF_OK;
    }

    for (c = value[1].data; c < value[1].data + value[1].len; c++) {
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z')
              || (*c >= '0' && *c <= '9') || *c == '_' || *c == '.'
              || *c == '-'))
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid value \"%V\" in \"%V\" directive, "
                               "a group name has only letters, digits, "
                               "\"_\", \".\" and \"-\"",
                               &value[1], &cmd->name);
            return static_cast<char *>(NGX_CONF_ERROR);
        }
    }

    if (value[1].len > NGX_HTTP_WS_HB_GROUP_LEN) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" in \"%V\" directive, "
                           "a group name has at most %d characters",
                           &value[1], &cmd->name,
                           (int) NGX_HTTP_WS_HB_GROUP_LEN);
        return static_cast<char *>(NGX_CONF_ERROR);
    }

    hmcf = static_cast<ngx_http_ws_heartbeat_main_conf_t *>(
               ngx_http_conf_get_module_main_conf(cf,
                                                  ngx_ws_heartbeat_module));

    g = ngx_http_ws_heartbeat_find_group(hmcf, &value[1]);

    if (g != NGX_DECLINED) {
        lcf->group = (ngx_uint_t) g;
        return NGX_CONF_OK;
    }

    /* bounded cardinality: only the names written here exist, 64 at most */

    if (hmcf->groups == NULL) {
        hmcf->groups = ngx_array_create(cf->pool, 8, sizeof(ngx_str_t));
        if (hmcf->groups == NULL) {
            return static_cast<char *>(NGX_CONF_ERROR);
        }
    }

    if (hmcf->groups->nelts == NGX_HTTP_WS_HB_GROUPS - 1) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" in \"%V\" directive, "
                           "at most %d groups in a configuration",
                           &value[1], &cmd->name,
                           (int) NGX_HTTP_WS_HB_GROUPS - 1);
        return static_cast<char *>(NGX_CONF_ERROR);
    }

    name = static_cast<ngx_str_t *>(ngx_array_push(hmcf->groups));
    if (name == NULL) {
        return static_cast<char *>(NGX_CONF_ERROR);
    }

    *name = value[1];
    lcf->group = hmcf->groups->nelts;

    return NGX_CONF_OK;
}


/* a group of this configuration by name: its index; "" is 0 */

ngx_int_t
ngx_http_ws_heartbeat_find_group(ngx_http_ws_heartbeat_main_conf_t *hmcf,
    ngx_str_t *name) noexcept
{
    ngx_str_t   *names;
    ngx_uint_t   i;

    if (name->len == 0) {
        return 0;
    }

    if (hmcf->groups == NULL) {
        return NGX_DECLINED;
    }

    names = static_cast<ngx_str_t *>(hmcf->groups->elts);

    for (i = 0; i < hmcf->groups->nelts; i++) {
        if (names[i].len == name->len
            && ngx_strncmp(names[i].data, name->data, name->len) == 0)
        {
            return (ngx_int_t) i + 1;
        }
    }

    return NGX_DECLINED;
}


/*
 * The zone has a fixed size: NGX_HTTP_WS_HB_GROUPS entries for groups,
 * whatever the configuration has. So that a reload that adds or removes
 * groups keeps the zone (nginx reuses a zone of the same name and size,
 * and calls init_zone with the previous configuration's data), with the
 * counters of every group that remains, and so that the old workers that
 * drain after the reload go on counting into the very same memory. A zone
 * sized from the configuration would be a new zone at each change of the
 * number of groups: its counters copied once, and what the old workers
 * count after the copy lost. 65 entries of 0.85 KB cost little (the
 * per-worker gauge by group is most of the zone: see the header).
 */

ngx_int_t
ngx_http_ws_heartbeat_stats_init(ngx_conf_t *cf,
    ngx_http_ws_heartbeat_main_conf_t *hmcf) noexcept
{
    ngx_shm_zone_t  *zone;

    hmcf->ngroups = 1 + (hmcf->groups != NULL ? hmcf->groups->nelts : 0);

    /* the counters and the slab allocator's own pages */

    zone = ngx_shared_memory_add(cf, &ngx_http_ws_heartbeat_zone_name,
                                 ngx_align(sizeof(ngx_http_ws_heartbeat_shm_t),
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


/*
 * the zone's entry of each group of the configuration: the entry of the
 * same name; for a new name an entry never used, or else the one whose
 * group left the configurations longest ago (its counters start at 0;
 * only a reload that brings more new names than there are free entries
 * takes the entry of a group the previous configuration had: its
 * connections still draining in old workers then end under the new name)
 */

static void
ngx_http_ws_heartbeat_map_groups(ngx_http_ws_heartbeat_main_conf_t *hmcf,
    ngx_http_ws_heartbeat_shm_t *shm) noexcept
{
    bool                            taken[NGX_HTTP_WS_HB_GROUPS];
    ngx_str_t                      *names;
    ngx_uint_t                      g, i, best;
    ngx_atomic_uint_t               gen;
    ngx_http_ws_heartbeat_stats_t  *st;

    gen = ++shm->generation;
    names = hmcf->groups != NULL
            ? static_cast<ngx_str_t *>(hmcf->groups->elts) : NULL;

    ngx_memzero(taken, sizeof(taken));

    /* the unnamed group is always entry 0 */

    taken[0] = true;
    hmcf->stats_slot[0] = 0;

    for (g = 1; g < hmcf->ngroups; g++) {
        hmcf->stats_slot[g] = NGX_HTTP_WS_HB_GROUPS;

        for (i = 1; i < NGX_HTTP_WS_HB_GROUPS; i++) {
            st = &shm->groups[i];

            if (st->generation != 0
                && ngx_strlen(st->name) == names[g - 1].len
                && ngx_strncmp(st->name, names[g - 1].data,
                               names[g - 1].len) == 0)
            {
                hmcf->stats_slot[g] = i;
                taken[i] = true;
                break;
            }
        }
    }

    for (g = 1; g < hmcf->ngroups; g++) {
        if (hmcf->stats_slot[g] != NGX_HTTP_WS_HB_GROUPS) {
            continue;
        }

        best = 0;

        for (i = 1; i < NGX_HTTP_WS_HB_GROUPS; i++) {
            if (!taken[i]
                && (best == 0
                    || shm->groups[i].generation
                       < shm->groups[best].generation))
            {
                best = i;
            }
        }

        /* at most 64 names: there is always one */

        st = &shm->groups[best];

        ngx_memzero(reinterpret_cast<u_char *>(st)
                    + offsetof(ngx_http_ws_heartbeat_stats_t, connections),
                    sizeof(ngx_http_ws_heartbeat_stats_t)
                    - offsetof(ngx_http_ws_heartbeat_stats_t, connections));
        *ngx_cpymem(st->name, names[g - 1].data, names[g - 1].len) = '\0';

        hmcf->stats_slot[g] = best;
        taken[best] = true;
    }

    for (g = 0; g < hmcf->ngroups; g++) {
        st = &shm->groups[hmcf->stats_slot[g]];
        st->generation = gen;
        hmcf->stats[g] = st;
    }
}


static ngx_int_t
ngx_http_ws_heartbeat_init_zone(ngx_shm_zone_t *shm_zone, void *data)
    noexcept
{
    ngx_slab_pool_t                    *shpool;
    ngx_http_ws_heartbeat_shm_t        *shm;
    ngx_http_ws_heartbeat_main_conf_t  *hmcf, *old;

    hmcf = static_cast<ngx_http_ws_heartbeat_main_conf_t *>(shm_zone->data);
    old = static_cast<ngx_http_ws_heartbeat_main_conf_t *>(data);
    shpool = reinterpret_cast<ngx_slab_pool_t *>(shm_zone->shm.addr);

    /*
     * a reload keeps the counters of the previous configuration, unless
     * they were laid out by another version of the module
     */

    shm = old != NULL ? old->shm
          : shm_zone->shm.exists
          ? static_cast<ngx_http_ws_heartbeat_shm_t *>(shpool->data)
          : NULL;

    if (shm == NULL || shm->layout != NGX_HTTP_WS_HB_LAYOUT) {
        shm = static_cast<ngx_http_ws_heartbeat_shm_t *>(
                  ngx_slab_calloc(shpool,
                                  sizeof(ngx_http_ws_heartbeat_shm_t)));
        if (shm == NULL) {
            return NGX_ERROR;
        }

        shm->layout = NGX_HTTP_WS_HB_LAYOUT;
        shpool->data = shm;
    }

    hmcf->shm = shm;
    ngx_http_ws_heartbeat_map_groups(hmcf, shm);

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
    ngx_uint_t                       i, g;
    ngx_atomic_uint_t                pid;
    ngx_http_ws_heartbeat_worker_t  *w;

    if (hmcf->shm == NULL) {
        return;
    }

    w = hmcf->shm->workers;

    for (i = 0; i < NGX_HTTP_WS_HB_WORKERS; i++) {
        pid = w[i].pid;

        if ((pid == 0 || pid == (ngx_atomic_uint_t) ngx_pid
             || !ngx_http_ws_heartbeat_alive((ngx_pid_t) pid))
            && ngx_atomic_cmp_set(&w[i].pid, pid, ngx_pid))
        {
            for (g = 0; g < NGX_HTTP_WS_HB_GROUPS; g++) {
                w[i].active[g] = 0;
            }

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


/* the gauge of the group at a zone entry: in the workers alive */

ngx_atomic_uint_t
ngx_http_ws_heartbeat_active(ngx_http_ws_heartbeat_shm_t *shm,
    ngx_uint_t slot) noexcept
{
    ngx_uint_t                       i;
    ngx_atomic_uint_t                sum, pid;
    ngx_http_ws_heartbeat_worker_t  *w;

    sum = shm->groups[slot].unslotted;
    w = shm->workers;

    for (i = 0; i < NGX_HTTP_WS_HB_WORKERS; i++) {
        pid = w[i].pid;

        if (pid != 0 && w[i].active[slot] != 0
            && ngx_http_ws_heartbeat_alive((ngx_pid_t) pid))
        {
            sum += w[i].active[slot];
        }
    }

    return sum;
}


/* the worker's active connections: in its slot, or without one */

static void
ngx_http_ws_heartbeat_count_active(ngx_http_ws_heartbeat_ctx_t *ctx,
    ngx_atomic_int_t delta) noexcept
{
    ngx_uint_t                          g;
    ngx_http_ws_heartbeat_main_conf_t  *hmcf;

    hmcf = ngx_http_ws_heartbeat_main_conf(ctx->request);
    g = ngx_http_ws_heartbeat_conf(ctx)->group;

    if (hmcf->stats[g] == NULL) {
        return;
    }

    if (hmcf->slot != NULL) {
        (void) ngx_atomic_fetch_add(&hmcf->slot->active[hmcf->stats_slot[g]],
                                    delta);

    } else {
        (void) ngx_atomic_fetch_add(&hmcf->stats[g]->unslotted, delta);
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


/*
 * its end, and how long it lived: from the request's start, as
 * $request_time has it (the ctx has no room for a start of its own)
 */

void
ngx_http_ws_heartbeat_count_end(ngx_http_ws_heartbeat_ctx_t *ctx) noexcept
{
    ngx_uint_t                      i;
    ngx_msec_int_t                  ms;
    ngx_time_t                     *tp;
    ngx_http_request_t             *r;
    std::uint64_t                   us;
    ngx_http_ws_heartbeat_stats_t  *st;

    ngx_http_ws_heartbeat_count_active(ctx, -1);

    st = ngx_http_ws_heartbeat_stats(ctx);
    if (st == NULL) {
        return;
    }

    (void) ngx_atomic_fetch_add(&st->ends[ngx_http_ws_heartbeat_end(ctx)], 1);

    r = ctx->request;
    tp = ngx_timeofday();
    ms = (ngx_msec_int_t) ((tp->sec - r->start_sec) * 1000
                           + (tp->msec - r->start_msec));
    us = (std::uint64_t) ngx_max(ms, 0) * 1000;

    for (i = 0; i < NGX_HTTP_WS_HB_AGE_BUCKETS - 1; i++) {
        if (us <= ngx_http_ws_heartbeat_age_le[i]) {
            break;
        }
    }

    (void) ngx_atomic_fetch_add(&st->ages.buckets[i], 1);
    (void) ngx_atomic_fetch_add(&st->ages.sum_us, (ngx_atomic_int_t) us);
    (void) ngx_atomic_fetch_add(&st->ages.count, 1);
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
