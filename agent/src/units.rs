//! The systemctl commands the agent runs to switch units on, in one place.
//!
//! `enable` and `mask` take `--no-reload`: by default systemctl follows each
//! with a daemon-reload, which re-runs every generator and re-reads every unit.
//! On a first boot that cost 20–100 s per call on a loaded TCG VM (six calls
//! on a control plane), and a Pi's SD card is no faster. The agent writes no
//! unit files, only the configuration units read, so systemd's loaded view
//! never needs reloading: the links it adds are read at the next boot, and
//! `--now` starts the unit from the file already on disk.
//! (The option follows the unit so that logged commands read as usual.)

use piha_runner::Cmd;

/// `systemctl enable UNIT`: started at every later boot.
pub fn enable(unit: &str) -> Cmd {
    Cmd::new("systemctl").args(["enable", unit, "--no-reload"])
}

/// `systemctl enable --now UNIT`: started now and at every later boot.
pub fn enable_now(unit: &str) -> Cmd {
    Cmd::new("systemctl").args(["enable", "--now", unit, "--no-reload"])
}

/// `systemctl mask UNIT`: never started, by anything.
pub fn mask(unit: &str) -> Cmd {
    Cmd::new("systemctl").args(["mask", unit, "--no-reload"])
}

/// `systemctl restart UNIT`.
pub fn restart(unit: &str) -> Cmd {
    Cmd::new("systemctl").args(["restart", unit])
}

/// `systemctl reload-or-restart UNIT`: a running keepalived re-reads its
/// configuration on reload (SIGHUP) and keeps its VRRP state, so a new real
/// server enters the pool without the VIP moving.
pub fn reload_or_restart(unit: &str) -> Cmd {
    Cmd::new("systemctl").args(["reload-or-restart", unit])
}
