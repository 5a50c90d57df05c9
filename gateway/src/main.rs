//! `gateway`: runs the WebSocket gateway.

use std::process::ExitCode;

use gateway::config::{Config, LogFormat, SETTINGS};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn usage() -> String {
    let mut text = String::from(
        "gateway: a WebSocket gateway speaking the Pusher Channels protocol\n\n\
         usage: gateway [--config FILE] [--SETTING VALUE]...\n\n\
         Every setting can also be given in the JSON config file (snake_case key) or as an\n\
         environment variable GATEWAY_UPPER_CASE. Flags override the environment, which\n\
         overrides the file.\n\nsettings:\n",
    );
    for (key, help) in SETTINGS {
        text.push_str(&format!("  --{:<24} {help}\n", key.replace('_', "-")));
    }
    text
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
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
