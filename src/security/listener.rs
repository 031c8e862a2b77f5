//! Kafka's listener settings read into typed [`Listeners`]: `listeners`
//! (`NAME://HOST:PORT,...`, or the bare `HOST:PORT` that means one PLAINTEXT listener),
//! `listener.security.protocol.map`, `advertised.listeners` per listener name, and which
//! listener brokers use to talk to each other (`inter.broker.listener.name` /
//! `security.inter.broker.protocol`).
//!
//! Owns parsing and the rules between those settings (unique names and ports, every name
//! mapped to a protocol, advertised names that exist). Must never bind a socket or read a
//! file: the server binds, the TLS module loads certificates.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use super::SecurityProtocol;

/// Kafka's default `listener.security.protocol.map`.
pub const DEFAULT_PROTOCOL_MAP: &str =
    "PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL";

/// One listener: where it binds, what it tells clients, and its security protocol.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Its name, upper-case as Kafka normalises it (`PLAINTEXT`, `INTERNAL`...).
    pub name: String,
    /// Its security protocol (from `listener.security.protocol.map`).
    pub protocol: SecurityProtocol,
    /// Where every shard accepts (SO_REUSEPORT); port 0 is resolved at startup.
    pub bind: SocketAddr,
    /// The host clients are told in Metadata when they arrive on this listener.
    pub advertised_host: String,
    /// The port clients are told.
    pub advertised_port: i32,
    /// Whether `advertised.listeners` names this listener (else it advertises its bind
    /// address, resolved port included).
    pub advertised_explicitly: bool,
    /// The TLS configuration of an SSL or SASL_SSL listener (set once its certificates load).
    pub tls: Option<Arc<super::tls::TlsAcceptor>>,
}

/// Every listener of the broker, in `listeners` order.
#[derive(Debug, Clone)]
pub struct Listeners {
    /// The listeners.
    pub all: Vec<Listener>,
    /// Index in `all` of the listener other brokers reach this one on (replication, request
    /// forwarding, registration).
    pub inter_broker: usize,
    /// `ssl.reload.check.interval.ms`: how often TLS certificate files are checked for
    /// changes (0: never).
    pub tls_reload_interval_ms: u64,
}

/// The raw settings [`Listeners::parse`] reads, by Kafka name.
#[derive(Debug, Clone, Copy)]
pub struct ListenerSettings<'a> {
    /// `listeners`
    pub listeners: &'a str,
    /// `listener.security.protocol.map`
    pub protocol_map: &'a str,
    /// `advertised.listeners`
    pub advertised: &'a str,
    /// `inter.broker.listener.name`
    pub inter_broker_name: &'a str,
    /// `security.inter.broker.protocol`
    pub inter_broker_protocol: &'a str,
}

/// A listener setting that cannot be used, with the settings involved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerError {
    /// The settings involved.
    pub keys: Vec<&'static str>,
    /// What is wrong, with the values.
    pub message: String,
}

fn error(keys: &[&'static str], message: String) -> ListenerError {
    ListenerError {
        keys: keys.to_vec(),
        message,
    }
}

/// `HOST:PORT` with HOST an IP address (or empty: every interface), `[v6]:PORT` included.
fn parse_bind(text: &str) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr);
    }
    let port = text.strip_prefix(':')?.parse::<u16>().ok()?;
    Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))
}

/// `HOST:PORT` with any non-empty host and a port from 1 to 65535.
fn parse_host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|port| *port > 0)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_string(), port))
}

/// Splits `NAME://rest` (None when there is no `://`).
fn split_named(entry: &str) -> Option<(String, &str)> {
    let (name, rest) = entry.split_once("://")?;
    Some((name.trim().to_ascii_uppercase(), rest))
}

fn entries(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|e| !e.is_empty())
}

