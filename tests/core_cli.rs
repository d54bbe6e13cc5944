//! The binary's working subcommands, run as a user would.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_inplace-upgrade");

#[test]
fn crd_prints_exactly_the_checked_in_yaml_and_logs_stay_off_stdout() {
    let out = Command::new(BIN)
        .args(["crd", "--log-format", "json", "--log-level", "debug"])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checked_in = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/crds/inplaceupgradepolicies.inplace-upgrade.io.yaml"
    ))
    .expect("deploy/crds holds the CRD");
    assert_eq!(String::from_utf8_lossy(&out.stdout), checked_in);
}

#[test]
fn env_fallbacks_and_bad_flags() {
    let out = Command::new(BIN)
        .arg("crd")
        .env("INPLACE_UPGRADE_LOG_FORMAT", "xml")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("xml"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN)
        .args(["crd", "--log-level", "not a [filter"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid --log-level"));
    let out = Command::new(BIN).arg("--help").output().expect("runs");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("crd") && help.contains("[env: INPLACE_UPGRADE_LOG_FORMAT="),
        "{help}"
    );
}
