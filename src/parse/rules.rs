//! Row rules: a record's field texts → the parts of a [`super::Row`], or why not.
//!
//! Owns the validation of SPEC §1 "Row validation": the field count (with
//! the space separator an unquoted date is several fields, joined back
//! here), control characters, empty required fields, the e-mail (trimmed,
//! lower-cased, plausible), the date in the import's format and zone, the
//! subscription id → purpose id, and the canonical form of an IP origin;
//! and which first record is a header. The rules see fields as plain
//! strings ([`Fields`]), so they are tested without any file or encoding.
//!
//! They never see bytes, quoting or line endings (that is [`super::split`]
//! and [`super::decode`]), and allocate nothing per row once warm: the
//! e-mail, a joined date, a canonical origin and a passthrough purpose id
//! are written into buffers kept from row to row.
use std::fmt::Write as _;
use std::net::IpAddr;

use chrono::{DateTime, Utc};

use super::date::ZoneCache;
use super::{shown, RejectReason, RowFormat, UnknownSubscription};

/// At most this many characters of a field are quoted in a reject reason.
const SHOWN: usize = 100;
const FIELD_NAMES: [&str; 5] = [
    "e-mail",
    "purpose text",
    "date",
    "origin",
    "subscription id",
];

/// The fields of one record, as the rules read them.
pub(super) trait Fields {
    /// How many fields the record has (more than are held, for a very wide one).
    fn count(&self) -> usize;
    /// The trimmed text of field `index` and whether it was quoted; `None`
    /// past the fields held.
    fn field(&self, index: usize) -> Option<(&str, bool)>;
    /// False when no field can hold a control character (see
    /// [`may_contain_control`]): one look at the whole record, quicker than
    /// one a field. `true` is always correct.
    fn may_hold_control(&self, _allow_tab: bool) -> bool {
        true
    }
}

/// Where an accepted row's purpose id is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose<'f> {
    /// In the import's config.
    Config(&'f str),
    /// The subscription id itself, in [`Rules::purpose_id`] (passthrough).
    Passthrough,
}

/// Where an accepted row's origin is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// The field of that index, as written.
    Field(usize),
    /// A canonical IP address, in [`Rules::origin`].
    Canonical,
}

/// What the rules took from an accepted row; the e-mail is [`Rules::email`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Accepted<'f> {
    pub(super) purpose: Purpose<'f>,
    /// The index of the purpose text field.
    pub(super) text: usize,
    pub(super) instant: DateTime<Utc>,
    pub(super) origin: Origin,
}

/// The rules of one import, with the buffers a row's parts are written to.
pub(super) struct Rules<'f> {
    format: &'f RowFormat,
    /// Spaces in a date, rejoined with the space separator.
    date_spaces: usize,
    /// A tab may be in a field's text: it is the separator.
    allow_tab: bool,
    /// The subscriptions table, sorted by id (faster than hashing a few ids).
    subscriptions: Vec<(u64, &'f str)>,
    email: String,
    date: String,
    origin: String,
    purpose_id: String,
    zones: ZoneCache,
}

