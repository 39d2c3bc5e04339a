//! The `[data]` table of a job file: which column is the outcome and how every other column is
//! to be interpreted.
//!
//! The spec is written once by the study designer and shipped to every hospital, so it must be
//! checkable without any data ([`DataSpec::validate`]); problems that need the file (a missing
//! column, an unparsable cell) are reported later by [`crate::resolve_schema`] and
//! [`crate::LocalDataset`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

use crate::error::DataError;

/// Largest accepted `validation_fraction`; beyond it too little is left to train on.
pub const MAX_VALIDATION_FRACTION: f64 = 0.9;

fn default_validation_fraction() -> f64 {
    0.2
}

/// How one hospital's table maps to features and a binary label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// Name of the outcome column.
    pub label: String,
    /// Label value that counts as class 1.
    pub positive: LabelValue,
    /// If given, label values must be `positive` or `negative`; anything else is an error
    /// instead of silently becoming class 0 (catches typos such as `b` for `B`).
    #[serde(default)]
    pub negative: Option<LabelValue>,
    /// Columns to ignore entirely (identifiers, free text, leakage).
    #[serde(default)]
    pub drop: Vec<String>,
    /// Numeric feature columns; `"*"` means every column not named elsewhere.
    #[serde(default)]
    pub numeric: NumericColumns,
    /// Categorical feature columns with their allowed values, in one-hot order. Listing the
    /// categories up front makes every hospital produce the same feature vector layout even
    /// when a category is absent locally.
    #[serde(default)]
    pub categorical: BTreeMap<String, Vec<String>>,
    /// Fraction of each client's rows held out for local validation.
    #[serde(default = "default_validation_fraction")]
    pub validation_fraction: f64,
    /// Vertical split learning (issue 18): the patient-id column every site has, by which
    /// sites' rows are aligned (private set intersection); never a feature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// A label value as written in the job file.
///
/// TOML authors naturally write `positive = 1` or `positive = true` as well as
/// `positive = "M"`; since cells are compared as text (or numerically, see
/// [`LabelValue::matches`]), all of them are stored as text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelValue(pub String);

impl LabelValue {
    /// Whether a (non-missing) cell denotes this value: equal as trimmed text, or equal as
    /// numbers when both parse, so that `1`, `1.0` and `01` written by different export tools
    /// are the same class.
    pub fn matches(&self, cell: &str) -> bool {
        values_equal(&self.0, cell)
    }
}

/// Text equality after trimming, or numeric equality when both sides parse as finite numbers.
pub(crate) fn values_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim(), b.trim());
    if a == b {
        return true;
    }
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.is_finite() && x == y,
        _ => false,
    }
}

impl fmt::Display for LabelValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for LabelValue {
    fn from(s: &str) -> Self {
        LabelValue(s.to_owned())
    }
}

