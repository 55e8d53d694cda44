//! The Docker Engine API (Docker, Podman's `podman system service`): a
//! small blocking HTTP/1.1 client over the runtime's unix socket, bounded
//! by `TIMEOUT` and `MAX_ANSWER` per request.
use std::{
    collections::{BTreeMap, HashMap},
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Instant,
};

use super::{own_labels, Meta, KEPT, TIMEOUT};

/// The largest answer read from a runtime.
const MAX_ANSWER: u64 = 4 << 20;

/// `GET /containers/{id}/json` (and the image's digest, once per image);
/// None when the runtime has no such container.
pub(super) fn inspect(
    socket: &Path,
    id: &str,
    digests: &mut HashMap<String, String>,
) -> Result<Option<Meta>, String> {
    let Some(c) = get(socket, &format!("/v1.40/containers/{id}/json"))? else {
        return Ok(None);
    };
    let labels: BTreeMap<String, String> =
        serde_json::from_value(c["Config"]["Labels"].clone()).unwrap_or_default();
    let image_id = c["Image"].as_str().unwrap_or_default().to_string();
    // Only an ID of the usual form goes into the next request's path.
    let plain = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b':');
    let digest = match digests.get(&image_id) {
        Some(d) => d.clone(),
        None if image_id.is_empty() || !plain(&image_id) => String::new(),
        None => {
            let d = match get(socket, &format!("/v1.40/images/{image_id}/json"))? {
                Some(image) => manifest_digest(&image).unwrap_or_else(|| image_id.clone()),
                None => image_id.clone(),
            };
            if digests.len() >= KEPT {
                digests.clear();
            }
            digests.insert(image_id, d.clone());
            d
        }
    };
    let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
    // A Kubernetes container's pod labels are its sandbox's labels, less
    // what the kubelet and the runtime add (cri-dockerd's layout).
    let pod_labels = match labels.get("io.kubernetes.sandbox.id") {
        Some(sandbox) if sandbox.bytes().all(|b| b.is_ascii_hexdigit()) => {
            match get(socket, &format!("/v1.40/containers/{sandbox}/json"))? {
                Some(s) => own_labels(
                    serde_json::from_value(s["Config"]["Labels"].clone()).unwrap_or_default(),
                ),
                None => BTreeMap::new(),
            }
        }
        _ => BTreeMap::new(),
    };
    Ok(Some(Meta {
        image: c["Config"]["Image"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        image_digest: digest,
        // Kubernetes names the container in a label; the engine's own
        // name is `k8s_<container>_<pod>_...` there.
        name: match label("io.kubernetes.container.name") {
            n if !n.is_empty() => n,
            _ => c["Name"]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
        },
        pod_name: label("io.kubernetes.pod.name"),
        pod_namespace: label("io.kubernetes.pod.namespace"),
        pod_labels,
    }))
}

/// The digest of the first of an image's `RepoDigests` (`name@sha256:...`).
fn manifest_digest(image: &serde_json::Value) -> Option<String> {
    let first = image["RepoDigests"].as_array()?.first()?.as_str()?;
    let (_, digest) = first.rsplit_once('@')?;
    digest.starts_with("sha256:").then(|| digest.to_string())
}

/// One HTTP/1.1 GET over the unix socket; Ok(None) on 404.
fn get(socket: &Path, path: &str) -> Result<Option<serde_json::Value>, String> {
    let deadline = Instant::now() + TIMEOUT;
    let mut s = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    s.set_write_timeout(Some(TIMEOUT)).ok();
    s.set_read_timeout(Some(TIMEOUT)).ok();
    let request = format!("GET {path} HTTP/1.1\r\nHost: runtime\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes())
        .map_err(|e| format!("GET {path}: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if Instant::now() > deadline {
            return Err(format!("GET {path}: no answer within {TIMEOUT:?}"));
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if raw.len() as u64 > MAX_ANSWER {
                    return Err(format!("GET {path}: answer larger than {MAX_ANSWER} bytes"));
                }
            }
            Err(e) => return Err(format!("GET {path}: {e}")),
        }
    }
    let (status, body) = parse_response(&raw).map_err(|e| format!("GET {path}: {e}"))?;
    match status {
        200 => serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| format!("GET {path}: not JSON: {e}")),
        404 => Ok(None),
        s => Err(format!(
            "GET {path}: HTTP {s}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
        )),
    }
}

/// The status code and body of a whole HTTP/1.1 response (`Content-Length`,
/// chunked, or up to the close).
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "headers not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or("no status line")?;
    let mut chunked = false;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
            {
                chunked = true;
            }
        }
    }
    let body = &raw[end + 4..];
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size without end")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| "bad chunk size")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        if rest.len() < size + 2 {
            return Err("chunk cut short".into());
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_with_length_chunks_or_close_are_read_whole() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n{\"a\":1}";
        assert_eq!(parse_response(plain).unwrap(), (200, b"{\"a\":1}".to_vec()));
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4;x=y\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).unwrap(),
            (200, b"{\"a\":1}".to_vec())
        );
        let missing = b"HTTP/1.1 404 Not Found\r\n\r\n{}";
        assert_eq!(parse_response(missing).unwrap().0, 404);
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nff\r\nab")
                .unwrap_err()
                .contains("cut short")
        );
        assert!(parse_response(b"garbage").unwrap_err().contains("headers"));
    }

    #[test]
    fn the_digest_is_the_manifests_where_a_registry_gave_one() {
        let image = serde_json::json!({
            "Id": "sha256:e454",
            "RepoDigests": ["localhost/egress-probe@sha256:aaa5"]
        });
        assert_eq!(manifest_digest(&image).as_deref(), Some("sha256:aaa5"));
        assert_eq!(
            manifest_digest(&serde_json::json!({"RepoDigests": []})),
            None
        );
        assert_eq!(manifest_digest(&serde_json::json!({})), None);
    }
}
