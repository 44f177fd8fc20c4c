
/*
 * ngx_ws_heartbeat_module: heartbeats for WebSocket connections that
 * proxy_pass upgrades. The front door: the module, its directives, and
 * their configuration (create, merge, the checks and warnings of
 * nginx -t). What runs on a connection lives in ngx/, one concern a file:
 * filter (finding and hooking upgraded connections), io (the relay's
 * bytes), timer (Pings and timeouts), close (Close frames, finalize), exit
 * (the worker-exit drain), stats and variables (what it reports).
 */


#include "ngx/ngx_ws_heartbeat.hpp"


static char *ngx_http_ws_heartbeat_set_time(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf) noexcept;
static char *ngx_http_ws_heartbeat_set_max_age(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf) noexcept;
static char *ngx_http_ws_heartbeat_set_idle_buffers(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf) noexcept;
static void *ngx_http_ws_heartbeat_create_main_conf(ngx_conf_t *cf) noexcept;
static void *ngx_http_ws_heartbeat_create_loc_conf(ngx_conf_t *cf) noexcept;
static char *ngx_http_ws_heartbeat_merge_loc_conf(ngx_conf_t *cf,
    void *parent, void *child) noexcept;
static ngx_int_t ngx_http_ws_heartbeat_init(ngx_conf_t *cf) noexcept;
static ngx_int_t ngx_http_ws_heartbeat_init_module(ngx_cycle_t *cycle)
    noexcept;


/*
 * the bounds of a time, read by ngx_http_ws_heartbeat_set_time() (no post
 * handler: nginx's ngx_conf_check_num_bounds() takes numbers, not times);
 * "low" 0 means that 0 turns the feature off
 */

static ngx_conf_num_bounds_t  ngx_http_ws_heartbeat_positive = {
    NULL, NGX_HTTP_WS_HEARTBEAT_MIN_TIME, NGX_HTTP_WS_HEARTBEAT_MAX_TIME
};

static ngx_conf_num_bounds_t  ngx_http_ws_heartbeat_optional = {
    NULL, 0, NGX_HTTP_WS_HEARTBEAT_MAX_TIME
};


