use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;

fn csv_table(text: &str) -> RawTable {
    read_csv_bytes(text.as_bytes()).expect("test CSV parses")
}

fn spec_from_toml(text: &str) -> Result<DataSpec, toml::de::Error> {
    #[derive(serde::Deserialize)]
    struct Job {
        data: DataSpec,
    }
    toml::from_str::<Job>(text).map(|j| j.data)
}

fn wdbc_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/wdbc.csv")
}

fn wdbc_spec() -> DataSpec {
    DataSpec {
        drop: vec!["patient_id".into()],
        ..DataSpec::new("diagnosis", "M")
    }
}

fn err_text<T: std::fmt::Debug>(r: Result<T, DataError>) -> String {
    r.expect_err("expected an error").to_string()
}

// ---------------------------------------------------------------- spec

#[test]
fn toml_spec_with_defaults_and_numeric_label() {
    let spec = spec_from_toml(
        r#"
        [data]
        label = "outcome"
        positive = 1
        "#,
    )
    .unwrap();
    assert_eq!(spec.positive, LabelValue("1".into()));
    assert_eq!(spec.numeric, NumericColumns::All);
    assert_eq!(spec.validation_fraction, 0.2);
    assert!(spec.negative.is_none());
    assert!(spec.positive.matches("1.0"));
    assert!(spec.positive.matches(" 1 "));
    assert!(!spec.positive.matches("0"));
    assert!(!spec.positive.matches("1.5"));

    // An integer positive must classify a "1.0" cell as positive end to end.
    let table = csv_table("outcome,x\n1.0,3\n0,4\n1,5\n");
    let ds = LocalDataset::from_table(&table, &spec).unwrap();
    assert_eq!(ds.labels(), &[1, 0, 1]);
}

#[test]
fn toml_spec_bool_and_float_labels() {
    let spec =
        spec_from_toml("[data]\nlabel = \"y\"\npositive = true\nnegative = false\n").unwrap();
    assert_eq!(spec.positive.0, "true");
    assert_eq!(spec.negative, Some(LabelValue("false".into())));
    let spec = spec_from_toml("[data]\nlabel = \"y\"\npositive = 2.5\n").unwrap();
    assert!(spec.positive.matches("2.50"));
}

#[test]
fn toml_numeric_star_list_and_roundtrip() {
    let spec = spec_from_toml(
        r#"
        [data]
        label = "diagnosis"
        positive = "M"
        negative = "B"
        drop = ["patient_id"]
        numeric = ["radius_mean", "area_mean"]
        validation_fraction = 0.25
        [data.categorical]
        site = ["north", "south"]
        "#,
    )
    .unwrap();
    assert_eq!(
        spec.numeric,
        NumericColumns::Listed(vec!["radius_mean".into(), "area_mean".into()])
    );
    assert_eq!(spec.categorical["site"], vec!["north", "south"]);
    spec.validate().unwrap();

    // Serialize back through TOML and JSON: identical value.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Job {
        data: DataSpec,
    }
    let text = toml::to_string(&Job { data: spec.clone() }).unwrap();
    assert_eq!(spec_from_toml(&text).unwrap(), spec);
    let json = serde_json::to_string(&spec).unwrap();
    assert_eq!(serde_json::from_str::<DataSpec>(&json).unwrap(), spec);

    let star =
        spec_from_toml("[data]\nlabel = \"y\"\npositive = \"1\"\nnumeric = \"*\"\n").unwrap();
    assert_eq!(star.numeric, NumericColumns::All);
    let json = serde_json::to_value(&star).unwrap();
    assert_eq!(json["numeric"], "*");
}

