//! Per-client rate limiting of pushes: a token bucket per client address, in bounded memory.
//!
//! Every ingest keeps one [`RateLimiter`] (per Worker isolate, per Lambda execution environment,
//! per standalone process) and asks it about each push before reading the body. A refused push
//! costs no store write: the adapter answers [`crate::Ingest::rate_limited`] at once, and the
//! refusals are counted into the next delta it stores ([`RateLimiter::take_refused`],
//! [`crate::Ingest::count_refused`]).
//!
//! Each bucket is kept as the one number a token bucket needs: the time at which it will be full
//! again (the "theoretical arrival time" of the generic cell rate algorithm). A push takes a token
//! by moving that time one interval later; the push is refused when that would put it more than a
//! burst's worth of intervals past now. Times are whole microseconds and the interval is rounded
//! up, so no rounding ever grants a token the limit does not allow, and a client that comes back
//! after its bucket filled up is indistinguishable from a new one: which is what lets full
//! buckets be forgotten when memory runs short.
//!
//! The limiter never reads the clock: adapters pass `now_ms` from a monotonic clock of their own.

use std::collections::HashMap;
use std::net::IpAddr;

/// Per-client limit. `per_second == 0.0` turns limiting off.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimit {
    /// Sustained pushes a second one client address may send; `0` turns limiting off.
    /// Default 50 (see [`RateLimit::default`] for why).
    pub per_second: f64,
    /// Pushes a client may send at once, after a pause, before the sustained rate applies (the
    /// bucket's size). At least 1 while limiting is on. Default 500.
    pub burst: f64,
    /// Most client addresses tracked at once; bounds the limiter's memory. At least 1. Default
    /// 65,536.
    pub max_clients: usize,
}

impl Default for RateLimit {
    /// - `per_second` 50: a page pushes about once every 10 s while it is open, so 50 pushes a
    ///   second is about 500 page views open at once behind one address (an office, a school or
    ///   a carrier-grade NAT), while one script pushing in a loop is stopped within seconds.
    /// - `burst` 500: ten seconds at that rate, so that such an address opening many pages at
    ///   once (every tab's page-load beacon arrives together) is not refused.
    /// - `max_clients` 65,536: 16 bytes of state a client, about 2 MB of table when full (small
    ///   next to a Worker's 128 MB); past it, clients whose buckets are full again are forgotten
    ///   first, which costs nothing, since a full bucket is what a new client gets.
    fn default() -> Self {
        RateLimit {
            per_second: 50.0,
            burst: 500.0,
            max_clients: 65_536,
        }
    }
}

impl RateLimit {
    /// Checks the limit: every number finite and not negative, `burst` at least 1 while limiting
    /// is on, `max_clients` at least 1. The error names the setting.
    pub fn check(&self) -> Result<(), String> {
        self.check_named(["per_second", "burst", "max_clients"])
    }

    /// Whether limiting is on.
    pub fn is_on(&self) -> bool {
        self.per_second > 0.0
    }

    /// Reads a limit from three variables, named in `names` in the order rate, burst, clients
    /// (the Worker's `RATE_LIMIT`, `RATE_BURST`, `RATE_LIMIT_CLIENTS`; the Lambda's
    /// `PUM_RATE_LIMIT`, ...), through `var`, which returns a variable's text or `None` when it
    /// is unset. Unset or empty variables keep their defaults. The error names the variable.
    pub fn from_vars(
        names: [&str; 3],
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<RateLimit, String> {
        let mut limit = RateLimit::default();
        let text = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        if let Some(v) = text(names[0]) {
            limit.per_second = parse_number(names[0], &v)?;
        }
        if let Some(v) = text(names[1]) {
            limit.burst = parse_number(names[1], &v)?;
        }
        if let Some(v) = text(names[2]) {
            limit.max_clients = v.trim().parse().map_err(|_| {
                format!(
                    "{} is {v:?}; it must be a whole number of client addresses, at least 1",
                    names[2]
                )
            })?;
        }
        limit.check_named(names)?;
        Ok(limit)
    }

    fn check_named(&self, [rate, burst, clients]: [&str; 3]) -> Result<(), String> {
        for (name, value) in [(rate, self.per_second), (burst, self.burst)] {
            if !value.is_finite() || value < 0.0 {
                return Err(format!(
                    "{name} is {value}; it must be a finite number, 0 or more"
                ));
            }
        }
        if self.is_on() && self.burst < 1.0 {
            return Err(format!(
                "{burst} is {}; it must be at least 1 while rate limiting is on ({rate} is {})",
                self.burst, self.per_second
            ));
        }
        if self.max_clients == 0 {
            return Err(format!("{clients} is 0; it must be at least 1"));
        }
        Ok(())
    }
}

fn parse_number(name: &str, text: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .map_err(|_| format!("{name} is {text:?}; it must be a number"))
}

/// What the limiter decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Take the push.
    Allow,
    /// Refuse it: answer 429 with this `Retry-After`.
    Limit {
        /// Whole seconds until the client has a token again, rounded up, at least 1.
        retry_after_secs: u32,
    },
}

