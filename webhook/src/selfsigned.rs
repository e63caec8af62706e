//! Webhook TLS without cert-manager: at start the webhook takes the CA all its replicas share, issues
//! a serving certificate for its Service's DNS names (rcgen), writes them to its certificate directory,
//! and puts the CA into its ValidatingWebhookConfiguration's `caBundle` with server-side apply. A
//! background task re-issues the serving certificate from the same CA before it expires; the TLS
//! resolver picks the new files up.
//!
//! The CA is kept in a Secret ([`SelfSigned::ca_secret`], shipped empty by the default install): the
//! first replica to start finds it empty, makes a CA and stores it with an update conditional on the
//! resourceVersion it read (or creates the Secret when it is missing); a replica that loses that race
//! reads the winner's CA. So every replica serves a certificate of the one CA in the `caBundle`, and
//! replicas starting together cannot overwrite each other's bundle. Without a CA Secret (an empty
//! `--ca-secret`) the CA lives in memory and each start makes a new one: one replica only. Either way
//! the `caBundle` keeps the two previous CAs next to the new one, so a pod still serving with an
//! older CA stays trusted until it is gone.

use std::path::Path;
use std::time::{Duration, SystemTime};

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
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

/// Key of the CA certificate in the CA Secret.
pub const CA_SECRET_CERT: &str = "ca.crt";
/// Key of the CA's private key in the CA Secret.
pub const CA_SECRET_KEY: &str = "ca.key";
/// How often a replica re-reads the CA Secret after losing the race to store a CA.
const CA_SECRET_TRIES: usize = 5;

/// A certificate authority.
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

    /// The CA of `cert_pem` and its key `key_pem` (as [`Authority::key_pem`] wrote it).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let key = KeyPair::from_pem(key_pem)?;
        Ok(Authority {
            issuer: Issuer::from_ca_cert_pem(cert_pem, key)?,
            ca_pem: cert_pem.to_owned(),
        })
    }

    /// The CA certificate, PEM-encoded.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA's private key, PEM-encoded.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
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
    /// The Secret in `namespace` holding the CA the replicas share; `None`: a CA in memory.
    pub ca_secret: Option<String>,
}

/// The `data` of a CA Secret holding `authority`.
fn ca_secret_data(authority: &Authority) -> BTreeMap<String, ByteString> {
    BTreeMap::from([
        (
            CA_SECRET_CERT.to_owned(),
            ByteString(authority.ca_pem().as_bytes().to_vec()),
        ),
        (
            CA_SECRET_KEY.to_owned(),
            ByteString(authority.key_pem().into_bytes()),
        ),
    ])
}

/// The CA stored in `secret`, if it holds one.
fn stored_authority(secret: &Secret) -> Option<Result<Authority, Error>> {
    let data = secret.data.as_ref()?;
    let (cert, key) = (data.get(CA_SECRET_CERT)?, data.get(CA_SECRET_KEY)?);
    let name = secret.metadata.name.clone().unwrap_or_default();
    let unusable = |reason: String| Error::CaSecret {
        name: name.clone(),
        reason: format!("holds no usable CA ({reason}); remove its data to have a new CA made"),
    };
    let text = |bytes: &ByteString| String::from_utf8(bytes.0.clone()).map_err(|e| e.to_string());
    Some(
        text(cert)
            .and_then(|cert| Ok((cert, text(key)?)))
            .map_err(unusable)
            .and_then(|(cert, key)| {
                Authority::from_pem(&cert, &key).map_err(|e| unusable(e.to_string()))
            }),
    )
}