impl Listeners {
    /// Reads and checks the listener settings; every problem is reported.
    pub fn parse(settings: ListenerSettings<'_>) -> Result<Listeners, Vec<ListenerError>> {
        let mut errors = Vec::new();
        let map = parse_protocol_map(settings.protocol_map, &mut errors);
        let mut all: Vec<Listener> = Vec::new();
        let given: Vec<&str> = entries(settings.listeners).collect();
        if given.is_empty() {
            errors.push(error(
                &["listeners"],
                "no listener: give NAME://HOST:PORT,... or HOST:PORT".into(),
            ));
        }
        for entry in given {
            let (name, address) = match split_named(entry) {
                Some((name, address)) => (name, address),
                None => ("PLAINTEXT".to_string(), entry),
            };
            let Some(bind) = parse_bind(address) else {
                errors.push(error(
                    &["listeners"],
                    format!(
                        "'{entry}' is not NAME://IP:PORT or IP:PORT (an IP address, or empty for \
                         every interface; e.g. PLAINTEXT://127.0.0.1:9092)"
                    ),
                ));
                continue;
            };
            if name.is_empty() {
                errors.push(error(&["listeners"], format!("'{entry}' has no name")));
                continue;
            }
            let Some(protocol) = map.iter().find(|(n, _)| *n == name).map(|(_, p)| *p) else {
                errors.push(error(
                    &["listeners", "listener.security.protocol.map"],
                    format!(
                        "listener {name} has no security protocol in \
                         listener.security.protocol.map ('{}')",
                        settings.protocol_map
                    ),
                ));
                continue;
            };
            if all.iter().any(|l| l.name == name) {
                errors.push(error(
                    &["listeners"],
                    format!("listener name {name} is used twice"),
                ));
                continue;
            }
            if bind.port() != 0 && all.iter().any(|l| l.bind.port() == bind.port()) {
                errors.push(error(
                    &["listeners"],
                    format!(
                        "port {} is used by two listeners (each listener needs its own port)",
                        bind.port()
                    ),
                ));
                continue;
            }
            all.push(Listener {
                name,
                protocol,
                bind,
                advertised_host: bind.ip().to_string(),
                advertised_port: i32::from(bind.port()),
                advertised_explicitly: false,
                tls: None,
            });
        }
        apply_advertised(settings.advertised, &mut all, &mut errors);
        let inter_broker = inter_broker_listener(&settings, &all, &mut errors);
        if errors.is_empty() {
            Ok(Listeners {
                all,
                inter_broker: inter_broker.unwrap_or(0),
                tls_reload_interval_ms: 0,
            })
        } else {
            Err(errors)
        }
    }

    /// The listener called `name`.
    pub fn by_name(&self, name: &str) -> Option<&Listener> {
        self.all.iter().find(|l| l.name == name)
    }

    /// The inter-broker listener.
    pub fn inter_broker(&self) -> &Listener {
        // `inter_broker` indexes `all`, which `parse` never leaves empty.
        &self.all[self.inter_broker.min(self.all.len().saturating_sub(1))]
    }

    /// What a client that arrived on listener `name` is told this broker is at: that
    /// listener's advertised endpoint (the inter-broker one for an unknown name).
    pub fn advertised_for(&self, name: &str) -> (String, i32) {
        let listener = self.by_name(name).unwrap_or_else(|| self.inter_broker());
        (listener.advertised_host.clone(), listener.advertised_port)
    }
}

/// Where a client of listener `name` reaches a registered broker: its endpoint of that name,
/// or its one registered address when it registered no listeners (None: it has no such
/// listener, so a client of this listener is not told about it).
pub fn endpoint_of(
    broker: &sluice_cluster::state::BrokerRecord,
    name: &str,
) -> Option<(String, i32)> {
    if broker.listeners.is_empty() {
        return Some((broker.host.clone(), broker.port));
    }
    broker
        .listeners
        .iter()
        .find(|e| e.name == name)
        .map(|e| (e.host.clone(), e.port))
}

fn parse_protocol_map(
    text: &str,
    errors: &mut Vec<ListenerError>,
) -> Vec<(String, SecurityProtocol)> {
    let key = "listener.security.protocol.map";
    let mut map: Vec<(String, SecurityProtocol)> = Vec::new();
    for entry in entries(text) {
        let Some((name, protocol)) = entry.split_once(':') else {
            errors.push(error(&[key], format!("'{entry}' is not NAME:PROTOCOL")));
            continue;
        };
        let name = name.trim().to_ascii_uppercase();
        let Some(protocol) = SecurityProtocol::parse(protocol.trim()) else {
            errors.push(error(
                &[key],
                format!(
                    "unknown security protocol '{}' for listener {name} (PLAINTEXT, SSL, \
                     SASL_PLAINTEXT or SASL_SSL)",
                    protocol.trim()
                ),
            ));
            continue;
        };
        if map.iter().any(|(n, _)| *n == name) {
            errors.push(error(&[key], format!("listener {name} is mapped twice")));
            continue;
        }
        map.push((name, protocol));
    }
    map
}

