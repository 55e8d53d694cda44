//! `egress-monitor top` in a real terminal (tmux, on a server of the
//! test's own), against a daemon with known traffic: the figures on the
//! screen are the daemon's, the keys filter and quit, a terminal too small
//! gets a clear message, and without a terminal it refuses.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use integration_tests::*;

const WAIT: Duration = Duration::from_secs(15);

/// A tmux session on a server of its own, killed when dropped.
struct Tmux {
    server: String,
}

impl Tmux {
    fn tmux(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.server]);
        c
    }

    /// Runs `cmd` in a detached session of `width` x `height`.
    fn start(name: &str, width: u16, height: u16, cmd: &str) -> Self {
        let t = Tmux {
            server: format!("egress-top-{name}-{}", std::process::id()),
        };
        let ok = t
            .tmux()
            .args(["new-session", "-d", "-s", "top", "-x"])
            .arg(width.to_string())
            .arg("-y")
            .arg(height.to_string())
            .arg(cmd)
            .status()
            .expect("run tmux");
        assert!(ok.success(), "tmux new-session");
        t
    }

    fn screen(&self) -> String {
        let out = self
            .tmux()
            .args(["capture-pane", "-p", "-t", "top"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        let ok = self
            .tmux()
            .args(["send-keys", "-t", "top", keys])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    fn alive(&self) -> bool {
        self.tmux()
            .args(["has-session", "-t", "top"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The screen once `pred` holds (bounded); panics with the last one.
    fn wait(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "top never showed {what}; the screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_gone(&self) {
        let deadline = Instant::now() + WAIT;
        while self.alive() {
            assert!(
                Instant::now() < deadline,
                "top did not quit; the screen:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux().arg("kill-server").status();
    }
}

/// The words after `start` on the screen line that holds it.
fn after<'a>(screen: &'a str, start: &str) -> Vec<&'a str> {
    let line = screen
        .lines()
        .find(|l| l.contains(start))
        .unwrap_or_else(|| panic!("no line with {start}:\n{screen}"));
    let rest = &line[line.find(start).unwrap() + start.len()..];
    rest.split_whitespace().collect()
}

/// Three denied connects to the US and two allowed datagrams to DE (each
/// a first contact and its repeats): top's lists and counts are those the
/// daemon holds; `v` narrows to denials (the DE row goes), `q` quits.
#[test]
fn top_shows_the_daemons_figures_and_its_keys_filter_and_quit() {
    let env = TestEnv::started("enforce", "DE", &[]);
    env.denied_then_allowed("sel", 3, 2);
    let is = |ip: &'static str| move |f: &serde_json::Value| s(f, "dst_ip") == ip;
    env.wait_flow_count("3 connects to the US", 3, WAIT, is(US_V4));
    env.wait_flow_count("2 datagrams to DE", 2, WAIT, is(DE_V4));
    let sel = env.rel("sel");
    let cmd = format!(
        "{} top --interval 0.5 --socket {}",
        daemon_bin().display(),
        env.socket().display()
    );
    let t = Tmux::start("figures", 160, 45, &cmd);
    // The lists come with the first reading, the latest refusals with the
    // stream's history, each when it arrives: wait for both.
    let denial = format!("{US_V4}:{PORT} US eu-only");
    let screen = t.wait("both destinations, the workload and the denial", |s| {
        s.contains(US_V4)
            && s.contains(DE_V4)
            && s.contains(&sel)
            && s.lines()
                .any(|l| l.contains(" denied ") && l.contains(&denial))
    });
    eprintln!("{screen}");
    // DESTINATION, PLACE, ATTEMPTS, /S; then the workloads' columns.
    assert_eq!(after(&screen, US_V4)[..2], ["US", "3"], "{screen}");
    assert_eq!(after(&screen, DE_V4)[..2], ["DE", "2"], "{screen}");
    assert_eq!(after(&screen, &sel)[..1], ["5"], "{screen}");
    let c = &env.status()["counters"];
    let since = format!(
        "since start  allowed {}  denied {}  would_deny {}  drift alerts {}",
        c["allowed"], c["denied"], c["would_deny"], c["drift_alerts"]
    );
    // Each probe is a process of its own: each first attempt is an event.
    assert_eq!(
        (c["allowed"].as_u64(), c["denied"].as_u64()),
        (Some(2), Some(3))
    );
    assert!(screen.contains(&since), "{since}\n{screen}");

    t.keys("v");
    let screen = t.wait("the denials only", |s| {
        s.contains("verdict denied") && s.contains(US_V4) && !s.contains(DE_V4)
    });
    eprintln!("{screen}");
    assert_eq!(after(&screen, &sel)[..1], ["3"], "{screen}");
    t.keys("q");
    t.wait_gone();
}

/// A terminal smaller than the screen needs gets a message, not a broken
/// screen; without a terminal top refuses and says what to use instead.
#[test]
fn a_small_terminal_and_no_terminal_are_told() {
    let env = TestEnv::started("enforce", "DE", &[]);
    let cmd = format!(
        "{} top --socket {}",
        daemon_bin().display(),
        env.socket().display()
    );
    let t = Tmux::start("small", 60, 15, &cmd);
    t.wait("that it is too small", |s| {
        s.contains("terminal too small: 60x15") && s.contains("80x20 (q quits)")
    });
    t.keys("q");
    t.wait_gone();
    let out = env.cli(&["top"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("top draws on a terminal and stdout is not one"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
