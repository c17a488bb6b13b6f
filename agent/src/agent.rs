//! The `run` command: the steps in order, each skipped once done (except the
//! every-boot ones), status.json written at each step's start and end, the
//! state saved after each step. A failed step is tried again in the same run,
//! with backoff and (unless `--tries` says otherwise) without limit: status.json
//! says `retrying`, with the attempt, the next try and the last error, and is
//! rewritten every [`HEARTBEAT`] while the agent waits. No reboot is needed to
//! recover. Only a refused card ([`Refused`]) stops the run at once.

use std::process::ExitCode;
use std::time::Duration;

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

    reporter.set_joined(store.state.joined.is_some());
    for step in Step::plan(&cfg).into_iter().skip(1) {
        if store.state.is_done(step.name()) && !step.every_boot() {
            log::info!("step {}: done on an earlier boot", step.name());
            reporter.skipped(step.name());
            continue;
        }
        let mut attempt: u32 = 0;
        loop {
            begin(&mut reporter, step);
            if let (true, Some(not_before)) = (step.runs_kubeadm(), cfg.card.ca_not_before) {
                clock::wait_for(env, not_before, &mut |what| reporter.waiting(what));
            }
            let result = run_step(env, hooks, &cfg, &mut store, step);
            reporter.set_joined(store.state.joined.is_some());
            match result {
                Ok(facts) => {
                    for (what, fact) in facts {
                        reporter.set_version(&what, fact);
                    }
                    reporter.finish_ok();
                    log::info!("step {}: done", step.name());
                    break;
                }
                Err(e) => {
                    attempt = attempt.saturating_add(1);
                    let tries = &env.timings.step_tries;
                    if e.is::<Refused>() {
                        return refuse(env, &mut reporter, step, e);
                    }
                    if tries.attempts.is_some_and(|max| attempt >= max) {
                        return fail(&mut reporter, step, &e);
                    }
                    let pause = tries.pause(attempt);
                    log::error!(
                        "step {} failed (try {attempt}); trying again in {} s: {e:#}",
                        step.name(),
                        pause.as_secs()
                    );
                    reporter.finish_retrying(step.name(), &e, attempt, now().saturating_add(pause.as_secs()));
                    pause_with_heartbeat(env, &mut reporter, pause);
                }
            }
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

/// Sleeps `pause` in slices of at most [`HEARTBEAT`], rewriting status.json
/// after each so its `updated` time shows the agent is alive and waiting.
fn pause_with_heartbeat(env: &Env, reporter: &mut Reporter, pause: Duration) {
    let mut left = pause;
    while !left.is_zero() {
        let slice = left.min(HEARTBEAT);
        env.sleeper.sleep(slice);
        left = left.saturating_sub(slice);
        reporter.write();
    }
}

/// How often status.json is rewritten while the agent waits to try again:
/// often enough to show it is alive, rarely enough for an SD card that may
/// wait for days (readers have `next_try` for the rest).
pub const HEARTBEAT: Duration = Duration::from_secs(30);

/// An error no retry can fix without a person: the card is refused (a joined
/// node stamped as another node), or another cluster holds the VIP. The step
/// fails at once, the card's secrets are scrubbed, and the message says what to do.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

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
    let message = match scrub(env) {
        Some(note) => format!("{message}\n{note}"),
        None => message,
    };
    reporter.invalid_config(message);
    Ending::InvalidConfig
}

/// A card the node refuses (`Refused`): the step fails at once, and the
/// card's secrets are scrubbed, as on every path where the agent stops on a
/// card: a refused card must give nothing away (re-stamping writes them again).
fn refuse(env: &Env, reporter: &mut Reporter, step: Step, err: anyhow::Error) -> Ending {
    let err = match scrub(env) {
        Some(note) => anyhow::anyhow!("{err:#}\n{note}"),
        None => err,
    };
    fail(reporter, step, &err)
}

/// Scrubs the card's secrets; what to tell the user about it, if anything.
fn scrub(env: &Env) -> Option<String> {
    match config_partition::scrub_secrets(env.paths) {
        Ok(true) => Some("The card's secrets were overwritten and removed: re-stamping writes them again.".to_string()),
        Ok(false) => None,
        Err(e) => Some(format!("The card's secrets could not be scrubbed: {e:#}")),
    }
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
    let mut timings = Timings::default();
    timings.step_tries.attempts = opts.tries;
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

    /// A failed step is tried again in the same run, with backoff, and
    /// status.json says so while the agent waits: phase `retrying`, the
    /// attempt, the next try, the last error, and an `updated` that moves.
    #[test]
    fn a_failed_step_is_tried_again_without_a_reboot() {
        use std::sync::Mutex;
        use std::time::Duration;

        use piha_config::status::Status;

        use crate::paths::Paths;
        use crate::retry::{Backoff, Sleeper};

        /// Reads status.json at every pause.
        struct Snapshots<'a> {
            paths: &'a Paths,
            seen: Mutex<Vec<(Duration, Status)>>,
        }
        impl Sleeper for Snapshots<'_> {
            fn sleep(&self, d: Duration) {
                let text = std::fs::read_to_string(self.paths.status_file()).unwrap();
                self.seen.lock().unwrap().push((d, serde_json::from_str(&text).unwrap()));
            }
        }

        let mut s = Scratch::new("w1");
        s.timings.step_tries = Backoff::new(Duration::from_secs(15), Duration::from_secs(60), None);
        for _ in 0..3 {
            s.runner
                .fail_once("kubeadm join", "couldn't validate the identity of the API Server");
            s.runner
                .fail_once("kubeadm join", "couldn't validate the identity of the API Server");
        }
        let sleeper = Snapshots {
            paths: &s.paths,
            seen: Mutex::new(Vec::new()),
        };
        let env = crate::steps::Env {
            sleeper: &sleeper,
            ..s.env()
        };
        let guard = crate::crash::Guard::new(None);
        let ending = super::run(
            &env,
            &super::Hooks {
                guard: &guard,
                command_log: None,
            },
        );
        assert_eq!(ending, Ending::Done);
        let joins = s.commands().iter().filter(|c| c.starts_with("kubeadm join")).count();
        assert_eq!(joins, 7, "3 failed tries of 2 joins each, then one that works");

        let seen = sleeper.seen.lock().unwrap();
        // Inside each try: the join's own pause between its two joins (60 s).
        // Between tries: 15 s, then 30 s, then 60 s (two heartbeats of 30 s).
        let retry_pauses: Vec<(u64, u32)> = seen
            .iter()
            .filter(|(_, st)| st.phase == Phase::Retrying)
            .map(|(d, st)| (d.as_secs(), st.retry.as_ref().unwrap().attempt))
            .collect();
        assert_eq!(retry_pauses, [(15, 1), (30, 2), (30, 3), (30, 3)]);
        let (_, waiting) = seen.iter().find(|(_, st)| st.phase == Phase::Retrying).unwrap();
        let retry = waiting.retry.as_ref().unwrap();
        assert_eq!(retry.step, "join-worker");
        assert!(retry.last_error.contains("kubeadm join failed 2 times"), "{retry:?}");
        assert!(
            retry.next_try >= waiting.updated && retry.next_try <= waiting.updated + 15,
            "{retry:?}"
        );
        assert!(!waiting.joined);
        assert_eq!(waiting.steps.last().map(|st| st.outcome), Some(Outcome::Failed));

        let done = s.status();
        assert_eq!(done.phase, Phase::Done);
        assert!(done.retry.is_none() && done.error.is_none() && done.joined, "{done:?}");
        // The latest failed try is in the record (not every one: a node may
        // retry for days), then the one that worked.
        let tries: Vec<Outcome> = done
            .steps
            .iter()
            .filter(|st| st.name == "join-worker")
            .map(|st| st.outcome)
            .collect();
        assert_eq!(tries, [Outcome::Failed, Outcome::Ok]);
    }

    /// A node becomes a member the moment kubeadm succeeds: a failure after it
    /// (here the CNI apply) leaves `joined` set, so a card re-stamped for
    /// another node is refused, and no `kubeadm reset` is ever queued.
    #[test]
    fn joined_is_recorded_when_kubeadm_succeeds_not_when_the_step_ends() {
        let s = Scratch::new("cp1");
        for _ in 0..3 {
            s.runner.fail_once("kubectl", "error: the server doesn't have a resource type");
        }
        assert_eq!(s.run(), Ending::Failed);
        let status = s.status();
        assert_eq!(status.steps.last().map(|st| st.name.as_str()), Some("init-control-plane"));
        assert!(status.joined, "{status:?}");
        assert_eq!(s.state().joined.map(|j| j.name), Some("cp1".to_string()));

        // Re-stamped as cp3 now: refused at once (not retried), nothing reset.
        crate::testing::stamp(
            s.card.path(),
            &crate::testing::node("cp3", piha_config::node::NetworkRenderer::Networkd),
        );
        s.clear_commands();
        assert_eq!(s.run(), Ending::Failed);
        let error = s.status().error.unwrap();
        assert!(error.contains("already joined as cp1"), "{error}");
        assert!(
            !s.commands()
                .iter()
                .any(|c| ["kubeadm init", "kubeadm join", "kubeadm reset"].iter().any(|k| c.starts_with(k))),
            "{:#?}",
            s.commands()
        );
    }
}
