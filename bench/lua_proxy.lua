-- A WebSocket proxy with a heartbeat, written the way one would with
-- Debian's libnginx-mod-http-lua and lua-nginx-websocket
-- (resty.websocket as nginx.websocket.*): the comparison point of the
-- benchmark. Frame by frame: every frame from the client is read, unmasked
-- and re-masked toward the backend; every frame from the backend is sent on
-- to the client. A Ping goes to the client after $hb_interval seconds
-- without anything from it; a client silent for $hb_timeout after a Ping is
-- closed, with Close 1001 to the backend. Pongs that answer our Pings are
-- swallowed.
--
-- nginx variables: $hb_interval, $hb_timeout (seconds), $hb_backends
-- (comma-separated ws:// URLs, one picked at random per connection).

local server = require "nginx.websocket.server"
local client = require "nginx.websocket.client"
local semaphore = require "ngx.semaphore"

local INTERVAL = tonumber(ngx.var.hb_interval) or 30
local TIMEOUT = tonumber(ngx.var.hb_timeout) or 10

local backends = {}
for url in string.gmatch(ngx.var.hb_backends or "", "[^,]+") do
    backends[#backends + 1] = url
end

local OPS = { continuation = 0x0, text = 0x1, binary = 0x2,
              close = 0x8, ping = 0x9, pong = 0xa }
local MAX = 16 * 1024 * 1024

local wb = server:new{ timeout = 3600000, max_payload_len = MAX }
if not wb then
    return ngx.exit(400)
end

local up = client:new{ timeout = 3600000, max_payload_len = MAX }
local ok = up:connect(backends[math.random(#backends)])
if not ok then
    wb:send_close(1011, "upstream unreachable")
    return ngx.exit(ngx.OK)
end

-- the client socket has two writers (relay and pinger): one at a time
local wlock = semaphore.new(1)
local done = false
local last_rx = ngx.now()
local ping_at = nil   -- when our outstanding Ping was sent
local seq = 0

-- ngx.sleep() below 1ms is a sleep(0): a busy loop
local function nap(s)
    ngx.sleep(math.max(0.001, s))
end

local function to_client(fin, op, data)
    local got = wlock:wait(60)
    if not got then
        return nil
    end
    local bytes, err = wb:send_frame(fin, op, data)
    wlock:post(1)
    return bytes, err
end

-- backend -> client
local function downstream()
    while not done do
        local data, typ, err = up:recv_frame()
        if not data then
            break
        end
        if typ == "close" then
            local payload = ""
            if err then
                payload = string.char(math.floor(err / 256), err % 256) .. data
            end
            to_client(true, 0x8, payload)
            break
        end
        if not to_client(err ~= "again", OPS[typ], data) then
            break
        end
    end
    done = true
end

-- the heartbeat toward the client
local function pinger()
    while not done do
        local now = ngx.now()
        if ping_at and last_rx < ping_at then
            local waited = now - ping_at
            if waited >= TIMEOUT then
                ngx.log(ngx.INFO, "lua heartbeat: client timed out")
                done = true
                up:send_close(1001, "heartbeat timeout")
                wb:send_close(1001, "heartbeat timeout")
                up:close()
                return ngx.exit(ngx.OK)
            end
            nap(TIMEOUT - waited)
        else
            local idle = now - last_rx
            if idle >= INTERVAL then
                seq = seq + 1
                ping_at = now
                to_client(true, 0x9, "lhb:" .. seq)
                nap(math.min(TIMEOUT, INTERVAL))
            else
                nap(INTERVAL - idle)
            end
        end
    end
end

local down = ngx.thread.spawn(downstream)
local beat = ngx.thread.spawn(pinger)

-- client -> backend (the request's own thread)
local client_closed = false
while not done do
    local data, typ, err = wb:recv_frame()
    if not data then
        break
    end
    last_rx = ngx.now()
    if typ == "pong" and string.sub(data, 1, 4) == "lhb:" then
        -- ours: swallowed
    elseif typ == "close" then
        up:send_close(err, data)
        client_closed = true
        break
    else
        local bytes = up:send_frame(err ~= "again", OPS[typ], data)
        if not bytes then
            break
        end
    end
end

done = true
ngx.thread.kill(beat)
if client_closed then
    -- the backend answers the Close; downstream relays it and ends
    up:set_timeout(2000)
else
    up:close()
end
ngx.thread.wait(down)
up:close()
return ngx.exit(ngx.OK)
