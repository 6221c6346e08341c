//! The objects a waypoint Gateway becomes: ServiceAccount, Deployment, Service and
//! the dataplane's ConfigMap. Pure functions of the Gateway, applied server-side.

use std::collections::BTreeMap;

use gateway_api::apis::standard::gateways::Gateway;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ProjectedVolumeSource, ResourceRequirements, SecurityContext, Service, ServiceAccount,
    ServiceAccountTokenProjection, ServicePort, ServiceSpec, Sysctl, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use waypoint_identity::protocol::{TOKEN_AUDIENCE, env};

use crate::overlay::{self, OverlayError, Overlays};

use crate::names::{
    DATAPLANE_MODE_LABEL, GATEWAY_CLASS_LABEL, GATEWAY_NAME_LABEL, MANAGED_LABEL, MANAGED_VALUE,
    MESH_PORT, METRICS_PORT, STATUS_PORT, config_map_name,
};

/// What every generated waypoint pod runs and is told, beyond its Gateway.
#[derive(Clone, Debug)]
pub struct Dataplane {
    pub image: String,
    /// The mesh CA's URL (`https://waypoint-ca.<operator namespace>.svc:15012`).
    pub ca_address: String,
    /// The config server's URL (`https://waypoint-config.<operator namespace>.svc:15012`).
    pub config_url: String,
    pub trust_domain: String,
}

/// The dataplane's `--config-url` and `--pod-name`.
pub const CONFIG_URL_ENV: &str = "WAYPOINT_CONFIG_URL";
pub const POD_NAME_ENV: &str = "POD_NAME";

/// The CA token's lifetime; the kubelet renews it at 80%.
const CA_TOKEN_SECONDS: i64 = 3600;

#[derive(Clone, Debug)]
pub struct Children {
    pub service_account: ServiceAccount,
    pub config_map: ConfigMap,
    pub deployment: Deployment,
    pub service: Service,
    /// Only when a parametersRef overlay asks for one, as in Istio.
    pub horizontal_pod_autoscaler: Option<HorizontalPodAutoscaler>,
    pub pod_disruption_budget: Option<PodDisruptionBudget>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("the Gateway has no namespace")]
    NoNamespace,
    #[error("the Gateway has no uid yet")]
    NoUid,
    #[error(transparent)]
    Overlay(#[from] OverlayError),
}

/// Labels on every generated object: infrastructure labels first, ours on top.
fn labels(gw: &Gateway) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = gw
        .spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.labels.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("gateway.networking.k8s.io/"))
        .collect();
    labels.insert(GATEWAY_NAME_LABEL.to_owned(), gw.name_any());
    labels.insert(
        GATEWAY_CLASS_LABEL.to_owned(),
        gw.spec.gateway_class_name.clone(),
    );
    labels.insert(MANAGED_LABEL.to_owned(), MANAGED_VALUE.to_owned());
    labels
}

fn annotations(gw: &Gateway) -> Option<BTreeMap<String, String>> {
    gw.spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.annotations.clone())
        .filter(|a| !a.is_empty())
}

fn meta(gw: &Gateway, name: String, owner: &OwnerReference) -> Result<ObjectMeta, BuildError> {
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(gw.namespace().ok_or(BuildError::NoNamespace)?),
        labels: Some(labels(gw)),
        annotations: annotations(gw),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    })
}

/// The config's YAML for the ConfigMap. Serializing plain data cannot fail; if it
/// ever did, an empty document would fail the dataplane's validation loudly.
pub fn config_yaml(config: &waypoint_config::Config) -> String {
    serde_yaml::to_string(config).unwrap_or_default()
}

/// The config a pod starts from: all of it but the listeners' private keys, which
/// do not belong in a ConfigMap. The config server sends them over mutual TLS a
/// moment later; until then an HTTPS listener refuses handshakes.
pub fn bootstrap(config: &waypoint_config::Config) -> waypoint_config::Config {
    let mut config = config.clone();
    for tls in config.listeners.iter_mut().filter_map(|l| l.tls.as_mut()) {
        tls.certificates.clear();
    }
    config
}

