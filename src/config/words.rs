//! config::words: keys whose value is one word of a fixed list, read into enums.
//!
//! Each function is a serde `deserialize_with` for one key; a wrong value (or
//! a value of the wrong type) is refused with a message listing every accepted
//! word. The spellings of `separator` and `encoding` are the parser's own
//! (`Separator::from_config`, `InputEncoding::from_config`), so the two can
//! never disagree. This module never judges anything but the word itself.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};

use crate::parse::{HeaderMode, InputEncoding, Separator, UnknownSubscription};

const SEPARATOR_WORDS: &str =
    "one of \";\" \",\" tab \" \" or the words semicolon, comma, tab, space";
const ENCODING_WORDS: &str =
    "one of utf-8, windows-1252, iso-8859-1, utf-16, auto (or utf8, cp1252, latin1, latin-1, utf16)";
const UNKNOWN_SUBSCRIPTION_WORDS: &str = "one of reject, default, passthrough";
const HEADER_WORDS: &str = "one of auto, true, false";

/// A string that must be one of the words `read` knows.
struct Word<T> {
    expected: &'static str,
    read: fn(&str) -> Option<T>,
}

impl<T> Visitor<'_> for Word<T> {
    type Value = T;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.expected)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        (self.read)(text).ok_or_else(|| E::invalid_value(de::Unexpected::Str(text), &self))
    }
}

pub(super) fn separator<'de, D: Deserializer<'de>>(d: D) -> Result<Separator, D::Error> {
    d.deserialize_str(Word {
        expected: SEPARATOR_WORDS,
        read: Separator::from_config,
    })
}

pub(super) fn encoding<'de, D: Deserializer<'de>>(d: D) -> Result<InputEncoding, D::Error> {
    d.deserialize_str(Word {
        expected: ENCODING_WORDS,
        read: InputEncoding::from_config,
    })
}

pub(super) fn unknown_subscription<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<UnknownSubscription, D::Error> {
    d.deserialize_str(Word {
        expected: UNKNOWN_SUBSCRIPTION_WORDS,
        read: |text| match text {
            "reject" => Some(UnknownSubscription::Reject),
            "default" => Some(UnknownSubscription::Default),
            "passthrough" => Some(UnknownSubscription::Passthrough),
            _ => None,
        },
    })
}

/// `header`: a boolean, or the words `auto`, `true`, `false`.
struct Header;

impl Visitor<'_> for Header {
    type Value = HeaderMode;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(HEADER_WORDS)
    }

    fn visit_bool<E: de::Error>(self, present: bool) -> Result<HeaderMode, E> {
        Ok(if present {
            HeaderMode::Present
        } else {
            HeaderMode::Absent
        })
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<HeaderMode, E> {
        match text {
            "auto" => Ok(HeaderMode::Auto),
            "true" => Ok(HeaderMode::Present),
            "false" => Ok(HeaderMode::Absent),
            _ => Err(E::invalid_value(de::Unexpected::Str(text), &self)),
        }
    }
}

pub(super) fn header<'de, D: Deserializer<'de>>(d: D) -> Result<HeaderMode, D::Error> {
    d.deserialize_any(Header)
}
