use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = monitor::cli::Cli::parse();
    monitor::cli::run(cli)
}
