//! Policy vectors, written by hand from restic 0.14's rules (the e2e test `forget` checks the
//! same rules against the restic binary on a generated history). Times are UTC.

use super::*;
use crate::snapshot::tests::sample;

/// "now" for every case: after all dated snapshots but the deliberately future ones.
const NOW: &str = "2030-01-01T00:00:00Z";

/// `YYYY-MM-DD HH:MM` → RFC 3339.
fn rfc(t: &str) -> String {
    format!("{}T{}:00Z", &t[..10], &t[11..])
}

/// A policy from `rule=value` words: last, hourly, daily, weekly, monthly, yearly, within,
/// within-hourly … within-yearly, tag (repeatable).
fn policy(words: &str) -> KeepPolicy {
    let mut p = KeepPolicy::default();
    for word in words.split_whitespace() {
        let (rule, value) = word.split_once('=').expect("rule=value");
        let keep = || Keep::parse(value).expect("count");
        let span = || Some(Span::parse(value).expect("span"));
        match rule {
            "last" => p.last = keep(),
            "hourly" => p.hourly = keep(),
            "daily" => p.daily = keep(),
            "weekly" => p.weekly = keep(),
            "monthly" => p.monthly = keep(),
            "yearly" => p.yearly = keep(),
            "within" => p.within = span(),
            "within-hourly" => p.within_hourly = span(),
            "within-daily" => p.within_daily = span(),
            "within-weekly" => p.within_weekly = span(),
            "within-monthly" => p.within_monthly = span(),
            "within-yearly" => p.within_yearly = span(),
            "tag" => p.tags.push(TagList::parse(value)),
            other => panic!("unknown rule {other}"),
        }
    }
    p
}

/// Snapshots from `time[/tag+tag]` items; ids are the item's position.
fn group(items: &[&str]) -> Vec<(Id, Manifest)> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let (time, tags) = item.split_once('/').unwrap_or((item, ""));
            let mut m = sample();
            m.time = if time.len() == 16 {
                rfc(time)
            } else {
                time.to_string()
            };
            m.tags = tags
                .split('+')
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect();
            (Id::of(&[u8::try_from(i).expect("few")]), m)
        })
        .collect()
}

/// The items of `items` the policy keeps, in the given order, with the reasons of each.
fn kept(items: &[&str], words: &str) -> Vec<(String, Vec<String>)> {
    let g = group(items);
    let now = parse_time(NOW).expect("now");
    let decisions = apply(&policy(words), &g, now);
    assert_eq!(decisions.len(), items.len(), "one decision per snapshot");
    g.iter()
        .zip(items)
        .filter_map(|((id, _), item)| {
            let d = decisions.iter().find(|d| d.id == *id).expect("decided");
            assert_eq!(
                d.keep,
                !d.reasons.is_empty(),
                "kept exactly when there is a reason"
            );
            d.keep.then(|| (item.to_string(), d.reasons.clone()))
        })
        .collect()
}

/// Asserts exactly `expected` of `items` are kept.
#[track_caller]
fn case(items: &[&str], words: &str, expected: &[&str]) {
    let got: Vec<String> = kept(items, words).into_iter().map(|(i, _)| i).collect();
    assert_eq!(got, expected, "policy {words:?}");
}

#[test]
fn keep_last_keeps_the_newest_n_whatever_their_order_given() {
    let items = [
        "2026-01-03 10:00",
        "2026-01-01 10:00",
        "2026-01-04 10:00",
        "2026-01-02 10:00",
    ];
    case(&items, "last=2", &["2026-01-03 10:00", "2026-01-04 10:00"]);
    case(&items, "last=unlimited", &items);
    case(&items, "last=-1", &items);
    case(&items, "last=9", &items);
}

#[test]
fn keep_daily_keeps_the_newest_of_each_day() {
    let items = [
        "2026-01-01 08:00",
        "2026-01-01 20:00",
        "2026-01-02 08:00",
        "2026-01-02 20:00",
        "2026-01-03 08:00",
        "2026-01-03 20:00",
    ];
    case(&items, "daily=2", &["2026-01-02 20:00", "2026-01-03 20:00"]);
}

#[test]
fn only_periods_holding_a_snapshot_count() {
    let items = [
        "2026-01-01 10:00",
        "2026-01-05 10:00",
        "2026-01-20 10:00",
        "2026-03-01 10:00",
    ];
    case(&items, "daily=3", &items[1..]);
    case(
        &items,
        "monthly=2",
        &["2026-01-20 10:00", "2026-03-01 10:00"],
    );
}

