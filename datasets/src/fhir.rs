//! FHIR Bulk Data (NDJSON) exports read into a feature table through a mapping file.
//!
//! A hospital's FHIR server exports its data as a folder of NDJSON files (`Patient.ndjson`,
//! `Condition.ndjson`, `Observation.000.ndjson`, ...: one JSON resource per line). A mapping
//! file written by the study designer ([`FhirMapping`]) names the output columns and where each
//! comes from; [`read_export`] turns the folder into one row per Patient, ready for
//! [`crate::LocalDataset::from_table`].
//!
//! Memory stays proportional to patients × columns whatever the size of the export. The folder
//! is read twice, line by line: first for the Patients (they fix the rows, and bulk exports put
//! `Patient.ndjson` after most other files in name order), then for the other mapped resources,
//! each folded into per-patient running aggregates as it is read and then dropped.
//!
//! Like the CSV reader, every error names what a data manager must fix: the mapping file and
//! the `[[column]]` entry, or the export file, its 1-based line and the column involved.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::DataError;
use crate::table::RawTable;

/// Longest accepted NDJSON line. A FHIR resource is rarely above a few hundred KiB; a longer
/// line means a file that is not NDJSON (a pretty-printed Bundle, a binary file) and is refused
/// before it is held in memory.
const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

const PATIENT: &str = "Patient";

/// Fields that date a resource for `latest` / `earliest`; the first one present is used.
const DATE_FIELDS: [&[&str]; 9] = [
    &["effectiveDateTime"],
    &["effectivePeriod", "start"],
    &["onsetDateTime"],
    &["onsetPeriod", "start"],
    &["recordedDate"],
    &["issued"],
    &["authoredOn"],
    &["performedDateTime"],
    &["date"],
];

const AGGREGATES: &str = "latest, earliest, min, max, mean, count, exists";

// ------------------------------------------------------------------------------- mapping file

/// A parsed and validated FHIR mapping file: the output columns of the feature table and the
/// resources each one is read from. See the module documentation of `cohort-datasets` for the
/// file format.
#[derive(Debug, Clone, PartialEq)]
pub struct FhirMapping {
    id: Option<String>,
    columns: Vec<Column>,
}

#[derive(Debug, Clone, PartialEq)]
struct Column {
    name: String,
    source: ColumnSource,
}

#[derive(Debug, Clone, PartialEq)]
enum ColumnSource {
    /// A field of the Patient resource itself.
    Patient {
        path: FieldPath,
        age_at: Option<Date>,
    },
    /// An aggregate over the resources of another type that point to the Patient.
    Linked {
        resource: String,
        /// Empty: every resource of the type matches.
        codes: Vec<Token>,
        aggregate: Aggregate,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Aggregate {
    /// `latest` (`latest = true`) or `earliest`.
    Pick {
        value: FieldPath,
        latest: bool,
    },
    /// `max` (`max = true`) or `min`.
    Extreme {
        value: FieldPath,
        max: bool,
    },
    Mean {
        value: FieldPath,
    },
    Count,
    Exists {
        if_present: String,
        if_absent: String,
    },
}

/// A dotted path into a resource; numeric segments index arrays.
#[derive(Debug, Clone, PartialEq)]
struct FieldPath {
    text: String,
    segments: Vec<String>,
}

/// A FHIR search token: `system|code`, `code` (any system) or `|code` (no system).
#[derive(Debug, Clone, PartialEq)]
struct Token {
    system: Option<String>,
    code: String,
}

/// A calendar date (proleptic Gregorian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Date {
    year: i32,
    month: u32,
    day: u32,
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// The mapping file as written, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingFile {
    id: Option<String>,
    #[serde(default)]
    column: Vec<ColumnEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnEntry {
    name: Option<String>,
    resource: Option<String>,
    path: Option<String>,
    /// A token or a list of tokens; checked by hand so that errors name the column.
    code: Option<toml::Value>,
    value: Option<String>,
    aggregate: Option<String>,
    if_present: Option<String>,
    if_absent: Option<String>,
    age_at: Option<String>,
}

impl FhirMapping {
    /// Parses and validates a mapping file; `source_name` (usually its path) names it in errors.
    pub fn from_toml(text: &str, source_name: &str) -> Result<Self, DataError> {
        let invalid = |message: String| DataError::Mapping {
            source_name: source_name.to_owned(),
            message,
        };
        let file: MappingFile =
            toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().to_owned()))?;
        if let Some(id) = &file.id {
            check_name(id).map_err(|m| invalid(format!("`id` {m}")))?;
        }
        if file.column.is_empty() {
            return Err(invalid(
                "no [[column]] entries: add at least one output column".to_owned(),
            ));
        }
        // Output name -> the entry that uses it, for duplicate errors.
        let mut seen: HashMap<String, String> = HashMap::new();
        if let Some(id) = &file.id {
            seen.insert(id.clone(), "`id`".to_owned());
        }
        let mut columns = Vec::with_capacity(file.column.len());
        for (i, entry) in file.column.into_iter().enumerate() {
            let label = column_label(i + 1, entry.name.as_deref());
            let column = parse_column(entry).map_err(|m| invalid(format!("{label}: {m}")))?;
            if let Some(other) = seen.get(&column.name) {
                return Err(invalid(format!(
                    "{label}: name `{}` is already used by {other}",
                    column.name
                )));
            }
            seen.insert(column.name.clone(), label);
            columns.push(column);
        }
        Ok(FhirMapping {
            id: file.id,
            columns,
        })
    }

    /// Reads and validates a mapping file.
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let text = fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Output column names in table order: the `id` column first when configured, then the
    /// `[[column]]` entries in file order.
    pub fn columns(&self) -> Vec<String> {
        self.id
            .iter()
            .cloned()
            .chain(self.columns.iter().map(|c| c.name.clone()))
            .collect()
    }
}

/// How errors refer to the `index`-th (1-based) `[[column]]` entry.
fn column_label(index: usize, name: Option<&str>) -> String {
    match name {
        Some(name) if !name.trim().is_empty() => format!("[[column]] #{index} (`{name}`)"),
        _ => format!("[[column]] #{index}"),
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        Err("must not be empty".to_owned())
    } else if name.trim() != name {
        Err(format!("`{name}` has leading or trailing spaces"))
    } else {
        Ok(())
    }
}

fn parse_column(entry: ColumnEntry) -> Result<Column, String> {
    let name = entry
        .name
        .clone()
        .ok_or_else(|| "has no `name` (the output column)".to_owned())?;
    check_name(&name).map_err(|m| format!("`name` {m}"))?;
    let resource = entry.resource.as_deref().ok_or_else(|| {
        "has no `resource` (the FHIR resource type to read, e.g. \"Patient\" or \"Observation\")"
            .to_owned()
    })?;
    let is_type_name = resource.starts_with(|c: char| c.is_ascii_uppercase())
        && resource.chars().all(|c| c.is_ascii_alphanumeric());
    if !is_type_name {
        return Err(format!(
            "resource = \"{resource}\" is not a FHIR resource type (such as \"Patient\", \
             \"Condition\" or \"Observation\"; the name is case-sensitive)"
        ));
    }
    let source = if resource == PATIENT {
        patient_source(&entry)?
    } else {
        linked_source(&entry, resource)?
    };
    Ok(Column { name, source })
}

fn patient_source(entry: &ColumnEntry) -> Result<ColumnSource, String> {
    let not_allowed = [
        ("code", entry.code.is_some()),
        ("value", entry.value.is_some()),
        ("aggregate", entry.aggregate.is_some()),
        ("if_present", entry.if_present.is_some()),
        ("if_absent", entry.if_absent.is_some()),
    ];
    if let Some((key, _)) = not_allowed.iter().find(|(_, given)| *given) {
        return Err(format!(
            "`{key}` is not allowed with resource = \"Patient\": a Patient column reads `path` \
             from the Patient resource itself"
        ));
    }
    let path = entry.path.as_deref().ok_or_else(|| {
        "resource = \"Patient\" needs `path`, the field to read (e.g. \"gender\" or \
         \"address.0.state\")"
            .to_owned()
    })?;
    let path = FieldPath::parse(path).map_err(|m| format!("`path` {m}"))?;
    let age_at = match entry.age_at.as_deref() {
        None => None,
        Some(text) => Some(Date::parse_strict(text).ok_or_else(|| {
            format!("age_at = \"{text}\" is not a valid date written YYYY-MM-DD")
        })?),
    };
    Ok(ColumnSource::Patient { path, age_at })
}

fn linked_source(entry: &ColumnEntry, resource: &str) -> Result<ColumnSource, String> {
    if entry.path.is_some() {
        return Err(format!(
            "`path` is only for resource = \"Patient\"; use `value` for the field of the \
             {resource} to read (and `code` to choose which {resource} resources count)"
        ));
    }
    if entry.age_at.is_some() {
        return Err(
            "`age_at` is only allowed with resource = \"Patient\" (it turns the birth date read \
             by `path` into an age)"
                .to_owned(),
        );
    }
    let codes = match &entry.code {
        None => Vec::new(),
        Some(code) => parse_codes(code, resource)?,
    };
    let aggregate_name = entry.aggregate.as_deref().unwrap_or("latest");
    let value = |aggregate: &str| -> Result<FieldPath, String> {
        let text = entry.value.as_deref().ok_or_else(|| {
            format!(
                "aggregate = \"{aggregate}\" needs `value`, the field of the {resource} to read \
                 (e.g. \"valueQuantity.value\")"
            )
        })?;
        FieldPath::parse(text).map_err(|m| format!("`value` {m}"))
    };
    let aggregate = match aggregate_name {
        "latest" | "earliest" => Aggregate::Pick {
            value: value(aggregate_name)?,
            latest: aggregate_name == "latest",
        },
        "min" | "max" => Aggregate::Extreme {
            value: value(aggregate_name)?,
            max: aggregate_name == "max",
        },
        "mean" => Aggregate::Mean {
            value: value(aggregate_name)?,
        },
        "count" | "exists" => {
            if entry.value.is_some() {
                return Err(format!(
                    "`value` is not used with aggregate = \"{aggregate_name}\"; remove it"
                ));
            }
            if aggregate_name == "count" {
                Aggregate::Count
            } else {
                Aggregate::Exists {
                    if_present: entry.if_present.clone().unwrap_or_else(|| "yes".to_owned()),
                    if_absent: entry.if_absent.clone().unwrap_or_else(|| "no".to_owned()),
                }
            }
        }
        other => {
            return Err(format!(
                "unknown aggregate `{other}` (expected one of: {AGGREGATES})"
            ));
        }
    };
    if !matches!(aggregate, Aggregate::Exists { .. }) {
        for (key, given) in [
            ("if_present", entry.if_present.is_some()),
            ("if_absent", entry.if_absent.is_some()),
        ] {
            if given {
                return Err(format!(
                    "`{key}` is only allowed with aggregate = \"exists\" (this column has \
                     aggregate = \"{aggregate_name}\")"
                ));
            }
        }
    }
    Ok(ColumnSource::Linked {
        resource: resource.to_owned(),
        codes,
        aggregate,
    })
}

