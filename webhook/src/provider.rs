//! The Provider validator. A Provider hands the runner an endpoint and the credentials of a Secret,
//! so its author must be allowed to read that Secret, the Secret must be in the Provider's own
//! namespace, and the endpoint must pass the endpoint policy (a known transport, no credentials in
//! it, no link-local or metadata address); a `maxConcurrentMigrations` that is set must not be
//! below 1. Checked on create and on every change of the spec: a Provider edited after a migration
//! was admitted is refused by the operator as well (pinned references).

use crd::{ProviderSpec, ProviderType};

use crate::admission::{Admission, Request, Validate, Verdict};
use crate::cluster::Access;
use crate::endpoints::{self, Endpoint};
use crate::spec;

#[async_trait::async_trait]
impl Validate<ProviderSpec> for Admission {
    async fn create(&self, request: &Request<'_>, spec: ProviderSpec) -> Verdict {
        let mut verdict = Verdict::default();
        self.check_endpoint(&mut verdict, &spec).await;
        if let Some(n) = spec.max_concurrent_migrations
            && n < 1
        {
            verdict.deny(
                "spec.maxConcurrentMigrations",
                format!(
                    "{n} must be at least 1 (how many migrations may run at once against this \
                     Provider; unset means {})",
                    ProviderSpec::DEFAULT_MAX_CONCURRENT_MIGRATIONS
                ),
            );
        }
        // (without its own host, the SSH login goes to the endpoint's host, checked above)
        if let Some(host) = spec
            .ssh
            .as_ref()
            .and_then(|ssh| Some((ssh.host.as_deref()?, ssh.port)))
        {
            let parsed = endpoints::parse_host(host.0, host.1.unwrap_or(22));
            self.check_address(&mut verdict, "spec.ssh.host", parsed)
                .await;
        }
        if let Some(secret) = &spec.credential_secret_ref {
            match secret.namespace.as_deref() {
                Some(ns) if ns != request.namespace => verdict.deny(
                    "spec.credentialSecretRef.namespace",
                    format!(
                        "{ns:?} is not the Provider's namespace {:?}: a Provider may only use a Secret \
                         of its own namespace",
                        request.namespace
                    ),
                ),
                _ => {
                    let access = Access::get_secret(request.namespace, &secret.name);
                    self.require(&mut verdict, request, "spec.credentialSecretRef", &access, "")
                        .await;
                }
            }
        }
        verdict
    }
}

impl Admission {
    /// The endpoint, parsed for the Provider's type and checked against the address policy.
    async fn check_endpoint(&self, verdict: &mut Verdict, spec: &ProviderSpec) {
        let parsed = match spec.type_ {
            ProviderType::Libvirt => {
                match endpoints::parse_libvirt(&spec.endpoint, self.addresses.allow_loopback) {
                    Ok(None) => return,
                    Ok(Some(e)) => Ok(e),
                    Err(why) => Err(why),
                }
            }
            ProviderType::Vsphere => {
                endpoints::parse_api(&spec.endpoint, "https://vcenter.example.com")
            }
            ProviderType::Proxmox => {
                endpoints::parse_api(&spec.endpoint, "https://pve.example.com:8006")
            }
        };
        self.check_address(verdict, "spec.endpoint", parsed).await;
    }

    /// Denies `field` when `parsed` failed or points where no endpoint may point.
    async fn check_address(
        &self,
        verdict: &mut Verdict,
        field: &str,
        parsed: Result<Endpoint, String>,
    ) {
        let checked = match parsed {
            Err(why) => Err(why),
            Ok(endpoint) => self
                .addresses
                .check_endpoint(&endpoint, self.resolver.as_ref())
                .await
                .map_err(|why| spec::unroutable(&why)),
        };
        if let Err(why) = checked {
            verdict.deny(field, why);
        }
    }

    /// Denies `field` unless the requesting user may exercise `access`.
    pub(crate) async fn require(
        &self,
        verdict: &mut Verdict,
        request: &Request<'_>,
        field: &str,
        access: &Access,
        why: &str,
    ) {
        let user = request.user.username.as_deref().unwrap_or("(unknown user)");
        match self.cluster.allowed(request.user, access).await {
            Ok(true) => {}
            Ok(false) => verdict.deny(
                field,
                format!("user {user:?} may not {access}{why}, so this object may not name it"),
            ),
            Err(error) => verdict.deny(
                field,
                format!("could not check whether user {user:?} may {access}: {error}"),
            ),
        }
    }
}