static ngx_command_t  ngx_http_ws_heartbeat_commands[] = {

    { ngx_string("ws_heartbeat"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ws_heartbeat_loc_conf_t, enable),
      NULL },

    { ngx_string("ws_heartbeat_interval"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_ws_heartbeat_set_time,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ws_heartbeat_loc_conf_t, interval),
      &ngx_http_ws_heartbeat_positive },

    { ngx_string("ws_heartbeat_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_ws_heartbeat_set_time,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ws_heartbeat_loc_conf_t, timeout),
      &ngx_http_ws_heartbeat_positive },

    { ngx_string("ws_heartbeat_upstream"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ws_heartbeat_loc_conf_t, upstream),
      NULL },

    { ngx_string("ws_heartbeat_read_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_ws_heartbeat_set_time,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ws_heartbeat_loc_conf_t, read_timeout),
      &ngx_http_ws_heartbeat_optional },

    { ngx_string("ws_heartbeat_send_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_ws_heartbeat_set_time,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ws_heartbeat_loc_conf_t, send_timeout),
      &ngx_http_ws_heartbeat_optional },

    { ngx_string("ws_heartbeat_drain"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ws_heartbeat_loc_conf_t, drain),
      NULL },

    { ngx_string("ws_heartbeat_drain_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_ws_heartbeat_set_time,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ws_heartbeat_loc_conf_t, drain_timeout),
      &ngx_http_ws_heartbeat_positive },

    { ngx_string("ws_heartbeat_drain_spread"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_ws_heartbeat_set_time,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ws_heartbeat_loc_conf_t, drain_spread),
      &ngx_http_ws_heartbeat_optional },

    { ngx_string("ws_heartbeat_max_age"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE12,
      ngx_http_ws_heartbeat_set_max_age,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ws_heartbeat_loc_conf_t, max_age),
      NULL },

    { ngx_string("ws_heartbeat_metrics_group"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_ws_heartbeat_metrics_group,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("ws_heartbeat_idle_buffers"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_ws_heartbeat_set_idle_buffers,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ws_heartbeat_loc_conf_t, idle_buffers),
      NULL },

    { ngx_string("ws_heartbeat_status"),
      NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_ws_heartbeat_status,
      0,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_ws_heartbeat_module_ctx = {
    ngx_http_ws_heartbeat_add_variables,   /* preconfiguration */
    ngx_http_ws_heartbeat_init,            /* postconfiguration */

    ngx_http_ws_heartbeat_create_main_conf, /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_ws_heartbeat_create_loc_conf, /* create location configuration */
    ngx_http_ws_heartbeat_merge_loc_conf   /* merge location configuration */
};


extern "C" {

ngx_module_t  ngx_ws_heartbeat_module = {
    NGX_MODULE_V1,
    &ngx_http_ws_heartbeat_module_ctx,     /* module context */
    ngx_http_ws_heartbeat_commands,        /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    ngx_http_ws_heartbeat_init_module,     /* init module */
    ngx_http_ws_heartbeat_init_process,    /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_ws_heartbeat_exit_process,    /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};

/* present when nginx has the proxy module; used for a configuration check */
extern ngx_module_t  ngx_http_proxy_module __attribute__((weak));

}


/*
 * a time in value: within [b->low, b->high], where 0 means off when
 * b->low is 0; NGX_CONF_OK or the error, logged with the directive's name
 */

static char *
ngx_http_ws_heartbeat_parse_time(ngx_conf_t *cf, ngx_command_t *cmd,
    ngx_str_t *value, ngx_conf_num_bounds_t *b, ngx_msec_t *mp) noexcept
{
    ngx_int_t  ms;

    ms = ngx_parse_time(value, 0);

    if (ms == NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" in \"%V\" directive",
                           value, &cmd->name);
        return static_cast<char *>(NGX_CONF_ERROR);
    }

    if (ms == 0 && b->low == 0) {
        *mp = 0;
        return NGX_CONF_OK;
    }

    if (ms < NGX_HTTP_WS_HEARTBEAT_MIN_TIME || ms > b->high) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" in \"%V\" directive, "
                           "it must be %sbetween %dms and %dd",
                           value, &cmd->name,
                           b->low == 0 ? "0 (off) or " : "",
                           (int) NGX_HTTP_WS_HEARTBEAT_MIN_TIME,
                           (int) (NGX_HTTP_WS_HEARTBEAT_MAX_TIME
                                  / (24 * 60 * 60 * 1000)));
        return static_cast<char *>(NGX_CONF_ERROR);
    }

    *mp = (ngx_msec_t) ms;

    return NGX_CONF_OK;
}


static char *
ngx_http_ws_heartbeat_set_time(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf) noexcept
{
    char  *p = static_cast<char *>(conf);

    ngx_str_t   *value;
    ngx_msec_t  *mp;

    mp = reinterpret_cast<ngx_msec_t *>(p + cmd->offset);

    if (*mp != NGX_CONF_UNSET_MSEC) {
        return const_cast<char *>("is duplicate");
    }

    value = static_cast<ngx_str_t *>(cf->args->elts);

    return ngx_http_ws_heartbeat_parse_time(cf, cmd, &value[1],
               static_cast<ngx_conf_num_bounds_t *>(cmd->post), mp);
}


/* ws_heartbeat_max_age off | time [jitter] */

static char *
ngx_http_ws_heartbeat_set_max_age(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf) noexcept
{
    ngx_http_ws_heartbeat_loc_conf_t *lcf =
        static_cast<ngx_http_ws_heartbeat_loc_conf_t *>(conf);

    char       *rv;
    ngx_str_t  *value;

    if (lcf->max_age != NGX_CONF_UNSET_MSEC) {
        return const_cast<char *>("is duplicate");
    }

    value = static_cast<ngx_str_t *>(cf->args->elts);

    if (ngx_strcmp(value[1].data, "off") == 0) {
        if (cf->args->nelts > 2) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid value \"%V\" in \"%V\" directive, "
                               "\"off\" takes no jitter",
                               &value[2], &cmd->name);
            return static_cast<char *>(NGX_CONF_ERROR);
        }

        lcf->max_age = 0;
        lcf->max_age_jitter = 0;
        return NGX_CONF_OK;
    }

    rv = ngx_http_ws_heartbeat_parse_time(cf, cmd, &value[1],
                                          &ngx_http_ws_heartbeat_positive,
                                          &lcf->max_age);
    if (rv != NGX_CONF_OK || cf->args->nelts == 2) {
        return rv;
    }

    rv = ngx_http_ws_heartbeat_parse_time(cf, cmd, &value[2],
                                          &ngx_http_ws_heartbeat_optional,
                                          &lcf->max_age_jitter);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    if (lcf->max_age_jitter > lcf->max_age) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" in \"%V\" directive, "
                           "the jitter must not exceed the age \"%V\"",
                           &value[2], &cmd->name, &value[1]);
        return static_cast<char *>(NGX_CONF_ERROR);
    }

    return NGX_CONF_OK;
}