fn parse_codes(code: &toml::Value, resource: &str) -> Result<Vec<Token>, String> {
    match code {
        toml::Value::String(token) => Ok(vec![parse_token(token)?]),
        toml::Value::Array(items) if items.is_empty() => Err(format!(
            "`code = []` lists no token; give at least one \"system|code\", or leave `code` out \
             to use every {resource}"
        )),
        toml::Value::Array(items) => items
            .iter()
            .map(|item| match item.as_str() {
                Some(token) => parse_token(token),
                None => Err(format!(
                    "`code` entries must be strings such as \"http://loinc.org|2339-0\", found \
                     {item}"
                )),
            })
            .collect(),
        other => Err(format!(
            "`code` must be a token such as \"http://loinc.org|2339-0\" or a list of tokens, \
             found {other}"
        )),
    }
}

fn parse_token(text: &str) -> Result<Token, String> {
    let token = text.trim();
    if token.is_empty() {
        return Err(
            "`code` contains an empty token; write \"system|code\" or just \"code\"".to_owned(),
        );
    }
    match token.split_once('|') {
        Some((system, code)) => {
            let code = code.trim();
            if code.is_empty() {
                Err(format!(
                    "token `{token}` in `code` has no code after `|` (write \"system|code\")"
                ))
            } else {
                Ok(Token {
                    system: Some(system.trim().to_owned()),
                    code: code.to_owned(),
                })
            }
        }
        None => Ok(Token {
            system: None,
            code: token.to_owned(),
        }),
    }
}

impl FieldPath {
    fn parse(text: &str) -> Result<Self, String> {
        let segments: Vec<String> = text.split('.').map(str::to_owned).collect();
        if segments
            .iter()
            .any(|s| s.is_empty() || s.chars().any(char::is_whitespace))
        {
            return Err(format!(
                "`{text}` is not a dotted path such as \"valueQuantity.value\" or \
                 \"address.0.state\""
            ));
        }
        Ok(FieldPath {
            text: text.to_owned(),
            segments,
        })
    }

    /// The value at this path; `None` when some field on the way is absent. Reaching a list
    /// with a field name (`name.family` where `name` is a list) is a mistake in the mapping and
    /// an error, rather than a column silently left empty.
    fn lookup<'v>(&self, resource: &'v Value) -> Result<Option<&'v Value>, String> {
        let mut current = resource;
        for (i, segment) in self.segments.iter().enumerate() {
            let next = match current {
                Value::Object(fields) => fields.get(segment),
                Value::Array(items) => match segment.parse::<usize>() {
                    Ok(index) => items.get(index),
                    Err(_) => {
                        let (before, after) = self.segments.split_at(i);
                        return Err(format!(
                            "`{}` is a list in this resource; add an index to the path, e.g. \
                             `{}.0.{}`",
                            before.join("."),
                            before.join("."),
                            after.join(".")
                        ));
                    }
                },
                _ => None,
            };
            match next {
                Some(value) => current = value,
                None => return Ok(None),
            }
        }
        Ok(Some(current))
    }
}

/// One entry of a resource's `code.coding`; `system` is empty when the coding has none.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Coding<'a> {
    system: &'a str,
    code: &'a str,
}

/// The codings of a resource's `code.coding` that have a code, read once per resource.
fn codings(resource: &Value) -> Vec<Coding<'_>> {
    let Some(entries) = resource
        .get("code")
        .and_then(|code| code.get("coding"))
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|coding| {
            Some(Coding {
                system: coding.get("system").and_then(Value::as_str).unwrap_or(""),
                code: coding.get("code")?.as_str()?,
            })
        })
        .collect()
}

impl Token {
    fn matches(&self, coding: &Coding<'_>) -> bool {
        coding.code == self.code && self.system.as_deref().is_none_or(|s| s == coding.system)
    }
}

/// Whether any of the resource's codings matches any token (always, without tokens).
fn matches_codes(codes: &[Token], codings: &[Coding<'_>]) -> bool {
    codes.is_empty()
        || codings
            .iter()
            .any(|coding| codes.iter().any(|token| token.matches(coding)))
}

// ---------------------------------------------------------------------------------- dates

/// A FHIR `date`, `dateTime` or `instant`: `YYYY`, `YYYY-MM`, `YYYY-MM-DD`, or a full date with
/// `Thh:mm[:ss[.fff]]` and an optional `Z` / `±hh:mm` zone.
#[derive(Debug, Clone, Copy, PartialEq)]
struct FhirDateTime {
    year: i32,
    month: Option<u32>,
    day: Option<u32>,
    /// Seconds of the day, nanoseconds, zone offset in seconds.
    time: Option<(u32, u32, i32)>,
}

/// Sort key of a date: UTC seconds since 1970 and nanoseconds. A partial date sorts at its
/// first instant; a time without zone is taken as UTC.
type DateKey = (i64, u32);

impl Date {
    /// Exactly `YYYY-MM-DD`, a valid calendar date.
    fn parse_strict(text: &str) -> Option<Date> {
        match parse_fhir_datetime(text)? {
            FhirDateTime {
                year,
                month: Some(month),
                day: Some(day),
                time: None,
            } => Some(Date { year, month, day }),
            _ => None,
        }
    }
}

fn parse_fhir_datetime(text: &str) -> Option<FhirDateTime> {
    let b = text.as_bytes();
    let year = i32::try_from(digits(b, 0, 4)?).ok()?;
    let mut pos = 4;
    let mut parsed = FhirDateTime {
        year,
        month: None,
        day: None,
        time: None,
    };
    if b.get(pos) == Some(&b'-') {
        let month = digits(b, pos + 1, 2)?;
        if !(1..=12).contains(&month) {
            return None;
        }
        parsed.month = Some(month);
        pos += 3;
        if b.get(pos) == Some(&b'-') {
            let day = digits(b, pos + 1, 2)?;
            if day < 1 || day > days_in_month(year, month) {
                return None;
            }
            parsed.day = Some(day);
            pos += 3;
            if b.get(pos) == Some(&b'T') {
                let (time, end) = parse_time(b, pos + 1)?;
                parsed.time = Some(time);
                pos = end;
            }
        }
    }
    (pos == b.len()).then_some(parsed)
}

/// `hh:mm[:ss[.f+]][Z|±hh:mm]` from `pos`; returns (seconds of day, nanos, offset) and the end.
fn parse_time(b: &[u8], mut pos: usize) -> Option<((u32, u32, i32), usize)> {
    let hours = digits(b, pos, 2)?;
    if b.get(pos + 2) != Some(&b':') {
        return None;
    }
    let minutes = digits(b, pos + 3, 2)?;
    pos += 5;
    let (mut seconds, mut nanos) = (0, 0);
    if b.get(pos) == Some(&b':') {
        seconds = digits(b, pos + 1, 2)?;
        pos += 3;
        if b.get(pos) == Some(&b'.') {
            pos += 1;
            let start = pos;
            while b.get(pos).is_some_and(u8::is_ascii_digit) {
                pos += 1;
            }
            if pos == start {
                return None;
            }
            // Nanosecond precision; further digits are dropped.
            nanos = b[start..pos]
                .iter()
                .chain(std::iter::repeat(&b'0'))
                .take(9)
                .fold(0, |n, d| n * 10 + u32::from(d - b'0'));
        }
    }
    // 60: a leap second.
    if hours > 23 || minutes > 59 || seconds > 60 {
        return None;
    }
    let offset = match b.get(pos) {
        None => 0,
        Some(b'Z') => {
            pos += 1;
            0
        }
        Some(&sign @ (b'+' | b'-')) => {
            let zone_hours = digits(b, pos + 1, 2)?;
            if b.get(pos + 3) != Some(&b':') {
                return None;
            }
            let zone_minutes = digits(b, pos + 4, 2)?;
            if zone_hours > 14 || zone_minutes > 59 {
                return None;
            }
            pos += 6;
            let offset = i32::try_from(zone_hours * 3600 + zone_minutes * 60).ok()?;
            if sign == b'-' { -offset } else { offset }
        }
        Some(_) => return None,
    };
    Some(((hours * 3600 + minutes * 60 + seconds, nanos, offset), pos))
}

/// The `n` ASCII digits at `start` as a number.
fn digits(b: &[u8], start: usize, n: usize) -> Option<u32> {
    let slice = b.get(start..start.checked_add(n)?)?;
    slice.iter().try_fold(0u32, |acc, &d| {
        d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
    })
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i32, month: u32, day: u32) -> i64 {
    let (month, day) = (i64::from(month), i64::from(day));
    let year = i64::from(year) - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

impl FhirDateTime {
    fn sort_key(&self) -> DateKey {
        let days = days_from_civil(self.year, self.month.unwrap_or(1), self.day.unwrap_or(1));
        let (seconds, nanos, offset) = self.time.unwrap_or((0, 0, 0));
        (
            days * 86_400 + i64::from(seconds) - i64::from(offset),
            nanos,
        )
    }

    /// Whole years from this (birth) date to `at`; a partial date counts from its first day
    /// (`1970` is 1970-01-01, `1970-05` is 1970-05-01). `None` when born after `at`.
    fn age_at(&self, at: Date) -> Option<i32> {
        let birth = (self.year, self.month.unwrap_or(1), self.day.unwrap_or(1));
        if birth > (at.year, at.month, at.day) {
            return None;
        }
        let birthday_not_reached = (at.month, at.day) < (birth.1, birth.2);
        Some(at.year - birth.0 - i32::from(birthday_not_reached))
    }
}

/// The date of a resource for `latest` / `earliest`: the first present of [`DATE_FIELDS`];
/// `None` when it has none (it then sorts before every dated resource).
fn resource_date(resource: &Value) -> Result<Option<DateKey>, String> {
    for field in DATE_FIELDS {
        let found = field
            .iter()
            .try_fold(resource, |value, segment| value.get(*segment));
        let Some(found) = found.filter(|v| !v.is_null()) else {
            continue;
        };
        let name = field.join(".");
        let Some(text) = found.as_str() else {
            return Err(format!("`{name}` is {}, not a date", short(found)));
        };
        return parse_fhir_datetime(text)
            .map(|date| Some(date.sort_key()))
            .ok_or_else(|| {
                format!(
                    "`{name}` = `{text}` is not a FHIR date (YYYY, YYYY-MM, YYYY-MM-DD or \
                     YYYY-MM-DDThh:mm:ss+zz:zz)"
                )
            });
    }
    Ok(None)
}

// ---------------------------------------------------------------------------------- values

/// The text of a single value; `Ok(None)` for JSON `null`; `Err` names what was found instead.
fn scalar_text(value: &Value) -> Result<Option<String>, &'static str> {
    match value {
        Value::Null => Ok(None),
        Value::String(text) => Ok(Some(text.clone())),
        Value::Number(number) => Ok(Some(number.to_string())),
        Value::Bool(flag) => Ok(Some(flag.to_string())),
        Value::Array(_) => Err("a list"),
        Value::Object(_) => Err("an object"),
    }
}

fn not_single_value(column: &str, path: &FieldPath, kind: &str) -> String {
    format!(
        "column `{column}`: `{}` is {kind}, not a single value; point the path at a field \
         inside it",
        path.text
    )
}

/// JSON text of a value for messages, cut to a readable length.
fn short(value: &Value) -> String {
    const MAX_CHARS: usize = 60;
    let text = value.to_string();
    if text.chars().count() <= MAX_CHARS {
        text
    } else {
        let cut: String = text.chars().take(MAX_CHARS - 3).collect();
        format!("{cut}...")
    }
}

/// The numeric value at `path` and its text, `None` when absent or `null`. A JSON number or a
/// string holding a finite number; anything else is an error naming the column and the value.
fn numeric_at(
    column: &str,
    aggregate: &str,
    path: &FieldPath,
    resource: &Value,
) -> Result<Option<(f64, String)>, String> {
    let Some(value) = path
        .lookup(resource)
        .map_err(|m| format!("column `{column}`: {m}"))?
    else {
        return Ok(None);
    };
    let number = match value {
        Value::Null => return Ok(None),
        Value::Array(_) | Value::Object(_) => {
            let kind = if value.is_array() {
                "a list"
            } else {
                "an object"
            };
            return Err(not_single_value(column, path, kind));
        }
        Value::Number(number) => number.as_f64().map(|x| (x, number.to_string())),
        Value::String(text) => text.trim().parse::<f64>().ok().map(|x| (x, text.clone())),
        Value::Bool(_) => None,
    };
    match number.filter(|(x, _)| x.is_finite()) {
        Some(number) => Ok(Some(number)),
        None => Err(format!(
            "column `{column}`: `{}` is {}, not a number (aggregate = \"{aggregate}\" needs \
             numbers)",
            path.text,
            short(value)
        )),
    }
}

// ---------------------------------------------------------------------------------- reading

/// What [`read_export`] read: counts only, never a value or an id, so it can be shown to the
/// coordinator.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FhirReport {
    /// `.ndjson` files read.
    pub files: usize,
    /// Non-blank lines parsed (one resource each).
    pub resources: u64,
    /// Rows in the table: one per Patient resource.
    pub patients: usize,
    /// Non-Patient resources that fed at least one column.
    pub used: u64,
    /// Resources of a mapped type whose subject is not a Patient in the export (skipped).
    pub unlinked: u64,
    /// Resource type -> count, for the types the mapping does not use (Patient excluded).
    pub ignored: BTreeMap<String, u64>,
}

