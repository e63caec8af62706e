//! Webhook TLS without cert-manager: at start the webhook creates its own CA and a serving certificate
//! for its Service's DNS names (rcgen), writes them to its certificate directory, and puts the CA into
//! its ValidatingWebhookConfiguration's `caBundle` with server-side apply. A background task re-issues
//! the serving certificate from the same CA before it expires; the TLS resolver picks the new files up.
//!
//! The CA lives in memory only, so each start makes a new one. The `caBundle` keeps the two previous CAs
//! next to the new one, so during a rolling update the old pod, still serving with its CA, is trusted
//! until it is gone.

use std::path::Path;
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::Error;
use crate::tls::{CA_FILE, CERT_FILE, KEY_FILE};

/// Field manager of the `caBundle` apply.
pub const FIELD_MANAGER: &str = "virtrigaud-webhook";
/// Lifetime of the in-memory CA.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of a serving certificate.
pub const SERVING_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// A serving certificate is re-issued when it has less than this left.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How many CAs the caBundle keeps besides the newest.
pub const PREVIOUS_CAS_KEPT: usize = 2;

/// An in-memory certificate authority.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

/// A serving certificate and its key, PEM-encoded.
pub struct ServingCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: SystemTime,
}

fn validity(lifetime: Duration) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for clocks that are behind ours.
    (
        now - time::Duration::hours(1),
        now + time::Duration::try_from(lifetime).unwrap_or(time::Duration::days(90)),
    )
}

impl Authority {
    /// A new CA named `common_name`.
    pub fn generate(common_name: &str) -> Result<Self, Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        (params.not_before, params.not_after) = validity(CA_VALIDITY);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Authority {
            issuer: Issuer::new(params, key),
            ca_pem: cert.pem(),
        })
    }

    /// The CA certificate, PEM-encoded.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Issues a server certificate for `names` (DNS names or IP addresses), valid for `lifetime`.
    pub fn issue(&self, names: &[String], lifetime: Duration) -> Result<ServingCert, Error> {
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, first);
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let (not_before, not_after) = validity(lifetime);
        (params.not_before, params.not_after) = (not_before, not_after);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ServingCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after: not_after.into(),
        })
    }
}

/// The names the API server may use to reach a Service: `svc`, `svc.ns`, `svc.ns.svc`,
/// `svc.ns.svc.cluster.local`.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Writes `ca.crt`, `tls.key` and `tls.crt` into `dir` (created if missing), each written aside and
/// renamed into place so a reader never sees half a file; the key is readable by its owner only.
pub fn write_cert_dir(dir: &Path, ca_pem: &str, cert: &ServingCert) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    write_atomic(&dir.join(CA_FILE), ca_pem.as_bytes(), 0o644)?;
    write_atomic(&dir.join(KEY_FILE), cert.key_pem.as_bytes(), 0o600)?;
    write_atomic(&dir.join(CERT_FILE), cert.cert_pem.as_bytes(), 0o644)
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| Error::file(&tmp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::file(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::file(path, e))
}

/// The PEM certificate blocks of a bundle.
fn pem_blocks(bundle: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    bundle
        .split_inclusive(END)
        .filter_map(|chunk| {
            let start = chunk.find("-----BEGIN CERTIFICATE-----")?;
            chunk.ends_with(END).then(|| chunk[start..].to_owned())
        })
        .collect()
}

/// The new caBundle: `new_ca` first, then up to [`PREVIOUS_CAS_KEPT`] certificates of `existing`.
pub fn merge_ca_bundle(existing: Option<&[u8]>, new_ca: &str) -> String {
    let new_ca = new_ca.trim().to_owned();
    let previous = existing
        .map(|bytes| pem_blocks(&String::from_utf8_lossy(bytes)))
        .unwrap_or_default();
    let mut bundle = vec![new_ca.clone()];
    bundle.extend(
        previous
            .into_iter()
            .filter(|block| *block != new_ca)
            .take(PREVIOUS_CAS_KEPT),
    );
    bundle.join("\n") + "\n"
}

/// Puts `ca_pem` into the `caBundle` of every webhook of the ValidatingWebhookConfiguration `name`, with
/// server-side apply (field manager [`FIELD_MANAGER`]). Each webhook's clientConfig is applied whole, as
/// read, with the new caBundle, so nothing else changes.
pub async fn patch_ca_bundle(client: Client, name: &str, ca_pem: &str) -> Result<(), Error> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client);
    let existing = api.get(name).await?;
    let webhooks = existing.webhooks.unwrap_or_default();
    if webhooks.is_empty() {
        return Err(Error::WebhookConfiguration {
            name: name.into(),
            reason: "has no webhooks to put the CA bundle into".into(),
        });
    }
    let mut applied = Vec::with_capacity(webhooks.len());
    for webhook in &webhooks {
        let bundle = merge_ca_bundle(
            webhook
                .client_config
                .ca_bundle
                .as_ref()
                .map(|b| b.0.as_slice()),
            ca_pem,
        );
        let mut client_config = webhook.client_config.clone();
        client_config.ca_bundle = Some(ByteString(bundle.into_bytes()));
        applied.push(serde_json::json!({
            "name": webhook.name,
            "clientConfig": client_config,
        }));
    }
    let patch = serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": { "name": name },
        "webhooks": applied,
    });
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    tracing::info!(%name, webhooks = webhooks.len(), "caBundle applied");
    Ok(())
}

