//! The `run` command: the steps in order, each skipped once done (except the
//! every-boot ones), status.json written at each step's start and end, the
//! state saved after each step. A failed step stops the run; the next boot
//! starts again from it.

use std::process::ExitCode;

use anyhow::Context;
use piha_config::node::NodeConfig;
use piha_config::status::Phase;
use piha_runner::{Runner, SystemRunner};

use crate::api_wait::{Probe, TcpProbe};
use crate::cli::RunOpts;
use crate::clock::{self, SystemClock};
use crate::config_partition;
use crate::crash::{self, CrashAt, CrashRunner, Guard};
use crate::dry_run::{CommandLog, DryRunProbe, FastSleeper, LogRunner};
use crate::paths::{COMMAND_LOG, Paths};
use crate::report::{Reporter, now};
use crate::retry::{Sleeper, ThreadSleeper};
use crate::state::Store;
use crate::steps::{Env, Step, Timings, read_config};

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Every step done.
    Done,
    /// A step failed (reported); the next boot retries it.
    Failed,
    /// node.yaml is missing or invalid (reported); nothing was changed.
    InvalidConfig,
}

/// Hooks that only tests use: the crash guard and the dry-run command log.
pub struct Hooks<'a> {
    pub guard: &'a Guard,
    pub command_log: Option<&'a CommandLog>,
}

/// Runs the agent once.
pub fn run(env: &Env, hooks: &Hooks) -> Ending {
    let mut reporter = Reporter::start(env.paths);
    let begin = |reporter: &mut Reporter, step: Step| {
        log::info!("step {}: starting", step.name());
        if let Some(log) = hooks.command_log {
            log.step(step.name());
        }
        reporter.begin(step.name());
        hooks.guard.enter(step.name());
    };

    // read-config: nothing on the node may change before node.yaml is valid,
    // so the state is not even loaded until then.
    begin(&mut reporter, Step::ReadConfig);
    let cfg = match read_config::run(env) {
        Ok(cfg) => cfg,
        Err(message) => return invalid_config(env, &mut reporter, message),
    };
    reporter.set_node(&cfg);
    let mut store = match Store::load(env.paths.state_file()) {
        Ok(store) => store,
        Err(e) => return fail(&mut reporter, Step::ReadConfig, &e),
    };
    if let Err(message) = config_partition::check_secrets(env.paths, &cfg, store.state.joined.is_some()) {
        return invalid_config(env, &mut reporter, message);
    }
    if let Err(e) = clock::at_least(env, cfg.card.stamped_at) {
        return fail(&mut reporter, Step::ReadConfig, &e);
    }
    for (what, version) in read_config::versions(env, &cfg) {
        reporter.set_version(&what, version);
    }
    for (what, fact) in &store.state.facts {
        reporter.set_version(what, fact.clone());
    }
    hooks.guard.end(Step::ReadConfig.name());
    store.state.runs = store.state.runs.saturating_add(1);
    store.state.set_done(Step::ReadConfig.name(), now());
    if let Err(e) = store.save() {
        return fail(&mut reporter, Step::ReadConfig, &e);
    }
    reporter.finish_ok();

    for step in Step::plan(&cfg).into_iter().skip(1) {
        if store.state.is_done(step.name()) && !step.every_boot() {
            log::info!("step {}: done on an earlier boot", step.name());
            reporter.skipped(step.name());
            continue;
        }
        begin(&mut reporter, step);
        if let (true, Some(not_before)) = (step.runs_kubeadm(), cfg.card.ca_not_before) {
            clock::wait_for(env, not_before, &mut |what| reporter.waiting(what));
        }
        match run_step(env, hooks, &cfg, &mut store, step) {
            Ok(facts) => {
                for (what, fact) in facts {
                    reporter.set_version(&what, fact);
                }
                reporter.finish_ok();
                log::info!("step {}: done", step.name());
            }
            Err(e) => return fail(&mut reporter, step, &e),
        }
    }
    reporter.done();
    log::info!(
        "{} is done: {} {}",
        cfg.node.name,
        cfg.node.role.as_str(),
        if cfg.node.init { "(init)" } else { "" }
    );
    Ending::Done
}