#[test]
fn toml_rejects_unknown_key_and_bad_numeric() {
    let e = spec_from_toml("[data]\nlabel = \"y\"\npositive = \"1\"\nlabels = \"z\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `labels`"), "{e}");

    let e = spec_from_toml("[data]\nlabel = \"y\"\npositive = \"1\"\nnumeric = \"all\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("found the string `all`"), "{e}");

    let e = spec_from_toml("[data]\nlabel = \"y\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("positive"), "{e}");
}

#[test]
fn validate_reports_the_offending_key() {
    let base = DataSpec::new("diagnosis", "M");
    let cases: Vec<(DataSpec, &str)> = vec![
        (
            DataSpec {
                numeric: NumericColumns::Listed(vec!["a".into(), "diagnosis".into()]),
                ..base.clone()
            },
            "data.numeric: label column `diagnosis` is also listed as a feature",
        ),
        (
            DataSpec {
                drop: vec!["diagnosis".into()],
                ..base.clone()
            },
            "data.drop: label column `diagnosis` cannot be dropped",
        ),
        (
            DataSpec {
                categorical: BTreeMap::from([("diagnosis".into(), vec!["x".into()])]),
                ..base.clone()
            },
            "data.categorical: label column `diagnosis` is also listed as a feature",
        ),
        (
            DataSpec {
                numeric: NumericColumns::Listed(vec!["site".into()]),
                categorical: BTreeMap::from([("site".into(), vec!["a".into()])]),
                ..base.clone()
            },
            "data.numeric: column `site` is also listed in data.categorical",
        ),
        (
            DataSpec {
                categorical: BTreeMap::from([("site".into(), vec![])]),
                ..base.clone()
            },
            "data.categorical.site: category list is empty",
        ),
        (
            DataSpec {
                categorical: BTreeMap::from([("site".into(), vec!["a".into(), "a".into()])]),
                ..base.clone()
            },
            "data.categorical.site: duplicate category `a`",
        ),
        (
            DataSpec {
                validation_fraction: 0.95,
                ..base.clone()
            },
            "data.validation_fraction: must be between 0 and 0.9, got 0.95",
        ),
        (
            DataSpec {
                validation_fraction: f64::NAN,
                ..base.clone()
            },
            "data.validation_fraction",
        ),
        (DataSpec::new(" ", "M"), "data.label: must not be empty"),
        (
            DataSpec {
                negative: Some("M".into()),
                ..base.clone()
            },
            "data.negative: `M` is the same value as data.positive",
        ),
        (
            DataSpec {
                drop: vec!["a".into(), "a".into()],
                ..base.clone()
            },
            "data.drop: column `a` is listed twice",
        ),
    ];
    for (spec, expected) in cases {
        let e = err_text(spec.validate());
        assert!(e.contains(expected), "got `{e}`, expected `{expected}`");
    }
    base.validate().unwrap();
}

// ---------------------------------------------------------------- reading

#[test]
fn csv_missing_tokens_and_trimming() {
    let t = csv_table("a,b\nNA,1\nn/a,2\n?,3\nNaN,4\nnull,5\n,6\n  x ,7\nNULLish,8\n");
    assert_eq!(t.columns(), vec!["a", "b"]);
    assert_eq!(t.n_rows(), 8);
    let a = t.column("a").unwrap();
    assert!(a[..6].iter().all(Option::is_none), "{a:?}");
    assert_eq!(a[6].as_deref(), Some("x"));
    assert_eq!(a[7].as_deref(), Some("NULLish"));
}

#[test]
fn read_table_rejects_unknown_extension_and_missing_file() {
    let e = err_text(read_table(Path::new("data.xlsx")));
    assert!(e.contains("unsupported file extension"), "{e}");
    let e = err_text(read_table(Path::new("/nonexistent/x.csv")));
    assert!(e.contains("/nonexistent/x.csv"), "{e}");
}

#[test]
fn duplicate_header_is_rejected() {
    let e = err_text(read_csv_bytes(b"a,b,a\n1,2,3\n"));
    assert_eq!(e, "column `a` appears more than once in the header");
}

#[test]
fn parquet_is_read_as_text() {
    use polars::prelude::*;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site.parquet");
    let mut df = df!(
        "age" => [Some(1.5f64), None, Some(3.0)],
        "count" => [1i64, 2, 3],
        "sex" => ["F", "M", "F"],
        "y" => [true, false, true],
    )
    .unwrap();
    let file = std::fs::File::create(&path).unwrap();
    ParquetWriter::new(file).finish(&mut df).unwrap();

    let t = read_table(&path).unwrap();
    assert_eq!(t.columns(), vec!["age", "count", "sex", "y"]);
    assert_eq!(t.n_rows(), 3);
    let age: Vec<Option<&str>> = t
        .column("age")
        .unwrap()
        .iter()
        .map(|c| c.as_deref())
        .collect();
    assert_eq!(age, vec![Some("1.5"), None, Some("3.0")]);

    let spec = DataSpec {
        categorical: BTreeMap::from([("sex".into(), vec!["F".into(), "M".into()])]),
        negative: Some(LabelValue("false".into())),
        ..DataSpec::new("y", "true")
    };
    let ds = LocalDataset::load(&path, &spec).unwrap();
    assert_eq!(ds.labels(), &[1, 0, 1]);
    assert_eq!(ds.schema().numeric, vec!["age", "count"]);
    let stats = ds.statistics();
    assert_eq!(stats.numeric[0].count, 2);
    assert_eq!(stats.categorical[0], vec![2, 1]);
}

#[test]
fn quality_summary_counts() {
    let t = csv_table("a,b,c\n1,x,k\n1,,k\n2,y,k\n1,x,k\n1,,k\n");
    let q = t.quality();
    assert_eq!(q.rows, 5);
    assert_eq!(q.duplicate_rows, 2);
    assert_eq!(q.constant_columns, vec!["c"]);
    assert_eq!(q.columns[1].missing, 2);
    assert!((q.columns[1].completeness - 0.6).abs() < 1e-12);
    assert_eq!(q.columns[0].missing, 0);
    assert_eq!(q.columns[0].completeness, 1.0);
}

// ---------------------------------------------------------------- schema & validation

#[test]
fn resolve_schema_star_and_listed() {
    let cols: Vec<String> = ["id", "b", "y", "a", "site"].map(String::from).to_vec();
    let spec = DataSpec {
        drop: vec!["id".into()],
        categorical: BTreeMap::from([
            ("site".into(), vec!["n".into(), "s".into()]),
            ("b".into(), vec!["0".into(), "1".into()]),
        ]),
        ..DataSpec::new("y", "1")
    };
    let s = resolve_schema(&spec, &cols).unwrap();
    assert_eq!(s.numeric, vec!["a"]);
    assert_eq!(s.categorical[0].0, "b");
    assert_eq!(
        s.feature_names(),
        vec!["a", "b=0", "b=1", "site=n", "site=s"]
    );
    assert_eq!(s.n_features(), 5);

    let listed = DataSpec {
        numeric: NumericColumns::Listed(vec!["a".into(), "b".into()]),
        ..DataSpec::new("y", "1")
    };
    assert_eq!(
        resolve_schema(&listed, &cols).unwrap().numeric,
        vec!["a", "b"]
    );

    let missing = DataSpec {
        numeric: NumericColumns::Listed(vec!["zz".into()]),
        ..DataSpec::new("y", "1")
    };
    assert_eq!(
        err_text(resolve_schema(&missing, &cols)),
        "missing column `zz` (named in data.numeric)"
    );
    let e = err_text(resolve_schema(&DataSpec::new("outcome", "1"), &cols));
    assert!(e.contains("missing column `outcome`"), "{e}");
    let e = err_text(resolve_schema(
        &DataSpec {
            drop: vec!["gone".into()],
            ..DataSpec::new("y", "1")
        },
        &cols,
    ));
    assert!(
        e.contains("missing column `gone` (named in data.drop)"),
        "{e}"
    );
}

#[test]
fn cell_errors_name_column_and_row() {
    let spec = DataSpec {
        negative: Some("B".into()),
        categorical: BTreeMap::from([("site".into(), vec!["north".into(), "south".into()])]),
        ..DataSpec::new("diagnosis", "M")
    };
    let ok = "diagnosis,radius_mean,site\nM,1.5,north\nB,,\n";
    assert_eq!(
        LocalDataset::from_table(&csv_table(ok), &spec)
            .unwrap()
            .n_rows(),
        2
    );

    let e = err_text(LocalDataset::from_table(
        &csv_table("diagnosis,radius_mean,site\nM,1,north\nB,abc,south\n"),
        &spec,
    ));
    assert_eq!(e, "column `radius_mean`, row 2: `abc` is not a number");

    let e = err_text(LocalDataset::from_table(
        &csv_table("diagnosis,radius_mean,site\nM,1,north\nB,inf,south\n"),
        &spec,
    ));
    assert!(e.contains("row 2: `inf` is not a number"), "{e}");

    let e = err_text(LocalDataset::from_table(
        &csv_table("diagnosis,radius_mean,site\nM,1,north\nB,2,south\nB,3,east\n"),
        &spec,
    ));
    assert_eq!(
        e,
        "column `site`, row 3: `east` is not an allowed category (allowed: `north`, `south`)"
    );

    let e = err_text(LocalDataset::from_table(
        &csv_table("diagnosis,radius_mean,site\nM,1,north\nX,2,south\n"),
        &spec,
    ));
    assert_eq!(
        e,
        "column `diagnosis`, row 2: label value `X` is neither positive `M` nor negative `B`"
    );

    let e = err_text(LocalDataset::from_table(
        &csv_table("diagnosis,radius_mean,site\nM,1,north\nNA,2,south\n"),
        &spec,
    ));
    assert_eq!(e, "column `diagnosis`, row 2: label is missing");

    let e = err_text(LocalDataset::from_table(
        &csv_table("diagnosis,radius_mean,site\n"),
        &spec,
    ));
    assert!(e.contains("has no data rows"), "{e}");

    // Without `negative`, anything but the positive value is class 0.
    let lax = DataSpec {
        negative: None,
        ..spec
    };
    let ds = LocalDataset::from_table(
        &csv_table("diagnosis,radius_mean,site\nM,1,north\nX,2,south\n"),
        &lax,
    )
    .unwrap();
    assert_eq!(ds.labels(), &[1, 0]);
}

#[test]
fn wdbc_loads() {
    let ds = LocalDataset::load(&wdbc_path(), &wdbc_spec()).unwrap();
    assert_eq!(ds.n_rows(), 569);
    assert_eq!(ds.schema().n_features(), 30);
    assert_eq!(ds.positives(), 212);
    assert_eq!(ds.schema().numeric[0], "radius_mean");
    let q = read_table(&wdbc_path()).unwrap().quality();
    assert_eq!(q.duplicate_rows, 0);
    assert!(q.constant_columns.is_empty());
}

// ---------------------------------------------------------------- preprocessing

fn tiny() -> (LocalDataset, DataSpec) {
    let spec = DataSpec {
        drop: vec!["id".into()],
        negative: Some("0".into()),
        categorical: BTreeMap::from([("sex".into(), vec!["F".into(), "M".into()])]),
        ..DataSpec::new("y", "1")
    };
    let table = csv_table("id,age,sex,y\n1,10,F,1\n2,20,M,0\n3,NA,F,1\n4,30,,0\n");
    (LocalDataset::from_table(&table, &spec).unwrap(), spec)
}

#[test]
fn tiny_table_statistics_and_features() {
    let (ds, _) = tiny();
    let stats = ds.statistics();
    assert_eq!(stats.rows, 4);
    assert_eq!(stats.positives, 2);
    assert_eq!(
        stats.numeric,
        vec![NumericMoments {
            count: 3,
            mean: 20.0,
            m2: 200.0,
            median: Some(20.0)
        }]
    );
    assert_eq!(stats.categorical, vec![vec![2, 1]]);

    let prep = Preprocessing::merge(ds.schema(), &[stats]).unwrap();
    let std = (200.0f64 / 3.0).sqrt();
    assert_eq!(prep.numeric[0].fill, 20.0);
    assert_eq!(prep.numeric[0].mean, 20.0);
    assert!((prep.numeric[0].std - std).abs() < 1e-12);
    assert_eq!(prep.categorical[0].fill, 0);
    assert_eq!(prep.n_features(), 3);

    let ex = ds.preprocess(&prep).unwrap();
    assert_eq!(ex.len(), 4);
    assert_eq!(ex.n_features, 3);
    let z = (-10.0 / std) as f32;
    let expected: Vec<f32> = vec![
        z, 1.0, 0.0, // 10, F
        0.0, 0.0, 1.0, // 20, M
        0.0, 1.0, 0.0, // age imputed with 20, F
        -z, 1.0, 0.0, // 30, sex imputed with the mode F
    ];
    for (a, b) in ex.features.iter().zip(&expected) {
        assert!((a - b).abs() < 1e-6, "{:?} vs {expected:?}", ex.features);
    }
    assert_eq!(ex.labels, vec![1.0, 0.0, 1.0, 0.0]);
}

#[test]
fn constant_column_gets_unit_std() {
    let spec = DataSpec::new("y", "1");
    let ds = LocalDataset::from_table(&csv_table("x,y\n5,1\n5,0\n"), &spec).unwrap();
    let prep = Preprocessing::merge(ds.schema(), &[ds.statistics()]).unwrap();
    assert_eq!(prep.numeric[0].std, 1.0);
    assert_eq!(ds.preprocess(&prep).unwrap().features, vec![0.0, 0.0]);
}

#[test]
fn merge_of_halves_equals_pooled() {
    let text = std::fs::read_to_string(wdbc_path()).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let rows: Vec<&str> = lines.collect();
    let half = |r: &[&str]| format!("{header}\n{}\n", r.join("\n"));
    let spec = wdbc_spec();
    let a = LocalDataset::from_table(&csv_table(&half(&rows[..200])), &spec).unwrap();
    let b = LocalDataset::from_table(&csv_table(&half(&rows[200..])), &spec).unwrap();
    let all = LocalDataset::load(&wdbc_path(), &spec).unwrap();

    let (sa, sb) = (a.statistics(), b.statistics());
    let merged = Preprocessing::merge(all.schema(), &[sa.clone(), sb.clone()]).unwrap();
    let pooled = Preprocessing::merge(all.schema(), &[all.statistics()]).unwrap();
    for (j, (m, p)) in merged.numeric.iter().zip(&pooled.numeric).enumerate() {
        assert!(
            (m.mean - p.mean).abs() <= 1e-9 * p.mean.abs().max(1.0),
            "{m:?} {p:?}"
        );
        assert!((m.std - p.std).abs() <= 1e-9 * p.std, "{m:?} {p:?}");
        let (ma, mb) = (sa.numeric[j].median.unwrap(), sb.numeric[j].median.unwrap());
        let expected_fill = (ma * 200.0 + mb * 369.0) / 569.0;
        assert!((m.fill - expected_fill).abs() <= 1e-9 * expected_fill.abs().max(1.0));
    }
    // Preprocessing a half with the merged transform standardizes to mean ~0 over the union.
    let ex = Examples::concat(&[
        a.preprocess(&merged).unwrap(),
        b.preprocess(&merged).unwrap(),
    ])
    .unwrap();
    assert_eq!(ex.len(), 569);
    let mean0: f64 = (0..ex.len()).map(|i| f64::from(ex.row(i)[0])).sum::<f64>() / 569.0;
    assert!(mean0.abs() < 1e-5, "{mean0}");
}

#[test]
fn merge_rejects_bad_statistics() {
    let (ds, _) = tiny();
    let good = ds.statistics();
    let schema = ds.schema();

    let e = err_text(Preprocessing::merge(schema, &[]));
    assert!(e.contains("no client statistics"), "{e}");

    let mut short = good.clone();
    short.numeric.clear();
    let e = err_text(Preprocessing::merge(schema, &[good.clone(), short]));
    assert!(
        e.contains("client 2 sent 0 numeric columns, schema has 1"),
        "{e}"
    );

    let mut bad_counts = good.clone();
    bad_counts.categorical[0].push(4);
    let e = err_text(Preprocessing::merge(schema, &[bad_counts]));
    assert!(e.contains("categorical column `sex`"), "{e}");

    let mut empty = good.clone();
    empty.numeric[0] = NumericMoments {
        count: 0,
        mean: 0.0,
        m2: 0.0,
        median: None,
    };
    let e = err_text(Preprocessing::merge(schema, &[empty.clone(), empty]));
    assert!(
        e.contains("numeric column `age` has no values at any client"),
        "{e}"
    );

    let mut nan = good;
    nan.numeric[0].mean = f64::NAN;
    let e = err_text(Preprocessing::merge(schema, &[nan]));
    assert!(
        e.contains("invalid moments for numeric column `age`"),
        "{e}"
    );
}

#[test]
fn preprocess_rejects_other_schema() {
    let (ds, _) = tiny();
    let other = LocalDataset::from_table(
        &csv_table("age,weight,sex,y\n1,2,F,1\n3,4,M,0\n"),
        &DataSpec {
            negative: Some("0".into()),
            categorical: BTreeMap::from([("sex".into(), vec!["F".into(), "M".into()])]),
            ..DataSpec::new("y", "1")
        },
    )
    .unwrap();
    let prep = Preprocessing::merge(other.schema(), &[other.statistics()]).unwrap();
    let e = err_text(ds.preprocess(&prep));
    assert!(e.starts_with("schema mismatch"), "{e}");
    assert!(e.contains("weight"), "{e}");

    let mut broken = Preprocessing::merge(ds.schema(), &[ds.statistics()]).unwrap();
    broken.numeric[0].std = 0.0;
    assert!(err_text(ds.preprocess(&broken)).contains("schema mismatch"));
}

// ---------------------------------------------------------------- examples

fn synthetic(n: usize, positives: usize) -> Examples {
    let labels = (0..n)
        .map(|i| if i < positives { 1.0 } else { 0.0 })
        .collect();
    let features = (0..n * 2).map(|v| v as f32).collect();
    Examples::new(features, labels, 2).unwrap()
}

#[test]
fn stratified_split_keeps_ratios_and_is_deterministic() {
    let ex = synthetic(100, 30);
    let (train, val) = ex.stratified_split(0.2, 7);
    assert_eq!(val.len(), 20);
    assert_eq!(val.positives(), 6);
    assert_eq!(train.len(), 80);
    assert_eq!(train.positives(), 24);
    // Rows travel with their labels.
    for part in [&train, &val] {
        for i in 0..part.len() {
            let original = (part.row(i)[0] / 2.0) as usize;
            assert_eq!(part.labels[i], ex.labels[original]);
        }
    }
    assert_eq!(ex.stratified_split(0.2, 7), (train.clone(), val.clone()));
    assert_ne!(ex.stratified_split(0.2, 8).1, val);

    // A class with two rows still gets one validation row; a class with one row gets none.
    let (t, v) = synthetic(10, 2).stratified_split(0.1, 1);
    assert_eq!(v.positives(), 1);
    assert_eq!(t.positives(), 1);
    let (t, v) = synthetic(10, 1).stratified_split(0.5, 1);
    assert_eq!((t.positives(), v.positives()), (1, 0));
    let (t, v) = ex.stratified_split(0.0, 1);
    assert_eq!((t.len(), v.len()), (100, 0));
}

#[test]
fn concat_checks_width() {
    let a = synthetic(3, 1);
    let b = synthetic(2, 1);
    let c = Examples::concat(&[a.clone(), b]).unwrap();
    assert_eq!(c.len(), 5);
    assert_eq!(c.features.len(), 10);
    let wide = Examples::new(vec![0.0; 3], vec![1.0], 3).unwrap();
    assert_eq!(
        err_text(Examples::concat(&[a, wide])),
        "feature count mismatch: part 2 has 3 features, expected 2"
    );
    assert!(Examples::new(vec![0.0; 3], vec![1.0], 2).is_err());
    assert!(Examples::concat(&[]).unwrap().is_empty());
}

// ---------------------------------------------------------------- split

fn split_opts(parts: usize, scheme: PartitionScheme, test_fraction: f64) -> SplitOptions {
    SplitOptions {
        parts,
        label: Some("diagnosis".into()),
        scheme,
        test_fraction,
        seed: 42,
    }
}

fn data_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(str::to_owned)
        .collect()
}

