// Prints the size of the module's per-connection state (the ctx that
// ngx_http_ws_heartbeat_header_filter() allocates from r->pool for each
// upgraded connection) and of its parts, as JSON. Built by bench/sizeof.sh
// with nginx's include paths; it includes the module's header only.
#include "ngx/ngx_ws_heartbeat.hpp"

#include <cstdio>

int main()
{
    std::printf("{\"ctx\":%zu,\"ctx_upstream_off\":%zu,\"side\":%zu,\"outbound\":%zu,\"heartbeat\":%zu,"
                "\"frame_scanner16\":%zu,\"frame_header\":%zu,"
                "\"ngx_event_t\":%zu,\"ngx_pool_cleanup_t\":%zu,"
                "\"ngx_http_request_t\":%zu,\"ngx_connection_t\":%zu,"
                "\"ngx_http_upstream_t\":%zu}\n",
                sizeof(ngx_http_ws_heartbeat_ctx_t),
                ngx_http_ws_heartbeat_ctx_t::size(false),
                sizeof(ngx_http_ws_heartbeat_side_t),
                sizeof(wshb::outbound), sizeof(wshb::heartbeat),
                sizeof(wshb::basic_frame_scanner<16>),
                sizeof(wshb::frame_header), sizeof(ngx_event_t),
                sizeof(ngx_pool_cleanup_t), sizeof(ngx_http_request_t),
                sizeof(ngx_connection_t), sizeof(ngx_http_upstream_t));
    return 0;
}
