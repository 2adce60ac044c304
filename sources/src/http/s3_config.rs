//! Credentials and region for `s3://` URLs, found where the AWS CLI and SDKs look, in their
//! order.
//!
//! Credentials (the first that has them):
//! 1. `--auth-file FILE` / `--auth-env VAR` ([`AuthSource`]): one line
//!    `ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN]`, or (a file whose first line that is
//!    not a comment opens a `[section]`) an AWS shared credentials file read with the profile;
//! 2. the environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`
//!    (skipped when a profile is named with `--profile`, as the AWS CLI does);
//! 3. the profile in the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, else
//!    `~/.aws/credentials`), then in the config file (`AWS_CONFIG_FILE`, else
//!    `~/.aws/config`, sections `[profile NAME]` and `[default]`).
//!
//! The profile is `--profile`, else `AWS_PROFILE`, else `default`.
//!
//! Region: `--region`, else `AWS_REGION`, else `AWS_DEFAULT_REGION`, else the profile's
//! `region` in the config file, else `us-east-1`.
//!
//! Nothing here ever puts a key, secret or token in a message: errors say which file or
//! variable, and what is wrong with it.

use std::path::{Path, PathBuf};

use super::sigv4::Credentials;
use super::{AuthSource, HttpError};

/// Reads an environment variable (the process environment, or a table in tests).
pub(crate) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Largest credentials or config file read: these are a few lines; anything bigger is not one.
const MAX_FILE: u64 = 1 << 20;

/// The region used when nothing names one (the AWS SDKs' choice for S3).
pub(crate) const DEFAULT_REGION: &str = "us-east-1";

/// Credentials and a description of where they came from (for messages; never the values).
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub(crate) creds: Credentials,
    pub(crate) origin: String,
}

/// The profile to read: `--profile`, `AWS_PROFILE`, or `default`; and whether it was named.
fn profile(explicit: Option<&str>, env: Env<'_>) -> (String, bool) {
    match explicit
        .map(str::to_owned)
        .or_else(|| nonempty(env, "AWS_PROFILE"))
    {
        Some(p) => (p, true),
        None => ("default".into(), false),
    }
}

fn nonempty(env: Env<'_>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.trim().is_empty())
}

fn home_file(env: Env<'_>, var: &str, rel: &str) -> Option<PathBuf> {
    nonempty(env, var)
        .map(PathBuf::from)
        .or_else(|| nonempty(env, "HOME").map(|h| Path::new(&h).join(rel)))
}

/// Find credentials (see the module documentation).
pub(crate) fn credentials(
    source: Option<&AuthSource>,
    explicit_profile: Option<&str>,
    env: Env<'_>,
) -> Result<Found, HttpError> {
    let (profile, named) = profile(explicit_profile, env);
    match source {
        Some(AuthSource::File(path)) => return from_auth_file(path, &profile),
        Some(AuthSource::Env(var)) => {
            let from = format!("environment variable {var}");
            let line = env(var).ok_or_else(|| HttpError::Credentials {
                from: from.clone(),
                reason: "it is not set".into(),
            })?;
            return Ok(Found {
                creds: parse_line(&line, &from)?,
                origin: from,
            });
        }
        None => {}
    }
    if explicit_profile.is_none() {
        if let Some(found) = from_env(env)? {
            return Ok(found);
        }
    }
    let cred_file = home_file(env, "AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials");
    let config_file = home_file(env, "AWS_CONFIG_FILE", ".aws/config");
    let mut looked = Vec::new();
    for (file, config_style) in [(&cred_file, false), (&config_file, true)] {
        let Some(file) = file else { continue };
        looked.push(file.display().to_string());
        let Some(text) = read_optional(file)? else {
            continue;
        };
        let Some(section) = ini_section(&text, &profile, config_style) else {
            continue;
        };
        let from = format!("profile {profile:?} in {}", file.display());
        if let Some(found) = from_section(&section, &from)? {
            return Ok(found);
        }
        if !config_style {
            continue;
        }
        // A profile of another kind (SSO, assumed role, external process): say so rather
        // than "no credentials".
        for key in [
            "credential_process",
            "sso_session",
            "sso_start_url",
            "role_arn",
            "web_identity_token_file",
        ] {
            if section.iter().any(|(k, _)| k == key) {
                return Err(HttpError::Credentials {
                    from,
                    reason: format!(
                        "it gets credentials through `{key}`, which disksynth does not run; \
                         export temporary keys (e.g. `aws configure export-credentials \
                         --format env`) or give --auth-file"
                    ),
                });
            }
        }
    }
    let reason = if named {
        format!(
            "profile {profile:?} is in none of {}",
            if looked.is_empty() {
                "the AWS files (HOME is not set)".into()
            } else {
                looked.join(", ")
            }
        )
    } else {
        format!(
            "none found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, give --auth-file, or \
             add a [default] profile to {} (a public object needs --no-sign-request)",
            cred_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "~/.aws/credentials".into())
        )
    };
    Err(HttpError::Credentials {
        from: "the AWS credential chain".into(),
        reason,
    })
}

/// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`); one without the
/// other is an error rather than a silent fall-through to a profile.
fn from_env(env: Env<'_>) -> Result<Option<Found>, HttpError> {
    let id = nonempty(env, "AWS_ACCESS_KEY_ID");
    let secret = nonempty(env, "AWS_SECRET_ACCESS_KEY");
    let from = "environment variables AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY".to_string();
    match (id, secret) {
        (None, None) => Ok(None),
        (Some(id), Some(secret)) => {
            let creds = Credentials {
                access_key_id: id.trim().to_owned(),
                secret_access_key: secret.trim().to_owned(),
                session_token: nonempty(env, "AWS_SESSION_TOKEN").map(|t| t.trim().to_owned()),
            };
            let from = if creds.session_token.is_some() {
                format!("{from}/AWS_SESSION_TOKEN")
            } else {
                from
            };
            check(&creds, &from)?;
            Ok(Some(Found {
                creds,
                origin: from,
            }))
        }
        (Some(_), None) => Err(HttpError::Credentials {
            from,
            reason: "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".into(),
        }),
        (None, Some(_)) => Err(HttpError::Credentials {
            from,
            reason: "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not".into(),
        }),
    }
}

/// `--auth-file`: one `ID:SECRET[:TOKEN]` line, or a shared credentials file.
fn from_auth_file(path: &Path, profile: &str) -> Result<Found, HttpError> {
    let from = format!("file {}", path.display());
    let text = read_optional(path)?.ok_or_else(|| HttpError::Credentials {
        from: from.clone(),
        reason: "it does not exist".into(),
    })?;
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .unwrap_or("");
    if !first.starts_with('[') {
        return Ok(Found {
            creds: parse_line(first, &from)?,
            origin: from,
        });
    }
    let from = format!("profile {profile:?} in {}", path.display());
    let section = ini_section(&text, profile, false)
        .or_else(|| ini_section(&text, profile, true))
        .ok_or_else(|| HttpError::Credentials {
            from: format!("file {}", path.display()),
            reason: format!("it has no [{profile}] section"),
        })?;
    from_section(&section, &from)?.ok_or_else(|| HttpError::Credentials {
        from,
        reason: "it has no aws_access_key_id and aws_secret_access_key".into(),
    })
}

/// `ID:SECRET[:TOKEN]` (surrounding whitespace trimmed).
pub(crate) fn parse_line(line: &str, from: &str) -> Result<Credentials, HttpError> {
    let err = |reason: &str| HttpError::Credentials {
        from: from.to_owned(),
        reason: reason.to_owned(),
    };
    let line = line.trim();
    if line.is_empty() {
        return Err(err("it is empty"));
    }
    let mut parts = line.splitn(3, ':');
    let id = parts.next().unwrap_or("");
    let Some(secret) = parts.next() else {
        return Err(err(
            "expected ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN] (or an AWS credentials \
             file with [profile] sections)",
        ));
    };
    let creds = Credentials {
        access_key_id: id.trim().to_owned(),
        secret_access_key: secret.trim().to_owned(),
        session_token: parts
            .next()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty()),
    };
    check(&creds, from)?;
    Ok(creds)
}

