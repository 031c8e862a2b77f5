//! Typed reading of raw setting values with their allowed ranges: every problem is recorded
//! (key, bad value, what is allowed) and reading goes on, so one start attempt lists them all.
//!
//! Must never: fall back to a default for a malformed value without recording an error, or
//! narrow an integer with `as` (a value that does not fit its type is out of range).

use std::net::SocketAddr;
use std::ops::RangeInclusive;

use super::{ConfigError, Settings};
use crate::admission::PerIpLimits;

/// Reads settings, collecting every problem in `errors`. A read that fails returns a
/// placeholder (the type's default); the caller must not use the result when `errors` is
/// non-empty.
pub(super) struct Check<'a> {
    settings: &'a Settings,
    pub errors: Vec<ConfigError>,
}

impl<'a> Check<'a> {
    pub fn new(settings: &'a Settings) -> Self {
        Self {
            settings,
            errors: Vec::new(),
        }
    }

    fn invalid(&mut self, key: &str, allowed: impl Into<String>) {
        self.errors.push(ConfigError::Invalid {
            key: key.to_string(),
            value: self.settings.raw(key).to_string(),
            allowed: allowed.into(),
        });
    }

    /// An integer within `range`, converted to `T` without truncation.
    pub fn int<T: TryFrom<i64> + Default>(&mut self, key: &str, range: RangeInclusive<i64>) -> T {
        self.optional_int_inner(key, range, false)
            .unwrap_or_default()
    }

    /// Like [`Check::int`], but an empty value means "not set".
    pub fn optional_int<T: TryFrom<i64> + Default>(
        &mut self,
        key: &str,
        range: RangeInclusive<i64>,
    ) -> Option<T> {
        self.optional_int_inner(key, range, true)
    }

    fn optional_int_inner<T: TryFrom<i64> + Default>(
        &mut self,
        key: &str,
        range: RangeInclusive<i64>,
        empty_allowed: bool,
    ) -> Option<T> {
        let raw = self.settings.raw(key);
        let allowed = describe(&range, empty_allowed);
        if raw.is_empty() && empty_allowed {
            return None;
        }
        let parsed = raw
            .parse::<i64>()
            .ok()
            .filter(|value| range.contains(value))
            .and_then(|value| T::try_from(value).ok());
        if parsed.is_none() {
            self.invalid(key, allowed);
        }
        parsed
    }

    /// `true` or `false` (any case, as Kafka reads booleans).
    pub fn boolean(&mut self, key: &str) -> bool {
        let raw = self.settings.raw(key);
        if raw.eq_ignore_ascii_case("true") {
            true
        } else if raw.eq_ignore_ascii_case("false") {
            false
        } else {
            self.invalid(key, "true or false");
            false
        }
    }

    /// One of `choices` by exact name.
    pub fn one_of<T: Copy>(&mut self, key: &str, choices: &[(&str, T)]) -> Option<T> {
        let raw = self.settings.raw(key);
        let found = choices
            .iter()
            .find(|(name, _)| *name == raw)
            .map(|(_, value)| *value);
        if found.is_none() {
            let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
            self.invalid(key, names.join(" or "));
        }
        found
    }

    /// A value `parse` accepts (None: invalid, `allowed` says what is).
    pub fn parsed<T>(
        &mut self,
        key: &str,
        allowed: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        let found = parse(self.settings.raw(key));
        if found.is_none() {
            self.invalid(key, allowed);
        }
        found
    }

    /// An IP:PORT socket address.
    pub fn socket_addr(&mut self, key: &str) -> Option<SocketAddr> {
        let parsed = self.settings.raw(key).parse::<SocketAddr>().ok();
        if parsed.is_none() {
            self.invalid(key, "IP:PORT, e.g. 127.0.0.1:9092");
        }
        parsed
    }

    /// Empty (disabled) or an IP:PORT socket address.
    pub fn optional_socket_addr(&mut self, key: &str) -> Option<SocketAddr> {
        if self.settings.raw(key).is_empty() {
            None
        } else {
            self.socket_addr(key)
        }
    }

    /// Any value but the empty string.
    pub fn non_empty(&mut self, key: &str) -> String {
        let raw = self.settings.raw(key).to_string();
        if raw.is_empty() {
            self.invalid(key, "a non-empty value");
        }
        raw
    }

    /// Per-IP connection limits `IP:N,IP:N` over `default_max`, each N within `range`.
    pub fn per_ip_limits(
        &mut self,
        key: &str,
        default_max: usize,
        range: RangeInclusive<i64>,
    ) -> Option<PerIpLimits> {
        let raw = self.settings.raw(key);
        // The parser takes any usize; the counts are held to the range here, as
        // max.connections.per.ip is.
        let counts_in_range = raw
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .all(|entry| {
                entry
                    .rsplit_once(':')
                    .and_then(|(_, count)| count.parse::<i64>().ok())
                    .is_some_and(|count| range.contains(&count))
            });
        let parsed = PerIpLimits::parse(default_max, raw)
            .ok()
            .filter(|_| counts_in_range);
        if parsed.is_none() {
            self.invalid(
                key,
                format!(
                    "IP:N,IP:N with IP addresses (no host names) and each N {}",
                    describe(&range, false)
                ),
            );
        }
        parsed
    }

    /// Records a broken rule between settings unless `holds`.
    pub fn relation(&mut self, holds: bool, keys: &[&str], message: String) {
        if !holds {
            let keys: Vec<String> = keys.iter().map(|key| format!("'{key}'")).collect();
            self.errors.push(ConfigError::Conflict {
                keys: keys.join(" and "),
                message,
            });
        }
    }
}

fn describe(range: &RangeInclusive<i64>, empty_allowed: bool) -> String {
    let integers = match (*range.start(), *range.end()) {
        (start, i64::MAX) => format!("an integer >= {start}"),
        (start, end) => format!("an integer from {start} to {end}"),
    };
    if empty_allowed {
        format!("empty (not set) or {integers}")
    } else {
        integers
    }
}
