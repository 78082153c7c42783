//! Date formats of SPEC §1 and the import's time zone.
//!
//! A format is one of three kinds, decided once by [`DateFormat::new`]:
//! - a *token pattern* (the eight standard formats, or any other arrangement of
//!   `dd MM yyyy HH mm ss` and literal characters, text in single quotes being
//!   literal as in Java patterns, `''` a quote): compiled into fixed byte
//!   offsets, parsed strictly (exactly two digits, four for `yyyy`, real
//!   calendar dates, seconds 00–59) without chrono's lenient parser;
//! - `iso8601` (see [`super::iso8601`]): an offset in the field wins over the
//!   zone;
//! - a *strftime pattern* (it contains `%`): read with chrono's
//!   `NaiveDateTime::parse_from_str`, accepted only if it writes and reads back
//!   a date to the second.
//!
//! The local time is then placed in the zone: a time in a spring-forward gap is
//! an error, an ambiguous fall-back time takes the earlier instant. The reader
//! keeps a [`ZoneCache`] of the zone's UTC offset per local day, so the zone
//! database is consulted about once per day of dates, not once per row.
//!
//! This file owns the choice of kind, the error messages and chrono's paths
//! (strftime); [`tokens`] compiles and reads token patterns, [`zone`] checks
//! the calendar and places local times in the zone. None of them looks at
//! the clock.
use std::fmt::Write as _;

use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Offset, Timelike, Utc};
use chrono_tz::Tz;

use super::shown;

mod tokens;
mod zone;

use tokens::{compile_tokens, layout_of, Layout, Piece};
pub(crate) use zone::ZoneCache;
use zone::{check_local, civil_seconds, place_in_zone, Local};

/// The eight standard formats of SPEC §1.
pub const STANDARD_FORMATS: [&str; 8] = [
    "dd/MM/yyyy HH:mm:ss",
    "dd-MM-yyyy HH:mm:ss",
    "dd.MM.yyyy HH:mm:ss",
    "MM-dd-yyyy HH:mm:ss",
    "MM/dd/yyyy HH:mm:ss",
    "MMddyyyy HH:mm:ss",
    "MM.dd.yyyy HH:mm:ss",
    "yyyy-MM-dd HH:mm:ss",
];

/// The name of the ISO 8601 date format.
pub const ISO8601: &str = "iso8601";

/// A checked date format.
#[derive(Debug, Clone)]
pub struct DateFormat {
    pattern: String,
    kind: Kind,
    /// Spaces in a formatted date (for the space separator).
    spaces: usize,
}

#[derive(Debug, Clone)]
enum Kind {
    Tokens {
        pieces: Vec<Piece>,
        layout: Layout,
    },
    Strftime,
    /// `iso8601`: see [`super::iso8601`].
    Iso8601,
}

/// Why a date was refused; the text is the human reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DateError {
    #[error("{text:?} does not match the date format {pattern:?}")]
    Mismatch { text: String, pattern: String },
    #[error("{text:?} does not match the date format {pattern:?} ({reason})")]
    Strftime {
        text: String,
        pattern: String,
        reason: String,
    },
    #[error("{text:?}: {field} {value:02} is out of range")]
    OutOfRange {
        text: String,
        field: &'static str,
        value: u32,
    },
    #[error("{text:?} is not a calendar date (month {month:02} of {year} has no day {day:02})")]
    NoSuchDay {
        text: String,
        year: i64,
        month: u32,
        day: u32,
    },
    #[error("{text:?} does not exist in {zone} (daylight-saving gap)")]
    Gap { text: String, zone: String },
    #[error("{text:?} is outside the supported range of dates")]
    Unsupported { text: String },
    #[error("{text:?}: the UTC offset {hours:02}:{minutes:02} is out of range")]
    Offset {
        text: String,
        hours: u32,
        minutes: u32,
    },
}

/// At most this many characters of a refused date are quoted in a message.
pub(super) const SHOWN: usize = 64;

/// A sample instant whose fields are all distinct (checks strftime patterns).
fn sample_instant() -> Option<NaiveDateTime> {
    NaiveDate::from_ymd_opt(2021, 7, 15)?.and_hms_opt(13, 45, 17)
}