/// `aws_access_key_id`, `aws_secret_access_key`, `aws_session_token` of a profile; `None` if
/// it has neither of the first two.
fn from_section(section: &[(String, String)], from: &str) -> Result<Option<Found>, HttpError> {
    let get = |k: &str| {
        section
            .iter()
            .rev()
            .find(|(key, v)| key == k && !v.is_empty())
            .map(|(_, v)| v.clone())
    };
    let (id, secret) = match (get("aws_access_key_id"), get("aws_secret_access_key")) {
        (None, None) => return Ok(None),
        (Some(i), Some(s)) => (i, s),
        _ => {
            return Err(HttpError::Credentials {
                from: from.to_owned(),
                reason: "it has only one of aws_access_key_id and aws_secret_access_key".into(),
            })
        }
    };
    let creds = Credentials {
        access_key_id: id,
        secret_access_key: secret,
        session_token: get("aws_session_token"),
    };
    check(&creds, from)?;
    Ok(Some(Found {
        creds,
        origin: from.to_owned(),
    }))
}

/// Refuse credentials that cannot go into a header (or are obviously not credentials).
fn check(c: &Credentials, from: &str) -> Result<(), HttpError> {
    let bad = |what: &str| HttpError::Credentials {
        from: from.to_owned(),
        reason: format!("the {what} is empty or has characters a key cannot have"),
    };
    let printable = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
    if !printable(&c.access_key_id) || c.access_key_id.contains(['/', ':']) {
        return Err(bad("access key id"));
    }
    if !printable(&c.secret_access_key) {
        return Err(bad("secret access key"));
    }
    if c.session_token.as_deref().is_some_and(|t| !printable(t)) {
        return Err(bad("session token"));
    }
    Ok(())
}

/// The region (see the module documentation) and where it came from.
pub(crate) fn region(
    explicit: Option<&str>,
    explicit_profile: Option<&str>,
    env: Env<'_>,
) -> Result<(String, String), HttpError> {
    let (region, origin) = if let Some(r) = explicit {
        (r.to_owned(), "--region".to_owned())
    } else if let Some(r) = nonempty(env, "AWS_REGION") {
        (r, "AWS_REGION".into())
    } else if let Some(r) = nonempty(env, "AWS_DEFAULT_REGION") {
        (r, "AWS_DEFAULT_REGION".into())
    } else {
        let (profile, _) = profile(explicit_profile, env);
        let from_config = match home_file(env, "AWS_CONFIG_FILE", ".aws/config") {
            Some(file) => read_optional(&file)?
                .and_then(|text| ini_section(&text, &profile, true))
                .and_then(|s| s.into_iter().rev().find(|(k, _)| k == "region"))
                .map(|(_, v)| (v, format!("profile {profile:?} in {}", file.display()))),
            None => None,
        };
        from_config.unwrap_or_else(|| (DEFAULT_REGION.into(), "the default".into()))
    };
    let region = region.trim().to_owned();
    // It goes into a host name and the credential scope.
    let ok = !region.is_empty()
        && region.len() <= 64
        && region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(HttpError::BadUrl {
            url: format!("region from {origin}"),
            reason: format!("{region:?} is not a region name (letters, digits, `-`)"),
        });
    }
    Ok((region, origin))
}

