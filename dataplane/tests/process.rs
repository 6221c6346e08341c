//! The binary as a pod runs it: SIGTERM makes it drain and exit 0 (a container's
//! PID 1 that ignored SIGTERM would be killed only at the end of its grace period).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn sigterm_drains_and_exits_zero() {
    let dir = std::env::temp_dir().join(format!("waypoint-process-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        "listeners: [{name: plain, address: \"127.0.0.1:0\", routes: []}]\nclusters: []\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_waypoint-dataplane"))
        .args(["--config", config.to_str().unwrap(), "--drain-seconds", "1"])
        .args([
            "--admin-address",
            "127.0.0.1:0",
            "--metrics-address",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // Wait until it serves, then send SIGTERM.
    for line in lines.by_ref() {
        if line.unwrap().contains("serving") {
            break;
        }
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status}: {rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("SIGTERM: draining")),
        "{rest:?}"
    );
    assert!(
        rest.iter()
            .any(|l| l.contains("drained; exiting") && l.contains("in_flight_left=0")),
        "{rest:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