impl DateFormat {
    /// Checks a pattern; the error is a human message for a config error.
    pub fn new(pattern: &str) -> Result<DateFormat, String> {
        if pattern.trim().is_empty() {
            return Err("is empty; use a format such as \"dd/MM/yyyy HH:mm:ss\"".into());
        }
        if pattern.eq_ignore_ascii_case(ISO8601) || pattern.eq_ignore_ascii_case("iso-8601") {
            return Ok(DateFormat {
                pattern: ISO8601.to_string(),
                kind: Kind::Iso8601,
                spaces: 1,
            });
        }
        if pattern.contains('%') {
            return DateFormat::new_strftime(pattern);
        }
        let pieces = compile_tokens(pattern)?;
        let layout = layout_of(&pieces);
        let spaces = pieces
            .iter()
            .filter(|piece| matches!(piece, Piece::Literal(' ')))
            .count();
        Ok(DateFormat {
            pattern: pattern.to_string(),
            kind: Kind::Tokens { pieces, layout },
            spaces,
        })
    }

    fn new_strftime(pattern: &str) -> Result<DateFormat, String> {
        if StrftimeItems::new(pattern).any(|item| matches!(item, Item::Error)) {
            return Err(format!("{pattern:?} is not a valid strftime pattern"));
        }
        let sample = sample_instant().ok_or("internal: no sample date")?;
        let mut written = String::new();
        if write!(
            written,
            "{}",
            sample.format_with_items(StrftimeItems::new(pattern))
        )
        .is_err()
        {
            return Err(format!(
                "{pattern:?} cannot format a local date and time (time-zone fields such as %z are not allowed)"
            ));
        }
        let parsed = NaiveDateTime::parse_from_str(&written, pattern).map_err(|err| {
            format!(
                "{pattern:?} cannot read back the dates it writes ({written:?}: {err}); \
                 it must give the date and the time to the second"
            )
        })?;
        if parsed.with_nanosecond(0) != Some(sample) {
            return Err(format!(
                "{pattern:?} reads {written:?} back as {parsed}, not {sample}; \
                 it must give the date and the time to the second"
            ));
        }
        Ok(DateFormat {
            pattern: pattern.to_string(),
            kind: Kind::Strftime,
            spaces: written.matches(' ').count(),
        })
    }

    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// How many spaces a date written in this format contains (at most: an
    /// `iso8601` date has one or none, see [`DateFormat::spaces_in`]).
    pub fn space_count(&self) -> usize {
        self.spaces
    }

    /// How many spaces the date of a space-separated record holds, given its
    /// first space-free token.
    pub fn spaces_in(&self, first_token: &str) -> usize {
        match self.kind {
            Kind::Iso8601 => super::iso8601::spaces_after(first_token),
            _ => self.spaces,
        }
    }

    /// Whether this is one of the eight standard formats of SPEC §1.
    pub fn is_standard(&self) -> bool {
        STANDARD_FORMATS.contains(&self.pattern.as_str())
    }

    /// Parses a date written in this format, in zone `tz`.
    pub fn parse(&self, text: &str, tz: Tz) -> Result<DateTime<Utc>, DateError> {
        self.parse_cached(text, tz, &mut ZoneCache::new())
    }

    /// [`DateFormat::parse`] with the reader's cache of zone offsets.
    pub(crate) fn parse_cached(
        &self,
        text: &str,
        tz: Tz,
        cache: &mut ZoneCache,
    ) -> Result<DateTime<Utc>, DateError> {
        let local = match &self.kind {
            Kind::Tokens { layout, .. } => self.read_tokens(layout, text)?,
            Kind::Strftime => self.read_strftime(text)?,
            Kind::Iso8601 => return self.read_iso8601(text, tz, cache),
        };
        place_in_zone(local, tz, text, cache)
    }

