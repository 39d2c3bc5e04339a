//! Hospital data where it lives (issue 19): one federated job over three
//! hospitals whose tables come from a CSV file, an OMOP CDM database on
//! PostgreSQL (through `examples/omop/wdbc-features.sql`) and a FHIR Bulk
//! Data export (through `examples/fhir/wdbc-mapping.toml`). The OMOP tables
//! and the FHIR resources are made here from the bundled data's rows, with
//! the clutter real sources have: older measurements of the same feature,
//! concepts and resource types the job does not use, other diagnoses.
//!
//! Needs the PostgreSQL server of `COHORT_TEST_POSTGRES_URL` (CI starts
//! one); without it the test says so and passes, unless
//! `COHORT_REQUIRE_POSTGRES` is set.

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cohort_coordinator::store::testing::{TestDatabase, postgres_server};
use cohort_datasets::{DataSource, RawTable, SourceReport, read_table};
use common::Proc;
use serde_json::json;

const WDBC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/wdbc.csv");
const JOB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/wdbc-mlp.toml");
const OMOP_QUERY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/omop/wdbc-features.sql"
);
const FHIR_MAPPING: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/fhir/wdbc-mapping.toml"
);
const BIN: &str = env!("CARGO_BIN_EXE_cohort");

/// OMOP's standard concept "Malignant tumor of breast" (SNOMED 254837009).
const BREAST_CANCER_CONCEPT: i64 = 4112853;

/// The bundled data dealt to three hospitals and a held-out test file.
fn deal(out: &Path) -> Vec<PathBuf> {
    let report = cohort_datasets::split_file(
        Path::new(WDBC),
        out,
        &cohort_datasets::SplitOptions {
            parts: 3,
            label: Some("diagnosis".into()),
            scheme: cohort_datasets::PartitionScheme::Iid,
            test_fraction: 0.2,
            seed: 5,
        },
    )
    .unwrap();
    let mut files: Vec<PathBuf> = report.parts.into_iter().map(|p| p.file).collect();
    files.push(report.test.unwrap().file);
    files
}

/// The features of a WDBC table: every column but the id and the label.
fn features(table: &RawTable) -> Vec<String> {
    table
        .columns()
        .into_iter()
        .filter(|c| c != "patient_id" && c != "diagnosis")
        .collect()
}

fn cell(table: &RawTable, column: &str, row: usize) -> Option<String> {
    table.column(column).unwrap()[row].clone()
}

/// A number from the CSV, checked, for SQL text and JSON.
fn number(text: &str) -> f64 {
    let value: f64 = text.parse().unwrap();
    assert!(value.is_finite());
    value
}

/// The OMOP CDM v5.4 tables the query reads (the columns it needs and the
/// keys), holding `csv`'s rows: a person per row, a measurement per
/// feature cell with a local concept of vocabulary `WDBC`, and a breast
/// cancer condition for each malignant row.
async fn fill_omop(url: &str, csv: &Path) {
    let table = read_table(csv).unwrap();
    let mut sql = String::from(
        "CREATE TABLE concept (concept_id integer PRIMARY KEY, concept_name varchar(255) NOT NULL,
             domain_id varchar(20) NOT NULL, vocabulary_id varchar(20) NOT NULL,
             concept_class_id varchar(20) NOT NULL, concept_code varchar(50) NOT NULL);
         CREATE TABLE person (person_id bigint PRIMARY KEY, gender_concept_id integer NOT NULL,
             year_of_birth integer NOT NULL, person_source_value varchar(50));
         CREATE TABLE measurement (measurement_id bigint PRIMARY KEY,
             person_id bigint NOT NULL REFERENCES person,
             measurement_concept_id integer NOT NULL REFERENCES concept,
             measurement_date date NOT NULL, value_as_number numeric, unit_concept_id integer,
             measurement_source_value varchar(50));
         CREATE TABLE condition_occurrence (condition_occurrence_id bigint PRIMARY KEY,
             person_id bigint NOT NULL REFERENCES person, condition_concept_id integer NOT NULL,
             condition_start_date date NOT NULL, condition_source_value varchar(50));
         INSERT INTO concept VALUES
             (3025315, 'Body weight', 'Measurement', 'LOINC', 'Clinical Observation', '29463-7');\n",
    );
    let features = features(&table);
    for (i, feature) in features.iter().enumerate() {
        writeln!(
            sql,
            "INSERT INTO concept VALUES ({}, '{feature}', 'Measurement', 'WDBC', 'Lab Test', '{feature}');",
            2_000_000_001 + i
        )
        .unwrap();
    }
    let mut measurement_id = 0;
    let mut measure = |sql: &mut String, person: usize, concept: usize, date: &str, value: f64| {
        measurement_id += 1;
        writeln!(
            sql,
            "INSERT INTO measurement VALUES ({measurement_id}, {person}, {concept}, '{date}', {value}, NULL, NULL);"
        )
        .unwrap();
    };
    for row in 0..table.n_rows() {
        let person = row + 1;
        let id = cell(&table, "patient_id", row).unwrap();
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric()));
        writeln!(
            sql,
            "INSERT INTO person VALUES ({person}, 8532, {}, '{id}');",
            1940 + row % 40
        )
        .unwrap();
        for (i, feature) in features.iter().enumerate() {
            if let Some(value) = cell(&table, feature, row) {
                measure(
                    &mut sql,
                    person,
                    2_000_000_001 + i,
                    "2024-03-01",
                    number(&value),
                );
            }
        }
        // Clutter: an older, different reading of the first feature, and a
        // measurement the query does not ask for.
        measure(&mut sql, person, 2_000_000_001, "2019-06-30", 999.0);
        measure(&mut sql, person, 3_025_315, "2024-03-01", 70.5);
        if cell(&table, "diagnosis", row).as_deref() == Some("M") {
            writeln!(
                sql,
                "INSERT INTO condition_occurrence VALUES ({person}, {person}, {BREAST_CANCER_CONCEPT}, '2024-02-15', 'C50.9');"
            )
            .unwrap();
        } else if row % 3 == 0 {
            // Type 2 diabetes: a condition, but not the outcome.
            writeln!(
                sql,
                "INSERT INTO condition_occurrence VALUES ({person}, {person}, 201826, '2020-01-01', 'E11.9');"
            )
            .unwrap();
        }
    }
    execute(url, &sql).await;
}

