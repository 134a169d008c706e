//! Unit tests of the simulator's request parsing.

use super::*;

#[test]
fn content_ranges_are_read_strictly() {
    let headers = |v: &str| {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_RANGE, v.parse().unwrap());
        h
    };
    assert_eq!(
        content_range(&headers("bytes 0-9/10")),
        Some((0, 9, Some(10)))
    );
    assert_eq!(
        content_range(&headers("bytes 10-19/*")),
        Some((10, 19, None))
    );
    assert_eq!(content_range(&headers("bytes 0-10/10")), None);
    assert_eq!(content_range(&headers("bytes 5-4/10")), None);
    assert_eq!(content_range(&headers("0-4/10")), None);
}

#[test]
fn parts_are_assembled_in_any_order_and_twice_is_harmless() {
    let whole: Vec<u8> = (0..100u8).collect();
    let mut c = Content {
        total: 100,
        ..Default::default()
    };
    assert!(!c.add(50, Bytes::copy_from_slice(&whole[50..])));
    assert!(!c.add(50, Bytes::copy_from_slice(&whole[50..])));
    assert!(c.add(0, Bytes::copy_from_slice(&whole[..60])));
    assert_eq!(
        c.sha256.as_deref(),
        Some(crate::job::digest::hex(&Sha256::digest(&whole)).as_str())
    );
}