/// `config` is what `compile` made of the Services bound to this waypoint;
/// `overlays` come from its parametersRef ConfigMap.
pub fn build(
    gw: &Gateway,
    dataplane: &Dataplane,
    config: &waypoint_config::Config,
    overlays: &Overlays,
) -> Result<Children, BuildError> {
    let base = base(gw, dataplane, config)?;
    let ours = labels(gw);
    let reassert = |meta: &mut ObjectMeta| {
        meta.labels.get_or_insert_default().extend(ours.clone());
    };
    let mut service_account = overlay::apply(
        &base.service_account,
        overlays.service_account.as_ref(),
        "serviceAccount",
        "ServiceAccount",
    )?;
    reassert(&mut service_account.metadata);
    let mut deployment = overlay::apply(
        &base.deployment,
        overlays.deployment.as_ref(),
        "deployment",
        "Deployment",
    )?;
    reassert(&mut deployment.metadata);
    let mut service = overlay::apply(
        &base.service,
        overlays.service.as_ref(),
        "service",
        "Service",
    )?;
    reassert(&mut service.metadata);
    let name = gw.name_any();
    let owner = gw.controller_owner_ref(&()).ok_or(BuildError::NoUid)?;
    let horizontal_pod_autoscaler = match overlays.horizontal_pod_autoscaler.as_ref() {
        None => None,
        Some(patch) => {
            let mut hpa = overlay::apply(
                &HorizontalPodAutoscaler {
                    metadata: meta(gw, name.clone(), &owner)?,
                    spec: HorizontalPodAutoscalerSpec {
                        scale_target_ref: CrossVersionObjectReference {
                            api_version: Some("apps/v1".to_owned()),
                            kind: "Deployment".to_owned(),
                            name: name.clone(),
                        },
                        max_replicas: 1,
                        ..HorizontalPodAutoscalerSpec::default()
                    },
                    status: None,
                },
                Some(patch),
                "horizontalPodAutoscaler",
                "HorizontalPodAutoscaler",
            )?;
            reassert(&mut hpa.metadata);
            Some(hpa)
        }
    };
    let pod_disruption_budget = match overlays.pod_disruption_budget.as_ref() {
        None => None,
        Some(patch) => {
            let mut pdb = overlay::apply(
                &PodDisruptionBudget {
                    metadata: meta(gw, name.clone(), &owner)?,
                    spec: Some(PodDisruptionBudgetSpec {
                        selector: Some(LabelSelector {
                            match_labels: Some(BTreeMap::from([(
                                GATEWAY_NAME_LABEL.to_owned(),
                                name,
                            )])),
                            ..LabelSelector::default()
                        }),
                        ..PodDisruptionBudgetSpec::default()
                    }),
                    status: None,
                },
                Some(patch),
                "podDisruptionBudget",
                "PodDisruptionBudget",
            )?;
            reassert(&mut pdb.metadata);
            Some(pdb)
        }
    };
    Ok(Children {
        service_account,
        config_map: base.config_map,
        deployment,
        service,
        horizontal_pod_autoscaler,
        pod_disruption_budget,
    })
}

/// The objects before overlays.
fn base(
    gw: &Gateway,
    dataplane: &Dataplane,
    config: &waypoint_config::Config,
) -> Result<Children, BuildError> {
    let name = gw.name_any();
    let owner = gw.controller_owner_ref(&()).ok_or(BuildError::NoUid)?;
    let selector = BTreeMap::from([(GATEWAY_NAME_LABEL.to_owned(), name.clone())]);
    Ok(Children {
        service_account: ServiceAccount {
            metadata: meta(gw, name.clone(), &owner)?,
            ..ServiceAccount::default()
        },
        config_map: ConfigMap {
            metadata: meta(gw, config_map_name(&name), &owner)?,
            data: Some(BTreeMap::from([(
                "config.yaml".to_owned(),
                config_yaml(&bootstrap(config)),
            )])),
            ..ConfigMap::default()
        },
        deployment: Deployment {
            metadata: meta(gw, name.clone(), &owner)?,
            spec: Some(deployment_spec(
                gw,
                &name,
                selector.clone(),
                dataplane,
                config,
            )),
            ..Deployment::default()
        },
        service: Service {
            metadata: meta(gw, name, &owner)?,
            spec: Some(service_spec(selector, config)),
            ..Service::default()
        },
        horizontal_pod_autoscaler: None,
        pod_disruption_budget: None,
    })
}

