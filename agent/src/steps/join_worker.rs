//! join-worker: wait for the cluster's API at VIP:port (tried again until it answers), then
//! `kubeadm join`. A worker never gets the VIP: it is a client of it.

use piha_config::node::NodeConfig;

use super::kubeadm;
use super::{Env, Step};
use crate::state::Store;

pub fn run(env: &Env, cfg: &NodeConfig, store: &mut Store) -> anyhow::Result<()> {
    kubeadm::join_once(env, store, Step::JoinWorker.name(), cfg)
}

#[cfg(test)]
mod tests {
    use crate::agent::Ending;
    use crate::steps::kubeadm;
    use crate::testing::{Scratch, TOKEN, ca_cert_hash};

    #[test]
    fn a_worker_waits_joins_and_never_gets_the_vip() {
        let s = Scratch::new("w1");
        *s.probe.vip_refusals.lock().unwrap() = 2;
        assert_eq!(s.run(), Ending::Done);
        let commands = s.commands();
        assert!(s.position("#probe 10.0.2.100:6443 answers").unwrap() < s.position("kubeadm join").unwrap());
        assert!(
            !commands.iter().any(|c| c.contains("realserver") || c.contains("apicheck")),
            "{commands:#?}"
        );
        assert!(!s.paths.host("/etc/piha/vip.env").exists());
        assert!(!s.paths.host("/etc/kubernetes/pki").exists(), "a worker gets no CA keys");
        // kubeadm ran with the token; then the token left the file.
        let config = s.read("/etc/piha/kubeadm.yaml");
        assert!(!config.contains(TOKEN), "{config}");
        assert!(
            config.contains(kubeadm::TOKEN_REMOVED) && config.contains(&ca_cert_hash()),
            "{config}"
        );
        assert!(!config.contains("controlPlane"), "{config}");
    }

    /// A card flashed after its token expired: the error says which command fixes it.
    #[test]
    fn an_expired_token_says_how_to_register_it_again() {
        let s = Scratch::new("w1");
        let said = "error execution phase preflight: couldn't validate the identity of the API Server: token id \"abcdef\" is invalid for this cluster or it has expired. Use \"kubeadm token create\" on the control-plane node to create a new valid token";
        s.runner.fail_once("kubeadm join", said);
        s.runner.fail_once("kubeadm join", said);
        assert_eq!(s.run(), Ending::Failed);
        let error = s.status().error.unwrap();
        assert!(
            error.contains("sudo kubeadm token create TOKEN") && error.contains("bootstrap_token_ttl"),
            "{error}"
        );
    }
}
