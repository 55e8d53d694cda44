//! The node key: ed25519, made at the daemon's first start in
//! `STATE_DIR/node.key` (hex of the 32-byte secret, mode 0600). Bundles are
//! signed with it; its public half is in status and in every bundle.
use std::{
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context};
use ed25519_dalek::{SigningKey, VerifyingKey};

pub const FILE_NAME: &str = "node.key";

pub fn path_in(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// Reads the node key.
pub fn load(state_dir: &Path) -> anyhow::Result<SigningKey> {
    let path = path_in(state_dir);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the node key {}", path.display()))?;
    let bytes = hex::decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .with_context(|| format!("{}: not 64 hex digits", path.display()))?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// Reads the node key, making it first if there is none.
pub fn load_or_create(state_dir: &Path) -> anyhow::Result<SigningKey> {
    let path = path_in(state_dir);
    if path.exists() {
        let mode = std::fs::metadata(&path)?.permissions().mode();
        if mode & 0o077 != 0 {
            bail!(
                "{}: mode {:o} lets others read the node key; chmod 600 it",
                path.display(),
                mode & 0o777
            );
        }
        return load(state_dir);
    }
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut secret)
        .map_err(|e| anyhow::anyhow!("random bytes for the node key: {e}"))?;
    let tmp = state_dir.join(".node.key.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(hex::encode(secret).as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("creating {}", path.display()))?;
    let key = SigningKey::from_bytes(&secret);
    log::info!(
        "created the node key {} (public key {})",
        path.display(),
        public_hex(&key.verifying_key())
    );
    Ok(key)
}

pub fn public_hex(k: &VerifyingKey) -> String {
    hex::encode(k.as_bytes())
}

/// A public key given as 64 hex digits or a file holding them.
pub fn parse_public(s: &str) -> anyhow::Result<VerifyingKey> {
    let text = if Path::new(s).is_file() {
        std::fs::read_to_string(s).with_context(|| format!("reading {s}"))?
    } else {
        s.to_string()
    };
    let bytes = hex::decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .with_context(|| {
            format!("{s:?}: a public key is 64 hex digits (or a file holding them)")
        })?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|e| anyhow::anyhow!("{s:?}: not an ed25519 public key: {e}"))
}