impl<'f> Rules<'f> {
    pub(super) fn new(format: &'f RowFormat) -> Rules<'f> {
        let sep = format.separator.byte();
        let mut subscriptions: Vec<(u64, &'f str)> = format
            .purposes
            .subscriptions
            .iter()
            .map(|(&id, purpose)| (id, purpose.as_str()))
            .collect();
        subscriptions.sort_unstable();
        Rules {
            format,
            date_spaces: if sep == b' ' {
                format.date_format.space_count()
            } else {
                0
            },
            allow_tab: sep == b'\t',
            subscriptions,
            email: String::new(),
            date: String::new(),
            origin: String::new(),
            purpose_id: String::new(),
            zones: ZoneCache::new(),
        }
    }

    /// The e-mail of the row accepted last, trimmed and lower-cased.
    pub(super) fn email(&self) -> &str {
        &self.email
    }

    /// The purpose id of the row accepted last, for [`Purpose::Passthrough`].
    pub(super) fn purpose_id(&self) -> &str {
        &self.purpose_id
    }

    /// The origin of the row accepted last, for [`Origin::Canonical`].
    pub(super) fn origin(&self) -> &str {
        &self.origin
    }

    /// Bytes held by the buffers, to check that memory stays bounded.
    pub(super) fn capacity(&self) -> usize {
        self.email.capacity()
            + self.date.capacity()
            + self.origin.capacity()
            + self.purpose_id.capacity()
    }

    /// Checks a record's fields, in the order SPEC §1 lists the reasons.
    pub(super) fn check<F: Fields + ?Sized>(
        &mut self,
        fields: &F,
    ) -> Result<Accepted<'f>, RejectReason> {
        let (extra, found) = self.date_fields(fields)?;
        self.check_controls(fields, extra)?;
        let text = 1;
        let origin = 3 + extra;
        let date_empty = extra == 0 && text_at(fields, 2).is_empty();
        for (empty, name) in [
            (text_at(fields, 0).is_empty(), FIELD_NAMES[0]),
            (text_at(fields, text).is_empty(), FIELD_NAMES[1]),
            (date_empty, FIELD_NAMES[2]),
            (text_at(fields, origin).is_empty(), FIELD_NAMES[3]),
        ] {
            if empty {
                return Err(RejectReason::EmptyField { field: name });
            }
        }
        self.check_email(text_at(fields, 0))?;
        let instant = self.instant(fields, extra)?;
        let subscription = if found == 5 {
            text_at(fields, 4 + extra)
        } else {
            ""
        };
        let purpose = self.purpose(subscription)?;
        let origin = self.canonical_origin(fields, origin);
        Ok(Accepted {
            purpose,
            text,
            instant,
            origin,
        })
    }

    /// How many fields past the third belong to the date (`extra`, with the
    /// space separator), and the fields the row has once they are joined.
    fn date_fields<F: Fields + ?Sized>(&self, fields: &F) -> Result<(usize, usize), RejectReason> {
        let count = fields.count();
        let date_quoted = fields.field(2).is_none_or(|(_, quoted)| quoted);
        let extra = if self.date_spaces > 0 && !date_quoted {
            let first = text_at(fields, 2);
            (self.format.date_format.spaces_in(first)).min(count.saturating_sub(3))
        } else {
            0
        };
        let found = count - extra;
        if !(4..=5).contains(&found) || fields.field(count - 1).is_none() {
            return Err(RejectReason::FieldCount { found });
        }
        Ok((extra, found))
    }

    /// A control character other than a line break (and a tab when it is
    /// the separator) rejects the row, naming the field.
    fn check_controls<F: Fields + ?Sized>(
        &self,
        fields: &F,
        extra: usize,
    ) -> Result<(), RejectReason> {
        if !fields.may_hold_control(self.allow_tab) {
            return Ok(());
        }
        for index in 0..fields.count() {
            let text = text_at(fields, index);
            if !may_contain_control(text.as_bytes(), self.allow_tab) {
                continue;
            }
            if let Some(code) = control_char(text, self.allow_tab) {
                let logical = if index < 2 {
                    index
                } else if index <= 2 + extra {
                    2
                } else {
                    index - extra
                };
                return Err(RejectReason::ControlCharacter {
                    field: FIELD_NAMES.get(logical).copied().unwrap_or("a field"),
                    code,
                });
            }
        }
        Ok(())
    }

    /// Lower-cases the e-mail into `email`, then checks it.
    fn check_email(&mut self, text: &str) -> Result<(), RejectReason> {
        self.email.clear();
        if text.is_ascii() {
            self.email.push_str(text);
            self.email.make_ascii_lowercase();
        } else {
            for c in text.chars() {
                self.email.extend(c.to_lowercase());
            }
        }
        match email_problem(&self.email) {
            Some(why) => Err(RejectReason::InvalidEmail {
                email: shown(&self.email, SHOWN),
                why,
            }),
            None => Ok(()),
        }
    }

    /// The date (its fields joined by one space, with the space separator),
    /// in the import's format and zone.
    fn instant<F: Fields + ?Sized>(
        &mut self,
        fields: &F,
        extra: usize,
    ) -> Result<DateTime<Utc>, RejectReason> {
        let text = if extra > 0 {
            self.date.clear();
            for index in 2..=2 + extra {
                if !self.date.is_empty() {
                    self.date.push(' ');
                }
                self.date.push_str(text_at(fields, index));
            }
            self.date.as_str()
        } else {
            text_at(fields, 2)
        };
        let format = self.format;
        format
            .date_format
            .parse_cached(text, format.timezone, &mut self.zones)
            .map_err(RejectReason::InvalidDate)
    }

    /// The purpose id of a subscription id (empty: the default purpose).
    fn purpose(&mut self, text: &str) -> Result<Purpose<'f>, RejectReason> {
        let purposes = &self.format.purposes;
        if text.is_empty() {
            return Ok(Purpose::Config(purposes.default_purpose.as_str()));
        }
        let digits = text.trim_start_matches('0');
        if !text.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 18 {
            return Err(RejectReason::InvalidSubscription {
                value: shown(text, SHOWN),
            });
        }
        let id = digits
            .bytes()
            .fold(0u64, |n, b| n * 10 + u64::from(b - b'0'));
        if let Ok(found) = self
            .subscriptions
            .binary_search_by_key(&id, |&(key, _)| key)
        {
            let purpose = self.subscriptions.get(found).map_or("", |&(_, p)| p);
            return Ok(Purpose::Config(purpose));
        }
        match purposes.unknown {
            UnknownSubscription::Reject => Err(RejectReason::UnknownSubscription { id }),
            UnknownSubscription::Default => Ok(Purpose::Config(purposes.default_purpose.as_str())),
            UnknownSubscription::Passthrough => {
                self.purpose_id.clear();
                let _ = write!(self.purpose_id, "{id}");
                Ok(Purpose::Passthrough)
            }
        }
    }

