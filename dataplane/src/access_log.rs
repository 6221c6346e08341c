//! One access-log line per request, in Istio's default text format (Envoy's format
//! with Istio's additions; `shared/reference/traffic-policy.md` §5.2). A missing value
//! prints `-`, as Envoy does.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::text::{push_padded, push_u64};

/// Envoy's response flags (`%RESPONSE_FLAGS%`), a set printed as Envoy 1.40 prints
/// it: comma-separated in the order the flags were raised, `-` when empty. The fault
/// filter's `DI` then `FI` come before anything the router raises (`DI,FI` from
/// Envoy itself); the router's print last `CoreResponseFlag` first (`URX,UF`,
/// `UO,UF`, as the differential test sees).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags(u32);

/// Envoy's `CoreResponseFlag` names, in its enum order (the bit is the position).
const FLAG_NAMES: [&str; 17] = [
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC",
    "URX", "SI",
];

impl Flags {
    pub const NONE: Self = Self(0);
    pub const UH: Self = Self(1 << 1);
    pub const UT: Self = Self(1 << 2);
    pub const UR: Self = Self(1 << 4);
    pub const UF: Self = Self(1 << 5);
    pub const UC: Self = Self(1 << 6);
    pub const UO: Self = Self(1 << 7);
    pub const NR: Self = Self(1 << 8);
    pub const DI: Self = Self(1 << 9);
    pub const FI: Self = Self(1 << 10);
    pub const DC: Self = Self(1 << 14);
    pub const URX: Self = Self(1 << 15);
    /// `NC` (no cluster found) is far down Envoy's enum; its own bit here.
    pub const NC: Self = Self(1 << 31);

    #[must_use]
    pub const fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    #[must_use]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::fmt::Display for Flags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let mut names = Vec::new();
        for (flag, name) in [(Self::DI, "DI"), (Self::FI, "FI"), (Self::NC, "NC")] {
            if self.0 & flag.0 != 0 {
                names.push(name);
            }
        }
        let raised_first = Self::DI.with(Self::FI);
        for (bit, name) in FLAG_NAMES.iter().enumerate().rev() {
            if self.0 & (1 << bit) & !raised_first.0 != 0 {
                names.push(name);
            }
        }
        f.write_str(&names.join(","))
    }
}

#[derive(Clone, Debug, Default)]
pub struct Entry {
    pub start_time: Option<SystemTime>,
    pub method: String,
    pub path: String,
    pub protocol: &'static str,
    /// 0 when no response started.
    pub response_code: u16,
    pub response_flags: Flags,
    pub response_code_details: std::borrow::Cow<'static, str>,
    /// Envoy's `%UPSTREAM_TRANSPORT_FAILURE_REASON%`, e.g.
    /// `delayed_connect_error:_Connection_refused`.
    pub upstream_transport_failure_reason: Option<String>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration_ms: u128,
    pub upstream_service_time_ms: Option<u128>,
    pub x_forwarded_for: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub authority: Option<String>,
    pub upstream_host: Option<String>,
    pub upstream_cluster: Option<String>,
    pub upstream_local_address: Option<String>,
    pub downstream_local_address: Option<String>,
    pub downstream_remote_address: Option<String>,
    pub route_name: Option<String>,
    /// The TLS server name (SNI) of an `HTTPS` listener's connection.
    pub requested_server_name: Option<String>,
}

fn or_dash(v: Option<&str>) -> &str {
    v.filter(|s| !s.is_empty()).unwrap_or("-")
}

/// Istio's `accessLogEncoding`: TEXT (the default) or JSON.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
}

