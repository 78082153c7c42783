//! event: one validated row → one consent event (SPEC §2), as JSON bytes.
//!
//! Owns the event's shape and its id. The id is a UUID v5 of the import name
//! and the row's normalised content, so the same proof always gives the same
//! id and the API's de-duplication makes every retry safe. Pure: no I/O, no
//! clock; the JSON is written by hand into a reused buffer because this is
//! the hottest loop of an import.

use std::sync::OnceLock;

use base64::Engine;
use uuid::Uuid;

use crate::config::Import;
use crate::parse::Row;

/// The namespace of every event id. Changing it changes every id: never do.
fn namespace() -> &'static Uuid {
    static NAMESPACE: OnceLock<Uuid> = OnceLock::new();
    NAMESPACE.get_or_init(|| Uuid::new_v5(&Uuid::NAMESPACE_OID, b"consent-drop/consent-event"))
}

/// The id of the event a row becomes. Every part is length-prefixed, so no
/// content (whatever bytes it holds) can make two different rows collide.
pub fn event_id(import: &str, row: &Row<'_>) -> Uuid {
    let mut name = Vec::with_capacity(128);
    event_id_name(&mut name, import, row);
    uuid_v5(&name)
}

/// RFC 4122 v5 (SHA-1 of namespace and name), as `Uuid::new_v5` computes it,
/// but with the `sha1` crate, which uses the CPU's SHA instructions: this is
/// the single most expensive step of an event.
fn uuid_v5(name: &[u8]) -> Uuid {
    use sha1::Digest;
    let mut hasher = sha1::Sha1::new();
    hasher.update(namespace().as_bytes());
    hasher.update(name);
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

fn event_id_name(name: &mut Vec<u8>, import: &str, row: &Row<'_>) {
    let mut buf = [0u8; DIGITS];
    let seconds = i64_text(row.instant.timestamp(), &mut buf);
    for part in [
        import.as_bytes(),
        row.email.as_bytes(),
        row.purpose_id.as_bytes(),
        row.purpose_text.as_bytes(),
        seconds,
        row.origin.as_bytes(),
    ] {
        write_u64(name, part.len() as u64);
        name.push(b':');
        name.extend_from_slice(part);
    }
}

/// Writes the events of one file: the parts that do not change from row to
/// row are encoded once.
#[derive(Debug, Clone)]
pub struct EventWriter {
    import: String,
    user_metadata_json: Option<Vec<u8>>,
    /// `,"organization_id":…` (empty when the import has no organization).
    organization_json: Vec<u8>,
    /// `,"import":…,"source_file":…,"source_sha256":…,"source_line":`
    source_json: Vec<u8>,
    attach_row_proof: bool,
    id_name: Vec<u8>,
}

impl EventWriter {
    pub fn new(import: &Import, source_file: &str, source_sha256: &str) -> EventWriter {
        let user_metadata_json = if import.user_metadata.is_empty() {
            None
        } else {
            let mut out = Vec::new();
            out.push(b'{');
            for (index, (key, value)) in import.user_metadata.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_json_str(&mut out, key);
                out.push(b':');
                write_json_str(&mut out, value);
            }
            out.push(b'}');
            Some(out)
        };
        let mut source_json = Vec::new();
        source_json.extend_from_slice(b",\"import\":");
        write_json_str(&mut source_json, &import.name);
        source_json.extend_from_slice(b",\"source_file\":");
        write_json_str(&mut source_json, source_file);
        source_json.extend_from_slice(b",\"source_sha256\":");
        write_json_str(&mut source_json, source_sha256);
        source_json.extend_from_slice(b",\"source_line\":");
        let mut organization_json = Vec::new();
        if let Some(organization) = import.organization() {
            organization_json.extend_from_slice(b",\"organization_id\":");
            write_json_str(&mut organization_json, organization);
        }
        EventWriter {
            import: import.name.clone(),
            user_metadata_json,
            organization_json,
            source_json,
            attach_row_proof: import.attach_row_proof,
            id_name: Vec::with_capacity(256),
        }
    }

    /// Appends the event's JSON object to `out` and returns its id.
    pub fn write(&mut self, row: &Row<'_>, out: &mut Vec<u8>) -> Uuid {
        self.id_name.clear();
        event_id_name(&mut self.id_name, &self.import, row);
        let id = uuid_v5(&self.id_name);

        out.extend_from_slice(b"{\"id\":\"");
        let mut id_text = Uuid::encode_buffer();
        out.extend_from_slice(id.hyphenated().encode_lower(&mut id_text).as_bytes());
        out.push(b'"');
        out.extend_from_slice(&self.organization_json);
        out.extend_from_slice(b",\"created_at\":\"");
        write_rfc3339_utc(out, row);
        out.extend_from_slice(b"\",\"user\":{\"organization_user_id\":");
        write_json_str(out, row.email);
        if let Some(metadata) = &self.user_metadata_json {
            out.extend_from_slice(b",\"metadata\":");
            out.extend_from_slice(metadata);
        }
        out.extend_from_slice(b"},\"consents\":{\"purposes\":[{\"id\":");
        write_json_str(out, row.purpose_id);
        out.extend_from_slice(b",\"enabled\":true}]},\"metadata\":{\"consent_origin\":");
        write_json_str(out, row.origin);
        out.extend_from_slice(b",\"consent_purpose_text\":");
        write_json_str(out, row.purpose_text);
        out.extend_from_slice(&self.source_json);
        write_u64(out, row.line);
        out.push(b'}');
        if self.attach_row_proof {
            out.extend_from_slice(b",\"proofs\":[\"data:text/csv;base64,");
            let start = out.len();
            let room = base64::encoded_len(row.raw.len(), true).unwrap_or(0);
            out.resize(start + room, 0);
            let written = base64::engine::general_purpose::STANDARD
                .encode_slice(row.raw, &mut out[start..])
                .unwrap_or(0);
            out.truncate(start + written);
            out.extend_from_slice(b"\"]");
        }
        out.push(b'}');
        id
    }
}

