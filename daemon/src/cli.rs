//! The `previewd` command line: `run` the daemon, `ls` its previews, the standalone `proxy`,
//! and the `hook` the git mirror calls. Shared by the installed binary and the test build of it.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, RunArgs};
use crate::model::PreviewStatus;
use crate::{check_spec, control, daemon, hook, standalone};

#[derive(Debug, Parser)]
#[command(
    name = "previewd",
    version,
    about = "Every git branch a live HTTPS preview, cleaned up on merge"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (embedded defaults serve a laptop: ./.previewd, *.preview.localhost:8443)
    Run(Box<RunArgs>),
    /// List the running daemon's previews
    Ls {
        /// Print a JSON array instead of a table
        #[arg(long)]
        json: bool,
        /// State dir of the daemon to ask
        #[arg(long, value_name = "DIR", default_value = ".previewd")]
        state_dir: PathBuf,
    },
    /// Remove what previewd no longer needs now: objects of merged, deleted or expired
    /// branches, superseded images, old build logs
    Gc {
        /// Only list what would be removed
        #[arg(long)]
        dry_run: bool,
        /// State dir of the daemon to ask
        #[arg(long, value_name = "DIR", default_value = ".previewd")]
        state_dir: PathBuf,
    },
    /// Run only the TLS reverse proxy, routes from flags and an admin socket (no git, no
    /// Docker); `previewd proxy route` changes the routes of a running one
    Proxy(Box<standalone::ProxyCommand>),
    /// Check a compose file and its x-previewd block against the host's policy: every error
    /// with its key path, line and column; exit 1 when there is any
    CheckSpec {
        /// The compose file, or a directory to look in for compose.yaml, compose.yml,
        /// docker-compose.yaml or docker-compose.yml [default: .]
        path: Option<PathBuf>,
        /// The host's config file, for its [policy] (default: previewd's safe defaults)
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Check settings without running anything
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Called by the git hooks previewd installs into its mirror
    #[command(hide = true)]
    Hook {
        #[command(subcommand)]
        hook: HookCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate the flags and config file `previewd run` would get, print the result, exit 2
    /// if they are wrong (systemd's ExecStartPre runs it)
    Check(Box<RunArgs>),
}

#[derive(Debug, Subcommand)]
enum HookCommand {
    /// Reads `<old> <new> <ref>` lines on stdin, pokes the daemon, prints preview URLs
    PostReceive {
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
    },
}

/// Exit status for bad flags or configuration, as clap uses for usage errors.
const USAGE: u8 = 2;

pub fn main() -> ExitCode {
    let command = match Cli::parse().command {
        // It sizes its own runtime.
        Command::Proxy(command) => return standalone::main(*command),
        // Pure: no runtime needed.
        Command::CheckSpec { path, config } => return check_spec::main(path, config),
        command => command,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("previewd: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match command {
        Command::Run(args) => {
            let config = match Config::load(&args) {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("previewd: {error}");
                    return ExitCode::from(USAGE);
                }
            };
            init_logging();
            runtime.block_on(run(config))
        }
        Command::Ls { json, state_dir } => {
            let socket = crate::config::socket_path(&state_dir);
            match runtime.block_on(control::list(&socket)) {
                Ok(rows) => {
                    print_rows(&rows, json);
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("previewd: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Config {
            command: ConfigCommand::Check(args),
        } => match Config::load(&args) {
            Ok(config) => {
                println!("{config:#?}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("previewd: {error}");
                ExitCode::from(USAGE)
            }
        },
        Command::Gc { dry_run, state_dir } => {
            let socket = crate::config::socket_path(&state_dir);
            match runtime.block_on(control::gc(&socket, !dry_run)) {
                Ok(lines) if lines.is_empty() => {
                    println!("nothing to collect");
                    ExitCode::SUCCESS
                }
                Ok(lines) => {
                    let verb = if dry_run { "would remove" } else { "removing" };
                    for line in lines {
                        println!("{verb} {line}");
                    }
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("previewd: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Proxy(_) | Command::CheckSpec { .. } => {
            unreachable!("handled before the runtime starts")
        }
        Command::Hook {
            hook: HookCommand::PostReceive { state_dir },
        } => {
            let stdin = std::io::stdin().lock();
            runtime.block_on(hook::post_receive(
                &state_dir,
                stdin,
                &mut std::io::stdout(),
            ));
            ExitCode::SUCCESS
        }
    }
}

async fn run(config: Config) -> ExitCode {
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    match daemon::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "previewd cannot run");
            eprintln!("previewd: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}

pub(crate) fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn print_rows(rows: &[PreviewStatus], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(rows).expect("statuses serialize")
        );
        return;
    }
    let header = ["BRANCH", "SLUG", "COMMIT", "STATE", "URL"];
    let table: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.branch.clone(),
                r.slug.clone(),
                r.commit.chars().take(12).collect(),
                match r.queue_position {
                    Some(place) => format!("{} #{place}", r.state.as_str()),
                    None => r.state.as_str().to_owned(),
                },
                r.url.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &table {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header);
    for row in &table {
        line([&row[0], &row[1], &row[2], &row[3], &row[4]]);
    }
}
