use std::{path::PathBuf, process::ExitCode};

use clap::Args;

use crate::evidence::{archive, key, verify};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The bundle (written by `export`).
    pub bundle: PathBuf,
    /// The node's public key (64 hex digits, or a file holding them), as
    /// `status` shows it. Without it the bundle's own key is used, which
    /// proves integrity but not origin.
    #[arg(long)]
    pub pubkey: Option<String>,
}

pub fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let pinned = args.pubkey.as_deref().map(key::parse_public).transpose()?;
    let result =
        archive::read_tar(&args.bundle).and_then(|files| verify::verify(&files, pinned.as_ref()));
    match result {
        Ok(r) => {
            println!(
                "OK {}: signature, {} file digests and the hash chain verify; {} of {} records of the window {} .. {}; node key {}{}",
                args.bundle.display(),
                r.files - 2,
                r.records_exported,
                r.records_in_window,
                r.since,
                r.until,
                r.public_key,
                if r.self_signed {
                    " (taken from the bundle: pass --pubkey to check who signed it)"
                } else {
                    " (matches --pubkey)"
                }
            );
            match &r.coverage {
                None => {
                    println!("coverage: not recorded (a bundle from before heartbeats were signed)")
                }
                Some(c) if c.complete() => {
                    println!("coverage: the whole window was watched (signed heartbeats)")
                }
                Some(c) => {
                    println!(
                        "coverage: {:.1}% of the window was watched; NOT watched:",
                        c.watched_nanos as f64 * 100.0 / c.window_nanos.max(1) as f64
                    );
                    for s in c.unwatched() {
                        println!(
                            "  {} .. {}  {}",
                            crate::events::rfc3339_nanos(i128::from(s.since_unix_nanos)),
                            crate::events::rfc3339_nanos(i128::from(s.until_unix_nanos)),
                            s.why
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(b) => {
            eprintln!("FAILED {}: {b}", args.bundle.display());
            Ok(ExitCode::FAILURE)
        }
    }
}