#[test]
fn split_file_writes_parts_and_test_covering_input() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("split");
    let report = split_file(
        &wdbc_path(),
        &out,
        &split_opts(3, PartitionScheme::Iid, 0.2),
    )
    .unwrap();

    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 4);
    let test = report.test.as_ref().unwrap();
    assert_eq!(test.file, out.join("test.csv"));
    // Stratified test set: round(212 * 0.2) = 42 M, round(357 * 0.2) = 71 B.
    assert_eq!(test.label_counts["M"], 42);
    assert_eq!(test.label_counts["B"], 71);

    let input = std::fs::read_to_string(wdbc_path()).unwrap();
    let header = input.lines().next().unwrap();
    let mut written = Vec::new();
    for part in report.parts.iter().chain(Some(test)) {
        let text = std::fs::read_to_string(&part.file).unwrap();
        assert_eq!(text.lines().next().unwrap(), header);
        let lines = data_lines(&part.file);
        assert_eq!(lines.len(), part.rows);
        assert_eq!(part.label_counts.values().sum::<usize>(), part.rows);
        written.extend(lines);
    }
    let mut original: Vec<String> = input.lines().skip(1).map(str::to_owned).collect();
    original.sort();
    written.sort();
    assert_eq!(
        written, original,
        "cells must be preserved exactly, every row once"
    );

    // IID parts are balanced in size and class ratio.
    let sizes: Vec<usize> = report.parts.iter().map(|p| p.rows).collect();
    assert!(
        sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
        "{sizes:?}"
    );
    for p in &report.parts {
        let ratio = p.label_counts["M"] as f64 / p.rows as f64;
        assert!((ratio - 170.0 / 456.0).abs() < 0.02, "{ratio}");
    }

    // Same seed, same files.
    let out2 = dir.path().join("again");
    split_file(
        &wdbc_path(),
        &out2,
        &split_opts(3, PartitionScheme::Iid, 0.2),
    )
    .unwrap();
    assert_eq!(
        data_lines(&out.join("hospital_2.csv")),
        data_lines(&out2.join("hospital_2.csv"))
    );
}