#[test]
fn keep_hourly_splits_at_the_hour_and_across_midnight() {
    let items = [
        "2026-01-01 10:05",
        "2026-01-01 10:50",
        "2026-01-01 23:30",
        "2026-01-02 00:10",
    ];
    case(
        &items,
        "hourly=3",
        &["2026-01-01 10:50", "2026-01-01 23:30", "2026-01-02 00:10"],
    );
}

#[test]
fn iso_weeks_run_monday_to_sunday() {
    // 2026-01-03 Sat and 2026-01-04 Sun are ISO week 2026-W01; 2026-01-05 Mon is W02.
    let items = ["2026-01-03 12:00", "2026-01-04 12:00", "2026-01-05 12:00"];
    case(
        &items,
        "weekly=2",
        &["2026-01-04 12:00", "2026-01-05 12:00"],
    );
    case(&items, "weekly=1", &["2026-01-05 12:00"]);
}

#[test]
fn iso_week_53_spans_the_new_year() {
    // 2026 has 53 ISO weeks: Mon 2026-12-28 to Sun 2027-01-03 is 2026-W53.
    let items = ["2026-12-28 09:00", "2027-01-02 09:00", "2027-01-04 09:00"];
    case(
        &items,
        "weekly=2",
        &["2027-01-02 09:00", "2027-01-04 09:00"],
    );
    case(
        &items,
        "weekly=3",
        &["2027-01-02 09:00", "2027-01-04 09:00"],
    );
}

#[test]
fn january_first_can_belong_to_the_previous_years_last_week() {
    // 2021-01-01 (Fri) is 2020-W53, with 2020-12-28 (Mon); 2021-01-04 is 2021-W01.
    let items = ["2020-12-28 09:00", "2021-01-01 09:00", "2021-01-04 09:00"];
    case(
        &items,
        "weekly=5",
        &["2021-01-01 09:00", "2021-01-04 09:00"],
    );
    // …while the yearly rule splits them at the calendar year.
    case(
        &items,
        "yearly=5",
        &["2020-12-28 09:00", "2021-01-04 09:00"],
    );
}

#[test]
fn months_end_at_midnight_utc() {
    let items = ["2026-01-31 23:00", "2026-02-01 00:30", "2026-02-28 10:00"];
    case(
        &items,
        "monthly=2",
        &["2026-01-31 23:00", "2026-02-28 10:00"],
    );
}

#[test]
fn leap_day_is_in_february() {
    let items = ["2024-02-01 10:00", "2024-02-29 10:00", "2024-03-01 10:00"];
    case(
        &items,
        "monthly=3",
        &["2024-02-29 10:00", "2024-03-01 10:00"],
    );
    case(&items, "daily=2", &["2024-02-29 10:00", "2024-03-01 10:00"]);
}

#[test]
fn yearly_keeps_the_last_of_each_year() {
    let items = ["2024-12-31 23:59", "2025-01-01 00:00", "2025-06-01 00:00"];
    case(
        &items,
        "yearly=2",
        &["2024-12-31 23:59", "2025-06-01 00:00"],
    );
    let many = [
        "2020-03-01 00:00",
        "2020-09-01 00:00",
        "2021-01-01 00:00",
        "2023-01-01 00:00",
    ];
    case(
        &many,
        "yearly=unlimited",
        &["2020-09-01 00:00", "2021-01-01 00:00", "2023-01-01 00:00"],
    );
}

#[test]
fn rules_count_independently_and_reasons_accumulate() {
    let items = [
        "2026-01-01 10:00",
        "2026-01-20 10:00",
        "2026-02-10 10:00",
        "2026-02-11 10:00",
        "2026-02-12 10:00",
    ];
    case(
        &items,
        "daily=2 monthly=2",
        &["2026-01-20 10:00", "2026-02-11 10:00", "2026-02-12 10:00"],
    );
    let reasons = kept(&items, "daily=1 weekly=1 monthly=1 last=1");
    assert_eq!(reasons.len(), 1);
    assert_eq!(
        reasons[0].1,
        [
            "last snapshot",
            "daily snapshot",
            "weekly snapshot",
            "monthly snapshot"
        ]
    );
}

