//! `gateway`: runs the WebSocket gateway.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gateway::config::{Config, LogFormat};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A development CA and a certificate for the names, to try TLS with.
#[derive(clap::Parser)]
#[command(name = "gateway cert")]
struct Cert {
    /// Directory the CA, chain and key are written to.
    #[arg(long, value_name = "DIR", default_value = "certs")]
    dir: PathBuf,
    /// Host names and addresses the certificate is for.
    #[arg(value_name = "NAME", default_values = ["localhost", "127.0.0.1", "::1"])]
    names: Vec<String>,
}

fn make_certificate(args: &[String]) -> ExitCode {
    let cert =
        Cert::parse_from(std::iter::once("gateway cert").chain(args.iter().map(String::as_str)));
    match gateway::tls::write_development_certificates(&cert.dir, &cert.names) {
        Ok(made) => {
            println!(
                "wrote {} (trust this CA in clients), {} and {}\n\
                 run: gateway --tls-port 6443 --tls-cert {} --tls-key {}",
                made.ca.display(),
                made.chain.display(),
                made.key.display(),
                made.chain.display(),
                made.key.display()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("gateway cert: {error}");
            ExitCode::from(1)
        }
    }
}

/// The command line as text; `std::env::args` would panic on an argument that is not UTF-8.
fn arguments() -> Result<Vec<String>, String> {
    std::env::args_os()
        .skip(1)
        .map(|arg| {
            arg.into_string()
                .map_err(|arg| format!("argument {arg:?} is not UTF-8"))
        })
        .collect()
}

/// The environment as text. A variable that is not UTF-8 is left out, unless it is one of the
/// gateway's (`GATEWAY_*`), which is refused; `std::env::vars` would panic on either.
fn environment() -> Result<Vec<(String, String)>, String> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        let ours = name.to_string_lossy().starts_with("GATEWAY_");
        match (name.into_string(), value.into_string()) {
            (Ok(name), Ok(value)) => vars.push((name, value)),
            (name, _) if ours => {
                let name = name.unwrap_or_else(|name| name.to_string_lossy().into_owned());
                return Err(format!("{name} is not UTF-8"));
            }
            _ => {}
        }
    }
    Ok(vars)
}

fn main() -> ExitCode {
    let args = match arguments() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("gateway: {error}");
            return ExitCode::from(2);
        }
    };
    if args.first().map(String::as_str) == Some("cert") {
        return make_certificate(&args[1..]);
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{}", Config::help());
        return ExitCode::SUCCESS;
    }
    if args.iter().any(|a| a == "--version") {
        println!("gateway {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let config = match environment()
        .and_then(|env| Config::load(&args, env).map_err(|error| error.to_string()))
    {
        Ok(config) => config,
        Err(error) => {
            eprintln!("gateway: {error}\n(see gateway --help)");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match config.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
    match gateway::server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("gateway: {error}");
            ExitCode::from(1)
        }
    }
}
