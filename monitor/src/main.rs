use clap::Parser;

fn main() -> std::process::ExitCode {
    monitor::malloc::tune_at_start();
    let cli = monitor::cli::Cli::parse();
    monitor::cli::run(cli)
}
