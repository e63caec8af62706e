//! Container environment: `env`, `envFrom`, the downward API and `$(VAR)` expansion, as the kubelet
//! computes them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, ObjectFieldSelector, Pod, ResourceFieldSelector};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::error::{Error, Result};
use crate::objects::Objects;

/// Addresses and names the environment refers to that are not in the pod spec.
#[derive(Clone, Debug)]
pub struct PodContext {
    /// The pod's IP.
    pub pod_ip: String,
    /// The node's IP.
    pub host_ip: String,
    /// Host of the Kubernetes API server as programs in the pod reach it.
    pub apiserver_host: String,
    /// Its port.
    pub apiserver_port: u16,
}

/// Expands `$(NAME)` references the way Kubernetes does: a defined name is replaced, an undefined
/// one is left as written, `$$` is an escaped `$`, and any other `$` is kept.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('(') {
            match tail.find(')') {
                Some(end) => {
                    let name = &tail[..end];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &tail[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = tail;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Whether `name` may be an environment variable name (what the kubelet accepts from `envFrom`).
fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// The value of a downward API field (`metadata.name`, `status.podIP`, `metadata.labels['k']`...).
pub fn field_value(pod: &Pod, ctx: &PodContext, selector: &ObjectFieldSelector) -> Result<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let path = selector.field_path.as_str();
    let keyed = |prefix: &str| -> Option<String> {
        path.strip_prefix(prefix)
            .and_then(|p| p.strip_prefix("['").or_else(|| p.strip_prefix("[\"")))
            .and_then(|p| p.strip_suffix("']").or_else(|| p.strip_suffix("\"]")))
            .map(str::to_string)
    };
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => ctx.host_ip.clone(),
        "status.podIP" | "status.podIPs" => ctx.pod_ip.clone(),
        _ => {
            if let Some(key) = keyed("metadata.labels") {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(&key).cloned())
                    .unwrap_or_default()
            } else if let Some(key) = keyed("metadata.annotations") {
                meta.annotations
                    .as_ref()
                    .and_then(|a| a.get(&key).cloned())
                    .unwrap_or_default()
            } else {
                return Err(Error::Unsupported(format!("downward API field {path:?}")));
            }
        }
    };
    Ok(value)
}

/// `key="value"` lines, sorted by key, as the downward API writes label and annotation files.
fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The value of a `resourceFieldRef`: the container's limit (the node's capacity when unset) or
/// request, divided by the divisor and rounded up.
pub fn resource_value(
    pod: &Pod,
    default_container: Option<&str>,
    selector: &ResourceFieldSelector,
    node_cpu_cores: u64,
    node_memory_bytes: u64,
) -> Result<String> {
    let name = selector
        .container_name
        .as_deref()
        .or(default_container)
        .ok_or_else(|| Error::Unsupported("resourceFieldRef without containerName".into()))?;
    let container = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == name))
        .ok_or_else(|| Error::Unsupported(format!("resourceFieldRef: no container {name:?}")))?;
    let resources = container.resources.as_ref();
    let (kind, resource) = selector
        .resource
        .split_once('.')
        .ok_or_else(|| Error::Unsupported(format!("resource {:?}", selector.resource)))?;
    let quantities = match kind {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => {
            return Err(Error::Unsupported(format!(
                "resource {:?}",
                selector.resource
            )));
        }
    };
    let set = quantities
        .and_then(|q| q.get(resource))
        .map(parse_quantity)
        .transpose()?;
    let value = match (set, kind, resource) {
        (Some(v), _, _) => v,
        (None, "limits", "cpu") => node_cpu_cores as f64,
        (None, "limits", "memory") => node_memory_bytes as f64,
        (None, _, _) => 0.0,
    };
    let divisor = match &selector.divisor {
        Some(d) => parse_quantity(d)?,
        None => 1.0,
    };
    if divisor <= 0.0 {
        return Err(Error::Unsupported(
            "resourceFieldRef divisor must be positive".into(),
        ));
    }
    Ok(format!("{}", (value / divisor).ceil() as u64))
}