/// Runs one step and records it as done.
fn run_step(env: &Env, hooks: &Hooks, cfg: &NodeConfig, store: &mut Store, step: Step) -> anyhow::Result<Vec<(String, String)>> {
    let facts = step.run(env, cfg, store)?;
    hooks.guard.end(step.name());
    for (what, fact) in &facts {
        store.state.facts.insert(what.clone(), fact.clone());
    }
    if step.is_role() {
        store.state.joined = store.state.identity.clone();
    }
    store.state.set_done(step.name(), now());
    store.save().with_context(|| format!("recording step {} as done", step.name()))?;
    Ok(facts)
}

/// A card the agent cannot use: reported, nothing on the node changed, and
/// its secrets scrubbed, so that a card thrown away now gives nothing away
/// (re-stamping gives it a new copy).
fn invalid_config(env: &Env, reporter: &mut Reporter, message: String) -> Ending {
    log::error!("the card is not usable; nothing was applied:\n{message}");
    let message = match config_partition::scrub_secrets(env.paths) {
        Ok(true) => format!("{message}\nThe card's secrets were overwritten and removed: re-stamping writes them again."),
        Ok(false) => message,
        Err(e) => format!("{message}\nThe card's secrets could not be scrubbed: {e:#}"),
    };
    reporter.invalid_config(message);
    Ending::InvalidConfig
}

fn fail(reporter: &mut Reporter, step: Step, err: &anyhow::Error) -> Ending {
    log::error!("step {} failed; the next boot tries again: {err:#}", step.name());
    reporter.finish_failed(err);
    debug_assert_eq!(reporter.status.phase, Phase::Failed);
    Ending::Failed
}

/// `piha-agent run`: wires the real runner, probe and clock (or the dry-run
/// hooks) and runs. Exit status: 0 done, 1 a step failed, 2 invalid node.yaml.
pub fn command(opts: &RunOpts) -> anyhow::Result<ExitCode> {
    let paths = Paths::new(&opts.paths.root, &opts.paths.config_dir);
    let crash = CrashAt::from_env().map_err(anyhow::Error::msg)?;
    if crash.is_some() {
        log::warn!("{} is set: the agent will abort on purpose (test hook)", crash::ENV);
    }
    let guard = Guard::new(crash);
    let timings = Timings::default();
    let command_log;
    let (log_runner, dry_probe);
    let system = SystemRunner;
    let tcp = TcpProbe::default();
    let (inner, probe, sleeper): (&dyn Runner, &dyn Probe, &dyn Sleeper) = if opts.dry_run_commands {
        log::warn!(
            "--dry-run-commands: commands are logged to {}, not run (test hook)",
            paths.host(COMMAND_LOG).display()
        );
        command_log = Some(CommandLog::new(&paths));
        let log = command_log.as_ref().expect("just set");
        log_runner = LogRunner::new(log, &paths);
        dry_probe = DryRunProbe { log };
        (&log_runner, &dry_probe, &FastSleeper)
    } else {
        command_log = None;
        (&system, &tcp, &ThreadSleeper)
    };
    let runner = CrashRunner { inner, guard: &guard };
    let env = Env {
        paths: &paths,
        runner: &runner,
        probe,
        sleeper,
        clock: &SystemClock,
        timings: &timings,
    };
    let hooks = Hooks {
        guard: &guard,
        command_log: command_log.as_ref(),
    };
    Ok(match run(&env, &hooks) {
        Ending::Done => ExitCode::SUCCESS,
        Ending::Failed => ExitCode::from(1),
        Ending::InvalidConfig => ExitCode::from(2),
    })
}

#[cfg(test)]
mod tests {
    use piha_config::status::{Outcome, Phase};

    use super::Ending;
    use crate::testing::Scratch;

    fn outcomes(s: &Scratch) -> Vec<(String, Outcome)> {
        s.status().steps.into_iter().map(|st| (st.name, st.outcome)).collect()
    }

