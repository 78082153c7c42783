//! The calendar and the zone: a local date and time → the UTC instant.
//!
//! Owns the range checks every date format shares (a real calendar day,
//! hours 00–23, seconds 00–59), proleptic Gregorian arithmetic, and placing
//! a local time in the import's zone: a time in a spring-forward gap is an
//! error, an ambiguous fall-back time takes the earlier instant. A
//! [`ZoneCache`] keeps the zone's UTC offset per local day (per local hour
//! on the days of a transition), so the zone database is consulted about
//! once per day of dates, not once per row.
//!
//! It never reads text: the formats hand it numbers.
use chrono::{DateTime, LocalResult, NaiveDate, Offset, TimeZone, Utc};
use chrono_tz::Tz;

use super::{DateError, SHOWN};
use crate::parse::shown;

/// The zone's UTC offset per local day, for days with a single offset, and
/// per local hour, for the hours of the other days with a single offset.
pub(crate) struct ZoneCache {
    tz: Option<Tz>,
    days: [(i64, i32); ZoneCache::SLOTS],
    hours: [(i64, i32); ZoneCache::SLOTS],
    /// The hour whose start was looked up last, and its offset.
    last_start: Option<(i64, Option<i32>)>,
}

impl ZoneCache {
    const SLOTS: usize = 128;
    const EMPTY: i64 = i64::MIN;

    pub(crate) fn new() -> ZoneCache {
        ZoneCache {
            tz: None,
            days: [(ZoneCache::EMPTY, 0); ZoneCache::SLOTS],
            hours: [(ZoneCache::EMPTY, 0); ZoneCache::SLOTS],
            last_start: None,
        }
    }
}

impl ZoneCache {
    /// The single UTC offset of the local time at the start of hour `key`
    /// (hours since 1970-01-01 00:00 local), `None` in a gap, an ambiguous
    /// time or out of range; the last answer is kept.
    fn offset_at(&mut self, tz: Tz, key: i64) -> Option<i32> {
        if let Some((last, offset)) = self.last_start {
            if last == key {
                return offset;
            }
        }
        let days = i32::try_from(key.div_euclid(24) + 719_163).ok()?;
        let hour = u32::try_from(key.rem_euclid(24)).ok()?;
        let start = NaiveDate::from_num_days_from_ce_opt(days)?.and_hms_opt(hour, 0, 0)?;
        let offset = match tz.from_local_datetime(&start) {
            LocalResult::Single(instant) => Some(instant.offset().fix().local_minus_utc()),
            _ => None,
        };
        self.last_start = Some((key, offset));
        offset
    }

    /// The one UTC offset of local hour `hour` of day `days` (since
    /// 1970-01-01), if it has one. A span whose start and end have the same
    /// single offset has it throughout (no zone has two transitions within
    /// a day that cancel out; `every_day_with_equal_ends_has_one_offset`
    /// checks the bundled database): the day is tried first, its hours on
    /// the days of a transition. Rows in order of time then cost about one
    /// lookup a day, the next day's start being the one looked up last.
    fn single_offset(&mut self, tz: Tz, days: i64, hour: u32) -> Option<i32> {
        let slot = |key: i64| key.rem_euclid(ZoneCache::SLOTS as i64) as usize;
        let hour_key = days * 24 + i64::from(hour);
        for (table, key) in [(&self.days, days), (&self.hours, hour_key)] {
            if let Some(&(cached_key, offset)) = table.get(slot(key)) {
                if cached_key == key {
                    return Some(offset);
                }
            }
        }
        for (span_start, span_hours, key) in [(days * 24, 24, days), (hour_key, 1, hour_key)] {
            let start = self.offset_at(tz, span_start);
            let end = self.offset_at(tz, span_start + span_hours);
            if let (Some(offset), Some(next)) = (start, end) {
                if offset == next {
                    let table = if span_hours == 24 {
                        &mut self.days
                    } else {
                        &mut self.hours
                    };
                    if let Some(entry) = table.get_mut(slot(key)) {
                        *entry = (key, offset);
                    }
                    return Some(offset);
                }
            }
        }
        None
    }
}

impl std::fmt::Debug for ZoneCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZoneCache").field("tz", &self.tz).finish()
    }
}

/// A local date and time (range-checked once through [`check_local`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Local {
    pub(super) year: i64,
    pub(super) month: u32,
    pub(super) day: u32,
    pub(super) hour: u32,
    pub(super) minute: u32,
    pub(super) second: u32,
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        _ => 28,
    }
}

pub(super) fn check_local(text: &str, local: Local) -> Result<Local, DateError> {
    let out_of_range = |field: &'static str, value: u32| DateError::OutOfRange {
        text: shown(text, SHOWN),
        field,
        value,
    };
    if !(1..=12).contains(&local.month) {
        return Err(out_of_range("month", local.month));
    }
    if local.day == 0 || local.day > 31 {
        return Err(out_of_range("day", local.day));
    }
    if local.day > days_in_month(local.year, local.month) {
        return Err(DateError::NoSuchDay {
            text: shown(text, SHOWN),
            year: local.year,
            month: local.month,
            day: local.day,
        });
    }
    if local.hour > 23 {
        return Err(out_of_range("hour", local.hour));
    }
    if local.minute > 59 {
        return Err(out_of_range("minute", local.minute));
    }
    if local.second > 59 {
        return Err(out_of_range("second", local.second));
    }
    Ok(local)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since the epoch of a local time read as UTC.
pub(super) fn civil_seconds(local: Local) -> i64 {
    days_from_civil(local.year, local.month, local.day) * 86_400
        + i64::from(local.hour) * 3_600
        + i64::from(local.minute) * 60
        + i64::from(local.second)
}

pub(super) fn place_in_zone(
    local: Local,
    tz: Tz,
    text: &str,
    cache: &mut ZoneCache,
) -> Result<DateTime<Utc>, DateError> {
    let unsupported = || DateError::Unsupported {
        text: shown(text, SHOWN),
    };
    let days = days_from_civil(local.year, local.month, local.day);
    let seconds = civil_seconds(local);
    if tz == Tz::UTC {
        return DateTime::from_timestamp(seconds, 0).ok_or_else(unsupported);
    }
    if cache.tz != Some(tz) {
        *cache = ZoneCache::new();
        cache.tz = Some(tz);
    }
    if let Some(offset) = cache.single_offset(tz, days, local.hour) {
        return DateTime::from_timestamp(seconds - i64::from(offset), 0).ok_or_else(unsupported);
    }
    let year = i32::try_from(local.year).map_err(|_| unsupported())?;
    let date = NaiveDate::from_ymd_opt(year, local.month, local.day).ok_or_else(unsupported)?;
    let at = |h: u32, m: u32, s: u32| date.and_hms_opt(h, m, s).ok_or_else(unsupported);
    match tz.from_local_datetime(&at(local.hour, local.minute, local.second)?) {
        LocalResult::Single(instant) => Ok(instant.with_timezone(&Utc)),
        LocalResult::Ambiguous(a, b) => Ok(a.with_timezone(&Utc).min(b.with_timezone(&Utc))),
        LocalResult::None => Err(DateError::Gap {
            text: shown(text, SHOWN),
            zone: tz.name().to_string(),
        }),
    }
}