/// Reads the FHIR Bulk Data export in `dir` (every `*.ndjson` file in it, in name order, not
/// recursively) into a table with one row per Patient, in order of first appearance, and the
/// columns of `mapping` ([`FhirMapping::columns`]). An export without Patients gives a table
/// without rows; the caller decides whether that is an error.
pub fn read_export(dir: &Path, mapping: &FhirMapping) -> Result<(RawTable, FhirReport), DataError> {
    read_export_with_limit(dir, mapping, MAX_LINE_BYTES)
}

fn read_export_with_limit(
    dir: &Path,
    mapping: &FhirMapping,
    max_line: usize,
) -> Result<(RawTable, FhirReport), DataError> {
    let files = ndjson_files(dir)?;
    let plan = Plan::new(mapping);
    let mut report = FhirReport {
        files: files.len(),
        resources: 0,
        patients: 0,
        used: 0,
        unlinked: 0,
        ignored: BTreeMap::new(),
    };

    // Pass 1: every line is checked; Patients make the rows; other mapped types are noted.
    let mut patients = Patients::new(plan.patient_columns.len());
    let mut revisit = Vec::new();
    for (file_index, file) in files.iter().enumerate() {
        let mut has_linked = false;
        for_each_line(file, max_line, |line, bytes| {
            let resource_type = resource_type(bytes).map_err(|m| format_error(file, line, m))?;
            report.resources += 1;
            if resource_type == PATIENT {
                let resource = parse_resource(bytes).map_err(|m| format_error(file, line, m))?;
                patients.add(&resource, &plan, &files, file_index, line)?;
            } else if plan.by_type.contains_key(resource_type.as_str()) {
                has_linked = true;
            } else {
                *report.ignored.entry(resource_type).or_default() += 1;
            }
            Ok(())
        })?;
        if has_linked {
            revisit.push(file);
        }
    }

    // Pass 2: the other mapped resources, folded into per-patient aggregates.
    let rows = patients.first_seen.len();
    let mut accumulators: Vec<Accumulator<'_>> = plan
        .linked
        .iter()
        .map(|column| Accumulator::new(column, rows))
        .collect();
    for file in revisit {
        for_each_line(file, max_line, |line, bytes| {
            let resource =
                parse_pruned(bytes, &plan.keep).map_err(|m| format_error(file, line, m))?;
            let Some(resource_type) = resource.get("resourceType").and_then(Value::as_str) else {
                return Ok(());
            };
            let Some(columns) = plan.by_type.get(resource_type) else {
                return Ok(());
            };
            let patient = patient_reference(&resource)
                .map_err(|m| format_error(file, line, format!("{resource_type} {m}")))?;
            let Some(&row) = patients.rows.get(patient) else {
                report.unlinked += 1;
                return Ok(());
            };
            let codings = codings(&resource);
            let mut date = None;
            let mut fed = false;
            for &j in columns {
                fed |= accumulators[j]
                    .add(row, &resource, &codings, &mut date)
                    .map_err(|m| format_error(file, line, m))?;
            }
            if fed {
                report.used += 1;
            }
            Ok(())
        })?;
    }

    // The table, in mapping order.
    report.patients = rows;
    let mut out: Vec<Vec<Option<String>>> = vec![Vec::new(); mapping.columns.len()];
    for (column, cells) in plan.patient_columns.iter().zip(patients.cells) {
        out[column.index] = cells;
    }
    for (column, accumulator) in plan.linked.iter().zip(accumulators) {
        out[column.index] = accumulator.finish();
    }
    let mut cells = Vec::with_capacity(out.len() + 1);
    if mapping.id.is_some() {
        let mut ids = vec![None; rows];
        for (id, row) in patients.rows {
            ids[row] = Some(id);
        }
        cells.push(ids);
    }
    cells.extend(out);
    let table =
        RawTable::from_columns(mapping.columns(), cells)?.with_source(&dir.display().to_string());
    Ok((table, report))
}

/// The mapping's columns grouped for reading.
struct Plan<'m> {
    patient_columns: Vec<PatientColumn<'m>>,
    linked: Vec<LinkedColumn<'m>>,
    /// Resource type -> indices into `linked`.
    by_type: HashMap<&'m str, Vec<usize>>,
    /// The top-level members of a linked resource that are read; the others are skipped
    /// without being built (narrative text, identifiers, ... are most of an export).
    keep: HashSet<&'m str>,
}

struct PatientColumn<'m> {
    /// Position among the mapping's columns.
    index: usize,
    name: &'m str,
    path: &'m FieldPath,
    age_at: Option<Date>,
}

struct LinkedColumn<'m> {
    index: usize,
    name: &'m str,
    codes: &'m [Token],
    aggregate: &'m Aggregate,
}

impl<'m> Plan<'m> {
    fn new(mapping: &'m FhirMapping) -> Self {
        let mut plan = Plan {
            patient_columns: Vec::new(),
            linked: Vec::new(),
            by_type: HashMap::new(),
            keep: ["resourceType", "subject", "patient", "code"]
                .into_iter()
                .chain(DATE_FIELDS.iter().map(|field| field[0]))
                .collect(),
        };
        for (index, column) in mapping.columns.iter().enumerate() {
            match &column.source {
                ColumnSource::Patient { path, age_at } => {
                    plan.patient_columns.push(PatientColumn {
                        index,
                        name: &column.name,
                        path,
                        age_at: *age_at,
                    });
                }
                ColumnSource::Linked {
                    resource,
                    codes,
                    aggregate,
                } => {
                    if let Aggregate::Pick { value, .. }
                    | Aggregate::Extreme { value, .. }
                    | Aggregate::Mean { value } = aggregate
                    {
                        plan.keep.extend(value.segments.first().map(String::as_str));
                    }
                    plan.by_type
                        .entry(resource.as_str())
                        .or_default()
                        .push(plan.linked.len());
                    plan.linked.push(LinkedColumn {
                        index,
                        name: &column.name,
                        codes,
                        aggregate,
                    });
                }
            }
        }
        plan
    }
}

impl PatientColumn<'_> {
    fn cell(&self, patient: &Value) -> Result<Option<String>, String> {
        let name = self.name;
        let Some(value) = self
            .path
            .lookup(patient)
            .map_err(|m| format!("column `{name}`: {m}"))?
        else {
            return Ok(None);
        };
        let Some(at) = self.age_at else {
            return scalar_text(value).map_err(|kind| not_single_value(name, self.path, kind));
        };
        if value.is_null() {
            return Ok(None);
        }
        let path = &self.path.text;
        let Some(text) = value.as_str() else {
            return Err(format!(
                "column `{name}`: `{path}` is {}, not a date",
                short(value)
            ));
        };
        let birth = parse_fhir_datetime(text).ok_or_else(|| {
            format!(
                "column `{name}`: `{path}` = `{text}` is not a FHIR date (YYYY, YYYY-MM or \
                 YYYY-MM-DD)"
            )
        })?;
        let age = birth.age_at(at).ok_or_else(|| {
            format!("column `{name}`: `{path}` = `{text}` is after age_at = {at}")
        })?;
        Ok(Some(age.to_string()))
    }
}

