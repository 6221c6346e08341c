//! The CA signs only what the caller proved, and the resulting credentials make a
//! real TLS 1.3 mutual handshake (in memory, rustls on both sides).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ServerConnection};
use time::OffsetDateTime;
use waypoint_identity::Identity;
use waypoint_identity::ca::{Ca, Error};
use waypoint_identity::tls::{PeerCheck, client_config, peer_identity, server_config};
use waypoint_identity::workload::{Credentials, Request};

const DAY: Duration = Duration::from_hours(24);

fn ca() -> Ca {
    Ca::generate("cluster.local", OffsetDateTime::now_utc(), 10 * 365 * DAY).unwrap()
}

fn issue(ca: &Ca, id: &Identity) -> Credentials {
    let req = Request::new(id).unwrap();
    let cert = ca
        .sign(req.csr_pem(), id, OffsetDateTime::now_utc(), DAY)
        .unwrap();
    req.complete(&[cert], &[ca.cert_pem().to_owned()]).unwrap()
}

#[test]
fn signs_exactly_the_authenticated_identity() {
    let ca = ca();
    let id = Identity::new("cluster.local", "httpbin", "httpbin-waypoint");
    let creds = issue(&ca, &id);
    assert_eq!(creds.identity, id);
    let life = creds.not_after.duration_since(creds.not_before).unwrap();
    // Backdated one minute for clock skew.
    assert_eq!(life, DAY + Duration::from_mins(1));
    assert_eq!(creds.renew_at(), creds.not_before + life / 2);
}

#[test]
fn refuses_a_csr_for_another_identity() {
    let ca = ca();
    let asked = Identity::new("cluster.local", "default", "admin");
    let proved = Identity::new("cluster.local", "httpbin", "client");
    let req = Request::new(&asked).unwrap();
    let err = ca
        .sign(req.csr_pem(), &proved, OffsetDateTime::now_utc(), DAY)
        .unwrap_err();
    assert!(matches!(err, Error::IdentityMismatch { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "the CSR asks for [\"spiffe://cluster.local/ns/default/sa/admin\"], but the caller \
         authenticated as spiffe://cluster.local/ns/httpbin/sa/client; a workload may only \
         request its own identity"
    );
}

#[test]
fn refuses_extra_names_garbage_and_foreign_trust_domains() {
    let ca = ca();
    let id = Identity::new("cluster.local", "a", "b");
    // A CSR with the right URI plus a DNS name.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
    params
        .subject_alt_names
        .push(rcgen::SanType::URI(id.to_string().try_into().unwrap()));
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    assert!(matches!(
        ca.sign(&csr, &id, OffsetDateTime::now_utc(), DAY),
        Err(Error::IdentityMismatch { .. })
    ));
    assert!(matches!(
        ca.sign("not a csr", &id, OffsetDateTime::now_utc(), DAY),
        Err(Error::Csr(_))
    ));
    let foreign = Identity::new("other.domain", "a", "b");
    let req = Request::new(&foreign).unwrap();
    assert!(matches!(
        ca.sign(req.csr_pem(), &foreign, OffsetDateTime::now_utc(), DAY),
        Err(Error::TrustDomain { .. })
    ));
}

#[test]
fn a_stored_root_keeps_signing() {
    let first = ca();
    let again = Ca::from_pem("cluster.local", first.cert_pem(), &first.key_pem()).unwrap();
    let id = Identity::new("cluster.local", "ns", "sa");
    let req = Request::new(&id).unwrap();
    let cert = again
        .sign(req.csr_pem(), &id, OffsetDateTime::now_utc(), DAY)
        .unwrap();
    // Verifies against the first root: same key, same subject.
    let creds = req
        .complete(&[cert], &[first.cert_pem().to_owned()])
        .unwrap();
    let server = issue(&first, &Identity::new("cluster.local", "ns", "waypoint"));
    handshake(
        &creds,
        &server,
        PeerCheck::TrustDomain("cluster.local".into()),
    )
    .unwrap();
}

/// Drives both sides of a handshake in memory; returns what each side saw of the other.
fn handshake(
    client: &Credentials,
    server: &Credentials,
    check: PeerCheck,
) -> Result<(Identity, Vec<u8>), String> {
    let mut c = ClientConnection::new(
        Arc::new(client_config(client, check).unwrap()),
        ServerName::try_from("waypoint").unwrap(),
    )
    .unwrap();
    let mut s = ServerConnection::new(Arc::new(server_config(server).unwrap())).unwrap();
    for _ in 0..10 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        s.read_tls(&mut buf.as_slice()).map_err(|e| e.to_string())?;
        s.process_new_packets()
            .map_err(|e| format!("server: {e}"))?;
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        c.read_tls(&mut buf.as_slice()).map_err(|e| e.to_string())?;
        c.process_new_packets()
            .map_err(|e| format!("client: {e}"))?;
        if !c.is_handshaking() && !s.is_handshaking() {
            assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
            let peer = peer_identity(s.peer_certificates().unwrap()).unwrap();
            return Ok((peer, s.alpn_protocol().unwrap_or_default().to_vec()));
        }
    }
    Err("handshake did not finish".into())
}

#[test]
fn mutual_tls_13_with_h2_and_the_client_identity() {
    let ca = ca();
    let waypoint = issue(
        &ca,
        &Identity::new("cluster.local", "httpbin", "httpbin-waypoint"),
    );
    let client = issue(&ca, &Identity::new("cluster.local", "httpbin", "client"));
    let (peer, alpn) = handshake(
        &client,
        &waypoint,
        PeerCheck::Identities(vec![waypoint.identity.clone()]),
    )
    .unwrap();
    assert_eq!(peer, client.identity);
    assert_eq!(alpn, b"h2");
}

#[test]
fn the_client_refuses_an_unexpected_server_identity() {
    let ca = ca();
    let waypoint = issue(
        &ca,
        &Identity::new("cluster.local", "httpbin", "httpbin-waypoint"),
    );
    let client = issue(&ca, &Identity::new("cluster.local", "httpbin", "client"));
    let err = handshake(
        &client,
        &waypoint,
        PeerCheck::Identities(vec![Identity::new("cluster.local", "httpbin", "other")]),
    )
    .unwrap_err();
    assert!(err.contains("server identity spiffe://cluster.local/ns/httpbin/sa/httpbin-waypoint is not the expected"), "{err}");
}

#[test]
fn each_side_refuses_a_chain_from_another_root() {
    let ours = ca();
    let theirs = ca();
    let waypoint = issue(&ours, &Identity::new("cluster.local", "ns", "waypoint"));
    let stranger = issue(&theirs, &Identity::new("cluster.local", "ns", "client"));
    // The client trusts only `theirs`: the server's chain does not verify.
    let err = handshake(
        &stranger,
        &waypoint,
        PeerCheck::TrustDomain("cluster.local".into()),
    )
    .unwrap_err();
    // Both roots share a subject, so webpki finds the issuer and rejects the signature.
    assert!(err.starts_with("client: invalid peer certificate"), "{err}");
    // A client trusting our root but holding a stranger's certificate.
    let mut mixed = stranger.clone();
    mixed.roots = waypoint.roots.clone();
    let err = handshake(
        &mixed,
        &waypoint,
        PeerCheck::TrustDomain("cluster.local".into()),
    )
    .unwrap_err();
    assert!(err.starts_with("server:"), "{err}");
}