#[test]
fn dirichlet_small_alpha_skews_labels() {
    let ratios = |alpha: f64| -> Vec<f64> {
        let dir = tempfile::tempdir().unwrap();
        let report = split_file(
            &wdbc_path(),
            dir.path(),
            &split_opts(3, PartitionScheme::Dirichlet { alpha }, 0.0),
        )
        .unwrap();
        assert!(report.test.is_none());
        assert_eq!(report.parts.iter().map(|p| p.rows).sum::<usize>(), 569);
        assert!(report.parts.iter().all(|p| p.rows >= 10));
        report
            .parts
            .iter()
            .map(|p| p.label_counts.get("M").copied().unwrap_or(0) as f64 / p.rows as f64)
            .collect()
    };
    let spread = |r: &[f64]| {
        r.iter().cloned().fold(f64::MIN, f64::max) - r.iter().cloned().fold(f64::MAX, f64::min)
    };
    let skewed = ratios(0.1);
    assert!(
        spread(&skewed) > 0.5,
        "alpha 0.1 should skew label ratios: {skewed:?}"
    );
    let mild = ratios(1000.0);
    assert!(
        spread(&mild) < 0.15,
        "alpha 1000 should be near IID: {mild:?}"
    );
}

#[test]
fn split_bytes_preserves_quoted_and_missing_cells() {
    let csv = "id,note,y\n1,\"a, b\",1\n2,NA,0\n3,,1\n4,\"say \"\"hi\"\"\",0\n";
    let dir = tempfile::tempdir().unwrap();
    let opts = SplitOptions {
        parts: 2,
        label: None,
        scheme: PartitionScheme::Iid,
        test_fraction: 0.0,
        seed: 1,
    };
    let report = split_bytes(csv.as_bytes(), dir.path(), &opts).unwrap();
    assert!(report.parts.iter().all(|p| p.label_counts.is_empty()));
    let mut lines: Vec<String> = report
        .parts
        .iter()
        .flat_map(|p| data_lines(&p.file))
        .collect();
    lines.sort();
    let mut expected: Vec<String> = csv.lines().skip(1).map(str::to_owned).collect();
    expected.sort();
    assert_eq!(lines, expected);
}

