//! Every object in examples/ parses into the API types (the webhook's tests also admit them).

use serde::Deserialize;

fn documents() -> Vec<(String, serde_yaml::Value)> {
    let dir = manifest_dir().join("../examples");
    let mut out = vec![];
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
    {
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc).unwrap();
            if !value.is_null() {
                out.push((
                    path.file_name().unwrap().to_string_lossy().into_owned(),
                    value,
                ));
            }
        }
    }
    out
}

#[test]
fn every_example_parses_into_the_types() {
    let mut migrations = 0;
    for (file, doc) in documents() {
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        let result = match kind.as_str() {
            "VMMigration" => {
                migrations += 1;
                serde_yaml::from_value::<crd::VMMigration>(doc).map(|_| ())
            }
            "Provider" => serde_yaml::from_value::<crd::Provider>(doc).map(|_| ()),
            "VirtualMachine" => serde_yaml::from_value::<crd::VirtualMachine>(doc).map(|_| ()),
            "Secret" | "Namespace" => Ok(()),
            other => panic!("{file}: unexpected kind {other}"),
        };
        result.unwrap_or_else(|e| panic!("{file}: {kind}: {e}"));
    }
    assert_eq!(
        migrations, 7,
        "quick start, three scenarios, multi-disk, windows, large"
    );
}

#[test]
fn the_guide_quick_start_keeps_its_values() {
    let (_, doc) = documents()
        .into_iter()
        .find(|(f, _)| f == "quick-start.yaml")
        .unwrap();
    let m: crd::VMMigration = serde_yaml::from_value(doc).unwrap();
    assert_eq!(m.spec.source_name, "my-libvirt-vm");
    assert_eq!(m.spec.storage.type_, crd::StorageType::S3);
    assert_eq!(m.spec.storage.bucket.as_deref(), Some("vm-migrations"));
    assert_eq!(m.spec.retry_policy.backoff_duration, "5m");
    assert_eq!(m.spec.retry_policy.max_backoff_duration, "30m", "defaulted");
}

/// This package's directory, as `cargo test` gives it when the test runs: the cargo target dir is
/// shared between checkouts (CI's clones reuse this machine's builds), so a test binary built in
/// another checkout must not read that checkout's files through a path fixed at compile time.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}
