//! Which image the runner Jobs run. Unless `--runner-image` names one, it is the image of the
//! `runner-image` init container of the operator's own pod: the install lists the runner image
//! there (the container runs `runner --version`, which also pulls the image onto the operator's
//! node), so everything that retargets a Deployment's images (`kustomize edit set image`,
//! `kubectl set image`) retargets the runner with the operator, and no flag value has to be kept in
//! step with it.

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};

use crate::error::{Error, Result};

/// Name of the operator pod's init container whose image the runner Jobs use.
pub const INIT_CONTAINER: &str = "runner-image";

/// The runner image: `flag` when given, else the image of [`INIT_CONTAINER`] in pod
/// `namespace/pod` (the operator's own, from the downward API).
pub async fn resolve(
    client: &Client,
    flag: &str,
    namespace: &str,
    pod: Option<&str>,
) -> Result<String> {
    if !flag.is_empty() {
        return Ok(flag.to_string());
    }
    let pod = pod.ok_or_else(|| {
        Error::Config(
            "no --runner-image, and POD_NAME is not set to find this pod's runner-image init \
             container"
                .into(),
        )
    })?;
    let found = Api::<Pod>::namespaced(client.clone(), namespace)
        .get(pod)
        .await?;
    from_pod(&found).ok_or_else(|| {
        Error::Config(format!(
            "no --runner-image, and pod {namespace}/{pod} has no init container {INIT_CONTAINER:?} \
             with an image"
        ))
    })
}

/// The image of [`INIT_CONTAINER`] in `pod`.
pub fn from_pod(pod: &Pod) -> Option<String> {
    pod.spec
        .as_ref()?
        .init_containers
        .as_ref()?
        .iter()
        .find(|c| c.name == INIT_CONTAINER)?
        .image
        .clone()
        .filter(|i| !i.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(init: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "virtrigaud-operator-1", "namespace": "virtrigaud-system"},
            "spec": {"containers": [{"name": "operator", "image": "reg.example/virtrigaud/operator:1.2"}],
                     "initContainers": init}
        }))
        .unwrap()
    }

    #[test]
    fn the_init_containers_image_is_the_runner_image() {
        let p = pod(serde_json::json!([
            {"name": "other", "image": "busybox"},
            {"name": "runner-image", "image": "reg.example/virtrigaud/runner:1.2"}
        ]));
        assert_eq!(
            from_pod(&p).as_deref(),
            Some("reg.example/virtrigaud/runner:1.2")
        );
        assert_eq!(
            from_pod(&pod(serde_json::json!([{"name": "other", "image": "x"}]))),
            None
        );
        assert_eq!(from_pod(&pod(serde_json::json!([]))), None);
    }
}
