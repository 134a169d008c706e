//! The overview's chart, drawn as SVG on the server: jobs done and failed
//! in each of the last 24 hours, as stacked bars.

use maud::{Markup, PreEscaped, html};

use crate::job::Millis;
use crate::store::views::HourCount;

const WIDTH: u32 = 720;
const HEIGHT: u32 = 160;
const HOURS: i64 = 24;

/// The chart for the 24 hours ending with the one holding `now`.
pub fn finished_per_hour(hours: &[HourCount], now: Millis) -> Markup {
    let last = now.div_euclid(3_600_000) * 3_600_000;
    let first = last - (HOURS - 1) * 3_600_000;
    let slots: Vec<HourCount> = (0..HOURS)
        .map(|i| {
            let hour = first + i * 3_600_000;
            hours
                .iter()
                .find(|h| h.hour == hour)
                .copied()
                .unwrap_or(HourCount {
                    hour,
                    ..HourCount::default()
                })
        })
        .collect();
    let top = slots
        .iter()
        .map(|h| h.done + h.failed)
        .max()
        .unwrap_or(0)
        .max(1);
    let plot = f64::from(HEIGHT - 20);
    let bar = f64::from(WIDTH) / HOURS as f64;
    let mut bars = String::new();
    for (i, slot) in slots.iter().enumerate() {
        let x = i as f64 * bar + 1.0;
        let done_h = slot.done as f64 / top as f64 * plot;
        let failed_h = slot.failed as f64 / top as f64 * plot;
        let base = plot;
        bars.push_str(&format!(
            "<rect class=\"done\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{done_h:.1}\"><title>{} done {}, failed {}</title></rect>",
            base - done_h,
            bar - 2.0,
            super::present::time(slot.hour),
            slot.done,
            slot.failed
        ));
        bars.push_str(&format!(
            "<rect class=\"failed\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{failed_h:.1}\"/>",
            base - done_h - failed_h,
            bar - 2.0
        ));
        if i % 6 == 0 {
            let label = chrono::DateTime::from_timestamp_millis(slot.hour)
                .map(|t| t.format("%H:00").to_string())
                .unwrap_or_default();
            bars.push_str(&format!(
                "<text x=\"{x:.1}\" y=\"{}\">{label}</text>",
                HEIGHT - 4
            ));
        }
    }
    html! {
        svg class="chart" viewBox={"0 0 " (WIDTH) " " (HEIGHT)} role="img"
            xmlns="http://www.w3.org/2000/svg" {
            text x="4" y="12" { "max " (top) }
            (PreEscaped(bars))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_has_a_bar_pair_per_hour() {
        let now = 100 * 3_600_000 + 5;
        let svg = finished_per_hour(
            &[HourCount {
                hour: 100 * 3_600_000,
                done: 4,
                failed: 1,
            }],
            now,
        )
        .into_string();
        assert_eq!(svg.matches("class=\"done\"").count(), 24);
        assert_eq!(svg.matches("class=\"failed\"").count(), 24);
        assert!(svg.contains("max 5"));
    }
}
