//! `previewd`, built inside the test crate so end-to-end tests can run the real binary.

fn main() -> std::process::ExitCode {
    previewd::cli::main()
}
