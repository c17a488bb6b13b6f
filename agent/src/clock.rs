//! The clock. A Raspberry Pi has no battery-backed clock: each boot starts
//! where the last shutdown left it, or at the image's build time, and
//! without `ntp:` nothing corrects it. kubeadm then fails on certificates
//! that are "not yet valid". Two rules keep it from that:
//! - on every boot, a clock behind the card's stamp time is moved forward to
//!   it (`date -s`): the card was stamped after its cluster CA was made;
//! - before kubeadm runs, a clock still behind the CA's notBefore (a
//!   workstation whose own clock was behind) is waited on, for time sync,
//!   and `status.json` says what the agent waits for, with both times.

use anyhow::Context;
use piha_runner::Cmd;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::steps::Env;

/// Unix seconds now; tests give their own.
pub trait Clock: Send + Sync {
    fn now(&self) -> u64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        crate::report::now()
    }
}

/// Unix seconds as RFC 3339 UTC, for people.
pub fn rfc3339(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("Unix {unix}"))
}

/// Moves a clock that reads earlier than `stamped_at` forward to it.
/// Returns whether it did.
pub fn at_least(env: &Env, stamped_at: u64) -> anyhow::Result<bool> {
    let now = env.clock.now();
    if now >= stamped_at {
        return Ok(false);
    }
    log::warn!(
        "the clock reads {}, before this card was stamped ({}): moving it forward to the stamp time",
        rfc3339(now),
        rfc3339(stamped_at)
    );
    env.runner
        .run(&Cmd::new("date").args(["-u", "-s", &format!("@{stamped_at}")]))
        .context("setting the clock forward to the card's stamp time")?;
    Ok(true)
}

/// Waits until the clock has passed `not_before` (the cluster CA's start),
/// without limit; `waiting` gets what the agent waits for each round, and
/// `None` once it waits no more.
pub fn wait_for(env: &Env, not_before: u64, waiting: &mut dyn FnMut(Option<String>)) {
    let mut n = 1;
    loop {
        let now = env.clock.now();
        if now >= not_before {
            if n > 1 {
                log::info!("the clock reads {}: the certificates are valid now", rfc3339(now));
                waiting(None);
            }
            return;
        }
        let what = format!(
            "time sync: the clock reads {}, but the cluster's certificates are valid only from {}; kubeadm waits until then \
             (fix: give the node a reachable `ntp:` server in the cluster file, or set the clock)",
            rfc3339(now),
            rfc3339(not_before)
        );
        if n == 1 {
            log::warn!("waiting for {what}");
        }
        waiting(Some(what));
        env.sleeper.sleep(env.timings.clock.pause(n));
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::{rfc3339, wait_for};
    use crate::agent::Ending;
    use crate::testing::{STAMPED_AT, Scratch};

    #[test]
    fn times_read_as_rfc3339() {
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    /// A Pi whose clock starts in 2020 and has no NTP: moved to the stamp
    /// time before anything else, and kubeadm runs.
    #[test]
    fn a_clock_in_the_past_is_moved_to_the_stamp_time_on_every_boot() {
        const JAN_2020: u64 = 1_577_836_800;
        let s = Scratch::new("w1");
        // The boot reads 2020; after `date -s` the clock reads the stamp time on.
        s.clock.readings.lock().unwrap().push_back(JAN_2020);
        assert_eq!(s.run(), Ending::Done);
        let set = s.position(&format!("date -u -s @{STAMPED_AT}")).expect("the clock was set");
        assert!(set < s.position("kubeadm join").expect("joined"), "{:#?}", s.commands());
        s.clear_commands();
        s.clock.readings.lock().unwrap().push_back(JAN_2020);
        assert_eq!(s.run(), Ending::Done);
        assert!(s.position("date -u -s").is_some(), "every boot: {:#?}", s.commands());
    }

    /// A CA that starts after the clock (a workstation clock behind): the
    /// agent waits, saying for what, with both times, then goes on.
    #[test]
    fn kubeadm_waits_for_a_clock_behind_the_certificates() {
        let s = Scratch::new("w1");
        let not_before = STAMPED_AT + 600;
        let mut said = Vec::new();
        wait_for(&s.env(), not_before, &mut |w| said.push(w));
        let first = said.first().cloned().flatten().expect("it waited");
        assert!(first.starts_with("time sync: the clock reads 2023-11-14T22:15:20Z"), "{first}");
        assert!(
            first.contains("valid only from 2023-11-14T22:23:20Z") && first.contains("ntp:"),
            "{first}"
        );
        assert_eq!(said.last(), Some(&None), "the wait is over: {said:?}");
        assert!(said.len() > 5, "{said:?}");
    }
}
