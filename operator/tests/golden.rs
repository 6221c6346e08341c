//! Golden YAML for the objects a waypoint Gateway becomes: each case's Gateway (and
//! overlays) in `golden/<case>.input.yaml`, the built objects in
//! `golden/<case>.yaml`. `UPDATE_GOLDEN=1 cargo test -p waypoint-operator --test
//! golden` rewrites the expectations; review the diff like code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;

use gateway_api::apis::standard::gateways::Gateway;
use serde::Deserialize;
use waypoint_operator::builders::{Dataplane, build};
use waypoint_operator::overlay;

#[derive(Deserialize)]
struct Input {
    gateway: Gateway,
    #[serde(default)]
    overlays: BTreeMap<String, String>,
}

fn render(case: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let input: Input = serde_yaml::from_str(
        &std::fs::read_to_string(dir.join(format!("{case}.input.yaml"))).unwrap(),
    )
    .unwrap();
    let overlays = overlay::parse(&input.overlays).unwrap();
    let c = build(
        &input.gateway,
        &Dataplane {
            image: "waypoint.local/waypoint-dataplane:dev".to_owned(),
            ca_address: "https://waypoint-ca.waypoint-system.svc:15012".to_owned(),
            config_url: "https://waypoint-config.waypoint-system.svc:15012".to_owned(),
            trust_domain: "cluster.local".to_owned(),
        },
        &waypoint_config::Config::default(),
        &overlays,
    )
    .unwrap();
    let mut docs = vec![
        serde_yaml::to_string(&c.service_account).unwrap(),
        serde_yaml::to_string(&c.config_map).unwrap(),
        serde_yaml::to_string(&c.deployment).unwrap(),
        serde_yaml::to_string(&c.service).unwrap(),
    ];
    docs.extend(
        c.horizontal_pod_autoscaler
            .map(|h| serde_yaml::to_string(&h).unwrap()),
    );
    docs.extend(
        c.pod_disruption_budget
            .map(|p| serde_yaml::to_string(&p).unwrap()),
    );
    docs.join("---\n")
}

fn golden(case: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/{case}.yaml"));
    let got = render(case);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert!(
        got == want,
        "{case}: built objects differ from {}:\n--- got\n{got}",
        path.display()
    );
}

#[test]
fn seed_waypoint() {
    golden("seed");
}

#[test]
fn infrastructure_labels_and_annotations() {
    golden("infrastructure");
}

#[test]
fn overlays_with_hpa_and_pdb() {
    golden("overlays");
}