/// Microseconds per second.
const MICROS: f64 = 1_000_000.0;

/// Bound of every time, interval and tolerance, in microseconds (about 146,000 years), so that
/// a bucket's time (at most now + tolerance + interval) never reaches `u64::MAX`, where it would
/// stop moving and stop counting.
const MAX_US: u64 = 1 << 62;

/// Token buckets per client address, bounded in memory.
///
/// The map holds at most [`RateLimit::max_clients`] buckets. When a new client arrives and it is
/// full, the buckets that are full again are dropped; if that frees less than half, the buckets
/// closest to full are dropped too until half is free. Either way each sweep over the map is
/// paid for by at least `max_clients / 2` new clients before the next, so a check costs O(1)
/// amortised, whatever addresses clients send from. A dropped client that comes back starts
/// with a full bucket, so the price of the bound is leniency to a few clients, never a refusal.
pub struct RateLimiter {
    limit: RateLimit,
    /// Microseconds one token takes to come back (rounded up).
    interval_us: u64,
    /// How far past now a bucket may be full again and still give a token: the burst less one
    /// token, in microseconds (rounded down).
    tolerance_us: u64,
    /// Per client: the time (microseconds on the adapter's clock) its bucket is full again.
    buckets: HashMap<Client, u64, foldhash::fast::RandomState>,
    refused: u64,
    /// Buckets looked at by sweeps, for the test of the amortised bound.
    #[cfg(test)]
    swept: u64,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("limit", &self.limit)
            .field("clients", &self.buckets.len())
            .field("refused", &self.refused)
            .finish()
    }
}

/// A client as the limiter keys it: an IPv4 address, or an IPv6 /64 (the prefix one subscriber
/// gets; the rest of the address is theirs to vary), folded into 64 bits. IPv4 addresses are
/// put under `ffff:ffff::/32`, which is not allocated, so they never meet a real /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Client(u64);

impl Client {
    fn of(addr: IpAddr) -> Client {
        let v4 = |a: std::net::Ipv4Addr| Client(0xffff_ffff_0000_0000 | u64::from(a.to_bits()));
        match addr {
            IpAddr::V4(a) => v4(a),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(mapped) => v4(mapped),
                None => Client((a.to_bits() >> 64) as u64),
            },
        }
    }
}

impl RateLimiter {
    /// A limiter with no clients yet. `limit` should have passed [`RateLimit::check`]; a limit
    /// that did not is taken as close to it as makes sense (a burst below 1 as 1).
    pub fn new(limit: RateLimit) -> Self {
        let per_second = if limit.per_second.is_finite() {
            limit.per_second.max(0.0)
        } else {
            0.0
        };
        // A float cast saturates, so a tiny rate gives the longest interval (no refill).
        let interval_us = if per_second > 0.0 {
            ((MICROS / per_second).ceil() as u64).clamp(1, MAX_US)
        } else {
            MAX_US
        };
        let burst = if limit.burst.is_finite() {
            limit.burst.max(1.0)
        } else {
            1.0
        };
        let tolerance_us = (((burst - 1.0) * interval_us as f64).floor() as u64).min(MAX_US);
        RateLimiter {
            limit,
            interval_us,
            tolerance_us,
            buckets: HashMap::default(),
            refused: 0,
            #[cfg(test)]
            swept: 0,
        }
    }

    /// The limit.
    pub fn limit(&self) -> &RateLimit {
        &self.limit
    }