impl Entry {
    /// The line in `format`, without the trailing newline.
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Text => self.to_istio_text(),
            Format::Json => self.to_istio_json(),
        }
    }

    /// Istio's `EnvoyJSONLogFormatIstio`: the text format's operators under their
    /// keys; a value Envoy cannot give is `null`, numbers are numbers.
    pub fn to_istio_json(&self) -> String {
        let text = |v: Option<&str>| v.filter(|s| !s.is_empty()).map(str::to_owned);
        serde_json::json!({
            "start_time": self.start_time.map(rfc3339_millis),
            "route_name": text(self.route_name.as_deref()),
            "method": text(Some(&self.method)),
            "path": text(Some(&self.path)),
            "protocol": text(Some(self.protocol)),
            "response_code": self.response_code,
            "response_flags": (!self.response_flags.is_empty()).then(|| self.response_flags.to_string()),
            "response_code_details": text(Some(&self.response_code_details)),
            "connection_termination_details": serde_json::Value::Null,
            "bytes_received": self.bytes_received,
            "bytes_sent": self.bytes_sent,
            "duration": u64::try_from(self.duration_ms).unwrap_or(u64::MAX),
            "upstream_service_time": self.upstream_service_time_ms.map(|ms| u64::try_from(ms).unwrap_or(u64::MAX)),
            "x_forwarded_for": text(self.x_forwarded_for.as_deref()),
            "user_agent": text(self.user_agent.as_deref()),
            "request_id": text(self.request_id.as_deref()),
            "authority": text(self.authority.as_deref()),
            "upstream_host": text(self.upstream_host.as_deref()),
            "upstream_cluster": text(self.upstream_cluster.as_deref()),
            "upstream_local_address": text(self.upstream_local_address.as_deref()),
            "downstream_local_address": text(self.downstream_local_address.as_deref()),
            "downstream_remote_address": text(self.downstream_remote_address.as_deref()),
            "requested_server_name": text(self.requested_server_name.as_deref()),
            "upstream_transport_failure_reason": text(self.upstream_transport_failure_reason.as_deref()),
        })
        .to_string()
    }

    /// Istio's `EnvoyTextLogFormat`, without the trailing newline.
    pub fn to_istio_text(&self) -> String {
        let mut line = String::with_capacity(320);
        let field = |line: &mut String, v: Option<&str>| line.push_str(or_dash(v));
        let quoted = |line: &mut String, v: Option<&str>| {
            line.push('"');
            line.push_str(or_dash(v));
            line.push('"');
        };
        line.push('[');
        match self.start_time {
            Some(t) => push_rfc3339_millis(&mut line, t),
            None => line.push('-'),
        }
        line.push_str("] \"");
        line.push_str(&self.method);
        line.push(' ');
        line.push_str(&self.path);
        line.push(' ');
        line.push_str(self.protocol);
        line.push_str("\" ");
        push_u64(&mut line, u64::from(self.response_code));
        line.push(' ');
        if self.response_flags.is_empty() {
            line.push('-');
        } else {
            // Writing to a String cannot fail.
            let _ = write!(line, "{}", self.response_flags);
        }
        line.push(' ');
        field(&mut line, Some(&self.response_code_details));
        line.push_str(" - ");
        quoted(&mut line, self.upstream_transport_failure_reason.as_deref());
        for n in [
            self.bytes_received,
            self.bytes_sent,
            saturating(self.duration_ms),
        ] {
            line.push(' ');
            push_u64(&mut line, n);
        }
        line.push(' ');
        match self.upstream_service_time_ms {
            Some(ms) => push_u64(&mut line, saturating(ms)),
            None => line.push('-'),
        }
        for v in [
            self.x_forwarded_for.as_deref(),
            self.user_agent.as_deref(),
            self.request_id.as_deref(),
            self.authority.as_deref(),
            self.upstream_host.as_deref(),
        ] {
            line.push(' ');
            quoted(&mut line, v);
        }
        for v in [
            self.upstream_cluster.as_deref(),
            self.upstream_local_address.as_deref(),
            self.downstream_local_address.as_deref(),
            self.downstream_remote_address.as_deref(),
            self.requested_server_name.as_deref(),
            self.route_name.as_deref(),
        ] {
            line.push(' ');
            field(&mut line, v);
        }
        line
    }
}

fn saturating(ms: u128) -> u64 {
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// `2025-03-06T17:15:23.456Z`: UTC with milliseconds, as Envoy's `%START_TIME%`.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let mut out = String::with_capacity(24);
    push_rfc3339_millis(&mut out, t);
    out
}

fn push_rfc3339_millis(out: &mut String, t: SystemTime) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    push_padded(out, u64::try_from(y).unwrap_or(0), 4);
    for (sep, n) in [('-', u64::from(m)), ('-', u64::from(d)), ('T', rem / 3600)] {
        out.push(sep);
        push_padded(out, n, 2);
    }
    for (sep, n) in [(':', (rem % 3600) / 60), (':', rem % 60)] {
        out.push(sep);
        push_padded(out, n, 2);
    }
    out.push('.');
    push_padded(out, u64::from(since.subsec_millis()), 3);
    out.push('Z');
}

