//! The client's typed error. Owns the mapping from transport failures, protocol decode failures
//! and Kafka error codes to one enum with context. It must never panic or hide the underlying
//! `io::Error`: every variant keeps its source so a caller can print the full chain.

use std::fmt;

/// A Kafka error code as sent on the wire, with its well-known name when we know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KafkaCode(pub i16);

impl KafkaCode {
    /// The symbolic name Kafka gives this code, or "UNKNOWN_CODE".
    pub fn name(self) -> &'static str {
        match self.0 {
            -1 => "UNKNOWN_SERVER_ERROR",
            0 => "NONE",
            1 => "OFFSET_OUT_OF_RANGE",
            2 => "CORRUPT_MESSAGE",
            3 => "UNKNOWN_TOPIC_OR_PARTITION",
            4 => "INVALID_FETCH_SIZE",
            5 => "LEADER_NOT_AVAILABLE",
            6 => "NOT_LEADER_OR_FOLLOWER",
            7 => "REQUEST_TIMED_OUT",
            10 => "MESSAGE_TOO_LARGE",
            14 => "COORDINATOR_LOAD_IN_PROGRESS",
            15 => "COORDINATOR_NOT_AVAILABLE",
            16 => "NOT_COORDINATOR",
            17 => "INVALID_TOPIC_EXCEPTION",
            18 => "RECORD_LIST_TOO_LARGE",
            19 => "NOT_ENOUGH_REPLICAS",
            20 => "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
            21 => "INVALID_REQUIRED_ACKS",
            22 => "ILLEGAL_GENERATION",
            23 => "INCONSISTENT_GROUP_PROTOCOL",
            24 => "INVALID_GROUP_ID",
            25 => "UNKNOWN_MEMBER_ID",
            26 => "INVALID_SESSION_TIMEOUT",
            27 => "REBALANCE_IN_PROGRESS",
            28 => "INVALID_COMMIT_OFFSET_SIZE",
            29 => "TOPIC_AUTHORIZATION_FAILED",
            30 => "GROUP_AUTHORIZATION_FAILED",
            31 => "CLUSTER_AUTHORIZATION_FAILED",
            35 => "UNSUPPORTED_VERSION",
            36 => "TOPIC_ALREADY_EXISTS",
            37 => "INVALID_PARTITIONS",
            38 => "INVALID_REPLICATION_FACTOR",
            39 => "INVALID_REPLICA_ASSIGNMENT",
            40 => "INVALID_CONFIG",
            41 => "NOT_CONTROLLER",
            42 => "INVALID_REQUEST",
            43 => "UNSUPPORTED_FOR_MESSAGE_FORMAT",
            44 => "POLICY_VIOLATION",
            45 => "OUT_OF_ORDER_SEQUENCE_NUMBER",
            46 => "DUPLICATE_SEQUENCE_NUMBER",
            47 => "INVALID_PRODUCER_EPOCH",
            48 => "INVALID_TXN_STATE",
            49 => "INVALID_PRODUCER_ID_MAPPING",
            51 => "CONCURRENT_TRANSACTIONS",
            52 => "TRANSACTION_COORDINATOR_FENCED",
            53 => "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
            54 => "SECURITY_DISABLED",
            56 => "KAFKA_STORAGE_ERROR",
            68 => "NON_EMPTY_GROUP",
            69 => "GROUP_ID_NOT_FOUND",
            72 => "LISTENER_NOT_FOUND",
            74 => "FENCED_LEADER_EPOCH",
            75 => "UNKNOWN_LEADER_EPOCH",
            76 => "UNSUPPORTED_COMPRESSION_TYPE",
            79 => "MEMBER_ID_REQUIRED",
            87 => "INVALID_RECORD",
            90 => "PRODUCER_FENCED",
            105 => "TRANSACTIONAL_ID_NOT_FOUND",
            _ => "UNKNOWN_CODE",
        }
    }

    /// Whether a client may retry after refreshing metadata or waiting briefly.
    pub fn is_retriable(self) -> bool {
        matches!(self.0, 3 | 5 | 6 | 7 | 14 | 15 | 16 | 19 | 20 | 74 | 75)
    }
}

