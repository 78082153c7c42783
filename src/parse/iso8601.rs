//! `date_format = "iso8601"`: the instants of modern exports.
//!
//! `yyyy-MM-ddTHH:mm:ss` (a `T` or a space between date and time), then an
//! optional fraction of a second (`.123` or `,123`, dropped: instants are to
//! the second), then an optional `Z` or UTC offset (`+01:00` or `+0100`). An
//! offset written in the field says which instant it is, whatever the
//! import's zone; without one the time is local to the import's zone.
//! Read byte by byte at fixed places, as strictly as the token patterns.

/// A date read from an ISO 8601 field, before it is placed in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct IsoDate {
    pub year: u32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    /// Seconds east of UTC, when the field says (`Z` is 0).
    pub offset: Option<i32>,
}

/// Why an ISO 8601 field does not read: `None` is a shape mismatch, `Some`
/// an offset out of range (its hours and minutes).
pub(super) type IsoError = Option<(u32, u32)>;

/// The value of `width` ASCII digits at `at`.
fn digits(bytes: &[u8], at: usize, width: usize) -> Option<u32> {
    let mut value = 0u32;
    for &b in bytes.get(at..at + width)? {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        value = value * 10 + u32::from(d);
    }
    Some(value)
}

/// Reads `text` as ISO 8601 (fields not yet range-checked, except the offset).
pub(super) fn read(text: &str) -> Result<IsoDate, IsoError> {
    let b = text.as_bytes();
    let literal = |at: usize, want: &[u8]| b.get(at).is_some_and(|c| want.contains(c));
    if b.len() < 19
        || !literal(4, b"-")
        || !literal(7, b"-")
        || !literal(10, b"Tt ")
        || !literal(13, b":")
        || !literal(16, b":")
    {
        return Err(None);
    }
    let field = |at, width| digits(b, at, width).ok_or(None);
    let mut date = IsoDate {
        year: field(0, 4)?,
        month: field(5, 2)?,
        day: field(8, 2)?,
        hour: field(11, 2)?,
        minute: field(14, 2)?,
        second: field(17, 2)?,
        offset: None,
    };
    let mut at = 19;
    if literal(at, b".,") {
        let fraction = b
            .get(at + 1..)
            .unwrap_or_default()
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if fraction == 0 {
            return Err(None);
        }
        at += 1 + fraction;
    }
    let rest = b.get(at..).unwrap_or_default();
    date.offset = match rest {
        [] => None,
        [b'Z' | b'z'] => Some(0),
        [sign @ (b'+' | b'-'), ..] => {
            let (hours, minutes) = match rest.len() {
                6 if rest.get(3) == Some(&b':') => (field(at + 1, 2)?, field(at + 4, 2)?),
                5 => (field(at + 1, 2)?, field(at + 3, 2)?),
                _ => return Err(None),
            };
            if hours > 23 || minutes > 59 {
                return Err(Some((hours, minutes)));
            }
            let seconds = i32::try_from(hours * 3_600 + minutes * 60).unwrap_or(0);
            Some(if *sign == b'-' { -seconds } else { seconds })
        }
        _ => return Err(None),
    };
    Ok(date)
}

/// How many spaces the date of a space-separated record holds, from its first
/// token: one when that token is the date alone (`2026-11-05 10:23:45`).
pub(super) fn spaces_after(first_token: &str) -> usize {
    usize::from(first_token.len() == 10)
}

/// `2026-11-05T10:23:45+01:00` (or `Z`): a local time and its offset.
pub(super) fn write(local: chrono::NaiveDateTime, offset_seconds: i32, out: &mut String) {
    use std::fmt::Write as _;
    let _ = write!(out, "{}", local.format("%Y-%m-%dT%H:%M:%S"));
    if offset_seconds == 0 {
        out.push('Z');
    } else {
        let sign = if offset_seconds < 0 { '-' } else { '+' };
        let minutes = offset_seconds.unsigned_abs() / 60;
        let _ = write!(out, "{sign}{:02}:{:02}", minutes / 60, minutes % 60);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(y: u32, mo: u32, d: u32, h: u32, mi: u32, s: u32, offset: Option<i32>) -> IsoDate {
        IsoDate {
            year: y,
            month: mo,
            day: d,
            hour: h,
            minute: mi,
            second: s,
            offset,
        }
    }

    #[test]
    fn every_written_form_reads() {
        for (text, offset) in [
            ("2026-11-05T10:23:45", None),
            ("2026-11-05 10:23:45", None),
            ("2026-11-05t10:23:45", None),
            ("2026-11-05T10:23:45Z", Some(0)),
            ("2026-11-05T10:23:45z", Some(0)),
            ("2026-11-05 10:23:45+01:00", Some(3_600)),
            ("2026-11-05T10:23:45.123+0100", Some(3_600)),
            ("2026-11-05T10:23:45,5-05:30", Some(-19_800)),
            ("2026-11-05T10:23:45.123456789Z", Some(0)),
            ("2026-11-05T10:23:45.1", None),
            ("2026-11-05T10:23:45-00:00", Some(0)),
        ] {
            assert_eq!(
                read(text),
                Ok(date(2026, 11, 5, 10, 23, 45, offset)),
                "{text}"
            );
        }
    }

    #[test]
    fn other_shapes_do_not_read() {
        for text in [
            "",
            "2026-11-05",
            "2026-11-05T10:23",
            "2026/11/05T10:23:45",
            "2026-11-05X10:23:45",
            "26-11-05T10:23:45",
            "2026-11-05T10:23:45.",
            "2026-11-05T10:23:45.Z",
            "2026-11-05T10:23:45 Z",
            "2026-11-05T10:23:45+1",
            "2026-11-05T10:23:45+01",
            "2026-11-05T10:23:45+01:0",
            "2026-11-05T10:23:45+01:000",
            "2026-11-05T10:23:45+01-00",
            "2026-11-05T10:23:45ZZ",
            "2026-11-05T1a:23:45",
            "2026-11-05T10:23:45+0a:00",
            "２026-11-05T10:23:45",
        ] {
            assert_eq!(read(text), Err(None), "{text:?}");
        }
        assert_eq!(read("2026-11-05T10:23:45+24:00"), Err(Some((24, 0))));
        assert_eq!(read("2026-11-05T10:23:45-0160"), Err(Some((1, 60))));
    }

    #[test]
    fn written_dates_read_back() {
        let local = chrono::NaiveDate::from_ymd_opt(2026, 7, 1)
            .and_then(|d| d.and_hms_opt(22, 5, 3))
            .unwrap();
        for (offset, want) in [
            (0, "2026-07-01T22:05:03Z"),
            (7_200, "2026-07-01T22:05:03+02:00"),
            (-12_600, "2026-07-01T22:05:03-03:30"),
        ] {
            let mut out = String::new();
            write(local, offset, &mut out);
            assert_eq!(out, want);
            assert_eq!(read(&out), Ok(date(2026, 7, 1, 22, 5, 3, Some(offset))));
        }
    }
}
