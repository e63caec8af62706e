//! What a migration was admitted with, pinned. The operator records the objects a migration depends
//! on (the source VirtualMachine, both Providers, the credential Secrets) when it first launches a
//! runner, and refuses every later attempt and the cleanup run when one of them has changed since:
//! admission checked the requesting user's rights against those objects, not against whatever they
//! are edited into later (another team's Secret, another team's Provider).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One object a migration depends on, as it was when the migration started.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PinnedReference {
    /// `VirtualMachine`, `Provider` or `Secret`.
    pub kind: String,
    /// The object's namespace.
    pub namespace: String,
    /// The object's name.
    pub name: String,
    /// The object's UID: a deleted and re-created object is another object.
    pub uid: String,
    /// What the migration relies on in it: a VirtualMachine's Provider; a Provider's type, endpoint
    /// (without credentials), credential Secret, SSH login and TLS setting. Secrets are pinned by UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

impl PinnedReference {
    /// `Kind namespace/name`.
    pub fn id(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }

    fn same_object(&self, other: &PinnedReference) -> bool {
        self.kind == other.kind && self.namespace == other.namespace && self.name == other.name
    }
}

/// What differs between the `pinned` references and the `current` ones, one readable line per
/// change (empty when nothing changed).
pub fn changes(pinned: &[PinnedReference], current: &[PinnedReference]) -> Vec<String> {
    let mut out = Vec::new();
    for p in pinned {
        match current.iter().find(|c| c.same_object(p)) {
            None => out.push(format!("{} is no longer referenced", p.id())),
            Some(c) if c.uid != p.uid => {
                out.push(format!("{} was deleted and created again", p.id()))
            }
            Some(c) if c.content != p.content => out.push(format!(
                "{} changed: it was {}, it is now {}",
                p.id(),
                p.content.as_deref().unwrap_or("-"),
                c.content.as_deref().unwrap_or("-")
            )),
            Some(_) => {}
        }
    }
    for c in current
        .iter()
        .filter(|c| !pinned.iter().any(|p| p.same_object(c)))
    {
        out.push(format!(
            "{} is referenced now, not when the migration started",
            c.id()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(kind: &str, name: &str, uid: &str, content: Option<&str>) -> PinnedReference {
        PinnedReference {
            kind: kind.into(),
            namespace: "team-a".into(),
            name: name.into(),
            uid: uid.into(),
            content: content.map(str::to_string),
        }
    }

    #[test]
    fn names_every_change() {
        let pinned = vec![
            pin(
                "Provider",
                "mine",
                "u1",
                Some("libvirt qemu+tcp://h/system, credentials team-a/mine"),
            ),
            pin("Secret", "mine", "u2", None),
        ];
        assert!(changes(&pinned, &pinned).is_empty());
        let stolen = vec![
            pin(
                "Provider",
                "mine",
                "u1",
                Some("libvirt qemu+tcp://h/system, credentials victim/crown-jewels"),
            ),
            PinnedReference {
                namespace: "victim".into(),
                ..pin("Secret", "crown-jewels", "u9", None)
            },
        ];
        let c = changes(&pinned, &stolen);
        assert_eq!(c.len(), 3, "{c:?}");
        assert!(
            c[0].starts_with("Provider team-a/mine changed: it was libvirt"),
            "{c:?}"
        );
        assert!(c[0].contains("victim/crown-jewels"));
        assert_eq!(c[1], "Secret team-a/mine is no longer referenced");
        assert_eq!(
            c[2],
            "Secret victim/crown-jewels is referenced now, not when the migration started"
        );
        let recreated = vec![pinned[0].clone(), pin("Secret", "mine", "u3", None)];
        assert_eq!(
            changes(&pinned, &recreated),
            ["Secret team-a/mine was deleted and created again"]
        );
    }
}