    #[test]
    fn a_worker_runs_every_step_then_only_identity() {
        let s = Scratch::new("w1");
        assert_eq!(s.run(), Ending::Done);
        let status = s.status();
        assert_eq!(status.phase, Phase::Done);
        assert_eq!(status.node.as_deref(), Some("w1"));
        assert_eq!(status.boots, 1);
        assert!(
            status
                .steps
                .iter()
                .all(|st| st.outcome == Outcome::Ok && st.wall_ms.is_some() && st.cpu_ms.is_some())
        );
        assert_eq!(
            status.versions.get("piha-agent").map(String::as_str),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert!(status.versions.contains_key("kubeadm") && status.versions.contains_key("containerd"));
        let state = s.state();
        assert_eq!(
            state.done_steps(),
            vec!["done", "host-prep", "identity", "join-worker", "read-config", "runtime"]
        );
        assert_eq!(state.joined.as_ref().map(|j| j.name.as_str()), Some("w1"));

        // Second boot: kubeadm is never run again; identity is re-applied.
        s.clear_commands();
        assert_eq!(s.run(), Ending::Done);
        let commands = s.commands();
        assert!(
            !commands
                .iter()
                .any(|c| c.starts_with("kubeadm join") || c.starts_with("kubeadm reset")),
            "{commands:#?}"
        );
        assert!(commands.contains(&"hostname w1".to_string()), "{commands:#?}");
        let names: Vec<(String, Outcome)> = outcomes(&s);
        let expect = [
            ("read-config", Outcome::Ok),
            ("identity", Outcome::Ok),
            ("host-prep", Outcome::Skipped),
            ("runtime", Outcome::Skipped),
            ("join-worker", Outcome::Skipped),
            ("done", Outcome::Ok),
        ];
        assert_eq!(names, expect.iter().map(|(n, o)| (n.to_string(), *o)).collect::<Vec<_>>());
        assert_eq!(s.status().boots, 2);
        assert_eq!(s.state().runs, 2);
    }

    #[test]
    fn a_failed_step_reports_stderr_and_is_retried_next_boot() {
        let s = Scratch::new("w1");
        s.runner.rec.respond(
            "modprobe",
            Err("modprobe: FATAL: Module br_netfilter not found in directory /lib/modules/6.1.0".into()),
        );
        assert_eq!(s.run(), Ending::Failed);
        let status = s.status();
        assert_eq!(status.phase, Phase::Failed);
        let failed = status.steps.last().unwrap();
        assert_eq!((failed.name.as_str(), failed.outcome), ("host-prep", Outcome::Failed));
        assert!(
            failed.stderr_tail.as_deref().unwrap().contains("Module br_netfilter not found"),
            "{failed:?}"
        );
        assert!(
            failed.error.as_deref().unwrap().contains("loading the kernel module overlay"),
            "{failed:?}"
        );
        assert!(status.error.is_some());
        assert!(!s.state().is_done("host-prep"));
        assert!(s.card.path().join("secrets").exists(), "secrets stay until the node is done");

        assert_eq!(s.run(), Ending::Done);
        let steps = s.status().steps;
        assert_eq!(
            steps.iter().find(|st| st.name == "host-prep").map(|st| st.outcome),
            Some(Outcome::Ok)
        );
    }

    #[test]
    fn a_completed_step_is_skipped() {
        let s = Scratch::new("w1");
        s.runner.fail_once(
            "kubeadm join",
            "error execution phase preflight: couldn't validate the identity of the API Server",
        );
        s.runner.fail_once(
            "kubeadm join",
            "error execution phase preflight: couldn't validate the identity of the API Server",
        );
        assert_eq!(s.run(), Ending::Failed);
        s.clear_commands();
        assert_eq!(s.run(), Ending::Done);
        let commands = s.commands();
        assert!(
            !commands.iter().any(|c| c.starts_with("modprobe") || c.starts_with("swapoff")),
            "host-prep re-ran: {commands:#?}"
        );
        assert!(
            !commands.iter().any(|c| c.starts_with("systemctl enable --now containerd")),
            "runtime re-ran: {commands:#?}"
        );
    }
}
