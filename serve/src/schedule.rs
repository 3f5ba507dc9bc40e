//! When a job runs (spec/SERVE.md §1.1): five cron fields read as crontab(5) does (croner
//! parses and matches them), in the job's time zone, with cron's rules for the days the clock
//! changes: a time that does not exist runs at the first instant after the gap, a time that
//! happens twice runs once, at the first.
//!
//! The matching is done on wall-clock times (croner's `NaiveDateTime` support), and each
//! match is then placed on the time line by the zone (chrono-tz): croner's own zoned search
//! would run a fall-back hour's matches twice.

use std::fmt;

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// How many cron matches [`Schedule::next_after`] looks at before it gives up: each match
/// in the past (a repeated hour) or in a gap costs one; a pattern that can never match
/// (`0 0 30 2 *`) is stopped by croner itself.
const MAX_MATCHES: usize = 1000;
/// The longest gap a zone's clock change makes that the search steps over, in minutes (a
/// day: the longest any zone has skipped, Samoa's 2011 date-line move).
const MAX_GAP_MINUTES: i64 = 24 * 60;

/// A cron schedule in a time zone.
#[derive(Clone)]
pub struct Schedule {
    cron: Cron,
    text: String,
    zone: Tz,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({:?} in {})", self.text, self.zone)
    }
}

impl Schedule {
    /// Parses five cron fields (`0 2 * * *`, names and `@daily`-style aliases allowed);
    /// the error says what is wrong with them.
    pub fn parse(text: &str, zone: Tz) -> Result<Schedule, String> {
        let fields = text.split_whitespace().count();
        if !text.trim_start().starts_with('@') && fields != 5 {
            return Err(format!(
                "{text:?} has {fields} fields; a schedule has five: minute hour day-of-month month day-of-week"
            ));
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build();
        let cron = parser
            .parse(text)
            .map_err(|e| format!("{text:?} is not a cron schedule: {e}"))?;
        Ok(Schedule {
            cron,
            text: text.to_owned(),
            zone,
        })
    }

    /// The schedule as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The time zone its times are read in.
    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The first time strictly after `after` that the schedule names, or `None` when it
    /// names none (within croner's search limit).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut wall = after.with_timezone(&self.zone).naive_local();
        for _ in 0..MAX_MATCHES {
            wall = self.cron.find_next_occurrence(&wall, false).ok()?;
            let at = match self.zone.from_local_datetime(&wall) {
                LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t,
                LocalResult::None => self.after_gap(wall)?,
            };
            let at = at.with_timezone(&Utc);
            if at > after {
                return Some(at);
            }
        }
        None
    }

    /// The end of the gap holding `missing`, a wall-clock time the clock skipped: the first
    /// whole minute after it that exists (zones change their clocks on whole minutes).
    fn after_gap(&self, missing: NaiveDateTime) -> Option<DateTime<Tz>> {
        let minute = missing.with_second(0)?;
        (1..=MAX_GAP_MINUTES).find_map(|m| {
            match self
                .zone
                .from_local_datetime(&(minute + TimeDelta::minutes(m)))
            {
                LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Some(t),
                LocalResult::None => None,
            }
        })
    }

