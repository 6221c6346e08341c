//! The binary as a pod runs it: SIGTERM makes it drain and exit 0 (a container's
//! PID 1 that ignored SIGTERM would be killed only at the end of its grace period).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// One worker runs on a current-thread runtime (`main.rs`), more on the multi-thread
/// one; both must drain.
#[test]
fn sigterm_drains_and_exits_zero_on_one_worker() {
    sigterm_drains_and_exits_zero("1");
}

#[test]
fn sigterm_drains_and_exits_zero_on_two_workers() {
    sigterm_drains_and_exits_zero("2");
}

fn sigterm_drains_and_exits_zero(workers: &str) {
    let dir =
        std::env::temp_dir().join(format!("waypoint-process-{}-{workers}", std::process::id()));
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
        .env("TOKIO_WORKER_THREADS", workers)
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The access log, line by line as the binary flushes it.
    let (tx, access_log) = std::sync::mpsc::channel();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let reader = std::thread::spawn(move || {
        for line in stdout.lines() {
            let _ = tx.send(line.unwrap());
        }
    });
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // Wait until it serves, then send SIGTERM.
    let mut started = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let serving = line.contains("serving");
        started.push(line);
        if serving {
            break;
        }
    }
    let flavor = if workers == "1" {
        "runtime=CurrentThread"
    } else {
        "runtime=MultiThread"
    };
    assert!(
        started.iter().any(|l| l.contains(flavor)),
        "{flavor}: {started:?}"
    );
    let address = started
        .iter()
        .find_map(|l| l.split("address=Some(").nth(1)?.split(')').next())
        .unwrap()
        .to_owned();
    // A line reaches stdout while the binary runs (the flush thread)...
    get(&address, "/first");
    let first = access_log
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    assert!(first.contains("\"GET /first HTTP/1.1\" 404"), "{first}");
    // ...and the lines of requests just before SIGTERM are written before it exits.
    get(&address, "/second");
    get(&address, "/third");
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let later: Vec<String> = access_log.try_iter().collect();
    assert!(
        later[0].contains("/second") && later[1].contains("/third"),
        "{later:?}"
    );
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

/// One request, answered and closed.
fn get(address: &str, path: &str) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: nowhere\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
}
