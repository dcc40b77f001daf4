//! How air-nanny's own lines look: RFC 3339 UTC timestamps for its notes in service logs, and,
//! when stderr is the journal, syslog priority prefixes (`<3>` error … `<7>` debug) on every line
//! and no colour, so that `journalctl -p warning` finds its warnings.

use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// `t` as RFC 3339 in UTC with milliseconds: `2026-11-25T03:10:00.123Z`. Times before 1970 are
/// shown as the epoch.
pub fn rfc3339_utc(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, d.subsec_millis())
}

/// (year, month, day) of a day count since 1970-01-01, in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Whether stderr is the journal: systemd sets `JOURNAL_STREAM` to the device and inode of the
/// stream it connected, which a redirection would change.
// st_dev and st_ino are narrower than u64 on some 32-bit targets: the casts are not useless there.
#[allow(clippy::unnecessary_cast)]
pub fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = v.to_str().and_then(|v| v.split_once(':')) else { return false };
    let Ok(st) = nix::sys::stat::fstat(2) else { return false };
    dev.parse::<u64>().ok() == Some(st.st_dev as u64) && ino.parse::<u64>().ok() == Some(st.st_ino as u64)
}

/// The syslog priority of a level, as journald reads it from a line's `<N>` prefix.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Prefixes every line an inner format writes with the event's `<N>` priority (a message of
/// several lines gives several journal entries, each at its priority).
pub struct Journald<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for Journald<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let p = priority(event.metadata().level());
        for l in line.lines() {
            // No escape byte reaches the journal, whatever a message carried.
            let clean: String = l.chars().filter(|c| *c != '\u{1b}').collect();
            let _ = writeln!(writer, "<{p}>{clean}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_in_utc() {
        assert_eq!(rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // Checked with `date -u -d @1795572245.5`.
        assert_eq!(rfc3339_utc(UNIX_EPOCH + Duration::from_millis(1_795_572_245_500)), "2026-11-25T02:04:05.500Z");
        // A leap day, and the end of a century that is not a leap year.
        assert_eq!(rfc3339_utc(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_utc(UNIX_EPOCH + Duration::from_secs(4_107_542_399)), "2100-02-28T23:59:59.000Z");
        assert_eq!(rfc3339_utc(UNIX_EPOCH + Duration::from_secs(4_107_542_400)), "2100-03-01T00:00:00.000Z");
    }

    #[test]
    fn priorities() {
        assert_eq!([priority(&Level::ERROR), priority(&Level::WARN), priority(&Level::INFO)], [3, 4, 6]);
        assert_eq!(priority(&Level::DEBUG), 7);
    }
}
