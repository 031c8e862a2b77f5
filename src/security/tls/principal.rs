//! The principal of a mutual-TLS client: its certificate's subject distinguished name as Kafka
//! shows it (`X500Principal.getName()`, RFC 2253: the RDNs last to first, `CN=alice,OU=eng,
//! O=Example,C=US`), mapped by `ssl.principal.mapping.rules` (DEFAULT: the DN itself).
//!
//! Owns a minimal DER walk to the subject of an X.509 certificate. Must never trust the
//! certificate (rustls has verified the chain before this runs) or panic on malformed DER: a
//! certificate it cannot read gives no principal, and the caller refuses the connection.

use std::fmt::Write;

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const VERSION: u8 = 0xA0;

/// One DER element: its tag, its content, and what follows it.
fn element(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = data.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let length = rest[..count]
            .iter()
            .fold(0usize, |acc, byte| (acc << 8) | usize::from(*byte));
        (length, &rest[count..])
    };
    if rest.len() < length {
        return None;
    }
    Some((tag, &rest[..length], &rest[length..]))
}

/// The content of the next element, which must have tag `want`; and what follows it.
fn expect(data: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
    let (tag, content, rest) = element(data)?;
    (tag == want).then_some((content, rest))
}

/// The certificate's subject DN in RFC 2253 form, as Java's `X500Principal.getName()`.
pub fn subject_dn(certificate_der: &[u8]) -> Option<String> {
    let (certificate, _) = expect(certificate_der, SEQUENCE)?;
    let (tbs, _) = expect(certificate, SEQUENCE)?;
    let mut rest = tbs;
    if let Some((VERSION, _, after)) = element(rest) {
        rest = after;
    }
    // serialNumber, signature, issuer, validity, then subject.
    for _ in 0..4 {
        rest = element(rest)?.2;
    }
    let (subject, _) = expect(rest, SEQUENCE)?;
    rdn_sequence(subject)
}

fn rdn_sequence(mut data: &[u8]) -> Option<String> {
    let mut rdns = Vec::new();
    while !data.is_empty() {
        let (set, rest) = expect(data, SET)?;
        data = rest;
        let mut values = Vec::new();
        let mut attributes = set;
        while !attributes.is_empty() {
            let (attribute, rest) = expect(attributes, SEQUENCE)?;
            attributes = rest;
            let (oid, value) = expect(attribute, OID)?;
            values.push(attribute_text(oid, value)?);
        }
        rdns.push(values.join("+"));
    }
    // RFC 2253 writes the RDNs from the last to the first.
    rdns.reverse();
    Some(rdns.join(","))
}

/// `KEYWORD=value` for the keywords RFC 2253 names, `OID=#hex` (the value's DER) otherwise,
/// as Java does.
fn attribute_text(oid: &[u8], value_der: &[u8]) -> Option<String> {
    let keyword = match oid {
        [0x55, 0x04, 0x03] => Some("CN"),
        [0x55, 0x04, 0x06] => Some("C"),
        [0x55, 0x04, 0x07] => Some("L"),
        [0x55, 0x04, 0x08] => Some("ST"),
        [0x55, 0x04, 0x09] => Some("STREET"),
        [0x55, 0x04, 0x0a] => Some("O"),
        [0x55, 0x04, 0x0b] => Some("OU"),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => Some("DC"),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => Some("UID"),
        _ => None,
    };
    let (tag, content, _) = element(value_der)?;
    let text = match keyword.and_then(|_| string_value(tag, content)) {
        Some(text) => escape(&text),
        None => {
            // The whole element (tag, length, content) in hex.
            let whole = &value_der[..value_der.len() - element(value_der)?.2.len()];
            let mut hex = String::from("#");
            for byte in whole {
                let _ = write!(hex, "{byte:02x}");
            }
            return Some(format!("{}={hex}", dotted(oid)?));
        }
    };
    Some(format!("{}={text}", keyword?))
}

/// The text of a DirectoryString (UTF8, Printable, IA5, Teletex as Latin-1, BMP, Universal).
fn string_value(tag: u8, content: &[u8]) -> Option<String> {
    match tag {
        0x0c | 0x13 | 0x16 => std::str::from_utf8(content).ok().map(str::to_string),
        0x14 => Some(content.iter().map(|b| char::from(*b)).collect()),
        0x1e => {
            let units: Vec<u16> = content
                .chunks_exact(2)
                .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        0x1c => content
            .chunks_exact(4)
            .map(|quad| char::from_u32(u32::from_be_bytes([quad[0], quad[1], quad[2], quad[3]])))
            .collect(),
        _ => None,
    }
}

/// RFC 2253 escaping: `,+"\<>;` always, `#` or a space first and a space last.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (index, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (index == 0 && (c == '#' || c == ' '))
            || (index == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// An OID's dotted form. The first subidentifier holds the first two arcs (X.690 8.19.4):
/// below 80 it is 40 * first + second with first 0 or 1, from 80 on the first arc is 2 and
/// the second may exceed 39 (and take more than one byte, as in 2.999). A subidentifier cut
/// short (its last byte has the continuation bit) is malformed.
fn dotted(oid: &[u8]) -> Option<String> {
    let mut arcs = Vec::new();
    let mut value: u64 = 0;
    for byte in oid {
        value = value.checked_mul(128)? | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            arcs.push(value);
            value = 0;
        }
    }
    if oid.last().is_some_and(|byte| byte & 0x80 != 0) {
        return None;
    }
    let (&first, rest) = arcs.split_first()?;
    let (arc1, arc2) = if first < 80 {
        (first / 40, first % 40)
    } else {
        (2, first - 80)
    };
    let mut text = format!("{arc1}.{arc2}");
    for arc in rest {
        let _ = write!(text, ".{arc}");
    }
    Some(text)
}

/// `ssl.principal.mapping.rules`: only Kafka's DEFAULT (the DN unchanged) is supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalMapping {
    /// The subject DN is the principal name.
    Default,
}

