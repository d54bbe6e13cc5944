//! Image references and annotation image forms: no panic; a parsed reference re-parses to
//! itself, its normalised form names the same image; an image form re-parses from its
//! rendering; a resolved image is a valid reference that keeps what the form asked for.
//!
//! Input: `<spec>\n<current image>` (without a newline, the spec is resolved against itself).
#![no_main]

use inplace_upgrade::image::{ImageRef, ImageSpec, same_image};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (spec, current) = text.split_once('\n').unwrap_or((text, text));

    for s in [spec, current] {
        if let Ok(r) = ImageRef::parse(s) {
            assert_eq!(r.as_str(), s, "a reference keeps the string as written");
            let again = ImageRef::parse(r.as_str()).expect("a parsed reference re-parses");
            assert_eq!(again, r);
            assert!(r.same_image(&r));
            let normalized = r.normalized();
            let n = ImageRef::parse(&normalized).unwrap_or_else(|e| {
                panic!("{s:?} normalises to {normalized:?}, which does not parse: {e}")
            });
            assert!(
                r.same_image(&n),
                "{s:?} and its normalised form {normalized:?} differ"
            );
            assert_eq!(n.normalized(), normalized, "normalising is idempotent");
            assert!(same_image(s, &normalized));
            assert_eq!(r.digest(), n.digest());
        }
    }

    let Ok(parsed) = ImageSpec::parse(spec) else {
        return;
    };
    let rendered = parsed.to_string();
    assert_eq!(
        ImageSpec::parse(&rendered).ok().as_ref(),
        Some(&parsed),
        "{spec:?} renders as {rendered:?}, which parses differently"
    );
    let Ok(resolved) = parsed.resolve(current) else {
        return;
    };
    let r = ImageRef::parse(&resolved).unwrap_or_else(|e| {
        panic!(
            "{spec:?} resolved against {current:?} gives {resolved:?}, which does not parse: {e}"
        )
    });
    match &parsed {
        ImageSpec::Tag(tag) => {
            assert_eq!(
                r.tag(),
                Some(tag.as_str()),
                "{spec:?} on {current:?} → {resolved:?}"
            );
            assert_eq!(
                r.digest(),
                None,
                "a new tag drops the old digest: {resolved:?}"
            );
        }
        ImageSpec::Digest(digest) => {
            assert_eq!(
                r.digest(),
                Some(digest.as_str()),
                "{spec:?} on {current:?} → {resolved:?}"
            );
            assert_eq!(
                r.tag(),
                None,
                "a new digest drops the old tag: {resolved:?}"
            );
        }
        ImageSpec::Reference(written) => {
            assert_eq!(
                r.tag(),
                written.tag(),
                "{spec:?} on {current:?} → {resolved:?}"
            );
            assert_eq!(
                r.digest(),
                written.digest(),
                "{spec:?} on {current:?} → {resolved:?}"
            );
        }
    }
    if !matches!(parsed, ImageSpec::Reference(_)) {
        let cur = ImageRef::parse(current).expect("resolving against it succeeded");
        assert!(
            r.same_repository(&cur),
            "{spec:?} moved {current:?} to another repository: {resolved:?}"
        );
    }
});
