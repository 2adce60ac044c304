//! A filter as given on the command line or in a spec:
//! `NAME[:ITEM,ITEM,…]`, each item `key=value` or a bare value (the
//! filter's main argument: `partition:2`, `offset:1M,len=64M`). Keys may
//! repeat (`ip:allow=10.0.0.0/8,allow=::1`).

use std::time::Duration;

use synth::size::Size;

use crate::FilterError;

/// One filter's name and arguments, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterArgs {
    name: String,
    items: Vec<(Option<String>, String)>,
}

impl FilterArgs {
    /// Parse `NAME[:ITEMS]`.
    pub fn parse(text: &str) -> Result<Self, FilterError> {
        let text = text.trim();
        let (name, rest) = match text.split_once(':') {
            Some((n, r)) => (n.trim(), Some(r)),
            None => (text, None),
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(FilterError::Syntax {
                text: text.into(),
                why: "a filter is NAME or NAME:ARGS, NAME in lower case (e.g. partition:1, \
                      delay:read=10ms)"
                    .into(),
            });
        }
        let mut items = Vec::new();
        if let Some(rest) = rest {
            for item in rest.split(',') {
                let item = item.trim();
                if item.is_empty() {
                    return Err(FilterError::Syntax {
                        text: text.into(),
                        why: "an empty argument (two commas, or a comma at the end)".into(),
                    });
                }
                match item.split_once('=') {
                    Some((k, v)) => items.push((Some(k.trim().to_string()), v.trim().to_string())),
                    None => items.push((None, item.to_string())),
                }
            }
        }
        Ok(FilterArgs {
            name: name.to_string(),
            items,
        })
    }

    /// The filter's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Refuse keys not in `known`, and more than `positional` bare values:
    /// a typo must not be silently ignored.
    pub fn allow(&self, known: &[&str], positional: usize) -> Result<(), FilterError> {
        let bare = self.items.iter().filter(|(k, _)| k.is_none()).count();
        if bare > positional {
            return Err(self.invalid(if positional == 0 {
                "takes no bare value (give key=value)".to_string()
            } else {
                format!("takes at most {positional} bare value(s)")
            }));
        }
        for (k, _) in &self.items {
            if let Some(k) = k {
                if !known.contains(&k.as_str()) {
                    return Err(self.invalid(if known.is_empty() {
                        format!("takes no argument {k:?}")
                    } else {
                        format!("has no argument {k:?} (it takes {})", known.join(", "))
                    }));
                }
            }
        }
        Ok(())
    }

    /// Every item in order: `(Some(key), value)` or `(None, bare value)`,
    /// for a filter where a bare value continues the list of the key before
    /// it, as nbdkit writes lists (`ip:allow=127.0.0.1,::1,deny=all`).
    pub fn items(&self) -> impl Iterator<Item = (Option<&str>, &str)> {
        self.items.iter().map(|(k, v)| (k.as_deref(), v.as_str()))
    }

    /// The `i`th bare value.
    pub fn positional(&self, i: usize) -> Option<&str> {
        self.items
            .iter()
            .filter(|(k, _)| k.is_none())
            .nth(i)
            .map(|(_, v)| v.as_str())
    }

    /// The last value given for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.items
            .iter()
            .rev()
            .find(|(k, _)| k.as_deref() == Some(key))
            .map(|(_, v)| v.as_str())
    }

    /// Every value given for `key`, in order.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.items
            .iter()
            .filter(|(k, _)| k.as_deref() == Some(key))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// `key` as a size (`4K`, `1.5G`), if given.
    pub fn size(&self, key: &str) -> Result<Option<u64>, FilterError> {
        self.get(key).map(|v| self.parse_size(key, v)).transpose()
    }

    /// A value as a size, the error naming `what`.
    pub fn parse_size(&self, what: &str, value: &str) -> Result<u64, FilterError> {
        value
            .parse::<Size>()
            .map(|s| s.0)
            .map_err(|e| self.invalid(format!("{what}: {e}")))
    }

    /// `key` as a duration (`250us`, `10ms`, `1.5s`), if given.
    pub fn duration(&self, key: &str) -> Result<Option<Duration>, FilterError> {
        self.get(key)
            .map(|v| parse_duration(v).map_err(|e| self.invalid(format!("{key}: {e}"))))
            .transpose()
    }

    /// `key` as a number, if given.
    pub fn number<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, FilterError> {
        self.get(key)
            .map(|v| {
                v.parse::<T>()
                    .map_err(|_| self.invalid(format!("{key}: {v:?} is not a number")))
            })
            .transpose()
    }

    /// An error about this filter's arguments.
    pub fn invalid(&self, why: impl Into<String>) -> FilterError {
        FilterError::Invalid {
            filter: self.name.clone(),
            why: why.into(),
        }
    }
}

/// `250us`, `10ms`, `1.5s`, `2m` (a bare number is milliseconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("{text:?} is not a duration (e.g. 250us, 10ms, 1.5s)");
    let n: f64 = num.parse().map_err(|_| bad())?;
    let scale = match unit.trim() {
        "us" | "µs" => 1e-6,
        "" | "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        _ => return Err(bad()),
    };
    let secs = n * scale;
    if !secs.is_finite() || !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("{text:?} is out of range (at most a day)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_bare_values_and_keys() {
        let a = FilterArgs::parse("offset:1M,len=64M").unwrap();
        assert_eq!(a.name(), "offset");
        assert_eq!(a.positional(0), Some("1M"));
        assert_eq!(a.size("len").unwrap(), Some(64 << 20));
        a.allow(&["len"], 1).unwrap();
        assert!(a.allow(&[], 1).is_err());
        let b = FilterArgs::parse("ip:allow=10.0.0.0/8,allow=::1,deny=all").unwrap();
        assert_eq!(b.all("allow"), vec!["10.0.0.0/8", "::1"]);
        assert!(b.allow(&["allow", "deny"], 0).is_ok());
        assert!(FilterArgs::parse("stats").unwrap().positional(0).is_none());
    }

    #[test]
    fn bad_syntax_is_refused_with_the_text() {
        for bad in ["", ":x", "Delay", "delay:read=1ms,", "delay:,x", "a b"] {
            let e = FilterArgs::parse(bad).unwrap_err().to_string();
            assert!(!e.is_empty(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10ms").unwrap(), Duration::from_millis(10));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_millis(7));
        for bad in ["", "ms", "1h", "-1s", "1e400s", "2d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
