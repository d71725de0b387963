//! Conformance suite run against every engine (placeholder).
