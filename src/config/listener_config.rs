//! Reading the listener settings (`listeners`, `listener.security.protocol.map`,
//! `advertised.listeners`, `inter.broker.listener.name`, `security.inter.broker.protocol`)
//! through [`Listeners::parse`], every problem recorded as a configuration error. Must never
//! bind a socket (the server does).

use crate::security::listener::{ListenerSettings, Listeners};

use super::check::Check;
use super::{ConfigError, Settings};

/// The listeners, or None with the problems recorded in `c`.
pub(super) fn read(c: &mut Check, settings: &Settings) -> Option<Listeners> {
    let parsed = Listeners::parse(ListenerSettings {
        listeners: settings.raw("listeners"),
        protocol_map: settings.raw("listener.security.protocol.map"),
        advertised: settings.raw("advertised.listeners"),
        inter_broker_name: settings.raw("inter.broker.listener.name"),
        inter_broker_protocol: settings.raw("security.inter.broker.protocol"),
    });
    match parsed {
        Ok(listeners) => {
            refuse_unbuilt_protocols(c, &listeners);
            Some(listeners)
        }
        Err(errors) => {
            for error in errors {
                c.errors.push(match error.keys.as_slice() {
                    [key] => ConfigError::BadValue {
                        key: key.to_string(),
                        message: error.message,
                    },
                    keys => ConfigError::Conflict {
                        keys: keys
                            .iter()
                            .map(|key| format!("'{key}'"))
                            .collect::<Vec<_>>()
                            .join(" and "),
                        message: error.message,
                    },
                });
            }
            None
        }
    }
}

/// TLS listeners need the TLS transport, which is not built yet: refused rather than served
/// in plaintext under an SSL name.
fn refuse_unbuilt_protocols(c: &mut Check, listeners: &Listeners) {
    for listener in &listeners.all {
        c.relation(
            !listener.protocol.uses_tls(),
            &["listeners", "listener.security.protocol.map"],
            format!(
                "listener {} is {}: TLS listeners are not supported yet",
                listener.name,
                listener.protocol.name()
            ),
        );
    }
}

/// A cluster's brokers replicate and forward over the inter-broker listener with a
/// PLAINTEXT client: an inter-broker listener that needs TLS or SASL is refused.
pub(super) fn check_cluster(c: &mut Check, listeners: &Listeners) {
    let inter_broker = listeners.inter_broker();
    c.relation(
        inter_broker.protocol == crate::security::SecurityProtocol::Plaintext,
        &["inter.broker.listener.name", "listeners"],
        format!(
            "the inter-broker listener {} is {}; brokers talk to each other in PLAINTEXT only \
             for now: add a PLAINTEXT listener for them (e.g. INTERNAL://IP:PORT with \
             INTERNAL:PLAINTEXT in listener.security.protocol.map and \
             inter.broker.listener.name=INTERNAL)",
            inter_broker.name,
            inter_broker.protocol.name()
        ),
    );
}
