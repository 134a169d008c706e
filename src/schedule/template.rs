//! Templates in scheduled requests: `{{yesterday}}`,
//! `{{last_month.start | %Y-%m-%dT%H:%M:%S}}`, … evaluated in the schedule's
//! time zone at the *scheduled* time of a firing, not the time the daemon
//! got round to it.
//!
//! Variables: `now`, `run_date`, `schedule`, and the periods `today`,
//! `yesterday`, `tomorrow`, `this_week`, `last_week`, `this_month`,
//! `last_month`, `this_quarter`, `last_quarter`, `this_year`, `last_year`
//! with `.start` (first day, 00:00:00) or `.end` (last day, 23:59:59). The
//! day periods may also stand alone (a date). Default formats: dates
//! `%Y-%m-%d`, date-times `%Y-%m-%dT%H:%M:%S`; any chrono `strftime` format
//! can follow a `|`. Templates are parsed when a schedule is loaded, and a
//! bad one is rejected with its column.

use chrono::format::{Item, StrftimeItems};
use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime};

/// A parse error, with the 1-based column in the template text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub column: usize,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Period {
    Today,
    Yesterday,
    Tomorrow,
    ThisWeek,
    LastWeek,
    ThisMonth,
    LastMonth,
    ThisQuarter,
    LastQuarter,
    ThisYear,
    LastYear,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edge {
    /// The day itself (day periods only): a date.
    Day,
    Start,
    End,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Var {
    Now,
    RunDate,
    Schedule,
    Period(Period, Edge),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var { var: Var, format: Option<String> },
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

const VARIABLES: &str = "now, run_date, schedule, today, yesterday, tomorrow, this_week, last_week, this_month, last_month, this_quarter, last_quarter, this_year, last_year (with .start or .end)";

fn parse_var(expr: &str) -> Result<Var, String> {
    let (base, edge) = match expr.split_once('.') {
        Some((base, "start")) => (base, Some(Edge::Start)),
        Some((base, "end")) => (base, Some(Edge::End)),
        Some((_, other)) => return Err(format!("unknown part `.{other}` (use .start or .end)")),
        None => (expr, None),
    };
    let period = match base {
        "now" | "run_date" | "schedule" if edge.is_some() => {
            return Err(format!("`{base}` has no .start or .end"));
        }
        "now" => return Ok(Var::Now),
        "run_date" => return Ok(Var::RunDate),
        "schedule" => return Ok(Var::Schedule),
        "today" => Period::Today,
        "yesterday" => Period::Yesterday,
        "tomorrow" => Period::Tomorrow,
        "this_week" => Period::ThisWeek,
        "last_week" => Period::LastWeek,
        "this_month" => Period::ThisMonth,
        "last_month" => Period::LastMonth,
        "this_quarter" => Period::ThisQuarter,
        "last_quarter" => Period::LastQuarter,
        "this_year" => Period::ThisYear,
        "last_year" => Period::LastYear,
        other => return Err(format!("unknown variable `{other}` (known: {VARIABLES})")),
    };
    let is_day = matches!(period, Period::Today | Period::Yesterday | Period::Tomorrow);
    match (edge, is_day) {
        (Some(edge), _) => Ok(Var::Period(period, edge)),
        (None, true) => Ok(Var::Period(period, Edge::Day)),
        (None, false) => Err(format!(
            "`{base}` is a period: write `{base}.start` or `{base}.end`"
        )),
    }
}

fn check_format(format: &str) -> Result<(), String> {
    if StrftimeItems::new(format).any(|item| matches!(item, Item::Error)) {
        return Err(format!(
            "bad date format `{format}` (use strftime codes such as %Y-%m-%d)"
        ));
    }
    Ok(())
}

impl Template {
    /// Parses `text`. Text without `{{` is a template that yields itself.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut pieces = Vec::new();
        let mut rest = text;
        let mut offset = 0;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            let inner_start = open + 2;
            let Some(close) = rest[inner_start..].find("}}") else {
                return Err(TemplateError {
                    column: text[..offset + open].chars().count() + 1,
                    message: "`{{` is not closed by `}}`".into(),
                });
            };
            let inner = &rest[inner_start..inner_start + close];
            let column = text[..offset + inner_start].chars().count() + 1;
            let (expr, format) = match inner.split_once('|') {
                Some((expr, format)) => (expr.trim(), Some(format.trim().to_string())),
                None => (inner.trim(), None),
            };
            let var = parse_var(expr).map_err(|message| TemplateError { column, message })?;
            if let Some(format) = &format {
                if format.is_empty() {
                    return Err(TemplateError {
                        column,
                        message: "empty format after `|`".into(),
                    });
                }
                check_format(format).map_err(|message| TemplateError { column, message })?;
            }
            pieces.push(Piece::Var { var, format });
            let consumed = inner_start + close + 2;
            offset += consumed;
            rest = &rest[consumed..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(Template { pieces })
    }

    /// Whether the text has any variable at all.
    pub fn is_literal(&self) -> bool {
        self.pieces.iter().all(|p| matches!(p, Piece::Text(_)))
    }

    /// Renders for a firing at local time `at` of schedule `schedule`.
    pub fn render(&self, at: NaiveDateTime, schedule: &str) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Var { var, format } => {
                    let (value, default) = evaluate(var, at);
                    match value {
                        Value::Text => out.push_str(schedule),
                        Value::Time(t) => out
                            .push_str(&t.format(format.as_deref().unwrap_or(default)).to_string()),
                    }
                }
            }
        }
        out
    }
}

