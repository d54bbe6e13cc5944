//! Admission webhook transport.
