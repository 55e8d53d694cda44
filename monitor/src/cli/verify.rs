use std::{path::PathBuf, process::ExitCode};

use clap::Args;

use crate::evidence::{archive, key, verify};

/// Exit statuses of `verify` (clap's own 2 is a usage error).
pub const EXIT_OK: u8 = 0;
/// A broken bundle (changed, removed, added or reordered; not signed by
/// --pubkey), or a bundle that cannot be read.
pub const EXIT_BROKEN: u8 = 1;
/// Intact, but checked only against the key it carries, which no one
/// pinned: the signature is only self-consistent.
pub const EXIT_KEY_NOT_PINNED: u8 = 3;

/// The end of `verify --help`: what each exit status means.
pub const AFTER_HELP: &str = "\
Exit status:
  0  the bundle is intact and signed by the --pubkey given (or, with
     --trust-embedded-key, by the key it carries, which you chose to trust)
  1  the bundle is broken (a file changed, removed or added, the record
     chain does not hold, or it is not signed by --pubkey), or unreadable
  2  a usage error
  3  the bundle is intact, but signed by a key you did not pin: without
     --pubkey the signature is checked against the key inside the bundle,
     which only shows it is self-consistent; anyone can make such a bundle.
     For a fleet bundle also: records of the window after a node's last
     signed checkpoint (chained, not signed yet)";

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The bundle (written by `export`).
    pub bundle: PathBuf,
    /// The node's public key (64 hex digits, or a file holding them), as
    /// `status` shows it. Without it the bundle's own key is used, which
    /// proves integrity but not origin, and verify exits 3. For a fleet
    /// bundle (`fleet export`), repeat it: one for each node.
    #[arg(long)]
    pub pubkey: Vec<String>,
    /// Accept the key the bundle carries when no --pubkey is given: exit 0
    /// (with a warning) for an intact bundle, instead of 3. Only
    /// self-consistency is then checked: anyone can sign a bundle with a
    /// key of their own.
    #[arg(long, conflicts_with = "pubkey")]
    pub trust_embedded_key: bool,
}

/// How an intact bundle's signature is trusted, and the status it gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// The key matches --pubkey.
    Pinned,
    /// The bundle's own key, accepted by --trust-embedded-key.
    EmbeddedTrusted,
    /// The bundle's own key, no one pinned it.
    EmbeddedOnly,
}

impl Trust {
    pub fn of(self_signed: bool, trust_embedded_key: bool) -> Self {
        match (self_signed, trust_embedded_key) {
            (false, _) => Trust::Pinned,
            (true, true) => Trust::EmbeddedTrusted,
            (true, false) => Trust::EmbeddedOnly,
        }
    }

    pub fn exit(self) -> u8 {
        match self {
            Trust::Pinned | Trust::EmbeddedTrusted => EXIT_OK,
            Trust::EmbeddedOnly => EXIT_KEY_NOT_PINNED,
        }
    }

    /// The first word of the report.
    fn word(self) -> &'static str {
        match self {
            Trust::Pinned | Trust::EmbeddedTrusted => "OK",
            Trust::EmbeddedOnly => "INTACT, KEY NOT PINNED",
        }
    }

    /// How the node key was found, after the key.
    fn key_note(self) -> &'static str {
        match self {
            Trust::Pinned => " (matches --pubkey)",
            Trust::EmbeddedTrusted => " (taken from the bundle, trusted by --trust-embedded-key)",
            Trust::EmbeddedOnly => " (taken from the bundle, not pinned)",
        }
    }

    /// The line said on stderr about the signature, if any.
    fn warning(self) -> Option<&'static str> {
        match self {
            Trust::Pinned => None,
            Trust::EmbeddedTrusted => Some(
                "warning: --trust-embedded-key: the signature is only self-consistent (checked against the key inside the bundle); it does not show which node made the bundle. Pass --pubkey KEY (from `status` on the node) to check that.",
            ),
            Trust::EmbeddedOnly => Some(
                "NOT VERIFIED: the signature is only self-consistent: it was checked against the key inside the bundle, which anyone can replace with a key of their own. Pass --pubkey KEY (from `status` on the node) to check who signed it, or --trust-embedded-key to accept the embedded key (exit 0). Exit status 3.",
            ),
        }
    }
}

pub fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let keys = args
        .pubkey
        .iter()
        .map(|k| key::parse_public(k))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let files = match archive::read_tar(&args.bundle) {
        Ok(f) => f,
        Err(b) => {
            eprintln!("FAILED {}: {b}", args.bundle.display());
            return Ok(ExitCode::from(EXIT_BROKEN));
        }
    };
    if crate::evidence::fleet::is_fleet(&files) {
        return Ok(fleet(&args, &files, &keys));
    }
    if keys.len() > 1 {
        anyhow::bail!(
            "--pubkey was given {} times: a node's bundle is signed by one key (several are for a fleet bundle)",
            keys.len()
        );
    }
    let pinned = keys.first();
    let result = verify::verify(&files, pinned);
    match result {
        Ok(r) => {
            let trust = Trust::of(r.self_signed, args.trust_embedded_key);
            println!(
                "{} {}: signature, {} file digests and the hash chain verify; {} of {} records of the window {} .. {}; node key {}{}",
                trust.word(),
                args.bundle.display(),
                r.files - 2,
                r.records_exported,
                r.records_in_window,
                r.since,
                r.until,
                r.public_key,
                trust.key_note()
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
            if let Some(w) = trust.warning() {
                eprintln!("{w}");
            }
            Ok(ExitCode::from(trust.exit()))
        }
        Err(b) => {
            eprintln!("FAILED {}: {b}", args.bundle.display());
            Ok(ExitCode::from(EXIT_BROKEN))
        }
    }
}