    /// Takes a token from `client`'s bucket, or refuses.
    ///
    /// `now_ms`: milliseconds on any monotonic clock the adapter owns. A clock that goes
    /// backwards never panics and never gives tokens back: a bucket's time only moves forward.
    pub fn check(&mut self, client: IpAddr, now_ms: u64) -> Decision {
        if !self.limit.is_on() {
            return Decision::Allow;
        }
        let now = now_ms.saturating_mul(1000).min(MAX_US);
        let (interval, tolerance) = (self.interval_us, self.tolerance_us);
        // A bucket full at `full_at` gives a token by moving that one interval later, which is
        // allowed while it stays within a burst of now; else the error is the wait.
        let take = |full_at: u64| {
            let from = full_at.max(now);
            if from - now <= tolerance {
                Ok(from + interval)
            } else {
                Err(from - now - tolerance)
            }
        };
        let key = Client::of(client);
        let taken = match self.buckets.get_mut(&key) {
            Some(full_at) => take(*full_at).map(|next| *full_at = next),
            None => {
                if self.buckets.len() >= self.limit.max_clients.max(1) {
                    self.make_room(now);
                }
                // A new client has a full bucket.
                take(now).map(|next| {
                    self.buckets.insert(key, next);
                })
            }
        };
        match taken {
            Ok(()) => Decision::Allow,
            Err(wait_us) => {
                self.refused += 1;
                let secs = wait_us.div_ceil(1_000_000).max(1);
                Decision::Limit {
                    retry_after_secs: u32::try_from(secs).unwrap_or(u32::MAX),
                }
            }
        }
    }

    /// Refusals made since the last call (they are counted by the adapter into the next stored
    /// delta, so a flood of 429s costs no store writes).
    pub fn take_refused(&mut self) -> u64 {
        std::mem::take(&mut self.refused)
    }

    /// Refusals made and not taken yet.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Gives back refusals taken by [`RateLimiter::take_refused`] whose delta could not be
    /// stored, so that the next delta counts them.
    pub fn return_refused(&mut self, n: u64) {
        self.refused = self.refused.saturating_add(n);
    }

    /// Client addresses tracked now.
    pub fn clients(&self) -> usize {
        self.buckets.len()
    }

    /// Frees room for at least half of `max_clients`: first the buckets that are full again at
    /// `now` (forgetting them changes nothing), then, if that was not enough, those closest to
    /// full.
    fn make_room(&mut self, now: u64) {
        let target = self.limit.max_clients.max(1) / 2;
        #[cfg(test)]
        {
            self.swept += self.buckets.len() as u64;
        }
        self.buckets.retain(|_, full_at| *full_at > now);
        if self.buckets.len() <= target {
            return;
        }
        #[cfg(test)]
        {
            self.swept += 2 * self.buckets.len() as u64;
        }
        let mut times: Vec<u64> = self.buckets.values().copied().collect();
        let drop = times.len() - target;
        let (_, nth, _) = times.select_nth_unstable(drop - 1);
        let threshold = *nth;
        // With ties at the threshold, all of them go: more leniency, never more memory.
        self.buckets.retain(|_, full_at| *full_at > threshold);
    }
}

