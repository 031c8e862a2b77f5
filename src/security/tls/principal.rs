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

/// Rules past this many are refused (a setting, not a program).
const MAPPING_RULES_MAX: usize = 64;

/// `ssl.principal.mapping.rules`, Kafka's syntax: a list of `DEFAULT` (the DN unchanged) and
/// `RULE:pattern/replacement/[L|U]` entries, separated by commas or spaces (a pattern may hold
/// commas; `\/` escapes a slash). The first rule whose pattern matches the whole DN gives the
/// principal: every match replaced by the replacement (`$1` names a group), then lower- or
/// upper-cased with `L`/`U`. A DN no rule matches has no principal, and its connection is
/// refused (Kafka's NoMatchingRule).
#[derive(Debug, Clone)]
pub struct PrincipalMapping {
    rules: Vec<MappingRule>,
}

#[derive(Debug, Clone)]
enum MappingRule {
    Default,
    Rule {
        /// The pattern anchored at both ends: whether it matches the whole DN.
        whole: regex::Regex,
        pattern: regex::Regex,
        /// In the `regex` crate's syntax (`$$` for a literal dollar).
        replacement: String,
        case: Option<Case>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Lower,
    Upper,
}

impl PrincipalMapping {
    /// Kafka's default: the DN is the principal name.
    pub fn default_mapping() -> Self {
        Self {
            rules: vec![MappingRule::Default],
        }
    }

    /// Parses the setting; the error says what is wrong (the caller names the setting).
    pub fn parse(text: &str) -> Result<PrincipalMapping, String> {
        let mut rules = Vec::new();
        let mut rest = text;
        loop {
            rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
            if rest.is_empty() {
                break;
            }
            if rules.len() == MAPPING_RULES_MAX {
                return Err(format!("more than {MAPPING_RULES_MAX} rules"));
            }
            if let Some(after) = rest.strip_prefix("DEFAULT") {
                rules.push(MappingRule::Default);
                rest = after;
                continue;
            }
            let Some(after) = rest.strip_prefix("RULE:") else {
                return Err(format!(
                    "'{rest}': expected DEFAULT or RULE:pattern/replacement/[LU]"
                ));
            };
            let (pattern, after) = until_slash(after)
                .ok_or_else(|| format!("'{rest}': the rule's pattern has no closing '/'"))?;
            let (replacement, after) = until_slash(after)
                .ok_or_else(|| format!("'{rest}': the rule's replacement has no closing '/'"))?;
            let (case, after) = match after.chars().next() {
                Some('L') => (Some(Case::Lower), &after[1..]),
                Some('U') => (Some(Case::Upper), &after[1..]),
                _ => (None, after),
            };
            if !(after.is_empty() || after.starts_with(|c: char| c == ',' || c.is_whitespace())) {
                return Err(format!("'{rest}': unexpected text after the rule"));
            }
            let compile = |p: &str| {
                regex::Regex::new(p).map_err(|e| format!("'{pattern}' is not a valid pattern: {e}"))
            };
            rules.push(MappingRule::Rule {
                whole: compile(&format!("^(?:{pattern})$"))?,
                pattern: compile(&pattern)?,
                replacement: java_replacement(&replacement),
                case,
            });
            rest = after;
        }
        if rules.is_empty() {
            return Ok(Self::default_mapping());
        }
        Ok(Self { rules })
    }