/// A fleet bundle: each node's chain and checkpoints; success only when
/// every node's key is pinned (or trusted by --trust-embedded-key) and
/// every record of the window is under a checkpoint its node signed.
fn fleet(
    args: &VerifyArgs,
    files: &crate::evidence::bundle::Files,
    keys: &[ed25519_dalek::VerifyingKey],
) -> ExitCode {
    let r = match crate::evidence::fleet::verify(files, keys) {
        Ok(r) => r,
        Err(b) => {
            eprintln!("FAILED {}: {b}", args.bundle.display());
            return ExitCode::from(EXIT_BROKEN);
        }
    };
    let trusted = |n: &crate::evidence::fleet::NodeReport| n.pinned || args.trust_embedded_key;
    let all_trusted = r.nodes.iter().all(trusted);
    let all_signed = r.nodes.iter().all(|n| n.unsigned == 0);
    let ok = all_trusted && all_signed;
    println!(
        "{} {}: {} file digests, and for each of {} nodes its hash chain and the checkpoints its key signed, verify; the window {} .. {}",
        if ok { "OK" } else { "INTACT, NOT FULLY VERIFIED" },
        args.bundle.display(),
        r.files - 1,
        r.nodes.len(),
        r.since,
        r.until
    );
    for n in &r.nodes {
        let signed = match n.signed_up_to {
            Some(s) if n.unsigned == 0 => format!("all signed (up to seq {s})"),
            Some(s) => format!(
                "signed up to seq {s}; {} records after it NOT signed yet",
                n.unsigned
            ),
            None if n.records_in_window == 0 => "no records".into(),
            None => format!(
                "{} records NOT signed (no checkpoint of the node reaches them)",
                n.unsigned
            ),
        };
        let key_note = if n.pinned {
            " (matches a --pubkey)"
        } else if args.trust_embedded_key {
            " (taken from the bundle, trusted by --trust-embedded-key)"
        } else {
            " (taken from the bundle, NOT pinned)"
        };
        let watched = if n.coverage.complete() {
            "the whole window watched".to_string()
        } else {
            format!(
                "{:.1}% of the window watched",
                n.coverage.watched_nanos as f64 * 100.0 / n.coverage.window_nanos.max(1) as f64
            )
        };
        println!(
            "  {}: {} of {} records, {signed}; {watched}; node key {}{key_note}",
            n.node, n.records_exported, n.records_in_window, n.public_key
        );
    }
    if !all_trusted {
        eprintln!("NOT VERIFIED: a node's key was not pinned: its records are only self-consistent. Pass --pubkey KEY for each node (from `status` on the node). Exit status 3.");
    }
    if !all_signed {
        eprintln!("NOT FULLY VERIFIED: records after a node's last signed checkpoint are chained but not signed: anyone who can write to the stream could have added them. Export again once the nodes have signed them (every 10 s), or with an earlier --until. Exit status 3.");
    }
    ExitCode::from(if ok { EXIT_OK } else { EXIT_KEY_NOT_PINNED })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a pinned key, or trust asked for by name, exits 0; an intact
    /// bundle checked against its own key alone exits 3.
    #[test]
    fn an_unpinned_key_is_not_success() {
        assert_eq!(Trust::of(false, false).exit(), 0);
        assert_eq!(Trust::of(true, false), Trust::EmbeddedOnly);
        assert_eq!(Trust::of(true, false).exit(), 3);
        assert!(Trust::EmbeddedOnly
            .warning()
            .unwrap()
            .contains("only self-consistent"));
        assert_eq!(Trust::of(true, true).exit(), 0);
        assert!(Trust::EmbeddedTrusted
            .warning()
            .unwrap()
            .starts_with("warning: "));
        assert_eq!(Trust::Pinned.warning(), None);
        assert!(
            AFTER_HELP.contains("  3  the bundle is intact, but signed by a key you did not pin")
        );
    }

    /// --pubkey and --trust-embedded-key are not given together.
    #[test]
    fn pubkey_and_trust_embedded_key_conflict() {
        use clap::Parser;
        let r = crate::cli::Cli::try_parse_from([
            "egress-monitor",
            "verify",
            "b.tar",
            "--pubkey",
            &"ab".repeat(32),
            "--trust-embedded-key",
        ]);
        assert!(r.is_err());
        let help = crate::cli::Cli::try_parse_from(["egress-monitor", "verify", "--help"])
            .unwrap_err()
            .to_string();
        assert!(help.contains("Exit status:"), "{help}");
        assert!(help.contains("--trust-embedded-key"), "{help}");
    }
}
