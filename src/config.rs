//! Broker configuration: every setting by its Kafka-style name, with its default, its meaning,
//! and the precedence rule config file < `--override key=value` < dedicated command-line flags.
//!
//! Owns parsing and validation of settings. Must never: read the environment behind the
//! user's back or accept an unknown key silently (a typo must not look like a setting).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use sluice_storage::{LogConfig, TimestampType};

/// One documented setting.
pub struct Setting {
    /// Kafka-style name.
    pub name: &'static str,
    /// Default value as text.
    pub default: &'static str,
    /// What it does.
    pub doc: &'static str,
}

/// Every broker setting. The README's configuration reference is generated from this table
/// (`sluice serve --print-config-reference`).
pub const SETTINGS: &[Setting] = &[
    Setting { name: "log.dirs", default: "./sluice-data", doc: "Data directory (CLI: --data-dir)." },
    Setting { name: "listeners", default: "127.0.0.1:9092", doc: "Kafka listener HOST:PORT (CLI: --listen)." },
    Setting { name: "advertised.listeners", default: "", doc: "HOST:PORT clients are told to connect to; defaults to the listener (CLI: --advertised-listener)." },
    Setting { name: "admin.listen", default: "127.0.0.1:9644", doc: "Admin HTTP listener for /metrics and /stats (CLI: --admin-listen); empty disables it." },
    Setting { name: "num.shards", default: "0", doc: "Shards (pinned threads); 0 = one per available core (CLI: --shards)." },
    Setting { name: "node.id", default: "0", doc: "This broker's id." },
    Setting { name: "num.partitions", default: "1", doc: "Partitions of an auto-created topic, or of a CreateTopics request with -1." },
    Setting { name: "auto.create.topics.enable", default: "true", doc: "Create unknown topics on Metadata requests." },
    Setting { name: "message.max.bytes", default: "1048588", doc: "Largest record batch accepted (topic: max.message.bytes)." },
    Setting { name: "socket.request.max.bytes", default: "104857600", doc: "Largest request frame; a bigger one closes the connection." },
    Setting { name: "max.connections", default: "10000", doc: "Open client connections per broker; further ones are closed at accept." },
    Setting { name: "queued.max.requests", default: "500", doc: "Requests read but not answered, per connection (pipelining depth)." },
    Setting { name: "log.segment.bytes", default: "1073741824", doc: "Segment size before a roll (topic: segment.bytes)." },
    Setting { name: "log.roll.ms", default: "604800000", doc: "Segment age before a roll (topic: segment.ms)." },
    Setting { name: "log.retention.ms", default: "604800000", doc: "Age after which whole segments are deleted; -1 keeps forever (topic: retention.ms)." },
    Setting { name: "log.retention.bytes", default: "-1", doc: "Partition size above which old segments are deleted; -1 = unlimited (topic: retention.bytes)." },
    Setting { name: "log.retention.check.interval.ms", default: "300000", doc: "How often retention runs." },
    Setting { name: "log.index.interval.bytes", default: "4096", doc: "Bytes between offset-index entries (topic: index.interval.bytes)." },
    Setting { name: "log.flush.interval.messages", default: "", doc: "Empty: every group commit is fdatasync'ed before acks=all completes. N: fsync every N messages and acks=all completes on write (topic: flush.messages)." },
    Setting { name: "log.flush.interval.ms", default: "", doc: "Like log.flush.interval.messages, by time (topic: flush.ms)." },
    Setting { name: "log.message.timestamp.type", default: "CreateTime", doc: "CreateTime or LogAppendTime (topic: message.timestamp.type)." },
    Setting { name: "log.direct.io", default: "true", doc: "O_DIRECT appends from registered buffers; false = buffered writes." },
    Setting { name: "log.tail.cache.bytes", default: "67108864", doc: "Recent bytes per shard served to consumers from memory." },
    Setting { name: "log.flush.batch.bytes", default: "16777216", doc: "Upper bound of one group commit write." },
    Setting { name: "io.uring.entries", default: "1024", doc: "Submission queue size of each shard's storage ring." },
    Setting { name: "fetch.zero.copy", default: "true", doc: "Send record bytes with splice/SEND_ZC; false = copy every record byte through a user-space buffer (pread / memcpy)." },
    Setting { name: "fetch.max.wait.ms.max", default: "30000", doc: "Upper bound on a Fetch's max_wait_ms." },
    Setting { name: "group.initial.rebalance.delay.ms", default: "3000", doc: "Wait for more members before the first rebalance of an empty group." },
    Setting { name: "group.min.session.timeout.ms", default: "6000", doc: "Smallest session timeout a member may ask for." },
    Setting { name: "group.max.session.timeout.ms", default: "1800000", doc: "Largest session timeout a member may ask for." },
    Setting { name: "group.max.size", default: "2147483647", doc: "Members per group." },
    Setting { name: "offsets.retention.minutes", default: "10080", doc: "Committed offsets of empty groups expire after this." },
    Setting { name: "cluster.id", default: "", doc: "Cluster id; generated and stored in the metadata log when empty." },
];