fn apply_advertised(text: &str, all: &mut [Listener], errors: &mut Vec<ListenerError>) {
    let key = "advertised.listeners";
    let given: Vec<&str> = entries(text).collect();
    for entry in &given {
        let (name, address) = match split_named(entry) {
            Some((name, address)) => (Some(name), address),
            None => (None, *entry),
        };
        let Some((host, port)) = parse_host_port(address) else {
            errors.push(error(
                &[key],
                format!(
                    "'{entry}' is not NAME://HOST:PORT or HOST:PORT with a port from 1 to 65535"
                ),
            ));
            continue;
        };
        let listener = match &name {
            Some(name) => all.iter_mut().find(|l| l.name == *name),
            // The bare form names no listener: it is the only listener's address.
            None if given.len() == 1 && all.len() == 1 => all.first_mut(),
            None => {
                errors.push(error(
                    &[key, "listeners"],
                    format!(
                        "'{entry}' names no listener; with several listeners give \
                         NAME://HOST:PORT for each"
                    ),
                ));
                continue;
            }
        };
        let Some(listener) = listener else {
            errors.push(error(
                &[key, "listeners"],
                format!(
                    "advertised listener {} is not in listeners",
                    name.unwrap_or_default()
                ),
            ));
            continue;
        };
        if listener.advertised_explicitly {
            errors.push(error(
                &[key],
                format!("listener {} is advertised twice", listener.name),
            ));
            continue;
        }
        listener.advertised_host = host;
        listener.advertised_port = i32::from(port);
        listener.advertised_explicitly = true;
    }
}