fn deployment_spec(
    gw: &Gateway,
    name: &str,
    selector: BTreeMap<String, String>,
    dataplane: &Dataplane,
    config: &waypoint_config::Config,
) -> DeploymentSpec {
    let ports = serving_ports(config);
    // Ingress listeners on 80 or 443, bound by a non-root process: a namespaced,
    // safe sysctl lets it (no capability needed).
    let security_context = ports
        .iter()
        .any(|p| p.port < 1024)
        .then(|| PodSecurityContext {
            sysctls: Some(vec![Sysctl {
                name: "net.ipv4.ip_unprivileged_port_start".to_owned(),
                value: "0".to_owned(),
            }]),
            ..PodSecurityContext::default()
        });
    let mut pod_labels = labels(gw);
    pod_labels.insert(DATAPLANE_MODE_LABEL.to_owned(), "none".to_owned());
    pod_labels.insert("sidecar.istio.io/inject".to_owned(), "false".to_owned());
    DeploymentSpec {
        selector: LabelSelector {
            match_labels: Some(selector),
            ..LabelSelector::default()
        },
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(pod_labels),
                // Infrastructure annotations reach the pods too (Gateway API's
                // GatewayInfrastructure); ours win a clash.
                annotations: Some(
                    annotations(gw)
                        .unwrap_or_default()
                        .into_iter()
                        .chain([
                            (
                                "prometheus.io/path".to_owned(),
                                "/stats/prometheus".to_owned(),
                            ),
                            ("prometheus.io/port".to_owned(), METRICS_PORT.to_string()),
                            ("prometheus.io/scrape".to_owned(), "true".to_owned()),
                        ])
                        .collect(),
                ),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                service_account_name: Some(name.to_owned()),
                containers: vec![container(dataplane, &ports)],
                security_context,
                volumes: Some(vec![
                    Volume {
                        name: "config".to_owned(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: config_map_name(name),
                            ..ConfigMapVolumeSource::default()
                        }),
                        ..Volume::default()
                    },
                    // A token only the CA accepts (not the API token), so a
                    // leaked CA request cannot be replayed against the API server.
                    Volume {
                        name: "waypoint-ca-token".to_owned(),
                        projected: Some(ProjectedVolumeSource {
                            sources: Some(vec![VolumeProjection {
                                service_account_token: Some(ServiceAccountTokenProjection {
                                    audience: Some(TOKEN_AUDIENCE.to_owned()),
                                    expiration_seconds: Some(CA_TOKEN_SECONDS),
                                    path: "token".to_owned(),
                                }),
                                ..VolumeProjection::default()
                            }]),
                            ..ProjectedVolumeSource::default()
                        }),
                        ..Volume::default()
                    },
                    Volume {
                        name: "waypoint-mesh-root".to_owned(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: crate::ca::roots::CONFIG_MAP.to_owned(),
                            ..ConfigMapVolumeSource::default()
                        }),
                        ..Volume::default()
                    },
                ]),
                ..PodSpec::default()
            }),
        },
        ..DeploymentSpec::default()
    }
}

/// A port the dataplane serves traffic on, from its config's listeners: a waypoint's
/// `mesh` (15008, HBONE), an ingress Gateway's `http-80`, `https-443`, ...
struct Serving {
    name: String,
    port: i32,
    app_protocol: &'static str,
}

