//! The job file's `[preprocessing]` table: every column's statistics given
//! publicly by the model developer (from published reference ranges, or
//! from data the developer holds itself: `cohort data preprocessing`), so
//! that no hospital computes or releases any. Under differential privacy
//! this spends nothing of the hospitals' budgets, where statistics computed
//! from their rows would; on a small consortium it is also far more
//! accurate than statistics noised to a useful epsilon.
//!
//! ```toml
//! [preprocessing.numeric]
//! age = { mean = 61.2, std = 11.8 }            # fill defaults to the mean
//! psa = { mean = 7.4, std = 5.1, fill = 6.2 }
//! [preprocessing.categorical]
//! stage = "II"                                  # the fill of missing cells
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::preprocess::{CategoricalTransform, NumericTransform, Preprocessing, stats_err};
use crate::schema::ResolvedSchema;

/// `[preprocessing]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicPreprocessing {
    /// Every numeric column the job uses.
    #[serde(default)]
    pub numeric: BTreeMap<String, PublicNumeric>,
    /// The fill category of categorical columns; a column left out is
    /// filled with its first declared category.
    #[serde(default)]
    pub categorical: BTreeMap<String, String>,
}

/// One numeric column's public statistics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicNumeric {
    pub mean: f64,
    pub std: f64,
    /// The value of missing cells [default: `mean`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fill: Option<f64>,
}

impl PublicPreprocessing {
    /// Checks the numbers; an error names the key as the job file spells it.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (name, column) in &self.numeric {
            let key = |field: &str| format!("preprocessing.numeric.{name}.{field}");
            if !column.mean.is_finite() {
                return Err((key("mean"), format!("must be finite, got {}", column.mean)));
            }
            if !(column.std.is_finite() && column.std > 0.0) {
                return Err((
                    key("std"),
                    format!("must be finite and > 0, got {}", column.std),
                ));
            }
            if let Some(fill) = column.fill
                && !fill.is_finite()
            {
                return Err((key("fill"), format!("must be finite, got {fill}")));
            }
        }
        Ok(())
    }

    /// The preprocessing of `schema` (the hospitals' agreed columns): every
    /// numeric column must be given, and nothing the schema does not have.
    pub fn for_schema(&self, schema: &ResolvedSchema) -> Result<Preprocessing, DataError> {
        let missing: Vec<&str> = schema
            .numeric
            .iter()
            .filter(|c| !self.numeric.contains_key(*c))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(stats_err(format!(
                "[preprocessing.numeric] gives no statistics for the numeric column(s) {}; \
                 give every one (`cohort data preprocessing` writes the table from reference data)",
                quoted(&missing)
            )));
        }
        let unknown: Vec<&str> = self
            .numeric
            .keys()
            .filter(|c| !schema.numeric.contains(c))
            .chain(
                self.categorical
                    .keys()
                    .filter(|c| !schema.categorical.iter().any(|(name, _)| name == *c)),
            )
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            return Err(stats_err(format!(
                "[preprocessing] names column(s) {} that the job's data does not use",
                quoted(&unknown)
            )));
        }
        let numeric = schema
            .numeric
            .iter()
            .map(|name| {
                let column = self.numeric[name];
                NumericTransform {
                    name: name.clone(),
                    fill: column.fill.unwrap_or(column.mean),
                    mean: column.mean,
                    std: column.std,
                }
            })
            .collect();
        let categorical = schema
            .categorical
            .iter()
            .map(|(name, categories)| {
                let fill = match self.categorical.get(name) {
                    None => 0,
                    Some(fill) => categories.iter().position(|c| c == fill).ok_or_else(|| {
                        stats_err(format!(
                            "[preprocessing.categorical] fills `{name}` with {fill:?}, which is \
                             not one of its categories {categories:?}"
                        ))
                    })?,
                };
                Ok(CategoricalTransform {
                    name: name.clone(),
                    categories: categories.clone(),
                    fill,
                })
            })
            .collect::<Result<_, DataError>>()?;
        Ok(Preprocessing {
            schema: schema.clone(),
            numeric,
            categorical,
        })
    }

    /// The table that gives `preprocessing` publicly.
    pub fn from_preprocessing(preprocessing: &Preprocessing) -> Self {
        PublicPreprocessing {
            numeric: preprocessing
                .numeric
                .iter()
                .map(|t| {
                    let fill = (t.fill != t.mean).then_some(t.fill);
                    (
                        t.name.clone(),
                        PublicNumeric {
                            mean: t.mean,
                            std: t.std,
                            fill,
                        },
                    )
                })
                .collect(),
            categorical: preprocessing
                .categorical
                .iter()
                .filter_map(|t| Some((t.name.clone(), t.categories.get(t.fill)?.clone())))
                .collect(),
        }
    }
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> ResolvedSchema {
        ResolvedSchema {
            label: "y".into(),
            positive: "1".into(),
            negative: None,
            numeric: vec!["age".into(), "psa".into()],
            categorical: vec![("stage".into(), vec!["I".into(), "II".into()])],
        }
    }

    const TABLE: &str = r#"
[numeric]
age = { mean = 61.2, std = 11.8 }
psa = { mean = 7.4, std = 5.1, fill = 6.2 }
[categorical]
stage = "II"
"#;

    #[test]
    fn a_complete_table_is_the_preprocessing_and_round_trips() {
        let table: PublicPreprocessing = toml::from_str(TABLE).unwrap();
        table.validate().unwrap();
        let prep = table.for_schema(&schema()).unwrap();
        assert_eq!(prep.numeric[0].fill, 61.2);
        assert_eq!(prep.numeric[1].fill, 6.2);
        assert_eq!(prep.categorical[0].fill, 1);
        assert_eq!(PublicPreprocessing::from_preprocessing(&prep), table);
    }

    #[test]
    fn gaps_strangers_and_bad_numbers_are_named() {
        let mut table: PublicPreprocessing = toml::from_str(TABLE).unwrap();
        table.numeric.remove("psa");
        let err = table.for_schema(&schema()).unwrap_err().to_string();
        assert!(
            err.contains("`psa`") && err.contains("no statistics"),
            "{err}"
        );

        let mut table: PublicPreprocessing = toml::from_str(TABLE).unwrap();
        table.categorical.insert("grade".into(), "3".into());
        let err = table.for_schema(&schema()).unwrap_err().to_string();
        assert!(
            err.contains("`grade`") && err.contains("does not use"),
            "{err}"
        );

        let mut table: PublicPreprocessing = toml::from_str(TABLE).unwrap();
        table.categorical.insert("stage".into(), "IV".into());
        let err = table.for_schema(&schema()).unwrap_err().to_string();
        assert!(err.contains("\"IV\""), "{err}");

        let mut table: PublicPreprocessing = toml::from_str(TABLE).unwrap();
        table.numeric.get_mut("age").unwrap().std = 0.0;
        assert_eq!(
            table.validate().unwrap_err().0,
            "preprocessing.numeric.age.std"
        );

        let unknown_key =
            toml::from_str::<PublicPreprocessing>("[numeric]\nage = { mean = 1, sd = 2 }");
        assert!(unknown_key.is_err());
    }
}