/// Topic-level config names Sluice understands, with the broker setting that gives the default.
pub const TOPIC_CONFIGS: &[(&str, &str)] = &[
    ("segment.bytes", "log.segment.bytes"),
    ("segment.ms", "log.roll.ms"),
    ("retention.ms", "log.retention.ms"),
    ("retention.bytes", "log.retention.bytes"),
    ("max.message.bytes", "message.max.bytes"),
    ("index.interval.bytes", "log.index.interval.bytes"),
    ("flush.messages", "log.flush.interval.messages"),
    ("flush.ms", "log.flush.interval.ms"),
    ("message.timestamp.type", "log.message.timestamp.type"),
    ("cleanup.policy", ""),
];

/// A configuration problem, reported before the broker starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key no setting has.
    #[error("unknown setting '{0}' (see `sluice serve --help` for the list)")]
    UnknownKey(String),
    /// A value that does not parse.
    #[error("setting '{key}': {message}")]
    BadValue {
        /// the key
        key: String,
        /// why
        message: String,
    },
    /// The config file cannot be read or parsed.
    #[error("config file {path}: {message}")]
    File {
        /// the file
        path: PathBuf,
        /// why
        message: String,
    },
}

/// Aliases used by the command line and the TOML file for the Kafka names.
const ALIASES: &[(&str, &str)] = &[
    ("data-dir", "log.dirs"),
    ("listen", "listeners"),
    ("advertised-listener", "advertised.listeners"),
    ("admin-listen", "admin.listen"),
    ("shards", "num.shards"),
];

fn canonical(key: &str) -> &str {
    ALIASES
        .iter()
        .find(|(alias, _)| *alias == key)
        .map(|(_, name)| *name)
        .unwrap_or(key)
}

/// Raw settings by Kafka name, defaults filled in.
#[derive(Debug, Clone)]
pub struct Settings {
    values: BTreeMap<String, String>,
}

impl Default for Settings {
    fn default() -> Self {
        let values = SETTINGS
            .iter()
            .map(|s| (s.name.to_string(), s.default.to_string()))
            .collect();
        Self { values }
    }
}

impl Settings {
    /// Sets `key` (Kafka name or alias) to `value`; unknown keys are an error.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let key = canonical(key.trim());
        if !SETTINGS.iter().any(|s| s.name == key) {
            return Err(ConfigError::UnknownKey(key.to_string()));
        }
        self.values
            .insert(key.to_string(), value.trim().to_string());
        Ok(())
    }

    /// Applies a `key=value` override.
    pub fn apply_override(&mut self, assignment: &str) -> Result<(), ConfigError> {
        let (key, value) = assignment
            .split_once('=')
            .ok_or_else(|| ConfigError::BadValue {
                key: assignment.to_string(),
                message: "expected key=value".into(),
            })?;
        self.set(key, value)
    }

    /// Loads a TOML file: keys are Kafka names (dotted keys nest in TOML and are flattened
    /// back) or the command-line names (`data-dir`, `listen`, ...).
    pub fn load_toml(&mut self, path: &std::path::Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::File {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let mut flat = Vec::new();
        flatten("", &toml::Value::Table(table), &mut flat);
        for (key, value) in flat {
            self.set(&key, &value)?;
        }
        Ok(())
    }

    /// The raw value.
    pub fn raw(&self, key: &str) -> &str {
        self.values.get(key).map(String::as_str).unwrap_or("")
    }

    fn parse<T: std::str::FromStr>(&self, key: &str) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        let raw = self.raw(key);
        raw.parse().map_err(|e: T::Err| ConfigError::BadValue {
            key: key.to_string(),
            message: format!("'{raw}': {e}"),
        })
    }

    fn optional<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        if self.raw(key).is_empty() {
            Ok(None)
        } else {
            self.parse(key).map(Some)
        }
    }
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut Vec<(String, String)>) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                let name = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&name, value, out);
            }
        }
        toml::Value::String(s) => out.push((prefix.to_string(), s.clone())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

/// Typed broker configuration.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// All settings (for DescribeConfigs).
    pub settings: Settings,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Kafka listener.
    pub listen: SocketAddr,
    /// Host and port given to clients in Metadata.
    pub advertised_host: String,
    /// Advertised port.
    pub advertised_port: i32,
    /// Admin HTTP listener (None = disabled).
    pub admin_listen: Option<SocketAddr>,
    /// Shard count (resolved: never 0).
    pub shards: usize,
    /// This broker's node id.
    pub node_id: i32,
    /// Default partitions.
    pub num_partitions: i32,
    /// Auto-create on Metadata.
    pub auto_create_topics: bool,
    /// Request frame limit.
    pub request_bytes_max: usize,
    /// Connections limit.
    pub connections_max: usize,
    /// Pipelining depth per connection.
    pub inflight_requests_max: usize,
    /// Retention check period.
    pub retention_check_interval_ms: u64,
    /// Zero-copy fetch path.
    pub fetch_zero_copy: bool,
    /// Cap on max_wait_ms.
    pub fetch_wait_ms_max: u64,
    /// Default log settings for topics.
    pub log_defaults: LogConfig,
    /// O_DIRECT.
    pub direct_io: bool,
    /// Tail cache bytes per shard.
    pub tail_cache_bytes: usize,
    /// Group commit cap.
    pub group_commit_bytes_max: usize,
    /// Storage ring size.
    pub ring_entries: u32,
}