fn write_rfc3339_utc(out: &mut Vec<u8>, row: &Row<'_>) {
    let seconds = row.instant.timestamp();
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    if !(0..=9999).contains(&year) {
        // Out of RFC 3339's range: chrono's own rendering keeps it unambiguous.
        let t = row.instant.naive_utc();
        out.extend_from_slice(t.format("%Y-%m-%dT%H:%M:%SZ").to_string().as_bytes());
        return;
    }
    let of_day = seconds.rem_euclid(86_400) as u32;
    write_padded(out, year as u32, 4);
    out.push(b'-');
    write_padded(out, month, 2);
    out.push(b'-');
    write_padded(out, day, 2);
    out.push(b'T');
    write_padded(out, of_day / 3_600, 2);
    out.push(b':');
    write_padded(out, of_day / 60 % 60, 2);
    out.push(b':');
    write_padded(out, of_day % 60, 2);
    out.push(b'Z');
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (H.
/// Hinnant's algorithm): chrono's own conversion was a fiftieth of an
/// import's CPU.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn write_padded(out: &mut Vec<u8>, value: u32, width: usize) {
    let mut digits = [b'0'; 10];
    let mut rest = value;
    for slot in digits[..width].iter_mut().rev() {
        *slot = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.extend_from_slice(&digits[..width]);
}

/// Room for any `u64` in decimal (20 digits) or any `i64` with its sign.
const DIGITS: usize = 21;

/// Writes the decimal digits of `value` at the end of `buf`; returns where
/// they start (at least 1, so a sign still fits in front).
fn write_digits(value: u64, buf: &mut [u8; DIGITS]) -> usize {
    let mut at = buf.len();
    let mut rest = value;
    loop {
        at -= 1;
        buf[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    at
}

fn write_u64(out: &mut Vec<u8>, value: u64) {
    let mut buf = [0u8; DIGITS];
    let at = write_digits(value, &mut buf);
    out.extend_from_slice(&buf[at..]);
}

/// `value` in decimal, with a `-` when negative, written into `buf`.
fn i64_text(value: i64, buf: &mut [u8; DIGITS]) -> &[u8] {
    let mut at = write_digits(value.unsigned_abs(), buf);
    if value < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    &buf[at..]
}

/// A JSON string literal, escaped per RFC 8259.
pub fn write_json_str(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    let bytes = text.as_bytes();
    // Most texts need no escape: one pass without an early exit (so that it
    // vectorises) says so, and they are copied whole.
    let needs_escape = bytes.iter().fold(false, |seen, &byte| {
        seen | (byte < 0x20) | (byte == b'"') | (byte == b'\\')
    });
    if !needs_escape {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..index]);
        if escape.is_empty() {
            out.extend_from_slice(format!("\\u{byte:04x}").as_bytes());
        } else {
            out.extend_from_slice(escape);
        }
        start = index + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_config;
    use chrono::TimeZone;

    fn import(extra: &str) -> Import {
        let text = format!(
            "[watch]\ndir = \"d\"\n[state]\ndir = \"s\"\n[sink]\nkind = \"file\"\ndir = \"o\"\n\
             [[import]]\nname = \"news\"\npattern = \".*\"\ndate_format = \"yyyy-MM-dd HH:mm:ss\"\n\
             default_purpose = \"email_global\"\n{extra}"
        );
        let config = parse_config(&text, "t.toml", std::path::Path::new("")).expect("config");
        (*config.imports[0]).clone()
    }

    fn row<'a>(email: &'a str, origin: &'a str, raw: &'a [u8]) -> Row<'a> {
        Row {
            line: 12,
            email,
            purpose_id: "newsletter_weekly",
            purpose_text: "I agree \"weekly\"",
            instant: chrono::Utc
                .with_ymd_and_hms(2020, 6, 3, 21, 28, 55)
                .single()
                .expect("valid"),
            origin,
            raw,
        }
    }

    #[test]
    fn event_has_the_spec_shape() {
        let import = import(
            "attach_row_proof = true\norganization_id = \"org-x\"\n[import.user_metadata]\nsource = \"partner-x\"",
        );
        let mut writer = EventWriter::new(&import, "pr-1.csv", "abc123");
        let mut out = Vec::new();
        let the_row = row("jane@example.com", "203.0.113.7", b"jane@example.com;x");
        let id = writer.write(&the_row, &mut out);
        let event: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(event["id"], id.to_string());
        assert_eq!(event["organization_id"], "org-x");
        assert_eq!(event["created_at"], "2020-06-03T21:28:55Z");
        assert_eq!(event["user"]["organization_user_id"], "jane@example.com");
        assert_eq!(event["user"]["metadata"]["source"], "partner-x");
        assert_eq!(event["consents"]["purposes"][0]["id"], "newsletter_weekly");
        assert_eq!(event["consents"]["purposes"][0]["enabled"], true);
        assert_eq!(event["metadata"]["consent_origin"], "203.0.113.7");
        assert_eq!(
            event["metadata"]["consent_purpose_text"],
            "I agree \"weekly\""
        );
        assert_eq!(event["metadata"]["import"], "news");
        assert_eq!(event["metadata"]["source_file"], "pr-1.csv");
        assert_eq!(event["metadata"]["source_sha256"], "abc123");
        assert_eq!(event["metadata"]["source_line"], 12);
        assert_eq!(
            event["proofs"][0],
            "data:text/csv;base64,amFuZUBleGFtcGxlLmNvbTt4"
        );
        assert_eq!(id.get_version_num(), 5);
        let mut name = Vec::new();
        event_id_name(&mut name, "news", &the_row);
        assert_eq!(
            id,
            Uuid::new_v5(namespace(), &name),
            "same as the uuid crate's v5"
        );
        assert_eq!(id, event_id("news", &the_row));
    }

    #[test]
    fn no_proofs_and_no_user_metadata_unless_configured() {
        let import = import("");
        let mut writer = EventWriter::new(&import, "f.csv", "00");
        let mut out = Vec::new();
        writer.write(&row("a@b.co", "x", b"raw"), &mut out);
        let event: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert!(event.get("proofs").is_none());
        assert!(
            event.get("organization_id").is_none(),
            "no organization named"
        );
        assert!(event["user"].get("metadata").is_none());
    }

    #[test]
    fn same_proof_same_id_and_any_change_another() {
        let base = row("a@b.co", "1.2.3.4", b"");
        let id = event_id("news", &base);
        assert_eq!(
            id,
            event_id(
                "news",
                &Row {
                    line: 99,
                    raw: b"other",
                    ..base
                }
            )
        );
        assert_ne!(id, event_id("other", &base));
        assert_ne!(
            id,
            event_id(
                "news",
                &Row {
                    email: "c@b.co",
                    ..base
                }
            )
        );
        assert_ne!(
            id,
            event_id(
                "news",
                &Row {
                    purpose_id: "p2",
                    ..base
                }
            )
        );
        assert_ne!(
            id,
            event_id(
                "news",
                &Row {
                    purpose_text: "t2",
                    ..base
                }
            )
        );
        assert_ne!(
            id,
            event_id(
                "news",
                &Row {
                    origin: "1.2.3.5",
                    ..base
                }
            )
        );
        let later = base.instant + chrono::Duration::seconds(1);
        assert_ne!(
            id,
            event_id(
                "news",
                &Row {
                    instant: later,
                    ..base
                }
            )
        );
    }

    #[test]
    fn shifting_bytes_between_fields_changes_the_id() {
        let one = row("a@b.co", "x", b"");
        let two = Row {
            purpose_id: "newsletter_weekl",
            purpose_text: "yI agree \"weekly\"",
            ..one
        };
        assert_ne!(event_id("n", &one), event_id("n", &two));
    }

    #[test]
    fn ids_are_unchanged_at_the_edges_of_time() {
        use chrono::{DateTime, Utc};
        let base = row("a@b.co", "x", b"");
        // Ids computed before the seconds moved to a stack buffer.
        for (instant, id) in [
            (
                DateTime::<Utc>::MIN_UTC,
                "60c55758-31dc-5a89-a954-cd014de387ec",
            ),
            (
                DateTime::<Utc>::MAX_UTC,
                "c08dcf85-ac0d-5536-be5b-920356c8733a",
            ),
            (
                DateTime::<Utc>::UNIX_EPOCH,
                "caf32942-4693-556c-92cc-9bbd3bbcf42d",
            ),
            (
                DateTime::<Utc>::UNIX_EPOCH - chrono::Duration::seconds(1),
                "cddb0d04-4334-5640-b1bf-db03fefb486e",
            ),
            (base.instant, "05088594-6f42-5881-9576-34e85111944a"),
        ] {
            let the_row = Row { instant, ..base };
            assert_eq!(event_id("news", &the_row).to_string(), id, "{instant}");
        }
    }

    #[test]
    fn civil_dates_agree_with_chrono_from_year_0_to_9999() {
        use chrono::Datelike;
        let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("date");
        let first = chrono::NaiveDate::from_ymd_opt(0, 1, 1).expect("date");
        let last = chrono::NaiveDate::from_ymd_opt(9999, 12, 31).expect("date");
        let mut date = first;
        while date <= last {
            let days = (date - epoch).num_days();
            assert_eq!(
                civil_from_days(days),
                (i64::from(date.year()), date.month(), date.day()),
                "{date}"
            );
            date += chrono::Duration::days(1);
        }
    }

    #[test]
    fn numbers_are_written_as_display_writes_them() {
        for value in [
            0,
            1,
            -1,
            9,
            -9,
            10,
            -10,
            1_000_000,
            -1_000_000,
            i64::MAX,
            i64::MAX - 1,
            i64::MIN,
            i64::MIN + 1,
        ] {
            let mut buf = [0u8; DIGITS];
            assert_eq!(i64_text(value, &mut buf), value.to_string().as_bytes());
        }
        for value in [0, 9, 10, 10u64.pow(19), u64::MAX - 1, u64::MAX] {
            let mut out = Vec::new();
            write_u64(&mut out, value);
            assert_eq!(out, value.to_string().as_bytes());
        }
    }

    #[test]
    fn json_strings_escape_control_and_quote_characters() {
        let mut out = Vec::new();
        write_json_str(&mut out, "a\"b\\c\nd\u{1}é");
        let back: String = serde_json::from_slice(&out).expect("valid");
        assert_eq!(back, "a\"b\\c\nd\u{1}é");
    }

    proptest::proptest! {
        /// The whole way from a proof line to an event keeps what matters.
        #[test]
        fn a_valid_row_becomes_an_event_with_its_email_instant_and_purpose(
            local in "[A-Za-z0-9._%+-]{1,20}",
            domain in "[a-z0-9-]{1,12}\\.(com|fr|io)",
            text in "[^;\"\\p{Cc}]{0,60}[^;\"\\s\\p{Cc}]",
            seconds in 0i64..4_102_444_800,
            subscription in proptest::option::of(proptest::sample::select(vec!["12", "", "012"])),
        ) {
            let import = import("timezone = \"UTC\"\n[import.subscriptions]\n\"12\" = \"weekly\"");
            let instant = chrono::Utc.timestamp_opt(seconds, 0).single().expect("valid");
            let email = format!("{local}@{domain}");
            let mut line = format!("{email};{text};{};198.51.100.7", instant.format("%Y-%m-%d %H:%M:%S"));
            if let Some(subscription) = subscription {
                line.push(';');
                line.push_str(subscription);
            }
            let mut reader = crate::parse::RowReader::new(
                line.as_bytes(),
                &import.format,
                crate::parse::ResolvedEncoding::Utf8,
            );
            let row = match reader.next_record() {
                Ok(Some(crate::parse::Record::Row(row))) => row,
                other => return Err(proptest::test_runner::TestCaseError::fail(format!("{line:?}: {other:?}"))),
            };
            let mut writer = EventWriter::new(&import, "f.csv", "00");
            let mut out = Vec::new();
            writer.write(&row, &mut out);
            let event: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
            let lower = email.to_lowercase();
            let created_at = instant.format("%Y-%m-%dT%H:%M:%SZ").to_string();
            proptest::prop_assert_eq!(event["user"]["organization_user_id"].as_str(), Some(lower.as_str()));
            proptest::prop_assert_eq!(event["created_at"].as_str(), Some(created_at.as_str()));
            proptest::prop_assert_eq!(event["metadata"]["consent_purpose_text"].as_str(), Some(text.trim()));
            let purpose = if subscription.is_some_and(|s| !s.is_empty()) { "weekly" } else { "email_global" };
            proptest::prop_assert_eq!(event["consents"]["purposes"][0]["id"].as_str(), Some(purpose));
        }

        /// Purpose texts and origins may hold line breaks (a quoted field over
        /// several lines) and digits and colons: the id's name is length-prefixed,
        /// so two different rows never share a name, however the parts are cut.
        #[test]
        fn multi_line_rows_never_share_an_id_name(
            parts in proptest::collection::vec("[0-9:\n a]{0,6}", 4),
        ) {
            let one = Row { purpose_text: &parts[0], origin: &parts[1], ..row("a@b.co", "x", b"") };
            let two = Row { purpose_text: &parts[2], origin: &parts[3], ..one };
            let (mut a, mut b) = (Vec::new(), Vec::new());
            event_id_name(&mut a, "n", &one);
            event_id_name(&mut b, "n", &two);
            let same = one.purpose_text == two.purpose_text && one.origin == two.origin;
            proptest::prop_assert_eq!(a == b, same);
            let joined = |r: &Row<'_>| format!("{}\n{}", r.purpose_text, r.origin);
            if joined(&one) == joined(&two) && !same {
                // Joined with a line break they would collide; named, they do not.
                proptest::prop_assert_ne!(event_id("n", &one), event_id("n", &two));
            }
        }

        #[test]
        fn any_text_is_valid_json(text in ".*") {
            let mut out = Vec::new();
            write_json_str(&mut out, &text);
            let back: String = serde_json::from_slice(&out).expect("valid");
            proptest::prop_assert_eq!(back, text);
        }
    }
}
