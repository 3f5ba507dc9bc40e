//! Retention policies (`vmstash forget --keep-*`), with restic's semantics exactly, as restic
//! 0.14 applies them (checked against that binary in `tests/e2e/forget.rs`).
//!
//! A policy is applied to one group of snapshots (see [`crate::selection`]), newest first.
//! A snapshot is kept when any rule keeps it:
//!
//! - `last N`: the N newest snapshots;
//! - `hourly/daily/weekly/monthly/yearly N`: walking from the newest, the first snapshot of
//!   each calendar period (UTC; ISO weeks, Monday to Sunday) until N periods holding a snapshot
//!   were kept; periods without a snapshot do not count; [`Keep::Unlimited`] has no end;
//! - `within SPAN`: every snapshot newer than the latest snapshot's time minus SPAN (the latest
//!   not in the future: a snapshot dated after `now` does not move the window);
//! - `within-hourly/daily/… SPAN`: like the calendar rules without a count, for snapshots inside
//!   that window;
//! - `tags`: snapshots carrying every tag of any of the lists.
//!
//! A snapshot whose time cannot be read is always kept: a policy cannot judge it.

mod span;
#[cfg(test)]
mod tests;

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Serialize;

pub use span::Span;

use crate::id::Id;
use crate::selection::TagList;
use crate::snapshot::Manifest;
use crate::{Error, Result};

/// How many periods a counted rule keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Keep {
    /// The rule is not used (also what `0` means, as in restic).
    #[default]
    Off,
    /// This many.
    Count(u32),
    /// Every period (`unlimited`, or restic's `-1`).
    Unlimited,
}

impl Keep {
    /// Parses `N`, `unlimited` or `-1`.
    pub fn parse(text: &str) -> Result<Keep> {
        match text.trim() {
            "unlimited" | "-1" => Ok(Keep::Unlimited),
            n => match n.parse::<u32>() {
                Ok(0) => Ok(Keep::Off),
                Ok(n) => Ok(Keep::Count(n)),
                Err(_) => Err(Error::InvalidParameter(format!(
                    "{text:?} is not a count: give a whole number or 'unlimited'"
                ))),
            },
        }
    }
}

/// A retention policy: every rule that keeps snapshots.
#[derive(Debug, Clone, Default)]
pub struct KeepPolicy {
    /// The N newest snapshots.
    pub last: Keep,
    /// The newest snapshot of each of the N newest hours holding one.
    pub hourly: Keep,
    /// … of days.
    pub daily: Keep,
    /// … of ISO weeks.
    pub weekly: Keep,
    /// … of months.
    pub monthly: Keep,
    /// … of years.
    pub yearly: Keep,
    /// Every snapshot within this span of the latest.
    pub within: Option<Span>,
    /// The newest of each hour within this span of the latest.
    pub within_hourly: Option<Span>,
    /// … of each day.
    pub within_daily: Option<Span>,
    /// … of each ISO week.
    pub within_weekly: Option<Span>,
    /// … of each month.
    pub within_monthly: Option<Span>,
    /// … of each year.
    pub within_yearly: Option<Span>,
    /// Snapshots carrying all tags of any list.
    pub tags: Vec<TagList>,
}

impl KeepPolicy {
    /// True when no rule keeps anything: applying it would remove every snapshot, so callers
    /// refuse it.
    pub fn is_empty(&self) -> bool {
        let counts = [
            self.last,
            self.hourly,
            self.daily,
            self.weekly,
            self.monthly,
            self.yearly,
        ];
        let spans = [
            self.within,
            self.within_hourly,
            self.within_daily,
            self.within_weekly,
            self.within_monthly,
            self.within_yearly,
        ];
        counts.iter().all(|k| *k == Keep::Off)
            && spans.iter().all(|s| s.is_none_or(|s| s.is_zero()))
            && self.tags.is_empty()
    }
}

/// What a policy decided for one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The snapshot.
    pub id: Id,
    /// Kept (true) or to be removed.
    pub keep: bool,
    /// Why it is kept ("daily snapshot", "within 2d", …); empty when removed.
    pub reasons: Vec<String>,
}

