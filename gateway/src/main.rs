//! `gateway`: runs the WebSocket gateway.

use std::process::ExitCode;

use gateway::config::{Config, LogFormat, SETTINGS};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn usage() -> String {
    let mut text = String::from(
        "gateway: a WebSocket gateway speaking the Pusher Channels protocol\n\n\
         usage: gateway [--config FILE] [--SETTING VALUE]...\n\
         \x20      gateway cert [--dir DIR] [NAME...]   (a development CA and certificate)\n\n\
         Every setting can also be given in the JSON config file (snake_case key) or as an\n\
         environment variable GATEWAY_UPPER_CASE. Flags override the environment, which\n\
         overrides the file.\n\nsettings:\n",
    );
    for (key, help) in SETTINGS {
        text.push_str(&format!("  --{:<24} {help}\n", key.replace('_', "-")));
    }
    text
}

/// `gateway cert [--dir DIR] [NAME...]`: a development CA and a certificate for the names.
fn make_certificate(args: &[String]) -> ExitCode {
    let mut dir = std::path::PathBuf::from("certs");
    let mut names = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.as_slice().first()) {
            ("--dir", Some(value)) => {
                dir = value.into();
                args.next();
            }
            (name, _) if !name.starts_with('-') => names.push(name.to_string()),
            _ => {
                eprintln!("usage: gateway cert [--dir DIR] [NAME...]");
                return ExitCode::from(2);
            }
        }
    }
    if names.is_empty() {
        names = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    }
    match gateway::tls::write_development_certificates(&dir, &names) {
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

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("cert") {
        return make_certificate(&args[1..]);
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{}", usage());
        return ExitCode::SUCCESS;
    }
    if args.iter().any(|a| a == "--version") {
        println!("gateway {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let config = match Config::load(&args, std::env::vars()) {
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