#[test]
fn keep_within_is_relative_to_the_latest_snapshot_and_exclusive() {
    let items = [
        "2026-01-01 12:00",
        "2026-01-08 12:00",
        "2026-01-08 13:00",
        "2026-01-10 12:00",
    ];
    // 2 days before the latest is 2026-01-08 12:00: a snapshot at exactly that time is out.
    case(
        &items,
        "within=2d",
        &["2026-01-08 13:00", "2026-01-10 12:00"],
    );
    let reasons = kept(&items, "within=2d");
    assert_eq!(reasons[0].1, ["within 2d"]);
    // The history is years before NOW; the window still holds the latest day.
    case(&items, "within=1h", &["2026-01-10 12:00"]);
    case(&items, "within=1y", &items);
}

#[test]
fn keep_within_months_normalise_like_go_add_date() {
    // A month before 2026-03-31 10:00 is "2026-02-31", i.e. 2026-03-03 10:00.
    let items = [
        "2026-03-02 23:00",
        "2026-03-03 10:00",
        "2026-03-03 11:00",
        "2026-03-31 10:00",
    ];
    case(
        &items,
        "within=1m",
        &["2026-03-03 11:00", "2026-03-31 10:00"],
    );
    // In a leap year "2024-02-31" is 2024-03-02.
    let leap = ["2024-03-02 09:00", "2024-03-02 11:00", "2024-03-31 10:00"];
    case(
        &leap,
        "within=1m",
        &["2024-03-02 11:00", "2024-03-31 10:00"],
    );
}

#[test]
fn keep_within_a_year_of_a_leap_day() {
    // 2024-02-29 minus a year is "2023-02-29", i.e. 2023-03-01.
    let items = [
        "2023-02-28 12:00",
        "2023-03-01 12:00",
        "2023-03-01 12:30",
        "2024-02-29 12:00",
    ];
    case(
        &items,
        "within=1y",
        &["2023-03-01 12:30", "2024-02-29 12:00"],
    );
    case(&items, "within=1y1d", &items[1..]);
    case(&items, "within=1y2d1h", &items);
}

#[test]
fn future_snapshots_do_not_move_the_window() {
    let items = [
        "2026-01-05 10:00",
        "2026-01-05 12:00",
        "2026-01-06 09:00",
        "2099-01-01 00:00",
    ];
    // The latest before NOW is 2026-01-06 09:00; everything after its window start is kept,
    // the future one too (as restic 0.14 does).
    case(&items, "within=1d", &items);
    case(
        &items,
        "within=1h",
        &["2026-01-06 09:00", "2099-01-01 00:00"],
    );
    // Counted rules walk from the newest, future or not.
    case(&items, "last=1", &["2099-01-01 00:00"]);
}

#[test]
fn when_every_snapshot_is_in_the_future_windows_keep_everything() {
    let items = ["2098-01-01 00:00", "2099-01-01 00:00"];
    case(&items, "within=1h", &items);
    case(&items, "within-daily=1h", &items);
}

#[test]
fn keep_within_daily_keeps_one_per_day_inside_the_window() {
    let items = [
        "2026-01-07 19:00",
        "2026-01-07 21:00",
        "2026-01-09 10:00",
        "2026-01-09 22:00",
        "2026-01-10 08:00",
        "2026-01-10 20:00",
    ];
    case(
        &items,
        "within-daily=3d",
        &["2026-01-07 21:00", "2026-01-09 22:00", "2026-01-10 20:00"],
    );
    let reasons = kept(&items, "within-daily=3d");
    assert_eq!(reasons[2].1, ["daily within 3d"]);
}

#[test]
fn keep_within_hourly_weekly_monthly_yearly() {
    let hours = [
        "2026-01-01 10:29",
        "2026-01-01 10:31",
        "2026-01-01 11:45",
        "2026-01-01 12:10",
        "2026-01-01 12:30",
    ];
    case(
        &hours,
        "within-hourly=2h",
        &["2026-01-01 10:31", "2026-01-01 11:45", "2026-01-01 12:30"],
    );
    let weeks = [
        "2025-12-01 10:00",
        "2026-01-05 10:00",
        "2026-01-06 10:00",
        "2026-01-12 10:00",
    ];
    case(
        &weeks,
        "within-weekly=1m",
        &["2026-01-06 10:00", "2026-01-12 10:00"],
    );
    let months = [
        "2025-01-15 10:00",
        "2025-11-01 10:00",
        "2025-11-20 10:00",
        "2026-01-12 10:00",
    ];
    case(
        &months,
        "within-monthly=3m",
        &["2025-11-20 10:00", "2026-01-12 10:00"],
    );
    let years = [
        "2020-06-01 10:00",
        "2024-02-01 10:00",
        "2024-06-01 10:00",
        "2026-01-12 10:00",
    ];
    case(
        &years,
        "within-yearly=2y",
        &["2024-06-01 10:00", "2026-01-12 10:00"],
    );
}