enum Value {
    Text,
    Time(NaiveDateTime),
}

const DATE: &str = "%Y-%m-%d";
const DATE_TIME: &str = "%Y-%m-%dT%H:%M:%S";

fn first_of_month(year: i32, month: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, month, 1).unwrap_or(NaiveDate::MIN)
}

/// First and last day of the period containing (or before) `day`.
fn period_bounds(period: Period, day: NaiveDate) -> (NaiveDate, NaiveDate) {
    let shift_months = |date: NaiveDate, months: i32| {
        let total = date.year() * 12 + date.month0() as i32 + months;
        first_of_month(total.div_euclid(12), total.rem_euclid(12) as u32 + 1)
    };
    match period {
        Period::Today => (day, day),
        Period::Yesterday => (day - Duration::days(1), day - Duration::days(1)),
        Period::Tomorrow => (day + Duration::days(1), day + Duration::days(1)),
        Period::ThisWeek | Period::LastWeek => {
            let monday = day - Duration::days(i64::from(day.weekday().num_days_from_monday()));
            let monday = if period == Period::LastWeek {
                monday - Duration::days(7)
            } else {
                monday
            };
            (monday, monday + Duration::days(6))
        }
        Period::ThisMonth | Period::LastMonth => {
            let start = shift_months(day, if period == Period::LastMonth { -1 } else { 0 });
            (start, shift_months(start, 1) - Duration::days(1))
        }
        Period::ThisQuarter | Period::LastQuarter => {
            let quarter_start = first_of_month(day.year(), day.month0() / 3 * 3 + 1);
            let start = shift_months(
                quarter_start,
                if period == Period::LastQuarter { -3 } else { 0 },
            );
            (start, shift_months(start, 3) - Duration::days(1))
        }
        Period::ThisYear | Period::LastYear => {
            let year = day.year() - i32::from(period == Period::LastYear);
            (
                first_of_month(year, 1),
                first_of_month(year + 1, 1) - Duration::days(1),
            )
        }
    }
}