/// Parses a Kubernetes quantity (`500m`, `2`, `128Mi`, `1G`, `1e3`) into a number.
pub fn parse_quantity(q: &Quantity) -> Result<f64> {
    let s = q.0.trim();
    let bad = || Error::Unsupported(format!("quantity {s:?}"));
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let num: f64 = num.parse().map_err(|_| bad())?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024.0f64.powi(2),
        "Gi" => 1024.0f64.powi(3),
        "Ti" => 1024.0f64.powi(4),
        "Pi" => 1024.0f64.powi(5),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse::<i32>().map_err(|_| bad())?),
        _ => return Err(bad()),
    };
    Ok(num * factor)
}

/// Builds a container's environment in the kubelet's order: `envFrom` sources, then `env` entries
/// (each expanded against what is defined before it), then the variables every pod gets.
pub async fn container_env(
    objects: &Objects,
    pod: &Pod,
    container: &Container,
    ctx: &PodContext,
    node_cpu_cores: u64,
    node_memory_bytes: u64,
) -> Result<Vec<(String, String)>> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let err = |message: String| Error::Env {
        container: container.name.clone(),
        message,
    };
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(name, _)| *name != k);
        env.push((k, v));
    };

    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        let data: BTreeMap<String, String> = if let Some(cm) = &source.config_map_ref {
            let optional = cm.optional.unwrap_or(false);
            match objects.config_map(ns, &cm.name).await? {
                Some(cm) => cm.data.unwrap_or_default(),
                None if optional => BTreeMap::new(),
                None => return Err(err(format!("configmap {:?} not found", cm.name))),
            }
        } else if let Some(sec) = &source.secret_ref {
            let optional = sec.optional.unwrap_or(false);
            match objects.secret(ns, &sec.name).await? {
                Some(s) => s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect(),
                None if optional => BTreeMap::new(),
                None => return Err(err(format!("secret {:?} not found", sec.name))),
            }
        } else {
            BTreeMap::new()
        };
        for (k, v) in data {
            let name = format!("{prefix}{k}");
            if valid_env_name(&name) {
                set(&mut env, name, v);
            }
        }
    }

    let service = service_env(ctx);
    for var in container.env.iter().flatten() {
        let value = if let Some(source) = &var.value_from {
            if let Some(f) = &source.field_ref {
                field_value(pod, ctx, f)?
            } else if let Some(r) = &source.resource_field_ref {
                resource_value(
                    pod,
                    Some(&container.name),
                    r,
                    node_cpu_cores,
                    node_memory_bytes,
                )?
            } else if let Some(k) = &source.secret_key_ref {
                let secret = objects.secret(ns, &k.name).await?;
                match secret.and_then(|s| s.data.and_then(|mut d| d.remove(&k.key))) {
                    Some(v) => String::from_utf8_lossy(&v.0).into_owned(),
                    None if k.optional.unwrap_or(false) => continue,
                    None => return Err(err(format!("secret {:?} has no key {:?}", k.name, k.key))),
                }
            } else if let Some(k) = &source.config_map_key_ref {
                let cm = objects.config_map(ns, &k.name).await?;
                match cm.and_then(|c| c.data.and_then(|mut d| d.remove(&k.key))) {
                    Some(v) => v,
                    None if k.optional.unwrap_or(false) => continue,
                    None => {
                        return Err(err(format!(
                            "configmap {:?} has no key {:?}",
                            k.name, k.key
                        )));
                    }
                }
            } else {
                String::new()
            }
        } else {
            let raw = var.value.clone().unwrap_or_default();
            let defined = env.clone();
            expand(&raw, |name| {
                defined
                    .iter()
                    .rev()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .or_else(|| {
                        service
                            .iter()
                            .find(|(k, _)| k == name)
                            .map(|(_, v)| v.clone())
                    })
            })
        };
        set(&mut env, var.name.clone(), value);
    }

    let hostname = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    let mut base = service;
    base.push(("HOSTNAME".into(), hostname));
    base.push(("POD_IP".into(), ctx.pod_ip.clone()));
    base.push((
        "PATH".into(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
    ));
    base.push(("HOME".into(), "/root".into()));
    for (k, v) in base {
        if !env.iter().any(|(name, _)| *name == k) {
            env.push((k, v));
        }
    }
    Ok(env)
}