    /// An ISO 8601 date: its own offset when it has one, else the zone's.
    fn read_iso8601(
        &self,
        text: &str,
        tz: Tz,
        cache: &mut ZoneCache,
    ) -> Result<DateTime<Utc>, DateError> {
        let date = super::iso8601::read(text).map_err(|err| match err {
            None => self.mismatch(text),
            Some((hours, minutes)) => DateError::Offset {
                text: shown(text, SHOWN),
                hours,
                minutes,
            },
        })?;
        let local = check_local(
            text,
            Local {
                year: i64::from(date.year),
                month: date.month,
                day: date.day,
                hour: date.hour,
                minute: date.minute,
                second: date.second,
            },
        )?;
        let Some(offset) = date.offset else {
            return place_in_zone(local, tz, text, cache);
        };
        DateTime::from_timestamp(civil_seconds(local) - i64::from(offset), 0).ok_or_else(|| {
            DateError::Unsupported {
                text: shown(text, SHOWN),
            }
        })
    }

    fn mismatch(&self, text: &str) -> DateError {
        DateError::Mismatch {
            text: shown(text, SHOWN),
            pattern: self.pattern.clone(),
        }
    }

    fn read_tokens(&self, layout: &Layout, text: &str) -> Result<Local, DateError> {
        let local = tokens::read(layout, text).ok_or_else(|| self.mismatch(text))?;
        check_local(text, local)
    }

    fn read_strftime(&self, text: &str) -> Result<Local, DateError> {
        let naive = NaiveDateTime::parse_from_str(text, &self.pattern).map_err(|err| {
            DateError::Strftime {
                text: shown(text, SHOWN),
                pattern: self.pattern.clone(),
                reason: err.to_string(),
            }
        })?;
        // chrono reads a seconds field of 60 as a leap second.
        if naive.nanosecond() >= 1_000_000_000 {
            return Err(DateError::OutOfRange {
                text: shown(text, SHOWN),
                field: "second",
                value: 60,
            });
        }
        Ok(Local {
            year: i64::from(naive.year()),
            month: naive.month(),
            day: naive.day(),
            hour: naive.hour(),
            minute: naive.minute(),
            second: naive.second(),
        })
    }

