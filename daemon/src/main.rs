//! The `previewd` binary: all of it lives in the library, see `cli`.

fn main() -> std::process::ExitCode {
    previewd::cli::main()
}
