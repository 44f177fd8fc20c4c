// ngx_ws_heartbeat: the heartbeat state machine for one side.
#include "heartbeat.hpp"

namespace wshb {

namespace {

constexpr std::uint8_t ping_tag[4] = {'w', 's', 'h', 'b'};
constexpr std::uint32_t seq_window = 65536;

// heartbeat_times (heartbeat.hpp): the oldest age read stays below 2^32 ms
static_assert(std::uint64_t(max_config_ms) + refresh_ms
                      + 7ull * 24 * 60 * 60 * 1000
                  < (std::uint64_t(1) << 32),
              "a moment's age must stay within 32 bits");

std::uint64_t load_be(const std::uint8_t* p, std::size_t n) noexcept
{
    std::uint64_t v = 0;

    for (std::size_t i = 0; i < n; i++) {
        v = (v << 8) | p[i];
    }

    return v;
}

action close_with(close_reason r) noexcept
{
    action a;
    a.kind = action::close;
    a.reason = r;
    return a;
}

} // namespace

const char* to_string(close_reason r) noexcept
{
    switch (r) {
    case close_reason::none:
        return "none";
    case close_reason::heartbeat_timeout:
        return "heartbeat timeout";
    case close_reason::read_timeout:
        return "read timeout";
    case close_reason::send_timeout:
        return "send timeout";
    }
    return "unknown";
}

heartbeat::state_t heartbeat::settled(std::uint64_t now_ms) const noexcept
{
    // anything heard since our Ping hit the socket answers it
    if (state_ == outstanding && at(last_receive_, now_ms) >= written_ms()) {
        return idle;
    }

    return state_;
}

// heartbeat_times, rule 1: no age beyond max_config_ms
void heartbeat::saturate(std::uint64_t now_ms) noexcept
{
    std::uint32_t oldest = static_cast<std::uint32_t>(now_ms) - max_config_ms;

    if (age(last_receive_, now_ms) > max_config_ms) {
        last_receive_ = oldest;
    }

    if (age(last_data_, now_ms) > max_config_ms) {
        last_data_ = oldest;
    }

    if (age(blocked_since_, now_ms) > max_config_ms) {
        blocked_since_ = oldest;
    }
}

void heartbeat::start(const heartbeat_config& cf, std::uint64_t now_ms) noexcept
{
    *this = heartbeat();
    ping_ = cf.ping;
    last_receive_ = static_cast<std::uint32_t>(now_ms);
    last_data_ = static_cast<std::uint32_t>(now_ms);
    blocked_since_ = static_cast<std::uint32_t>(now_ms);
    state_ = idle;
}

void heartbeat::on_ping_written(std::uint64_t now_ms,
                                std::uint64_t now_us) noexcept
{
    state_ = settled(now_ms);

    // the send time, on both clocks: written_ms() gives now_ms back
    std::uint64_t lag = now_us / 1000 > now_ms ? now_us / 1000 - now_ms : 0;

    written_us_hi_ = static_cast<std::uint32_t>(now_us >> 32);
    written_us_lo_ = static_cast<std::uint32_t>(now_us);
    written_lag_ = static_cast<std::uint8_t>(lag < 255 ? lag : 255);

    // the Ping made is the one to answer now; a write without one (not
    // the caller's way) leaves nothing to answer
    answered_ = !unwritten_;
    unwritten_ = false;

    if (state_ != stopped) {
        state_ = outstanding;
    }
}

void heartbeat::on_ping_not_sent(std::uint64_t now_ms) noexcept
{
    state_ = settled(now_ms);

    // the sequence number goes to the next Ping; the latest written Ping
    // (its send time, whether answered) is untouched
    if (unwritten_) {
        unwritten_ = false;
        pings_--;
    }

    if (state_ != queued) {
        return;
    }

    // the next Ping an interval from now: as if the peer had just been
    // heard from, which only the next Ping's due time reads while idle
    // (now_ms is never behind the last receive)
    state_ = idle;
    last_receive_ = static_cast<std::uint32_t>(now_ms);
}

void heartbeat::on_write_blocked(std::uint64_t now_ms) noexcept
{
    if (!blocked_) {
        blocked_ = true;
        blocked_since_ = static_cast<std::uint32_t>(now_ms);
    }
}

bool heartbeat::on_pong(const std::uint8_t* payload, std::size_t len,
                        std::uint32_t key, std::uint64_t now_us,
                        bool* sampled) noexcept
{
    if (sampled != nullptr) {
        *sampled = false;
    }

    // our payload is exactly tag + sequence + key + zeros
    if (payload == nullptr || len != ping_payload_size) {
        return false;
    }

    for (std::size_t i = 0; i < 4; i++) {
        // not our tag: the peer's own Pong
        if (payload[i] != ping_tag[i]) {
            return false;
        }
    }

    // not our key: another heartbeat's (the same tag further along)
    if (load_be(payload + 8, 4) != key || load_be(payload + 12, 4) != 0) {
        return false;
    }

    std::uint32_t seq = static_cast<std::uint32_t>(load_be(payload + 4, 4));

    // a sequence we made, among the latest 2^16
    if (pings_ == 0 || seq >= pings_ || pings_ - seq > seq_window) {
        return false;
    }

    // ours: swallowed. An answer only for the latest written Ping, once.
    std::uint32_t written = pings_ - (unwritten_ ? 1 : 0);

    if (written == 0 || seq != written - 1 || answered_) {
        return true;
    }

    answered_ = true;
    pongs_++;

    // from our own record of the write, never from the payload
    std::uint64_t w = written_us();
    std::uint64_t rtt = now_us > w ? now_us - w : 0;

    if (rtt > 0xffffffffu) {
        rtt = 0xffffffffu;
    }

    std::uint32_t sample = static_cast<std::uint32_t>(rtt);

    if (pongs_ == 1) {
        rtt_min_ = sample;
        srtt_ = sample;

    } else {
        if (sample < rtt_min_) {
            rtt_min_ = sample;
        }

        std::int64_t d = static_cast<std::int64_t>(sample) - srtt_;
        srtt_ = static_cast<std::uint32_t>(srtt_ + d / 8);
    }

    rtt_last_ = sample;

    if (sampled != nullptr) {
        *sampled = true;
    }

    return true;
}

action heartbeat::on_timer(const heartbeat_config& cf,
                           std::uint64_t now_ms) noexcept
{
    state_ = settled(now_ms);

    if (state_ == stopped) {
        return action();
    }

    if (cf.send_timeout_ms != 0 && blocked_
        && age(blocked_since_, now_ms) >= cf.send_timeout_ms)
    {
        stop();
        return close_with(close_reason::send_timeout);
    }

    if (cf.read_timeout_ms != 0
        && age(last_data_, now_ms) >= cf.read_timeout_ms) {
        stop();
        return close_with(close_reason::read_timeout);
    }

    if (ping_ && state_ == outstanding
        && now_ms >= written_ms() + cf.timeout_ms) {
        stop();
        return close_with(close_reason::heartbeat_timeout);
    }

    // a Ping stuck behind writes the peer does not take, and silence
    if (ping_ && state_ == queued && blocked_
        && now_ms >= stuck_since(now_ms) + cf.timeout_ms)
    {
        stop();
        return close_with(close_reason::heartbeat_timeout);
    }

    action a;

    // A Ping due within ping_slack(cf) goes now rather than after one more
    // wake-up: the timer seldom fires right at the due time, which a Pong
    // moves without re-arming it (and nginx leaves a timer in place when
    // it would move by less than 300 ms).
    if (ping_ && state_ == idle
        && age(last_receive_, now_ms) + ping_slack(cf) >= cf.interval_ms)
    {
        state_ = queued;
        a.kind = action::send_ping;
    }

    // (after the checks: see heartbeat_times)
    saturate(now_ms);

    return a;
}

std::uint64_t heartbeat::next_deadline(const heartbeat_config& cf,
                                       std::uint64_t now_ms) const noexcept
{
    state_t s = settled(now_ms);

    if (s == stopped) {
        return 0;
    }

    // the latest on_timer() may run (heartbeat_times, rule 2)
    std::uint64_t d = now_ms + refresh_ms;

    if (cf.send_timeout_ms != 0 && blocked_
        && at(blocked_since_, now_ms) + cf.send_timeout_ms < d)
    {
        d = at(blocked_since_, now_ms) + cf.send_timeout_ms;
    }

    if (cf.read_timeout_ms != 0
        && at(last_data_, now_ms) + cf.read_timeout_ms < d) {
        d = at(last_data_, now_ms) + cf.read_timeout_ms;
    }

    if (ping_ && s == idle && at(last_receive_, now_ms) + cf.interval_ms < d) {
        d = at(last_receive_, now_ms) + cf.interval_ms;
    }

    if (ping_ && s == outstanding && written_ms() + cf.timeout_ms < d) {
        d = written_ms() + cf.timeout_ms;
    }

    if (ping_ && s == queued && blocked_
        && stuck_since(now_ms) + cf.timeout_ms < d) {
        d = stuck_since(now_ms) + cf.timeout_ms;
    }

    // 0 means "no timer": a deadline at time 0 is due now anyway
    return d == 0 ? 1 : d;
}

void heartbeat::stop() noexcept
{
    state_ = stopped;
}

} // namespace wshb
