//! Reading the listener settings (`listeners`, `listener.security.protocol.map`,
//! `advertised.listeners`, `inter.broker.listener.name`, `security.inter.broker.protocol`)
//! through [`Listeners::parse`], and each TLS listener's certificates (`ssl.*`), every problem
//! recorded as a configuration error. Must never bind a socket (the server does).

use std::sync::Arc;
use std::time::Duration;

use crate::security::listener::{ListenerSettings, Listeners};
use crate::security::tls::config::TlsSettings;
use crate::security::tls::stream::TlsLimits;
use crate::security::tls::TlsAcceptor;

use super::check::Check;
use super::{ConfigError, Settings, INT_MAX};

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
        Ok(mut listeners) => {
            attach_tls(c, settings, &mut listeners);
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

/// Loads the certificates of every SSL and SASL_SSL listener (its `listener.name.<name>.ssl.*`
/// settings, else the broker-wide `ssl.*`): a TLS listener that cannot serve is refused at start.
fn attach_tls(c: &mut Check, settings: &Settings, listeners: &mut Listeners) {
    let limits = TlsLimits {
        handshake_timeout: Duration::from_millis(c.int("ssl.handshake.timeout.ms", 1..=INT_MAX)),
        io_bytes: c.int("ssl.io.buffer.bytes", 4096..=(64 << 20)),
    };
    listeners.tls_reload_interval_ms = c.int("ssl.reload.check.interval.ms", 0..=INT_MAX);
    for listener in listeners.all.iter_mut().filter(|l| l.protocol.uses_tls()) {
        let tls = match TlsSettings::read(|key| settings.raw(key), &listener.name) {
            Ok(tls) => tls,
            Err(problems) => {
                for (key, message) in problems {
                    c.errors.push(ConfigError::Conflict {
                        keys: format!("'{key}' (listener {})", listener.name),
                        message,
                    });
                }
                continue;
            }
        };
        match TlsAcceptor::new(tls, limits) {
            Ok(acceptor) => listener.tls = Some(Arc::new(acceptor)),
            Err(message) => c.errors.push(ConfigError::Conflict {
                keys: format!("'ssl.*' (listener {})", listener.name),
                message,
            }),
        }
    }
}

/// How this broker connects to the other brokers' inter-broker listener (TLS and a SASL
/// login as that listener needs, see [`crate::security::inter_broker`]); None for PLAINTEXT.
/// A listener the other brokers could not be reached on is a start error.
pub(super) fn inter_broker_security(
    c: &mut Check,
    settings: &Settings,
    listeners: &Listeners,
) -> Option<Arc<sluice_client::Security>> {
    let listener = listeners.inter_broker();
    match crate::security::inter_broker::read(|key| settings.raw(key), listener) {
        Ok(security) => security,
        Err(problems) => {
            for (key, message) in problems {
                c.errors.push(ConfigError::Conflict {
                    keys: format!("'{key}' (inter-broker listener {})", listener.name),
                    message,
                });
            }
            None
        }
    }
}