impl BrokerConfig {
    /// Validates and types `settings`.
    pub fn from_settings(settings: Settings) -> Result<Self, ConfigError> {
        let listen: SocketAddr = settings.parse("listeners")?;
        let advertised = settings.raw("advertised.listeners").to_string();
        let (advertised_host, advertised_port) = if advertised.is_empty() {
            (listen.ip().to_string(), i32::from(listen.port()))
        } else {
            let (host, port) =
                advertised
                    .rsplit_once(':')
                    .ok_or_else(|| ConfigError::BadValue {
                        key: "advertised.listeners".into(),
                        message: format!("'{advertised}': expected HOST:PORT"),
                    })?;
            let port: u16 = port.parse().map_err(|e| ConfigError::BadValue {
                key: "advertised.listeners".into(),
                message: format!("'{advertised}': {e}"),
            })?;
            (host.to_string(), i32::from(port))
        };
        let admin_listen = settings.optional::<SocketAddr>("admin.listen")?;
        let mut shards: usize = settings.parse("num.shards")?;
        if shards == 0 {
            shards = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
        }
        let timestamp_type = match settings.raw("log.message.timestamp.type") {
            "CreateTime" => TimestampType::CreateTime,
            "LogAppendTime" => TimestampType::LogAppendTime,
            other => {
                return Err(ConfigError::BadValue {
                    key: "log.message.timestamp.type".into(),
                    message: format!("'{other}': expected CreateTime or LogAppendTime"),
                })
            }
        };
        let log_defaults = LogConfig {
            segment_bytes: settings.parse("log.segment.bytes")?,
            segment_ms: settings.parse("log.roll.ms")?,
            retention_ms: settings.parse("log.retention.ms")?,
            retention_bytes: settings.parse("log.retention.bytes")?,
            max_message_bytes: settings.parse("message.max.bytes")?,
            index_interval_bytes: settings.parse("log.index.interval.bytes")?,
            flush_messages: settings.optional("log.flush.interval.messages")?,
            flush_ms: settings.optional("log.flush.interval.ms")?,
            timestamp_type,
        };
        if log_defaults.segment_bytes < 4096 {
            return Err(ConfigError::BadValue {
                key: "log.segment.bytes".into(),
                message: "must be at least 4096".into(),
            });
        }
        Ok(Self {
            data_dir: PathBuf::from(settings.raw("log.dirs")),
            listen,
            advertised_host,
            advertised_port,
            admin_listen,
            shards,
            node_id: settings.parse("node.id")?,
            num_partitions: settings.parse("num.partitions")?,
            auto_create_topics: settings.parse("auto.create.topics.enable")?,
            request_bytes_max: settings.parse("socket.request.max.bytes")?,
            connections_max: settings.parse("max.connections")?,
            inflight_requests_max: settings.parse("queued.max.requests")?,
            retention_check_interval_ms: settings.parse("log.retention.check.interval.ms")?,
            fetch_zero_copy: settings.parse("fetch.zero.copy")?,
            fetch_wait_ms_max: settings.parse("fetch.max.wait.ms.max")?,
            direct_io: settings.parse("log.direct.io")?,
            tail_cache_bytes: settings.parse("log.tail.cache.bytes")?,
            group_commit_bytes_max: settings.parse("log.flush.batch.bytes")?,
            ring_entries: settings.parse("io.uring.entries")?,
            log_defaults,
            settings,
        })
    }

