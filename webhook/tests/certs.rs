//! Certificate generation and the renewal decision a leader makes.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, SystemTime},
};

use inplace_upgrade_webhook::certs::{
    CertificatePem, Renewal, RenewalReason, SubjectAltNames, check_ca, check_serving_certificate,
    generate_ca, generate_serving_certificate, inspect_pem,
};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

fn names() -> SubjectAltNames {
    SubjectAltNames::for_service("inplace-upgrade-webhook", "inplace-upgrade-system")
        .with_ip_address(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

fn ca() -> CertificatePem {
    generate_ca("inplace-upgrade webhook CA", 3650 * DAY).expect("CA")
}

#[test]
fn generated_ca_and_serving_certificate_describe_themselves() {
    let ca = ca();
    let serving = generate_serving_certificate(&ca, "inplace-upgrade-webhook", &names(), 365 * DAY)
        .expect("serving certificate");
    assert!(serving.key_pem.contains("PRIVATE KEY"));
    assert!(
        !format!("{serving:?}").contains("PRIVATE KEY"),
        "Debug must not print the key"
    );

    let ca_info = inspect_pem(&ca.cert_pem).expect("CA parses");
    assert!(ca_info.is_ca);
    assert!(ca_info.subject.contains("inplace-upgrade webhook CA"));

    let info = inspect_pem(&serving.cert_pem).expect("serving parses");
    assert!(!info.is_ca);
    assert_eq!(info.issuer, ca_info.subject);
    assert_eq!(
        info.subject_alt_names.dns_names,
        vec![
            "inplace-upgrade-webhook",
            "inplace-upgrade-webhook.inplace-upgrade-system",
            "inplace-upgrade-webhook.inplace-upgrade-system.svc",
            "inplace-upgrade-webhook.inplace-upgrade-system.svc.cluster.local",
        ]
    );
    assert_eq!(
        info.subject_alt_names.ip_addresses,
        vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
    );
    let now = SystemTime::now();
    let lifetime = info.not_after.duration_since(now).expect("in the future");
    assert!(
        lifetime > 364 * DAY && lifetime <= 365 * DAY,
        "{lifetime:?}"
    );
    assert!(info.not_before < now, "back-dated for clock skew");
}

#[test]
fn a_fresh_pair_needs_no_renewal() {
    let ca = ca();
    let serving =
        generate_serving_certificate(&ca, "webhook", &names(), 90 * DAY).expect("serving");
    let now = SystemTime::now();
    assert!(matches!(
        check_ca(&ca, 365 * DAY, now),
        Renewal::NotNeeded { .. }
    ));
    match check_serving_certificate(&ca.cert_pem, &serving, &names(), 30 * DAY, now) {
        Renewal::NotNeeded { not_after } => {
            assert_eq!(
                not_after,
                inspect_pem(&serving.cert_pem).expect("parses").not_after
            )
        }
        other => panic!("expected no renewal, got {other:?}"),
    }
}

#[test]
fn each_reason_to_renew_is_reported() {
    let ca = ca();
    let other_ca = ca_with_name("someone else's CA");
    let serving =
        generate_serving_certificate(&ca, "webhook", &names(), 90 * DAY).expect("serving");
    let now = SystemTime::now();

    let expiring = check_serving_certificate(&ca.cert_pem, &serving, &names(), 91 * DAY, now);
    assert!(
        matches!(expiring, Renewal::Needed(RenewalReason::ExpiresSoon { .. })),
        "{expiring:?}"
    );

    let wider = names().with_dns_name("webhook.example.com");
    assert_eq!(
        check_serving_certificate(&ca.cert_pem, &serving, &wider, DAY, now),
        Renewal::Needed(RenewalReason::MissingSubjectAltName(
            "webhook.example.com".into()
        ))
    );
    let other_ip = names().with_ip_address(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
    assert_eq!(
        check_serving_certificate(&ca.cert_pem, &serving, &other_ip, DAY, now),
        Renewal::Needed(RenewalReason::MissingSubjectAltName("10.0.0.1".into()))
    );

    assert_eq!(
        check_serving_certificate(&other_ca.cert_pem, &serving, &names(), DAY, now),
        Renewal::Needed(RenewalReason::NotSignedByCa)
    );
    // Same subject name, different key: the issuer name matches but the signature does not.
    let impostor = ca_with_name("inplace-upgrade webhook CA");
    assert_eq!(
        check_serving_certificate(&impostor.cert_pem, &serving, &names(), DAY, now),
        Renewal::Needed(RenewalReason::NotSignedByCa)
    );

    let other = generate_serving_certificate(&ca, "webhook", &names(), 90 * DAY).expect("other");
    let mismatched = CertificatePem {
        cert_pem: serving.cert_pem.clone(),
        key_pem: other.key_pem,
    };
    assert_eq!(
        check_serving_certificate(&ca.cert_pem, &mismatched, &names(), DAY, now),
        Renewal::Needed(RenewalReason::KeyMismatch)
    );

    let garbage = CertificatePem {
        cert_pem: "not a certificate".into(),
        key_pem: serving.key_pem.clone(),
    };
    assert!(matches!(
        check_serving_certificate(&ca.cert_pem, &garbage, &names(), DAY, now),
        Renewal::Needed(RenewalReason::Unreadable(_))
    ));

    let long_ago = now - 3 * DAY;
    assert_eq!(
        check_serving_certificate(&ca.cert_pem, &serving, &names(), DAY, long_ago),
        Renewal::Needed(RenewalReason::NotYetValid)
    );

    // A serving certificate outliving its CA is renewed with the CA.
    let short_ca = generate_ca("short-lived CA", 10 * DAY).expect("CA");
    let long_serving =
        generate_serving_certificate(&short_ca, "webhook", &names(), 90 * DAY).expect("serving");
    assert!(matches!(
        check_serving_certificate(&short_ca.cert_pem, &long_serving, &names(), 30 * DAY, now),
        Renewal::Needed(RenewalReason::ExpiresSoon { .. })
    ));

    assert_eq!(
        check_ca(&serving, DAY, now),
        Renewal::Needed(RenewalReason::NotCa)
    );
    assert!(matches!(
        check_ca(&ca, 3651 * DAY, now),
        Renewal::Needed(RenewalReason::ExpiresSoon { .. })
    ));
}

#[test]
fn a_serving_certificate_needs_a_name() {
    let err = generate_serving_certificate(&ca(), "webhook", &SubjectAltNames::default(), DAY)
        .expect_err("no SAN");
    assert!(err.to_string().contains("subjectAltName"), "{err}");
}

#[test]
fn an_invalid_ca_is_an_error_not_a_panic() {
    let bad = CertificatePem {
        cert_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
        key_pem: "garbage".into(),
    };
    assert!(generate_serving_certificate(&bad, "webhook", &names(), DAY).is_err());
    assert!(inspect_pem(&bad.cert_pem).is_err());
    assert!(inspect_pem("").is_err());
}

fn ca_with_name(name: &str) -> CertificatePem {
    generate_ca(name, 3650 * DAY).expect("CA")
}
