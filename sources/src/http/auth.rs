//! Credentials for the HTTP source, read from an environment variable or a
//! file, never from the command line (where `ps`, shell history and logs
//! would show them).
//!
//! The format, one line (surrounding whitespace and the line end are
//! trimmed; a file's first non-empty line is used):
//!
//! - `Bearer TOKEN` (scheme case-insensitive): `Authorization: Bearer TOKEN`;
//! - `USER:PASSWORD`: HTTP Basic (RFC 7617); the password may contain `:`;
//! - anything else: a raw bearer token.

use std::fmt;
use std::path::Path;

use super::HttpError;

/// Where the user said credentials are: read when the URL is opened, because what they mean
/// depends on its scheme (an `Authorization` line for `http(s)://`, an access key for
/// `s3://`: see [`HttpAuth`] and [`super::S3Options`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthSource {
    /// An environment variable's name.
    Env(String),
    /// A file (mode 600, kept out of the command line).
    File(std::path::PathBuf),
}

impl AuthSource {
    /// The `Authorization` credentials of an `http(s)://` URL.
    pub fn load_http(&self) -> Result<HttpAuth, HttpError> {
        match self {
            AuthSource::Env(var) => HttpAuth::from_env(var),
            AuthSource::File(path) => HttpAuth::from_file(path),
        }
    }
}

/// Credentials sent as `Authorization` on every request. `Debug` never
/// shows them, and no error message quotes them.
#[derive(Clone, PartialEq, Eq)]
pub enum HttpAuth {
    /// HTTP Basic authentication.
    Basic {
        /// The user name.
        user: String,
        /// The password.
        password: String,
    },
    /// `Authorization: Bearer TOKEN`.
    Bearer(String),
}

impl fmt::Debug for HttpAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpAuth::Basic { .. } => f.write_str("HttpAuth::Basic(<redacted>)"),
            HttpAuth::Bearer(_) => f.write_str("HttpAuth::Bearer(<redacted>)"),
        }
    }
}

impl HttpAuth {
    /// Parse one credentials line (see the module documentation).
    /// `from` names where it came from, for the error message.
    pub fn parse(line: &str, from: &str) -> Result<HttpAuth, HttpError> {
        let err = |reason: &str| HttpError::Credentials {
            from: from.to_owned(),
            reason: reason.to_owned(),
        };
        let line = line.trim();
        if line.is_empty() {
            return Err(err("it is empty"));
        }
        if line.contains(['\r', '\n']) {
            return Err(err("it spans several lines"));
        }
        if line.eq_ignore_ascii_case("bearer") {
            return Err(err("`Bearer` without a token"));
        }
        if let Some((scheme, token)) = line.split_once(' ') {
            if scheme.eq_ignore_ascii_case("bearer") {
                let token = token.trim();
                if token.is_empty() {
                    return Err(err("`Bearer` without a token"));
                }
                return Ok(HttpAuth::Bearer(token.to_owned()));
            }
        }
        if let Some((user, password)) = line.split_once(':') {
            if user.is_empty() {
                return Err(err("empty user name before `:`"));
            }
            return Ok(HttpAuth::Basic {
                user: user.to_owned(),
                password: password.to_owned(),
            });
        }
        Ok(HttpAuth::Bearer(line.to_owned()))
    }

    /// Read credentials from environment variable `var`.
    pub fn from_env(var: &str) -> Result<HttpAuth, HttpError> {
        let from = format!("environment variable {var}");
        match std::env::var(var) {
            Ok(v) => HttpAuth::parse(&v, &from),
            Err(std::env::VarError::NotPresent) => Err(HttpError::Credentials {
                from,
                reason: "it is not set".into(),
            }),
            Err(std::env::VarError::NotUnicode(_)) => Err(HttpError::Credentials {
                from,
                reason: "it is not valid UTF-8".into(),
            }),
        }
    }

    /// Read credentials from the first non-empty line of the file at `path`.
    /// A file others can read is used, with a warning.
    pub fn from_file(path: &Path) -> Result<HttpAuth, HttpError> {
        use std::os::unix::fs::PermissionsExt;
        let from = format!("file {}", path.display());
        let err = |e: std::io::Error| HttpError::Credentials {
            from: from.clone(),
            reason: e.to_string(),
        };
        let text = std::fs::read_to_string(path).map_err(err)?;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o004 != 0 {
                log::warn!(
                    "credentials file {} is readable by every user (chmod 600 it)",
                    path.display()
                );
            }
        }
        let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        HttpAuth::parse(line, &from)
    }

    /// Put the credentials on a request (reqwest marks the value sensitive,
    /// so it stays out of its `Debug` output).
    pub(crate) fn apply(
        &self,
        rb: reqwest::blocking::RequestBuilder,
    ) -> reqwest::blocking::RequestBuilder {
        match self {
            HttpAuth::Basic { user, password } => rb.basic_auth(user, Some(password)),
            HttpAuth::Bearer(token) => rb.bearer_auth(token),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn line_formats() {
        assert_eq!(
            HttpAuth::parse("alice:pa:ss\n", "t").unwrap(),
            HttpAuth::Basic {
                user: "alice".into(),
                password: "pa:ss".into()
            }
        );
        assert_eq!(
            HttpAuth::parse("  bearer   tok123 ", "t").unwrap(),
            HttpAuth::Bearer("tok123".into())
        );
        assert_eq!(
            HttpAuth::parse("rawtoken", "t").unwrap(),
            HttpAuth::Bearer("rawtoken".into())
        );
        for bad in ["", "  ", ":nouser", "Bearer  "] {
            assert!(HttpAuth::parse(bad, "t").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn debug_and_errors_hide_secrets() {
        let a = HttpAuth::parse("alice:hunter2", "t").unwrap();
        assert!(!format!("{a:?}").contains("hunter2"));
        let e = HttpAuth::parse("Bearer ", "env X").unwrap_err().to_string();
        assert!(e.contains("env X"), "{e}");
    }

    #[test]
    fn from_file_uses_first_non_empty_line() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "\n  Bearer s3cr3t  \nignored").unwrap();
        assert_eq!(
            HttpAuth::from_file(f.path()).unwrap(),
            HttpAuth::Bearer("s3cr3t".into())
        );
        let e = HttpAuth::from_file(Path::new("/nonexistent/creds"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/creds"), "{e}");
    }

    #[test]
    fn from_env_names_the_variable() {
        let e = HttpAuth::from_env("DISKSYNTH_TEST_SURELY_UNSET_VAR")
            .unwrap_err()
            .to_string();
        assert!(e.contains("DISKSYNTH_TEST_SURELY_UNSET_VAR"), "{e}");
    }
}
