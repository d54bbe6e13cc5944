//! The `inplace-upgrade` annotation parser: no panic, and what parses renders back to the
//! same entries (parse → render → parse is the identity, render is a fixed point).
#![no_main]

use inplace_upgrade::annotation::{parse, render};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    match parse(value) {
        Ok(targets) => {
            assert!(!targets.is_empty(), "{value:?} parsed to no entries");
            assert_eq!(
                targets.len(),
                value.split(',').count(),
                "{value:?}: one entry per comma-separated item"
            );
            let mut names: Vec<&str> = targets.iter().map(|t| t.container.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(
                names.len(),
                targets.len(),
                "{value:?}: duplicate containers accepted"
            );
            let rendered = render(&targets);
            let again = parse(&rendered).unwrap_or_else(|e| {
                panic!("{value:?} rendered as {rendered:?} does not parse: {e}")
            });
            assert_eq!(
                again, targets,
                "{value:?} → {rendered:?} changed the entries"
            );
            assert_eq!(render(&again), rendered, "render is not a fixed point");
        }
        Err(e) => assert!(!e.to_string().is_empty(), "{value:?}: empty error message"),
    }
});
