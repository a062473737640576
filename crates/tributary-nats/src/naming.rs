//! How topics, partitions and groups map onto JetStream names, and the headers that carry what
//! a [`tributary_core::Delivery`] needs besides the payload.
//!
//! - stream of a topic: `<prefix>_<topic>`
//! - subjects of a topic: `<prefix>.<topic>.<partition>`, one per partition, listed explicitly
//!   in the stream so the server itself refuses a partition that does not exist
//! - durable consumer of a group on a partition: `<group>_<partition>`, and its later
//!   generations `<group>_<partition>_g<n>` (consumer names are scoped to their stream; see
//!   [`consumer_generation`] for why two (group, partition) pairs never share a name)
//! - the partition count is recorded twice in the stream: by its subject list and in its
//!   description (`tributary topic=<topic> partitions=<n>`); both must agree.

use tributary_core::{GroupName, Partition, Topic};

/// The most partitions a topic may have here: each is a subject listed in the stream's config.
pub const MAX_PARTITIONS: u32 = 1024;

/// The longest stream prefix accepted.
pub const MAX_PREFIX_LEN: usize = 32;

/// The header carrying the message key, percent-encoded: bytes other than ASCII letters,
/// digits and `-._~:@!$&'()*+,;=/` become `%XX`, so any UTF-8 key fits a header value.
pub const KEY_HEADER: &str = "Tributary-Key";

/// Checks a stream prefix: it becomes the first subject token and the start of stream names.
pub fn validate_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > MAX_PREFIX_LEN {
        return Err(format!(
            "the stream prefix must be 1 to {MAX_PREFIX_LEN} characters, got {prefix:?}"
        ));
    }
    if !prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "the stream prefix {prefix:?} may only contain ASCII letters, digits, '_' and '-'"
        ));
    }
    Ok(())
}

pub fn stream_name(prefix: &str, topic: &Topic) -> String {
    format!("{prefix}_{topic}")
}

/// The subject filter matching every partition of every topic under `prefix`.
pub fn prefix_filter(prefix: &str) -> String {
    format!("{prefix}.>")
}

pub fn subject(prefix: &str, topic: &Topic, partition: Partition) -> String {
    format!("{prefix}.{topic}.{partition}")
}

pub fn subjects(prefix: &str, topic: &Topic, partitions: u32) -> Vec<String> {
    (0..partitions)
        .map(|p| subject(prefix, topic, Partition::new(p)))
        .collect()
}

/// The name of one generation of a group's durable consumer on one partition: generation 0 is
/// `<group>_<partition>`, later ones (created by a reset, see the consumer module) add
/// `_g<generation>`. A reset or a rewind never re-creates a consumer under a name a deleted
/// one had (deleting the whole group does: its next consumer is generation 0 again).
pub fn consumer_name(group: &GroupName, partition: Partition, generation: u64) -> String {
    if generation == 0 {
        format!("{group}_{partition}")
    } else {
        format!("{group}_{partition}_g{generation}")
    }
}

/// The generation of `name` if it is one of the names [`consumer_name`] gives this group and
/// partition. No other group's or partition's name matches: after `<group>_<partition>` either
/// nothing or `_g` and digits follow, while another partition adds digits and another group
/// adds `_<partition>` (ending in a digit, never in `g`).
pub fn consumer_generation(group: &GroupName, partition: Partition, name: &str) -> Option<u64> {
    let rest = name.strip_prefix(&consumer_name(group, partition, 0))?;
    if rest.is_empty() {
        return Some(0);
    }
    let digits = rest.strip_prefix("_g")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
        return None;
    }
    digits.parse().ok()
}

pub fn stream_description(topic: &Topic, partitions: u32) -> String {
    format!("tributary topic={topic} partitions={partitions}")
}

/// The partition count recorded in a stream description written by [`stream_description`].
pub fn partitions_in_description(description: &str) -> Option<u32> {
    description
        .split_whitespace()
        .find_map(|word| word.strip_prefix("partitions="))
        .and_then(|n| n.parse().ok())
}

/// The description of a consumer: which group it serves, a token naming this incarnation of
/// it (what tells a consumer created by another instance from this one's), the ack floor
/// it was created at (a consumer starting at sequence n + 1 reports an ack floor of 0 until
/// its first ack), and through which stream sequence messages were already delivered to an
/// earlier incarnation.
pub fn consumer_description(
    group: &GroupName,
    topic: &Topic,
    partition: Partition,
    incarnation: &str,
    floor: u64,
    redelivered_through: u64,
) -> String {
    format!(
        "tributary group={group} topic={topic} partition={partition} incarnation={incarnation} floor={floor} redelivered-through={redelivered_through}"
    )
}

fn word_in_description<'a>(description: &'a str, name: &str) -> Option<&'a str> {
    description
        .split_whitespace()
        .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
}

pub fn incarnation_in_description(description: &str) -> String {
    word_in_description(description, "incarnation")
        .unwrap_or_default()
        .to_owned()
}

