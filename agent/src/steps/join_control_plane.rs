//! join-control-plane: place the CAs, wait for the cluster's
//! API at VIP:port, `kubeadm join` with the control-plane config, and only
//! then bring up the realServer VIP on lo and the health endpoint through
//! which the directors admit this node (once its API server is ready).
//!
//! The order matters: with the VIP on lo before the
//! join, this node's own requests to VIP:port would be delivered locally, to
//! an API server that does not exist yet, and the join would time out.

use piha_config::node::NodeConfig;

use super::kubeadm;
use super::{Env, Step};
use crate::state::Store;

pub fn run(env: &Env, cfg: &NodeConfig, store: &mut Store) -> anyhow::Result<()> {
    kubeadm::join_once(env, store, Step::JoinControlPlane.name(), cfg)?;
    kubeadm::start_realserver(env)?;
    kubeadm::enable_cert_timer(env)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::agent::Ending;
    use crate::testing::Scratch;

    #[test]
    fn waits_for_the_api_joins_and_only_then_raises_the_vip() {
        let s = Scratch::new("cp2");
        *s.probe.vip_refusals.lock().unwrap() = 9;
        assert_eq!(s.run(), Ending::Done);
        let commands = s.commands();
        let answered = s.position("#probe 10.0.2.100:6443 answers").expect("the VIP was waited for");
        let join = s.position("kubeadm join").expect("joined");
        let vip = s.position("systemctl enable --now piha-realserver.service").expect("VIP up");
        let check = s
            .position("systemctl enable --now piha-apicheck.service")
            .expect("health endpoint up");
        assert!(
            answered < join && join < vip && vip < check,
            "wait, join, then VIP and health endpoint: {commands:#?}"
        );
        assert_eq!(commands[join], "kubeadm join --config /etc/piha/kubeadm.yaml");
        assert_eq!(
            commands.iter().filter(|c| c.starts_with("#probe 10.0.2.100:6443 refused")).count(),
            9
        );
        // The pauses double and stay at 30 s (then the step is tried again).
        let pauses = s.sleeper.0.lock().unwrap().clone();
        let secs: Vec<u64> = pauses.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 30, 30, 30, 30]);
        assert_eq!(s.mode("/etc/kubernetes/pki/ca.key"), 0o600);
        assert_eq!(s.read("/etc/piha/vip.env"), "VIP=10.0.2.100\nAPI_PORT=6443\n");
    }

    #[test]
    fn a_failed_join_is_reset_and_retried_then_reported() {
        let s = Scratch::new("cp3");
        s.runner.fail_once(
            "kubeadm join",
            "etcdserver: can only promote a learner member which is in sync with leader",
        );
        s.runner.fail_once(
            "kubeadm join",
            "etcdserver: can only promote a learner member which is in sync with leader",
        );
        assert_eq!(s.run(), Ending::Failed);
        let commands = s.commands();
        let joins: Vec<usize> = commands
            .iter()
            .enumerate()
            .filter(|(_, c)| c.starts_with("kubeadm join"))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(joins.len(), 2, "join_attempts = 2: {commands:#?}");
        let reset = s.position("kubeadm reset -f").unwrap();
        assert!(joins[0] < reset && reset < joins[1]);
        assert!(
            !commands
                .iter()
                .any(|c| c.contains("piha-realserver") || c.contains("piha-apicheck")),
            "no VIP and no health endpoint without a join: {commands:#?}"
        );
        let status = s.status();
        let step = status.steps.last().unwrap();
        assert!(step.error.as_deref().unwrap().contains("kubeadm join failed 2 times"), "{step:?}");
        assert!(step.stderr_tail.as_deref().unwrap().contains("learner member"), "{step:?}");

        s.clear_commands();
        assert_eq!(s.run(), Ending::Done);
        assert!(s.position("kubeadm reset -f").unwrap() < s.position("kubeadm join").unwrap());
        assert!(s.position("kubeadm join").unwrap() < s.position("systemctl enable --now piha-realserver.service").unwrap());
        assert!(s.position("kubeadm join").unwrap() < s.position("systemctl enable --now piha-apicheck.service").unwrap());
    }
}