    /// Writes `instant` in this format, in zone `tz` (for sample files).
    pub fn format(&self, instant: DateTime<Utc>, tz: Tz) -> String {
        let local = instant.with_timezone(&tz).naive_local();
        let mut out = String::new();
        match &self.kind {
            Kind::Tokens { pieces, .. } => tokens::write(pieces, local, &mut out),
            Kind::Strftime => {
                let _ = write!(
                    out,
                    "{}",
                    local.format_with_items(StrftimeItems::new(&self.pattern))
                );
            }
            Kind::Iso8601 => {
                let offset = instant.with_timezone(&tz).offset().fix().local_minus_utc();
                super::iso8601::write(local, offset, &mut out);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{LocalResult, TimeZone};

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    fn parse(pattern: &str, text: &str) -> Result<DateTime<Utc>, DateError> {
        DateFormat::new(pattern).unwrap().parse(text, Tz::UTC)
    }

    #[test]
    fn every_standard_format_parses_a_known_date() {
        let want = utc(2021, 3, 5, 14, 7, 9);
        let texts = [
            "05/03/2021 14:07:09",
            "05-03-2021 14:07:09",
            "05.03.2021 14:07:09",
            "03-05-2021 14:07:09",
            "03/05/2021 14:07:09",
            "03052021 14:07:09",
            "03.05.2021 14:07:09",
            "2021-03-05 14:07:09",
        ];
        for (pattern, text) in STANDARD_FORMATS.iter().zip(texts) {
            assert_eq!(parse(pattern, text), Ok(want), "{pattern} {text}");
        }
    }

    #[test]
    fn standard_format_in_a_zone_gives_the_utc_instant() {
        let format = DateFormat::new("dd/MM/yyyy HH:mm:ss").unwrap();
        // Paris is UTC+2 in summer, UTC+1 in winter.
        assert_eq!(
            format.parse("03/06/2020 23:28:55", chrono_tz::Europe::Paris),
            Ok(utc(2020, 6, 3, 21, 28, 55))
        );
        assert_eq!(
            format.parse("15/01/2020 08:00:00", chrono_tz::Europe::Paris),
            Ok(utc(2020, 1, 15, 7, 0, 0))
        );
    }

    #[test]
    fn impossible_dates_and_times_are_refused() {
        let p = "dd/MM/yyyy HH:mm:ss";
        assert!(matches!(
            parse(p, "31/02/2021 10:00:00"),
            Err(DateError::NoSuchDay { .. })
        ));
        assert!(matches!(
            parse(p, "29/02/2021 10:00:00"),
            Err(DateError::NoSuchDay { .. })
        ));
        assert_eq!(
            parse(p, "29/02/2024 10:00:00"),
            Ok(utc(2024, 2, 29, 10, 0, 0))
        );
        assert!(matches!(
            parse(p, "01/13/2021 10:00:00"),
            Err(DateError::OutOfRange { field: "month", .. })
        ));
        assert!(matches!(
            parse(p, "01/01/2021 24:00:00"),
            Err(DateError::OutOfRange { field: "hour", .. })
        ));
        assert!(matches!(
            parse(p, "01/01/2021 23:60:00"),
            Err(DateError::OutOfRange {
                field: "minute",
                ..
            })
        ));
        assert!(matches!(
            parse(p, "01/01/2021 23:59:60"),
            Err(DateError::OutOfRange {
                field: "second",
                ..
            })
        ));
    }

    #[test]
    fn shapes_other_than_the_pattern_are_refused() {
        let p = "dd/MM/yyyy HH:mm:ss";
        for text in [
            "05/03/21 10:00:00",     // two-digit year
            "3/5/2021 10:00:00",     // one-digit day and month
            "05/03/2021 10:00:00 x", // trailing junk
            "05/03/2021 10:00:00Z",  // trailing junk
            "05-03-2021 10:00:00",   // wrong literal
            "05/03/2021 10:00",      // no seconds
            "05/03/2021T10:00:00",   // wrong literal
            "0a/03/2021 10:00:00",   // not a digit
            "+5/03/2021 10:00:00",   // sign
            "",
        ] {
            assert!(
                matches!(parse(p, text), Err(DateError::Mismatch { .. })),
                "{text:?} should not parse"
            );
        }
        let err = parse(p, "3/5/2021 10:00:00").unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"3/5/2021 10:00:00\" does not match the date format \"dd/MM/yyyy HH:mm:ss\""
        );
    }

    #[test]
    fn custom_token_pattern() {
        let format = DateFormat::new("yyyyMMdd_HHmmss").unwrap();
        assert_eq!(
            format.parse("20210305_140709", Tz::UTC),
            Ok(utc(2021, 3, 5, 14, 7, 9))
        );
        let format = DateFormat::new("HH:mm:ss @ dd·MM·yyyy").unwrap();
        assert_eq!(format.space_count(), 2);
        assert_eq!(
            format.parse("14:07:09 @ 05·03·2021", Tz::UTC),
            Ok(utc(2021, 3, 5, 14, 7, 9))
        );
        assert_eq!(
            format.format(utc(2021, 3, 5, 14, 7, 9), Tz::UTC),
            "14:07:09 @ 05·03·2021"
        );
    }

    #[test]
    fn strftime_pattern() {
        let format = DateFormat::new("%Y-%m-%dT%H:%M:%S").unwrap();
        assert_eq!(
            format.parse("2021-03-05T14:07:09", Tz::UTC),
            Ok(utc(2021, 3, 5, 14, 7, 9))
        );
        assert!(matches!(
            format.parse("2021-03-05 14:07:09", Tz::UTC),
            Err(DateError::Strftime { .. })
        ));
        assert!(matches!(
            format.parse("2021-03-05T14:07:60", Tz::UTC),
            Err(DateError::OutOfRange {
                field: "second",
                ..
            })
        ));
        assert_eq!(
            format.format(utc(2021, 3, 5, 14, 7, 9), Tz::UTC),
            "2021-03-05T14:07:09"
        );
        let format = DateFormat::new("%d %b %Y %H:%M:%S").unwrap();
        assert_eq!(format.space_count(), 3);
        assert_eq!(
            format.parse("05 Mar 2021 14:07:09", Tz::UTC),
            Ok(utc(2021, 3, 5, 14, 7, 9))
        );
    }

    #[test]
    fn daylight_saving_gap_is_refused_and_overlap_takes_the_earlier_instant() {
        let format = DateFormat::new("yyyy-MM-dd HH:mm:ss").unwrap();
        let paris = chrono_tz::Europe::Paris;
        let err = format.parse("2026-03-29 02:30:00", paris).unwrap_err();
        assert!(matches!(err, DateError::Gap { .. }));
        assert_eq!(
            err.to_string(),
            "\"2026-03-29 02:30:00\" does not exist in Europe/Paris (daylight-saving gap)"
        );
        // 02:30 happens twice on 2026-10-25: first at UTC+2 (00:30Z), then at UTC+1.
        assert_eq!(
            format.parse("2026-10-25 02:30:00", paris),
            Ok(utc(2026, 10, 25, 0, 30, 0))
        );
        // Around the transitions, with a shared cache, offsets stay right.
        let mut cache = ZoneCache::new();
        for (text, want) in [
            ("2026-03-29 01:59:59", utc(2026, 3, 29, 0, 59, 59)),
            ("2026-03-29 03:00:00", utc(2026, 3, 29, 1, 0, 0)),
            ("2026-03-29 01:00:00", utc(2026, 3, 29, 0, 0, 0)),
            ("2026-10-25 01:59:59", utc(2026, 10, 24, 23, 59, 59)),
            ("2026-10-25 02:00:00", utc(2026, 10, 25, 0, 0, 0)),
            ("2026-10-25 03:00:00", utc(2026, 10, 25, 2, 0, 0)),
            ("2026-10-25 02:59:59", utc(2026, 10, 25, 0, 59, 59)),
            ("2026-10-25 03:00:00", utc(2026, 10, 25, 2, 0, 0)),
        ] {
            assert_eq!(
                format.parse_cached(text, paris, &mut cache),
                Ok(want),
                "{text}"
            );
        }
        // A cache filled for one zone is not used for another.
        assert_eq!(
            format.parse_cached(
                "2026-10-25 03:00:00",
                chrono_tz::America::New_York,
                &mut cache
            ),
            Ok(utc(2026, 10, 25, 7, 0, 0))
        );
    }

    /// The instant `t` written as local time in `tz` reads back, through
    /// `cache`, as chrono places it (the earlier of an ambiguous pair).
    fn assert_cached_parse_agrees(
        format: &DateFormat,
        tz: Tz,
        t: DateTime<Utc>,
        cache: &mut ZoneCache,
    ) {
        let local = t.with_timezone(&tz).naive_local();
        let text = local.format("%Y-%m-%d %H:%M:%S").to_string();
        let want = match tz.from_local_datetime(&local) {
            LocalResult::Single(x) => x.with_timezone(&Utc),
            LocalResult::Ambiguous(a, b) => a.with_timezone(&Utc).min(b.with_timezone(&Utc)),
            LocalResult::None => unreachable!(),
        };
        assert_eq!(
            format.parse_cached(&text, tz, cache),
            Ok(want),
            "{tz} {text}"
        );
    }

    #[test]
    fn cached_offsets_agree_with_chrono_over_a_year() {
        let format = DateFormat::new("yyyy-MM-dd HH:mm:ss").unwrap();
        for tz in [
            chrono_tz::Europe::Paris,
            chrono_tz::Australia::Lord_Howe,
            chrono_tz::America::St_Johns,
            chrono_tz::Asia::Kolkata,
        ] {
            // Dense rows (several an hour), then sparse ones (one a day or so).
            for (stride, until) in [(7 * 60 + 13, 2027), (3_600 * 25 + 7, 2036)] {
                let mut cache = ZoneCache::new();
                let mut t = utc(2026, 1, 1, 0, 0, 0);
                while t < utc(until, 1, 1, 0, 0, 0) {
                    assert_cached_parse_agrees(&format, tz, t, &mut cache);
                    t += chrono::Duration::seconds(stride);
                }
            }
        }
    }

    #[test]
    fn cached_offsets_agree_with_chrono_in_any_order() {
        let format = DateFormat::new("yyyy-MM-dd HH:mm:ss").unwrap();
        for tz in [chrono_tz::Europe::Paris, chrono_tz::Australia::Lord_Howe] {
            let mut cache = ZoneCache::new();
            // Seconds of 2026 in a scrambled order (a stride prime to the year).
            let year = 365 * 86_400_i64;
            let start = utc(2026, 1, 1, 0, 0, 0);
            for step in 0..20_000_i64 {
                let t = start + chrono::Duration::seconds((step * 1_000_003) % year);
                assert_cached_parse_agrees(&format, tz, t, &mut cache);
            }
        }
    }

    /// The zone cache takes a local day whose start and end have one offset
    /// to have it throughout: true when no two transitions of a zone are
    /// less than 26 hours apart (a local day lasts 23 to 25 hours). Checked
    /// hour by hour over 1900–2100 for every zone of the bundled database:
    /// `cargo test --release -- --ignored every_day_with_equal_ends`.
    #[test]
    #[ignore = "seconds in release mode, minutes in debug: the whole zone database"]
    fn every_day_with_equal_ends_has_one_offset() {
        use chrono::Offset;
        let (start, end) = (utc(1900, 1, 1, 0, 0, 0), utc(2100, 1, 1, 0, 0, 0));
        let offset = |tz: Tz, t: DateTime<Utc>| tz.offset_from_utc_datetime(&t.naive_utc()).fix();
        for tz in chrono_tz::TZ_VARIANTS {
            let (mut t, mut last_change) = (start, None::<DateTime<Utc>>);
            let mut before = offset(tz, t);
            while t < end {
                t += chrono::Duration::hours(1);
                let now = offset(tz, t);
                if now != before {
                    if let Some(last) = last_change {
                        assert!(
                            t - last > chrono::Duration::hours(26),
                            "{tz}: {last} and {t}"
                        );
                    }
                    last_change = Some(t);
                    before = now;
                }
            }
        }
    }

    #[test]
    fn quoted_text_in_a_token_pattern_is_literal() {
        let format = DateFormat::new("yyyy-MM-dd'T'HH:mm:ss").unwrap();
        assert_eq!(
            format.parse("2021-03-05T14:07:09", Tz::UTC),
            Ok(utc(2021, 3, 5, 14, 7, 9))
        );
        assert!(format.parse("2021-03-05 14:07:09", Tz::UTC).is_err());
        assert_eq!(format.space_count(), 0);
        // Letters in quotes are not tokens; '' is a quote, inside quotes or out.
        let format = DateFormat::new("dd/MM/yyyy 'at' HH:mm:ss''").unwrap();
        assert_eq!(format.space_count(), 2);
        assert_eq!(
            format.parse("05/03/2021 at 14:07:09'", Tz::UTC),
            Ok(utc(2021, 3, 5, 14, 7, 9))
        );
        let format = DateFormat::new("'le ''jour'' 'dd/MM/yyyy HH:mm:ss").unwrap();
        let text = "le 'jour' 05/03/2021 14:07:09";
        assert_eq!(format.parse(text, Tz::UTC), Ok(utc(2021, 3, 5, 14, 7, 9)));
        assert_eq!(format.format(utc(2021, 3, 5, 14, 7, 9), Tz::UTC), text);
        let err = DateFormat::new("yyyy-MM-dd'T HH:mm:ss").unwrap_err();
        assert!(err.contains("never closed"), "{err}");
    }

    #[test]
    fn iso8601_takes_its_offset_over_the_zone() {
        let format = DateFormat::new("iso8601").unwrap();
        assert_eq!(format.pattern(), ISO8601);
        assert_eq!(DateFormat::new("ISO8601").unwrap().pattern(), ISO8601);
        let paris = chrono_tz::Europe::Paris;
        for (text, want) in [
            ("2026-11-05T10:23:45Z", utc(2026, 11, 5, 10, 23, 45)),
            ("2026-11-05 10:23:45+01:00", utc(2026, 11, 5, 9, 23, 45)),
            ("2026-11-05T10:23:45.123+0100", utc(2026, 11, 5, 9, 23, 45)),
            ("2026-11-05T10:23:45-05:00", utc(2026, 11, 5, 15, 23, 45)),
            // No offset: the import's zone (Paris is UTC+1 in November).
            ("2026-11-05T10:23:45", utc(2026, 11, 5, 9, 23, 45)),
            ("2026-11-05 10:23:45.999", utc(2026, 11, 5, 9, 23, 45)),
        ] {
            assert_eq!(format.parse(text, paris), Ok(want), "{text}");
        }
        // Without an offset a gap is still refused.
        assert!(matches!(
            format.parse("2026-03-29T02:30:00", paris),
            Err(DateError::Gap { .. })
        ));
        // With one, there is no gap: the field says which instant it is.
        assert_eq!(
            format.parse("2026-03-29T02:30:00+01:00", paris),
            Ok(utc(2026, 3, 29, 1, 30, 0))
        );
        assert!(matches!(
            format.parse("2026-02-30T10:00:00Z", paris),
            Err(DateError::NoSuchDay { .. })
        ));
        assert!(matches!(
            format.parse("2026-02-10T10:00:60Z", paris),
            Err(DateError::OutOfRange {
                field: "second",
                ..
            })
        ));
        assert_eq!(
            format
                .parse("2026-11-05T10:23:45+25:00", paris)
                .unwrap_err()
                .to_string(),
            "\"2026-11-05T10:23:45+25:00\": the UTC offset 25:00 is out of range"
        );
        assert_eq!(
            format
                .parse("05/11/2026 10:23:45", paris)
                .unwrap_err()
                .to_string(),
            "\"05/11/2026 10:23:45\" does not match the date format \"iso8601\""
        );
        // Written in the zone's offset, read back to the same instant.
        let instant = utc(2026, 7, 1, 22, 5, 3);
        let text = format.format(instant, paris);
        assert_eq!(text, "2026-07-02T00:05:03+02:00");
        assert_eq!(format.parse(&text, chrono_tz::UTC), Ok(instant));
        assert_eq!(format.format(instant, Tz::UTC), "2026-07-01T22:05:03Z");
    }

    #[test]
    fn bad_patterns_are_refused() {
        for pattern in [
            "",
            "dd/MM/yy HH:mm:ss",
            "dd/MM/yyyy HH:mm",
            "dd/MM/yyyy hh:mm:ss",
            "d/M/yyyy HH:mm:ss",
            "dd/MM/yyyy HH:mm:ss dd",
            "dd/MM/yyyy HH:mm:ss a",
            "dd/MMM/yyyy HH:mm:ss",
            "yyyy-MM-dd'T'HH:mm:ss'",
            "yyyy-MM-dd'T HH:mm:ss",
            "dd/MM/yyyy à HH:mm:ss",
            "%Y-%m-%d %H:%M",
            "%Y-%m-%d",
            "%Y-%m-%d %H:%M:%S %z",
            "%Y-%m-%d %H:%M:%S %Q",
        ] {
            assert!(
                DateFormat::new(pattern).is_err(),
                "{pattern:?} should be refused"
            );
        }
        let msg = DateFormat::new("dd/MM/yy HH:mm:ss").unwrap_err();
        assert!(msg.contains("\"yy\" is not a date token"), "{msg}");
        for pattern in STANDARD_FORMATS {
            assert_eq!(DateFormat::new(pattern).unwrap().pattern(), pattern);
        }
    }

    #[test]
    fn format_round_trips_through_parse() {
        let paris = chrono_tz::Europe::Paris;
        let instant = utc(2026, 7, 1, 22, 5, 3);
        for pattern in STANDARD_FORMATS {
            let format = DateFormat::new(pattern).unwrap();
            let text = format.format(instant, paris);
            assert_eq!(format.parse(&text, paris), Ok(instant), "{pattern} {text}");
        }
    }
}
