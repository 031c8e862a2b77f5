//! Rendering consumed records for `sluice consume`: a `--format` string with kcat-style
//! placeholders, or `--json` lines. Output is bytes, not text, so binary keys and values pass
//! through `--format` unchanged. It must never drop or reinterpret record bytes in format mode;
//! JSON mode marks non-UTF-8 data explicitly (base64) instead of mangling it.

use serde_json::{json, Map, Value};

use crate::records::ConsumedRecord;

/// A parsed `--format` string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(Vec<u8>),
    Topic,
    Partition,
    Offset,
    Timestamp,
    Key,
    Value,
    Headers,
    KeyLength,
    ValueLength,
}

impl Format {
    /// Parses a format string; unknown placeholders are an error.
    pub fn parse(spec: &str) -> Result<Format, String> {
        let mut parts = Vec::new();
        let mut literal = Vec::new();
        let mut chars = spec.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '%' => {
                    let part = match chars.next() {
                        Some('t') => Part::Topic,
                        Some('p') => Part::Partition,
                        Some('o') => Part::Offset,
                        Some('T') => Part::Timestamp,
                        Some('k') => Part::Key,
                        Some('v') => Part::Value,
                        Some('h') => Part::Headers,
                        Some('K') => Part::KeyLength,
                        Some('S') => Part::ValueLength,
                        Some('%') => {
                            literal.push(b'%');
                            continue;
                        }
                        Some(other) => {
                            return Err(format!("unknown placeholder %{other} in --format"))
                        }
                        None => return Err("--format ends with a lone %".to_owned()),
                    };
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(part);
                }
                '\\' => match chars.next() {
                    Some('n') => literal.push(b'\n'),
                    Some('t') => literal.push(b'\t'),
                    Some('r') => literal.push(b'\r'),
                    Some('\\') => literal.push(b'\\'),
                    Some(other) => {
                        literal.push(b'\\');
                        let mut buf = [0u8; 4];
                        literal.extend_from_slice(other.encode_utf8(&mut buf).as_bytes());
                    }
                    None => literal.push(b'\\'),
                },
                other => {
                    let mut buf = [0u8; 4];
                    literal.extend_from_slice(other.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Format { parts })
    }

    /// Appends the rendering of `record` to `out`.
    pub fn render(&self, topic: &str, record: &ConsumedRecord, out: &mut Vec<u8>) {
        for part in &self.parts {
            match part {
                Part::Literal(bytes) => out.extend_from_slice(bytes),
                Part::Topic => out.extend_from_slice(topic.as_bytes()),
                Part::Partition => out.extend_from_slice(record.partition.to_string().as_bytes()),
                Part::Offset => out.extend_from_slice(record.offset.to_string().as_bytes()),
                Part::Timestamp => {
                    out.extend_from_slice(record.timestamp_ms.to_string().as_bytes())
                }
                Part::Key => out.extend_from_slice(record.key.as_deref().unwrap_or_default()),
                Part::Value => out.extend_from_slice(record.value.as_deref().unwrap_or_default()),
                Part::Headers => {
                    for (i, (k, v)) in record.headers.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(k.as_bytes());
                        out.push(b'=');
                        out.extend_from_slice(v.as_deref().unwrap_or_default());
                    }
                }
                Part::KeyLength => out.extend_from_slice(
                    record
                        .key
                        .as_ref()
                        .map_or(-1, |k| k.len() as i64)
                        .to_string()
                        .as_bytes(),
                ),
                Part::ValueLength => out.extend_from_slice(
                    record
                        .value
                        .as_ref()
                        .map_or(-1, |v| v.len() as i64)
                        .to_string()
                        .as_bytes(),
                ),
            }
        }
    }
}

/// Standard base64 with padding (for non-UTF-8 data in JSON output).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn bytes_fields(map: &mut Map<String, Value>, name: &str, data: Option<&[u8]>) {
    match data {
        None => {
            map.insert(name.to_owned(), Value::Null);
        }
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => {
                map.insert(name.to_owned(), Value::String(text.to_owned()));
            }
            Err(_) => {
                map.insert(name.to_owned(), Value::Null);
                map.insert(format!("{name}_base64"), Value::String(base64(bytes)));
            }
        },
    }
}

/// One JSON object for a record. Non-UTF-8 keys/values appear as `key_base64`/`value_base64`.
pub fn to_json(topic: &str, record: &ConsumedRecord) -> Value {
    let mut map = Map::new();
    map.insert("topic".into(), json!(topic));
    map.insert("partition".into(), json!(record.partition));
    map.insert("offset".into(), json!(record.offset));
    map.insert("timestamp".into(), json!(record.timestamp_ms));
    bytes_fields(&mut map, "key", record.key.as_deref());
    bytes_fields(&mut map, "value", record.value.as_deref());
    let mut headers = Map::new();
    for (k, v) in &record.headers {
        let value = match v.as_deref() {
            None => Value::Null,
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => Value::String(text.to_owned()),
                Err(_) => json!({ "base64": base64(bytes) }),
            },
        };
        headers.insert(k.clone(), value);
    }
    map.insert("headers".into(), Value::Object(headers));
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn record() -> ConsumedRecord {
        ConsumedRecord {
            partition: 2,
            offset: 41,
            timestamp_ms: 1_700_000_000_123,
            log_append_time: false,
            key: Some(Bytes::from_static(b"k1")),
            value: Some(Bytes::from_static(b"\x00\xffbin")),
            headers: vec![
                ("a".into(), Some(Bytes::from_static(b"1"))),
                ("b".into(), None),
            ],
        }
    }

    #[test]
    fn renders_every_placeholder_binary_safe() {
        let format = Format::parse("%t/%p@%o %T [%k]=%v {%h} %K/%S 100%%\\n")
            .unwrap_or(Format { parts: vec![] });
        let mut out = Vec::new();
        format.render("orders", &record(), &mut out);
        assert_eq!(
            out,
            b"orders/2@41 1700000000123 [k1]=\x00\xffbin {a=1,b=} 2/5 100%\n".to_vec()
        );
        assert!(Format::parse("%q").is_err());
        assert!(Format::parse("abc%").is_err());
    }

    #[test]
    fn json_marks_binary_values() {
        let value = to_json("orders", &record());
        assert_eq!(value["key"], "k1");
        assert_eq!(value["value"], Value::Null);
        assert_eq!(value["value_base64"], "AP9iaW4=");
        assert_eq!(value["headers"]["a"], "1");
        assert_eq!(value["headers"]["b"], Value::Null);
        assert_eq!(value["offset"], 41);
    }

    #[test]
    fn base64_known_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
