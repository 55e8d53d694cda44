//! Secrets in command lines: what looks like one is replaced by
//! `<redacted>` before a command line reaches an event, the store, the
//! stream or a bundle. Built in: values of flags and `KEY=value`
//! arguments named like a secret (`--password`, `--token`, `--api-key`,
//! `client_secret=`...), the value of a flag so named given as the next
//! argument, `Authorization:`-style header values, the password in a
//! URL's user part, AWS access key ids and JWTs. `--redact-pattern` adds
//! patterns: each match is replaced whole.
use regex::Regex;

pub const REDACTED: &str = "<redacted>";

/// Words that make a flag or variable name a secret's.
const SECRET_WORDS: &str = r"password|passwd|passphrase|pwd|token|secret|api[-_]?key|apikey|access[-_]?key|private[-_]?key|credentials?|auth";

#[derive(Debug, thiserror::Error)]
#[error("--redact-pattern {pattern:?} is not a regular expression: {source}")]
pub struct PatternError {
    pattern: String,
    source: regex::Error,
}

#[derive(Debug, Clone)]
pub struct Redactor {
    /// `-{0,2}NAME=value`: keeps `NAME=`.
    assignment: Regex,
    /// A flag alone (`--password`): the next argument is its value.
    bare_flag: Regex,
    /// `Authorization: Bearer ...` and kin: keeps the header's name.
    header: Regex,
    /// `scheme://user:password@`: keeps the user.
    userinfo: Regex,
    /// Found anywhere in an argument, replaced whole.
    anywhere: Vec<Regex>,
}

impl Default for Redactor {
    fn default() -> Self {
        Self::new(&[]).unwrap_or_else(|_| unreachable!("no extra patterns"))
    }
}

impl Redactor {
    /// The built-in patterns and `extra` (each a regular expression).
    pub fn new(extra: &[String]) -> Result<Self, PatternError> {
        // The built-in expressions are constants, checked by the tests.
        let re = |s: &str| Regex::new(s).unwrap_or_else(|e| unreachable!("{s}: {e}"));
        let mut anywhere = vec![
            // AWS access key ids.
            re(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b"),
            // JSON Web Tokens (header.payload.signature, base64url).
            re(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"),
        ];
        for p in extra {
            anywhere.push(Regex::new(p).map_err(|source| PatternError {
                pattern: p.clone(),
                source,
            })?);
        }
        Ok(Self {
            assignment: re(&format!(
                r"(?i)^(-{{0,2}}[\w.-]*(?:{SECRET_WORDS})[\w.-]*)=(.+)$"
            )),
            bare_flag: re(&format!(r"(?i)^-{{1,2}}[\w.-]*(?:{SECRET_WORDS})[\w.-]*$")),
            header: re(
                r"(?i)\b((?:proxy-)?authorization|x-api-key|api-key|x-auth-token|private-token|cookie)\s*:\s*\S.*",
            ),
            userinfo: re(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]+):[^/\s@]+@"),
            anywhere,
        })
    }

    /// The arguments with what looks like a secret replaced.
    pub fn redact(&self, args: &[String]) -> Vec<String> {
        let mut out = Vec::with_capacity(args.len());
        let mut value_next = false;
        for arg in args {
            if std::mem::take(&mut value_next) {
                out.push(REDACTED.to_string());
                continue;
            }
            if self.bare_flag.is_match(arg) {
                value_next = true;
                out.push(arg.clone());
                continue;
            }
            out.push(self.redact_one(arg));
        }
        out
    }

    fn redact_one(&self, arg: &str) -> String {
        let mut s = self
            .assignment
            .replace(arg, format!("${{1}}={REDACTED}"))
            .into_owned();
        s = self
            .header
            .replace_all(&s, format!("${{1}}: {REDACTED}"))
            .into_owned();
        s = self
            .userinfo
            .replace_all(&s, format!("${{1}}:{REDACTED}@"))
            .into_owned();
        for re in &self.anywhere {
            s = re.replace_all(&s, REDACTED).into_owned();
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    /// Each built-in kind of secret is replaced, and what is not a secret
    /// stays as it was.
    #[test]
    fn built_in_secrets() {
        let r = Redactor::default();
        let cases: &[(&[&str], &[&str])] = &[
            (
                &["app", "--password=hunter2"],
                &["app", "--password=<redacted>"],
            ),
            (
                &["app", "--db-password", "hunter2", "-v"],
                &["app", "--db-password", "<redacted>", "-v"],
            ),
            (
                &["app", "--api-key=abc", "--token", "t0k"],
                &["app", "--api-key=<redacted>", "--token", "<redacted>"],
            ),
            (
                &["env", "CLIENT_SECRET=s3cr3t", "HOME=/root"],
                &["env", "CLIENT_SECRET=<redacted>", "HOME=/root"],
            ),
            (
                &["curl", "-H", "Authorization: Bearer abc.def"],
                &["curl", "-H", "Authorization: <redacted>"],
            ),
            (
                &["curl", "https://bob:pw@example.com/x"],
                &["curl", "https://bob:<redacted>@example.com/x"],
            ),
            (&["aws", "AKIAIOSFODNN7EXAMPLE"], &["aws", "<redacted>"]),
            (
                &[
                    "x",
                    "--data=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
                ],
                &["x", "--data=<redacted>"],
            ),
            (
                &["python3", "-c", "print(1)"],
                &["python3", "-c", "print(1)"],
            ),
        ];
        for (input, want) in cases {
            assert_eq!(r.redact(&args(input)), args(want), "{input:?}");
        }
    }

    /// An added pattern replaces its matches; a bad one is refused with
    /// the pattern named.
    #[test]
    fn added_patterns() {
        let r = Redactor::new(&["sk-[a-z0-9]{8}".into()]).expect("valid pattern");
        assert_eq!(
            r.redact(&args(&["app", "key=sk-abcdefgh!"])),
            args(&["app", "key=<redacted>!"])
        );
        let e = Redactor::new(&["(unclosed".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--redact-pattern \"(unclosed\" is not a regular expression"),
            "{e}"
        );
    }
}