#[test]
fn split_option_errors() {
    let dir = tempfile::tempdir().unwrap();
    let csv = b"x,y\n1,a\n2,b\n3,a\n";
    let base = SplitOptions {
        parts: 2,
        label: Some("y".into()),
        scheme: PartitionScheme::Iid,
        test_fraction: 0.0,
        seed: 0,
    };
    let cases: Vec<(SplitOptions, &str)> = vec![
        (
            SplitOptions {
                parts: 0,
                ..base.clone()
            },
            "at least 1",
        ),
        (
            SplitOptions {
                parts: 4,
                ..base.clone()
            },
            "4 parts requested but only 3 rows",
        ),
        (
            SplitOptions {
                scheme: PartitionScheme::Dirichlet { alpha: 0.0 },
                ..base.clone()
            },
            "alpha must be a positive number",
        ),
        (
            SplitOptions {
                scheme: PartitionScheme::Dirichlet { alpha: 1.0 },
                label: None,
                ..base.clone()
            },
            "needs a label column",
        ),
        (
            SplitOptions {
                test_fraction: 1.0,
                ..base.clone()
            },
            "test fraction must be in [0, 1)",
        ),
        (
            SplitOptions {
                label: Some("nope".into()),
                ..base.clone()
            },
            "missing column `nope`",
        ),
    ];
    for (opts, expected) in cases {
        let e = err_text(split_bytes(csv, dir.path(), &opts));
        assert!(e.contains(expected), "got `{e}`, expected `{expected}`");
    }
    let e = err_text(split_file(Path::new("/nonexistent.csv"), dir.path(), &base));
    assert!(e.contains("/nonexistent.csv"), "{e}");
}
