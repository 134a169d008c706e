//! Unit tests of the generated files.

use super::*;

#[test]
fn diadoc_auth_headers_are_split_into_parameters() {
    let p =
        diadoc_auth_params("DiadocAuth ddauth_api_client_id=key-1, ddauth_token=ab/c+d==").unwrap();
    assert_eq!(p["ddauth_api_client_id"], "key-1");
    assert_eq!(p["ddauth_token"], "ab/c+d==");
    assert!(diadoc_auth_params("DiadocAuthddauth_api_client_id=x").is_none());
    assert!(diadoc_auth_params("Bearer x").is_none());
    assert!(diadoc_auth_params("DiadocAuth garbage").is_none());
}

#[test]
fn generated_files_are_well_formed() {
    assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    let zip = KonturDiadocSim::archive_of("d", true);
    assert!(zip.starts_with(b"PK\x03\x04"));
    assert_eq!(&zip[zip.len() - 22..zip.len() - 18], b"PK\x05\x06");
    let protocol = KonturDiadocSim::protocol_of("d");
    assert!(protocol.print_form.starts_with(b"%PDF-1.4"));
    assert!(protocol.print_form.ends_with(b"%%EOF\n"));
    assert_eq!(&protocol.signature[..2], &[0x30, 0x82]);
    assert!(
        !KonturDiadocSim::protocol_of(NOT_PDF)
            .print_form
            .starts_with(b"%PDF")
    );
}