/// Parses a client address from a header value such as `CF-Connecting-IP` or the last hop of
/// `X-Forwarded-For`; `None` if unparseable.
///
/// A comma-separated list is read by its last element (the hop the nearest proxy added). An
/// address may carry a port (`203.0.113.7:4711`, `[2001:db8::1]:4711`) or brackets.
pub fn parse_client(value: &str) -> Option<IpAddr> {
    let hop = value.rsplit(',').next()?.trim();
    if let Ok(addr) = hop.parse::<IpAddr>() {
        return Some(addr);
    }
    if let Ok(sock) = hop.parse::<std::net::SocketAddr>() {
        return Some(sock.ip());
    }
    hop.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    fn limiter(per_second: f64, burst: f64) -> RateLimiter {
        RateLimiter::new(RateLimit {
            per_second,
            burst,
            ..RateLimit::default()
        })
    }

    /// Pushes from `client` at `now_ms` until one is refused; returns how many were allowed.
    fn allowed_until_refused(l: &mut RateLimiter, client: IpAddr, now_ms: u64) -> usize {
        let mut n = 0;
        while l.check(client, now_ms) == Decision::Allow {
            n += 1;
            assert!(n < 100_000, "never refused");
        }
        n
    }

    #[test]
    fn a_burst_is_allowed_then_refused() {
        let mut l = limiter(1.0, 5.0);
        let a = ip("203.0.113.7");
        assert_eq!(allowed_until_refused(&mut l, a, 1_000), 5);
        assert!(matches!(l.check(a, 1_000), Decision::Limit { .. }));
        assert_eq!(l.take_refused(), 2);
        assert_eq!(l.take_refused(), 0);
    }

    #[test]
    fn tokens_come_back_at_the_rate_and_no_further_than_the_burst() {
        let mut l = limiter(2.0, 4.0);
        let a = ip("203.0.113.7");
        assert_eq!(allowed_until_refused(&mut l, a, 0), 4);
        // 2 a second: one token every 500 ms.
        assert_eq!(
            l.check(a, 499),
            Decision::Limit {
                retry_after_secs: 1
            }
        );
        assert_eq!(l.check(a, 500), Decision::Allow);
        assert!(matches!(l.check(a, 500), Decision::Limit { .. }));
        assert_eq!(allowed_until_refused(&mut l, a, 2_000), 3);
        // A long pause fills the bucket, and no more.
        assert_eq!(allowed_until_refused(&mut l, a, 3_600_000), 4);
    }

    #[test]
    fn other_clients_are_unaffected() {
        let mut l = limiter(1.0, 3.0);
        let (a, b) = (ip("203.0.113.7"), ip("203.0.113.8"));
        assert_eq!(allowed_until_refused(&mut l, a, 0), 3);
        assert_eq!(allowed_until_refused(&mut l, b, 0), 3);
        assert!(matches!(l.check(a, 0), Decision::Limit { .. }));
        assert_eq!(l.clients(), 2);
    }

    #[test]
    fn ipv6_clients_are_their_64_and_mapped_ipv4_is_ipv4() {
        let mut l = limiter(1.0, 2.0);
        assert_eq!(l.check(ip("2001:db8:1:2::1"), 0), Decision::Allow);
        assert_eq!(
            l.check(ip("2001:db8:1:2:ffff:0:abcd:9"), 0),
            Decision::Allow
        );
        assert!(matches!(
            l.check(ip("2001:db8:1:2::77"), 0),
            Decision::Limit { .. }
        ));
        // The next /64 is someone else.
        assert_eq!(l.check(ip("2001:db8:1:3::1"), 0), Decision::Allow);
        assert_eq!(l.check(ip("198.51.100.1"), 0), Decision::Allow);
        assert_eq!(l.check(ip("::ffff:198.51.100.1"), 0), Decision::Allow);
        assert!(matches!(
            l.check(ip("198.51.100.1"), 0),
            Decision::Limit { .. }
        ));
        // An IPv4 address and the IPv6 /64 that holds its bits are not the same client.
        assert_eq!(l.check(ip("0:0:c633:6401::"), 0), Decision::Allow);
        assert_eq!(l.clients(), 4);
    }

    #[test]
    fn memory_stays_bounded_and_sweeps_cost_o1_per_check() {
        let max_clients = 1_000;
        let mut l = RateLimiter::new(RateLimit {
            per_second: 1.0,
            burst: 10.0,
            max_clients,
        });
        let checks: u64 = 1_000_000;
        for i in 0..checks {
            // A million distinct addresses, each pushing once, one a millisecond for the first
            // half (so that each sweep finds about one bucket full again: sweeps that only
            // dropped those would run at every check), then all at once (none is ever full).
            let a = IpAddr::V6(std::net::Ipv6Addr::from_bits(u128::from(i) << 64));
            assert_eq!(l.check(a, i.min(checks / 2)), Decision::Allow);
            assert!(l.clients() <= max_clients, "{} clients at {i}", l.clients());
        }
        assert!(
            l.swept <= 8 * checks,
            "sweeps looked at {} buckets for {checks} checks",
            l.swept
        );
        // Buckets that are full again are dropped first, and those of clients still limited stay.
        let mut l = RateLimiter::new(RateLimit {
            per_second: 1.0,
            burst: 2.0,
            max_clients: 4,
        });
        let hot = ip("192.0.2.1");
        assert_eq!(allowed_until_refused(&mut l, hot, 0), 2);
        for i in 2..5u8 {
            assert_eq!(l.check(IpAddr::from([192, 0, 2, i]), 0), Decision::Allow);
        }
        // A second later the three one-push clients are full again and are forgotten; the hot
        // one is not full (one token back, not two) and is kept.
        assert_eq!(l.check(ip("192.0.2.99"), 1_000), Decision::Allow);
        assert_eq!(l.clients(), 2);
        assert_eq!(allowed_until_refused(&mut l, hot, 1_000), 1);
    }

    #[test]
    fn when_every_client_is_active_the_closest_to_full_are_forgotten() {
        let mut l = RateLimiter::new(RateLimit {
            per_second: 1.0,
            burst: 10.0,
            max_clients: 4,
        });
        // Clients 1..=4 take 1..=4 tokens: 1 is closest to full.
        for i in 1..=4u8 {
            for _ in 0..i {
                assert_eq!(l.check(IpAddr::from([192, 0, 2, i]), 0), Decision::Allow);
            }
        }
        assert_eq!(l.check(ip("192.0.2.5"), 0), Decision::Allow);
        assert_eq!(l.clients(), 3);
        // 4 kept its state (6 tokens left), 1 starts over with 10.
        assert_eq!(allowed_until_refused(&mut l, ip("192.0.2.4"), 0), 6);
        assert_eq!(allowed_until_refused(&mut l, ip("192.0.2.1"), 0), 10);
    }

    #[test]
    fn a_rate_of_zero_turns_limiting_off() {
        let mut l = limiter(0.0, 0.0);
        for _ in 0..10_000 {
            assert_eq!(l.check(ip("203.0.113.7"), 0), Decision::Allow);
        }
        assert_eq!(l.clients(), 0);
        assert_eq!(l.take_refused(), 0);
    }

    #[test]
    fn retry_after_is_the_wait_for_one_token_rounded_up() {
        let limited = |secs| Decision::Limit {
            retry_after_secs: secs,
        };
        // One token every 4 s.
        let mut l = limiter(0.25, 1.0);
        let a = ip("203.0.113.7");
        assert_eq!(l.check(a, 0), Decision::Allow);
        for (at_ms, secs) in [(0, 4), (1, 4), (1_000, 3), (3_999, 1)] {
            assert_eq!(l.check(a, at_ms), limited(secs), "at {at_ms} ms");
        }
        assert_eq!(l.check(a, 4_000), Decision::Allow);
        // Never below 1 second, even when the token is a millisecond away.
        let mut l = limiter(100.0, 1.0);
        assert_eq!(l.check(a, 0), Decision::Allow);
        assert_eq!(l.check(a, 0), limited(1));
        // Refusals do not push the wait further out.
        let mut l = limiter(0.1, 2.0);
        assert_eq!(allowed_until_refused(&mut l, a, 0), 2);
        for _ in 0..100 {
            assert_eq!(l.check(a, 0), limited(10));
        }
    }

    #[test]
    fn a_clock_going_backwards_gives_nothing_back() {
        let mut l = limiter(1.0, 2.0);
        let a = ip("203.0.113.7");
        assert_eq!(allowed_until_refused(&mut l, a, 10_000), 2);
        assert!(matches!(l.check(a, 0), Decision::Limit { .. }));
        assert!(matches!(l.check(a, 9_000), Decision::Limit { .. }));
        assert_eq!(l.check(a, 11_000), Decision::Allow);
        // Extreme clocks do not overflow.
        assert_eq!(allowed_until_refused(&mut l, a, u64::MAX), 2);
        assert!(matches!(l.check(a, 0), Decision::Limit { .. }));
    }

    #[test]
    fn limits_are_checked_and_errors_name_the_setting() {
        assert_eq!(RateLimit::default().check(), Ok(()));
        let off = RateLimit {
            per_second: 0.0,
            burst: 0.0,
            ..RateLimit::default()
        };
        assert_eq!(off.check(), Ok(()));
        for (limit, name) in [
            (
                RateLimit {
                    per_second: f64::NAN,
                    ..RateLimit::default()
                },
                "per_second",
            ),
            (
                RateLimit {
                    per_second: -1.0,
                    ..RateLimit::default()
                },
                "per_second",
            ),
            (
                RateLimit {
                    burst: f64::INFINITY,
                    ..RateLimit::default()
                },
                "burst",
            ),
            (
                RateLimit {
                    burst: 0.5,
                    ..RateLimit::default()
                },
                "burst",
            ),
            (
                RateLimit {
                    max_clients: 0,
                    ..RateLimit::default()
                },
                "max_clients",
            ),
        ] {
            let e = limit.check().expect_err("invalid");
            assert!(e.starts_with(name), "{e}");
        }
    }

    #[test]
    fn limits_are_read_from_variables_named_in_errors() {
        let names = ["RATE_LIMIT", "RATE_BURST", "RATE_LIMIT_CLIENTS"];
        let read = |vars: &[(&str, &str)]| {
            RateLimit::from_vars(names, |n| {
                vars.iter()
                    .find(|(k, _)| *k == n)
                    .map(|(_, v)| (*v).to_owned())
            })
        };
        assert_eq!(read(&[]), Ok(RateLimit::default()));
        assert_eq!(read(&[("RATE_LIMIT", " ")]), Ok(RateLimit::default()));
        assert_eq!(
            read(&[
                ("RATE_LIMIT", "2.5"),
                ("RATE_BURST", "10"),
                ("RATE_LIMIT_CLIENTS", "100")
            ]),
            Ok(RateLimit {
                per_second: 2.5,
                burst: 10.0,
                max_clients: 100
            })
        );
        assert!(!read(&[("RATE_LIMIT", "0")]).expect("off").is_on());
        for (vars, name) in [
            (&[("RATE_LIMIT", "fast")][..], "RATE_LIMIT"),
            (&[("RATE_LIMIT", "-1")], "RATE_LIMIT"),
            (&[("RATE_LIMIT", "inf")], "RATE_LIMIT"),
            (&[("RATE_BURST", "0.5")], "RATE_BURST"),
            (&[("RATE_LIMIT_CLIENTS", "0")], "RATE_LIMIT_CLIENTS"),
            (&[("RATE_LIMIT_CLIENTS", "1.5")], "RATE_LIMIT_CLIENTS"),
        ] {
            let e = read(vars).expect_err("invalid");
            assert!(e.starts_with(name), "{e}");
        }
    }

    #[test]
    fn client_addresses_are_parsed_from_header_values() {
        assert_eq!(parse_client("203.0.113.7"), Some(ip("203.0.113.7")));
        assert_eq!(parse_client(" 2001:db8::1 "), Some(ip("2001:db8::1")));
        assert_eq!(
            parse_client("198.51.100.1, 10.0.0.1,203.0.113.7"),
            Some(ip("203.0.113.7"))
        );
        assert_eq!(parse_client("203.0.113.7:4711"), Some(ip("203.0.113.7")));
        assert_eq!(parse_client("[2001:db8::1]:4711"), Some(ip("2001:db8::1")));
        assert_eq!(parse_client("[2001:db8::1]"), Some(ip("2001:db8::1")));
        for bad in ["", "unknown", "203.0.113", "1.2.3.4, ", "[1.2.3.4"] {
            assert_eq!(parse_client(bad), None, "{bad:?}");
        }
    }

    proptest! {
        /// Over any schedule of pushes from any few clients, with the clock jumping either way,
        /// no client is ever allowed more than `burst + per_second * elapsed` pushes, where
        /// `elapsed` runs from its first push to its last allowed one.
        #[test]
        fn no_client_gets_more_than_the_limit_allows(
            per_second in prop_oneof![0.01f64..1.0, 1.0f64..100.0],
            burst in prop_oneof![1.0f64..3.0, 1.0f64..50.0],
            steps in prop::collection::vec(
                (0u8..3, prop_oneof![Just(0i64), 0i64..20, -100i64..100, 0i64..3_000]),
                1..400,
            ),
        ) {
            let mut l = limiter(per_second, burst);
            let mut now: u64 = 1_000_000;
            // Per client: the first push's time, and the times of the allowed ones.
            let mut seen: [(Option<u64>, Vec<u64>); 3] = Default::default();
            for (client, step) in steps {
                now = now.saturating_add_signed(step);
                let (first, allowed) = &mut seen[usize::from(client)];
                first.get_or_insert(now);
                if l.check(IpAddr::from([192, 0, 2, client]), now) == Decision::Allow {
                    allowed.push(now);
                }
            }
            for (first, allowed) in &seen {
                let Some(first) = *first else { continue };
                // Each prefix of the allowed pushes is within the bound at its last push, from
                // the client's first push or from any allowed push after it.
                for (i, at) in allowed.iter().enumerate() {
                    let elapsed_s = at.saturating_sub(first) as f64 / 1000.0;
                    prop_assert!(
                        (i + 1) as f64 <= burst + per_second * elapsed_s + 1e-9,
                        "{} pushes in {elapsed_s} s", i + 1
                    );
                }
            }
        }
    }
}