/// The rows: one per Patient, with the cells of the Patient columns.
struct Patients {
    /// Patient id -> row.
    rows: HashMap<String, usize>,
    /// Row -> (file index, line) of its Patient, for duplicate errors.
    first_seen: Vec<(usize, u64)>,
    /// One vector per Patient column of the plan.
    cells: Vec<Vec<Option<String>>>,
}

impl Patients {
    fn new(columns: usize) -> Self {
        Patients {
            rows: HashMap::new(),
            first_seen: Vec::new(),
            cells: vec![Vec::new(); columns],
        }
    }

    fn add(
        &mut self,
        patient: &Value,
        plan: &Plan<'_>,
        files: &[PathBuf],
        file_index: usize,
        line: u64,
    ) -> Result<(), DataError> {
        let file = &files[file_index];
        let id = match patient.get("id") {
            Some(Value::String(id)) if !id.trim().is_empty() => id,
            _ => {
                return Err(format_error(
                    file,
                    line,
                    "Patient has no `id` (a non-empty string); other resources refer to their \
                     Patient by it"
                        .to_owned(),
                ));
            }
        };
        if let Some(&row) = self.rows.get(id) {
            let (first_file, first_line) = self.first_seen[row];
            return Err(format_error(
                file,
                line,
                format!(
                    "Patient `{id}` appears twice; it was first seen at {}",
                    location(&files[first_file], first_line)
                ),
            ));
        }
        let values = plan
            .patient_columns
            .iter()
            .map(|column| column.cell(patient))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| format_error(file, line, m))?;
        self.rows.insert(id.clone(), self.first_seen.len());
        self.first_seen.push((file_index, line));
        for (cells, value) in self.cells.iter_mut().zip(values) {
            cells.push(value);
        }
        Ok(())
    }
}

/// Running aggregate of one linked column, one cell per patient row.
struct Accumulator<'m> {
    name: &'m str,
    codes: &'m [Token],
    state: State<'m>,
}

enum State<'m> {
    Pick {
        value: &'m FieldPath,
        latest: bool,
        /// Best so far: its date (`None`: undated) and value text.
        cells: Vec<Option<(Option<DateKey>, String)>>,
    },
    Extreme {
        value: &'m FieldPath,
        max: bool,
        cells: Vec<Option<(f64, String)>>,
    },
    Mean {
        value: &'m FieldPath,
        cells: Vec<MeanCell>,
    },
    Count {
        /// `(if_present, if_absent)` for `exists`.
        exists: Option<(&'m str, &'m str)>,
        cells: Vec<u64>,
    },
}

/// Compensated (Neumaier) running sum, so that the mean does not drift with many values.
#[derive(Debug, Clone, Copy, Default)]
struct MeanCell {
    sum: f64,
    compensation: f64,
    n: u64,
}

impl MeanCell {
    fn add(&mut self, x: f64) {
        let total = self.sum + x;
        self.compensation += if self.sum.abs() >= x.abs() {
            (self.sum - total) + x
        } else {
            (x - total) + self.sum
        };
        self.sum = total;
        self.n += 1;
    }

    fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| (self.sum + self.compensation) / self.n as f64)
    }
}

impl<'m> Accumulator<'m> {
    fn new(column: &LinkedColumn<'m>, rows: usize) -> Self {
        let state = match column.aggregate {
            Aggregate::Pick { value, latest } => State::Pick {
                value,
                latest: *latest,
                cells: vec![None; rows],
            },
            Aggregate::Extreme { value, max } => State::Extreme {
                value,
                max: *max,
                cells: vec![None; rows],
            },
            Aggregate::Mean { value } => State::Mean {
                value,
                cells: vec![MeanCell::default(); rows],
            },
            Aggregate::Count => State::Count {
                exists: None,
                cells: vec![0; rows],
            },
            Aggregate::Exists {
                if_present,
                if_absent,
            } => State::Count {
                exists: Some((if_present, if_absent)),
                cells: vec![0; rows],
            },
        };
        Accumulator {
            name: column.name,
            codes: column.codes,
            state,
        }
    }

    /// Folds one resource of the column's type into `row`; returns whether it contributed.
    /// `date` caches the resource's date across the columns it feeds.
    fn add(
        &mut self,
        row: usize,
        resource: &Value,
        codings: &[Coding<'_>],
        date: &mut Option<Option<DateKey>>,
    ) -> Result<bool, String> {
        if !matches_codes(self.codes, codings) {
            return Ok(false);
        }
        let name = self.name;
        match &mut self.state {
            State::Count { cells, .. } => {
                cells[row] += 1;
            }
            State::Pick {
                value,
                latest,
                cells,
            } => {
                let found = value
                    .lookup(resource)
                    .map_err(|m| format!("column `{name}`: {m}"))?;
                let Some(found) = found else {
                    return Ok(false);
                };
                let text =
                    scalar_text(found).map_err(|kind| not_single_value(name, value, kind))?;
                let Some(text) = text else {
                    return Ok(false);
                };
                let key = match *date {
                    Some(key) => key,
                    None => {
                        let key = resource_date(resource).map_err(|m| {
                            let aggregate = if *latest { "latest" } else { "earliest" };
                            format!("column `{name}` (aggregate = \"{aggregate}\"): {m}")
                        })?;
                        *date = Some(key);
                        key
                    }
                };
                let cell = &mut cells[row];
                let replace = match cell {
                    None => true,
                    // Ties: the later line wins for `latest`, the earlier one for `earliest`.
                    Some((best, _)) => {
                        if *latest {
                            key >= *best
                        } else {
                            key < *best
                        }
                    }
                };
                if replace {
                    *cell = Some((key, text));
                }
            }
            State::Extreme { value, max, cells } => {
                let aggregate = if *max { "max" } else { "min" };
                let Some((x, text)) = numeric_at(name, aggregate, value, resource)? else {
                    return Ok(false);
                };
                let cell = &mut cells[row];
                let better = match cell {
                    None => true,
                    Some((best, _)) => {
                        if *max {
                            x > *best
                        } else {
                            x < *best
                        }
                    }
                };
                if better {
                    *cell = Some((x, text));
                }
            }
            State::Mean { value, cells } => {
                let Some((x, _)) = numeric_at(name, "mean", value, resource)? else {
                    return Ok(false);
                };
                cells[row].add(x);
            }
        }
        Ok(true)
    }

    fn finish(self) -> Vec<Option<String>> {
        match self.state {
            State::Pick { cells, .. } => cells.into_iter().map(|c| c.map(|(_, t)| t)).collect(),
            State::Extreme { cells, .. } => cells.into_iter().map(|c| c.map(|(_, t)| t)).collect(),
            State::Mean { cells, .. } => cells
                .iter()
                .map(|c| c.mean().map(|m| m.to_string()))
                .collect(),
            State::Count {
                exists: None,
                cells,
            } => cells.iter().map(|n| Some(n.to_string())).collect(),
            State::Count {
                exists: Some((if_present, if_absent)),
                cells,
            } => cells
                .iter()
                .map(|&n| Some(if n > 0 { if_present } else { if_absent }.to_owned()))
                .collect(),
        }
    }
}

/// The Patient id a resource points to, from `subject.reference` or else `patient.reference`.
fn patient_reference(resource: &Value) -> Result<&str, String> {
    let reference = ["subject", "patient"]
        .iter()
        .find_map(|field| resource.get(field)?.get("reference"));
    let Some(reference) = reference else {
        return Err(
            "has no `subject.reference` or `patient.reference`; each mapped resource must point \
             to its Patient, e.g. \"subject\": {\"reference\": \"Patient/123\"}"
                .to_owned(),
        );
    };
    let Some(text) = reference.as_str() else {
        return Err(format!(
            "reference {} is not a string such as \"Patient/123\"",
            short(reference)
        ));
    };
    parse_patient_reference(text).ok_or_else(|| {
        format!(
            "reference `{text}` does not point to a Patient (expected `Patient/<id>` or a URL \
             ending in `/Patient/<id>`)"
        )
    })
}

/// `Patient/<id>`, or a URL ending in `/Patient/<id>`, optionally with `/_history/<version>`.
fn parse_patient_reference(text: &str) -> Option<&str> {
    const MARKER: &str = "/Patient/";
    let mut reference = text.trim();
    if let Some(at) = reference.find("/_history/") {
        reference = &reference[..at];
    }
    let id = match reference.strip_prefix("Patient/") {
        Some(id) => id,
        None => &reference[reference.rfind(MARKER)? + MARKER.len()..],
    };
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// The `.ndjson` files of `dir` (case-insensitive extension, hidden files skipped), by name.
fn ndjson_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let bad_dir = |message: String| DataError::Format {
        source_name: dir.display().to_string(),
        message,
    };
    let metadata = fs::metadata(dir).map_err(|e| DataError::io(dir, e))?;
    if !metadata.is_dir() {
        return Err(bad_dir(
            "not a directory; give the folder of the FHIR Bulk Data export (the one holding \
             Patient.ndjson and the other .ndjson files)"
                .to_owned(),
        ));
    }
    let mut files = Vec::new();
    let mut compressed = 0usize;
    for entry in fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().to_ascii_lowercase();
        // Hidden files include the `._Patient.ndjson` companions that macOS writes on USB
        // drives, which are not NDJSON.
        if name.starts_with('.') {
            continue;
        }
        if name.ends_with(".ndjson") {
            let path = entry.path();
            if path.is_file() {
                files.push(path);
            }
        } else if name.ends_with(".ndjson.gz") {
            compressed += 1;
        }
    }
    if files.is_empty() {
        let hint = if compressed > 0 {
            format!(" ({compressed} .ndjson.gz files are there: decompress them first)")
        } else {
            String::new()
        };
        return Err(bad_dir(format!(
            "no .ndjson file in this directory{hint}; expected a FHIR Bulk Data export \
             (Patient.ndjson, Observation.ndjson, ...)"
        )));
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

fn location(file: &Path, line: u64) -> String {
    format!("{}:{line}", file.display())
}

fn format_error(file: &Path, line: u64, message: String) -> DataError {
    DataError::Format {
        source_name: location(file, line),
        message,
    }
}

fn describe_size(bytes: usize) -> String {
    const MIB: usize = 1024 * 1024;
    if bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// Calls `f` with the 1-based number and the bytes (without line ending) of every non-blank
/// line of `file`; a line over `max_line` bytes is an error, detected without holding it.
fn for_each_line(
    file: &Path,
    max_line: usize,
    mut f: impl FnMut(u64, &[u8]) -> Result<(), DataError>,
) -> Result<(), DataError> {
    let handle = fs::File::open(file).map_err(|e| DataError::io(file, e))?;
    let mut reader = BufReader::with_capacity(64 * 1024, handle);
    let mut buf = Vec::new();
    let mut line = 0u64;
    loop {
        let read = read_line_limited(&mut reader, &mut buf, max_line)
            .map_err(|e| DataError::io(file, e))?;
        line += 1;
        match read {
            LineRead::End => return Ok(()),
            LineRead::TooLong => {
                return Err(format_error(
                    file,
                    line,
                    format!(
                        "line is longer than {}; each line of an NDJSON file must be one FHIR \
                         resource (is this file pretty-printed JSON or not NDJSON at all?)",
                        describe_size(max_line)
                    ),
                ));
            }
            LineRead::Line => {}
        }
        let mut bytes = buf.as_slice();
        if line == 1 {
            bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        f(line, bytes)?;
    }
}

#[derive(Debug, PartialEq)]
enum LineRead {
    /// `buf` holds the next line, without `\n` / `\r\n`.
    Line,
    /// The line is longer than the limit; it was not read whole.
    TooLong,
    /// No more lines.
    End,
}

/// `BufRead::read_until` with a bound on the line length.
fn read_line_limited(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    limit: usize,
) -> io::Result<LineRead> {
    buf.clear();
    // The limit, a possible `\r` and the `\n`; `read_until` stops there (or at the end of the
    // file), so a longer line is never held whole.
    let cap = limit.saturating_add(2);
    // `&mut R` is itself a reader: the limit applies to this call only.
    let mut line = io::Read::take(&mut *reader, u64::try_from(cap).unwrap_or(u64::MAX));
    let read = line.read_until(b'\n', buf)?;
    if read == 0 {
        return Ok(LineRead::End);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if read >= cap {
        return Ok(LineRead::TooLong);
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(if buf.len() > limit {
        LineRead::TooLong
    } else {
        LineRead::Line
    })
}

fn parse_resource(bytes: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(bytes).map_err(|e| json_error(&e))
}

/// A resource with only the top-level members named in `keep`; the others are checked but
/// not built.
fn parse_pruned(bytes: &[u8], keep: &HashSet<&str>) -> Result<Value, String> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let resource = PrunedObject { keep }
        .deserialize(&mut deserializer)
        .map_err(|e| json_error(&e))?;
    deserializer.end().map_err(|e| json_error(&e))?;
    Ok(resource)
}

/// The `resourceType` of a line, checking that the whole line is one JSON object, without
/// building the resource in memory.
fn resource_type(bytes: &[u8]) -> Result<String, String> {
    let head: Head = serde_json::from_slice(bytes).map_err(|e| json_error(&e))?;
    match head.resource_type {
        Some(Value::String(name)) if !name.is_empty() => Ok(name),
        Some(other) => Err(format!(
            "`resourceType` must be a resource type name such as \"Patient\", found {}",
            short(&other)
        )),
        None => Err(
            "the object has no `resourceType`; each line must be one FHIR resource, e.g. \
             {\"resourceType\": \"Patient\", \"id\": \"123\", ...}"
                .to_owned(),
        ),
    }
}

fn json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    // serde_json appends " at line 1 column N"; the file line is named by the caller.
    let detail = text
        .rsplit_once(" at line ")
        .map_or(text.as_str(), |(d, _)| d);
    match e.classify() {
        serde_json::error::Category::Eof => {
            "the line ends in the middle of a JSON value (is it cut short?)".to_owned()
        }
        serde_json::error::Category::Data => format!("not a FHIR resource: {detail}"),
        serde_json::error::Category::Syntax | serde_json::error::Category::Io => {
            format!("invalid JSON at character {}: {detail}", e.column())
        }
    }
}

/// The `resourceType` member of a JSON object; every other member is skipped unparsed.
struct Head {
    resource_type: Option<Value>,
}

impl<'de> Deserialize<'de> for Head {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(HeadVisitor)
    }
}

struct HeadVisitor;

impl<'de> Visitor<'de> for HeadVisitor {
    type Value = Head;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object (one FHIR resource)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Head, A::Error> {
        let mut resource_type = None;
        while let Some(is_type) = map.next_key_seed(IsResourceType)? {
            if is_type {
                resource_type = Some(map.next_value::<Value>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Head { resource_type })
    }
}

/// A JSON object built with only the members named in `keep`.
struct PrunedObject<'k> {
    keep: &'k HashSet<&'k str>,
}

impl<'de> DeserializeSeed<'de> for PrunedObject<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PrunedObject<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object (one FHIR resource)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = serde_json::Map::new();
        while let Some(key) = map.next_key_seed(KeptKey { keep: self.keep })? {
            match key {
                Some(key) => {
                    members.insert(key, map.next_value()?);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(members))
    }
}

/// A map key, allocated only when it is in `keep`.
struct KeptKey<'k> {
    keep: &'k HashSet<&'k str>,
}

impl<'de> DeserializeSeed<'de> for KeptKey<'_> {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeptKey<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.keep.contains(key).then(|| key.to_owned()))
    }
}

/// A map key, compared with `resourceType` without allocating.
struct IsResourceType;

impl<'de> DeserializeSeed<'de> for IsResourceType {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for IsResourceType {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key == "resourceType")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPPING_NAME: &str = "mapping.toml";
    const SCT: &str = "http://snomed.info/sct";
    const WDBC: &str = "https://cohort.example/wdbc";

