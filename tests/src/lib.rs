//! Test-only crate: the end-to-end tests are under `tests/`.
