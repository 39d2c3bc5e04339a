-- One row per patient from an OMOP CDM (v5.4) database, in the columns of
-- examples/wdbc-mlp.toml: `cohort client --data postgres://USER@HOST/CDM
-- --data-query examples/omop/wdbc-features.sql`.
--
-- The 30 WDBC cell-nucleus measurements are `measurement` rows whose
-- concept is a site-specific (local) concept of vocabulary 'WDBC' with the
-- feature's name as its concept_code; the diagnosis is a breast-cancer
-- `condition_occurrence` (standard concept 4112853, "Malignant tumor of
-- breast", SNOMED 254837009): 'M' when the person has one, else 'B'. A
-- measurement taken more than once counts with its latest value.
--
-- The query runs in a read-only transaction; PostgreSQL casts every column
-- to text, and Cohort validates the cells as it would a CSV's.
WITH latest AS (
    SELECT DISTINCT ON (m.person_id, c.concept_code)
           m.person_id, c.concept_code, m.value_as_number
      FROM measurement m
      JOIN concept c ON c.concept_id = m.measurement_concept_id
     WHERE c.vocabulary_id = 'WDBC'
     ORDER BY m.person_id, c.concept_code, m.measurement_date DESC, m.measurement_id DESC
)
SELECT p.person_source_value AS patient_id,
       CASE WHEN EXISTS (SELECT 1 FROM condition_occurrence co
                          WHERE co.person_id = p.person_id
                            AND co.condition_concept_id = 4112853)
            THEN 'M' ELSE 'B' END AS diagnosis,
       MAX(l.value_as_number) FILTER (WHERE l.concept_code = 'radius_mean') AS radius_mean,
       MAX(l.value_as_number) FILTER (WHERE l.concept_code = 'texture_mean') AS texture_mean,
       MAX(l.value_as_number) FILTER (WHERE l.concept_code = 'perimeter_mean') AS perimeter_mean,
       MAX(l.value_as_number) FILTER (WHERE l.concept_code = 'area_mean') AS area_mean,
       MAX(l.value_as_number) FILTER (WHERE l.concept_code = 'smoothness_mean') AS smoothness_mean,
       MAX(l.value_as_number) FILTER (WHERE l.concept_code = 'compactness_mean') AS compactness_mean,
       MAX(l.value_as_number) FILTER (WHERE l.concept_code = 'concavity_mean') AS concavity_mean,
       MAX(l.value_as_number) FILTER (WHERE l.concept_code = 'concave_points_mean') AS concave_points_mean,
       MAX(l.value_as_number) FILTER (WHERE l.concept_code = 'symmetry_mean') AS symmetry_mean,
       MAX(l.value_as_number) FILTER (WHERE l.concept_code = 'fractal_dimension_mean') AS fractal_dimension_mean,
       MAX(l.value_as_number) FILTER (WHERE l.concept_code = 'radius_se') AS radius_se,
       MAX(l.value_as_number) FILTER (WHERE l.concept_code = 'texture_se') AS texture_se,
       MAX(l.value_as_number) FILTER (WHERE l.concept_code = 'perimeter_se') AS perimeter_se,
       MAX(l.value_as_number) FILTER (WHERE l.concept_code = 'area_se') AS area_se,
       MAX(l.value_as_number) FILTER (WHERE l.concept_code = 'smoothness_se') AS smoothness_se,
       MAX(l.value_as_number) FILTER (WHERE l.concept_code = 'compactness_se') AS compactness_se,
       MAX(l.value_as_number) FILTER (WHERE l.concept_code = 'concavity_se') AS concavity_se,
       MAX(l.value_as_number) FILTER (WHERE l.concept_code = 'concave_points_se') AS concave_points_se,
       MAX(l.value_as_number) FILTER (WHERE l.concept_code = 'symmetry_se') AS symmetry_se,
       MAX(l.value_as_number) FILTER (WHERE l.concept_code = 'fractal_dimension_se') AS fractal_dimension_se,
       MAX(l.value_as_number) FILTER (WHERE l.concept_code = 'radius_worst') AS radius_worst,
       MAX(l.value_as_number) FILTER (WHERE l.concept_code = 'texture_worst') AS texture_worst,
       MAX(l.value_as_number) FILTER (WHERE l.concept_code = 'perimeter_worst') AS perimeter_worst,
       MAX(l.value_as_number) FILTER (WHERE l.concept_code = 'area_worst') AS area_worst,
       MAX(l.value_as_number) FILTER (WHERE l.concept_code = 'smoothness_worst') AS smoothness_worst,
       MAX(l.value_as_number) FILTER (WHERE l.concept_code = 'compactness_worst') AS compactness_worst,
       MAX(l.value_as_number) FILTER (WHERE l.concept_code = 'concavity_worst') AS concavity_worst,
       MAX(l.value_as_number) FILTER (WHERE l.concept_code = 'concave_points_worst') AS concave_points_worst,
       MAX(l.value_as_number) FILTER (WHERE l.concept_code = 'symmetry_worst') AS symmetry_worst,
       MAX(l.value_as_number) FILTER (WHERE l.concept_code = 'fractal_dimension_worst') AS fractal_dimension_worst
  FROM person p
  LEFT JOIN latest l ON l.person_id = p.person_id
 GROUP BY p.person_id, p.person_source_value
 ORDER BY p.person_id;