/// Howard Hinnant's days-to-civil conversion (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn json_has_istios_keys_numbers_and_nulls() {
        let e = Entry {
            start_time: Some(UNIX_EPOCH + Duration::from_millis(1_741_281_323_456)),
            method: "GET".into(),
            path: "/hostname".into(),
            protocol: "HTTP/1.1",
            response_code: 503,
            response_flags: Flags::UH,
            response_code_details: "no_healthy_upstream".into(),
            bytes_sent: 19,
            duration_ms: 1,
            ..Entry::default()
        };
        let v: serde_json::Value = serde_json::from_str(&e.render(Format::Json)).unwrap();
        assert_eq!(v["start_time"], "2025-03-06T17:15:23.456Z");
        assert_eq!(v["response_code"], 503);
        assert_eq!(v["response_flags"], "UH");
        assert_eq!(v["bytes_sent"], 19);
        assert!(v["upstream_host"].is_null() && v["upstream_service_time"].is_null());
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 24, "{keys:?}");
        assert_eq!(e.render(Format::Text), e.to_istio_text());
    }

    #[test]
    fn formats_like_the_reference_sample() {
        let e = Entry {
            start_time: Some(UNIX_EPOCH + Duration::from_millis(1_741_281_323_456)),
            method: "GET".into(),
            path: "/hostname".into(),
            protocol: "HTTP/1.1",
            response_code: 200,
            response_code_details: "via_upstream".into(),
            bytes_received: 0,
            bytes_sent: 32,
            duration_ms: 5,
            upstream_service_time_ms: Some(4),
            user_agent: Some("curl/7.88.1".into()),
            request_id: Some("abc123".into()),
            authority: Some("in-ambient.httpbin.svc.cluster.local:8000".into()),
            upstream_host: Some("10.10.0.15:8080".into()),
            upstream_cluster: Some(
                "inbound-vip|8000|http|in-ambient.httpbin.svc.cluster.local".into(),
            ),
            downstream_local_address: Some("10.96.132.123:8000".into()),
            downstream_remote_address: Some("10.10.0.20:52341".into()),
            route_name: Some("default".into()),
            ..Entry::default()
        };
        assert_eq!(
            e.to_istio_text(),
            "[2025-03-06T17:15:23.456Z] \"GET /hostname HTTP/1.1\" 200 - via_upstream - \"-\" 0 32 5 4 \"-\" \
             \"curl/7.88.1\" \"abc123\" \"in-ambient.httpbin.svc.cluster.local:8000\" \"10.10.0.15:8080\" \
             inbound-vip|8000|http|in-ambient.httpbin.svc.cluster.local - 10.96.132.123:8000 10.10.0.20:52341 - default"
        );
    }

    #[test]
    fn flags_print_in_envoys_order() {
        for (flags, printed) in [
            (Flags::NONE, "-"),
            (Flags::URX.with(Flags::UF), "URX,UF"),
            (Flags::UO.with(Flags::UF), "UO,UF"),
            // Envoy 1.40 itself, delay then abort.
            (Flags::FI.with(Flags::DI), "DI,FI"),
            (Flags::DI.with(Flags::URX).with(Flags::UF), "DI,URX,UF"),
            (Flags::DI.with(Flags::DC), "DI,DC"),
        ] {
            assert_eq!(flags.to_string(), printed);
        }
    }

    #[test]
    fn missing_values_print_a_dash() {
        let e = Entry {
            method: "GET".into(),
            path: "/".into(),
            protocol: "HTTP/1.1",
            response_code: 503,
            response_flags: Flags::UH,
            response_code_details: "no_healthy_upstream".into(),
            ..Entry::default()
        };
        assert_eq!(
            e.to_istio_text(),
            "[-] \"GET / HTTP/1.1\" 503 UH no_healthy_upstream - \"-\" 0 0 0 - \"-\" \"-\" \"-\" \"-\" \"-\" - - - - - -"
        );
    }

    #[test]
    #[allow(clippy::duration_suboptimal_units)] // epoch seconds read best as seconds
    fn civil_dates() {
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339_millis(UNIX_EPOCH + Duration::from_secs(4_102_444_799)),
            "2099-12-31T23:59:59.000Z"
        );
    }
}