    /// The log config of a topic: broker defaults overlaid with the topic's own configs.
    /// Unknown or malformed topic configs are an error (INVALID_CONFIG).
    pub fn topic_log_config(
        &self,
        configs: &BTreeMap<String, String>,
    ) -> Result<LogConfig, String> {
        let mut log = self.log_defaults.clone();
        for (key, value) in configs {
            let bad = |e: &dyn std::fmt::Display| format!("invalid value '{value}' for {key}: {e}");
            match key.as_str() {
                "segment.bytes" => {
                    log.segment_bytes = value.parse().map_err(|e| bad(&e))?;
                    if log.segment_bytes < 4096 {
                        return Err(format!("segment.bytes must be at least 4096, got {value}"));
                    }
                }
                "segment.ms" => log.segment_ms = value.parse().map_err(|e| bad(&e))?,
                "retention.ms" => log.retention_ms = value.parse().map_err(|e| bad(&e))?,
                "retention.bytes" => log.retention_bytes = value.parse().map_err(|e| bad(&e))?,
                "max.message.bytes" => {
                    log.max_message_bytes = value.parse().map_err(|e| bad(&e))?
                }
                "index.interval.bytes" => {
                    log.index_interval_bytes = value.parse().map_err(|e| bad(&e))?
                }
                "flush.messages" => log.flush_messages = Some(value.parse().map_err(|e| bad(&e))?),
                "flush.ms" => log.flush_ms = Some(value.parse().map_err(|e| bad(&e))?),
                "message.timestamp.type" => {
                    log.timestamp_type = match value.as_str() {
                        "CreateTime" => TimestampType::CreateTime,
                        "LogAppendTime" => TimestampType::LogAppendTime,
                        _ => return Err(bad(&"expected CreateTime or LogAppendTime")),
                    }
                }
                "cleanup.policy" => {
                    if value != "delete" {
                        return Err(format!(
                            "cleanup.policy={value} is not supported yet (log compaction is on the roadmap); use delete"
                        ));
                    }
                }
                other => return Err(format!("unknown topic config '{other}'")),
            }
        }
        Ok(log)
    }

    /// The effective value of a topic config (topic override or broker default), as text.
    pub fn topic_config_value(
        &self,
        configs: &BTreeMap<String, String>,
        name: &str,
    ) -> Option<(String, bool)> {
        if let Some(value) = configs.get(name) {
            return Some((value.clone(), false));
        }
        let (_, broker_key) = TOPIC_CONFIGS
            .iter()
            .find(|(topic_key, _)| *topic_key == name)?;
        if broker_key.is_empty() {
            return Some(("delete".into(), true));
        }
        let value = self.settings.raw(broker_key);
        Some((
            if value.is_empty() {
                "9223372036854775807".into()
            } else {
                value.to_string()
            },
            true,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_aliases_and_unknown_keys() {
        let mut settings = Settings::default();
        settings.apply_override("num.partitions=3").unwrap();
        settings.apply_override("data-dir=/tmp/x").unwrap();
        assert!(matches!(
            settings.apply_override("num.partitionz=3"),
            Err(ConfigError::UnknownKey(_))
        ));
        let config = BrokerConfig::from_settings(settings).unwrap();
        assert_eq!(config.num_partitions, 3);
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.listen.port(), 9092);
        assert_eq!(config.log_defaults.max_message_bytes, 1_048_588);
        assert!(config.shards >= 1);
    }

    #[test]
    fn toml_dotted_keys_flatten_to_kafka_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:19092\"\nlog.retention.ms = 1000\n\"auto.create.topics.enable\" = false\n").unwrap();
        let mut settings = Settings::default();
        settings.load_toml(&path).unwrap();
        let config = BrokerConfig::from_settings(settings).unwrap();
        assert_eq!(config.listen.port(), 19092);
        assert_eq!(config.log_defaults.retention_ms, 1000);
        assert!(!config.auto_create_topics);
    }

    #[test]
    fn topic_configs_validate() {
        let config = BrokerConfig::from_settings(Settings::default()).unwrap();
        let mut topic = BTreeMap::new();
        topic.insert("retention.ms".to_string(), "5000".to_string());
        assert_eq!(config.topic_log_config(&topic).unwrap().retention_ms, 5000);
        topic.insert("retention.ms".to_string(), "soon".to_string());
        assert!(config.topic_log_config(&topic).is_err());
        let mut topic = BTreeMap::new();
        topic.insert("no.such.config".to_string(), "1".to_string());
        assert!(config.topic_log_config(&topic).is_err());
    }
}