/// The CA in the Secret `name`, or a new one stored into it. `None`: another replica stored its CA
/// between our read and our write; read again.
async fn take_or_store_ca(
    api: &Api<Secret>,
    name: &str,
    common_name: &str,
) -> Result<Option<Authority>, Error> {
    let existing = api.get_opt(name).await?;
    if let Some(stored) = existing.as_ref().and_then(stored_authority) {
        return stored.map(Some);
    }
    let authority = Authority::generate(common_name)?;
    let written = match existing {
        // Conditional on the resourceVersion read: a concurrent store makes this a 409.
        Some(mut secret) => {
            secret.data = Some(ca_secret_data(&authority));
            api.replace(name, &PostParams::default(), &secret).await
        }
        None => {
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    ..ObjectMeta::default()
                },
                data: Some(ca_secret_data(&authority)),
                ..Secret::default()
            };
            api.create(&PostParams::default(), &secret).await
        }
    };
    match written {
        Ok(_) => {
            tracing::info!(secret = %name, "stored a new CA for the webhook's replicas");
            Ok(Some(authority))
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            tracing::info!(secret = %name, "another replica stored a CA first; reading it");
            Ok(None)
        }
        Err(error) => Err(error.into()),
    }
}

/// The CA every replica shares, kept in the Secret `name` of `api`'s namespace: the stored one, or a
/// new one this replica stores first.
pub async fn shared_authority(
    api: &Api<Secret>,
    name: &str,
    common_name: &str,
) -> Result<Authority, Error> {
    for _ in 0..CA_SECRET_TRIES {
        if let Some(authority) = take_or_store_ca(api, name, common_name).await? {
            return Ok(authority);
        }
    }
    Err(Error::CaSecret {
        name: name.to_owned(),
        reason: format!("changed under every one of {CA_SECRET_TRIES} attempts to store a CA"),
    })
}

/// Takes the shared CA (or makes one in memory), issues the serving certificate, writes them to `dir`,
/// and applies the CA bundle, retrying
/// the apply for about two minutes (the configuration may be created in the same `kubectl apply` as the
/// webhook's Deployment). Returns the CA, the certificate's names and its expiry for [`keep_renewed`].
pub async fn set_up(
    client: Client,
    dir: &Path,
    config: &SelfSigned,
) -> Result<(Authority, Vec<String>, SystemTime), Error> {
    let common_name = format!("{} CA", config.service);
    let authority = match &config.ca_secret {
        Some(secret) => {
            let api = Api::namespaced(client.clone(), &config.namespace);
            shared_authority(&api, secret, &common_name).await?
        }
        None => Authority::generate(&common_name)?,
    };
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
    use std::sync::Arc;

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
    fn a_ca_read_back_from_its_pem_issues_certificates_its_certificate_verifies() {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let stored = Authority::generate("virtrigaud-webhook CA").unwrap();
        let loaded = Authority::from_pem(stored.ca_pem(), &stored.key_pem()).unwrap();
        let names = service_dns_names("virtrigaud-webhook", "virtrigaud-system");
        let cert = loaded.issue(&names, SERVING_VALIDITY).unwrap();

        let der = |pem: &str| -> CertificateDer<'static> {
            rustls_pemfile::certs(&mut pem.as_bytes())
                .next()
                .unwrap()
                .unwrap()
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(stored.ca_pem())).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let name = ServerName::try_from("virtrigaud-webhook.virtrigaud-system.svc").unwrap();
        verifier
            .verify_server_cert(&der(&cert.cert_pem), &[], &name, &[], UnixTime::now())
            .unwrap();

        // A certificate of another CA does not verify.
        let other = Authority::generate("virtrigaud-webhook CA").unwrap();
        let foreign = other.issue(&names, SERVING_VALIDITY).unwrap();
        assert!(
            verifier
                .verify_server_cert(&der(&foreign.cert_pem), &[], &name, &[], UnixTime::now())
                .is_err()
        );
    }

    #[test]
    fn unusable_ca_secret_data_is_refused_naming_the_secret() {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some("virtrigaud-webhook-ca".into()),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([
                (
                    CA_SECRET_CERT.to_owned(),
                    ByteString(b"not a cert".to_vec()),
                ),
                (CA_SECRET_KEY.to_owned(), ByteString(b"not a key".to_vec())),
            ])),
            ..Secret::default()
        };
        let Some(Err(error)) = stored_authority(&secret) else {
            panic!("garbage accepted as a CA");
        };
        let text = error.to_string();
        assert!(
            text.contains("virtrigaud-webhook-ca") && text.contains("no usable CA"),
            "{text}"
        );
        // An empty Secret (as installed) holds no CA yet.
        assert!(stored_authority(&Secret::default()).is_none());
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