    /// Whether the job is due at `now`: a time the schedule names lies after `since` (its
    /// last start, or when the daemon first saw the job) and not after `now`. Any number of
    /// missed times make it due once.
    pub fn is_due(&self, since: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        self.next_after(since).is_some_and(|t| t <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("a time")
            .with_timezone(&Utc)
    }

    fn next(schedule: &Schedule, after: &str) -> String {
        schedule
            .next_after(utc(after))
            .expect("a next time")
            .to_rfc3339()
    }

    fn berlin(text: &str) -> Schedule {
        Schedule::parse(text, chrono_tz::Europe::Berlin).expect("parses")
    }

    #[test]
    fn a_nightly_schedule_runs_at_two_local_time() {
        let s = berlin("0 2 * * *");
        // Winter: UTC+1.
        assert_eq!(
            next(&s, "2026-12-04T12:00:00Z"),
            "2026-12-05T01:00:00+00:00"
        );
        // Summer: UTC+2.
        assert_eq!(
            next(&s, "2026-07-01T12:00:00Z"),
            "2026-07-02T00:00:00+00:00"
        );
        // Strictly after: a run at the due instant is not due again.
        assert_eq!(
            next(&s, "2026-12-05T01:00:00Z"),
            "2026-12-06T01:00:00+00:00"
        );
    }

    #[test]
    fn a_time_the_spring_change_skips_runs_when_the_gap_ends() {
        // 2026-03-29: Berlin's clocks go from 02:00 CET to 03:00 CEST (01:00 UTC).
        let s = berlin("30 2 * * *");
        assert_eq!(
            next(&s, "2026-03-28T12:00:00Z"),
            "2026-03-29T01:00:00+00:00"
        );
        // And the day after, 02:30 CEST again.
        assert_eq!(
            next(&s, "2026-03-29T01:00:00Z"),
            "2026-03-30T00:30:00+00:00"
        );
    }

    #[test]
    fn a_time_the_autumn_change_repeats_runs_once() {
        // 2026-10-25: 03:00 CEST goes back to 02:00 CET (01:00 UTC); 02:30 happens twice.
        let s = berlin("30 2 * * *");
        assert_eq!(
            next(&s, "2026-10-24T12:00:00Z"),
            "2026-10-25T00:30:00+00:00"
        );
        assert_eq!(
            next(&s, "2026-10-25T00:30:00Z"),
            "2026-10-26T01:30:00+00:00"
        );
        // Hourly: the repeated hour's minute 0 runs once (at its first, CEST, pass).
        let hourly = berlin("0 * * * *");
        let mut t = utc("2026-10-24T23:30:00Z");
        let mut runs = Vec::new();
        for _ in 0..4 {
            t = hourly.next_after(t).expect("next");
            runs.push(t.to_rfc3339());
        }
        assert_eq!(
            runs,
            [
                "2026-10-25T00:00:00+00:00", // 02:00 CEST
                "2026-10-25T02:00:00+00:00", // 03:00 CET (02:00 CET is skipped: ran)
                "2026-10-25T03:00:00+00:00",
                "2026-10-25T04:00:00+00:00",
            ]
        );
    }

    #[test]
    fn missed_times_make_a_job_due_once() {
        let s = Schedule::parse("0 2 * * *", Tz::UTC).expect("parses");
        let last = utc("2026-12-01T02:00:00Z");
        // Down for three nights: due (once: the caller records the start, after which the
        // next time lies in the future).
        let now = utc("2026-12-04T09:00:00Z");
        assert!(s.is_due(last, now));
        assert!(!s.is_due(now, now));
        assert!(!s.is_due(utc("2026-12-04T02:00:00Z"), now));
        assert_eq!(
            next(&s, "2026-12-04T09:00:00Z"),
            "2026-12-05T02:00:00+00:00"
        );
    }

    #[test]
    fn day_of_month_and_day_of_week_restricted_means_either_as_in_cron() {
        // The 1st of the month or any Monday, 03:15.
        let s = Schedule::parse("15 3 1 * mon", Tz::UTC).expect("parses");
        // 2026-12-04 is a Friday: next is Monday the 7th, then Monday the 14th … and Jan 1st
        // (a Friday).
        assert_eq!(
            next(&s, "2026-12-04T12:00:00Z"),
            "2026-12-07T03:15:00+00:00"
        );
        assert_eq!(
            next(&s, "2026-12-28T12:00:00Z"),
            "2027-01-01T03:15:00+00:00"
        );
    }

    #[test]
    fn schedules_that_are_not_five_cron_fields_are_refused() {
        for bad in [
            "0 2 * *",
            "0 0 2 * * *",
            "61 * * * *",
            "* 25 * * *",
            "",
            "every night",
        ] {
            assert!(Schedule::parse(bad, Tz::UTC).is_err(), "{bad:?}");
        }
        assert!(Schedule::parse("@daily", Tz::UTC).is_ok());
        assert!(Schedule::parse("*/15 8-18 * jan-mar mon-fri", Tz::UTC).is_ok());
    }

    #[test]
    fn a_date_that_never_comes_has_no_next_time() {
        let s = Schedule::parse("0 0 30 2 *", Tz::UTC).expect("parses");
        assert_eq!(s.next_after(utc("2026-01-01T00:00:00Z")), None);
    }
}