/// The `KUBERNETES_*` variables, pointing at the real API server (there is no kube-proxy to make
/// the `kubernetes` Service's cluster IP work).
fn service_env(ctx: &PodContext) -> Vec<(String, String)> {
    let (host, port) = (&ctx.apiserver_host, ctx.apiserver_port);
    vec![
        ("KUBERNETES_SERVICE_HOST".into(), host.clone()),
        ("KUBERNETES_SERVICE_PORT".into(), port.to_string()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".into(), port.to_string()),
        ("KUBERNETES_PORT".into(), format!("tcp://{host}:{port}")),
        (
            format!("KUBERNETES_PORT_{port}_TCP"),
            format!("tcp://{host}:{port}"),
        ),
        (format!("KUBERNETES_PORT_{port}_TCP_PROTO"), "tcp".into()),
        (format!("KUBERNETES_PORT_{port}_TCP_PORT"), port.to_string()),
        (format!("KUBERNETES_PORT_{port}_TCP_ADDR"), host.clone()),
    ]
}

/// Expands `$(VAR)` in a command or its arguments against the final environment.
pub fn expand_all(words: &[String], env: &[(String, String)]) -> Vec<String> {
    words
        .iter()
        .map(|w| {
            expand(w, |name| {
                env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};
    use kube::api::ObjectMeta;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expansion_matches_kubernetes_rules() {
        assert_eq!(expand("x-$(A)-y", lookup), "x-alpha-y");
        assert_eq!(expand("$(MISSING)", lookup), "$(MISSING)");
        assert_eq!(expand("$$(A)", lookup), "$(A)");
        assert_eq!(expand("cost $5 $", lookup), "cost $5 $");
        assert_eq!(expand("$(A", lookup), "$(A");
        assert_eq!(expand("[$(EMPTY)]", lookup), "[]");
    }

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                uid: Some("u-1".into()),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("e2e-node".into()),
                containers: vec![Container {
                    name: "c".into(),
                    resources: Some(ResourceRequirements {
                        limits: Some([("memory".to_string(), Quantity("64Mi".into()))].into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ctx() -> PodContext {
        PodContext {
            pod_ip: "10.244.0.2".into(),
            host_ip: "127.0.0.1".into(),
            apiserver_host: "127.0.0.1".into(),
            apiserver_port: 6443,
        }
    }

    #[test]
    fn downward_api_fields() {
        let f = |p: &str| {
            field_value(
                &pod(),
                &ctx(),
                &ObjectFieldSelector {
                    field_path: p.into(),
                    api_version: None,
                },
            )
        };
        assert_eq!(f("metadata.name").unwrap(), "p");
        assert_eq!(f("metadata.labels['app']").unwrap(), "web");
        assert_eq!(f("metadata.labels").unwrap(), "app=\"web\"");
        assert_eq!(f("status.podIP").unwrap(), "10.244.0.2");
        assert_eq!(f("spec.nodeName").unwrap(), "e2e-node");
        assert!(f("spec.bogus").is_err());
    }

    #[test]
    fn resource_fields_use_limits_then_node_capacity() {
        let sel = |r: &str, d: Option<&str>| ResourceFieldSelector {
            container_name: None,
            resource: r.into(),
            divisor: d.map(|d| Quantity(d.into())),
        };
        let p = pod();
        assert_eq!(
            resource_value(
                &p,
                Some("c"),
                &sel("limits.memory", Some("1Mi")),
                2,
                1 << 30
            )
            .unwrap(),
            "64"
        );
        assert_eq!(
            resource_value(&p, Some("c"), &sel("limits.cpu", None), 2, 1 << 30).unwrap(),
            "2"
        );
        assert_eq!(
            resource_value(&p, Some("c"), &sel("requests.cpu", None), 2, 1 << 30).unwrap(),
            "0"
        );
    }

    #[test]
    fn quantities() {
        let q = |s: &str| parse_quantity(&Quantity(s.into())).unwrap();
        assert_eq!(q("500m"), 0.5);
        assert_eq!(q("2Gi"), 2.0 * 1024.0 * 1024.0 * 1024.0);
        assert_eq!(q("1e3"), 1000.0);
        assert!(parse_quantity(&Quantity("12Q".into())).is_err());
    }

    #[test]
    fn command_expansion_uses_final_env() {
        let env = vec![("X".to_string(), "1".to_string())];
        assert_eq!(
            expand_all(&["echo".into(), "$(X)$(Y)".into()], &env),
            vec!["echo", "1$(Y)"]
        );
    }
}
