//! The handlebars templates under `overlays/templates/`, embedded at compile
//! time so the agent carries them, and the one way to render them.

use handlebars::Handlebars;
use serde::Serialize;

use super::RenderError;

/// A template: its file name (for errors) and its text.
#[derive(Debug, Clone, Copy)]
pub struct Template {
    pub name: &'static str,
    pub text: &'static str,
}

macro_rules! template {
    ($name:literal) => {
        Template {
            name: $name,
            text: include_str!(concat!("../../../overlays/templates/", $name)),
        }
    };
}

pub(crate) const KEEPALIVED: Template = template!("keepalived.conf.hbs");
pub(crate) const NETWORKD: Template = template!("10-piha.network.hbs");
pub(crate) const HOSTS: Template = template!("hosts.hbs");
pub(crate) const CONTAINERD: Template = template!("containerd-config.toml.hbs");
pub(crate) const CRIO: Template = template!("crio-10-piha.conf.hbs");
pub(crate) const CHRONY: Template = template!("chrony-piha.sources.hbs");
pub(crate) const FLANNEL: Template = template!("cni-flannel.yaml.hbs");

/// Every template, for the test that each one compiles.
#[cfg(test)]
const ALL: [Template; 7] = [KEEPALIVED, NETWORKD, HOSTS, CONTAINERD, CRIO, CHRONY, FLANNEL];

/// Renders `template` with `data`. Strict mode: a name missing from `data` is
/// an error, never an empty string; no HTML escaping (these are config files).
pub(crate) fn render<T: Serialize>(template: Template, data: &T) -> Result<String, RenderError> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    hb.register_escape_fn(handlebars::no_escape);
    hb.render_template(template.text, data).map_err(|error| RenderError::Template {
        template: template.name,
        error,
    })
}

#[cfg(test)]
mod tests {
    use handlebars::Handlebars;

    use super::ALL;

    #[test]
    fn every_template_compiles() {
        for t in ALL {
            let mut hb = Handlebars::new();
            hb.register_template_string(t.name, t.text)
                .unwrap_or_else(|e| panic!("{}: {e}", t.name));
        }
    }
}