    /// An origin that is an IP address is written in its canonical form.
    fn canonical_origin<F: Fields + ?Sized>(&mut self, fields: &F, index: usize) -> Origin {
        let text = text_at(fields, index);
        if !text.bytes().any(|b| b == b':') {
            // Rust's IPv4 syntax (four decimal octets, no leading zeros) is
            // already canonical: nothing to rewrite.
            return Origin::Field(index);
        }
        match text.parse::<IpAddr>() {
            Ok(ip) => {
                self.origin.clear();
                let _ = write!(self.origin, "{ip}");
                Origin::Canonical
            }
            Err(_) => Origin::Field(index),
        }
    }
}

/// Whether a first record whose first field is `field` (unquoted, as
/// written) is a header: `email`, any case, blanks and a UTF-8 byte-order
/// mark around it allowed.
pub(super) fn is_header_field(field: &[u8]) -> bool {
    let field = field.trim_ascii();
    let field = field.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(field);
    field.trim_ascii().eq_ignore_ascii_case(b"email")
}

/// The text of field `index`, empty past the fields held.
fn text_at<F: Fields + ?Sized>(fields: &F, index: usize) -> &str {
    fields.field(index).map_or("", |(text, _)| text)
}

/// Whether UTF-8 `bytes` may hold a control character (C0, DEL or C1).
pub(super) fn may_contain_control(bytes: &[u8], allow_tab: bool) -> bool {
    let tab = if allow_tab { b'\t' } else { 0xFF };
    // One pass without an early exit, so that it vectorises: bit 0 for a C0
    // control or DEL, bit 1 for a C2 byte.
    let seen = bytes.iter().fold(0u8, |seen, &b| {
        seen | (u8::from(b < 0x20) & u8::from(b != tab))
            | u8::from(b == 0x7F)
            | (u8::from(b == 0xC2) << 1)
    });
    // C1 controls are C2 80..C2 9F; other C2 sequences (« ° ©) are common.
    seen & 1 != 0
        || (seen & 2 != 0
            && bytes
                .windows(2)
                .any(|pair| pair[0] == 0xC2 && (0x80..=0x9F).contains(&pair[1])))
}

/// The first control character of `text`, if any: a tab is allowed when it
/// is the separator, and a line break (only a quoted field can hold one, and
/// it is `\n` by then) always.
fn control_char(text: &str, allow_tab: bool) -> Option<u32> {
    text.chars()
        .find(|&c| c.is_control() && c != '\n' && !(allow_tab && c == '\t'))
        .map(u32::from)
}

