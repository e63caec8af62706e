//! The CRD YAML under kustomize/ is generated; this fails when it was edited by hand or the types changed
//! without `make crds`.

#[test]
fn committed_crds_match_the_types() {
    let dir = manifest_dir().join("../kustomize/base/crds");
    let files = crd::crd_files();
    assert_eq!(files.len(), 3, "VMMigration, Provider and VirtualMachine");
    for (file, generated) in files {
        let path = dir.join(&file);
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; run `make crds`", path.display()));
        assert!(
            committed == generated,
            "{} differs from the generated CRD: run `make crds` and commit the result",
            path.display()
        );
    }
}

#[test]
fn vmmigration_crd_teaches_the_api() {
    let crd = crd::crds().into_iter().next().unwrap();
    assert_eq!(crd.spec.group, "infra.virtrigaud.io");
    assert_eq!(crd.spec.names.kind, "VMMigration");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["vmm".to_string(), "vmmig".to_string()][..])
    );
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1beta1");
    assert!(version.subresources.as_ref().unwrap().status.is_some());
    let columns: Vec<_> = version
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        columns,
        [
            "Source",
            "Target",
            "Phase",
            "Progress",
            "Attempt",
            "Reason",
            "Target-Provider",
            "Storage",
            "Message",
            "Age"
        ]
    );
    // the target provider, storage and message only with `-o wide`
    let wide: Vec<_> = version
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .filter(|c| c.priority == Some(1))
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(wide, ["Target-Provider", "Storage", "Message"]);

    // Every field of the schema carries a description, so `kubectl explain` explains it.
    let schema = serde_json::to_value(
        version
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap();
    let mut missing = vec![];
    walk(&schema["properties"]["spec"], "spec", &mut missing);
    walk(&schema["properties"]["status"], "status", &mut missing);
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:?}"
    );
    // An optional enum field keeps its own text (the default), not its type's.
    let format = &schema["properties"]["spec"]["properties"]["targetDiskFormat"]["description"];
    assert!(
        format
            .as_str()
            .is_some_and(|d| d.contains("Defaults to the target's native format")),
        "{format}"
    );
}

fn walk(schema: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
    if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
        for (name, sub) in props {
            let sub_path = format!("{path}.{name}");
            if sub.get("description").is_none() {
                missing.push(sub_path.clone());
            }
            walk(sub, &sub_path, missing);
        }
    }
    if let Some(items) = schema.get("items") {
        walk(items, &format!("{path}[]"), missing);
    }
}

#[test]
fn schema_carries_the_cel_rules() {
    let yaml = &crd::crd_files()[0].1;
    for rule in [
        "self == oldSelf",
        "has(self.network) != has(self.bridge)",
        "self.type != 's3' || (has(self.bucket)",
        "duration(self.backoffDuration) <= duration(self.maxBackoffDuration)",
        "x-kubernetes-list-type: map",
    ] {
        assert!(yaml.contains(rule), "missing {rule}");
    }
}

/// This package's directory, as `cargo test` gives it when the test runs: the cargo target dir is
/// shared between checkouts (CI's clones reuse this machine's builds), so a test binary built in
/// another checkout must not read that checkout's files through a path fixed at compile time.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}
