//! `callflow`: the command line. `callflow serve` runs the platform with embedded defaults.

mod config;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "callflow",
    version,
    about = "A self-hostable, Twilio-compatible voice platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the platform: HTTP API, webhook delivery (and SIP, media and plugins as they land).
    Serve(config::Overrides),
    /// Print the effective configuration as TOML.
    Config(config::Overrides),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(o) => {
            let config = config::Config::load(&o)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(serve::run(config))
        }
        Command::Config(o) => {
            let config = config::Config::load(&o)?;
            print!("{}", toml::to_string_pretty(&config)?);
            Ok(())
        }
    }
}