fn inter_broker_listener(
    settings: &ListenerSettings<'_>,
    all: &[Listener],
    errors: &mut Vec<ListenerError>,
) -> Option<usize> {
    let (name_key, protocol_key) = (
        "inter.broker.listener.name",
        "security.inter.broker.protocol",
    );
    let name = settings.inter_broker_name.trim().to_ascii_uppercase();
    let protocol = settings.inter_broker_protocol.trim();
    if !name.is_empty() && !protocol.is_empty() {
        errors.push(error(
            &[name_key, protocol_key],
            "set one of them, not both (as Kafka)".into(),
        ));
        return None;
    }
    let wanted = if !name.is_empty() {
        name
    } else if !protocol.is_empty() {
        match SecurityProtocol::parse(protocol) {
            // Kafka: the inter-broker listener is the one named after the protocol.
            Some(protocol) => protocol.name().to_string(),
            None => {
                errors.push(error(
                    &[protocol_key],
                    format!("unknown security protocol '{protocol}'"),
                ));
                return None;
            }
        }
    } else {
        // Neither set: Kafka's default PLAINTEXT listener, else the first listener.
        return Some(all.iter().position(|l| l.name == "PLAINTEXT").unwrap_or(0));
    };
    let found = all.iter().position(|l| l.name == wanted);
    if found.is_none() && !all.is_empty() {
        errors.push(error(
            &[name_key, protocol_key, "listeners"],
            format!("the inter-broker listener {wanted} is not in listeners"),
        ));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(listeners: &str, advertised: &str) -> ListenerSettings<'static> {
        ListenerSettings {
            listeners: Box::leak(listeners.to_string().into_boxed_str()),
            protocol_map: DEFAULT_PROTOCOL_MAP,
            advertised: Box::leak(advertised.to_string().into_boxed_str()),
            inter_broker_name: "",
            inter_broker_protocol: "",
        }
    }

    fn messages(result: Result<Listeners, Vec<ListenerError>>) -> Vec<String> {
        result
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.message)
            .collect()
    }

    #[test]
    fn bare_host_port_is_one_plaintext_listener() {
        let listeners = Listeners::parse(settings("127.0.0.1:9092", "")).unwrap();
        assert_eq!(listeners.all.len(), 1);
        let only = &listeners.all[0];
        assert_eq!(only.name, "PLAINTEXT");
        assert_eq!(only.protocol, SecurityProtocol::Plaintext);
        assert_eq!(only.bind, "127.0.0.1:9092".parse().unwrap());
        assert_eq!(
            listeners.advertised_for("PLAINTEXT"),
            ("127.0.0.1".into(), 9092)
        );
        let advertised = Listeners::parse(settings("127.0.0.1:9092", "broker1:19092")).unwrap();
        assert_eq!(
            advertised.advertised_for("PLAINTEXT"),
            ("broker1".into(), 19092)
        );
    }

    #[test]
    fn named_listeners_with_a_custom_map_and_advertised_names() {
        let parsed = Listeners::parse(ListenerSettings {
            listeners: "plaintext://127.0.0.1:9092,INTERNAL://:9093,SSL://[::1]:9094",
            protocol_map: "PLAINTEXT:PLAINTEXT,INTERNAL:SASL_PLAINTEXT,SSL:SSL",
            advertised: "INTERNAL://broker-1.internal:19093,SSL://[::1]:9094",
            inter_broker_name: "internal",
            inter_broker_protocol: "",
        })
        .unwrap();
        let names: Vec<_> = parsed.all.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["PLAINTEXT", "INTERNAL", "SSL"]);
        assert_eq!(parsed.all[1].protocol, SecurityProtocol::SaslPlaintext);
        assert_eq!(parsed.all[1].bind, "0.0.0.0:9093".parse().unwrap());
        assert_eq!(parsed.inter_broker().name, "INTERNAL");
        assert_eq!(
            parsed.advertised_for("INTERNAL"),
            ("broker-1.internal".into(), 19093)
        );
        assert_eq!(parsed.advertised_for("SSL"), ("::1".into(), 9094));
        assert_eq!(
            parsed.advertised_for("PLAINTEXT"),
            ("127.0.0.1".into(), 9092)
        );
        assert!(!parsed.all[0].advertised_explicitly);
    }

    #[test]
    fn security_inter_broker_protocol_picks_the_listener_of_that_name() {
        let parsed = Listeners::parse(ListenerSettings {
            inter_broker_protocol: "SSL",
            ..settings("PLAINTEXT://127.0.0.1:9092,SSL://127.0.0.1:9093", "")
        })
        .unwrap();
        assert_eq!(parsed.inter_broker().name, "SSL");
        let default = Listeners::parse(settings("SSL://127.0.0.1:9093,PLAINTEXT://:9092", ""));
        assert_eq!(default.unwrap().inter_broker().name, "PLAINTEXT");
    }

    #[test]
    fn mistakes_are_refused_with_what_is_wrong() {
        assert_eq!(
            messages(Listeners::parse(settings(
                "PLAINTEXT://:9092,PLAINTEXT://:9093",
                ""
            ))),
            ["listener name PLAINTEXT is used twice"]
        );
        assert_eq!(
            messages(Listeners::parse(settings(
                "PLAINTEXT://:9092,SSL://:9092",
                ""
            ))),
            ["port 9092 is used by two listeners (each listener needs its own port)"]
        );
        assert_eq!(
            messages(Listeners::parse(settings("EXTERNAL://:9092", ""))),
            [
                "listener EXTERNAL has no security protocol in listener.security.protocol.map \
              ('PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL')"
            ]
        );
        assert_eq!(
            messages(Listeners::parse(settings(
                "PLAINTEXT://:9092",
                "SSL://h:9093"
            ))),
            ["advertised listener SSL is not in listeners"]
        );
        assert_eq!(
            messages(Listeners::parse(ListenerSettings {
                protocol_map: "PLAINTEXT:TLS",
                ..settings("PLAINTEXT://:9092", "")
            }))[0],
            "unknown security protocol 'TLS' for listener PLAINTEXT (PLAINTEXT, SSL, \
             SASL_PLAINTEXT or SASL_SSL)"
        );
        assert_eq!(
            messages(Listeners::parse(settings("PLAINTEXT://localhost:9092", ""))).len(),
            1,
            "a host name cannot be bound"
        );
        assert_eq!(
            messages(Listeners::parse(settings(
                "PLAINTEXT://:9092,SSL://:9093",
                "h:1"
            )))
            .len(),
            1,
            "a bare advertised address with several listeners"
        );
        assert_eq!(
            messages(Listeners::parse(ListenerSettings {
                inter_broker_name: "INTERNAL",
                ..settings("PLAINTEXT://:9092", "")
            })),
            ["the inter-broker listener INTERNAL is not in listeners"]
        );
        // Several port-0 listeners each get their own port at startup.
        assert!(Listeners::parse(settings("PLAINTEXT://:0,SSL://:0", "")).is_ok());
    }
}