fn number_in_description(description: &str, name: &str) -> u64 {
    word_in_description(description, name)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The group, topic and partition a consumer description written by
/// [`consumer_description`] names; `None` for a consumer that is not Tributary's.
pub fn cursor_in_description(description: &str) -> Option<(GroupName, Topic, Partition)> {
    let group = GroupName::new(word_in_description(description, "group")?).ok()?;
    let topic = Topic::new(word_in_description(description, "topic")?).ok()?;
    let partition = word_in_description(description, "partition")?
        .parse()
        .ok()?;
    Some((group, topic, Partition::new(partition)))
}

pub fn floor_in_description(description: &str) -> u64 {
    number_in_description(description, "floor")
}

pub fn redelivered_through_in_description(description: &str) -> u64 {
    number_in_description(description, "redelivered-through")
}

/// Bytes kept as they are in a key header: letters, digits and the punctuation that is safe in
/// a NATS header value without trimming or quoting (RFC 3986 `pchar` minus `%`).
fn keep(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~:@!$&'()*+,;=/".contains(&b)
}

/// Percent-encodes a key for a header value: keys are arbitrary UTF-8 (spaces, newlines,
/// non-ASCII), header values are not. Readable keys stay readable.
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for &b in key.as_bytes() {
        if keep(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reverses [`encode_key`]; `None` for a value no Tributary publisher wrote.
pub fn decode_key(encoded: &str) -> Option<String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = encoded.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_the_header_encoding() {
        for key in [
            "",
            "customer-42",
            "kľúč with spaces/and:colons",
            " leading and trailing ",
            "line\r\nbreak\0nul",
            "100%",
            "%41",
        ] {
            let encoded = encode_key(key);
            assert!(
                encoded
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'),
                "{encoded:?} is a plain header value"
            );
            assert_eq!(decode_key(&encoded).as_deref(), Some(key));
        }
        assert_eq!(encode_key("order-7:line/2"), "order-7:line/2");
    }

    #[test]
    fn malformed_key_headers_are_not_decoded() {
        for bad in ["%", "%4", "%zz", "%FF"] {
            assert_eq!(decode_key(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn names_follow_the_documented_scheme() {
        let topic = Topic::new("Order").unwrap();
        let group = GroupName::new("billing_2").unwrap();
        assert_eq!(stream_name("TRIB", &topic), "TRIB_Order");
        assert_eq!(subject("TRIB", &topic, Partition::new(3)), "TRIB.Order.3");
        assert_eq!(
            subjects("TRIB", &topic, 2),
            vec!["TRIB.Order.0".to_owned(), "TRIB.Order.1".to_owned()]
        );
        assert_eq!(consumer_name(&group, Partition::new(11), 0), "billing_2_11");
        assert_eq!(
            consumer_name(&group, Partition::new(11), 7),
            "billing_2_11_g7"
        );
    }

    #[test]
    fn a_generation_is_read_only_from_its_own_group_and_partition() {
        let group = GroupName::new("billing").unwrap();
        let p = Partition::new(1);
        for generation in [0, 1, 12, u64::MAX] {
            let name = consumer_name(&group, p, generation);
            assert_eq!(consumer_generation(&group, p, &name), Some(generation));
        }
        let others = [
            consumer_name(&group, Partition::new(11), 0),
            consumer_name(&group, Partition::new(11), 3),
            consumer_name(&GroupName::new("billing_1").unwrap(), Partition::new(2), 0),
            consumer_name(&GroupName::new("billing_1_g2").unwrap(), p, 0),
            consumer_name(&GroupName::new("billing_1_g2").unwrap(), p, 4),
            "billing_1_g".to_owned(),
            "billing_1_g02".to_owned(),
            "billing_1_gx".to_owned(),
            "billing_1_g99999999999999999999999".to_owned(),
            "billing".to_owned(),
        ];
        for name in others {
            assert_eq!(consumer_generation(&group, p, &name), None, "{name}");
        }
    }

    #[test]
    fn descriptions_record_what_they_must() {
        let topic = Topic::new("Order").unwrap();
        assert_eq!(
            partitions_in_description(&stream_description(&topic, 12)),
            Some(12)
        );
        assert_eq!(partitions_in_description("made by hand"), None);
        let group = GroupName::new("g").unwrap();
        let d = consumer_description(&group, &topic, Partition::new(1), "abc", 70, 77);
        assert_eq!(incarnation_in_description(&d), "abc");
        assert_eq!(floor_in_description(&d), 70);
        assert_eq!(redelivered_through_in_description(&d), 77);
        assert_eq!(redelivered_through_in_description(""), 0);
        assert_eq!(floor_in_description("floors=3"), 0);
    }

    #[test]
    fn prefixes_are_restricted_to_name_and_subject_safe_characters() {
        assert!(validate_prefix("TRIB").is_ok());
        assert!(validate_prefix("test-1_a").is_ok());
        for bad in ["", "a.b", "a b", "a*", "a>", &"x".repeat(33)] {
            assert!(validate_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