/// A calendar rule: which period a time falls in.
#[derive(Clone, Copy)]
enum Period {
    Snapshot,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Period {
    /// A number naming the period of `t` (the snapshot's position for [`Period::Snapshot`]).
    fn of(self, t: DateTime<Utc>, position: usize) -> i64 {
        let (y, m, d, h) = (
            i64::from(t.year()),
            i64::from(t.month()),
            i64::from(t.day()),
            i64::from(t.hour()),
        );
        match self {
            Period::Snapshot => i64::try_from(position).unwrap_or(i64::MAX),
            Period::Hour => y * 1_000_000 + m * 10_000 + d * 100 + h,
            Period::Day => y * 10_000 + m * 100 + d,
            Period::Week => {
                let w = t.iso_week();
                i64::from(w.year()) * 100 + i64::from(w.week())
            }
            Period::Month => y * 100 + m,
            Period::Year => y,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Period::Snapshot => "last",
            Period::Hour => "hourly",
            Period::Day => "daily",
            Period::Week => "weekly",
            Period::Month => "monthly",
            Period::Year => "yearly",
        }
    }
}

/// A counted rule while the policy walks the snapshots.
struct Counted {
    period: Period,
    left: Keep,
    last: Option<i64>,
}

/// A windowed calendar rule while the policy walks the snapshots.
struct Windowed {
    period: Period,
    span: Span,
    since: Option<DateTime<Utc>>,
    last: Option<i64>,
}

/// Applies `policy` to one group of snapshots; `now` is the clock (snapshots after it do not
/// move `--keep-within` windows). Returns one decision per snapshot, newest first (ties in
/// the order given).
pub fn apply(policy: &KeepPolicy, group: &[(Id, Manifest)], now: DateTime<Utc>) -> Vec<Decision> {
    let mut dated: Vec<(Id, Option<DateTime<Utc>>, &Manifest)> = group
        .iter()
        .map(|(id, m)| (*id, parse_time(&m.time), m))
        .collect();
    // Newest first; a stable sort keeps the given order among equal times.
    dated.sort_by_key(|d| std::cmp::Reverse(d.1));
    let latest = dated.iter().filter_map(|d| d.1).filter(|t| *t < now).max();
    let window_start = |span: Span| latest.and_then(|l| span.before(l));

    let mut counted: Vec<Counted> = [
        (Period::Snapshot, policy.last),
        (Period::Hour, policy.hourly),
        (Period::Day, policy.daily),
        (Period::Week, policy.weekly),
        (Period::Month, policy.monthly),
        (Period::Year, policy.yearly),
    ]
    .into_iter()
    .map(|(period, left)| Counted {
        period,
        left,
        last: None,
    })
    .collect();
    let mut windowed: Vec<Windowed> = [
        (Period::Hour, policy.within_hourly),
        (Period::Day, policy.within_daily),
        (Period::Week, policy.within_weekly),
        (Period::Month, policy.within_monthly),
        (Period::Year, policy.within_yearly),
    ]
    .into_iter()
    .filter_map(|(period, span)| span.filter(|s| !s.is_zero()).map(|span| (period, span)))
    .map(|(period, span)| Windowed {
        period,
        span,
        since: window_start(span),
        last: None,
    })
    .collect();
    let within = policy
        .within
        .filter(|s| !s.is_zero())
        .map(|s| (s, window_start(s)));

    let mut out = Vec::with_capacity(dated.len());
    for (position, (id, time, m)) in dated.into_iter().enumerate() {
        let Some(t) = time else {
            out.push(Decision {
                id,
                keep: true,
                reasons: vec!["time unreadable".into()],
            });
            continue;
        };
        let mut reasons = Vec::new();
        for tags in &policy.tags {
            if tags.matches(&m.tags) {
                reasons.push(format!("has tags {tags}"));
            }
        }
        if let Some((span, since)) = within {
            if since.is_none_or(|s| t > s) {
                reasons.push(format!("within {span}"));
            }
        }
        for rule in &mut counted {
            if rule.left == Keep::Off {
                continue;
            }
            let value = rule.period.of(t, position);
            if rule.last != Some(value) {
                rule.last = Some(value);
                if let Keep::Count(n) = rule.left {
                    rule.left = if n > 1 { Keep::Count(n - 1) } else { Keep::Off };
                }
                reasons.push(format!("{} snapshot", rule.period.name()));
            }
        }
        for rule in &mut windowed {
            if rule.since.is_some_and(|s| t <= s) {
                continue;
            }
            let value = rule.period.of(t, position);
            if rule.last != Some(value) {
                rule.last = Some(value);
                reasons.push(format!("{} within {}", rule.period.name(), rule.span));
            }
        }
        out.push(Decision {
            id,
            keep: !reasons.is_empty(),
            reasons,
        });
    }
    out
}

/// A snapshot's time (RFC 3339), in UTC.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}