impl PrincipalMapping {
    /// Parses the setting; anything but `DEFAULT` is refused (the caller names the setting).
    pub fn parse(text: &str) -> Result<PrincipalMapping, String> {
        match text.trim() {
            "" | "DEFAULT" => Ok(PrincipalMapping::Default),
            other => Err(format!(
                "'{other}': only DEFAULT (the certificate's subject DN as the principal) is \
                 supported; RULE: mappings are not"
            )),
        }
    }

    /// The principal name for subject `dn`.
    pub fn apply(self, dn: &str) -> String {
        match self {
            PrincipalMapping::Default => dn.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if content.len() < 0x80 {
            out.push(content.len() as u8);
        } else {
            out.push(0x82);
            out.extend_from_slice(&(content.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(content);
        out
    }

    fn attribute(oid: &[u8], tag: u8, value: &[u8]) -> Vec<u8> {
        tlv(
            SET,
            &tlv(SEQUENCE, &[tlv(OID, oid), tlv(tag, value)].concat()),
        )
    }

    /// A certificate shell: version, serial, algorithm, issuer, validity, subject.
    fn certificate(subject: &[u8]) -> Vec<u8> {
        let tbs = [
            tlv(VERSION, &tlv(0x02, &[2])),
            tlv(0x02, &[0x01, 0x23]),
            tlv(SEQUENCE, &tlv(OID, &[0x2a, 0x86, 0x48])),
            tlv(SEQUENCE, &attribute(&[0x55, 0x04, 0x03], 0x0c, b"issuer")),
            tlv(
                SEQUENCE,
                &[tlv(0x17, b"250101000000Z"), tlv(0x17, b"350101000000Z")].concat(),
            ),
            tlv(SEQUENCE, subject),
            tlv(SEQUENCE, b"public key"),
        ]
        .concat();
        tlv(
            SEQUENCE,
            &[tlv(SEQUENCE, &tbs), tlv(SEQUENCE, b"sig")].concat(),
        )
    }

    #[test]
    fn subject_is_written_last_rdn_first_as_java_does() {
        let subject = [
            attribute(&[0x55, 0x04, 0x06], 0x13, b"US"),
            attribute(&[0x55, 0x04, 0x0a], 0x0c, b"Example, Inc."),
            attribute(&[0x55, 0x04, 0x0b], 0x0c, b"eng"),
            attribute(&[0x55, 0x04, 0x03], 0x0c, b"alice"),
        ]
        .concat();
        assert_eq!(
            subject_dn(&certificate(&subject)).as_deref(),
            Some("CN=alice,OU=eng,O=Example\\, Inc.,C=US")
        );
    }

    #[test]
    fn unknown_attributes_are_oid_and_hex_and_bad_der_is_none() {
        let email = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01];
        let subject = [
            attribute(&[0x55, 0x04, 0x03], 0x0c, b"bob"),
            attribute(&email, 0x16, b"a@b"),
        ]
        .concat();
        assert_eq!(
            subject_dn(&certificate(&subject)).as_deref(),
            Some("1.2.840.113549.1.9.1=#1603614062,CN=bob")
        );
        let good = certificate(&subject);
        for cut in 0..good.len() {
            assert_eq!(subject_dn(&good[..cut]), None, "cut at {cut}");
        }
        assert_eq!(subject_dn(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn oids_with_a_large_second_arc_or_cut_short() {
        assert_eq!(
            dotted(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d]).as_deref(),
            Some("1.2.840.113549")
        );
        // 2.999.3: the first subidentifier is 80 + 999 = 1079, two bytes.
        assert_eq!(dotted(&[0x88, 0x37, 0x03]).as_deref(), Some("2.999.3"));
        assert_eq!(dotted(&[0x55, 0x04, 0x83]), None);
        assert_eq!(dotted(&[]), None);
    }

    #[test]
    fn escaping_and_mapping_rules() {
        assert_eq!(escape(" #a+b "), "\\ #a\\+b\\ ");
        assert_eq!(escape("#x"), "\\#x");
        assert_eq!(
            PrincipalMapping::parse("DEFAULT"),
            Ok(PrincipalMapping::Default)
        );
        assert!(PrincipalMapping::parse("RULE:^CN=(.*?),.*$/$1/").is_err());
    }
}