/// Why a (lower-cased, trimmed) e-mail is not plausible.
fn email_problem(email: &str) -> Option<&'static str> {
    let bytes = email.as_bytes();
    let ats = bytes
        .iter()
        .fold(0usize, |n, &b| n + usize::from(b == b'@'));
    match ats {
        0 => return Some("it has no @"),
        1 => {}
        _ => return Some("it has more than one @"),
    }
    let at = bytes.iter().position(|&b| b == b'@').unwrap_or_default();
    if at == 0 {
        return Some("nothing before the @");
    }
    // Control characters are refused before: at or below a space is a blank.
    let odd = bytes
        .iter()
        .fold(0u8, |odd, &b| odd | u8::from(b <= b' ') | (b & 0x80));
    if odd != 0 && email.chars().any(char::is_whitespace) {
        return Some("it contains whitespace");
    }
    let domain = bytes.get(at + 1..).unwrap_or_default();
    let Some(last_dot) = domain.iter().rposition(|&b| b == b'.') else {
        return Some("the domain has no dot");
    };
    if domain.first() == Some(&b'.') || last_dot + 1 == domain.len() {
        return Some("the domain starts or ends with a dot");
    }
    if bytes.len() > 254 && email.chars().count() > 254 {
        return Some("it is longer than 254 characters");
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::parse::{DateFormat, HeaderMode, InputEncoding, PurposeMap, Separator};

    /// Plain strings as fields: `"…"` around a text means it was quoted.
    struct Plain<'a>(&'a [&'a str]);

    impl Fields for Plain<'_> {
        fn count(&self) -> usize {
            self.0.len()
        }
        fn field(&self, index: usize) -> Option<(&str, bool)> {
            let text = *self.0.get(index)?;
            Some(
                match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
                    Some(inner) => (inner, true),
                    None => (text, false),
                },
            )
        }
    }

    fn format(separator: Separator, unknown: UnknownSubscription) -> RowFormat {
        RowFormat {
            date_format: DateFormat::new("dd/MM/yyyy HH:mm:ss").unwrap(),
            timezone: chrono_tz::Europe::Paris,
            separator,
            encoding: InputEncoding::Utf8,
            header: HeaderMode::Auto,
            max_row_bytes: 1024,
            purposes: PurposeMap {
                default_purpose: "email_global".into(),
                subscriptions: HashMap::from([(12, "newsletter_weekly".to_string())]),
                unknown,
            },
        }
    }

    /// The row's parts as text, or the reason.
    fn check(format: &RowFormat, fields: &[&str]) -> Result<[String; 5], RejectReason> {
        let mut rules = Rules::new(format);
        let plain = Plain(fields);
        let accepted = rules.check(&plain)?;
        Ok([
            rules.email().to_string(),
            match accepted.purpose {
                Purpose::Config(id) => id.to_string(),
                Purpose::Passthrough => format!("passthrough {}", rules.purpose_id()),
            },
            text_at(&plain, accepted.text).to_string(),
            accepted.instant.to_rfc3339(),
            match accepted.origin {
                Origin::Field(index) => text_at(&plain, index).to_string(),
                Origin::Canonical => format!("canonical {}", rules.origin()),
            },
        ])
    }

    const DATE: &str = "03/06/2020 23:28:55";
    const INSTANT: &str = "2020-06-03T21:28:55+00:00";

    #[test]
    fn controls_are_seen_and_common_c2_sequences_are_not() {
        for (text, allow_tab, want) in [
            ("plain text, é ’ —", false, false),
            ("« 20 ° » ©", false, false),
            ("bell\u{7}", false, true),
            ("tab\there", false, true),
            ("tab\there", true, false),
            ("del\u{7f}", false, true),
            ("next line\u{85}", false, true),
            ("\u{9f}", true, true),
        ] {
            assert_eq!(
                may_contain_control(text.as_bytes(), allow_tab),
                want,
                "{text:?} allow_tab={allow_tab}"
            );
        }
    }

    #[test]
    fn a_valid_row_gives_its_parts() {
        let format = format(Separator::Semicolon, UnknownSubscription::Reject);
        assert_eq!(
            check(
                &format,
                &["Jane@Example.COM", "news", DATE, "2001:DB8::0:1", "012"]
            )
            .unwrap(),
            [
                "jane@example.com",
                "newsletter_weekly",
                "news",
                INSTANT,
                "canonical 2001:db8::1"
            ]
        );
        let got = check(&format, &["jane@example.com", "news", DATE, "web form", ""]).unwrap();
        assert_eq!(
            (got[1].as_str(), got[4].as_str()),
            ("email_global", "web form")
        );
    }

    #[test]
    fn each_rule_gives_its_reason_in_order() {
        let format = format(Separator::Semicolon, UnknownSubscription::Reject);
        let reason = |fields: &[&str]| check(&format, fields).unwrap_err();
        assert_eq!(
            reason(&["a@b.c", "t", DATE]),
            RejectReason::FieldCount { found: 3 }
        );
        assert_eq!(
            reason(&["", "t\u{7}", "", "ip"]),
            RejectReason::ControlCharacter {
                field: "purpose text",
                code: 7
            }
        );
        assert_eq!(
            reason(&["", "t", "", "ip"]),
            RejectReason::EmptyField { field: "e-mail" }
        );
        assert_eq!(
            reason(&["a@b.c", "t", "", ""]),
            RejectReason::EmptyField { field: "date" }
        );
        assert!(matches!(
            reason(&["a@@b.c", "t", "x", "ip"]),
            RejectReason::InvalidEmail { .. }
        ));
        assert!(matches!(
            reason(&["a@b.c", "t", "31/02/2020 10:00:00", "ip"]),
            RejectReason::InvalidDate(_)
        ));
        assert_eq!(
            reason(&["a@b.c", "t", DATE, "ip", "1x"]),
            RejectReason::InvalidSubscription { value: "1x".into() }
        );
        assert_eq!(
            reason(&["a@b.c", "t", DATE, "ip", "99"]),
            RejectReason::UnknownSubscription { id: 99 }
        );
    }

    #[test]
    fn unknown_subscriptions_follow_the_import() {
        let fields = ["a@b.c", "t", DATE, "ip", "0099"];
        let default = format(Separator::Semicolon, UnknownSubscription::Default);
        assert_eq!(check(&default, &fields).unwrap()[1], "email_global");
        let passthrough = format(Separator::Semicolon, UnknownSubscription::Passthrough);
        assert_eq!(check(&passthrough, &fields).unwrap()[1], "passthrough 99");
    }

    #[test]
    fn with_the_space_separator_an_unquoted_date_is_rejoined() {
        let format = format(Separator::Space, UnknownSubscription::Reject);
        let got = check(
            &format,
            &["a@b.c", "t", "03/06/2020", "23:28:55", "ip", "12"],
        )
        .unwrap();
        assert_eq!((got[3].as_str(), got[4].as_str()), (INSTANT, "ip"));
        let quoted = format!("\"{DATE}\"");
        let got = check(&format, &["a@b.c", "t", &quoted, "ip"]).unwrap();
        assert_eq!(got[3], INSTANT);
        // A control character in the date's second token names the date.
        assert_eq!(
            check(&format, &["a@b.c", "t", "03/06/2020", "23:28\u{1}", "ip"]).unwrap_err(),
            RejectReason::ControlCharacter {
                field: "date",
                code: 1
            }
        );
    }

    #[test]
    fn a_tab_is_a_character_only_with_the_tab_separator() {
        let fields = ["a@b.c", "a\tb", DATE, "ip"];
        let tab = format(Separator::Tab, UnknownSubscription::Reject);
        assert_eq!(check(&tab, &fields).unwrap()[2], "a\tb");
        let comma = format(Separator::Comma, UnknownSubscription::Reject);
        assert_eq!(
            check(&comma, &fields).unwrap_err(),
            RejectReason::ControlCharacter {
                field: "purpose text",
                code: 9
            }
        );
    }

    #[test]
    fn a_header_is_a_first_field_email() {
        for field in [
            &b"email"[..],
            b" EMAIL ",
            b"\xEF\xBB\xBFEmail",
            b"\t\xEF\xBB\xBF email",
        ] {
            assert!(is_header_field(field), "{field:?}");
        }
        for field in [&b"e-mail"[..], b"emails", b""] {
            assert!(!is_header_field(field), "{field:?}");
        }
    }

    #[test]
    fn email_rules() {
        assert_eq!(email_problem("jane@example.com"), None);
        assert_eq!(email_problem("élodie@exemple.fr"), None);
        assert_eq!(
            email_problem("jane\u{a0}doe@example.com"),
            Some("it contains whitespace")
        );
        assert_eq!(email_problem("a@b.c"), None);
    }
}
