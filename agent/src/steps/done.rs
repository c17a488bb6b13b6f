//! done (every boot): remove the secrets from PIHA-CFG once the node has
//! joined, and check they are gone. Runs on every boot so a card re-stamped
//! (with secrets) for an already-joined node does not keep them. The final
//! status.json is written by `agent::run` after this.

use super::Env;
use crate::config_partition;

pub fn run(env: &Env) -> anyhow::Result<()> {
    config_partition::scrub_secrets(env.paths)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use piha_config::status::Phase;

    use crate::agent::Ending;
    use crate::testing::Scratch;

    #[test]
    fn secrets_leave_the_card_only_when_done() {
        let s = Scratch::new("cp2");
        assert!(s.card.path().join("secrets/pki/ca.key").exists());
        assert_eq!(s.run(), Ending::Done);
        assert!(!s.card.path().join("secrets").exists());
        assert!(s.card.path().join("node.yaml").exists(), "the identity stays for later boots");
        let status = s.status();
        assert_eq!(status.phase, Phase::Done);
        assert_eq!(status.steps.last().map(|st| st.name.as_str()), Some("done"));
        assert_eq!(status.role, Some(piha_config::cluster::Role::ControlPlane));
    }
}
