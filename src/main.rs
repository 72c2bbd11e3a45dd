use std::process::ExitCode;

use clap::Parser;
use taylored_orchestrator::config::{Cli, Command};
use taylored_orchestrator::startup::Application;
use taylored_orchestrator::{healthcheck, operator, shutdown, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.settings.log_format);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.settings).await,
        Command::Healthcheck => return healthcheck::run(&cli.settings),
        Command::Runners { command } => operator::runners(command, &cli.settings).await,
        Command::Reconcile { dry_run: _ } => operator::reconcile_dry_run(&cli.settings).await,
        Command::Egress { command } => operator::egress(command, &cli.settings).await,
        Command::Backup { path } => operator::backup(&path, &cli.settings).await,
        Command::NewTokenKey => {
            print!("{}", operator::new_token_key());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: taylored_orchestrator::config::Settings) -> anyhow::Result<()> {
    let shutdown = shutdown::on_signal()?;
    let application = Application::build(settings).await?;
    application.run_until_stopped(shutdown).await
}