    /// The principal name for subject `dn`, or None when no rule matches it.
    pub fn apply(&self, dn: &str) -> Option<String> {
        self.rules.iter().find_map(|rule| match rule {
            MappingRule::Default => Some(dn.to_string()),
            MappingRule::Rule {
                whole,
                pattern,
                replacement,
                case,
            } => {
                if !whole.is_match(dn) {
                    return None;
                }
                let name = pattern.replace_all(dn, replacement.as_str()).into_owned();
                Some(match case {
                    Some(Case::Lower) => name.to_lowercase(),
                    Some(Case::Upper) => name.to_uppercase(),
                    None => name,
                })
            }
        })
    }
}

/// The text up to the next unescaped '/' (escapes kept, but `\/` becomes '/'), and what
/// follows that slash.
fn until_slash(text: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '/' => return Some((out, &text[at + 1..])),
            '\\' => match chars.next() {
                Some((_, '/')) => out.push('/'),
                Some((_, escaped)) => {
                    out.push('\\');
                    out.push(escaped);
                }
                None => out.push('\\'),
            },
            other => out.push(other),
        }
    }
    None
}

/// A Java replacement string (`$1` a group, `\x` a literal x) in the `regex` crate's syntax
/// (`${1}` a group, `$$` a literal dollar).
fn java_replacement(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('$') => out.push_str("$$"),
                Some(other) => out.push(other),
                None => {}
            },
            '$' => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                if digits.is_empty() {
                    out.push_str("$$");
                } else {
                    out.push_str(&format!("${{{digits}}}"));
                }
            }
            other => out.push(other),
        }
    }
    out
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
        let dn = "CN=Alice Smith,OU=Eng,O=Example,C=US";
        let default = PrincipalMapping::parse("DEFAULT").expect("DEFAULT");
        assert_eq!(default.apply(dn).as_deref(), Some(dn));
        assert_eq!(
            PrincipalMapping::parse("")
                .expect("empty")
                .apply(dn)
                .as_deref(),
            Some(dn)
        );
    }

    #[test]
    fn rule_mappings_as_kafka_applies_them() {
        let dn = "CN=Alice Smith,OU=Eng,O=Example,C=US";
        // Kafka's documentation example, a pattern with commas, then DEFAULT.
        let rules = PrincipalMapping::parse(
            "RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/, RULE:^CN=(.*?),OU=(.*?),O=(.*?),L=.*$/$1@$2/L, \
             RULE:^cn=(.*?),ou=(.*?),dc=(.*?),dc=(.*?)$/$1@$2/U, RULE:^.*[Cc][Nn]=([a-zA-Z0-9.]*).*$/$1/L, DEFAULT",
        )
        .expect("rules");
        assert_eq!(
            rules
                .apply("CN=kafka-svc,OU=ServiceUsers,O=Org,C=US")
                .as_deref(),
            Some("kafka-svc")
        );
        assert_eq!(
            rules
                .apply("CN=Duke,OU=JavaSoft,O=Sun Microsystems,L=Santa Clara")
                .as_deref(),
            Some("duke@javasoft")
        );
        assert_eq!(
            rules.apply("cn=duke,ou=javasoft,dc=sun,dc=com").as_deref(),
            Some("DUKE@JAVASOFT")
        );
        assert_eq!(rules.apply("OU=x,CN=Bob.1,O=y").as_deref(), Some("bob.1"));
        // Only the first matching rule counts; DEFAULT catches the rest.
        assert_eq!(rules.apply("O=none").as_deref(), Some("O=none"));
        // Without DEFAULT a DN no rule matches has no principal.
        let only = PrincipalMapping::parse("RULE:^CN=([^,]*),.*$/$1/").expect("rule");
        assert_eq!(only.apply(dn).as_deref(), Some("Alice Smith"));
        assert_eq!(only.apply("O=none"), None);
        // An escaped slash, a literal dollar.
        let escaped = PrincipalMapping::parse("RULE:^CN=(.*)$/a\\/\\$$1/").expect("escaped");
        assert_eq!(escaped.apply("CN=x").as_deref(), Some("a/$x"));
        for bad in [
            "RULE:^CN=(.*$/$1/",
            "RULE:^CN/x",
            "RULE:a/b",
            "NOPE",
            "RULE:a/b/X",
        ] {
            assert!(PrincipalMapping::parse(bad).is_err(), "{bad}");
        }
    }
}