/* "release" or "keep", with nginx's wording for a flag (no enum slot's) */

static char *
ngx_http_ws_heartbeat_set_idle_buffers(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf) noexcept
{
    ngx_http_ws_heartbeat_loc_conf_t *lcf =
        static_cast<ngx_http_ws_heartbeat_loc_conf_t *>(conf);

    ngx_str_t  *value;

    if (lcf->idle_buffers != NGX_CONF_UNSET_UINT) {
        return const_cast<char *>("is duplicate");
    }

    value = static_cast<ngx_str_t *>(cf->args->elts);

    if (ngx_strcmp(value[1].data, "release") == 0) {
        lcf->idle_buffers = NGX_HTTP_WS_HB_BUFFERS_RELEASE;

    } else if (ngx_strcmp(value[1].data, "keep") == 0) {
        lcf->idle_buffers = NGX_HTTP_WS_HB_BUFFERS_KEEP;

    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" in \"%V\" directive, "
                           "it must be \"release\" or \"keep\"",
                           &value[1], &cmd->name);
        return static_cast<char *>(NGX_CONF_ERROR);
    }

    return NGX_CONF_OK;
}


static void *
ngx_http_ws_heartbeat_create_main_conf(ngx_conf_t *cf) noexcept
{
    /*
     * all NULL or 0: drain is set by the merge of a location that drains,
     * the rest at postconfiguration, in each worker and by the first relay
     */

    return ngx_pcalloc(cf->pool, sizeof(ngx_http_ws_heartbeat_main_conf_t));
}


static void *
ngx_http_ws_heartbeat_create_loc_conf(ngx_conf_t *cf) noexcept
{
    ngx_http_ws_heartbeat_loc_conf_t  *conf;

    conf = static_cast<ngx_http_ws_heartbeat_loc_conf_t *>(
               ngx_pcalloc(cf->pool,
                           sizeof(ngx_http_ws_heartbeat_loc_conf_t)));
    if (conf == NULL) {
        return NULL;
    }

    conf->enable = NGX_CONF_UNSET;
    conf->upstream = NGX_CONF_UNSET;
    conf->interval = NGX_CONF_UNSET_MSEC;
    conf->timeout = NGX_CONF_UNSET_MSEC;
    conf->read_timeout = NGX_CONF_UNSET_MSEC;
    conf->send_timeout = NGX_CONF_UNSET_MSEC;
    conf->drain = NGX_CONF_UNSET;
    conf->drain_timeout = NGX_CONF_UNSET_MSEC;
    conf->drain_spread = NGX_CONF_UNSET_MSEC;
    conf->max_age = NGX_CONF_UNSET_MSEC;
    conf->max_age_jitter = NGX_CONF_UNSET_MSEC;
    conf->group = NGX_CONF_UNSET_UINT;
    conf->idle_buffers = NGX_CONF_UNSET_UINT;

    return conf;
}


