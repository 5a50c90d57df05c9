//! The files `tuning apply` installs. They are embedded from the repository so that the
//! deployed files and the ones reviewed in the repository are the same bytes.

use crate::error::TuningError;

/// `sysctl.d/60-gateway.conf`, installed as `/etc/sysctl.d/60-gateway.conf`.
pub const SYSCTL_CONF: &str = include_str!("../../sysctl.d/60-gateway.conf");
pub const SYSCTL_CONF_PATH: &str = "etc/sysctl.d/60-gateway.conf";

/// `deploy/limits.d/60-gateway.conf`, installed as `/etc/security/limits.d/60-gateway.conf`.
pub const LIMITS_CONF: &str = include_str!("../../deploy/limits.d/60-gateway.conf");
pub const LIMITS_CONF_PATH: &str = "etc/security/limits.d/60-gateway.conf";

/// A file `tuning apply` writes: its path relative to the root, and its contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileFile {
    pub relative_path: &'static str,
    pub contents: &'static str,
}

pub const PROFILE_FILES: [ProfileFile; 2] = [
    ProfileFile {
        relative_path: SYSCTL_CONF_PATH,
        contents: SYSCTL_CONF,
    },
    ProfileFile {
        relative_path: LIMITS_CONF_PATH,
        contents: LIMITS_CONF,
    },
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlEntry {
    pub key: String,
    /// Whitespace-normalized, the way it compares with what the kernel prints.
    pub value: String,
}

/// Parses sysctl.d syntax: `key = value` lines, `#` and `;` comments, blank lines.
/// A leading `-` (ignore failures, in systemd-sysctl) is not used by this profile and is rejected
/// so that every setting in it is applied for certain.
pub fn parse_sysctl_conf(text: &str) -> Result<Vec<SysctlEntry>, TuningError> {
    let mut entries = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let broken = |reason: &str| TuningError::SysctlFile {
            line: index + 1,
            reason: reason.to_string(),
        };
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| broken("expected `key = value`"))?;
        let key = key.trim();
        if key.is_empty() || key.starts_with('-') || key.contains(char::is_whitespace) {
            return Err(broken("the key must be a plain dotted name"));
        }
        let value = normalize(value);
        if value.is_empty() {
            return Err(broken("the value is empty"));
        }
        entries.push(SysctlEntry {
            key: key.to_string(),
            value,
        });
    }
    Ok(entries)
}

/// Collapses runs of whitespace so `10000\t65535\n` and `10000 65535` compare equal.
pub fn normalize(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_sysctl_file_parses_into_known_settings() {
        let entries = parse_sysctl_conf(SYSCTL_CONF).expect("the shipped file must parse");
        let keys: Vec<&str> = entries.iter().map(|entry| entry.key.as_str()).collect();
        assert!(keys.contains(&"net.core.somaxconn"), "{keys:?}");
        assert!(keys.contains(&"net.ipv4.tcp_mem"), "{keys:?}");
        let range = entries
            .iter()
            .find(|entry| entry.key == "net.ipv4.ip_local_port_range")
            .expect("the profile sets the port range");
        assert_eq!(range.value, "10000 65535");
    }

    #[test]
    fn every_setting_in_the_shipped_file_has_a_comment_line_above_it() {
        let lines: Vec<&str> = SYSCTL_CONF.lines().collect();
        for (index, line) in lines.iter().enumerate() {
            if line.contains('=') && !line.starts_with('#') {
                let above = index.checked_sub(1).map(|above| lines[above]);
                assert!(
                    above.is_some_and(|above| above.starts_with("# ")),
                    "line {} has no comment above it: {line}",
                    index + 1
                );
            }
        }
    }

    #[test]
    fn comments_and_spacing_are_ignored() {
        let entries = parse_sysctl_conf("# a\n; b\n\n  a.b =  1\t 2 \n").expect("valid file");
        assert_eq!(
            entries,
            vec![SysctlEntry {
                key: "a.b".to_string(),
                value: "1 2".to_string()
            }]
        );
    }

    #[test]
    fn malformed_lines_are_reported_with_their_number() {
        let error = parse_sysctl_conf("# ok\nnot a setting\n").expect_err("must fail");
        assert!(error.to_string().contains("line 2"), "{error}");
        assert!(parse_sysctl_conf("-a.b = 1\n").is_err());
        assert!(parse_sysctl_conf("a.b =\n").is_err());
    }
}