fn serving_ports(config: &waypoint_config::Config) -> Vec<Serving> {
    let mut ports: Vec<Serving> = config
        .listeners
        .iter()
        .map(|l| Serving {
            name: l.name.clone(),
            port: i32::from(l.address.port()),
            app_protocol: match l.protocol {
                waypoint_config::ListenerProtocol::Hbone => "hbone",
                waypoint_config::ListenerProtocol::Http => "http",
                waypoint_config::ListenerProtocol::Https => "https",
            },
        })
        .collect();
    if ports.is_empty() {
        // A waypoint always listens on the mesh port, even with nothing bound yet.
        ports.push(Serving {
            name: "mesh".to_owned(),
            port: MESH_PORT,
            app_protocol: "hbone",
        });
    }
    ports
}

/// The dataplane container: Istio's ports, probes, resources and hardening, and
/// what it needs to get its mesh certificate.
fn container(dataplane: &Dataplane, serving: &[Serving]) -> Container {
    let probe = |period, failures| Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz/ready".to_owned()),
            port: IntOrString::Int(STATUS_PORT),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    let port = |name: &str, port| ContainerPort {
        name: Some(name.to_owned()),
        container_port: port,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    };
    let quantities = |cpu: &str, mem: &str| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(mem.to_owned())),
        ])
    };
    let value = |name: &str, value: &str| EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..EnvVar::default()
    };
    let field = |name: &str, path: &str| EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".to_owned()),
                field_path: path.to_owned(),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    Container {
        name: "waypoint".to_owned(),
        image: Some(dataplane.image.clone()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        args: Some(vec![
            "--config".to_owned(),
            "/etc/waypoint/config.yaml".to_owned(),
        ]),
        ports: Some(
            serving
                .iter()
                .map(|s| port(&s.name, s.port))
                .chain([
                    port("metrics", METRICS_PORT),
                    port("status-port", STATUS_PORT),
                ])
                .collect(),
        ),
        startup_probe: Some(probe(1, 30)),
        readiness_probe: Some(probe(15, 4)),
        resources: Some(ResourceRequirements {
            requests: Some(quantities("100m", "128Mi")),
            limits: Some(quantities("2", "1Gi")),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(1337),
            run_as_group: Some(1337),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        env: Some(vec![
            value(env::CA_ADDRESS, &dataplane.ca_address),
            value(env::CA_TOKEN_FILE, env::TOKEN_FILE),
            value(env::CA_ROOT_FILE, env::ROOT_FILE),
            value(env::TRUST_DOMAIN, &dataplane.trust_domain),
            value(CONFIG_URL_ENV, &dataplane.config_url),
            field(POD_NAME_ENV, "metadata.name"),
            field(env::IDENTITY_NAMESPACE, "metadata.namespace"),
            field(env::IDENTITY_SERVICE_ACCOUNT, "spec.serviceAccountName"),
        ]),
        volume_mounts: Some(vec![
            mount("config", "/etc/waypoint"),
            mount("waypoint-ca-token", env::TOKEN_DIR),
            mount("waypoint-mesh-root", env::ROOT_DIR),
        ]),
        ..Container::default()
    }
}

fn service_spec(
    selector: BTreeMap<String, String>,
    config: &waypoint_config::Config,
) -> ServiceSpec {
    let port = |name: &str, port, app: &str| ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".to_owned()),
        app_protocol: Some(app.to_owned()),
        ..ServicePort::default()
    };
    ServiceSpec {
        type_: Some("ClusterIP".to_owned()),
        selector: Some(selector),
        ports: Some(
            std::iter::once(port("status-port", STATUS_PORT, "tcp"))
                .chain(
                    serving_ports(config)
                        .iter()
                        .map(|s| port(&s.name, s.port, s.app_protocol)),
                )
                .collect(),
        ),
        ..ServiceSpec::default()
    }
}

/// The kind and name of a generated object, for messages.
pub fn describe<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{} {}",
        K::kind(&()),
        obj.meta().name.as_deref().unwrap_or("?")
    )
}

#[cfg(test)]
mod tests;