    fn mapping(text: &str) -> FhirMapping {
        FhirMapping::from_toml(text, MAPPING_NAME).expect("test mapping is valid")
    }

    /// A temporary export folder with the given files, one resource per line.
    fn export(files: &[(&str, Vec<String>)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, lines) in files {
            let mut text = lines.join("\n");
            text.push('\n');
            fs::write(dir.path().join(name), text).expect("write export file");
        }
        dir
    }

    fn patient(id: &str, fields: &str) -> String {
        format!(r#"{{"resourceType":"Patient","id":"{id}"{fields}}}"#)
    }

    /// A resource of `resource_type` pointing to `subject`, coded `system|code`.
    fn coded(resource_type: &str, subject: &str, system: &str, code: &str, fields: &str) -> String {
        format!(
            r#"{{"resourceType":"{resource_type}","subject":{{"reference":"{subject}"}},"code":{{"coding":[{{"system":"{system}","code":"{code}"}}]}}{fields}}}"#
        )
    }

    fn column<'t>(table: &'t RawTable, name: &str) -> Vec<Option<&'t str>> {
        table
            .column(name)
            .unwrap_or_else(|| panic!("no column `{name}`"))
            .iter()
            .map(|c| c.as_deref())
            .collect()
    }

    fn mapping_error(text: &str) -> String {
        match FhirMapping::from_toml(text, MAPPING_NAME) {
            Err(DataError::Mapping {
                source_name,
                message,
            }) => {
                assert_eq!(source_name, MAPPING_NAME);
                message
            }
            other => panic!("expected a mapping error, got {other:?}"),
        }
    }

    /// `(source_name, message)` of the `DataError::Format` a read must fail with.
    fn read_error(result: Result<(RawTable, FhirReport), DataError>) -> (String, String) {
        match result {
            Err(DataError::Format {
                source_name,
                message,
            }) => (source_name, message),
            other => panic!("expected a format error, got {other:?}"),
        }
    }

    const FULL_MAPPING: &str = r#"
        id = "patient_id"

        [[column]]
        name = "sex"
        resource = "Patient"
        path = "gender"

        [[column]]
        name = "age"
        resource = "Patient"
        path = "birthDate"
        age_at = "2024-01-01"

        [[column]]
        name = "state"
        resource = "Patient"
        path = "address.0.state"

        [[column]]
        name = "diagnosis"
        resource = "Condition"
        code = "http://snomed.info/sct|254837009"
        aggregate = "exists"
        if_present = "M"
        if_absent = "B"

        [[column]]
        name = "radius_mean"
        resource = "Observation"
        code = "https://cohort.example/wdbc|radius_mean"
        value = "valueQuantity.value"

        [[column]]
        name = "observations"
        resource = "Observation"
        aggregate = "count"
    "#;