async fn execute(url: &str, sql: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client.batch_execute(sql).await.unwrap();
}

/// A FHIR Bulk Data export of `csv`'s rows: Patient, Observation (two
/// files, as exports split large types), Condition and Encounter NDJSON.
fn write_fhir(dir: &Path, csv: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let table = read_table(csv).unwrap();
    let features = features(&table);
    let (mut patients, mut conditions, mut encounters) =
        (String::new(), String::new(), String::new());
    let mut observations = [String::new(), String::new()];
    let line = |out: &mut String, resource: serde_json::Value| {
        out.push_str(&resource.to_string());
        out.push('\n');
    };
    for row in 0..table.n_rows() {
        let id = cell(&table, "patient_id", row).unwrap();
        let subject = json!({ "reference": format!("Patient/{id}") });
        line(
            &mut patients,
            json!({ "resourceType": "Patient", "id": id, "gender": "female", "birthDate": "1961-04-12" }),
        );
        let observation = |feature: &str, value: f64, when: &str| {
            json!({
                "resourceType": "Observation",
                "id": format!("{id}-{feature}-{when}"),
                "status": "final",
                "code": { "coding": [{ "system": "https://cohort.example/fhir/wdbc", "code": feature }] },
                "subject": subject,
                "effectiveDateTime": when,
                "valueQuantity": { "value": value },
            })
        };
        for (i, feature) in features.iter().enumerate() {
            if let Some(value) = cell(&table, feature, row) {
                line(
                    &mut observations[i % 2],
                    observation(feature, number(&value), "2024-03-01T10:00:00Z"),
                );
            }
        }
        // An older reading, written after the current one: "latest" goes by
        // date, not by file order.
        line(
            &mut observations[1],
            observation(&features[0], 999.0, "2019-06-30"),
        );
        let condition = |system: &str, code: &str| {
            json!({
                "resourceType": "Condition",
                "id": format!("{id}-{code}"),
                "code": { "coding": [{ "system": system, "code": code }] },
                "subject": subject,
                "onsetDateTime": "2024-02-15",
            })
        };
        if cell(&table, "diagnosis", row).as_deref() == Some("M") {
            line(
                &mut conditions,
                condition("http://snomed.info/sct", "254837009"),
            );
        } else if row % 3 == 0 {
            line(
                &mut conditions,
                condition("http://snomed.info/sct", "44054006"),
            );
        }
        line(
            &mut encounters,
            json!({ "resourceType": "Encounter", "id": format!("{id}-visit"), "subject": subject }),
        );
    }
    // A resource about a patient who is not in this export.
    line(
        &mut conditions,
        json!({
            "resourceType": "Condition",
            "code": { "coding": [{ "system": "http://snomed.info/sct", "code": "254837009" }] },
            "subject": { "reference": "Patient/someone-else" },
        }),
    );
    for (name, text) in [
        ("Patient.ndjson", &patients),
        ("Observation.000.ndjson", &observations[0]),
        ("Observation.001.ndjson", &observations[1]),
        ("Condition.ndjson", &conditions),
        ("Encounter.ndjson", &encounters),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// `got` holds the same rows and columns as the CSV `expected`: ids and
/// labels as text, features as numbers.
fn assert_same_table(expected: &RawTable, got: &RawTable, source: &str) {
    assert_eq!(got.columns(), expected.columns(), "{source}: columns");
    assert_eq!(got.n_rows(), expected.n_rows(), "{source}: rows");
    for column in expected.columns() {
        let numeric = column != "patient_id" && column != "diagnosis";
        for row in 0..expected.n_rows() {
            let (want, have) = (cell(expected, &column, row), cell(got, &column, row));
            let same = match (&want, &have) {
                (Some(w), Some(h)) if numeric => number(w) == number(h),
                _ => want == have,
            };
            assert!(
                same,
                "{source}: column {column}, row {}: expected {want:?}, read {have:?}",
                row + 1
            );
        }
    }
}

/// `postgres://user@host/db` and the password it had, for PGPASSWORD.
fn without_password(url: &str) -> (String, Option<String>) {
    let start = url.find("://").unwrap() + 3;
    let at = start + url[start..].find('@').unwrap();
    match url[start..at].split_once(':') {
        Some((user, password)) => (
            format!("{}{user}{}", &url[..start], &url[at..]),
            Some(password.to_owned()),
        ),
        None => (url.to_owned(), None),
    }
}

fn cohort(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn spawn_client(args: &[&str], env: &[(&str, &str)], log: &Path) -> Proc {
    Proc(
        Command::new(BIN)
            .arg("client")
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hospitals_on_a_csv_file_an_omop_database_and_a_fhir_export_train_one_model() {
    let Some(server) = postgres_server() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let files = deal(&dir.path().join("parts"));
    let database = TestDatabase::create(&server, "omop_source").unwrap();
    fill_omop(database.url(), &files[1]).await;
    let export = dir.path().join("fhir-export");
    write_fhir(&export, &files[2]);

    // Each source reads back as the CSV rows it was made from, despite the
    // clutter around them.
    let omop = DataSource::from_args(database.url(), Some(Path::new(OMOP_QUERY)), None).unwrap();
    let omop_table = omop.read().unwrap();
    assert_same_table(&read_table(&files[1]).unwrap(), &omop_table, "OMOP");
    let fhir = DataSource::from_args(
        export.to_str().unwrap(),
        None,
        Some(Path::new(FHIR_MAPPING)),
    )
    .unwrap();
    let (fhir_table, report) = fhir.read_reported().unwrap();
    let fhir_rows = read_table(&files[2]).unwrap();
    assert_same_table(&fhir_rows, &fhir_table, "FHIR");
    let SourceReport::Fhir(report) = report else {
        panic!("not a FHIR report: {report:?}");
    };
    assert_eq!(report.files, 5);
    assert_eq!(report.patients, fhir_rows.n_rows());
    assert_eq!(report.unlinked, 1);
    assert_eq!(
        report.ignored.get("Encounter"),
        Some(&(fhir_rows.n_rows() as u64))
    );

    // What a hospital's IT team runs before joining: the database checked
    // against the job, the password from PGPASSWORD rather than the URL.
    let (url, password) = without_password(database.url());
    let mut env = Vec::new();
    if let Some(password) = &password {
        env.push(("PGPASSWORD", password.as_str()));
    }
    let out = cohort(
        &[
            "data",
            "check",
            "--data",
            &url,
            "--data-query",
            OMOP_QUERY,
            "--job",
            JOB,
            "--json",
        ],
        &env,
    );
    assert!(
        out.status.success(),
        "cohort data check: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let check: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(check["job"]["rows"], omop_table.n_rows());
    assert_eq!(check["job"]["features"].as_array().unwrap().len(), 30);
    assert_eq!(check["quality"]["rows"], omop_table.n_rows());
    let out = cohort(
        &[
            "data",
            "check",
            "--data",
            export.to_str().unwrap(),
            "--fhir-mapping",
            FHIR_MAPPING,
            "--job",
            JOB,
        ],
        &[],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("fits job `wdbc-mlp`"),
        "{text}"
    );
    assert!(text.contains("ignored (not in the mapping)"), "{text}");

    // The job: one hospital in this process on its CSV file, the other two
    // as `cohort client` processes on the database and on the export.
    let coordinator = common::start_coordinator(&dir.path().join("coordinator")).await;
    let csv_hospital = common::start_client(
        &coordinator.url,
        &files[0],
        "csv-hospital",
        &coordinator.stop,
    );
    let _omop_hospital = spawn_client(
        &[
            "--coordinator",
            &coordinator.url,
            "--insecure",
            "--name",
            "omop-hospital",
            "--data",
            &url,
            "--data-query",
            OMOP_QUERY,
        ],
        &env,
        &dir.path().join("omop-hospital.log"),
    );
    let _fhir_hospital = spawn_client(
        &[
            "--coordinator",
            &coordinator.url,
            "--insecure",
            "--name",
            "fhir-hospital",
            "--data",
            export.to_str().unwrap(),
            "--fhir-mapping",
            FHIR_MAPPING,
        ],
        &[],
        &dir.path().join("fhir-hospital.log"),
    );
    common::wait_for_clients(&coordinator.url, 3).await;
    let job = std::fs::read_to_string(JOB)
        .unwrap()
        .replace("rounds = 20", "rounds = 5");
    let view = common::submit_and_wait(&coordinator.url, &job).await;
    let logs = || {
        ["omop-hospital", "fhir-hospital"]
            .map(|name| {
                std::fs::read_to_string(dir.path().join(format!("{name}.log"))).unwrap_or_default()
            })
            .join("\n---\n")
    };
    assert_eq!(view.state, "completed", "{:?}\n{}", view.error, logs());
    let mut participants = view.participants.clone();
    participants.sort();
    assert_eq!(
        participants,
        ["csv-hospital", "fhir-hospital", "omop-hospital"]
    );
    let last = view.rounds.last().unwrap();
    assert_eq!(last.participants.len(), 3);
    let auc = last.metrics.as_ref().unwrap().auc;
    assert!(auc > 0.95, "validation AUC {auc}");
    let log = logs();
    assert!(
        !log.contains(password.as_deref().unwrap_or("\u{0}")),
        "a client logged the database password"
    );
    coordinator.stop.stop();
    let _ = csv_hospital.await;
}

/// A query file is read-only and one statement: it cannot change the
/// hospital's database, and a table that does not fit the job is refused
/// with the column and row named.
#[test]
fn a_query_cannot_write_to_the_database_and_bad_cells_are_named() {
    let Some(server) = postgres_server() else {
        return;
    };
    let database = TestDatabase::create(&server, "omop_guard").unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = deal(&dir.path().join("parts"));
    runtime.block_on(async {
        fill_omop(database.url(), &files[0]).await;
        execute(database.url(), "CREATE SEQUENCE guard").await;
    });
    let rows = read_table(&files[0]).unwrap().n_rows();

    let read = |query: &str| {
        let path = dir.path().join("query.sql");
        std::fs::write(&path, query).unwrap();
        DataSource::from_args(database.url(), Some(&path), None)
            .unwrap()
            .read()
    };
    let error = read("SELECT person_id FROM person; DELETE FROM person")
        .unwrap_err()
        .to_string();
    assert!(error.contains("multiple commands"), "{error}");
    let error = read("DELETE FROM measurement RETURNING person_id")
        .unwrap_err()
        .to_string();
    assert!(error.contains("not a SELECT"), "{error}");
    let error =
        read("WITH gone AS (DELETE FROM measurement RETURNING person_id) SELECT * FROM gone")
            .unwrap_err()
            .to_string();
    assert!(error.contains("not a SELECT"), "{error}");
    let error = read("SELECT person_id, nextval('no_such_sequence') AS n FROM person")
        .unwrap_err()
        .to_string();
    assert!(error.contains("no_such_sequence"), "{error}");
    let error = read("SELECT * FROM no_such_table").unwrap_err().to_string();
    assert!(
        error.contains("no_such_table") && error.contains("query.sql"),
        "{error}"
    );
    let error = read("SELECT person_id AS a, year_of_birth AS a FROM person")
        .unwrap_err()
        .to_string();
    assert!(error.contains("`a` appears more than once"), "{error}");
    // Nothing was deleted.
    let counts =
        read("SELECT count(*) AS n, (SELECT count(*) FROM measurement) AS m FROM person").unwrap();
    assert_eq!(
        counts.column("n").unwrap()[0].as_deref(),
        Some(rows.to_string().as_str())
    );
    let measurements: usize = counts.column("m").unwrap()[0]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert!(measurements > rows * 30, "{measurements} measurements");
    // A function with side effects is stopped by the read-only transaction.
    let error = read("SELECT setval('guard', 5) AS v")
        .unwrap_err()
        .to_string();
    assert!(error.contains("read-only transaction"), "{error}");

    // A cell the job cannot read: named by column and row, as in a CSV.
    let query = std::fs::read_to_string(OMOP_QUERY)
        .unwrap()
        .replace("AS radius_mean", "AS radius_mean_measured")
        .replace(
            "  FROM person p",
            "  , CASE WHEN p.person_id = 2 THEN 'unreadable' ELSE '1.5' END AS radius_mean\n  FROM person p",
        );
    let table = read(&query).unwrap();
    let spec = cohort_coordinator::JobSpec::from_toml(&std::fs::read_to_string(JOB).unwrap())
        .unwrap()
        .data;
    let error = cohort_datasets::LocalDataset::from_table(&table, &spec)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("radius_mean") && error.contains("row 2") && error.contains("unreadable"),
        "{error}"
    );
}

/// `cohort bench fhir` writes the export it claims and reads all of it
/// back (the benchmark's numbers are in docs/BENCHMARKS.md; nothing is
/// timed here).
#[test]
fn the_fhir_benchmark_reads_every_resource_it_wrote() {
    let out = cohort(
        &[
            "bench",
            "fhir",
            "--patients",
            "50",
            "--observations",
            "5",
            "--json",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["patients"], 50);
    // 50 Patients, 250 Observations, a Condition for every third patient.
    assert_eq!(result["resources"], 50 + 250 + 17);
}

/// The CA of the test server's TLS certificate (`COHORT_TEST_POSTGRES_CA`;
/// CI makes one), or `None` (skip) unless `COHORT_REQUIRE_POSTGRES` is set.
fn postgres_ca() -> Option<PathBuf> {
    match std::env::var("COHORT_TEST_POSTGRES_CA") {
        Ok(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ => {
            assert!(
                std::env::var_os("COHORT_REQUIRE_POSTGRES").is_none(),
                "COHORT_REQUIRE_POSTGRES is set but COHORT_TEST_POSTGRES_CA (the PEM CA of the \
                 server's TLS certificate) is not"
            );
            eprintln!("COHORT_TEST_POSTGRES_CA is not set: skipping the TLS test");
            None
        }
    }
}

/// A hospital's database over TLS, as its IT team configures it: libpq's
/// `sslmode=verify-full` and `sslrootcert` in the URL encrypt the
/// connection (the server itself reports it) and verify the server's
/// certificate and name; another CA, a name the certificate does not
/// carry, or TLS without a CA to check it are refused, naming why.
#[test]
fn a_database_is_read_over_verified_tls() {
    let (Some(server), Some(ca)) = (postgres_server(), postgres_ca()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let query = dir.path().join("tls.sql");
    std::fs::write(
        &query,
        "SELECT ssl AS encrypted, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .unwrap();
    let read = |url: &str| {
        DataSource::from_args(url, Some(&query), None)
            .unwrap()
            .read()
    };
    let ca_text = ca.to_string_lossy();
    let verified = format!("{server}?sslmode=verify-full&sslrootcert={ca_text}");
    let table = read(&verified).unwrap();
    assert_eq!(cell(&table, "encrypted", 0).as_deref(), Some("true"));
    assert!(
        cell(&table, "version", 0).is_some_and(|v| v.starts_with("TLSv1.")),
        "{:?}",
        cell(&table, "version", 0)
    );
    // The same server without TLS: what the query reports is the truth.
    let plain = read(&format!("{server}?sslmode=disable")).unwrap();
    assert_eq!(cell(&plain, "encrypted", 0).as_deref(), Some("false"));

    // Another consortium's CA did not issue the server's certificate.
    let other = dir.path().join("other-ca");
    cohort_identity::CertificateAuthority::init("other", &other).unwrap();
    let wrong_ca = format!(
        "{server}?sslmode=verify-full&sslrootcert={}",
        other.join(cohort_identity::ca::CA_CERT_FILE).display()
    );
    let error = read(&wrong_ca).unwrap_err().to_string();
    assert!(error.contains("UnknownIssuer"), "{error}");
    // The certificate names 127.0.0.1, not localhost.
    let renamed = verified.replacen("127.0.0.1", "localhost", 1);
    let error = read(&renamed).unwrap_err().to_string();
    assert!(error.contains("not valid for name"), "{error}");
    let error = read(&format!("{server}?sslmode=require"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("sslrootcert"), "{error}");
    // The coordinator's state over the same TLS.
    let store = cohort_coordinator::store::postgres::PgConnection::connect(&verified);
    assert!(store.is_ok(), "{:?}", store.err());
}
