//! `callflow`: the command line. `callflow serve` runs the platform with embedded defaults.

mod callouts;
mod client;
mod config;
mod replay;
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
    /// Manage plugins on a running server: upload, list, bind.
    Plugins {
        #[command(flatten)]
        connection: client::Connection,
        #[command(subcommand)]
        command: client::PluginCommand,
    },
    /// Run callouts on a running server: create, load contacts, start, pause, stop, watch,
    /// export results.
    Callouts {
        #[command(flatten)]
        server: callouts::Server,
        #[command(subcommand)]
        command: callouts::CalloutCommand,
    },
    /// Re-run a call's flow events through another plugin build and show where the commands
    /// differ (exit status 1 when they do).
    Replay(replay::ReplayArgs),
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("callflow: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(o) => {
            let config = config::Config::load(&o)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(serve::run(config))
        }
        Command::Plugins {
            connection,
            command,
        } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(client::run(connection, command))
        }
        Command::Callouts { server, command } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(callouts::run(server, command))
        }
        Command::Replay(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            if runtime.block_on(replay::run(args))? {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
        Command::Config(o) => {
            let config = config::Config::load(&o)?;
            // secrets never leave redacted: trunk passwords print as `***`
            print!("{}", toml::to_string_pretty(&config.redacted())?);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own checks of the whole command line (duplicate flags, groups, defaults).
    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }

    /// `callouts create --url` is the calls' TwiML URL; the server's is `--server`.
    #[test]
    fn callouts_create_url_is_not_the_server() {
        use clap::Parser;
        let cli = super::Cli::try_parse_from([
            "callflow",
            "callouts",
            "--server",
            "http://cf:1",
            "create",
            "--name",
            "n",
            "--from",
            "+1555",
            "--url",
            "http://flow/",
        ])
        .unwrap();
        let super::Command::Callouts { server, command } = cli.command else {
            panic!("not callouts");
        };
        assert_eq!(server.url, "http://cf:1");
        assert!(
            format!("{command:?}").contains("http://flow/"),
            "{command:?}"
        );
    }
}