impl fmt::Display for KafkaCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// Everything a client call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The TCP connection could not be opened, or broke while in use.
    #[error("connection to {addr} failed: {source}")]
    Io {
        /// The broker address.
        addr: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The connection closed while requests were in flight.
    #[error("connection to {addr} closed: {reason}")]
    Disconnected {
        /// The broker address.
        addr: String,
        /// Why the reader stopped.
        reason: String,
    },
    /// A request got no answer within its deadline.
    #[error("{api} request to {addr} timed out after {timeout_ms} ms")]
    Timeout {
        /// The API name.
        api: &'static str,
        /// The broker address.
        addr: String,
        /// The deadline that passed.
        timeout_ms: u64,
    },
    /// Encoding a request or decoding a response failed.
    #[error("{api} v{version}: {message}")]
    Protocol {
        /// The API name.
        api: &'static str,
        /// The API version in use.
        version: i16,
        /// What went wrong.
        message: String,
    },
    /// The broker does not support any version of an API this client speaks.
    #[error("broker {addr} does not support {api} in a version this client speaks ({client_min}..={client_max})")]
    UnsupportedApi {
        /// The API name.
        api: &'static str,
        /// The broker address.
        addr: String,
        /// Lowest version the client speaks.
        client_min: i16,
        /// Highest version the client speaks.
        client_max: i16,
    },
    /// The broker answered with a Kafka error code.
    #[error("{context}: {code}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Kafka {
        /// What the client was doing (e.g. "produce to t-0").
        context: String,
        /// The error code.
        code: KafkaCode,
        /// The broker's error message, if it sent one.
        message: Option<String>,
    },
    /// A topic is not in the cluster metadata.
    #[error("topic '{0}' does not exist")]
    UnknownTopic(String),
    /// A partition is not in the topic's metadata.
    #[error("partition {partition} of topic '{topic}' does not exist")]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
    },
    /// Bad input from the caller (arguments, configuration).
    #[error("{0}")]
    Invalid(String),
}

impl ClientError {
    /// Builds a `Kafka` error when `code` is non-zero.
    pub fn check(code: i16, context: impl FnOnce() -> String) -> Result<(), ClientError> {
        Self::check_msg(code, None, context)
    }

    /// Like [`ClientError::check`] but carries the broker's error message.
    pub fn check_msg(
        code: i16,
        message: Option<&str>,
        context: impl FnOnce() -> String,
    ) -> Result<(), ClientError> {
        if code == 0 {
            Ok(())
        } else {
            Err(ClientError::Kafka {
                context: context(),
                code: KafkaCode(code),
                message: message.filter(|m| !m.is_empty()).map(str::to_owned),
            })
        }
    }

    /// The Kafka error code, if this is a broker-reported error.
    pub fn kafka_code(&self) -> Option<KafkaCode> {
        match self {
            ClientError::Kafka { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether retrying (after a metadata refresh or reconnect) may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Kafka { code, .. } => code.is_retriable(),
            ClientError::Io { .. }
            | ClientError::Disconnected { .. }
            | ClientError::Timeout { .. } => true,
            _ => false,
        }
    }
}

/// The client's result type.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_error_names_code_and_message() {
        let err = ClientError::check_msg(36, Some("exists"), || "create topic t".into())
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("create topic t: TOPIC_ALREADY_EXISTS (36): exists")
        );
        assert!(ClientError::check(0, || unreachable!()).is_ok());
    }

    #[test]
    fn retriable_codes() {
        assert!(KafkaCode(6).is_retriable());
        assert!(!KafkaCode(36).is_retriable());
    }
}
