//! `--keep-within` durations (`1y5m7d2h`) and the calendar arithmetic restic does with them.

use std::fmt;

use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, Utc};

use crate::{Error, Result};

/// A calendar span: years, months, days and hours, each subtracted as a calendar unit (a month
/// back from 31 March is 3 March, as Go's `AddDate` normalises), not as a fixed length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// Years.
    pub years: u32,
    /// Months.
    pub months: u32,
    /// Days.
    pub days: u32,
    /// Hours.
    pub hours: u32,
}

impl Span {
    /// Parses restic's duration form: numbers each followed by `y`, `m`, `d` or `h`, each unit at
    /// most once (`2d`, `1y6m`, `36h`).
    pub fn parse(text: &str) -> Result<Span> {
        let bad = |why: &str| {
            Error::InvalidParameter(format!(
                "duration {text:?}: {why}; write numbers followed by y, m, d or h, like 1y6m or 36h"
            ))
        };
        let mut span = Span::default();
        let mut seen = String::new();
        let mut digits = String::new();
        for c in text.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            if !matches!(c, 'y' | 'm' | 'd' | 'h') {
                return Err(bad(&format!("unknown unit {c:?}")));
            }
            if seen.contains(c) {
                return Err(bad(&format!("unit {c:?} given twice")));
            }
            let n: u32 = digits
                .parse()
                .map_err(|_| bad(&format!("no number (or too large a one) before {c:?}")))?;
            digits.clear();
            seen.push(c);
            match c {
                'y' => span.years = n,
                'm' => span.months = n,
                'd' => span.days = n,
                _ => span.hours = n,
            }
        }
        if !digits.is_empty() {
            return Err(bad("a number without a unit"));
        }
        if seen.is_empty() {
            return Err(bad("empty"));
        }
        Ok(span)
    }

    /// True when every part is zero (the rule keeps nothing by itself).
    pub fn is_zero(&self) -> bool {
        *self == Span::default()
    }

    /// `t` minus this span: years and months first, then days (all normalised the way Go's
    /// `AddDate` does), then hours. `None` when the result is before any representable date.
    pub fn before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let months = i64::from(t.year()) * 12 + i64::from(t.month0())
            - i64::from(self.years) * 12
            - i64::from(self.months);
        let year = i32::try_from(months.div_euclid(12)).ok()?;
        let month0 = u32::try_from(months.rem_euclid(12)).ok()?;
        let first = NaiveDate::from_ymd_opt(year, month0 + 1, 1)?;
        let days = i64::from(t.day0()) - i64::from(self.days);
        let date = first.checked_add_signed(TimeDelta::try_days(days)?)?;
        let shifted = date.and_time(t.time()).and_utc();
        shifted.checked_sub_signed(TimeDelta::try_hours(i64::from(self.hours))?)
    }
}

impl fmt::Display for Span {
    /// restic's form: only the non-zero parts (`1y2d`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, unit) in [
            (self.years, 'y'),
            (self.months, 'm'),
            (self.days, 'd'),
            (self.hours, 'h'),
        ] {
            if n != 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        Ok(())
    }
}
