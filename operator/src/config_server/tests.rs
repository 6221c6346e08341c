#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

fn key() -> Key {
    ("httpbin".to_owned(), "httpbin-waypoint".to_owned())
}

fn poll(have: Option<&str>, rejected: Option<&str>, pod: &str) -> Poll {
    Poll {
        have: have.map(str::to_owned),
        rejected: rejected.map(str::to_owned),
        pod: Some(pod.to_owned()),
    }
}

#[test]
fn a_replica_gets_the_config_unless_it_has_or_refused_it() {
    let (store, _woken) = Store::new();
    let (v1, fresh) = store.publish(&key(), "listeners: []\n".to_owned());
    assert!(fresh);
    assert_eq!(
        store.publish(&key(), "listeners: []\n".to_owned()),
        (v1.clone(), false),
        "the same text is the same version"
    );
    assert!(
        matches!(store.answer(&key(), &poll(None, None, "p")), Answer::Send { ref version, .. } if *version == v1)
    );
    assert!(matches!(
        store.answer(&key(), &poll(Some("0000"), None, "p")),
        Answer::Send { .. }
    ));
    assert_eq!(
        store.answer(&key(), &poll(Some(&v1), None, "p")),
        Answer::Wait
    );
    assert_eq!(
        store.answer(&key(), &poll(Some("0000"), Some(&v1), "p")),
        Answer::Wait,
        "a refused version is not sent again (no hot loop)"
    );
    let other = ("httpbin".to_owned(), "other".to_owned());
    assert_eq!(store.answer(&other, &poll(None, None, "p")), Answer::Wait);
}

#[test]
fn reports_wake_the_gateway_only_when_they_change() {
    let (store, mut woken) = Store::new();
    let (v1, _) = store.publish(&key(), "a: 1\n".to_owned());
    let t0 = Instant::now();
    store.report(&key(), &poll(Some("old"), None, "p1"), t0);
    assert_eq!(woken.try_recv().ok(), Some(key()), "a new replica");
    store.report(&key(), &poll(Some("old"), None, "p1"), t0);
    assert!(woken.try_recv().is_err(), "the same report again");
    store.report(&key(), &poll(Some(&v1), None, "p1"), t0);
    assert_eq!(woken.try_recv().ok(), Some(key()), "a new version");
    store.report(&key(), &Poll::default(), t0);
    assert!(woken.try_recv().is_err(), "no pod name: not recorded");
    // Once status has seen the replica on the current version, a second replica
    // arriving on it changes nothing status says: no reconcile.
    assert_eq!(store.applied(&key(), t0), Applied::Yes);
    store.report(&key(), &poll(Some(&v1), None, "p2"), t0);
    assert!(woken.try_recv().is_err(), "status would say the same");
    store.report(&key(), &poll(Some("old"), Some(&v1), "p1"), t0);
    assert!(woken.try_recv().is_err(), "p2 still runs it");
}

fn entry(
    version: &str,
    replicas: &[(&str, Option<&str>, Option<&str>, Duration)],
) -> (Entry, Instant) {
    let now = Instant::now() + Duration::from_hours(1);
    let replicas = replicas
        .iter()
        .map(|(pod, have, rejected, ago)| {
            (
                (*pod).to_owned(),
                Replica {
                    version: have.map(str::to_owned),
                    rejected: rejected.map(str::to_owned),
                    seen: now.checked_sub(*ago).unwrap(),
                    since: now.checked_sub(*ago).unwrap(),
                },
            )
        })
        .collect();
    (
        Entry {
            version: version.to_owned(),
            yaml: "".into(),
            published: now,
            replicas,
            observed: None,
        },
        now,
    )
}

#[test]
fn applied_needs_a_live_replica_on_the_current_version() {
    let s = Duration::from_secs;
    let (e, now) = entry(
        "v2",
        &[("a", Some("v1"), None, s(1)), ("b", Some("v2"), None, s(2))],
    );
    assert_eq!(decide_applied(&e, now, false), Applied::Yes);

    let (e, now) = entry(
        "v2",
        &[
            ("a", Some("v1"), None, s(1)),
            ("b", Some("v2"), None, s(300)),
        ],
    );
    assert!(
        matches!(decide_applied(&e, now, false), Applied::Pending(ref m) if m.contains("v2") && m.contains("1 pod")),
        "a replica gone quiet does not count"
    );

    let (e, now) = entry("v2", &[("a", Some("v1"), Some("v2"), s(1))]);
    assert!(
        matches!(decide_applied(&e, now, false), Applied::Rejected(ref m) if m.contains("pod a refused config version v2"))
    );

    let (e, now) = entry("v2", &[]);
    assert_eq!(
        decide_applied(&e, now, true),
        Applied::Unknown,
        "a new leader waits for reports"
    );
    assert!(matches!(
        decide_applied(&e, now, false),
        Applied::Pending(_)
    ));
}

#[tokio::test]
async fn wait_applied_returns_when_the_replica_reports() {
    let (store, _woken) = Store::new();
    let store = Arc::new(store);
    store.publish(&key(), "a: 1\n".to_owned());
    store.report(&key(), &poll(None, None, "p1"), Instant::now());
    let (v2, _) = store.publish(&key(), "a: 2\n".to_owned());
    let reporter = {
        let (store, v2) = (Arc::clone(&store), v2.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            store.report(&key(), &poll(Some(&v2), None, "p1"), Instant::now());
        })
    };
    assert!(
        store
            .wait_applied(&key(), &v2, Duration::from_mins(1))
            .await
    );
    assert_eq!(store.applied(&key(), Instant::now()), Applied::Yes);
    reporter.await.unwrap();

    // No live replica: nothing to wait for.
    let lonely = ("ns".to_owned(), "gw".to_owned());
    let (v, _) = store.publish(&lonely, "b: 1\n".to_owned());
    assert!(
        !store
            .wait_applied(&lonely, &v, Duration::from_mins(1))
            .await
    );
}