    #[test]
    fn full_export_maps_to_expected_table_and_report() {
        let radius = |subject: &str, date: &str, value: &str| {
            coded(
                "Observation",
                subject,
                WDBC,
                "radius_mean",
                &format!(r#","effectiveDateTime":"{date}","valueQuantity":{{"value":{value}}}"#),
            )
        };
        let dir = export(&[
            (
                "Patient.ndjson",
                vec![
                    patient(
                        "p1",
                        r#","gender":"female","birthDate":"1980-06-15","address":[{"state":"MA"}]"#,
                    ),
                    patient("p2", r#","gender":"male","birthDate":"1975-01-01""#),
                    String::new(),
                    patient("p3", r#","birthDate":"1990""#),
                ],
            ),
            (
                "Condition.ndjson",
                vec![
                    coded("Condition", "Patient/p1", SCT, "254837009", ""),
                    coded("Condition", "Patient/p2", SCT, "38341003", ""),
                    // Not in the export: counted as unlinked.
                    coded("Condition", "Patient/ghost", SCT, "254837009", ""),
                ],
            ),
            (
                "Observation.000.ndjson",
                vec![
                    radius("Patient/p1", "2020-01-01", "12.5"),
                    radius(
                        "https://ehr.example/fhir/Patient/p2",
                        "2021-03-04T10:00:00Z",
                        "14",
                    ),
                ],
            ),
            (
                "Observation.001.ndjson",
                vec![
                    radius("Patient/p1", "2022-05-06", "13.25"),
                    coded("Observation", "Patient/p1", WDBC, "texture_mean", ""),
                ],
            ),
            (
                "Encounter.ndjson",
                vec![
                    r#"{"resourceType":"Encounter","subject":{"reference":"Patient/p1"}}"#.into(),
                    r#"{"resourceType":"Encounter","subject":{"reference":"Patient/p2"}}"#.into(),
                ],
            ),
            ("notes.txt", vec!["not part of the export".into()]),
        ]);
        let mapping = mapping(FULL_MAPPING);
        let (table, report) = read_export(dir.path(), &mapping).expect("export reads");

        assert_eq!(
            table.columns(),
            [
                "patient_id",
                "sex",
                "age",
                "state",
                "diagnosis",
                "radius_mean",
                "observations"
            ]
        );
        assert_eq!(table.columns(), mapping.columns());
        assert_eq!(table.source(), dir.path().display().to_string());
        assert_eq!(table.n_rows(), 3);
        assert_eq!(
            column(&table, "patient_id"),
            [Some("p1"), Some("p2"), Some("p3")]
        );
        assert_eq!(column(&table, "sex"), [Some("female"), Some("male"), None]);
        assert_eq!(column(&table, "age"), [Some("43"), Some("49"), Some("34")]);
        assert_eq!(column(&table, "state"), [Some("MA"), None, None]);
        assert_eq!(
            column(&table, "diagnosis"),
            [Some("M"), Some("B"), Some("B")]
        );
        assert_eq!(
            column(&table, "radius_mean"),
            [Some("13.25"), Some("14"), None]
        );
        assert_eq!(
            column(&table, "observations"),
            [Some("3"), Some("1"), Some("0")]
        );
        assert_eq!(
            report,
            FhirReport {
                files: 5,
                resources: 12,
                patients: 3,
                // Every Observation (counted) and the matching Condition; not the Condition
                // with another code.
                used: 5,
                unlinked: 1,
                ignored: BTreeMap::from([("Encounter".to_owned(), 2)]),
            }
        );
    }

    #[test]
    fn byte_order_mark_and_crlf_endings_are_accepted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let text = format!(
            "\u{feff}{}\r\n\r\n{}\r\n",
            patient("p1", r#","gender":"female""#),
            patient("p2", r#","gender":"male""#)
        );
        fs::write(dir.path().join("Patient.ndjson"), text).expect("write export file");
        let (table, report) = read_export(dir.path(), &sex_mapping()).expect("export reads");
        assert_eq!(column(&table, "sex"), [Some("female"), Some("male")]);
        assert_eq!(report.resources, 2);
    }

    #[test]
    fn mapping_without_id_leaves_ids_out() {
        let dir = export(&[(
            "Patient.ndjson",
            vec![patient("p1", r#","gender":"other""#)],
        )]);
        let mapping = mapping(
            r#"
            [[column]]
            name = "sex"
            resource = "Patient"
            path = "gender"
            "#,
        );
        assert_eq!(mapping.columns(), ["sex"]);
        let (table, report) = read_export(dir.path(), &mapping).expect("export reads");
        assert_eq!(table.columns(), ["sex"]);
        assert_eq!(column(&table, "sex"), [Some("other")]);
        assert_eq!(report.used, 0);
    }

    #[test]
    fn aggregates_latest_earliest_min_max_mean_count_exists() {
        let obs = |subject: &str, code: &str, fields: &str| {
            coded("Observation", subject, "http://loinc.org", code, fields)
        };
        let dir = export(&[
            (
                "Patient.ndjson",
                vec![patient("p1", ""), patient("p2", ""), patient("p3", "")],
            ),
            (
                "Observation.ndjson",
                vec![
                    obs(
                        "Patient/p1",
                        "x",
                        r#","effectiveDateTime":"2020-01-01","valueQuantity":{"value":5}"#,
                    ),
                    obs(
                        "Patient/p1",
                        "x",
                        r#","effectivePeriod":{"start":"2019-06"},"valueQuantity":{"value":7}"#,
                    ),
                    // Undated: sorts before every dated resource.
                    obs("Patient/p1", "x", r#","valueQuantity":{"value":100}"#),
                    // 2020-12-31T19:00Z, one hour before the next one.
                    obs(
                        "Patient/p1",
                        "x",
                        r#","effectiveDateTime":"2021-01-01T00:00:00+05:00","valueQuantity":{"value":3}"#,
                    ),
                    obs(
                        "Patient/p1",
                        "x",
                        r#","issued":"2020-12-31T20:00:00.000Z","valueQuantity":{"value":4}"#,
                    ),
                    // Latest of all, but without a value: skipped by the value aggregates.
                    obs("Patient/p1", "x", r#","effectiveDateTime":"2022-01-01""#),
                    obs(
                        "Patient/p1",
                        "y",
                        r#","effectiveDateTime":"2023-01-01","valueQuantity":{"value":1000}"#,
                    ),
                    // Equal dates: latest takes the later line, earliest the earlier one. A
                    // number written as a string is read as a number and kept as written.
                    obs(
                        "Patient/p3",
                        "x",
                        r#","effectiveDateTime":"2019-06","valueQuantity":{"value":"7"}"#,
                    ),
                    obs(
                        "Patient/p3",
                        "x",
                        r#","effectiveDateTime":"2019-06-01T00:00:00Z","valueQuantity":{"value":8}"#,
                    ),
                ],
            ),
        ]);
        let mut text = String::new();
        for (name, aggregate, with_value) in [
            ("latest", "latest", true),
            ("earliest", "earliest", true),
            ("min", "min", true),
            ("max", "max", true),
            ("mean", "mean", true),
            ("count", "count", false),
            ("exists", "exists", false),
        ] {
            text.push_str(&format!(
                "[[column]]\nname = \"{name}\"\nresource = \"Observation\"\ncode = [\"http://loinc.org|x\", \"other|x\"]\naggregate = \"{aggregate}\"\n"
            ));
            if with_value {
                text.push_str("value = \"valueQuantity.value\"\n");
            }
        }
        text.push_str(
            "[[column]]\nname = \"all\"\nresource = \"Observation\"\naggregate = \"count\"\n",
        );
        text.push_str(
            "[[column]]\nname = \"y_seen\"\nresource = \"Observation\"\ncode = \"y\"\naggregate = \"exists\"\nif_absent = \"\"\n",
        );
        let (table, report) = read_export(dir.path(), &mapping(&text)).expect("export reads");
        assert_eq!(column(&table, "latest"), [Some("4"), None, Some("8")]);
        assert_eq!(column(&table, "earliest"), [Some("100"), None, Some("7")]);
        assert_eq!(column(&table, "min"), [Some("3"), None, Some("7")]);
        assert_eq!(column(&table, "max"), [Some("100"), None, Some("8")]);
        assert_eq!(column(&table, "mean"), [Some("23.8"), None, Some("7.5")]);
        assert_eq!(column(&table, "count"), [Some("6"), Some("0"), Some("2")]);
        assert_eq!(
            column(&table, "exists"),
            [Some("yes"), Some("no"), Some("yes")]
        );
        assert_eq!(column(&table, "all"), [Some("7"), Some("0"), Some("2")]);
        // An empty `if_absent` is a missing cell.
        assert_eq!(column(&table, "y_seen"), [Some("yes"), None, None]);
        assert_eq!(report.used, 9);
        assert_eq!(report.unlinked, 0);
    }

    #[test]
    fn code_tokens_match_system_and_code() {
        let dir = export(&[
            ("Patient.ndjson", vec![patient("p1", "")]),
            ("Condition.ndjson", vec![
                coded("Condition", "Patient/p1", SCT, "1", ""),
                coded("Condition", "Patient/p1", "http://other", "1", ""),
                r#"{"resourceType":"Condition","subject":{"reference":"Patient/p1"},"code":{"coding":[{"code":"1"}]}}"#.into(),
            ]),
        ]);
        let (table, _) = read_export(
            dir.path(),
            &mapping(
                r#"
                [[column]]
                name = "any_system"
                resource = "Condition"
                code = "1"
                aggregate = "count"

                [[column]]
                name = "snomed"
                resource = "Condition"
                code = "http://snomed.info/sct|1"
                aggregate = "count"

                [[column]]
                name = "no_system"
                resource = "Condition"
                code = "|1"
                aggregate = "count"

                [[column]]
                name = "other_code"
                resource = "Condition"
                code = ["http://snomed.info/sct|2"]
                aggregate = "count"
                "#,
            ),
        )
        .expect("export reads");
        assert_eq!(column(&table, "any_system"), [Some("3")]);
        assert_eq!(column(&table, "snomed"), [Some("1")]);
        assert_eq!(column(&table, "no_system"), [Some("1")]);
        assert_eq!(column(&table, "other_code"), [Some("0")]);
    }

    #[test]
    fn age_at_on_full_and_partial_dates() {
        let dir = export(&[(
            "Patient.ndjson",
            vec![
                patient("full", r#","birthDate":"1980-06-15""#),
                patient("year", r#","birthDate":"1970""#),
                patient("month", r#","birthDate":"1970-05""#),
                patient("leap", r#","birthDate":"2000-02-29""#),
                patient("datetime", r#","birthDate":"1980-06-15T08:30:00+01:00""#),
                patient("unknown", ""),
            ],
        )]);
        let mut text = String::new();
        for (name, at) in [
            ("at_new_year", "2024-01-01"),
            ("at_birthday", "2024-06-15"),
            ("at_feb_28", "2023-02-28"),
            ("at_mar_1", "2023-03-01"),
        ] {
            text.push_str(&format!(
                "[[column]]\nname = \"{name}\"\nresource = \"Patient\"\npath = \"birthDate\"\nage_at = \"{at}\"\n"
            ));
        }
        let (table, _) = read_export(dir.path(), &mapping(&text)).expect("export reads");
        let ages = |year: &'static str, full, month, leap| {
            [
                Some(full),
                Some(year),
                Some(month),
                Some(leap),
                Some(full),
                None,
            ]
        };
        assert_eq!(column(&table, "at_new_year"), ages("54", "43", "53", "23"));
        assert_eq!(column(&table, "at_birthday"), ages("54", "44", "54", "24"));
        assert_eq!(column(&table, "at_feb_28"), ages("53", "42", "52", "22"));
        assert_eq!(column(&table, "at_mar_1"), ages("53", "42", "52", "23"));
    }

    #[test]
    fn age_at_rejects_bad_and_future_birth_dates() {
        let one_column = r#"
            [[column]]
            name = "age"
            resource = "Patient"
            path = "birthDate"
            age_at = "2024-01-01"
        "#;
        for (birth_date, expected) in [
            ("\"1980-13-01\"", "is not a FHIR date"),
            ("\"15/06/1980\"", "is not a FHIR date"),
            ("1980", "not a date"),
            ("\"2024-05\"", "is after age_at = 2024-01-01"),
        ] {
            let dir = export(&[(
                "Patient.ndjson",
                vec![
                    patient("ok", r#","birthDate":"1980""#),
                    patient("bad", &format!(r#","birthDate":{birth_date}"#)),
                ],
            )]);
            let (source, message) = read_error(read_export(dir.path(), &mapping(one_column)));
            assert!(source.ends_with("Patient.ndjson:2"), "{source}");
            assert!(message.contains("column `age`"), "{message}");
            assert!(message.contains(expected), "{message}");
        }
    }

    #[test]
    fn validation_errors_name_the_column() {
        let patient_column = |extra: &str| {
            format!(
                "[[column]]\nname = \"sex\"\nresource = \"Patient\"\npath = \"gender\"\n{extra}"
            )
        };
        let observation =
            |extra: &str| format!("[[column]]\nname = \"r\"\nresource = \"Observation\"\n{extra}");
        let cases: Vec<(String, Vec<&str>)> = vec![
            ("id = \"pid\"".into(), vec!["no [[column]]"]),
            (format!("id = \" \"\n{}", patient_column("")), vec!["`id`", "empty"]),
            (
                "[[column]]\nname = \"\"\nresource = \"Patient\"\npath = \"gender\"".into(),
                vec!["[[column]] #1", "`name`", "empty"],
            ),
            (
                "[[column]]\nresource = \"Patient\"\npath = \"gender\"".into(),
                vec!["[[column]] #1", "no `name`"],
            ),
            (
                format!("{}{}", patient_column(""), patient_column("")),
                vec!["[[column]] #2 (`sex`)", "already used by [[column]] #1 (`sex`)"],
            ),
            (
                format!("id = \"sex\"\n{}", patient_column("")),
                vec!["[[column]] #1 (`sex`)", "already used by `id`"],
            ),
            (
                "[[column]]\nname = \"sex\"\nresource = \"Patient\"".into(),
                vec!["`sex`", "needs `path`"],
            ),
            (patient_column(""), vec![]),
            (patient_column("code = \"1\""), vec!["`sex`", "`code` is not allowed"]),
            (patient_column("value = \"x\""), vec!["`sex`", "`value` is not allowed"]),
            (
                patient_column("aggregate = \"latest\""),
                vec!["`sex`", "`aggregate` is not allowed"],
            ),
            (
                patient_column("if_present = \"M\""),
                vec!["`sex`", "`if_present` is not allowed"],
            ),
            (
                patient_column("if_absent = \"B\""),
                vec!["`sex`", "`if_absent` is not allowed"],
            ),
            (
                "[[column]]\nname = \"sex\"\nresource = \"Patient\"\npath = \"name..family\"".into(),
                vec!["`sex`", "`path`", "name..family"],
            ),
            (
                observation("value = \"v\"\naggregate = \"avg\""),
                vec!["`r`", "unknown aggregate `avg`"],
            ),
            (observation(""), vec!["`r`", "\"latest\" needs `value`"]),
            (
                observation("aggregate = \"earliest\""),
                vec!["`r`", "\"earliest\" needs `value`"],
            ),
            (observation("aggregate = \"min\""), vec!["`r`", "\"min\" needs `value`"]),
            (observation("aggregate = \"max\""), vec!["`r`", "\"max\" needs `value`"]),
            (observation("aggregate = \"mean\""), vec!["`r`", "\"mean\" needs `value`"]),
            (
                observation("aggregate = \"count\"\nvalue = \"v\""),
                vec!["`r`", "`value` is not used"],
            ),
            (
                "[[column]]\nname = \"age\"\nresource = \"Patient\"\npath = \"birthDate\"\nage_at = \"2024-02-30\"".into(),
                vec!["`age`", "age_at = \"2024-02-30\""],
            ),
            (
                "[[column]]\nname = \"age\"\nresource = \"Patient\"\npath = \"birthDate\"\nage_at = \"01/02/2024\"".into(),
                vec!["`age`", "age_at"],
            ),
            (
                "[[column]]\nname = \"age\"\nresource = \"Patient\"\npath = \"birthDate\"\nage_at = \"2024\"".into(),
                vec!["`age`", "age_at"],
            ),
            (
                observation("value = \"v\"\nage_at = \"2024-01-01\""),
                vec!["`r`", "`age_at` is only allowed"],
            ),
            (observation("value = \"v\"\ncode = \"\""), vec!["`r`", "empty token"]),
            (
                observation("value = \"v\"\ncode = [\"a|b\", \" \"]"),
                vec!["`r`", "empty token"],
            ),
            (
                observation("value = \"v\"\ncode = \"http://loinc.org|\""),
                vec!["`r`", "no code after `|`"],
            ),
            (observation("value = \"v\"\ncode = []"), vec!["`r`", "`code = []`"]),
            (observation("value = \"v\"\ncode = 5"), vec!["`r`", "`code` must be"]),
            (observation("value = \"v\"\ncode = [5]"), vec!["`r`", "`code` entries"]),
            (
                observation("aggregate = \"count\"\nif_present = \"M\""),
                vec!["`r`", "`if_present` is only allowed with aggregate = \"exists\""],
            ),
            (
                observation("value = \"v\"\nif_absent = \"B\""),
                vec!["`r`", "`if_absent` is only allowed with aggregate = \"exists\""],
            ),
            (
                observation("value = \"v\"\npath = \"valueQuantity.value\""),
                vec!["`r`", "`path` is only for resource = \"Patient\""],
            ),
            (observation("value = \"v.\""), vec!["`r`", "`value`", "v."]),
            (
                "[[column]]\nname = \"r\"\nvalue = \"v\"".into(),
                vec!["[[column]] #1 (`r`)", "no `resource`"],
            ),
            (
                "[[column]]\nname = \"r\"\nresource = \"observation\"\nvalue = \"v\"".into(),
                vec!["`r`", "\"observation\" is not a FHIR resource type"],
            ),
            // Typos are errors too; the TOML parser names the line.
            (observation("value = \"v\"\nagregate = \"mean\""), vec!["agregate", "line 5"]),
            ("[[column]]\nname = 3".into(), vec!["line 2"]),
        ];
        for (text, expected) in cases {
            if expected.is_empty() {
                // A valid variation, to make sure the helpers build valid columns.
                mapping(&text);
                continue;
            }
            let message = mapping_error(&text);
            for part in expected {
                assert!(
                    message.contains(part),
                    "mapping\n{text}\nerror `{message}` lacks `{part}`"
                );
            }
        }
    }

    #[test]
    fn load_reads_the_mapping_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("fhir.toml");
        fs::write(&path, FULL_MAPPING).expect("write mapping");
        let loaded = FhirMapping::load(&path).expect("mapping loads");
        assert_eq!(loaded, mapping(FULL_MAPPING));

        fs::write(&path, "[[column]]\nname = \"x\"\nresource = \"Patient\"").expect("write");
        match FhirMapping::load(&path) {
            Err(DataError::Mapping { source_name, .. }) => {
                assert_eq!(source_name, path.display().to_string());
            }
            other => panic!("expected a mapping error, got {other:?}"),
        }
        let missing = dir.path().join("missing.toml");
        assert!(matches!(
            FhirMapping::load(&missing),
            Err(DataError::Io { .. })
        ));
    }

    fn sex_mapping() -> FhirMapping {
        mapping(
            r#"
            [[column]]
            name = "sex"
            resource = "Patient"
            path = "gender"
            "#,
        )
    }

    #[test]
    fn invalid_json_line_reports_file_and_line() {
        for (line, expected) in [
            (r#"{"resourceType":"Patient","id":"#, "cut short"),
            (r#"{"resourceType":"Patient" "id":"p2"}"#, "invalid JSON"),
            (r#"{"resourceType":"Patient","id":"p2"} x"#, "invalid JSON"),
            ("[1, 2]", "not a FHIR resource"),
            ("\"Patient\"", "not a FHIR resource"),
            (r#"{"id":"p2"}"#, "no `resourceType`"),
            (r#"{"resourceType":7,"id":"p2"}"#, "found 7"),
            (r#"{"resourceType":"","id":"p2"}"#, "`resourceType`"),
        ] {
            let dir = export(&[
                ("Condition.ndjson", vec![]),
                (
                    "Patient.ndjson",
                    vec![patient("p1", ""), String::new(), line.to_owned()],
                ),
            ]);
            let (source, message) = read_error(read_export(dir.path(), &sex_mapping()));
            let expected_source = format!("{}:3", dir.path().join("Patient.ndjson").display());
            assert_eq!(source, expected_source, "{line}");
            assert!(message.contains(expected), "{line}: {message}");
        }
    }

    #[test]
    fn patient_without_id_or_with_duplicate_id_is_rejected() {
        let dir = export(&[
            (
                "Patient.000.ndjson",
                vec![patient("p1", ""), patient("p2", "")],
            ),
            (
                "Patient.001.ndjson",
                vec![patient("p3", ""), patient("p1", "")],
            ),
        ]);
        let (source, message) = read_error(read_export(dir.path(), &sex_mapping()));
        assert!(source.ends_with("Patient.001.ndjson:2"), "{source}");
        assert!(message.contains("`p1`"), "{message}");
        assert!(message.contains("Patient.000.ndjson:1"), "{message}");

        let dir = export(&[(
            "Patient.ndjson",
            vec![r#"{"resourceType":"Patient","gender":"male"}"#.into()],
        )]);
        let (source, message) = read_error(read_export(dir.path(), &sex_mapping()));
        assert!(source.ends_with("Patient.ndjson:1"), "{source}");
        assert!(message.contains("no `id`"), "{message}");
    }

    #[test]
    fn non_numeric_value_is_rejected_for_numeric_aggregates() {
        for (aggregate, value) in [
            ("mean", r#""abc""#),
            ("min", "true"),
            ("max", r#""NaN""#),
            ("mean", r#"{"v":1}"#),
        ] {
            let dir = export(&[
                ("Patient.ndjson", vec![patient("p1", "")]),
                (
                    "Observation.ndjson",
                    vec![
                        coded(
                            "Observation",
                            "Patient/p1",
                            WDBC,
                            "radius_mean",
                            r#","valueQuantity":{"value":"12.5"}"#,
                        ),
                        coded(
                            "Observation",
                            "Patient/p1",
                            WDBC,
                            "radius_mean",
                            &format!(r#","valueQuantity":{{"value":{value}}}"#),
                        ),
                    ],
                ),
            ]);
            let text = format!(
                "[[column]]\nname = \"radius_mean\"\nresource = \"Observation\"\nvalue = \"valueQuantity.value\"\naggregate = \"{aggregate}\""
            );
            let (source, message) = read_error(read_export(dir.path(), &mapping(&text)));
            assert!(source.ends_with("Observation.ndjson:2"), "{source}");
            assert!(message.contains("column `radius_mean`"), "{message}");
            assert!(message.contains("valueQuantity.value"), "{message}");
            if value.starts_with('{') {
                assert!(message.contains("an object"), "{message}");
            } else {
                assert!(message.contains(value), "{message}");
                assert!(message.contains("not a number"), "{message}");
            }
        }
    }

    #[test]
    fn object_or_list_at_a_path_is_rejected() {
        let dir = export(&[(
            "Patient.ndjson",
            vec![patient(
                "p1",
                r#","address":[{"state":"MA"}],"name":[{"family":"Doe"}]"#,
            )],
        )]);
        for (path, expected) in [
            ("address", "is a list"),
            ("address.0", "is an object"),
            ("name.family", "`name.0.family`"),
        ] {
            let text =
                format!("[[column]]\nname = \"x\"\nresource = \"Patient\"\npath = \"{path}\"");
            let (source, message) = read_error(read_export(dir.path(), &mapping(&text)));
            assert!(source.ends_with("Patient.ndjson:1"), "{source}");
            assert!(message.contains("column `x`"), "{message}");
            assert!(message.contains(expected), "{path}: {message}");
        }
    }

    #[test]
    fn references_are_checked() {
        let condition_count = r#"
            [[column]]
            name = "conditions"
            resource = "Condition"
            aggregate = "count"

            [[column]]
            name = "allergies"
            resource = "AllergyIntolerance"
            aggregate = "count"
        "#;
        // Accepted forms: relative, full URL, versioned, and `patient` instead of `subject`.
        let dir = export(&[
            ("Patient.ndjson", vec![patient("p1", "")]),
            ("Condition.ndjson", vec![
                r#"{"resourceType":"Condition","subject":{"reference":"Patient/p1"}}"#.into(),
                r#"{"resourceType":"Condition","subject":{"reference":"https://ehr.example/fhir/Patient/p1/_history/3"}}"#.into(),
                r#"{"resourceType":"Condition","subject":{"reference":"Patient/p9"}}"#.into(),
            ]),
            ("AllergyIntolerance.ndjson", vec![
                r#"{"resourceType":"AllergyIntolerance","patient":{"reference":"Patient/p1"}}"#.into(),
            ]),
        ]);
        let (table, report) =
            read_export(dir.path(), &mapping(condition_count)).expect("export reads");
        assert_eq!(column(&table, "conditions"), [Some("2")]);
        assert_eq!(column(&table, "allergies"), [Some("1")]);
        assert_eq!((report.used, report.unlinked), (3, 1));

        for (bad, expected) in [
            (
                r#"{"resourceType":"Condition","id":"c2"}"#,
                "no `subject.reference`",
            ),
            (
                r#"{"resourceType":"Condition","subject":{"identifier":{"value":"1"}}}"#,
                "no `subject.reference`",
            ),
            (
                r#"{"resourceType":"Condition","subject":{"reference":"Group/g1"}}"#,
                "`Group/g1` does not point to a Patient",
            ),
            (
                r#"{"resourceType":"Condition","subject":{"reference":7}}"#,
                "not a string",
            ),
        ] {
            let dir = export(&[
                ("Patient.ndjson", vec![patient("p1", "")]),
                (
                    "Condition.ndjson",
                    vec![
                        r#"{"resourceType":"Condition","subject":{"reference":"Patient/p1"}}"#
                            .into(),
                        bad.to_owned(),
                    ],
                ),
            ]);
            let (source, message) = read_error(read_export(dir.path(), &mapping(condition_count)));
            assert!(source.ends_with("Condition.ndjson:2"), "{source}");
            assert!(message.starts_with("Condition "), "{message}");
            assert!(message.contains(expected), "{message}");
        }
    }

    #[test]
    fn bad_resource_date_is_rejected_for_latest() {
        let dir = export(&[
            ("Patient.ndjson", vec![patient("p1", "")]),
            (
                "Observation.ndjson",
                vec![coded(
                    "Observation",
                    "Patient/p1",
                    WDBC,
                    "radius_mean",
                    r#","effectiveDateTime":"2020-02-30","valueString":"x""#,
                )],
            ),
        ]);
        let text = "[[column]]\nname = \"r\"\nresource = \"Observation\"\nvalue = \"valueString\"";
        let (source, message) = read_error(read_export(dir.path(), &mapping(text)));
        assert!(source.ends_with("Observation.ndjson:1"), "{source}");
        assert!(message.contains("column `r`"), "{message}");
        assert!(
            message.contains("`effectiveDateTime` = `2020-02-30`"),
            "{message}"
        );
    }

    #[test]
    fn over_long_line_is_rejected_without_reading_it() {
        let short = patient("p1", "");
        // Exactly at the limit, with a CRLF ending.
        let limit = 64;
        let padding = "x".repeat(limit - patient("p2", r#","n":"""#).len());
        let at_limit = patient("p2", &format!(r#","n":"{padding}""#));
        assert_eq!(at_limit.len(), limit);
        let too_long = patient("p3", &format!(r#","n":"{padding}y""#));

        let dir = export(&[(
            "Patient.ndjson",
            vec![short.clone(), format!("{at_limit}\r")],
        )]);
        let (table, _) =
            read_export_with_limit(dir.path(), &sex_mapping(), limit).expect("export reads");
        assert_eq!(table.n_rows(), 2);

        let dir = export(&[("Patient.ndjson", vec![short, at_limit, too_long])]);
        let (source, message) =
            read_error(read_export_with_limit(dir.path(), &sex_mapping(), limit));
        assert!(source.ends_with("Patient.ndjson:3"), "{source}");
        assert!(message.contains("longer than 64 bytes"), "{message}");
        assert_eq!(describe_size(MAX_LINE_BYTES), "16 MiB");
    }

    #[test]
    fn line_reader_handles_chunk_boundaries_and_limits() {
        let text = b"ab\ncdefgh\r\n\nxyz";
        // A tiny buffer makes lines span several reads.
        let mut reader = BufReader::with_capacity(4, &text[..]);
        let mut buf = Vec::new();
        let mut lines = Vec::new();
        loop {
            match read_line_limited(&mut reader, &mut buf, 6).expect("in-memory read") {
                LineRead::Line => lines.push(String::from_utf8_lossy(&buf).into_owned()),
                LineRead::End => break,
                LineRead::TooLong => panic!("no line is over 6 bytes"),
            }
        }
        assert_eq!(lines, ["ab", "cdefgh", "", "xyz"]);

        let mut reader = BufReader::with_capacity(4, &text[..]);
        let read = |reader: &mut BufReader<&[u8]>, buf: &mut Vec<u8>| {
            read_line_limited(reader, buf, 5).expect("in-memory read")
        };
        assert_eq!(read(&mut reader, &mut buf), LineRead::Line);
        assert_eq!(read(&mut reader, &mut buf), LineRead::TooLong);
        // The reader never held more than the limit and a line ending.
        assert!(buf.len() <= 7, "{}", buf.len());
    }

    #[test]
    fn directory_errors_are_clear() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (source, message) = read_error(read_export(dir.path(), &sex_mapping()));
        assert_eq!(source, dir.path().display().to_string());
        assert!(message.contains("no .ndjson file"), "{message}");

        fs::write(dir.path().join("Patient.ndjson.gz"), b"").expect("write");
        fs::write(dir.path().join("._Patient.ndjson"), b"\x00\x05").expect("write");
        let (_, message) = read_error(read_export(dir.path(), &sex_mapping()));
        assert!(message.contains("decompress"), "{message}");

        let file = dir.path().join("Patient.ndjson.gz");
        let (source, message) = read_error(read_export(&file, &sex_mapping()));
        assert_eq!(source, file.display().to_string());
        assert!(message.contains("not a directory"), "{message}");

        assert!(matches!(
            read_export(&dir.path().join("missing"), &sex_mapping()),
            Err(DataError::Io { .. })
        ));
    }

    #[test]
    fn export_without_patients_gives_an_empty_table() {
        let dir = export(&[(
            "Observation.ndjson",
            vec![
                coded(
                    "Observation",
                    "Patient/p1",
                    WDBC,
                    "radius_mean",
                    r#","valueQuantity":{"value":1}"#,
                ),
                r#"{"resourceType":"Encounter"}"#.into(),
            ],
        )]);
        let (table, report) = read_export(dir.path(), &mapping(FULL_MAPPING)).expect("reads");
        assert_eq!(table.n_rows(), 0);
        assert_eq!(table.columns(), mapping(FULL_MAPPING).columns());
        assert_eq!(
            report,
            FhirReport {
                files: 1,
                resources: 2,
                patients: 0,
                used: 0,
                unlinked: 1,
                ignored: BTreeMap::from([("Encounter".to_owned(), 1)]),
            }
        );
    }

    #[test]
    fn fhir_dates_parse_and_sort() {
        let key = |text: &str| {
            parse_fhir_datetime(text)
                .unwrap_or_else(|| panic!("`{text}` parses"))
                .sort_key()
        };
        assert_eq!(key("1970-01-01"), (0, 0));
        assert_eq!(key("1970"), (0, 0));
        assert_eq!(key("1970-01-02T00:00:00Z"), (86_400, 0));
        assert_eq!(key("1969-12-31"), (-86_400, 0));
        assert_eq!(key("2000-03-01"), (951_868_800, 0));
        assert_eq!(
            key("2021-01-01T00:00:00+05:00"),
            key("2020-12-31T19:00:00Z")
        );
        assert_eq!(
            key("2020-12-31T19:00:00-00:30"),
            key("2020-12-31T19:30:00Z")
        );
        assert_eq!(
            key("2020-01-01T10:00:00.5Z"),
            (key("2020-01-01T10:00:00Z").0, 500_000_000)
        );
        assert!(key("2020-01-01T10:00:00.5Z") > key("2020-01-01T10:00:00.25Z"));
        assert!(key("2020-06") < key("2020-06-01T00:00:01Z"));
        assert_eq!(key("2020-01-01T10:00"), key("2020-01-01T10:00:00Z"));
        for bad in [
            "",
            "20",
            "2020-1",
            "2020-13",
            "2020-00",
            "2021-02-29",
            "2020-04-31",
            "2020-01-01T",
            "2020-01-01T24:00:00Z",
            "2020-01-01T10:00:00.Z",
            "2020-01-01T10:00:00+1:00",
            "2020-01-01 10:00:00",
            "2020-01-01Z",
            "today",
        ] {
            assert!(
                parse_fhir_datetime(bad).is_none(),
                "`{bad}` should not parse"
            );
        }
        assert_eq!(
            Date::parse_strict("2024-02-29"),
            Some(Date {
                year: 2024,
                month: 2,
                day: 29
            })
        );
        assert_eq!(Date::parse_strict("2023-02-29"), None);
        assert_eq!(Date::parse_strict("2024-02-29T00:00:00Z"), None);
        assert_eq!(Date::parse_strict("2024-02"), None);
    }

    #[test]
    fn mean_is_compensated() {
        let mut cell = MeanCell::default();
        assert_eq!(cell.mean(), None);
        for x in [1e16, 1.0, -1e16, 1.0] {
            cell.add(x);
        }
        assert_eq!(cell.mean(), Some(0.5));
    }
}