#[test]
fn keep_tag_is_and_inside_a_list_and_or_between_lists() {
    let items = [
        "2026-01-01 10:00/a",
        "2026-01-02 10:00/a+b",
        "2026-01-03 10:00/b+c",
        "2026-01-04 10:00",
    ];
    case(&items, "tag=a,b", &["2026-01-02 10:00/a+b"]);
    case(&items, "tag=a tag=c", &items[..3]);
    let reasons = kept(&items, "tag=a,b last=1");
    assert_eq!(reasons[0].1, ["has tags a,b"]);
    assert_eq!(reasons[1].1, ["last snapshot"]);
}

#[test]
fn tagged_snapshots_do_not_use_up_counts() {
    let items = [
        "2026-01-01 10:00",
        "2026-01-02 10:00",
        "2026-01-03 10:00/keep",
    ];
    // The tagged one is also the newest, so `last=2` counts it: tags do not shift counts.
    case(&items, "tag=keep last=2", &items[1..]);
}

#[test]
fn equal_times_keep_the_order_given() {
    let items = ["2026-01-01 10:00/first", "2026-01-01 10:00/second"];
    case(&items, "daily=1", &["2026-01-01 10:00/first"]);
    case(&items, "last=1", &["2026-01-01 10:00/first"]);
}

#[test]
fn a_snapshot_with_an_unreadable_time_is_always_kept() {
    let items = ["not a time", "2026-01-01 10:00", "2026-01-02 10:00"];
    case(&items, "last=1", &["not a time", "2026-01-02 10:00"]);
    assert_eq!(kept(&items, "last=1")[0].1, ["time unreadable"]);
}

#[test]
fn an_empty_group_has_no_decisions() {
    let now = parse_time(NOW).expect("now");
    assert!(apply(&policy("last=1"), &[], now).is_empty());
}

#[test]
fn zero_counts_and_zero_spans_make_an_empty_policy() {
    assert!(KeepPolicy::default().is_empty());
    assert!(policy("last=0 daily=0 within=0d within-daily=0h").is_empty());
    assert!(!policy("last=1").is_empty());
    assert!(!policy("within=1h").is_empty());
    assert!(!policy("tag=a").is_empty());
    assert!(!policy("yearly=unlimited").is_empty());
}

#[test]
fn counts_parse_like_restic() {
    assert_eq!(Keep::parse("7").expect("n"), Keep::Count(7));
    assert_eq!(Keep::parse("0").expect("0"), Keep::Off);
    assert_eq!(Keep::parse("unlimited").expect("u"), Keep::Unlimited);
    assert_eq!(Keep::parse("-1").expect("-1"), Keep::Unlimited);
    for bad in ["", "-2", "1.5", "lots", "99999999999"] {
        let err = Keep::parse(bad).expect_err(bad);
        assert!(matches!(err, Error::InvalidParameter(_)), "{bad}: {err}");
    }
}

#[test]
fn spans_parse_like_restic_and_print_back() {
    let s = Span::parse("1y5m7d2h").expect("full");
    assert_eq!((s.years, s.months, s.days, s.hours), (1, 5, 7, 2));
    assert_eq!(s.to_string(), "1y5m7d2h");
    assert_eq!(Span::parse("2d36h").expect("d h").to_string(), "2d36h");
    assert_eq!(Span::parse("0d").expect("zero").to_string(), "");
    for bad in ["", "5", "d", "1w", "1d1d", "-1d", "1.5d", "99999999999d"] {
        let err = Span::parse(bad).expect_err(bad);
        assert!(matches!(err, Error::InvalidParameter(_)), "{bad}: {err}");
    }
}

#[test]
fn huge_spans_reach_before_any_date_and_keep_everything() {
    let items = ["0001-01-01 00:00", "2026-01-01 10:00"];
    case(&items, "within=4000000000y", &items);
    case(&items, "within-yearly=300000y", &items);
}
