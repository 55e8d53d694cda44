use clap::Parser;

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    let cli = monitor::cli::Cli::parse();
    monitor::cli::run(cli)
}

/// Two malloc arenas instead of glibc's eight per core: each thread that
/// allocates under contention gets an arena of its own, and memory freed in
/// one is kept there for it. Under a flood of events the daemon's threads
/// (the pipeline, the store writer, the API) hold hundreds of MiB that way.
/// `bench pipeline`, five pairs alternated: RSS at the maximum event rate
/// 388-572 MiB with glibc's default, 332-405 MiB with two, lower in every
/// pair, CPU no higher. An operator's `MALLOC_ARENA_MAX` is left as given.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called first in main, before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