/// What self-signed mode needs to know.
#[derive(Debug, Clone)]
pub struct SelfSigned {
    /// The webhook's Service and its namespace (the certificate's names).
    pub service: String,
    pub namespace: String,
    /// The ValidatingWebhookConfiguration whose caBundle is set.
    pub webhook_config: String,
}

/// Creates the CA and the serving certificate, writes them to `dir`, and applies the CA bundle, retrying
/// the apply for about two minutes (the configuration may be created in the same `kubectl apply` as the
/// webhook's Deployment). Returns the CA, the certificate's names and its expiry for [`keep_renewed`].
pub async fn set_up(
    client: Client,
    dir: &Path,
    config: &SelfSigned,
) -> Result<(Authority, Vec<String>, SystemTime), Error> {
    let authority = Authority::generate(&format!("{} CA", config.service))?;
    let names = service_dns_names(&config.service, &config.namespace);
    let cert = authority.issue(&names, SERVING_VALIDITY)?;
    write_cert_dir(dir, authority.ca_pem(), &cert)?;
    let mut attempt = 1;
    loop {
        match patch_ca_bundle(client.clone(), &config.webhook_config, authority.ca_pem()).await {
            Ok(()) => break,
            Err(error) if attempt < 12 => {
                tracing::warn!(%error, attempt, "applying the caBundle failed; retrying");
                tokio::time::sleep(Duration::from_secs(2 * attempt)).await;
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
    Ok((authority, names, cert.not_after))
}

/// Re-issues the serving certificate into `dir` whenever it has less than [`RENEW_BEFORE`] left,
/// checking every `check_every`. Runs until the task is dropped.
pub async fn keep_renewed(
    authority: &Authority,
    names: &[String],
    dir: &Path,
    mut not_after: SystemTime,
    check_every: Duration,
) {
    loop {
        tokio::time::sleep(check_every).await;
        let left = not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        if left > RENEW_BEFORE {
            continue;
        }
        match authority
            .issue(names, SERVING_VALIDITY)
            .and_then(|cert| write_cert_dir(dir, authority.ca_pem(), &cert).map(|()| cert))
        {
            Ok(cert) => {
                not_after = cert.not_after;
                tracing::info!("serving certificate renewed");
            }
            Err(error) => tracing::error!(%error, "renewing the serving certificate failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundle_keeps_two_previous_cas() {
        let cas: Vec<String> = (0..4)
            .map(|i| Authority::generate(&format!("ca {i}")).unwrap().ca_pem)
            .collect();
        let mut bundle = merge_ca_bundle(None, &cas[0]);
        assert_eq!(pem_blocks(&bundle).len(), 1);
        for ca in &cas[1..] {
            bundle = merge_ca_bundle(Some(bundle.as_bytes()), ca);
        }
        let blocks = pem_blocks(&bundle);
        assert_eq!(blocks.len(), 3);
        assert_eq!(blocks[0], cas[3].trim());
        assert_eq!(blocks[2], cas[1].trim());
        // Applying the same CA again does not duplicate it.
        let again = merge_ca_bundle(Some(bundle.as_bytes()), &cas[3]);
        assert_eq!(pem_blocks(&again), blocks);
    }

    #[test]
    fn issues_a_certificate_the_tls_resolver_serves() {
        let authority = Authority::generate("test ca").unwrap();
        let names = service_dns_names("virtrigaud-webhook", "virtrigaud-system");
        assert_eq!(names[2], "virtrigaud-webhook.virtrigaud-system.svc");
        let cert = authority.issue(&names, SERVING_VALIDITY).unwrap();
        let dir = tempfile::tempdir().unwrap();
        write_cert_dir(dir.path(), authority.ca_pem(), &cert).unwrap();
        let resolver = crate::tls::ReloadingCert::new(dir.path()).unwrap();
        assert_eq!(resolver.current().cert.len(), 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let left = cert.not_after.duration_since(SystemTime::now()).unwrap();
        assert!(left > SERVING_VALIDITY - Duration::from_secs(60));
    }
}