/// A file's text, `None` if it does not exist; refused past [`MAX_FILE`]. Warns when a file
/// that may hold secrets is readable by every user.
fn read_optional(path: &Path) -> Result<Option<String>, HttpError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let err = |reason: String| HttpError::Credentials {
        from: format!("file {}", path.display()),
        reason,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e.to_string())),
    };
    if let Ok(meta) = file.metadata() {
        if !meta.is_file() {
            return Err(err("it is not a regular file".into()));
        }
        if meta.permissions().mode() & 0o004 != 0 {
            log::warn!(
                "{} is readable by every user; if it holds secrets, chmod 600 it",
                path.display()
            );
        }
    }
    let mut text = String::new();
    file.take(MAX_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| err(e.to_string()))?;
    if text.len() as u64 > MAX_FILE {
        return Err(err(format!(
            "it is over {} KiB: not a credentials file",
            MAX_FILE >> 10
        )));
    }
    Ok(Some(text))
}

/// The `key = value` pairs (keys lower-cased) of profile `name` in an AWS INI file: section
/// `[name]` in the credentials file; `[profile name]` (or `[default]`) in the config file.
/// Indented lines (sub-settings such as `s3 =` blocks) and comments are skipped. `None` when
/// there is no such section.
fn ini_section(text: &str, name: &str, config_style: bool) -> Option<Vec<(String, String)>> {
    let wanted = |header: &str| {
        let h = header.split_whitespace().collect::<Vec<_>>();
        match (config_style, h.as_slice()) {
            (false, [n]) => *n == name,
            (true, ["default"]) => name == "default",
            (true, ["profile", n]) => *n == name,
            _ => false,
        }
    };
    let mut found = false;
    let mut inside = false;
    let mut pairs = Vec::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = wanted(header);
            found |= inside;
            continue;
        }
        if !inside || raw.starts_with([' ', '\t']) {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            pairs.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    found.then_some(pairs)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn line_format() {
        let c = parse_line(" AKID:se/cr+et=:tok\n", "t").unwrap();
        assert_eq!(c.access_key_id, "AKID");
        assert_eq!(c.secret_access_key, "se/cr+et=");
        assert_eq!(c.session_token.as_deref(), Some("tok"));
        assert_eq!(parse_line("A:B", "t").unwrap().session_token, None);
        for bad in ["", "AKID", ":secret", "AKID:", "AK ID:x"] {
            let e = parse_line(bad, "src").unwrap_err().to_string();
            assert!(e.contains("src"), "{bad:?}: {e}");
        }
        let e = parse_line("AKID:hunter2 x", "t").unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn environment_comes_before_files_unless_a_profile_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let creds = write(
            dir.path(),
            "credentials",
            "[default]\naws_access_key_id = FILEID\naws_secret_access_key = filesecret\n\
             [other]\naws_access_key_id=OTHERID\naws_secret_access_key=othersecret\n\
             aws_session_token = othertoken\n",
        );
        let c = creds.to_str().unwrap();
        let env = env_of(&[
            ("AWS_ACCESS_KEY_ID", "ENVID"),
            ("AWS_SECRET_ACCESS_KEY", "envsecret"),
            ("AWS_SHARED_CREDENTIALS_FILE", c),
        ]);
        let f = credentials(None, None, &env).unwrap();
        assert_eq!(f.creds.access_key_id, "ENVID");
        assert!(f.origin.contains("environment"), "{}", f.origin);
        let f = credentials(None, Some("other"), &env).unwrap();
        assert_eq!(f.creds.access_key_id, "OTHERID");
        assert_eq!(f.creds.session_token.as_deref(), Some("othertoken"));
        assert!(f.origin.contains("\"other\""), "{}", f.origin);
        let env = env_of(&[("AWS_SHARED_CREDENTIALS_FILE", c)]);
        assert_eq!(
            credentials(None, None, &env).unwrap().creds.access_key_id,
            "FILEID"
        );
        let env = env_of(&[("AWS_SHARED_CREDENTIALS_FILE", c), ("AWS_PROFILE", "other")]);
        assert_eq!(
            credentials(None, None, &env).unwrap().creds.access_key_id,
            "OTHERID"
        );
        let e = credentials(None, Some("nope"), &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"nope\"") && e.contains(c), "{e}");
    }

    #[test]
    fn half_set_environment_is_an_error() {
        let env = env_of(&[("AWS_ACCESS_KEY_ID", "ENVID")]);
        let e = credentials(None, None, &env).unwrap_err().to_string();
        assert!(
            e.contains("AWS_SECRET_ACCESS_KEY is set") || e.contains("is not"),
            "{e}"
        );
    }

    #[test]
    fn auth_file_as_a_line_or_an_ini_file() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_of(&[
            ("AWS_ACCESS_KEY_ID", "ENVID"),
            ("AWS_SECRET_ACCESS_KEY", "x"),
        ]);
        let line = write(dir.path(), "line", "# keys\n\nLINEID:linesecret\n");
        let f = credentials(Some(&AuthSource::File(line.clone())), None, &env).unwrap();
        assert_eq!(f.creds.access_key_id, "LINEID");
        let ini = write(
            dir.path(),
            "ini",
            "; comment\n[default]\naws_access_key_id = INIID\naws_secret_access_key = s\n",
        );
        let f = credentials(Some(&AuthSource::File(ini.clone())), None, &env).unwrap();
        assert_eq!(f.creds.access_key_id, "INIID");
        let e = credentials(Some(&AuthSource::File(ini)), Some("x"), &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("[x]"), "{e}");
        let e = credentials(
            Some(&AuthSource::File(dir.path().join("missing"))),
            None,
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("missing"), "{e}");
    }

    #[test]
    fn auth_env_holds_a_line() {
        let env = env_of(&[("MY_S3", "ID1:sec:tok"), ("AWS_ACCESS_KEY_ID", "ENVID")]);
        let f = credentials(Some(&AuthSource::Env("MY_S3".into())), None, &env).unwrap();
        assert_eq!(f.creds.access_key_id, "ID1");
        assert_eq!(f.creds.session_token.as_deref(), Some("tok"));
        assert_eq!(f.origin, "environment variable MY_S3");
        let e = credentials(Some(&AuthSource::Env("UNSET".into())), None, &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("UNSET") && e.contains("not set"), "{e}");
    }

    #[test]
    fn nothing_found_says_what_to_do() {
        let env = env_of(&[("HOME", "/nonexistent-home")]);
        let e = credentials(None, None, &env).unwrap_err().to_string();
        assert!(
            e.contains("AWS_ACCESS_KEY_ID") && e.contains("--no-sign-request"),
            "{e}"
        );
    }

    #[test]
    fn config_file_profiles_and_sso_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let config = write(
            dir.path(),
            "config",
            "[default]\nregion = eu-west-3\n[profile sso]\nsso_session = corp\nregion=ap-south-1\n\
             s3 =\n  region = nope\n",
        );
        let env = env_of(&[
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
            ("HOME", "/nonexistent-home"),
        ]);
        let e = credentials(None, Some("sso"), &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sso_session"), "{e}");
        assert_eq!(region(None, None, &env).unwrap().0, "eu-west-3");
        assert_eq!(region(None, Some("sso"), &env).unwrap().0, "ap-south-1");
        assert_eq!(
            region(Some("us-west-2"), None, &env).unwrap().0,
            "us-west-2"
        );
        let env2 = env_of(&[
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
            ("AWS_DEFAULT_REGION", "ca-central-1"),
        ]);
        assert_eq!(region(None, None, &env2).unwrap().0, "ca-central-1");
        let env3 = env_of(&[("AWS_REGION", "sa-east-1"), ("AWS_DEFAULT_REGION", "x")]);
        assert_eq!(region(None, None, &env3).unwrap().0, "sa-east-1");
        assert_eq!(region(None, None, &env_of(&[])).unwrap().0, "us-east-1");
        assert!(region(Some("us-east-1.evil.com/"), None, &env_of(&[])).is_err());
    }
}
