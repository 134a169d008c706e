//! Unit tests of the simulator's data and answers.

use super::*;

#[test]
fn the_first_register_is_the_seeds_and_data_is_spread() {
    assert_eq!(serial_number(0), "00107703864827");
    let first = register_value(0);
    assert_eq!(first["registrationNumber"], "000000003027865");
    assert_eq!(first["fiscalStorageSerialNumber"], "9999078902004339");
    assert_eq!(first["fiscalStoragePercentageUse"], 85.34);
    assert_eq!(first["fiscalizationDate"], "2019-07-22T14:03:00+00:00");
    let codes: HashSet<u64> = (0..9)
        .map(|i| register_value(i)["networkErrorCode"].as_u64().unwrap())
        .collect();
    assert_eq!(codes.len(), 9);
    assert!(register_value(3).get("unsentDocs").is_none());
    for i in 0..300 {
        let p = register_value(i)["fiscalStoragePercentageUse"]
            .as_f64()
            .unwrap();
        assert!((0.0..=100.0).contains(&p), "{p}");
    }
}

#[test]
fn issued_times_look_like_the_seeds() {
    let issued = issued_now();
    assert!(issued.ends_with("+03:00"), "{issued}");
    let fraction = issued.split('.').nth(1).unwrap();
    assert_eq!(fraction.len(), 7 + 6, "{issued}");
    assert!(chrono::DateTime::parse_from_rfc3339(&issued).is_ok());
}

#[test]
fn the_single_register_answer_repeats_its_serial_number_like_the_seed() {
    let text = data_text(0, Some("00107703864828"));
    assert!(
        text.starts_with(
            r#"{"serialNumber":"00107703864827","serialNumber":"00107703864828","registrationNumber""#
        ),
        "{text}"
    );
}