static char *
ngx_http_ws_heartbeat_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child) noexcept
{
    ngx_http_ws_heartbeat_loc_conf_t *prev =
        static_cast<ngx_http_ws_heartbeat_loc_conf_t *>(parent);
    ngx_http_ws_heartbeat_loc_conf_t *conf =
        static_cast<ngx_http_ws_heartbeat_loc_conf_t *>(child);

    ngx_http_core_loc_conf_t           *clcf;
    ngx_http_upstream_conf_t           *ucf;
    ngx_http_ws_heartbeat_main_conf_t  *hmcf;

    ngx_conf_merge_value(conf->enable, prev->enable, 0);
    ngx_conf_merge_value(conf->upstream, prev->upstream, 0);
    ngx_conf_merge_msec_value(conf->interval, prev->interval, 30000);
    ngx_conf_merge_msec_value(conf->timeout, prev->timeout, 10000);
    ngx_conf_merge_msec_value(conf->read_timeout, prev->read_timeout, 0);
    ngx_conf_merge_msec_value(conf->send_timeout, prev->send_timeout, 0);
    ngx_conf_merge_value(conf->drain, prev->drain, 1);
    ngx_conf_merge_msec_value(conf->drain_timeout, prev->drain_timeout,
                              5000);
    ngx_conf_merge_msec_value(conf->drain_spread, prev->drain_spread, 10000);
    ngx_conf_merge_uint_value(conf->idle_buffers, prev->idle_buffers,
                              NGX_HTTP_WS_HB_BUFFERS_RELEASE);

    /* the jitter goes with the age it was given with; else 10% of it */

    if (conf->max_age == NGX_CONF_UNSET_MSEC) {
        conf->max_age_jitter = prev->max_age_jitter;
    }

    ngx_conf_merge_msec_value(conf->max_age, prev->max_age, 0);

    if (conf->max_age_jitter == NGX_CONF_UNSET_MSEC) {
        conf->max_age_jitter = conf->max_age / 10;
    }

    /* 0: the connections of locations without a group, group="" */

    ngx_conf_merge_uint_value(conf->group, prev->group, 0);

    if (!conf->enable) {
        return NGX_CONF_OK;
    }

    /*
     * every worker needs the exit watch (a drain, or stepping aside with
     * ws_heartbeat_drain off); the longest drain, for init_module's check
     */

    hmcf = static_cast<ngx_http_ws_heartbeat_main_conf_t *>(
               ngx_http_conf_get_module_main_conf(cf,
                                                  ngx_ws_heartbeat_module));
    hmcf->watched = 1;

    if (conf->drain) {
        hmcf->longest_drain = ngx_max(hmcf->longest_drain,
                                      conf->drain_spread
                                      + conf->drain_timeout);
    }

    /*
     * nginx's own timers on the relay: warn where they would cut a
     * connection before the heartbeat can keep it alive or act
     */

    clcf = static_cast<ngx_http_core_loc_conf_t *>(
               ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module));

    if (conf->send_timeout && conf->send_timeout >= clcf->send_timeout) {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "\"ws_heartbeat_send_timeout\" %Mms is not less "
                           "than \"send_timeout\" %Mms, nginx closes a "
                           "blocked client first",
                           conf->send_timeout, clcf->send_timeout);
    }

    if (&ngx_http_proxy_module == NULL) {
        return NGX_CONF_OK;
    }

    /* ngx_http_upstream_conf_t is the first member of the proxy conf */

    ucf = static_cast<ngx_http_upstream_conf_t *>(
              ngx_http_conf_get_module_loc_conf(cf, ngx_http_proxy_module));

    /*
     * proxy_pass here: with a static address it sets the upstream, with
     * variables only the content handler (the proxy module's own
     * configuration, where it keeps them, differs between versions)
     */

    if (ucf != NULL
        && (ucf->upstream != NULL
            || (clcf->handler != NULL
                && clcf->handler != ngx_http_ws_heartbeat_status_handler))
        && conf->interval >= ucf->read_timeout)
    {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "\"ws_heartbeat_interval\" %Mms is not less than "
                           "\"proxy_read_timeout\" %Mms, idle WebSocket "
                           "connections will be closed by nginx before "
                           "a Ping keeps them alive",
                           conf->interval, ucf->read_timeout);
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_ws_heartbeat_init(ngx_conf_t *cf) noexcept
{
    ngx_http_ws_heartbeat_main_conf_t  *hmcf;

    hmcf = static_cast<ngx_http_ws_heartbeat_main_conf_t *>(
               ngx_http_conf_get_module_main_conf(cf,
                                                  ngx_ws_heartbeat_module));

    if (ngx_http_ws_heartbeat_stats_init(cf, hmcf) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_ws_heartbeat_filter_init(cf);
}


/*
 * after the whole configuration (worker_shutdown_timeout may come after
 * the http block): an exiting worker is cut off before its drain can end
 */

static ngx_int_t
ngx_http_ws_heartbeat_init_module(ngx_cycle_t *cycle) noexcept
{
    ngx_core_conf_t                    *ccf;
    ngx_http_ws_heartbeat_main_conf_t  *hmcf;

    if (cycle->conf_ctx[ngx_http_module.index] == NULL) {
        return NGX_OK;
    }

    hmcf = static_cast<ngx_http_ws_heartbeat_main_conf_t *>(
               ngx_http_cycle_get_module_main_conf(cycle,
                                                   ngx_ws_heartbeat_module));
    ccf = reinterpret_cast<ngx_core_conf_t *>(
              ngx_get_conf(cycle->conf_ctx, ngx_core_module));

    if (ccf->shutdown_timeout != 0
        && ccf->shutdown_timeout != NGX_CONF_UNSET_MSEC
        && hmcf->longest_drain > ccf->shutdown_timeout)
    {
        ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                      "\"ws_heartbeat_drain_spread\" + "
                      "\"ws_heartbeat_drain_timeout\" %Mms exceed "
                      "\"worker_shutdown_timeout\" %Mms, the spread is "
                      "cut to fit", hmcf->longest_drain,
                      ccf->shutdown_timeout);
    }

    return NGX_OK;
}
