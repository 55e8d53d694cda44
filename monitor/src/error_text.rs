//! Errors said for people: an error and its causes on one line.

/// An error and its causes, each said once: many errors already end with
/// their cause (`cannot read X: No such file`), so a cause the message
/// before it already contains is not repeated.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