impl Serialize for LabelValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for LabelValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LabelVisitor;
        impl Visitor<'_> for LabelVisitor {
            type Value = LabelValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a label value (string, integer, float or boolean)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LabelValue, E> {
                Ok(LabelValue(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<LabelValue, E> {
                Ok(LabelValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<LabelValue, E> {
                Ok(LabelValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<LabelValue, E> {
                if v.is_finite() {
                    Ok(LabelValue(v.to_string()))
                } else {
                    Err(E::custom(format!("label value {v} is not a finite number")))
                }
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<LabelValue, E> {
                Ok(LabelValue(v.to_string()))
            }
        }
        deserializer.deserialize_any(LabelVisitor)
    }
}

/// Which columns are numeric features.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NumericColumns {
    /// `"*"`: every column that is not the label, dropped, or categorical.
    #[default]
    All,
    /// Exactly these columns, in this order.
    Listed(Vec<String>),
}

impl Serialize for NumericColumns {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            NumericColumns::All => serializer.serialize_str("*"),
            NumericColumns::Listed(names) => {
                let mut seq = serializer.serialize_seq(Some(names.len()))?;
                for name in names {
                    seq.serialize_element(name)?;
                }
                seq.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for NumericColumns {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NumericVisitor;
        impl<'de> Visitor<'de> for NumericVisitor {
            type Value = NumericColumns;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#""*" or a list of column names"#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<NumericColumns, E> {
                if v == "*" {
                    Ok(NumericColumns::All)
                } else {
                    Err(E::custom(format!(
                        r#"expected "*" or a list of column names, found the string `{v}`"#
                    )))
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NumericColumns, A::Error> {
                let mut names = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(name) = seq.next_element::<String>()? {
                    names.push(name);
                }
                Ok(NumericColumns::Listed(names))
            }
        }
        deserializer.deserialize_any(NumericVisitor)
    }
}

impl DataSpec {
    /// A spec with only the required keys; everything else at its default.
    pub fn new(label: impl Into<String>, positive: impl Into<String>) -> Self {
        DataSpec {
            label: label.into(),
            positive: LabelValue(positive.into()),
            negative: None,
            drop: Vec::new(),
            numeric: NumericColumns::All,
            categorical: BTreeMap::new(),
            validation_fraction: default_validation_fraction(),
            id: None,
        }
    }

    /// Checks that need no data, so that a broken job file is rejected by the coordinator
    /// before any hospital is contacted.
    pub fn validate(&self) -> Result<(), DataError> {
        let label = self.label.trim();
        if label.is_empty() {
            return Err(DataError::spec("data.label", "must not be empty"));
        }
        if self.positive.0.trim().is_empty() {
            return Err(DataError::spec("data.positive", "must not be empty"));
        }
        if let Some(negative) = &self.negative {
            if negative.0.trim().is_empty() {
                return Err(DataError::spec("data.negative", "must not be empty"));
            }
            if values_equal(&negative.0, &self.positive.0) {
                return Err(DataError::spec(
                    "data.negative",
                    format!("`{negative}` is the same value as data.positive"),
                ));
            }
        }

        check_names("data.drop", &self.drop)?;
        if let Some(id) = &self.id {
            if id.trim().is_empty() {
                return Err(DataError::spec("data.id", "must not be empty"));
            }
            if id == label {
                return Err(DataError::spec(
                    "data.id",
                    format!("`{id}` is the label column"),
                ));
            }
        }
        if self.drop.iter().any(|c| c == &self.label) {
            return Err(DataError::spec(
                "data.drop",
                format!("label column `{}` cannot be dropped", self.label),
            ));
        }

        if let NumericColumns::Listed(names) = &self.numeric {
            check_names("data.numeric", names)?;
            for name in names {
                if name == &self.label {
                    return Err(label_as_feature("data.numeric", name));
                }
                if self.drop.contains(name) {
                    return Err(DataError::spec(
                        "data.numeric",
                        format!("column `{name}` is also listed in data.drop"),
                    ));
                }
                if self.categorical.contains_key(name) {
                    return Err(DataError::spec(
                        "data.numeric",
                        format!("column `{name}` is also listed in data.categorical"),
                    ));
                }
            }
        }

        for (column, categories) in &self.categorical {
            let key = format!("data.categorical.{column}");
            if column.trim().is_empty() {
                return Err(DataError::spec("data.categorical", "empty column name"));
            }
            if column == &self.label {
                return Err(label_as_feature("data.categorical", column));
            }
            if self.drop.contains(column) {
                return Err(DataError::spec(
                    "data.categorical",
                    format!("column `{column}` is also listed in data.drop"),
                ));
            }
            if categories.is_empty() {
                return Err(DataError::spec(key, "category list is empty"));
            }
            let mut seen = BTreeSet::new();
            for category in categories {
                let trimmed = category.trim();
                if trimmed.is_empty() {
                    return Err(DataError::spec(key, "empty category name"));
                }
                if !seen.insert(trimmed) {
                    return Err(DataError::spec(
                        key,
                        format!("duplicate category `{category}`"),
                    ));
                }
            }
        }

        let f = self.validation_fraction;
        if !(0.0..=MAX_VALIDATION_FRACTION).contains(&f) {
            return Err(DataError::spec(
                "data.validation_fraction",
                format!("must be between 0 and {MAX_VALIDATION_FRACTION}, got {f}"),
            ));
        }
        Ok(())
    }
}

fn label_as_feature(key: &str, label: &str) -> DataError {
    DataError::spec(
        key,
        format!("label column `{label}` is also listed as a feature"),
    )
}

fn check_names(key: &str, names: &[String]) -> Result<(), DataError> {
    let mut seen = BTreeSet::new();
    for name in names {
        if name.trim().is_empty() {
            return Err(DataError::spec(key, "empty column name"));
        }
        if !seen.insert(name.as_str()) {
            return Err(DataError::spec(
                key,
                format!("column `{name}` is listed twice"),
            ));
        }
    }
    Ok(())
}
