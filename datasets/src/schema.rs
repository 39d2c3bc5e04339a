//! Binding a [`DataSpec`] to a concrete file header.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::spec::{DataSpec, NumericColumns};

/// The spec made concrete against one header: exact column lists in feature order.
///
/// Every client and the coordinator must agree on this value bit for bit, because it fixes the
/// layout of the feature vector; it is therefore stored with every [`crate::Preprocessing`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedSchema {
    pub label: String,
    pub positive: String,
    pub negative: Option<String>,
    /// In file order when the spec says `"*"`, else in spec order.
    pub numeric: Vec<String>,
    /// In `BTreeMap` (alphabetical) order, each with its categories in one-hot order.
    pub categorical: Vec<(String, Vec<String>)>,
}

impl ResolvedSchema {
    /// Names of the model inputs: numeric columns, then `column=category` per one-hot slot.
    pub fn feature_names(&self) -> Vec<String> {
        let mut names = self.numeric.clone();
        for (column, categories) in &self.categorical {
            names.extend(categories.iter().map(|c| format!("{column}={c}")));
        }
        names
    }

    /// Length of the feature vector.
    pub fn n_features(&self) -> usize {
        self.numeric.len() + self.categorical.iter().map(|(_, c)| c.len()).sum::<usize>()
    }
}

/// Resolves `spec` against a file's column names (validating the spec first).
///
/// With `numeric = "*"`, every column that is not the label, dropped or categorical becomes a
/// numeric feature, so an unexpected extra column in one hospital's export shows up either as a
/// schema difference or as a parse error naming it, never silently.
pub fn resolve_schema(spec: &DataSpec, columns: &[String]) -> Result<ResolvedSchema, DataError> {
    spec.validate()?;
    let mut seen = BTreeSet::new();
    for c in columns {
        if !seen.insert(c.as_str()) {
            return Err(DataError::DuplicateColumn { column: c.clone() });
        }
    }
    let require = |key: &str, column: &str| -> Result<(), DataError> {
        if seen.contains(column) {
            Ok(())
        } else {
            Err(DataError::MissingColumn {
                key: key.to_owned(),
                column: column.to_owned(),
            })
        }
    };
    require("data.label", &spec.label)?;
    for c in &spec.drop {
        require("data.drop", c)?;
    }
    for c in spec.categorical.keys() {
        require("data.categorical", c)?;
    }
    let numeric = match &spec.numeric {
        NumericColumns::Listed(names) => {
            for c in names {
                require("data.numeric", c)?;
            }
            names.clone()
        }
        NumericColumns::All => columns
            .iter()
            .filter(|c| {
                **c != spec.label && !spec.drop.contains(c) && !spec.categorical.contains_key(*c)
            })
            .cloned()
            .collect(),
    };
    let categorical: Vec<(String, Vec<String>)> = spec
        .categorical
        .iter()
        .map(|(c, cats)| {
            (
                c.clone(),
                cats.iter().map(|s| s.trim().to_owned()).collect(),
            )
        })
        .collect();
    if numeric.is_empty() && categorical.is_empty() {
        return Err(DataError::spec(
            "data.numeric",
            "no feature columns: every column is the label, dropped, or missing",
        ));
    }
    Ok(ResolvedSchema {
        label: spec.label.clone(),
        positive: spec.positive.0.trim().to_owned(),
        negative: spec.negative.as_ref().map(|n| n.0.trim().to_owned()),
        numeric,
        categorical,
    })
}
