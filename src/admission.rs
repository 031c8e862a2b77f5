//! Connection admission at accept: `max.connections.per.ip` (with its per-IP overrides),
//! counted broker-wide, and the rate-limited log line for refused connections.
//!
//! Owns the per-IP connection counts. The count is shared by every shard behind one mutex,
//! because SO_REUSEPORT spreads one client's connections over all shards, so a per-shard share
//! of a per-IP limit would refuse too early or too late. The mutex is taken only at accept and
//! close. Must never: be touched on the produce or fetch path, or count a connection it did
//! not admit (a slot is released exactly once, by dropping it).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Refusals are logged at most this often per shard; the line carries the count since.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// `max.connections.per.ip` and `max.connections.per.ip.overrides`.
#[derive(Debug, Clone)]
pub struct PerIpLimits {
    default_max: usize,
    overrides: HashMap<IpAddr, usize>,
}

impl PerIpLimits {
    /// The limit for every IP, with exceptions given as `IP:N,IP:N` (Kafka's format, IP
    /// addresses only: resolving host names at accept would block the shard).
    pub fn parse(default_max: usize, overrides: &str) -> Result<PerIpLimits, String> {
        let mut parsed = HashMap::new();
        for entry in overrides
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let (ip, count) = entry
                .rsplit_once(':')
                .ok_or_else(|| format!("'{entry}': expected IP:N"))?;
            let ip: IpAddr = ip
                .trim_matches(|c| c == '[' || c == ']')
                .parse()
                .map_err(|e| format!("'{entry}': {e} (IP addresses only, no host names)"))?;
            let count: usize = count.parse().map_err(|e| format!("'{entry}': {e}"))?;
            parsed.insert(ip, count);
        }
        Ok(PerIpLimits {
            default_max,
            overrides: parsed,
        })
    }

    /// No limit at all (a placeholder while a bad configuration is being reported).
    pub fn unlimited() -> PerIpLimits {
        PerIpLimits {
            default_max: usize::MAX,
            overrides: HashMap::new(),
        }
    }

    /// The limit for `ip`.
    pub fn limit_for(&self, ip: IpAddr) -> usize {
        self.overrides.get(&ip).copied().unwrap_or(self.default_max)
    }
}

/// Open connections per client IP, broker-wide.
#[derive(Debug, Default)]
pub struct ConnectionsPerIp {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl ConnectionsPerIp {
    /// Admits one more connection from `ip` if it stays within `limits`; the slot releases it
    /// when dropped.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, limits: &PerIpLimits) -> Option<IpSlot> {
        // A poisoned lock only means another shard panicked while counting; the map is
        // still a valid count.
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= limits.limit_for(ip) {
            if *count == 0 {
                counts.remove(&ip);
            }
            return None;
        }
        *count += 1;
        Some(IpSlot {
            ip,
            counts: self.clone(),
        })
    }

    fn release(&self, ip: IpAddr) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&ip);
            }
        }
    }
}

/// One admitted connection's place in its IP's count.
#[derive(Debug)]
pub struct IpSlot {
    ip: IpAddr,
    counts: Arc<ConnectionsPerIp>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        self.counts.release(self.ip);
    }
}

/// Logs refused connections at most once per [`REFUSAL_LOG_INTERVAL`], so a client retrying
/// in a loop cannot flood the log.
#[derive(Debug, Default)]
pub struct RefusalLog {
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl RefusalLog {
    /// Records one refusal and logs it unless one was logged within the interval.
    pub fn refused(&mut self, peer: std::net::SocketAddr, reason: &str, limit: usize) {
        let now = Instant::now();
        if self
            .last_logged
            .is_some_and(|at| now.duration_since(at) < REFUSAL_LOG_INTERVAL)
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            %peer,
            limit,
            suppressed_since_last_line = self.suppressed,
            "closing connection at accept: {reason} reached"
        );
        self.last_logged = Some(now);
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_limit_admits_up_to_the_limit_and_slots_release_on_drop() {
        let limits = PerIpLimits::parse(2, "10.0.0.1:0, [::1]:5").unwrap();
        let counts = Arc::new(ConnectionsPerIp::default());
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let first = counts.admit(local, &limits).expect("first");
        let second = counts.admit(local, &limits).expect("second");
        assert!(counts.admit(local, &limits).is_none(), "third refused");
        drop(first);
        let third = counts.admit(local, &limits).expect("a slot was freed");
        assert!(counts.admit("10.0.0.1".parse().unwrap(), &limits).is_none());
        assert_eq!(limits.limit_for("::1".parse().unwrap()), 5);
        drop((second, third));
        assert!(counts.counts.lock().unwrap().is_empty(), "no stale entries");
    }

    #[test]
    fn overrides_refuse_host_names_and_bad_counts() {
        assert!(PerIpLimits::parse(1, "broker.example:3").is_err());
        assert!(PerIpLimits::parse(1, "127.0.0.1:many").is_err());
        assert!(PerIpLimits::parse(1, "127.0.0.1").is_err());
    }
}
