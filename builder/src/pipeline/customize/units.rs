//! Enabling systemd units without running `systemctl` in the image: read the
//! preset files the overlays ship (`enable x.service` / `disable y.service`,
//! <https://www.freedesktop.org/software/systemd/man/latest/systemd.preset.html>)
//! and turn each unit's `[Install]` section into the symlinks `systemctl enable`
//! would create (<https://www.freedesktop.org/software/systemd/man/latest/systemd.unit.html#%5BInstall%5D%20Section%20Options>).

/// One line of a preset file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preset {
    Enable(String),
    Disable(String),
}

/// Parses a preset file. Globs are not supported (every piha preset names its
/// unit); lines with them are returned as errors so nobody expects them to work.
/// The one exception is the catch-all `disable *`: it sets systemd's policy
/// for the first-boot preset run on the node and enables nothing at build
/// time, so the build skips it.
pub fn parse_preset(text: &str) -> Result<Vec<Preset>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (verb, unit) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        if verb == "disable" && unit == "*" {
            continue;
        }
        if unit.is_empty() || unit.contains(['*', '?', '[']) {
            return Err(format!(
                "line {}: {line:?}: expected `enable UNIT` or `disable UNIT` with a unit name, not a glob",
                n + 1
            ));
        }
        match verb {
            "enable" => out.push(Preset::Enable(unit.to_string())),
            "disable" => out.push(Preset::Disable(unit.to_string())),
            other => return Err(format!("line {}: unknown verb {other:?} (expected enable or disable)", n + 1)),
        }
    }
    Ok(out)
}

/// The `[Install]` section of a unit file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Install {
    pub wanted_by: Vec<String>,
    pub required_by: Vec<String>,
    pub alias: Vec<String>,
    pub also: Vec<String>,
    pub default_instance: Option<String>,
}

/// Parses the `[Install]` section (other sections are ignored). An empty
/// assignment resets a list, as systemd does.
pub fn parse_install(text: &str) -> Install {
    let mut install = Install::default();
    let mut in_install = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_install = line == "[Install]";
            continue;
        }
        if !in_install || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { continue };
        let values: Vec<String> = value.split_whitespace().map(str::to_string).collect();
        let list = match key.trim() {
            "WantedBy" => &mut install.wanted_by,
            "RequiredBy" => &mut install.required_by,
            "Alias" => &mut install.alias,
            "Also" => &mut install.also,
            "DefaultInstance" => {
                install.default_instance = values.first().cloned();
                continue;
            }
            _ => continue,
        };
        if values.is_empty() {
            list.clear();
        } else {
            list.extend(values);
        }
    }
    install
}

/// For `name@instance.service` the template file `name@.service` and the
/// instance; for anything else the name itself and no instance.
pub fn template_of(unit: &str) -> (String, Option<String>) {
    match (unit.find('@'), unit.rfind('.')) {
        (Some(at), Some(dot)) if dot > at + 1 => (format!("{}{}", &unit[..=at], &unit[dot..]), Some(unit[at + 1..dot].to_string())),
        _ => (unit.to_string(), None),
    }
}

/// A symlink `systemctl enable` would create: `etc/systemd/system/<link>` → `<target>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Link {
    /// Path relative to the root, e.g. `etc/systemd/system/multi-user.target.wants/ssh.service`.
    pub path: String,
    /// Absolute target, e.g. `/usr/lib/systemd/system/ssh.service`.
    pub target: String,
}

/// The links enabling `unit` (an instance name or a plain unit) whose file is
/// at `unit_path` (absolute) with `install` as its `[Install]` section.
pub fn enable_links(unit: &str, unit_path: &str, install: &Install) -> Vec<Link> {
    let (template, instance) = template_of(unit);
    // `systemctl enable foo@.service` enables DefaultInstance=.
    let name = match (&instance, &install.default_instance) {
        (None, Some(default)) if template.contains('@') => template.replacen('@', &format!("@{default}"), 1),
        _ => unit.to_string(),
    };
    let mut links = Vec::new();
    for target in &install.wanted_by {
        links.push(Link {
            path: format!("etc/systemd/system/{target}.wants/{name}"),
            target: unit_path.to_string(),
        });
    }
    for target in &install.required_by {
        links.push(Link {
            path: format!("etc/systemd/system/{target}.requires/{name}"),
            target: unit_path.to_string(),
        });
    }
    for alias in &install.alias {
        links.push(Link {
            path: format!("etc/systemd/system/{alias}"),
            target: unit_path.to_string(),
        });
    }
    links
}

#[cfg(test)]
mod tests {
    use super::{Install, Link, Preset, enable_links, parse_install, parse_preset, template_of};

    #[test]
    fn presets() {
        let p = parse_preset("# c\nenable piha-agent.service\n\ndisable apt-daily.timer\ndisable *\n").unwrap();
        assert_eq!(
            p,
            vec![
                Preset::Enable("piha-agent.service".into()),
                Preset::Disable("apt-daily.timer".into())
            ]
        );
        assert!(parse_preset("enable *").is_err());
        assert!(parse_preset("mask x.service").is_err());
    }

    #[test]
    fn install_section() {
        let i = parse_install(
            "[Unit]\nWantedBy=wrong.target\n[Install]\nWantedBy=multi-user.target\nAlso=a.socket\nAlias=dbus-x.service\nWantedBy=\nWantedBy=b.target c.target\n",
        );
        assert_eq!(i.wanted_by, vec!["b.target", "c.target"]);
        assert_eq!(i.also, vec!["a.socket"]);
        assert_eq!(i.alias, vec!["dbus-x.service"]);
    }

    #[test]
    fn templates_and_links() {
        assert_eq!(
            template_of("getty@ttyS0.service"),
            ("getty@.service".to_string(), Some("ttyS0".to_string()))
        );
        assert_eq!(template_of("ssh.service"), ("ssh.service".to_string(), None));
        let install = Install {
            wanted_by: vec!["getty.target".into()],
            default_instance: Some("tty1".into()),
            ..Install::default()
        };
        assert_eq!(
            enable_links("getty@.service", "/usr/lib/systemd/system/getty@.service", &install),
            vec![Link {
                path: "etc/systemd/system/getty.target.wants/getty@tty1.service".into(),
                target: "/usr/lib/systemd/system/getty@.service".into()
            }]
        );
    }
}
