use cohort_identity::{
    CertificateAuthority, IdentityError, IssueRequest, Kit, Principal, RevocationList, Role,
    tls::ServerTls,
};

fn ca(dir: &std::path::Path) -> CertificateAuthority {
    CertificateAuthority::init("oncology-net", &dir.join("ca")).unwrap()
}

#[test]
fn issued_kits_bind_role_name_and_signing_key() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ca = ca(tmp.path());
    let kit = ca
        .issue(
            &IssueRequest::for_days(Role::Hospital, "hospital-a", 30),
            &tmp.path().join("a"),
        )
        .unwrap();
    assert_eq!(kit.principal.role, Role::Hospital);
    assert_eq!(kit.principal.name, "hospital-a");
    assert_eq!(kit.consortium, "oncology-net");
    let reloaded = Kit::load(&tmp.path().join("a")).unwrap();
    assert_eq!(reloaded.principal, kit.principal);
    let from_cert = Principal::from_certificate(&reloaded.cert_der().unwrap()).unwrap();
    assert_eq!(from_cert.signing_key, kit.signing_key.verifying_key());
    // A signature made with the kit verifies under the key in the certificate.
    let sig = kit.signing_key.sign("test", b"hello").unwrap();
    from_cert
        .signing_key
        .verify("test", b"hello", &sig)
        .unwrap();
    kit.check_current().unwrap();
    // Private keys are 0600.
    use std::os::unix::fs::PermissionsExt;
    for f in ["key.pem", "signing-key.pem"] {
        let mode = std::fs::metadata(tmp.path().join("a").join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    // Reopening the CA keeps its index.
    let ca = CertificateAuthority::open(&tmp.path().join("ca")).unwrap();
    assert_eq!(ca.issued().len(), 1);
    assert_eq!(ca.issued()[0].serial, kit.principal.serial);
}

#[test]
fn bad_requests_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ca = ca(tmp.path());
    let err = CertificateAuthority::init("oncology-net", &tmp.path().join("ca"))
        .err()
        .unwrap();
    assert!(matches!(err, IdentityError::CaExists { .. }), "{err}");
    let err = ca
        .issue(
            &IssueRequest::for_days(Role::Hospital, "bad name", 30),
            &tmp.path().join("x"),
        )
        .unwrap_err();
    assert!(err.to_string().contains("bad name"), "{err}");
    ca.issue(
        &IssueRequest::for_days(Role::Hospital, "h1", 30),
        &tmp.path().join("h1"),
    )
    .unwrap();
    let err = ca
        .issue(
            &IssueRequest::for_days(Role::Developer, "h1", 30),
            &tmp.path().join("h1-dev"),
        )
        .unwrap_err();
    assert!(matches!(err, IdentityError::RoleConflict { .. }), "{err}");
    // An existing kit is never overwritten.
    let err = ca
        .issue(
            &IssueRequest::for_days(Role::Hospital, "h1", 30),
            &tmp.path().join("h1"),
        )
        .unwrap_err();
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");
    let mut with_host = IssueRequest::for_days(Role::Hospital, "h2", 30);
    with_host.hosts = vec!["example.org".into()];
    assert!(ca.issue(&with_host, &tmp.path().join("h2")).is_err());
    let mut bad_host = IssueRequest::for_days(Role::Coordinator, "c", 30);
    bad_host.hosts = vec!["not a host".into()];
    let err = ca.issue(&bad_host, &tmp.path().join("c")).unwrap_err();
    assert!(matches!(err, IdentityError::BadHost(_)), "{err}");
    let err = ca.revoke("nobody").unwrap_err();
    assert!(matches!(err, IdentityError::UnknownMember(_)), "{err}");
}

#[test]
fn loose_key_permissions_and_mismatched_kits_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let mut ca = ca(tmp.path());
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    ca.issue(&IssueRequest::for_days(Role::Hospital, "a", 30), &a)
        .unwrap();
    ca.issue(&IssueRequest::for_days(Role::Hospital, "b", 30), &b)
        .unwrap();
    std::fs::set_permissions(a.join("key.pem"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Kit::load(&a).unwrap_err();
    assert!(matches!(err, IdentityError::KeyPermissions { .. }), "{err}");
    std::fs::set_permissions(a.join("key.pem"), std::fs::Permissions::from_mode(0o600)).unwrap();
    // b's signing key in a's kit.
    std::fs::copy(b.join("signing-key.pem"), a.join("signing-key.pem")).unwrap();
    let err = Kit::load(&a).unwrap_err();
    assert!(err.to_string().contains("signing key"), "{err}");
    // A certificate from another consortium.
    let mut other = CertificateAuthority::init("other-net", &tmp.path().join("other")).unwrap();
    other
        .issue(
            &IssueRequest::for_days(Role::Hospital, "a", 30),
            &tmp.path().join("oa"),
        )
        .unwrap();
    std::fs::copy(tmp.path().join("oa").join("ca.crt"), b.join("ca.crt")).unwrap();
    let err = Kit::load(&b).unwrap_err();
    assert!(err.to_string().contains("not issued by"), "{err}");
}

#[test]
fn revocation_lists_are_signed_and_grow() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ca = ca(tmp.path());
    let kit = ca
        .issue(
            &IssueRequest::for_days(Role::Hospital, "h1", 30),
            &tmp.path().join("h1"),
        )
        .unwrap();
    let ca_der = kit.ca_der().unwrap();
    let before = RevocationList::load(&ca.crl_path(), &ca_der).unwrap();
    assert!(before.is_empty());
    let revoked = ca.revoke("h1").unwrap();
    assert_eq!(revoked.len(), 1);
    let after = RevocationList::load(&ca.crl_path(), &ca_der).unwrap();
    assert!(after.is_revoked(&kit.principal.serial));
    assert!(after.number() > before.number());
    assert!(matches!(
        ca.revoke("h1").unwrap_err(),
        IdentityError::AlreadyRevoked(_)
    ));
    // A list signed by another CA is refused.
    let other = CertificateAuthority::init("other-net", &tmp.path().join("other")).unwrap();
    let err = RevocationList::load(&other.crl_path(), &ca_der).unwrap_err();
    assert!(err.to_string().contains("not signed"), "{err}");
    // A damaged file is refused.
    let broken = tmp.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )
    .unwrap();
    assert!(RevocationList::load(&broken, &ca_der).is_err());
}

#[test]
fn server_config_reloads_the_revocation_list() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ca = ca(tmp.path());
    let coordinator = ca
        .issue(
            &IssueRequest::for_days(Role::Coordinator, "coordinator", 30),
            &tmp.path().join("coord"),
        )
        .unwrap();
    let hospital = ca
        .issue(
            &IssueRequest::for_days(Role::Hospital, "h1", 30),
            &tmp.path().join("h1"),
        )
        .unwrap();
    let server = ServerTls::new(&coordinator, Some(&ca.crl_path())).unwrap();
    assert!(!server.revocation.is_revoked(&hospital.principal.serial));
    assert!(server.revocation.refresh().unwrap().is_none());
    ca.revoke("h1").unwrap();
    let list = server.revocation.refresh().unwrap().expect("list changed");
    assert_eq!(list.len(), 1);
    assert!(server.revocation.is_revoked(&hospital.principal.serial));
    // A hospital kit cannot serve.
    assert!(ServerTls::new(&hospital, None).is_err());
}