fn evaluate(var: &Var, at: NaiveDateTime) -> (Value, &'static str) {
    let end_of_day = NaiveTime::from_hms_opt(23, 59, 59).unwrap_or(NaiveTime::MIN);
    match var {
        Var::Now => (Value::Time(at), DATE_TIME),
        Var::RunDate => (Value::Time(at.date().and_time(NaiveTime::MIN)), DATE),
        Var::Schedule => (Value::Text, ""),
        Var::Period(period, edge) => {
            let (start, end) = period_bounds(*period, at.date());
            match edge {
                Edge::Day => (Value::Time(start.and_time(NaiveTime::MIN)), DATE),
                Edge::Start => (Value::Time(start.and_time(NaiveTime::MIN)), DATE_TIME),
                Edge::End => (Value::Time(end.and_time(end_of_day)), DATE_TIME),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    fn render(template: &str, when: &str) -> String {
        Template::parse(template).unwrap().render(at(when), "daily")
    }

    #[test]
    fn days_and_times_render_with_their_default_formats() {
        let when = "2026-03-01 06:00:00";
        assert_eq!(render("{{today}}", when), "2026-03-01");
        assert_eq!(render("{{yesterday}}", when), "2026-02-28");
        assert_eq!(render("{{tomorrow}}", when), "2026-03-02");
        assert_eq!(render("{{now}}", when), "2026-03-01T06:00:00");
        assert_eq!(render("{{run_date}}", when), "2026-03-01");
        assert_eq!(render("{{yesterday.start}}", when), "2026-02-28T00:00:00");
        assert_eq!(render("{{yesterday.end}}", when), "2026-02-28T23:59:59");
        assert_eq!(
            render("{{schedule}}-{{run_date | %Y%m%d}}", when),
            "daily-20260301"
        );
    }

    #[test]
    fn months_quarters_and_years_cross_year_boundaries() {
        let when = "2027-01-01 00:00:00";
        assert_eq!(render("{{last_month.start}}", when), "2026-12-01T00:00:00");
        assert_eq!(render("{{last_month.end}}", when), "2026-12-31T23:59:59");
        assert_eq!(
            render("{{last_quarter.start}}", when),
            "2026-10-01T00:00:00"
        );
        assert_eq!(render("{{last_quarter.end}}", when), "2026-12-31T23:59:59");
        assert_eq!(render("{{last_year.start | %Y}}", when), "2026");
        assert_eq!(render("{{this_year.end | %Y-%m-%d}}", when), "2027-12-31");
        assert_eq!(
            render("{{this_quarter.end | %Y-%m-%d}}", "2026-05-20 10:00:00"),
            "2026-06-30"
        );
        // February in a leap year.
        assert_eq!(
            render("{{last_month.end | %Y-%m-%d}}", "2028-03-15 06:00:00"),
            "2028-02-29"
        );
    }

    #[test]
    fn weeks_start_on_monday() {
        // 2026-11-23 is a Monday.
        assert_eq!(
            render("{{this_week.start | %Y-%m-%d}}", "2026-11-25 09:00:00"),
            "2026-11-23"
        );
        assert_eq!(
            render("{{last_week.start | %Y-%m-%d}}", "2026-11-23 09:00:00"),
            "2026-11-16"
        );
        assert_eq!(
            render("{{last_week.end | %Y-%m-%d}}", "2026-11-23 09:00:00"),
            "2026-11-22"
        );
    }

    #[test]
    fn bad_templates_are_rejected_with_their_column() {
        let err = Template::parse("from {{yestrday}}").unwrap_err();
        assert_eq!(err.column, 8);
        assert!(
            err.message.contains("unknown variable `yestrday`"),
            "{}",
            err.message
        );
        let err = Template::parse("{{last_month}}").unwrap_err();
        assert!(err.message.contains("last_month.start"), "{}", err.message);
        let err = Template::parse("ok {{today").unwrap_err();
        assert_eq!(err.column, 4);
        let err = Template::parse("{{today | %Q}}").unwrap_err();
        assert!(err.message.contains("bad date format"), "{}", err.message);
        assert!(Template::parse("{{now.start}}").is_err());
        assert!(Template::parse("{{today.middle}}").is_err());
    }

    #[test]
    fn text_without_variables_is_kept_as_is() {
        let t = Template::parse("ReceiptReport } {").unwrap();
        assert!(t.is_literal());
        assert_eq!(
            t.render(at("2026-01-01 00:00:00"), "x"),
            "ReceiptReport } {"
        );
    }
}
